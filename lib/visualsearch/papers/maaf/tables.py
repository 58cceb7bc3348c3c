"""Tables of the MAAF notebook, from `experiment.RunResult`s (pure: no models, no training).

Tables are tidy (method, dataset, metric, reproduced) as `report.Reporter.table` expects.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

METHOD_NAMES = {"maaf": "MAAF", "tirg": "TIRG", "image_only": "image only", "text_only": "text only",
                "concat": "concat", "add": "add", "tirg_lastconv": "TIRG (last conv)",
                "tirg_matched": "TIRG (matched capacity)",
                "cross_attention": "two-stream cross-attention"}
FIQ_SCORE = "(R@10+R@50)/2"


def method_name(fusion: str) -> str:
    return METHOD_NAMES.get(fusion, fusion)


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
    return pd.concat([pd.DataFrame(rows, columns=["method", "dataset", "metric", "reproduced"]),
                      parameter_rows(results, "average")], ignore_index=True)


def recall_rows(results: dict, dataset: str, ks=(1, 5, 10, 50), split: str = "test") -> pd.DataFrame:
    """One row per (method, R@k) on a single evaluation split, and each method's trainable parameters."""
    rows = [(method, dataset, f"R@{k}", res.recall[split][f"R@{k}"]) for method, res in results.items() for k in ks]
    return pd.concat([pd.DataFrame(rows, columns=["method", "dataset", "metric", "reproduced"]),
                      parameter_rows(results, dataset)], ignore_index=True)


PARAMS = "trainable parameters"


def parameter_rows(results: dict, dataset: str) -> pd.DataFrame:
    """Per method, the parameters its training updated (`RunResult.extra["trainable_params"]`; methods trained
    before it was recorded give no row): a recall is read with the capacity that bought it."""
    rows = [(method, dataset, PARAMS, float(res.extra["trainable_params"])) for method, res in results.items()
            if res.extra.get("trainable_params") is not None]
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


def claim_score_rows(scored: list, dataset_labels: dict | None = None) -> pd.DataFrame:
    """Per decided claim (`claims.Scored`), per compared method: the mean per-item score of each training seed
    and over the seeds pooled, and the number of items: the numbers behind claims.csv, seed by seed. `dataset`
    is the claim id (with its dataset); `item score` the claim's metric."""
    labels = dataset_labels or {}
    rows = []
    for s in scored:
        head = {"dataset": f"{s.claim.id} ({labels.get(s.dataset, s.dataset)})", "item score": s.claim.metric}
        for method, values in s.scores.items():
            values = np.asarray(values, dtype=float)
            cells = [(f"seed {seed}", float(v.mean())) for seed, v in zip(s.seeds, values)]
            cells += [("seeds pooled", float(values.mean())), ("items", float(values.shape[1]))]
            rows += [{"method": method, **head, "metric": m, "reproduced": v} for m, v in cells]
    return pd.DataFrame(rows, columns=["method", "dataset", "metric", "reproduced", "item score"])


def place_attention_rows(items_by_seed: dict) -> pd.DataFrame:
    """Per training seed of the CSS MAAF model, per (block, stage): the mean ratio of a place word's attention
    inside its named cell over its average image token (`experiment.place_attention_items`; stage "all": every
    image token of both stages at once, what the claim is decided on)."""
    rows = []
    for seed, items in sorted(items_by_seed.items()):
        for (block, stage), v in items.groupby(["block", "stage"], sort=True):
            rows.append({"method": f"MAAF (seed {seed})", "dataset": "CSS",
                         "metric": f"block {block} {stage}: place / mean attention", "reproduced": float(v.ratio.mean()),
                         "words": len(v)})
    return pd.DataFrame(rows, columns=["method", "dataset", "metric", "reproduced", "words"])


def comparison_rows(scored: list, dataset_labels: dict | None = None) -> pd.DataFrame:
    """Per decided comparison claim (`claims.Scored`), per compared method B: the pooled mean per-query score of
    the claim's `better` method (MAAF) and of B, and their difference. Why a table of its own: it shows at a
    glance where MAAF loses or only ties (difference at or below zero), which the claims table, giving only the
    closest comparison, can hide behind one number."""
    labels = dataset_labels or {}
    rows = []
    for s in scored:
        better = s.claim.better
        if better not in s.scores:
            continue
        a = float(np.asarray(s.scores[better], dtype=float).mean())
        for method in s.claim.worse:
            b = float(np.asarray(s.scores[method], dtype=float).mean())
            head = {"method": f"{better} vs {method}", "dataset": labels.get(s.dataset, s.dataset),
                    "item score": s.claim.metric}
            rows += [{**head, "metric": m, "reproduced": v}
                     for m, v in ((better, a), ("compared", b), ("difference", a - b))]
    return pd.DataFrame(rows, columns=["method", "dataset", "metric", "reproduced", "item score"])
