"""Text side of MAAF: tokenisation, vocabulary, the four encoders, padding masks and pooling."""
import pytest
import torch

from visualsearch.models.text import (EmbeddingTextEncoder, LSTMTextEncoder, MiniLMTextEncoder,
                                      TransformerTextEncoder, Vocabulary, build_text_encoder, minilm_path,
                                      tokenize)
from visualsearch.models.blocks import last_valid, masked_mean

TEXTS = ["Make the circle RED!", "add a blue square to the top-left", "remove it"]


def test_tokenize_drops_non_ascii_case_and_punctuation():
    assert tokenize("Make it RED, café!  top-left") == ["make", "it", "red", "caf", "topleft"]
    assert tokenize("") == []


def test_vocabulary_unknown_is_zero_and_min_count():
    vocab = Vocabulary.build(["red red blue", "red green"], min_count=2)
    assert vocab.words == ["<unk>", "red"]
    assert vocab.encode("red blue purple") == [1, 0, 0]
    assert vocab.encode("...") == [0]  # empty text -> one unknown token
    assert Vocabulary(vocab.words).index == vocab.index  # round trip through the word list


def test_vocabulary_batch_pads_with_mask():
    vocab = Vocabulary.build(TEXTS)
    ids, mask = vocab.batch(["remove it", "make the circle red"])
    assert ids.shape == mask.shape == (2, 4)
    assert mask.tolist() == [[True, True, False, False], [True] * 4]
    assert ids[0, 2:].tolist() == [0, 0]
    assert ids[1].tolist() == vocab.encode("make the circle red")


def test_masked_mean_and_last_valid_match_loops():
    tokens = torch.randn(3, 5, 4)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]).bool()
    mean = masked_mean(tokens, mask)
    last = last_valid(tokens, mask)
    for i in range(3):
        n = int(mask[i].sum())
        assert torch.allclose(mean[i], tokens[i, :n].mean(0), atol=1e-6)
        assert torch.equal(last[i], tokens[i, n - 1])


@pytest.mark.parametrize("kind", ["lstm", "embeddings", "transformer"])
def test_padding_does_not_change_real_tokens(kind):
    torch.manual_seed(0)
    vocab = Vocabulary.build(TEXTS)
    enc = build_text_encoder(kind, vocab, dim=16).eval()
    alone, mask_alone = enc(["remove it"])
    padded, mask_padded = enc(["remove it", "add a blue square to the top-left"])
    assert alone.shape == (1, 2, 16) and padded.shape == (2, 7, 16)
    assert mask_padded[0].tolist() == [True, True] + [False] * 5
    assert torch.allclose(alone[0], padded[0, :2], atol=1e-5)
    assert torch.allclose(enc.pool(alone, mask_alone)[0], enc.pool(padded, mask_padded)[0], atol=1e-5)


def test_lstm_pool_is_last_step_and_gradients_flow():
    vocab = Vocabulary.build(TEXTS)
    enc = LSTMTextEncoder(vocab, dim=8)
    tokens, mask = enc(TEXTS)
    assert torch.equal(enc.pool(tokens, mask)[2], tokens[2, 1])
    enc.pool(tokens, mask).sum().backward()
    assert all(p.grad is not None for p in enc.parameters())


def test_transformer_encoder_uses_word_order_and_embeddings_do_not():
    torch.manual_seed(0)
    vocab = Vocabulary.build(["red blue"])
    emb = EmbeddingTextEncoder(vocab, 8).eval()
    tr = TransformerTextEncoder(vocab, 8).eval()
    a, m = emb(["red blue"]); b, _ = emb(["blue red"])
    assert torch.allclose(emb.pool(a, m), emb.pool(b, m))
    a, m = tr(["red blue"]); b, _ = tr(["blue red"])
    assert not torch.allclose(tr.pool(a, m), tr.pool(b, m))


def test_unknown_text_encoder_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown text encoder"):
        build_text_encoder("gpt", None, 8)


def _tiny_bert(folder):
    """A two-layer BERT with its own word-piece vocabulary, saved like a sentence-transformers model."""
    from transformers import BertConfig, BertModel, BertTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "make", "the", "circle", "red", "add", "blue"]
    BertTokenizer(vocab={w: i for i, w in enumerate(words)}).save_pretrained(folder)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=32)
    BertModel(cfg).save_pretrained(folder)
    return folder


def test_pretrained_encoder_loads_local_model_frozen(tmp_path):
    enc = MiniLMTextEncoder(_tiny_bert(tmp_path), dim=8)
    enc.train()
    assert not enc.transformer.training  # frozen part stays in eval mode
    tokens, mask = enc(["make the circle red", "add blue"])
    assert tokens.shape[0] == 2 and tokens.shape[2] == 8
    assert mask.tolist()[1][:4] == [True] * 4 and not mask[1, -1]
    assert enc.token_strings("make the circle red") == ["[CLS]", "make", "the", "circle", "red", "[SEP]"]
    enc.pool(tokens, mask).sum().backward()
    assert enc.project.weight.grad is not None
    assert all(p.grad is None for p in enc.transformer.parameters())
    # padding does not change the real tokens
    alone, _ = enc(["add blue"])
    assert torch.allclose(alone[0], tokens[1, :alone.shape[1]], atol=1e-5)


def test_pretrained_encoder_missing_folder_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        MiniLMTextEncoder(tmp_path / "nothing", dim=8)


@pytest.mark.slow
def test_offline_minilm_loads():
    enc = build_text_encoder("minilm", None, 8, model_path=minilm_path())
    tokens, mask = enc(["a red dress with long sleeves"])
    assert tokens.shape[-1] == 8 and mask.all()


def test_pretrained_encoder_computes_each_text_once(tmp_path):
    enc = MiniLMTextEncoder(_tiny_bert(tmp_path), dim=8)
    calls = []
    original = enc.transformer.forward
    enc.transformer.forward = lambda *a, **k: calls.append(1) or original(*a, **k)
    first, _ = enc(["make the circle red", "add blue"])
    again, mask = enc(["add blue", "make the circle red"])
    assert len(calls) == 1
    assert torch.allclose(first[0], again[1]) and torch.allclose(first[1, :4], again[0, :4])
    assert mask[0].sum() == 4
