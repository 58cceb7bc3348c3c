"""Scoring of Challenging Fashion Queries (CFQ): judgments -> labels -> ranking metrics.

Why this module exists: CFQ is the one benchmark of the four papers whose labels carry *negative*
information (a caption that is wrong for an item, an item that is not a reasonable match). Its scoring has
several steps that are easy to get subtly wrong, so each is a small function here, tested against
scikit-learn and hand-computed cases:

1. `aggregate_judgments`: the annotators' judgments (accurate and similar, each in {+1, 0, -1}) are averaged
   per (subset, query image, caption, catalog item) into a mean accuracy and a mean similarity in [-1, 1].
2. Binary labels `mean > t` for the seven thresholds `THRESHOLDS`, named as the released code names them
   (`accurate_0` is `accurate > -0.01`, i.e. a mean of at least 0; `similar_-2/3` is `similar > -0.67`, which
   *includes* a mean of exactly -2/3). Graded relevance for nDCG = int(3 (acc + sim + 2)) in 0..12.
3. `cfq_metrics`: per subset, pooled ROC-AUC and AP over all judged pairs, the mean over groups of per-group
   ROC-AUC and AP (groups with one class skipped), mean per-group R-precision (groups without a positive
   skipped) and mean per-group nDCG with linear and exponential gains; then the subsets combined, weighted by
   their number of distinct query images.
4. `primary_metrics`: the paper's three headline numbers: accurate mAP (label `accurate_0`), similar mAP
   (label `similar_-2/3`), linear nDCG, all on the weighted average over subsets.

The same paper scores its iMaterialist-style weak-supervision retrieval with the same ROC-AUC and AP:
`imat_retrieval_metrics` (the released evaluation: correct = exactly the target's label set).

Differences from the released code (yahoo/maaf, src/maaf/datasets/cfq.py), each deliberate and stated:
- Groups are (query image, caption) by default. The released code groups by caption text alone, which merges
  different query images that share a caption; `group_by="caption"` reproduces that.
- R-precision is a fraction (positives in the top R over R). The released code returns the count;
  `rprecision="count"` reproduces it.
- Ties in scores: ROC-AUC, AP and nDCG treat tied scores as scikit-learn does (averaged); R-precision breaks
  ties by row order (the released code's argsort breaks them arbitrarily).
- Graded relevance is truncated with a 1e-9 tolerance so that 3 x (2/3 + ...) is not truncated one level
  down by floating-point error (the released code's plain `int` can be).
- nDCG skips groups of one item and groups whose ideal DCG is 0 (undefined); scikit-learn raises for the
  first and returns 0 for the second. Subsets are combined for nDCG by the same query-image weights as for
  the binary metrics (the released code sums per-caption values over subsets instead).
- A subset whose value is undefined (NaN: no group with both classes) is left out of the weighted average
  rather than making it NaN.
- The released code's paraphrase augmentation (`equivalent_captions.json`) never reaches its metrics; here
  paraphrases are read by the reader and not used by the metrics either, which is the released behaviour.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

THRESHOLDS = (-1.0, -0.67, -0.34, -0.01, 0.33, 0.66, 0.99)  # label = mean > t, the released code's values
JUDGMENT_KEYS = ("subset", "query_hash", "caption", "catalog_hash")  # one aggregated row per key
BINARY_METRICS = ("roc_auc", "ap", "m_auc", "m_ap", "rprec")  # computed for every label column
RANKING_METRICS = ("linear_ndcg", "exp_ndcg")  # computed on graded relevance
PRIMARY = {"accurate mAP": ("m_ap", "accurate_0"), "similar mAP": ("m_ap", "similar_-2/3"),
           "nDCG": ("linear_ndcg", "relevance")}
WEIGHTED = "weighted_average"  # the subset name of the combination over subsets


def threshold_name(t: float) -> str:
    """The released code's name for threshold t: round(3t) thirds, e.g. -0.67 -> '-2/3', -0.01 -> '0'."""
    thirds = int(np.round(t * 3))
    return str(thirds // 3) if thirds in (-3, 0, 3) else f"{thirds}/3"


def label_columns(thresholds=THRESHOLDS) -> list[str]:
    """Names of the binary label columns, accurate first: accurate_-1, ..., accurate_1, similar_-1, ..."""
    return [f"{kind}_{threshold_name(t)}" for kind in ("accurate", "similar") for t in thresholds]


def graded_relevance(accurate, similar) -> np.ndarray:
    """int(3 (acc + sim + 2)) in 0..12, with a 1e-9 tolerance against floating-point truncation."""
    value = 3.0 * (np.asarray(accurate, dtype=float) + np.asarray(similar, dtype=float) + 2.0)
    return np.floor(value + 1e-9).astype(int)


def aggregate_judgments(judgments: pd.DataFrame, thresholds=THRESHOLDS) -> pd.DataFrame:
    """Average per (subset, query_hash, caption, catalog_hash) and add labels and graded relevance.

    `judgments` has one row per annotator judgment with the columns of `JUDGMENT_KEYS` and numeric
    `accurate`, `similar` in {-1, 0, 1}. Returns one row per key with the mean `accurate` and `similar`,
    `n_judgments`, `relevance` (0..12) and one boolean column per (kind, threshold).
    """
    missing = [c for c in (*JUDGMENT_KEYS, "accurate", "similar") if c not in judgments.columns]
    if missing:
        raise ValueError(f"judgments lack columns {missing} (have {list(judgments.columns)})")
    for col in ("accurate", "similar"):
        values = pd.to_numeric(judgments[col], errors="coerce")
        bad = values.isna() | ~values.between(-1, 1)
        if bad.any():
            raise ValueError(f"judgments column '{col}' must be numeric in [-1, 1]; "
                             f"first bad value {judgments[col][bad].iloc[0]!r}")
    agg = (judgments.groupby(list(JUDGMENT_KEYS), sort=True)
           .agg(accurate=("accurate", "mean"), similar=("similar", "mean"), n_judgments=("accurate", "size"))
           .reset_index())
    agg["relevance"] = graded_relevance(agg["accurate"], agg["similar"])
    for kind in ("accurate", "similar"):
        for t in thresholds:
            agg[f"{kind}_{threshold_name(t)}"] = agg[kind] > t
    return agg


def label_fractions(agg: pd.DataFrame, thresholds=THRESHOLDS) -> pd.DataFrame:
    """Fraction of aggregated pairs labelled positive at each threshold, per kind (the judgment histogram)."""
    rows = []
    for kind in ("accurate", "similar"):
        for t in thresholds:
            col = f"{kind}_{threshold_name(t)}"
            rows.append({"kind": kind, "threshold": t, "label": col, "fraction_positive": float(agg[col].mean()),
                         "n_pairs": len(agg)})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------------------
# Metrics of one ranked list, for many label columns at once. Scores descending; tied scores form blocks.

def _tie_blocks(sorted_scores: np.ndarray) -> np.ndarray:
    """Index (into the sorted order) of the last element of each block of equal scores."""
    change = np.nonzero(np.diff(sorted_scores))[0]
    return np.r_[change, len(sorted_scores) - 1]


def roc_auc_columns(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """ROC-AUC of `scores` [n] for each boolean column of `labels` [n, L]; NaN where a column has one class.

    Mann-Whitney form with average ranks for ties, which equals scikit-learn's trapezoidal ROC-AUC.
    """
    labels = np.asarray(labels, dtype=bool).reshape(len(scores), -1)
    ranks = pd.Series(scores).rank(method="average").to_numpy()  # ascending, ties averaged
    pos = labels.sum(0).astype(float)
    neg = len(scores) - pos
    rank_sum = ranks @ labels
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (rank_sum - pos * (pos + 1) / 2) / (pos * neg)
    auc[(pos == 0) | (neg == 0)] = np.nan
    return auc


def average_precision_columns(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Average precision per label column, as scikit-learn defines it (sum over distinct score thresholds of
    the recall increase times the precision); NaN where a column has one class (as the released code
    skips)."""
    labels = np.asarray(labels, dtype=bool).reshape(len(scores), -1)
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order].astype(float)
    ends = _tie_blocks(s)
    tp = np.cumsum(y, 0)[ends]  # [blocks, L]
    predicted = (ends + 1)[:, None].astype(float)
    pos = y.sum(0)
    precision = tp / predicted
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = tp / pos
    recall_step = np.diff(np.vstack([np.zeros((1, y.shape[1])), recall]), axis=0)
    ap = (recall_step * precision).sum(0)
    ap[(pos == 0) | (pos == len(scores))] = np.nan
    return ap


def r_precision_columns(scores: np.ndarray, labels: np.ndarray, as_fraction: bool = True) -> np.ndarray:
    """R-precision per label column: positives among the top R (R = number of positives), over R unless
    `as_fraction` is False (the released code's count). NaN where a column has no positive. Ties in scores
    are broken by row order."""
    labels = np.asarray(labels, dtype=bool).reshape(len(scores), -1)
    order = np.argsort(-scores, kind="stable")
    cum = np.vstack([np.zeros((1, labels.shape[1])), np.cumsum(labels[order], 0)])
    r = labels.sum(0)
    hits = cum[r, np.arange(labels.shape[1])]
    out = hits / np.maximum(r, 1) if as_fraction else hits.astype(float)
    out[r == 0] = np.nan
    return out


def _dcg_tie_averaged(scores: np.ndarray, gains: np.ndarray) -> float:
    """DCG of the ranking by `scores`, tied items sharing the mean gain of their block (scikit-learn's
    ignore_ties=False), discount 1 / log2(rank + 1)."""
    order = np.argsort(-scores, kind="stable")
    s, g = scores[order], gains[order].astype(float)
    discount = 1.0 / np.log2(np.arange(len(s)) + 2.0)
    ends = _tie_blocks(s)
    starts = np.r_[0, ends[:-1] + 1]
    total = 0.0
    for a, b in zip(starts, ends + 1):
        total += g[a:b].mean() * discount[a:b].sum()
    return total


def ndcg(scores: np.ndarray, relevance: np.ndarray, exponential: bool = False) -> float:
    """nDCG of one ranked list with graded relevance (gains = relevance, or 2^relevance - 1). NaN for a list
    of one item or with no relevant item (ideal DCG 0)."""
    scores, relevance = np.asarray(scores, dtype=float), np.asarray(relevance, dtype=float)
    if len(scores) < 2:
        return math.nan
    gains = 2.0 ** relevance - 1.0 if exponential else relevance
    ideal = np.sort(gains)[::-1]
    idcg = float((ideal / np.log2(np.arange(len(ideal)) + 2.0)).sum())
    if idcg <= 0:
        return math.nan
    return _dcg_tie_averaged(scores, gains) / idcg


# ---------------------------------------------------------------------------------------------------------
# Whole benchmark

@dataclass
class CFQResult:
    """Metrics of one model on CFQ.

    `table`: tidy rows (subset, metric, label, value, n_groups), subset `weighted_average` included.
    `per_group`: one row per (subset, group, label) with the per-group AP, ROC-AUC, R-precision and the
    nDCGs, for inspection (which captions a model gets wrong).
    """

    table: pd.DataFrame
    per_group: pd.DataFrame

    def value(self, metric: str, label: str, subset: str = WEIGHTED) -> float:
        row = self.table[(self.table.subset == subset) & (self.table.metric == metric) & (self.table.label == label)]
        if len(row) != 1:
            raise KeyError(f"no single value for subset={subset!r} metric={metric!r} label={label!r}")
        return float(row.value.iloc[0])

    def primary(self) -> dict:
        """The paper's three primary metrics on the weighted average over subsets."""
        return {name: self.value(metric, label) for name, (metric, label) in PRIMARY.items()}


def _group_keys(group_by: str) -> list[str]:
    if group_by == "query_caption":
        return ["query_hash", "caption"]
    if group_by == "caption":
        return ["caption"]
    raise ValueError(f"group_by must be 'query_caption' (the companion's) or 'caption' (the released code's), "
                     f"got {group_by!r}")


def _subset_metrics(agg: pd.DataFrame, labels: list[str], group_by: str, rprecision: str):
    scores = agg["score"].to_numpy(dtype=float)
    y = agg[labels].to_numpy(dtype=bool)
    rows = []
    pooled_auc = roc_auc_columns(scores, y)
    pooled_ap = average_precision_columns(scores, y)
    per_group = []
    for key, idx in agg.groupby(_group_keys(group_by), sort=True).indices.items():
        s, yy = scores[idx], y[idx]
        rel = agg["relevance"].to_numpy()[idx]
        per_group.append({
            "group": key if isinstance(key, tuple) else (key,),
            "auc": roc_auc_columns(s, yy), "ap": average_precision_columns(s, yy),
            "rprec": r_precision_columns(s, yy, as_fraction=(rprecision == "fraction")),
            "linear_ndcg": ndcg(s, rel), "exp_ndcg": ndcg(s, rel, exponential=True)})
    auc_g = np.array([g["auc"] for g in per_group]).reshape(-1, len(labels))
    ap_g = np.array([g["ap"] for g in per_group]).reshape(-1, len(labels))
    rp_g = np.array([g["rprec"] for g in per_group]).reshape(-1, len(labels))
    for j, label in enumerate(labels):
        for metric, value, n in (("roc_auc", pooled_auc[j], 1), ("ap", pooled_ap[j], 1),
                                 ("m_auc",) + _nanmean_count(auc_g[:, j]),
                                 ("m_ap",) + _nanmean_count(ap_g[:, j]),
                                 ("rprec",) + _nanmean_count(rp_g[:, j])):
            rows.append({"metric": metric, "label": label, "value": value, "n_groups": n})
    for metric in RANKING_METRICS:
        value, n = _nanmean_count(np.array([g[metric] for g in per_group]))
        rows.append({"metric": metric, "label": "relevance", "value": value, "n_groups": n})
    detail = []
    for g in per_group:
        for j, label in enumerate(labels):
            detail.append({"group": g["group"], "label": label, "auc": g["auc"][j], "ap": g["ap"][j],
                           "rprec": g["rprec"][j]})
        detail.append({"group": g["group"], "label": "relevance", "linear_ndcg": g["linear_ndcg"],
                       "exp_ndcg": g["exp_ndcg"]})
    return rows, detail


def _nanmean_count(values: np.ndarray) -> tuple[float, int]:
    ok = ~np.isnan(values)
    return (float(values[ok].mean()) if ok.any() else math.nan), int(ok.sum())


def cfq_metrics(agg: pd.DataFrame, scores=None, group_by: str = "query_caption", rprecision: str = "fraction",
                thresholds=THRESHOLDS) -> CFQResult:
    """All CFQ metrics of one model.

    `agg`: output of `aggregate_judgments`; `scores`: the model's score per row of `agg` (cosine of the query
    embedding of (query image, caption) and the catalog item's embedding), or None to use `agg["score"]`.
    `group_by`: "query_caption" (default) or "caption" (the released code's grouping by caption text).
    `rprecision`: "fraction" (default) or "count" (the released code's).
    """
    if rprecision not in ("fraction", "count"):
        raise ValueError(f"rprecision must be 'fraction' or 'count', got {rprecision!r}")
    agg = agg.copy()
    if scores is not None:
        scores = np.asarray(scores, dtype=float).reshape(-1)
        if len(scores) != len(agg):
            raise ValueError(f"{len(scores)} scores for {len(agg)} judged pairs")
        agg["score"] = scores
    if "score" not in agg.columns:
        raise ValueError("no scores: pass `scores` or a 'score' column")
    if not np.isfinite(agg["score"].to_numpy(dtype=float)).all():
        raise ValueError("scores must be finite")
    labels = label_columns(thresholds)
    rows, details, weights = [], [], {}
    for subset, part in agg.groupby("subset", sort=True):
        part = part.reset_index(drop=True)
        weights[subset] = part["query_hash"].nunique()
        sub_rows, sub_detail = _subset_metrics(part, labels, group_by, rprecision)
        rows += [{"subset": subset, **r} for r in sub_rows]
        details += [{"subset": subset, **d} for d in sub_detail]
    table = pd.DataFrame(rows)
    combined = []
    for (metric, label), part in table.groupby(["metric", "label"], sort=False):
        w = part["subset"].map(weights).to_numpy(dtype=float)
        v = part["value"].to_numpy(dtype=float)
        ok = ~np.isnan(v)
        value = float((w[ok] * v[ok]).sum() / w[ok].sum()) if ok.any() else math.nan
        combined.append({"subset": WEIGHTED, "metric": metric, "label": label, "value": value,
                         "n_groups": int(part["n_groups"].sum())})
    table = pd.concat([table, pd.DataFrame(combined)], ignore_index=True)
    return CFQResult(table=table, per_group=pd.DataFrame(details))


def cosine_scores(agg: pd.DataFrame, query_embeddings: dict, catalog_embeddings: dict) -> np.ndarray:
    """Cosine similarity per row of `agg` from embeddings keyed by (query_hash, caption) and catalog_hash.

    Rows whose query or catalog embedding is absent (an image that could not be read) get NaN; drop them
    with `agg[np.isfinite(scores)]` and report how many.
    """
    out = np.full(len(agg), np.nan)
    for i, (q, c, item) in enumerate(zip(agg["query_hash"], agg["caption"], agg["catalog_hash"])):
        qe, ce = query_embeddings.get((q, c)), catalog_embeddings.get(item)
        if qe is None or ce is None:
            continue
        qe, ce = np.asarray(qe, dtype=float), np.asarray(ce, dtype=float)
        out[i] = float(qe @ ce / (np.linalg.norm(qe) * np.linalg.norm(ce) + 1e-12))
    return out


# ---------------------------------------------------------------------------------------------------------
# iMaterialist-style weak-supervision retrieval (data.imaterialist), scored as the released code scores it.

def imat_retrieval_metrics(scores: np.ndarray, target_labels: list, gallery_labels: list) -> dict:
    """ROC-AUC over all query x gallery pairs and mAP over queries; a gallery image is correct for a query
    when its label set equals the query's target's (the released evaluation). `scores` [Q, G]."""
    scores = np.asarray(scores, dtype=float)
    gallery = [frozenset(g) for g in gallery_labels]
    correct = np.array([[g == frozenset(t) for g in gallery] for t in target_labels], dtype=bool)
    if correct.shape != scores.shape:
        raise ValueError(f"scores {scores.shape} but {correct.shape} (queries, gallery) labels")
    if not correct.any(axis=1).all():
        raise ValueError("every query's target label set must occur in the gallery")
    roc = float(roc_auc_columns(scores.reshape(-1), correct.reshape(-1, 1))[0])
    aps = [average_precision_columns(scores[i], correct[i][:, None])[0] for i in range(len(scores))]
    aps = np.array(aps)
    # a query whose every gallery item is correct has AP 1 (scikit-learn's value; undefined as a ranking)
    aps[correct.all(axis=1)] = 1.0
    return {"roc_auc": roc, "mAP": float(np.mean(aps)), "n_queries": len(scores), "n_gallery": len(gallery)}
