"""The triplet paper's experiments as library calls: data, pretraining, training runs, evaluation, figures.

The notebook `triplet_product_search.ipynb` orchestrates these in a few lines per cell; everything here is
tested in tests/test_triplet_search.py. One experiment is:

    data (synthetic products world or the real SOP / In-shop / Consumer-to-Shop) -> ImageSet per split
    -> [pretrain a trunk on attribute labels: the embedded stand-in for ImageNet]
    -> train an EmbeddingNet with a pair sampler + a triplet loss (train.train, exact resume)
    -> embed query and gallery -> exact cosine retrieval -> Recall@K, figures.
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .cache import file_digest
from .data.augment import AugmentConfig, augment_batch, prepare_batch
from .data.images import load_image
from .data.retail import RetailSplit, crop_to_box, image_to_uint8, load_split_images
from .evaluate import recall_at_k, retrieve
from .losses import (BatchAllTripletLoss, BatchHardTripletLoss, RandomTripletLoss,
                     ReleasedCodeBatchHardTripletLoss, SemiHardTripletLoss, pair_indices)
from .models.embedding import AttributeClassifier, EmbeddingConfig, EmbeddingNet
from .progress import stage
from .samplers import PairBatchSampler
from .seeding import step_seed
from .train import TrainConfig, identity_of, train

# The loss of each method the tables compare (names are the tables' row labels' keys).
LOSSES = {
    "random": RandomTripletLoss,                     # random (offline) triplets
    "batch_hard": BatchHardTripletLoss,              # the paper: hardest negative in the batch
    "batch_hard_released": ReleasedCodeBatchHardTripletLoss,  # the released code's zero-floor masking
    "semi_hard": SemiHardTripletLoss,
    "batch_all": BatchAllTripletLoss,
}
METHOD_LABELS = {"off_the_shelf": "off-the-shelf features", "random": "random triplets",
                 "batch_hard": "batch-hard online (paper)", "batch_hard_released": "batch-hard, released-code mask",
                 "semi_hard": "semi-hard online", "batch_all": "batch-all online"}


# ------------------------------------------------------------------------------------------------- data

@dataclass
class ImageSet:
    """Images of one split with product labels and categories. Held in memory as uint8 [N, 3, S, S] when
    small (the synthetic world), else read from disk on demand (real datasets), cropped around boxes."""

    labels: torch.Tensor                    # [N] product label
    categories: torch.Tensor                # [N] category index
    size: int                               # side of the square images handed to the model
    images: torch.Tensor | None = None      # uint8 [N, 3, S, S] when in memory
    split: RetailSplit | None = None        # else: paths and boxes to read from
    use_boxes: bool = True
    item_ids: list = field(default_factory=list)
    paths: list = field(default_factory=list)  # the image files kept (after skipped ones), in order

    def __len__(self) -> int:
        return len(self.labels)

    def get(self, idx) -> torch.Tensor:
        """uint8 images [B, 3, S, S] of the given indices."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        if self.images is not None:
            return self.images[idx]

        def one(i):
            img = load_image(self.split.paths[i])
            if self.use_boxes:
                img = crop_to_box(img, self.split.bboxes[i])
            return image_to_uint8(img, self.size)

        with ThreadPoolExecutor(8) as pool:
            return torch.stack(list(pool.map(one, idx.tolist())))


def load_imageset(split: RetailSplit, size: int, use_boxes: bool = True, in_memory: bool = True,
                  skips=None, desc: str | None = None) -> ImageSet:
    """An ImageSet of `split`; in memory, images that fail to load are skipped and counted in `skips`
    (`desc`: a progress bar so labelled while they load)."""
    if in_memory:
        images, kept = load_split_images(split, size, use_boxes=use_boxes, skips=skips, desc=desc)
        keep = kept.tolist()
        return ImageSet(torch.tensor(split.labels)[kept] if len(keep) else torch.zeros(0, dtype=torch.long),
                        torch.tensor(split.categories)[kept] if len(keep) else torch.zeros(0, dtype=torch.long),
                        size, images=images, use_boxes=use_boxes, item_ids=[split.item_ids[i] for i in keep],
                        paths=[split.paths[i] for i in keep])
    return ImageSet(split.label_tensor(), split.category_tensor(), size, split=split, use_boxes=use_boxes,
                    item_ids=list(split.item_ids), paths=list(split.paths))


def attribute_targets(item_ids: list, attributes: pd.DataFrame, names=("category", "colour", "pattern")) -> dict:
    """Per-image integer targets of the world's attributes (for pretraining), from the item ids of an
    ImageSet (`class_<pid>` in SOP lists, `id_<pid>` in In-shop lists) and attributes.csv."""
    pid = [int(s.rsplit("_", 1)[1]) for s in item_ids]
    att = attributes.set_index("product_id").loc[pid]
    out = {}
    for name in names:
        values = sorted(attributes[name].unique())
        out[name] = torch.tensor([values.index(v) for v in att[name]], dtype=torch.long)
    return out


# ------------------------------------------------------------------------------------------ pretraining

def pretrain_trunk(images: ImageSet, targets: dict, arch: str = "resnet18", steps: int = 200, batch_size: int = 64,
                   lr: float = 1e-3, seed: int = 0, device: str = "cpu", progress: bool = False, run_dir=None,
                   checkpoint_every: int = 0, identity: str = "") -> dict:
    """Train an AttributeClassifier (one head per target) on `images` with the paper's augmentation; return
    {"trunk": state dict, "log": DataFrame}. The stand-in for an ImageNet-pretrained trunk. `run_dir`:
    checkpoints every `checkpoint_every` steps (0: at the end), resumed from when present (train.train);
    `identity`: what is trained (TrainConfig.identity)."""
    classes = {k: int(v.max()) + 1 for k, v in targets.items()}
    torch.manual_seed(seed)
    model = AttributeClassifier(arch, classes)
    n = len(images)

    dev = torch.device(device)

    def batch_fn(step):
        g = torch.Generator().manual_seed(step_seed(seed, step, stream=21))
        idx = torch.randint(n, (batch_size,), generator=g)
        gd = torch.Generator(device=dev).manual_seed(step_seed(seed, step, stream=23))
        x = augment_batch(images.get(idx).to(dev), images.size, gd)
        return x, {k: v[idx] for k, v in targets.items()}

    def step_fn(m, batch):
        x, t = batch
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


def train_embedding(images: ImageSet, cfg: RunConfig, trunk_state: dict | None = None, weights_path=None,
                    device: str = "cpu", eval_fn=None, eval_every: int = 0, run_dir=None, progress: bool = False,
                    desc: str = "training", checkpoint_every: int = 0, identity: str = ""):
    """Train the embedding on pair batches with the method's loss; returns train.TrainResult (its log holds
    the loss statistics per step and eval_fn's metrics every eval_every steps); `desc` labels the bar.
    `run_dir`: checkpoints every `checkpoint_every` steps (0: at the end), resumed from when present;
    `identity`: what is trained (TrainConfig.identity: model, loss and data), checked against a checkpoint."""
    model = build_model(cfg, trunk_state, weights_path)
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
        x = augment_batch(images.get(b.indices).to(dev), images.size, g, aug)
        return x, images.labels[b.indices]

    def step_fn(m, batch):
        x, labels = batch
        emb = m(x)
        return loss_fn(emb, labels, anchors.to(emb.device), positives.to(emb.device))

    groups = [{"params": model.trunk.parameters(), "lr_scale": cfg.trunk_lr_scale},
              {"params": model.head.parameters(), "lr_scale": 1.0}]
    tcfg = TrainConfig(steps=cfg.steps, lr=cfg.lr, lr_milestones=tuple(cfg.lr_milestones), seed=cfg.seed,
                       progress=progress, device=device, desc=desc, checkpoint_every=checkpoint_every,
                       identity=identity)
    return train(model, step_fn, batch_fn, tcfg, run_dir=run_dir, param_groups=groups, eval_fn=eval_fn,
                 eval_every=eval_every)


# ----------------------------------------------------------------------------------------- evaluation

@torch.no_grad()
def embed(model, images: ImageSet, features: bool = False, batch_size: int = 256, device: str = "cpu",
          index=None) -> torch.Tensor:
    """Unit embeddings [N, D] of an ImageSet (or of `index` into it); `features=True` gives the
    L2-normalised pooled trunk features (the off-the-shelf baseline)."""
    model.eval()
    idx = torch.arange(len(images)) if index is None else torch.as_tensor(index)
    out = []
    for i in range(0, len(idx), batch_size):
        x = prepare_batch(images.get(idx[i:i + batch_size]), images.size).to(device)
        e = model.features(x) if features else model(x)
        out.append(F.normalize(e.float(), dim=1).cpu())
    return torch.cat(out) if out else torch.zeros(0, 1)


@dataclass
class Retrieval:
    """Result of searching every query in the gallery."""

    recall: dict            # k -> Recall@k
    indices: torch.Tensor   # [Q, kmax] gallery indices, best first
    scores: torch.Tensor
    k_cap: int              # the largest k that could be evaluated (gallery size, minus the query itself)


def evaluate_retrieval(query_emb, gallery_emb, query_labels, gallery_labels, ks, queries_in_gallery=False) -> Retrieval:
    """Exact cosine retrieval and Recall@k; ks above the number of retrievable items are capped (k_cap)."""
    exclude = "self" if queries_in_gallery else None
    k_cap = len(gallery_emb) - (1 if queries_in_gallery else 0)
    kmax = min(max(ks), k_cap)
    top = retrieve(query_emb, gallery_emb, kmax, exclude=exclude)
    rec = recall_at_k(top.indices, query_labels, gallery_labels, [min(k, k_cap) for k in ks])
    return Retrieval({k: rec[min(k, k_cap)] for k in ks}, top.indices, top.scores, k_cap)


def recall_curve(r: Retrieval, query_labels, gallery_labels, kmax: int = 50) -> np.ndarray:
    """Recall@k for k = 1..kmax (capped at the retrieved columns)."""
    hits = torch.as_tensor(gallery_labels)[r.indices[:, :kmax]] == torch.as_tensor(query_labels).unsqueeze(1)
    return hits.cummax(1).values.float().mean(0).numpy()


def per_category_recall(r: Retrieval, query_labels, gallery_labels, query_categories, k: int = 20) -> pd.Series:
    hits = (torch.as_tensor(gallery_labels)[r.indices[:, :k]] == torch.as_tensor(query_labels).unsqueeze(1)).any(1)
    return pd.Series(hits.float().numpy()).groupby(np.asarray(query_categories)).mean()


def top1_category_confusion(r: Retrieval, query_categories, gallery_categories, n_categories: int) -> np.ndarray:
    """Row-normalised counts of (query category, category of the top-1 result)."""
    top = torch.as_tensor(gallery_categories)[r.indices[:, 0]].numpy()
    m = np.zeros((n_categories, n_categories))
    np.add.at(m, (np.asarray(query_categories), top), 1)
    return m / np.maximum(m.sum(1, keepdims=True), 1)


def similarity_samples(query_emb, gallery_emb, query_labels, gallery_labels, n_neg: int = 20000,
                       seed: int = 0, queries_in_gallery: bool = False, max_pos: int = 50000) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarities of query-positive pairs (all, or a random max_pos of them) and of a random sample
    of query-negative pairs. Memory is linear in the pairs drawn, not Q x G."""
    ql, gl = torch.as_tensor(query_labels), torch.as_tensor(gallery_labels)
    by_label: dict = {}
    for j, l in enumerate(gl.tolist()):
        by_label.setdefault(l, []).append(j)
    qi, gi = [], []
    for i, l in enumerate(ql.tolist()):
        for j in by_label.get(l, ()):
            if not (queries_in_gallery and i == j):
                qi.append(i)
                gi.append(j)
    g = torch.Generator().manual_seed(seed)
    qi, gi = torch.tensor(qi, dtype=torch.long), torch.tensor(gi, dtype=torch.long)
    if len(qi) > max_pos:
        keep = torch.randperm(len(qi), generator=g)[:max_pos]
        qi, gi = qi[keep], gi[keep]
    pos = (query_emb[qi] * gallery_emb[gi]).sum(1).numpy()
    nq = torch.randint(len(ql), (n_neg,), generator=g)
    ng = torch.randint(len(gl), (n_neg,), generator=g)
    keep = ql[nq] != gl[ng]
    return pos, (query_emb[nq[keep]] * gallery_emb[ng[keep]]).sum(1).numpy()


def error_breakdown(r: Retrieval, query_labels, gallery_labels, query_groups, gallery_groups, query_categories,
                    gallery_categories) -> dict:
    """Of the wrong top-1 results: the fraction from the query's look-alike group (same coarse attributes),
    from the same category but another group, and from another category. What single-category batches
    should reduce is the first."""
    top = r.indices[:, 0]
    wrong = torch.as_tensor(gallery_labels)[top] != torch.as_tensor(query_labels)
    if not wrong.any():
        return {"wrong_top1": 0.0, "lookalike": float("nan"), "same_category": float("nan"), "other_category": float("nan")}
    qg, gg = torch.as_tensor(query_groups)[wrong], torch.as_tensor(gallery_groups)[top[wrong]]
    qc, gc = torch.as_tensor(query_categories)[wrong], torch.as_tensor(gallery_categories)[top[wrong]]
    look = (qg == gg).float().mean()
    same_cat = ((qg != gg) & (qc == gc)).float().mean()
    return {"wrong_top1": float(wrong.float().mean()), "lookalike": float(look), "same_category": float(same_cat),
            "other_category": float((qc != gc).float().mean())}


def recall_table(results: dict, dataset: str, ks, k_cap: int | None = None) -> pd.DataFrame:
    """Tidy rows (method, dataset, metric, reproduced) from {method label: {k: recall}}; metric names say
    when k was capped at the gallery size."""
    rows = []
    for method, rec in results.items():
        for k in ks:
            metric = f"R@{k}" if k_cap is None or k <= k_cap else f"R@{k} (capped at {k_cap})"
            rows.append({"method": method, "dataset": dataset, "metric": metric, "reproduced": rec[k]})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------- figures

def fig_recall_curves(curves: dict, title: str = ""):
    import matplotlib.pyplot as plt
    from .report import figsize

    fig, ax = plt.subplots(figsize=figsize("single"))
    for name, c in curves.items():
        ax.plot(np.arange(1, len(c) + 1), c, label=name)
    ax.set(xlabel="k", ylabel="Recall@k", title=title, ylim=(0, 1.01))
    ax.legend(fontsize=6)
    return fig


def fig_similarity_hist(samples: dict):
    """One panel per model: histograms of query-positive and query-negative cosine similarity."""
    import matplotlib.pyplot as plt
    from .report import figsize

    n = len(samples)
    fig, axes = plt.subplots(1, n, figsize=figsize("wide"), sharey=False, squeeze=False)
    for ax, (name, (pos, neg)) in zip(axes[0], samples.items()):
        bins = np.linspace(-0.5, 1.0, 61)
        ax.hist(neg, bins=bins, density=True, alpha=0.6, label="query-negative")
        ax.hist(pos, bins=bins, density=True, alpha=0.6, label="query-positive")
        ax.set(title=name, xlabel="cosine similarity")
        ax.title.set_fontsize(7)
    axes[0][0].legend(fontsize=6)
    return fig


def fig_category_bars(per_cat: pd.Series, names: list, k: int = 20, title: str = ""):
    import matplotlib.pyplot as plt
    from .report import figsize

    s = pd.Series(per_cat.values, index=[names[i] for i in per_cat.index]).sort_values()
    fig, ax = plt.subplots(figsize=figsize("single"))
    ax.barh(s.index, s.values)
    ax.set(xlabel=f"Recall@{k}", xlim=(0, 1), title=title)
    return fig


def fig_confusion(m: np.ndarray, names: list, title: str = ""):
    import matplotlib.pyplot as plt
    import seaborn as sns
    from .report import figsize

    fig, ax = plt.subplots(figsize=figsize("square"))
    sns.heatmap(m, annot=len(names) <= 12, fmt=".2f", cmap="Blues", xticklabels=names, yticklabels=names, ax=ax,
                cbar=False, annot_kws={"fontsize": 6}, vmin=0, vmax=1)
    ax.set(xlabel="category of the top-1 result", ylabel="query category", title=title)
    return fig


def fig_retrieval_examples(query: ImageSet, gallery: ImageSet, r: Retrieval, rows, top: int = 5):
    """Each row: a query and its top results; correct ones (same product) boxed in green, others in red."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle
    from .report import figsize

    rows = list(rows)
    fig, axes = plt.subplots(len(rows), top + 1, figsize=(figsize("wide")[0], 1.3 * len(rows)), squeeze=False)
    for i, q in enumerate(rows):
        ims = [query.get([q])[0]] + [gallery.get([int(j)])[0] for j in r.indices[q, :top]]
        for j, (ax, im) in enumerate(zip(axes[i], ims)):
            ax.imshow(im.permute(1, 2, 0).numpy())
            ax.set_xticks([]), ax.set_yticks([])
            if j == 0:
                ax.set_ylabel("query", fontsize=7)
                continue
            ok = int(gallery.labels[int(r.indices[q, j - 1])]) == int(query.labels[q])
            s = im.shape[-1]
            ax.add_patch(Rectangle((0, 0), s - 1, s - 1, fill=False, lw=3, ec="tab:green" if ok else "tab:red"))
            ax.set_title(f"{float(r.scores[q, j - 1]):.2f}", fontsize=6)
    return fig


def fig_training_curves(logs: dict, smooth: int = 10):
    """Loss and fraction of active anchors per step, one line per run (moving average over `smooth`)."""
    import matplotlib.pyplot as plt
    from .report import figsize

    fig, axes = plt.subplots(1, 3, figsize=figsize("wide"))
    for name, log in logs.items():
        for ax, col in zip(axes, ("loss", "frac_active", "sim_an")):
            if col in log:
                ax.plot(log["step"], log[col].rolling(smooth, min_periods=1).mean(), label=name)
    for ax, t in zip(axes, ("loss", "fraction of anchors with loss > 0", "anchor-negative similarity")):
        ax.set(xlabel="step", title=t)
        ax.title.set_fontsize(7)
    axes[0].legend(fontsize=5)
    return fig


def fig_recall_vs_steps(curves: dict, metric: str = "R@1"):
    """Recall@1 on a fixed evaluation subset against training steps, one line per run."""
    import matplotlib.pyplot as plt
    from .report import figsize

    fig, ax = plt.subplots(figsize=figsize("single"))
    for name, df in curves.items():
        ax.plot(df["step"], df[metric], marker="o", ms=3, label=name)
    ax.set(xlabel="training step", ylabel=metric)
    ax.legend(fontsize=6)
    return fig


def fig_example_grid(images: ImageSet, categories: list, per_category: int = 8, seed: int = 0):
    """A grid of photos, one row per category (the world at a glance)."""
    import matplotlib.pyplot as plt
    from .report import figsize

    rng = np.random.default_rng(seed)
    cats = sorted(set(images.categories.tolist()))
    fig, axes = plt.subplots(len(cats), per_category, figsize=(figsize("wide")[0], 1.0 * len(cats)), squeeze=False)
    for r, c in enumerate(cats):
        idx = rng.choice(np.nonzero(images.categories.numpy() == c)[0], size=per_category, replace=False)
        for ax, i in zip(axes[r], idx):
            ax.imshow(images.get([int(i)])[0].permute(1, 2, 0).numpy())
            ax.set_xticks([]), ax.set_yticks([])
        axes[r][0].set_ylabel(categories[c], fontsize=7)
    return fig


def margin_summary(a: float, b: float) -> str:
    return f"{a:.3f} vs {b:.3f} (difference {a - b:+.3f})"


def isfinite(x) -> bool:
    return x is not None and math.isfinite(x)


# ---------------------------------------------------------------------------------- notebook orchestration

@dataclass
class TripletData:
    """Everything the notebook evaluates on: an In-shop style benchmark (query vs gallery, boxes) and an
    SOP style one (every test image queries the others), as ImageSets at the model's input size."""

    inshop_train: ImageSet
    inshop_query: ImageSet
    inshop_gallery: ImageSet
    sop_train: ImageSet
    sop_test: ImageSet
    inshop_categories: list
    sop_categories: list
    inshop_name: str              # dataset label in tables
    sop_name: str
    description: str              # data label in tables ("synthetic products world ..." or the real names)
    fingerprint: str
    skips: object                 # SkipLog
    attributes: pd.DataFrame | None = None   # synthetic world only: attributes.csv
    folder: object = None


def _resolve(root, rel):
    from pathlib import Path
    rel = Path(rel)
    return rel if rel.is_absolute() else Path(root) / rel


def load_data(p) -> TripletData:
    """The synthetic products world (p.data_root is None) or the real datasets under p.data_root:
    p.data.inshop_dir (In-shop, or Consumer-to-Shop when p.data.inshop_benchmark says so) and p.data.sop_dir."""
    from .data.errors import SkipLog
    from .data.products import ProductsWorldConfig, products_world, read_attributes
    from .data.retail import read_consumer2shop, read_inshop, read_sop
    from .data.worlds import fingerprint_dir

    skips = SkipLog()
    size, mem = p.model.input_size, p.data.in_memory
    with stage("reading the In-shop and SOP lists (every image is decoded once to check it)"):
        if p.data_root is None:
            folder = products_world(ProductsWorldConfig(**p.world.to_dict()))
            inshop, sop = read_inshop(folder, skips), read_sop(folder, skips)
            att = read_attributes(folder)
            names = ("synthetic products (In-shop format)", "synthetic products (SOP format)")
            desc = f"synthetic products world {folder.name}"
            fp = fingerprint_dir(folder)
        else:
            ins_root = _resolve(p.data_root, p.data.inshop_dir)
            if p.data.inshop_benchmark == "consumer2shop":
                inshop, names0 = read_consumer2shop(ins_root, skips), "DeepFashion Consumer-to-Shop"
            elif p.data.inshop_benchmark == "inshop":
                inshop, names0 = read_inshop(ins_root, skips), "DeepFashion In-shop"
            else:
                raise ValueError("data.inshop_benchmark must be inshop or consumer2shop, "
                                 f"got {p.data.inshop_benchmark!r}")
            sop_root = _resolve(p.data_root, p.data.sop_dir)
            sop = read_sop(sop_root, skips)
            att, folder = None, None
            names = (names0, "Stanford Online Products")
            desc = f"{names0} ({ins_root}) and Stanford Online Products ({sop_root})"
            fp = fingerprint_dir(ins_root)[:8] + fingerprint_dir(sop_root)[:8]
    sets = dict(
        inshop_train=load_imageset(inshop.train, size, True, mem, skips, "reading In-shop train images"),
        inshop_query=load_imageset(inshop.query, size, True, mem, skips, "reading In-shop query images"),
        inshop_gallery=load_imageset(inshop.gallery, size, True, mem, skips, "reading In-shop gallery images"),
        sop_train=load_imageset(sop.train, size, False, mem, skips, "reading SOP train images"),
        sop_test=load_imageset(sop.query, size, False, mem, skips, "reading SOP test images"))
    roots = {"inshop": inshop.root, "sop": sop.root}
    kept = kept_images_digest({k: (v.paths, roots[k.split("_")[0]]) for k, v in sets.items()})
    return TripletData(**sets, inshop_categories=inshop.category_names, sop_categories=sop.category_names,
                       inshop_name=names[0], sop_name=names[1], description=desc, fingerprint=f"{fp}-{kept}",
                       skips=skips, attributes=att, folder=folder)


def kept_images_digest(sets: dict) -> str:
    """Hash of the images each set kept after skipped files ({name: (paths, root)}; paths relative to their
    root, so that the same dataset in another folder has the same digest): part of the data fingerprint, so
    that a result computed from one set of images is never reused for another."""
    import hashlib
    import os

    h = hashlib.sha256()
    for name in sorted(sets):
        paths, root = sets[name]
        h.update(f"{name}:{len(paths)}\n".encode())
        for path in paths:
            h.update(os.path.relpath(path, root).encode() + b"\n")
    return h.hexdigest()[:8]


def data_summary(d: TripletData) -> pd.DataFrame:
    rows = []
    for bench, sets in ((d.inshop_name, ("inshop_train", "inshop_query", "inshop_gallery")),
                        (d.sop_name, ("sop_train", "sop_test"))):
        for s in sets:
            im = getattr(d, s)
            rows.append({"benchmark": bench, "split": s.split("_", 1)[1], "images": len(im),
                         "products": len(set(im.labels.tolist())), "categories": len(set(im.categories.tolist()))})
    return pd.DataFrame(rows)


def trunk_weights(p, d: TripletData, cache) -> dict:
    """The start of every model: {"trunk": state dict or None, "weights_path": local ImageNet file or None,
    "log": pretraining log or None}. `weights: pretrained` trains an attribute classifier on the synthetic
    world's training images (category, colour, pattern), cached."""
    w = p.model.weights
    if w == "none":
        return {"trunk": None, "weights_path": None, "log": None}
    if w == "imagenet":
        path = _resolve(p.data_root or ".", p.model.weights_path) if p.model.weights_path else None
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
           **data_key(p, d)}

    def compute():
        targets = attribute_targets(d.sop_train.item_ids, d.attributes)
        out = pretrain_trunk(d.sop_train, targets, p.model.arch, p.pretrain.steps, p.pretrain.batch_size,
                             p.pretrain.lr, p.seed, p.device, progress=True,
                             run_dir=cache.run_dir("triplet_pretrain", key), checkpoint_every=p.checkpoint_every,
                             identity=identity_of("triplet_pretrain", key))
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
                                 augment=t.augment), **changes})


def off_the_shelf(p, d: TripletData, start: dict, which: str, cache) -> dict:
    """Pooled trunk features of the starting trunk (no metric learning): query and gallery embeddings."""
    key = {"which": which, "arch": p.model.arch, "start": _start_key(start, p), **data_key(p, d)}

    def compute():
        model = build_model(run_config(p), start["trunk"], start["weights_path"]).to(p.device)
        with stage(f"off-the-shelf features: embedding the {which} test images"):
            return _embed_sets(model, d, which, p.device, features=True)

    return cache.get_or_compute("triplet_off_the_shelf", key, compute)


def _start_key(start, p):
    path = start.get("weights_path")
    key = {"weights": p.model.weights, "path": path,
           "pretrain": p.pretrain.to_dict() if p.model.weights == "pretrained" else None}
    if path:  # the weights themselves, not only their file name
        key["weights_sha256"] = file_digest(path)
    return key


def _embed_sets(model, d: TripletData, which: str, device, features=False) -> dict:
    if which == "inshop":
        return {"query": embed(model, d.inshop_query, features, device=device),
                "gallery": embed(model, d.inshop_gallery, features, device=device)}
    e = embed(model, d.sop_test, features, device=device)
    return {"query": e, "gallery": e}


def eval_subset(d: TripletData, n_products: int, seed: int = 0) -> torch.Tensor:
    """Indices of the SOP test images of a fixed random subset of n_products products (for cheap
    Recall@1 evaluations during training)."""
    prods = sorted(set(d.sop_test.labels.tolist()))
    rng = np.random.default_rng(seed)
    keep = set(rng.choice(prods, size=min(n_products, len(prods)), replace=False).tolist())
    return torch.tensor([i for i, l in enumerate(d.sop_test.labels.tolist()) if l in keep])


def trained_run(p, d: TripletData, which: str, cfg: RunConfig, start: dict, cache, eval_every: int = 0,
                eval_products: int = 0) -> dict:
    """Train one embedding (cached) on the In-shop or SOP training images; returns its training log (with
    R@1 on a fixed SOP subset every eval_every steps when asked) and the embeddings of queries and gallery."""
    from dataclasses import asdict

    key = {"which": which, "run": asdict(cfg), "start": _start_key(start, p), **data_key(p, d),
           "eval_every": eval_every, "eval_products": eval_products}

    def compute():
        train_set = d.inshop_train if which == "inshop" else d.sop_train
        ev = None
        if eval_every and eval_products:
            sub = eval_subset(d, eval_products, p.seed)
            labels = d.sop_test.labels[sub]

            def ev(model, step):
                e = embed(model, d.sop_test, device=p.device, index=sub)
                return {"R@1": evaluate_retrieval(e, e, labels, labels, (1,), True).recall[1]}

        name = f"{which} {cfg.method}" + (f" p={cfg.single_category_prob:g}" if which == "sop" else "")
        res = train_embedding(train_set, cfg, start["trunk"], start["weights_path"], device=p.device,
                              eval_fn=ev, eval_every=eval_every if ev else 0, progress=True,
                              desc=f"training {name}", run_dir=cache.run_dir("triplet_run", key),
                              checkpoint_every=p.checkpoint_every, identity=identity_of("triplet_run", key))
        with stage(f"{name}: embedding the test images"):
            return {"log": res.log, "wall_s": res.wall_s, **_embed_sets(res.model, d, which, p.device)}

    return cache.get_or_compute("triplet_run", key, compute)


def evaluate_run(d: TripletData, which: str, emb: dict, ks) -> Retrieval:
    if which == "inshop":
        return evaluate_retrieval(emb["query"], emb["gallery"], d.inshop_query.labels, d.inshop_gallery.labels, ks)
    return evaluate_retrieval(emb["query"], emb["gallery"], d.sop_test.labels, d.sop_test.labels, ks, True)


def lookalike_groups_of(d: TripletData, images: ImageSet) -> torch.Tensor | None:
    """Look-alike group per image (synthetic world only)."""
    if d.attributes is None:
        return None
    grp = d.attributes.set_index("product_id").group
    return torch.tensor([int(grp[int(s.rsplit("_", 1)[1])]) for s in images.item_ids])


def hits_at_1(r: Retrieval, query_labels, gallery_labels) -> torch.Tensor:
    """Per query: 1.0 when the top-1 result is the same product."""
    return (torch.as_tensor(gallery_labels)[r.indices[:, 0]] == torch.as_tensor(query_labels)).float()


def bootstrap_difference(hits_a: torch.Tensor, hits_b: torch.Tensor, clusters, n_boot: int = 2000,
                         seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """Mean of hits_a - hits_b (paired, same queries) and its bootstrap interval, resampling whole clusters
    (products: the photos of one product are not independent queries). A claim "a beats b" is taken as
    reproduced only when the interval's lower end is above 0, so a difference within sampling noise of the
    test set is not reported as a win."""
    d = (torch.as_tensor(hits_a) - torch.as_tensor(hits_b)).double()
    _, inv = torch.unique(torch.as_tensor(clusters), return_inverse=True)
    n_c = int(inv.max()) + 1
    sums = torch.zeros(n_c, dtype=torch.float64).index_add_(0, inv, d)
    counts = torch.zeros(n_c, dtype=torch.float64).index_add_(0, inv, torch.ones_like(d))
    g = torch.Generator().manual_seed(seed)
    pick = torch.randint(n_c, (n_boot, n_c), generator=g)
    boot = sums[pick].sum(1) / counts[pick].sum(1)
    lo, hi = torch.quantile(boot, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)).tolist()
    return float(d.mean()), lo, hi


def claim_detail(a: float, b: float, lo: float, hi: float) -> str:
    return f"{a:.3f} vs {b:.3f} (difference {a - b:+.3f}, 95% bootstrap interval over test products {lo:+.3f} to {hi:+.3f})"
