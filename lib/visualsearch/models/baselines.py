"""The baselines MAAF is compared with, as the authors' code builds them (all are `CompositionModel`s).

Global-feature models share one image encoder, the ResNet's global average pool of layer4 followed by a
Linear to `dim` (the authors replace the ResNet's fc with it), and one text feature, the pooled text
encoder output (the LSTM's last step):
- image_only: the query is the reference image's feature; the text is ignored.
- text_only: the query is the text feature.
- concat: MLP over [image, text]: BN -> ReLU -> Linear(2d, 2d) -> BN -> ReLU -> Dropout -> Linear(2d, d).
- add: image + text.
- tirg: TIRG's gated residual: a0 * sigmoid(gate([img, txt])) * img + a1 * residual([img, txt]),
  gate = BN -> ReLU -> Linear(2d, d); residual = BN -> ReLU -> Linear(2d, 2d) -> ReLU -> Linear(2d, d);
  a = (1, 10) learnable.
- tirg_lastconv: the same gating on the last conv map (text tiled over the grid, two 3x3 conv stacks),
  then the global pool and Linear.
- tirg_matched: TIRG given MAAF's image side and about MAAF's trainable capacity, a control for the
  comparison (a frozen backbone leaves the global-feature baselines one Linear over pooled layer4, while MAAF
  trains projections of layer3 and layer4 tokens and its fusion blocks): the same token projections of the
  same stages as MAAF, then per block a pre-LayerNorm residual MLP on every token (MAAF's feed-forward,
  width ff_width), a final LayerNorm, MAAF's resolution-wise pooling, then TIRG's composition, whose gate and
  residual (about 6 dim^2) stand where MAAF has its attention (4 dim^2 per block): the trainable parameters
  come within a few percent of MAAF's (459,779 vs 459,777 at dim 128 on ResNet-18, as a test checks).
  Catalog images take the same image path.
Token model:
- cross_attention: the authors' two-stream attention: image tokens (as MAAF's) attend to themselves, then
  to the text tokens, then a feed-forward, per block; the text stream is not updated. Pooled like MAAF
  (resolution-wise image mean and masked text mean, averaged). Catalog images skip the cross-attention
  step, having no text (the authors feed one masked dummy token instead, which only adds a constant).
Catalog images go through the image encoder alone in every global-feature model.
"""
from __future__ import annotations

import torch
from torch import nn

from .blocks import FeedForward, MultiHeadAttention, ResNetTrunk, TokenProjection, masked_mean, stage_maps
from .maaf import CompositionModel, MAAFConfig
from .text import Vocabulary, build_text_encoder

FUSIONS = ("maaf", "image_only", "text_only", "concat", "add", "tirg", "tirg_lastconv", "tirg_matched",
           "cross_attention")


class GlobalFeatureModel(CompositionModel):
    """Backbone -> global average pool of layer4 -> Linear(C, dim); text encoder -> pooled text vector."""

    def __init__(self, cfg: MAAFConfig, vocab: Vocabulary | None):
        super().__init__(cfg.scale_init)
        self.cfg = cfg
        self.trunk = ResNetTrunk(cfg.backbone, cfg.backbone_weights, cfg.backbone_frozen)
        self.image_fc = nn.Linear(self.trunk.channels["4"], cfg.dim)
        self.text = build_text_encoder(cfg.text_encoder, vocab, cfg.dim, cfg.dropout, cfg.text_model_path)

    def last_map(self, images):
        return stage_maps(self.trunk, images)["4"]

    def image_feature_from_map(self, last_map):
        return self.image_fc(last_map.mean((2, 3)))

    def image_feature(self, images):
        return self.image_feature_from_map(self.last_map(images))

    def text_feature(self, texts):
        tokens, mask = self.text(list(texts))
        return self.text.pool(tokens, mask)

    def embed_catalog(self, images):
        return self.image_feature(images)

    def compose(self, images, texts):
        return self.combine(self.image_feature(images), self.text_feature(texts))

    def combine(self, image, text):
        raise NotImplementedError


class ImageOnly(GlobalFeatureModel):
    def compose(self, images, texts):
        return self.image_feature(images)


class TextOnly(GlobalFeatureModel):
    def compose(self, images, texts):
        return self.text_feature(texts)


class Concat(GlobalFeatureModel):
    def __init__(self, cfg, vocab):
        super().__init__(cfg, vocab)
        d = cfg.dim
        self.mlp = nn.Sequential(nn.BatchNorm1d(2 * d), nn.ReLU(), nn.Linear(2 * d, 2 * d),
                                 nn.BatchNorm1d(2 * d), nn.ReLU(), nn.Dropout(cfg.dropout), nn.Linear(2 * d, d))

    def combine(self, image, text):
        return self.mlp(torch.cat([image, text], 1))


class Add(GlobalFeatureModel):
    def combine(self, image, text):
        return image + text


class TIRG(GlobalFeatureModel):
    def __init__(self, cfg, vocab):
        super().__init__(cfg, vocab)
        d = cfg.dim
        self.a = nn.Parameter(torch.tensor([1.0, 10.0]))
        self.gate = nn.Sequential(nn.BatchNorm1d(2 * d), nn.ReLU(), nn.Linear(2 * d, d))
        self.residual = nn.Sequential(nn.BatchNorm1d(2 * d), nn.ReLU(), nn.Linear(2 * d, 2 * d), nn.ReLU(),
                                      nn.Linear(2 * d, d))

    def combine(self, image, text):
        both = torch.cat([image, text], 1)
        return self.a[0] * torch.sigmoid(self.gate(both)) * image + self.a[1] * self.residual(both)


class TIRGLastConv(GlobalFeatureModel):
    """TIRG's gating applied to every position of the last conv map, before the global pool."""

    def __init__(self, cfg, vocab):
        super().__init__(cfg, vocab)
        c, d = self.trunk.channels["4"], cfg.dim

        def conv_stack():
            return nn.Sequential(nn.BatchNorm2d(c + d), nn.Conv2d(c + d, c + d, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(c + d, c, 3, padding=1))

        self.a = nn.Parameter(torch.tensor([1.0, 10.0]))
        self.residual, self.gate = conv_stack(), conv_stack()

    def compose(self, images, texts):
        x = self.last_map(images)
        text = self.text_feature(texts)[:, :, None, None].expand(-1, -1, *x.shape[-2:])
        both = torch.cat([x, text], 1)
        x = self.a[0] * torch.sigmoid(self.gate(both)) * x + self.a[1] * self.residual(both)
        return self.image_feature_from_map(x)


class TokenMLPBlock(nn.Module):
    """Pre-LayerNorm residual MLP applied to every token: x + Drop(Linear(ReLU(Linear(LN(x)))))."""

    def __init__(self, dim: int, width: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = FeedForward(dim, width, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return x + self.dropout(self.mlp(self.norm(x)))


class TIRGMatched(TIRG):
    """TIRG over MAAF's image tokens with about MAAF's trainable parameters; see the module docstring."""

    def __init__(self, cfg, vocab):
        super().__init__(cfg, vocab)
        del self.image_fc  # replaced by the token path below (not trained, so not counted)
        self.projections = nn.ModuleDict({s: TokenProjection(self.trunk.channels[s], cfg.dim)
                                          for s in sorted(cfg.token_layers)})
        self.blocks = nn.Sequential(*(TokenMLPBlock(cfg.dim, cfg.ff_width, cfg.dropout)
                                      for _ in range(cfg.blocks)))
        self.norm = nn.LayerNorm(cfg.dim, eps=1e-6)

    def image_feature(self, images):
        maps = stage_maps(self.trunk, images)
        tokens = [project(maps[s]) for s, project in self.projections.items()]
        sizes = [t.shape[1] for t in tokens]
        x = self.norm(self.blocks(torch.cat(tokens, 1)))
        return torch.stack([part.mean(1) for part in x.split(sizes, 1)]).mean(0)


class CrossAttentionBlock(nn.Module):
    """Pre-LayerNorm: image self-attention, image-to-text attention (skipped without text), feed-forward."""

    def __init__(self, dim, heads, ff_width, dropout, attention):
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm(dim, eps=1e-6) for _ in range(3))
        self.self_attention = MultiHeadAttention(dim, heads, dropout, attention)
        self.cross_attention = MultiHeadAttention(dim, heads, dropout, attention)
        self.ff = FeedForward(dim, ff_width, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, text=None, text_mask=None):
        h = self.norms[0](x)
        x = x + self.dropout(self.self_attention(h, h)[0])
        if text is not None:
            x = x + self.dropout(self.cross_attention(self.norms[1](x), text, text_mask)[0])
        return x + self.dropout(self.ff(self.norms[2](x)))


class CrossAttention(CompositionModel):
    """Two-stream attention: the image stream reads the text stream; see the module docstring."""

    def __init__(self, cfg: MAAFConfig, vocab: Vocabulary | None):
        super().__init__(cfg.scale_init)
        self.cfg = cfg
        self.trunk = ResNetTrunk(cfg.backbone, cfg.backbone_weights, cfg.backbone_frozen)
        self.projections = nn.ModuleDict({s: TokenProjection(self.trunk.channels[s], cfg.dim)
                                          for s in sorted(cfg.token_layers)})
        self.text = build_text_encoder(cfg.text_encoder, vocab, cfg.dim, cfg.dropout, cfg.text_model_path)
        self.blocks = nn.ModuleList(CrossAttentionBlock(cfg.dim, cfg.heads, cfg.ff_width, cfg.dropout,
                                                        cfg.attention) for _ in range(cfg.blocks))
        self.norm_image, self.norm_text = nn.LayerNorm(cfg.dim, eps=1e-6), nn.LayerNorm(cfg.dim, eps=1e-6)
        for p in [*self.blocks.parameters(), *self.norm_image.parameters(), *self.norm_text.parameters()]:
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def _image(self, images, text=None, text_mask=None):
        maps = stage_maps(self.trunk, images)
        tokens = [project(maps[s]) for s, project in self.projections.items()]
        sizes = [t.shape[1] for t in tokens]
        x = torch.cat(tokens, 1)
        for block in self.blocks:
            x = block(x, text, text_mask)
        x = self.norm_image(x)
        if self.cfg.pooling == "resolution":
            return torch.stack([part.mean(1) for part in x.split(sizes, 1)]).mean(0)
        return x.mean(1)

    def compose(self, images, texts):
        text, mask = self.text(list(texts))
        image = self._image(images, text, mask)
        if not self.cfg.text_in_pooling:
            return image
        return (image + masked_mean(self.norm_text(text), mask)) / 2

    def embed_catalog(self, images):
        return self._image(images)


_BASELINES = {"image_only": ImageOnly, "text_only": TextOnly, "concat": Concat, "add": Add, "tirg": TIRG,
              "tirg_lastconv": TIRGLastConv, "tirg_matched": TIRGMatched, "cross_attention": CrossAttention}


def build_baseline(cfg: MAAFConfig, vocab: Vocabulary | None = None) -> CompositionModel:
    if cfg.fusion not in _BASELINES:
        raise ValueError(f"unknown fusion {cfg.fusion!r}; expected one of {FUSIONS}")
    return _BASELINES[cfg.fusion](cfg, vocab)

