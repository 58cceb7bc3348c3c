"""The MAAF notebook's claims: declared in configs/maaf_ablations/default.yaml (`claims:`) before any result, each
decided by the one test of "A beats B" (`visualsearch.claims.decide`: a paired bootstrap over test queries,
queries sharing a reference image resampled together, per-query scores pooled over training seeds) and
recorded with `rep.decide` (a claim that does not reproduce is a result, never hidden).

- MAAF against the baselines the notebook trains, per dataset (`decide_comparison`): the per-query score is
  the mean of the hit@k named by the claim's metric ("(hit@10+hit@50)/2" on Fashion IQ, "hit@1" elsewhere),
  from `RunResult.hits`; a negative threshold reads "within d of" (Fashion200k's "competitive").
- Words avoid the image region they name (`decide_words_avoid`): per CSS-style place word, its attention to the
  named 3x3 cell relative to its average image token (`experiment.place_attention_items`, stage "all"),
  against 1 (the average image token), in every fusion block.

Which dataset each claim is about is `CLAIM_DATASETS`; `seeded_runs` tells `experiment.plan_runs` which runs
a claim is decided on (those get `claim_seeds` training seeds).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ...claims import Claim, Decision, decide, declared_claims
from .tables import METHOD_NAMES

CLAIM_DATASETS = {"fiq_beats_baselines": "fashioniq", "css_beats_baselines": "css",
                  "f200k_competitive": "fashion200k", "b2w_beats_baselines": "birds_to_words",
                  "spot_beats_baselines": "spot_the_diff", "words_avoid_named_region": "css"}
ATTENTION_CLAIMS = ("words_avoid_named_region",)   # decided on attention, from the MAAF runs of their dataset
AVERAGE_TOKEN = "average image token"
CLUSTERS = "reference images"


@dataclass
class Scored:
    """A decided claim with the per-item scores it was decided on (for the per-seed table)."""

    claim: Claim
    dataset: str
    seeds: list                # training seeds pooled
    scores: dict               # method -> np.ndarray [seeds, items]
    decision: Decision


def declared(p) -> dict:
    """The notebook's declared claims by id; each must be one this module knows how to decide."""
    out = declared_claims(p)
    unknown = set(out) - set(CLAIM_DATASETS)
    if unknown:
        raise ValueError(f"claims {sorted(unknown)} are declared but not known to papers/maaf/claims.py "
                         f"(known: {sorted(CLAIM_DATASETS)})")
    return out


def declared_table(p) -> pd.DataFrame:
    """The declared claims as the notebook shows them before any result."""
    return pd.DataFrame([{"id": c.id, "claim": c.text, "source": c.source, "dataset": CLAIM_DATASETS[c.id],
                          "comparison": c.comparison, "threshold": c.threshold, "proxy": c.proxy}
                         for c in declared(p).values()])


def run_name(method: str) -> str:
    """The plan's run name of a method as tables name it ("image only" -> "image_only"; "MAAF" and the
    longer-TIRG control keep their names)."""
    inverse = {v: k for k, v in METHOD_NAMES.items() if k != "maaf"}
    return inverse.get(method, method)


def seeded_runs(p) -> dict:
    """{dataset: run names} that the declared claims are decided on: MAAF and each compared method."""
    out: dict = {}
    for c in declared(p).values():
        methods = ["MAAF"] if c.id in ATTENTION_CLAIMS else [c.better, *c.worse]
        out.setdefault(CLAIM_DATASETS[c.id], set()).update(run_name(m) for m in methods)
    return out


def metric_ks(metric: str) -> tuple:
    """The ks of the hit@k a claim's metric averages: "(hit@10+hit@50)/2 ..." -> (10, 50)."""
    ks = tuple(int(k) for k in re.findall(r"hit@(\d+)", metric))
    if not ks:
        raise ValueError(f"metric {metric!r} names no hit@k")
    return ks


def item_scores(result, groups, ks) -> torch.Tensor:
    """Per evaluated query of `groups` (in order, concatenated), the mean over `ks` of hit@k: a RunResult's
    `hits` ({group: {k: BoolTensor}})."""
    missing = [(g, k) for g in groups for k in ks if k not in result.hits.get(g, {})]
    if missing:
        raise ValueError(f"no per-query hits for {missing[:3]} (evaluated: "
                         f"{ {g: sorted(h) for g, h in result.hits.items()} })")
    return torch.cat([torch.stack([result.hits[g][k].double() for k in ks]).mean(0) for g in groups])


def clusters_of(references: dict) -> torch.Tensor:
    """One cluster id per evaluated query of every group (in order): its (group, reference image)."""
    width = 1 + max((int(r.max()) for r in references.values() if len(r)), default=0)
    return torch.cat([i * width + r for i, r in enumerate(references.values())])


def _not_decided(rep, claim: Claim, why: str) -> None:
    rep.check(claim.text, False, f"not decided: {why}", source=claim.source, criterion="not decided", seeds=0,
              proxy=claim.proxy, comparison=claim.comparison, claim_id=claim.id)


def decide_comparison(rep, claim: Claim, by_method: dict, references: dict) -> Scored | None:
    """Decide "MAAF beats (or is within d of) each of `claim.worse`" on one dataset.

    `by_method`: {method as tables name it: {seed: RunResult}}; `references`: {evaluation group: reference
    image of each evaluated query} (`experiment.query_references`), which also fixes the groups and their
    order. The seeds pooled are those every compared method was trained with."""
    names = [claim.better, *claim.worse]
    missing = [m for m in names if not by_method.get(m)]
    if missing:
        _not_decided(rep, claim, f"no runs of {missing} on this preset")
        return None
    seeds = sorted(set.intersection(*(set(by_method[m]) for m in names)))
    if not seeds:
        _not_decided(rep, claim, "the compared methods share no training seed")
        return None
    ks, groups = metric_ks(claim.metric), list(references)
    scores = {m: torch.stack([item_scores(by_method[m][s], groups, ks) for s in seeds]) for m in names}
    decision = decide(claim, scores, clusters_of(references), cluster_name=CLUSTERS)
    rep.decide(claim, decision)
    return Scored(claim, CLAIM_DATASETS[claim.id], seeds, {m: v.numpy() for m, v in scores.items()}, decision)


def block_of(method: str) -> int:
    """The fusion block a "named region (block N)" method of the attention claim names."""
    found = re.fullmatch(r"named region \(block (\d+)\)", method)
    if not found:
        raise ValueError(f"{method!r}: the attention claim compares '{AVERAGE_TOKEN}' with "
                         "'named region (block N)' methods")
    return int(found.group(1))


def attention_scores(items_by_seed: dict, blocks) -> tuple[pd.DataFrame, dict]:
    """(items, {block: np.ndarray [seeds, items]}) of the place words present for every seed: the ratio of
    a word's attention to its named cell over its average image token (stage "all"), per block."""
    tables = []
    for seed, items in sorted(items_by_seed.items()):
        rows = items[items.stage == "all"]
        tables.append(rows.pivot_table(index=["query", "word", "reference"], columns="block", values="ratio"))
    common = tables[0].index
    for t in tables[1:]:
        common = common.intersection(t.index)
    common = common.sort_values()
    out = {}
    for b in blocks:
        if any(b not in t.columns for t in tables):
            continue
        out[b] = np.stack([t.loc[common, b].to_numpy() for t in tables])
    return common.to_frame(index=False), out


def decide_words_avoid(rep, claim: Claim, items_by_seed: dict) -> Scored | None:
    """Decide "words avoid attending to the region they refer to": per place word (items pooled over the
    seeds' MAAF models on CSS), its attention to the named cell over its average image token must be below 1
    in every block named by `claim.worse`. `items_by_seed`: {seed: `experiment.place_attention_items`}."""
    if claim.better != AVERAGE_TOKEN:
        raise ValueError(f"claim {claim.id!r}: `better` must be '{AVERAGE_TOKEN}', got {claim.better!r}")
    if not items_by_seed:
        _not_decided(rep, claim, "no trained MAAF model on CSS")
        return None
    blocks = {m: block_of(m) for m in claim.worse}
    items, ratios = attention_scores(items_by_seed, blocks.values())
    missing = [m for m, b in blocks.items() if b not in ratios]
    if missing or not len(items):
        _not_decided(rep, claim, f"no place word attention for {missing or claim.worse} (model blocks or queries)")
        return None
    seeds = sorted(items_by_seed)
    scores = {AVERAGE_TOKEN: np.ones((len(seeds), len(items)))} | {m: ratios[b] for m, b in blocks.items()}
    decision = decide(claim, scores, torch.tensor(items["reference"].to_numpy()),
                      cluster_name=f"{CLUSTERS} (of {len(items)} place words)")
    rep.decide(claim, decision)
    return Scored(claim, CLAIM_DATASETS[claim.id], seeds, scores, decision)
