"""The face notebook's figures, drawn from the experiment's results (tensors, arrays, DataFrames).

Imports no model, no training and no experiment code: restyling a figure reruns nothing (the result cache
keys on the experiment module's import closure, which does not hold this module).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ...report import figsize
from .data import ATTRIBUTES
from .tables import confusion


def prediction_examples(data, n: int, seed: int = 0) -> list:
    """`n` test images spread over people (a fixed, seeded choice) for the predictions figure."""
    g = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(len(data.test), generator=g)[:n].tolist())


def plot_depth_curves(summary: pd.DataFrame, n_stages: int = 4):
    """Accuracy vs branch depth, one line per attribute (mean +- std over seeds): fine-tuning (left) and the
    equal-capacity control (right); the from-scratch network as a dotted level per attribute."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=figsize("wide"), sharey=True)
    colours = dict(zip(ATTRIBUTES, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for ax, method, title in ((axes[0], "finetune", "fine-tune stages after the branch point"),
                              (axes[1], "probe", "control: same small probe at every depth")):
        for a in ATTRIBUTES:
            s = summary[(summary.attribute == a) & (summary.method == method)].sort_values("depth")
            ax.errorbar(s.depth, s["mean"], yerr=s["std"], marker="o", capsize=3, label=a, color=colours[a])
            sc = summary[(summary.attribute == a) & (summary.method == "scratch")]
            if len(sc):
                ax.axhline(float(sc["mean"].iloc[0]), ls=":", lw=1, color=colours[a])
        ax.set_xticks(range(n_stages + 1))
        ax.set_title(title, fontsize=9)
    fig.supxlabel(f"branch depth: identity stages shared and frozen (0 = none, {n_stages} = head only)", fontsize=9)
    axes[0].set_ylabel("test accuracy (mean ± std over seeds)")
    axes[0].legend(fontsize=7, title="dotted: from scratch", title_fontsize=7)
    fig.tight_layout()
    return fig


def plot_pareto(patterns: pd.DataFrame, front: pd.Series, chosen: pd.Series, budget: float, convention: str,
                marks: dict | None = None):
    """Cost vs mean accuracy of every pattern, the Pareto front, the budget line and the chosen pattern."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=figsize("single"))
    x = patterns[convention] / 1e9
    ax.scatter(x, patterns["mean_accuracy"], s=5, alpha=0.35, color="grey", label="sharing patterns")
    f = patterns[front].sort_values(convention)
    ax.step(f[convention] / 1e9, f["mean_accuracy"], where="post", color="C0", label="Pareto front")
    ax.axvline(budget / 1e9, color="C3", ls="--", lw=1, label=f"budget {budget / 1e9:g} G{convention.upper()}")
    for name, row in (marks or {}).items():
        ax.scatter([row[convention] / 1e9], [row["mean_accuracy"]], marker="s", s=25, label=name)
    ax.scatter([chosen[convention] / 1e9], [chosen["mean_accuracy"]], marker="*", s=120, color="C3",
               label="chosen", zorder=5)
    unit = "GFLOPs (2 per multiply-add)" if convention == "flops" else "G multiply-adds"
    ax.set_xlabel(f"{unit}, all four predictions")
    ax.set_ylabel("mean accuracy over attributes")
    ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def plot_confusions(preds: dict, split, vocab: dict):
    """Row-normalised confusion matrices of the chosen network, one panel per attribute."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(preds), figsize=figsize("wide"))
    for ax, (a, pred) in zip(np.atleast_1d(axes), preds.items()):
        names = vocab[a]
        cm = confusion(pred, split.labels[a], len(names)).astype(float)
        cm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        ax.imshow(cm, vmin=0, vmax=1, cmap="Blues")
        short = [n[:6] for n in names]
        ax.set_xticks(range(len(names)), short, rotation=90, fontsize=5)
        ax.set_yticks(range(len(names)), short, fontsize=5)
        ax.set_title(a, fontsize=8)
        ax.set_xlabel("predicted", fontsize=6)
        ax.grid(False)
    np.atleast_1d(axes)[0].set_ylabel("true", fontsize=6)
    fig.tight_layout()
    return fig


def plot_face_grid(rows: list, col_titles: list, row_titles: list):
    """A grid of PIL faces (e.g. identities x emotions)."""
    import matplotlib.pyplot as plt

    n, m = len(rows), len(rows[0])
    fig, axes = plt.subplots(n, m, figsize=(1.2 * m, 1.25 * n), squeeze=False)
    for i, row in enumerate(rows):
        for j, im in enumerate(row):
            ax = axes[i][j]
            ax.imshow(im)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            if i == 0:
                ax.set_title(col_titles[j], fontsize=7)
            if j == 0:
                ax.set_ylabel(row_titles[i], fontsize=6)
    fig.tight_layout()
    return fig


def plot_predictions(images, preds: dict, split, vocab: dict, idx):
    """Test faces with the multi-head network's four predictions (wrong ones marked with the truth): `images`
    uint8 [len(idx), 3, S, S], the test images at `idx` (`split.images.get(idx)`); `preds` and `split`'s
    labels are indexed over the whole test split."""
    import matplotlib.pyplot as plt

    cols = 6
    rows = (len(idx) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(1.5 * cols, 1.9 * rows), squeeze=False)
    short = {"age": "age", "gender": "sex", "ethnicity": "grp", "emotion": "emo"}
    for ax in axes.flat:
        ax.axis("off")
    for ax, i, image in zip(axes.flat, idx, images):
        ax.imshow(image.permute(1, 2, 0).numpy())
        lines = []
        for a, p in preds.items():
            t = int(split.labels[a][i])
            name = vocab[a][int(p[i])]
            mark = "" if t < 0 or t == int(p[i]) else f" ✗({vocab[a][t][:8]})"
            lines.append(f"{short[a]}: {name[:10]}{mark}")
        ax.set_title("\n".join(lines), fontsize=5, loc="left")
    fig.tight_layout()
    return fig
