"""The MAAF notebook's data: five text-feedback datasets read in their real formats (or drawn as synthetic
worlds in those formats), each split's images decoded once into an `ImageStore`.

- `load_store`: every image of a split as uint8 [N, 3, S, S] (the authors' Resize + CenterCrop); an image
  unreadable at decode time becomes grey, counted in the skips (readers already dropped the ones missing at
  read time).
- `SplitInputs`: one split and how its images reach a model: pixels (normalised, or augmented for training),
  or the stage maps of a frozen backbone (`experiment.FrozenMaps`, by backbone key).
- `load_data(p)`: every dataset of the notebook's parameters, `workers` at a time in separate processes.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image

from ...data import text_feedback as tf
from ...data.errors import SkipLog
from ...data.fashion_text import FashionTextConfig, birds_to_words_world, fashion200k_world, fashion_iq_world
from ...data.images import ImageStore, decode_all, fits_in_memory, load_image, to_uint8_tensor
from ...data.scenes import ScenesWorldConfig, css_world, spot_the_diff_world
from ...data.text_feedback import FeedbackSplit
from ...data.worlds import cache_root, fingerprint_dir
from ...forked import run_forked
from ...models.text import Vocabulary
from ...progress import bar

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


# ------------------------------------------------------------------------------------------------- images

def square(img: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to `size`, centre crop (the authors' Resize + CenterCrop)."""
    w, h = img.size
    s = size / min(w, h)
    img = img.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BILINEAR)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def load_store(paths, size: int, skips: SkipLog | None = None, max_bytes: int | None = None) -> ImageStore:
    """The images of a split as square crops (an unreadable image becomes grey, counted in `skips`): decoded
    once and held in memory, the decoded split kept in the cache for the next run (images.decode_all); or, when
    they would take more than `max_bytes` (default `images.IN_MEMORY_MAX_BYTES`; Fashion200k at 224 px: about
    30 GB), decoded from their files on each request."""
    paths = list(paths)

    def decode(i, log):
        img = load_image(paths[i], log)
        return to_uint8_tensor(square(img, size)) if img is not None else torch.full((3, size, size), 128, dtype=torch.uint8)

    if not fits_in_memory(len(paths), size, max_bytes):
        return ImageStore(size, None, paths, decode=lambda i: decode(i, skips))
    pixels, _ = decode_all(paths, decode, size, skips, {"reader": "maaf.load_store", "size": size},
                           cache_root() / "decoded")
    return ImageStore(size, pixels, paths)


def normalize_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> ImageNet-normalised float."""
    return (pixels.float() / 255 - IMAGENET_MEAN) / IMAGENET_STD


def augment(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The authors' training augmentation on uint8 images: RandomResizedCrop (scale 0.8-1, ratio 0.75-1.3)
    back to the same size, horizontal flip, additive N(0, 0.01) noise; returns normalised floats."""
    b, _, h, w = pixels.shape
    x = pixels.float() / 255
    out = torch.empty_like(x)
    u = torch.rand(b, 5, generator=generator)
    for i in range(b):
        area = h * w * (0.8 + 0.2 * float(u[i, 0]))
        ratio = float(np.exp(np.log(0.75) + (np.log(1.3) - np.log(0.75)) * float(u[i, 1])))
        cw = min(w, max(1, round((area * ratio) ** 0.5)))
        ch = min(h, max(1, round((area / ratio) ** 0.5)))
        x0, y0 = int(float(u[i, 2]) * (w - cw + 1)), int(float(u[i, 3]) * (h - ch + 1))
        crop = F.interpolate(x[i:i + 1, :, y0:y0 + ch, x0:x0 + cw], size=(h, w), mode="bilinear", align_corners=False)
        out[i] = crop[0].flip(-1) if u[i, 4] < 0.5 else crop[0]
    out = out + 0.01 * torch.randn(out.shape, generator=generator)
    return (out - IMAGENET_MEAN) / IMAGENET_STD


def eval_queries(split: FeedbackSplit) -> list:
    """The queries of a split that are evaluated (those with a target), in file order: the items of every
    per-query score (`experiment.evaluate_per_query`, `experiment.query_references`)."""
    return [q for q in split.queries if q.target_label != ""]


@dataclass
class SplitInputs:
    """One split and how its images reach a model: pixels, or the maps of a frozen backbone (by key)."""

    split: FeedbackSplit
    store: ImageStore
    maps: dict = field(default_factory=dict)  # backbone key -> experiment.FrozenMaps

    def images(self, index: torch.Tensor, generator: torch.Generator | None = None, maps_key: str | None = None):
        if maps_key is not None:
            return self.maps[maps_key].take(index)
        pixels = self.store.get(index)
        return augment(pixels, generator) if generator is not None else normalize_pixels(pixels)


# ------------------------------------------------------------------------------------------------ datasets

DATASETS = ("fashioniq", "css", "fashion200k", "birds_to_words", "spot_the_diff")
REAL_FOLDERS = {"fashioniq": "fashioniq", "css": "css", "fashion200k": "fashion200k",
                "birds_to_words": "birds-to-words", "spot_the_diff": "spot-the-diff"}


@dataclass
class PreparedDataset:
    """One dataset ready for runs: training groups, evaluation splits, vocabulary, provenance."""

    name: str                  # one of DATASETS
    description: str           # what the tables say the data was
    train: list                # SplitInputs (one per Fashion IQ category, else one)
    eval: dict                 # name -> SplitInputs (Fashion IQ: per category)
    vocab: Vocabulary
    fingerprint: str           # of the data folder
    skips: SkipLog


def read_dataset(name: str, root, skips: SkipLog) -> tuple[list, dict]:
    """(training splits, {evaluation name: split}) of one dataset under `root`, with its protocol."""
    if name == "fashioniq":
        return list(tf.read_fashion_iq(root, "train", skips=skips).values()), tf.read_fashion_iq(root, "val", skips=skips)
    if name == "css":
        return [tf.read_css(root, "train", skips)], {"test": tf.read_css(root, "test", skips)}
    if name == "fashion200k":
        return [tf.read_fashion200k(root, "train", skips)], {"test": tf.read_fashion200k(root, "test", skips)}
    if name == "birds_to_words":
        return [tf.read_birds_to_words(root, "train", skips)], {"test": tf.read_birds_to_words(root, "test", skips)}
    if name == "spot_the_diff":
        return [tf.read_spot_the_diff(root, "train", skips)], {"test": tf.read_spot_the_diff(root, "test", skips)}
    raise ValueError(f"unknown dataset {name!r}; expected one of {DATASETS}")


def synthetic_root(name: str, worlds: dict, seed: int, image_size: int):
    """The cached synthetic world of `name` drawn with the notebook's world sizes."""
    if name in ("css", "spot_the_diff"):
        cfg = ScenesWorldConfig(seed=seed, image_size=image_size, train_scenes=worlds["css_scenes"][0],
                                test_scenes=worlds["css_scenes"][1], spot_pairs=tuple(worlds["spot_pairs"]))
        return (css_world if name == "css" else spot_the_diff_world)(cfg)
    cfg = FashionTextConfig(seed=seed, image_size=image_size, fiq_pairs=tuple(worlds["fiq_pairs"]),
                            f200k_products=tuple(worlds["f200k_products"]), f200k_queries=worlds["f200k_queries"],
                            b2w_pairs=tuple(worlds["b2w_pairs"]))
    return {"fashioniq": fashion_iq_world, "fashion200k": fashion200k_world,
            "birds_to_words": birds_to_words_world}[name](cfg)


_DESCRIPTIONS = {"fashioniq": "Fashion IQ", "css": "CSS", "fashion200k": "Fashion200k",
                 "birds_to_words": "Birds-to-Words", "spot_the_diff": "Spot-the-Diff"}


def prepare_dataset(name: str, image_size: int, data_root=None, worlds: dict | None = None, seed: int = 0,
                    ) -> PreparedDataset:
    """Read one dataset (real under data_root/<folder>, else its synthetic world) and load its images."""
    skips = SkipLog()
    if data_root:
        root = Path(data_root) / REAL_FOLDERS[name]
        description = f"{_DESCRIPTIONS[name]} (real, {root})"
    else:
        root = synthetic_root(name, worlds, seed, image_size)
        world = "scenes" if name in ("css", "spot_the_diff") else "products"
        description = f"synthetic {world} world in {_DESCRIPTIONS[name]} format"
    train, evals = read_dataset(name, root, skips)
    texts = [t for s in train for t in s.texts()]
    return PreparedDataset(
        name, description,
        [SplitInputs(s, load_store(s.images, image_size, skips)) for s in train],
        {k: SplitInputs(s, load_store(s.images, image_size, skips)) for k, s in evals.items()},
        Vocabulary.build(texts), f"{fingerprint_dir(root)}-{kept_digest(root, train, evals)}", skips)


def kept_digest(root, train: list, evals: dict) -> str:
    """Hash of the images and queries each split kept after skipped files (paths relative to the dataset
    root): part of the data fingerprint, so that a result computed from one set of images is never reused
    for another."""
    h = hashlib.sha256()
    for name, split in [*((f"train{i}", s) for i, s in enumerate(train)), *sorted(evals.items())]:
        h.update(f"{name}:{len(split.images)}:{len(split.queries)}\n".encode())
        for path in split.images:
            h.update(os.path.relpath(path, root).encode() + b"\n")
    return h.hexdigest()[:8]


def _prepare_one(args) -> PreparedDataset:
    return prepare_dataset(*args)


def prepare_datasets(names, image_size: int, data_root=None, worlds: dict | None = None, seed: int = 0,
                     workers: int = 1, progress: bool = True) -> dict:
    """{name: PreparedDataset}, drawing the worlds and loading the images of `workers` datasets at a time
    (separate processes: world drawing and image decoding are single-threaded Python); a bar over the
    datasets, shown by this process as they come back."""
    jobs = [(n, image_size, data_root, worlds, seed) for n in names]
    if workers > 1 and len(jobs) > 1:
        return dict(zip(names, run_forked(_prepare_one, jobs, workers, desc="preparing datasets", unit="dataset",
                                          progress=progress)))
    return {n: _prepare_one(j) for n, j in bar(zip(names, jobs), total=len(jobs), desc="preparing datasets",
                                               unit="dataset", disable=not progress)}


class MAAFData(Mapping):
    """The notebook's datasets: {name: PreparedDataset}, in the order of the parameters' `datasets` (each
    dataset has its own description, fingerprint and skips)."""

    def __init__(self, datasets: dict):
        self.datasets = dict(datasets)

    def __getitem__(self, name: str) -> PreparedDataset:
        return self.datasets[name]

    def __iter__(self):
        return iter(self.datasets)

    def __len__(self) -> int:
        return len(self.datasets)


def load_data(p, progress: bool = True) -> MAAFData:
    """Every dataset of the notebook's parameters `p` (real under p.data_root, else synthetic worlds)."""
    return MAAFData(prepare_datasets(p.datasets, p.image_size, p.data_root, p.worlds, p.seed, workers=p.workers,
                                     progress=progress))


def data_summary(data: MAAFData) -> pd.DataFrame:
    """One row per dataset: its data, training and evaluation queries, gallery images, vocabulary, skips."""
    return pd.DataFrame([{"dataset": d.name, "data": d.description,
                          "training queries": sum(len(g.split.queries) for g in d.train),
                          "evaluation queries": sum(len(g.split.queries) for g in d.eval.values()),
                          "gallery images": sum(len(g.split.images) for g in d.eval.values()),
                          "vocabulary": len(d.vocab), "skipped": d.skips.count} for d in data.values()])
