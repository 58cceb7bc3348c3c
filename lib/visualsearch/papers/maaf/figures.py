"""Figures of the MAAF notebook, drawn from what `experiment` computed (no model runs here):

- `attention_figure`: for one query, each word's attention (the query) over the image tokens (the keys) of
  each stage grid (e.g. 14x14 and 7x7 at 224 px), per fusion block, upsampled and laid over the image
  (`experiment.word_attention`).
- `retrieval_figure`: reference image + text, then the top results, hits framed in green
  (`experiment.retrieval_examples`).
- `curves_figure`: training loss per step and, where recorded, validation recall during training.
"""
from __future__ import annotations

import textwrap

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F


def _show(ax, pixels: torch.Tensor):
    ax.imshow(pixels.permute(1, 2, 0).numpy())
    ax.set_xticks([])
    ax.set_yticks([])


def attention_figure(att):
    """Each word's attention over each stage grid, per block, overlaid on the reference image. `att`: an
    `experiment.WordAttention` (text, pixels uint8 [3, S, S], words, stages, maps per block)."""
    words, stages, pixels = att.words, att.stages, att.pixels
    n_blocks = len(att.maps)
    rows = n_blocks * len(stages)
    fig, axes = plt.subplots(rows, len(words) + 1, figsize=(1.6 * (len(words) + 1), 1.6 * rows + 0.6), squeeze=False)
    size = pixels.shape[-1]
    grey = pixels.float().mean(0).numpy() / 255
    for b in range(n_blocks):
        maps = att.maps[b]
        for si, stage in enumerate(stages):
            r = b * len(stages) + si
            _show(axes[r, 0], pixels)
            h, w = maps[stage].shape[-2:]
            axes[r, 0].set_ylabel(f"block {b + 1}\nlayer{stage} {h}x{w}", fontsize=7)
            row = maps[stage][: len(words)]
            low, top = min(0.0, float(row.min())), float(row.max())  # one colour scale per row
            top = top if top > low else low + 1.0
            for wi, word in enumerate(words):
                up = F.interpolate(maps[stage][wi][None, None].float().cpu(), size=(size, size), mode="bilinear",
                                   align_corners=False)[0, 0].numpy()
                ax = axes[r, wi + 1]
                ax.imshow(grey, cmap="gray", vmin=0, vmax=1)
                ax.imshow(up, cmap="inferno", alpha=0.6, vmin=low, vmax=top)
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(word, fontsize=8)
    fig.suptitle(textwrap.shorten(f"query: {att.text}", 90), fontsize=8)
    fig.tight_layout()
    return fig


def retrieval_figure(examples):
    """Reference + text, then the top-k gallery images (reference excluded); hits framed green. `examples`:
    an `experiment.RetrievalExamples` (references, texts, results [Q, k, 3, S, S], hits [Q, k])."""
    n, k = examples.hits.shape
    fig, axes = plt.subplots(n, k + 1, figsize=(1.5 * (k + 1), 1.75 * n), squeeze=False)
    for row in range(n):
        _show(axes[row, 0], examples.references[row])
        axes[row, 0].set_title("\n".join(textwrap.wrap(examples.texts[row], 28)[:3]), fontsize=6)
        for j in range(k):
            ax = axes[row, j + 1]
            _show(ax, examples.results[row, j])
            hit = bool(examples.hits[row, j])
            for spine in ax.spines.values():
                spine.set_edgecolor("limegreen" if hit else "lightgrey")
                spine.set_linewidth(3 if hit else 1)
            ax.set_title(f"#{j + 1}" + (" target" if hit else ""), fontsize=7)
    fig.tight_layout()
    return fig


def curves_figure(results: dict, recall_metric: str = "R@10"):
    """Training loss (smoothed) per model and, where recorded, the validation recall during training."""
    curves = {name: res.log for name, res in results.items()}
    has_eval = any(recall_metric in log.columns for log in curves.values())
    fig, axes = plt.subplots(1, 2 if has_eval else 1, figsize=(9 if has_eval else 5, 3.2), squeeze=False)
    for name, log in curves.items():
        smooth = log["loss"].rolling(max(1, len(log) // 30), min_periods=1).mean()
        axes[0, 0].plot(log["step"], smooth, label=name)
        if has_eval and recall_metric in log.columns:
            points = log.dropna(subset=[recall_metric])
            axes[0, 1].plot(points["step"], points[recall_metric], marker="o", label=name)
    axes[0, 0].set_xlabel("step")
    axes[0, 0].set_ylabel("training loss (in-batch softmax)")
    axes[0, 0].legend(fontsize=7)
    if has_eval:
        axes[0, 1].set_xlabel("step")
        axes[0, 1].set_ylabel(f"validation {recall_metric} (%)")
        axes[0, 1].legend(fontsize=7)
    fig.tight_layout()
    return fig
