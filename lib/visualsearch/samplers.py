"""Which items go into a training batch: pair batches, P x K batches, single-category batches (the triplet
paper) and uniform batches of queries or pairs (MAAF, CFQ).

Why pure functions of (seed, step): the training loop resumes exactly only if the batch at step t is the
same whether the run went straight through or resumed at t (see train.py). So a sampler holds no state
that advances; `sampler(step)` derives everything from `step_seed(seed, step)`.

- Pair batches (the paper): every epoch each product's images are shuffled and neighbours paired (an odd
  image left over is dropped), giving a pool of (query, positive) pairs in which a product with many
  images appears in several pairs. A batch is `num_pairs` pairs drawn from the pool of the current epoch
  without replacement; it is laid out [queries..., partners...] (see losses.pair_indices).
- P x K batches (Hermans et al.): P products, K images each (drawn with replacement when a product has
  fewer than K).
- Single-category batches (the paper, for SOP): with probability `single_category_prob` a batch is drawn
  only from the products of one category chosen uniformly, otherwise from all products.

Deviation, stated: the released TF pipeline consumes a shuffled stream of pairs; here each step draws its
pairs afresh from the epoch's pool (without replacement inside the batch), so consecutive batches may share
a pair. The distribution of a single batch is the same.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch

from .seeding import step_seed


@dataclass
class Batch:
    """Image indices of one batch, and the category it was restricted to (-1 = all categories)."""

    indices: torch.Tensor   # LongTensor of dataset indices; pair batches: [queries..., partners...]
    category: int = -1


class _ProductIndex:
    """Images per product and products per category, from per-image labels and categories."""

    def __init__(self, labels, categories=None):
        labels = np.asarray(labels)
        categories = np.zeros_like(labels) if categories is None else np.asarray(categories)
        if labels.shape != categories.shape:
            raise ValueError(f"labels ({labels.shape}) and categories ({categories.shape}) differ in length")
        by_product = defaultdict(list)
        for i, lab in enumerate(labels):
            by_product[int(lab)].append(i)
        self.products = sorted(by_product)
        self.images = [np.array(by_product[p]) for p in self.products]
        cat_of = {}
        for p, imgs in zip(self.products, self.images):
            cats = set(categories[imgs].tolist())
            if len(cats) != 1:
                raise ValueError(f"product {p} has images in several categories {sorted(cats)}")
            cat_of[p] = cats.pop()
        self.categories = sorted(set(cat_of.values()))
        self.products_of = {c: [j for j, p in enumerate(self.products) if cat_of[p] == c] for c in self.categories}
        self.category_of = np.array([cat_of[p] for p in self.products])


class _CategoryChoice:
    """With probability p, one category chosen uniformly; else -1 (all categories)."""

    def __init__(self, index: _ProductIndex, single_category_prob: float):
        if not 0.0 <= single_category_prob <= 1.0:
            raise ValueError(f"single_category_prob must be in [0, 1], got {single_category_prob}")
        self.index, self.p = index, single_category_prob

    def __call__(self, rng: np.random.Generator) -> int:
        if self.p > 0 and rng.random() < self.p:
            return int(self.index.categories[rng.integers(len(self.index.categories))])
        return -1


class PairBatchSampler:
    """`sampler(step) -> Batch` of `num_pairs` (query, positive) pairs, 2 * num_pairs image indices."""

    def __init__(self, labels, num_pairs: int, seed: int = 0, categories=None, single_category_prob: float = 0.0):
        self.index = _ProductIndex(labels, categories)
        self.num_pairs, self.seed = num_pairs, seed
        self.choose = _CategoryChoice(self.index, single_category_prob)
        n_pairs = sum(len(i) // 2 for i in self.index.images)
        if n_pairs == 0:
            raise ValueError("no product has two images: no pairs can be formed")
        self.steps_per_epoch = max(1, n_pairs // num_pairs)
        self._pool: dict = {}

    def pool(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """All pairs of an epoch: (pairs [M, 2] of image indices, category of each pair). Cached per
        instance (the last epoch only): a pure function of (seed, epoch)."""
        if epoch not in self._pool:
            self._pool = {epoch: self._make_pool(epoch)}
        return self._pool[epoch]

    def _make_pool(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(step_seed(self.seed, epoch, stream=11))
        pairs, cats = [], []
        for j, imgs in enumerate(self.index.images):
            if len(imgs) < 2:
                continue
            shuffled = rng.permutation(imgs)
            m = len(shuffled) // 2
            pairs.append(shuffled[:2 * m].reshape(m, 2))
            cats.append(np.full(m, self.index.category_of[j]))
        return np.concatenate(pairs), np.concatenate(cats)

    def __call__(self, step: int) -> Batch:
        rng = np.random.default_rng(step_seed(self.seed, step, stream=12))
        pairs, cats = self.pool(step // self.steps_per_epoch)
        category = self.choose(rng)
        candidates = np.arange(len(pairs)) if category < 0 else np.nonzero(cats == category)[0]
        take = rng.choice(candidates, size=self.num_pairs, replace=len(candidates) < self.num_pairs)
        chosen = pairs[take]
        return Batch(torch.from_numpy(np.concatenate([chosen[:, 0], chosen[:, 1]])).long(), category)


class PKBatchSampler:
    """`sampler(step) -> Batch` of P products x K images each, laid out product by product."""

    def __init__(self, labels, p: int, k: int, seed: int = 0, categories=None, single_category_prob: float = 0.0):
        self.index = _ProductIndex(labels, categories)
        self.p, self.k, self.seed = p, k, seed
        self.choose = _CategoryChoice(self.index, single_category_prob)

    def __call__(self, step: int) -> Batch:
        rng = np.random.default_rng(step_seed(self.seed, step, stream=13))
        category = self.choose(rng)
        candidates = (np.arange(len(self.index.products)) if category < 0
                      else np.array(self.index.products_of[category]))
        products = rng.choice(candidates, size=self.p, replace=len(candidates) < self.p)
        out = []
        for j in products:
            imgs = self.index.images[j]
            out.append(rng.choice(imgs, size=self.k, replace=len(imgs) < self.k))
        return Batch(torch.from_numpy(np.concatenate(out)).long(), category)


@dataclass
class DrawnBatch:
    """Items of one uniformly drawn batch, the group they came from, and the step's random stream (the caller
    draws the step's other choices, such as one caption per pair, from it, so they too are a pure function of
    the step)."""

    indices: np.ndarray            # item indices inside the group
    group: int                     # which group (0 when there is one)
    rng: np.random.Generator       # the step's stream, advanced past the draws above


class UniformBatches:
    """`sampler(step) -> DrawnBatch`: `batch_size` items drawn uniformly without replacement, for the
    composed-retrieval papers (MAAF, CFQ), whose batches are (reference, text, target) queries or (image,
    caption) pairs.

    group_sizes: an int n (one pool of n items), or a list of pool sizes: each batch then comes from one pool
    chosen uniformly (MAAF trains each batch on one Fashion IQ category, as the authors do).
    when_short: a pool smaller than the batch gives a batch drawn with replacement ("repeat") or a smaller batch
    ("shrink"); "error" refuses.
    """

    def __init__(self, group_sizes, batch_size: int, seed: int, when_short: str = "repeat"):
        if when_short not in ("repeat", "shrink", "error"):
            raise ValueError(f"when_short must be repeat, shrink or error, got {when_short!r}")
        self.grouped = not isinstance(group_sizes, (int, np.integer))
        self.sizes = [int(n) for n in group_sizes] if self.grouped else [int(group_sizes)]
        if not self.sizes or min(self.sizes) < 1:
            raise ValueError(f"every pool needs at least one item, got sizes {self.sizes}")
        if when_short == "error" and min(self.sizes) < batch_size:
            raise ValueError(f"a pool of {min(self.sizes)} items is smaller than the batch of {batch_size}")
        self.batch_size, self.seed, self.when_short = batch_size, seed, when_short

    def __call__(self, step: int) -> DrawnBatch:
        rng = np.random.default_rng(step_seed(self.seed, step))
        group = int(rng.integers(len(self.sizes))) if self.grouped else 0
        n = self.sizes[group]
        if self.when_short == "repeat":
            picks = rng.choice(n, size=self.batch_size, replace=n < self.batch_size)
        else:
            picks = rng.choice(n, size=min(self.batch_size, n), replace=False)
        return DrawnBatch(picks, group, rng)
