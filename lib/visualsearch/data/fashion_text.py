"""Text-feedback datasets drawn from the products world, written in Fashion IQ, Fashion200k and
Birds-to-Words formats (read back by `data.text_feedback`).

Why these worlds: composed retrieval is only needed when neither the reference image nor the text alone
names the target. Here a target is a product that keeps most of its reference's look (every coarse
attribute the text does not mention, and about half of its fine details) and changes what the text says;
look-alike distractors (the target's coarse attributes, other details) share the gallery, so the exact
target is found only by combining what the image shows with what the words change.

- Fashion IQ style (`build_fashion_iq`): categories dress, shirt, toptee; per split, reference -> target
  pairs differing in one to three of colour, pattern, sleeve, length, neckline; two relative captions per
  pair written by different "annotators" (each mentions some of the differences, together all), in varied
  words and sometimes vaguely ("darker", "longer"). Files: `captions/cap.{cat}.{split}.json`,
  `image_splits/split.{cat}.{split}.json`, images `images/{asin}.png` (or the authors' `img/{cat}/{asin}`
  with `layout="authors"`). The test split's captions have no target, as in the real data.
  `attributes.json` (asin -> coarse attributes) is extra, for analysis; readers ignore it.
- Fashion200k style (`build_fashion200k`): products captioned "colour pattern sleeve category"; many
  share a caption; `labels/{cat}_{split}_detect_all.txt` (path, detection score, caption),
  `test_queries.txt` of test pairs whose captions differ by one word, images at the listed paths.
- Birds-to-Words style (`build_birds_to_words`): pairs of same-category products with a paragraph
  comparing them in "animal1" / "animal2" terms, in the 11-column TSV `birds-to-words-v1.0.tsv` and
  `images/` named by the last segment of each (made-up) image URL.
"""
from __future__ import annotations

import colorsys
import csv
import dataclasses
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .products import CATEGORIES, COLOURS, PALETTE, PATTERNS, Product, render_photo, sample_product, sample_view
from .worlds import ensure_world

ATTRIBUTES = ("colour", "pattern", "sleeve", "length", "neckline")
_DETAILS = ("shade", "pattern_scale", "pattern_phase", "pattern_angle", "buttons", "trim_colour", "logo_shape",
            "logo_place", "logo_colour", "fit")


@dataclass
class FashionTextConfig:
    """Sizes of the text-feedback worlds drawn from products; a pure function of these fields."""

    seed: int = 0                     # draws products, pairs, captions and photos
    image_size: int = 64              # photos are image_size x image_size RGB
    categories: tuple = ("dress", "shirt", "toptee")  # Fashion IQ's three (products categories)
    fiq_pairs: tuple = (600, 150, 50)  # Fashion IQ-style pairs per category in train, val, test
    fiq_distractors: int = 1          # look-alikes of each target (same coarse attributes) in the gallery
    max_changes: int = 3              # a pair differs in 1 .. max_changes coarse attributes
    keep_detail_prob: float = 0.5     # chance a target keeps each fine detail of its reference
    vague_prob: float = 0.25          # chance a colour/length change is described only comparatively
    layout: str = "common"            # Fashion IQ image layout: common (images/{asin}.png) | authors (img/{cat}/{asin})
    f200k_products: tuple = (300, 100)  # Fashion200k-style products per category in train, test
    f200k_colours: int = 6            # colours used by Fashion200k-style products (fewer = more shared captions)
    f200k_queries: int = 200          # Fashion200k-style test queries (one-word-different pairs)
    b2w_pairs: tuple = (300, 60, 60)  # Birds-to-Words-style pairs in train, val, test

    def __post_init__(self):
        self.categories, self.fiq_pairs = tuple(self.categories), tuple(self.fiq_pairs)
        self.f200k_products, self.b2w_pairs = tuple(self.f200k_products), tuple(self.b2w_pairs)
        if self.layout not in ("common", "authors"):
            raise ValueError(f"FashionTextConfig.layout={self.layout!r}; expected 'common' or 'authors'")
        unknown = [c for c in self.categories if c not in CATEGORIES]
        if unknown:
            raise ValueError(f"FashionTextConfig.categories: unknown {unknown}; expected some of {list(CATEGORIES)}")


# ------------------------------------------------------------------------------------ pairs of products

def _options(category: str, attribute: str) -> tuple:
    _, sleeves, lengths, necks = CATEGORIES[category]
    return {"colour": COLOURS, "pattern": PATTERNS, "sleeve": sleeves, "length": lengths, "neckline": necks}[attribute]


def changeable(category: str) -> list[str]:
    return [a for a in ATTRIBUTES if len(_options(category, a)) > 1]


def modified_product(rng: np.random.Generator, ref: Product, n_changes: int, keep_detail_prob: float):
    """A target for `ref`: `n_changes` coarse attributes changed, each fine detail kept with some chance."""
    attrs = list(rng.choice(changeable(ref.category), size=min(n_changes, len(changeable(ref.category))),
                            replace=False))
    changes = {a: str(rng.choice([v for v in _options(ref.category, a) if v != getattr(ref, a)])) for a in attrs}
    coarse = tuple(changes.get(a, getattr(ref, a)) for a in ATTRIBUTES)
    fresh = sample_product(rng, ref.category, coarse)
    kept = {d: getattr(ref, d) for d in _DETAILS if rng.random() < keep_detail_prob}
    target = dataclasses.replace(fresh, **kept)
    return target, [(a, getattr(ref, a), changes[a]) for a in ATTRIBUTES if a in changes]


def lookalike(rng: np.random.Generator, p: Product) -> Product:
    """Another product with the same coarse attributes and fresh details."""
    return sample_product(rng, p.category, tuple(getattr(p, a) for a in ATTRIBUTES))


# ---------------------------------------------------------------------------------------------- captions

def lightness(colour: str) -> float:
    return colorsys.rgb_to_hls(*(v / 255 for v in PALETTE[colour]))[1]


_PATTERN_WORDS = {"solid": ["is plain", "has no pattern", "is a solid color", "without a print"],
                  "stripes": ["has stripes", "is striped", "with stripes", "has a striped pattern"],
                  "dots": ["has polka dots", "is dotted", "with dots", "has a dot print"],
                  "checks": ["is checkered", "has a plaid pattern", "with checks", "has a checked print"],
                  "floral": ["has a floral print", "is flowery", "with flowers", "has a flower pattern"],
                  "gradient": ["has a color gradient", "is ombre", "with faded colors", "fades from dark to light"]}
_SLEEVE_WORDS = {"sleeveless": ["is sleeveless", "has no sleeves", "without sleeves"],
                 "short": ["has short sleeves", "is short sleeved", "with short sleeves"],
                 "long": ["has long sleeves", "is long sleeved", "with long sleeves"]}
_NECK_WORDS = {"round": ["has a round neck", "with a crew neck", "has a round neckline"],
               "v": ["has a v neck", "with a v neckline", "has a deep v"],
               "square": ["has a square neck", "with a square neckline", "has a straight neckline"],
               "collar": ["has a collar", "is collared", "with a collar"]}
_LENGTH_ORDER = ("cropped", "mini", "regular", "knee", "long", "maxi")
_LENGTH_WORDS = {"cropped": ["is cropped", "is a cropped one"], "mini": ["is a mini", "is very short"],
                 "regular": ["is regular length", "has a normal length"], "knee": ["is knee length", "reaches the knee"],
                 "long": ["is long", "is a long one"], "maxi": ["is a maxi", "is floor length"]}


def describe(rng: np.random.Generator, attribute: str, old: str, new: str, vague_prob: float) -> str:
    """One phrase for one attribute change, in one of several wordings."""
    if attribute == "colour":
        if rng.random() < vague_prob and abs(lightness(new) - lightness(old)) > 0.08:
            return str(rng.choice(["is darker", "is a darker color", "darker"] if lightness(new) < lightness(old)
                                  else ["is lighter", "is a lighter color", "brighter"]))
        return str(rng.choice([f"is {new}", f"{new} in color", f"is {new} instead of {old}", f"one in {new}",
                               f"has a {new} color", f"is more {new}"]))
    if attribute == "pattern":
        return str(rng.choice(_PATTERN_WORDS[new]))
    if attribute == "sleeve":
        return str(rng.choice(_SLEEVE_WORDS[new]))
    if attribute == "neckline":
        return str(rng.choice(_NECK_WORDS[new]))
    if rng.random() < vague_prob:
        longer = _LENGTH_ORDER.index(new) > _LENGTH_ORDER.index(old)
        return str(rng.choice(["is longer", "longer"] if longer else ["is shorter", "shorter"]))
    return str(rng.choice(_LENGTH_WORDS[new]))


def join_phrases(rng: np.random.Generator, phrases: list[str]) -> str:
    if len(phrases) == 1:
        return phrases[0]
    glue = str(rng.choice([" and ", ", ", " and also "]))
    return glue.join(phrases)


def relative_captions(rng: np.random.Generator, changes: list, vague_prob: float) -> list[str]:
    """Two captions for one pair: each mentions a non-empty subset of the changes; together all of them."""
    n = len(changes)
    order = rng.permutation(n)
    first = set(order[: int(rng.integers(1, n + 1))].tolist())
    second = set(range(n)) - first or {int(rng.integers(n))}
    if rng.random() < 0.3:
        second.add(int(rng.integers(n)))
    return [join_phrases(rng, [describe(rng, *changes[i], vague_prob) for i in sorted(part, key=lambda _: rng.random())])
            for part in (first, second)]


# ------------------------------------------------------------------------------------------ Fashion IQ

def _asin(rng: np.random.Generator, used: set) -> str:
    while True:
        asin = "B0" + "".join(rng.choice(list("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"), 8))
        if asin not in used:
            used.add(asin)
            return asin


def _photo(rng, product, size):
    return render_photo(product, sample_view(rng, "shop"), size)[0]


def build_fashion_iq(folder, params: dict) -> None:
    """Write a Fashion IQ-style dataset into `folder` (the `build` of worlds.ensure_world)."""
    cfg = FashionTextConfig(**params)
    folder = Path(folder)
    for sub in ("captions", "image_splits"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    used: set = set()
    attributes = {}
    for c, cat in enumerate(cfg.categories):
        for s, (split, n_pairs) in enumerate(zip(("train", "val", "test"), cfg.fiq_pairs)):
            rng = np.random.default_rng([cfg.seed, 100 + c, s])
            products, captions = {}, []
            for _ in range(n_pairs):
                ref = sample_product(rng, cat)
                target, changes = modified_product(rng, ref, int(rng.integers(1, cfg.max_changes + 1)),
                                                   cfg.keep_detail_prob)
                ref_id, target_id = _asin(rng, used), _asin(rng, used)
                products[ref_id], products[target_id] = ref, target
                for _ in range(cfg.fiq_distractors):
                    products[_asin(rng, used)] = lookalike(rng, target)
                entry = {"candidate": ref_id, "target": target_id,
                         "captions": relative_captions(rng, changes, cfg.vague_prob)}
                if split == "test":
                    del entry["target"]
                captions.append(entry)
            order = sorted(products)
            attributes.update({a: {"category": cat, **{k: getattr(products[a], k) for k in ATTRIBUTES}} for a in order})
            (folder / "image_splits" / f"split.{cat}.{split}.json").write_text(json.dumps(order))
            (folder / "captions" / f"cap.{cat}.{split}.json").write_text(json.dumps(captions, indent=0))
            for asin in order:
                path = folder / "img" / cat / asin if cfg.layout == "authors" else folder / "images" / f"{asin}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                _photo(rng, products[asin], cfg.image_size).save(path, format="PNG")
    (folder / "attributes.json").write_text(json.dumps(attributes, indent=0, sort_keys=True))


# ----------------------------------------------------------------------------------------- Fashion200k

_F200K_PATTERN = {"solid": "plain", "stripes": "striped", "dots": "dotted", "checks": "checked",
                  "floral": "floral", "gradient": "ombre"}
_F200K_SLEEVE = {"sleeveless": "sleeveless", "short": "short-sleeve", "long": "long-sleeve"}


def f200k_caption(p: Product) -> str:
    return f"{p.colour} {_F200K_PATTERN[p.pattern]} {_F200K_SLEEVE.get(p.sleeve, p.sleeve)} {p.category}"


def build_fashion200k(folder, params: dict) -> None:
    """Write a Fashion200k-style dataset into `folder` (the `build` of worlds.ensure_world)."""
    cfg = FashionTextConfig(**params)
    folder = Path(folder)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    test_rows = []
    pid = 10_000_000
    for c, cat in enumerate(cfg.categories):
        for s, (split, n) in enumerate(zip(("train", "test"), cfg.f200k_products)):
            rng = np.random.default_rng([cfg.seed, 200 + c, s])
            colours = COLOURS[: cfg.f200k_colours]
            sleeves = CATEGORIES[cat][1]
            lines = []
            for _ in range(n):
                coarse = (str(rng.choice(colours)), str(rng.choice(PATTERNS)), str(rng.choice(sleeves)),
                          str(rng.choice(CATEGORIES[cat][2])), str(rng.choice(CATEGORIES[cat][3])))
                product = sample_product(rng, cat, coarse)
                pid += 1
                rel = f"women/{cat}/{pid}/{pid}_0.jpeg"
                (folder / rel).parent.mkdir(parents=True, exist_ok=True)
                _photo(rng, product, cfg.image_size).save(folder / rel, format="JPEG", quality=92)
                caption = f200k_caption(product)
                lines.append(f"{rel}\t{rng.uniform(0.5, 1.0):.4f}\t{caption}")
                if split == "test":
                    test_rows.append((rel, caption))
            (folder / "labels" / f"{cat}_{split}_detect_all.txt").write_text("\n".join(lines) + "\n")
    rng = np.random.default_rng([cfg.seed, 299])
    pairs = [(a, b) for a, ca in test_rows for b, cb in test_rows
             if len(ca.split()) == len(cb.split()) and sum(x != y for x, y in zip(ca.split(), cb.split())) == 1]
    chosen = rng.choice(len(pairs), size=min(cfg.f200k_queries, len(pairs)), replace=False) if pairs else []
    (folder / "test_queries.txt").write_text("".join(f"{pairs[i][0]} {pairs[i][1]}\n" for i in sorted(chosen)))


# -------------------------------------------------------------------------------------- Birds-to-Words

def comparison_paragraph(rng: np.random.Generator, a: Product, b: Product) -> str:
    """Sentences comparing animal1 (a) with animal2 (b) on the attributes where they differ, and one that
    they share."""
    sentences = []
    for attr in rng.permutation(ATTRIBUTES):
        x, y = getattr(a, attr), getattr(b, attr)
        if x == y:
            continue
        if attr == "colour":
            s = str(rng.choice([f"animal1 is {x} while animal2 is {y}", f"animal2 is {y} and animal1 is {x}",
                                f"animal1 is {'darker' if lightness(x) < lightness(y) else 'lighter'} than animal2"]))
        elif attr == "pattern":
            s = str(rng.choice([f"animal1 {_PATTERN_WORDS[x][0]} but animal2 {_PATTERN_WORDS[y][0]}",
                                f"animal2 {_PATTERN_WORDS[y][1]} unlike animal1"]))
        elif attr == "sleeve":
            s = f"animal1 {_SLEEVE_WORDS[x][0]} and animal2 {_SLEEVE_WORDS[y][0]}"
        elif attr == "neckline":
            s = f"animal2 {_NECK_WORDS[y][0]} where animal1 {_NECK_WORDS[x][0]}"
        else:
            longer = _LENGTH_ORDER.index(y) > _LENGTH_ORDER.index(x)
            s = f"animal2 is {'longer' if longer else 'shorter'} than animal1"
        sentences.append(s)
    if a.colour == b.colour:
        sentences.append(f"both are {a.colour}")
    elif a.pattern == b.pattern:
        sentences.append(f"both are {_F200K_PATTERN[a.pattern]}")
    return " . ".join(sentences) + " ."


def build_birds_to_words(folder, params: dict) -> None:
    """Write a Birds-to-Words-style TSV and images into `folder` (the `build` of worlds.ensure_world)."""
    cfg = FashionTextConfig(**params)
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    header = ["img1_observation_url", "img1_url", "img1_species", "img1_selection", "img2_observation_url",
              "img2_url", "img2_species", "img2_selection", "split", "annotation_number", "description"]
    rows, photo = [header], 100_000
    for s, (split, n) in enumerate(zip(("train", "val", "test"), cfg.b2w_pairs)):
        rng = np.random.default_rng([cfg.seed, 300 + s])
        for _ in range(n):
            cat = str(rng.choice(cfg.categories))
            a = sample_product(rng, cat)
            b, _ = modified_product(rng, a, int(rng.integers(1, cfg.max_changes + 1)), cfg.keep_detail_prob)
            cols = []
            for p in (a, b):
                photo += 1
                url = f"https://static.example.org/photos/{photo}/medium_{photo}.jpg"
                _photo(rng, p, cfg.image_size).save(folder / "images" / url.split("/")[-1], format="JPEG", quality=92)
                cols += [f"https://www.example.org/observations/{photo}", url, p.category, "1"]
            for k in range(2 if split != "train" else 1):  # two annotators on evaluation pairs
                rows.append(cols + [split, str(k), comparison_paragraph(rng, a, b)])
    with (folder / "birds-to-words-v1.0.tsv").open("w", newline="") as fh:
        csv.writer(fh, delimiter="\t", lineterminator="\n").writerows(rows)


# ------------------------------------------------------------------------------------------ the worlds

def fashion_iq_world(cfg: FashionTextConfig, root=None) -> Path:
    return ensure_world("products-fashioniq", asdict(cfg), build_fashion_iq, root)


def fashion200k_world(cfg: FashionTextConfig, root=None) -> Path:
    return ensure_world("products-fashion200k", asdict(cfg), build_fashion200k, root)


def birds_to_words_world(cfg: FashionTextConfig, root=None) -> Path:
    return ensure_world("products-birds-to-words", asdict(cfg), build_birds_to_words, root)
