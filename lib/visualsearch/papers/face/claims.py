"""The face paper's claims, decided by the project's one test (`visualsearch.claims.decide`: a paired bootstrap
over test people, per-item scores pooled over the fine-tuning seeds) as declared in the notebook's config
(`claims:` and `claim_tests:` in configs/face_attribute_sharing/default.yaml) before any result is seen.

- The paper's depth claims, one per attribute ("Age and emotion improve when fine-tuned from earlier layers
  onward"): fine-tuning from the earlier depth beats head-only fine-tuning, AND (the capacity control, decided
  with it) the same small probe at its earlier depth beats the probe at the last depth, so that the gain is not
  only the extra trainable layers of an earlier branch.
- Our extensions, following the paper's logic: gender and ethnicity gain little from earlier branching (head
  only within a declared margin of the earlier depth), and the chosen sharing pattern loses little against one
  network per attribute.
- The paper's cost claim (about 1 GFLOP for all predictions), not an "A beats B": the pattern picked on accuracy
  alone, costed on the paper preset's network, against the budget with a declared tolerance (`rep.check`).

No selection on the test images a claim is decided on: the attribute-test people are split once (`split_by_person`)
into a SELECTION half, on which each "earlier depth" (and the sharing pattern the notebook builds) is chosen, and a
DECISION half, on which every claim is decided. Per-item score: 1/0 correct per test image (age: its FairFace bin),
one row per fine-tuning seed, from the predictions every run already stores (no extra training).

A failed claim is reported with its numbers, never stops the run. This module draws from results only: no model.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ...claims import Claim, Decision, decide, declared_claims
from .data import ATTRIBUTES, FaceSplit, pattern_name

# The methods the declared claims compare (their `better`/`worse` in the config).
EARLIER = "fine-tune from the earlier depth"
HEAD_ONLY = "fine-tune head only"
PROBE_EARLIER = "probe at the earlier depth"        # the capacity control
PROBE_LAST = "probe at the last depth"
CHOSEN = "chosen sharing pattern"
SEPARATE = "one network per attribute"
METHODS = (EARLIER, HEAD_ONLY, CHOSEN, SEPARATE)

# The depth claims of the config, by id, and the attribute each is about.
DEPTH_CLAIMS = {"emotion_earlier": "emotion", "age_earlier": "age", "gender_little": "gender",
                "ethnicity_little": "ethnicity"}
PATTERN_CLAIM = "chosen_vs_separate"
BUDGET_CHECK = "one_gflop"


# ------------------------------------------------------------------ the selection / decision split

@dataclass(frozen=True)
class Halves:
    """The attribute-test images split by person: `select` (bool [N]) marks the images on which depths and the
    sharing pattern are chosen; the others decide the claims. `clusters` [N]: the person of each image (a unique
    negative id per image whose person is unknown), resampled whole by the bootstrap."""

    select: torch.Tensor
    clusters: torch.Tensor
    identities_known: bool

    @property
    def decide(self) -> torch.Tensor:
        return ~self.select

    def people(self, mask: torch.Tensor) -> int:
        return int(torch.unique(self.clusters[mask]).numel())


def split_by_person(identity: torch.Tensor, fraction: float, seed: int) -> Halves:
    """Hold out `fraction` of the test people (whole people, drawn by `seed`; images of unknown identity are
    drawn one by one) for selection; the rest decide."""
    identity = torch.as_tensor(identity).long()
    n = len(identity)
    known = identity >= 0
    g = torch.Generator().manual_seed(int(seed))
    people = torch.unique(identity[known])
    people = people[torch.randperm(len(people), generator=g)]
    select = torch.isin(identity, people[:round(fraction * len(people))]) & known
    unknown = (~known).nonzero()[:, 0]
    unknown = unknown[torch.randperm(len(unknown), generator=g)]
    select[unknown[:round(fraction * len(unknown))]] = True
    clusters = torch.where(known, identity, -1 - torch.arange(n))
    return Halves(select, clusters, bool(known.any()))


def halves_of(split: FaceSplit, p) -> Halves:
    """The declared split (`claim_tests.selection_fraction`, `.selection_seed`) of the test split's people."""
    t = p["claim_tests"]
    return split_by_person(split.identity, float(t["selection_fraction"]), int(t["selection_seed"]))


# ------------------------------------------------------------------ per-item scores

def correct(runs: dict, split: FaceSplit, attr: str, method: str, depth: int, seeds) -> torch.Tensor:
    """[seeds, N] 1.0/0.0: whether the run (attr, method, depth, seed) predicts each test image's `attr` right
    (NaN where the image has no `attr` label). `runs`: experiment.run_grid's {(attr, method, depth, seed): result}."""
    y = split.labels[attr]
    out = torch.stack([(runs[(attr, method, depth, s)]["pred"].long() == y).double() for s in seeds])
    out[:, y < 0] = float("nan")
    return out


def accuracy_on(runs: dict, split: FaceSplit, mask: torch.Tensor, attr: str, method: str, depth: int, seeds) -> float:
    """Accuracy over the labelled images of `mask`, pooled over seeds."""
    c = correct(runs, split, attr, method, depth, seeds)[:, mask & (split.labels[attr] >= 0)]
    return float(c.mean()) if c.numel() else float("nan")


def earlier_depth(runs: dict, split: FaceSplit, halves: Halves, attr: str, method: str, depths, seeds) -> int:
    """The depth before the last with the best accuracy on the selection half (pooled over seeds; ties go to the
    deeper, cheaper depth)."""
    last = max(depths)
    acc = {d: accuracy_on(runs, split, halves.select, attr, method, d, seeds) for d in sorted(depths) if d < last}
    if not acc:
        raise ValueError(f"no depth before the last ({last}) to compare with: depths {list(depths)}")
    valid = {d: v for d, v in acc.items() if v == v}  # (NaN: no labelled image of `attr` to select on)
    if not valid:
        return max(acc)
    best = max(valid.values())
    return max(d for d, v in valid.items() if v == best)


def selection_accuracy(runs: dict, split: FaceSplit, halves: Halves, p, method: str = "finetune") -> dict:
    """{attribute: {depth: accuracy on the selection half}}, pooled over seeds: what the sharing pattern is
    chosen on (sharing.enumerate_patterns / choose_pattern), so that the pattern claim is decided on other people."""
    return {a: {d: accuracy_on(runs, split, halves.select, a, method, d, p["seeds"]) for d in sorted(p["depths"])}
            for a in ATTRIBUTES}


def pattern_scores(runs: dict, split: FaceSplit, pattern: dict, seeds, items: torch.Tensor) -> torch.Tensor:
    """[seeds, len(items)] per-image score of a sharing pattern ({attribute: depth}, fine-tuned branches) over the
    test images `items` (bool mask): the mean over attributes of 1/0 correct, each attribute weighted by
    (images / images labelled for it) so that the mean over items is exactly the mean over attributes of the
    per-attribute accuracy (every image has all four labels on the synthetic world; on real data emotion comes
    from other images than age, gender and ethnicity)."""
    n = int(items.sum())
    total, present = torch.zeros(len(seeds), n, dtype=torch.float64), 0
    for a, d in pattern.items():
        c = correct(runs, split, a, "finetune", d, seeds)[:, items]
        labelled = int((~torch.isnan(c[0])).sum())
        if labelled:
            total += torch.nan_to_num(c, nan=0.0) * (n / labelled)
            present += 1
    return total / max(present, 1)


# ------------------------------------------------------------------ decisions

def _decide(claim: Claim, scores: dict, halves: Halves, items: torch.Tensor, n_boot: int) -> Decision:
    """claims.decide on the images `items` (bool mask over the test split; `scores` [seeds, items.sum()] each),
    whole people resampled (single images where no identity is known)."""
    clusters = halves.clusters[items] if halves.identities_known else None
    return decide(claim, scores, clusters, n_boot=n_boot,
                  cluster_name="test people" if halves.identities_known else "test images")


def decide_depth_claim(claim: Claim, attr: str, runs: dict, split: FaceSplit, halves: Halves, p) -> Decision:
    """A depth claim: the earlier depth (chosen on the selection half) against head only (the last depth), on the
    decision half. When the claim says the earlier depth is better and `claim_tests.capacity_control` is on, the
    same test must also hold for the equal-capacity probe (its own earlier depth against its last depth)."""
    depths, seeds, n_boot = p["depths"], p["seeds"], int(p["claim_tests"]["n_boot"])
    last = max(depths)
    items = halves.decide & (split.labels[attr] >= 0)
    d = earlier_depth(runs, split, halves, attr, "finetune", depths, seeds)
    scores = {EARLIER: correct(runs, split, attr, "finetune", d, seeds)[:, items],
              HEAD_ONLY: correct(runs, split, attr, "finetune", last, seeds)[:, items]}
    main = _decide(claim, scores, halves, items, n_boot)
    chosen_on = f"earlier depth chosen on the selection half ({halves.people(halves.select)} people)"
    out = replace(main, criterion=f"{chosen_on}; {main.criterion}",
                  detail=f"earlier depth {d}, head only = depth {last}: {main.detail}")
    if claim.better != EARLIER or not p["claim_tests"]["capacity_control"]:
        return out
    dp = earlier_depth(runs, split, halves, attr, "probe", depths, seeds)
    control = Claim(id=f"{claim.id}_capacity_control", text=f"capacity control of {claim.id}", source=claim.source,
                    better=PROBE_EARLIER, worse=PROBE_LAST, metric=claim.metric, threshold=claim.threshold)
    ctrl = _decide(control, {PROBE_EARLIER: correct(runs, split, attr, "probe", dp, seeds)[:, items],
                             PROBE_LAST: correct(runs, split, attr, "probe", last, seeds)[:, items]}, halves, items, n_boot)
    return replace(out, passed=out.passed and ctrl.passed,
                   criterion=f"{out.criterion}; and the capacity control must pass the same test: {control.comparison} "
                             f"(the same small probe at every depth)",
                   detail=f"{out.detail}; capacity control ({'holds' if ctrl.passed else 'FAILS'}): probe at depth {dp} "
                          f"vs depth {last}: {ctrl.detail}")


def check_depth_claims(rep, runs: dict, split: FaceSplit, halves: Halves, p) -> dict:
    """Decide and record every declared depth claim (`DEPTH_CLAIMS`); {claim id: Decision}."""
    declared = declared_claims(p)
    out = {}
    for cid, attr in DEPTH_CLAIMS.items():
        if cid in declared:
            out[cid] = decide_depth_claim(declared[cid], attr, runs, split, halves, p)
            rep.decide(declared[cid], out[cid])
    return out


def check_loss_vs_separate(rep, runs: dict, split: FaceSplit, halves: Halves, chosen: dict, p) -> Decision:
    """The chosen pattern ({attribute: depth}, chosen within the budget on the selection half) against one
    network per attribute (every attribute at the first depth), per-image pattern scores on the decision half."""
    claim = declared_claims(p)[PATTERN_CLAIM]
    separate = {a: min(p["depths"]) for a in ATTRIBUTES}
    chosen = {a: int(chosen[a]) for a in ATTRIBUTES}
    items = halves.decide
    scores = {CHOSEN: pattern_scores(runs, split, chosen, p["seeds"], items),
              SEPARATE: pattern_scores(runs, split, separate, p["seeds"], items)}
    n = int(items.sum())
    d = _decide(claim, scores, halves, items, int(p["claim_tests"]["n_boot"]))
    same = " (the same pattern)" if chosen == separate else ""
    d = replace(d, criterion=f"pattern chosen within the budget on the selection half ({halves.people(halves.select)} "
                             f"people); {d.criterion}",
                detail=f"{pattern_name(chosen)} vs {pattern_name(separate)}{same} on {n} images: {d.detail}")
    rep.decide(claim, d)
    return d


def check_budget(rep, pattern: dict, cost: dict, network: str, p) -> bool:
    """The paper's cost claim (declared under `checks:`): the cost of `pattern` ({attribute: depth}: the pattern
    chosen on accuracy alone, without the budget filter) on the network of `checks.one_gflop.preset` (`network`
    describes it), at most p.sharing.budget x (1 + tolerance) in the convention p.sharing.convention. Not an
    "A beats B": a count against a declared bound, which fails when the most accurate pattern costs more."""
    c = p["checks"][BUDGET_CHECK]
    conv, budget, tol = p["sharing"]["convention"], float(p["sharing"]["budget"]), float(c["tolerance"])
    bound = budget * (1 + tol)
    return rep.check(c["text"], cost[conv] <= bound,
                     f"{pattern_name(pattern)} on {network}: {cost['flops'] / 1e9:.3f} GFLOPs (2 per multiply-add) = "
                     f"{cost['macs'] / 1e9:.3f} G multiply-adds; bound {bound / 1e9:.3g} G {conv}", cost[conv] / 1e9,
                     source=c["source"], seeds=len(p["seeds"]), proxy=c["proxy"], claim_id=BUDGET_CHECK,
                     comparison=f"{conv} of the most accurate pattern (no budget filter) <= {budget / 1e9:g} G x "
                                f"(1 + {tol:g}) on the {c['preset']} preset's network",
                     criterion=f"{conv} counted with torch.utils.flop_counter, per stage, on the {c['preset']} preset's "
                               f"network; pattern chosen on accuracy alone on the selection half (pooled over "
                               f"{len(p['seeds'])} seeds); tolerance {tol:g} declared before the number was seen")


def in_words(decisions: dict) -> list[str]:
    """One line per decided depth claim, saying plainly whether it holds and, for the paper's claims, whether the
    capacity control held (its numbers are in the decision's detail)."""
    def control(d):
        if "capacity control (FAILS)" in d.detail:
            return "; under the capacity control it FAILS"
        return "; the capacity control holds" if "capacity control (holds)" in d.detail else ""
    return [f"{cid}: {'holds' if d.passed else 'does NOT hold'}{control(d)}. {d.detail}" for cid, d in decisions.items()]
