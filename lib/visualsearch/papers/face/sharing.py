"""Sharing-pattern search: which branch depth per attribute gives the best accuracy within a FLOP budget.

Why: the face paper picks, by experiment, how much of the identity network the four attribute predictions
share, so that all four cost about 1 GFLOP. A pattern gives each attribute a branch depth L_a (the number
of shared, frozen identity stages it reads from). One forward pass of the pattern computes the trunk's
stages 1..max_a L_a once (every attribute branching at or below a stage reads that shared computation),
then each attribute's private copy of stages L_a+1.. and its head. So

    cost(pattern) = sum of trunk stages 1..max_a L_a + sum over attributes of (stages L_a+1..end + head_a).

(The issue words the shared part as "up to the shallowest branch"; the trunk must in fact run up to the
deepest branch point, since that attribute reads the frozen features there. This is what
`MultiHeadFaceNet` computes, and the tests check the sum against counting the built network.)

Costs are counted by visualsearch.flops.count_flops (torch.utils.flop_counter), per stage at the input
size the cost is quoted for, and reported both as multiply-adds (`macs`) and FLOPs (2 per multiply-add).
A pattern's accuracy is the mean over attributes of the per-depth accuracies measured by fine-tuning,
which is exact because branches are independent given the frozen trunk.

This module counts FLOPs on the models, so it is compute: the experiment may import it, figures must not
(they take the patterns table it makes).
"""
from __future__ import annotations

import itertools

import pandas as pd
import torch

from ...flops import count_flops
from ...models.face import FaceNetConfig, FaceTrunk, PooledHead
from .data import ATTRIBUTES, pattern_name


def part_costs(cfg: FaceNetConfig, n_classes: dict, input_size: int) -> dict:
    """{"stages": [cost of trunk stage 1, ...], "heads": {attribute: cost}} at `input_size` px, where a cost
    is {"flops", "macs", "params"} of one image's forward pass."""
    trunk = FaceTrunk(cfg).eval()
    h = torch.zeros(1, 3, input_size, input_size)
    stages = []
    for s in trunk.stages:
        c = count_flops(s, h)
        stages.append({k: c[k] for k in ("flops", "macs", "params")})
        with torch.no_grad():
            h = s(h)
    heads = {}
    for a, n in n_classes.items():
        c = count_flops(PooledHead(cfg.widths[-1], n), h)
        heads[a] = {k: c[k] for k in ("flops", "macs", "params")}
    return {"stages": stages, "heads": heads}


def pattern_cost(pattern: dict, costs: dict) -> dict:
    """{"flops", "macs", "params"} of the network that runs `pattern` ({attribute: depth}) in one pass."""
    stages, heads = costs["stages"], costs["heads"]
    shared = max(pattern.values())
    parts = list(stages[:shared])
    for a, d in pattern.items():
        parts += list(stages[d:]) + [heads[a]]
    return {k: sum(p[k] for p in parts) for k in ("flops", "macs", "params")}


def enumerate_patterns(accuracy: dict, costs: dict, depths=None) -> pd.DataFrame:
    """Every pattern over `depths` (default: all depths in `accuracy`), one row each: its depths, cost, params,
    per-attribute accuracy (`acc_<attribute>`) and `mean_accuracy`.

    `accuracy[attribute][depth]` is the measured accuracy of that branch (e.g. the mean over seeds).
    """
    attrs = list(accuracy)
    if depths is None:
        depths = sorted(set.intersection(*(set(accuracy[a]) for a in attrs)))
    rows = []
    for combo in itertools.product(depths, repeat=len(attrs)):
        pattern = dict(zip(attrs, combo))
        row = {"pattern": pattern_name(pattern), **{f"depth_{a}": d for a, d in pattern.items()},
               **pattern_cost(pattern, costs)}
        for a, d in pattern.items():
            row[f"acc_{a}"] = float(accuracy[a][d])
        row["mean_accuracy"] = sum(row[f"acc_{a}"] for a in attrs) / len(attrs)
        rows.append(row)
    return pd.DataFrame(rows)


def with_budget_costs(patterns: pd.DataFrame, costs: dict) -> pd.DataFrame:
    """`patterns` with `budget_flops` and `budget_macs`: each pattern's cost on another network (`costs` of
    `part_costs`, e.g. the paper preset's network at its input size), where the paper's budget is checked."""
    other = [pattern_cost(pattern_of(r), costs) for _, r in patterns.iterrows()]
    return patterns.assign(budget_flops=[c["flops"] for c in other], budget_macs=[c["macs"] for c in other])


def pareto_front(df: pd.DataFrame, cost: str = "flops", value: str = "mean_accuracy") -> pd.Series:
    """True for patterns that no other pattern beats on both cost (lower) and value (higher)."""
    order = df.sort_values([cost, value], ascending=[True, False])
    best = -float("inf")
    keep = pd.Series(False, index=df.index)
    for i, v in zip(order.index, order[value]):
        if v > best:
            keep[i] = True
            best = v
    return keep


def choose_pattern(df: pd.DataFrame, budget: float, convention: str = "flops") -> pd.Series:
    """The most accurate pattern whose cost (`convention`: "flops" or "macs") is within `budget`; among equally
    accurate ones the cheapest. Raises ValueError when no pattern fits."""
    if convention not in ("flops", "macs"):
        raise ValueError(f"cost convention {convention!r}: expected 'flops' or 'macs'")
    fits = df[df[convention] <= float(budget)]
    if fits.empty:
        raise ValueError(f"no sharing pattern fits {budget:.3g} {convention}; the cheapest costs {df[convention].min():.3g}")
    return fits.sort_values(["mean_accuracy", convention], ascending=[False, True]).iloc[0]


def choose_without_budget(df: pd.DataFrame, convention: str = "flops") -> pd.Series:
    """The pattern our procedure picks on accuracy alone (no budget filter; among equally accurate ones the
    cheapest): what the paper's cost claim is checked on, so that the check can fail."""
    return choose_pattern(df, float("inf"), convention)


def budget_network(p, notebook: str = "face_attribute_sharing") -> tuple[FaceNetConfig, str]:
    """(network config, preset name) of the network the paper's budget is checked on: the model of the preset
    named by `checks.one_gflop.preset` (the paper preset's wider trunk at its own input size), built from that
    preset's parameters; counting its cost needs no training and no data."""
    preset = p["checks"]["one_gflop"]["preset"]
    if preset != p["preset"]:
        from ...config import load_params
        p = load_params(notebook, preset)
    m = p["model"]
    cfg = FaceNetConfig(widths=tuple(m["widths"]), blocks=tuple(m["blocks"]), stem_stride=int(m["stem_stride"]),
                        input_size=int(m["input_size"]))
    return cfg, preset


def pattern_of(row: pd.Series, attributes=ATTRIBUTES) -> dict:
    """{attribute: depth} of a row of `enumerate_patterns`."""
    return {a: int(row[f"depth_{a}"]) for a in attributes if f"depth_{a}" in row}


def mean_accuracy_table(summary: pd.DataFrame, method: str = "finetune") -> dict:
    """{attribute: {depth: mean accuracy over seeds}} of a summary over seeds (`tables.summarize`), for the
    sharing search."""
    s = summary[summary.method == method]
    return {a: dict(zip(s[s.attribute == a].depth, s[s.attribute == a]["mean"])) for a in ATTRIBUTES}


def named_patterns(patterns: pd.DataFrame, summary: pd.DataFrame, p) -> dict:
    """The baseline patterns as rows of `patterns`: head only (all at the deepest depth), separate networks
    (all at depth 0, when tried) and the best depth per attribute regardless of cost."""
    depths = sorted(p["depths"])
    acc = mean_accuracy_table(summary)
    best = {a: max(acc[a], key=acc[a].get) for a in ATTRIBUTES}
    want = {"head only (share everything)": {a: depths[-1] for a in ATTRIBUTES},
            "best depth per attribute (no budget)": best}
    if depths[0] == 0:
        want["separate networks (share nothing)"] = {a: 0 for a in ATTRIBUTES}
    return {k: patterns[patterns.pattern == pattern_name(v)].iloc[0] for k, v in want.items()}
