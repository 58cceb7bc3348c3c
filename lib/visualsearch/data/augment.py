"""The triplet paper's training augmentation, on batches of tensors, reproducible from a torch.Generator.

Released code, per image: with probability 0.5 a random crop whose width and height are each a U(0.5, 1)
fraction of the image's, at a uniformly random place; resize to the input size with a randomly chosen
method; horizontal flip with probability 0.5; with probability 0.5 add Gaussian noise N(0, 0.02); clip to
[0, 1]. (Cropping around DeepFashion's bounding boxes happens before, when images are loaded: see
retail.crop_to_box.)

Why a Generator: the batch at step t, augmentation included, must be a pure function of (seed, t) so a
resumed run sees the same images (see samplers.py and train.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class AugmentConfig:
    crop_prob: float = 0.5                   # chance of a random crop
    crop_min: float = 0.5                    # each side of the crop is U(crop_min, 1) of the image's
    resize_methods: tuple = ("bilinear", "nearest", "bicubic", "area")  # one drawn per image
    flip_prob: float = 0.5                   # chance of a horizontal flip
    noise_prob: float = 0.5                  # chance of additive Gaussian noise
    noise_std: float = 0.02                  # its standard deviation (images in [0, 1])


def _resize(x: torch.Tensor, size: int, method: str) -> torch.Tensor:
    if x.shape[-2:] == (size, size) and method != "area":
        return x
    kw = {"align_corners": False} if method in ("bilinear", "bicubic") else {}
    return F.interpolate(x.unsqueeze(0), size=(size, size), mode=method, **kw).squeeze(0)


def augment_batch(images: torch.Tensor, out_size: int, generator: torch.Generator,
                  cfg: AugmentConfig | None = None) -> torch.Tensor:
    """Augment a batch [B, 3, H, W] (uint8, or float in [0, 1]) into float [B, 3, out_size, out_size] in
    [0, 1]. Every random draw comes from `generator`, so equal generator states give equal outputs. Images
    may live on a GPU: pass a generator on that device to keep the noise there."""
    cfg = cfg or AugmentConfig()
    x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    b, _, h, w = x.shape
    # per image: crop?, w, h, x, y, flip?, noise?, method (drawn where the generator lives, read on the CPU)
    u = torch.rand(b, 8, generator=generator, device=generator.device).cpu()
    out = torch.empty(b, 3, out_size, out_size, device=x.device)
    for i in range(b):
        img = x[i]
        if u[i, 0] < cfg.crop_prob:
            cw = max(1, int(round(w * (cfg.crop_min + (1 - cfg.crop_min) * float(u[i, 1])))))
            ch = max(1, int(round(h * (cfg.crop_min + (1 - cfg.crop_min) * float(u[i, 2])))))
            x0 = int(float(u[i, 3]) * (w - cw + 1)) if w > cw else 0
            y0 = int(float(u[i, 4]) * (h - ch + 1)) if h > ch else 0
            img = img[:, y0:y0 + ch, x0:x0 + cw]
        method = cfg.resize_methods[min(int(float(u[i, 7]) * len(cfg.resize_methods)), len(cfg.resize_methods) - 1)]
        img = _resize(img, out_size, method)
        if u[i, 5] < cfg.flip_prob:
            img = img.flip(-1)
        out[i] = img
    noisy = (u[:, 6] < cfg.noise_prob).view(b, 1, 1, 1)
    if cfg.noise_std > 0 and cfg.noise_prob > 0:
        noise = torch.randn(out.shape, generator=generator, device=generator.device).to(out.device) * cfg.noise_std
        out = out + noise * noisy.to(out.device)
    return out.clamp_(0, 1)


def prepare_batch(images: torch.Tensor, out_size: int) -> torch.Tensor:
    """Evaluation-time counterpart: float in [0, 1], resized (bilinear) to out_size, no randomness."""
    x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    if x.shape[-2:] != (out_size, out_size):
        x = F.interpolate(x, size=(out_size, out_size), mode="bilinear", align_corners=False)
    return x.clamp(0, 1)
