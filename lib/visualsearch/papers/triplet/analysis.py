"""Measurements of the triplet paper's retrieval results and embeddings, for its figures and tables: recall
curves, per-category recall, the category of the top-1 result, similarity samples, and where the wrong top-1
results come from. No model and no training here: only tensors in, arrays out."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

if TYPE_CHECKING:
    from ...evaluate import Retrieval


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
