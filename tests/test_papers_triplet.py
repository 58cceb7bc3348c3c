"""The triplet paper's home (visualsearch.papers.triplet): image sets, targets, training determinism, retrieval
metrics, claims, cache keys."""
from dataclasses import asdict

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from visualsearch.claims import paired_bootstrap
from visualsearch.evaluate import Retrieval, search
from visualsearch.papers.triplet import analysis, claims, experiment, tables
from visualsearch.papers.triplet import data as tdata
from visualsearch.data import products as P
from visualsearch.data.errors import SkipLog
from visualsearch.data.retail import read_inshop, read_sop
from stubs import RecordingReporter


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
    mem = tdata.load_images(b.query, 24)
    disk = tdata.load_images(b.query, 24, in_memory=False)
    assert mem.store.pixels.shape == (len(b.query), 3, 24, 24) and torch.equal(mem.store.get([0, 3]), disk.store.get([0, 3]))
    assert torch.equal(mem.labels, disk.labels)
    b.query.paths[1].write_bytes(b"broken")
    skips = SkipLog()
    s = tdata.load_images(b.query, 24, skips=skips)
    assert len(s) == len(b.query) - 1 and skips.reasons["corrupt image"] == 1
    assert s.item_ids[1] == b.query.item_ids[2] and int(s.labels[1]) == b.query.labels[2]


def test_attribute_targets_follow_attributes_csv(world):
    sop = read_sop(world)
    att = P.read_attributes(world)
    im = tdata.load_images(sop.train, 16)
    t = tdata.attribute_targets(im.item_ids, att)
    cats = sorted(att.category.unique())
    for i in (0, 5, len(im) - 1):
        pid = int(im.item_ids[i].split("_")[1])
        assert cats[int(t["category"][i])] == att.set_index("product_id").category[pid]
    assert set(t) == {"category", "colour", "pattern"}


def test_training_is_a_pure_function_of_the_seed(world):
    torch.set_num_threads(1)
    sop = read_sop(world)
    im = tdata.load_images(sop.train, 16)
    cfg = experiment.RunConfig(steps=3, num_pairs=4, dim=8, lr=0.01)
    a = experiment.train_embedding(im, cfg)
    b = experiment.train_embedding(im, cfg)
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(va, vb), k
    assert {"loss", "sim_ap", "sim_an", "frac_active", "frac_over_margin"} <= set(a.log.columns)
    c = experiment.train_embedding(im, experiment.RunConfig(steps=3, num_pairs=4, dim=8, lr=0.01, seed=1))
    assert not torch.equal(a.model.head.weight, c.model.head.weight)


def test_search_caps_k_and_excludes_self():
    # 3 products x 2 images; embeddings place each pair together
    e = F.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [-1.0, 0.1], [-0.9, 0.0]]), dim=1)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    r = search(e, e, labels, labels, (1, 10), exclude="self")
    assert r.k_cap == 5 and r.recall == {1: 1.0, 10: 1.0}
    assert (r.indices != torch.arange(6).unsqueeze(1)).all()
    curve = analysis.recall_curve(r, labels, labels, 50)
    assert len(curve) == 5 and curve[0] == 1.0
    # a query whose product is absent from its top-1: swap a gallery label
    g_labels = torch.tensor([0, 1, 1, 0, 2, 2])
    r2 = search(e[:1], e, labels[:1], g_labels, (1, 2, 3))
    assert r2.recall == {1: 1.0, 2: 1.0, 3: 1.0}
    r3 = search(e[1:2], e, labels[1:2], g_labels, (1, 2))
    assert r3.recall[1] == 0.0 and r3.recall[2] == 1.0  # top-1 is image 1 (label 1), then image 0 (label 0)


def test_table_names_capped_metrics():
    df = tables.recall_table({"m": {1: 0.5, 1000: 1.0}}, "d", [1, 1000], k_cap=99)
    assert df.metric.tolist() == ["R@1", "R@1000 (capped at 99)"] and df.reproduced.tolist() == [0.5, 1.0]


def test_error_breakdown_per_category_and_confusion_by_hand():
    # queries: product 0 (group 0, cat 0), product 1 (group 0, cat 0), product 2 (group 1, cat 0), product 3 (cat 1)
    q_labels = torch.tensor([0, 1, 2, 3])
    g_labels = torch.tensor([0, 1, 2, 3])
    groups = torch.tensor([0, 0, 1, 2])
    cats = torch.tensor([0, 0, 0, 1])
    # top-1: q0 -> right; q1 -> product 0 (look-alike); q2 -> product 0 (same category); q3 -> product 2 (other category)
    r = Retrieval({1: 0.25}, torch.tensor([[0, 1], [0, 1], [0, 2], [2, 3]]), torch.zeros(4, 2), 3)
    eb = analysis.error_breakdown(r, q_labels, g_labels, groups, groups, cats, cats)
    assert eb["wrong_top1"] == 0.75
    assert eb["lookalike"] == pytest.approx(1 / 3) and eb["same_category"] == pytest.approx(1 / 3)
    assert eb["other_category"] == pytest.approx(1 / 3)
    pc = analysis.per_category_recall(r, q_labels, g_labels, cats, k=1)
    assert pc[0] == pytest.approx(1 / 3) and pc[1] == 0.0
    pc = analysis.per_category_recall(r, q_labels, g_labels, cats, k=2)
    assert pc[0] == 1.0 and pc[1] == 1.0
    m = analysis.top1_category_confusion(r, cats, cats, 2)
    assert np.allclose(m, [[1.0, 0.0], [1.0, 0.0]])


def test_similarity_samples_split_positives_and_negatives():
    e = F.normalize(torch.randn(8, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    pos, neg = analysis.similarity_samples(e, e, labels, labels, n_neg=500, queries_in_gallery=True)
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
        return search(e, e, labels, labels, (1,), exclude="self").recall[1]

    before = r1()
    for step in range(150):
        idx = sampler(step).indices
        loss, _ = loss_fn(F.normalize(model(x[idx]), dim=1), labels[idx], a, pos)
        opt.zero_grad(), loss.backward(), opt.step()
    after = r1()
    assert after > 0.7 and after > before + 0.5  # chance: 3 relevant of 159 at top-1, about 0.02


def test_real_data_layout_and_start_weights_errors(world, tmp_path):
    from visualsearch.config import load_params

    (tmp_path / "In-shop").symlink_to(world, target_is_directory=True)
    (tmp_path / "Stanford_Online_Products").symlink_to(world, target_is_directory=True)
    p = load_params("triplet_product_search", "smoke", data_root=tmp_path)
    d = tdata.load_data(p)
    assert d.inshop_name == "DeepFashion In-shop" and d.sop_name == "Stanford Online Products"
    assert d.attributes is None and len(d.inshop_query) > 0 and len(d.sop_test) == 3 * 3 * 4
    with pytest.raises(ValueError, match="use 'imagenet' and a local weights file"):
        experiment.trunk_weights(p, d, experiment.result_cache(tmp_path / "cache"))
    p2 = load_params("triplet_product_search", "smoke", {"model": {"weights": "imagenet", "weights_path": "r50.pth"}},
                     data_root=tmp_path)
    with pytest.raises(FileNotFoundError, match="r50.pth does not exist"):
        experiment.trunk_weights(p2, d, experiment.result_cache(tmp_path / "cache"))
    p3 = load_params("triplet_product_search", "smoke", {"data": {"sop_dir": "nowhere"}}, data_root=tmp_path)
    with pytest.raises(Exception, match="missing folder.*Stanford Online Products root"):
        tdata.load_data(p3)


def test_paired_bootstrap_separates_noise_from_a_win():
    g = torch.Generator().manual_seed(0)
    clusters = torch.arange(300).repeat_interleave(4)
    a = (torch.rand(1200, generator=g) < 0.6).float()
    diff, lo, hi = paired_bootstrap(a, a, clusters)
    assert diff == 0 and lo == 0 and hi == 0
    # noise: 10 queries gained, 8 lost (+0.0017): the interval straddles 0
    ones, zeros = a.nonzero().squeeze(1), (a == 0).nonzero().squeeze(1)
    b = a.clone()
    b[ones[torch.randperm(len(ones), generator=g)[:10]]] = 0
    b[zeros[torch.randperm(len(zeros), generator=g)[:8]]] = 1
    diff, lo, hi = paired_bootstrap(a, b, clusters)
    assert diff == pytest.approx(2 / 1200) and lo < 0 < hi
    worse = (torch.rand(1200, generator=g) < 0.4).float()
    diff, lo, hi = paired_bootstrap(a, worse, clusters)
    assert lo > 0.1 and lo < diff < hi
    # resampling clusters, not queries: a difference carried by few products has a wider interval
    d1 = torch.zeros(1200)
    d1[:40] = 1  # +40 hits in 10 products
    d2 = torch.zeros(1200)
    d2[::30] = 1  # +40 hits spread over 40 products
    w1 = paired_bootstrap(d1, torch.zeros(1200), clusters)
    w2 = paired_bootstrap(d2, torch.zeros(1200), clusters)
    assert w1[0] == w2[0] and (w1[2] - w1[1]) > 1.5 * (w2[2] - w2[1])


def test_cache_keys_separate_loading_modes_kept_images_and_device(world, tmp_path):
    """An in-memory and a streaming run on the same folder keep the same images (a corrupt one is skipped
    by both, when the lists are read) and never share a cached entry; a run on other kept images or another
    device neither."""
    import shutil

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
    d_mem, d_disk = tdata.load_data(mem), tdata.load_data(disk)
    assert d_mem.skips.reasons == d_disk.skips.reasons and sum(d_mem.skips.reasons.values()) >= 1
    assert set(d_mem.skips.reasons) == {"corrupt image"}
    for name in ("inshop_train", "inshop_query", "inshop_gallery", "sop_train", "sop_test"):
        a, b = getattr(d_mem, name), getattr(d_disk, name)
        assert a.paths == b.paths and torch.equal(a.labels, b.labels) and bad not in a.paths
    assert torch.equal(d_mem.sop_test.store.get([0, 1]), d_disk.sop_test.store.get([0, 1]))
    assert d_mem.fingerprint == d_disk.fingerprint
    cache = experiment.result_cache(tmp_path / "cache")
    start = experiment.trunk_weights(mem, d_mem, cache)
    a = experiment.off_the_shelf(mem, d_mem, start, "sop", cache)
    b = experiment.off_the_shelf(disk, d_disk, start, "sop", cache)
    assert cache.misses == ["triplet_off_the_shelf"] * 2 and torch.equal(a["query"], b["query"])
    experiment.off_the_shelf(disk, d_disk, start, "sop", cache)
    assert cache.hits == ["triplet_off_the_shelf"]
    assert experiment.data_key(mem, d_mem) != experiment.data_key(disk, d_disk)
    on_gpu = load_params("triplet_product_search", "smoke", data_root=tmp_path, device="cuda")
    assert experiment.data_key(on_gpu, d_mem)["device"] == "cuda" != experiment.data_key(mem, d_mem)["device"]
    paths, root = d_mem.sop_test.paths, tmp_path / "Stanford_Online_Products"
    assert tdata.kept_images_digest({"sop_test": (paths, root)}) != tdata.kept_images_digest({"sop_test": (paths[1:], root)})
    assert tdata.kept_images_digest({"sop_test": (paths, root)}) == tdata.kept_images_digest(
        {"sop_test": ([tmp_path / "elsewhere" / p.relative_to(root) for p in paths], tmp_path / "elsewhere")})


def test_product_images_keep_labels_beside_an_image_store(world):
    b = read_inshop(world)
    disk = tdata.load_images(b.query, 24, in_memory=False)
    mem = tdata.load_images(b.query, 24)
    assert disk.store.pixels is None and len(disk) == len(disk.store) == len(b.query)
    assert disk.size == mem.size == 24 and disk.paths == mem.paths == list(b.query.paths)
    assert disk.item_ids == mem.item_ids == list(b.query.item_ids)
    sub = disk.store.subset([2, 0])
    assert torch.equal(sub.get([0, 1]), mem.store.get([2, 0]))


def test_embed_images_is_the_plain_loop_of_the_model(world):
    """experiment.embed_images (evaluate.embed over the model's forward) gives what a plain loop over
    prepare_batch and the model gives: unit rows, in index order, for embeddings and pooled features."""
    from visualsearch.data.augment import prepare_batch

    torch.set_num_threads(1)
    im = tdata.load_images(read_sop(world).query, 16)
    model = experiment.build_model(experiment.RunConfig(dim=8))
    index = torch.tensor([5, 1, 7, 0, 3])
    for features in (False, True):
        got = experiment.embed_images(model, im, features, batch_size=2, index=index)
        forward = model.features if features else model
        with torch.no_grad():
            want = F.normalize(forward(prepare_batch(im.store.get(index), 16)).float(), dim=1)
        assert got.shape == want.shape and torch.allclose(got, want, atol=1e-5)
    assert experiment.embed_images(model, im).shape == (len(im), 8)


def test_result_cache_keys_on_the_experiment_module(tmp_path):
    cache = experiment.result_cache(tmp_path)
    assert cache.root == tmp_path and cache.code == "visualsearch.papers.triplet.experiment"


def _params(preset="default", **over):
    from visualsearch.config import load_params
    return load_params("triplet_product_search", preset, over or None)


def test_hits_at_1_is_the_plain_loop():
    g = torch.Generator().manual_seed(0)
    ql, gl = torch.randint(5, (30,), generator=g), torch.randint(5, (12,), generator=g)
    r = Retrieval({1: 0.0}, torch.randint(12, (30, 3), generator=g), torch.zeros(30, 3), 3)
    want = torch.tensor([1.0 if int(gl[int(r.indices[i, 0])]) == int(ql[i]) else 0.0 for i in range(30)])
    assert torch.equal(claims.hits_at_1(r, ql, gl), want)


@pytest.mark.parametrize("preset", ["smoke", "default", "paper"])
def test_declared_claims_parse_and_name_runs_the_experiment_has(preset):
    p = _params(preset)
    declared = claims.declared(p)
    assert list(declared) == ["online_triplets_deepfashion", "single_category_sop"]
    for c in declared.values():  # both are the paper's claims, each checked by a proxy that says why
        assert c.source == "paper" and c.proxy.strip() and c.threshold == 0.0 and c.metric.startswith("hit@1")
    assert declared["online_triplets_deepfashion"].better == "batch_hard"
    assert declared["online_triplets_deepfashion"].worse == ("random", "off_the_shelf")
    assert (declared["single_category_sop"].better, declared["single_category_sop"].worse) == ("p=0.8", ("p=0",))
    names = claims.methods_named(declared)
    assert names == ["batch_hard", "random", "off_the_shelf", "p=0.8", "p=0"]
    which = {n: experiment.claim_run(n) for n in names}
    assert which["p=0.8"] == ("sop", {"single_category_prob": 0.8}) and which["random"][0] == "inshop"
    for n in names:  # every name has a row label the tables use
        assert tables.method_label(n) != n
    assert tables.method_label("p=0.8") == "single-category p=0.8 (paper)"
    assert experiment.training_seeds(p) == ([1337] if preset == "paper" else [0, 1])


def test_paper_claims_quote_the_paper_facts():
    from pathlib import Path
    facts = Path(__file__).resolve().parents[2] / "shared" / "papers" / "triplet.md"
    if not facts.is_file():
        pytest.skip("the shared paper facts are not beside this checkout")
    text = " ".join(facts.read_text().split())
    for c in claims.declared(_params()).values():  # each claim's text is the facts file's words, verbatim
        assert " ".join(c.text.split()) in text, c.text


def test_claim_runs_and_seeds_are_checked():
    with pytest.raises(ValueError, match="no such run"):
        experiment.claim_run("nonsense")
    with pytest.raises(ValueError, match="no such run"):
        experiment.claim_run("p=x")
    with pytest.raises(ValueError, match="at least 1"):
        experiment.training_seeds(_params(seeds=0))
    assert experiment.training_seeds(_params(seed=5, seeds=3)) == [5, 6, 7]


def test_seeded_retrievals_reuse_the_tables_runs_and_train_the_other_seeds(monkeypatch):
    """Seed `seed` is the tables' own run (same configuration, the SOP curve included); the others differ only in
    the seed; off-the-shelf features are computed once and repeated."""
    from dataclasses import replace
    p = _params()
    calls = []
    monkeypatch.setattr(experiment, "trained_run", lambda p_, d, which, cfg, start, cache, eval_every=0,
                        eval_products=0: calls.append((which, cfg, eval_every, eval_products)) or {"run": len(calls)})
    monkeypatch.setattr(experiment, "off_the_shelf", lambda p_, d, start, which, cache: calls.append(which) or {"ots": 1})
    monkeypatch.setattr(experiment, "evaluate_run", lambda d, which, e, ks: (which, e, tuple(ks)))
    out = experiment.seeded_retrievals(p, None, {}, None, ["batch_hard", "off_the_shelf", "p=0.8", "batch_hard"])
    assert list(out) == ["batch_hard", "off_the_shelf", "p=0.8"]
    assert out["off_the_shelf"] == ("inshop", [("inshop", {"ots": 1}, (1,))] * 2) and calls.count("inshop") == 1
    runs = [c for c in calls if isinstance(c, tuple)]
    assert [(w, c.seed, ev, ep) for w, c, ev, ep in runs] == [
        ("inshop", 0, 0, 0), ("inshop", 1, 0, 0), ("sop", 0, p.sop.eval_every, p.sop.eval_products), ("sop", 1, 0, 0)]
    assert runs[0][1] == experiment.run_config(p, method="batch_hard")  # the In-shop table's run
    assert runs[1][1] == replace(runs[0][1], seed=1)
    assert runs[2][1] == experiment.run_config(p, method=p.sop.method, single_category_prob=0.8)  # the SOP table's
    assert runs[3][1] == replace(runs[2][1], seed=1)


def _world_of_hits(seeds=2):
    """Fake data and per-seed retrievals: 40 products x 2 queries; In-shop gallery one photo per product."""
    from types import SimpleNamespace
    labels = torch.arange(40).repeat_interleave(2)
    data = SimpleNamespace(inshop_query=SimpleNamespace(labels=labels), inshop_gallery=SimpleNamespace(labels=torch.arange(40)),
                           sop_test=SimpleNamespace(labels=labels), inshop_name="In", sop_name="SOP")

    def inshop(correct):  # top-1 right for the queries where `correct`
        top = torch.where(correct, labels, (labels + 1) % 40)
        return Retrieval({1: float(correct.float().mean())}, top.unsqueeze(1), torch.zeros(80, 1), 40)

    def sop(correct):  # SOP: query i's partner photo (same product) or a photo of the next product
        partner = torch.arange(80) ^ 1
        top = torch.where(correct, partner, (partner + 2) % 80)
        return Retrieval({1: float(correct.float().mean())}, top.unsqueeze(1), torch.zeros(80, 1), 80)

    g = torch.Generator().manual_seed(1)
    good = [inshop(torch.rand(80, generator=g) < 0.9) for _ in range(seeds)]
    bad = [inshop(torch.rand(80, generator=g) < 0.3) for _ in range(seeds)]
    ots = inshop(torch.rand(80, generator=g) < 0.5)
    same = sop(torch.rand(80, generator=g) < 0.6)
    seeded = {"batch_hard": ("inshop", good), "random": ("inshop", bad), "off_the_shelf": ("inshop", [ots] * seeds),
              "p=0.8": ("sop", [same] * seeds), "p=0": ("sop", [same] * seeds)}
    return data, seeded


def test_decide_claims_pools_seeds_and_clusters_products():
    from visualsearch.claims import decide
    p = _params()
    data, seeded = _world_of_hits()
    rep = RecordingReporter()
    out = claims.decide_claims(rep, p, data, seeded)
    assert [c.id for c, _ in rep.decided] == ["online_triplets_deepfashion", "single_category_sop"]
    online, single = out["online_triplets_deepfashion"], out["single_category_sop"]
    assert online.passed and online.seeds == 2 and not single.passed  # identical runs: no difference, no win
    assert single.difference == 0.0 and "40 test products (SOP)" in single.criterion
    assert "same starting trunk (pretrained here once, at seed 0)" in online.detail and "150 steps" in online.detail
    # the numbers are decide's on the hits stacked [seeds, queries], clustered by product
    hits = claims.per_item_scores(data, seeded)
    assert hits["batch_hard"].shape == (2, 80)
    want = decide(claims.declared(p)["online_triplets_deepfashion"],
                  {k: hits[k] for k in ("batch_hard", "random", "off_the_shelf")}, clusters=data.inshop_query.labels)
    assert (online.difference, online.low, online.high) == (want.difference, want.low, want.high)
    # a worse run that wins flips the verdict: the check can fail
    flipped = {**seeded, "random": seeded["batch_hard"], "batch_hard": seeded["random"]}
    assert not claims.decide_claims(RecordingReporter(), p, data, flipped)["online_triplets_deepfashion"].passed


def test_seed_tables_hold_per_seed_recall_and_the_pooled_interval_of_the_verdict():
    p = _params()
    data, seeded = _world_of_hits()
    declared = claims.declared(p)
    runs, diffs = claims.seed_tables(data, seeded, [0, 1], declared)
    r = runs.set_index(["method", "metric"]).reproduced
    for s in (0, 1):  # R@1 per seed is the run's own recall
        assert r[("batch-hard online (paper)", f"R@1 seed {s}")] == pytest.approx(seeded["batch_hard"][1][s].recall[1])
    assert r[("random triplets", "R@1 mean of 2 seeds")] == pytest.approx(
        sum(x.recall[1] for x in seeded["random"][1]) / 2)
    assert set(runs.dataset) == {"In", "SOP"}
    d = diffs.set_index(["method", "metric"]).reproduced
    pooled = "batch-hard online (paper) - random triplets (2 seeds pooled)"
    verdict = claims.decide_claims(RecordingReporter(), p, data, {k: v for k, v in seeded.items()})
    closest = verdict["online_triplets_deepfashion"]  # its numbers are of the closest comparison
    rows = {m: (d[(m, "R@1 difference")], d[(m, "95% low")], d[(m, "95% high")]) for m in set(diffs.method)}
    assert (closest.difference, closest.low, closest.high) in rows.values()
    assert pooled in rows and rows[pooled][1] <= rows[pooled][0] <= rows[pooled][2]
    assert "batch-hard online (paper) - random triplets (seed 1)" in rows
    assert len(rows) == 3 * 2 + 3  # (2 comparisons of claim 1 + 1 of claim 2) x (2 seeds + pooled)


def _notebook_calls(p, monkeypatch) -> list[dict]:
    """The cache keys of every trained_run the notebook's cells ask for (the In-shop table, the SOP sweep, the
    claims' runs at every seed), recorded through a stub trained_run."""
    from types import SimpleNamespace
    d, start, keys = SimpleNamespace(fingerprint="f"), {"weights_path": None}, []

    def fake(p_, d_, which, cfg, start_, cache, eval_every=0, eval_products=0, progress=True):
        keys.append(experiment.run_key(p_, d_, which, cfg, start_, eval_every, eval_products))
        return {}

    monkeypatch.setattr(experiment, "trained_run", fake)
    monkeypatch.setattr(experiment, "off_the_shelf", lambda *a: {})
    monkeypatch.setattr(experiment, "evaluate_run", lambda *a: None)
    for m in p.inshop.methods:  # as the notebook's In-shop cell
        experiment.trained_run(p, d, "inshop", experiment.run_config(p, method=m), start, None)
    for prob in p.sop.single_category_probs:  # as its SOP cell
        cfg = experiment.run_config(p, method=p.sop.method, single_category_prob=float(prob))
        experiment.trained_run(p, d, "sop", cfg, start, None, p.sop.eval_every, p.sop.eval_products)
    experiment.seeded_retrievals(p, d, start, None, claims.methods_named(claims.declared(p)))
    return keys


@pytest.mark.parametrize("preset", ["smoke", "default", "paper"])
def test_prefetched_runs_are_exactly_the_runs_the_notebook_asks_for(preset, monkeypatch):
    """prefetch_runs trains notebook_runs(p) ahead; if one of its keys differed from the key of a cell's call,
    that cell would train the run again (twice the cost), and a run it missed would train one thread at a time."""
    import json
    p = _params(preset)
    d, start = __import__("types").SimpleNamespace(fingerprint="f"), {"weights_path": None}
    jobs = experiment.notebook_runs(p, claims.methods_named(claims.declared(p)))
    planned = [json.dumps(experiment.run_key(p, d, w, c, start, **kw), sort_keys=True) for w, c, kw in jobs]
    asked = {json.dumps(k, sort_keys=True) for k in _notebook_calls(p, monkeypatch)}
    assert len(planned) == len(set(planned))  # each run once
    assert set(planned) == asked
    n_claim_runs = 4 * (int(p.seeds) - 1)  # the claims' four runs at each extra seed
    assert len(jobs) == len(p.inshop.methods) + len(p.sop.single_category_probs) + n_claim_runs


def test_prefetch_runs_trains_the_missing_runs_in_worker_processes(monkeypatch, tmp_path):
    """Each missing job reaches trained_run in a forked worker (which stores it in the cache); jobs already cached,
    one worker, a GPU or a disabled cache train nothing here."""
    from types import SimpleNamespace
    p = _params("smoke")
    jobs = experiment.notebook_runs(p, ["batch_hard", "p=0.8"])
    cached = {experiment.run_key(p, SimpleNamespace(fingerprint="f"), *jobs[0][:2], {"weights_path": None},
                                 **jobs[0][2])["run"]["method"]}

    class Cache:
        misses = []

        def has(self, name, key):
            return key["which"] == "inshop" and key["run"]["method"] in cached and key["run"]["seed"] == p.seed

        def run_dir(self, name, key):
            return tmp_path.parent / f"{tmp_path.name}-runs" / name

    def fake(p_, d, which, cfg, start, cache, eval_every=0, eval_products=0, progress=True):
        assert progress is False and torch.get_num_threads() == 1
        (tmp_path / f"{which}-{cfg.method}-{cfg.single_category_prob}-{cfg.seed}-{eval_every}").write_text("x")
        return {"wall_s": 0.0}

    monkeypatch.setattr(experiment, "trained_run", fake)
    monkeypatch.delenv("VISUALSEARCH_NO_CACHE", raising=False)
    threads = torch.get_num_threads()
    n = experiment.prefetch_runs(p, SimpleNamespace(fingerprint="f"), {"weights_path": None}, Cache(), jobs, 2)
    assert torch.get_num_threads() == threads  # the parent's pool is left as it was
    done = sorted(f.name for f in tmp_path.iterdir())
    assert n == len(jobs) - 1 == len(done) and f"inshop-{jobs[0][1].method}-0.0-{p.seed}-0" not in done
    assert f"sop-batch_hard-0.8-{p.seed}-{p.sop.eval_every}" in done and "sop-batch_hard-0.8-1-0" in done
    for f in tmp_path.iterdir():
        f.unlink()
    assert experiment.prefetch_runs(p, SimpleNamespace(fingerprint="f"), {"weights_path": None}, Cache(), jobs, 1) == 0
    monkeypatch.setenv("VISUALSEARCH_NO_CACHE", "1")
    assert experiment.prefetch_runs(p, SimpleNamespace(fingerprint="f"), {"weights_path": None}, Cache(), jobs, 2) == 0
    assert not list(tmp_path.iterdir())
