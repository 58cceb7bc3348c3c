"""Training and evaluation of composed-retrieval models on text-feedback datasets (the MAAF notebook's engine).

Why here and not in the notebook: batching, evaluation protocol and caching are the same for MAAF and every
baseline on every dataset, and they are worth testing.

- `FrozenMaps`: when the backbone is frozen, its stage maps of every image are computed once per process
  (only when some run still has to train); models then take maps instead of pixels, so a run trains only
  what it can change. This is how the default preset fits many runs in minutes; the paper preset trains
  the backbone at 0.1x lr on augmented pixels, as the authors do.
- `make_batch_fn`: (reference, text, target) triplets drawn by `samplers.UniformBatches` with a per-step
  seed; Fashion IQ batches come from one category at a time (the authors' loader); FIQ captions joined in
  random order (drawn from the step's stream).
- `make_step_fn`: logits = s^2 cos(query_i, target_j); in-batch softmax (or soft triplet) loss.
- `evaluate`: gallery embedded through the catalog path and queries composed (`evaluate.embed`), the
  reference dropped from its own ranking, Recall@K against the hit labels of the split (`evaluate.search`);
  `evaluate_per_query` also gives hit@k of every query (`per_query_hits`), what the claims are decided on.
- `run_experiment`: build, train (visualsearch.train), evaluate, cached by the paper's `result_cache` under
  the model and training configuration, the data fingerprint and the vocabulary; `run_all` trains the
  uncached runs of a plan in parallel processes; `plan_runs` is the notebook's plan (MAAF, baselines,
  ablations per dataset; the runs a claim compares with `claim_seeds` seeds); `seed_results` gathers a run's
  seeds; `backbone_weights_file` the backbone weights (pretrained here: `pretrain.py`).
- What the figures and claims need from a trained model: `word_attention`, `retrieval_examples`,
  `place_attention_items` (per place word) and `place_attention` (their means).
"""
from __future__ import annotations

import dataclasses
import hashlib
import re
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ... import atomic
from ...cache import ResultCache, file_digest
from ...data.scenes import COLUMNS, ROWS
from ...data.worlds import cache_root
from ...evaluate import Retrieval, embed, search
from ...forked import run_forked, shared
from ...losses import BatchSoftmaxLoss, SoftTripletLoss
from ...models.blocks import ResNetTrunk
from ...models.fusion import build_model
from ...models.maaf import MAAFConfig, word_attention_maps
from ...models.text import Vocabulary, tokenize
from ...progress import bar, note
from ...samplers import UniformBatches
from ...seeding import step_seed
from ...train import TrainConfig, autocast, channels_last, identity_of, train
from .data import PreparedDataset, SplitInputs, eval_queries, normalize_pixels
from .pretrain import pretrain_trunk


def result_cache(root=None) -> ResultCache:
    """The cache of this paper's runs, keyed on this module's import closure (not on tables or figures)."""
    return ResultCache(root, code=__name__)


# ---------------------------------------------------------------------------------------------- frozen maps

@dataclass
class FrozenMaps:
    """Stage maps of a frozen backbone for every image of a store (float16 to halve memory)."""

    maps: dict

    @classmethod
    def compute(cls, trunk: ResNetTrunk, store, stages, batch_size: int = 64,
                device: str = "cpu", precision: str = "fp32") -> "FrozenMaps":
        """The maps of every image of `store`; `precision`: the trunk's forward pass (train.autocast, in
        channels-last layout; "bf16" is the precision the runs train in, and 2x faster on AMX CPUs)."""
        trunk = channels_last(trunk.to(device).eval())
        parts = {s: [] for s in stages}
        with torch.no_grad(), autocast(device, precision):
            for i in range(0, len(store), batch_size):
                out = trunk(normalize_pixels(store.get(range(i, min(i + batch_size, len(store))))).to(device))
                for s in stages:
                    parts[s].append(out[s].half().cpu())
        return cls({s: torch.cat(v) for s, v in parts.items()})

    def take(self, index: torch.Tensor) -> dict:
        return {s: m[index].float() for s, m in self.maps.items()}


def backbone_key(cfg: MAAFConfig, seed: int) -> str:
    """Names the frozen backbone a configuration uses: its weights file, or its random init (seeded)."""
    return f"{cfg.backbone}:{cfg.backbone_weights}" if cfg.backbone_weights else f"{cfg.backbone}:random:{seed}"


# ------------------------------------------------------------------------------------------------ training

def make_batch_fn(groups: list[SplitInputs], batch_size: int, seed: int, augment_images: bool = False,
                  maps_key: str | None = None):
    """batch_fn(step) -> {"source", "texts", "target"}: a pure function of the step. Each batch comes from
    one group (a Fashion IQ category), drawn uniformly as the authors do; queries drawn without replacement
    when the group has enough."""
    groups = [g for g in groups if g.split.queries]
    if not groups:
        raise ValueError("no training queries: every training split is empty")
    sampler = UniformBatches([len(g.split.queries) for g in groups], batch_size, seed, "repeat")

    def batch_fn(step: int) -> dict:
        batch = sampler(step)
        g = groups[batch.group]
        queries = [g.split.queries[int(i)] for i in batch.indices]
        gen = torch.Generator().manual_seed(step_seed(seed, step, stream=2)) if augment_images else None
        return {"source": g.images(torch.tensor([q.source for q in queries]), gen, maps_key),
                "texts": [g.split.query_text(q, batch.rng) for q in queries],
                "target": g.images(torch.tensor([q.target for q in queries]), gen, maps_key)}

    return batch_fn


def make_step_fn(loss: str = "softmax", precision: str = "fp32", device: str = "cpu"):
    """step_fn(model, batch) -> (loss, {"batch_acc"}); `loss` is softmax (in-batch classification) or
    soft_triplet; the forward pass in `precision` (train.autocast), the logits and the loss in float32."""
    criterion = {"softmax": BatchSoftmaxLoss(), "soft_triplet": SoftTripletLoss()}[loss]

    def step_fn(model, batch):
        with autocast(device, precision):
            logits = model(batch["source"], batch["texts"], batch["target"]).float()
        acc = (logits.argmax(1) == torch.arange(len(logits), device=logits.device)).float().mean()
        return criterion(logits), {"batch_acc": float(acc)}

    return step_fn


# ---------------------------------------------------------------------------------------------- evaluation

def per_query_hits(indices: torch.Tensor, query_labels, gallery_labels, ks) -> dict:
    """{k: BoolTensor [Q]}: whether query i has a gallery item of its label among its first k retrieved
    (`indices` [Q, kmax], best first, as `evaluate.search` returns them). A k above the retrieved columns is
    evaluated on all of them, so the mean of hit@k is `evaluate.recall_at_k` (a query whose relevant items
    were not retrieved is a miss at every k)."""
    query_labels = torch.as_tensor(query_labels)
    hits = torch.as_tensor(gallery_labels)[indices] == query_labels.unsqueeze(1)
    return {int(k): hits[:, :k].any(1) for k in ks}


def evaluate(model, group: SplitInputs, ks=(1, 5, 10, 50), batch_size: int = 128, device: str = "cpu",
             maps_key: str | None = None) -> Retrieval:
    """Recall@K of `model` on a split: the split's protocol (hit labels, reference excluded);
    `.percent()` gives {"R@k": percent}."""
    return evaluate_per_query(model, group, ks, batch_size, device, maps_key)[0]


def evaluate_per_query(model, group: SplitInputs, ks=(1, 5, 10, 50), batch_size: int = 128, device: str = "cpu",
                       maps_key: str | None = None) -> tuple[Retrieval, dict]:
    """(Retrieval as `evaluate` returns it, {k: BoolTensor [Q]} hit@k of each evaluated query): the per-query
    scores the claims are decided on, queries in `data.eval_queries` order."""
    split = group.split
    model = model.to(device).eval()
    queries = eval_queries(split)
    if not queries:
        raise ValueError(f"{split.dataset} {split.split}: no queries with targets to evaluate")

    def to(x):
        return {k: v.to(device) for k, v in x.items()} if isinstance(x, dict) else x.to(device)

    def compose(idx: torch.Tensor) -> torch.Tensor:
        chunk = [queries[i] for i in idx.tolist()]
        src = to(group.images(torch.tensor([q.source for q in chunk]), maps_key=maps_key))
        return model.compose(src, [split.query_text(q) for q in chunk])

    gallery = embed(lambda idx: model.embed_catalog(to(group.images(idx, maps_key=maps_key))), len(split.images),
                    batch_size)
    composed = embed(compose, len(queries), batch_size)
    index = {}
    gallery_labels = torch.tensor([index.setdefault(l, len(index)) for l in split.labels])
    query_labels = torch.tensor([index.setdefault(q.target_label, len(index)) for q in queries])
    ret = search(composed, gallery, query_labels, gallery_labels, ks, exclude=torch.tensor([q.source for q in queries]))
    return ret, per_query_hits(ret.indices, query_labels, gallery_labels, ks)


def query_references(dataset: PreparedDataset) -> dict:
    """{evaluation split: LongTensor [Q]} the reference image of each evaluated query (`data.eval_queries`
    order): queries sharing a reference are not independent, so the claims' bootstrap resamples them together."""
    return {name: torch.tensor([q.source for q in eval_queries(g.split)], dtype=torch.long)
            for name, g in dataset.eval.items()}


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
    precision: str = "fp32"          # the training forward pass: fp32 | bf16 (train.autocast; evaluation float32)
    maps_precision: str = "fp32"     # a frozen backbone's forward pass when its maps are computed once (run_all)

    def __post_init__(self):
        self.lr_milestones = tuple(self.lr_milestones)


@dataclass
class RunResult:
    """A trained model's evaluation on each evaluation split, its training log, and (kept runs) weights."""

    recall: dict                      # eval name -> {"R@k": percent}
    log: object                       # pandas DataFrame: step, loss, lr, batch_acc
    state: dict | None = None         # state dict without frozen parts (see trainable_state)
    wall_s: float = 0.0               # training time (wall clock)
    extra: dict = field(default_factory=dict)  # cpu_s: CPU seconds of training + evaluation (load-independent);
                                               # trainable_params: parameters the optimiser updated
    hits: dict = field(default_factory=dict)   # eval name -> {k: BoolTensor [Q]} hit@k per evaluated query


def trainable_state(model) -> dict:
    """State dict without the parts that never train (a frozen backbone, a frozen pretrained text model):
    they are rebuilt identically from their source, so caching them would only waste space."""
    frozen = ["trunk."] if getattr(model.cfg, "backbone_frozen", False) else []
    frozen.append("text.transformer.")
    return {k: v for k, v in model.state_dict().items() if not any(k.startswith(f) for f in frozen)}


def trainable_parameters(model) -> int:
    """Parameters the optimiser updates (a frozen backbone and a frozen text model excluded): the capacity the
    tables show beside each method's recall, so that a comparison of fusions is read with it."""
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))


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
        if maps_key is None:  # on pixels the backbone's convolutions run faster channels-last; on the small maps
            channels_last(model)  # of a frozen backbone (2x2 to 4x4) the layout is slower (TIRG on the last map)
        tc = TrainConfig(steps=spec.steps, lr=spec.lr, optimizer="sgd", momentum=0.9, nesterov=False,
                         weight_decay=spec.weight_decay, lr_milestones=spec.lr_milestones, lr_gamma=0.1,
                         seed=spec.seed, progress=progress, device=device, log_every=max(1, spec.steps // 20),
                         checkpoint_every=checkpoint_every, identity=identity_of(cache_name(name), key),
                         desc=f"training {name}")
        eval_fn = None
        if eval_every and curve_group:
            def eval_fn(m, step):
                return evaluate(m, eval_groups[curve_group], ks, device=device, maps_key=maps_key).percent()
        batch_fn = make_batch_fn(train_groups, spec.batch_size, spec.seed, spec.augment, maps_key)
        result = train(model, make_step_fn(spec.loss, spec.precision, device), batch_fn, tc, run_dir=run_dir,
                       param_groups=model.param_groups(spec.image_lr_scale), eval_fn=eval_fn, eval_every=eval_every)
        model = result.model
        evaluated = {k: evaluate_per_query(model, g, ks, device=device, maps_key=maps_key)
                     for k, g in eval_groups.items()}
        state = {k: v.cpu() for k, v in trainable_state(model).items()} if keep_model else None
        return RunResult({k: r.percent() for k, (r, _) in evaluated.items()}, result.log, state, result.wall_s,
                         {"cpu_s": time.process_time() - cpu0, "trainable_params": trainable_parameters(model)},
                         {k: h for k, (_, h) in evaluated.items()})

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


# ------------------------------------------------------------------------------------- many runs at once

@dataclass
class Run:
    """One training run of the notebook: a named model configuration on a prepared dataset."""

    name: str                  # row label, e.g. "MAAF", "tirg", "ablation: 1 block", "MAAF, seed 1"
    dataset: str               # PreparedDataset.name
    cfg: MAAFConfig
    spec: TrainSpec
    keep_model: bool = False   # keep the weights (attention maps, retrieval examples)
    eval_every: int = 0        # record a validation curve every N steps
    curve_group: str | None = None
    checkpoint_every: int = 0  # resumable checkpoint every N steps (0: at the end); not part of the result
    base: str = ""             # the run this one repeats with another seed ("MAAF" for "MAAF, seed 1"); "" = itself

    def __post_init__(self):
        self.base = self.base or self.name


def run_cost(run: Run) -> float:
    """Rough relative cost of a run (steps x per-step weight), to start the longest runs first."""
    weight = {"maaf": 4.0, "cross_attention": 4.0, "tirg_lastconv": 5.0}.get(run.cfg.fusion, 1.0)
    return run.spec.steps * weight * (2.0 if run.cfg.text_encoder == "minilm" else 1.0)


def _maps_one(job) -> list:
    """Maps of one frozen backbone for every split of one dataset (training splits first)."""
    name, key, cfg, seed, stages, device, precision = job
    trunk = seeded_trunk(cfg, seed)
    d = shared()["datasets"][name]
    return [FrozenMaps.compute(trunk, g.store, stages, device=device, precision=precision)
            for g in [*d.train, *d.eval.values()]]


def _run_one(run: Run, ks, device, cache_root, progress: bool = False) -> RunResult:
    """Train one run on the datasets the parent shared (`forked.shared()`; in-process too, see `run_all`)."""
    d = shared()["datasets"][run.dataset]
    return run_experiment(run.name, run.cfg, run.spec, d.train, d.eval, d.vocab, d.fingerprint,
                          result_cache(cache_root), run.keep_model, device, progress, ks, run.eval_every,
                          run.curve_group, run.checkpoint_every)


def run_key_of(run: Run, data: PreparedDataset, ks, device: str = "cpu") -> dict:
    return run_key(run.cfg, run.spec, data.fingerprint, data.vocab, data.eval, ks, run.keep_model, run.eval_every,
                   run.curve_group, device)


def run_key_path(cache, run: Run, data: PreparedDataset, ks, device: str = "cpu") -> Path:
    return cache.path(cache_name(run.name), run_key_of(run, data, ks, device))


def run_all(runs: list[Run], datasets, cache, ks=(1, 5, 10, 50), workers: int = 1, threads: int = 1,
            device: str = "cpu", progress: bool = True) -> dict:
    """Results of every run ({(dataset, name): RunResult}), from the cache where present; the others are
    trained, `workers` at a time in separate processes (each with `threads` torch threads). Frozen-backbone
    maps are computed once, only for datasets that have something left to train. `datasets`: {name:
    PreparedDataset} (e.g. `data.load_data(p)`); `cache`: `result_cache()`."""
    todo = [r for r in runs if not cache.has(cache_name(r.name), run_key_of(r, datasets[r.dataset], ks, device))]
    needed: dict = {}  # (dataset, backbone key) -> (a run using it, stages it needs)
    for r in todo:
        if r.cfg.backbone_frozen:
            run, stages = needed.get((r.dataset, backbone_key(r.cfg, r.spec.seed)), (r, {"4"}))
            needed[(r.dataset, backbone_key(r.cfg, r.spec.seed))] = (run, stages | set(r.cfg.token_layers))
    jobs = [(name, key, r.cfg, r.spec.seed, sorted(stages), device, r.spec.maps_precision)
            for (name, key), (r, stages) in needed.items()]
    forking = workers > 1 and device == "cpu"
    if len(jobs) > 1 and forking:  # each frozen backbone's maps, computed once
        computed = run_forked(_maps_one, jobs, workers, shared=dict(datasets=datasets), threads=threads,
                              desc="frozen backbone maps", unit="dataset", progress=progress)
    else:
        shared().update(datasets=datasets)
        torch.set_num_threads(threads)
        computed = [_maps_one(j) for j in bar(jobs, desc="frozen backbone maps", unit="dataset",
                                              disable=not progress or not jobs)]
    for (name, key, *_), maps in zip(jobs, computed):
        for g, m in zip([*datasets[name].train, *datasets[name].eval.values()], maps):
            g.maps[key] = m
    trained = {}

    def finished(r: Run, result: RunResult) -> None:  # in this process: workers show nothing
        trained[(r.dataset, r.name)] = result
        note(f"{r.name} on {r.dataset}: {r.spec.steps} steps trained in {result.wall_s:.1f} s", disable=not progress)

    if todo and forking:
        run_forked(partial(_run_one, ks=ks, device=device, cache_root=cache.root), sorted(todo, key=lambda r: -run_cost(r)),
                   workers, shared=dict(datasets=datasets), threads=threads, desc="training runs", unit="run",
                   progress=progress, on_result=finished)
    else:
        shared().update(datasets=datasets)
        torch.set_num_threads(threads)
        for r in bar(todo, desc="training runs", unit="run", disable=not progress or not todo):
            finished(r, _run_one(r, ks, device, cache.root, progress))
    shared().clear()
    cache.misses += [cache_name(r.name) for r in todo]
    results = {}
    for r in runs:  # in plan order; the ones not trained now come from the cache
        d = datasets[r.dataset]
        results[(r.dataset, r.name)] = trained.get((r.dataset, r.name)) or run_experiment(
            r.name, r.cfg, r.spec, d.train, d.eval, d.vocab, d.fingerprint, cache, r.keep_model, device, False, ks,
            r.eval_every, r.curve_group, r.checkpoint_every)
    return results


# ------------------------------------------------------------------ what the figures need from a trained model

def trained_model(run: Run, datasets, results: dict):
    """The trained model of `run` (a kept run: `Run.keep_model`), restored from its cached weights."""
    result = results[(run.dataset, run.name)]
    if result.state is None:
        raise ValueError(f"run {run.name!r} on {run.dataset} kept no weights (Run.keep_model is False)")
    return restore(run.cfg, datasets[run.dataset].vocab, run.spec.seed, result.state)


def from_trained(cache, run: Run, datasets, results: dict, fn, *args, **kwargs):
    """fn(trained model of `run`, *args, **kwargs), e.g. `word_attention(model, group, 7)`: what a figure or a
    claim reads off a trained model, cached under the run (its configuration, training and data) and the call,
    so that a rerun that retrains nothing also runs no model to redraw its figures. `fn` is one of this module's
    functions; the arguments are described in the key by their repr (a SplitInputs by its split's name)."""
    def described(x):
        if isinstance(x, SplitInputs):
            return f"split {x.split.dataset}/{x.split.split}/{x.split.category} of {len(x.split.queries)} queries"
        return repr(x)

    key = {"run": run.name, "dataset": run.dataset, "cfg": asdict(run.cfg), "spec": asdict(run.spec),
           "data": datasets[run.dataset].fingerprint, "fn": fn.__name__, "args": [described(a) for a in args],
           "kwargs": {k: described(v) for k, v in sorted(kwargs.items())}}
    return cache.get_or_compute(f"maaf-view-{fn.__name__}", key,
                                lambda: fn(trained_model(run, datasets, results), *args, **kwargs))


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
    key = {"arch": p.backbone, "image_size": p.image_size, "seed": p.seed, **pre, "device": str(p.device),
           "precision": p.backbone_precision}
    # Nothing else of the notebook runs during this step, so on the CPU it takes the cores the training runs
    # will take (`workers` x `threads`), not one worker's share: it was a minute on one core of two (issue 17).
    threads = torch.get_num_threads()
    if str(p.device) == "cpu":
        torch.set_num_threads(max(threads, p.workers * p.threads))
    try:
        state = cache.get_or_compute("maaf-backbone-pretraining", key, lambda: pretrain_trunk(
            p.backbone, p.image_size, pre["steps"], pre["photos"], pre["batch_size"], pre["lr"], p.seed, p.device,
            progress, run_dir=cache.run_dir("maaf-backbone-pretraining", key), checkpoint_every=p.checkpoint_every,
            identity=identity_of("maaf-backbone-pretraining", key), precision=p.backbone_precision))
    finally:
        torch.set_num_threads(threads)
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
                     augment=dataset in p.augment and not p.backbone_frozen, precision=p.precision,
                     maps_precision=p.backbone_precision, **changes)


def longer_tirg_name(p) -> str:
    """The name of the TIRG run trained `longer_tirg` times longer (a convergence control)."""
    return f"TIRG ({p.longer_tirg}x steps)"


def with_seed(run: Run, seed: int, keep_model: bool | None = None) -> Run:
    """`run` again with another training seed (no curve: the curves show seed `p.seed`)."""
    return Run(f"{run.base}, seed {seed}", run.dataset, run.cfg, dataclasses.replace(run.spec, seed=seed),
               run.keep_model if keep_model is None else keep_model, base=run.base)


def plan_runs(p, weights: str | None, seeded: dict | None = None) -> list[Run]:
    """Every run of the notebook: per dataset MAAF (weights kept, for figures) and its baselines (and TIRG
    trained longer, a control); on Fashion IQ also the full model with `reference_seeds` other seeds and one
    run per ablation switch, at `ablation_steps` (with the full model trained again at those steps, and its
    reference seeds, when they differ from the main run's). Ablations change MAAFConfig fields, or `loss` / `backbone_weights` ("none" =
    not pretrained).

    `seeded`: {dataset: run names} that a claim is decided on (`claims.seeded_runs`): each of them is also
    trained with seeds p.seed+1 .. p.seed+claim_seeds-1 (run "<name>, seed <s>"), every other run with p.seed
    only."""
    runs = []
    seeded = {d: set(names) for d, names in (seeded or {}).items()}
    for d in p.datasets:
        cfg = base_config(p, weights, d)
        curve = dict(eval_every=p.curves_every, curve_group=("dress" if d == "fashioniq" else "test")) \
            if p.curves_every else {}
        main = [Run("MAAF", d, cfg, train_spec(p, d), keep_model=True, **curve)]
        for fusion in p.baselines[d]:
            main.append(Run(fusion, d, dataclasses.replace(cfg, fusion=fusion), train_spec(p, d),
                            **(curve if fusion == "tirg" else {})))
        if p.longer_tirg and d in ("fashioniq", "css"):  # does TIRG only need more steps? (a control)
            main.append(Run(longer_tirg_name(p), d, dataclasses.replace(cfg, fusion="tirg"),
                            train_spec(p, d, steps=p.steps[d] * p.longer_tirg)))
        unknown = seeded.get(d, set()) - {r.name for r in main}
        if unknown:
            raise ValueError(f"claims on {d} name runs this plan does not make: {sorted(unknown)} "
                             f"(runs: {[r.name for r in main]})")
        runs += main + [with_seed(r, p.seed + k) for r in main if r.name in seeded.get(d, ())
                        for k in range(1, p.claim_seeds)]
    if "fashioniq" in p.datasets:
        cfg = base_config(p, weights, "fashioniq")
        have = {r.name for r in runs if r.dataset == "fashioniq"}
        full = next(r for r in runs if r.dataset == "fashioniq" and r.name == "MAAF")
        if p.ablation_steps != p.steps["fashioniq"]:  # the ablations' reference: the full model at their steps
            full = Run(ABLATION_REFERENCE, "fashioniq", cfg, train_spec(p, "fashioniq", steps=p.ablation_steps))
            runs.append(full)
            have = set()
        for k in range(1, p.reference_seeds + 1):  # the full model again, other seeds: the noise of one run
            if f"{full.base}, seed {p.seed + k}" not in have:  # (a claim's seeds serve here too)
                runs.append(with_seed(full, p.seed + k, keep_model=False))
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
                            train_spec(p, "fashioniq", steps=p.ablation_steps, **spec_changes)))
    for r in runs:
        r.checkpoint_every = p.checkpoint_every
    return runs


ABLATION_REFERENCE = "ablation: full model"   # the full model at `ablation_steps` when they differ from the main run's


def ablation_results(runs: list[Run], results: dict) -> dict:
    """{row: RunResult} of the Fashion IQ ablation table: "MAAF (full model)" first, its other seeds ("MAAF
    (full model), seed s": the noise of one run), then one row per switch (its name). The full model is the one
    trained at the ablations' steps: its own run (ABLATION_REFERENCE) when `ablation_steps` differs from the
    main run's steps, else the main MAAF run and its seeds; a row is only compared with a model trained as long."""
    fiq = [r for r in runs if r.dataset == "fashioniq"]
    full = [r for r in fiq if r.base == ABLATION_REFERENCE] or [r for r in fiq if r.base == "MAAF"]
    out = {}
    for r in sorted(full, key=lambda r: r.spec.seed):
        out["MAAF (full model)" if r.name == r.base else f"MAAF (full model), seed {r.spec.seed}"] = \
            results[("fashioniq", r.name)]
    out.update({r.name.removeprefix("ablation: "): results[("fashioniq", r.name)] for r in fiq
                if r.name.startswith("ablation: ") and r.base != ABLATION_REFERENCE})
    return out


def seed_results(runs: list[Run], results: dict, dataset: str) -> dict:
    """{run name: {seed: RunResult}} of the runs on `dataset` other than ablations: one entry per base run,
    its repetitions with other seeds gathered under it (seeds in increasing order)."""
    out: dict = {}
    for r in sorted((r for r in runs if r.dataset == dataset and not r.name.startswith("ablation")),
                    key=lambda r: r.spec.seed):
        out.setdefault(r.base, {})[r.spec.seed] = results[(dataset, r.name)]
    return out


# ------------------------------------------------------------------------ what the figures need computed

@dataclass
class WordAttention:
    """One query's word-to-image attention in a trained MAAF (for `figures.attention_figure`)."""

    text: str                  # the query's text
    pixels: torch.Tensor       # uint8 [3, S, S]: the reference image
    words: list                # the text tokens shown (at most max_words)
    stages: list               # the image stages in token order, e.g. ["3", "4"]
    maps: list                 # per block: {stage: [n_words, h, w]}, heads averaged (models.maaf.word_attention_maps)


def word_attention(model, group: SplitInputs, query_index: int, max_words: int = 6,
                   device: str = "cpu") -> WordAttention:
    """Each word's attention over each stage grid, per block, for query `query_index` of a split: the real
    weights of `MAAF.compose(..., return_attention=True)`, heads averaged."""
    split = group.split
    q = split.queries[query_index]
    text = split.query_text(q)
    pixels = group.store.get([q.source])
    model = model.to(device).eval()
    with torch.no_grad():
        out = model.compose(normalize_pixels(pixels).to(device), [text], return_attention=True)
    maps = [{s: m.cpu() for s, m in word_attention_maps(out, 0, b).items()} for b in range(len(out.attentions))]
    return WordAttention(text, pixels[0], out.tokens[0][:max_words], [s for s, *_ in out.layout.stages], maps)


@dataclass
class RetrievalExamples:
    """Queries of a split and their top-k results (reference excluded), for `figures.retrieval_figure`."""

    references: torch.Tensor   # uint8 [Q, 3, S, S]
    texts: list                # the queries' texts
    results: torch.Tensor      # uint8 [Q, k, 3, S, S], best first
    hits: torch.Tensor         # bool [Q, k]: the result has the query's target label


def retrieval_examples(model, group: SplitInputs, query_indices, k: int = 5, device: str = "cpu") -> RetrievalExamples:
    """The top-k gallery images of the given queries (on pixels), the reference excluded from its ranking."""
    split = group.split
    model = model.to(device).eval()
    gallery = embed(lambda idx: model.embed_catalog(normalize_pixels(group.store.get(idx)).to(device)),
                    len(split.images), 128)
    queries = [split.queries[i] for i in query_indices]
    texts = [split.query_text(q) for q in queries]
    with torch.no_grad():
        src = normalize_pixels(group.store.get([q.source for q in queries])).to(device)
        composed = F.normalize(model.compose(src, texts).cpu(), dim=-1)
    scores = composed @ gallery.T
    for row, q in enumerate(queries):
        scores[row, q.source] = -float("inf")
    top = scores.topk(k, dim=1).indices
    hits = torch.tensor([[split.labels[g] == q.target_label for g in top[row].tolist()]
                         for row, q in enumerate(queries)], dtype=torch.bool)
    size = group.store.size
    results = group.store.get(top.reshape(-1)).reshape(len(queries), k, 3, size, size)
    return RetrievalExamples(group.store.get([q.source for q in queries]), texts, results, hits)


def place_attention_items(model, group: SplitInputs, max_queries: int | None = None,
                          device: str = "cpu") -> pd.DataFrame:
    """On CSS-style scenes: how much each word naming a grid place ("topleft", ...) attends to the image tokens
    of that place, relative to its average image token (1 = no preference, < 1 = looks elsewhere). One row per
    (query, place word, block, stage): `query` (index in `data.eval_queries` order), `reference` (its reference
    image), `word` (token position), `block` (1-based), `stage` ("layer3", "layer4", or "all": every image
    token of every stage at once), `ratio`. Heads averaged; a token belongs to the 3x3 cell holding its centre;
    a stage whose grid has no token in the named cell gives no row for that stage (its tokens still count in
    "all").

    The paper observes, from its attention figures, that words tend not to attend to the region they refer
    to; this measures it, per word, where the text names the region."""
    places = {f"{r}{c}": (i, j) for i, r in enumerate(ROWS) for j, c in enumerate(COLUMNS)}
    split = group.split
    model = model.to(device).eval()
    rows = []
    for qi, q in enumerate(eval_queries(split)[:max_queries]):
        text = split.query_text(q)
        named = [(k, places[w]) for k, w in enumerate(tokenize(text)) if w in places]
        if not named:  # no place named: nothing to measure (and no forward pass spent)
            continue
        with torch.no_grad():
            out = model.compose(normalize_pixels(group.store.get([q.source])).to(device), [text],
                                return_attention=True)
        words = out.tokens[0]
        named = [(k, places[w]) for k, w in enumerate(words) if w in places]
        for block in range(len(out.attentions)):
            maps = word_attention_maps(out, 0, block)
            for k, (i, j) in named:
                inside_all, att_all = [], []
                for stage, grid in maps.items():
                    h, w = grid.shape[-2:]
                    rows_of = ((torch.arange(h) + 0.5) / h * 3).long()
                    cols_of = ((torch.arange(w) + 0.5) / w * 3).long()
                    inside = (rows_of[:, None] == i) & (cols_of[None, :] == j)
                    att = grid[k].cpu()
                    inside_all.append(inside.reshape(-1))
                    att_all.append(att.reshape(-1))
                    if inside.any():
                        rows.append((qi, q.source, k, block + 1, f"layer{stage}", float(att[inside].mean() / att.mean())))
                inside_all, att_all = torch.cat(inside_all), torch.cat(att_all)
                if inside_all.any():
                    rows.append((qi, q.source, k, block + 1, "all",
                                 float(att_all[inside_all].mean() / att_all.mean())))
    return pd.DataFrame(rows, columns=["query", "reference", "word", "block", "stage", "ratio"])


def place_attention(model, group: SplitInputs, max_queries: int | None = None, device: str = "cpu") -> pd.DataFrame:
    """`place_attention_items` per (block, stage) of the layer grids: the mean ratio over the place words
    whose named cell holds at least one token of that stage (`queries`: how many)."""
    items = place_attention_items(model, group, max_queries, device)
    items = items[items.stage != "all"]
    return pd.DataFrame([{"block": b, "stage": s, "queries": len(v), "ratio": float(v.ratio.mean())}
                         for (b, s), v in items.groupby(["block", "stage"], sort=True)],
                        columns=["block", "stage", "queries", "ratio"])
