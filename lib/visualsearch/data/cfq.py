"""Challenging Fashion Queries (CFQ): the reader of the released layout, and a synthetic CFQ in that layout.

Layout (as released with yahoo/maaf):
    judgments.tsv             one row per annotator judgment; tab-separated with a header; the columns used
                              are subset, query_hash, caption, catalog_hash, accurate (yes | not sure | no),
                              similar (reasonable | somewhat reasonable | not reasonable), case-insensitive;
                              other columns are kept untouched
    equivalent_captions.json  {caption: [paraphrase, ...]}
    images/{hash}.jpeg        query and catalog images

Why a reader of our own rather than pandas.read_csv: a malformed row must be reported with its line and
field, and the three catalog images missing from the release must cost only the judgments that need them
(skipped and counted), never the run.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..cfq_metrics import aggregate_judgments
from .errors import DataFormatError, SkipLog, require_dir, require_file
from .images import check_images, load_image

ACCURATE_VALUES = {"yes": 1, "not sure": 0, "no": -1}  # released code's mapping of the accuracy answer
SIMILAR_VALUES = {"reasonable": 1, "somewhat reasonable": 0, "not reasonable": -1}  # of the similarity answer
REQUIRED_COLUMNS = ("subset", "query_hash", "caption", "catalog_hash", "accurate", "similar")


@dataclass
class CFQData:
    """CFQ as read from disk.

    `judgments`: one row per usable judgment, `accurate` and `similar` numeric in {-1, 0, 1}, hashes as
    strings; judgments needing a missing or corrupt image are dropped and counted in `skips`.
    """

    root: Path
    judgments: pd.DataFrame
    equivalent_captions: dict = field(default_factory=dict)
    skips: SkipLog = field(default_factory=SkipLog)
    dropped_judgments: int = 0  # judgments dropped because an image they need is missing or corrupt

    def image_path(self, image_hash: str) -> Path:
        return self.root / "images" / f"{image_hash}.jpeg"

    def load_image(self, image_hash: str):
        """PIL RGB image of `image_hash`, or None (counted in `skips`) if it cannot be read."""
        return load_image(self.image_path(image_hash), self.skips)

    def aggregated(self) -> pd.DataFrame:
        """Judgments averaged per (subset, query, caption, catalog item), with labels and relevance."""
        return aggregate_judgments(self.judgments)

    def queries(self) -> pd.DataFrame:
        """Distinct (query_hash, caption) pairs: what the model embeds as queries."""
        return self.judgments[["query_hash", "caption"]].drop_duplicates().reset_index(drop=True)

    def catalog(self) -> list[str]:
        """Distinct catalog item hashes, in first-seen order."""
        return list(dict.fromkeys(self.judgments["catalog_hash"]))

    def subsets(self) -> list[str]:
        return sorted(self.judgments["subset"].unique())


def _parse_answer(value: str, mapping: dict, path: Path, line: int, column: str) -> int:
    key = " ".join(value.strip().lower().split())
    if key not in mapping:
        raise DataFormatError(path, f"unknown answer {value!r}", line=line, field=column,
                              expected=" | ".join(mapping))
    return mapping[key]


def read_judgments(path) -> pd.DataFrame:
    """Parse judgments.tsv into a frame with numeric `accurate` / `similar`; every problem names its line."""
    path = require_file(path, "CFQ judgments.tsv")
    rows = []
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        try:
            header = next(reader)
        except StopIteration:
            raise DataFormatError(path, "empty file", line=1, expected="a header row") from None
        header = [h.strip() for h in header]
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise DataFormatError(path, f"header lacks columns {missing}", line=1,
                                  expected="tab-separated columns including " + ", ".join(REQUIRED_COLUMNS))
        for line_no, fields in enumerate(reader, start=2):
            if not fields or all(not f.strip() for f in fields):
                continue
            if len(fields) != len(header):
                raise DataFormatError(path, f"{len(fields)} fields", line=line_no,
                                      expected=f"{len(header)} tab-separated fields as in the header")
            row = dict(zip(header, fields))
            for col in ("subset", "query_hash", "caption", "catalog_hash"):
                if not row[col].strip():
                    raise DataFormatError(path, "empty value", line=line_no, field=col, expected="a non-empty string")
                row[col] = row[col].strip()
            row["accurate"] = _parse_answer(row["accurate"], ACCURATE_VALUES, path, line_no, "accurate")
            row["similar"] = _parse_answer(row["similar"], SIMILAR_VALUES, path, line_no, "similar")
            row["line"] = line_no
            rows.append(row)
    if not rows:
        raise DataFormatError(path, "no judgments", expected="at least one row after the header")
    return pd.DataFrame(rows)


def read_equivalent_captions(path) -> dict:
    """{caption: [paraphrases]}; the file is optional (the metrics do not use it), a malformed one is not."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataFormatError(path, f"invalid JSON ({e.msg})", line=e.lineno) from None
    if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, list) and all(isinstance(s, str) for s in v) for k, v in data.items()):
        raise DataFormatError(path, "wrong structure", expected="an object {caption: [paraphrase, ...]}")
    return data


def read_cfq(root, skips: SkipLog | None = None, verify_images: bool = True) -> CFQData:
    """Read a CFQ folder. Judgments whose query or catalog image is missing or corrupt are dropped, the
    image counted once in `skips` (three catalog images are known to be missing from the release)."""
    root = require_dir(root, "CFQ data root")
    skips = skips if skips is not None else SkipLog()
    judgments = read_judgments(root / "judgments.tsv")
    equivalent = read_equivalent_captions(root / "equivalent_captions.json")
    require_dir(root / "images", "CFQ images/ folder")
    hashes = list(dict.fromkeys(list(judgments["query_hash"]) + list(judgments["catalog_hash"])))
    paths = [root / "images" / f"{h}.jpeg" for h in hashes]
    if verify_images:
        usable = dict(zip(hashes, check_images(paths, skips)))
    else:
        usable = {}
        for h, p in zip(hashes, paths):
            usable[h] = p.is_file()
            if not usable[h]:
                skips.add(p, "missing image")
    keep = judgments["query_hash"].map(usable) & judgments["catalog_hash"].map(usable)
    data = CFQData(root=root, judgments=judgments[keep].reset_index(drop=True), equivalent_captions=equivalent,
                   skips=skips, dropped_judgments=int((~keep).sum()))
    if data.judgments.empty:
        raise DataFormatError(root / "images", "no judgment has both its images readable",
                              expected="images/{hash}.jpeg for the hashes in judgments.tsv")
    return data


# ============================================================================================ synthetic CFQ
#
# A CFQ in the released layout, drawn on the products world's garments. Each query is a reference garment
# and a caption made of one or two *constraints* on the target ("is blue", "not red", "shorter sleeves",
# "with stripes", "without dots", "longer"). Its small judged catalog mixes, on purpose:
#   - targets: the reference with the caption applied and nothing else changed (accurate, similar);
#   - caption-true but dissimilar items: the caption holds but other attributes changed;
#   - look-alikes the caption rules out: the reference's look (twice), or one attribute off it, caption false;
#   - partly true items (two-constraint captions): one constraint holds;
#   - fillers: random garments (of the query's category in subset "focused", of any category in "broad").
# Ground truth: accuracy = how many constraints hold (all: yes, some: not sure, none: no); similarity =
# how many attributes the caption does *not* mention differ from the reference (0: reasonable, 1: somewhat
# reasonable, 2+ or another category: not reasonable). Each pair is judged by several annotators, each
# answering one level off the truth with probability `annotator_noise`. "broad" is a subset name of the
# release; "focused" is ours (the release's other subset names are unknown).

ATTRIBUTES = ("colour", "pattern", "sleeve", "length", "neckline")  # the coarse attributes of a Product
PATTERN_PHRASES = {"solid": ("plain", "solid coloured"), "stripes": ("with stripes", "striped"),
                   "dots": ("with dots", "polka dotted"), "checks": ("checked", "with a check pattern"),
                   "floral": ("floral", "with flowers"), "gradient": ("with a colour gradient", "faded")}
SLEEVE_ORDER = ("sleeveless", "short", "long")  # for "shorter / longer sleeves"
LENGTH_ORDER = ("cropped", "shorts", "mini", "regular", "knee", "full", "long", "maxi")  # for "shorter / longer"
ACCURATE_ANSWERS = ("no", "not sure", "yes")  # index = truth level 0, 1, 2
SIMILAR_ANSWERS = ("not reasonable", "somewhat reasonable", "reasonable")


@dataclass
class CFQWorldConfig:
    """Sizes of a synthetic CFQ. All fields JSON-able; the world is a pure function of them."""

    seed: int = 0                                   # draws garments, captions, catalogs and annotators
    categories: tuple = ("dress", "shirt", "toptee")  # product categories (keys of products.CATEGORIES)
    queries_per_subset: int = 40                    # (reference, caption) queries in each subset
    subsets: tuple = ("broad", "focused")           # "broad": fillers of any category; "focused": same category
    catalog_size: int = 10                          # judged catalog items per query
    annotators: int = 3                             # judgments per (query, caption, item)
    annotator_noise: float = 0.15                   # chance an annotator answers one level off the truth
    two_constraint_prob: float = 0.35               # chance a caption has two constraints
    negation_prob: float = 0.3                      # chance a constraint is a negation ("not red")
    image_size: int = 64                            # images are image_size x image_size JPEG
    missing_images: int = 3                         # catalog images left out, as in the release (3 missing)
    version: int = 2                                # of the drawing code: part of the cache key, bumped on change


@dataclass(frozen=True)
class Constraint:
    """One requirement of a caption on the target: attribute `kind` of `attribute` relative to `value`.
    kind: "is" (== value), "not" (!= value), "shorter" / "longer" (ordered below / above value)."""

    attribute: str
    kind: str
    value: str

    def holds(self, item) -> bool:
        v = getattr(item, self.attribute)
        if self.kind == "is":
            return v == self.value
        if self.kind == "not":
            return v != self.value
        order = SLEEVE_ORDER if self.attribute == "sleeve" else LENGTH_ORDER
        if v not in order or self.value not in order:
            return False
        return order.index(v) < order.index(self.value) if self.kind == "shorter" else order.index(v) > order.index(self.value)


def constraint_phrases(c: Constraint) -> list[str]:
    """Ways to say a constraint; the first is the caption's, the others its paraphrases."""
    a, k, v = c.attribute, c.kind, c.value
    if a == "colour":
        return [f"is {v}", f"{v} instead", f"in {v}"] if k == "is" else [f"not {v}", f"is not {v}", f"no {v}"]
    if a == "pattern":
        said = PATTERN_PHRASES[v]
        if k == "is":
            return [said[0], f"is {said[1]}", f"has a {v} pattern" if v != "solid" else "has no pattern"]
        return [f"not {said[1]}", f"without a {v} pattern" if v != "solid" else "has a pattern", f"is not {said[0]}"]
    if a == "sleeve":
        if k in ("shorter", "longer"):
            return [f"{k} sleeves", f"has {k} sleeves", f"with {k} sleeves"]
        said = {"sleeveless": "sleeveless", "short": "with short sleeves", "long": "with long sleeves"}[v]
        return [said, f"is {said}", f"has {v} sleeves" if v != "sleeveless" else "has no sleeves"] if k == "is" \
            else [f"not {said}", f"is not {said}", f"sleeves not {v}"]
    if a == "length":
        if k in ("shorter", "longer"):
            return [k, f"is {k}", f"a {k} one"]
        return [f"is {v} length", f"{v} length", f"in {v} length"] if k == "is" else [f"not {v} length", f"is not {v} length", f"not {v}"]
    if a == "neckline":
        said = {"round": "a round neck", "v": "a v-neck", "square": "a square neck", "collar": "a collar",
                "turtle": "a turtleneck", "hood": "a hood", "none": "no neckline"}[v]
        if k == "is":
            return [f"has {said}", f"with {said}", said]
        return [f"without {said}", f"not {said}", f"no {said.removeprefix('a ')}"]
    raise ValueError(f"unknown attribute {a!r}")


def caption_text(constraints, variant: int = 0) -> str:
    """The caption of one or two constraints (variant 0 = the caption itself, 1-2 = paraphrases)."""
    return " and ".join(constraint_phrases(c)[variant] for c in constraints)


def _options(category: str, attribute: str) -> tuple:
    from .products import CATEGORIES, COLOURS, PATTERNS

    _, sleeves, lengths, necks = CATEGORIES[category]
    return {"colour": COLOURS, "pattern": PATTERNS, "sleeve": sleeves, "length": lengths, "neckline": necks}[attribute]


def _draw_constraint(rng, reference, used: set, negation_prob: float) -> Constraint | None:
    """A constraint the reference does NOT satisfy (so the caption asks for a change), on an unused attribute."""
    choices = []
    for a in ATTRIBUTES:
        if a in used:
            continue
        values = _options(reference.category, a)
        if len(values) < 2:
            continue
        ref = getattr(reference, a)
        if rng.random() < negation_prob:
            choices.append(Constraint(a, "not", ref))
        elif a in ("sleeve", "length") and rng.random() < 0.5:
            order = SLEEVE_ORDER if a == "sleeve" else LENGTH_ORDER
            ranked = sorted(values, key=order.index)
            kinds = [k for k, ok in (("shorter", ranked.index(ref) > 0), ("longer", ranked.index(ref) < len(ranked) - 1)) if ok]
            choices.append(Constraint(a, str(rng.choice(kinds)), ref))
        else:
            others = [v for v in values if v != ref]
            choices.append(Constraint(a, "is", str(rng.choice(others))))
    if not choices:
        return None
    return choices[rng.integers(len(choices))]


def _satisfy(rng, item, c: Constraint):
    """`item` changed minimally so that constraint `c` holds (returns a new Product)."""
    import dataclasses

    if c.holds(item):
        return item
    values = [v for v in _options(item.category, c.attribute)
              if c.holds(dataclasses.replace(item, **{c.attribute: v}))]
    if not values:
        return None
    if c.kind in ("shorter", "longer"):  # the nearest value in the asked direction
        order = SLEEVE_ORDER if c.attribute == "sleeve" else LENGTH_ORDER
        values = sorted(values, key=lambda v: abs(order.index(v) - order.index(c.value)))[:1]
    return dataclasses.replace(item, **{c.attribute: str(rng.choice(values))})


def _violate(rng, item, c: Constraint):
    """`item` changed minimally so that constraint `c` fails (the reference's value, which fails it)."""
    import dataclasses

    values = [v for v in _options(item.category, c.attribute)
              if not c.holds(dataclasses.replace(item, **{c.attribute: v}))]
    return dataclasses.replace(item, **{c.attribute: str(rng.choice(values))}) if values else None


def _change_unmentioned(rng, item, mentioned: set, n: int):
    import dataclasses

    free = [a for a in ATTRIBUTES if a not in mentioned and len(_options(item.category, a)) > 1]
    rng.shuffle(free)
    for a in free[:n]:
        item = dataclasses.replace(item, **{a: str(rng.choice([v for v in _options(item.category, a) if v != getattr(item, a)]))})
    return item


def truth_levels(reference, constraints, item) -> tuple[int, int]:
    """(accuracy level, similarity level) in 0..2 (0 = no / not reasonable, 2 = yes / reasonable)."""
    held = sum(c.holds(item) for c in constraints)
    accuracy = 2 if held == len(constraints) else (0 if held == 0 else 1)
    if item.category != reference.category:
        return accuracy, 0
    mentioned = {c.attribute for c in constraints}
    differ = sum(getattr(item, a) != getattr(reference, a) for a in ATTRIBUTES if a not in mentioned)
    return accuracy, max(0, 2 - differ)


def _annotate(rng, level: int, noise: float) -> int:
    if rng.random() < noise:
        return int(np.clip(level + rng.choice([-1, 1]), 0, 2))
    return level


def _hash(*parts) -> str:
    import hashlib

    return hashlib.sha1("/".join(map(str, parts)).encode()).hexdigest()[:16]


def draw_cfq_queries(cfg: CFQWorldConfig) -> list[dict]:
    """The world's queries: per query the subset, reference Product, constraints, caption and catalog
    [(kind, Product)]; a pure function of `cfg`."""
    from .products import sample_product

    rng = np.random.default_rng([cfg.seed, 606])
    queries = []
    for subset in cfg.subsets:
        made = 0
        while made < cfg.queries_per_subset:
            category = str(rng.choice(cfg.categories))
            reference = sample_product(rng, category)
            constraints = []
            for _ in range(2 if rng.random() < cfg.two_constraint_prob else 1):
                c = _draw_constraint(rng, reference, {x.attribute for x in constraints}, cfg.negation_prob)
                if c is not None:
                    constraints.append(c)
            mentioned = {c.attribute for c in constraints}
            target = reference
            for c in constraints:
                target = _satisfy(rng, target, c)
            if not constraints or target is None:
                continue
            ruled_out = "look-alike ruled out"
            catalog = [("target", target), ("caption true, 1 other change", _change_unmentioned(rng, target, mentioned, 1)),
                       (ruled_out, reference), (ruled_out, _change_unmentioned(rng, reference, mentioned, 1)),
                       ("target", target), ("caption true, 2 other changes", _change_unmentioned(rng, target, mentioned, 2)),
                       (ruled_out, reference)]
            if len(constraints) == 2:
                partial = _violate(rng, target, constraints[1])
                if partial is not None:
                    catalog.append(("partly true", partial))
            while len(catalog) < cfg.catalog_size:
                cat = category if subset == "focused" else str(rng.choice(cfg.categories))
                catalog.append(("filler", sample_product(rng, cat)))
            catalog = catalog[:cfg.catalog_size]
            # every catalog entry is a distinct garment instance of the given look
            catalog = [(kind, sample_product(rng, p.category, (p.colour, p.pattern, p.sleeve, p.length, p.neckline)))
                       for kind, p in catalog]
            queries.append({"subset": subset, "index": made, "reference": reference, "constraints": constraints,
                            "caption": caption_text(constraints), "catalog": catalog})
            made += 1
    return queries


def build_cfq(folder, params) -> None:
    """Write a synthetic CFQ (`CFQWorldConfig` or its asdict) into `folder` in the released layout, plus
    `catalog_kinds.csv` (why each catalog item is there: the world's ground truth, not part of the format)."""
    from dataclasses import asdict

    from .products import render_photo, sample_view

    cfg = params if isinstance(params, CFQWorldConfig) else CFQWorldConfig(**params)
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([cfg.seed, 607])
    rows, kinds, equivalent, catalog_hashes = [], [], {}, []

    def save(product, name):
        view = sample_view(rng, "shop")
        render_photo(product, view, cfg.image_size)[0].save(folder / "images" / f"{name}.jpeg", quality=92)

    for q in draw_cfq_queries(cfg):
        qhash = _hash(cfg.seed, q["subset"], q["index"], "query")
        save(q["reference"], qhash)
        equivalent[q["caption"]] = [caption_text(q["constraints"], v) for v in (1, 2)]
        for j, (kind, item) in enumerate(q["catalog"]):
            chash = _hash(cfg.seed, q["subset"], q["index"], j)
            save(item, chash)
            catalog_hashes.append(chash)
            acc, sim = truth_levels(q["reference"], q["constraints"], item)
            kinds.append({"subset": q["subset"], "query_hash": qhash, "caption": q["caption"], "catalog_hash": chash,
                          "kind": kind, "true_accurate": acc - 1, "true_similar": sim - 1,
                          **{f"item_{a}": getattr(item, a) for a in ("category", *ATTRIBUTES)}})
            for w in range(cfg.annotators):
                rows.append([q["subset"], qhash, q["caption"], chash,
                             ACCURATE_ANSWERS[_annotate(rng, acc, cfg.annotator_noise)],
                             SIMILAR_ANSWERS[_annotate(rng, sim, cfg.annotator_noise)], f"worker{w}"])
    with open(folder / "judgments.tsv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\")
        w.writerow(["subset", "query_hash", "caption", "catalog_hash", "accurate", "similar", "worker_id"])
        w.writerows(rows)
    (folder / "equivalent_captions.json").write_text(json.dumps(equivalent, indent=1))
    pd.DataFrame(kinds).to_csv(folder / "catalog_kinds.csv", index=False)
    for chash in list(rng.choice(catalog_hashes, size=min(cfg.missing_images, len(catalog_hashes)), replace=False)):
        (folder / "images" / f"{chash}.jpeg").unlink()
    (folder / "world.json").write_text(json.dumps(asdict(cfg), sort_keys=True))


def cfq_world(cfg: CFQWorldConfig, root=None) -> Path:
    """The folder of the synthetic CFQ `cfg`, generated once into the world cache."""
    from dataclasses import asdict

    from .worlds import ensure_world

    return ensure_world("cfq", asdict(cfg), build_cfq, root=root)
