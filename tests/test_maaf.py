"""MAAF: shapes for every ablation switch, padding masks, attention weights, pooling, gradients, weights."""
import dataclasses

import pytest
import torch
import torchvision

from visualsearch.models.blocks import FusionEncoder, MultiHeadAttention, ResNetTrunk
from visualsearch.models.fusion import build_model
from visualsearch.models.maaf import MAAF, MAAFConfig, word_attention_maps
from visualsearch.models.text import Vocabulary

TEXTS = ["make the red circle blue", "remove top left object", "add a small green square"]
TINY = MAAFConfig(dim=16, heads=4, ff_width=8, blocks=2, backbone="resnet18", image_size=64)


@pytest.fixture(scope="module")
def vocab():
    return Vocabulary.build(TEXTS)


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(0)
    return torch.randn(3, 3, 64, 64)


def tiny(vocab, **changes):
    torch.manual_seed(0)
    return build_model(dataclasses.replace(TINY, **changes), vocab)


SWITCHES = [dict(), dict(token_layers=("4",)), dict(token_layers=("2", "3", "4")), dict(blocks=1),
            dict(ff_width=32), dict(heads=2), dict(pooling="mean"), dict(pooling="token"),
            dict(text_in_pooling=False), dict(catalog_through_attention=False), dict(positional="sinusoidal"),
            dict(positional="mixed"), dict(attention="identity"), dict(text_encoder="embeddings"),
            dict(text_encoder="transformer"), dict(backbone_frozen=True)]


@pytest.mark.parametrize("switch", SWITCHES, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()) or "paper")
def test_every_switch_builds_composes_and_trains(vocab, images, switch):
    model = tiny(vocab, **switch)
    logits = model(images, TEXTS, images)
    assert logits.shape == (3, 3) and torch.isfinite(logits).all()
    assert model.compose(images, TEXTS).shape == model.embed_catalog(images).shape == (3, 16)
    logits.logsumexp(1).sum().backward()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            assert name.startswith("trunk.") and p.grad is None
            continue
        assert p.grad is not None, name


def test_frozen_trunk_keeps_batchnorm_statistics(vocab, images):
    model = tiny(vocab, backbone_frozen=True).train()
    before = model.trunk.stem[1].running_mean.clone()
    model(images, TEXTS, images)
    assert not model.trunk.training and torch.equal(before, model.trunk.stem[1].running_mean)
    assert {g["lr_scale"] for g in model.param_groups(0.1)} == {1.0}  # nothing trainable in the trunk
    assert {g["lr_scale"] for g in tiny(vocab).param_groups(0.1)} == {1.0, 0.1}


@pytest.mark.parametrize("attention", ["softmax", "identity"])
def test_padded_words_do_not_change_the_embedding(vocab, images, attention):
    model = tiny(vocab, attention=attention).eval()
    alone = model.compose(images[:1], ["remove top left object"])
    padded = model.compose(images[:2], ["remove top left object", "make the red circle blue and add a square"])
    assert torch.allclose(alone[0], padded[0], atol=1e-5)


def test_attention_weights_mask_padding_and_sum_to_one(vocab, images):
    model = tiny(vocab).eval()
    texts = ["remove top left object", "add a small green square and make the red circle blue"]
    out = model.compose(images[:2], texts, return_attention=True)
    n_image = 16 + 4  # 64 px: layer3 4x4, layer4 2x2
    assert [a.shape for a in out.attentions] == [(2, 4, out.mask.shape[1], out.mask.shape[1])] * 2
    for weights in out.attentions:
        assert torch.allclose(weights.sum(-1), torch.ones(2, 4, weights.shape[-1]), atol=1e-5)
        assert (weights[0, :, :, n_image + 4:] == 0).all()  # padded keys of the short text get nothing
    maps = word_attention_maps(out, 0, block=1)
    assert maps["3"].shape == (4, 4, 4) and maps["4"].shape == (4, 2, 2)
    assert torch.allclose(maps["4"][1].flatten(), out.attentions[1][0].mean(0)[n_image + 1, 16:20])
    assert out.tokens[0] == ["remove", "top", "left", "object"]
    assert torch.allclose(out.embedding, model.compose(images[:2], texts), atol=1e-5)


def test_fast_attention_path_equals_explicit_weights():
    torch.manual_seed(0)
    att = MultiHeadAttention(16, 4, dropout=0.0).eval()
    x = torch.randn(2, 7, 16)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3]).bool()
    fast, _ = att(x, x, mask)
    slow, weights = att(x, x, mask, return_weights=True)
    assert torch.allclose(fast, slow, atol=1e-5)
    # naive loop for one head of one query
    q = att.query(x)[1, 2, :4]; k = att.key(x)[1, :4, :4]
    expected = torch.softmax(k @ q / 2.0, 0)
    assert torch.allclose(weights[1, 0, 2, :4], expected, atol=1e-5)


def test_identity_attention_is_unnormalised_scores():
    torch.manual_seed(0)
    att = MultiHeadAttention(8, 2, dropout=0.0, normalize="identity").eval()
    x = torch.randn(1, 3, 8)
    _, weights = att(x, x, torch.tensor([[1, 1, 0]]).bool(), return_weights=True)
    q, k = att.query(x)[0, :, :4], att.key(x)[0, :, :4]
    assert torch.allclose(weights[0, 0, :, :2], (q @ k.T / 2.0)[:, :2], atol=1e-5)
    assert (weights[0, :, :, 2] == 0).all()


def test_no_positions_means_permutation_equivariance():
    torch.manual_seed(0)
    x, perm = torch.randn(2, 6, 16), torch.randperm(6)
    plain = FusionEncoder(16, heads=4, ff_width=8, blocks=2).eval()
    assert torch.allclose(plain(x)[:, perm], plain(x[:, perm]), atol=1e-5)
    coded = FusionEncoder(16, heads=4, ff_width=8, blocks=2, positional="sinusoidal").eval()
    assert not torch.allclose(coded(x)[:, perm], coded(x[:, perm]), atol=1e-4)
    assert all(block.attention.query.weight.abs().max() <= (6 / 32) ** 0.5 for block in plain.blocks)  # xavier


def test_pooling_resolution_wise_and_text(vocab, images):
    model = tiny(vocab).eval()
    out = model.compose(images, TEXTS, return_attention=True)
    seq = torch.randn(3, out.mask.shape[1], 16)
    expected_image = (seq[:, :16].mean(1) + seq[:, 16:20].mean(1)) / 2
    assert torch.allclose(model.pool_image(seq, out.layout), expected_image, atol=1e-6)
    n0 = int(out.mask[0].sum()) - 20
    expected = (expected_image[0] + seq[0, 20:20 + n0].mean(0)) / 2
    assert torch.allclose(model.pool_query(seq, out.mask, out.layout)[0], expected, atol=1e-6)
    no_text = tiny(vocab, text_in_pooling=False)
    assert torch.allclose(no_text.pool_query(seq, out.mask, out.layout), no_text.pool_image(seq, out.layout))


def test_catalog_goes_through_the_same_blocks(vocab, images):
    model = tiny(vocab).eval()
    through = model.embed_catalog(images)
    with torch.no_grad():
        model.fusion.blocks[0].ff[0].weight.mul_(3)
    assert not torch.allclose(through, model.embed_catalog(images))
    skip = tiny(vocab, catalog_through_attention=False).eval()
    tokens, _ = skip.image_tokens(images)
    assert torch.allclose(skip.embed_catalog(images), (tokens[:, :16].mean(1) + tokens[:, 16:].mean(1)) / 2)


def test_maps_input_equals_image_input_and_logits_are_scaled_cosine(vocab, images):
    model = tiny(vocab, backbone_frozen=True).eval()
    maps = model.trunk(images)
    assert torch.allclose(model.compose(images, TEXTS), model.compose(maps, TEXTS), atol=1e-5)
    with torch.no_grad():
        model.scale.fill_(3.0)
    q, t = model.compose(images, TEXTS), model.embed_catalog(images)
    cos = torch.nn.functional.cosine_similarity(q[:, None], t[None], dim=-1)
    assert torch.allclose(model(images, TEXTS, images), 9.0 * cos, atol=1e-4)


def test_local_backbone_weights_load_and_bad_files_fail_clearly(tmp_path):
    torch.manual_seed(1)
    net = torchvision.models.resnet18()
    torch.save(net.state_dict(), tmp_path / "r18.pth")
    trunk = ResNetTrunk("resnet18", tmp_path / "r18.pth")
    assert torch.equal(trunk.layer4[0].conv1.weight, net.layer4[0].conv1.weight)
    torch.save({"state_dict": {"module." + k: v for k, v in net.state_dict().items()}}, tmp_path / "ckpt.pt")
    assert torch.equal(ResNetTrunk("resnet18", tmp_path / "ckpt.pt").stem[0].weight, net.conv1.weight)
    with pytest.raises(ValueError, match="not a resnet50 state dict"):
        ResNetTrunk("resnet50", tmp_path / "r18.pth")
    with pytest.raises(FileNotFoundError, match="local path"):
        ResNetTrunk("resnet18", tmp_path / "missing.pth")


def test_bad_config_values_are_clear_errors():
    with pytest.raises(ValueError, match="pooling"):
        MAAFConfig(pooling="max")
    with pytest.raises(ValueError, match="token_layers"):
        MAAFConfig(token_layers=("5",))


def test_default_config_is_the_paper_model(vocab):
    cfg = MAAFConfig()
    assert (cfg.dim, cfg.heads, cfg.ff_width, cfg.blocks, cfg.token_layers, cfg.pooling) == \
        (512, 8, 128, 2, ("3", "4"), "resolution")
    model = MAAF(dataclasses.replace(cfg, backbone="resnet18"), vocab)
    assert model.n_image_tokens(224) == 196 + 49
    assert model.projections["3"].bn.eps == 1e-3 and model.projections["3"].conv.bias is None
