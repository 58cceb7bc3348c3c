"""Training and evaluation of composed-retrieval models on text-feedback datasets (the MAAF notebook's engine).

Why here and not in the notebook: batching, evaluation protocol and caching are the same for MAAF and every
baseline on every dataset, and they are worth testing.

- `ImageTable`: every image of a split as uint8 [N, 3, S, S] (resized, centre-cropped), loaded once.
- `FrozenMaps`: when the backbone is frozen, its stage maps of every image are computed once per process
  (only when some run still has to train); models then take maps instead of pixels, so a run trains only
  what it can change. This is how the default preset fits many runs in minutes; the paper preset trains
  the backbone at 0.1x lr on augmented pixels, as the authors do.
- `batch_fn`: (reference, text, target) triplets drawn with a per-step seed; Fashion IQ batches come from
  one category at a time (the authors' loader); FIQ captions joined in random order.
- `step_fn`: logits = s^2 cos(query_i, target_j); in-batch softmax (or soft triplet) loss.
- `evaluate`: queries composed, gallery embedded through the catalog path, the reference dropped from its
  own ranking, Recall@K against the hit labels of the split (percent).
- `run_experiment`: build, train (visualsearch.train), evaluate, cached by ResultCache under the model and
  training configuration, the data fingerprint and the vocabulary; `run_all` trains the uncached runs of a
  plan in parallel processes; `plan_runs` is the notebook's plan (MAAF, baselines, ablations per dataset).
- `pretrain_trunk`: the default preset's stand-in for ImageNet weights (product attribute classification).
"""
from __future__ import annotations

import dataclasses
import hashlib
import multiprocessing as mp
import os
import re
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

# Every library module a run may use is imported here, not lazily: the result cache keys on the sources of
# the loaded modules, so the set must be the same when a run is looked up and when it is stored.
from . import atomic
from .cache import ResultCache, file_digest
from .data import text_feedback as tf
from .data.errors import SkipLog
from .data.fashion_text import FashionTextConfig, birds_to_words_world, fashion200k_world, fashion_iq_world
from .data.images import load_image
from .data.products import CATEGORIES, render_photo, sample_product, sample_view
from .data.scenes import ScenesWorldConfig, css_world, spot_the_diff_world
from .data.text_feedback import FeedbackSplit
from .data.worlds import cache_root, fingerprint_dir
from .evaluate import recall_at_k, retrieve
from .losses import BatchSoftmaxLoss, SoftTripletLoss
from .models.blocks import ResNetTrunk
from .models.fusion import build_model
from .models.maaf import MAAFConfig
from .models.text import Vocabulary
from .progress import bar, note, stage
from .seeding import step_seed
from .train import CheckpointMismatch, TrainConfig, identity_of, train

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


# ------------------------------------------------------------------------------------------------- images

def _square(img: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to `size`, centre crop (the authors' Resize + CenterCrop)."""
    w, h = img.size
    s = size / min(w, h)
    img = img.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BILINEAR)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


@dataclass
class ImageTable:
    """All images of a split as one uint8 tensor [N, 3, size, size] (an unreadable image becomes grey,
    counted in `skips`; readers already dropped the ones missing at read time)."""

    pixels: torch.Tensor

    @classmethod
    def load(cls, paths, size: int, skips: SkipLog | None = None) -> "ImageTable":
        out = torch.full((len(paths), 3, size, size), 128, dtype=torch.uint8)
        for i, p in enumerate(paths):
            img = load_image(p, skips if skips is not None else SkipLog())
            if img is not None:
                out[i] = torch.from_numpy(np.asarray(_square(img, size)).copy()).permute(2, 0, 1)
        return cls(out)

    def __len__(self):
        return self.pixels.shape[0]


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


@dataclass
class FrozenMaps:
    """Stage maps of a frozen backbone for every image of a table (float16 to halve memory)."""

    maps: dict

    @classmethod
    def compute(cls, trunk: ResNetTrunk, table: ImageTable, stages, batch_size: int = 64,
                device: str = "cpu") -> "FrozenMaps":
        trunk = trunk.to(device).eval()
        parts = {s: [] for s in stages}
        with torch.no_grad():
            for i in range(0, len(table), batch_size):
                out = trunk(normalize_pixels(table.pixels[i:i + batch_size]).to(device))
                for s in stages:
                    parts[s].append(out[s].half().cpu())
        return cls({s: torch.cat(v) for s, v in parts.items()})

    def take(self, index: torch.Tensor) -> dict:
        return {s: m[index].float() for s, m in self.maps.items()}


def backbone_key(cfg: MAAFConfig, seed: int) -> str:
    """Names the frozen backbone a configuration uses: its weights file, or its random init (seeded)."""
    return f"{cfg.backbone}:{cfg.backbone_weights}" if cfg.backbone_weights else f"{cfg.backbone}:random:{seed}"


@dataclass
class SplitInputs:
    """One split and how its images reach a model: pixels, or the maps of a frozen backbone (by key)."""

    split: FeedbackSplit
    table: ImageTable
    maps: dict = field(default_factory=dict)  # backbone_key -> FrozenMaps

    def images(self, index: torch.Tensor, generator: torch.Generator | None = None, maps_key: str | None = None):
        if maps_key is not None:
            return self.maps[maps_key].take(index)
        pixels = self.table.pixels[index]
        return augment(pixels, generator) if generator is not None else normalize_pixels(pixels)


# ------------------------------------------------------------------------------------------------ training

def make_batch_fn(groups: list[SplitInputs], batch_size: int, seed: int, augment_images: bool = False,
                  maps_key: str | None = None):
    """batch_fn(step) -> {"source", "texts", "target"}: a pure function of the step. Each batch comes from
    one group (a Fashion IQ category), drawn uniformly as the authors do; queries drawn without replacement
    when the group has enough."""
    groups = [g for g in groups if g.split.queries]
    if not groups:
        raise ValueError("no training queries: every training split is empty")

    def batch_fn(step: int) -> dict:
        rng = np.random.default_rng(step_seed(seed, step))
        g = groups[int(rng.integers(len(groups)))]
        n = len(g.split.queries)
        picks = rng.choice(n, size=batch_size, replace=n < batch_size)
        queries = [g.split.queries[int(i)] for i in picks]
        gen = torch.Generator().manual_seed(step_seed(seed, step, stream=2)) if augment_images else None
        return {"source": g.images(torch.tensor([q.source for q in queries]), gen, maps_key),
                "texts": [g.split.query_text(q, rng) for q in queries],
                "target": g.images(torch.tensor([q.target for q in queries]), gen, maps_key)}

    return batch_fn


def make_step_fn(loss: str = "softmax"):
    """step_fn(model, batch) -> (loss, {"batch_acc"}); `loss` is softmax (in-batch classification) or
    soft_triplet."""
    criterion = {"softmax": BatchSoftmaxLoss(), "soft_triplet": SoftTripletLoss()}[loss]

    def step_fn(model, batch):
        logits = model(batch["source"], batch["texts"], batch["target"])
        acc = (logits.argmax(1) == torch.arange(len(logits), device=logits.device)).float().mean()
        return criterion(logits), {"batch_acc": float(acc)}

    return step_fn


# ---------------------------------------------------------------------------------------------- evaluation

@dataclass
class Retrieval:
    """What an evaluation computed: recall (percent) and the top-k gallery indices per query."""

    recall: dict
    topk: torch.Tensor


def evaluate(model, group: SplitInputs, ks=(1, 5, 10, 50), batch_size: int = 128, device: str = "cpu",
             maps_key: str | None = None) -> Retrieval:
    """Recall@K of `model` on a split: the split's protocol (hit labels, reference excluded)."""
    split = group.split
    model = model.to(device).eval()
    queries = [q for q in split.queries if q.target_label != ""]
    if not queries:
        raise ValueError(f"{split.dataset} {split.split}: no queries with targets to evaluate")

    def to(x):
        return {k: v.to(device) for k, v in x.items()} if isinstance(x, dict) else x.to(device)

    with torch.no_grad():
        gallery = torch.cat([model.embed_catalog(to(group.images(torch.arange(i, min(i + batch_size, len(split.images))),
                                                                  maps_key=maps_key)))
                             .float().cpu() for i in range(0, len(split.images), batch_size)])
        composed = []
        for i in range(0, len(queries), batch_size):
            chunk = queries[i:i + batch_size]
            src = to(group.images(torch.tensor([q.source for q in chunk]), maps_key=maps_key))
            composed.append(model.compose(src, [split.query_text(q) for q in chunk]).float().cpu())
    composed = F.normalize(torch.cat(composed), dim=-1)
    gallery = F.normalize(gallery, dim=-1)
    top = retrieve(composed, gallery, k=max(ks), exclude=torch.tensor([q.source for q in queries]))
    index = {}
    gallery_labels = torch.tensor([index.setdefault(l, len(index)) for l in split.labels])
    query_labels = torch.tensor([index.setdefault(q.target_label, len(index)) for q in queries])
    recall = recall_at_k(top.indices, query_labels, gallery_labels, ks)
    return Retrieval({f"R@{k}": 100 * v for k, v in recall.items()}, top.indices)


# ------------------------------------------------------------------------------------------- experiments

@dataclass
class TrainSpec:
    """How one model is trained (the fields that change results; device and progress are runtime)."""

    steps: int = 1000                # optimizer steps
    batch_size: int = 32             # queries per batch (the paper: 32)
    lr: float = 0.01                 # SGD learning rate (the paper: 0.01)
    image_lr_scale: float = 0.1      # backbone learning rate factor (the paper: 0.1)
    weight_decay: float = 1e-6       # the paper's
    lr_milestones: tuple = ()        # steps where lr is multiplied by 0.1 (the paper: every 50k of 150k)
    loss: str = "softmax"            # softmax | soft_triplet
    augment: bool = False            # the authors' crop/flip/noise augmentation (pixels only)
    seed: int = 0                    # model init, batches and dropout

    def __post_init__(self):
        self.lr_milestones = tuple(self.lr_milestones)


@dataclass
class RunResult:
    """A trained model's evaluation on each evaluation split, its training log, and (kept runs) weights."""

    recall: dict                      # eval name -> {"R@k": percent}
    log: object                       # pandas DataFrame: step, loss, lr, batch_acc
    state: dict | None = None         # state dict without frozen parts (see trainable_state)
    wall_s: float = 0.0               # training time (wall clock)
    extra: dict = field(default_factory=dict)  # cpu_s: CPU seconds of training + evaluation (load-independent)


def trainable_state(model) -> dict:
    """State dict without the parts that never train (a frozen backbone, a frozen pretrained text model):
    they are rebuilt identically from their source, so caching them would only waste space."""
    frozen = ["trunk."] if getattr(model.cfg, "backbone_frozen", False) else []
    frozen.append("text.transformer.")
    return {k: v for k, v in model.state_dict().items() if not any(k.startswith(f) for f in frozen)}


def seeded_trunk(cfg: MAAFConfig, seed: int) -> ResNetTrunk:
    """The frozen backbone that `build_seeded(cfg, ..., seed)` builds: every model builds its trunk first,
    right after the seed, so a random init is the same here as inside the model."""
    torch.manual_seed(seed)
    return ResNetTrunk(cfg.backbone, cfg.backbone_weights, frozen=True)


def build_seeded(cfg: MAAFConfig, vocab: Vocabulary, seed: int):
    """The model of `cfg`, initialised from `seed` (so a random frozen backbone is the same every time)."""
    torch.manual_seed(seed)
    return build_model(cfg, vocab)


def restore(cfg: MAAFConfig, vocab: Vocabulary, seed: int, state: dict):
    model = build_seeded(cfg, vocab, seed)
    missing, unexpected = model.load_state_dict(state, strict=False)
    expected_missing = set(model.state_dict()) - set(trainable_state(model))
    if unexpected or set(missing) - expected_missing:
        raise ValueError(f"state does not fit the model: unexpected {unexpected[:3]}, "
                         f"missing {sorted(set(missing) - expected_missing)[:3]}")
    return model.eval()


def cache_name(run_name: str) -> str:
    """A folder-safe cache name for a run ("ablation: no text" -> "maaf-ablation-no-text")."""
    return "maaf-" + re.sub(r"[^a-z0-9]+", "-", run_name.lower()).strip("-")


def vocab_digest(vocab: Vocabulary) -> str:
    return hashlib.sha256("\n".join(vocab.words).encode()).hexdigest()[:16]


def run_experiment(name: str, cfg: MAAFConfig, spec: TrainSpec, train_groups: list[SplitInputs],
                   eval_groups: dict, vocab: Vocabulary, data_key: str, cache=None, keep_model: bool = False,
                   device: str = "cpu", progress: bool = False, ks=(1, 5, 10, 50), eval_every: int = 0,
                   curve_group: str | None = None, checkpoint_every: int = 0) -> RunResult:
    """Train `cfg` with `spec` on `train_groups`, evaluate on `eval_groups` ({name: SplitInputs}); cached
    under (name, cfg, spec, data_key, vocabulary, device) when `cache` (a ResultCache) is given.

    `eval_every` > 0 with `curve_group` records Recall@K on that evaluation split during training (the
    training curves). With a cache, the training checkpoints into `cache.run_dir(...)` of its entry every
    `checkpoint_every` steps (0: at its end) and a killed run resumes from there."""
    maps_key = backbone_key(cfg, spec.seed) if cfg.backbone_frozen else None
    if maps_key is not None and not all(maps_key in g.maps for g in [*train_groups, *eval_groups.values()]):
        maps_key = None  # no precomputed maps: the frozen backbone runs on pixels

    key = run_key(cfg, spec, data_key, vocab, eval_groups, ks, keep_model, eval_every, curve_group, device)
    run_dir = cache.run_dir(cache_name(name), key) if cache is not None else None

    def compute() -> RunResult:
        cpu0 = time.process_time()
        model = build_seeded(cfg, vocab, spec.seed)
        tc = TrainConfig(steps=spec.steps, lr=spec.lr, optimizer="sgd", momentum=0.9, nesterov=False,
                         weight_decay=spec.weight_decay, lr_milestones=spec.lr_milestones, lr_gamma=0.1,
                         seed=spec.seed, progress=progress, device=device, log_every=max(1, spec.steps // 20),
                         checkpoint_every=checkpoint_every, identity=identity_of(cache_name(name), key),
                         desc=f"training {name}")
        eval_fn = None
        if eval_every and curve_group:
            def eval_fn(m, step):
                return evaluate(m, eval_groups[curve_group], ks, device=device, maps_key=maps_key).recall
        batch_fn = make_batch_fn(train_groups, spec.batch_size, spec.seed, spec.augment, maps_key)
        result = train(model, make_step_fn(spec.loss), batch_fn, tc, run_dir=run_dir,
                       param_groups=model.param_groups(spec.image_lr_scale), eval_fn=eval_fn, eval_every=eval_every)
        model = result.model
        recall = {k: evaluate(model, g, ks, device=device, maps_key=maps_key).recall for k, g in eval_groups.items()}
        state = {k: v.cpu() for k, v in trainable_state(model).items()} if keep_model else None
        return RunResult(recall, result.log, state, result.wall_s, {"cpu_s": time.process_time() - cpu0})

    if cache is None:
        return compute()
    return cache.get_or_compute(cache_name(name), key, compute)


def run_key(cfg, spec, data_key, vocab, eval_groups, ks, keep_model, eval_every, curve_group, device="cpu") -> dict:
    """What a run's cached result is stored under (with its name and the library's code version): the model
    and training configuration (the image size and backbone weights are fields of cfg), the data fingerprint
    (folder and the images kept after skips), the vocabulary, the protocol and the device."""
    return {"cfg": asdict(cfg), "spec": asdict(spec), "data": data_key, "vocab": vocab_digest(vocab),
            "eval": sorted(eval_groups), "ks": list(ks), "keep": keep_model, "curve": [eval_every, curve_group],
            "device": str(device), **weights_key(cfg.backbone_weights)}


def weights_key(path) -> dict:
    """The backbone weights file's content hash ({} for a random init): a key names the weights, not only
    their file name."""
    if not path:
        return {}
    return {"weights_sha256": file_digest(path)}


def with_changes(cfg: MAAFConfig, **changes) -> MAAFConfig:
    return dataclasses.replace(cfg, **changes)


# ------------------------------------------------------------------------------ backbone "pretraining"

ATTRIBUTE_HEADS = ("category", "colour", "pattern", "sleeve", "length", "neckline")


def attribute_photos(n: int, image_size: int, seed: int):
    """`n` product photos (shop and street views) of every products category with their coarse attributes:
    the data of the stand-in for ImageNet pretraining (a products world of its own seed, not the
    retrieval worlds)."""
    rng = np.random.default_rng([seed, 7])
    cats = list(CATEGORIES)
    pixels = torch.empty(n, 3, image_size, image_size, dtype=torch.uint8)
    labels = {h: [] for h in ATTRIBUTE_HEADS}
    for i in range(n):
        p = sample_product(rng, cats[int(rng.integers(len(cats)))])
        view = sample_view(rng, "shop" if rng.random() < 0.5 else "street")
        pixels[i] = torch.from_numpy(np.asarray(render_photo(p, view, image_size)[0]).copy()).permute(2, 0, 1)
        for h in ATTRIBUTE_HEADS:
            labels[h].append(p.category if h == "category" else getattr(p, h))
    classes = {h: sorted(set(v)) for h, v in labels.items()}
    targets = {h: torch.tensor([classes[h].index(x) for x in v]) for h, v in labels.items()}
    return pixels, targets, classes


def pretrain_trunk(arch: str = "resnet18", image_size: int = 64, steps: int = 300, n_photos: int = 4000,
                   batch_size: int = 64, lr: float = 0.05, seed: int = 0, device: str = "cpu",
                   progress: bool = False, run_dir=None, checkpoint_every: int = 0, identity: str = "") -> dict:
    """Train a ResNet to classify product attributes from photos and return its torchvision-style state
    dict (what `MAAFConfig.backbone_weights` loads): the embedded default's stand-in for ImageNet weights,
    so that, as in the paper, the backbone arrives with useful features. Returns also the final training
    accuracies under the key "__accuracy__" (popped before loading).

    Its own loop (a one-cycle schedule, which train.train does not have), resumable the same way: with
    `run_dir`, the trunk, heads, optimizer, schedule and running accuracies are saved every
    `checkpoint_every` steps (0: only when the loop stops on an error) and a run finding a checkpoint of the
    same training there (`identity` and every argument) resumes from it with the same result; each step's
    batch and augmentation are drawn from a generator seeded by the step, nothing else is random."""
    fingerprint = identity_of(identity, arch, image_size, steps, n_photos, batch_size, lr, seed)
    torch.manual_seed(seed)
    with stage(f"drawing {n_photos} product photos for backbone pretraining", disable=not progress):
        pixels, targets, classes = attribute_photos(n_photos, image_size, seed)
    trunk = ResNetTrunk(arch).to(device)
    heads = torch.nn.ModuleDict({h: torch.nn.Linear(trunk.channels["4"], len(c)) for h, c in classes.items()}).to(device)
    params = [*trunk.parameters(), *heads.parameters()]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.2)
    acc = {}
    ckpt_path = Path(run_dir) / "checkpoint.pt" if run_dir else None
    start = 0
    if ckpt_path is not None and ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        if ckpt.get("config") != fingerprint:
            raise CheckpointMismatch(f"{ckpt_path} was written by another backbone pretraining (fingerprint "
                                     f"{ckpt.get('config')}, this run {fingerprint}); use another run_dir or delete it")
        trunk.load_state_dict(ckpt["trunk"])
        heads.load_state_dict(ckpt["heads"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["schedule"])
        start, acc = ckpt["step"], ckpt["accuracy"]
        if torch.device(device).type == "cpu" and ckpt.get("threads"):
            torch.set_num_threads(ckpt["threads"])  # CPU results depend on it (see train.train)
        note(f"backbone pretraining: resumed from the checkpoint at step {start} of {steps} ({ckpt_path})",
             disable=not progress)

    def save(done: int) -> None:
        if ckpt_path is not None:
            atomic.torch_save({"trunk": trunk.state_dict(), "heads": heads.state_dict(), "optimizer": opt.state_dict(),
                               "schedule": sched.state_dict(), "step": done, "accuracy": dict(acc),
                               "config": fingerprint, "threads": torch.get_num_threads()}, ckpt_path)

    # as in train.train: a step that fails half-way has moved the BatchNorm statistics in its forward pass;
    # they are put back before the completed steps are saved
    buffers = [b for b in trunk.buffers()] if ckpt_path is not None else []
    snapshot = [torch.empty_like(b) for b in buffers]
    done, in_step = start, False
    try:
        for step in bar(range(start, steps), total=steps, initial=start,
                        desc="pretraining the backbone on product attributes", unit="step", disable=not progress):
            if buffers:
                torch._foreach_copy_(snapshot, buffers)
            in_step = True
            acc = _pretrain_step(step, seed, pixels, targets, trunk, heads, opt, sched, dict(acc), batch_size, device)
            done, in_step = step + 1, False
            if checkpoint_every and done % checkpoint_every == 0 and done < steps:
                save(done)
    except BaseException:
        if in_step and buffers:
            with torch.no_grad():
                torch._foreach_copy_(buffers, snapshot)
        save(done)  # every completed step is kept; the failing one is not
        raise
    state = {k: v.cpu() for k, v in trunk.state_dict().items()}
    names = {"stem.0": "conv1", "stem.1": "bn1", "stem.4": "layer1"}
    out = {}
    for k, v in state.items():
        for a, b in names.items():
            if k.startswith(a + "."):
                k = b + k[len(a):]
        out[k] = v
    out["__accuracy__"] = acc
    return out


def _pretrain_step(step, seed, pixels, targets, trunk, heads, opt, sched, acc, batch_size, device) -> dict:
    """One step of backbone pretraining (a batch drawn and augmented by a generator seeded by the step);
    returns `acc`, the running accuracies, updated."""
    gen = torch.Generator().manual_seed(step_seed(seed, step))
    idx = torch.randint(len(pixels), (batch_size,), generator=gen)
    x = augment(pixels[idx], gen).to(device)
    feats = trunk(x)["4"].mean((2, 3))
    loss = 0.0
    for h, head in heads.items():
        logits = head(feats)
        y = targets[h][idx].to(device)
        loss = loss + F.cross_entropy(logits, y)
        acc[h] = 0.9 * acc.get(h, 0.0) + 0.1 * float((logits.argmax(1) == y).float().mean())
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()
    return acc


# ------------------------------------------------------------------------------------- datasets to runs

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
        [SplitInputs(s, ImageTable.load(s.images, image_size, skips)) for s in train],
        {k: SplitInputs(s, ImageTable.load(s.images, image_size, skips)) for k, s in evals.items()},
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
    bar_args = dict(total=len(jobs), desc="preparing datasets", unit="dataset", disable=not progress)
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as pool:
            return dict(bar(zip(names, pool.map(_prepare_one, jobs)), **bar_args))
    return {n: _prepare_one(j) for n, j in bar(zip(names, jobs), **bar_args)}


# ------------------------------------------------------------------------------------- many runs at once

@dataclass
class Run:
    """One training run of the notebook: a named model configuration on a prepared dataset."""

    name: str                  # row label, e.g. "MAAF", "TIRG", "no text in pooling"
    dataset: str               # PreparedDataset.name
    cfg: MAAFConfig
    spec: TrainSpec
    keep_model: bool = False   # keep the weights (attention maps, retrieval examples)
    eval_every: int = 0        # record a validation curve every N steps
    curve_group: str | None = None
    checkpoint_every: int = 0  # resumable checkpoint every N steps (0: at the end); not part of the result


_POOL_DATA: dict = {}


def run_cost(run: Run) -> float:
    """Rough relative cost of a run (steps x per-step weight), to start the longest runs first."""
    weight = {"maaf": 4.0, "cross_attention": 4.0, "tirg_lastconv": 5.0}.get(run.cfg.fusion, 1.0)
    return run.spec.steps * weight * (2.0 if run.cfg.text_encoder == "minilm" else 1.0)


def _maps_one(job) -> list:
    """Maps of one frozen backbone for every split of one dataset (training splits first)."""
    name, key, cfg, seed, stages, device = job
    torch.set_num_threads(_POOL_DATA["__threads__"])
    trunk = seeded_trunk(cfg, seed)
    d = _POOL_DATA[name]
    return [FrozenMaps.compute(trunk, g.table, stages, device=device) for g in [*d.train, *d.eval.values()]]


def _run_one(run: Run, ks, device, cache_root, progress: bool = False) -> RunResult:
    d = _POOL_DATA[run.dataset]
    torch.set_num_threads(_POOL_DATA["__threads__"])
    return run_experiment(run.name, run.cfg, run.spec, d.train, d.eval, d.vocab, d.fingerprint,
                          ResultCache(cache_root), run.keep_model, device, progress, ks, run.eval_every, run.curve_group,
                          run.checkpoint_every)


def run_key_of(run: Run, data: PreparedDataset, ks, device: str = "cpu") -> dict:
    return run_key(run.cfg, run.spec, data.fingerprint, data.vocab, data.eval, ks, run.keep_model, run.eval_every,
                   run.curve_group, device)


def run_key_path(cache, run: Run, data: PreparedDataset, ks, device: str = "cpu") -> Path:
    return cache.path(cache_name(run.name), run_key_of(run, data, ks, device))


def run_all(runs: list[Run], datasets: dict, cache, ks=(1, 5, 10, 50), workers: int = 1, threads: int = 1,
            device: str = "cpu", progress: bool = True) -> dict:
    """Results of every run ({(dataset, name): RunResult}), from the cache where present; the others are
    trained, `workers` at a time in separate processes (each with `threads` torch threads). Frozen-backbone
    maps are computed once, only for datasets that have something left to train."""
    todo = [r for r in runs if not cache.has(cache_name(r.name), run_key_of(r, datasets[r.dataset], ks, device))]
    needed: dict = {}  # (dataset, backbone key) -> (a run using it, stages it needs)
    for r in todo:
        if r.cfg.backbone_frozen:
            run, stages = needed.get((r.dataset, backbone_key(r.cfg, r.spec.seed)), (r, {"4"}))
            needed[(r.dataset, backbone_key(r.cfg, r.spec.seed))] = (run, stages | set(r.cfg.token_layers))
    _POOL_DATA.clear()
    _POOL_DATA.update(datasets)
    _POOL_DATA["__threads__"] = threads
    jobs = [(name, key, r.cfg, r.spec.seed, sorted(stages), device) for (name, key), (r, stages) in needed.items()]
    bar_args = dict(total=len(jobs), desc="frozen backbone maps", unit="dataset", disable=not progress or not jobs)
    if len(jobs) > 1 and workers > 1 and device == "cpu":  # each frozen backbone's maps, computed once
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as pool:
            computed = list(bar(pool.map(_maps_one, jobs), **bar_args))
    else:
        computed = [_maps_one(j) for j in bar(jobs, **bar_args)]
    for (name, key, *_), maps in zip(jobs, computed):
        for g, m in zip([*datasets[name].train, *datasets[name].eval.values()], maps):
            g.maps[key] = m
    trained = {}

    def finished(r: Run, result: RunResult) -> None:  # in this process: workers show nothing
        trained[(r.dataset, r.name)] = result
        note(f"{r.name} on {r.dataset}: {r.spec.steps} steps trained in {result.wall_s:.1f} s", disable=not progress)

    if todo and workers > 1 and device == "cpu":
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as pool:
            longest_first = sorted(todo, key=lambda r: -run_cost(r))
            futures = {pool.submit(_run_one, r, ks, device, cache.root): r for r in longest_first}
            for fut in bar(as_completed(futures), total=len(futures), desc=f"training runs ({workers} processes)",
                           unit="run", disable=not progress):
                finished(futures[fut], fut.result())
    else:
        for r in bar(todo, desc="training runs", unit="run", disable=not progress or not todo):
            finished(r, _run_one(r, ks, device, cache.root, progress))
    cache.misses += [cache_name(r.name) for r in todo]
    results = {}
    for r in runs:  # in plan order; the ones not trained now come from the cache
        d = datasets[r.dataset]
        results[(r.dataset, r.name)] = trained.get((r.dataset, r.name)) or run_experiment(
            r.name, r.cfg, r.spec, d.train, d.eval, d.vocab, d.fingerprint, cache, r.keep_model, device, False, ks,
            r.eval_every, r.curve_group, r.checkpoint_every)
    return results


# --------------------------------------------------------------------------------- the notebook's plan

MAAF_FIELDS = {f.name for f in dataclasses.fields(MAAFConfig)}


def backbone_weights_file(p, cache, progress: bool = False) -> str | None:
    """The backbone weights of the notebook's parameters: "none" (random init), "synthetic" (pretrained
    here on product attributes, cached, written once as a state-dict file), or a local file path."""
    if p.backbone_weights == "none":
        return None
    if p.backbone_weights != "synthetic":
        path = Path(p.backbone_weights)
        if not path.is_absolute() and p.data_root:
            path = Path(p.data_root) / path  # relative to the data root, as every other input of a real run
        if not path.is_file():
            raise FileNotFoundError(f"backbone_weights {p.backbone_weights!r}: no such file {path} (give a local "
                                    "torchvision state dict, relative to data_root or absolute, 'synthetic' or "
                                    "'none'; nothing is downloaded)")
        return str(path)
    pre = dict(p.pretrain)
    key = {"arch": p.backbone, "image_size": p.image_size, "seed": p.seed, **pre, "device": str(p.device)}
    # `threads` torch threads, as every process here: more threads than free cores (another notebook running)
    # slows OpenMP down several times over, so this step does not try to take both cores.
    state = cache.get_or_compute("maaf-backbone-pretraining", key, lambda: pretrain_trunk(
        p.backbone, p.image_size, pre["steps"], pre["photos"], pre["batch_size"], pre["lr"], p.seed, p.device,
        progress, run_dir=cache.run_dir("maaf-backbone-pretraining", key), checkpoint_every=p.checkpoint_every,
        identity=identity_of("maaf-backbone-pretraining", key)))
    path = cache_root() / "weights" / f"maaf-{p.backbone}-{p.image_size}-{hashlib.sha256(repr(sorted(key.items())).encode()).hexdigest()[:12]}.pth"
    if not path.is_file():
        atomic.torch_save({k: v for k, v in state.items() if k != "__accuracy__"}, path)
    return str(path)


def base_config(p, weights: str | None, dataset: str | None = None) -> MAAFConfig:
    """MAAFConfig of the notebook's model parameters, with a dataset's own overrides (e.g. CSS's)."""
    fields = {k: v for k, v in dict(p.model).items() if k in MAAF_FIELDS}
    own = dict(p.dataset_model.get(dataset) or {}) if dataset else {}
    fields.update({k: v for k, v in own.items() if v is not None})
    return MAAFConfig(**fields, backbone=p.backbone, backbone_weights=weights, backbone_frozen=p.backbone_frozen,
                      image_size=p.image_size)


def train_spec(p, dataset: str, **changes) -> TrainSpec:
    t = dict(p.train)
    changes.setdefault("steps", p.steps[dataset])
    changes.setdefault("seed", p.seed)
    return TrainSpec(batch_size=t["batch_size"], lr=t["lr"], image_lr_scale=t["image_lr_scale"],
                     weight_decay=t["weight_decay"], lr_milestones=tuple(p.lr_milestones[dataset]),
                     augment=dataset in p.augment and not p.backbone_frozen, **changes)


def plan_runs(p, weights: str | None) -> list[Run]:
    """Every run of the notebook: per dataset MAAF (weights kept, for figures) and its baselines (and TIRG
    trained longer, a control); on Fashion IQ also the full model with `reference_seeds` other seeds and one
    run per ablation switch. Ablations change MAAFConfig fields, or `loss` / `backbone_weights` ("none" =
    not pretrained)."""
    runs = []
    for d in p.datasets:
        cfg = base_config(p, weights, d)
        curve = dict(eval_every=p.curves_every, curve_group=("dress" if d == "fashioniq" else "test")) \
            if p.curves_every else {}
        runs.append(Run("MAAF", d, cfg, train_spec(p, d), keep_model=True, **curve))
        for fusion in p.baselines[d]:
            runs.append(Run(fusion, d, dataclasses.replace(cfg, fusion=fusion), train_spec(p, d),
                            **(curve if fusion == "tirg" else {})))
        if p.longer_tirg and d in ("fashioniq", "css"):  # does TIRG only need more steps? (a control)
            runs.append(Run(f"TIRG, {p.longer_tirg}x steps", d, dataclasses.replace(cfg, fusion="tirg"),
                            train_spec(p, d, steps=p.steps[d] * p.longer_tirg)))
    if "fashioniq" in p.datasets:
        cfg = base_config(p, weights, "fashioniq")
        for k in range(1, p.reference_seeds + 1):  # the full model again, other seeds: the noise of one run
            runs.append(Run(f"MAAF, seed {p.seed + k}", "fashioniq", cfg, train_spec(p, "fashioniq", seed=p.seed + k)))
        for row in p.ablations:
            change = dict(row["change"])
            spec_changes = {k: change.pop(k) for k in ("loss",) if k in change}
            if change.get("backbone_weights") == "none":
                change["backbone_weights"] = None
            unknown = set(change) - MAAF_FIELDS
            if unknown:
                raise ValueError(f"ablation {row['name']!r}: unknown switches {sorted(unknown)}; "
                                 f"expected MAAFConfig fields or 'loss'")
            runs.append(Run(f"ablation: {row['name']}", "fashioniq", dataclasses.replace(cfg, **change),
                            train_spec(p, "fashioniq", **spec_changes)))
    for r in runs:
        r.checkpoint_every = p.checkpoint_every
    return runs
