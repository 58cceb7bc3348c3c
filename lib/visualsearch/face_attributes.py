"""The face paper's experiment: identity trunk, fine-tuning from each depth, baselines, the chosen sharing tree.

Why here and not in the notebook: every step (which layers are frozen, what a seed changes, how age MAE is
computed from bins, what the capacity control trains, how a claim is judged) is logic that must be tested;
the notebook calls these functions and shows their tables and figures.

The flow (see notebooks/face_attribute_sharing.ipynb):
1. `load_face_data`: the synthetic faces world (or real data under data_root) as uint8 tensors: an
   identity-pretraining split, an attribute-training split and an attribute-test split of disjoint people.
2. `train_identity_trunk`: a staged residual CNN classifying the pretraining identities.
3. `run_grid`: for each attribute, branch depth and seed: fine-tune a copy of the stages after the depth plus
   a new head on the frozen stages before it (method "finetune"); the capacity control trains the same small
   probe at every depth ("probe"); the same network from random weights ("scratch") is the third baseline.
   Each run is cached by the hash of what produced it.
4. `sharing` picks the pattern; `evaluate_multihead` builds it as one network and measures it.

Every training (the trunk, each fine-tuning run) checkpoints into the cache's run folder of its entry
(`ResultCache.run_dir`, one folder per run, so forked workers never share one) every `checkpoint_every` steps
and resumes from it when killed, with the numbers of an uninterrupted run; the folder is removed once the
entry is stored.
"""
from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .data.errors import DataFormatError, SkipLog
from .data.face_readers import (FER_EMOTIONS, grey_to_tensor, load_face_tensor, read_fairface, read_fer2013,
                                read_identity_folders)
from .data.faces import AGE_BINS, GENDERS, RACES, FacesWorldConfig, build_faces, world_params
from .data.worlds import ensure_world, fingerprint_dir
from .models.face import (FaceNetConfig, FaceTrunk, FrozenPrefixNet, IdentityNet, MultiHeadFaceNet, ProbeBranch,
                          make_branch, prepare_images, probe_patch)
from .progress import bar
from .seeding import seed_everything, step_seed
from .train import TrainConfig, train

ATTRIBUTES = ("age", "gender", "ethnicity", "emotion")
# Centre of each FairFace age bin in years, for age MAE from bin predictions; "more than 70" is taken as 70-85.
AGE_BIN_CENTRES = (1.0, 6.0, 14.5, 24.5, 34.5, 44.5, 54.5, 64.5, 77.5)


@dataclass
class FaceSplit:
    images: torch.Tensor                 # uint8 [N, 3, S, S]
    labels: dict                         # attribute -> LongTensor [N] (class index, -1 = not labelled)
    identity: torch.Tensor               # LongTensor [N] (index into FaceData.identities, -1 = unknown)
    age_years: torch.Tensor              # float [N] (NaN = unknown; then MAE uses the true bin's centre)

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class FaceData:
    pretrain: FaceSplit                  # identity pretraining images (labels: identity only)
    train: FaceSplit                     # attribute fine-tuning images (people unseen in pretraining)
    test: FaceSplit                      # attribute test images (people unseen in both)
    vocab: dict                          # attribute -> tuple of class names
    n_identities: int                    # identities of the pretraining split
    description: str                     # what the data are, for every table
    fingerprint: str                     # changes when the data change (cache keys, provenance)
    skips: SkipLog = field(default_factory=SkipLog)


def _split_from_frame(df: pd.DataFrame, size: int, vocab: dict, skips: SkipLog, id_index: dict | None = None) -> FaceSplit:
    images, kept = load_face_tensor(df["file"], size, skips)
    df = df[kept].reset_index(drop=True)
    labels = {
        "age": torch.tensor(df["age_bin"].to_numpy(), dtype=torch.long),
        "gender": torch.tensor([vocab["gender"].index(g) if g else -1 for g in df["gender"]], dtype=torch.long),
        "ethnicity": torch.tensor([vocab["ethnicity"].index(r) if r else -1 for r in df["race"]], dtype=torch.long),
        "emotion": torch.tensor([vocab["emotion"].index(e) if e else -1 for e in df["emotion"]], dtype=torch.long),
    }
    if id_index is None:  # people of an attribute split are indexed among themselves (for identity checks)
        id_index = {n: i for i, n in enumerate(sorted(set(df["identity"]) - {""}))}
    ids = torch.tensor([id_index.get(i, -1) for i in df["identity"]], dtype=torch.long)
    return FaceSplit(images, labels, ids, torch.tensor(df["age_years"].to_numpy(dtype=np.float32)))


def _cat(a: FaceSplit, b: FaceSplit) -> FaceSplit:
    return FaceSplit(torch.cat([a.images, b.images]), {k: torch.cat([a.labels[k], b.labels[k]]) for k in a.labels},
                     torch.cat([a.identity, b.identity]), torch.cat([a.age_years, b.age_years]))


def _emotion_vocab(*frames) -> tuple:
    present = set().union(*(set(f["emotion"]) for f in frames)) - {""}
    return tuple(e for e in FER_EMOTIONS if e in present)


def world_config(p) -> FacesWorldConfig:
    """The faces world of the notebook's `world` parameters."""
    return FacesWorldConfig(**dict(p["world"]))


def real_paths(p) -> dict:
    """{what: path} of everything read under data_root (the paths in p.data, relative to it)."""
    root, d = Path(p["data_root"]), p["data"]
    out = {"identity folders (data.identity_dir)": root / d["identity_dir"],
           "FairFace training labels (data.fairface_train)": root / d["fairface_train"],
           "FairFace test labels (data.fairface_val)": root / d["fairface_val"],
           "FairFace image root (data.fairface_images)": root / d["fairface_images"]}
    if d.get("fer2013"):
        out["FER2013 CSV (data.fer2013)"] = root / d["fer2013"]
    return out


def require_settings(p) -> None:
    """With a data root, check that every file and folder the notebook reads is there, all named at once,
    before anything is read or trained (DataFormatError)."""
    if not p.get("data_root"):
        return
    missing = [f"{what}: {path}" for what, path in real_paths(p).items()
               if not (path.is_dir() if ("folders" in what or "root" in what) else path.is_file())]
    if missing:
        raise DataFormatError(p["data_root"], "missing under the data root:\n  - " + "\n  - ".join(missing),
                              expected="the layout of p.data (configs/face_attribute_sharing/default.yaml)")


def load_face_data(p, skips: SkipLog | None = None) -> FaceData:
    """The three splits at the model's input size, from the synthetic world (data_root None) or real data.

    Real data under data_root (paths in p.data): a folder-per-identity set for pretraining, FairFace
    label CSVs for age/gender/race (emotion too if they have the column), and optionally FER2013 for
    emotion (Training rows join the attribute-training split, PublicTest/PrivateTest the test split).
    Attributes a dataset lacks are -1 and left out of that attribute's training and scoring.
    """
    skips = skips if skips is not None else SkipLog()
    require_settings(p)
    size = p["model"]["input_size"]
    if p.get("data_root"):
        root = Path(p["data_root"])
        d = p["data"]
        ids_df = read_identity_folders(root / d["identity_dir"], skips, min_images=d["min_images_per_identity"])
        train_df = read_fairface(root / d["fairface_train"], root / d["fairface_images"], skips)
        test_df = read_fairface(root / d["fairface_val"], root / d["fairface_images"], skips)
        description = f"real: identities from {d['identity_dir']}, FairFace {d['fairface_train']} / {d['fairface_val']}"
        fer = None
        if d.get("fer2013"):
            fer_images, fer_df = read_fer2013(root / d["fer2013"])
            fer = (grey_to_tensor(fer_images, size), fer_df)
            description += f", emotion from FER2013 {d['fer2013']}"
        fingerprint = fingerprint_dir(root)
    else:
        wcfg = world_config(p)
        folder = ensure_world("faces", world_params(wcfg), build_faces)
        ids_df = read_identity_folders(folder / "identities", skips)
        train_df = read_fairface(folder / "fairface" / "fairface_label_train.csv", skips=skips)
        test_df = read_fairface(folder / "fairface" / "fairface_label_val.csv", skips=skips)
        fer = None
        description = (f"synthetic faces world ({wcfg.n_pretrain_identities} pretraining identities, "
                       f"{wcfg.n_train_identities}/{wcfg.n_val_identities} attribute train/test identities, "
                       f"{wcfg.photos_per_identity} photos each; FairFace format)")
        fingerprint = fingerprint_dir(folder)
    names = sorted(set(ids_df["identity"]))
    id_index = {n: i for i, n in enumerate(names)}
    frames = [train_df, test_df] + ([fer[1]] if fer else [])
    vocab = {"age": AGE_BINS, "gender": GENDERS, "ethnicity": RACES, "emotion": _emotion_vocab(*frames)}
    if not vocab["emotion"]:
        raise DataFormatError(p.get("data_root") or "faces world", "no emotion labels in any attribute set",
                              expected="an emotion column in the FairFace-style CSV or data.fer2013")
    pretrain = _split_from_frame(ids_df, size, vocab, skips, id_index)
    train_split = _split_from_frame(train_df, size, vocab, skips)
    test_split = _split_from_frame(test_df, size, vocab, skips)
    if fer is not None:
        fer_images, fer_df = fer
        def fer_split(mask):
            n = int(mask.sum())
            lab = {a: torch.full((n,), -1, dtype=torch.long) for a in ATTRIBUTES}
            lab["emotion"] = torch.tensor([vocab["emotion"].index(e) for e in fer_df["emotion"][mask]], dtype=torch.long)
            return FaceSplit(fer_images[torch.from_numpy(np.array(mask))], lab, torch.full((n,), -1, dtype=torch.long),
                             torch.full((n,), float("nan")))
        is_train = (fer_df["usage"] == "Training").to_numpy()
        train_split = _cat(train_split, fer_split(is_train))
        test_split = _cat(test_split, fer_split(~is_train))
    return FaceData(pretrain, train_split, test_split, vocab, len(names), description, fingerprint, skips)


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


def fit_classifier(model: torch.nn.Module, inputs: torch.Tensor, labels: torch.Tensor, section: dict, seed: int,
                   device: str = "cpu", desc: str | None = None, run_dir=None, checkpoint_every: int = 0):
    """Train `model` to classify `inputs` (uint8 images or float features) with cross-entropy, through the
    shared training loop. Batches are a pure function of (seed, step), so a run is reproducible. `desc`:
    a progress bar so labelled. `run_dir`: checkpoints every `checkpoint_every` steps (and at the end) go
    there, and a run finding one resumes from it."""
    bs = int(section["batch_size"])
    n = len(inputs)

    def batch_fn(step):
        g = torch.Generator().manual_seed(step_seed(seed, step))
        idx = torch.randint(0, n, (bs,), generator=g)
        return inputs[idx], labels[idx]

    def step_fn(m, batch):
        x, y = batch
        logits = m(prepare_images(x) if x.dtype == torch.uint8 else x)
        loss = F.cross_entropy(logits, y)
        return loss, {"acc": float((logits.argmax(1) == y).float().mean())}

    seed_everything(seed)
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


@torch.no_grad()
def predict(model: torch.nn.Module, inputs: torch.Tensor, device: str = "cpu", batch: int = 256) -> torch.Tensor:
    """Logits of `model` over `inputs` (uint8 images or float features), in eval mode, on CPU."""
    model.eval().to(device)
    out = []
    for i in range(0, len(inputs), batch):
        x = inputs[i:i + batch].to(device)
        out.append(model(prepare_images(x) if x.dtype == torch.uint8 else x).float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


@torch.no_grad()
def features_at(trunk: FaceTrunk, images: torch.Tensor, depth: int, device: str = "cpu", batch: int = 256) -> torch.Tensor:
    """Frozen trunk features after `depth` stages (the normalised image at depth 0), on CPU."""
    trunk.eval().to(device)
    out = []
    for i in range(0, len(images), batch):
        out.append(trunk(prepare_images(images[i:i + batch].to(device)), 0, depth).cpu())
    return torch.cat(out)


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
    from .evaluate import recall_at_k, retrieve

    known = split.identity >= 0
    if known.sum() < 2:
        return float("nan")
    net.eval().to(device)
    with torch.no_grad():
        emb = torch.cat([net.embed(prepare_images(split.images[known][i:i + 256].to(device))).cpu()
                         for i in range(0, int(known.sum()), 256)])
    top = retrieve(emb, emb, k=1, exclude="self")
    return recall_at_k(top.indices, split.identity[known], split.identity[known], ks=(1,))[1]


def train_identity_trunk(data: FaceData, p, cache=None, device: str = "cpu") -> tuple[FaceTrunk, dict, dict]:
    """Train the identity classifier on the pretraining split (cached); return its trunk, metrics (training
    accuracy, rank-1 identity retrieval on the attribute-test people, wall time) and its cache key (which
    the fine-tuning runs' keys include)."""
    cfg = net_config(p)
    key = {"data": data.fingerprint, "model": asdict(cfg), "trunk": dict(p["trunk"]), "seed": p["seed"],
           "device": str(device)}  # (the fine-tuning runs' keys hold this key, device included)

    def compute(run_dir):
        seed_everything(p["seed"])
        net = IdentityNet(cfg, data.n_identities)
        res = fit_classifier(net, data.pretrain.images, data.pretrain.identity, p["trunk"], p["seed"], device,
                             desc=f"identity trunk ({data.n_identities} people)", run_dir=run_dir,
                             checkpoint_every=p.get("checkpoint_every", 0))
        net = res.model.cpu()
        tail = res.log.tail(max(1, len(res.log) // 10))
        return {"state": net.state_dict(), "train_acc_last10pct": float(tail["acc"].mean()),
                "final_loss": float(tail["loss"].mean()), "wall_s": res.wall_s,
                "test_identity_rank1": identity_rank1(net, data.test, device)}

    out = cached_training(cache, "face_trunk", key, compute)
    net = IdentityNet(cfg, data.n_identities)
    net.load_state_dict(out["state"])
    return net.trunk.eval(), {k: v for k, v in out.items() if k != "state"}, key


IDENTITY_NOT_COMPUTABLE = ("not computable: the attribute test images carry no identity labels (FairFace's CSVs "
                           "have no identity column and FER2013 has none), so there are no unseen people to "
                           "retrieve by identity")


def identity_table(info: dict, data: FaceData, dataset: str) -> tuple[pd.DataFrame, str]:
    """The identity trunk's table (rank-1 identity retrieval among unseen people, training accuracy) with a
    `note` column, and the table's note: where the test images carry no identity labels the retrieval cell is
    empty and the note says why in words."""
    rank1 = info["test_identity_rank1"]
    computable = int((data.test.identity >= 0).sum()) >= 2 and rank1 == rank1  # (NaN != NaN)
    why = "" if computable else IDENTITY_NOT_COMPUTABLE
    rows = [{"method": "identity trunk", "dataset": dataset, "metric": "rank-1 identity retrieval, unseen people",
             "reproduced": float(rank1) if computable else None, "note": why},
            {"method": "identity trunk", "dataset": dataset, "metric": "training accuracy (last 10% of steps)",
             "reproduced": float(info["train_acc_last10pct"]), "note": ""}]
    note = f"Rank-1 identity retrieval, unseen people: {why}." if why else ""
    return pd.DataFrame(rows), note


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
        size = self.data.train.images.shape[-1]
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
        model, x_train, x_test = FrozenPrefixNet(trunk, branch, depth), data.train.images, data.test.images
    else:
        x_train, x_test = bank.get(depth)
        model = branch
    res = fit_classifier(model, x_train[have], y_train[have], p["finetune"], seed, device, run_dir=run_dir,
                         checkpoint_every=p.get("checkpoint_every", 0))
    out = score(attr, predict(res.model, x_test, device), data.test)
    out.update(attribute=attr, method=method, depth=depth, seed=seed, wall_s=res.wall_s,
               trainable_params=sum(q.numel() for q in branch.parameters()))
    if keep_state:
        out["state"] = {k: v.cpu() for k, v in branch.state_dict().items()}
    return out


def grid_jobs(p) -> list[tuple]:
    """(depth, attribute, method, seed) of every run, ordered by depth so frozen features are reused."""
    return [(d, a, m, s) for d in sorted(p["depths"]) for m in ("finetune", "probe") for a in ATTRIBUTES
            for s in p["seeds"]] + [(0, a, "scratch", s) for a in ATTRIBUTES for s in p["seeds"]]


def _job_key(trunk_key: dict, p, job: tuple) -> dict:
    d, a, m, s = job
    return {"trunk": trunk_key, "finetune": dict(p["finetune"]), "control": dict(p["control"]), "attribute": a,
            "method": m, "depth": d, "seed": s, "keep_state": m == "finetune" and s == p["seeds"][0]}


_WORKER: dict = {}  # what forked workers inherit: trunk, data, params, device, threads, and their own FeatureBank


def _run_job(job: tuple, cache_root) -> None:
    """In a worker process: train one run (if not cached) and store it in the cache."""
    from .cache import ResultCache

    w = _WORKER
    torch.set_num_threads(w["threads"])
    if "bank" not in w:
        w["bank"] = FeatureBank(w["trunk"], w["data"], w["device"], w["p"]["finetune"]["feature_cache_mb"])
    d, a, m, s = job
    key = _job_key(w["trunk_key"], w["p"], job)
    cached_training(ResultCache(cache_root), "face_finetune", key, lambda run_dir: finetune_run(
        w["trunk"], w["data"], w["bank"], a, m, d, s, w["p"], key["keep_state"], w["device"], run_dir))


def run_grid(trunk: FaceTrunk, trunk_key: dict, data: FaceData, p, cache=None, device: str = "cpu",
             progress: bool = True) -> tuple[pd.DataFrame, dict]:
    """All fine-tuning runs: finetune and probe at every depth in p.depths, scratch at depth 0, for every
    attribute and seed. Returns (one row per run, {(attr, method, depth, seed): result dict incl. predictions}).

    With a cache and p.parallel.workers > 1 on CPU, runs missing from the cache are trained that many at a
    time in forked processes (p.parallel.threads_per_worker torch threads each; small networks use cores
    better this way than with intra-op threads), then everything is read back from the cache in order.
    Progress (a bar over runs) is shown by this process as runs finish, never by the workers.
    """
    jobs = grid_jobs(p)
    workers = int(p.get("parallel", {}).get("workers", 1))
    todo = [j for j in jobs if cache is None or not cache.path("face_finetune", _job_key(trunk_key, p, j)).is_file()]
    if todo and cache is not None and workers > 1 and device == "cpu":
        from concurrent.futures import ProcessPoolExecutor, as_completed
        import multiprocessing as mp

        _WORKER.clear()
        _WORKER.update(trunk=trunk, trunk_key=trunk_key, data=data, p=p, device=device,
                       threads=int(p["parallel"]["threads_per_worker"]))
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as pool:
            futures = [pool.submit(_run_job, j, cache.root) for j in todo]
            with bar(total=len(futures), desc=f"fine-tuning runs ({workers} processes)", unit="run",
                     disable=not progress) as finished:
                for f in as_completed(futures):
                    f.result()
                    cache.misses.append("face_finetune")  # computed in this session (by a worker): not a warm run
                    finished.update(1)
        _WORKER.clear()
        todo = []
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


def summarize(runs_df: pd.DataFrame) -> pd.DataFrame:
    """Mean, standard deviation, min and max over seeds per (attribute, method, depth)."""
    g = runs_df.groupby(["attribute", "method", "depth"])
    out = g["accuracy"].agg(["mean", "std", "min", "max", "count"]).reset_index()
    mae = runs_df.dropna(subset=["mae_years"]) if "mae_years" in runs_df else runs_df.iloc[:0]
    if len(mae):
        m = mae.groupby(["attribute", "method", "depth"])["mae_years"].agg(["mean", "std"]).reset_index()
        out = out.merge(m.rename(columns={"mean": "mae_mean", "std": "mae_std"}), how="left",
                        on=["attribute", "method", "depth"])
    params = runs_df.groupby(["attribute", "method", "depth"])["trainable_params"].first().reset_index()
    return out.merge(params, on=["attribute", "method", "depth"]).fillna({"std": 0.0})


# ------------------------------------------------------------------ claims

@dataclass
class DepthGain:
    attribute: str
    best_depth: int                     # the earlier depth (< last) with the best mean accuracy
    gain: float                         # mean accuracy there minus mean accuracy at the last depth (head only)
    spread: float                       # the larger range (max - min over seeds) of the two depths
    per_seed_gains: list                # gain per seed (same seed at both depths)


def depth_gain(runs_df: pd.DataFrame, attr: str, method: str = "finetune") -> DepthGain:
    """How much `attr` gains by branching earlier than the penultimate layer, against the seed spread."""
    r = runs_df[(runs_df.attribute == attr) & (runs_df.method == method)]
    last = int(r.depth.max())
    means = r.groupby("depth")["accuracy"].mean()
    earlier = means.drop(index=last)
    best = int(earlier.idxmax())
    rng = r.groupby("depth")["accuracy"].agg(lambda v: v.max() - v.min())
    a = r[r.depth == best].set_index("seed")["accuracy"]
    b = r[r.depth == last].set_index("seed")["accuracy"]
    return DepthGain(attr, best, float(means[best] - means[last]), float(max(rng[best], rng[last])),
                     [float(a[s] - b[s]) for s in a.index if s in b.index])


def depth_claims(runs_df: pd.DataFrame) -> list[tuple[str, bool, str, float]]:
    """The paper's depth claims judged on the measured runs, as (claim, passed, detail, measured gain).

    Criteria fixed before looking at results: emotion and age each gain more than the seed spread (the
    larger max-min range over seeds of the two depths compared); gender and ethnicity each gain less than
    half of emotion's gain ("little"). The best earlier depth is chosen by mean accuracy, which slightly
    favours a gain; the per-seed gains are printed so a reader can judge.
    """
    g = {a: depth_gain(runs_df, a) for a in ATTRIBUTES}
    out = []
    for a in ("emotion", "age"):
        x = g[a]
        out.append((f"{a} is more accurate fine-tuned from an earlier stage than from the penultimate layer",
                    x.gain > x.spread and x.gain > 0,
                    f"best earlier depth {x.best_depth}: +{x.gain:.3f} over head-only (seed spread {x.spread:.3f}; "
                    f"per-seed gains {', '.join(f'{v:+.3f}' for v in x.per_seed_gains)})", x.gain))
    e = g["emotion"].gain
    for a in ("gender", "ethnicity"):
        x = g[a]
        out.append((f"{a} gains little from earlier branching",
                    x.gain < 0.5 * max(e, 0.0),
                    f"best earlier depth {x.best_depth}: {x.gain:+.3f} over head-only vs emotion {e:+.3f} "
                    f"(criterion: under half of emotion's gain)", x.gain))
    return out


# ------------------------------------------------------------------ the chosen multi-head network

def mean_accuracy_table(summary: pd.DataFrame, method: str = "finetune") -> dict:
    """{attribute: {depth: mean accuracy over seeds}} for the sharing search."""
    s = summary[summary.method == method]
    return {a: dict(zip(s[s.attribute == a].depth, s[s.attribute == a]["mean"])) for a in ATTRIBUTES}


def build_multihead(trunk: FaceTrunk, pattern: dict, runs: dict, data: FaceData, seed: int) -> MultiHeadFaceNet:
    """The chosen pattern as one network, with the branches fine-tuned for `seed` at their depths."""
    branches = {}
    for a, d in pattern.items():
        br = make_branch(trunk, d, len(data.vocab[a]))
        br.load_state_dict(runs[(a, "finetune", d, seed)]["state"])
        branches[a] = br
    return MultiHeadFaceNet(trunk, branches).eval()


@torch.no_grad()
def evaluate_multihead(net: MultiHeadFaceNet, data: FaceData, device: str = "cpu", batch: int = 256) -> dict:
    """{attribute: score dict} of one forward pass per batch of test images."""
    net.eval().to(device)
    logits = {a: [] for a in net.branches}
    for i in range(0, len(data.test), batch):
        out = net(prepare_images(data.test.images[i:i + batch].to(device)))
        for a, v in out.items():
            logits[a].append(v.float().cpu())
    return {a: score(a, torch.cat(v), data.test) for a, v in logits.items()}


def confusion(pred: torch.Tensor, true: torch.Tensor, n: int) -> np.ndarray:
    """Counts [true class, predicted class] over labelled images."""
    m = true >= 0
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (true[m].numpy(), pred[m].long().numpy()), 1)
    return cm


def control_summary(runs_df: pd.DataFrame) -> pd.DataFrame:
    """Fine-tuning vs the equal-capacity probe: mean accuracy per attribute and depth side by side, with the
    trainable parameters of each (the probe's are nearly constant, fine-tuning's grow as the branch deepens)."""
    s = summarize(runs_df)
    s = s[s.method.isin(["finetune", "probe"])]
    acc = s.pivot_table(index=["attribute", "depth"], columns="method", values="mean")
    par = s.pivot_table(index=["attribute", "depth"], columns="method", values="trainable_params")
    out = acc.join(par, rsuffix="_params").rename(columns={"finetune": "fine-tune acc", "probe": "probe acc",
                                                           "finetune_params": "fine-tune params",
                                                           "probe_params": "probe params"})
    return out.reset_index()


def named_patterns(patterns: pd.DataFrame, summary: pd.DataFrame, p) -> dict:
    """The baseline patterns as rows of `patterns`: head only (all at the deepest depth), separate networks
    (all at depth 0, when tried) and the best depth per attribute regardless of cost."""
    depths = sorted(p["depths"])
    acc = mean_accuracy_table(summary)
    best = {a: max(acc[a], key=acc[a].get) for a in ATTRIBUTES}
    want = {"head only (share everything)": {a: depths[-1] for a in ATTRIBUTES},
            "best depth per attribute (no budget)": best}
    if depths[0] == 0:
        want["separate networks (share nothing)"] = {a: 0 for a in ATTRIBUTES}
    from .sharing import pattern_name
    return {k: patterns[patterns.pattern == pattern_name(v)].iloc[0] for k, v in want.items()}


def patterns_to_show(patterns: pd.DataFrame, front: pd.Series, chosen: pd.Series, named: dict) -> pd.DataFrame:
    """The Pareto front, the chosen pattern and the named baselines, with their role."""
    shown = patterns[front].assign(role="Pareto front")
    extra = [chosen.to_frame().T.assign(role="chosen (within budget)")]
    extra += [r.to_frame().T.assign(role=name) for name, r in named.items()]
    out = pd.concat([*extra, shown], ignore_index=True)
    out = out.groupby("pattern", sort=False).agg({**{c: "first" for c in out.columns if c not in ("pattern", "role")},
                                                  "role": lambda v: "; ".join(dict.fromkeys(v))}).reset_index()
    return out.sort_values("flops").reset_index(drop=True)


def loss_vs_separate(patterns: pd.DataFrame, chosen: pd.Series, p) -> float:
    """Mean accuracy of one separate network per attribute (all at depth 0) minus the chosen pattern's."""
    from .sharing import pattern_name
    sep = patterns[patterns.pattern == pattern_name({a: min(p["depths"]) for a in ATTRIBUTES})].iloc[0]
    return float(sep["mean_accuracy"] - chosen["mean_accuracy"])


def baselines_table(summary: pd.DataFrame, patterns: pd.DataFrame, chosen: pd.Series, named: dict, one_pass: dict,
                    counted: dict, dataset: str, p) -> pd.DataFrame:
    """Tidy table: the chosen multi-head network against head-only, separate networks, from-scratch networks
    and the best depth per attribute: per-attribute accuracy (mean over seeds), mean accuracy, age MAE, cost."""
    rows = []
    s = summary.set_index(["attribute", "method", "depth"])

    def add(method, accs, mae, cost):
        base = {"method": method, "dataset": dataset}
        rows.extend({**base, "metric": f"{a} accuracy", "reproduced": v} for a, v in accs.items())
        rows.append({**base, "metric": "mean accuracy", "reproduced": sum(accs.values()) / len(accs)})
        rows.append({**base, "metric": "age MAE (years)", "reproduced": mae})
        rows.extend([{**base, "metric": "GFLOPs (2 per multiply-add)", "reproduced": cost["flops"] / 1e9},
                     {**base, "metric": "GMACs (multiply-adds)", "reproduced": cost["macs"] / 1e9},
                     {**base, "metric": "parameters (M)", "reproduced": cost["params"] / 1e6}])

    def from_pattern(row):
        pat = {a: int(row[f"depth_{a}"]) for a in ATTRIBUTES}
        return ({a: float(row[f"acc_{a}"]) for a in ATTRIBUTES}, float(s.loc[("age", "finetune", pat["age"]), "mae_mean"]),
                {k: row[k] for k in ("flops", "macs", "params")})

    add(f"chosen: {chosen['pattern']} (mean over seeds)", *from_pattern(chosen))
    add(f"chosen as one multi-head network, one forward pass (seed {p['seeds'][0]})",
        {a: one_pass[a]["accuracy"] for a in ATTRIBUTES}, one_pass["age"]["mae_years"], counted)
    for name, row in named.items():
        add(f"{name}: {row['pattern']}", *from_pattern(row))
    if ("age", "scratch", 0) in s.index and "separate networks (share nothing)" in named:
        sep = named["separate networks (share nothing)"]
        add("separate networks trained from scratch (no identity pretraining)",
            {a: float(s.loc[(a, "scratch", 0), "mean"]) for a in ATTRIBUTES}, float(s.loc[("age", "scratch", 0), "mae_mean"]),
            {k: sep[k] for k in ("flops", "macs", "params")})
    return pd.DataFrame(rows)


def prediction_examples(data: FaceData, n: int, seed: int = 0) -> list:
    """`n` test images spread over people (a fixed, seeded choice) for the predictions figure."""
    g = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(len(data.test), generator=g)[:n].tolist())
