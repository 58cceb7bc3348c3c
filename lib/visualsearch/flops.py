"""FLOP and parameter accounting over torch.utils.flop_counter.

Why both conventions: papers say "1 GFLOP" without saying whether a multiply-add counts once or twice.
torch's FlopCounterMode counts 2 per multiply-add (a matmul of [m,k]x[k,n] is 2mkn); we report that as
`flops` and half of it as `macs`, so a reader can hold either convention against the paper's number.
Elementwise operations (ReLU, BatchNorm in eval, pooling) are not counted, as is usual.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_flops(model: nn.Module, *inputs, **kwargs) -> dict:
    """FLOPs (2 per multiply-add), MACs and trainable+frozen parameters of one forward pass in eval mode."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(*inputs, **kwargs)
    finally:
        model.train(was_training)
    flops = int(counter.get_total_flops())
    return {"flops": flops, "macs": flops // 2, "params": sum(p.numel() for p in model.parameters()),
            "by_module": {k: int(sum(v.values())) for k, v in counter.get_flop_counts().items()}}


def fmt_flops(n: float) -> str:
    """1.23 G, 456.7 M, ... for tables."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f}"
