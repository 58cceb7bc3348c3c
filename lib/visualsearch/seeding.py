"""One way to seed: Python, NumPy and torch from one integer, and per-step seeds derived from it."""
from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def step_seed(seed: int, step: int, stream: int = 0) -> int:
    """A seed for (run seed, step, stream) so that a batch or a dropout mask at step t is the same whether
    the run went straight through or resumed at t: what makes resume exact."""
    return (seed * 1_000_003 + step * 9_176 + stream * 7_919_773) % (2**63 - 1)
