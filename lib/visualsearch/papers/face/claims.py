"""The face paper's claims, checked as the notebook states them: the depth claims (age and emotion gain from
branching earlier, gender and ethnicity little), the chosen network's cost within the budget, and its small
accuracy loss against one network per attribute. Each check is recorded with `rep.check` (a failed check is
reported with its numbers, never stops the run).

Criteria fixed before looking at results; the thresholds are the notebook's (the shared "A beats B" protocol
of `visualsearch.claims` replaces them in a later change, not here).
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from .data import ATTRIBUTES, pattern_name


@dataclass
class DepthGain:
    attribute: str
    best_depth: int                     # the earlier depth (< last) with the best mean accuracy
    gain: float                         # mean accuracy there minus mean accuracy at the last depth (head only)
    spread: float                       # the larger range (max - min over seeds) of the two depths
    per_seed_gains: list                # gain per seed (same seed at both depths)


def depth_gain(runs_df: pd.DataFrame, attr: str, method: str = "finetune") -> DepthGain:
    """How much `attr` gains by branching earlier than the penultimate layer, against the seed spread."""
    r = runs_df[(runs_df.attribute == attr) & (runs_df.method == method)]
    last = int(r.depth.max())
    means = r.groupby("depth")["accuracy"].mean()
    earlier = means.drop(index=last)
    best = int(earlier.idxmax())
    rng = r.groupby("depth")["accuracy"].agg(lambda v: v.max() - v.min())
    a = r[r.depth == best].set_index("seed")["accuracy"]
    b = r[r.depth == last].set_index("seed")["accuracy"]
    return DepthGain(attr, best, float(means[best] - means[last]), float(max(rng[best], rng[last])),
                     [float(a[s] - b[s]) for s in a.index if s in b.index])


def depth_claims(runs_df: pd.DataFrame) -> list[tuple[str, bool, str, float]]:
    """The paper's depth claims judged on the measured runs, as (claim, passed, detail, measured gain).

    Criteria fixed before looking at results: emotion and age each gain more than the seed spread (the
    larger max-min range over seeds of the two depths compared); gender and ethnicity each gain less than
    half of emotion's gain ("little"). The best earlier depth is chosen by mean accuracy, which slightly
    favours a gain; the per-seed gains are printed so a reader can judge.
    """
    g = {a: depth_gain(runs_df, a) for a in ATTRIBUTES}
    out = []
    for a in ("emotion", "age"):
        x = g[a]
        out.append((f"{a} is more accurate fine-tuned from an earlier stage than from the penultimate layer",
                    x.gain > x.spread and x.gain > 0,
                    f"best earlier depth {x.best_depth}: +{x.gain:.3f} over head-only (seed spread {x.spread:.3f}; "
                    f"per-seed gains {', '.join(f'{v:+.3f}' for v in x.per_seed_gains)})", x.gain))
    e = g["emotion"].gain
    for a in ("gender", "ethnicity"):
        x = g[a]
        out.append((f"{a} gains little from earlier branching",
                    x.gain < 0.5 * max(e, 0.0),
                    f"best earlier depth {x.best_depth}: {x.gain:+.3f} over head-only vs emotion {e:+.3f} "
                    f"(criterion: under half of emotion's gain)", x.gain))
    return out


def check_depth_claims(rep, runs_df: pd.DataFrame) -> None:
    """Record each depth claim (`depth_claims`) with `rep.check`."""
    for claim, ok, detail, measured in depth_claims(runs_df):
        rep.check(claim, ok, detail, measured)


def loss_vs_separate(patterns: pd.DataFrame, chosen: pd.Series, p) -> float:
    """Mean accuracy of one separate network per attribute (all at depth 0) minus the chosen pattern's."""
    sep = patterns[patterns.pattern == pattern_name({a: min(p["depths"]) for a in ATTRIBUTES})].iloc[0]
    return float(sep["mean_accuracy"] - chosen["mean_accuracy"])


def check_budget(rep, counted: dict, p) -> None:
    """The chosen multi-head network's cost, counted on the built network, within p.sharing.budget (in the
    convention p.sharing.convention)."""
    S, conv, budget = p["sharing"]["cost_input_size"], p["sharing"]["convention"], p["sharing"]["budget"]
    rep.check("the chosen multi-head network needs at most 1 GFLOP for all four predictions",
              counted[conv] <= budget,
              f"{counted['flops'] / 1e9:.3f} GFLOPs (2 per multiply-add) = {counted['macs'] / 1e9:.3f} G "
              f"multiply-adds at {S} px; budget {budget / 1e9:g} G applied to {conv}", counted[conv] / 1e9)


def check_loss_vs_separate(rep, patterns: pd.DataFrame, chosen: pd.Series, p) -> None:
    """The chosen pattern loses at most 0.02 mean accuracy against one separate network per attribute."""
    loss = loss_vs_separate(patterns, chosen, p)
    rep.check("the chosen network loses little accuracy against one network per attribute", loss <= 0.02,
              f"mean accuracy {chosen['mean_accuracy']:.3f} vs {chosen['mean_accuracy'] + loss:.3f} for "
              f"separate networks (loss {loss:+.3f}; criterion: at most 0.02)", loss)
