"""The CFQ paper's claims, checked on this preset's runs: each a comparison of two runs on every headline number
(FIQ-style (R@10+R@50)/2 and the three CFQ primary metrics), holding only if every one moves the claimed way.

Reads results only (`CFQExperiment.results`, `.limited`, `.pair_counts()`); records with `rep.check`.
"""
from __future__ import annotations

import numpy as np

from .tables import HEADLINE, headline


def compare(results: dict, limited: dict, pair_counts: dict, better: str, worse: str,
            fiq_share: float = 1.0) -> tuple[bool, str, dict]:
    """Whether run `better` beats run `worse` on every headline number, with the margins; both trained on
    `fiq_share` of the Fashion IQ-style pairs (1 = the grid's `results`, else the data-limited sweep's
    `limited`, {(run, share): result}; `pair_counts`: {share: number of training pairs})."""
    def result(run):
        return results[run] if fiq_share == 1 else limited[(run, fiq_share)]

    a, b = headline(result(better)), headline(result(worse))
    margins = {k: a[k] - b[k] for k in HEADLINE}
    ok = all(m > 0 for m in margins.values())
    where = "" if fiq_share == 1 else f" on {pair_counts[fiq_share]} FIQ pairs"
    detail = f"{better} vs {worse}{where}: " + ", ".join(f"{k} {a[k]:.1f} vs {b[k]:.1f} ({margins[k]:+.1f})"
                                                          for k in HEADLINE)
    return ok, detail, margins


def check_claims(results: dict, limited: dict, shares, pair_counts: dict, rep) -> list[dict]:
    """The paper's three claims on this preset, each a comparison on every headline number (FIQ-style
    (R@10+R@50)/2 and the three CFQ primary metrics); then, when the data-limited sweep ran (`shares`: its
    shares of the training pairs), the first and third again at every share of it. Recorded with rep.check,
    never raising."""
    out = []

    def available(a, b, share):
        have = results if share == 1 else {r for r, s in limited if s == share}
        return a in have and b in have

    def record(claim, comparisons):
        comparisons = [(a, b, share) for a, b, *rest in comparisons for share in (rest or [1.0])]
        checked = [compare(results, limited, pair_counts, a, b, share) for a, b, share in comparisons
                   if available(a, b, share)]
        if not checked:
            return
        passed = all(r[0] for r in checked)
        detail = "; ".join(r[1] for r in checked)
        measured = float(np.mean([np.mean(list(r[2].values())) for r in checked]))
        rep.check(claim, passed, detail, measured)
        out.append({"claim": claim, "passed": passed, "detail": detail})

    record("Multimodal pretraining helps over none (CLIP VA + FIQ beats the same model trained on FIQ from scratch)",
           [("clip-fiq", "scratch-fiq")])
    record("Weak attribute pretraining (iMFQ) adds to multimodal pretraining, for CLIP VA and for RAF",
           [("clip-imfq-fiq", "clip-fiq"), ("raf-imfq-fiq", "raf-fiq")])
    record("RAF keeps the pretrained model's advantage (beats CLIP VA fine-tuned) while AF loses part of it "
           "(RAF beats AF)", [("raf-fiq", "clip-fiq"), ("raf-fiq", "af-fiq")])
    # The same comparisons where Fashion IQ-style data is scarce (every share of the data-limited sweep);
    # stated as conditions of the paper's claims, not as claims the paper makes at this scale.
    shares = [float(x) for x in shares]
    if shares:
        record("With scarce Fashion IQ-style data (every share of the data-limited sweep): multimodal pretraining "
               "helps over none", [("clip-fiq", "scratch-fiq", *shares)])
        record("With scarce Fashion IQ-style data (every share of the data-limited sweep): RAF keeps the pretrained "
               "model's advantage while AF loses part of it", [("raf-fiq", "clip-fiq", *shares),
                                                               ("raf-fiq", "af-fiq", *shares)])
    return out
