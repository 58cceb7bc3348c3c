"""The CFQ paper's experiment grid, at any preset: the dual encoders, pretraining, the runs and their evaluation.

The flow, as the released experiment scripts run it:

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

Beside it (issue 16): "scratch-fiq-va-lr", the same from-scratch arm at CLIP VA's learning rate, so that the
pretraining comparison does not rest on one arm trained at 10x the other's rate; and the paper's two controls for
misaligned pretraining, CLIP VA fine-tuned on FIQ from a dual encoder whose text projection's columns are
permuted ("clip-scramble-fiq") or whose text tower is another independently pretrained dual encoder's
("clip-mismatch-fiq"; `misalign`). The paper's extra datasets (Birds-to-Words, MIT-States) are scored by
`run_extra`: a model of the grid trained a few steps on the dataset's own pairs, Recall@k on its test queries.

Both cores: `prefetch(jobs())` trains every run the notebook needs (grid, claims' seeds, sweep, extra datasets) in
`workers` forked processes, longest first, after computing once what they share (the two pretrainings, also in
two processes; the frozen features; the frozen text model's states of every caption); each stores its result in
the cache, which the notebook's later calls read.

Beyond the paper, a data-limited sweep (`data_limited` in the presets) retrains some runs on nested shares
of the Fashion IQ-style training pairs: the paper fine-tunes a model pretrained on 400M pairs with 18k
triplets, while the embedded default's pretraining corpus is a few thousand captions, so how much the
pretraining is worth may hinge on how little task data there is.

Training seeds: `run(..., seed=s)` trains a run again with another training seed (its new layers, the
from-scratch model and the batches drawn with `s`), on the same pretrained dual encoder, worlds and data (those
of the preset's `seed`); `run_seeds` does so for the runs the paper's claims compare (`claim_tests.seeds`
seeds). Every evaluation also keeps per-item scores (`PER_ITEM`: per Fashion IQ-style query, per CFQ group) with
their items' keys and clusters, what `claims.decide` compares.

Small-scale choices (each stated where a table is written):
- With `model.freeze_backbone` (the embedded default), the image backbone is frozen after pretraining and
  its features are computed once (the paper trains the pretrained weights at one tenth of the new weights'
  rate, 1e-6 vs 1e-5; here that rate is zero for the backbone while the image projection and the text tower
  keep the lower rate). The paper preset trains the backbone at the lower rate. No image augmentation.
- The MiniLM text model is frozen; the text tower's trainable Transformer block on top of it is what
  pretraining and fine-tuning change.
Training runs and their evaluations are cached (`result_cache()`: keyed on this module's import closure, so
a rerun only redraws and a restyled table or figure retrains nothing). Each training (pretraining, every stage
of every run) checkpoints into the cache's run folder of its entry (`ResultCache.run_dir`) every
`checkpoint_every` steps, so a killed run resumes where it stopped with the numbers an uninterrupted run gives;
the folder is removed once the entry is stored.
"""
from __future__ import annotations

import shutil
import time

import numpy as np
import torch
import torch.nn.functional as F

from ... import cfq_metrics as cm
from ... import progress as prog  # (`progress` and `stage` name a flag and training stages here)
from ...cache import ResultCache
from ...evaluate import embed as embed_rows
from ...evaluate import search
from ...forked import run_forked, shared
from ...losses import BatchSoftmaxLoss
from ...models import clip as clipmod
from ...samplers import UniformBatches
from ...seeding import step_seed
from .data import CFQPaperData, ImageIndex, PairSet, attribute_caption

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
    "scratch-fiq-va-lr": ("va", ("fiq",), False),
    "clip-scramble-fiq": ("va", ("fiq",), True),
    "clip-mismatch-fiq": ("va", ("fiq",), True),
    "random": ("random", (), False),
}
# Runs that differ from their kind's default in one respect:
# - "scratch-fiq-va-lr": the from-scratch arm at the CLIP VA rate (`train.va_lr`) instead of the new-parameter rate
#   (`train.fiq.lr`, 10x higher on the default): the pretrained and the from-scratch arm at one learning rate;
# - the paper's controls for misaligned pretraining, CLIP VA fine-tuned on FIQ from a pretrained dual encoder whose
#   text side no longer matches its image side: "scramble", the text projection's input columns permuted (drawn
#   with the training seed); "mismatch", the text tower and projection of a second dual encoder pretrained
#   independently (`model.mismatch_seed` on the embedded default, `model.mismatch_clip_path` on the paper preset).
VA_LR_RUNS = ("scratch-fiq-va-lr",)
MISALIGNED = {"clip-scramble-fiq": "scramble", "clip-mismatch-fiq": "mismatch"}


def result_cache(root=None) -> ResultCache:
    """The cache of this paper's runs, keyed on the code that computes them (this module's import closure)."""
    return ResultCache(root, code=__name__)


# ------------------------------------------------------------------------------------------------- images

class Pixels:
    """Float pixels of store images as the model takes them: (uint8 / 255 - mean) / std per channel."""

    def __init__(self, images: ImageIndex | None, mean, std):
        self.images = images
        self.mean, self.std = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)

    def __call__(self, idx) -> torch.Tensor:
        return (self.images.store().get(idx).float() / 255.0 - self.mean) / self.std


@torch.no_grad()
def backbone_features(clip: clipmod.DualEncoder, pixels: Pixels, batch: int = 256, device: str = "cpu") -> dict:
    """The (frozen) image backbone's features of every stored image: {name: tensor [N, ...]} on the CPU."""
    clip.eval()
    parts: dict[str, list] = {}
    n = len(pixels.images)
    for start in range(0, n, batch):
        idx = list(range(start, min(start + batch, n)))
        feats = clip.image.backbone_features(pixels(idx).to(device))
        for k, v in feats.items():
            parts.setdefault(k, []).append(v.cpu())
    return {k: torch.cat(v) for k, v in parts.items()}


class ImageInputs:
    """What a model is fed for image indices: cached backbone features, or pixels (a model whose backbone
    still trains)."""

    def __init__(self, pixels: Pixels | None, features: dict | None = None, device: str = "cpu"):
        self.pixels, self.features, self.device = pixels, features, device

    def __call__(self, idx):
        idx = torch.as_tensor(idx, dtype=torch.long)
        if self.features is not None:
            return {k: v[idx].to(self.device) for k, v in self.features.items()}
        return self.pixels(idx).to(self.device)


# --------------------------------------------------------------------------------------------- evaluation

def embed(model, inputs: ImageInputs, idx, texts=None, batch: int = 256) -> torch.Tensor:
    """L2-normalised query embeddings (with `texts`) or catalog embeddings of stored images `idx`.

    (Normalised here, on the CPU after the copy, as this paper always has: evaluate.embed would normalise on the
    model's device first, which on a GPU can move the last bit.)"""
    model.eval()
    idx = list(idx)

    def rows(pos: torch.Tensor) -> torch.Tensor:
        pos = pos.tolist()
        x = inputs([idx[i] for i in pos])
        e = model.embed_catalog(x) if texts is None else model.compose(x, [texts[i] for i in pos])
        return F.normalize(e.float().cpu(), dim=-1)

    return embed_rows(rows, len(idx), batch_size=batch, normalize=False)


def fiq_evaluation(model, inputs: ImageInputs, fiq_val: dict) -> tuple[dict, np.ndarray, list]:
    """`evaluate_fiq`'s numbers, plus each validation query's own score (hit@10 + hit@50) / 2 (1/0 hits, the
    same definition as Recall@k: a relevant item among the first k, k capped at the retrievable items) and its
    reference image (the query's cluster), queries in category order then file order."""
    out, per_query, refs = {}, [], []
    for cat, d in fiq_val.items():
        q = embed(model, inputs, d["refs"], d["texts"])
        g = embed(model, inputs, d["gallery"])
        q_labels, g_labels = torch.tensor(d["query_labels"]), torch.tensor(d["gallery_labels"])
        r = search(q, g, q_labels, g_labels, (10, 50), exclude=torch.tensor(d["exclude"]))
        out[f"{cat} R@10"], out[f"{cat} R@50"] = r.percent()["R@10"], r.percent()["R@50"]
        hits = g_labels[r.indices] == q_labels.unsqueeze(1)
        hit = {k: hits[:, :min(k, r.k_cap)].any(1).double().numpy() for k in (10, 50)}
        per_query.append((hit[10] + hit[50]) / 2)
        refs += [int(i) for i in d["refs"]]
    cats = list(fiq_val)
    out["avg R@10"] = float(np.mean([out[f"{c} R@10"] for c in cats]))
    out["avg R@50"] = float(np.mean([out[f"{c} R@50"] for c in cats]))
    out["(R@10+R@50)/2"] = (out["avg R@10"] + out["avg R@50"]) / 2
    return out, np.concatenate(per_query) if per_query else np.zeros(0), refs


def evaluate_fiq(model, inputs: ImageInputs, fiq_val: dict) -> dict:
    """Recall@10 and @50 per category (reference excluded from its own ranking), their means and
    (R@10 + R@50) / 2 overall, as the Fashion IQ protocol reports them."""
    return fiq_evaluation(model, inputs, fiq_val)[0]


def evaluate_imat(model, inputs: ImageInputs, d: dict) -> dict:
    q = embed(model, inputs, d["refs"], d["texts"])
    g = embed(model, inputs, d["gallery"])
    m = cm.imat_retrieval_metrics((q @ g.T).numpy(), d["target_labels"], d["gallery_labels"])
    return {"ROC-AUC": 100 * m["roc_auc"], "mAP": 100 * m["mAP"]}


def cfq_scores(model, inputs: ImageInputs, data: CFQPaperData) -> np.ndarray:
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


# The per-item scores a claim compares (claims.decide), by name: the names a claim's `metric` uses.
FIQ_ITEM = "FIQ (hit@10+hit@50)/2"          # per Fashion IQ-style validation query; cluster: its reference image
CFQ_ITEMS = {"CFQ accurate AP": cm.PRIMARY["accurate mAP"],   # per judged (query image, caption) group where the
             "CFQ similar AP": cm.PRIMARY["similar mAP"],     # quantity is defined (both classes; nDCG: two items
             "CFQ nDCG": cm.PRIMARY["nDCG"]}                  # and a relevant one); cluster: the query image
PER_ITEM = (FIQ_ITEM, *CFQ_ITEMS)


def cfq_per_group(per_group, group_by: str = "query_caption") -> dict:
    """From `cfq_metrics(...).per_group`: {name in CFQ_ITEMS: (scores [groups], keys, clusters)} over the groups
    where the quantity is defined (a property of the labels alone, so the same groups for every model), in the
    table's order (subset, then group). Their mean per subset, weighted by the subset's query images, is the
    primary metric of the same name; the claims pool the groups of every subset instead."""
    out = {}
    for name, (metric, label) in CFQ_ITEMS.items():
        column = "ap" if metric == "m_ap" else metric
        rows = per_group[(per_group["label"] == label)]
        rows = rows[rows[column].notna()]
        keys = [f"{s}/{'/'.join(map(str, g))}" for s, g in zip(rows["subset"], rows["group"])]
        clusters = [str(g[0]) if group_by == "query_caption" else "/".join(map(str, g)) for g in rows["group"]]
        out[name] = (rows[column].to_numpy(dtype=float), keys, clusters)
    return out


def evaluate_all(model, inputs: ImageInputs, data: CFQPaperData, group_by: str = "query_caption") -> dict:
    """FIQ recall, iMat ROC-AUC/mAP and CFQ (primary metrics, full table, scores) of one model, and the
    per-item scores of `PER_ITEM` ("per_item": {name: scores}, "items": {name: {"keys", "clusters"}})."""
    scores = cfq_scores(model, inputs, data)
    result = cm.cfq_metrics(data.cfq_agg, scores, group_by=group_by)
    fiq, fiq_items, refs = fiq_evaluation(model, inputs, data.fiq_val)
    per_item = {FIQ_ITEM: fiq_items}
    items = {FIQ_ITEM: {"keys": [f"{c}/{i}" for c, d in data.fiq_val.items() for i in range(len(d["refs"]))],
                        "clusters": refs}}
    for name, (values, keys, clusters) in cfq_per_group(result.per_group, group_by).items():
        per_item[name], items[name] = values, {"keys": keys, "clusters": clusters}
    return {"fiq": fiq, "imat": evaluate_imat(model, inputs, data.imat_val),
            "cfq_primary": {k: 100 * v for k, v in result.primary().items()}, "cfq_table": result.table,
            "cfq_scores": scores, "per_item": per_item, "items": items}


# ----------------------------------------------------------------------------------------------- training

def composed_batches(pairs: PairSet, inputs: ImageInputs, batch_size: int, seed: int):
    """batch_fn(step) for the train loop: a pure function of the step (distinct pairs, one caption each, drawn
    from the step's stream after the pairs)."""
    draw = UniformBatches(len(pairs), batch_size, seed, "shrink")

    def batch_fn(step: int) -> dict:
        batch = draw(step)
        pick, rng = batch.indices, batch.rng
        texts = [pairs.captions[i][rng.integers(len(pairs.captions[i]))] for i in pick]
        return {"source": inputs(pairs.refs[pick]), "texts": texts, "target": inputs(pairs.targets[pick])}
    return batch_fn


_SOFTMAX = BatchSoftmaxLoss()


def composed_step(model, batch):
    logits = model(batch["source"], batch["texts"], batch["target"])
    loss = _SOFTMAX(logits)
    acc = (logits.argmax(1) == torch.arange(len(logits), device=logits.device)).float().mean().item()
    return loss, {"batch_acc": acc}


def contrastive_batches(pixels: Pixels, images: np.ndarray, rows: list, batch_size: int, seed: int,
                        device: str = "cpu"):
    """batch_fn(step) of contrastive pretraining: distinct photos, one attribute caption each."""
    draw = UniformBatches(len(images), batch_size, seed, "shrink")

    def batch_fn(step: int) -> dict:
        batch = draw(step)
        pick, rng = batch.indices, batch.rng
        return {"images": pixels(images[pick]).to(device), "texts": [attribute_caption(rows[i], rng) for i in pick]}
    return batch_fn


def contrastive_step(model, batch):
    return model.contrastive_loss(batch["images"], batch["texts"])


def stored_state(model: torch.nn.Module) -> dict:
    """A model's state without the frozen MiniLM weights (those load from their local folder)."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if ".source.model." not in k}


def misalign(clip: clipmod.DualEncoder, how: str, seed: int, other_state: dict | None = None) -> None:
    """Break the alignment of a pretrained dual encoder's text side with its image side, in place (the paper's
    controls for misaligned pretraining): "scramble" permutes the input columns of the text projection (a
    permutation drawn with `seed`: the text features are those pretraining gave, their map into the joint space
    is not); "mismatch" loads the text tower and text projection of another, independently pretrained dual
    encoder (`other_state`, a state of the same architecture). Either way each tower alone is as pretrained as
    before; only their agreement is gone."""
    if how == "scramble":
        w = clip.text_projection.weight
        perm = torch.randperm(w.shape[1], generator=torch.Generator().manual_seed(step_seed(seed, 0, 11)))
        with torch.no_grad():
            w.copy_(w[:, perm].clone())
    elif how == "mismatch":
        if other_state is None:
            raise ValueError("the mismatch control needs the other dual encoder's state")
        text = {k: v for k, v in other_state.items() if k.startswith(("text.", "text_projection."))}
        if not text:
            raise ValueError("the other dual encoder's state has no text tower (keys text.* / text_projection.*)")
        clip.load_state_dict(text, strict=False)
    else:
        raise ValueError(f"unknown misalignment {how!r}; expected 'scramble' or 'mismatch'")


# Forked worker processes (`CFQExperiment._in_workers`) inherit the experiment, its data, the frozen backbone's
# features and the text cache from the parent (`forked.shared()["exp"]`); each stores its result in the cache,
# from which the parent then reads it.
def _worker_setup() -> "CFQExperiment":
    exp = shared()["exp"]
    exp.progress = False  # progress is the parent's: one bar over finished jobs
    return exp


def _worker_pretrain(which: str) -> str:
    _worker_setup().pretrained_state(which)
    return which


def _worker_run(job: tuple) -> tuple:
    exp = _worker_setup()
    if job[0] == EXTRA_JOB:
        exp.run_extra(job[1], job[2])
    else:
        exp.run(*job)
    return job


EXTRA_JOB = "extra"  # jobs ("extra", dataset, run): a model of the grid trained and scored on an extra dataset


def extra_evaluation(model, inputs: ImageInputs, test: dict, ks) -> dict:
    """Recall@k (percent) of one extra dataset's test queries, the reference dropped from its own ranking."""
    q = embed(model, inputs, test["refs"], test["texts"])
    g = embed(model, inputs, test["gallery"])
    r = search(q, g, torch.tensor(test["query_labels"]), torch.tensor(test["gallery_labels"]), tuple(ks),
               exclude=torch.tensor(test["exclude"]))
    return r.percent()


# ---------------------------------------------------------------------------------------------- the grid

class CFQExperiment:
    """The grid of one preset: builds dual encoders, trains and evaluates each run (cached), keeps results.

    p: the notebook's Params (see configs/cfq_evaluation/default.yaml for every field); data: `load_data(p)`;
    cache: `result_cache()` unless given.
    """

    def __init__(self, p, data: CFQPaperData, cache: ResultCache | None = None, progress: bool = True):
        self._setup(p, cache, progress)
        self.data = data

    def _setup(self, p, cache, progress: bool) -> None:
        self.p, self.cache, self.progress = p, cache or result_cache(), progress
        self.device = p.get("device", "cpu")
        m = p["model"]
        self.mean, self.std = ((clipmod.CLIP_MEAN, clipmod.CLIP_STD) if m["clip_path"] else ((0.5,) * 3, (0.25,) * 3))
        self.data = None
        self._tokens = None
        self._features = None
        self.pretrain_log = None                              # contrastive pretraining's log (embedded default)
        self.results: dict[str, dict] = {}                    # run -> result, full Fashion IQ training set
        self.limited: dict[tuple[str, float], dict] = {}      # (run, share of FIQ pairs) -> result
        self.seeded: dict[tuple[str, int], dict] = {}         # (run, training seed other than `seed`) -> result
        self.extra_results: dict[tuple[str, str], dict] = {}   # (extra dataset, run) -> result
        self.timings: dict[str, float] = {}

    @classmethod
    def models_only(cls, p, cache=None, progress: bool = False) -> "CFQExperiment":
        """An experiment that reads no data: builds models (`new_clip`, `pretrained_clip`, `build` of runs on
        pixels) for inspection and tests."""
        exp = cls.__new__(cls)
        exp._setup(p, cache, progress)
        return exp

    def pixels(self) -> Pixels:
        """The model's view of the data's images (normalised with the dual encoder's mean and std)."""
        return Pixels(None if self.data is None else self.data.images, self.mean, self.std)

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

    def pretrain_key(self, seed: int | None = None) -> dict:
        """The key of the multimodal pretraining drawn with `seed` (None: the preset's; the mismatch control's
        second dual encoder: `pretrain.mismatch_seed`)."""
        pretrain = {k: v for k, v in dict(self.p["pretrain"]).items() if k != "mismatch_seed"}
        return {"model": dict(self.p["model"]), "pretrain": pretrain, "seed": self.p["seed"] if seed is None else seed,
                "data": self.data_key(), "device": str(self.device)}  # a CPU result is never a GPU run's

    def pretrain_seed(self, which: str = "main") -> int:
        """The seed of the main dual encoder's pretraining, or of the mismatch control's second one."""
        if which not in ("main", "mismatch"):
            raise ValueError(f"which dual encoder: 'main' or 'mismatch', got {which!r}")
        return self.p["seed"] if which == "main" else int(self.p["pretrain"]["mismatch_seed"])

    # -- models
    def new_clip(self, seed: int | None = None) -> clipmod.DualEncoder:
        """The dual encoder before any multimodal pretraining, drawn with `seed` (None: the preset's): the local
        CLIP's architecture with a random initialisation (paper preset), or the small dual encoder (embedded
        default). The "no pretraining" arm starts here; the pretrained arms load their weights on top of it."""
        m = self.p["model"]
        seed = self.p["seed"] if seed is None else seed
        if m["clip_path"]:
            return clipmod.random_clip(m["clip_path"], seed=seed)
        if self._tokens is None:
            self._tokens = clipmod.FrozenMiniLMTokens(m["text_model_path"])
        torch.manual_seed(seed)
        return clipmod.small_clip(m["embed_dim"], tuple(m["widths"]), tokens=self._tokens, text_width=m["text_width"],
                                  text_heads=m["text_heads"], dropout=m["dropout"])

    def pretrained_state(self, which: str = "main") -> dict:
        """The dual encoder after multimodal pretraining (trained here on the embedded default; a real
        CLIP's own weights on the paper preset). `which="mismatch"`: the second, independently pretrained
        one whose text side the mismatch control uses (pretrained the same way with `pretrain.mismatch_seed`;
        on the paper preset the CLIP under `model.mismatch_clip_path`)."""
        m = self.p["model"]
        seed = self.pretrain_seed(which)
        if m["clip_path"]:
            if which == "mismatch":
                if not m["mismatch_clip_path"]:
                    raise ValueError("the mismatch control (run clip-mismatch-fiq) needs a second CLIP: set "
                                     "model.mismatch_clip_path to a local CLIP folder with the same architecture")
                return stored_state(clipmod.load_clip(m["mismatch_clip_path"]))
            self.pretrain_log = None  # nothing is trained here: the CLIP's own weights
            return stored_state(clipmod.load_clip(m["clip_path"]))
        key = self.pretrain_key(seed)
        label = "contrastive pretraining" + ("" if which == "main" else " (mismatch control's second encoder)")

        def compute():
            from ...train import TrainConfig, train

            t = self.p["pretrain"]
            clip = self.new_clip(seed).to(self.device)
            cfg = TrainConfig(steps=t["steps"], lr=t["lr"], optimizer="adam", weight_decay=t["weight_decay"],
                              seed=seed, progress=self.progress, device=self.device, log_every=50,
                              desc=label, checkpoint_every=self.p["checkpoint_every"])
            start = time.time()
            batches = contrastive_batches(self.pixels(), self.data.pretrain_images, self.data.pretrain_rows,
                                          t["batch_size"], seed, self.device)
            res = train(clip, contrastive_step, batches, cfg, run_dir=self.cache.run_dir("cfq_pretrain", key))
            return {"state": stored_state(res.model), "log": res.log, "wall_s": time.time() - start}

        out = self._cached_training("cfq_pretrain", key, compute)
        self.timings.setdefault("pretrain" if which == "main" else "pretrain (mismatch control)", out["wall_s"])
        if which == "main":
            self.pretrain_log = out["log"]
        return out["state"]

    def pretrain_all(self, mismatch: bool = True) -> None:
        """Both pretrainings (the main dual encoder's and, with `mismatch`, the mismatch control's second one),
        at once in two forked processes when both are missing and `workers` > 1 (each is one process's work:
        this is where the second core would otherwise idle), then loaded here."""
        import os

        which = ["main", "mismatch"] if mismatch else ["main"]
        if (not self.p["model"]["clip_path"] and int(self.p["workers"]) > 1 and str(self.device) == "cpu"
                and not os.environ.get("VISUALSEARCH_NO_CACHE")):
            todo = [w for w in which if not self.cache.has("cfq_pretrain", self.pretrain_key(self.pretrain_seed(w)))]
            if len(todo) > 1:
                if self._tokens is None:
                    self.new_clip()  # the frozen text model, loaded once for both processes
                self._in_workers(_worker_pretrain, todo, "contrastive pretraining of two dual encoders")
        for w in which:
            self.pretrained_state(w)

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

    def pretrained_clip(self, seed: int | None = None, misaligned: str | None = None) -> clipmod.DualEncoder:
        """The dual encoder after multimodal pretraining: the local CLIP as loaded (paper preset) or the small
        dual encoder with its pretrained weights (pretrained with the preset's `seed` whatever `seed` is: a
        training seed draws what is built on it). `misaligned`: None, or a control for misaligned pretraining
        (`misalign`)."""
        seed = self.p["seed"] if seed is None else seed
        if self.p["model"]["clip_path"]:
            self.pretrain_log = None
            clip = clipmod.load_clip(self.p["model"]["clip_path"])
            # new layers built on it draw from the seed, as on the embedded default (where new_clip seeds):
            # never from whatever ran before (runs loaded from the cache or not)
            torch.manual_seed(seed)
        else:
            clip = self.new_clip(seed)
            clip.load_state_dict(self.pretrained_state(), strict=False)
        if misaligned is not None:
            misalign(clip, misaligned, seed, self.pretrained_state("mismatch") if misaligned == "mismatch" else None)
        if self.p["model"]["freeze_backbone"]:
            clip.freeze_backbone()
        return clip.to(self.device)

    def features(self) -> dict:
        """The frozen pretrained backbone's features of every stored image (computed once per session)."""
        if self._features is None:
            clip = self.pretrained_clip()
            with prog.stage(f"frozen backbone features of {len(self.data.images)} images",
                            disable=not self.progress):
                self._features = backbone_features(clip, self.pixels(), device=self.device)
        return self._features

    def build(self, run: str, seed: int | None = None):
        """The model of `run` before its training stages, what is new in it drawn with the training `seed`
        (None: the preset's), and the inputs it is fed."""
        kind, _, pretrained = RUNS[run]
        m = self.p["model"]
        seed = self.p["seed"] if seed is None else seed
        if kind == "random":
            return clipmod.RandomEmbeddings(m["embed_dim"], seed=seed), ImageInputs(self.pixels(), None, self.device)
        if pretrained:
            clip = self.pretrained_clip(seed, MISALIGNED.get(run))
            frozen = self.p["model"]["freeze_backbone"]
            inputs = ImageInputs(self.pixels(), self.features() if frozen else None, self.device)
        else:
            clip = self.new_clip(seed).to(self.device)
            inputs = ImageInputs(self.pixels(), None, self.device)
        model = clipmod.build_composition(kind, clip, heads=m["heads"], ff_width=m["ff_width"], blocks=m["blocks"],
                                          dropout=m["dropout"], seed=seed, freeze_bn=pretrained)
        return model.to(self.device), inputs

    # -- runs
    def run_key(self, run: str, fiq_share: float = 1.0, seed: int | None = None) -> dict:
        kind, stages, pretrained = RUNS[run]
        t = self.p["train"]
        misaligned = MISALIGNED.get(run)
        return {"run": run, "kind": kind, "stages": list(stages), "train": {s: dict(t[s]) for s in stages},
                "va_lr": t["va_lr"], "pretrain": self.pretrain_key() if pretrained else None,
                "misaligned": misaligned, "lr": "va_lr" if run in VA_LR_RUNS else "default",
                "mismatch": self.pretrain_key(self.pretrain_seed("mismatch")) if misaligned == "mismatch" else None,
                "model": dict(self.p["model"]), "seed": self.p["seed"] if seed is None else seed,
                "data": self.data_key(),
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

    def pair_counts(self) -> dict:
        """{share: number of Fashion IQ-style training pairs} for all of them (1.0) and each share of the sweep."""
        return {share: len(self.fiq_pairs(share)) for share in (1.0, *map(float, self.p["data_limited"]["shares"]))}

    def train_stage(self, model, inputs: ImageInputs, run: str, stage: str, fiq_share: float = 1.0, run_dir=None,
                    seed: int | None = None):
        """Train `model` on one stage of `run` (resuming from a checkpoint in `run_dir`, if any), its batches
        drawn with the training `seed` (None: the preset's); its log."""
        from ...train import TrainConfig, train

        kind, _, pretrained = RUNS[run]
        seed = self.p["seed"] if seed is None else seed
        t = self.p["train"][stage]
        pairs = self.fiq_pairs(fiq_share) if stage == "fiq" else self.data.imfq_train
        if kind == "va" and (pretrained or run in VA_LR_RUNS):  # the paper's CLIP VA baseline: one low rate everywhere
            lr, scale = self.p["train"]["va_lr"], 1.0
        else:
            lr, scale = t["lr"], (t["pretrained_lr_scale"] if pretrained else 1.0)
        milestones = tuple(int(f * t["steps"]) for f in t["lr_decay_at"])
        cfg = TrainConfig(steps=t["steps"], lr=lr, optimizer="adam", adam_eps=t["adam_eps"],
                          weight_decay=t["weight_decay"], lr_milestones=milestones, lr_gamma=0.1,
                          seed=step_seed(seed, 0, 1 + ["imfq", "fiq"].index(stage)),
                          progress=self.progress, device=self.device, log_every=50,
                          desc=f"{self.run_label(run, fiq_share, seed)}: {stage} stage",
                          checkpoint_every=self.p["checkpoint_every"])
        batches = composed_batches(pairs, inputs, t["batch_size"], cfg.seed)
        return train(model, composed_step, batches, cfg, run_dir=run_dir, param_groups=model.param_groups(scale)).log

    def run_label(self, run: str, fiq_share: float = 1.0, seed: int | None = None) -> str:
        """The run's name in progress lines (with its share of the FIQ pairs in the data-limited sweep, and its
        training seed when it is not the preset's)."""
        label = run if fiq_share == 1 else f"{run} on {fiq_share:g} of FIQ"
        return label if seed is None or seed == self.p["seed"] else f"{label}, seed {seed}"

    def run(self, run: str, fiq_share: float = 1.0, seed: int | None = None) -> dict:
        """Train (if the run has stages) and evaluate one run of the grid, its Fashion IQ stage on `fiq_share`
        of the training pairs (same steps and rates), with training seed `seed` (model initialisation and
        batches; None: the preset's `seed`; the pretrained dual encoder, worlds and data stay the preset's);
        cached."""
        seed = self.p["seed"] if seed is None else int(seed)
        if seed != self.p["seed"] and fiq_share != 1:
            raise ValueError("the data-limited sweep runs at the preset's seed only")
        key = self.run_key(run, fiq_share, seed)

        def compute():
            start = time.time()
            model, inputs = self.build(run, seed)
            logs = {}
            for stage in RUNS[run][1]:  # each stage checkpoints into its own folder of the run's
                logs[stage] = self.train_stage(model, inputs, run, stage, fiq_share,
                                               run_dir=self.cache.run_dir("cfq_run", key) / stage, seed=seed)
            train_s = time.time() - start
            with prog.stage(f"{self.run_label(run, fiq_share, seed)}: evaluating", disable=not self.progress):
                metrics = evaluate_all(model, inputs, self.data, self.p["eval"]["group_by"])
            return {**metrics, "logs": logs, "train_s": train_s, "wall_s": time.time() - start}

        out = self._cached_training("cfq_run", key, compute)
        if seed != self.p["seed"]:
            self.seeded[(run, seed)] = out
        elif fiq_share == 1:
            self.results[run] = out
        else:
            self.limited[(run, fiq_share)] = out
        self.timings[self.run_label(run, fiq_share, seed)] = out["wall_s"]
        return out

    def training_seeds(self) -> list[int]:
        """The training seeds of every run a claim compares: `seed`, `seed` + 1, ... (`claim_tests.seeds` of
        them)."""
        return [self.p["seed"] + k for k in range(self.p["claim_tests"]["seeds"])]

    def run_seeds(self, runs) -> dict:
        """{run: [its result at each of `training_seeds()`]} for each of `runs` on all the Fashion IQ-style
        data (the preset's seed is the grid's run, run here if the grid did not)."""
        out = {}
        for r in runs:
            if r not in RUNS:
                raise ValueError(f"unknown run {r!r}; expected some of {list(RUNS)}")
            out[r] = [self.results[r] if s == self.p["seed"] and r in self.results else self.run(r, seed=s)
                      for s in self.training_seeds()]
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

    # -- every run at once, on both cores
    def _in_workers(self, fn, items: list, desc: str) -> None:
        """fn(item) for every item in `workers` forked processes of `threads` torch threads (each storing its
        result in the cache); the parent shows one bar over finished items. Forking shares what the parent holds
        (data, features, the text cache) without copying it."""
        run_forked(fn, items, int(self.p["workers"]), shared=dict(exp=self), threads=max(1, int(self.p["threads"]) or 1),
                   desc=desc, progress=self.progress,
                   on_result=lambda item, _: self.cache.misses.append("cfq_run"))  # computed now (by a worker)

    def jobs(self, seeded_runs=()) -> list[tuple]:
        """Every (run, FIQ share, training seed) the notebook trains: the grid's runs (`runs`), the runs of the
        claims off the sweep at every training seed (`seeded_runs`), the data-limited sweep; then the extra
        datasets' ("extra", dataset, run)."""
        out = [(r, 1.0, self.p["seed"]) for r in self.p["runs"]]
        out += [(r, 1.0, s) for r in seeded_runs for s in self.training_seeds()]
        d = self.p["data_limited"]
        out += [(r, 1.0, self.p["seed"]) for r in d["runs"]]
        out += [(r, float(share), self.p["seed"]) for r in d["runs"] for share in d["shares"]]
        out += self.extra_jobs() if self.data is not None else []
        return list(dict.fromkeys(out))

    def extra_jobs(self) -> list[tuple]:
        """("extra", dataset, run) for every extra dataset read and every model of `extra.models`."""
        return [(EXTRA_JOB, name, run) for name in getattr(self.data, "extra", {}) for run in self.p["extra"]["models"]]

    def extra_key(self, dataset: str, run: str) -> dict:
        return {**self.run_key(run), "extra": dataset, "extra_settings": dict(self.p["extra"]),
                "extra_world": self.data.fingerprints[dataset]}

    def run_extra(self, dataset: str, run: str) -> dict:
        """The model of `run` (its architecture, initialisation and rates), trained on the extra dataset's own
        training pairs for `extra.steps` steps with the Fashion IQ stage's other settings (none for a run with no
        stage: zero-shot), then scored by Recall@k on its test queries; cached."""
        kind, stages, pretrained = RUNS[run]
        key = self.extra_key(dataset, run)
        d = self.data.extra[dataset]

        def compute():
            from ...train import TrainConfig, train

            start = time.time()
            model, inputs = self.build(run)
            log = None
            if stages:
                t = self.p["train"]["fiq"]
                steps = int(self.p["extra"]["steps"])
                va = kind == "va" and (pretrained or run in VA_LR_RUNS)
                lr, scale = (self.p["train"]["va_lr"], 1.0) if va else (t["lr"], t["pretrained_lr_scale"] if pretrained
                                                                         else 1.0)
                seed = step_seed(self.p["seed"], 0, 10 + list(self.data.extra).index(dataset))
                cfg = TrainConfig(steps=steps, lr=lr, optimizer="adam", adam_eps=t["adam_eps"],
                                  weight_decay=t["weight_decay"],
                                  lr_milestones=tuple(int(f * steps) for f in t["lr_decay_at"]), lr_gamma=0.1,
                                  seed=seed, progress=self.progress, device=self.device, log_every=50,
                                  desc=f"{run} on {dataset}", checkpoint_every=self.p["checkpoint_every"])
                batches = composed_batches(d.train, inputs, t["batch_size"], seed)
                log = train(model, composed_step, batches, cfg, run_dir=self.cache.run_dir("cfq_extra", key),
                            param_groups=model.param_groups(scale)).log
            recall = extra_evaluation(model, inputs, d.test, d.ks)
            return {"recall": recall, "log": log, "wall_s": time.time() - start}

        out = self._cached_training("cfq_extra", key, compute)
        self.extra_results[(dataset, run)] = out
        self.timings[f"{run} on {dataset}"] = out["wall_s"]
        return out

    def run_extra_all(self) -> dict:
        """Every model of `extra.models` on every extra dataset: {(dataset, run): result}."""
        for _, name, run in self.extra_jobs():
            self.run_extra(name, run)
        return self.extra_results

    @staticmethod
    def job_cost(job: tuple) -> float:
        """A rough relative cost of a job (for scheduling the longest first, so the processes end together):
        seconds per stage measured on the default preset (2026-11-27): a from-scratch run trains its backbone on
        pixels (~70 s), a fusion branch costs ~30 s per stage, a VA stage on frozen features 5-15 s."""
        if job[0] == EXTRA_JOB:
            kind, stages, _ = RUNS[job[2]]
            return (20.0 if kind in ("raf", "raf_big", "af") else 4.0) * len(stages) + 2.0
        kind, stages, pretrained = RUNS[job[0]]
        fusion = kind in ("raf", "raf_big", "af")
        cost = {"fiq": 70.0 if not pretrained else 28.0 if fusion else 5.0, "imfq": 30.0 if fusion else 14.0}
        return sum(cost[s] for s in stages) + 3.0  # + its evaluation

    def prefetch(self, jobs: list[tuple]) -> None:
        """Train every job missing from the cache in `workers` forked processes (longest first); the notebook's
        later calls (`run_all`, `run_seeds`, `run_data_limited`) then read them from the cache. What every job
        shares is computed once, before forking: the pretrained dual encoders, the frozen backbone's features and
        the frozen text model's states of every caption. Nothing is done with one worker, on a GPU, or when the
        cache is disabled (VISUALSEARCH_NO_CACHE: a worker's result could not be read back)."""
        import os

        if int(self.p["workers"]) < 2 or str(self.device) != "cpu" or os.environ.get("VISUALSEARCH_NO_CACHE"):
            return
        todo = [j for j in jobs if not self.cache.has(*(("cfq_extra", self.extra_key(j[1], j[2])) if j[0] == EXTRA_JOB
                                                        else ("cfq_run", self.run_key(*j))))]
        if len(todo) < 2:
            return
        self.pretrain_all(mismatch=any(MISALIGNED.get(j[0]) == "mismatch" for j in todo))
        if self.p["model"]["freeze_backbone"]:
            self.features()
        self.warm_text()
        todo.sort(key=self.job_cost, reverse=True)
        self._in_workers(_worker_run, todo, "training the grid, the claims' seeds and the sweep")

    def warm_text(self) -> None:
        """The frozen text model's states of every caption any run reads (training pairs, validation queries,
        CFQ), computed once here rather than again in each worker."""
        if self.p["model"]["clip_path"] or self.data is None:
            return
        if self._tokens is None:
            self.new_clip()
        d = self.data
        texts = [c for caps in d.fiq_train.captions for c in caps] + [c for caps in d.imfq_train.captions for c in caps]
        texts += [t for v in d.fiq_val.values() for t in v["texts"]] + list(d.imat_val["texts"])
        texts += list(d.cfq_agg["caption"].unique())
        for x in d.extra.values():
            texts += [c for caps in x.train.captions for c in caps] + list(x.test["texts"])
        tokens = self._tokens
        units = [u for t in dict.fromkeys(map(str, texts))
                 for u in (clipmod.caption_phrases(t) if tokens.phrases else [t])]
        new = [u for u in dict.fromkeys(units) if u not in tokens._cache]
        if new:
            tokens._encode_new(new)

    def run_all(self, runs=None) -> dict:
        for r in runs or self.p["runs"]:
            if r not in RUNS:
                raise ValueError(f"unknown run {r!r}; expected some of {list(RUNS)}")
            self.run(r)
        return self.results

    # -- what the figures read
    def stage_logs(self) -> dict:
        """{run: {stage: training log}} of every run of the grid."""
        return {run: res["logs"] for run, res in self.results.items()}

    def judged_scores(self, runs) -> dict:
        """{run: its score of every judged CFQ pair (rows of data.cfq_agg)} for those of `runs` that ran."""
        return {run: self.results[run]["cfq_scores"] for run in runs if run in self.results}
