"""Where this process stands in a torchrun launch.

Why its own module: the training loop (train.py) shards batches by rank and the Reporter (report.py) lets
only rank 0 write; report code must not import the training loop to learn its rank.
"""
from __future__ import annotations

import os


def dist_info() -> tuple[int, int]:
    """(rank, world_size) from torchrun's environment; (0, 1) otherwise."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
