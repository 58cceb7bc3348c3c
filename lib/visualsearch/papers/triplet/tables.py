"""The triplet paper's tables: results as tidy DataFrames (pure: no models, no training)."""
from __future__ import annotations

import pandas as pd

METHOD_LABELS = {"off_the_shelf": "off-the-shelf features", "random": "random triplets",
                 "batch_hard": "batch-hard online (paper)", "batch_hard_released": "batch-hard, released-code mask",
                 "semi_hard": "semi-hard online", "batch_all": "batch-all online"}


def recall_table(results: dict, dataset: str, ks, k_cap: int | None = None) -> pd.DataFrame:
    """Tidy rows (method, dataset, metric, reproduced) from {method label: {k: recall}}; metric names say
    when k was capped at the gallery size."""
    rows = []
    for method, rec in results.items():
        for k in ks:
            metric = f"R@{k}" if k_cap is None or k <= k_cap else f"R@{k} (capped at {k_cap})"
            rows.append({"method": method, "dataset": dataset, "metric": metric, "reproduced": rec[k]})
    return pd.DataFrame(rows)


def sop_label(prob: float) -> str:
    """The SOP table's row label of single-category probability `prob`."""
    return f"single-category p={prob:g}" + (" (paper)" if prob == 0.8 else "")


def method_label(name: str) -> str:
    """The row label of a method named by a declared claim (a METHOD_LABELS key, or "p=<x>" for an SOP run)."""
    if name in METHOD_LABELS:
        return METHOD_LABELS[name]
    return sop_label(float(name[2:])) if name.startswith("p=") else name


def seed_table(recall: dict, datasets: dict, seeds: list, metric: str = "R@1") -> pd.DataFrame:
    """Tidy rows of the runs behind the claims, per training seed and their mean: `recall` {name: [value per
    seed]}, `datasets` {name: dataset}; metrics "R@1 seed s" and "R@1 mean of n seeds"."""
    rows = []
    for name, values in recall.items():
        label, dataset = method_label(name), datasets[name]
        for s, v in zip(seeds, values):
            rows.append({"method": label, "dataset": dataset, "metric": f"{metric} seed {s}", "reproduced": float(v)})
        rows.append({"method": label, "dataset": dataset, "metric": f"{metric} mean of {len(values)} seeds",
                     "reproduced": float(sum(values) / len(values))})
    return pd.DataFrame(rows)


def difference_table(rows: list[dict]) -> pd.DataFrame:
    """Tidy rows of the claims' paired differences per seed and pooled: each of `rows` is {"better", "worse"
    (method names), "dataset", "seeds" (a label: "seed 0", "2 seeds pooled"), "difference", "low", "high"};
    the method column reads "A - B (seeds)", the metrics are the difference and its 95% interval."""
    out = []
    for r in rows:
        method = f"{method_label(r['better'])} - {method_label(r['worse'])} ({r['seeds']})"
        for metric, key in (("R@1 difference", "difference"), ("95% low", "low"), ("95% high", "high")):
            out.append({"method": method, "dataset": r["dataset"], "metric": metric, "reproduced": float(r[key])})
    return pd.DataFrame(out)
