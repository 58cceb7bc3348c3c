"""Readers of the five text-feedback datasets MAAF is evaluated on, with each paper's query protocol.

Every reader returns `FeedbackSplit`s: a list of usable images (the gallery), a hit label per image, and
queries (reference image + modification text(s) -> target). A query's hit is any gallery image whose label
equals the query's `target_label`, and the reference image is dropped from its own ranking (the authors'
evaluation does both, for every dataset). What differs per dataset, as the authors' code defines it:

- Fashion IQ (`read_fashion_iq`): one split per category (dress, shirt, toptee); gallery = the images of
  that category's split file; label = the ASIN (a hit is the exact target); text = the two captions joined
  by the word "inadditiontothat" (both orders at random in training, file order in evaluation). Images in
  either layout: `img/{cat}/{asin}` (the authors') or `images/{asin}.png|jpg` (the common one).
- CSS (`read_css`): queries = every (from, to) of every modification, text = `to_str`; gallery = every
  image of the split; label = the scene label (images of the same scene share it).
- Fashion200k (`read_fashion200k`): `labels/*_{split}_*.txt` rows `path<TAB>score<TAB>caption`; label =
  the caption; test queries from `test_queries.txt` ("source target" paths), text "replace X with Y" from
  the one word that differs; training pairs = images whose captions differ by one word.
- Birds-to-Words (`read_birds_to_words`): the 11-column TSV; local image = last segment of the image URL
  under `images/`; query = image 1 + one description -> image 2 (training also uses the swapped pair,
  "animal1" and "animal2" exchanged); label = the image (a hit is the exact target).
- Spot-the-Diff (`read_spot_the_diff`): `annotations/{split}.json`; before image `resized_images/{id}.png`,
  after `{id}_2.png`; each non-empty sentence is one query; gallery = all before and after images.

Bad files raise DataFormatError naming file, line or entry, field and what was expected; missing or
corrupt images are skipped and counted in the SkipLog (with the queries that needed them).
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import DataFormatError, SkipLog, require_dir, require_file
from .images import check_images

FIQ_CATEGORIES = ("dress", "shirt", "toptee")
FIQ_JOIN = "inadditiontothat"


@dataclass
class FeedbackQuery:
    source: int                 # index of the reference image in FeedbackSplit.images
    captions: tuple             # modification text(s); see FeedbackSplit.caption_mode
    target: int | None          # index of the target image (None where the split has no targets)
    target_label: str           # a hit is a gallery image with this label


@dataclass
class FeedbackSplit:
    """Images (the gallery), their hit labels, and the queries of one split of one dataset."""

    dataset: str                # fashioniq | css | fashion200k | birds_to_words | spot_the_diff
    split: str                  # train | val | test
    images: list                # Paths of usable images; the gallery is all of them
    labels: list                # hit label (str) per image
    queries: list               # FeedbackQuery
    caption_mode: str = "one"   # "join": FIQ's captions joined by FIQ_JOIN; "one": one caption per query
    category: str | None = None  # Fashion IQ category of this split
    skips: SkipLog = field(default_factory=SkipLog)

    def query_text(self, query: FeedbackQuery, rng: np.random.Generator | None = None) -> str:
        """The text fed to the model. With `rng` (training): FIQ's captions in a random order, or one
        random caption of several; without: the file's order / the first caption."""
        caps = list(query.captions)
        if self.caption_mode == "join":
            if rng is not None and rng.random() < 0.5:
                caps = caps[::-1]
            return f" {FIQ_JOIN} ".join(caps)
        return caps[int(rng.integers(len(caps)))] if rng is not None and len(caps) > 1 else caps[0]

    def texts(self) -> list[str]:
        """Every caption of the split (what a vocabulary is built from), plus FIQ's joining word."""
        out = [c for q in self.queries for c in q.captions]
        return out + [FIQ_JOIN] if self.caption_mode == "join" else out

    def label_ids(self) -> tuple[list[int], list[int]]:
        """Integer labels for (gallery, queries): equal integers where the label strings are equal."""
        index: dict[str, int] = {}
        gallery = [index.setdefault(l, len(index)) for l in self.labels]
        queries = [index.setdefault(q.target_label, len(index)) for q in self.queries]
        return gallery, queries


def _keep_usable(dataset, split, paths, labels, raw_queries, skips, caption_mode="one", category=None):
    """Drop unreadable images (counted) and the queries that need them; reindex what is left."""
    ok = check_images(paths, skips)
    new_index, images, kept_labels = {}, [], []
    for i, (p, l, good) in enumerate(zip(paths, labels, ok)):
        if good:
            new_index[i] = len(images)
            images.append(Path(p))
            kept_labels.append(l)
    queries = []
    for source, captions, target, target_label in raw_queries:
        if source not in new_index or (target is not None and target not in new_index):
            skips.add(paths[source] if source not in new_index else paths[target], "query with a missing image")
            continue
        queries.append(FeedbackQuery(new_index[source], tuple(captions),
                                     None if target is None else new_index[target], target_label))
    return FeedbackSplit(dataset, split, images, kept_labels, queries, caption_mode, category, skips)


def _read_json(path: Path, what: str):
    require_file(path, what)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataFormatError(path, f"not valid JSON ({e.msg})", line=e.lineno, expected=what) from None


def _entry_field(path, data, i, key, kind, what):
    if not isinstance(data[i], dict) or key not in data[i]:
        raise DataFormatError(path, f"entry {i} has no '{key}'", field=f"[{i}].{key}", expected=what)
    value = data[i][key]
    if not isinstance(value, kind):
        raise DataFormatError(path, f"entry {i}: '{key}' is {type(value).__name__}", field=f"[{i}].{key}",
                              expected=what)
    return value


# --------------------------------------------------------------------------------------------- Fashion IQ

def fiq_image_path(root: Path, category: str, asin: str) -> Path:
    """The image of `asin`: `img/{cat}/{asin}` (authors' layout, with or without an extension) if present,
    else `images/{asin}.png` or `.jpg` (the common layout); the expected path when none exists."""
    candidates = [root / "img" / category / asin, root / "img" / category / f"{asin}.jpg",
                  root / "img" / category / f"{asin}.png", root / "images" / f"{asin}.png",
                  root / "images" / f"{asin}.jpg"]
    for p in candidates:
        if p.is_file():
            return p
    return candidates[3] if (root / "images").is_dir() else candidates[0]


def read_fashion_iq(root, split: str = "val", categories=FIQ_CATEGORIES, skips: SkipLog | None = None) -> dict:
    """{category: FeedbackSplit} of Fashion IQ's `split` (train | val | test; test has no targets)."""
    root = require_dir(root, "Fashion IQ root (with captions/ and image_splits/)")
    skips = skips if skips is not None else SkipLog()
    out = {}
    for cat in categories:
        split_path = root / "image_splits" / f"split.{cat}.{split}.json"
        asins = _read_json(split_path, "a JSON list of image ids (ASINs)")
        if not isinstance(asins, list) or not all(isinstance(a, str) for a in asins):
            raise DataFormatError(split_path, "not a list of strings", expected="a JSON list of ASIN strings")
        asins = list(dict.fromkeys(asins))
        index = {a: i for i, a in enumerate(asins)}
        cap_path = root / "captions" / f"cap.{cat}.{split}.json"
        entries = _read_json(cap_path, 'a JSON list of {"candidate", "target", "captions"}')
        if not isinstance(entries, list):
            raise DataFormatError(cap_path, "not a list", expected='a JSON list of {"candidate", "target", "captions"}')
        raw = []
        for i in range(len(entries)):
            cand = _entry_field(cap_path, entries, i, "candidate", str, "an ASIN string")
            caps = _entry_field(cap_path, entries, i, "captions", list, "a list of caption strings")
            target = entries[i].get("target") if split != "test" else None
            if split != "test" and not isinstance(target, str):
                raise DataFormatError(cap_path, f"entry {i} has no target", field=f"[{i}].target",
                                      expected="an ASIN string (only the test split has no targets)")
            for a, fld in ((cand, "candidate"), (target, "target")):
                if a is not None and a not in index:
                    raise DataFormatError(cap_path, f"entry {i}: {fld} {a!r} is not in {split_path.name}",
                                          field=f"[{i}].{fld}", expected=f"an ASIN listed in {split_path.name}")
            caps = [str(c) for c in caps if str(c).strip()]
            if not caps:
                skips.add(f"{cap_path}[{i}]", "query without a caption")
                continue
            raw.append((index[cand], caps, None if target is None else index[target], target or ""))
        paths = [fiq_image_path(root, cat, a) for a in asins]
        out[cat] = _keep_usable("fashioniq", split, paths, asins, raw, skips, "join", cat)
    return out


# ---------------------------------------------------------------------------------------------------- CSS

def read_css(root, split: str = "test", skips: SkipLog | None = None) -> FeedbackSplit:
    """CSS's `split` (train | test): every (from, to) of every modification is a query."""
    root = require_dir(root, "CSS root (with css_toy_dataset_novel2_small.dup.npy and images/)")
    path = require_file(root / "css_toy_dataset_novel2_small.dup.npy", "CSS annotation file")
    try:
        data = np.load(path, allow_pickle=True, encoding="latin1").item()
    except Exception as e:
        raise DataFormatError(path, f"cannot be read as a pickled dict ({e.__class__.__name__})",
                              expected="np.save of {split: {objects_img, labels, mods}}") from None
    if not isinstance(data, dict) or split not in data:
        raise DataFormatError(path, f"no split {split!r}", field=split,
                              expected=f"a dict with keys among train/test, got {sorted(data) if isinstance(data, dict) else type(data).__name__}")
    part = data[split]
    for key in ("objects_img", "mods"):
        if key not in part:
            raise DataFormatError(path, f"split {split!r} has no {key!r}", field=f"{split}.{key}",
                                  expected="objects_img (list per image) and mods (list of {from, to, to_str})")
    n = len(part["objects_img"])
    labels = [str(l) for l in part["labels"]] if "labels" in part else [str(i) for i in range(n)]
    if len(labels) != n:
        raise DataFormatError(path, f"{len(labels)} labels for {n} images", field=f"{split}.labels",
                              expected="one label per image")
    raw = []
    for m, mod in enumerate(part["mods"]):
        for key in ("from", "to", "to_str"):
            if key not in mod:
                raise DataFormatError(path, f"modification {m} has no {key!r}", field=f"{split}.mods[{m}].{key}",
                                      expected="from (image indices), to (image indices), to_str (text)")
        if len(mod["from"]) != len(mod["to"]):
            raise DataFormatError(path, f"modification {m}: from and to differ in length",
                                  field=f"{split}.mods[{m}]", expected="paired lists")
        for f, t in zip(mod["from"], mod["to"]):
            if not (0 <= int(f) < n and 0 <= int(t) < n):
                raise DataFormatError(path, f"modification {m}: image index ({f}, {t}) out of range",
                                      field=f"{split}.mods[{m}]", expected=f"indices in [0, {n})")
            raw.append((int(f), [str(mod["to_str"])], int(t), labels[int(t)]))
    paths = [root / "images" / f"css_{split}_{i:06d}.png" for i in range(n)]
    return _keep_usable("css", split, paths, labels, raw, skips if skips is not None else SkipLog())


# -------------------------------------------------------------------------------------------- Fashion200k

def fashion200k_caption(text: str) -> str:
    """The authors' caption clean-up: strip, and spell out '.', '?', '&', '*' as words."""
    return (text.strip().replace(".", "dotmark").replace("?", "questionmark").replace("&", "andmark")
            .replace("*", "starmark"))


def one_word_difference(source: str, target: str) -> str:
    """'replace X with Y': the first word of source not in target and the first of target not in source."""
    s_words, t_words = source.split(), target.split()
    x = next((w for w in s_words if w not in t_words), s_words[-1] if s_words else "")
    y = next((w for w in t_words if w not in s_words), t_words[-1] if t_words else "")
    return f"replace {x} with {y}"


def read_fashion200k(root, split: str = "test", skips: SkipLog | None = None, pairs_per_image: int = 3,
                     seed: int = 0) -> FeedbackSplit:
    """Fashion200k's `split`. Test queries come from test_queries.txt; training queries pair each image
    with up to `pairs_per_image` images whose caption differs by one word (drawn with `seed`)."""
    root = require_dir(root, "Fashion200k root (with labels/)")
    label_dir = require_dir(root / "labels", "Fashion200k labels folder")
    files = sorted(p for p in label_dir.glob(f"*_{split}_*.txt"))
    if not files:
        raise DataFormatError(label_dir, f"no label files for split {split!r}",
                              expected=f"files named *_{split}_*.txt")
    paths, captions, by_file = [], [], {}
    for f in files:
        for line_no, line in enumerate(f.read_text().splitlines(), 1):
            if not line.strip():
                continue
            cols = line.split("\t")
            if len(cols) < 3:
                raise DataFormatError(f, f"{len(cols)} tab-separated fields", line=line_no,
                                      expected="path<TAB>detection_score<TAB>caption")
            by_file[cols[0]] = len(paths)
            paths.append(root / cols[0])
            captions.append(fashion200k_caption(cols[2]))
    raw = []
    if split == "test":
        qpath = require_file(root / "test_queries.txt", "Fashion200k test queries")
        for line_no, line in enumerate(qpath.read_text().splitlines(), 1):
            if not line.strip():
                continue
            cols = line.split()
            if len(cols) != 2:
                raise DataFormatError(qpath, f"{len(cols)} fields", line=line_no, expected="'source_path target_path'")
            for p, fld in zip(cols, ("source", "target")):
                if p not in by_file:
                    raise DataFormatError(qpath, f"{fld} {p!r} is in no label file", line=line_no, field=fld,
                                          expected=f"a path listed in labels/*_{split}_*.txt")
            s, t = by_file[cols[0]], by_file[cols[1]]
            raw.append((s, [one_word_difference(captions[s], captions[t])], t, captions[t]))
    else:
        raw = _one_word_pairs(captions, pairs_per_image, seed)
    return _keep_usable("fashion200k", split, paths, captions, raw, skips if skips is not None else SkipLog())


def _one_word_pairs(captions, pairs_per_image, seed):
    """Training pairs: images whose captions become equal when one word is removed from each (the
    authors' parent captions), up to `pairs_per_image` per source image."""
    by_caption: dict[str, list[int]] = {}
    for i, c in enumerate(captions):
        by_caption.setdefault(c, []).append(i)
    children: dict[str, set] = {}
    for c in by_caption:
        words = c.split()
        for k in range(len(words)):
            children.setdefault(" ".join(words[:k] + words[k + 1:]), set()).add(c)
    rng = np.random.default_rng(seed)
    raw = []
    for c, images in by_caption.items():
        words = c.split()
        siblings = sorted({s for k in range(len(words)) for s in children[" ".join(words[:k] + words[k + 1:])]} - {c})
        if not siblings:
            continue
        for i in images:
            for s in rng.choice(siblings, size=min(pairs_per_image, len(siblings)), replace=False):
                t = int(rng.choice(by_caption[s]))
                raw.append((i, [one_word_difference(c, s)], t, s))
    return raw


# ----------------------------------------------------------------------------------------- Birds-to-Words

B2W_COLUMNS = 11


def read_birds_to_words(root, split: str = "test", skips: SkipLog | None = None) -> FeedbackSplit:
    """Birds-to-Words' `split` (train | val | test) from birds-to-words-v1.0.tsv."""
    root = require_dir(root, "Birds-to-Words root (with birds-to-words-v1.0.tsv and images/)")
    path = require_file(root / "birds-to-words-v1.0.tsv", "Birds-to-Words annotation TSV")
    rows = []
    with path.open(newline="") as fh:
        for line_no, cols in enumerate(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
            if not cols or (line_no == 1 and cols[-3] not in ("train", "val", "test")):
                continue  # blank line or header
            if len(cols) != B2W_COLUMNS:
                raise DataFormatError(path, f"{len(cols)} tab-separated fields", line=line_no,
                                      expected="11: img1 observation URL, image URL, species, selection, the "
                                               "same four for img2, split, annotation number, description")
            if cols[8] == split:
                rows.append(cols)
    names = sorted({c[1].split("/")[-1] for c in rows} | {c[5].split("/")[-1] for c in rows})
    index = {n: i for i, n in enumerate(names)}
    pairs: dict[tuple, list] = {}
    for c in rows:
        a, b = index[c[1].split("/")[-1]], index[c[5].split("/")[-1]]
        pairs.setdefault((a, b), []).append(c[10])
        if split == "train":  # the swapped pair, with the two animals exchanged
            swap = {"animal1": "animal2", "animal2": "animal1"}
            pairs.setdefault((b, a), []).append(" ".join(swap.get(w, w) for w in c[10].split(" ")))
    raw = []
    for (a, b), descriptions in sorted(pairs.items()):
        if split == "train":
            raw.append((a, descriptions, b, names[b]))
        else:
            raw += [(a, [d], b, names[b]) for d in descriptions]
    paths = [root / "images" / n for n in names]
    return _keep_usable("birds_to_words", split, paths, names, raw, skips if skips is not None else SkipLog())


# ------------------------------------------------------------------------------------------ Spot-the-Diff

def read_spot_the_diff(root, split: str = "test", skips: SkipLog | None = None) -> FeedbackSplit:
    """Spot-the-Diff's `split`: before image + one difference sentence -> after image."""
    root = require_dir(root, "Spot-the-Diff root (with annotations/ and resized_images/)")
    path = root / "annotations" / f"{split}.json"
    entries = _read_json(path, 'a JSON list of {"img_id", "sentences"}')
    if not isinstance(entries, list):
        raise DataFormatError(path, "not a list", expected='a JSON list of {"img_id", "sentences"}')
    paths, labels, raw = [], [], []
    for i in range(len(entries)):
        img_id = _entry_field(path, entries, i, "img_id", (str, int), "an image id")
        sentences = _entry_field(path, entries, i, "sentences", list, "a list of sentences")
        before, after = len(paths), len(paths) + 1
        for suffix in ("", "_2"):
            paths.append(root / "resized_images" / f"{img_id}{suffix}.png")
            labels.append(f"{img_id}{suffix}")
        sentences = [str(s) for s in sentences if str(s).strip()]
        if not sentences:
            continue
        if split == "train":
            raw.append((before, sentences, after, labels[after]))
        else:
            raw += [(before, [s], after, labels[after]) for s in sentences]
    return _keep_usable("spot_the_diff", split, paths, labels, raw, skips if skips is not None else SkipLog())
