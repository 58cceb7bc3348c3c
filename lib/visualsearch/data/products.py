"""The synthetic products world: drawn garments photographed in several views, written as SOP and In-shop.

Why a drawn world: the triplet paper's claims (online hard negatives beat random triplets; batches drawn
from one category beat mixed batches) rest on how hard negatives are distributed. Real product photos
cannot be shipped, so this world is built to have the same structure: many products per category, grouped
into **look-alike groups** that share every coarse attribute (category, colour, pattern, sleeve, length,
neckline) and differ only in **instance details** (shade, pattern scale and phase, buttons, trim colour, a
small logo's shape and place). A mixed batch seldom holds a look-alike of an anchor; a batch drawn from one
category often does. Each product is photographed as clean "shop" photos and cluttered "street" photos
(pose, scale, crop, background, light, blur, noise, an occluder), with bounding boxes.

The world is written in the real published formats so the same readers serve real and synthetic data:
- Stanford Online Products: `Ebay_train.txt`, `Ebay_test.txt` (header, then
  `image_id class_id super_class_id path`; super class = category).
- DeepFashion In-shop: `Eval/list_eval_partition.txt` (count, header, then
  `image_name item_id evaluation_status`; test products' shop photos are the gallery, street photos the
  queries), `Anno/list_bbox_inshop.txt` (`image_name clothes_type pose_type x_1 y_1 x_2 y_2`),
  `Anno/list_item_inshop.txt`.
- `attributes.csv` (one row per product: coarse attributes, look-alike group, instance details, split) and
  `images.csv` (one row per photo: product, view kind, pose, scale, background, occluder, bounding box), for
  the notebooks that need attributes (MAAF captions, CFQ judgments).

Public API:
- `ProductsWorldConfig`: the sizes and difficulty of a world; `build_products(folder, params)` writes it
  (the `build` of `worlds.ensure_world`); `products_world(config)` returns its cached folder.
- `Product` / `View`: the attributes of one garment and of one photo; `sample_product`, `sample_view`.
- `render_garment(product, size)` -> RGBA canonical garment; `render_photo(product, view, size)` ->
  (RGB PIL image, bounding box). Other notebooks render pairs by `dataclasses.replace`-ing a Product.
"""
from __future__ import annotations

import colorsys
import csv
import dataclasses
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..forked import run_forked
from .worlds import ensure_world

# --------------------------------------------------------------------------------------------- vocabulary

# Named palette (RGB 0-255). Names are what captions and attribute tables use.
PALETTE: dict[str, tuple[int, int, int]] = {
    "black": (30, 30, 34), "white": (238, 238, 232), "grey": (128, 128, 132), "navy": (28, 40, 100),
    "blue": (50, 110, 210), "teal": (20, 130, 130), "green": (40, 140, 60), "olive": (110, 115, 40),
    "yellow": (235, 205, 50), "orange": (235, 125, 35), "red": (200, 35, 40), "burgundy": (120, 25, 45),
    "pink": (235, 140, 175), "purple": (120, 60, 160), "beige": (215, 195, 160), "brown": (110, 70, 40),
}
COLOURS = tuple(PALETTE)
PATTERNS = ("solid", "stripes", "dots", "checks", "floral", "gradient")
LOGO_SHAPES = ("none", "circle", "square", "triangle", "star")
LOGO_PLACES = ("left_chest", "right_chest", "centre", "hem")

# Category -> (body part, allowed sleeves, allowed lengths, allowed necklines). Body part is DeepFashion's
# clothes_type: 1 upper-body, 2 lower-body, 3 full-body.
CATEGORIES: dict[str, tuple[int, tuple, tuple, tuple]] = {
    "dress": (3, ("sleeveless", "short", "long"), ("mini", "knee", "maxi"), ("round", "v", "square")),
    "shirt": (1, ("short", "long"), ("regular", "long"), ("collar",)),
    "toptee": (1, ("sleeveless", "short", "long"), ("cropped", "regular"), ("round", "v", "square")),
    "trousers": (2, ("none",), ("shorts", "cropped", "full"), ("none",)),
    "skirt": (2, ("none",), ("mini", "knee", "maxi"), ("none",)),
    "jacket": (1, ("long", "short"), ("cropped", "regular", "long"), ("collar", "v")),
    "sweater": (1, ("long",), ("regular", "long"), ("round", "v", "turtle")),
    "jumpsuit": (3, ("sleeveless", "short", "long"), ("cropped", "full"), ("round", "v")),
    "coat": (1, ("long",), ("knee", "long"), ("collar",)),
    "shorts": (2, ("none",), ("mini", "regular"), ("none",)),
    "vest": (1, ("sleeveless",), ("cropped", "regular"), ("round", "v", "square")),
    "hoodie": (1, ("long", "short"), ("regular", "long"), ("hood",)),
}
# Folder names in the In-shop style image paths (img/<GENDER>/<Folder>/id_XXXXXXXX/...).
_FOLDERS = {"dress": "WOMEN/Dresses", "shirt": "MEN/Shirts_Polos", "toptee": "WOMEN/Tees_Tanks",
            "trousers": "MEN/Pants", "skirt": "WOMEN/Skirts", "jacket": "MEN/Jackets_Vests",
            "sweater": "WOMEN/Sweaters", "jumpsuit": "WOMEN/Rompers_Jumpsuits", "coat": "WOMEN/Jackets_Coats",
            "shorts": "MEN/Shorts", "vest": "WOMEN/Blouses_Shirts", "hoodie": "MEN/Sweatshirts_Hoodies"}
# In-shop pose_type codes: 1 frontal, 2 side, 3 back, 4 zoom-out, 5 zoom-in, 6 stand-alone.
POSE_TYPES = {"frontal": 1, "side": 2, "zoom-out": 4, "zoom-in": 5, "stand-alone": 6}


# ----------------------------------------------------------------------------------------------- config

@dataclass
class ProductsWorldConfig:
    """Sizes and difficulty of one products world. All fields are JSON-able; the world is a pure function
    of them (the seed included), so `asdict(config)` is the key of its cached folder."""

    seed: int = 0                                  # draws products, groups and photos
    categories: tuple = ("dress", "shirt", "toptee", "trousers", "skirt", "jacket")  # keys of CATEGORIES
    train_products_per_category: int = 300         # products whose photos are the training split
    test_products_per_category: int = 100          # unseen products: SOP test / In-shop query+gallery
    lookalike_groups_per_category: int = 40        # distinct coarse-attribute tuples per category
    shop_photos: int = 2                           # clean photos per product (In-shop gallery)
    street_photos: int = 2                         # cluttered photos per product (In-shop queries)
    image_size: int = 64                           # photos are image_size x image_size RGB JPEG
    detail_strength: float = 1.0                   # size/contrast of instance details (buttons, logo, trim)
    street_difficulty: float = 1.0                 # scales pose, crop, light, blur, noise of street photos
    occluder_prob: float = 0.4                     # chance a street photo has an occluding object
    shade_jitter: float = 0.06                     # per-product shift of the colour's lightness/hue

    def __post_init__(self):
        self.categories = tuple(self.categories)
        unknown = [c for c in self.categories if c not in CATEGORIES]
        if unknown:
            raise ValueError(f"ProductsWorldConfig.categories: unknown {unknown}; expected some of {list(CATEGORIES)}")
        if self.shop_photos < 1 or self.street_photos < 1:
            raise ValueError("ProductsWorldConfig: shop_photos and street_photos must be >= 1 "
                             "(the gallery holds shop photos, the queries street photos)")


# -------------------------------------------------------------------------------------- products, views

@dataclass(frozen=True)
class Product:
    """One garment: coarse attributes (shared inside a look-alike group) and instance details."""

    category: str
    colour: str
    pattern: str
    sleeve: str
    length: str
    neckline: str
    # instance details: what tells two look-alikes apart
    shade: tuple = (0.0, 0.0)        # (hue shift, lightness shift) of the main colour, small
    pattern_scale: float = 0.1       # period of the pattern as a fraction of the image
    pattern_phase: tuple = (0.0, 0.0)
    pattern_angle: float = 0.0       # radians, stripes/gradient direction
    buttons: int = 0                 # buttons down the front (0 = none)
    trim_colour: str = "white"       # hem/cuff band colour (a palette name)
    logo_shape: str = "none"
    logo_place: str = "left_chest"
    logo_colour: str = "white"
    fit: float = 1.0                 # width multiplier of the silhouette


@dataclass(frozen=True)
class View:
    """One photo of a product: 'shop' (clean, frontal) or 'street' (pose, clutter, light, occluder)."""

    kind: str = "shop"
    pose: str = "frontal"            # frontal | side | zoom-in | zoom-out (In-shop pose names)
    rotation: float = 0.0            # degrees
    squash: float = 1.0              # horizontal scale (side view < 1)
    scale: float = 0.85              # garment height as a fraction of the image
    centre: tuple = (0.5, 0.5)       # garment centre in the photo (fractions)
    background: str = "plain"        # plain | gradient | blotches | stripes | clutter
    bg_colours: tuple = ((240, 240, 240), (220, 220, 220))
    bg_seed: int = 0
    light: tuple = (1.0, 1.0, 1.0)   # per-channel gain
    light_slope: float = 0.0         # vertical brightness gradient
    blur: float = 0.0                # Gaussian blur radius in pixels
    noise: float = 0.0               # std of additive Gaussian noise (0-1 scale)
    occluder: tuple = ()             # () or (shape, x0, y0, x1, y1, r, g, b) in fractions / 0-255


def _valid_coarse(category: str) -> list[tuple]:
    _, sleeves, lengths, necks = CATEGORIES[category]
    return [(c, p, s, l, n) for c in COLOURS for p in PATTERNS for s in sleeves for l in lengths for n in necks]


def lookalike_groups(category: str, n_groups: int, rng: np.random.Generator) -> list[tuple]:
    """`n_groups` distinct coarse tuples (colour, pattern, sleeve, length, neckline) of a category."""
    combos = _valid_coarse(category)
    idx = rng.choice(len(combos), size=min(n_groups, len(combos)), replace=False)
    return [combos[i] for i in sorted(idx)]


def sample_product(rng: np.random.Generator, category: str, coarse: tuple | None = None,
                   shade_jitter: float = 0.06) -> Product:
    """Draw a product of `category`; `coarse` = (colour, pattern, sleeve, length, neckline) fixes its
    look-alike group, else the coarse attributes are drawn too. Instance details are always drawn."""
    if coarse is None:
        combos = _valid_coarse(category)
        coarse = combos[rng.integers(len(combos))]
    colour, pattern, sleeve, length, neckline = coarse
    others = [c for c in COLOURS if c != colour]
    return Product(
        category=category, colour=colour, pattern=pattern, sleeve=sleeve, length=length, neckline=neckline,
        shade=(float(rng.uniform(-1, 1) * shade_jitter * 0.5), float(rng.uniform(-1, 1) * shade_jitter)),
        pattern_scale=float(rng.choice([0.07, 0.1, 0.14])),
        pattern_phase=(float(rng.uniform(0, 1)), float(rng.uniform(0, 1))),
        pattern_angle=float(rng.choice([0.0, np.pi / 4, np.pi / 2, -np.pi / 4])),
        buttons=int(rng.choice([0, 0, 2, 3, 4])),
        trim_colour=str(others[rng.integers(len(others))]),
        logo_shape=str(rng.choice(LOGO_SHAPES)),
        logo_place=str(rng.choice(LOGO_PLACES)),
        logo_colour=str(others[rng.integers(len(others))]),
        fit=float(rng.uniform(0.9, 1.1)),
    )


def sample_view(rng: np.random.Generator, kind: str, difficulty: float = 1.0, occluder_prob: float = 0.4) -> View:
    """Draw photo conditions. Shop photos are nearly canonical; street photos vary pose, scale, crop,
    background, light, blur, noise and may hold an occluder, all scaled by `difficulty`."""
    d = difficulty
    if kind == "shop":
        g = float(rng.uniform(225, 250))
        return View(kind="shop", pose="frontal", rotation=float(rng.normal(0, 1.0)), scale=float(rng.uniform(0.8, 0.9)),
                    centre=(0.5 + float(rng.normal(0, 0.01)), 0.5 + float(rng.normal(0, 0.01))),
                    background="plain", bg_colours=((int(g), int(g), int(g)), (int(g) - 10,) * 3),
                    bg_seed=int(rng.integers(1 << 30)))
    if kind != "street":
        raise ValueError(f"View kind must be 'shop' or 'street', got {kind!r}")
    pose = str(rng.choice(["frontal", "side", "zoom-in", "zoom-out"]))
    scale = {"frontal": (0.6, 0.85), "side": (0.6, 0.85), "zoom-in": (0.95, 1.25), "zoom-out": (0.4, 0.6)}[pose]
    scale = float(rng.uniform(*scale))
    scale = 0.85 + (scale - 0.85) * d
    squash = float(rng.uniform(0.6, 0.8)) if pose == "side" else float(rng.uniform(0.9, 1.05))
    squash = 1.0 + (squash - 1.0) * d
    shift = (1.05 - min(scale, 1.0)) * 0.5
    centre = (0.5 + float(rng.uniform(-shift, shift)) * d, 0.5 + float(rng.uniform(-shift, shift)) * d)
    bg = str(rng.choice(["gradient", "blotches", "stripes", "clutter"]))
    c1 = tuple(int(v) for v in rng.integers(20, 236, size=3))
    c2 = tuple(int(v) for v in rng.integers(20, 236, size=3))
    light = tuple(float(v) for v in np.clip(1 + rng.normal(0, 0.12 * d, size=3) + rng.uniform(-0.25, 0.15) * d, 0.5, 1.5))
    occ = ()
    if rng.random() < occluder_prob * min(d, 1.0):
        w, h = rng.uniform(0.2, 0.45, size=2) * d
        x0, y0 = rng.uniform(0.05, 0.95 - w), rng.uniform(0.05, 0.95 - h)
        rgb = rng.integers(0, 256, size=3)
        occ = (str(rng.choice(["rect", "ellipse"])), float(x0), float(y0), float(x0 + w), float(y0 + h),
               int(rgb[0]), int(rgb[1]), int(rgb[2]))
    return View(kind="street", pose=pose, rotation=float(rng.normal(0, 10 * d)), squash=squash, scale=scale,
                centre=centre, background=bg, bg_colours=(c1, c2), bg_seed=int(rng.integers(1 << 30)), light=light,
                light_slope=float(rng.normal(0, 0.15 * d)), blur=float(rng.uniform(0, 0.9 * d)) if rng.random() < 0.6 else 0.0,
                noise=float(rng.uniform(0, 0.04 * d)), occluder=occ)


# --------------------------------------------------------------------------------------------- rendering

def _colour(name: str, shade=(0.0, 0.0)) -> np.ndarray:
    r, g, b = (v / 255 for v in PALETTE[name])
    h, l, s = colorsys.rgb_to_hls(r, g, b)
    h = (h + shade[0]) % 1.0
    l = float(np.clip(l + shade[1], 0.03, 0.97))
    return np.array(colorsys.hls_to_rgb(h, l, s), dtype=np.float32)


def _second_colour(main: np.ndarray) -> np.ndarray:
    """The pattern's second colour: a strong lighter or darker version of the main colour."""
    lum = float(main @ np.array([0.3, 0.59, 0.11]))
    return np.clip(main * 0.35, 0, 1) if lum > 0.45 else np.clip(main + (1 - main) * 0.7, 0, 1)


def _pattern_mask(p: Product, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Weight in [0,1] of the second colour at canvas coordinates (u, v) in [0,1]."""
    s = p.pattern_scale
    ph0, ph1 = p.pattern_phase
    ca, sa = np.cos(p.pattern_angle), np.sin(p.pattern_angle)
    if p.pattern == "solid":
        return np.zeros_like(u)
    if p.pattern == "stripes":
        t = (u * sa + v * ca) / s + ph0
        return ((t % 1.0) < 0.4).astype(np.float32)
    if p.pattern == "dots":
        a, b = (u / s + ph0) % 1.0 - 0.5, (v / s + ph1) % 1.0 - 0.5
        return ((a * a + b * b) < 0.09).astype(np.float32)
    if p.pattern == "checks":
        a, b = np.floor(u / s + ph0), np.floor(v / s + ph1)
        return ((a + b) % 2).astype(np.float32)
    if p.pattern == "floral":
        cs = s * 1.6
        a, b = (u / cs + ph0) % 1.0 - 0.5, (v / cs + ph1) % 1.0 - 0.5
        r, th = np.sqrt(a * a + b * b), np.arctan2(b, a)
        petal = r < 0.33 * (0.55 + 0.45 * np.cos(5 * th + 6.28 * ph0))
        return (petal & (r > 0.06)).astype(np.float32)
    if p.pattern == "gradient":
        t = (u - 0.5) * sa + (v - 0.5) * ca
        return np.clip(t * 1.4 + 0.5 + (ph0 - 0.5) * 0.3, 0, 1).astype(np.float32)
    raise ValueError(f"unknown pattern {p.pattern!r}; expected one of {PATTERNS}")


def _silhouette(p: Product, draw: ImageDraw.ImageDraw, n: float) -> dict:
    """Draw the garment's shape (value 255) on an 'L' canvas of side n; return landmark points (fractions)
    used to place details: hem band, cuffs, neck, chest, front line."""
    def P(pts):
        return [(x * n, y * n) for x, y in pts]

    w = 0.19 * p.fit  # half width of the torso
    cx = 0.5
    marks = {"cuffs": [], "front": None}
    part = CATEGORIES[p.category][0]
    if part in (1, 3) or p.category == "jumpsuit":
        top = 0.12
        waist = {"cropped": 0.5, "regular": 0.62, "long": 0.74, "knee": 0.86}.get(p.length, 0.62)
        if p.category == "dress":
            waist = 0.48
        if p.category == "jumpsuit":
            waist = 0.48
        draw.polygon(P([(cx - w, top), (cx + w, top), (cx + w * 0.95, waist), (cx - w * 0.95, waist)]), fill=255)
        # sleeves
        sl = {"sleeveless": 0.0, "short": 0.16, "long": 0.45, "none": 0.0}[p.sleeve]
        if sl > 0:
            for sgn in (-1, 1):
                x0 = cx + sgn * w
                x1 = x0 + sgn * (0.06 + sl * 0.35)
                y1 = top + 0.03 + sl
                draw.polygon(P([(x0, top), (x0 + sgn * 0.07, top + 0.01), (x1 + sgn * 0.06, y1),
                                (x1 - sgn * 0.01, y1 + 0.02), (x0, top + 0.16)]), fill=255)
                marks["cuffs"].append(((x1 + sgn * 0.06, y1), (x1 - sgn * 0.01, y1 + 0.02)))
        if p.category == "dress":
            hem = {"mini": 0.7, "knee": 0.82, "maxi": 0.95}[p.length]
            draw.polygon(P([(cx - w * 0.95, waist), (cx + w * 0.95, waist), (cx + w * 1.7, hem), (cx - w * 1.7, hem)]), fill=255)
            marks["hem"] = (cx - w * 1.7, hem, cx + w * 1.7)
        elif p.category == "jumpsuit":
            hem = {"cropped": 0.78, "full": 0.95}[p.length]
            for sgn in (-1, 1):
                draw.polygon(P([(cx + sgn * 0.005, waist), (cx + sgn * w * 0.95, waist), (cx + sgn * w * 1.05, hem),
                                (cx + sgn * 0.03, hem)]), fill=255)
            marks["hem"] = (cx - w * 1.05, hem, cx + w * 1.05)
        else:
            marks["hem"] = (cx - w * 0.95, waist, cx + w * 0.95)
        marks["neck"] = (cx, top)
        marks["chest"] = {"left_chest": (cx - w * 0.5, top + 0.12), "right_chest": (cx + w * 0.5, top + 0.12),
                          "centre": (cx, top + 0.2), "hem": (cx + w * 0.5, marks["hem"][1] - 0.07)}
        marks["front"] = (cx, top + 0.05, marks["hem"][1] - 0.02)
    else:  # lower body
        top = 0.15
        if p.category == "skirt":
            hem = {"mini": 0.55, "knee": 0.72, "maxi": 0.92}[p.length]
            draw.polygon(P([(cx - w, top), (cx + w, top), (cx + w * 1.8, hem), (cx - w * 1.8, hem)]), fill=255)
            marks["hem"] = (cx - w * 1.8, hem, cx + w * 1.8)
        else:
            hem = {"shorts": 0.45, "mini": 0.42, "regular": 0.5, "cropped": 0.72, "full": 0.92}[p.length]
            for sgn in (-1, 1):
                draw.polygon(P([(cx, top + 0.08), (cx + sgn * w, top), (cx + sgn * w * 1.15, hem),
                                (cx + sgn * 0.02, hem)]), fill=255)
            draw.rectangle(P([(cx - w, top), (cx + w, top + 0.1)]), fill=255)
            marks["hem"] = (cx - w * 1.15, hem, cx + w * 1.15)
        marks["neck"] = None
        marks["chest"] = {"left_chest": (cx - w * 0.5, top + 0.1), "right_chest": (cx + w * 0.5, top + 0.1),
                          "centre": (cx, top + 0.12), "hem": (cx + w * 0.6, marks["hem"][1] - 0.07)}
        marks["waist"] = (cx - w, top, cx + w)
    return marks


def _shape_points(shape: str, x: float, y: float, r: float) -> list | None:
    if shape == "triangle":
        return [(x, y - r), (x + r, y + r * 0.8), (x - r, y + r * 0.8)]
    if shape == "star":
        pts = []
        for i in range(10):
            rr = r if i % 2 == 0 else r * 0.45
            a = -np.pi / 2 + i * np.pi / 5
            pts.append((x + rr * np.cos(a), y + rr * np.sin(a)))
        return pts
    return None


def render_garment(p: Product, size: int = 64, detail_strength: float = 1.0) -> Image.Image:
    """The product on a transparent canvas (RGBA, size x size), upright and centred: the canonical image
    that every photo of the product transforms. Deterministic given `p`."""
    ss = 2  # supersampling of shapes for anti-aliased edges
    n = size * ss
    mask = Image.new("L", (n, n), 0)
    md = ImageDraw.Draw(mask)
    marks = _silhouette(p, md, n)
    # neckline cut / collar
    deco = Image.new("RGBA", (n, n), (0, 0, 0, 0))
    dd = ImageDraw.Draw(deco)
    trim = tuple(int(v * 255) for v in _colour(p.trim_colour)) + (255,)
    ds = detail_strength
    if marks["neck"] is not None:
        x, y = marks["neck"]
        x, y = x * n, y * n
        k = 0.06 * n
        if p.neckline == "round":
            md.ellipse([x - k, y - k * 0.7, x + k, y + k * 0.8], fill=0)
        elif p.neckline == "v":
            md.polygon([(x - k, y - 1), (x + k, y - 1), (x, y + 1.8 * k)], fill=0)
        elif p.neckline == "square":
            md.rectangle([x - k, y - 1, x + k, y + k], fill=0)
        elif p.neckline == "collar":
            md.ellipse([x - k * 0.8, y - k * 0.6, x + k * 0.8, y + k * 0.5], fill=0)
            dd.polygon([(x - k * 1.3, y), (x, y + k * 0.9), (x - k * 0.2, y + k * 1.6)], fill=trim)
            dd.polygon([(x + k * 1.3, y), (x, y + k * 0.9), (x + k * 0.2, y + k * 1.6)], fill=trim)
        elif p.neckline == "turtle":
            dd.rectangle([x - k * 0.9, y - k * 0.9, x + k * 0.9, y + k * 0.3], fill=trim)
        elif p.neckline == "hood":
            dd.ellipse([x - k * 1.8, y - k * 1.6, x + k * 1.8, y + k * 0.6], fill=trim)
            md.ellipse([x - k * 0.8, y - k * 0.8, x + k * 0.8, y + k * 0.4], fill=0)
    # trim: hem band, cuffs, waistband
    band = 0.035 * n * ds
    x0, y, x1 = marks["hem"]
    dd.rectangle([x0 * n, y * n - band, x1 * n, y * n], fill=trim)
    for a, b in marks["cuffs"]:
        dd.line([a[0] * n, a[1] * n, b[0] * n, b[1] * n], fill=trim, width=max(1, int(round(band))))
    if "waist" in marks:
        x0, y, x1 = marks["waist"]
        dd.rectangle([x0 * n, y * n, x1 * n, y * n + band], fill=trim)
    # front line and buttons (jackets and coats are open-fronted: a trim line)
    if marks["front"] is not None and p.category in ("jacket", "coat", "shirt"):
        fx, fy0, fy1 = marks["front"]
        dd.line([fx * n, fy0 * n + 0.05 * n, fx * n, fy1 * n], fill=trim, width=max(1, int(0.012 * n * ds)))
    if p.buttons and marks["front"] is not None:
        fx, fy0, fy1 = marks["front"]
        br = 0.018 * n * ds
        for i in range(p.buttons):
            by = (fy0 + 0.1 + (fy1 - fy0 - 0.14) * (i + 0.5) / p.buttons) * n
            dd.ellipse([fx * n + 2.2 * br - br, by - br, fx * n + 2.2 * br + br, by + br], fill=(20, 20, 20, 255))
    # logo
    if p.logo_shape != "none":
        lx, ly = marks["chest"][p.logo_place]
        lc = tuple(int(v * 255) for v in _colour(p.logo_colour)) + (255,)
        r = 0.045 * n * ds
        x, y = lx * n, ly * n
        if p.logo_shape == "circle":
            dd.ellipse([x - r, y - r, x + r, y + r], fill=lc)
        elif p.logo_shape == "square":
            dd.rectangle([x - r, y - r, x + r, y + r], fill=lc)
        else:
            dd.polygon(_shape_points(p.logo_shape, x, y, r * 1.3), fill=lc)
    mask = mask.resize((size, size), Image.BOX)
    deco = deco.resize((size, size), Image.BOX)
    # fabric: main colour + pattern, soft shading from the left
    u = (np.arange(size, dtype=np.float32) + 0.5) / size
    uu, vv = np.meshgrid(u, u)
    main = _colour(p.colour, p.shade)
    second = _second_colour(main)
    wgt = _pattern_mask(p, uu, vv)[..., None]
    fabric = main * (1 - wgt) + second * wgt
    fabric = fabric * (0.92 + 0.12 * (1 - uu[..., None]))
    rgb = np.clip(fabric, 0, 1)
    d = np.asarray(deco, dtype=np.float32) / 255.0
    a_d = d[..., 3:4]
    rgb = rgb * (1 - a_d) + d[..., :3] * a_d
    alpha = np.asarray(mask, dtype=np.float32) / 255.0
    alpha = np.maximum(alpha, a_d[..., 0] * (alpha > 0.01))  # decorations only on or next to the garment
    out = np.dstack([rgb, alpha[..., None]])
    return Image.fromarray((out * 255 + 0.5).astype(np.uint8), "RGBA")


def _background(v: View, size: int) -> np.ndarray:
    rng = np.random.default_rng(v.bg_seed)
    c1 = np.array(v.bg_colours[0], np.float32) / 255
    c2 = np.array(v.bg_colours[1], np.float32) / 255
    u = (np.arange(size, dtype=np.float32) + 0.5) / size
    uu, vv = np.meshgrid(u, u)
    if v.background == "plain":
        t = vv * 0.3
    elif v.background == "gradient":
        a = rng.uniform(0, 2 * np.pi)
        t = np.clip((uu - 0.5) * np.cos(a) + (vv - 0.5) * np.sin(a) + 0.5, 0, 1)
    elif v.background == "stripes":
        a, per = rng.uniform(0, np.pi), rng.uniform(0.08, 0.25)
        t = (((uu * np.cos(a) + vv * np.sin(a)) / per) % 1.0 < 0.5).astype(np.float32)
    else:  # blotches / clutter: smooth random field, clutter adds a few rectangles
        k = 4 if v.background == "blotches" else 8
        low = rng.random((k, k)).astype(np.float32)
        t = np.asarray(Image.fromarray((low * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC),
                       np.float32) / 255
    img = c1 * (1 - t[..., None]) + c2 * t[..., None]
    if v.background == "clutter":
        for _ in range(4):
            x0, y0 = rng.integers(0, size, size=2)
            w, h = rng.integers(size // 10, size // 3, size=2)
            img[y0:y0 + h, x0:x0 + w] = rng.random(3).astype(np.float32)
    return img


def render_photo(p: Product, view: View, size: int = 64, garment: Image.Image | None = None,
                 detail_strength: float = 1.0) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """Photograph product `p` under `view`: an RGB image of size x size and the garment's bounding box
    (x_1, y_1, x_2, y_2, pixels, inclusive-exclusive) before occlusion. `garment` may pass a cached
    `render_garment(p, size)` to photograph one product many times cheaply."""
    if garment is None:
        garment = render_garment(p, size, detail_strength)
    # affine map from output pixel to canonical pixel: centre, scale, rotation, squash
    s = view.scale / 0.85  # the canonical garment fills about 85% of its canvas
    th = np.deg2rad(view.rotation)
    cos, sin = np.cos(th), np.sin(th)
    ox, oy = view.centre[0] * size, view.centre[1] * size
    # out = C_out + s * R(th) * diag(squash, 1) * (in - C_in)  =>  in = C_in + diag(1/squash,1) R(-th) (out - C_out) / s
    a, b = cos / (s * view.squash), sin / (s * view.squash)
    d, e = -sin / s, cos / s
    c = size / 2 - a * ox - b * oy
    f = size / 2 - d * ox - e * oy
    warped = garment.transform((size, size), Image.AFFINE, (a, b, c, d, e, f), resample=Image.BILINEAR)
    g = np.asarray(warped, np.float32) / 255
    alpha = g[..., 3:4]
    img = _background(view, size) * (1 - alpha) + g[..., :3] * alpha
    ys, xs = np.nonzero(alpha[..., 0] > 0.3)
    bbox = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1) if len(xs) else (0, 0, size, size)
    if view.occluder:
        shape, x0, y0, x1, y1, r, gg, bb = view.occluder
        occ = Image.new("L", (size, size), 0)
        od = ImageDraw.Draw(occ)
        box = [x0 * size, y0 * size, x1 * size, y1 * size]
        (od.ellipse if shape == "ellipse" else od.rectangle)(box, fill=255)
        m = np.asarray(occ, np.float32)[..., None] / 255
        img = img * (1 - m) + np.array([r, gg, bb], np.float32) / 255 * m
    if view.light != (1.0, 1.0, 1.0) or view.light_slope:
        ramp = 1 + view.light_slope * (np.linspace(-1, 1, size, dtype=np.float32)[:, None, None])
        img = img * np.array(view.light, np.float32) * ramp
    img = np.clip(img, 0, 1)
    out = Image.fromarray((img * 255 + 0.5).astype(np.uint8), "RGB")
    if view.blur > 0.05:
        out = out.filter(ImageFilter.GaussianBlur(view.blur))
    if view.noise > 0:
        rng = np.random.default_rng(view.bg_seed + 1)
        arr = np.asarray(out, np.float32) / 255 + rng.normal(0, view.noise, (size, size, 3)).astype(np.float32)
        out = Image.fromarray((np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8), "RGB")
    return out, bbox


# ----------------------------------------------------------------------------------------------- writing

@dataclass
class WorldProduct:
    """A product as placed in a world: its id, split, look-alike group and attributes."""

    product_id: int          # 1-based, unique across splits (= SOP class_id)
    split: str               # train | test
    group: int               # look-alike group id, unique across categories
    product: Product


def draw_products(cfg: ProductsWorldConfig) -> list[WorldProduct]:
    """The world's products, train first then test, each assigned to a look-alike group of its category.
    Groups are shared by the two splits (test products are new instances of the same looks)."""
    rng = np.random.default_rng([cfg.seed, 101])
    out: list[WorldProduct] = []
    groups = {}
    gid = 0
    for cat in cfg.categories:
        groups[cat] = []
        for coarse in lookalike_groups(cat, cfg.lookalike_groups_per_category, rng):
            groups[cat].append((gid, coarse))
            gid += 1
    pid = 1
    for split, n in (("train", cfg.train_products_per_category), ("test", cfg.test_products_per_category)):
        for cat in cfg.categories:
            gs = groups[cat]
            order = rng.permutation(n) % len(gs)  # balanced over groups, random order
            for j in range(n):
                g, coarse = gs[order[j]]
                out.append(WorldProduct(pid, split, g, sample_product(rng, cat, coarse, cfg.shade_jitter)))
                pid += 1
    return out


def image_name(wp: WorldProduct, k: int, view: View) -> str:
    """In-shop style relative path: img/<GENDER>/<Folder>/id_XXXXXXXX/<k>_<pose type>_<view>.jpg"""
    return f"img/{_FOLDERS[wp.product.category]}/id_{wp.product_id:08d}/{k:02d}_{POSE_TYPES[view.pose]}_{view.kind}.jpg"


def build_products(folder, params, workers: int | None = None) -> None:
    """Draw the world described by `params` (a ProductsWorldConfig or its asdict) and write it into
    `folder`: images under img/, SOP and In-shop lists, attributes.csv and images.csv. The photos are rendered
    in `workers` forked processes (None: one per core, up to 4, and one per 200 products at least): the
    default world's 12,000 photos took about half a minute on one core, and each product's photos depend on
    nothing but (seed, product id), so any number of workers writes the same files."""
    cfg = params if isinstance(params, ProductsWorldConfig) else ProductsWorldConfig(**params)
    folder = Path(folder)
    products = draw_products(cfg)
    if workers is None:
        workers = min(os.cpu_count() or 1, 4, max(1, len(products) // 200))
    workers = max(1, min(int(workers), len(products)))
    chunks = [(cfg, products[i::workers], folder) for i in range(workers)]
    if workers > 1:  # every product's photos depend only on (seed, product id): the same files in any order
        parts = run_forked(_render_products, chunks, workers, progress=False)
    else:
        parts = [_render_products(chunks[0])]
    by_id = {row[0]: row for part in parts for row in part}
    img_rows = [(wp, *by_id[(wp.product_id, k)][1:]) for wp in products
                for k in range(1, cfg.shop_photos + cfg.street_photos + 1)]
    _write_tables(folder, cfg, products, img_rows)


def _render_products(job) -> list[tuple]:
    """Render and save the photos of some products (one worker's share of `build_products`); returns
    ((product id, photo number), name, view, bbox) per photo."""
    cfg, products, folder = job
    size = cfg.image_size
    rows = []
    for wp in products:
        garment = render_garment(wp.product, size, cfg.detail_strength)
        rng = np.random.default_rng([cfg.seed, 202, wp.product_id])
        kinds = ["shop"] * cfg.shop_photos + ["street"] * cfg.street_photos
        for k, kind in enumerate(kinds, start=1):
            view = sample_view(rng, kind, cfg.street_difficulty, cfg.occluder_prob)
            img, bbox = render_photo(wp.product, view, size, garment=garment)
            name = image_name(wp, k, view)
            path = folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            img.save(path, quality=95)
            rows.append(((wp.product_id, k), name, view, bbox))
    return rows


def _write_tables(folder: Path, cfg: ProductsWorldConfig, products, img_rows) -> None:
    cat_index = {c: i + 1 for i, c in enumerate(cfg.categories)}
    # --- SOP
    for split, fname in (("train", "Ebay_train.txt"), ("test", "Ebay_test.txt")):
        lines = ["image_id class_id super_class_id path"]
        n = 0
        for wp, name, view, bbox in img_rows:
            if wp.split == split:
                n += 1
                lines.append(f"{n} {wp.product_id} {cat_index[wp.product.category]} {name}")
        (folder / fname).write_text("\n".join(lines) + "\n")
    # --- In-shop
    (folder / "Eval").mkdir(exist_ok=True)
    (folder / "Anno").mkdir(exist_ok=True)
    part, bbox_lines = [], []
    for wp, name, view, bbox in img_rows:
        status = "train" if wp.split == "train" else ("gallery" if view.kind == "shop" else "query")
        part.append(f"{name} id_{wp.product_id:08d} {status}")
        x1, y1, x2, y2 = bbox
        bbox_lines.append(f"{name} {CATEGORIES[wp.product.category][0]} {POSE_TYPES[view.pose]} {x1} {y1} {x2} {y2}")
    (folder / "Eval" / "list_eval_partition.txt").write_text(
        f"{len(part)}\nimage_name item_id evaluation_status\n" + "\n".join(part) + "\n")
    (folder / "Anno" / "list_bbox_inshop.txt").write_text(
        f"{len(bbox_lines)}\nimage_name clothes_type pose_type x_1 y_1 x_2 y_2\n" + "\n".join(bbox_lines) + "\n")
    (folder / "Anno" / "list_item_inshop.txt").write_text(
        f"{len(products)}\n" + "\n".join(f"id_{wp.product_id:08d}" for wp in products) + "\n")
    # --- attribute and view tables
    pfields = [f.name for f in dataclasses.fields(Product)]
    with open(folder / "attributes.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["product_id", "split", "group", "category_id"] + pfields)
        for wp in products:
            d = asdict(wp.product)
            w.writerow([wp.product_id, wp.split, wp.group, cat_index[wp.product.category]]
                       + [_csv_value(d[k]) for k in pfields])
    vfields = [f.name for f in dataclasses.fields(View)]
    with open(folder / "images.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image_name", "product_id", "split", "x_1", "y_1", "x_2", "y_2"] + vfields)
        for wp, name, view, bbox in img_rows:
            d = asdict(view)
            w.writerow([name, wp.product_id, wp.split, *bbox] + [_csv_value(d[k]) for k in vfields])


def _csv_value(v) -> str:
    """Floats to 4 decimals; tuples joined by ';' (nested tuples by '|' then ';')."""
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, (tuple, list)):
        if v and isinstance(v[0], (tuple, list)):
            return "|".join(_csv_value(x) for x in v)
        return ";".join(_csv_value(x) for x in v)
    return str(v)


def products_world(cfg: ProductsWorldConfig, root=None) -> Path:
    """The folder of the world `cfg`, generated once into the world cache (see worlds.ensure_world)."""
    return ensure_world("products", asdict(cfg), build_products, root=root)


def read_attributes(folder) -> "pandas.DataFrame":
    """attributes.csv of a products world as a DataFrame (one row per product)."""
    import pandas as pd
    return pd.read_csv(Path(folder) / "attributes.csv")


def read_image_table(folder) -> "pandas.DataFrame":
    """images.csv of a products world as a DataFrame (one row per photo, with view info and bbox)."""
    import pandas as pd
    return pd.read_csv(Path(folder) / "images.csv")
