"""The CFQ paper's data: every dataset of the experiment grid, read or drawn, its images registered once.

Four sources, each read by the reader of its real format: contrastive pretraining photos with attribute
captions (embedded default only: the real datasets hold no generic image-caption corpus), Fashion IQ-style
(reference, captions, target) pairs, iMaterialist-style attribute labels made into weak (reference, neighbour,
caption) pairs ("iMFQ", `data.imaterialist`), and CFQ's judgments (`data.cfq`). Under a data root the published
layouts (`REAL_FILES`, `REAL_FOLDERS`) are read; otherwise the synthetic worlds of `p.worlds` are drawn.

Every image any source uses is registered in one `ImageIndex` (path -> store index, each path once), which
builds the `ImageStore` the models read: decoded once on first use, or decoded on request for sets larger than
`images.IN_MEMORY_MAX_BYTES` decoded (the real iMaterialist has a million images: ~150 GB at 224 px).
Normalisation is the model's business (`experiment`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ... import progress as prog
from ...data import imaterialist as imat
from ...data.cfq import CFQData, CFQWorldConfig, cfq_world, read_cfq
from ...data.errors import SkipLog
from ...data.images import ImageStore, decode_all, fits_in_memory, load_image, to_uint8_tensor
from ...data.text_feedback import FIQ_JOIN, read_fashion_iq
from ...data.worlds import cache_root, fingerprint_dir
from ...models.clip import clip_settings


# ------------------------------------------------------------------------------------------------- images

class ImageIndex:
    """Every image an experiment uses, addressed by path: `add(paths)` registers paths once each and returns
    their store indices; `store()` builds the `ImageStore` of them (decoded once, the first time it is asked
    for, unless they would take more than `max_bytes` decoded (`images.fits_in_memory`): then each request
    decodes its images).

    Images that cannot be read were already dropped (and counted) by the readers; one failing here is counted
    in `skips` and left black. An image of another size is resized to `size` x `size`.
    """

    def __init__(self, size: int, max_bytes: int | None = None):
        self.size, self.paths, self.index, self.max_bytes = size, [], {}, max_bytes
        self.skips = SkipLog()
        self._store: ImageStore | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def add(self, paths) -> list[int]:
        out = []
        for p in paths:
            p = str(p)
            if p not in self.index:
                if self._store is not None and self._store.pixels is not None:
                    raise RuntimeError("ImageIndex.add after the images were loaded")
                self.index[p] = len(self.paths)
                self.paths.append(p)
            out.append(self.index[p])
        return out

    def decode(self, i: int, skips: SkipLog | None = None) -> torch.Tensor:
        """Image i as uint8 [3, size, size] (black when it cannot be read, recorded in `skips`, by default the
        index's own SkipLog; without one a bad image raises)."""
        im = load_image(self.paths[i], skips if skips is not None else self.skips)
        if im is None:
            return torch.zeros(3, self.size, self.size, dtype=torch.uint8)
        if im.size != (self.size, self.size):
            im = im.resize((self.size, self.size))
        return to_uint8_tensor(im)

    def store(self) -> ImageStore:
        if self._store is None:
            if not fits_in_memory(len(self.paths), self.size, self.max_bytes):
                self._store = ImageStore(self.size, None, self.paths, decode=self.decode)
            else:
                # decoded once and kept in the cache for the next run (images.decode_all)
                strict = self.skips is None  # no SkipLog: a bad image raises, naming the file
                pixels, _ = decode_all(self.paths, lambda i, log: self.decode(i, None if strict else log), self.size,
                                       self.skips, {"reader": "cfq.ImageIndex", "size": self.size},
                                       cache_root() / "decoded")
                self._store = ImageStore(self.size, pixels, self.paths)
        return self._store


# ----------------------------------------------------------------------------------- pretraining captions

PATTERN_WORDS = {"solid": "plain", "stripes": "striped", "dots": "dotted", "checks": "checked", "floral": "floral",
                 "gradient": "faded"}
SLEEVE_WORDS = {"sleeveless": "sleeveless", "short": "with short sleeves", "long": "with long sleeves", "none": ""}
NECK_WORDS = {"round": "a round neck", "v": "a v-neck", "square": "a square neck", "collar": "a collar",
              "turtle": "a turtleneck", "hood": "a hood"}


def attribute_caption(row, rng: np.random.Generator) -> str:
    """A generic image caption of a products-world garment for contrastive pretraining, as comma-separated
    phrases in varied order: colour, pattern and category always; sleeves, length, neckline and each visible
    detail (buttons, trim, logo) with probability 1/2 ("a blue striped dress, with long sleeves, with a white
    star logo"). Details are in because web captions, which CLIP learns from, mention them too: without them
    the image tower learns to ignore what tells look-alike garments apart."""
    head = f"a {row['colour']} {PATTERN_WORDS[row['pattern']]} {row['category']}"
    extras = []
    if row["sleeve"] != "none":
        extras.append(SLEEVE_WORDS[row["sleeve"]])
    extras.append(f"{row['length']} length")
    if row["neckline"] in NECK_WORDS:
        extras.append(f"with {NECK_WORDS[row['neckline']]}")
    if int(row.get("buttons", 0)) > 0:
        extras.append(f"with {int(row['buttons'])} buttons")
    if row.get("trim_colour"):
        extras.append(f"with a {row['trim_colour']} trim")
    if row.get("logo_shape", "none") != "none":
        extras.append(f"with a {row['logo_colour']} {row['logo_shape']} logo")
    extras = [e for e in extras if rng.random() < 0.5]
    rng.shuffle(extras)
    return ", ".join([head, *extras])


# --------------------------------------------------------------------------------------------------- data

@dataclass
class PairSet:
    """(reference image, caption choices, target image) training or evaluation pairs over one ImageIndex."""

    refs: np.ndarray        # store index of each reference
    targets: np.ndarray     # store index of each target
    captions: list          # per pair, a list of caption choices (one drawn per use)

    def __len__(self) -> int:
        return len(self.refs)


@dataclass
class CFQPaperData:
    """Everything the grid reads, its images registered in one ImageIndex."""

    images: ImageIndex
    pretrain_images: np.ndarray | None      # store indices of the contrastive pretraining photos
    pretrain_rows: list | None              # their attribute rows (for captions)
    fiq_train: PairSet
    fiq_val: dict                           # category -> (query refs, texts, target labels, gallery idx, labels)
    imfq_train: PairSet
    imat_val: dict                          # refs, texts, target_labels, gallery idx, gallery labels
    cfq: CFQData
    cfq_agg: pd.DataFrame                   # aggregated judgments (pairs with readable images)
    cfq_query_idx: dict                     # query_hash -> store index
    cfq_catalog_idx: dict                   # catalog_hash -> store index
    descriptions: dict = field(default_factory=dict)   # dataset name -> description for the tables
    fingerprints: dict = field(default_factory=dict)   # dataset name -> fingerprint
    skips: dict = field(default_factory=dict)          # dataset name -> SkipLog
    extra: dict = field(default_factory=dict)          # the paper's extra datasets: name -> ExtraDataset


@dataclass
class ExtraDataset:
    """One of the paper's extra datasets (Birds-to-Words, MIT-States): training pairs and test queries over the
    grid's ImageIndex, scored by Recall@k at `ks` (the dataset's usual ones)."""

    train: PairSet
    test: dict              # refs, texts, exclude (gallery position of the reference), query_labels, gallery,
                            # gallery_labels: the shape of one Fashion IQ category in `CFQPaperData.fiq_val`
    ks: tuple               # Recall@k reported


EXTRA_DATASETS = {"birds_to_words": "birds-to-words", "mit_states": "mit-states"}  # name -> folder under data_root
EXTRA_KS = {"birds_to_words": (10, 50), "mit_states": (1, 5, 10)}


def _feedback_extra(train_split, test_split, images: ImageIndex) -> tuple[PairSet, dict]:
    """Birds-to-Words: every training query (all its descriptions as caption choices); every test query."""
    idx = images.add(train_split.images)
    train = PairSet(np.array([idx[q.source] for q in train_split.queries], dtype=np.int64),
                    np.array([idx[q.target] for q in train_split.queries], dtype=np.int64),
                    [list(q.captions) for q in train_split.queries])
    idx = images.add(test_split.images)
    gallery_labels, query_labels = test_split.label_ids()
    test = {"refs": [idx[q.source] for q in test_split.queries], "texts": [q.captions[0] for q in test_split.queries],
            "exclude": [q.source for q in test_split.queries], "query_labels": query_labels, "gallery": idx,
            "gallery_labels": gallery_labels}
    return train, test


def _mit_states_extra(train_split, test_split, images: ImageIndex, n_pairs: int, seed: int) -> tuple[PairSet, dict]:
    """MIT-States: `n_pairs` training pairs drawn by the protocol (`MITStatesSplit.pairs`); every test query."""
    idx = np.array(images.add(train_split.images), dtype=np.int64)
    src, tgt, texts = train_split.pairs(n_pairs, seed)
    train = PairSet(idx[src], idx[tgt], [[t] for t in texts])
    idx = images.add(test_split.images)
    labels = {c: i for i, c in enumerate(dict.fromkeys(test_split.captions))}
    queries = test_split.queries()
    test = {"refs": [idx[i] for i, _, _ in queries], "texts": [t for _, t, _ in queries],
            "exclude": [i for i, _, _ in queries], "query_labels": [labels[c] for _, _, c in queries],
            "gallery": idx, "gallery_labels": [labels[c] for c in test_split.captions]}
    return train, test


def _read_extra(p, images: ImageIndex, roots: dict, descriptions: dict, skips: dict) -> dict:
    """The extra datasets of `extra.datasets`: read under the data root (a dataset whose folder is absent is left
    out, said in its description) or drawn (`worlds.birds_to_words`, `worlds.mit_states`)."""
    from ...data import mit_states as ms
    from ...data.fashion_text import FashionTextConfig, birds_to_words_world
    from ...data.text_feedback import read_birds_to_words

    out = {}
    for name in p["extra"]["datasets"]:
        if name not in EXTRA_DATASETS:
            raise SettingsError(f"extra.datasets: unknown {name!r}; expected some of {list(EXTRA_DATASETS)}")
        skips[name] = SkipLog()
        if p.get("data_root"):
            root = Path(p["data_root"]) / EXTRA_DATASETS[name]
            if not root.is_dir():
                print(f"extra dataset {name}: no folder {root}; left out")
                continue
            descriptions[name] = {"birds_to_words": "Birds-to-Words (real)", "mit_states": "MIT-States (real)"}[name]
        elif name == "birds_to_words":
            root = birds_to_words_world(FashionTextConfig(**p["worlds"]["birds_to_words"]))
            descriptions[name] = "synthetic products (Birds-to-Words format)"
        else:
            root = ms.mit_states_world(ms.MITStatesWorldConfig(**p["worlds"]["mit_states"]))
            descriptions[name] = "synthetic objects in states (MIT-States format)"
        roots[name] = root
        if name == "birds_to_words":
            train, test = _feedback_extra(read_birds_to_words(root, "train", skips[name]),
                                          read_birds_to_words(root, "test", skips[name]), images)
        else:
            train, test = _mit_states_extra(ms.read_mit_states(root, "train", skips[name]),
                                            ms.read_mit_states(root, "test", skips[name]), images,
                                            p["extra"]["mit_states_pairs"], p["seed"])
        out[name] = ExtraDataset(train, test, EXTRA_KS[name])
    return out


def _fiq_pairs(splits: dict, images: ImageIndex) -> PairSet:
    refs, targets, captions = [], [], []
    for split in splits.values():
        idx = images.add(split.images)
        for q in split.queries:
            if q.target is None:
                continue
            refs.append(idx[q.source])
            targets.append(idx[q.target])
            caps = list(q.captions)
            captions.append([f" {FIQ_JOIN} ".join(caps), f" {FIQ_JOIN} ".join(caps[::-1])])
    return PairSet(np.array(refs), np.array(targets), captions)


def _fiq_eval(splits: dict, images: ImageIndex) -> dict:
    out = {}
    for cat, split in splits.items():
        idx = images.add(split.images)
        labels = {lab: i for i, lab in enumerate(dict.fromkeys(split.labels))}
        out[cat] = {"refs": [idx[q.source] for q in split.queries],
                    "texts": [f" {FIQ_JOIN} ".join(q.captions) for q in split.queries],
                    "exclude": [q.source for q in split.queries],
                    "query_labels": [labels[q.target_label] for q in split.queries],
                    "gallery": idx, "gallery_labels": [labels[x] for x in split.labels]}
    return out


def _imfq_pairs(split: imat.IMatSplit, images: ImageIndex) -> PairSet:
    """Every (image, neighbour) pair with the caption rule's choices."""
    by_id = dict(zip(split.annotations["imageId"], split.annotations["labels"]))
    refs, targets, captions = [], [], []
    for image, labels, neighbors in zip(split.annotations["imageId"], split.annotations["labels"],
                                        split.annotations["neighbors"]):
        for n in neighbors:
            refs.append(split.path(image))
            targets.append(split.path(n))
            captions.append(imat.caption_choices(split.names(labels), split.names(by_id[n])))
    return PairSet(np.array(images.add(refs)), np.array(images.add(targets)), captions)


def _imat_eval(split: imat.IMatSplit, images: ImageIndex, max_queries: int | None, seed: int) -> dict:
    queries = imat.evaluation_queries(split, seed=seed, max_queries=max_queries)
    gallery = imat.evaluation_gallery(queries)
    by_id = dict(zip(split.annotations["imageId"], split.annotations["labels"]))
    return {"refs": images.add([split.path(i) for i in queries["reference"]]), "texts": list(queries["caption"]),
            "target_labels": list(queries["target_labels"]),
            "gallery": images.add([split.path(i) for i in gallery]), "gallery_labels": [by_id[i] for i in gallery]}


# What the grid reads under a data root (published layouts; see README "Real data" and the notebook).
REAL_FILES = (
    *(f"fashioniq/captions/cap.{c}.{s}.json" for s in ("train", "val") for c in ("dress", "shirt", "toptee")),
    *(f"fashioniq/image_splits/split.{c}.{s}.json" for s in ("train", "val") for c in ("dress", "shirt", "toptee")),
    "imaterialist/imat2018_label_map.tsv",
    "imaterialist/train.json | imaterialist/train_with_neighbors.json",
    "imaterialist/validation.json | imaterialist/validation_with_neighbors.json",
    "cfq/judgments.tsv", "cfq/equivalent_captions.json",
)
REAL_FOLDERS = ("fashioniq/images | fashioniq/img", "imaterialist/images_train", "imaterialist/images_validation",
                "cfq/images")


class SettingsError(ValueError):
    """A setting the chosen data need is missing or wrong (named before any work starts)."""


def require_settings(p) -> None:
    """Check, before anything is read or trained, what this preset and data root need: with a data root, a
    local CLIP (`model.clip_path`) whose input size is `model.image_size` (and a second one,
    `model.mismatch_clip_path`, for the mismatch control), and every file and folder of the
    published layouts (all missing ones named at once). Raises SettingsError."""
    m = p["model"]
    problems = []
    if p.get("data_root") and not m["clip_path"]:
        problems.append("model.clip_path must be set with a data root (e.g. --set model.clip_path=/models/clip): a "
                        "local CLIP folder as transformers' save_pretrained writes it (config.json, weights, "
                        "tokenizer files); the real datasets hold no image-caption corpus to pretrain the small "
                        "dual encoder on")
    if m["clip_path"]:
        try:
            fixed = clip_settings(m["clip_path"])
        except (FileNotFoundError, ValueError) as e:
            problems.append(f"model.clip_path: {e}")
        else:
            if fixed["image_size"] != m["image_size"]:
                problems.append(f"model.image_size is {m['image_size']} but the CLIP at {m['clip_path']} takes "
                                f"{fixed['image_size']} px images (vision_config.image_size): set "
                                f"model.image_size={fixed['image_size']}")
        if "clip-mismatch-fiq" in p["runs"] and not m["mismatch_clip_path"]:
            problems.append("model.mismatch_clip_path must be set with model.clip_path for the mismatch control "
                            "(run clip-mismatch-fiq): a second local CLIP of the same architecture whose text tower "
                            "it takes (or leave clip-mismatch-fiq out of `runs` and of the claims)")
    if p.get("data_root"):
        root = Path(p["data_root"])
        for rel in REAL_FILES:
            if not any((root / r.strip()).is_file() for r in rel.split("|")):
                problems.append(f"missing file {root / rel.split('|')[0].strip()}"
                                + (f" (or {', '.join(r.strip() for r in rel.split('|')[1:])})" if "|" in rel else ""))
        for rel in REAL_FOLDERS:
            if not any((root / r.strip()).is_dir() for r in rel.split("|")):
                problems.append(f"missing folder {root / rel.split('|')[0].strip()}")
    if problems:
        raise SettingsError("cfq_evaluation cannot run with these settings:\n  - " + "\n  - ".join(problems))


def load_data(p, progress: bool = True) -> CFQPaperData:
    """Read (real, under p.data_root) or draw (synthetic) every dataset of the grid and register its images,
    after checking the settings (`require_settings`: nothing is read when one is missing or wrong).

    Real layout under data_root: `REAL_FILES` and `REAL_FOLDERS` (fashioniq/, imaterialist/, cfq/).
    Synthetic: the worlds described by p.worlds.
    """
    require_settings(p)
    with prog.stage("reading the datasets of the grid", disable=not progress):
        return _read(p, ImageIndex(p["model"]["image_size"]))


def _read(p, images: ImageIndex) -> CFQPaperData:
    from ...data.fashion_text import FashionTextConfig, fashion_iq_world
    from ...data.products import ProductsWorldConfig, products_world, read_attributes, read_image_table

    w = p["worlds"]
    skips = {name: SkipLog() for name in ("pretraining", "fashion_iq", "imaterialist", "cfq")}
    if p.get("data_root"):
        root = Path(p["data_root"])
        roots = {"fashion_iq": root / "fashioniq", "imaterialist": root / "imaterialist", "cfq": root / "cfq"}
        descriptions = {"fashion_iq": "Fashion IQ (real)", "imaterialist": "iMaterialist Fashion 2018 (real)",
                        "cfq": "Challenging Fashion Queries (real)"}
        pretrain_images = pretrain_rows = None
    else:
        roots = {"fashion_iq": fashion_iq_world(FashionTextConfig(**w["fashion_iq"])),
                 "imaterialist": imat.imat_world(imat.IMatWorldConfig(**w["imaterialist"])),
                 "cfq": cfq_world(CFQWorldConfig(**w["cfq"]))}
        descriptions = {"fashion_iq": "synthetic products (Fashion IQ format)",
                        "imaterialist": "synthetic products (iMaterialist format)",
                        "cfq": "synthetic products (CFQ format)"}
        products = products_world(ProductsWorldConfig(**w["products"]))
        attrs = read_attributes(products).set_index("product_id")
        photos = read_image_table(products)
        photos = photos[photos["split"] == "train"]
        pretrain_rows = [attrs.loc[pid].to_dict() for pid in photos["product_id"]]
        pretrain_images = np.array(images.add([products / name for name in photos["image_name"]]))
        roots["pretraining"] = products
        descriptions["pretraining"] = "synthetic products (photos + attribute captions)"
    fiq_train = _fiq_pairs(read_fashion_iq(roots["fashion_iq"], "train", skips=skips["fashion_iq"]), images)
    fiq_val = _fiq_eval(read_fashion_iq(roots["fashion_iq"], "val", skips=skips["fashion_iq"]), images)
    n = p["neighbors"]
    imat_kw = dict(max_changes=n["max_changes"], min_shared=n["min_shared"], max_neighbors=n["max_neighbors"],
                   seed=p["seed"])
    imfq_train = _imfq_pairs(imat.read_imat(roots["imaterialist"], "train", skips["imaterialist"], **imat_kw), images)
    imat_val = _imat_eval(imat.read_imat(roots["imaterialist"], "validation", skips["imaterialist"], **imat_kw),
                          images, p["eval"]["imat_max_queries"], seed=271828)
    cfq = read_cfq(roots["cfq"], skips["cfq"])
    agg = cfq.aggregated()
    q_idx = dict(zip(agg["query_hash"].unique(), images.add([cfq.image_path(h) for h in agg["query_hash"].unique()])))
    c_idx = dict(zip(agg["catalog_hash"].unique(),
                     images.add([cfq.image_path(h) for h in agg["catalog_hash"].unique()])))
    extra = _read_extra(p, images, roots, descriptions, skips)
    fingerprints = {name: fingerprint_dir(r) for name, r in roots.items()}
    return CFQPaperData(images, pretrain_images, pretrain_rows, fiq_train, fiq_val, imfq_train, imat_val, cfq, agg,
                        q_idx, c_idx, descriptions, fingerprints, skips, extra)
