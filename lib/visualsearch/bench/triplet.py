"""Triplet paper benchmarks: loss + mining time per batch, and training images/s at two shapes.

1. Loss + mining, forward and backward, on one batch of 128 x 512 unit embeddings (64 pairs): ours
   (BatchHardTripletLoss, the paper's definition) against pytorch-metric-learning's BatchHardMiner +
   TripletMarginLoss (cosine, margin 0.1). The issue's reference run measured 2.2 ms for theirs on 2 cores;
   ours should be no slower.
2. Training images/s of the full step (pair sampling, augmentation, forward, loss, backward, SGD step) at the
   default preset's shape (ResNet-18, 48 px, 32 pairs) and the paper shape (ResNet-50, 224 px, 64 pairs), on
   random uint8 images (content does not change the speed).

Measured (scripts/tuning/triplet_gpu_sweep_h100.jsonl, the CPU of the GPU machine idle, 2 threads): loss +
mining 0.98 ms ours against 1.99 ms pytorch-metric-learning; training at ResNet-18, 64 px, 32 pairs: 133
images/s. On the H100: loss 1.3 ms against 2.8 ms (launch-bound); ResNet-50, 224 px, batch 128, fp32, full
step with augmentation on the GPU: 1,294 images/s over 300 steps.

    python -m visualsearch.bench triplet [--device cuda] [--steps 20] [--shapes default,paper]
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from visualsearch.losses import BatchHardTripletLoss, pair_indices

SHAPES = {"default": ("resnet18", 48, 32), "paper": ("resnet50", 224, 64)}  # configs/triplet_product_search


def _sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def time_losses(device="cpu", reps: int = 200, pairs: int = 64, dim: int = 512) -> dict:
    """Median ms of forward+backward for ours and for pytorch-metric-learning on the same batch."""
    from pytorch_metric_learning import distances, losses, miners, reducers

    g = torch.Generator().manual_seed(0)
    base = F.normalize(torch.randn(2 * pairs, dim, generator=g), dim=1).to(device)
    labels = torch.arange(pairs).repeat(2).to(device)
    anchors, positives = pair_indices(pairs, device=device)
    ours = BatchHardTripletLoss(0.1)
    cos = distances.CosineSimilarity()
    miner = miners.BatchHardMiner(distance=cos)
    theirs = losses.TripletMarginLoss(margin=0.1, distance=cos, reducer=reducers.MeanReducer())

    def run_ours():
        e = base.clone().requires_grad_(True)
        loss, _ = ours(e, labels, anchors, positives)
        loss.backward()

    def run_theirs():
        e = base.clone().requires_grad_(True)
        loss = theirs(e, labels, miner(e, labels))
        loss.backward()

    out = {}
    for name, fn in (("ours", run_ours), ("pytorch-metric-learning", run_theirs)):
        for _ in range(10):
            fn()
        times = []
        for _ in range(reps):
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times.append(time.perf_counter() - t0)
        out[name] = sorted(times)[len(times) // 2] * 1e3
    return out


def time_training(shape: str, device="cpu", steps: int = 20, warmup: int = 3, n_images: int = 2048) -> dict:
    """Images/s of train_embedding's step at a shape, measured over `steps` after `warmup` steps."""
    from visualsearch.data.images import ImageStore
    from visualsearch.papers.triplet.data import ProductImages
    from visualsearch.papers.triplet.experiment import RunConfig, train_embedding

    arch, size, pairs = SHAPES[shape]
    g = torch.Generator().manual_seed(0)
    n = max(n_images, 4 * pairs)
    images = ProductImages(ImageStore(size, torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)),
                           labels=torch.arange(n) // 2, categories=torch.arange(n) // 2 % 12)
    stamps = []

    def eval_fn(model, step):
        _sync(device)
        stamps.append(time.perf_counter())
        return {}

    cfg = RunConfig(steps=warmup + steps, num_pairs=pairs, arch=arch)
    train_embedding(images, cfg, device=device, eval_fn=eval_fn, eval_every=1)
    dt = stamps[-1] - stamps[warmup - 1]
    return {"shape": shape, "arch": arch, "px": size, "batch": 2 * pairs, "images_per_s": 2 * pairs * steps / dt,
            "ms_per_step": dt / steps * 1e3}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m visualsearch.bench triplet")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=20, help="timed training steps per shape")
    ap.add_argument("--shapes", default="default,paper", help="comma-separated: default, paper")
    ap.add_argument("--loss-reps", type=int, default=200)
    args = ap.parse_args(argv)
    print(f"device: {args.device}, torch threads: {torch.get_num_threads()}")
    t = time_losses(args.device, args.loss_reps)
    print(f"loss + mining, forward+backward, 128 x 512 batch (median of {args.loss_reps}):")
    for name, ms in t.items():
        print(f"  {name:26s} {ms:7.3f} ms")
    print(f"  ours / theirs = {t['ours'] / t['pytorch-metric-learning']:.2f} (issue's reference: theirs 2.2 ms on 2 cores)")
    for shape in [s for s in args.shapes.split(",") if s]:
        r = time_training(shape, args.device, args.steps)
        print(f"training, {shape} shape ({r['arch']}, {r['px']} px, batch {r['batch']}): "
              f"{r['images_per_s']:.0f} images/s ({r['ms_per_step']:.0f} ms/step)")
