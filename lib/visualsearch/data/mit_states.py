"""MIT-States in its published layout, the retrieval protocol TIRG defined on it, and a synthetic world in that layout.

The release (Isola, Lim and Adelson 2015, `release_dataset.zip`) holds `release_dataset/images/<adj noun>/*.jpg`,
one folder per (adjective, noun) state, plus `adj_ants.csv` (adjective antonyms) and a README. Folders named
"adj <noun>" hold photos of the noun with no state adjective; the protocol ignores them, and any folder name that
is not two words. The text-feedback protocol of TIRG (Vo et al. 2019, kept by the MAAF and CFQ papers' released
code) splits by noun: the 49 nouns of `TEST_NOUNS` are the test split, every other noun the training split, so no
test object is ever seen in training.

- Training pair: an image of (a, n) and an image of (a', n), a' any adjective of noun n (a' may equal a, as in the
  released code); the text is the target's adjective a'.
- Test query: every test image of (a, n) with every other adjective a' != a of its noun; text a'; a hit is any
  gallery image (all test images) whose folder is "a' n"; the query image is dropped from its own ranking.

`read_mit_states(root, split)` reads either `release_dataset/` itself or the folder holding it. Missing or
unreadable images are skipped and counted (`SkipLog`); so are files that are not JPEGs and folders that are not
"adjective noun". `build_mit_states` writes a small synthetic world of drawn objects in states (colours, patterns,
sizes, "broken") in the same layout, with real MIT-States noun names so that `TEST_NOUNS` splits it as the real one.
"""
from __future__ import annotations

import csv
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .errors import DataFormatError, SkipLog, require_dir
from .images import check_images
from .worlds import ensure_world

# The test nouns of the protocol (TIRG's split, kept by the MAAF/CFQ released code): data, not code.
TEST_NOUNS = (
    "armor", "bracelet", "bush", "camera", "candy", "castle", "ceramic", "cheese", "clock", "clothes", "coffee",
    "fan", "fig", "fish", "foam", "forest", "fruit", "furniture", "garden", "gate", "glass", "horse", "island",
    "laptop", "lead", "lightning", "mirror", "orange", "paint", "persimmon", "plastic", "plate", "potato", "road",
    "rubber", "sand", "shell", "sky", "smoke", "steel", "stream", "table", "tea", "tomato", "vacuum", "wax", "wheel",
    "window", "wool")
NO_ADJECTIVE = "adj"  # folder "adj <noun>": the noun's photos with no state (ignored by the protocol)


@dataclass
class MITStatesSplit:
    """The usable images of one split and their states; `queries()` and `pairs()` are the protocol's."""

    split: str                  # train | test
    images: list                # Paths of usable images (the test gallery is all of them)
    adjs: list                  # adjective per image
    nouns: list                 # noun per image
    skips: SkipLog = field(default_factory=SkipLog)

    @property
    def captions(self) -> list:
        """Each image's state, "adj noun" (its folder name: the hit label)."""
        return [f"{a} {n}" for a, n in zip(self.adjs, self.nouns)]

    def noun_adjs(self) -> dict:
        """{noun: its adjectives in this split, sorted}."""
        out: dict[str, set] = {}
        for a, n in zip(self.adjs, self.nouns):
            out.setdefault(n, set()).add(a)
        return {n: sorted(a) for n, a in sorted(out.items())}

    def queries(self) -> list[tuple[int, str, str]]:
        """(source image index, text = target adjective, target caption) for every image and every other
        adjective of its noun, images in order, adjectives sorted."""
        adjs = self.noun_adjs()
        return [(i, t, f"{t} {n}") for i, (a, n) in enumerate(zip(self.adjs, self.nouns)) for t in adjs[n] if t != a]

    def pairs(self, n_pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """`n_pairs` training pairs drawn with `seed`: (source indices, target indices, texts); a source is
        drawn uniformly, its target adjective uniformly among its noun's (its own included), the target image
        uniformly among that state's images."""
        rng = np.random.default_rng(seed)
        by_state: dict[tuple, list] = {}
        for i, s in enumerate(zip(self.adjs, self.nouns)):
            by_state.setdefault(s, []).append(i)
        adjs = self.noun_adjs()
        src, tgt, texts = [], [], []
        for _ in range(n_pairs):
            i = int(rng.integers(len(self.images)))
            noun = self.nouns[i]
            a = adjs[noun][int(rng.integers(len(adjs[noun])))]
            choices = by_state[(a, noun)]
            src.append(i)
            tgt.append(choices[int(rng.integers(len(choices)))])
            texts.append(a)
        return np.asarray(src), np.asarray(tgt), texts


def release_root(root) -> Path:
    """`root` itself when it holds images/, else its release_dataset/ (the zip's top folder)."""
    root = Path(root)
    if (root / "images").is_dir() or not (root / "release_dataset").is_dir():
        return root
    return root / "release_dataset"


def read_adj_antonyms(root) -> dict:
    """{adjective: [antonyms]} from adj_ants.csv (rows: an adjective then its antonyms); {} when absent."""
    path = release_root(root) / "adj_ants.csv"
    if not path.is_file():
        return {}
    out = {}
    with path.open(newline="") as fh:
        for line_no, row in enumerate(csv.reader(fh), 1):
            row = [c.strip() for c in row if c.strip()]
            if not row:
                continue
            if len(row) < 2:
                raise DataFormatError(path, f"{len(row)} field(s)", line=line_no,
                                      expected="an adjective then at least one antonym, comma-separated")
            out[row[0]] = row[1:]
    return out


def read_mit_states(root, split: str = "test", skips: SkipLog | None = None,
                    test_nouns=TEST_NOUNS) -> MITStatesSplit:
    """The `split` (train | test) of MIT-States under `root` (release_dataset/ or its parent): every image of
    every "adjective noun" folder whose noun is (test) or is not (train) in `test_nouns`, folders and files in
    sorted order. Raises DataFormatError when there is no images/ folder or the split has no usable image."""
    if split not in ("train", "test"):
        raise ValueError(f"MIT-States split must be 'train' or 'test', got {split!r}")
    skips = skips if skips is not None else SkipLog()
    images_dir = require_dir(release_root(root) / "images", "MIT-States images folder (release_dataset/images)")
    test_nouns = set(test_nouns)
    paths, adjs, nouns = [], [], []
    for folder in sorted(p for p in images_dir.iterdir() if p.is_dir()):
        words = folder.name.split()
        if len(words) != 2:
            skips.add(folder, "MIT-States folder not named 'adjective noun'")
            continue
        adj, noun = words
        if adj == NO_ADJECTIVE or (noun in test_nouns) != (split == "test"):
            continue
        for f in sorted(folder.iterdir()):
            if f.suffix.lower() not in (".jpg", ".jpeg"):
                skips.add(f, "MIT-States file that is not a JPEG")
                continue
            paths.append(f)
            adjs.append(adj)
            nouns.append(noun)
    ok = check_images(paths, skips)
    keep = [i for i, good in enumerate(ok) if good]
    out = MITStatesSplit(split, [paths[i] for i in keep], [adjs[i] for i in keep], [nouns[i] for i in keep], skips)
    if not out.images:
        raise DataFormatError(images_dir, f"no usable {split} image", expected=f"'adjective noun' folders of JPEGs "
                              f"whose noun is {'one' if split == 'test' else 'none'} of the protocol's test nouns")
    single = [n for n, a in out.noun_adjs().items() if len(a) < 2]
    for n in single:  # a noun with one state gives no query and only identity pairs: dropped, counted
        skips.add(n, "MIT-States noun with a single adjective")
    if single:
        keep = [i for i, n in enumerate(out.nouns) if n not in single]
        out = MITStatesSplit(split, [out.images[i] for i in keep], [out.adjs[i] for i in keep],
                             [out.nouns[i] for i in keep], skips)
    return out


# ------------------------------------------------------------------------------------------ synthetic world

@dataclass
class MITStatesWorldConfig:
    """Sizes of the synthetic MIT-States world; the world is a pure function of these fields."""

    seed: int = 0                   # draws objects' states, placements and noise
    image_size: int = 64            # photos are image_size x image_size RGB JPEGs
    train_nouns: int = 8            # nouns of the training split (real MIT-States nouns outside TEST_NOUNS)
    test_nouns: int = 4             # nouns of the test split (the first of TEST_NOUNS)
    adjs_per_noun: int = 3          # states drawn per noun (of ADJECTIVES)
    images_per_state: int = 6       # photos per (adjective, noun) folder
    no_adjective_images: int = 2    # photos in each noun's "adj <noun>" folder (ignored by the protocol)


TRAIN_NOUN_NAMES = ("apple", "ball", "bottle", "box", "car", "coin", "cup", "door", "egg", "flower", "hat", "key")
SHAPES = ("circle", "square", "triangle", "diamond", "bar", "ring", "cross", "star")  # one per noun, in order
ADJECTIVES = {  # state -> how it changes the drawn object
    "red": {"colour": (200, 40, 40)}, "blue": {"colour": (40, 70, 200)}, "green": {"colour": (40, 160, 60)},
    "yellow": {"colour": (220, 200, 40)}, "large": {"scale": 1.35}, "small": {"scale": 0.6},
    "striped": {"pattern": "stripes"}, "dotted": {"pattern": "dots"}, "broken": {"broken": True},
}
ANTONYMS = {"large": ["small"], "small": ["large"]}


def _draw_object(rng, shape: str, state: dict, size: int) -> Image.Image:
    """One photo: a shape (the noun) in a state (the adjective) on a noisy background, placement jittered."""
    bg = tuple(int(v) for v in rng.integers(150, 235, 3))
    im = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(im)
    colour = state.get("colour", tuple(int(v) for v in rng.integers(60, 140, 3)))
    r = size * 0.28 * state.get("scale", 1.0) * rng.uniform(0.9, 1.1)
    cx, cy = size / 2 + rng.uniform(-0.08, 0.08) * size, size / 2 + rng.uniform(-0.08, 0.08) * size
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        d.ellipse(box, fill=colour)
    elif shape == "square":
        d.rectangle(box, fill=colour)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    elif shape == "diamond":
        d.polygon([(cx, cy - r), (cx - r, cy), (cx, cy + r), (cx + r, cy)], fill=colour)
    elif shape == "bar":
        d.rectangle((cx - r, cy - r / 3, cx + r, cy + r / 3), fill=colour)
    elif shape == "ring":
        d.ellipse(box, outline=colour, width=max(2, int(r / 3)))
    elif shape == "cross":
        d.rectangle((cx - r, cy - r / 4, cx + r, cy + r / 4), fill=colour)
        d.rectangle((cx - r / 4, cy - r, cx + r / 4, cy + r), fill=colour)
    else:  # star
        pts = [(cx + (r if k % 2 == 0 else r / 2.2) * np.cos(np.pi * k / 5 - np.pi / 2),
                cy + (r if k % 2 == 0 else r / 2.2) * np.sin(np.pi * k / 5 - np.pi / 2)) for k in range(10)]
        d.polygon(pts, fill=colour)
    if state.get("pattern") == "stripes":
        for x in range(int(cx - r), int(cx + r), max(3, size // 12)):
            d.line((x, cy - r, x, cy + r), fill=bg, width=max(1, size // 32))
    elif state.get("pattern") == "dots":
        for _ in range(12):
            x, y = rng.uniform(cx - r, cx + r), rng.uniform(cy - r, cy + r)
            d.ellipse((x - size / 40, y - size / 40, x + size / 40, y + size / 40), fill=bg)
    if state.get("broken"):
        d.line((cx - r, cy - r * 0.2, cx + r, cy + r * 0.3), fill=bg, width=max(2, size // 16))
    pixels = np.asarray(im).astype(np.int16) + rng.integers(-12, 13, (size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def build_mit_states(folder, params: dict) -> None:
    """Write a synthetic MIT-States release into `folder`/release_dataset (the `build` of worlds.ensure_world)."""
    cfg = MITStatesWorldConfig(**params)
    if cfg.train_nouns > len(TRAIN_NOUN_NAMES) or cfg.train_nouns + cfg.test_nouns > len(SHAPES) * 3:
        raise ValueError(f"MITStatesWorldConfig: at most {len(TRAIN_NOUN_NAMES)} training nouns")
    root = Path(folder) / "release_dataset"
    rng = np.random.default_rng([cfg.seed, 41])
    nouns = list(TEST_NOUNS[:cfg.test_nouns]) + list(TRAIN_NOUN_NAMES[:cfg.train_nouns])
    shapes = [SHAPES[i % len(SHAPES)] for i in rng.permutation(len(nouns))]
    adjectives = list(ADJECTIVES)
    for noun, shape in zip(nouns, shapes):
        states = [adjectives[i] for i in sorted(rng.choice(len(adjectives), cfg.adjs_per_noun, replace=False))]
        for adj in states + [NO_ADJECTIVE] * (cfg.no_adjective_images > 0):
            out = root / "images" / f"{adj} {noun}"
            out.mkdir(parents=True, exist_ok=True)
            n = cfg.images_per_state if adj != NO_ADJECTIVE else cfg.no_adjective_images
            for k in range(n):
                im = _draw_object(rng, shape, ADJECTIVES.get(adj, {}), cfg.image_size)
                im.save(out / f"{noun}_{adj}_{k:03d}.jpg", format="JPEG", quality=92)
    with (root / "adj_ants.csv").open("w", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerows([[a, *ants] for a, ants in ANTONYMS.items()])
    (root / "README.txt").write_text("Synthetic MIT-States-style release (visualsearch.data.mit_states): "
                                     "images/<adj noun>/*.jpg, adj_ants.csv.\n")


def mit_states_world(cfg: MITStatesWorldConfig, root=None) -> Path:
    """The synthetic world's folder (drawn once, cached); read it with `read_mit_states(folder)`."""
    return ensure_world("mit-states", asdict(cfg), build_mit_states, root)
