"""The face paper's computation: identity trunk, fine-tuning from each depth, baselines, the chosen sharing tree.

The flow (see notebooks/face_attribute_sharing.ipynb):
1. `data.load_data`: the three splits (identity pretraining, attribute training, attribute test: disjoint
   people) as in-memory image stores with their labels.
2. `train_identity_trunk`: a staged residual CNN classifying the pretraining identities.
3. `run_grid`: for each attribute, branch depth and seed: fine-tune a copy of the stages after the depth plus
   a new head on the frozen stages before it (method "finetune"); the capacity control trains the same small
   probe at every depth ("probe"); the same network from random weights ("scratch") is the third baseline.
   Each run is cached by the hash of what produced it.
4. `sharing` picks the pattern; `build_multihead` and `evaluate_multihead` build it as one network and
   measure it.
5. `readout_diagnostic`: why head-only emotion sits at chance (a linear read-out of the frozen features, globally
   pooled as the head-only branch reads them or on a 3x3 grid as the probe keeps them).

Training runs in channels-last layout, its forward pass under bfloat16 autocast when `precision` is "bf16"
(issue 17: about 2x on CPUs with AMX/AVX512-BF16); every evaluation is float32.

Every training (the trunk, each fine-tuning run) checkpoints into the cache's run folder of its entry
(`ResultCache.run_dir`, one folder per run, so forked workers never share one) every `checkpoint_every` steps
and resumes from it when killed, with the numbers of an uninterrupted run; the folder is removed once the
entry is stored. Every cache of these runs (the notebook's, the forked workers', the tests') is made by
`result_cache`, so its code version is this module's import closure: tables, figures and claims are not in it.
"""
from __future__ import annotations

import shutil
from dataclasses import asdict
from functools import partial

import pandas as pd
import torch
import torch.nn.functional as F

from ...cache import ResultCache
from ...data.images import ImageStore
from ...evaluate import embed, search
from ...forked import run_forked, shared
from ...models.face import (FaceNetConfig, FaceTrunk, FrozenPrefixNet, IdentityNet, MultiHeadFaceNet, ProbeBranch,
                            make_branch, prepare_images, probe_patch)
from ...progress import bar
from ...seeding import seed_everything, step_seed
from ...train import TrainConfig, autocast, train
from .data import ATTRIBUTES, FaceData, FaceSplit

# Centre of each FairFace age bin in years, for age MAE from bin predictions; "more than 70" is taken as 70-85.
AGE_BIN_CENTRES = (1.0, 6.0, 14.5, 24.5, 34.5, 44.5, 54.5, 64.5, 77.5)


def result_cache(root=None) -> ResultCache:
    """The cache of this paper's runs, keyed on this module's import closure (root None: the default)."""
    return ResultCache(root, code=__name__)


# ------------------------------------------------------------------ training helpers

def train_config(section: dict, seed: int, device: str, desc: str | None = None,
                 checkpoint_every: int = 0) -> TrainConfig:
    """TrainConfig of a `trunk` or `finetune` parameter section (Adam, one step decay at decay_at); a
    progress bar labelled `desc` when given (not for the many small fine-tuning runs)."""
    steps = int(section["steps"])
    return TrainConfig(steps=steps, lr=float(section["lr"]), optimizer="adam",
                       weight_decay=float(section["weight_decay"]),
                       lr_milestones=tuple(int(steps * f) for f in section["decay_at"]), lr_gamma=0.1,
                       seed=seed, progress=desc is not None, desc=desc or "training", device=device,
                       log_every=max(1, steps // 10), checkpoint_every=int(checkpoint_every))


def _model_input(x: torch.Tensor) -> torch.Tensor:
    """What a network here reads: uint8 images normalised (prepare_images), float features as they are; image-
    shaped inputs in channels-last layout, which oneDNN's CPU convolutions run about 20% faster (same numbers up
    to float rounding)."""
    x = prepare_images(x) if x.dtype == torch.uint8 else x
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def fit_classifier(model: torch.nn.Module, inputs: torch.Tensor, labels: torch.Tensor, section: dict, seed: int,
                   device: str = "cpu", desc: str | None = None, run_dir=None, checkpoint_every: int = 0,
                   precision: str = "fp32"):
    """Train `model` to classify `inputs` (uint8 images or float features) with cross-entropy, through the
    shared training loop. Batches are a pure function of (seed, step), so a run is reproducible. `desc`:
    a progress bar so labelled. `run_dir`: checkpoints every `checkpoint_every` steps (and at the end) go
    there, and a run finding one resumes from it. `precision`: of the forward pass (`autocast`); the model is
    kept in channels-last layout (`_model_input`)."""
    bs = int(section["batch_size"])
    n = len(inputs)

    def batch_fn(step):
        g = torch.Generator().manual_seed(step_seed(seed, step))
        idx = torch.randint(0, n, (bs,), generator=g)
        return inputs[idx], labels[idx]

    def step_fn(m, batch):
        x, y = batch
        with autocast(device, precision):
            logits = m(_model_input(x)).float()
        loss = F.cross_entropy(logits, y)
        return loss, {"acc": float((logits.argmax(1) == y).float().mean())}

    seed_everything(seed)
    model.to(memory_format=torch.channels_last)
    return train(model, step_fn, batch_fn, train_config(section, seed, device, desc, checkpoint_every),
                 run_dir=run_dir)


def cached_training(cache, name: str, key: dict, compute):
    """cache.get_or_compute(name, key, compute(run_dir)) with the entry's checkpoint folder as run_dir (None
    without a cache); the folder is removed once the entry is stored (a recomputation asked for with
    VISUALSEARCH_NO_CACHE must not find a finished checkpoint)."""
    if cache is None:
        return compute(None)
    run_dir = cache.run_dir(name, key)
    out = cache.get_or_compute(name, key, lambda: compute(run_dir))
    shutil.rmtree(run_dir, ignore_errors=True)
    return out


def predict(model: torch.nn.Module, inputs: torch.Tensor, device: str = "cpu", batch: int = 256) -> torch.Tensor:
    """Logits of `model` over `inputs` (uint8 images or float features), in eval mode, on CPU."""
    model.eval().to(device)
    return embed(lambda idx: model(_model_input(inputs[idx].to(device))), len(inputs), batch, normalize=False)


def features_at(trunk: FaceTrunk, images: ImageStore, depth: int, device: str = "cpu", batch: int = 256) -> torch.Tensor:
    """Frozen trunk features after `depth` stages (the normalised image at depth 0), on CPU."""
    trunk.eval().to(device)
    return embed(lambda idx: trunk(prepare_images(images.get(idx).to(device)), 0, depth), len(images), batch,
                 normalize=False)


def age_mae_years(pred_bins: torch.Tensor, true_bins: torch.Tensor, true_years: torch.Tensor) -> float:
    """Mean absolute error in years of the predicted bins' centres against the true age (or, where unknown,
    the true bin's centre)."""
    centres = torch.tensor(AGE_BIN_CENTRES)
    truth = torch.where(torch.isnan(true_years), centres[true_bins], true_years)
    return float((centres[pred_bins] - truth).abs().mean())


def score(attr: str, logits: torch.Tensor, split: FaceSplit) -> dict:
    """accuracy (and for age: MAE in years), predictions over the labelled test images of `attr`."""
    y = split.labels[attr]
    mask = y >= 0
    pred = logits.argmax(1)
    out = {"accuracy": float((pred[mask] == y[mask]).float().mean()), "n_test": int(mask.sum()),
           "pred": pred.to(torch.int16)}
    if attr == "age":
        out["mae_years"] = age_mae_years(pred[mask], y[mask], split.age_years[mask])
    return out


# ------------------------------------------------------------------ the identity trunk

def net_config(p) -> FaceNetConfig:
    m = p["model"]
    return FaceNetConfig(widths=tuple(m["widths"]), blocks=tuple(m["blocks"]), stem_stride=int(m["stem_stride"]),
                         input_size=int(m["input_size"]))


def identity_rank1(net: IdentityNet, split: FaceSplit, device: str = "cpu") -> float:
    """Rank-1 nearest-neighbour identity retrieval among `split`'s images (each image against all others):
    how well the trunk's penultimate features tell apart people it never saw."""
    known = split.identity >= 0
    if known.sum() < 2:
        return float("nan")
    net.eval().to(device)
    emb = embed(lambda idx: net.embed(prepare_images(split.images.get(idx).to(device))), known.nonzero()[:, 0], 256,
                normalize=False)
    ids = split.identity[known]
    return search(emb, emb, ids, ids, ks=(1,), exclude="self").recall[1]


def train_identity_trunk(data: FaceData, p, cache=None, device: str = "cpu") -> tuple[FaceTrunk, dict, dict]:
    """Train the identity classifier on the pretraining split (cached); return its trunk, metrics (training
    accuracy, rank-1 identity retrieval on the attribute-test people, wall time) and its cache key (which
    the fine-tuning runs' keys include)."""
    cfg = net_config(p)
    key = {"data": data.fingerprint, "model": asdict(cfg), "trunk": dict(p["trunk"]), "seed": p["seed"],
           "device": str(device), "precision": p["precision"]}  # (the fine-tuning runs' keys hold this key, device included)

    def compute(run_dir):
        seed_everything(p["seed"])
        net = IdentityNet(cfg, data.n_identities)
        res = fit_classifier(net, data.pretrain.images.pixels, data.pretrain.identity, p["trunk"], p["seed"], device,
                             desc=f"identity trunk ({data.n_identities} people)", run_dir=run_dir,
                             checkpoint_every=p.get("checkpoint_every", 0), precision=p["precision"])
        net = res.model.cpu()
        tail = res.log.tail(max(1, len(res.log) // 10))
        return {"state": net.state_dict(), "train_acc_last10pct": float(tail["acc"].mean()),
                "final_loss": float(tail["loss"].mean()), "wall_s": res.wall_s,
                "test_identity_rank1": identity_rank1(net, data.test, device)}

    out = cached_training(cache, "face_trunk", key, compute)
    net = IdentityNet(cfg, data.n_identities)
    net.load_state_dict(out["state"])
    return net.trunk.eval(), {k: v for k, v in out.items() if k != "state"}, key


# ------------------------------------------------------------------ fine-tuning grid

METHODS = ("finetune", "probe", "scratch")


def make_attribute_branch(trunk: FaceTrunk, method: str, depth: int, n_classes: int, probe_width: int):
    if method == "finetune":
        return make_branch(trunk, depth, n_classes, init="copy")
    if method == "scratch":
        return make_branch(trunk, depth, n_classes, init="scratch")
    if method == "probe":
        return ProbeBranch(trunk.channels_at(depth), n_classes, width=probe_width, depth=depth,
                           patch=probe_patch(trunk, depth, trunk.cfg.input_size))
    raise ValueError(f"unknown method {method!r} (valid: {', '.join(METHODS)})")


class FeatureBank:
    """Frozen features of the attribute splits at one depth, kept while runs at that depth go on; beyond
    `max_mb` the prefix is run per batch instead (FrozenPrefixNet), which gives the same numbers."""

    def __init__(self, trunk: FaceTrunk, data: FaceData, device: str, max_mb: float):
        self.trunk, self.data, self.device, self.max_mb = trunk, data, device, max_mb
        self.depth, self.train, self.test = None, None, None

    def fits(self, depth: int) -> bool:
        size = self.data.train.images.size
        with torch.no_grad():
            per_image = self.trunk.eval().cpu()(torch.zeros(1, 3, size, size), 0, depth).numel()
        n = len(self.data.train) + len(self.data.test)
        return n * per_image * 4 / 2**20 <= self.max_mb

    def get(self, depth: int):
        if self.depth != depth:
            self.train = self.test = None
            self.train = features_at(self.trunk, self.data.train.images, depth, self.device)
            self.test = features_at(self.trunk, self.data.test.images, depth, self.device)
            self.depth = depth
        return self.train, self.test


def finetune_run(trunk: FaceTrunk, data: FaceData, bank: FeatureBank, attr: str, method: str, depth: int,
                 seed: int, p, keep_state: bool = False, device: str = "cpu", run_dir=None) -> dict:
    """One branch for `attr` at `depth` trained with `method` and `seed`; scored on the test split.
    `run_dir`: this run's own checkpoint folder (resumed from when a checkpoint is there).

    "scratch" at depth 0 is a whole network trained from random weights; at a deeper depth it is the
    "re-initialise the layers after L" variant (frozen identity stages below, fresh stages above).
    """
    n_classes = len(data.vocab[attr])
    seed_everything(seed)
    branch = make_attribute_branch(trunk, method, depth, n_classes, p["control"]["probe_width"])
    y_train = data.train.labels[attr]
    have = y_train >= 0
    if depth == 0 or not bank.fits(depth):  # at depth 0 nothing is frozen: the branch is a whole network
        model, x_train, x_test = FrozenPrefixNet(trunk, branch, depth), data.train.images.pixels, data.test.images.pixels
    else:
        x_train, x_test = bank.get(depth)
        model = branch
    res = fit_classifier(model, x_train[have], y_train[have], p["finetune"], seed, device, run_dir=run_dir,
                         checkpoint_every=p.get("checkpoint_every", 0), precision=p["precision"])
    out = score(attr, predict(res.model, x_test, device), data.test)
    out.update(attribute=attr, method=method, depth=depth, seed=seed, wall_s=res.wall_s,
               trainable_params=sum(q.numel() for q in branch.parameters()))
    if keep_state:
        out["state"] = {k: v.cpu() for k, v in branch.state_dict().items()}
    return out


def scratch_seeds(p) -> list:
    """Seeds of the from-scratch baseline: the first `scratch_seeds` of p.seeds (all when absent or 0). It is
    in no claim, and its runs are the costliest of the grid (whole networks), so the default preset trains fewer."""
    n = int(p.get("scratch_seeds") or 0)
    return list(p["seeds"][:n] if n else p["seeds"])


def grid_jobs(p) -> list[tuple]:
    """(depth, attribute, method, seed) of every run, ordered by depth so frozen features are reused."""
    return [(d, a, m, s) for d in sorted(p["depths"]) for m in ("finetune", "probe") for a in ATTRIBUTES
            for s in p["seeds"]] + [(0, a, "scratch", s) for a in ATTRIBUTES for s in scratch_seeds(p)]


def _job_key(trunk_key: dict, p, job: tuple) -> dict:
    d, a, m, s = job
    return {"trunk": trunk_key, "finetune": dict(p["finetune"]), "control": dict(p["control"]), "attribute": a,
            "method": m, "depth": d, "seed": s, "keep_state": m == "finetune" and s == p["seeds"][0]}


def _run_job(job: tuple, cache_root) -> None:
    """In a worker process: train one run (if not cached) and store it in the cache."""
    w = shared()
    if "bank" not in w:  # each worker builds its own FeatureBank once, at its first job
        w["bank"] = FeatureBank(w["trunk"], w["data"], w["device"], w["p"]["finetune"]["feature_cache_mb"])
    d, a, m, s = job
    key = _job_key(w["trunk_key"], w["p"], job)
    cached_training(result_cache(cache_root), "face_finetune", key, lambda run_dir: finetune_run(
        w["trunk"], w["data"], w["bank"], a, m, d, s, w["p"], key["keep_state"], w["device"], run_dir))


def run_grid(trunk: FaceTrunk, trunk_key: dict, data: FaceData, p, cache=None, device: str = "cpu",
             progress: bool = True) -> tuple[pd.DataFrame, dict]:
    """All fine-tuning runs: finetune and probe at every depth in p.depths, scratch at depth 0, for every
    attribute and seed. Returns (one row per run, {(attr, method, depth, seed): result dict incl. predictions}).

    With a cache (made by `result_cache`) and p.parallel.workers > 1 on CPU, runs missing from the cache are
    trained that many at a time in forked processes (p.parallel.threads_per_worker torch threads each; small
    networks use cores better this way than with intra-op threads), each storing into `result_cache(cache.root)`,
    then everything is read back from the cache in order. Progress (a bar over runs) is shown by this process as
    runs finish, never by the workers.
    """
    jobs = grid_jobs(p)
    workers = int(p.get("parallel", {}).get("workers", 1))
    todo = [j for j in jobs if cache is None or not cache.path("face_finetune", _job_key(trunk_key, p, j)).is_file()]
    if todo and cache is not None and workers > 1 and device == "cpu":
        run_forked(partial(_run_job, cache_root=cache.root), todo, workers,
                   shared=dict(trunk=trunk, trunk_key=trunk_key, data=data, p=p, device=device),
                   threads=int(p["parallel"]["threads_per_worker"]), desc="fine-tuning runs", unit="run",
                   progress=progress, on_result=lambda job, _: cache.misses.append("face_finetune"))
        todo = []  # every run is in the cache now (a worker's is computed in this session: not a warm run)
    bank = FeatureBank(trunk, data, device, p["finetune"]["feature_cache_mb"])
    runs = {}
    for job in bar(jobs, desc="fine-tuning runs", unit="run", disable=not progress or not todo):
        d, a, m, s = job
        key = _job_key(trunk_key, p, job)
        compute = lambda run_dir, d=d, a=a, m=m, s=s, k=key: finetune_run(trunk, data, bank, a, m, d, s, p,
                                                                         k["keep_state"], device, run_dir)
        r = cached_training(cache, "face_finetune", key, compute)
        runs[(a, m, d, s)] = r
    rows = [{k: v for k, v in r.items() if k not in ("pred", "state")} for r in runs.values()]
    return pd.DataFrame(rows), runs


# ------------------------------------------------------------------ the chosen multi-head network

def build_multihead(trunk: FaceTrunk, pattern: dict, runs: dict, data: FaceData, seed: int) -> MultiHeadFaceNet:
    """The chosen pattern as one network, with the branches fine-tuned for `seed` at their depths."""
    branches = {}
    for a, d in pattern.items():
        br = make_branch(trunk, d, len(data.vocab[a]))
        br.load_state_dict(runs[(a, "finetune", d, seed)]["state"])
        branches[a] = br
    return MultiHeadFaceNet(trunk, branches).eval()


def evaluate_multihead(net: MultiHeadFaceNet, data: FaceData, device: str = "cpu", batch: int = 256) -> dict:
    """{attribute: score dict} of one forward pass per batch of test images (every attribute's logits side by
    side in one row of the embedding loop, split apart after it)."""
    net.eval().to(device)
    attrs = list(net.branches)
    widths = [len(data.vocab[a]) for a in attrs]

    def logits(idx):
        out = net(prepare_images(data.test.images.get(idx).to(device)))
        return torch.cat([out[a].float() for a in attrs], 1)

    side_by_side = embed(logits, len(data.test), batch, normalize=False)
    return {a: score(a, v, data.test) for a, v in zip(attrs, side_by_side.split(widths, 1))}


# ------------------------------------------------------------------ why head-only emotion sits at chance

def linear_readout(feats: dict, data: FaceData, attr: str, depth: int, grid: int) -> dict:
    """How much of `attr` a linear classifier can read from the frozen trunk features after `depth` stages
    (`feats`: {"train", "test"} of `features_at`), average-pooled to a `grid` x `grid` layout (grid 1: the global pooling the head-only branch reads; grid 3:
    the layout the capacity-control probe keeps), fitted to convergence (L-BFGS logistic regression, C=1, on
    standardised features) on the attribute-training images and scored on the test images. Why: it tells a
    signal the features lack from one the short head-only fine-tuning failed to pick up."""
    from sklearn.linear_model import LogisticRegression

    def pooled(split):
        return F.adaptive_avg_pool2d(feats[split], grid).flatten(1).numpy()

    ytr, yte = data.train.labels[attr], data.test.labels[attr]
    xtr, xte = pooled("train")[(ytr >= 0).numpy()], pooled("test")[(yte >= 0).numpy()]
    ytr, yte = ytr[ytr >= 0].numpy(), yte[yte >= 0].numpy()
    mean, std = xtr.mean(0), xtr.std(0) + 1e-6
    clf = LogisticRegression(C=1.0, max_iter=3000).fit((xtr - mean) / std, ytr)
    return {"attribute": attr, "depth": depth, "grid": grid, "features": xtr.shape[1],
            "train_accuracy": float(clf.score((xtr - mean) / std, ytr)),
            "test_accuracy": float(clf.score((xte - mean) / std, yte))}


def readout_diagnostic(trunk: FaceTrunk, trunk_key: dict, data: FaceData, cache=None, attrs=("emotion", "gender"),
                       depths=(3, 4), grids=(1, 3), device: str = "cpu") -> pd.DataFrame:
    """`linear_readout` for every attribute, depth (those the trunk has) and grid; one row each (cached)."""
    depths = [d for d in depths if 1 <= d <= trunk.n_stages]

    def compute():
        torch.manual_seed(0)
        rows = []
        for d in depths:  # each depth's frozen features computed once, pooled per grid
            feats = {"train": features_at(trunk, data.train.images, d, device),
                     "test": features_at(trunk, data.test.images, d, device)}
            rows += [linear_readout(feats, data, a, d, g) for a in attrs for g in grids]
        return pd.DataFrame(rows)

    key = {"trunk": trunk_key, "attrs": list(attrs), "depths": depths, "grids": list(grids)}
    return compute() if cache is None else cache.get_or_compute("face_readout", key, compute)
