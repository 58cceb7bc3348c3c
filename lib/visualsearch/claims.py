"""Deciding a paper's claims: declared claims and the one test behind `Reporter.decide` (report.py).

Why one module: "A beats B" must mean the same thing in every notebook. A claim is declared in the notebook's
config (`Claim`, `declared_claims`) before results are seen and decided by `decide`: a paired bootstrap
(`paired_bootstrap`) over test items, whole clusters resampled (the photos of one product are not
independent queries), per-item scores pooled over training seeds. Paper-specific wiring lives in
`papers/<paper>/claims.py` and calls these.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

SOURCES = ("paper", "extension", "exploratory")  # the paper's own claim | one we add | found after seeing results


@dataclass(frozen=True)
class Claim:
    """One claim, declared in the notebook's config (`claims:` in configs/<notebook>/default.yaml) before any
    result is seen, and decided by `decide`."""

    id: str                  # the key under `claims:`
    text: str                # the paper's words (quoted from ../shared/papers/<paper>.md), or ours for the others
    source: str              # paper | extension | exploratory
    better: str              # the method claimed to be better (A in "A beats B")
    worse: tuple             # the method(s) it beats (B; a list: A must beat each one)
    metric: str              # the per-item score compared (e.g. "hit@1", "(hit@10+hit@50)/2")
    threshold: float = 0.0   # A beats B when the 95% interval of mean(A - B) lies above this; a negative
                             # threshold -d reads "A is within d of B" (the paper's "competitive")
    proxy: str = ""          # when the check stands in for the paper's claim: why, in one sentence

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f"claim {self.id!r}: source must be one of {', '.join(SOURCES)}, got {self.source!r}")
        if not str(self.text).strip():
            raise ValueError(f"claim {self.id!r}: its text is empty")
        worse = (self.worse,) if isinstance(self.worse, str) else tuple(self.worse)
        if not worse or self.better in worse:
            raise ValueError(f"claim {self.id!r}: `worse` must name other methods than {self.better!r}, got {worse}")
        object.__setattr__(self, "worse", worse)

    @property
    def comparison(self) -> str:
        """The comparison in words, e.g. "MAAF > TIRG, concat on R@1"."""
        relation = ">" if self.threshold >= 0 else f"within {-self.threshold:g} of"
        margin = f" by more than {self.threshold:g}" if self.threshold > 0 else ""
        return f"{self.better} {relation} {', '.join(self.worse)}{margin} on {self.metric}"


def declared_claims(p) -> dict[str, Claim]:
    """The claims a notebook's Params declare (section `claims`), by id, in declaration order."""
    section = dict(p.get("claims") or {}) if hasattr(p, "get") else {}
    return {cid: Claim(id=cid, **dict(fields)) for cid, fields in section.items()}


@dataclass
class Decision:
    """How a claim was decided: the numbers `Reporter.decide` writes into claims.csv. With several `worse`
    methods, the numbers are those of the closest comparison (the lowest interval)."""

    passed: bool
    difference: float        # mean over items (and seeds) of A - B
    low: float               # 95% bootstrap interval of the difference
    high: float
    better_score: float      # mean of A
    worse_score: float       # mean of B
    seeds: int               # training seeds pooled
    criterion: str           # the test, in words
    detail: str              # the numbers, in words


def _rows(x) -> torch.Tensor:
    x = torch.as_tensor(x, dtype=torch.float64)
    return x.unsqueeze(0) if x.dim() == 1 else x


def decide(claim: Claim, scores: dict, clusters=None, n_boot: int = 2000, seed: int = 0,
           cluster_name: str = "test items") -> Decision:
    """The one test of "A beats B". `scores`: per-item scores of each method named by the claim on the same
    test items, one row per training seed ([seeds, items], or [items] for one seed; methods may have different
    numbers of seeds). Each method's per-item score is averaged over its seeds (pooling them), and the mean of
    the per-item difference A - B gets a bootstrap interval over `clusters` (whole clusters resampled, the same
    resamples for every B; None: every item its own cluster). A beats B when the interval's lower end is above
    `claim.threshold`; with several B, A must beat each one. `Decision.seeds` is the fewest seeds of any
    compared method."""
    missing = [m for m in (claim.better, *claim.worse) if m not in scores]
    if missing:
        raise ValueError(f"claim {claim.id!r}: no scores for {missing} (have {sorted(scores)})")
    a = _rows(scores[claim.better])
    n_items = a.shape[1]
    clusters = torch.arange(n_items) if clusters is None else torch.as_tensor(clusters)
    parts, seeds = [], a.shape[0]
    for name in claim.worse:
        b = _rows(scores[name])
        if a.shape[1] != b.shape[1]:
            raise ValueError(f"claim {claim.id!r}: scores of {claim.better} {tuple(a.shape)} and {name} "
                             f"{tuple(b.shape)} must be paired (the same test items)")
        seeds = min(seeds, b.shape[0]) if parts else min(a.shape[0], b.shape[0])
        diff, lo, hi = paired_bootstrap(a.mean(0), b.mean(0), clusters, n_boot=n_boot, seed=seed)
        parts.append((lo, name, diff, hi, float(b.mean())))
    lo, name, diff, hi, worse_score = min(parts)
    n_clusters = int(torch.unique(clusters).numel())
    criterion = (f"paired bootstrap over {n_clusters} {cluster_name}, {seeds}+ seed(s) pooled per method: 95% interval "
                 f"of mean {claim.metric} difference above {claim.threshold:g}"
                 + (" for every compared method" if len(parts) > 1 else ""))
    detail = f"{claim.better} {float(a.mean()):.3f}; " + "; ".join(
        f"vs {n} {w:.3f}: {d:+.3f} [{l:+.3f}, {h:+.3f}]" for l, n, d, h, w in parts) + f" ({seeds}+ seed(s))"
    return Decision(all(p[0] > claim.threshold for p in parts), diff, lo, hi, float(a.mean()), worse_score,
                    int(seeds), criterion, detail)


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
