"""The CFQ notebook's figures, drawn from results (tables, judgments, stored scores and logs): no models, no
training, so a restyled figure retrains nothing."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ... import cfq_metrics as cm
from ...report import figsize
from .tables import HEADLINE, RUN_LABELS


def data_limited_figure(table: pd.DataFrame):
    """Each headline number against the number of Fashion IQ-style training pairs, one line per run."""
    fig, axes = plt.subplots(1, len(HEADLINE), figsize=figsize("wide"))
    for ax, metric in zip(axes, HEADLINE):
        part = table[table.metric == metric]
        for method, line in part.groupby("method", sort=False):
            ax.plot(line["FIQ training pairs"], line["reproduced"], marker="o", label=method)
        ax.set_xscale("log")
        counts = sorted(part["FIQ training pairs"].unique())
        ax.set_xticks(counts, [str(c) for c in counts], fontsize=7)
        ax.xaxis.set_minor_locator(plt.NullLocator())
        ax.set_title(metric, fontsize=8)
        ax.set_xlabel("FIQ training pairs")
    axes[0].set_ylabel("score (%)")
    axes[0].legend(fontsize=5)
    fig.tight_layout()
    return fig


def judgment_histogram(agg: pd.DataFrame):
    """Left: share of judged pairs labelled positive at each threshold, accurate and similar. Right: the
    distribution of mean judgments. What the paper's labels look like before any model is scored."""
    fr = cm.label_fractions(agg)
    fig, axes = plt.subplots(1, 2, figsize=figsize("wide"))
    width = 0.4
    x = np.arange(len(cm.THRESHOLDS))
    for k, (kind, colour) in enumerate((("accurate", "tab:blue"), ("similar", "tab:orange"))):
        part = fr[fr.kind == kind]
        axes[0].bar(x + (k - 0.5) * width, part["fraction_positive"], width, label=kind, color=colour)
    axes[0].set_xticks(x, [f"> {t:g}" for t in cm.THRESHOLDS], rotation=30)
    axes[0].set_ylabel("fraction of pairs labelled positive")
    axes[0].set_xlabel("threshold on the mean judgment")
    axes[0].legend()
    bins = np.linspace(-1, 1, 13)
    axes[1].hist([agg["accurate"], agg["similar"]], bins=bins, label=["accurate", "similar"],
                 color=["tab:blue", "tab:orange"])
    axes[1].set_xlabel("mean judgment over annotators")
    axes[1].set_ylabel("judged pairs")
    axes[1].legend()
    fig.tight_layout()
    return fig


def _corner_colour(value: float):
    return plt.get_cmap("RdYlGn")((value + 1) / 2)


def figure1(agg: pd.DataFrame, scores: dict, load_image, n_queries: int = 3, top_k: int = 4, seed: int = 0):
    """The paper's Figure 1 analogue: per example query (drawn with `seed`, not chosen by result) its
    image and caption, the most relevant judged catalog items (by mean accuracy, then similarity), and the top
    results of each run among the judged items. Corner squares: mean accuracy (left) and similarity (right),
    red = -1 to green = +1.

    agg: the aggregated judgments (data.cfq_agg); scores: {run: its score of every row of agg}
    (`CFQExperiment.judged_scores`); load_image(hash) -> PIL image or None (data.cfq.load_image)."""
    agg = agg.copy()
    keys = agg[["query_hash", "caption"]].drop_duplicates().reset_index(drop=True)
    rng = np.random.default_rng(seed)
    picked = keys.iloc[sorted(rng.choice(len(keys), size=min(n_queries, len(keys)), replace=False))]
    columns = [("most relevant", None)] + [(RUN_LABELS[r], r) for r in scores]
    fig, axes = plt.subplots(len(picked), 1 + top_k * len(columns),
                             figsize=(1.1 * (1 + top_k * len(columns)), 1.45 * len(picked)), squeeze=False)
    for row, (qh, cap) in enumerate(zip(picked["query_hash"], picked["caption"])):
        mask = ((agg["query_hash"] == qh) & (agg["caption"] == cap)).to_numpy()
        group = agg[mask].copy()
        ax = axes[row, 0]
        img = load_image(qh)
        if img is not None:
            ax.imshow(img)
        ax.set_title(f"query:\n{cap}", fontsize=6)
        col = 1
        for title, run in columns:
            if run is None:
                order = (group["accurate"] + 0.1 * group["similar"]).to_numpy()
            else:
                order = scores[run][mask]
            top = group.iloc[np.argsort(-order, kind="stable")[:top_k]]
            for j in range(top_k):
                ax = axes[row, col + j]
                if j < len(top):
                    item = top.iloc[j]
                    im = load_image(item["catalog_hash"])
                    if im is not None:
                        ax.imshow(im)
                    size = (im.size[0] if im is not None else 32) * 0.22
                    for x0, value in ((0, item["accurate"]), (1, item["similar"])):
                        xy = (0 if x0 == 0 else (im.size[0] if im is not None else 32) - size, 0)
                        ax.add_patch(plt.Rectangle(xy, size, size, color=_corner_colour(value)))
                if j == 0 and row == 0:
                    ax.set_title(title, fontsize=6, loc="left")
            col += top_k
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout(pad=0.3)
    return fig


def training_curves(pretrain_log: pd.DataFrame | None, stage_logs: dict):
    """Loss per step of pretraining (`pretrain_log`, None where nothing was pretrained here) and of each run's
    training stages (`stage_logs`: {run: {stage: log}}, `CFQExperiment.stage_logs()`), smoothed over 20 steps."""
    fig, axes = plt.subplots(1, 3, figsize=figsize("wide"))
    if pretrain_log is not None and len(pretrain_log):
        axes[0].plot(pretrain_log["step"], pretrain_log["loss"].rolling(20, min_periods=1).mean())
    axes[0].set_title("contrastive pretraining", fontsize=8)
    for ax, stage in ((axes[1], "imfq"), (axes[2], "fiq")):
        for run, logs in stage_logs.items():
            log = logs.get(stage)
            if log is not None and len(log):
                ax.plot(log["step"], log["loss"].rolling(20, min_periods=1).mean(), label=RUN_LABELS[run])
        ax.set_title(f"{'iMFQ' if stage == 'imfq' else 'FIQ'} stage", fontsize=8)
    for ax in axes:
        ax.set_xlabel("step")
    axes[0].set_ylabel("loss")
    for ax in axes[1:]:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=5)
    fig.tight_layout()
    return fig
