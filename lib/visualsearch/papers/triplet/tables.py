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
