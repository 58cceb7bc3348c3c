"""The triplet paper's embedding: a ResNet trunk, global average pooling, one linear layer, L2 norm.

Paper (released code): ResNet-50 (v2), ImageNet-pretrained, pooled 2048-d -> linear 512 -> unit vector;
similarity = cosine. Here the trunk is any torchvision ResNet (resnet18 on the embedded default).

Weights of the trunk come from one of three places:
- none: random initialisation;
- a local torchvision ImageNet state-dict file (`weights="imagenet"`, `weights_path=...`): nothing is
  downloaded; a missing file is a clear error naming the path;
- a trunk pretrained in the notebook to classify the synthetic world's category, colour and pattern
  (`weights="pretrained"`, a state dict from `AttributeClassifier.trunk_state_dict()`): the embedded
  stand-in for ImageNet pretraining, so that negatives are informative from the first step.
Inputs are RGB in [0, 1]; the model applies ImageNet mean/std normalisation itself.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class EmbeddingConfig:
    arch: str = "resnet18"          # any torchvision resnet: resnet18, resnet34, resnet50, ...
    dim: int = 512                  # embedding size (the paper: 512)
    weights: str = "none"           # none | imagenet | pretrained
    weights_path: str | None = None  # state-dict file for imagenet / pretrained


class Trunk(nn.Module):
    """A torchvision ResNet without its classifier: [B, 3, H, W] in [0, 1] -> pooled features [B, C]."""

    def __init__(self, arch: str = "resnet18"):
        super().__init__()
        import torchvision  # here, not at the top: 1.3 s to import, and a rerun from the cache builds no trunk

        if not arch.startswith("resnet") or not hasattr(torchvision.models, arch):
            raise ValueError(f"unknown trunk '{arch}'; expected a torchvision resnet (resnet18, resnet50, ...)")
        net = getattr(torchvision.models, arch)(weights=None)
        self.out_dim = net.fc.in_features
        net.fc = nn.Identity()
        self.net = net
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def load_imagenet_trunk(trunk: Trunk, path) -> None:
    """Load a torchvision ImageNet ResNet state dict (keys conv1.weight, layer1..., fc.*) from a local file
    into `trunk`; the classifier (fc.*) is dropped. Errors name the file and what did not fit."""
    path = Path(path) if path else None
    if path is None or not path.is_file():
        raise FileNotFoundError(
            f"ImageNet weights not found at {path}: download torchvision's ResNet weights once (e.g. "
            f"resnet50-0676ba61.pth) and pass their path as weights_path; nothing is downloaded at run time")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.removeprefix("module.").startswith("fc.")}
    missing, unexpected = trunk.net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise ValueError(f"{path}: not a state dict of this trunk: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                         f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")


def float32_head(head, features: torch.Tensor) -> torch.Tensor:
    """`head(features)` in float32 even inside a bf16 autocast region (train.autocast): only the trunk's
    convolutions run in bf16; the head, the L2 normalisation and the logits keep float32 (a cosine in bf16 is
    good to about 0.004, the size of small triplet-loss margins)."""
    with torch.autocast(features.device.type, enabled=False):
        return head(features.float())


class EmbeddingNet(nn.Module):
    """Trunk -> linear to `dim` -> L2 normalisation. `features(x)` gives the pooled trunk features (the
    off-the-shelf baseline), `forward(x)` the unit embedding (head and normalisation in float32, `float32_head`)."""

    def __init__(self, cfg: EmbeddingConfig | None = None):
        super().__init__()
        cfg = cfg or EmbeddingConfig()
        self.cfg = cfg
        self.trunk = Trunk(cfg.arch)
        self.head = nn.Linear(self.trunk.out_dim, cfg.dim)
        if cfg.weights == "imagenet":
            load_imagenet_trunk(self.trunk, cfg.weights_path)
        elif cfg.weights == "pretrained":
            if not cfg.weights_path or not Path(cfg.weights_path).is_file():
                raise FileNotFoundError(f"pretrained trunk weights not found at {cfg.weights_path}")
            self.trunk.load_state_dict(torch.load(cfg.weights_path, map_location="cpu", weights_only=True))
        elif cfg.weights != "none":
            raise ValueError(f"weights must be none, imagenet or pretrained, got '{cfg.weights}'")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return float32_head(lambda f: F.normalize(self.head(f), dim=1), self.trunk(x))


class AttributeClassifier(nn.Module):
    """A trunk with one linear head per attribute (e.g. category, colour, pattern): the pretraining task
    that stands in for ImageNet classification on the synthetic world. Loss = sum of cross-entropies."""

    def __init__(self, arch: str, classes: dict[str, int]):
        super().__init__()
        self.trunk = Trunk(arch)
        self.heads = nn.ModuleDict({name: nn.Linear(self.trunk.out_dim, n) for name, n in classes.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.trunk(x)
        return {name: float32_head(head, f) for name, head in self.heads.items()}

    def loss(self, x: torch.Tensor, targets: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        logits = self(x)
        losses = {k: F.cross_entropy(logits[k], targets[k]) for k in self.heads}
        acc = {f"acc_{k}": float((logits[k].argmax(1) == targets[k]).float().mean()) for k in self.heads}
        return sum(losses.values()), acc

    def trunk_state_dict(self) -> dict:
        return self.trunk.state_dict()
