"""The triplet paper's computation: pretraining the trunk, training embeddings, embedding and evaluating, and
the cached runs the notebook calls. The result cache keys on this module's import closure (`result_cache`):
it holds no tables, figures or claims, so restyling those retrains nothing."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ...cache import ResultCache, file_digest
from ...data.augment import AugmentConfig, augment_batch, prepare_batch
from ...evaluate import Retrieval, embed, search
from ...forked import run_forked, shared
from ...losses import (BatchAllTripletLoss, BatchHardTripletLoss, RandomTripletLoss,
                       ReleasedCodeBatchHardTripletLoss, SemiHardTripletLoss, pair_indices)
from ...models.embedding import AttributeClassifier, EmbeddingConfig, EmbeddingNet
from ...progress import note, stage
from ...samplers import PairBatchSampler
from ...seeding import step_seed
from ...train import TrainConfig, autocast, channels_last, identity_of, train
from .data import ProductImages, TripletData, attribute_targets, resolve

# The loss of each method the tables compare (names are the tables' row labels' keys).
LOSSES = {
    "random": RandomTripletLoss,                     # random (offline) triplets
    "batch_hard": BatchHardTripletLoss,              # the paper: hardest negative in the batch
    "batch_hard_released": ReleasedCodeBatchHardTripletLoss,  # the released code's zero-floor masking
    "semi_hard": SemiHardTripletLoss,
    "batch_all": BatchAllTripletLoss,
}


def result_cache(root=None) -> ResultCache:
    """The cache of this paper's runs, keyed on this module's code (and everything it imports)."""
    return ResultCache(root, code=__name__)


# ------------------------------------------------------------------------------------------ pretraining

def pretrain_trunk(images: ProductImages, targets: dict, arch: str = "resnet18", steps: int = 200,
                   batch_size: int = 64, lr: float = 1e-3, seed: int = 0, device: str = "cpu", progress: bool = False,
                   run_dir=None, checkpoint_every: int = 0, identity: str = "", precision: str = "fp32") -> dict:
    """Train an AttributeClassifier (one head per target) on `images` with the paper's augmentation; return
    {"trunk": state dict, "log": DataFrame}. The stand-in for an ImageNet-pretrained trunk. `run_dir`:
    checkpoints every `checkpoint_every` steps (0: at the end), resumed from when present (train.train);
    `identity`: what is trained (TrainConfig.identity); `precision`: of the trunk's forward pass (train.autocast;
    in bf16 the model in channels-last layout)."""
    classes = {k: int(v.max()) + 1 for k, v in targets.items()}
    torch.manual_seed(seed)
    model = AttributeClassifier(arch, classes)
    if precision == "bf16":  # oneDNN's bf16 convolutions are fastest channels-last; in fp32 at one thread, slower
        channels_last(model)
    n = len(images)

    dev = torch.device(device)

    def batch_fn(step):
        g = torch.Generator().manual_seed(step_seed(seed, step, stream=21))
        idx = torch.randint(n, (batch_size,), generator=g)
        gd = torch.Generator(device=dev).manual_seed(step_seed(seed, step, stream=23))
        x = augment_batch(images.store.get(idx).to(dev), images.size, gd)
        return x, {k: v[idx] for k, v in targets.items()}

    def step_fn(m, batch):
        x, t = batch
        with autocast(device, precision):
            return m.loss(x, t)

    cfg = TrainConfig(steps=steps, lr=lr, optimizer="adam", seed=seed, progress=progress, device=device,
                      desc="pretraining the trunk on attributes", checkpoint_every=checkpoint_every, identity=identity)
    res = train(model, step_fn, batch_fn, cfg, run_dir=run_dir)
    return {"trunk": {k: v.cpu() for k, v in res.model.trunk_state_dict().items()}, "log": res.log}


# ------------------------------------------------------------------------------------------ training

@dataclass
class RunConfig:
    """One training run of the embedding."""

    method: str = "batch_hard"            # key of LOSSES
    single_category_prob: float = 0.0     # chance a batch comes from one category (0.8 in the paper, SOP)
    steps: int = 300
    num_pairs: int = 32                   # pairs per batch (the paper: 64 pairs = 128 images)
    margin: float = 0.1                   # in cosine units
    lr: float = 0.01
    lr_milestones: tuple = ()
    trunk_lr_scale: float = 1.0           # trunk learning rate relative to the head's
    arch: str = "resnet18"
    dim: int = 512
    seed: int = 0
    augment: bool = True
    precision: str = "fp32"               # the trunk's forward pass in training: fp32 | bf16 (train.autocast)


def build_model(cfg: RunConfig, trunk_state: dict | None = None, weights_path: str | None = None) -> EmbeddingNet:
    """EmbeddingNet with the trunk from `trunk_state` (notebook pretraining), a local ImageNet file, or
    random (neither given)."""
    torch.manual_seed(cfg.seed)
    if weights_path:
        return EmbeddingNet(EmbeddingConfig(cfg.arch, cfg.dim, "imagenet", weights_path))
    model = EmbeddingNet(EmbeddingConfig(cfg.arch, cfg.dim))
    if trunk_state is not None:
        model.trunk.load_state_dict(trunk_state)
    return model


def train_embedding(images: ProductImages, cfg: RunConfig, trunk_state: dict | None = None, weights_path=None,
                    device: str = "cpu", eval_fn=None, eval_every: int = 0, run_dir=None, progress: bool = False,
                    desc: str = "training", checkpoint_every: int = 0, identity: str = ""):
    """Train the embedding on pair batches with the method's loss; returns train.TrainResult (its log holds
    the loss statistics per step and eval_fn's metrics every eval_every steps); `desc` labels the bar.
    `run_dir`: checkpoints every `checkpoint_every` steps (0: at the end), resumed from when present;
    `identity`: what is trained (TrainConfig.identity: model, loss and data), checked against a checkpoint."""
    model = build_model(cfg, trunk_state, weights_path)
    if cfg.precision == "bf16":  # oneDNN's bf16 convolutions are fastest channels-last; in fp32 at one thread, slower
        channels_last(model)
    sampler = PairBatchSampler(images.labels, cfg.num_pairs, seed=cfg.seed, categories=images.categories,
                               single_category_prob=cfg.single_category_prob)
    loss_fn = LOSSES[cfg.method](cfg.margin)
    anchors, positives = pair_indices(cfg.num_pairs)
    aug = AugmentConfig() if cfg.augment else AugmentConfig(crop_prob=0, flip_prob=0, noise_prob=0,
                                                             resize_methods=("bilinear",))

    dev = torch.device(device)

    def batch_fn(step):  # augmented on the training device (a CUDA generator there), a pure function of step
        b = sampler(step)
        g = torch.Generator(device=dev).manual_seed(step_seed(cfg.seed, step, stream=22))
        x = augment_batch(images.store.get(b.indices).to(dev), images.size, g, aug)
        return x, images.labels[b.indices]

    def step_fn(m, batch):
        x, labels = batch
        with autocast(device, cfg.precision):
            emb = m(x)  # the trunk in cfg.precision; head and normalisation in float32 (models.embedding)
        return loss_fn(emb, labels, anchors.to(emb.device), positives.to(emb.device))

    groups = [{"params": model.trunk.parameters(), "lr_scale": cfg.trunk_lr_scale},
              {"params": model.head.parameters(), "lr_scale": 1.0}]
    tcfg = TrainConfig(steps=cfg.steps, lr=cfg.lr, lr_milestones=tuple(cfg.lr_milestones), seed=cfg.seed,
                       progress=progress, device=device, desc=desc, checkpoint_every=checkpoint_every,
                       identity=identity)
    return train(model, step_fn, batch_fn, tcfg, run_dir=run_dir, param_groups=groups, eval_fn=eval_fn,
                 eval_every=eval_every)


# ----------------------------------------------------------------------------------------- evaluation

def embed_images(model, images: ProductImages, features: bool = False, batch_size: int = 256, device: str = "cpu",
                 index=None, precision: str = "fp32") -> torch.Tensor:
    """Unit embeddings [N, D] of `images` (or of `index` into them), by evaluate.embed; `features=True` gives
    the L2-normalised pooled trunk features (the off-the-shelf baseline). `precision`: the trunk's, as in
    training (train.autocast: a bf16-trained trunk is evaluated as it was trained, and twice as fast); the head,
    normalisation and similarities are float32."""
    model.eval()
    forward = model.features if features else model

    def fn(idx):
        with autocast(device, precision):
            return forward(prepare_batch(images.store.get(idx), images.size).to(device)).float()

    return embed(fn, len(images) if index is None else index, batch_size)


def evaluate_run(d: TripletData, which: str, emb: dict, ks) -> Retrieval:
    """Recall@ks of a run's query and gallery embeddings: In-shop queries against the gallery, or every SOP test
    image against the others (itself excluded)."""
    if which == "inshop":
        return search(emb["query"], emb["gallery"], d.inshop_query.labels, d.inshop_gallery.labels, ks)
    return search(emb["query"], emb["gallery"], d.sop_test.labels, d.sop_test.labels, ks, exclude="self")


def eval_subset(d: TripletData, n_products: int, seed: int = 0) -> torch.Tensor:
    """Indices of the SOP test images of a fixed random subset of n_products products (for cheap
    Recall@1 evaluations during training)."""
    prods = sorted(set(d.sop_test.labels.tolist()))
    rng = np.random.default_rng(seed)
    keep = set(rng.choice(prods, size=min(n_products, len(prods)), replace=False).tolist())
    return torch.tensor([i for i, l in enumerate(d.sop_test.labels.tolist()) if l in keep])


# ---------------------------------------------------------------------------------- cached runs

def trunk_weights(p, d: TripletData, cache) -> dict:
    """The start of every model: {"trunk": state dict or None, "weights_path": local ImageNet file or None,
    "log": pretraining log or None}. `weights: pretrained` trains an attribute classifier on the synthetic
    world's training images (category, colour, pattern), cached."""
    w = p.model.weights
    if w == "none":
        return {"trunk": None, "weights_path": None, "log": None}
    if w == "imagenet":
        path = resolve(p.data_root or ".", p.model.weights_path) if p.model.weights_path else None
        if path is None or not path.is_file():
            raise FileNotFoundError(f"model.weights is 'imagenet' but the weights file {path} does not exist: "
                                    "set model.weights_path to a local torchvision ResNet state dict")
        return {"trunk": None, "weights_path": str(path), "log": None}
    if w != "pretrained":
        raise ValueError(f"model.weights must be none, imagenet or pretrained, got {w!r}")
    if d.attributes is None:
        raise ValueError("model.weights 'pretrained' trains on the synthetic world's attribute labels; with real "
                         "data use 'imagenet' and a local weights file")
    key = {"arch": p.model.arch, "size": p.model.input_size, "pretrain": p.pretrain.to_dict(), "seed": p.seed,
           "precision": p.precision, **data_key(p, d)}

    def compute():
        targets = attribute_targets(d.sop_train.item_ids, d.attributes)
        out = pretrain_trunk(d.sop_train, targets, p.model.arch, p.pretrain.steps, p.pretrain.batch_size,
                             p.pretrain.lr, p.seed, p.device, progress=True,
                             run_dir=cache.run_dir("triplet_pretrain", key), checkpoint_every=p.checkpoint_every,
                             identity=identity_of("triplet_pretrain", key), precision=p.precision)
        return {"trunk": out["trunk"], "weights_path": None, "log": out["log"]}

    return cache.get_or_compute("triplet_pretrain", key, compute)


def data_key(p, d: TripletData) -> dict:
    """The part of every cache key that says which inputs a result was computed from and how they were
    loaded: the data fingerprint (which includes the images kept after skips), every data-loading option,
    the input size, and the device the computation ran on."""
    return {"data": d.fingerprint, "loading": p.data.to_dict(), "size": p.model.input_size, "device": p.device}


def run_config(p, **changes) -> RunConfig:
    t = p.train
    return RunConfig(**{**dict(method="batch_hard", single_category_prob=0.0, steps=t.steps, num_pairs=t.num_pairs,
                                 margin=t.margin, lr=t.lr, lr_milestones=tuple(t.lr_milestones),
                                 trunk_lr_scale=t.trunk_lr_scale, arch=p.model.arch, dim=p.model.dim, seed=p.seed,
                                 augment=t.augment, precision=p.precision), **changes})


def off_the_shelf(p, d: TripletData, start: dict, which: str, cache) -> dict:
    """Pooled trunk features of the starting trunk (no metric learning): query and gallery embeddings."""
    key = {"which": which, "arch": p.model.arch, "start": _start_key(start, p), "precision": p.precision,
           **data_key(p, d)}

    def compute():
        model = build_model(run_config(p), start["trunk"], start["weights_path"]).to(p.device)
        with stage(f"off-the-shelf features: embedding the {which} test images"):
            return _embed_sets(model, d, which, p.device, features=True, precision=p.precision)

    return cache.get_or_compute("triplet_off_the_shelf", key, compute)


def _start_key(start, p):
    path = start.get("weights_path")
    key = {"weights": p.model.weights, "path": path,
           "pretrain": {**p.pretrain.to_dict(), "precision": p.precision} if p.model.weights == "pretrained" else None}
    if path:  # the weights themselves, not only their file name
        key["weights_sha256"] = file_digest(path)
    return key


def _embed_sets(model, d: TripletData, which: str, device, features=False, precision: str = "fp32") -> dict:
    if which == "inshop":
        return {"query": embed_images(model, d.inshop_query, features, device=device, precision=precision),
                "gallery": embed_images(model, d.inshop_gallery, features, device=device, precision=precision)}
    e = embed_images(model, d.sop_test, features, device=device, precision=precision)
    return {"query": e, "gallery": e}


def run_key(p, d: TripletData, which: str, cfg: RunConfig, start: dict, eval_every: int = 0,
            eval_products: int = 0) -> dict:
    """The cache key of one trained run (`trained_run`): everything that changes its log or embeddings."""
    return {"which": which, "run": asdict(cfg), "start": _start_key(start, p), **data_key(p, d),
            "eval_every": eval_every, "eval_products": eval_products}


def trained_run(p, d: TripletData, which: str, cfg: RunConfig, start: dict, cache, eval_every: int = 0,
                eval_products: int = 0, progress: bool = True) -> dict:
    """Train one embedding (cached) on the In-shop or SOP training images; returns its training log (with
    R@1 on a fixed SOP subset every eval_every steps when asked) and the embeddings of queries and gallery.
    `progress`: the training bar (off in worker processes, `prefetch_runs`)."""
    key = run_key(p, d, which, cfg, start, eval_every, eval_products)

    def compute():
        train_set = d.inshop_train if which == "inshop" else d.sop_train
        ev = None
        if eval_every and eval_products:
            sub = eval_subset(d, eval_products, p.seed)
            labels = d.sop_test.labels[sub]

            def ev(model, step):
                e = embed_images(model, d.sop_test, device=p.device, index=sub, precision=cfg.precision)
                return {"R@1": search(e, e, labels, labels, (1,), exclude="self").recall[1]}

        name = (f"{which} {cfg.method}" + (f" p={cfg.single_category_prob:g}" if which == "sop" else "")
                + (f" seed {cfg.seed}" if cfg.seed != p.seed else ""))
        res = train_embedding(train_set, cfg, start["trunk"], start["weights_path"], device=p.device,
                              eval_fn=ev, eval_every=eval_every if ev else 0, progress=progress,
                              desc=f"training {name}", run_dir=cache.run_dir("triplet_run", key),
                              checkpoint_every=p.checkpoint_every, identity=identity_of("triplet_run", key))
        with stage(f"{name}: embedding the test images"):
            return {"log": res.log, "wall_s": res.wall_s,
                    **_embed_sets(res.model, d, which, p.device, precision=cfg.precision)}

    return cache.get_or_compute("triplet_run", key, compute)


# ------------------------------------------------------------------------ the runs behind the claims, per seed

def training_seeds(p) -> list[int]:
    """The training seeds of every run that enters a declared claim: `seed`, `seed`+1, ... (`seeds` of them).
    The first is the seed of every other run, so its runs are the tables' own (the same cache entries)."""
    n = int(p.seeds)
    if n < 1:
        raise ValueError(f"seeds must be at least 1, got {n}")
    return [int(p.seed) + i for i in range(n)]


def claim_run(name: str) -> tuple[str, dict]:
    """Which run a method named by a declared claim is: a key of LOSSES is the In-shop run of that method
    ("inshop", {"method": name}); "off_the_shelf" the In-shop features of the starting trunk ("inshop",
    {"method": "off_the_shelf"}); "p=<x>" the SOP run of `sop.method` with single-category probability x
    ("sop", {"single_category_prob": x})."""
    if name in LOSSES or name == "off_the_shelf":
        return "inshop", {"method": name}
    if name.startswith("p="):
        try:
            return "sop", {"single_category_prob": float(name[2:])}
        except ValueError:
            pass
    raise ValueError(f"a claim names the method {name!r}: no such run (a key of {sorted(LOSSES)}, "
                     "'off_the_shelf' or 'p=<single-category probability>')")


def seeded_retrievals(p, d: TripletData, start: dict, cache, names) -> dict[str, tuple[str, list[Retrieval]]]:
    """The top-1 retrievals behind the declared claims, at every training seed (`training_seeds(p)`):
    {name: (which, [Retrieval per seed])} for each method name (`claim_run`). Every seed fine-tunes the same
    starting trunk; the off-the-shelf features are that trunk's, trained by no seed, so they are the same at every
    seed. The first seed's runs are the tables' (cached, with the SOP Recall@1 curve); the others are trained
    without that curve (it changes no training step)."""
    seeds = training_seeds(p)
    out = {}
    for name in dict.fromkeys(names):
        which, what = claim_run(name)
        if what.get("method") == "off_the_shelf":
            r = evaluate_run(d, which, off_the_shelf(p, d, start, which, cache), (1,))
            out[name] = (which, [r] * len(seeds))
            continue
        runs = []
        for s in seeds:
            if which == "inshop":
                cfg, curve = run_config(p, method=what["method"], seed=s), {}
            else:
                cfg = run_config(p, method=p.sop.method, single_category_prob=what["single_category_prob"], seed=s)
                curve = {"eval_every": p.sop.eval_every, "eval_products": p.sop.eval_products} if s == p.seed else {}
            runs.append(evaluate_run(d, which, trained_run(p, d, which, cfg, start, cache, **curve), (1,)))
        out[name] = (which, runs)
    return out


# ------------------------------------------------------------------------ every training at once, on both cores

def notebook_runs(p, names=()) -> list[tuple[str, RunConfig, dict]]:
    """Every training the notebook asks for, as (which, RunConfig, curve) with curve the keyword arguments of
    `trained_run` (the SOP Recall@1 curve): the In-shop methods (`inshop.methods`), the SOP probabilities
    (`sop.single_category_probs`), and the runs of the declared claims' methods `names` at every training seed
    (as `seeded_retrievals` asks for them). The same calls, so the same cache entries."""
    curve = {"eval_every": p.sop.eval_every, "eval_products": p.sop.eval_products}
    jobs = [("inshop", run_config(p, method=m), {}) for m in p.inshop.methods]
    jobs += [("sop", run_config(p, method=p.sop.method, single_category_prob=float(x)), curve)
             for x in p.sop.single_category_probs]
    for name in dict.fromkeys(names):
        which, what = claim_run(name)
        if what.get("method") == "off_the_shelf":
            continue
        for s in training_seeds(p):
            if which == "inshop":
                jobs.append(("inshop", run_config(p, method=what["method"], seed=s), {}))
            else:
                cfg = run_config(p, method=p.sop.method, single_category_prob=what["single_category_prob"], seed=s)
                jobs.append(("sop", cfg, curve if s == p.seed else {}))
    seen, out = set(), []
    for which, cfg, kw in jobs:
        tag = (which, repr(asdict(cfg)), tuple(sorted(kw.items())))
        if tag not in seen:
            seen.add(tag)
            out.append((which, cfg, kw))
    return out


def _worker_run(job) -> str:
    """Train one job in a forked worker; returns the line the parent shows for it (a worker shows nothing)."""
    p, d, start, cache = (shared()[k] for k in ("p", "data", "start", "cache"))
    which, cfg, kw = job
    name = (f"training {which} {cfg.method}" + (f" p={cfg.single_category_prob:g}" if which == "sop" else "")
            + (f" seed {cfg.seed}" if cfg.seed != p.seed else ""))
    ckpt = cache.run_dir("triplet_run", run_key(p, d, which, cfg, start, **kw)) / "checkpoint.pt"
    resumed = torch.load(ckpt, weights_only=False)["step"] if ckpt.is_file() else 0
    out = trained_run(p, d, which, cfg, start, cache, progress=False, **kw)
    note = f"{name}: resumed from the checkpoint at step {resumed} of {cfg.steps} ({ckpt}); " if resumed else f"{name}: "
    return note + f"{cfg.steps - resumed} steps trained in {out['wall_s']:.1f} s (a worker process)"


def prefetch_runs(p, d: TripletData, start: dict, cache, jobs, workers: int = 2) -> int:
    """Train every job (`notebook_runs`) missing from the cache in `workers` forked processes of one torch
    thread each (`forked.run_forked`), storing each in the cache; the notebook's later `trained_run` calls then
    read them. A job left half-way by a killed run resumes from its checkpoint in its worker (the parent says
    so). Nothing happens with one worker, on a GPU, or with the cache disabled (VISUALSEARCH_NO_CACHE: a
    worker's result could not be read back): the notebook's calls then train each run in turn. Returns how many
    were trained."""
    if int(workers) < 2 or str(p.device) != "cpu" or os.environ.get("VISUALSEARCH_NO_CACHE"):
        return 0
    todo = [j for j in jobs if not cache.has("triplet_run", run_key(p, d, j[0], j[1], start, **j[2]))]

    def finished(job, line: str) -> None:
        cache.misses.append("triplet_run")  # computed in this session (by a worker)
        note(line)

    # even one job left goes to a worker: a run's floats depend on its thread count, so every run of a CPU
    # notebook trains at one thread whatever the cache already held
    run_forked(_worker_run, todo, workers, shared=dict(p=p, data=d, start=start, cache=cache), threads=1,
               desc=f"training {len(todo)} runs", unit="run", on_result=finished)
    return len(todo)
