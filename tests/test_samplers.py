"""Samplers: pair layout, pairing rule, single-category probability, purity in (seed, step)."""
from collections import Counter

import numpy as np
import pytest
import torch

from visualsearch.samplers import PairBatchSampler, PKBatchSampler


def dataset(n_products=30, n_cats=3, seed=0):
    """Labels/categories of a dataset where product j has 2 + j % 4 images (odd counts included)."""
    labels, cats = [], []
    for j in range(n_products):
        labels += [j] * (2 + j % 4)
        cats += [j % n_cats] * (2 + j % 4)
    return np.array(labels), np.array(cats)


def test_pair_batches_pair_images_of_one_product_and_are_distinct():
    labels, cats = dataset()
    s = PairBatchSampler(labels, num_pairs=10, seed=1, categories=cats)
    for step in range(20):
        b = s(step)
        q, p = b.indices[:10], b.indices[10:]
        assert len(b.indices) == 20 and len(set(b.indices.tolist())) == 20
        assert (torch.from_numpy(labels)[q] == torch.from_numpy(labels)[p]).all()
        assert (q != p).all() and b.category == -1


def test_epoch_pool_pairs_neighbours_and_drops_the_odd_image():
    labels, cats = dataset()
    s = PairBatchSampler(labels, num_pairs=4, seed=2, categories=cats)
    pairs, pc = s.pool(0)
    assert len(pairs) == sum((2 + j % 4) // 2 for j in range(30))
    used = Counter(pairs.ravel().tolist())
    assert max(used.values()) == 1  # each image in at most one pair per epoch
    for j in range(30):
        n = 2 + j % 4
        in_pairs = sum(labels[i] == j for i in used)
        assert in_pairs == n - n % 2  # an odd image is dropped
    assert not np.array_equal(s.pool(1)[0], pairs)  # re-paired every epoch


def test_samplers_are_pure_functions_of_seed_and_step():
    labels, cats = dataset()
    a = PairBatchSampler(labels, 8, seed=3, categories=cats, single_category_prob=0.5)
    b = PairBatchSampler(labels, 8, seed=3, categories=cats, single_category_prob=0.5)
    steps = [5, 0, 17, 5, 3 * a.steps_per_epoch + 1]
    first = [a(t).indices for t in steps]
    for t, want in zip(reversed(steps), reversed(first)):  # another order, another instance
        assert torch.equal(b(t).indices, want)
    assert not torch.equal(a(1).indices, a(2).indices)
    c = PairBatchSampler(labels, 8, seed=4, categories=cats, single_category_prob=0.5)
    assert not torch.equal(a(1).indices, c(1).indices)
    pk1, pk2 = PKBatchSampler(labels, 4, 3, seed=5), PKBatchSampler(labels, 4, 3, seed=5)
    assert torch.equal(pk1(9).indices, pk2(9).indices)


@pytest.mark.parametrize("p", [0.0, 0.8, 1.0])
def test_single_category_probability_and_uniform_category(p):
    labels, cats = dataset(n_products=60, n_cats=3)
    s = PairBatchSampler(labels, 6, seed=6, categories=cats, single_category_prob=p)
    n = 600
    chosen = [s(t) for t in range(n)]
    single = [b for b in chosen if b.category >= 0]
    assert abs(len(single) / n - p) < 0.06
    for b in single:
        assert set(cats[b.indices.numpy()].tolist()) == {b.category}
    if p == 1.0:
        counts = Counter(b.category for b in single)
        assert all(abs(counts[c] / n - 1 / 3) < 0.07 for c in range(3))
    if p == 0.0:
        assert np.mean([len(set(cats[b.indices.numpy()].tolist())) > 1 for b in chosen]) > 0.9


def test_pk_batches_hold_p_products_with_k_images():
    labels, cats = dataset()
    s = PKBatchSampler(labels, p=5, k=4, seed=7, categories=cats, single_category_prob=1.0)
    b = s(0)
    lab = labels[b.indices.numpy()].reshape(5, 4)
    assert (lab == lab[:, :1]).all() and len(set(lab[:, 0])) == 5
    assert len(set(cats[b.indices.numpy()])) == 1


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="single_category_prob"):
        PairBatchSampler([0, 0], 1, single_category_prob=1.5)
    with pytest.raises(ValueError, match="no product has two images"):
        PairBatchSampler([0, 1, 2], 1)
    with pytest.raises(ValueError, match="several categories"):
        PairBatchSampler([0, 0], 1, categories=[0, 1])


def test_uniform_batches_draw_from_one_pool_per_step_and_are_pure():
    from visualsearch.samplers import UniformBatches

    sampler = UniformBatches([5, 40, 7], batch_size=6, seed=3)
    groups = Counter()
    for step in range(300):
        b = sampler(step)
        groups[b.group] += 1
        n = [5, 40, 7][b.group]
        assert len(b.indices) == 6 and b.indices.max() < n
        if n >= 6:
            assert len(set(b.indices.tolist())) == 6       # without replacement when the pool is large enough
    assert set(groups) == {0, 1, 2} and min(groups.values()) > 60   # pools chosen uniformly
    a, b = sampler(17), UniformBatches([5, 40, 7], batch_size=6, seed=3)(17)
    assert a.group == b.group and np.array_equal(a.indices, b.indices)
    assert a.rng.integers(1 << 30) == b.rng.integers(1 << 30)     # the step's stream continues identically
    assert not np.array_equal(sampler(18).indices, a.indices) or sampler(18).group != a.group


def test_uniform_batches_draw_as_the_loops_they_replace():
    """Byte-for-byte the draws MAAF's and CFQ's batch functions made before they shared this sampler."""
    from visualsearch.samplers import UniformBatches
    from visualsearch.seeding import step_seed

    rng = np.random.default_rng(step_seed(9, 4))
    group = int(rng.integers(2))
    n = [3, 50][group]
    expected = rng.choice(n, size=8, replace=n < 8)
    got = UniformBatches([3, 50], 8, 9)(4)
    assert got.group == group and np.array_equal(got.indices, expected)
    rng = np.random.default_rng(step_seed(9, 4))
    assert np.array_equal(UniformBatches(5, 8, 9, when_short="shrink")(4).indices,
                          rng.choice(5, size=5, replace=False))


def test_uniform_batches_refuse_bad_settings():
    from visualsearch.samplers import UniformBatches

    with pytest.raises(ValueError, match="when_short"):
        UniformBatches(5, 2, 0, when_short="pad")
    with pytest.raises(ValueError, match="at least one item"):
        UniformBatches([4, 0], 2, 0)
    with pytest.raises(ValueError, match="smaller than the batch"):
        UniformBatches(3, 4, 0, when_short="error")
