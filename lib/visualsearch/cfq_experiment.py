"""The CFQ paper's experiment grid, at any preset: data, pretraining, the runs, their evaluation, figures.

Why a module: the notebook tells the story in a few cells; everything that computes lives here and is
tested. The flow, as the released experiment scripts run it:

1. Multimodal pretraining. Paper preset: a real CLIP loaded from a local folder (`model.clip_path`, required
   with a data root: the real datasets hold no generic image-caption corpus to pretrain on). Embedded default:
   a small dual encoder (`models.clip.small_clip`) pretrained in the notebook with CLIP's contrastive loss on
   the products world's photos and attribute captions ("a blue striped dress with long sleeves").
2. Optional weak-supervision pretraining ("iMFQ"): (reference, neighbour, caption) pairs from
   iMaterialist-style attribute labels (`data.imaterialist`), in-batch softmax.
3. Fashion IQ(-style) training, in-batch softmax.
4. Evaluation of every run on Fashion IQ-style validation recall, iMaterialist-style ROC-AUC / mAP and CFQ.

The grid (`RUNS`) is the paper's plus one arm the paper's claim needs and its grid lacks: "scratch-fiq",
CLIP VA with a never-pretrained dual encoder trained end to end on Fashion IQ (BatchNorm trainable, all
parameters at the new-parameter rate), the "no multimodal pretraining" baseline. Under every preset it is the
pretrained arm's architecture with a random initialisation (`new_clip`): on the paper preset the local CLIP's
config with transformers' initialisation (`models.clip.random_clip`), never its weights; on the embedded
default the small dual encoder before contrastive pretraining (its frozen MiniLM token source is text-only
pretrained and shared by every arm; the trainable text block on top of it starts random).

Beyond the paper, a data-limited sweep (`data_limited` in the presets) retrains some runs on nested shares
of the Fashion IQ-style training pairs: the paper fine-tunes a model pretrained on 400M pairs with 18k
triplets, while the embedded default's pretraining corpus is a few thousand captions, so how much the
pretraining is worth may hinge on how little task data there is.

Small-scale choices (each stated where a table is written):
- With `model.freeze_backbone` (the embedded default), the image backbone is frozen after pretraining and
  its features are computed once (the paper trains the pretrained weights at one tenth of the new weights'
  rate, 1e-6 vs 1e-5; here that rate is zero for the backbone while the image projection and the text tower
  keep the lower rate). The paper preset trains the backbone at the lower rate. No image augmentation.
- The MiniLM text model is frozen; the text tower's trainable Transformer block on top of it is what
  pretraining and fine-tuning change.
Training runs and their evaluations are cached (`cache.ResultCache`): a rerun only redraws figures. Each
training (pretraining, every stage of every run) checkpoints into the cache's run folder of its entry
(`ResultCache.run_dir`) every `checkpoint_every` steps, so a killed run resumes where it stopped with the
numbers an uninterrupted run gives; the folder is removed once the entry is stored.
"""
from __future__ import annotations

import copy
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from . import cfq_metrics as cm
from . import progress as prog  # (`progress` and `stage` name a flag and training stages here)
from .data import imaterialist as imat
from .data.cfq import CFQData, CFQWorldConfig, cfq_world, read_cfq
from .data.errors import SkipLog
from .data.images import load_image
from .data.text_feedback import FIQ_JOIN, read_fashion_iq
from .data.worlds import fingerprint_dir
from .evaluate import recall_at_k, retrieve
from .losses import BatchSoftmaxLoss
from .models import clip as clipmod
from .seeding import step_seed

# run name -> (model kind, training stages after multimodal pretraining, multimodally pretrained?)
RUNS = {
    "zero-shot": ("va", (), True),
    "clip-fiq": ("va", ("fiq",), True),
    "clip-imfq-fiq": ("va", ("imfq", "fiq"), True),
    "raf-fiq": ("raf", ("fiq",), True),
    "raf-big-fiq": ("raf_big", ("fiq",), True),
    "raf-imfq-fiq": ("raf", ("imfq", "fiq"), True),
    "af-fiq": ("af", ("fiq",), True),
    "tirg-fiq": ("tirg", ("fiq",), True),
    "scratch-fiq": ("va", ("fiq",), False),
    "random": ("random", (), False),
}
RUN_LABELS = {"zero-shot": "CLIP VA, zero-shot", "clip-fiq": "CLIP VA, FIQ", "clip-imfq-fiq": "CLIP VA, iMFQ+FIQ",
              "raf-fiq": "RAF, FIQ", "raf-big-fiq": "RAF w=1, FIQ", "raf-imfq-fiq": "RAF, iMFQ+FIQ",
              "af-fiq": "AF, FIQ", "tirg-fiq": "TIRG, FIQ", "scratch-fiq": "VA, no pretraining, FIQ",
              "random": "random embeddings"}
HEADLINE = ("FIQ (R@10+R@50)/2", "CFQ accurate mAP", "CFQ similar mAP", "CFQ nDCG")


# ------------------------------------------------------------------------------------------------- images

class ImageBank:
    """Every image an experiment uses, addressed by path, decoded once into one uint8 tensor.

    Why: thousands of small images are read by many runs; decoding them once keeps runs cheap. A bank of more
    than `preload_limit` images (the real iMaterialist has a million) decodes the images of each request
    instead. Images that cannot be read were already dropped (and counted) by the readers; one failing here is
    counted in `skips` and left black.
    """

    def __init__(self, size: int, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), preload_limit: int = 200_000):
        self.size, self.paths, self.index, self.preload_limit = size, [], {}, preload_limit
        self.mean, self.std = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
        self._pixels: torch.Tensor | None = None
        self.skips = SkipLog()

    def add(self, paths) -> list[int]:
        out = []
        for p in paths:
            p = str(p)
            if p not in self.index:
                if self._pixels is not None:
                    raise RuntimeError("ImageBank.add after the images were loaded")
                self.index[p] = len(self.paths)
                self.paths.append(p)
            out.append(self.index[p])
        return out

    def _decode(self, indices) -> torch.Tensor:
        pixels = torch.zeros(len(indices), 3, self.size, self.size, dtype=torch.uint8)
        for row, i in enumerate(indices):
            im = load_image(self.paths[i], self.skips)
            if im is None:
                continue
            if im.size != (self.size, self.size):
                im = im.resize((self.size, self.size))
            pixels[row] = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)
        return pixels

    @property
    def pixels_u8(self) -> torch.Tensor:
        if self._pixels is None:
            self._pixels = self._decode(range(len(self.paths)))
        return self._pixels

    def pixels(self, idx) -> torch.Tensor:
        idx = torch.as_tensor(idx, dtype=torch.long).reshape(-1)
        if self._pixels is None and len(self.paths) > self.preload_limit:
            u8 = self._decode(idx.tolist())
        else:
            u8 = self.pixels_u8[idx]
        return (u8.float() / 255.0 - self.mean) / self.std


@torch.no_grad()
def backbone_features(clip: clipmod.DualEncoder, bank: ImageBank, batch: int = 256, device: str = "cpu") -> dict:
    """The (frozen) image backbone's features of every bank image: {name: tensor [N, ...]} on the CPU."""
    clip.eval()
    parts: dict[str, list] = {}
    for start in range(0, len(bank.paths), batch):
        idx = list(range(start, min(start + batch, len(bank.paths))))
        feats = clip.image.backbone_features(bank.pixels(idx).to(device))
        for k, v in feats.items():
            parts.setdefault(k, []).append(v.cpu())
    return {k: torch.cat(v) for k, v in parts.items()}


class ImageInputs:
    """What a model is fed for image indices: cached backbone features, or pixels (a model whose backbone
    still trains)."""

    def __init__(self, bank: ImageBank, features: dict | None = None, device: str = "cpu"):
        self.bank, self.features, self.device = bank, features, device

    def __call__(self, idx):
        idx = torch.as_tensor(idx, dtype=torch.long)
        if self.features is not None:
            return {k: v[idx].to(self.device) for k, v in self.features.items()}
        return self.bank.pixels(idx).to(self.device)


# --------------------------------------------------------------------------------------------------- data

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


@dataclass
class PairSet:
    """(reference image, caption choices, target image) training or evaluation pairs over one ImageBank."""

    refs: np.ndarray        # bank index of each reference
    targets: np.ndarray     # bank index of each target
    captions: list          # per pair, a list of caption choices (one drawn per use)

    def __len__(self) -> int:
        return len(self.refs)


@dataclass
class ExperimentData:
    """Everything the grid reads, registered in one ImageBank."""

    bank: ImageBank
    pretrain_images: np.ndarray | None      # bank indices of the contrastive pretraining photos
    pretrain_rows: list | None              # their attribute rows (for captions)
    fiq_train: PairSet
    fiq_val: dict                           # category -> (query refs, texts, target labels, gallery idx, labels)
    imfq_train: PairSet
    imat_val: dict                          # refs, texts, target_labels, gallery idx, gallery labels
    cfq: CFQData
    cfq_agg: pd.DataFrame                   # aggregated judgments (pairs with readable images)
    cfq_query_idx: dict                     # query_hash -> bank index
    cfq_catalog_idx: dict                   # catalog_hash -> bank index
    descriptions: dict = field(default_factory=dict)   # dataset name -> description for the tables
    fingerprints: dict = field(default_factory=dict)   # dataset name -> fingerprint
    skips: dict = field(default_factory=dict)          # dataset name -> SkipLog


def _fiq_pairs(splits: dict, bank: ImageBank) -> PairSet:
    refs, targets, captions = [], [], []
    for split in splits.values():
        idx = bank.add(split.images)
        for q in split.queries:
            if q.target is None:
                continue
            refs.append(idx[q.source])
            targets.append(idx[q.target])
            caps = list(q.captions)
            captions.append([f" {FIQ_JOIN} ".join(caps), f" {FIQ_JOIN} ".join(caps[::-1])])
    return PairSet(np.array(refs), np.array(targets), captions)


def _fiq_eval(splits: dict, bank: ImageBank) -> dict:
    out = {}
    for cat, split in splits.items():
        idx = bank.add(split.images)
        labels = {lab: i for i, lab in enumerate(dict.fromkeys(split.labels))}
        out[cat] = {"refs": [idx[q.source] for q in split.queries],
                    "texts": [f" {FIQ_JOIN} ".join(q.captions) for q in split.queries],
                    "exclude": [q.source for q in split.queries],
                    "query_labels": [labels[q.target_label] for q in split.queries],
                    "gallery": idx, "gallery_labels": [labels[x] for x in split.labels]}
    return out


def _imfq_pairs(split: imat.IMatSplit, bank: ImageBank) -> PairSet:
    """Every (image, neighbour) pair with the caption rule's choices."""
    by_id = dict(zip(split.annotations["imageId"], split.annotations["labels"]))
    refs, targets, captions = [], [], []
    for image, labels, neighbors in zip(split.annotations["imageId"], split.annotations["labels"],
                                        split.annotations["neighbors"]):
        for n in neighbors:
            refs.append(split.path(image))
            targets.append(split.path(n))
            captions.append(imat.caption_choices(split.names(labels), split.names(by_id[n])))
    return PairSet(np.array(bank.add(refs)), np.array(bank.add(targets)), captions)


def _imat_eval(split: imat.IMatSplit, bank: ImageBank, max_queries: int | None, seed: int) -> dict:
    queries = imat.evaluation_queries(split, seed=seed, max_queries=max_queries)
    gallery = imat.evaluation_gallery(queries)
    by_id = dict(zip(split.annotations["imageId"], split.annotations["labels"]))
    return {"refs": bank.add([split.path(i) for i in queries["reference"]]), "texts": list(queries["caption"]),
            "target_labels": list(queries["target_labels"]),
            "gallery": bank.add([split.path(i) for i in gallery]), "gallery_labels": [by_id[i] for i in gallery]}


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
    local CLIP (`model.clip_path`) whose input size is `model.image_size`, and every file and folder of the
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
            fixed = clipmod.clip_settings(m["clip_path"])
        except (FileNotFoundError, ValueError) as e:
            problems.append(f"model.clip_path: {e}")
        else:
            if fixed["image_size"] != m["image_size"]:
                problems.append(f"model.image_size is {m['image_size']} but the CLIP at {m['clip_path']} takes "
                                f"{fixed['image_size']} px images (vision_config.image_size): set "
                                f"model.image_size={fixed['image_size']}")
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


def prepare_data(p, bank: ImageBank) -> ExperimentData:
    """Read (real, under p.data_root) or draw (synthetic) every dataset of the grid and register its images.

    Real layout under data_root: `REAL_FILES` and `REAL_FOLDERS` (fashioniq/, imaterialist/, cfq/).
    Synthetic: the worlds described by p.worlds.
    """
    from .data.fashion_text import FashionTextConfig, fashion_iq_world
    from .data.products import ProductsWorldConfig, products_world, read_attributes, read_image_table

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
        pretrain_images = np.array(bank.add([products / name for name in photos["image_name"]]))
        roots["pretraining"] = products
        descriptions["pretraining"] = "synthetic products (photos + attribute captions)"
    fiq_train = _fiq_pairs(read_fashion_iq(roots["fashion_iq"], "train", skips=skips["fashion_iq"]), bank)
    fiq_val = _fiq_eval(read_fashion_iq(roots["fashion_iq"], "val", skips=skips["fashion_iq"]), bank)
    n = p["neighbors"]
    imat_kw = dict(max_changes=n["max_changes"], min_shared=n["min_shared"], max_neighbors=n["max_neighbors"],
                   seed=p["seed"])
    imfq_train = _imfq_pairs(imat.read_imat(roots["imaterialist"], "train", skips["imaterialist"], **imat_kw), bank)
    imat_val = _imat_eval(imat.read_imat(roots["imaterialist"], "validation", skips["imaterialist"], **imat_kw), bank,
                          p["eval"]["imat_max_queries"], seed=271828)
    cfq = read_cfq(roots["cfq"], skips["cfq"])
    agg = cfq.aggregated()
    q_idx = dict(zip(agg["query_hash"].unique(), bank.add([cfq.image_path(h) for h in agg["query_hash"].unique()])))
    c_idx = dict(zip(agg["catalog_hash"].unique(), bank.add([cfq.image_path(h) for h in agg["catalog_hash"].unique()])))
    fingerprints = {name: fingerprint_dir(r) for name, r in roots.items()}
    return ExperimentData(bank, pretrain_images, pretrain_rows, fiq_train, fiq_val, imfq_train, imat_val, cfq, agg,
                          q_idx, c_idx, descriptions, fingerprints, skips)


# --------------------------------------------------------------------------------------------- evaluation

@torch.no_grad()
def embed(model, inputs: ImageInputs, idx, texts=None, batch: int = 256) -> torch.Tensor:
    """L2-normalised query embeddings (with `texts`) or catalog embeddings of bank images `idx`."""
    model.eval()
    out = []
    for s in range(0, len(idx), batch):
        x = inputs(list(idx[s:s + batch]))
        e = model.embed_catalog(x) if texts is None else model.compose(x, list(texts[s:s + batch]))
        out.append(F.normalize(e.float().cpu(), dim=-1))
    return torch.cat(out) if out else torch.zeros(0)


def evaluate_fiq(model, inputs: ImageInputs, fiq_val: dict) -> dict:
    """Recall@10 and @50 per category (reference excluded from its own ranking), their means and
    (R@10 + R@50) / 2 overall, as the Fashion IQ protocol reports them."""
    out = {}
    for cat, d in fiq_val.items():
        q = embed(model, inputs, d["refs"], d["texts"])
        g = embed(model, inputs, d["gallery"])
        top = retrieve(q, g, 50, exclude=torch.tensor(d["exclude"]))
        rec = recall_at_k(top.indices, torch.tensor(d["query_labels"]), torch.tensor(d["gallery_labels"]), (10, 50))
        out[f"{cat} R@10"], out[f"{cat} R@50"] = 100 * rec[10], 100 * rec[50]
    cats = list(fiq_val)
    out["avg R@10"] = float(np.mean([out[f"{c} R@10"] for c in cats]))
    out["avg R@50"] = float(np.mean([out[f"{c} R@50"] for c in cats]))
    out["(R@10+R@50)/2"] = (out["avg R@10"] + out["avg R@50"]) / 2
    return out


def evaluate_imat(model, inputs: ImageInputs, d: dict) -> dict:
    q = embed(model, inputs, d["refs"], d["texts"])
    g = embed(model, inputs, d["gallery"])
    m = imat.retrieval_metrics((q @ g.T).numpy(), d["target_labels"], d["gallery_labels"])
    return {"ROC-AUC": 100 * m["roc_auc"], "mAP": 100 * m["mAP"]}


def cfq_scores(model, inputs: ImageInputs, data: ExperimentData) -> np.ndarray:
    """Cosine of each judged pair's query (image, caption) and catalog image embeddings."""
    agg = data.cfq_agg
    queries = agg[["query_hash", "caption"]].drop_duplicates()
    q = embed(model, inputs, [data.cfq_query_idx[h] for h in queries["query_hash"]], list(queries["caption"]))
    items = list(agg["catalog_hash"].unique())
    c = embed(model, inputs, [data.cfq_catalog_idx[h] for h in items])
    q_row = {key: i for i, key in enumerate(zip(queries["query_hash"], queries["caption"]))}
    c_row = {h: i for i, h in enumerate(items)}
    qi = torch.tensor([q_row[k] for k in zip(agg["query_hash"], agg["caption"])])
    ci = torch.tensor([c_row[h] for h in agg["catalog_hash"]])
    return (q[qi] * c[ci]).sum(1).numpy()


def evaluate_all(model, inputs: ImageInputs, data: ExperimentData, group_by: str = "query_caption") -> dict:
    """FIQ recall, iMat ROC-AUC/mAP and CFQ (primary metrics, full table, scores) of one model."""
    scores = cfq_scores(model, inputs, data)
    result = cm.cfq_metrics(data.cfq_agg, scores, group_by=group_by)
    return {"fiq": evaluate_fiq(model, inputs, data.fiq_val), "imat": evaluate_imat(model, inputs, data.imat_val),
            "cfq_primary": {k: 100 * v for k, v in result.primary().items()}, "cfq_table": result.table,
            "cfq_scores": scores}


# ----------------------------------------------------------------------------------------------- training

def composed_batches(pairs: PairSet, inputs: ImageInputs, batch_size: int, seed: int):
    """batch_fn(step) for the train loop: a pure function of the step (distinct pairs, one caption each)."""
    def batch_fn(step: int) -> dict:
        rng = np.random.default_rng(step_seed(seed, step))
        pick = rng.choice(len(pairs), size=min(batch_size, len(pairs)), replace=False)
        texts = [pairs.captions[i][rng.integers(len(pairs.captions[i]))] for i in pick]
        return {"source": inputs(pairs.refs[pick]), "texts": texts, "target": inputs(pairs.targets[pick])}
    return batch_fn


_SOFTMAX = BatchSoftmaxLoss()


def composed_step(model, batch):
    logits = model(batch["source"], batch["texts"], batch["target"])
    loss = _SOFTMAX(logits)
    acc = (logits.argmax(1) == torch.arange(len(logits), device=logits.device)).float().mean().item()
    return loss, {"batch_acc": acc}


def contrastive_batches(data: ExperimentData, batch_size: int, seed: int, device: str = "cpu"):
    rows, images = data.pretrain_rows, data.pretrain_images

    def batch_fn(step: int) -> dict:
        rng = np.random.default_rng(step_seed(seed, step))
        pick = rng.choice(len(images), size=batch_size, replace=False)
        return {"images": data.bank.pixels(images[pick]).to(device),
                "texts": [attribute_caption(rows[i], rng) for i in pick]}
    return batch_fn


def contrastive_step(model, batch):
    return model.contrastive_loss(batch["images"], batch["texts"])


def stored_state(model: torch.nn.Module) -> dict:
    """A model's state without the frozen MiniLM weights (those load from their local folder)."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if ".source.model." not in k}


# ---------------------------------------------------------------------------------------------- the grid

class CFQExperiment:
    """The grid of one preset: builds dual encoders, trains and evaluates each run (cached), keeps results.

    p: the notebook's Params (see configs/cfq_evaluation/default.yaml for every field).
    """

    def __init__(self, p, cache=None, progress: bool = True):
        from .cache import ResultCache

        require_settings(p)
        self._setup(p, cache or ResultCache(), progress)
        with prog.stage("reading the datasets of the grid", disable=not self.progress):
            self.data = prepare_data(p, self.bank)

    def _setup(self, p, cache, progress: bool) -> None:
        self.p, self.cache, self.progress = p, cache, progress
        self.device = p.get("device", "cpu")
        m = p["model"]
        mean, std = ((clipmod.CLIP_MEAN, clipmod.CLIP_STD) if m["clip_path"] else ((0.5,) * 3, (0.25,) * 3))
        self.bank = ImageBank(m["image_size"], mean, std)
        self.data = None
        self._tokens = None
        self._features = None
        self.pretrain_log = None                              # contrastive pretraining's log (embedded default)
        self.results: dict[str, dict] = {}                    # run -> result, full Fashion IQ training set
        self.limited: dict[tuple[str, float], dict] = {}      # (run, share of FIQ pairs) -> result
        self.timings: dict[str, float] = {}

    @classmethod
    def models_only(cls, p, cache=None, progress: bool = False) -> "CFQExperiment":
        """An experiment that reads no data: builds models (`new_clip`, `pretrained_clip`, `build` of runs on
        pixels) for inspection and tests."""
        from .cache import ResultCache

        exp = cls.__new__(cls)
        exp._setup(p, cache or ResultCache(), progress)
        return exp

    def _cached_training(self, name: str, key: dict, compute):
        """cache.get_or_compute, then the entry's checkpoint folder is removed: the stored entry replaces it
        (and a recomputation asked for with VISUALSEARCH_NO_CACHE must not find a finished checkpoint)."""
        out = self.cache.get_or_compute(name, key, compute)
        shutil.rmtree(self.cache.run_dir(name, key), ignore_errors=True)
        return out

    # -- keys
    def data_key(self) -> dict:
        return {"fingerprints": self.data.fingerprints, "neighbors": dict(self.p["neighbors"]),
                "eval": dict(self.p["eval"]), "image_size": self.p["model"]["image_size"]}

    def pretrain_key(self) -> dict:
        return {"model": dict(self.p["model"]), "pretrain": dict(self.p["pretrain"]), "seed": self.p["seed"],
                "data": self.data_key(), "device": str(self.device)}  # a CPU result is never a GPU run's

    # -- models
    def new_clip(self) -> clipmod.DualEncoder:
        """The dual encoder before any multimodal pretraining, drawn with the seed: the local CLIP's
        architecture with a random initialisation (paper preset), or the small dual encoder (embedded default).
        The "no pretraining" arm starts here; the pretrained arms load their weights on top of it."""
        m = self.p["model"]
        if m["clip_path"]:
            return clipmod.random_clip(m["clip_path"], seed=self.p["seed"])
        if self._tokens is None:
            self._tokens = clipmod.FrozenMiniLMTokens(m["text_model_path"])
        torch.manual_seed(self.p["seed"])
        return clipmod.small_clip(m["embed_dim"], tuple(m["widths"]), tokens=self._tokens, text_width=m["text_width"],
                                  text_heads=m["text_heads"], dropout=m["dropout"])

    def pretrained_state(self) -> dict:
        """The dual encoder after multimodal pretraining (trained here on the embedded default; a real
        CLIP's own weights on the paper preset)."""
        if self.p["model"]["clip_path"]:
            self.pretrain_log = None  # nothing is trained here: the CLIP's own weights
            return stored_state(clipmod.load_clip(self.p["model"]["clip_path"]))
        key = self.pretrain_key()

        def compute():
            from .train import TrainConfig, train

            t = self.p["pretrain"]
            clip = self.new_clip().to(self.device)
            cfg = TrainConfig(steps=t["steps"], lr=t["lr"], optimizer="adam", weight_decay=t["weight_decay"],
                              seed=self.p["seed"], progress=self.progress, device=self.device, log_every=50,
                              desc="contrastive pretraining", checkpoint_every=self.p["checkpoint_every"])
            start = time.time()
            res = train(clip, contrastive_step, contrastive_batches(self.data, t["batch_size"], self.p["seed"],
                                                                    self.device), cfg,
                        run_dir=self.cache.run_dir("cfq_pretrain", key))
            return {"state": stored_state(res.model), "log": res.log, "wall_s": time.time() - start}

        out = self._cached_training("cfq_pretrain", key, compute)
        self.timings.setdefault("pretrain", out["wall_s"])
        self.pretrain_log = out["log"]
        return out["state"]

    def pretraining_summary(self) -> str:
        """Runs (or loads) the multimodal pretraining and says what it gave, in one line."""
        m = self.p["model"]
        if m["clip_path"]:
            state = self.pretrained_state()
            n = sum(v.numel() for v in state.values())
            return (f"pretrained CLIP loaded from {m['clip_path']} ({n / 1e6:.1f}M weights, "
                    f"{clipmod.clip_settings(m['clip_path'])['image_size']} px): no pretraining runs here")
        self.pretrained_state()
        log = self.pretrain_log
        return (f"contrastive loss {log.loss.iloc[:20].mean():.2f} -> {log.loss.iloc[-20:].mean():.2f}; in-batch "
                f"image-to-text accuracy {log.i2t_accuracy.iloc[-20:].mean():.2f} "
                f"(chance {1 / self.p['pretrain']['batch_size']:.3f})")

    def pretrained_clip(self) -> clipmod.DualEncoder:
        """The dual encoder after multimodal pretraining: the local CLIP as loaded (paper preset) or the small
        dual encoder with its pretrained weights."""
        if self.p["model"]["clip_path"]:
            self.pretrain_log = None
            clip = clipmod.load_clip(self.p["model"]["clip_path"])
            # new layers built on it draw from the seed, as on the embedded default (where new_clip seeds):
            # never from whatever ran before (runs loaded from the cache or not)
            torch.manual_seed(self.p["seed"])
        else:
            clip = self.new_clip()
            clip.load_state_dict(self.pretrained_state(), strict=False)
        if self.p["model"]["freeze_backbone"]:
            clip.freeze_backbone()
        return clip.to(self.device)

    def features(self) -> dict:
        """The frozen pretrained backbone's features of every bank image (computed once per session)."""
        if self._features is None:
            clip = self.pretrained_clip()
            with prog.stage(f"frozen backbone features of {len(self.bank.paths)} images",
                            disable=not self.progress):
                self._features = backbone_features(clip, self.bank, device=self.device)
        return self._features

    def build(self, run: str):
        kind, _, pretrained = RUNS[run]
        m = self.p["model"]
        if kind == "random":
            return clipmod.RandomEmbeddings(m["embed_dim"], seed=self.p["seed"]), ImageInputs(self.bank, None, self.device)
        if pretrained:
            clip = self.pretrained_clip()
            frozen = self.p["model"]["freeze_backbone"]
            inputs = ImageInputs(self.bank, self.features() if frozen else None, self.device)
        else:
            clip = self.new_clip().to(self.device)
            inputs = ImageInputs(self.bank, None, self.device)
        model = clipmod.build_composition(kind, clip, heads=m["heads"], ff_width=m["ff_width"], blocks=m["blocks"],
                                          dropout=m["dropout"], seed=self.p["seed"], freeze_bn=pretrained)
        return model.to(self.device), inputs

    # -- runs
    def run_key(self, run: str, fiq_share: float = 1.0) -> dict:
        kind, stages, pretrained = RUNS[run]
        t = self.p["train"]
        return {"run": run, "kind": kind, "stages": list(stages), "train": {s: dict(t[s]) for s in stages},
                "va_lr": t["va_lr"], "pretrain": self.pretrain_key() if pretrained else None,
                "model": dict(self.p["model"]), "seed": self.p["seed"], "data": self.data_key(),
                "group_by": self.p["eval"]["group_by"], "fiq_share": fiq_share, "device": str(self.device)}

    def fiq_pairs(self, share: float = 1.0) -> PairSet:
        """The first round(share x N) Fashion IQ-style training pairs of one permutation drawn with the seed:
        a smaller share is a subset of every larger one, so the sweep only ever removes data."""
        pairs = self.data.fiq_train
        if not 0 < share <= 1:
            raise ValueError(f"a share of the Fashion IQ training pairs must be in (0, 1], got {share}")
        if share == 1:
            return pairs
        n = max(1, round(share * len(pairs)))
        keep = np.sort(np.random.default_rng(step_seed(self.p["seed"], 0, 7)).permutation(len(pairs))[:n])
        return PairSet(pairs.refs[keep], pairs.targets[keep], [pairs.captions[i] for i in keep])

    def train_stage(self, model, inputs: ImageInputs, run: str, stage: str, fiq_share: float = 1.0, run_dir=None):
        """Train `model` on one stage of `run` (resuming from a checkpoint in `run_dir`, if any); its log."""
        from .train import TrainConfig, train

        kind, _, pretrained = RUNS[run]
        t = self.p["train"][stage]
        pairs = self.fiq_pairs(fiq_share) if stage == "fiq" else self.data.imfq_train
        if kind == "va" and pretrained:  # the paper's CLIP VA baseline: one low rate everywhere
            lr, scale = self.p["train"]["va_lr"], 1.0
        else:
            lr, scale = t["lr"], (t["pretrained_lr_scale"] if pretrained else 1.0)
        milestones = tuple(int(f * t["steps"]) for f in t["lr_decay_at"])
        cfg = TrainConfig(steps=t["steps"], lr=lr, optimizer="adam", adam_eps=t["adam_eps"],
                          weight_decay=t["weight_decay"], lr_milestones=milestones, lr_gamma=0.1,
                          seed=step_seed(self.p["seed"], 0, 1 + ["imfq", "fiq"].index(stage)),
                          progress=self.progress, device=self.device, log_every=50,
                          desc=f"{self.run_label(run, fiq_share)}: {stage} stage",
                          checkpoint_every=self.p["checkpoint_every"])
        batches = composed_batches(pairs, inputs, t["batch_size"], cfg.seed)
        return train(model, composed_step, batches, cfg, run_dir=run_dir, param_groups=model.param_groups(scale)).log

    def run_label(self, run: str, fiq_share: float = 1.0) -> str:
        """The run's name in progress lines (with its share of the FIQ pairs in the data-limited sweep)."""
        return run if fiq_share == 1 else f"{run} on {fiq_share:g} of FIQ"

    def run(self, run: str, fiq_share: float = 1.0) -> dict:
        """Train (if the run has stages) and evaluate one run of the grid, its Fashion IQ stage on `fiq_share`
        of the training pairs (same steps and rates); cached."""
        key = self.run_key(run, fiq_share)

        def compute():
            start = time.time()
            model, inputs = self.build(run)
            logs = {}
            for stage in RUNS[run][1]:  # each stage checkpoints into its own folder of the run's
                logs[stage] = self.train_stage(model, inputs, run, stage, fiq_share,
                                               run_dir=self.cache.run_dir("cfq_run", key) / stage)
            train_s = time.time() - start
            with prog.stage(f"{self.run_label(run, fiq_share)}: evaluating", disable=not self.progress):
                metrics = evaluate_all(model, inputs, self.data, self.p["eval"]["group_by"])
            return {**metrics, "logs": logs, "train_s": train_s, "wall_s": time.time() - start}

        out = self._cached_training("cfq_run", key, compute)
        if fiq_share == 1:
            self.results[run] = out
            self.timings[run] = out["wall_s"]
        else:
            self.limited[(run, fiq_share)] = out
            self.timings[f"{run} on {fiq_share:g} of FIQ"] = out["wall_s"]
        return out

    def run_data_limited(self) -> dict:
        """Every run of `data_limited.runs` on every share in `data_limited.shares` (the full-data runs come
        from the grid, run here if the grid did not)."""
        d = self.p["data_limited"]
        for r in d["runs"]:
            if r not in RUNS or "fiq" not in RUNS[r][1]:
                raise ValueError(f"data_limited.runs: {r!r} is not a run with a Fashion IQ stage; "
                                 f"expected some of {[k for k, v in RUNS.items() if 'fiq' in v[1]]}")
            if r not in self.results:
                self.run(r)
            for share in d["shares"]:
                self.run(r, float(share))
        return self.limited

    def run_all(self, runs=None) -> dict:
        for r in runs or self.p["runs"]:
            if r not in RUNS:
                raise ValueError(f"unknown run {r!r}; expected some of {list(RUNS)}")
            self.run(r)
        return self.results

    # -- tables
    def grid_table(self) -> pd.DataFrame:
        """Tidy rows (method, dataset, metric, reproduced) of every run on the three benchmarks."""
        rows = []
        for run, res in self.results.items():
            label = RUN_LABELS[run]
            for metric, v in res["fiq"].items():
                rows.append((label, self.data.descriptions["fashion_iq"] + ", val", metric, v))
            for metric, v in res["imat"].items():
                rows.append((label, self.data.descriptions["imaterialist"] + ", val", metric, v))
            for metric, v in res["cfq_primary"].items():
                rows.append((label, self.data.descriptions["cfq"], metric, v))
        return pd.DataFrame(rows, columns=["method", "dataset", "metric", "reproduced"])

    def cfq_threshold_table(self) -> pd.DataFrame:
        """Mean per-group AP (m_ap) at every threshold, per run, on CFQ (weighted over subsets)."""
        rows = []
        for run, res in self.results.items():
            t = res["cfq_table"]
            t = t[(t.subset == cm.WEIGHTED) & (t.metric.isin(["m_ap", "m_auc", "rprec"]))]
            for r in t.itertuples():
                rows.append((RUN_LABELS[run], self.data.descriptions["cfq"], f"{r.metric} {r.label}", 100 * r.value))
        return pd.DataFrame(rows, columns=["method", "dataset", "metric", "reproduced"])

    def data_limited_table(self) -> pd.DataFrame:
        """Tidy rows (method, dataset = how many FIQ-style training pairs, metric, reproduced, plus the count and
        share as columns) of the data-limited sweep, the full-data runs of the grid included."""
        rows = []
        runs = self.p["data_limited"]["runs"]
        entries = [((r, 1.0), self.results[r]) for r in runs if r in self.results] + list(self.limited.items())
        for (run, share), res in entries:
            pairs = len(self.fiq_pairs(share))
            for metric, v in self.headline(run, res).items():
                rows.append((RUN_LABELS[run], f"trained on {pairs} FIQ-style pairs", metric, v, pairs, share))
        table = pd.DataFrame(rows, columns=["method", "dataset", "metric", "reproduced", "FIQ training pairs", "share"])
        order = {RUN_LABELS[r]: i for i, r in enumerate(runs)}
        table["order"] = table["method"].map(order)
        table = table.sort_values(["order", "FIQ training pairs"], kind="stable")
        return table.drop(columns="order").reset_index(drop=True)

    def headline(self, run: str, res: dict | None = None) -> dict:
        res = self.results[run] if res is None else res
        return {"FIQ (R@10+R@50)/2": res["fiq"]["(R@10+R@50)/2"], "CFQ accurate mAP": res["cfq_primary"]["accurate mAP"],
                "CFQ similar mAP": res["cfq_primary"]["similar mAP"], "CFQ nDCG": res["cfq_primary"]["nDCG"]}


# ------------------------------------------------------------------------------------------------ claims

def compare(exp: CFQExperiment, better: str, worse: str, fiq_share: float = 1.0) -> tuple[bool, str, dict]:
    """Whether run `better` beats run `worse` on every headline number, with the margins; both trained on
    `fiq_share` of the Fashion IQ-style pairs (1 = the grid, else the data-limited sweep)."""
    def result(run):
        return exp.results[run] if fiq_share == 1 else exp.limited[(run, fiq_share)]

    a, b = exp.headline(better, result(better)), exp.headline(worse, result(worse))
    margins = {k: a[k] - b[k] for k in HEADLINE}
    ok = all(m > 0 for m in margins.values())
    where = "" if fiq_share == 1 else f" on {len(exp.fiq_pairs(fiq_share))} FIQ pairs"
    detail = f"{better} vs {worse}{where}: " + ", ".join(f"{k} {a[k]:.1f} vs {b[k]:.1f} ({margins[k]:+.1f})"
                                                          for k in HEADLINE)
    return ok, detail, margins


def check_claims(exp: CFQExperiment, rep) -> list[dict]:
    """The paper's three claims on this preset, each a comparison on every headline number (FIQ-style
    (R@10+R@50)/2 and the three CFQ primary metrics); then, when the data-limited sweep ran, the first and
    third again at every share of it. Recorded with rep.check, never raising."""
    out = []

    def available(a, b, share):
        have = exp.results if share == 1 else {r for r, s in exp.limited if s == share}
        return a in have and b in have

    def record(claim, comparisons):
        comparisons = [(a, b, share) for a, b, *rest in comparisons for share in (rest or [1.0])]
        results = [compare(exp, a, b, share) for a, b, share in comparisons if available(a, b, share)]
        if not results:
            return
        passed = all(r[0] for r in results)
        detail = "; ".join(r[1] for r in results)
        measured = float(np.mean([np.mean(list(r[2].values())) for r in results]))
        rep.check(claim, passed, detail, measured)
        out.append({"claim": claim, "passed": passed, "detail": detail})

    record("Multimodal pretraining helps over none (CLIP VA + FIQ beats the same model trained on FIQ from scratch)",
           [("clip-fiq", "scratch-fiq")])
    record("Weak attribute pretraining (iMFQ) adds to multimodal pretraining, for CLIP VA and for RAF",
           [("clip-imfq-fiq", "clip-fiq"), ("raf-imfq-fiq", "raf-fiq")])
    record("RAF keeps the pretrained model's advantage (beats CLIP VA fine-tuned) while AF loses part of it "
           "(RAF beats AF)", [("raf-fiq", "clip-fiq"), ("raf-fiq", "af-fiq")])
    # The same comparisons where Fashion IQ-style data is scarce (every share of the data-limited sweep);
    # stated as conditions of the paper's claims, not as claims the paper makes at this scale.
    shares = [float(x) for x in exp.p["data_limited"]["shares"]]
    if shares:
        record("With scarce Fashion IQ-style data (every share of the data-limited sweep): multimodal pretraining "
               "helps over none", [("clip-fiq", "scratch-fiq", *shares)])
        record("With scarce Fashion IQ-style data (every share of the data-limited sweep): RAF keeps the pretrained "
               "model's advantage while AF loses part of it", [("raf-fiq", "clip-fiq", *shares),
                                                               ("raf-fiq", "af-fiq", *shares)])
    return out


# ----------------------------------------------------------------------------------------------- figures

def pretraining_margins(table: pd.DataFrame, pretrained: str = "clip-fiq", scratch: str = "scratch-fiq") -> pd.DataFrame:
    """From data_limited_table: per number of FIQ training pairs, the pretrained run's score minus the
    from-scratch run's on each headline number (positive = pretraining helps)."""
    wide = table.pivot_table(index=["FIQ training pairs", "metric"], columns="method", values="reproduced")
    a, b = RUN_LABELS[pretrained], RUN_LABELS[scratch]
    if a not in wide or b not in wide:
        return pd.DataFrame()
    margin = (wide[a] - wide[b]).rename("margin").reset_index()
    # (a headline number that is NaN, e.g. a CFQ metric with no group holding both classes, keeps its column)
    return margin.pivot(index="FIQ training pairs", columns="metric", values="margin").reindex(columns=list(HEADLINE))


def data_limited_figure(table: pd.DataFrame):
    """Each headline number against the number of Fashion IQ-style training pairs, one line per run."""
    import matplotlib.pyplot as plt

    from .report import figsize

    fig, axes = plt.subplots(1, len(HEADLINE), figsize=figsize("wide"))
    for ax, metric in zip(axes, HEADLINE):
        part = table[table.metric == metric]
        for method, line in part.groupby("method", sort=False):
            ax.plot(line["FIQ training pairs"], line["reproduced"], marker="o", label=method)
        ax.set_xscale("log")
        counts = sorted(part["FIQ training pairs"].unique())
        ax.set_xticks(counts, [str(c) for c in counts], fontsize=7)
        ax.xaxis.set_minor_locator(plt.NullLocator())
        ax.set_title(metric, fontsize=8)
        ax.set_xlabel("FIQ training pairs")
    axes[0].set_ylabel("score (%)")
    axes[0].legend(fontsize=5)
    fig.tight_layout()
    return fig


def judgment_histogram(agg: pd.DataFrame):
    """Left: share of judged pairs labelled positive at each threshold, accurate and similar. Right: the
    distribution of mean judgments. What the paper's labels look like before any model is scored."""
    import matplotlib.pyplot as plt

    from .report import figsize

    fr = cm.label_fractions(agg)
    fig, axes = plt.subplots(1, 2, figsize=figsize("wide"))
    width = 0.4
    x = np.arange(len(cm.THRESHOLDS))
    for k, (kind, colour) in enumerate((("accurate", "tab:blue"), ("similar", "tab:orange"))):
        part = fr[fr.kind == kind]
        axes[0].bar(x + (k - 0.5) * width, part["fraction_positive"], width, label=kind, color=colour)
    axes[0].set_xticks(x, [f"> {t:g}" for t in cm.THRESHOLDS], rotation=30)
    axes[0].set_ylabel("fraction of pairs labelled positive")
    axes[0].set_xlabel("threshold on the mean judgment")
    axes[0].legend()
    bins = np.linspace(-1, 1, 13)
    axes[1].hist([agg["accurate"], agg["similar"]], bins=bins, label=["accurate", "similar"],
                 color=["tab:blue", "tab:orange"])
    axes[1].set_xlabel("mean judgment over annotators")
    axes[1].set_ylabel("judged pairs")
    axes[1].legend()
    fig.tight_layout()
    return fig


def _corner_colour(value: float):
    import matplotlib.pyplot as plt

    return plt.get_cmap("RdYlGn")((value + 1) / 2)


def figure1(exp: CFQExperiment, runs=("clip-fiq", "raf-imfq-fiq"), n_queries: int = 3, top_k: int = 4,
            seed: int = 0):
    """The paper's Figure 1 analogue: per example query (drawn with `seed`, not chosen by result) its
    image and caption, the most relevant judged catalog items (by mean accuracy, then similarity), and the top
    results of each run among the judged items. Corner squares: mean accuracy (left) and similarity (right),
    red = -1 to green = +1."""
    import matplotlib.pyplot as plt

    agg = exp.data.cfq_agg.copy()
    keys = agg[["query_hash", "caption"]].drop_duplicates().reset_index(drop=True)
    rng = np.random.default_rng(seed)
    picked = keys.iloc[sorted(rng.choice(len(keys), size=min(n_queries, len(keys)), replace=False))]
    columns = [("most relevant", None)] + [(RUN_LABELS[r], r) for r in runs if r in exp.results]
    fig, axes = plt.subplots(len(picked), 1 + top_k * len(columns),
                             figsize=(1.1 * (1 + top_k * len(columns)), 1.45 * len(picked)), squeeze=False)
    for row, (qh, cap) in enumerate(zip(picked["query_hash"], picked["caption"])):
        mask = ((agg["query_hash"] == qh) & (agg["caption"] == cap)).to_numpy()
        group = agg[mask].copy()
        ax = axes[row, 0]
        img = exp.data.cfq.load_image(qh)
        if img is not None:
            ax.imshow(img)
        ax.set_title(f"query:\n{cap}", fontsize=6)
        col = 1
        for title, run in columns:
            if run is None:
                order = (group["accurate"] + 0.1 * group["similar"]).to_numpy()
            else:
                order = exp.results[run]["cfq_scores"][mask]
            top = group.iloc[np.argsort(-order, kind="stable")[:top_k]]
            for j in range(top_k):
                ax = axes[row, col + j]
                if j < len(top):
                    item = top.iloc[j]
                    im = exp.data.cfq.load_image(item["catalog_hash"])
                    if im is not None:
                        ax.imshow(im)
                    size = (im.size[0] if im is not None else 32) * 0.22
                    for x0, value in ((0, item["accurate"]), (1, item["similar"])):
                        xy = (0 if x0 == 0 else (im.size[0] if im is not None else 32) - size, 0)
                        ax.add_patch(plt.Rectangle(xy, size, size, color=_corner_colour(value)))
                if j == 0 and row == 0:
                    ax.set_title(title, fontsize=6, loc="left")
            col += top_k
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout(pad=0.3)
    return fig


def training_curves(exp: CFQExperiment):
    """Loss per step of pretraining and of each run's training stages (smoothed over 20 steps)."""
    import matplotlib.pyplot as plt

    from .report import figsize

    fig, axes = plt.subplots(1, 3, figsize=figsize("wide"))
    if getattr(exp, "pretrain_log", None) is not None and len(exp.pretrain_log):
        log = exp.pretrain_log
        axes[0].plot(log["step"], log["loss"].rolling(20, min_periods=1).mean())
    axes[0].set_title("contrastive pretraining", fontsize=8)
    for ax, stage in ((axes[1], "imfq"), (axes[2], "fiq")):
        for run, res in exp.results.items():
            log = res["logs"].get(stage)
            if log is not None and len(log):
                ax.plot(log["step"], log["loss"].rolling(20, min_periods=1).mean(), label=RUN_LABELS[run])
        ax.set_title(f"{'iMFQ' if stage == 'imfq' else 'FIQ'} stage", fontsize=8)
    for ax in axes:
        ax.set_xlabel("step")
    axes[0].set_ylabel("loss")
    for ax in axes[1:]:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=5)
    fig.tight_layout()
    return fig
