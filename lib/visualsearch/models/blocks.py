"""The model blocks that MAAF, its baselines, the text encoders and CFQ's fusion share.

Why a module of their own: MAAF, the baselines (models/baselines.py), the Transformer text encoder
(models/text.py) and CFQ's residual attention fusion (models/clip.py) are built from the same parts; kept
in one of them, the others had to import it and it them (an import circle). Nothing here imports another
model module.

- `MultiHeadAttention`, `FeedForward`, `FusionBlock`, `FusionEncoder`: the pre-LayerNorm Transformer block
  MAAF fuses with (interface in models/maaf.py's docstring);
- `ResNetTrunk`, `stage_maps`, `TokenProjection`, `STAGE_CHANNELS`: the image side (ResNet stage maps and
  their 1x1 projection to tokens);
- `SinusoidalPositions`, `masked_mean`, `last_valid`: sequence helpers;
- `load_state_dict_file`, `load_local_text_model`: local weights loading (no download, ever).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# ---------------------------------------------------------------------------------------------- fusion block


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention over `heads` heads with masked keys.

    normalize="softmax": weights = softmax(QK^T / sqrt(d_k)) with padded keys excluded.
    normalize="identity": weights = QK^T / sqrt(d_k) with padded keys set to 0 (the authors' CSS setting).
    Dropout acts on the weights; returned weights are before dropout.
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.1, normalize: str = "softmax"):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        if normalize not in ("softmax", "identity"):
            raise ValueError(f"attention normalize must be 'softmax' or 'identity', got {normalize!r}")
        self.heads, self.head_dim, self.normalize, self.dropout_p = heads, dim // heads, normalize, dropout
        self.query, self.key, self.value, self.out = (nn.Linear(dim, dim) for _ in range(4))
        self.dropout = nn.Dropout(dropout)

    def _split(self, x):
        b, n, _ = x.shape
        return x.view(b, n, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, query, key_value, key_mask=None, return_weights: bool = False):
        q, k, v = self._split(self.query(query)), self._split(self.key(key_value)), self._split(self.value(key_value))
        keep = None if key_mask is None else key_mask[:, None, None, :]
        if self.normalize == "softmax" and not return_weights:
            mixed = F.scaled_dot_product_attention(q, k, v, attn_mask=keep,
                                                   dropout_p=self.dropout_p if self.training else 0.0)
            weights = None
        else:
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
            if self.normalize == "softmax":
                if keep is not None:
                    scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
                weights = scores.softmax(-1)
            else:
                weights = scores if keep is None else scores.masked_fill(~keep, 0.0)
            mixed = self.dropout(weights) @ v
        b, _, n, _ = mixed.shape
        out = self.out(mixed.transpose(1, 2).reshape(b, n, self.heads * self.head_dim))
        return out, (weights if return_weights else None)


class FeedForward(nn.Sequential):
    """Linear -> ReLU -> Dropout -> Linear, applied to every token."""

    def __init__(self, dim: int, width: int, dropout: float):
        super().__init__(nn.Linear(dim, width), nn.ReLU(), nn.Dropout(dropout), nn.Linear(width, dim))


class FusionBlock(nn.Module):
    """One pre-LayerNorm Transformer encoder block (self-attention over the whole mixed sequence)."""

    def __init__(self, dim: int, heads: int, ff_width: int, dropout: float, attention: str = "softmax"):
        super().__init__()
        self.norm_attention, self.norm_ff = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attention = MultiHeadAttention(dim, heads, dropout, attention)
        self.ff = FeedForward(dim, ff_width, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, mask, return_attention: bool = False):
        h = self.norm_attention(x)
        mixed, weights = self.attention(h, h, mask, return_weights=return_attention)
        x = x + self.dropout(mixed)
        x = x + self.dropout(self.ff(self.norm_ff(x)))
        return x, weights


class FusionEncoder(nn.Module):
    """`blocks` FusionBlocks + final LayerNorm, optional position codes, Xavier init. See module docstring."""

    def __init__(self, dim: int, heads: int = 8, ff_width: int = 128, blocks: int = 2, dropout: float = 0.1,
                 attention: str = "softmax", positional: str = "none", learned_positions: int = 0):
        super().__init__()
        if positional not in ("none", "sinusoidal", "mixed"):
            raise ValueError(f"positional must be none | sinusoidal | mixed, got {positional!r}")
        self.positional = positional
        self.blocks = nn.ModuleList(FusionBlock(dim, heads, ff_width, dropout, attention) for _ in range(blocks))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.sinusoidal = SinusoidalPositions(dim, dropout) if positional != "none" else None
        self.learned = nn.Parameter(torch.empty(learned_positions, dim)) if positional == "mixed" else None
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def add_positions(self, x):
        if self.positional == "none":
            return x
        if self.positional == "sinusoidal":
            return self.sinusoidal(x)
        n_learned = self.learned.shape[0]
        if x.shape[1] < n_learned:
            raise ValueError(f"positional='mixed' has {n_learned} learned codes but the sequence has "
                             f"{x.shape[1]} tokens; set the image size the model was built for")
        learned = x[:, :n_learned] + self.learned[:n_learned]
        rest = x[:, n_learned:] + self.sinusoidal.table[: x.shape[1] - n_learned]
        return self.sinusoidal.dropout(torch.cat([learned, rest], 1))

    def forward(self, x, mask=None, return_attention: bool = False):
        x = self.add_positions(x)
        attentions = []
        for block in self.blocks:
            x, weights = block(x, mask, return_attention)
            attentions.append(weights)
        x = self.norm(x)
        return (x, attentions) if return_attention else x


# ---------------------------------------------------------------------------------------------- image side

STAGE_CHANNELS = {"resnet18": {"2": 128, "3": 256, "4": 512}, "resnet50": {"2": 512, "3": 1024, "4": 2048}}


def load_state_dict_file(path) -> dict:
    """A state dict saved with torch.save: plain, or under "state_dict"/"model"; "module." prefixes removed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: backbone weights file not found (weights load from a local path only)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    return {k.removeprefix("module."): v for k, v in state.items()}


class ResNetTrunk(nn.Module):
    """A torchvision ResNet without its head, returning the maps of stages "2", "3", "4".

    `weights`: a local file with the torchvision state dict (e.g. ImageNet resnet50-*.pth); None = random
    init. `frozen`: no gradients and BatchNorm kept in eval mode (statistics fixed), whatever `train()` says.
    """

    def __init__(self, arch: str = "resnet50", weights=None, frozen: bool = False):
        super().__init__()
        if arch not in STAGE_CHANNELS:
            raise ValueError(f"unknown backbone {arch!r}; expected one of {sorted(STAGE_CHANNELS)}")
        import torchvision  # here, not at the top: it costs 1.3 s to import, and a notebook rerun whose results
        # all come from the cache builds no ResNet (models/embedding.py does the same)

        net = getattr(torchvision.models, arch)(weights=None)
        if weights is not None:
            state = load_state_dict_file(weights)
            missing = [k for k in net.state_dict() if k not in state and not k.startswith("fc.")]
            if missing:
                raise ValueError(f"{weights}: not a {arch} state dict; missing {len(missing)} keys, "
                                 f"e.g. {missing[:3]}")
            net.load_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")}, strict=False)
        self.arch, self.frozen, self.channels = arch, frozen, STAGE_CHANNELS[arch]
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1)
        self.layer2, self.layer3, self.layer4 = net.layer2, net.layer3, net.layer4
        if frozen:
            self.requires_grad_(False)
            self.eval()

    def train(self, mode: bool = True):
        return super().train(mode and not self.frozen)

    def forward(self, images) -> dict:
        x2 = self.layer2(self.stem(images))
        x3 = self.layer3(x2)
        return {"2": x2, "3": x3, "4": self.layer4(x3)}


def stage_maps(trunk: ResNetTrunk, images) -> dict:
    """Stage maps of `images`: run the trunk on an image batch, or pass through maps computed earlier."""
    if isinstance(images, dict):
        return images
    if trunk.frozen:
        with torch.no_grad():
            return trunk(images)
    return trunk(images)


class TokenProjection(nn.Module):
    """1x1 conv (no bias) + BatchNorm (eps 1e-3) + ReLU: a stage map [B, C, h, w] -> tokens [B, h*w, dim]."""

    def __init__(self, channels: int, dim: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, dim, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(dim, eps=1e-3)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x))).flatten(2).transpose(1, 2)


# ------------------------------------------------------------------------------------------------- sequences

class SinusoidalPositions(nn.Module):
    """Adds the fixed sin/cos position code of Vaswani et al. to a sequence, then dropout."""

    def __init__(self, dim: int, dropout: float, max_len: int = 5000):
        super().__init__()
        position = torch.arange(max_len).unsqueeze(1).float()
        div = torch.exp(torch.arange(0, dim, 2).float() * (-math.log(10000.0) / dim))
        table = torch.zeros(max_len, dim)
        table[:, 0::2] = torch.sin(position * div)
        table[:, 1::2] = torch.cos(position * div)[:, : dim // 2]
        self.register_buffer("table", table, persistent=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, offset: int = 0):
        return self.dropout(x + self.table[offset:offset + x.shape[1]])


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of tokens [B, L, d] over positions where mask [B, L] is True."""
    weights = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def last_valid(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The token at each sequence's last real position (what TIRG's LSTM text feature is)."""
    last = mask.long().sum(1).clamp_min(1) - 1
    return tokens[torch.arange(tokens.shape[0], device=tokens.device), last]


def load_local_text_model(model_path) -> tuple:
    """(tokenizer, frozen model in eval mode) of a local Hugging Face / sentence-transformers folder; nothing is
    ever downloaded (a folder without config.json is refused, naming it)."""
    from transformers import AutoModel, AutoTokenizer

    from ..progress import quiet_hf_loading

    model_path = Path(model_path)
    if not (model_path / "config.json").is_file():
        raise FileNotFoundError(f"{model_path}: no config.json; expected a local Hugging Face / "
                                "sentence-transformers model folder (nothing is downloaded)")
    with quiet_hf_loading():
        tokenizer = AutoTokenizer.from_pretrained(str(model_path), local_files_only=True)
        model = AutoModel.from_pretrained(str(model_path), local_files_only=True)
    model.requires_grad_(False)
    model.eval()
    return tokenizer, model
