"""Tables and figures of the MAAF notebook, from `maaf_experiments` results.

Tables are tidy (method, dataset, metric, reproduced) as `report.Reporter.table` expects. Figures:
- `attention_figure`: for one query, each word's attention (the query) over the image tokens (the keys) of
  each stage grid (e.g. 14x14 and 7x7 at 224 px), per fusion block, upsampled and laid over the image:
  the real weights of `MAAF.compose(..., return_attention=True)`, heads averaged.
- `retrieval_figure`: reference image + text, then the top results, hits framed in green.
- `curves_figure`: training loss per step and, where recorded, validation recall during training.
"""
from __future__ import annotations

import textwrap

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .maaf_experiments import SplitInputs, normalize_pixels
from .models.maaf import word_attention_maps

METHOD_NAMES = {"maaf": "MAAF", "tirg": "TIRG", "image_only": "image only", "text_only": "text only",
                "concat": "concat", "add": "add", "tirg_lastconv": "TIRG (last conv)",
                "cross_attention": "two-stream cross-attention"}
FIQ_SCORE = "(R@10+R@50)/2"


def method_name(fusion: str) -> str:
    return METHOD_NAMES.get(fusion, fusion)


# ------------------------------------------------------------------------------------------------ tables

def fiq_rows(results: dict) -> pd.DataFrame:
    """Fashion IQ protocol rows: R@10, R@50 per category, their averages over categories, (R@10+R@50)/2.

    `results`: {method name: RunResult} with recall per category (dress, shirt, toptee)."""
    rows = []
    for method, res in results.items():
        cats = list(res.recall)
        for c in cats:
            rows += [(method, c, m, res.recall[c][m]) for m in ("R@10", "R@50")]
        r10 = float(np.mean([res.recall[c]["R@10"] for c in cats]))
        r50 = float(np.mean([res.recall[c]["R@50"] for c in cats]))
        rows += [(method, "average", "R@10", r10), (method, "average", "R@50", r50),
                 (method, "average", FIQ_SCORE, (r10 + r50) / 2)]
    return pd.DataFrame(rows, columns=["method", "dataset", "metric", "reproduced"])


def recall_rows(results: dict, dataset: str, ks=(1, 5, 10, 50), split: str = "test") -> pd.DataFrame:
    """One row per (method, R@k) on a single evaluation split."""
    rows = [(method, dataset, f"R@{k}", res.recall[split][f"R@{k}"]) for method, res in results.items() for k in ks]
    return pd.DataFrame(rows, columns=["method", "dataset", "metric", "reproduced"])


def ablation_rows(results: dict, switches: dict, reference: str) -> pd.DataFrame:
    """Per ablation row (method = the row's name and its switch): the Fashion IQ-style score and its
    change against `reference` (the full model)."""
    ref = fiq_score(results[reference])
    rows = []
    for name, res in results.items():
        score = fiq_score(res)
        label = f"{name} ({switches[name]})" if switches.get(name) else name
        rows += [{"method": label, "dataset": "average", "metric": FIQ_SCORE, "reproduced": score},
                 {"method": label, "dataset": "average", "metric": "change vs full model", "reproduced": score - ref}]
    return pd.DataFrame(rows)


def fiq_score(res) -> float:
    return float(np.mean([(v["R@10"] + v["R@50"]) / 2 for v in res.recall.values()]))


def beats(scores: dict, winner: str, others: list, n_queries: int) -> tuple[bool, str]:
    """Whether `winner` scores above every one of `others`, and a sentence with the margins (and the
    binomial standard error of the winner's recall, to read them against)."""
    w = scores[winner]
    se = 100 * np.sqrt(max(w / 100 * (1 - w / 100), 1e-9) / max(n_queries, 1))
    margins = {o: w - scores[o] for o in others}
    text = f"{winner} {w:.1f} (s.e. ~{se:.1f} over {n_queries} queries); margins: " + ", ".join(
        f"vs {o} {scores[o]:.1f}: {m:+.1f}" for o, m in margins.items())
    return all(m > 0 for m in margins.values()), text


# ----------------------------------------------------------------------------------------------- figures

def _show(ax, pixels: torch.Tensor):
    ax.imshow(pixels.permute(1, 2, 0).numpy())
    ax.set_xticks([])
    ax.set_yticks([])


def attention_figure(model, group: SplitInputs, query_index: int, max_words: int = 6, device: str = "cpu"):
    """Each word's attention over each stage grid, per block, overlaid on the reference image."""
    split = group.split
    q = split.queries[query_index]
    text = split.query_text(q)
    pixels = group.table.pixels[q.source:q.source + 1]
    model = model.to(device).eval()
    with torch.no_grad():
        out = model.compose(normalize_pixels(pixels).to(device), [text], return_attention=True)
    words = out.tokens[0][:max_words]
    stages = [s for s, *_ in out.layout.stages]
    n_blocks = len(out.attentions)
    rows = n_blocks * len(stages)
    fig, axes = plt.subplots(rows, len(words) + 1, figsize=(1.6 * (len(words) + 1), 1.6 * rows + 0.6), squeeze=False)
    size = pixels.shape[-1]
    grey = pixels[0].float().mean(0).numpy() / 255
    for b in range(n_blocks):
        maps = word_attention_maps(out, 0, b)
        for si, stage in enumerate(stages):
            r = b * len(stages) + si
            _show(axes[r, 0], pixels[0])
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
    fig.suptitle(textwrap.shorten(f"query: {text}", 90), fontsize=8)
    fig.tight_layout()
    return fig


def retrieval_figure(model, group: SplitInputs, query_indices, k: int = 5, device: str = "cpu",
                     maps_key: str | None = None):
    """Reference + text, then the top-k gallery images (reference excluded); hits framed green."""
    split = group.split
    model = model.to(device).eval()
    with torch.no_grad():
        gallery = torch.cat([model.embed_catalog(normalize_pixels(group.table.pixels[i:i + 128]).to(device)).cpu()
                             for i in range(0, len(split.images), 128)])
        gallery = F.normalize(gallery, dim=-1)
        queries = [split.queries[i] for i in query_indices]
        src = normalize_pixels(group.table.pixels[[q.source for q in queries]]).to(device)
        composed = F.normalize(model.compose(src, [split.query_text(q) for q in queries]).cpu(), dim=-1)
    scores = composed @ gallery.T
    for row, q in enumerate(queries):
        scores[row, q.source] = -float("inf")
    top = scores.topk(k, dim=1).indices
    fig, axes = plt.subplots(len(queries), k + 1, figsize=(1.5 * (k + 1), 1.75 * len(queries)), squeeze=False)
    for row, q in enumerate(queries):
        _show(axes[row, 0], group.table.pixels[q.source])
        axes[row, 0].set_title("\n".join(textwrap.wrap(split.query_text(q), 28)[:3]), fontsize=6)
        for j, g in enumerate(top[row].tolist()):
            ax = axes[row, j + 1]
            _show(ax, group.table.pixels[g])
            hit = split.labels[g] == q.target_label
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


# ------------------------------------------------------------------------- where named places are looked at

def place_attention(model, group: SplitInputs, max_queries: int = 200, device: str = "cpu") -> pd.DataFrame:
    """On CSS-style scenes: how much a word naming a grid place ("topleft", ...) attends to the image tokens
    of that place, relative to the average image token (1 = no preference, < 1 = looks elsewhere).

    The paper observes, from its attention figures, that words tend not to attend to the region they refer
    to; this measures it. Tokens belong to the 3x3 cell that holds their centre; one row per (block, stage)
    with the mean ratio over queries naming a place whose cell holds at least one token of that stage."""
    from .data.scenes import COLUMNS, ROWS

    places = {f"{r}{c}": (i, j) for i, r in enumerate(ROWS) for j, c in enumerate(COLUMNS)}
    split = group.split
    model = model.to(device).eval()
    ratios: dict = {}
    for q in split.queries[:max_queries]:
        text = split.query_text(q)
        with torch.no_grad():
            out = model.compose(normalize_pixels(group.table.pixels[[q.source]]).to(device), [text],
                                return_attention=True)
        words = out.tokens[0]
        named = [(k, places[w]) for k, w in enumerate(words) if w in places]
        for block in range(len(out.attentions)):
            maps = word_attention_maps(out, 0, block)
            for stage, grid in maps.items():
                h, w = grid.shape[-2:]
                rows = ((torch.arange(h) + 0.5) / h * 3).long()
                cols = ((torch.arange(w) + 0.5) / w * 3).long()
                for k, (i, j) in named:
                    inside = (rows[:, None] == i) & (cols[None, :] == j)
                    if inside.any():
                        att = grid[k].cpu()
                        ratios.setdefault((block + 1, stage), []).append(float(att[inside].mean() / att.mean()))
    return pd.DataFrame([{"block": b, "stage": f"layer{s}", "queries": len(v), "ratio": float(np.mean(v))}
                         for (b, s), v in sorted(ratios.items())])
