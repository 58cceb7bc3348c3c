"""Backbone "pretraining": the embedded default's stand-in for ImageNet weights.

A ResNet is trained to name the category, colour, pattern, sleeve, length and neckline of photos from a
products world of its own seed (not the retrieval worlds), so that, as in the paper, the backbone arrives with
useful garment and colour features. Trained by `train.train` with its one-cycle schedule (the learning rate
and the SGD momentum both change every step), so it resumes like every other training here.
"""
from __future__ import annotations

from functools import partial

import numpy as np
import torch
import torch.nn.functional as F

from ...data.images import to_uint8_tensor
from ...data.products import CATEGORIES, render_photo, sample_product, sample_view
from ...models.blocks import ResNetTrunk
from ...progress import stage
from ...seeding import step_seed
from ...train import TrainConfig, autocast, channels_last, identity_of, train
from .data import augment

ATTRIBUTE_HEADS = ("category", "colour", "pattern", "sleeve", "length", "neckline")


def attribute_photos(n: int, image_size: int, seed: int):
    """`n` product photos (shop and street views) of every products category with their coarse attributes:
    the data of the stand-in for ImageNet pretraining (a products world of its own seed, not the
    retrieval worlds)."""
    rng = np.random.default_rng([seed, 7])
    cats = list(CATEGORIES)
    pixels = torch.empty(n, 3, image_size, image_size, dtype=torch.uint8)
    labels = {h: [] for h in ATTRIBUTE_HEADS}
    for i in range(n):
        p = sample_product(rng, cats[int(rng.integers(len(cats)))])
        view = sample_view(rng, "shop" if rng.random() < 0.5 else "street")
        pixels[i] = to_uint8_tensor(render_photo(p, view, image_size)[0])
        for h in ATTRIBUTE_HEADS:
            labels[h].append(p.category if h == "category" else getattr(p, h))
    classes = {h: sorted(set(v)) for h, v in labels.items()}
    targets = {h: torch.tensor([classes[h].index(x) for x in v]) for h, v in labels.items()}
    return pixels, targets, classes


def pretrain_trunk(arch: str = "resnet18", image_size: int = 64, steps: int = 300, n_photos: int = 4000,
                   batch_size: int = 64, lr: float = 0.05, seed: int = 0, device: str = "cpu",
                   progress: bool = False, run_dir=None, checkpoint_every: int = 0, identity: str = "",
                   precision: str = "fp32") -> dict:
    """Train a ResNet to classify product attributes from photos and return its torchvision-style state
    dict (what `MAAFConfig.backbone_weights` loads): the embedded default's stand-in for ImageNet weights,
    so that, as in the paper, the backbone arrives with useful features. Returns also the final running
    training accuracies (0.9/0.1 moving averages) under the key "__accuracy__" (popped before loading).

    Trained by train.train (SGD, momentum 0.9, weight decay 1e-4, a one-cycle schedule rising over the first
    20% of the steps), so it resumes from `run_dir` like every training here; each step's batch and
    augmentation are drawn from a generator seeded by the step, nothing else is random. `precision`: the trunk's
    forward pass (train.autocast, channels-last layout); the heads and the loss stay float32."""
    torch.manual_seed(seed)
    with stage(f"drawing {n_photos} product photos for backbone pretraining", disable=not progress):
        pixels, targets, classes = attribute_photos(n_photos, image_size, seed)
    trunk = channels_last(ResNetTrunk(arch).to(device))
    heads = torch.nn.ModuleDict({h: torch.nn.Linear(trunk.channels["4"], len(c)) for h, c in classes.items()}).to(device)
    net = torch.nn.ModuleDict({"trunk": trunk, "heads": heads})
    cfg = TrainConfig(steps=steps, lr=lr, optimizer="sgd", momentum=0.9, nesterov=False, weight_decay=1e-4,
                      schedule="one_cycle", warmup_fraction=0.2, checkpoint_every=checkpoint_every, seed=seed,
                      progress=progress, desc="pretraining the backbone on product attributes", device=device,
                      identity=identity_of(identity, arch, image_size, n_photos, batch_size))

    def batch_fn(step: int) -> dict:
        gen = torch.Generator().manual_seed(step_seed(seed, step))
        idx = torch.randint(len(pixels), (batch_size,), generator=gen)
        return {"images": augment(pixels[idx], gen), "targets": {h: t[idx] for h, t in targets.items()}}

    log = train(net, partial(_attribute_step, precision=precision), batch_fn, cfg, run_dir=run_dir).log
    acc = {}
    for row in log.to_dict("records"):   # the running accuracies, as the loop before train.train kept them
        for h in heads:
            acc[h] = 0.9 * acc.get(h, 0.0) + 0.1 * row[f"acc_{h}"]
    state = {k: v.cpu() for k, v in trunk.state_dict().items()}
    names = {"stem.0": "conv1", "stem.1": "bn1", "stem.4": "layer1"}
    out = {}
    for k, v in state.items():
        for a, b in names.items():
            if k.startswith(a + "."):
                k = b + k[len(a):]
        out[k] = v
    out["__accuracy__"] = acc
    return out


def _attribute_step(net, batch, precision: str = "fp32") -> tuple:
    """Loss of one pretraining batch (the sum of the attribute heads' cross-entropies) and each head's batch
    accuracy."""
    with autocast(batch["images"].device, precision):
        feats = net["trunk"](batch["images"])["4"].float().mean((2, 3))
    loss, metrics = 0.0, {}
    for h, head in net["heads"].items():
        logits = head(feats)
        y = batch["targets"][h]
        loss = loss + F.cross_entropy(logits, y)
        metrics[f"acc_{h}"] = float((logits.argmax(1) == y).float().mean())
    return loss, metrics
