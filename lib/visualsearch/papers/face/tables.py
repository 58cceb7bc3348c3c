"""The face notebook's tables, built from the experiment's results (pure pandas: no models, no training).

Tidy rows (method, dataset, metric, reproduced) where a table is written by the Reporter; the summary over
seeds and the confusion counts that the sharing search and the figures read are here too, since they are
computed from results without a model.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from .data import ATTRIBUTES, FaceData


def summarize(runs_df: pd.DataFrame) -> pd.DataFrame:
    """Mean, standard deviation, min and max over seeds per (attribute, method, depth)."""
    g = runs_df.groupby(["attribute", "method", "depth"])
    out = g["accuracy"].agg(["mean", "std", "min", "max", "count"]).reset_index()
    mae = runs_df.dropna(subset=["mae_years"]) if "mae_years" in runs_df else runs_df.iloc[:0]
    if len(mae):
        m = mae.groupby(["attribute", "method", "depth"])["mae_years"].agg(["mean", "std"]).reset_index()
        out = out.merge(m.rename(columns={"mean": "mae_mean", "std": "mae_std"}), how="left",
                        on=["attribute", "method", "depth"])
    params = runs_df.groupby(["attribute", "method", "depth"])["trainable_params"].first().reset_index()
    return out.merge(params, on=["attribute", "method", "depth"]).fillna({"std": 0.0})


def confusion(pred: torch.Tensor, true: torch.Tensor, n: int) -> np.ndarray:
    """Counts [true class, predicted class] over labelled images."""
    m = true >= 0
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (true[m].numpy(), pred[m].long().numpy()), 1)
    return cm


IDENTITY_NOT_COMPUTABLE = ("not computable: the attribute test images carry no identity labels (FairFace's CSVs "
                           "have no identity column and FER2013 has none), so there are no unseen people to "
                           "retrieve by identity")


def identity_table(info: dict, data: FaceData, dataset: str) -> tuple[pd.DataFrame, str]:
    """The identity trunk's table (rank-1 identity retrieval among unseen people, training accuracy) with a
    `note` column, and the table's note: where the test images carry no identity labels the retrieval cell is
    empty and the note says why in words."""
    rank1 = info["test_identity_rank1"]
    computable = int((data.test.identity >= 0).sum()) >= 2 and rank1 == rank1  # (NaN != NaN)
    why = "" if computable else IDENTITY_NOT_COMPUTABLE
    rows = [{"method": "identity trunk", "dataset": dataset, "metric": "rank-1 identity retrieval, unseen people",
             "reproduced": float(rank1) if computable else None, "note": why},
            {"method": "identity trunk", "dataset": dataset, "metric": "training accuracy (last 10% of steps)",
             "reproduced": float(info["train_acc_last10pct"]), "note": ""}]
    note = f"Rank-1 identity retrieval, unseen people: {why}." if why else ""
    return pd.DataFrame(rows), note


def depth_label(depth: int, n_stages: int = 4) -> str:
    if depth == 0:
        return "depth 0: nothing shared (all stages fine-tuned)"
    if depth == n_stages:
        return f"depth {depth}: penultimate features (head only)"
    return f"depth {depth}: after stage {depth}"


def depth_table(summary: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Tidy accuracy (and age MAE) by attribute, method and branch depth: mean over seeds, with std/min/max."""
    names = {"finetune": "fine-tune from", "probe": "capacity control (same probe) at", "scratch": "from scratch"}
    rows = []
    for r in summary.itertuples():
        method = f"{names[r.method]} {depth_label(r.depth)}" if r.method != "scratch" else "trained from scratch (no identity pretraining)"
        base = {"method": method, "dataset": dataset, "attribute": r.attribute, "variant": r.method, "depth": r.depth,
                "n_seeds": int(r.count), "trainable_params": int(r.trainable_params)}
        rows.append({**base, "metric": f"{r.attribute} accuracy", "reproduced": r.mean, "std": r.std,
                     "min": r.min, "max": r.max})
        if r.attribute == "age" and "mae_mean" in summary and not pd.isna(r.mae_mean):
            rows.append({**base, "metric": "age MAE (years)", "reproduced": r.mae_mean, "std": r.mae_std,
                         "min": np.nan, "max": np.nan})
    return pd.DataFrame(rows)


def control_summary(runs_df: pd.DataFrame) -> pd.DataFrame:
    """Fine-tuning vs the equal-capacity probe: mean accuracy per attribute and depth side by side, with the
    trainable parameters of each (the probe's are nearly constant, fine-tuning's grow as the branch deepens)."""
    s = summarize(runs_df)
    s = s[s.method.isin(["finetune", "probe"])]
    acc = s.pivot_table(index=["attribute", "depth"], columns="method", values="mean")
    par = s.pivot_table(index=["attribute", "depth"], columns="method", values="trainable_params")
    out = acc.join(par, rsuffix="_params").rename(columns={"finetune": "fine-tune acc", "probe": "probe acc",
                                                           "finetune_params": "fine-tune params",
                                                           "probe_params": "probe params"})
    return out.reset_index()


def patterns_to_show(patterns: pd.DataFrame, front: pd.Series, chosen: pd.Series, named: dict) -> pd.DataFrame:
    """The Pareto front, the chosen pattern and the named baselines, with their role."""
    shown = patterns[front].assign(role="Pareto front")
    extra = [chosen.to_frame().T.assign(role="chosen (within budget)")]
    extra += [r.to_frame().T.assign(role=name) for name, r in named.items()]
    out = pd.concat([*extra, shown], ignore_index=True)
    out = out.groupby("pattern", sort=False).agg({**{c: "first" for c in out.columns if c not in ("pattern", "role")},
                                                  "role": lambda v: "; ".join(dict.fromkeys(v))}).reset_index()
    return out.sort_values("flops").reset_index(drop=True)


def pattern_rows(patterns: pd.DataFrame, dataset: str, cost_note: str, budget_note: str = "") -> pd.DataFrame:
    """Tidy rows (GFLOPs, GMACs, params, per-attribute and mean accuracy) of the given patterns; where the
    patterns carry `budget_flops`/`budget_macs` (their cost on the network the paper's budget is checked on,
    described by `budget_note`), those rows too."""
    rows = []
    for r in patterns.itertuples():
        base = {"method": r.pattern, "dataset": dataset, "role": getattr(r, "role", ""), "cost_at": cost_note}
        rows += [{**base, "metric": "GFLOPs (2 per multiply-add)", "reproduced": r.flops / 1e9},
                 {**base, "metric": "GMACs (multiply-adds)", "reproduced": r.macs / 1e9},
                 {**base, "metric": "parameters (M)", "reproduced": r.params / 1e6}]
        if hasattr(r, "budget_flops"):
            rows += [{**base, "cost_at": budget_note, "metric": "GFLOPs (2 per multiply-add)",
                      "reproduced": r.budget_flops / 1e9},
                     {**base, "cost_at": budget_note, "metric": "GMACs (multiply-adds)", "reproduced": r.budget_macs / 1e9}]
        rows += [{**base, "metric": f"{a} accuracy", "reproduced": getattr(r, f"acc_{a}")} for a in ATTRIBUTES]
        rows.append({**base, "metric": "mean accuracy", "reproduced": r.mean_accuracy})
    return pd.DataFrame(rows)


def baselines_table(summary: pd.DataFrame, patterns: pd.DataFrame, chosen: pd.Series, named: dict, one_pass: dict,
                    counted: dict, dataset: str, p) -> pd.DataFrame:
    """Tidy table: the chosen multi-head network against head-only, separate networks, from-scratch networks
    and the best depth per attribute: per-attribute accuracy (mean over seeds), mean accuracy, age MAE, cost."""
    rows = []
    s = summary.set_index(["attribute", "method", "depth"])

    def add(method, accs, mae, cost):
        base = {"method": method, "dataset": dataset}
        rows.extend({**base, "metric": f"{a} accuracy", "reproduced": v} for a, v in accs.items())
        rows.append({**base, "metric": "mean accuracy", "reproduced": sum(accs.values()) / len(accs)})
        rows.append({**base, "metric": "age MAE (years)", "reproduced": mae})
        rows.extend([{**base, "metric": "GFLOPs (2 per multiply-add)", "reproduced": cost["flops"] / 1e9},
                     {**base, "metric": "GMACs (multiply-adds)", "reproduced": cost["macs"] / 1e9},
                     {**base, "metric": "parameters (M)", "reproduced": cost["params"] / 1e6}])

    def from_pattern(row):
        pat = {a: int(row[f"depth_{a}"]) for a in ATTRIBUTES}
        return ({a: float(row[f"acc_{a}"]) for a in ATTRIBUTES}, float(s.loc[("age", "finetune", pat["age"]), "mae_mean"]),
                {k: row[k] for k in ("flops", "macs", "params")})

    add(f"chosen: {chosen['pattern']} (mean over seeds)", *from_pattern(chosen))
    add(f"chosen as one multi-head network, one forward pass (seed {p['seeds'][0]})",
        {a: one_pass[a]["accuracy"] for a in ATTRIBUTES}, one_pass["age"]["mae_years"], counted)
    for name, row in named.items():
        add(f"{name}: {row['pattern']}", *from_pattern(row))
    if ("age", "scratch", 0) in s.index and "separate networks (share nothing)" in named:
        sep = named["separate networks (share nothing)"]
        add("separate networks trained from scratch (no identity pretraining)",
            {a: float(s.loc[(a, "scratch", 0), "mean"]) for a in ATTRIBUTES}, float(s.loc[("age", "scratch", 0), "mae_mean"]),
            {k: sep[k] for k in ("flops", "macs", "params")})
    return pd.DataFrame(rows)


def readout_table(readout: pd.DataFrame, dataset: str, chance: dict) -> pd.DataFrame:
    """Tidy rows of experiment.readout_diagnostic: a linear classifier fitted to convergence on frozen trunk
    features, globally pooled (what the head-only branch reads) or pooled to a 3x3 grid (what the probe keeps)."""
    rows = []
    for r in readout.itertuples():
        pool = "global average pool" if r.grid == 1 else f"{r.grid}x{r.grid} average-pooled grid"
        base = {"method": f"linear read-out after stage {r.depth}, {pool}", "dataset": dataset, "attribute": r.attribute,
                "depth": r.depth, "grid": r.grid, "features": r.features, "chance": chance.get(r.attribute)}
        rows += [{**base, "metric": f"{r.attribute} test accuracy", "reproduced": r.test_accuracy},
                 {**base, "metric": f"{r.attribute} training accuracy", "reproduced": r.train_accuracy}]
    return pd.DataFrame(rows)


def readout_finding(readout: pd.DataFrame, summary: pd.DataFrame, attr: str = "emotion") -> str:
    """One sentence with the numbers of the diagnostic for `attr` at the last stage: head-only fine-tuning, a
    converged linear classifier on the same globally pooled features, and on the 3x3 grid."""
    last = int(readout.depth.max())
    r = readout[(readout.attribute == attr) & (readout.depth == last)].set_index("grid").test_accuracy
    s = summary[(summary.attribute == attr) & (summary.method == "finetune") & (summary.depth == summary.depth.max())]
    head = float(s["mean"].iloc[0]) if len(s) else float("nan")
    grid = max(g for g in r.index if g > 1) if any(g > 1 for g in r.index) else None
    out = (f"{attr} after stage {last}: head-only fine-tuning {head:.3f}; a linear classifier fitted to convergence on "
           f"the same globally pooled features {r.get(1, float('nan')):.3f}")
    if grid:
        out += f"; on the same features pooled to a {grid}x{grid} grid {r[grid]:.3f}"
    return out + " (test accuracy)."
