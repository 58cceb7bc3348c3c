"""The face paper's networks: a staged identity trunk, attribute branches at each depth, the sharing tree.

Why: the paper (arXiv 1609.09018) trains a CNN to classify identities, then for each attribute (age,
gender, ethnicity, emotion) and each depth L freezes the layers before L and fine-tunes a copy of the layers
from L on plus a new head. Here the trunk is a compact residual CNN in 4 stages; "branch depth L" is the
number of trunk stages that are frozen and shared (0 = nothing shared: a separate network per attribute,
4 = only a new head on the penultimate identity features). A sharing tree is one branch depth per
attribute; `MultiHeadFaceNet` runs it as one network whose single forward pass returns all predictions,
computing each shared stage once.

The capacity control (`ProbeBranch`) answers the objection that branching earlier also trains more layers:
at every depth it trains the same small module (a patchifying projection to a fixed width and grid, one
residual block, a pooled 3x3 grid and a linear head), so trainable parameters are nearly equal across depths
(only the projection changes with the input channels and patch size, by ~15% of the total) and any decline
with depth is the frozen features' doing.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class FaceNetConfig:
    widths: tuple = (16, 32, 64, 128)  # channels of trunk stages 1-4 (each later stage halves the resolution)
    blocks: tuple = (1, 1, 1, 1)       # residual blocks per stage
    stem_stride: int = 1               # stride of the first conv (2 for large inputs, e.g. 112 px)
    input_size: int = 48               # side of the square input images, px


def prepare_images(x: torch.Tensor) -> torch.Tensor:
    """uint8 images [N, 3, H, W] -> normalised float input of every network here (one convention)."""
    return (x.float() / 255.0 - 0.5) / 0.25


class BasicBlock(nn.Module):
    """Two 3x3 convs with batch norm and a (projected when the shape changes) identity shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (x if self.short is None else self.short(x)))


def make_stage(cfg: FaceNetConfig, i: int) -> nn.Sequential:
    """Stage i (0-based) of the trunk: stage 0 holds the stem conv, later stages start with a stride-2 block."""
    w = cfg.widths[i]
    if i == 0:
        layers = [nn.Conv2d(3, w, 3, cfg.stem_stride, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
        layers += [BasicBlock(w, w) for _ in range(cfg.blocks[0])]
    else:
        layers = [BasicBlock(cfg.widths[i - 1], w, 2)] + [BasicBlock(w, w) for _ in range(cfg.blocks[i] - 1)]
    return nn.Sequential(*layers)


class FaceTrunk(nn.Module):
    """Residual CNN in stages; `forward(x, start, stop)` runs stages start..stop-1 (branch points between)."""

    def __init__(self, cfg: FaceNetConfig):
        super().__init__()
        if len(cfg.widths) != len(cfg.blocks):
            raise ValueError(f"FaceNetConfig: widths {cfg.widths} and blocks {cfg.blocks} must have the same length")
        self.cfg = cfg
        self.stages = nn.ModuleList(make_stage(cfg, i) for i in range(len(cfg.widths)))

    @property
    def n_stages(self) -> int:
        return len(self.stages)

    def channels_at(self, depth: int) -> int:
        """Channels of the features after `depth` stages (3 at depth 0: the image)."""
        return 3 if depth == 0 else self.cfg.widths[depth - 1]

    def forward(self, x, start: int = 0, stop: int | None = None):
        for s in self.stages[start:stop]:
            x = s(x)
        return x


class PooledHead(nn.Module):
    """Global average pooling + linear classifier."""

    def __init__(self, cin: int, n_classes: int):
        super().__init__()
        self.fc = nn.Linear(cin, n_classes)

    def forward(self, h):
        return self.fc(h.mean(dim=(2, 3)))


class IdentityNet(nn.Module):
    """Trunk + pooled linear head over identities: the network the paper pretrains."""

    def __init__(self, cfg: FaceNetConfig, n_identities: int):
        super().__init__()
        self.trunk = FaceTrunk(cfg)
        self.head = PooledHead(cfg.widths[-1], n_identities)

    def embed(self, x):
        """Penultimate features (pooled, L2-normalised), for identity retrieval checks."""
        return nn.functional.normalize(self.trunk(x).mean(dim=(2, 3)), dim=1)

    def forward(self, x):
        return self.head(self.trunk(x))


class Branch(nn.Module):
    """Trunk stages from `depth` on + a pooled head: one attribute's private part of the sharing tree."""

    def __init__(self, stages, cin: int, n_classes: int, depth: int):
        super().__init__()
        self.depth = depth
        self.stages = nn.ModuleList(stages)
        self.head = PooledHead(cin, n_classes)

    def forward(self, h):
        for s in self.stages:
            h = s(h)
        return self.head(h)


def make_branch(trunk: FaceTrunk, depth: int, n_classes: int, init: str = "copy") -> Branch:
    """The branch of an attribute at `depth`: a copy of the trunk's stages from `depth` on (init="copy",
    the paper's fine-tuning) or the same stages freshly initialised (init="scratch"), plus a new head."""
    if not 0 <= depth <= trunk.n_stages:
        raise ValueError(f"branch depth {depth} outside 0..{trunk.n_stages}")
    if init == "copy":
        stages = [copy.deepcopy(s) for s in trunk.stages[depth:]]
    elif init == "scratch":
        stages = [make_stage(trunk.cfg, i) for i in range(depth, trunk.n_stages)]
    else:
        raise ValueError(f"branch init {init!r}: expected 'copy' or 'scratch'")
    return Branch(stages, trunk.cfg.widths[-1], n_classes, depth)


class ProbeBranch(nn.Module):
    """Capacity control: the same small trainable module at every depth (see module docstring).

    A patchifying projection (kernel = stride = `patch`, chosen so every depth lands on about the same grid)
    maps the frozen features to `width` channels without discarding detail, then one residual block, a
    pooled `grid` x `grid` layout and a linear head. Compute is then about equal at every depth too.
    """

    def __init__(self, cin: int, n_classes: int, width: int = 64, grid: int = 3, depth: int = 0, patch: int = 1):
        super().__init__()
        self.depth = depth
        self.proj = nn.Sequential(nn.Conv2d(cin, width, patch, patch, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=True))
        self.block = BasicBlock(width, width)
        self.pool = nn.AdaptiveAvgPool2d(grid)
        self.fc = nn.Linear(width * grid * grid, n_classes)

    def forward(self, h):
        return self.fc(self.pool(self.block(self.proj(h))).flatten(1))


def probe_patch(trunk: FaceTrunk, depth: int, input_size: int) -> int:
    """Patch size that brings the features at `depth` to about twice the last stage's resolution."""
    size, last = input_size, input_size
    with torch.no_grad():
        x = torch.zeros(1, 3, input_size, input_size)
        size = trunk(x, 0, depth).shape[-1]
        last = trunk(x).shape[-1]
    return max(1, size // (2 * last))


class FrozenPrefixNet(nn.Module):
    """Frozen trunk stages before `depth` (always in eval mode, no gradients) + a trainable branch.

    This is one attribute's network as fine-tuned in the paper; holding its own copy of the prefix keeps
    the shared trunk untouched.
    """

    def __init__(self, trunk: FaceTrunk, branch: nn.Module, depth: int):
        super().__init__()
        self.prefix = nn.ModuleList(copy.deepcopy(s) for s in trunk.stages[:depth])
        for p in self.prefix.parameters():
            p.requires_grad_(False)
        self.branch = branch

    def train(self, mode: bool = True):
        super().train(mode)
        self.prefix.eval()
        return self

    def forward(self, x):
        with torch.no_grad():
            for s in self.prefix:
                x = s(x)
        return self.branch(x)


class MultiHeadFaceNet(nn.Module):
    """A sharing tree as one network: trunk stages up to the deepest branch point are computed once and
    each attribute's branch reads the features at its depth. `forward(x)` returns {attribute: logits}."""

    def __init__(self, trunk: FaceTrunk, branches: dict):
        super().__init__()
        self.depth = max(b.depth for b in branches.values()) if branches else 0
        self.shared = nn.ModuleList(copy.deepcopy(s) for s in trunk.stages[:self.depth])
        self.branches = nn.ModuleDict(branches)

    def pattern(self) -> dict:
        """{attribute: branch depth}."""
        return {a: b.depth for a, b in self.branches.items()}

    def forward(self, x) -> dict:
        at = {0: x}
        for i, s in enumerate(self.shared):
            x = s(x)
            at[i + 1] = x
        return {a: b(at[b.depth]) for a, b in self.branches.items()}
