"""Deciding a paper's claims: the tests behind `Reporter.check` (report.py), in one place.

Why one module: "A beats B" must mean the same thing in every notebook. Today two tests live here, each
used where its paper's evidence has that shape:

- `paired_bootstrap`: the mean per-query difference of two methods on the same test queries and its
  bootstrap interval, resampling whole clusters (the photos of one product are not independent queries);
  "A beats B" holds when the interval's lower end is above 0.
- `beats_all`: whether a method scores above every other one, with the margins and the binomial standard
  error of the winner's recall to read them against (no noise allowance: a known weakness).

The claims protocol (claims declared in each notebook's config, one test for every paper, several seeds) is
built on this module; paper-specific comparisons live in `papers/<paper>/claims.py` and call these.
"""
from __future__ import annotations

import numpy as np
import torch


def paired_bootstrap(a, b, clusters, n_boot: int = 2000, seed: int = 0,
                     level: float = 0.95) -> tuple[float, float, float]:
    """(mean of a - b, interval low, interval high): per-query scores `a` and `b` of two methods on the same
    queries, the interval a bootstrap over `clusters` (one id per query; whole clusters are resampled)."""
    d = (torch.as_tensor(a) - torch.as_tensor(b)).double()
    _, inv = torch.unique(torch.as_tensor(clusters), return_inverse=True)
    n_c = int(inv.max()) + 1
    sums = torch.zeros(n_c, dtype=torch.float64).index_add_(0, inv, d)
    counts = torch.zeros(n_c, dtype=torch.float64).index_add_(0, inv, torch.ones_like(d))
    g = torch.Generator().manual_seed(seed)
    pick = torch.randint(n_c, (n_boot, n_c), generator=g)
    boot = sums[pick].sum(1) / counts[pick].sum(1)
    lo, hi = torch.quantile(boot, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)).tolist()
    return float(d.mean()), lo, hi


def bootstrap_detail(a: float, b: float, lo: float, hi: float, clusters: str = "test products") -> str:
    """The sentence a paired-bootstrap claim is reported with."""
    return (f"{a:.3f} vs {b:.3f} (difference {a - b:+.3f}, 95% bootstrap interval over {clusters} "
            f"{lo:+.3f} to {hi:+.3f})")


def beats_all(scores: dict, winner: str, others: list, n_queries: int) -> tuple[bool, str]:
    """Whether `winner` scores (recall in percent) above every one of `others`, and a sentence with the
    margins and the binomial standard error of the winner's recall over `n_queries`."""
    w = scores[winner]
    se = 100 * np.sqrt(max(w / 100 * (1 - w / 100), 1e-9) / max(n_queries, 1))
    margins = {o: w - scores[o] for o in others}
    text = f"{winner} {w:.1f} (s.e. ~{se:.1f} over {n_queries} queries); margins: " + ", ".join(
        f"vs {o} {scores[o]:.1f}: {m:+.1f}" for o, m in margins.items())
    return all(m > 0 for m in margins.values()), text
