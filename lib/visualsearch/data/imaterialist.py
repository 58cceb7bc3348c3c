"""iMaterialist-style weak supervision (the paper's "iMFQ"): attribute labels -> neighbour pairs -> captions.

Why: the CFQ paper shows that captions made mechanically from attribute-label differences between similar
images are a useful domain-specific pretraining signal on top of generic image-text pretraining. This module
reads iMaterialist Fashion 2018 style labels, pairs each image with "neighbours" whose label sets differ
slightly, writes a caption from the difference by the released code's rules, and draws the evaluation queries
and gallery of the released code (scored by `cfq_metrics.imat_retrieval_metrics`: ROC-AUC over all query x
gallery pairs, and mAP; correct = exactly the same label set as the target).

Formats read:
- annotations `{split}.json`: iMaterialist 2018 (`{"annotations": [{"imageId": "1", "labelId": ["95", ...]}],
  "images": [...]}`) or the released derivative `{split}_with_neighbors.json` (a list of records with
  imageId, labelId and optionally neighbors). Ids may be strings or ints.
- label map `imat2018_label_map.tsv`: tab-separated with header `labelId<TAB>labelName`.
- images `images_{split}/{id:07d}[:3]/{id:07d}.jpeg` (the released code's layout).

The neighbour rule (the paper's was not released): image B is a neighbour of image A when their label sets
differ (A != B), share at least `min_shared` labels, and each has at most `max_changes` labels the other
lacks. With max_changes = 1 a neighbour is A with one label added, removed or replaced: exactly the cases the
caption rules name ("floral", "not floral", "shorter sleeves"). Found exactly, without an all-pairs pass, by
indexing every label set under each of its subsets with up to `max_changes` labels deleted: two sets share
such a key iff each lacks at most `max_changes` of the other's labels. Each image keeps at most
`max_neighbors` neighbours, the fewest changes first, ties broken by a seeded shuffle.

Caption rules (released code), R = labels of the reference only, T = labels of the target only:
- R empty -> a T label name ("Floral"); T empty -> "not {R label}";
- one each way -> curated phrases for a known (R, T) sleeve pair ("shorter sleeves"), else curated phrases
  for the target label (sleeves, patterns: "with a floral pattern"), else "{T} not {R}" with synonyms;
- several -> every "{t} not {r}" combination.
The released code takes the *first* element of a Python set for the two single-label cases (an arbitrary
label); here every label of that side is a caption choice.
"""
from __future__ import annotations

import csv
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import DataFormatError, SkipLog, require_file

# --- curated phrases of the released code (src/maaf/datasets/imat_fashion.py), keyed by iMaterialist names.
SLEEVE_CHANGE_PHRASES = {  # (reference label, target label) -> captions
    ("Long Sleeved", "Short Sleeves"): ["shorter sleeves", "not as long sleeves", "less long sleeves"],
    ("Short Sleeves", "Long Sleeved"): ["longer sleeves", "longer sleeved"],
    ("Sleeveless", "Short Sleeves"): ["with short sleeves", "with sleeves but not long", "not sleeveless",
                                      "with sleeves"],
    ("Sleeveless", "Long Sleeved"): ["with long sleeves", "with sleeves", "not sleeveless", "long sleeved"],
    ("Strapless", "Sleeveless"): ["sleeveless but not strapless", "sleeveless"],
}
TARGET_PHRASES = {  # target label -> captions (sleeves, then patterns)
    "Sleeveless": ["sleeveless", "no sleeves", "without sleeves"],
    "Strapless": ["strapless", "no straps", "without straps"],
    "Puff Sleeves": ["puff sleeves", "puffed sleeves", "with puff sleeves"],
    "Long Sleeved": ["with long sleeves", "long sleeved", "long sleeves"],
    "Short Sleeved": ["with short sleeves", "short sleeved", "short sleeves"],
    "Argyle": ["with an argyle pattern", "argyle"],
    "Camouflage": ["with a camouflage pattern", "camouflage", "camo", "with a camo pattern"],
    "Checkered": ["checkered", "with a checkered pattern", "with a checker pattern"],
    "Chevron": ["with a chevron pattern"],
    "Crochet": ["with a crochet pattern", "crochet"],
    "Floral": ["floral", "with a floral pattern", "with flowers"],
    "Fringe": ["with a fringe pattern", "with fringe"],
    "Galaxy": ["with a galaxy pattern"],
    "Geometric": ["with a geometric pattern", "geometric"],
    "Hearts": ["with hearts", "with a hearts pattern"],
    "Herringbone": ["with a herringbone pattern", "herringbone", "with a twill weave pattern"],
    "Houndstooth": ["with a houndstooth pattern", "with a hound's tooth pattern", "dogstooth", "dog's tooth",
                    "pied-de-poule", "hounds tooth check"],
    "Leopard And Cheetah": ["with a leopard or cheetah pattern", "cheetah print", "leopard print"],
    "Marbled": ["with a marbled pattern", "marbled"],
    "Mesh": ["with a mesh pattern"],
    "Paisley": ["with a paisley pattern", "paisley"],
    "Pin Stripes": ["with pin stripes", "with a pin stripe pattern"],
    "Plaid": ["in plaid", "plaid", "with a plaid pattern"],
    "Polka Dot": ["with polka dots", "with a polka dot pattern"],
    "Quilted": ["with a quilted pattern"],
    "Ripped": ["ripped"],
    "Ruched": ["ruched", "with ruching"],
    "Ruffles": ["with ruffles", "ruffled"],
    "Sequins": ["with sequins", "sequined"],
    "Snakeskin": ["with a snakeskin pattern", "snakeskin"],
    "Stripes": ["with stripes", "striped", "with a striped pattern"],
    "Tie Dye": ["with a tie dye pattern", "tie dye"],
    "Zebra": ["with a zebra pattern", "zebra print"],
}
SYNONYMS = {"Hi-Lo": ["high-low", "high low"], "Rhinestone Studded": ["with rhinestones"],
            "Vintage Retro": ["retro", "vintage"], "Multi Color": ["multicolor", "multicolored"]}


def caption_choices(reference: list[str], target: list[str]) -> list[str]:
    """Captions that turn an image labelled `reference` into one labelled `target` (label *names*)."""
    ref_only = sorted(set(reference) - set(target))
    tar_only = sorted(set(target) - set(reference))
    if not ref_only and not tar_only:
        raise ValueError("reference and target have the same labels: no caption describes no change")
    if not ref_only:
        return list(tar_only)
    if not tar_only:
        return [f"not {r}" for r in ref_only]
    if len(ref_only) == len(tar_only) == 1:
        r, t = ref_only[0], tar_only[0]
        if (r, t) in SLEEVE_CHANGE_PHRASES:
            return list(SLEEVE_CHANGE_PHRASES[(r, t)])
        if t in TARGET_PHRASES:
            return list(TARGET_PHRASES[t])
        return [f"{tt} not {rr}" for tt in SYNONYMS.get(t, [t]) for rr in SYNONYMS.get(r, [r])]
    return [f"{t} not {r}" for t in tar_only for r in ref_only]


# ------------------------------------------------------------------------------------------------ reading

def read_label_map(path) -> dict[int, str]:
    """imat2018_label_map.tsv -> {labelId: labelName}."""
    path = require_file(path, "iMaterialist label map (labelId<TAB>labelName)")
    out = {}
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh, delimiter="\t"))
    if not rows or [h.strip() for h in rows[0][:2]] != ["labelId", "labelName"]:
        raise DataFormatError(path, "bad header", line=1, expected="labelId<TAB>labelName")
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) < 2 or not row[1].strip():
            raise DataFormatError(path, "missing label name", line=line, field="labelName", expected="a name")
        try:
            label = int(row[0])
        except ValueError:
            raise DataFormatError(path, f"not an integer: {row[0]!r}", line=line, field="labelId",
                                  expected="an integer label id") from None
        if label in out:
            raise DataFormatError(path, f"duplicate labelId {label}", line=line, field="labelId")
        out[label] = row[1].strip()
    return out


def _as_int(value, path, index, fieldname) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise DataFormatError(path, f"annotation {index}: {value!r} is not an integer id", field=fieldname,
                              expected="an integer or a string of digits") from None


def read_annotations(path, label_map: dict | None = None) -> pd.DataFrame:
    """iMaterialist JSON -> DataFrame(imageId: int, labels: tuple[int, ...] sorted, neighbors: tuple[int, ...]).

    Accepts the Kaggle layout (an object with "annotations") and the released list of records. Labels not in
    `label_map` (when given) are an error naming the annotation.
    """
    path = require_file(path, "iMaterialist annotations JSON")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataFormatError(path, f"invalid JSON ({e.msg})", line=e.lineno) from None
    records = data.get("annotations") if isinstance(data, dict) else data
    if not isinstance(records, list):
        raise DataFormatError(path, "no annotation list",
                              expected='{"annotations": [{"imageId": ..., "labelId": [...]}, ...]} or a list of those')
    rows, seen = [], set()
    for i, rec in enumerate(records):
        if not isinstance(rec, dict) or "imageId" not in rec or "labelId" not in rec:
            raise DataFormatError(path, f"annotation {i} lacks imageId or labelId", field="annotations",
                                  expected="objects with imageId and a labelId list")
        image = _as_int(rec["imageId"], path, i, "imageId")
        if not isinstance(rec["labelId"], list):
            raise DataFormatError(path, f"annotation {i}: labelId is {type(rec['labelId']).__name__}",
                                  field="labelId", expected="a list of label ids")
        labels = tuple(sorted({_as_int(v, path, i, "labelId") for v in rec["labelId"]}))
        if label_map is not None:
            unknown = [v for v in labels if v not in label_map]
            if unknown:
                raise DataFormatError(path, f"annotation {i} (imageId {image}): labels {unknown} not in the label map",
                                      field="labelId", expected="ids listed in imat2018_label_map.tsv")
        if image in seen:
            raise DataFormatError(path, f"annotation {i}: imageId {image} appears twice", field="imageId")
        seen.add(image)
        neighbors = tuple(_as_int(v, path, i, "neighbors") for v in rec.get("neighbors", []))
        rows.append({"imageId": image, "labels": labels, "neighbors": neighbors})
    return pd.DataFrame(rows, columns=["imageId", "labels", "neighbors"])


def image_path(root, split: str, image_id: int) -> Path:
    """The released layout: images_{split}/{id:07d}[:3]/{id:07d}.jpeg (split 'val' is 'validation')."""
    split = "validation" if split in ("val", "test") else split
    s = f"{int(image_id):07d}"
    return Path(root) / f"images_{split}" / s[:3] / f"{s}.jpeg"


@dataclass
class IMatSplit:
    """One split read from disk: the annotations (with neighbours) and the label names."""

    root: Path
    split: str
    annotations: pd.DataFrame  # imageId, labels, neighbors; only images whose file exists
    label_names: dict           # labelId -> name
    skips: SkipLog = field(default_factory=SkipLog)

    def path(self, image_id: int) -> Path:
        return image_path(self.root, self.split, image_id)

    def names(self, labels) -> list[str]:
        return [self.label_names[v] for v in labels]


def read_imat(root, split: str = "validation", skips: SkipLog | None = None, max_changes: int = 1,
              min_shared: int = 1, max_neighbors: int = 10, seed: int = 0) -> IMatSplit:
    """Read `{split}_with_neighbors.json` if present (neighbours as released), else `{split}.json` with
    neighbours computed by `find_neighbors`. Images whose file is missing are dropped and counted, and so
    are neighbours pointing at them."""
    root = Path(root)
    name = "validation" if split in ("val", "test") else split
    label_map = read_label_map(root / "imat2018_label_map.tsv")
    released = root / f"{name}_with_neighbors.json"
    ann = read_annotations(released if released.is_file() else root / f"{name}.json", label_map)
    skips = skips if skips is not None else SkipLog()
    present = []
    for image in ann["imageId"]:
        p = image_path(root, name, image)
        ok = p.is_file()
        if not ok:
            skips.add(p, "missing image")
        present.append(ok)
    ann = ann[present].reset_index(drop=True)
    if not released.is_file():
        ann["neighbors"] = find_neighbors(ann["labels"].tolist(), max_changes, min_shared, max_neighbors, seed,
                                          ids=ann["imageId"].tolist())
    kept = set(ann["imageId"])
    ann["neighbors"] = [tuple(n for n in ns if n in kept) for ns in ann["neighbors"]]
    return IMatSplit(root=root, split=name, annotations=ann, label_names=label_map, skips=skips)


# ------------------------------------------------------------------------------------------- neighbours

def find_neighbors(label_sets: list, max_changes: int = 1, min_shared: int = 1, max_neighbors: int = 10,
                   seed: int = 0, ids: list | None = None) -> list[tuple]:
    """Neighbours of each image by the module's rule; returns, per image, a tuple of ids (positions when
    `ids` is None). Exact: see the module docstring for why the deletion-key index finds all of them."""
    sets = [frozenset(s) for s in label_sets]
    ids = list(range(len(sets))) if ids is None else list(ids)
    buckets: dict[frozenset, list[int]] = {}
    for i, s in enumerate(sets):
        for k in range(0, min(max_changes, len(s)) + 1):
            for removed in itertools.combinations(sorted(s), k):
                buckets.setdefault(s.difference(removed), []).append(i)
    rng = np.random.default_rng(seed)
    out = []
    for i, s in enumerate(sets):
        candidates = set()
        for k in range(0, min(max_changes, len(s)) + 1):
            for removed in itertools.combinations(sorted(s), k):
                candidates.update(buckets.get(s.difference(removed), ()))
        scored = []
        for j in candidates:
            t = sets[j]
            if t == s or len(s & t) < min_shared:
                continue
            scored.append((len(s ^ t), j))
        tiebreak = rng.random(len(scored))
        scored = [x for _, x in sorted(zip(tiebreak, scored), key=lambda z: (z[1][0], z[0]))]
        out.append(tuple(ids[j] for _, j in scored[:max_neighbors]))
    return out


# ------------------------------------------------------------------------------------------------- pairs

@dataclass
class WeakPair:
    """One weakly supervised training example: reference image, caption, target image."""

    reference: int  # imageId
    target: int     # imageId
    caption: str


def draw_pair(split: IMatSplit, rng: np.random.Generator, index: int | None = None) -> WeakPair:
    """A random (reference, neighbour, caption) as the released loader draws them: a uniformly chosen
    neighbour, then a uniformly chosen caption among the rule's choices."""
    ann = split.annotations
    with_neighbors = np.nonzero(ann["neighbors"].map(len).to_numpy() > 0)[0]
    if len(with_neighbors) == 0:
        raise ValueError("no image has a neighbour: loosen the neighbour rule")
    row = ann.iloc[with_neighbors[rng.integers(len(with_neighbors))] if index is None else index]
    target = row["neighbors"][rng.integers(len(row["neighbors"]))]
    target_labels = ann.loc[ann["imageId"] == target, "labels"].iloc[0]
    choices = caption_choices(split.names(row["labels"]), split.names(target_labels))
    return WeakPair(int(row["imageId"]), int(target), choices[rng.integers(len(choices))])


def evaluation_queries(split: IMatSplit, seed: int = 271828, max_queries: int | None = None) -> pd.DataFrame:
    """One query per image with a neighbour (first `max_queries`): a seeded neighbour as target and a
    seeded caption, as the released evaluation draws them. Columns reference, caption, target, target_labels."""
    rng = np.random.default_rng(seed)
    ann = split.annotations
    by_id = dict(zip(ann["imageId"], ann["labels"]))
    rows = []
    for image, labels, neighbors in zip(ann["imageId"], ann["labels"], ann["neighbors"]):
        if not neighbors:
            continue
        target = neighbors[rng.integers(len(neighbors))]
        choices = caption_choices(split.names(labels), split.names(by_id[target]))
        rows.append({"reference": int(image), "caption": choices[rng.integers(len(choices))],
                     "target": int(target), "target_labels": by_id[target]})
        if max_queries is not None and len(rows) >= max_queries:
            break
    return pd.DataFrame(rows)


def evaluation_gallery(queries: pd.DataFrame) -> list[int]:
    """The gallery of the released evaluation: every query's reference image, then targets not yet in it."""
    return list(dict.fromkeys([*queries["reference"].tolist(), *queries["target"].tolist()]))


# ====================================================================================== synthetic iMaterialist
#
# iMaterialist-style labels drawn on the products world's garments: each image is one garment photographed in
# a shop or street view, labelled with iMaterialist-like names of its category, colour, pattern, sleeve,
# length and neckline. Weak, as the real labels are: each attribute label is dropped with probability
# `label_dropout` (a "solid" garment has no pattern label at all, as iMaterialist has no "solid" label).
# Garments are drawn with independent attributes, so label sets that differ by one label are common and the
# neighbour rule finds pairs.

CATEGORY_LABELS = {"dress": "Dresses", "shirt": "Shirts", "toptee": "Tops", "trousers": "Pants", "skirt": "Skirts",
                   "jacket": "Jackets", "sweater": "Sweaters", "jumpsuit": "Jumpsuits", "coat": "Coats",
                   "shorts": "Shorts", "vest": "Vests", "hoodie": "Hoodies"}
PATTERN_LABELS = {"solid": None, "stripes": "Stripes", "dots": "Polka Dot", "checks": "Plaid", "floral": "Floral",
                  "gradient": "Ombre"}
SLEEVE_LABELS = {"sleeveless": "Sleeveless", "short": "Short Sleeves", "long": "Long Sleeved", "none": None}
LENGTH_LABELS = {"cropped": "Cropped", "shorts": "Short Length", "mini": "Mini", "regular": "Regular Length",
                 "knee": "Knee Length", "full": "Full Length", "long": "Long Length", "maxi": "Maxi"}
NECKLINE_LABELS = {"round": "Round Neck", "v": "V-Necks", "square": "Square Necked", "collar": "Collared",
                   "turtle": "Turtlenecks", "hood": "Hooded", "none": None}


def synthetic_label_names() -> list[str]:
    """Every label name the synthetic world can use, in a fixed order (its label map)."""
    from .products import COLOURS

    names = list(CATEGORY_LABELS.values()) + [c.capitalize() for c in COLOURS]
    for table in (PATTERN_LABELS, SLEEVE_LABELS, LENGTH_LABELS, NECKLINE_LABELS):
        names += [v for v in table.values() if v is not None]
    return list(dict.fromkeys(names))


def product_labels(product) -> list[str]:
    """iMaterialist-style label names of a products-world garment (before dropout)."""
    names = [CATEGORY_LABELS[product.category], product.colour.capitalize(), PATTERN_LABELS[product.pattern],
             SLEEVE_LABELS[product.sleeve], LENGTH_LABELS[product.length], NECKLINE_LABELS[product.neckline]]
    return [n for n in names if n is not None]


@dataclass
class IMatWorldConfig:
    """Sizes of a synthetic iMaterialist world. JSON-able; the world is a pure function of it."""

    seed: int = 0                                    # draws garments, views and label dropout
    categories: tuple = ("dress", "shirt", "toptee")  # garment categories
    train_images: int = 1500                         # images of the train split
    val_images: int = 300                            # images of the validation split
    label_dropout: float = 0.05                      # chance each non-category label is missing (weak labels)
    street_fraction: float = 0.5                     # fraction of street (cluttered) photos, else shop photos
    image_size: int = 64                             # images are image_size x image_size JPEG


def build_imat(folder, params) -> None:
    """Write a synthetic iMaterialist world: imat2018_label_map.tsv, train.json, validation.json (Kaggle
    layout: {"images": [...], "annotations": [{"imageId", "labelId"}]}) and images in the released layout."""
    from .products import render_photo, sample_product, sample_view

    cfg = params if isinstance(params, IMatWorldConfig) else IMatWorldConfig(**params)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = synthetic_label_names()
    ids = {name: i + 1 for i, name in enumerate(names)}
    (folder / "imat2018_label_map.tsv").write_text(
        "labelId\tlabelName\n" + "".join(f"{ids[n]}\t{n}\n" for n in names))
    rng = np.random.default_rng([cfg.seed, 808])
    image_id = 0
    for split, n in (("train", cfg.train_images), ("validation", cfg.val_images)):
        annotations, images = [], []
        for _ in range(n):
            image_id += 1
            product = sample_product(rng, str(rng.choice(cfg.categories)))
            labels = product_labels(product)
            kept = [labels[0]] + [x for x in labels[1:] if rng.random() >= cfg.label_dropout]
            kind = "street" if rng.random() < cfg.street_fraction else "shop"
            img, _ = render_photo(product, sample_view(rng, kind), cfg.image_size)
            path = image_path(folder, split, image_id)
            path.parent.mkdir(parents=True, exist_ok=True)
            img.save(path, quality=92)
            annotations.append({"imageId": str(image_id), "labelId": [str(ids[x]) for x in kept]})
            images.append({"imageId": str(image_id), "url": [f"synthetic://{split}/{image_id}"]})
        (folder / f"{split}.json").write_text(json.dumps({"images": images, "annotations": annotations}))


def imat_world(cfg: IMatWorldConfig, root=None) -> Path:
    """The folder of the synthetic iMaterialist world `cfg`, generated once into the world cache."""
    from dataclasses import asdict

    from .worlds import ensure_world

    return ensure_world("imaterialist", asdict(cfg), build_imat, root=root)
