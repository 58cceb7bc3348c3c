"""The CFQ paper's claims, decided on this preset's runs by the one test (`visualsearch.claims.decide`).

Every claim is declared in configs/cfq_evaluation/default.yaml (`claims:`) before results: the methods are runs of
the grid, the metric names per-item scores the runs produce (`experiment.PER_ITEM`: FIQ (hit@10+hit@50)/2 per
validation query, CFQ accurate AP / similar AP / nDCG per judged (query image, caption) group). A metric
"X & Y & ..." is a conjunction: the claim holds only if A beats B on each, each decided by `claims.decide` (a paired
bootstrap over clusters: FIQ queries resampled by reference image, CFQ groups by query image; per-item scores of
every training seed pooled). Claims named in `claim_tests.on_data_limited` are decided at every share of the
data-limited sweep (its one seed) and hold only if they hold at each.

Reads results only ({run: [result per training seed]}, the sweep's {(run, share): result}); records with
`rep.decide`.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd

from ... import claims as vc

CLUSTER_NAMES = {"FIQ": "reference images", "CFQ": "query images"}  # what a metric's clusters are, by prefix


def declared_claims(p) -> dict:
    """The claims the notebook's parameters declare (`claims:`), by id."""
    return vc.declared_claims(p)


def metrics_of(claim: vc.Claim) -> list[str]:
    """The per-item metrics a claim's `metric` names (a conjunction "X & Y" names several)."""
    return [m.strip() for m in claim.metric.split("&") if m.strip()]


def runs_of(claim: vc.Claim) -> list[str]:
    return [claim.better, *claim.worse]


def seeded_runs(declared: dict, on_data_limited=()) -> list[str]:
    """The runs the claims off the data-limited sweep compare, in declaration order: each is trained at every
    training seed (`CFQExperiment.run_seeds`)."""
    out = []
    for cid, claim in declared.items():
        if cid not in on_data_limited:
            out += [r for r in runs_of(claim) if r not in out]
    return out


def per_item(results: list, metric: str) -> tuple[np.ndarray, list, list]:
    """One run's per-item scores of `metric` at each training seed ([seeds, items]), with the items' keys and
    clusters; the items must be the same at every seed."""
    if not results:
        raise ValueError("no results")
    missing = [r for r in results if metric not in r.get("per_item", {})]
    if missing:
        raise ValueError(f"no per-item scores named {metric!r} (have {sorted(results[0].get('per_item', {}))})")
    keys = results[0]["items"][metric]["keys"]
    if any(r["items"][metric]["keys"] != keys for r in results):
        raise ValueError(f"{metric}: the items differ between seeds")
    return (np.stack([np.asarray(r["per_item"][metric], dtype=float) for r in results]), list(keys),
            list(results[0]["items"][metric]["clusters"]))


def decide_all_metrics(claim: vc.Claim, results: dict, n_boot: int = 2000, seed: int = 0) -> vc.Decision:
    """Decide `claim` on each metric it names (`metrics_of`) with `vc.decide`; it holds when it holds on every one.
    results: {run: [result per training seed]} for every run the claim names (the same seeds for each).
    The Decision's numbers are those of the metric with the lowest interval end."""
    decisions, resampled = [], {}
    for metric in metrics_of(claim):
        scores, keys, clusters = {}, None, None
        for run in runs_of(claim):
            scores[run], k, c = per_item(results[run], metric)
            if keys is None:
                keys, clusters = k, c
            elif k != keys:
                raise ValueError(f"claim {claim.id!r}: {run} and {claim.better} are scored on different {metric} items")
        if not keys:
            raise ValueError(f"claim {claim.id!r}: no items with a {metric} score")
        cluster_name = next((v for p, v in CLUSTER_NAMES.items() if metric.startswith(p)), "test items")
        resampled.setdefault(cluster_name, []).append(len(set(map(str, clusters))))
        decisions.append((metric, vc.decide(replace(claim, metric=metric), scores, clusters=_codes(clusters),
                                            n_boot=n_boot, seed=seed, cluster_name=cluster_name)))
    seeds = min(d.seeds for _, d in decisions)
    several = len(claim.worse) > 1
    counts = ", ".join(f"{min(n)}{'' if min(n) == max(n) else f' to {max(n)}'} {name}" for name, n in resampled.items())
    criterion = (f"paired bootstrap over clusters ({counts}), {seeds} seed(s) pooled: 95% interval of "
                 f"the mean difference above {claim.threshold:g} on each of {', '.join(m for m, _ in decisions)}"
                 + (" against every compared method" if several else "") + (", all required" if len(decisions) > 1
                                                                             else ""))
    return combine(decisions, criterion)


def combine(decisions: list, criterion: str) -> vc.Decision:
    """One Decision from several [(label, Decision)]: passed when every one passed; the numbers of the one with
    the lowest interval end; every one's detail, labelled; `criterion` the test in words."""
    _, worst = min(decisions, key=lambda ld: ld[1].low)
    detail = " | ".join(f"{lab}: {d.detail}" for lab, d in decisions)
    return vc.Decision(all(d.passed for _, d in decisions), worst.difference, worst.low, worst.high,
                       worst.better_score, worst.worse_score, min(d.seeds for _, d in decisions), criterion, detail)


def _codes(clusters: list) -> np.ndarray:
    """Integer ids for cluster labels: integers (reference image indices) as they are, others (query image
    hashes) numbered in sorted order."""
    arr = np.asarray(clusters)
    if arr.dtype.kind in "iu":
        return arr
    return np.unique(np.asarray([str(c) for c in clusters]), return_inverse=True)[1]


def decide_claims(declared: dict, seeded: dict, limited: dict, shares, pair_counts: dict, rep,
                  on_data_limited=(), n_boot: int = 2000) -> list[dict]:
    """Decide every declared claim and record it with `rep.decide` (never raising on a claim that fails).

    seeded: {run: [result per training seed]} (`CFQExperiment.run_seeds`) for the claims off the sweep;
    limited: the sweep's {(run, share): result}; shares: its shares; pair_counts: {share: training pairs};
    on_data_limited: the ids of the claims decided at every share of the sweep. A claim whose runs did not run
    (e.g. RAF at the smoke preset's sweep) is not recorded."""
    out = []
    for cid, claim in declared.items():
        if cid in on_data_limited:
            shares_ = [float(s) for s in shares]
            if not shares_ or not all((r, s) in limited for r in runs_of(claim) for s in shares_):
                continue
            parts = [(f"on {pair_counts[s]} FIQ pairs",
                      decide_all_metrics(claim, {r: [limited[(r, s)]] for r in runs_of(claim)}, n_boot))
                     for s in shares_]
            decision = combine(parts, f"at each of {len(parts)} shares of the sweep "
                                      f"({', '.join(str(pair_counts[s]) for s in shares_)} FIQ pairs), all required: "
                                      + parts[0][1].criterion)
        else:
            if not all(r in seeded for r in runs_of(claim)):
                continue
            decision = decide_all_metrics(claim, seeded, n_boot)
        rep.decide(claim, decision)
        out.append({"id": cid, "claim": claim.text, "passed": decision.passed, "decision": decision})
    return out


def declared_table(declared: dict):
    """The declared claims as the notebook shows them before any run: id, source, the words, the comparison,
    the threshold and the proxy (empty: the check is the paper's comparison on this preset's runs)."""
    return pd.DataFrame([{"id": c.id, "source": c.source, "claim": c.text, "comparison": c.comparison,
                          "threshold": c.threshold, "proxy": c.proxy} for c in declared.values()])
