"""Training step time of MAAF and TIRG, at the default preset's shapes and at the paper's.

One step = query composition (reference image + caption) and catalog embedding of the targets, in-batch
softmax loss, backward, SGD step (backbone at 0.1x lr): what the training loop does. Both models get the same
warm-up steps before timing, the same batch, captions of about 12 words, and the same threads.

Shapes:
- paper: ResNet-50 at 224 px (14x14 + 7x7 image tokens), d 512, 2 blocks, FF 128, trained backbone, batch 32.
- paper64: the same at 64 px (the reference run also timed this size).
- default: the default preset: ResNet-18 at 64 px, frozen backbone fed precomputed maps, d 128, batch 32.
Reference on a 2-core machine of this kind (the authors' released model code, once warm): 15.6 s per MAAF
step and 11.4 s per TIRG step at 224 px; 1.7 s and 1.2 s at 64 px.

`--authors-code DIR` times the authors' own models instead of quoting those figures: DIR is a checkout of
yahoo/maaf at 49a0df9; both models are built once and stepped in alternating rounds, and the ratio ours/theirs is
printed per round and overall (the paper64 and paper shapes; their code has no precomputed-maps mode, so the
default shape is skipped). The shims their code needs on a CPU-only machine are listed in bench/maaf_authors.py.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from visualsearch.losses import BatchSoftmaxLoss
from visualsearch.models.blocks import stage_maps
from visualsearch.models.fusion import build_model
from visualsearch.models.maaf import MAAFConfig
from visualsearch.models.text import Vocabulary
from visualsearch.train import PRECISIONS, autocast, channels_last

SHAPES = {
    "paper": dict(cfg=MAAFConfig(backbone="resnet50", image_size=224), size=224, frozen_maps=False),
    "paper64": dict(cfg=MAAFConfig(backbone="resnet50", image_size=64), size=64, frozen_maps=False),
    "default": dict(cfg=MAAFConfig(dim=128, backbone="resnet18", backbone_frozen=True, image_size=64), size=64,
                    frozen_maps=True),
}
REFERENCE_S = {("paper", "maaf"): 15.6, ("paper", "tirg"): 11.4, ("paper64", "maaf"): 1.7, ("paper64", "tirg"): 1.2}
AUTHORS_COMMIT = "49a0df9"
AUTHORS_MODEL = {"maaf": "sequence_concat_attention", "tirg": "tirg"}  # our fusion name -> their --model
WORDS = ("is darker and has long sleeves with a round neck inadditiontothat is red with stripes and shorter "
         "make the top left object blue remove small green circle").split()


def captions(batch: int, words: int, seed: int = 0) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    return [" ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (words,), generator=g)) for _ in range(batch)]


def our_step(fusion: str, shape: str, batch: int, words: int, device: str, precision: str = "fp32"):
    """A closure that runs one training step of our `fusion` model at `shape` on a fixed batch, its forward
    pass in `precision` as the notebook's training runs it (train.autocast, channels-last weights)."""
    spec = SHAPES[shape]
    torch.manual_seed(0)
    cfg = dataclasses.replace(spec["cfg"], fusion=fusion)
    model = build_model(cfg, Vocabulary.build(WORDS)).to(device).train()
    if not spec["frozen_maps"]:  # as the notebook's runs: channels-last where the backbone sees pixels
        channels_last(model)
    groups = model.param_groups(0.1)
    opt = torch.optim.SGD([{"params": g["params"], "lr": 0.01 * g["lr_scale"]} for g in groups], lr=0.01,
                          momentum=0.9, weight_decay=1e-6)
    images = torch.randn(2 * batch, 3, spec["size"], spec["size"], device=device)
    if spec["frozen_maps"]:
        with torch.no_grad():
            images = stage_maps(model.trunk, images)
    source = {k: v[:batch] for k, v in images.items()} if isinstance(images, dict) else images[:batch]
    target = {k: v[batch:] for k, v in images.items()} if isinstance(images, dict) else images[batch:]
    texts = captions(batch, words)
    loss_fn = BatchSoftmaxLoss()

    def step():
        with autocast(device, precision):
            logits = model(source, texts, target).float()
        loss = loss_fn(logits)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def authors_step(directory: str, fusion: str, shape: str, batch: int, words: int):
    """The same step with the authors' model (see bench/maaf_authors.py for the checkout and its shims)."""
    from visualsearch.bench.maaf_authors import AuthorsModel

    spec = SHAPES[shape]
    if spec["frozen_maps"]:
        raise ValueError(f"shape {shape!r} feeds precomputed maps, which the authors' code has no mode for")
    torch.manual_seed(0)
    model = AuthorsModel(directory, AUTHORS_MODEL[fusion], spec["size"], WORDS)
    images = torch.randn(2 * batch, 3, spec["size"], spec["size"])
    texts = captions(batch, words)
    return lambda: model.step(images[:batch], texts, images[batch:])


def timed(step, warmup: int, steps: int, device: str) -> list[float]:
    """Seconds of each of `steps` calls of `step` after `warmup` untimed ones."""
    times = []
    for i in range(warmup + steps):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def side_by_side(args) -> None:
    """Ours (at each of `--precision`) and theirs at the same shapes, built once each, timed in alternating rounds
    (so that a change in the machine's load falls on all); the ratio is ours/theirs of the mean step time, per
    round and over all. Their code runs in float32, as released."""
    precisions = args.precision.split(",")
    print(f"ours beside the authors' code at {args.authors_code} (yahoo/maaf {AUTHORS_COMMIT}): "
          f"{args.rounds} alternating rounds of {args.steps} steps after {args.warmup} warm-up steps each; "
          f"ours at {', '.join(precisions)} (train.autocast, channels-last), theirs float32")
    print(f"{'shape':8s} {'model':6s} {'ours at':>7s} {'round':>5s} {'ours s/step':>11s} {'theirs':>8s} {'ratio':>6s}")
    for shape in args.shapes.split(","):
        if SHAPES[shape]["frozen_maps"]:
            print(f"{shape:8s} skipped: the authors' code has no precomputed-maps mode")
            continue
        for fusion in args.models.split(","):
            ours = {pr: our_step(fusion, shape, args.batch, args.words, "cpu", pr) for pr in precisions}
            theirs = authors_step(args.authors_code, fusion, shape, args.batch, args.words)
            for step in (*ours.values(), theirs):
                timed(step, args.warmup, 0, "cpu")  # warm-up only
            all_ours, all_theirs = {pr: [] for pr in precisions}, []
            for r in range(args.rounds):
                a = {pr: timed(step, 0, args.steps, "cpu") for pr, step in ours.items()}
                b = timed(theirs, 0, args.steps, "cpu")
                all_theirs += b
                for pr in precisions:
                    all_ours[pr] += a[pr]
                    print(f"{shape:8s} {fusion:6s} {pr:>7s} {r + 1:5d} {statistics.mean(a[pr]):11.3f} "
                          f"{statistics.mean(b):8.3f} {statistics.mean(a[pr]) / statistics.mean(b):6.2f}", flush=True)
            for pr in precisions:
                print(f"{shape:8s} {fusion:6s} {pr:>7s} {'all':>5s} {statistics.mean(all_ours[pr]):11.3f} "
                      f"{statistics.mean(all_theirs):8.3f} "
                      f"{statistics.mean(all_ours[pr]) / statistics.mean(all_theirs):6.2f}", flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m visualsearch.bench maaf")
    ap.add_argument("--shapes", default="default,paper64,paper", help=f"comma-separated among {', '.join(SHAPES)}")
    ap.add_argument("--models", default="maaf,tirg", help="fusions to time (maaf, tirg, any baseline)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--words", type=int, default=12, help="words per caption")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--authors-code", metavar="DIR", default=None,
                    help=f"a checkout of yahoo/maaf at {AUTHORS_COMMIT}: time their model beside ours (CPU only)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds with --authors-code")
    ap.add_argument("--precision", default="fp32,bf16",
                    help=f"comma-separated among {', '.join(PRECISIONS)}: our training forward pass (train.autocast)")
    args = ap.parse_args(argv)
    unknown = set(args.precision.split(",")) - set(PRECISIONS)
    if unknown:
        ap.error(f"--precision {args.precision}: {', '.join(sorted(unknown))} is not one of {', '.join(PRECISIONS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.authors_code:
        if args.device != "cpu":
            ap.error("--authors-code times both on the CPU (their code's shims are CPU ones)")
        unknown = set(args.models.split(",")) - set(AUTHORS_MODEL)
        if unknown:
            ap.error(f"--authors-code knows the authors' {', '.join(AUTHORS_MODEL)}; not {', '.join(sorted(unknown))}")
        print(f"torch threads {torch.get_num_threads()}, batch {args.batch}, {args.words}-word captions")
        side_by_side(args)
        return
    print(f"MAAF / TIRG training step, batch {args.batch}, {args.words}-word captions, {args.warmup} warm-up + "
          f"{args.steps} timed steps, device {args.device}, torch threads {torch.get_num_threads()}")
    print(f"{'shape':8s} {'model':16s} {'ours at':>7s} {'mean s/step':>11s} {'min':>7s} {'max':>7s} {'reference':>10s}")
    for shape in args.shapes.split(","):
        for fusion in args.models.split(","):
            for pr in args.precision.split(","):
                t = timed(our_step(fusion, shape, args.batch, args.words, args.device, pr), args.warmup, args.steps,
                          args.device)
                ref = REFERENCE_S.get((shape, fusion))
                print(f"{shape:8s} {fusion:16s} {pr:>7s} {statistics.mean(t):11.3f} {min(t):7.3f} {max(t):7.3f} "
                      f"{(f'{ref:.1f}' if ref else '-'):>10s}", flush=True)
