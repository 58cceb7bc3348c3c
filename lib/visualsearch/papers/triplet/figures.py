"""The triplet paper's figures: retrieval results, embeddings' similarity samples, training logs and image stores
in, matplotlib figures out. Nothing here trains or imports a model."""
from __future__ import annotations

from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.patches import Rectangle

from ...report import figsize

if TYPE_CHECKING:
    from ...evaluate import Retrieval
    from .data import ProductImages


def fig_recall_curves(curves: dict, title: str = ""):
    fig, ax = plt.subplots(figsize=figsize("single"))
    for name, c in curves.items():
        ax.plot(np.arange(1, len(c) + 1), c, label=name)
    ax.set(xlabel="k", ylabel="Recall@k", title=title, ylim=(0, 1.01))
    ax.legend(fontsize=6)
    return fig


def fig_similarity_hist(samples: dict):
    """One panel per model: histograms of query-positive and query-negative cosine similarity."""
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
    s = pd.Series(per_cat.values, index=[names[i] for i in per_cat.index]).sort_values()
    fig, ax = plt.subplots(figsize=figsize("single"))
    ax.barh(s.index, s.values)
    ax.set(xlabel=f"Recall@{k}", xlim=(0, 1), title=title)
    return fig


def fig_confusion(m: np.ndarray, names: list, title: str = ""):
    fig, ax = plt.subplots(figsize=figsize("square"))
    sns.heatmap(m, annot=len(names) <= 12, fmt=".2f", cmap="Blues", xticklabels=names, yticklabels=names, ax=ax,
                cbar=False, annot_kws={"fontsize": 6}, vmin=0, vmax=1)
    ax.set(xlabel="category of the top-1 result", ylabel="query category", title=title)
    return fig


def fig_retrieval_examples(query: ProductImages, gallery: ProductImages, r: Retrieval, rows, top: int = 5):
    """Each row: a query and its top results; correct ones (same product) boxed in green, others in red."""
    rows = list(rows)
    fig, axes = plt.subplots(len(rows), top + 1, figsize=(figsize("wide")[0], 1.3 * len(rows)), squeeze=False)
    for i, q in enumerate(rows):
        ims = [query.store.get([q])[0]] + [gallery.store.get([int(j)])[0] for j in r.indices[q, :top]]
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
    fig, ax = plt.subplots(figsize=figsize("single"))
    for name, df in curves.items():
        ax.plot(df["step"], df[metric], marker="o", ms=3, label=name)
    ax.set(xlabel="training step", ylabel=metric)
    ax.legend(fontsize=6)
    return fig


def fig_example_grid(images: ProductImages, categories: list, per_category: int = 8, seed: int = 0):
    """A grid of photos, one row per category (the world at a glance)."""
    rng = np.random.default_rng(seed)
    cats = sorted(set(images.categories.tolist()))
    fig, axes = plt.subplots(len(cats), per_category, figsize=(figsize("wide")[0], 1.0 * len(cats)), squeeze=False)
    for r, c in enumerate(cats):
        idx = rng.choice(np.nonzero(images.categories.numpy() == c)[0], size=per_category, replace=False)
        for ax, i in zip(axes[r], idx):
            ax.imshow(images.store.get([int(i)])[0].permute(1, 2, 0).numpy())
            ax.set_xticks([]), ax.set_yticks([])
        axes[r][0].set_ylabel(categories[c], fontsize=7)
    return fig
