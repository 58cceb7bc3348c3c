"""The triplet paper's claims, checked on a run: "A beats B" on per-query top-1 hits, by the paired bootstrap
over test products (visualsearch.claims), recorded with `Reporter.check`."""
from __future__ import annotations

import torch

from ...claims import bootstrap_detail, paired_bootstrap


def hits_at_1(r, query_labels, gallery_labels) -> torch.Tensor:
    """Per query of a Retrieval `r`: 1.0 when the top-1 result is the same product."""
    return (torch.as_tensor(gallery_labels)[r.indices[:, 0]] == torch.as_tensor(query_labels)).float()


def check(rep, claim: str, retrieval_a, retrieval_b, query_labels, gallery_labels, seed: int = 0,
          extra: str = "") -> bool:
    """Record `claim` ("A beats B") as reproduced when the 95% bootstrap interval (resampling test products) of
    A's top-1 hits minus B's lies above 0; `extra` is appended to the detail."""
    ha, hb = hits_at_1(retrieval_a, query_labels, gallery_labels), hits_at_1(retrieval_b, query_labels, gallery_labels)
    diff, lo, hi = paired_bootstrap(ha, hb, query_labels, seed=seed)
    return rep.check(claim, lo > 0, bootstrap_detail(float(ha.mean()), float(hb.mean()), lo, hi) + extra, diff)


def check_claims(rep, p, data, inshop: dict, sop: dict) -> None:
    """The paper's two claims on this run: online batch-hard negatives beat random triplets and off-the-shelf
    features (In-shop R@1, `inshop`: method -> Retrieval), and single-category batches (p=0.8) beat mixed ones
    (SOP R@1, `sop`: p -> Retrieval). A claim whose runs are not in the preset is not checked."""
    ql, gl = data.inshop_query.labels, data.inshop_gallery.labels
    if "batch_hard" in inshop and "random" in inshop:
        for other, name in (("random", "random triplets"), ("off_the_shelf", "off-the-shelf features")):
            check(rep, f"online batch-hard negatives beat {name} (In-shop R@1)", inshop["batch_hard"], inshop[other],
                  ql, gl, p.seed)
    if 0.8 in sop and 0.0 in sop:
        tl = data.sop_test.labels
        check(rep, "single-category batches (p=0.8) beat mixed batches (p=0) (SOP R@1)", sop[0.8], sop[0.0], tl, tl,
              p.seed, f"; after {p.train.steps} steps")
