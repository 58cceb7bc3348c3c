"""Tables of the MAAF notebook, from `experiment.RunResult`s (pure: no models, no training).

Tables are tidy (method, dataset, metric, reproduced) as `report.Reporter.table` expects.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

METHOD_NAMES = {"maaf": "MAAF", "tirg": "TIRG", "image_only": "image only", "text_only": "text only",
                "concat": "concat", "add": "add", "tirg_lastconv": "TIRG (last conv)",
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
