"""Losses of the four papers, one small class each.

- In-batch softmax ("batch-based classification", MAAF and CFQ): query i must pick target i among the B
  targets of the batch; softmax cross-entropy in one direction.
- Soft triplet (MAAF ablation, from TIRG): softplus(s(q_i, t_j) - s(q_i, t_i)) averaged over j != i.
The triplet losses of the triplet paper (batch-hard and its variants) follow below.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BatchSoftmaxLoss(nn.Module):
    """Cross-entropy of `logits[i, j]` (query i vs target j, already scaled) with the diagonal as labels."""

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        labels = torch.arange(logits.shape[0], device=logits.device)
        return F.cross_entropy(logits, labels)


class SoftTripletLoss(nn.Module):
    """Mean over queries i and negatives j != i of softplus(logits[i, j] - logits[i, i])."""

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        b = logits.shape[0]
        diff = logits - logits.diagonal().unsqueeze(1)
        off = ~torch.eye(b, dtype=torch.bool, device=logits.device)
        return F.softplus(diff[off]).mean()


# ------------------------------------------------------------------------------ triplet losses (triplet paper)
#
# Every triplet loss below takes unit-norm embeddings [N, D] of one batch, their product labels [N], and the
# (anchor, positive) index pairs to use; they differ only in how each anchor's negative is chosen (or, for
# batch-all, in using every negative). Pair batches lay out the P queries first and their P partners after
# them: `pair_indices(P)` gives anchors 0..P-1 and positives P..2P-1, the paper's layout. Similarity is the
# cosine (dot product of unit vectors); the margin is in cosine units (0.1 in the paper = 0.2 in squared
# Euclidean distance on unit vectors).


def pair_indices(num_pairs: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(anchors, positives) of a pair batch laid out [queries..., partners...]: anchor i pairs with i + P."""
    a = torch.arange(num_pairs, device=device)
    return a, a + num_pairs


def triplet_stats(s_ap: torch.Tensor, s_an: torch.Tensor, per_anchor: torch.Tensor, margin: float) -> dict:
    """What the paper's code logs: mean anchor-positive and anchor-negative similarity, the fraction of
    anchors with a non-zero loss, and with a loss above the margin (the negative is closer than the
    positive). Anchors without any negative in the batch are left out of the negative mean."""
    with torch.no_grad():
        finite = torch.isfinite(s_an)
        return {"sim_ap": float(s_ap.mean()),
                "sim_an": float(s_an[finite].mean()) if finite.any() else float("nan"),
                "frac_active": float((per_anchor > 0).float().mean()),
                "frac_over_margin": float((per_anchor > margin).float().mean())}


class _OneNegativePerAnchor(nn.Module):
    """relu(s(a, n) - s(a, p) + margin) per anchor with one negative n chosen per anchor by
    `select_negative`, averaged over all anchors (zeros included), as in the paper. Returns (loss, stats)."""

    def __init__(self, margin: float = 0.1):
        super().__init__()
        self.margin = margin

    def select_negative(self, sim: torch.Tensor, negative: torch.Tensor, s_ap: torch.Tensor) -> torch.Tensor:
        """Similarity of the chosen negative per anchor row; -inf where an anchor has no negative."""
        raise NotImplementedError

    def forward(self, emb: torch.Tensor, labels: torch.Tensor, anchors: torch.Tensor, positives: torch.Tensor):
        sim = emb[anchors] @ emb.T                                  # [A, N]
        s_ap = sim.gather(1, positives.unsqueeze(1)).squeeze(1)     # [A]
        negative = labels.unsqueeze(0) != labels[anchors].unsqueeze(1)
        s_an = self.select_negative(sim, negative, s_ap)
        per_anchor = F.relu(s_an - s_ap + self.margin)              # relu(-inf) = 0: no negative, no loss
        return per_anchor.mean(), triplet_stats(s_ap, s_an, per_anchor, self.margin)


class BatchHardTripletLoss(_OneNegativePerAnchor):
    """The paper's loss (a variant of Hermans et al.'s batch-hard): the negative of each anchor is the most
    similar image with another product id among *all* images of the batch (queries and partners)."""

    def select_negative(self, sim, negative, s_ap):
        return sim.masked_fill(~negative, float("-inf")).max(1).values


class ReleasedCodeBatchHardTripletLoss(_OneNegativePerAnchor):
    """Batch-hard as the released code computes it: same-id entries are masked by multiplying by 0 rather
    than by -inf, so the hardest-negative similarity is floored at 0. It differs from BatchHardTripletLoss
    only when every negative of an anchor has negative cosine similarity: then the loss is
    relu(0 - s_ap + m) with no gradient through any negative."""

    def select_negative(self, sim, negative, s_ap):
        return (sim * negative).max(1).values


class SemiHardTripletLoss(_OneNegativePerAnchor):
    """FaceNet's semi-hard negatives (Schroff et al. 2015, as in TensorFlow's triplet_semihard_loss): the
    most similar negative that is still less similar than the positive; when an anchor has none, its least
    similar negative."""

    def select_negative(self, sim, negative, s_ap):
        semi = negative & (sim < s_ap.unsqueeze(1))
        hardest_semi = sim.masked_fill(~semi, float("-inf")).max(1).values
        easiest = sim.masked_fill(~negative, float("inf")).min(1).values
        easiest = easiest.masked_fill(~negative.any(1), float("-inf"))
        return torch.where(semi.any(1), hardest_semi, easiest)


class RandomTripletLoss(_OneNegativePerAnchor):
    """A uniformly random negative per anchor among the batch's images of other products. With mixed
    batches the batch is a uniform sample of products, so this is offline random triplet sampling (a, p,
    any other product): the baseline online mining is compared with. Uses the global torch RNG, which the
    training loop reseeds at every step."""

    def select_negative(self, sim, negative, s_ap):
        scores = torch.rand(sim.shape, device=sim.device).masked_fill(~negative, -1.0)
        pick = scores.argmax(1, keepdim=True)
        return sim.gather(1, pick).squeeze(1).masked_fill(~negative.any(1), float("-inf"))


class BatchAllTripletLoss(nn.Module):
    """Every (anchor, positive, negative) triplet of the batch: relu(s(a, n) - s(a, p) + margin) averaged
    over the triplets with a non-zero loss (Hermans et al.'s "batch all, non-zero", also
    pytorch-metric-learning's default reducer); 0 when none is active. Stats are per triplet."""

    def __init__(self, margin: float = 0.1):
        super().__init__()
        self.margin = margin

    def forward(self, emb: torch.Tensor, labels: torch.Tensor, anchors: torch.Tensor, positives: torch.Tensor):
        sim = emb[anchors] @ emb.T
        s_ap = sim.gather(1, positives.unsqueeze(1))                # [A, 1]
        negative = labels.unsqueeze(0) != labels[anchors].unsqueeze(1)
        per_triplet = F.relu(sim - s_ap + self.margin)[negative]
        active = per_triplet > 0
        loss = per_triplet[active].mean() if active.any() else per_triplet.sum() * 0.0
        s_an = sim[negative]
        stats = triplet_stats(s_ap.squeeze(1), s_an, per_triplet, self.margin)
        return loss, stats
