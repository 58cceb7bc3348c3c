"""The triplet paper's claims, decided on a run. Each claim is declared in configs/triplet_product_search/
default.yaml (`claims:`) before any result is seen and decided by the one test of "A beats B"
(visualsearch.claims.decide): per-query top-1 hits of each method, at every training seed of the runs that enter
a claim, the paired difference pooled over seeds, its bootstrap interval resampling whole test products (the
photos of one product are not independent queries). The per-seed numbers behind each claim go into two tables
(`seed_tables`), so a multi-seed number the notebook shows is a committed one."""
from __future__ import annotations

import torch

from ...claims import Claim, Decision, decide, declared_claims, paired_bootstrap
from .tables import difference_table, seed_table


def hits_at_1(r, query_labels, gallery_labels) -> torch.Tensor:
    """Per query of a Retrieval `r`: 1.0 when the top-1 result is the same product."""
    return (torch.as_tensor(gallery_labels)[r.indices[:, 0]] == torch.as_tensor(query_labels)).float()


def declared(p) -> dict[str, Claim]:
    """The claims the notebook's parameters declare, by id."""
    return declared_claims(p)


def methods_named(claims: dict[str, Claim]) -> list[str]:
    """Every method the claims compare, in order of first mention (the runs `experiment.seeded_retrievals`
    must provide)."""
    return list(dict.fromkeys(m for c in claims.values() for m in (c.better, *c.worse)))


def labels_of(data, which: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(query labels, gallery labels) of the In-shop ("inshop") or SOP ("sop") evaluation."""
    if which == "inshop":
        return data.inshop_query.labels, data.inshop_gallery.labels
    return data.sop_test.labels, data.sop_test.labels


def dataset_of(data, which: str) -> str:
    return data.inshop_name if which == "inshop" else data.sop_name


def per_item_scores(data, seeded: dict) -> dict[str, torch.Tensor]:
    """{name: top-1 hits [seeds, queries]} from `seeded` {name: (which, [Retrieval per seed])}."""
    out = {}
    for name, (which, runs) in seeded.items():
        ql, gl = labels_of(data, which)
        out[name] = torch.stack([hits_at_1(r, ql, gl) for r in runs])
    return out


def _which(claim: Claim, seeded: dict) -> str:
    whiches = {seeded[m][0] for m in (claim.better, *claim.worse)}
    if len(whiches) != 1:
        raise ValueError(f"claim {claim.id!r} compares methods evaluated on different test sets: {sorted(whiches)}")
    return whiches.pop()


def trunk_note(p) -> str:
    """What every seed shares: the starting trunk, said beside each claim's numbers."""
    start = {"pretrained": f"pretrained here once, at seed {p.seed}", "imagenet": "ImageNet weights",
             "none": "randomly initialised at each seed"}.get(p.model.weights, p.model.weights)
    return f"{p.train.steps} steps per run; every seed fine-tunes the same starting trunk ({start})"


def decide_claims(rep, p, data, seeded: dict, claims: dict[str, Claim] | None = None) -> dict[str, Decision]:
    """Decide every declared claim on `seeded` (experiment.seeded_retrievals) and record it with
    `rep.decide`; returns {claim id: Decision}. A claim that does not hold is recorded, never raised."""
    claims = declared(p) if claims is None else claims
    scores = per_item_scores(data, seeded)
    out = {}
    for cid, claim in claims.items():
        which = _which(claim, seeded)
        ql, _ = labels_of(data, which)
        d = decide(claim, {m: scores[m] for m in (claim.better, *claim.worse)}, clusters=ql,
                   cluster_name=f"test products ({dataset_of(data, which)})")
        d.detail = f"{d.detail}; {trunk_note(p)}"
        rep.decide(claim, d)
        out[cid] = d
    return out


def seed_tables(data, seeded: dict, seeds: list, claims: dict[str, Claim]):
    """The per-seed numbers behind the claims, as two tidy tables: R@1 of each compared method at each seed and
    their mean (`tables.seed_table`), and each claimed difference (A - B on R@1) with its 95% bootstrap interval
    over test products at each seed and pooled over seeds, the pooled row being the one the verdict reads
    (`tables.difference_table`)."""
    scores = per_item_scores(data, seeded)
    names = methods_named(claims)
    recall = {m: scores[m].mean(1).tolist() for m in names}
    runs = seed_table(recall, {m: dataset_of(data, seeded[m][0]) for m in names}, seeds)
    rows = []
    for claim in claims.values():
        which = _which(claim, seeded)
        ql, _ = labels_of(data, which)
        a = scores[claim.better]
        for worse in claim.worse:
            b = scores[worse]
            per_seed = [(f"seed {s}", a[i], b[i]) for i, s in enumerate(seeds)]
            for label, x, y in per_seed + [(f"{len(seeds)} seeds pooled", a.mean(0), b.mean(0))]:
                diff, lo, hi = paired_bootstrap(x, y, ql)
                rows.append({"better": claim.better, "worse": worse, "dataset": dataset_of(data, which),
                             "seeds": label, "difference": diff, "low": lo, "high": hi})
    return runs, difference_table(rows)
