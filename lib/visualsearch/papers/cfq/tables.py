"""The CFQ notebook's tables: run results (as `experiment.CFQExperiment.run` returns them) -> tidy DataFrames.

Pure: no models, no training. Also the names the tables, figures and claims give the runs (`RUN_LABELS`) and
the four headline numbers every comparison reads (`HEADLINE`, `headline`).
"""
from __future__ import annotations

import pandas as pd

from ... import cfq_metrics as cm

RUN_LABELS = {"zero-shot": "CLIP VA, zero-shot", "clip-fiq": "CLIP VA, FIQ", "clip-imfq-fiq": "CLIP VA, iMFQ+FIQ",
              "raf-fiq": "RAF, FIQ", "raf-big-fiq": "RAF w=1, FIQ", "raf-imfq-fiq": "RAF, iMFQ+FIQ",
              "af-fiq": "AF, FIQ", "tirg-fiq": "TIRG, FIQ", "scratch-fiq": "VA, no pretraining, FIQ",
              "scratch-fiq-va-lr": "VA, no pretraining, FIQ at VA's lr",
              "clip-scramble-fiq": "CLIP VA scrambled text projection, FIQ",
              "clip-mismatch-fiq": "CLIP VA mismatched text tower, FIQ", "random": "random embeddings"}
HEADLINE = ("FIQ (R@10+R@50)/2", "CFQ accurate mAP", "CFQ similar mAP", "CFQ nDCG")


def headline(res: dict) -> dict:
    """The four headline numbers of one run's result."""
    return {"FIQ (R@10+R@50)/2": res["fiq"]["(R@10+R@50)/2"], "CFQ accurate mAP": res["cfq_primary"]["accurate mAP"],
            "CFQ similar mAP": res["cfq_primary"]["similar mAP"], "CFQ nDCG": res["cfq_primary"]["nDCG"]}


def grid_table(results: dict, descriptions: dict) -> pd.DataFrame:
    """Tidy rows (method, dataset, metric, reproduced) of every run on the three benchmarks.
    results: {run: result}; descriptions: {dataset name: description} (the data's)."""
    rows = []
    for run, res in results.items():
        label = RUN_LABELS[run]
        for metric, v in res["fiq"].items():
            rows.append((label, descriptions["fashion_iq"] + ", val", metric, v))
        for metric, v in res["imat"].items():
            rows.append((label, descriptions["imaterialist"] + ", val", metric, v))
        for metric, v in res["cfq_primary"].items():
            rows.append((label, descriptions["cfq"], metric, v))
    return pd.DataFrame(rows, columns=["method", "dataset", "metric", "reproduced"])


def cfq_threshold_table(results: dict, description: str) -> pd.DataFrame:
    """Mean per-group AP (m_ap) at every threshold, per run, on CFQ (weighted over subsets)."""
    rows = []
    for run, res in results.items():
        t = res["cfq_table"]
        t = t[(t.subset == cm.WEIGHTED) & (t.metric.isin(["m_ap", "m_auc", "rprec"]))]
        for r in t.itertuples():
            rows.append((RUN_LABELS[run], description, f"{r.metric} {r.label}", 100 * r.value))
    return pd.DataFrame(rows, columns=["method", "dataset", "metric", "reproduced"])


def data_limited_table(results: dict, limited: dict, runs, pair_counts: dict) -> pd.DataFrame:
    """Tidy rows (method, dataset = how many FIQ-style training pairs, metric, reproduced, plus the count and
    share as columns) of the data-limited sweep, the full-data runs of the grid included.
    results: {run: result} of the grid; limited: {(run, share): result} of the sweep; runs: the sweep's runs in
    the order shown; pair_counts: {share: number of training pairs} (`CFQExperiment.pair_counts()`)."""
    rows = []
    entries = [((r, 1.0), results[r]) for r in runs if r in results] + list(limited.items())
    for (run, share), res in entries:
        pairs = pair_counts[share]
        for metric, v in headline(res).items():
            rows.append((RUN_LABELS[run], f"trained on {pairs} FIQ-style pairs", metric, v, pairs, share))
    table = pd.DataFrame(rows, columns=["method", "dataset", "metric", "reproduced", "FIQ training pairs", "share"])
    order = {RUN_LABELS[r]: i for i, r in enumerate(runs)}
    table["order"] = table["method"].map(order)
    table = table.sort_values(["order", "FIQ training pairs"], kind="stable")
    return table.drop(columns="order").reset_index(drop=True)


def pretraining_margins(table: pd.DataFrame, pretrained: str = "clip-fiq",
                        scratch: str = "scratch-fiq") -> pd.DataFrame:
    """From data_limited_table: per number of FIQ training pairs, the pretrained run's score minus the
    from-scratch run's on each headline number (positive = pretraining helps)."""
    wide = table.pivot_table(index=["FIQ training pairs", "metric"], columns="method", values="reproduced")
    a, b = RUN_LABELS[pretrained], RUN_LABELS[scratch]
    if a not in wide or b not in wide:
        return pd.DataFrame()
    margin = (wide[a] - wide[b]).rename("margin").reset_index()
    # (a headline number that is NaN, e.g. a CFQ metric with no group holding both classes, keeps its column)
    return margin.pivot(index="FIQ training pairs", columns="metric", values="margin").reindex(columns=list(HEADLINE))


def seed_table(seeded: dict, seeds, description: str) -> pd.DataFrame:
    """Tidy rows (method, dataset (the data and the training seed), metric, reproduced, seed) of the four
    headline numbers of every run a claim compares, at each training seed: the per-seed numbers behind the claims
    (which pool the seeds' per-item scores). seeded: {run: [result per seed]} (`CFQExperiment.run_seeds`); seeds: the training seeds, in order."""
    seeds = list(seeds)
    rows = []
    for run, per_seed in seeded.items():
        if len(per_seed) != len(seeds):
            raise ValueError(f"{run}: {len(per_seed)} results for {len(seeds)} seeds")
        for seed, res in zip(seeds, per_seed):
            for metric, v in headline(res).items():
                rows.append((RUN_LABELS[run], f"{description}, training seed {seed}", metric, v, int(seed)))
    return pd.DataFrame(rows, columns=["method", "dataset", "metric", "reproduced", "seed"])


def extra_table(extra_results: dict, descriptions: dict) -> pd.DataFrame:
    """Tidy rows (method, dataset, metric, reproduced) of the extra datasets: {(dataset, run): result}; the method
    is the run's model ("fine-tuned" on the dataset itself, or zero-shot), the dataset its description."""
    rows = [(RUN_LABELS[run].replace(", FIQ", ", fine-tuned"), descriptions.get(name, name) + ", test", metric, value)
            for (name, run), res in extra_results.items() for metric, value in res["recall"].items()]
    return pd.DataFrame(rows, columns=["method", "dataset", "metric", "reproduced"])
