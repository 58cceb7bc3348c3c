"""The synthetic faces world: drawn faces with a persistent identity, fixed and varying attributes, nuisances.

Why: the face paper (arXiv 1609.09018) fine-tunes an *identity* network for age, gender, ethnicity and
emotion from several depths and explains why earlier branching helps age and emotion: deeper identity layers
become invariant to what does not tell identities apart. Its data are not public, so this world is built to
have that structure on purpose:

- identity = persistent drawn traits (face shape and proportions, eye spacing and size, nose, mouth, ears,
  hair style and colour, skin tone, beard, a mole, a "resting face");
- gender and ethnicity group are fixed per identity (so identity features carry them);
- age has a per-identity base and varies from photo to photo (public figures are photographed over years):
  wrinkles, greying, sag, child proportions follow the *photo's* age, so part of the age signal is a nuisance
  for identity;
- emotion is drawn per photo independently of identity (mouth curve and opening, brows, eye openness):
  a pure nuisance for identity classification, which an identity network therefore learns to discard;
- nuisances: pose (yaw, pitch, roll), scale, shift, lighting, colour cast, blur, noise, glasses, hat,
  clothes, background.

The world is written in real formats so the readers of `face_readers` serve it as they serve real data:
- `identities/<identity>/<k>.jpg`: folder-per-identity identity-pretraining set (CASIA-WebFace / VGGFace2
  layout);
- `fairface/fairface_label_{train,val}.csv` + `fairface/{train,val}/<n>.jpg`: FairFace-style attribute
  sets (`file,age,gender,race,service_test` with the 9 FairFace age bins, plus `emotion`, `identity` and
  `age_years` columns), drawn from identities disjoint from the pretraining ones and from each other.

`write_published_layout` writes the same world as a data root in the layouts of the real releases
(FairFace's columns only, its CSVs beside `train/` and `val/`, plus a FER2013 `fer2013.csv`), which is what the
notebook's paper preset reads; the tests rehearse that preset on it.

Ethnicity groups carry FairFace's seven label names so that the same reader and vocabulary serve both; in
this world a group is only a randomly drawn prototype of drawn traits (skin tone, hair colour and curl, eye
and nose shape) around which its identities scatter, overlapping with other groups. It models nothing about
real people.
"""
from __future__ import annotations

import csv
import math
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .face_labels import AGE_BIN_EDGES, AGE_BINS, GENDERS, RACES, age_bin  # noqa: F401  (the world's vocabulary)

EMOTIONS = ("neutral", "happy", "sad", "angry", "surprised")
HAIR_STYLES = ("short", "fringe", "side_part", "long", "curly", "bun", "bald")


@dataclass
class FacesWorldConfig:
    seed: int = 0                      # draws everything: groups, identities, photos
    image_size: int = 64               # side of the written square images, px
    n_pretrain_identities: int = 300   # identities of the folder-per-identity pretraining set
    n_train_identities: int = 100      # identities of fairface_label_train.csv (attribute fine-tuning)
    n_val_identities: int = 100        # identities of fairface_label_val.csv (attribute test)
    photos_per_identity: int = 12      # photos drawn per identity, each with its own emotion, age, nuisances
    age_photo_sd_years: float = 6.0    # spread of a photo's age around the identity's base age (adults)
    emotion_intensity: tuple = (0.6, 1.0)   # range of per-photo expression strength (0 = neutral face)
    resting_face_sd: float = 0.25      # per-identity bias of brows/mouth/eyes, as a fraction of an expression
    pose_jitter: float = 1.0           # scales yaw, pitch, roll, scale and shift ranges (0 = frontal, centred)
    light_jitter: float = 1.0          # scales lighting gradient, brightness, contrast and colour-cast ranges
    blur_max_px: float = 0.8           # largest Gaussian blur radius, px at the written size
    noise_max: float = 0.04            # largest pixel-noise standard deviation (images in [0, 1])
    glasses_prob: float = 0.2          # mean per-photo chance of glasses (per identity, some wear them often)
    hat_prob: float = 0.12             # per-photo chance of a hat (hides hair and hairline)
    jpeg_quality: int = 92             # quality of the written JPEG files


@dataclass
class Identity:
    """Persistent traits of one drawn person; lengths are in face units (face half-width about 0.6)."""
    name: str
    gender: str
    race: str
    base_age: float
    skin: tuple
    hair_color: tuple
    hair_style: str
    hairline: float
    balding: float        # years-after-50 speed of hairline recession (0 = keeps hair)
    grey_onset: float     # age at which greying starts
    face_w: float
    face_h: float
    jaw: float            # 1 = round lower face, lower = narrower chin
    eye_y: float
    eye_gap: float        # half distance between eye centres
    eye_w: float
    eye_h: float
    iris: tuple
    brow_gap: float
    brow_thick: float
    brow_len: float
    nose_len: float
    nose_w: float
    mouth_y: float
    mouth_w: float
    lip_thick: float
    lip_color: tuple
    ear_size: float
    beard: str            # none | stubble | moustache | full (adult males only)
    mole: tuple | None
    glasses_rate: float
    rest_brow: float      # resting-face biases, in units of one full expression
    rest_mouth: float
    rest_eye: float
    clothes_color: tuple


@dataclass
class Photo:
    """What varies from one photo of an identity to the next."""
    age: float
    emotion: str
    intensity: float
    yaw: float
    pitch: float
    roll_deg: float
    scale: float
    shift: tuple
    light_angle: float
    light_strength: float
    brightness: float
    contrast: float
    cast: tuple
    blur: float
    noise: float
    glasses: bool
    hat: bool
    hat_color: tuple
    bg_color: tuple
    clothes_shade: float
    noise_seed: int


def _clip01(c):
    return tuple(float(min(1.0, max(0.0, v))) for v in c)


def make_groups(seed: int) -> list[dict]:
    """One random prototype of group-level traits per ethnicity group (see module docstring)."""
    rng = np.random.default_rng([seed, 7])
    groups = []
    lightness = rng.permutation(np.linspace(0.3, 0.92, len(RACES)))  # spread skin lightness across groups
    for i, _ in enumerate(RACES):
        hue = rng.uniform(-0.08, 0.08)
        L = lightness[i]
        skin = _clip01((L + 0.08 + hue, L * 0.8, min(L * 0.68 - hue, L * 0.76)))
        hair_l = rng.uniform(0.08, 0.55)
        hair = _clip01((hair_l + rng.uniform(0, 0.25), hair_l * rng.uniform(0.7, 1.0), hair_l * rng.uniform(0.4, 0.8)))
        groups.append(dict(skin=np.array(skin), hair=np.array(hair), curly=rng.uniform(0.0, 0.5),
                           eye_h=rng.uniform(0.8, 1.2), nose_w=rng.uniform(0.8, 1.25),
                           lip=rng.uniform(0.8, 1.3), face_w=rng.uniform(0.94, 1.06)))
    return groups


def sample_identity(rng: np.random.Generator, name: str, groups: list[dict]) -> Identity:
    """Draw one identity: gender and group first, then traits scattered around gender and group means."""
    g = int(rng.integers(2))
    male = g == 0
    r = int(rng.integers(len(RACES)))
    grp = groups[r]
    b = int(rng.integers(len(AGE_BINS)))  # age bins balanced across identities
    base_age = float(rng.uniform(AGE_BIN_EDGES[b], AGE_BIN_EDGES[b + 1]))
    skin = _clip01(grp["skin"] * rng.normal(1.0, 0.08) + rng.normal(0, 0.02, 3))
    hair = _clip01(grp["hair"] * rng.uniform(0.6, 1.5) + rng.normal(0, 0.03, 3))
    if male:  # HAIR_STYLES order: short, fringe, side_part, long, curly, bun, bald
        style_p = np.array([0.42, 0.1, 0.2, 0.02, 0.1, 0.0, 0.16])
    else:
        style_p = np.array([0.04, 0.16, 0.08, 0.48, 0.08, 0.16, 0.0])
    style_p[HAIR_STYLES.index("curly")] += grp["curly"] * 0.5
    style_p /= style_p.sum()
    style = HAIR_STYLES[int(rng.choice(len(HAIR_STYLES), p=style_p))]
    lip_base = np.array(skin) * np.array([0.95, 0.62, 0.62])
    if not male:  # lip colour (make-up) of varying strength
        lip_base = lip_base * 0.7 + np.array([0.3, 0.02, 0.08]) * rng.uniform(0.4, 1.0)
    beard = "none"
    if male and rng.random() < 0.55:
        beard = ("stubble", "moustache", "full")[int(rng.integers(3))]
    return Identity(
        name=name, gender=GENDERS[g], race=RACES[r], base_age=base_age, skin=skin, hair_color=hair,
        hair_style=style, hairline=float(rng.uniform(-0.62, -0.48)),
        balding=float(rng.uniform(0.004, 0.012)) if (male and rng.random() < 0.45) else 0.0,
        grey_onset=float(rng.normal(46, 7)),
        face_w=float(rng.normal(0.6 * grp["face_w"] * (1.03 if male else 0.97), 0.03)),
        face_h=float(rng.normal(0.8, 0.035)),
        jaw=float(np.clip(rng.normal(0.74 if male else 0.6, 0.07), 0.4, 0.95)),
        eye_y=float(rng.normal(-0.12, 0.025)), eye_gap=float(rng.normal(0.23, 0.018)),
        eye_w=float(rng.normal(0.105, 0.01)), eye_h=float(rng.normal(0.055 * grp["eye_h"], 0.006)),
        iris=_clip01(np.array((0.25, 0.16, 0.08)) * rng.uniform(0.5, 1.6) + rng.normal(0, 0.04, 3)),
        brow_gap=float(rng.normal(0.1, 0.012)),
        brow_thick=float(rng.normal(0.04 if male else 0.028, 0.006)),
        brow_len=float(rng.normal(0.14, 0.015)),
        nose_len=float(rng.normal(0.22, 0.025)), nose_w=float(rng.normal(0.075 * grp["nose_w"], 0.01)),
        mouth_y=float(rng.normal(0.33, 0.025)), mouth_w=float(rng.normal(0.15, 0.015)),
        lip_thick=float(rng.normal(0.03 * grp["lip"] * (0.9 if male else 1.1), 0.005)),
        lip_color=_clip01(lip_base), ear_size=float(rng.normal(0.11, 0.015)), beard=beard,
        mole=(float(rng.uniform(-0.4, 0.4)), float(rng.uniform(-0.2, 0.45))) if rng.random() < 0.3 else None,
        glasses_rate=float(rng.beta(0.6, 2.0)),
        rest_brow=float(rng.normal(0, 1)), rest_mouth=float(rng.normal(0, 1)), rest_eye=float(rng.normal(0, 1)),
        clothes_color=_clip01(rng.uniform(0.1, 0.9, 3)),
    )


def sample_photo(rng: np.random.Generator, ident: Identity, cfg: FacesWorldConfig, emotion: str | None = None,
                 frontal: bool = False) -> Photo:
    """Draw the per-photo state: age around the base, emotion (uniform unless given), nuisances.

    `frontal=True` gives a clean photo (no pose, light, blur, noise, accessories), for figures.
    """
    sd = cfg.age_photo_sd_years * float(np.clip(ident.base_age / 30.0, 0.3, 1.0))
    age = float(np.clip(ident.base_age + rng.normal(0, sd), 0.0, 90.0))
    emo = emotion if emotion is not None else EMOTIONS[int(rng.integers(len(EMOTIONS)))]
    lo, hi = cfg.emotion_intensity
    p = 0.0 if frontal else cfg.pose_jitter
    lj = 0.0 if frontal else cfg.light_jitter
    hat = (not frontal) and rng.random() < cfg.hat_prob
    glasses = (not frontal) and rng.random() < min(1.0, ident.glasses_rate * cfg.glasses_prob / 0.23)
    bg = _clip01(rng.uniform(0.15, 0.85, 3) if not frontal else (0.8, 0.8, 0.82))
    return Photo(
        age=age, emotion=emo, intensity=0.0 if emo == "neutral" else float(rng.uniform(lo, hi)),
        yaw=float(rng.uniform(-0.35, 0.35) * p), pitch=float(rng.uniform(-0.25, 0.25) * p),
        roll_deg=float(rng.uniform(-12, 12) * p), scale=float(1.0 + rng.uniform(-0.1, 0.08) * p),
        shift=(float(rng.uniform(-0.06, 0.06) * p), float(rng.uniform(-0.05, 0.05) * p)),
        light_angle=float(rng.uniform(0, 2 * math.pi)), light_strength=float(rng.uniform(0, 0.35) * lj),
        brightness=float(1.0 + rng.uniform(-0.25, 0.15) * lj), contrast=float(1.0 + rng.uniform(-0.25, 0.1) * lj),
        cast=tuple(float(v) for v in (1.0 + rng.normal(0, 0.05, 3) * lj)),
        blur=float(rng.uniform(0, cfg.blur_max_px)) if not frontal else 0.0,
        noise=float(rng.uniform(0, cfg.noise_max)) if not frontal else 0.0,
        glasses=bool(glasses), hat=bool(hat), hat_color=_clip01(rng.uniform(0.05, 0.9, 3)), bg_color=bg,
        clothes_shade=float(rng.uniform(0.7, 1.15)), noise_seed=int(rng.integers(2**31)),
    )


# Expression of each emotion at full intensity: mouth curve (+ = corners up), mouth opening, mouth width
# factor, inner-brow drop (+ = down toward the eyes, angry), brow raise (+ = up), eye openness change.
_EXPRESSIONS = {
    "neutral": dict(curve=0.0, open=0.0, width=0.0, inner=0.0, raise_=0.0, eye=0.0, teeth=False),
    "happy": dict(curve=1.0, open=0.35, width=0.25, inner=0.0, raise_=0.15, eye=-0.35, teeth=True),
    "sad": dict(curve=-0.9, open=0.0, width=-0.05, inner=-0.9, raise_=0.0, eye=-0.2, teeth=False),
    "angry": dict(curve=-0.35, open=0.0, width=-0.15, inner=1.0, raise_=-0.2, eye=-0.25, teeth=False),
    "surprised": dict(curve=0.0, open=1.0, width=-0.35, inner=0.0, raise_=1.0, eye=0.55, teeth=False),
}


def _rgb(c, k: float = 1.0) -> tuple:
    return tuple(int(round(255 * min(1.0, max(0.0, v * k)))) for v in c)


def _mix(a, b, t: float):
    return tuple((1 - t) * x + t * y for x, y in zip(a, b))


def render_face(ident: Identity, photo: Photo, size: int) -> Image.Image:
    """Draw one photo of `ident` as a `size` x `size` RGB image (drawn at 2x, then transformed and reduced)."""
    S = 2 * size
    u = 0.41 * S                      # one face unit in canvas pixels
    cx0, cy0 = S / 2, 0.53 * S
    age = photo.age
    youth = float(np.clip((15.0 - age) / 15.0, 0, 1))
    wrinkle = float(np.clip((age - 30.0) / 45.0, 0, 1))
    sag = float(np.clip((age - 45.0) / 35.0, 0, 1))
    grey = float(np.clip((age - ident.grey_onset) / 28.0, 0, 1))
    ex = _EXPRESSIONS[photo.emotion]
    k = photo.intensity
    rest = 0.0 if photo.emotion != "neutral" else 1.0  # resting biases show fully on neutral faces
    rest_w = 0.25 + 0.75 * rest

    fw = ident.face_w * (1 + 0.04 * youth)
    fh = ident.face_h * (1 - 0.1 * youth)
    eye_y = ident.eye_y + 0.09 * youth
    eye_w = ident.eye_w * (1 + 0.3 * youth)
    eye_h = ident.eye_h * (1 + 0.35 * youth)
    nose_len = ident.nose_len * (1 - 0.3 * youth)
    mouth_y = ident.mouth_y - 0.02 * youth + 0.02 * sag
    dx = photo.yaw * 0.22            # horizontal offset of inner features for a turned head
    dy = photo.pitch * 0.12

    def P(x, y, feature=True):
        if feature:
            x = x + dx * (1 - 0.3 * y * y)
            y = y + dy
        return (cx0 + x * u, cy0 + y * u)

    im = Image.new("RGB", (S, S), _rgb(photo.bg_color))
    d = ImageDraw.Draw(im)
    skin = ident.skin
    skin_age = _mix(skin, (skin[0] * 0.92, skin[1] * 0.88, skin[2] * 0.9), 0.5 * wrinkle)
    hair = _mix(ident.hair_color, (0.78, 0.78, 0.78), grey)
    dark = _rgb(skin_age, 0.7)
    line_w = max(1, int(round(0.012 * u)))

    # shoulders, neck
    clothes = _rgb(ident.clothes_color, photo.clothes_shade)
    d.ellipse([P(-1.2, 1.05, False), P(1.2, 2.2, False)], fill=clothes)
    d.rectangle([P(-0.26, 0.4, False), P(0.26, 1.15, False)], fill=_rgb(skin_age, 0.9))
    # hair behind the face (long styles)
    if ident.hair_style == "long" and not photo.hat:
        d.rounded_rectangle([P(-fw - 0.12, -fh - 0.1, False), P(fw + 0.12, 0.95, False)], radius=int(0.3 * u),
                            fill=_rgb(hair))
    # ears
    es = ident.ear_size
    for s in (-1, 1):
        ex_ = s * (fw - 0.02) - dx * 0.6
        d.ellipse([P(ex_ - es * 0.5, eye_y - es * 0.3, False), P(ex_ + es * 0.5, eye_y + es * 1.1, False)],
                  fill=_rgb(skin_age, 0.93))
    # face outline with jaw and sag
    pts = []
    for t in np.linspace(0, 2 * math.pi, 48, endpoint=False):
        st, ct = math.sin(t), math.cos(t)
        x, y = fw * ct, fh * st
        if st > 0:
            x *= 1 - (1 - ident.jaw) * st ** 2 * (1 - 0.4 * youth) + 0.07 * sag * math.sin(2 * t) ** 2
            y += 0.04 * sag * st ** 4
        pts.append(P(x, y, False))
    d.polygon(pts, fill=_rgb(skin_age))
    # beard (adult males), greying with the hair
    if ident.beard != "none" and age >= 17:
        bc = _rgb(hair, 0.9)
        if ident.beard in ("full", "stubble"):
            bpts = [P(x, y) for x, y in ((-fw * 0.92, 0.12), (-fw * 0.7, 0.45), (-0.25, fh * 0.95), (0, fh + 0.02),
                                         (0.25, fh * 0.95), (fw * 0.7, 0.45), (fw * 0.92, 0.12),
                                         (fw * 0.55, 0.3), (0.0, mouth_y + 0.1), (-fw * 0.55, 0.3))]
            if ident.beard == "full":
                d.polygon(bpts, fill=bc)
            else:
                d.polygon(bpts, fill=_rgb(_mix(skin_age, hair, 0.45)))
        d.polygon([P(-ident.mouth_w * 1.1, mouth_y - 0.01), P(0, mouth_y - 0.08), P(ident.mouth_w * 1.1, mouth_y - 0.01),
                   P(0, mouth_y - 0.045)], fill=bc)
    # hair on top (unless hidden by a hat)
    hairline = ident.hairline + ident.balding * max(0.0, age - 50.0) - 0.05 * youth
    if not photo.hat and ident.hair_style != "bald":
        top = -fh - 0.14
        if ident.hair_style == "curly":
            rng = np.random.default_rng(zlib.crc32(ident.name.encode()))
            for _ in range(26):
                a = rng.uniform(math.pi * 1.05, math.pi * 1.95)
                rr = rng.uniform(0.75, 1.05)
                x, y = fw * 1.05 * rr * math.cos(a), fh * 0.95 * rr * math.sin(a)
                y = min(y, hairline + 0.05)
                r = 0.17
                d.ellipse([P(x - r, y - r, False), P(x + r, y + r, False)], fill=_rgb(hair))
        else:
            d.chord([P(-fw - 0.06, top, False), P(fw + 0.06, 2 * hairline - top + 0.2, False)], 180, 360,
                    fill=_rgb(hair))
            if ident.hair_style == "fringe":
                d.rectangle([P(-fw * 0.85, hairline - 0.05, False), P(fw * 0.85, hairline + 0.18, False)], fill=_rgb(hair))
            elif ident.hair_style == "side_part":
                d.polygon([P(-fw * 0.95, hairline, False), P(-0.05, hairline - 0.02, False),
                           P(-fw * 0.9, hairline + 0.2, False)], fill=_rgb(hair))
            elif ident.hair_style == "bun":
                d.ellipse([P(-0.2, top - 0.3, False), P(0.2, top + 0.08, False)], fill=_rgb(hair))
    elif not photo.hat:  # bald: side fringe only
        for s in (-1, 1):
            d.ellipse([P(s * fw - 0.1, eye_y - 0.25, False), P(s * fw + 0.1, eye_y + 0.02, False)], fill=_rgb(hair))
    # wrinkles: forehead, crow's feet, nasolabial folds; bags under the eyes with sag
    wc = _rgb(_mix(skin_age, (0.2, 0.12, 0.08), 0.3 + 0.5 * wrinkle))
    if wrinkle > 0.05:
        n_lines = 1 + int(2.99 * wrinkle)
        for i in range(n_lines):
            y = eye_y - ident.brow_gap - 0.1 - i * 0.06
            d.arc([P(-0.28, y - 0.04), P(0.28, y + 0.06)], 200, 340, fill=wc, width=line_w)
        for s in (-1, 1):
            x0 = s * (ident.eye_gap + eye_w * 1.05)
            for j in (-1, 0, 1):
                d.line([P(x0, eye_y), P(x0 + s * 0.06, eye_y + j * 0.04)], fill=wc, width=line_w)
    if wrinkle > 0.15:
        for s in (-1, 1):
            d.line([P(s * ident.nose_w * 1.3, eye_y + nose_len * 0.9), P(s * ident.mouth_w * 1.15, mouth_y + 0.02)],
                   fill=wc, width=line_w)
    # eyes
    eye_open = max(0.15, 1.0 + ex["eye"] * k + 0.12 * ident.rest_eye * rest_w)
    for s in (-1, 1):
        ecx = s * ident.eye_gap
        h = eye_h * eye_open
        d.ellipse([P(ecx - eye_w, eye_y - h), P(ecx + eye_w, eye_y + h)], fill=(238, 238, 238))
        ir = min(eye_h * 0.95, h)
        d.ellipse([P(ecx - eye_h * 0.9 + photo.yaw * 0.03, eye_y - ir), P(ecx + eye_h * 0.9 + photo.yaw * 0.03, eye_y + ir)],
                  fill=_rgb(ident.iris))
        d.arc([P(ecx - eye_w, eye_y - h), P(ecx + eye_w, eye_y + h)], 180, 360, fill=(30, 20, 20),
              width=max(1, int(round(0.02 * u * (1.3 if ident.gender == "Female" else 1.0)))))
        if sag > 0.3:
            d.arc([P(ecx - eye_w * 0.9, eye_y), P(ecx + eye_w * 0.9, eye_y + h + 0.05)], 20, 160, fill=wc, width=line_w)
    # brows: inner ends move with the emotion and the resting face
    inner = ex["inner"] * k + 0.25 * ident.rest_brow * rest_w
    raise_ = ex["raise_"] * k
    bc = _rgb(hair, 0.7)
    for s in (-1, 1):
        xi = s * (ident.eye_gap - eye_w * 0.75)
        xo = s * (ident.eye_gap + eye_w * 0.75 + ident.brow_len * 0.35)
        yb = eye_y - ident.brow_gap - eye_h - 0.09 * raise_
        yi = yb + 0.08 * inner
        yo = yb - 0.03 * inner - 0.01 * raise_
        t = ident.brow_thick
        mid_x, mid_y = (xi + xo) / 2, (yi + yo) / 2 - 0.02 - 0.02 * raise_
        d.polygon([P(xi, yi), P(mid_x, mid_y), P(xo, yo), P(xo, yo + t * 0.6), P(mid_x, mid_y + t), P(xi, yi + t)],
                  fill=bc)
    # nose
    nx = photo.yaw * 0.08
    nose_c = _rgb(skin_age, 0.72)
    d.line([P(nx * 0.5, eye_y + 0.04), P(nx + ident.nose_w * 0.3, eye_y + nose_len)], fill=nose_c, width=line_w)
    d.arc([P(nx - ident.nose_w, eye_y + nose_len - 0.05), P(nx + ident.nose_w, eye_y + nose_len + 0.04)], 20, 160,
          fill=nose_c, width=line_w + 1)
    # mouth: curve, opening, width by emotion; resting curve on neutral faces
    curve = ex["curve"] * k + 0.3 * ident.rest_mouth * rest_w
    opening = ex["open"] * k
    mw = ident.mouth_w * (1 + ex["width"] * k)
    lt = ident.lip_thick * (0.7 if photo.emotion == "angry" else 1.0)
    corner_y = mouth_y - 0.075 * curve
    mid_y = mouth_y + 0.035 * curve
    gap = 0.11 * opening
    upper = [P(x, corner_y + (mid_y - corner_y) * (1 - (x / mw) ** 2)) for x in np.linspace(-mw, mw, 9)]
    lower_in = [P(x, corner_y + (mid_y - corner_y + gap) * (1 - (x / mw) ** 2)) for x in np.linspace(mw, -mw, 9)]
    lower_out = [P(x, corner_y + (mid_y - corner_y + gap + lt) * (1 - (x / mw) ** 2) + 0.006) for x in np.linspace(mw, -mw, 9)]
    upper_out = [P(x, corner_y + (mid_y - corner_y - lt * 0.8) * (1 - (x / mw) ** 2) - 0.004) for x in np.linspace(-mw, mw, 9)]
    lip = _rgb(ident.lip_color)
    d.polygon(upper_out + upper[::-1], fill=lip)
    if gap > 0.01:
        d.polygon(upper + lower_in, fill=(60, 20, 25))
        if ex["teeth"]:
            teeth = [P(x, corner_y + (mid_y - corner_y + gap * 0.45) * (1 - (x / mw) ** 2)) for x in np.linspace(mw * 0.8, -mw * 0.8, 7)]
            d.polygon(upper[1:-1] + teeth, fill=(240, 240, 235))
    d.polygon(lower_in + lower_out[::-1], fill=lip)
    d.line(upper, fill=_rgb(ident.lip_color, 0.6), width=line_w)
    # mole
    if ident.mole is not None:
        mx, my = ident.mole
        r = 0.022
        d.ellipse([P(mx - r, my - r), P(mx + r, my + r)], fill=_rgb(skin_age, 0.45))
    # accessories
    if photo.glasses:
        fc = (25, 25, 30)
        for s in (-1, 1):
            ecx = s * ident.eye_gap
            d.rounded_rectangle([P(ecx - eye_w * 1.45, eye_y - 0.09), P(ecx + eye_w * 1.45, eye_y + 0.09)],
                                radius=int(0.04 * u), outline=fc, width=line_w + 1)
        d.line([P(-ident.eye_gap + eye_w * 1.45, eye_y - 0.03), P(ident.eye_gap - eye_w * 1.45, eye_y - 0.03)],
               fill=fc, width=line_w + 1)
    if photo.hat:
        hc = _rgb(photo.hat_color)
        d.chord([P(-fw - 0.08, -fh - 0.3, False), P(fw + 0.08, -fh + 0.75, False)], 180, 360, fill=hc)
        d.rectangle([P(-fw - 0.16, -fh + 0.22, False), P(fw + 0.16, -fh + 0.3, False)], fill=_rgb(photo.hat_color, 0.8))

    # pose: roll, scale, shift (inverse affine from output to input coordinates), then reduce to `size`
    a = math.radians(photo.roll_deg)
    sc = photo.scale
    ca, sa = math.cos(a) / sc, math.sin(a) / sc
    ox, oy = S / 2 + photo.shift[0] * S, S / 2 + photo.shift[1] * S
    coeffs = (ca, -sa, S / 2 - ca * ox + sa * oy, sa, ca, S / 2 - sa * ox - ca * oy)
    im = im.transform((S, S), Image.AFFINE, coeffs, resample=Image.BILINEAR, fillcolor=_rgb(photo.bg_color))
    im = im.resize((size, size), Image.BOX)
    if photo.blur > 0.05:
        im = im.filter(ImageFilter.GaussianBlur(photo.blur))
    # light: directional gradient, brightness, contrast, colour cast, then noise
    x = np.asarray(im, dtype=np.float32) / 255.0
    g = np.linspace(-1, 1, size, dtype=np.float32)
    grad = math.cos(photo.light_angle) * g[None, :] + math.sin(photo.light_angle) * g[:, None]
    x = x * (photo.brightness + photo.light_strength * grad)[..., None] * np.asarray(photo.cast, np.float32)
    x = (x - 0.5) * photo.contrast + 0.5
    if photo.noise > 0:
        x = x + np.random.default_rng(photo.noise_seed).normal(0, photo.noise, x.shape).astype(np.float32)
    return Image.fromarray((np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8))


@dataclass
class FacesWorld:
    """All identities of a world, split into pretraining, attribute-train and attribute-val identities."""
    config: FacesWorldConfig
    pretrain: list = field(default_factory=list)
    train: list = field(default_factory=list)
    val: list = field(default_factory=list)


def make_world(cfg: FacesWorldConfig) -> FacesWorld:
    """The identities of the world drawn from `cfg.seed` (deterministic; photos are drawn when written)."""
    groups = make_groups(cfg.seed)
    rng = np.random.default_rng([cfg.seed, 1])
    n = (cfg.n_pretrain_identities, cfg.n_train_identities, cfg.n_val_identities)
    idents = [sample_identity(rng, f"id{i:05d}", groups) for i in range(sum(n))]
    return FacesWorld(cfg, idents[:n[0]], idents[n[0]:n[0] + n[1]], idents[n[0] + n[1]:])


def photos_of(ident: Identity, cfg: FacesWorldConfig, index: int) -> list[Photo]:
    """The `photos_per_identity` photos of one identity (seeded by world seed and identity index)."""
    rng = np.random.default_rng([cfg.seed, 2, index])
    return [sample_photo(rng, ident, cfg) for _ in range(cfg.photos_per_identity)]


def _write_identities(folder: Path, idents: list, cfg: FacesWorldConfig, first_index: int = 0) -> int:
    """Folder-per-identity photos `folder/<identity>/<k>.jpg`; returns the next identity index."""
    index = first_index
    for ident in idents:
        out = folder / ident.name
        out.mkdir(parents=True, exist_ok=True)
        for k, ph in enumerate(photos_of(ident, cfg, index)):
            render_face(ident, ph, cfg.image_size).save(out / f"{k:03d}.jpg", quality=cfg.jpeg_quality)
        index += 1
    return index


def _write_fairface(folder: Path, world: FacesWorld, cfg: FacesWorldConfig, first_index: int,
                    extra_columns: bool = True) -> int:
    """FairFace-style `folder/fairface_label_{train,val}.csv` + `folder/{train,val}/<n>.jpg` of the attribute
    people; with `extra_columns` the world's `emotion`, `identity` and `age_years` columns follow FairFace's
    `file,age,gender,race,service_test`. Returns the next identity index."""
    index = first_index
    for split, idents in (("train", world.train), ("val", world.val)):
        img_dir = folder / split
        img_dir.mkdir(parents=True, exist_ok=True)
        rows = []
        n = 0
        for ident in idents:
            for ph in photos_of(ident, cfg, index):
                n += 1
                render_face(ident, ph, cfg.image_size).save(img_dir / f"{n}.jpg", quality=cfg.jpeg_quality)
                row = {"file": f"{split}/{n}.jpg", "age": AGE_BINS[age_bin(ph.age)], "gender": ident.gender,
                       "race": ident.race, "service_test": "False"}
                if extra_columns:
                    row.update(emotion=ph.emotion, identity=ident.name, age_years=f"{ph.age:.1f}")
                rows.append(row)
            index += 1
        with open(folder / f"fairface_label_{split}.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["file", "age", "gender", "race", "service_test"])
            w.writeheader()
            w.writerows(rows)
    return index


def build_faces(folder, params: dict) -> None:
    """Write the faces world drawn with `params` (FacesWorldConfig fields) into `folder` (see module doc).

    Used as `ensure_world("faces", params, build_faces)`.
    """
    cfg = FacesWorldConfig(**params)
    cfg.emotion_intensity = tuple(cfg.emotion_intensity)
    folder = Path(folder)
    world = make_world(cfg)
    index = _write_identities(folder / "identities", world.pretrain, cfg)
    _write_fairface(folder / "fairface", world, cfg, index)


FER_SIZE = 48  # FER2013's faces are 48 x 48 grey


def fer_faces(world: FacesWorld, cfg: FacesWorldConfig, per_identity: int = 2) -> tuple[np.ndarray, list, list]:
    """FER2013-style faces of the world's attribute people: `per_identity` new photos of each, 48 x 48 grey.
    Returns (uint8 [N, 48, 48], emotion names, usages): the attribute-training people's photos are "Training",
    the test people's alternate "PublicTest" / "PrivateTest" (FER2013's three usages)."""
    images, emotions, usages = [], [], []
    for split, idents in (("train", world.train), ("val", world.val)):
        for i, ident in enumerate(idents):
            rng = np.random.default_rng([cfg.seed, 5, 0 if split == "train" else 1, i])
            for k in range(per_identity):
                ph = sample_photo(rng, ident, cfg)
                images.append(np.asarray(render_face(ident, ph, FER_SIZE).convert("L"), dtype=np.uint8))
                emotions.append(ph.emotion)
                usages.append("Training" if split == "train" else ("PublicTest", "PrivateTest")[(i + k) % 2])
    return np.stack(images), emotions, usages


def write_published_layout(root, params: dict, fer_per_identity: int = 2) -> Path:
    """The faces world drawn with `params` written as a data root in the published layouts the face
    notebook's paper preset reads (see README "Real data"):

    - `identities/<identity>/<k>.jpg`: folder per identity (CASIA-WebFace / VGGFace2 layout);
    - `fairface_label_train.csv`, `fairface_label_val.csv` with FairFace's released columns only
      (`file,age,gender,race,service_test`: no emotion, identity or exact age) and the images `train/<n>.jpg`,
      `val/<n>.jpg` beside them, as in the FairFace release;
    - `fer2013.csv`: FER2013's `emotion,pixels,Usage` (`fer_faces`: 48 x 48 grey faces of the same attribute
      people, written by `face_readers.write_fer2013`).
    """
    from .face_readers import write_fer2013

    cfg = FacesWorldConfig(**params)
    cfg.emotion_intensity = tuple(cfg.emotion_intensity)
    root = Path(root)
    world = make_world(cfg)
    index = _write_identities(root / "identities", world.pretrain, cfg)
    _write_fairface(root, world, cfg, index, extra_columns=False)
    write_fer2013(root / "fer2013.csv", *fer_faces(world, cfg, fer_per_identity))
    return root


def world_params(cfg: FacesWorldConfig) -> dict:
    """JSON-able params of a config, as passed to ensure_world (tuples become lists)."""
    p = asdict(cfg)
    p["emotion_intensity"] = list(p["emotion_intensity"])
    return p


def emotion_grid(cfg: FacesWorldConfig, n_identities: int = 4, size: int | None = None) -> tuple[list, list]:
    """Clean frontal faces of the first `n_identities` attribute-val identities, one per emotion.

    Returns (rows of PIL images, the identities); for the notebook's identities x emotions figure.
    """
    world = make_world(cfg)
    idents = world.val[:n_identities]
    rows = []
    for i, ident in enumerate(idents):
        rng = np.random.default_rng([cfg.seed, 3, i])
        row = []
        for emo in EMOTIONS:
            ph = sample_photo(rng, ident, cfg, emotion=emo, frontal=True)
            ph.age = ident.base_age
            ph.intensity = 0.0 if emo == "neutral" else cfg.emotion_intensity[1]
            row.append(render_face(ident, ph, size or cfg.image_size))
        rows.append(row)
    return rows, idents
