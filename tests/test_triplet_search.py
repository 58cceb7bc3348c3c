"""The triplet paper's experiment module: image sets, targets, training determinism, retrieval metrics."""
from dataclasses import asdict

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from visualsearch import triplet_search as ts
from visualsearch.data import products as P
from visualsearch.data.errors import SkipLog
from visualsearch.data.retail import read_inshop, read_sop


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tw")
    cfg = P.ProductsWorldConfig(seed=2, categories=("dress", "trousers", "jacket"), train_products_per_category=6,
                                test_products_per_category=3, lookalike_groups_per_category=2, image_size=32)
    P.build_products(folder, asdict(cfg))
    return folder


def test_imagesets_in_memory_and_from_disk_agree_and_skip_bad_images(world, tmp_path):
    import shutil

    own = tmp_path / "world"            # this test breaks an image: it works on its own copy of the world
    shutil.copytree(world, own)
    b = read_inshop(own)
    mem = ts.load_imageset(b.query, 24)
    disk = ts.load_imageset(b.query, 24, in_memory=False)
    assert mem.images.shape == (len(b.query), 3, 24, 24) and torch.equal(mem.get([0, 3]), disk.get([0, 3]))
    assert torch.equal(mem.labels, disk.labels)
    b.query.paths[1].write_bytes(b"broken")
    skips = SkipLog()
    s = ts.load_imageset(b.query, 24, skips=skips)
    assert len(s) == len(b.query) - 1 and skips.reasons["corrupt image"] == 1
    assert s.item_ids[1] == b.query.item_ids[2] and int(s.labels[1]) == b.query.labels[2]


def test_attribute_targets_follow_attributes_csv(world):
    sop = read_sop(world)
    att = P.read_attributes(world)
    im = ts.load_imageset(sop.train, 16)
    t = ts.attribute_targets(im.item_ids, att)
    cats = sorted(att.category.unique())
    for i in (0, 5, len(im) - 1):
        pid = int(im.item_ids[i].split("_")[1])
        assert cats[int(t["category"][i])] == att.set_index("product_id").category[pid]
    assert set(t) == {"category", "colour", "pattern"}


def test_training_is_a_pure_function_of_the_seed(world):
    torch.set_num_threads(1)
    sop = read_sop(world)
    im = ts.load_imageset(sop.train, 16)
    cfg = ts.RunConfig(steps=3, num_pairs=4, dim=8, lr=0.01)
    a = ts.train_embedding(im, cfg)
    b = ts.train_embedding(im, cfg)
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(va, vb), k
    assert {"loss", "sim_ap", "sim_an", "frac_active", "frac_over_margin"} <= set(a.log.columns)
    c = ts.train_embedding(im, ts.RunConfig(steps=3, num_pairs=4, dim=8, lr=0.01, seed=1))
    assert not torch.equal(a.model.head.weight, c.model.head.weight)


def test_evaluate_retrieval_caps_k_and_excludes_self():
    # 3 products x 2 images; embeddings place each pair together
    e = F.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [-1.0, 0.1], [-0.9, 0.0]]), dim=1)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    r = ts.evaluate_retrieval(e, e, labels, labels, (1, 10), queries_in_gallery=True)
    assert r.k_cap == 5 and r.recall == {1: 1.0, 10: 1.0}
    assert (r.indices != torch.arange(6).unsqueeze(1)).all()
    curve = ts.recall_curve(r, labels, labels, 50)
    assert len(curve) == 5 and curve[0] == 1.0
    # a query whose product is absent from its top-1: swap a gallery label
    g_labels = torch.tensor([0, 1, 1, 0, 2, 2])
    r2 = ts.evaluate_retrieval(e[:1], e, labels[:1], g_labels, (1, 2, 3))
    assert r2.recall == {1: 1.0, 2: 1.0, 3: 1.0}
    r3 = ts.evaluate_retrieval(e[1:2], e, labels[1:2], g_labels, (1, 2))
    assert r3.recall[1] == 0.0 and r3.recall[2] == 1.0  # top-1 is image 1 (label 1), then image 0 (label 0)


def test_table_names_capped_metrics():
    df = ts.recall_table({"m": {1: 0.5, 1000: 1.0}}, "d", [1, 1000], k_cap=99)
    assert df.metric.tolist() == ["R@1", "R@1000 (capped at 99)"] and df.reproduced.tolist() == [0.5, 1.0]


def test_error_breakdown_per_category_and_confusion_by_hand():
    # queries: product 0 (group 0, cat 0), product 1 (group 0, cat 0), product 2 (group 1, cat 0), product 3 (cat 1)
    q_labels = torch.tensor([0, 1, 2, 3])
    g_labels = torch.tensor([0, 1, 2, 3])
    groups = torch.tensor([0, 0, 1, 2])
    cats = torch.tensor([0, 0, 0, 1])
    # top-1: q0 -> right; q1 -> product 0 (look-alike); q2 -> product 0 (same category); q3 -> product 2 (other category)
    r = ts.Retrieval({1: 0.25}, torch.tensor([[0, 1], [0, 1], [0, 2], [2, 3]]), torch.zeros(4, 2), 3)
    eb = ts.error_breakdown(r, q_labels, g_labels, groups, groups, cats, cats)
    assert eb["wrong_top1"] == 0.75
    assert eb["lookalike"] == pytest.approx(1 / 3) and eb["same_category"] == pytest.approx(1 / 3)
    assert eb["other_category"] == pytest.approx(1 / 3)
    pc = ts.per_category_recall(r, q_labels, g_labels, cats, k=1)
    assert pc[0] == pytest.approx(1 / 3) and pc[1] == 0.0
    pc = ts.per_category_recall(r, q_labels, g_labels, cats, k=2)
    assert pc[0] == 1.0 and pc[1] == 1.0
    m = ts.top1_category_confusion(r, cats, cats, 2)
    assert np.allclose(m, [[1.0, 0.0], [1.0, 0.0]])


def test_similarity_samples_split_positives_and_negatives():
    e = F.normalize(torch.randn(8, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    pos, neg = ts.similarity_samples(e, e, labels, labels, n_neg=500, queries_in_gallery=True)
    assert len(pos) == 8  # each image's partner, itself excluded
    want = sorted(float(e[i] @ e[i ^ 1]) for i in range(8))
    assert np.allclose(sorted(pos), want, atol=1e-6)
    allowed = {round(float(e[i] @ e[j]), 5) for i in range(8) for j in range(8) if labels[i] != labels[j]}
    assert {round(float(v), 5) for v in neg} <= allowed


def test_batch_hard_on_pair_batches_learns_a_hidden_identity_against_chance():
    """A linear embedding of features where the product identity hides in a few noisy dimensions, trained
    with the paper's loss on the paper's pair batches, retrieves far better than chance and than its start."""
    from visualsearch.losses import BatchHardTripletLoss, pair_indices
    from visualsearch.samplers import PairBatchSampler

    g = torch.Generator().manual_seed(0)
    n_prod, per = 40, 4
    ident = torch.randn(n_prod, 4, generator=g)
    labels = torch.arange(n_prod).repeat_interleave(per)
    x = torch.cat([ident[labels] + 0.3 * torch.randn(len(labels), 4, generator=g),
                   torch.randn(len(labels), 28, generator=g)], 1)  # identity in 4 dims, 28 dims of clutter
    model = torch.nn.Linear(32, 16)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sampler = PairBatchSampler(labels, 16, seed=0)
    loss_fn, (a, pos) = BatchHardTripletLoss(0.1), pair_indices(16)

    @torch.no_grad()
    def r1():
        e = F.normalize(model(x), dim=1)
        return ts.evaluate_retrieval(e, e, labels, labels, (1,), True).recall[1]

    before = r1()
    for step in range(150):
        idx = sampler(step).indices
        loss, _ = loss_fn(F.normalize(model(x[idx]), dim=1), labels[idx], a, pos)
        opt.zero_grad(), loss.backward(), opt.step()
    after = r1()
    assert after > 0.7 and after > before + 0.5  # chance: 3 relevant of 159 at top-1, about 0.02


def test_real_data_layout_and_start_weights_errors(world, tmp_path):
    from visualsearch.cache import ResultCache
    from visualsearch.config import load_params

    (tmp_path / "In-shop").symlink_to(world, target_is_directory=True)
    (tmp_path / "Stanford_Online_Products").symlink_to(world, target_is_directory=True)
    p = load_params("triplet_product_search", "smoke", data_root=tmp_path)
    d = ts.load_data(p)
    assert d.inshop_name == "DeepFashion In-shop" and d.sop_name == "Stanford Online Products"
    assert d.attributes is None and len(d.inshop_query) > 0 and len(d.sop_test) == 3 * 3 * 4
    with pytest.raises(ValueError, match="use 'imagenet' and a local weights file"):
        ts.trunk_weights(p, d, ResultCache(tmp_path / "cache"))
    p2 = load_params("triplet_product_search", "smoke", {"model": {"weights": "imagenet", "weights_path": "r50.pth"}},
                     data_root=tmp_path)
    with pytest.raises(FileNotFoundError, match="r50.pth does not exist"):
        ts.trunk_weights(p2, d, ResultCache(tmp_path / "cache"))
    p3 = load_params("triplet_product_search", "smoke", {"data": {"sop_dir": "nowhere"}}, data_root=tmp_path)
    with pytest.raises(Exception, match="missing folder.*Stanford Online Products root"):
        ts.load_data(p3)


def test_bootstrap_difference_separates_noise_from_a_win():
    g = torch.Generator().manual_seed(0)
    clusters = torch.arange(300).repeat_interleave(4)
    a = (torch.rand(1200, generator=g) < 0.6).float()
    diff, lo, hi = ts.bootstrap_difference(a, a, clusters)
    assert diff == 0 and lo == 0 and hi == 0
    # noise: 10 queries gained, 8 lost (+0.0017): the interval straddles 0
    ones, zeros = a.nonzero().squeeze(1), (a == 0).nonzero().squeeze(1)
    b = a.clone()
    b[ones[torch.randperm(len(ones), generator=g)[:10]]] = 0
    b[zeros[torch.randperm(len(zeros), generator=g)[:8]]] = 1
    diff, lo, hi = ts.bootstrap_difference(a, b, clusters)
    assert diff == pytest.approx(2 / 1200) and lo < 0 < hi
    worse = (torch.rand(1200, generator=g) < 0.4).float()
    diff, lo, hi = ts.bootstrap_difference(a, worse, clusters)
    assert lo > 0.1 and lo < diff < hi
    # resampling clusters, not queries: a difference carried by few products has a wider interval
    d1 = torch.zeros(1200)
    d1[:40] = 1  # +40 hits in 10 products
    d2 = torch.zeros(1200)
    d2[::30] = 1  # +40 hits spread over 40 products
    w1 = ts.bootstrap_difference(d1, torch.zeros(1200), clusters)
    w2 = ts.bootstrap_difference(d2, torch.zeros(1200), clusters)
    assert w1[0] == w2[0] and (w1[2] - w1[1]) > 1.5 * (w2[2] - w2[1])


def test_cache_keys_separate_loading_modes_kept_images_and_device(world, tmp_path):
    """An in-memory and a streaming run on the same folder keep the same images (a corrupt one is skipped
    by both, when the lists are read) and never share a cached entry; a run on other kept images or another
    device neither."""
    import shutil

    from visualsearch.cache import ResultCache
    from visualsearch.config import load_params

    own = tmp_path / "world"
    shutil.copytree(world, own)
    (tmp_path / "In-shop").symlink_to(own, target_is_directory=True)
    (tmp_path / "Stanford_Online_Products").symlink_to(own, target_is_directory=True)
    bad = sorted((own / "img").rglob("*.jpg"))[5]
    bad.write_bytes(bad.read_bytes()[:bad.stat().st_size // 2])  # half-written: its header still parses

    def params(**data):
        return load_params("triplet_product_search", "smoke", {"model": {"weights": "none"}, "data": data},
                           data_root=tmp_path)

    mem, disk = params(in_memory=True), params(in_memory=False)
    d_mem, d_disk = ts.load_data(mem), ts.load_data(disk)
    assert d_mem.skips.reasons == d_disk.skips.reasons and sum(d_mem.skips.reasons.values()) >= 1
    assert set(d_mem.skips.reasons) == {"corrupt image"}
    for name in ("inshop_train", "inshop_query", "inshop_gallery", "sop_train", "sop_test"):
        a, b = getattr(d_mem, name), getattr(d_disk, name)
        assert a.paths == b.paths and torch.equal(a.labels, b.labels) and bad not in a.paths
    assert torch.equal(d_mem.sop_test.get([0, 1]), d_disk.sop_test.get([0, 1]))
    assert d_mem.fingerprint == d_disk.fingerprint
    cache = ResultCache(tmp_path / "cache")
    start = ts.trunk_weights(mem, d_mem, cache)
    a = ts.off_the_shelf(mem, d_mem, start, "sop", cache)
    b = ts.off_the_shelf(disk, d_disk, start, "sop", cache)
    assert cache.misses == ["triplet_off_the_shelf"] * 2 and torch.equal(a["query"], b["query"])
    ts.off_the_shelf(disk, d_disk, start, "sop", cache)
    assert cache.hits == ["triplet_off_the_shelf"]
    assert ts.data_key(mem, d_mem) != ts.data_key(disk, d_disk)
    on_gpu = load_params("triplet_product_search", "smoke", data_root=tmp_path, device="cuda")
    assert ts.data_key(on_gpu, d_mem)["device"] == "cuda" != ts.data_key(mem, d_mem)["device"]
    paths, root = d_mem.sop_test.paths, tmp_path / "Stanford_Online_Products"
    assert ts.kept_images_digest({"sop_test": (paths, root)}) != ts.kept_images_digest({"sop_test": (paths[1:], root)})
    assert ts.kept_images_digest({"sop_test": (paths, root)}) == ts.kept_images_digest(
        {"sop_test": ([tmp_path / "elsewhere" / p.relative_to(root) for p in paths], tmp_path / "elsewhere")})
