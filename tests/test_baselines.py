"""Baselines: shapes, gradients, what each uses of image and text, TIRG's formula, masks."""
import dataclasses

import pytest
import torch

from visualsearch.models.baselines import FUSIONS, TIRG, build_baseline
from visualsearch.models.fusion import build_model
from visualsearch.models.maaf import MAAFConfig
from visualsearch.models.text import Vocabulary

TEXTS = ["make the red circle blue", "remove top left object", "add a small green square"]
TINY = MAAFConfig(dim=16, heads=4, ff_width=8, blocks=1, backbone="resnet18", image_size=64)


@pytest.fixture(scope="module")
def vocab():
    return Vocabulary.build(TEXTS)


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(0)
    return torch.randn(3, 3, 64, 64)


def tiny(vocab, fusion, **changes):
    torch.manual_seed(0)
    return build_model(dataclasses.replace(TINY, fusion=fusion, **changes), vocab)


@pytest.mark.parametrize("fusion", [f for f in FUSIONS if f != "maaf"])
def test_shapes_and_gradients(vocab, images, fusion):
    model = tiny(vocab, fusion)
    logits = model(images, TEXTS, images)
    assert logits.shape == (3, 3) and torch.isfinite(logits).all()
    logits.logsumexp(1).sum().backward()
    for name, p in model.named_parameters():
        if fusion == "image_only" and name.startswith("text."):
            assert p.grad is None  # the text is ignored
            continue
        assert p.grad is not None, name  # text_only still trains the image encoder on the catalog side


def test_image_only_ignores_text_and_text_only_ignores_image(vocab, images):
    m = tiny(vocab, "image_only").eval()
    assert torch.equal(m.compose(images, TEXTS), m.compose(images, ["x", "y", "z"]))
    assert torch.equal(m.compose(images, TEXTS), m.embed_catalog(images))
    t = tiny(vocab, "text_only").eval()
    assert torch.equal(t.compose(images, TEXTS), t.compose(torch.zeros_like(images), TEXTS))


def test_tirg_is_the_gated_residual_formula(vocab, images):
    m: TIRG = tiny(vocab, "tirg").eval()
    img, txt = m.image_feature(images), m.text_feature(TEXTS)
    both = torch.cat([img, txt], 1)
    expected = 1.0 * torch.sigmoid(m.gate(both)) * img + 10.0 * m.residual(both)
    assert torch.allclose(m.compose(images, TEXTS), expected, atol=1e-5)
    assert torch.equal(m.text_feature(TEXTS)[2], m.text(TEXTS)[0][2, 4])  # LSTM last word


def test_add_and_concat(vocab, images):
    m = tiny(vocab, "add").eval()
    assert torch.allclose(m.compose(images, TEXTS), m.image_feature(images) + m.text_feature(TEXTS))
    c = tiny(vocab, "concat").eval()
    both = torch.cat([c.image_feature(images), c.text_feature(TEXTS)], 1)
    assert torch.allclose(c.compose(images, TEXTS), c.mlp(both), atol=1e-6)


def test_tirg_lastconv_modifies_the_map_per_position(vocab, images):
    m = tiny(vocab, "tirg_lastconv").eval()
    out = m.compose(images, TEXTS)
    assert out.shape == (3, 16)
    assert not torch.allclose(out, m.compose(images, ["add a small green square"] * 3))


def test_cross_attention_masks_padding_and_catalog_skips_text(vocab, images):
    m = tiny(vocab, "cross_attention").eval()
    alone = m.compose(images[:1], ["remove top left object"])
    padded = m.compose(images[:2], ["remove top left object", "add a small green square and make it blue"])
    assert torch.allclose(alone[0], padded[0], atol=1e-5)
    assert m.embed_catalog(images).shape == (3, 16)


def test_unknown_fusion_is_clear(vocab):
    with pytest.raises(ValueError, match="unknown fusion"):
        build_baseline(dataclasses.replace(TINY, fusion="gated"), vocab)


def test_tirg_matched_has_maafs_image_side_and_about_its_trainable_parameters(vocab, images):
    """The capacity control: TIRG on MAAF's token projections, within 2% of MAAF's trainable parameters with a
    frozen backbone (plain TIRG has far fewer), and its image feature depends on layer3 (plain TIRG's cannot)."""
    count = lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad)
    for dim, ff in ((16, 8), (128, 128)):
        cfg = dict(dim=dim, ff_width=ff, blocks=2, backbone_frozen=True)
        maaf, matched, tirg = (tiny(vocab, f, **cfg) for f in ("maaf", "tirg_matched", "tirg"))
        assert abs(count(matched) - count(maaf)) <= 0.02 * count(maaf) < count(maaf) - count(tirg)
    m = tiny(vocab, "tirg_matched").eval()
    maps = {s: torch.randn(3, c, h, h) for s, c, h in (("3", 256, 4), ("4", 512, 2))}
    changed = dict(maps, **{"3": maps["3"] + 1.0})
    assert not torch.allclose(m.image_feature(maps), m.image_feature(changed))
    assert torch.equal(m.embed_catalog(maps), m.image_feature(maps))
