"""The MAAF notebook's claim checks, recorded with `rep.check` (a failed check is a result, never hidden).

- MAAF beats TIRG (also TIRG trained longer), concatenation and image-only on the Fashion IQ-style data
  ((R@10+R@50)/2) and on the CSS-style scenes (R@1): `visualsearch.claims.beats_all`.
- Words attend less to the image region they name than to the average image token (CSS-style), from
  `experiment.place_attention`.
"""
from __future__ import annotations

from ...claims import beats_all
from .tables import fiq_score


def _beats_baselines(rep, claim: str, scores: dict, n_queries: int) -> bool:
    """MAAF above every TIRG row, concat and image-only (those present) on `scores`."""
    passed, detail = beats_all(scores, "MAAF", [m for m in scores if m.startswith("TIRG")]
                               + [m for m in ("concat", "image only") if m in scores], n_queries)
    return rep.check(claim, passed, detail, measured=scores["MAAF"])


def beats_on_fashion_iq(rep, results: dict, dataset) -> bool:
    """`results`: {method name: RunResult} on Fashion IQ; `dataset`: its `data.PreparedDataset`."""
    scores = {m: fiq_score(r) for m, r in results.items()}
    n = sum(len(g.split.queries) for g in dataset.eval.values())
    return _beats_baselines(rep, "MAAF beats TIRG, concat and image-only on Fashion IQ-style data ((R@10+R@50)/2)",
                            scores, n)


def beats_on_css(rep, results: dict, dataset) -> bool:
    """`results`: {method name: RunResult} on CSS; `dataset`: its `data.PreparedDataset`."""
    scores = {m: r.recall["test"]["R@1"] for m, r in results.items()}
    n = len(dataset.eval["test"].split.queries)
    return _beats_baselines(rep, "MAAF beats TIRG, concat and image-only on CSS-style scenes (R@1)", scores, n)


def words_avoid_named_places(rep, places) -> bool:
    """`places`: `experiment.place_attention`'s rows (block, stage, queries, ratio)."""
    return rep.check("Words attend less to the image region they name than to the average image token (CSS-style)",
                     bool((places.ratio < 1).all()),
                     "; ".join(f"block {b} {s}: {r:.2f} over {n} words" for b, s, r, n in
                               zip(places.block, places.stage, places.ratio, places.queries)),
                     measured=float(places.ratio.mean()))
