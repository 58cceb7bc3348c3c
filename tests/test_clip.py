"""CLIP-style dual encoders and the CFQ composition models: shapes, masks, gradients, RAF == CLIP VA at init,
BatchNorm frozen, learning-rate groups, contrastive pretraining against chance, local CLIP loading."""
import copy
import json

import pytest
import torch

from visualsearch.models import clip as C
from visualsearch.models.text import Vocabulary

CAPTIONS = ["is red", "has long sleeves", "is blue with stripes", "shorter", "not floral", "is green and longer"]


def tiny_clip(seed=0, dim=16):
    torch.manual_seed(seed)
    vocab = Vocabulary.build(CAPTIONS)
    return C.small_clip(embed_dim=dim, widths=(8, 8, 16, 16), text="words", vocab=vocab, text_width=16,
                        text_heads=2, dropout=0.0)


def images(n=4, size=32, seed=1):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_repeating_identity():
    w = C.repeating_identity(5, 2)
    assert w.tolist() == [[1, 0, 1, 0, 1], [0, 1, 0, 1, 0]]
    assert torch.equal(C.repeating_identity(3, 3), torch.eye(3))


def test_small_clip_shapes_and_grid():
    clip = tiny_clip()
    out = clip.encode_image(images(3))
    assert out.embedding.shape == (3, 16) and out.grid.shape == (3, 16, 2, 2)  # 32 px / 16 -> 2 x 2
    text, emb = clip.encode_text(CAPTIONS[:3])
    assert emb.shape == (3, 16) and text.tokens.shape[:2] == text.mask.shape and text.pooled.shape == (3, 16)
    assert text.mask.sum(1).tolist() == [2, 3, 4]


def test_raf_at_init_is_clip_va():
    clip = tiny_clip().eval()
    va = C.build_composition("va", clip).eval()
    exact = C.build_composition("raf", clip, heads=2, ff_width=8).eval()
    exact.weight.fill_(0.0)
    raf = C.build_composition("raf", clip, heads=2, ff_width=8).eval()
    x, t, y = images(4), CAPTIONS[:4], images(4, seed=2)
    with torch.no_grad():
        # the residual part reproduces CLIP VA exactly, query and catalog
        assert torch.allclose(exact.compose(x, t), va.compose(x, t), atol=1e-6)
        assert torch.allclose(exact.embed_catalog(y), va.embed_catalog(y), atol=1e-6)
        assert torch.allclose(exact(x, t, y), va(x, t, y), atol=1e-5)
        # with the paper's w = sigmoid(-5) it differs from CLIP VA only by w * branch: a small change
        assert raf.weight.item() == pytest.approx(0.0066929, rel=1e-4)
        diff = (raf(x, t, y) - va(x, t, y)).abs().max().item()
        assert 0 < diff < 0.05 * va(x, t, y).abs().max().item()
        # AF (the branch alone) does not start from CLIP VA
        af = C.build_composition("af", clip, heads=2, ff_width=8).eval()
        assert (af(x, t, y) - va(x, t, y)).abs().max().item() > 10 * diff


def test_text_padding_does_not_change_the_query():
    clip = tiny_clip().eval()
    raf = C.build_composition("raf_big", clip, heads=2, ff_width=8).eval()
    x = images(2)
    with torch.no_grad():
        alone = raf.compose(x[:1], ["is red"])
        padded = raf.compose(x, ["is red", "is blue with stripes and longer"])[:1]
    assert torch.allclose(alone, padded, atol=1e-5)


def test_gradients_reach_branch_and_residual_layers():
    clip = tiny_clip()
    raf = C.build_composition("raf", clip, heads=2, ff_width=8).train()
    logits = raf(images(4), CAPTIONS[:4], images(4, seed=3))
    assert logits.shape == (4, 4)
    torch.nn.functional.cross_entropy(logits, torch.arange(4)).backward()
    for name in ("f_img.weight", "f_txt.weight", "branch.fusion.blocks.0.attention.query.weight", "scale",
                 "clip.image.projection.weight", "clip.text.adapter.blocks.0.ff.0.weight"):
        g = dict(raf.named_parameters())[name].grad
        assert g is not None and g.abs().sum() > 0, name


def test_batchnorm_frozen_and_param_groups():
    clip = tiny_clip()
    raf = C.build_composition("raf", clip, heads=2, ff_width=8).train()
    bn = raf.clip.image.backbone.stem[1]
    before = bn.running_mean.clone()
    raf(images(4), CAPTIONS[:4], images(4, seed=3))
    assert not bn.training and torch.equal(bn.running_mean, before) and not bn.weight.requires_grad
    assert not raf.branch.tokens.bn.training
    groups = raf.param_groups(pretrained_lr_scale=0.1)
    new, old = ({id(p) for p in g["params"]} for g in groups)
    assert groups[1]["lr_scale"] == 0.1
    assert id(raf.f_img.weight) in new and id(raf.scale) in new and id(raf.branch.tokens.conv.weight) in new
    assert id(raf.clip.text_projection.weight) in old and id(raf.clip.image.projection.weight) in old
    scratch = C.build_composition("va", tiny_clip(), freeze_bn=False).train()
    assert scratch.clip.image.backbone.stem[1].training


def test_cached_backbone_features_equal_images():
    clip = tiny_clip()
    clip.freeze_backbone()
    model = C.build_composition("raf", clip, heads=2, ff_width=8).eval()
    x = images(3)
    feats = clip.image.backbone_features(x)
    with torch.no_grad():
        assert torch.allclose(model.compose(x, CAPTIONS[:3]), model.compose(feats, CAPTIONS[:3]))
        assert torch.allclose(model.embed_catalog(x), model.embed_catalog(feats))
    assert not any(p.requires_grad for p in clip.image.backbone.parameters())


def test_tirg_and_random_shapes():
    clip = tiny_clip()
    tirg = C.build_composition("tirg", clip).eval()
    assert tirg(images(3), CAPTIONS[:3], images(3, seed=4)).shape == (3, 3)
    rnd = C.build_composition("random", clip, seed=1)
    assert rnd.compose(images(5), CAPTIONS[:5]).shape == (5, 16)
    with pytest.raises(ValueError, match="unknown model"):
        C.build_composition("maaf", clip)


def test_contrastive_pretraining_beats_chance():
    """Eight colour classes; the image tower must learn to match each to its caption."""
    torch.manual_seed(0)
    colours = torch.rand(8, 3)
    words = [f"colour{i}" for i in range(8)]
    vocab = Vocabulary.build(words)
    clip = C.small_clip(embed_dim=16, widths=(8, 8, 16, 16), text="words", vocab=vocab, text_width=16,
                        text_heads=2, dropout=0.0)
    opt = torch.optim.Adam(clip.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(60):
        idx = torch.randperm(8, generator=gen)
        x = colours[idx][:, :, None, None].expand(8, 3, 16, 16) + 0.05 * torch.randn(8, 3, 16, 16, generator=gen)
        loss, _ = clip.contrastive_loss(x, [words[i] for i in idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    clip.eval()
    with torch.no_grad():
        x = colours[:, :, None, None].expand(8, 3, 16, 16)
        _, metrics = clip.contrastive_loss(x, words)
    assert metrics["i2t_accuracy"] >= 0.75  # chance is 1/8


def test_caption_phrases():
    assert C.caption_phrases("is blue and has stripes inadditiontothat is darker") == ["is blue", "has stripes",
                                                                                      "is darker"]
    assert C.caption_phrases("not red, shorter") == ["not red", "shorter"]
    assert C.caption_phrases("Leopard And Cheetah not Zebra") == ["Leopard And Cheetah not Zebra"]


def test_minilm_text_tower_caches_phrases_and_is_frozen():
    tokens = C.FrozenMiniLMTokens()
    states, mask = tokens(["is red", "has long sleeves"])
    assert states.shape[2] == 384 and mask.sum(1).tolist() == [2, 3]  # word pieces, no [CLS] / [SEP]
    both, mask2 = tokens(["has long sleeves and is red"])
    assert mask2.sum().item() == 5 and len(tokens._cache) == 2  # both phrases came from the cache
    assert torch.equal(both[0, :3], states[1, :3]) and torch.equal(both[0, 3:5], states[0, :2])
    whole = C.FrozenMiniLMTokens(phrases=False)
    assert whole(["has long sleeves and is red"])[1].sum().item() == 6  # "and" stays in a whole caption
    assert not any(p.requires_grad for p in tokens.model.parameters())


def save_tiny_hf_clip(folder, seed=0):
    """A tiny transformers CLIP (32 px, patch 8, width 32, joint space 16) saved with save_pretrained, with a
    letters-only tokenizer; its weights are transformers' initialisation drawn with `seed`."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {c: i for i, c in enumerate(letters)}
    vocab.update({c + "</w>": 26 + i for i, c in enumerate(letters)})
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = 52, 53
    folder.mkdir()
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt")).save_pretrained(str(folder))
    config = CLIPConfig(
        text_config=dict(vocab_size=54, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=37, max_position_embeddings=77, bos_token_id=52, eos_token_id=53,
                         pad_token_id=53),
        vision_config=dict(hidden_size=32, image_size=32, patch_size=8, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=37),
        projection_dim=16)
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    model.save_pretrained(str(folder))
    return model


def test_load_local_clip_matches_transformers_and_raf_starts_as_va(tmp_path):
    from transformers import AutoTokenizer

    reference = save_tiny_hf_clip(tmp_path / "clip")
    clip = C.load_clip(tmp_path / "clip").eval()
    x = images(2)
    with torch.no_grad():
        out = clip.encode_image(x)
        assert out.grid.shape == (2, 32, 4, 4)  # 32 px / patch 8
        expected = reference.visual_projection(reference.vision_model(pixel_values=x).pooler_output)
        assert torch.allclose(out.embedding, expected, atol=1e-5)
        tok = AutoTokenizer.from_pretrained(str(tmp_path / "clip"))
        batch = tok(["is red", "has long sleeves"], padding=True, return_tensors="pt")
        pooled = reference.text_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).pooler_output
        expected = reference.text_projection(pooled)
        _, emb = clip.encode_text(["is red", "has long sleeves"])
        assert torch.allclose(emb, expected, atol=1e-5)
        va = C.build_composition("va", clip).eval()
        raf = C.build_composition("raf", clip, heads=2, ff_width=8).eval()
        raf.weight.fill_(0.0)
        y = images(2, seed=5)
        assert torch.allclose(raf(x, ["is red", "shorter"], y), va(x, ["is red", "shorter"], y), atol=1e-5)
    assert clip.image_transform is not None
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        C.load_clip(tmp_path / "absent")


def test_deep_copy_keeps_models_independent():
    clip = tiny_clip()
    a = C.build_composition("va", copy.deepcopy(clip))
    b = C.build_composition("va", copy.deepcopy(clip))
    with torch.no_grad():
        a.clip.text_projection.weight.add_(1.0)
    assert not torch.equal(a.clip.text_projection.weight, b.clip.text_projection.weight)


def test_frozen_minilm_weights_stay_out_of_state_dicts_and_checkpoints():
    """A model over the frozen MiniLM saves only its own weights (a checkpoint of a few MB, not 90) and loads such
    a state dict strictly, keeping MiniLM's weights as loaded from its folder."""
    tokens = C.FrozenMiniLMTokens()
    torch.manual_seed(0)
    clip = C.small_clip(16, (8, 8, 16, 16), tokens=tokens, text_width=16, text_heads=2)
    state = clip.state_dict()
    assert not any(".source.model." in k for k in state) and "text.adapter.blocks.0.ff.0.weight" in state
    torch.manual_seed(1)
    other = C.small_clip(16, (8, 8, 16, 16), tokens=tokens, text_width=16, text_heads=2)
    minilm = {k: v.clone() for k, v in tokens.model.state_dict().items()}
    other.load_state_dict(state)  # strict: nothing missing, nothing unexpected
    assert all(torch.equal(v, other.state_dict()[k]) for k, v in state.items())
    assert all(torch.equal(v, tokens.model.state_dict()[k]) for k, v in minilm.items())
