"""Triplet losses against naive loops over explicit triplets and against pytorch-metric-learning."""
import pytest
import torch
import torch.nn.functional as F

from visualsearch.losses import (BatchAllTripletLoss, BatchHardTripletLoss, BatchSoftmaxLoss, RandomTripletLoss,
                                 ReleasedCodeBatchHardTripletLoss, SemiHardTripletLoss, SoftTripletLoss,
                                 pair_indices)

M = 0.1


def pair_batch(num_pairs=8, dim=16, seed=0, n_products=None):
    """Unit embeddings of a pair batch [queries..., partners...]; products may repeat across pairs."""
    g = torch.Generator().manual_seed(seed)
    n_products = n_products or num_pairs
    prod = torch.randint(n_products, (num_pairs,), generator=g)
    centres = F.normalize(torch.randn(n_products, dim, generator=g), dim=1)
    emb = torch.cat([centres[prod], centres[prod]]) + 0.6 * torch.randn(2 * num_pairs, dim, generator=g)
    return F.normalize(emb, dim=1), torch.cat([prod, prod])


def naive_one_negative(emb, labels, P, choose):
    """Loop over anchors; for each, list the explicit triplets (a, p, n) and pick n with `choose`."""
    losses, s_ans = [], []
    for a in range(P):
        p = a + P
        s_ap = float(emb[a] @ emb[p])
        negs = [(float(emb[a] @ emb[n]), n) for n in range(2 * P) if labels[n] != labels[a]]
        s_an = choose(negs, s_ap) if negs else float("-inf")
        s_ans.append(s_an)
        losses.append(max(0.0, s_an - s_ap + M))
    return sum(losses) / P, losses


def hardest(negs, s_ap):
    return max(s for s, _ in negs)


def semihard(negs, s_ap):
    semi = [s for s, _ in negs if s < s_ap]
    return max(semi) if semi else min(s for s, _ in negs)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batch_hard_matches_naive_loop(seed):
    emb, labels = pair_batch(seed=seed, n_products=5)  # repeated products: same-id images are never negatives
    loss, stats = BatchHardTripletLoss(M)(emb, labels, *pair_indices(8))
    want, per = naive_one_negative(emb, labels, 8, hardest)
    assert loss.item() == pytest.approx(want, abs=1e-6)
    assert stats["frac_active"] == pytest.approx(sum(l > 0 for l in per) / 8)
    assert stats["frac_over_margin"] == pytest.approx(sum(l > M for l in per) / 8)
    assert stats["sim_ap"] == pytest.approx(float((emb[:8] * emb[8:]).sum(1).mean()), abs=1e-6)


@pytest.mark.parametrize("seed", [0, 3])
def test_semi_hard_matches_naive_loop(seed):
    emb, labels = pair_batch(seed=seed, n_products=6)
    loss, _ = SemiHardTripletLoss(M)(emb, labels, *pair_indices(8))
    assert loss.item() == pytest.approx(naive_one_negative(emb, labels, 8, semihard)[0], abs=1e-6)


def test_batch_all_matches_naive_loop_over_all_triplets():
    emb, labels = pair_batch(seed=4, n_products=6)
    loss, stats = BatchAllTripletLoss(M)(emb, labels, *pair_indices(8))
    vals = [max(0.0, float(emb[a] @ emb[n] - emb[a] @ emb[a + 8]) + M)
            for a in range(8) for n in range(16) if labels[n] != labels[a]]
    active = [v for v in vals if v > 0]
    assert loss.item() == pytest.approx(sum(active) / len(active), abs=1e-6)
    assert stats["frac_active"] == pytest.approx(len(active) / len(vals))


def test_random_negatives_are_other_products_and_reproducible():
    emb, labels = pair_batch(seed=5, n_products=4)
    anchors, pos = pair_indices(8)
    torch.manual_seed(7)
    l1, s1 = RandomTripletLoss(M)(emb, labels, anchors, pos)
    torch.manual_seed(7)
    l2, _ = RandomTripletLoss(M)(emb, labels, anchors, pos)
    assert l1.item() == l2.item()
    hard, sh = BatchHardTripletLoss(M)(emb, labels, anchors, pos)
    assert l1.item() <= hard.item() + 1e-7 and s1["sim_an"] <= sh["sim_an"] + 1e-7
    # every possible pick is a negative: the loss lies between the easiest and the hardest choice
    easiest, _ = naive_one_negative(emb, labels, 8, lambda negs, s: min(s for s, _ in negs))
    assert easiest - 1e-6 <= l1.item()


def test_random_negative_draws_cover_all_negatives():
    emb, labels = pair_batch(num_pairs=3, seed=6)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    seen = set()
    for s in range(200):
        torch.manual_seed(s)
        _, st = RandomTripletLoss(M)(emb, labels, torch.tensor([0]), torch.tensor([3]))
        seen.add(round(st["sim_an"], 5))
    want = {round(float(emb[0] @ emb[n]), 5) for n in (1, 2, 4, 5)}
    assert seen == want


def test_released_code_masking_floors_the_negative_similarity_at_zero():
    # anchor 0's only negatives point away from it: true hardest negative similarity < 0
    emb = F.normalize(torch.tensor([[1.0, 0.0], [-0.6, -1.0], [0.9, 0.3], [-0.5, -1.0]]), dim=1)
    labels = torch.tensor([0, 1, 0, 1])
    a, p = pair_indices(2)
    s_ap = float(emb[0] @ emb[2])
    s_an = max(float(emb[0] @ emb[1]), float(emb[0] @ emb[3]))
    assert s_an < 0
    correct, st = BatchHardTripletLoss(M)(emb[:, :], labels, a[:1], p[:1])
    quirk, sq = ReleasedCodeBatchHardTripletLoss(M)(emb, labels, a[:1], p[:1])
    assert correct.item() == pytest.approx(max(0, s_an - s_ap + M), abs=1e-6)
    assert quirk.item() == pytest.approx(max(0, 0 - s_ap + M), abs=1e-6) and sq["sim_an"] == 0.0
    # where some negative is positive-similar the two agree
    emb2, labels2 = pair_batch(seed=8, n_products=8)
    l1, _ = BatchHardTripletLoss(M)(emb2, labels2, *pair_indices(8))
    l2, _ = ReleasedCodeBatchHardTripletLoss(M)(emb2, labels2, *pair_indices(8))
    assert l1.item() == pytest.approx(l2.item())


def test_gradient_flows_only_through_anchor_positive_and_the_hardest_negative():
    emb, labels = pair_batch(num_pairs=4, seed=9)
    emb = emb.clone().requires_grad_(True)
    a, p = torch.tensor([0]), torch.tensor([4])
    loss, _ = BatchHardTripletLoss(1.5)(emb, labels, a, p)  # margin large enough to be active
    loss.backward()
    sims = (emb[0] @ emb.T).detach()
    sims[labels == labels[0]] = -9
    n = int(sims.argmax())
    nonzero = {int(i) for i in (emb.grad.abs().sum(1) > 0).nonzero()}
    assert nonzero == {0, 4, n}


def test_anchor_without_negatives_contributes_zero():
    emb, _ = pair_batch(num_pairs=2, seed=10)
    labels = torch.zeros(4, dtype=torch.long)
    for loss_cls in (BatchHardTripletLoss, SemiHardTripletLoss, RandomTripletLoss):
        loss, st = loss_cls(M)(emb, labels, *pair_indices(2))
        assert loss.item() == 0.0 and st["frac_active"] == 0.0


# ---------------------------------------------------------------------------- pytorch-metric-learning

pml = pytest.importorskip("pytorch_metric_learning")


def test_batch_hard_equals_pml_batch_hard_miner_with_cosine_and_mean_over_all_anchors():
    from pytorch_metric_learning import distances, losses, miners, reducers

    emb, labels = pair_batch(num_pairs=32, dim=64, seed=11, n_products=20)
    cos = distances.CosineSimilarity()
    a_all, p_all, n_all = miners.BatchHardMiner(distance=cos)(emb, labels)
    # with two images per product in a pair, PML's hardest positive is the partner; the paper uses only the
    # queries as anchors: keep those triplets
    keep = a_all < 32
    idx = (a_all[keep], p_all[keep], n_all[keep])
    theirs = losses.TripletMarginLoss(margin=M, distance=cos, reducer=reducers.MeanReducer())(emb, labels, idx)
    ours, stats = BatchHardTripletLoss(M)(emb, labels, *pair_indices(32))
    # products repeated across pairs give some queries more than one positive; compare where they coincide
    single = torch.tensor([(labels[:32] == labels[i]).sum() == 1 for i in range(32)])
    if single.all():
        assert ours.item() == pytest.approx(theirs.item(), abs=1e-5)
    sel = single.nonzero().squeeze(1)
    ours_sel, _ = BatchHardTripletLoss(M)(emb, labels, sel, sel + 32)
    keep_sel = torch.isin(idx[0], sel)
    theirs_sel = losses.TripletMarginLoss(margin=M, distance=cos, reducer=reducers.MeanReducer())(
        emb, labels, tuple(t[keep_sel] for t in idx))
    assert ours_sel.item() == pytest.approx(theirs_sel.item(), abs=1e-5)
    # PML's default reducer averages over the non-zero triplets only: ours / fraction active
    nz = losses.TripletMarginLoss(margin=M, distance=cos)(emb, labels, tuple(t[keep_sel] for t in idx))
    _, st_sel = BatchHardTripletLoss(M)(emb, labels, sel, sel + 32)
    assert nz.item() == pytest.approx(ours_sel.item() / st_sel["frac_active"], abs=1e-5)


def test_batch_hard_with_every_image_as_anchor_equals_pml():
    from pytorch_metric_learning import distances, losses, miners, reducers

    g = torch.Generator().manual_seed(12)
    emb = F.normalize(torch.randn(64, 32, generator=g), dim=1)
    labels = torch.arange(32).repeat(2)  # 32 distinct products, one pair each
    a, p = pair_indices(32)
    ours, _ = BatchHardTripletLoss(M)(emb, labels, torch.cat([a, p]), torch.cat([p, a]))
    cos = distances.CosineSimilarity()
    idx = miners.BatchHardMiner(distance=cos)(emb, labels)
    theirs = losses.TripletMarginLoss(margin=M, distance=cos, reducer=reducers.MeanReducer())(emb, labels, idx)
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-5)


def test_batch_all_equals_pml_triplet_margin_loss_without_miner():
    from pytorch_metric_learning import distances, losses

    g = torch.Generator().manual_seed(13)
    emb = F.normalize(torch.randn(32, 16, generator=g), dim=1)
    labels = torch.arange(16).repeat(2)
    a, p = pair_indices(16)
    ours, _ = BatchAllTripletLoss(M)(emb, labels, torch.cat([a, p]), torch.cat([p, a]))
    theirs = losses.TripletMarginLoss(margin=M, distance=distances.CosineSimilarity())(emb, labels)
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-5)


# --------------------------------------------------------------------------- the lead's losses still hold

def test_batch_softmax_and_soft_triplet_unchanged():
    logits = torch.tensor([[2.0, 0.0], [1.0, 3.0]])
    assert BatchSoftmaxLoss()(logits).item() == pytest.approx(F.cross_entropy(logits, torch.tensor([0, 1])).item())
    want = (F.softplus(torch.tensor(-2.0)) + F.softplus(torch.tensor(-2.0))) / 2
    assert SoftTripletLoss()(logits).item() == pytest.approx(want.item())
