"""MAAF: Modality-Agnostic Attention Fusion (arXiv 2007.00145), built as the authors' code builds it.

The fusion block (models/blocks.py; also the base of CFQ's RAF), interface:

    enc = FusionEncoder(dim, heads=8, ff_width=128, blocks=2, dropout=0.1,
                        attention="softmax" | "identity", positional="none" | "sinusoidal" | "mixed",
                        learned_positions=0)
    out = enc(x, mask)                                   # x [B, N, dim], mask [B, N] bool, True = real token
    out, attn = enc(x, mask, return_attention=True)      # attn: list (one per block) of [B, heads, N, N]

  Each block is pre-LayerNorm: x + Drop(MHA(LN(x))), then x + Drop(FF(LN(x))) with FF = Linear -> ReLU ->
  Dropout -> Linear; a final LayerNorm follows the last block. Padded keys (mask False) get no attention;
  padded queries are computed but meaningless. No position information unless `positional` asks for it
  ("mixed" = learned codes for the first `learned_positions` tokens, sinusoidal after, as the authors' code).
  All weight matrices are Xavier-uniform initialised. `MultiHeadAttention(query, key_value, key_mask)` is
  the attention alone (the two-stream cross-attention baseline uses it with different query and keys).

The model (`MAAF`, a `CompositionModel`):
- image tokens: ResNet stages (default layer3 and layer4: 14x14 + 7x7 at 224 px) each through a 1x1 conv
  (no bias) + BatchNorm (eps 1e-3) + ReLU to `dim`;
- text tokens: one per word from `models.text` (LSTM by default);
- both concatenated into one sequence through the fusion blocks; outputs pooled "resolution-wise" (mean
  over each stage's tokens, then the mean of those means) and the text outputs by a masked mean; the
  embedding is the mean of the two;
- catalog images go through the *same* blocks with image tokens only (what makes it modality-agnostic);
- similarity: both sides L2-normalised and multiplied by a learnable scale s (init 4): logits = s^2 cos.
Every ablation axis of the paper's code is a field of `MAAFConfig`. Attention weights come back from
`compose(..., return_attention=True)` together with the token layout needed to draw them on the image.

Images are given either as a batch [B, 3, H, W] or as the backbone's stage maps {"3": [B, C, h, w], ...}:
the second form lets a frozen backbone's maps be computed once and reused across runs (the default preset).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import FusionEncoder, ResNetTrunk, TokenProjection, masked_mean, stage_maps
from .text import Vocabulary, build_text_encoder

# ---------------------------------------------------------------------------------------------- image side


@dataclass
class TokenLayout:
    """Where each kind of token sits in the fused sequence (for pooling and for drawing attention maps)."""

    stages: list            # [(stage name, start, end, (h, w))] of the image tokens
    text: tuple | None      # (start, end) of the text tokens, or None when there is no text
    output_token: bool      # whether position 0 is a learned output token

    @property
    def image_span(self):
        return self.stages[0][1], self.stages[-1][2]


# ---------------------------------------------------------------------------------------------- the model


@dataclass
class MAAFConfig:
    """Every switch of the MAAF model; the defaults are the paper's Fashion IQ model."""

    dim: int = 512                      # d_model: width of every image and text token
    heads: int = 8                      # attention heads per block
    ff_width: int = 128                 # hidden width of each block's feed-forward layer
    blocks: int = 2                     # number of fusion blocks
    dropout: float = 0.1                # dropout in the blocks, the text encoder and attention weights
    token_layers: tuple = ("3", "4")    # ResNet stages that give image tokens ("2", "3", "4")
    attention: str = "softmax"          # softmax | identity (the authors' CSS model drops the softmax)
    positional: str = "none"            # none | sinusoidal | mixed (learned for image tokens, sinusoidal text)
    pooling: str = "resolution"         # resolution (mean per stage, then mean) | mean | token (learned output token)
    text_in_pooling: bool = True        # average the pooled text outputs into the query embedding
    catalog_through_attention: bool = True  # catalog images pass through the fusion blocks (image tokens only)
    text_encoder: str = "lstm"          # lstm | embeddings | transformer | minilm
    text_model_path: str | None = None  # local model folder for text_encoder=minilm (None: the offline MiniLM)
    backbone: str = "resnet50"          # resnet18 | resnet50
    backbone_weights: str | None = None  # local torchvision state dict file; None = random init ("not pretrained")
    backbone_frozen: bool = False       # freeze the backbone (BN statistics too)
    image_size: int = 224               # input size in px; sizes the learned codes of positional="mixed"
    scale_init: float = 4.0             # initial value of the learnable similarity scale s (logits = s^2 cos)
    fusion: str = "maaf"                # maaf or a baseline of models.baselines.FUSIONS (see build_model)

    def __post_init__(self):
        self.token_layers = tuple(str(s) for s in self.token_layers)
        checks = {"attention": ("softmax", "identity"), "positional": ("none", "sinusoidal", "mixed"),
                  "pooling": ("resolution", "mean", "token")}
        for name, allowed in checks.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"MAAFConfig.{name}={getattr(self, name)!r}; expected one of {allowed}")
        if not self.token_layers or any(s not in ("2", "3", "4") for s in self.token_layers):
            raise ValueError(f"MAAFConfig.token_layers={self.token_layers!r}; expected stages among 2, 3, 4")


class CompositionModel(nn.Module):
    """What every composed-retrieval model offers (MAAF and the baselines alike).

    compose(images, texts) -> [B, dim] query embeddings; embed_catalog(images) -> [B, dim];
    forward(source, texts, target) -> logits [B, B] = s^2 cos(query i, target j) for the in-batch softmax.
    `trunk` is the backbone, the part trained at a lower learning rate (param_groups).
    """

    def __init__(self, scale_init: float = 4.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(scale_init)))

    def normalize(self, x):
        return F.normalize(x, dim=-1) * self.scale

    def forward(self, source, texts, target):
        return self.normalize(self.compose(source, texts)) @ self.normalize(self.embed_catalog(target)).T

    def param_groups(self, image_lr_scale: float = 0.1) -> list:
        """The backbone at `image_lr_scale`, everything else at 1 (trainable parameters only)."""
        trunk = {id(p) for p in self.trunk.parameters()}
        image = [p for p in self.trunk.parameters() if p.requires_grad]
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in trunk]
        return [g for g in ({"params": rest, "lr_scale": 1.0}, {"params": image, "lr_scale": image_lr_scale})
                if g["params"]]


@dataclass
class MAAFOutput:
    """compose(..., return_attention=True): embeddings, per-block attention [B, heads, N, N], layout, mask."""

    embedding: torch.Tensor
    attentions: list
    layout: TokenLayout
    mask: torch.Tensor
    tokens: list = field(default_factory=list)  # per query, the string each text token stands for


class MAAF(CompositionModel):
    """Image tokens + word tokens through shared Transformer blocks; see the module docstring."""

    def __init__(self, cfg: MAAFConfig, vocab: Vocabulary | None = None, text_encoder: nn.Module | None = None):
        super().__init__(cfg.scale_init)
        self.cfg = cfg
        self.trunk = ResNetTrunk(cfg.backbone, cfg.backbone_weights, cfg.backbone_frozen)
        self.projections = nn.ModuleDict({s: TokenProjection(self.trunk.channels[s], cfg.dim)
                                          for s in sorted(cfg.token_layers)})
        self.text = text_encoder or build_text_encoder(cfg.text_encoder, vocab, cfg.dim, cfg.dropout,
                                                       cfg.text_model_path)
        n_learned = self.n_image_tokens(cfg.image_size) + (cfg.pooling == "token")
        self.fusion = FusionEncoder(cfg.dim, cfg.heads, cfg.ff_width, cfg.blocks, cfg.dropout, cfg.attention,
                                    cfg.positional, learned_positions=n_learned if cfg.positional == "mixed" else 0)
        self.output_token = nn.Parameter(torch.randn(cfg.dim)) if cfg.pooling == "token" else None

    def n_image_tokens(self, image_size: int) -> int:
        """Image tokens at `image_size` px: stage s of a ResNet has stride 8, 16, 32 for s = 2, 3, 4."""
        return sum(math.ceil(image_size / {"2": 8, "3": 16, "4": 32}[s]) ** 2 for s in self.cfg.token_layers)

    # -- tokens
    def image_tokens(self, images):
        """Projected image tokens [B, N, dim] of the configured stages (in stage order) and their grids."""
        maps = stage_maps(self.trunk, images)
        tokens, grids = [], []
        for stage, project in self.projections.items():
            tokens.append(project(maps[stage]))
            grids.append((stage, tuple(maps[stage].shape[-2:])))
        return torch.cat(tokens, 1), grids

    def _sequence(self, image_tokens, grids, text_tokens=None, text_mask=None):
        b = image_tokens.shape[0]
        parts, masks, stages, start = [], [], [], 0
        if self.output_token is not None:
            parts.append(self.output_token.expand(b, 1, -1))
            start = 1
        parts.append(image_tokens)
        for stage, (h, w) in grids:
            stages.append((stage, start, start + h * w, (h, w)))
            start += h * w
        text_span = None
        if text_tokens is not None:
            parts.append(text_tokens)
            text_span = (start, start + text_tokens.shape[1])
        x = torch.cat(parts, 1)
        mask = torch.ones(b, x.shape[1], dtype=torch.bool, device=x.device)
        if text_tokens is not None:
            mask[:, text_span[0]:] = text_mask
        return x, mask, TokenLayout(stages, text_span, self.output_token is not None)

    # -- pooling
    def pool_image(self, out, layout: TokenLayout):
        if layout.output_token:
            return out[:, 0]
        if self.cfg.pooling == "resolution":
            return torch.stack([out[:, a:b].mean(1) for _, a, b, _ in layout.stages]).mean(0)
        a, b = layout.image_span
        return out[:, a:b].mean(1)

    def pool_query(self, out, mask, layout: TokenLayout):
        image = self.pool_image(out, layout)
        if layout.output_token or not self.cfg.text_in_pooling:
            return image
        a, b = layout.text
        return (image + masked_mean(out[:, a:b], mask[:, a:b])) / 2

    # -- the interface
    def compose(self, images, texts, return_attention: bool = False):
        image_tokens, grids = self.image_tokens(images)
        text_tokens, text_mask = self.text(list(texts))
        x, mask, layout = self._sequence(image_tokens, grids, text_tokens, text_mask)
        if return_attention:
            out, attentions = self.fusion(x, mask, return_attention=True)
            return MAAFOutput(self.pool_query(out, mask, layout), attentions, layout, mask,
                              [self.text.token_strings(t) for t in texts])
        return self.pool_query(self.fusion(x, mask), mask, layout)

    def embed_catalog(self, images):
        image_tokens, grids = self.image_tokens(images)
        x, mask, layout = self._sequence(image_tokens, grids)
        if self.cfg.catalog_through_attention or layout.output_token:
            x = self.fusion(x, mask)
        return self.pool_image(x, layout)


def word_attention_maps(output: MAAFOutput, index: int, block: int, head: int | None = None) -> dict:
    """Attention of each word of query `index` over each image stage's grid in `block`.

    Returns {stage: tensor [n_words, h, w]} (heads averaged unless `head` is given): row i is how much text
    token i, as a query, attends to every image token of that stage (keys), laid out on the stage's grid.
    """
    weights = output.attentions[block][index]  # [heads, N, N]
    if weights is None:
        raise ValueError("compose(..., return_attention=True) was not asked for attention weights")
    weights = weights.mean(0) if head is None else weights[head]
    a, b = output.layout.text
    n_words = int(output.mask[index, a:b].sum())
    words = weights[a:a + n_words]
    return {stage: words[:, s:e].reshape(n_words, h, w) for stage, s, e, (h, w) in output.layout.stages}
