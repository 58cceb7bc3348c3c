"""The MAAF paper's home (visualsearch.papers.maaf): image stores, batches as pure functions of the step (drawn
as the old per-paper sampler drew them), the evaluation protocol against a naive loop, caching, frozen maps,
weights pretraining, learning above chance; its tables, claims and figures from hand-made or tiny-model results."""
import dataclasses
from dataclasses import asdict

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from visualsearch import claims as vclaims
from visualsearch.data.errors import SkipLog
from visualsearch.data.images import ImageStore
from visualsearch.data.scenes import ScenesWorldConfig, build_css
from visualsearch.data.text_feedback import read_css
from visualsearch.evaluate import embed
from visualsearch.models.blocks import ResNetTrunk
from visualsearch.models.maaf import MAAFConfig
from visualsearch.models.text import Vocabulary
from visualsearch.papers.maaf import claims as mc, data as md, experiment as mx, figures as mf, pretrain as mp
from visualsearch.papers.maaf import tables as mt
from stubs import RecordingReporter

TINY = MAAFConfig(dim=32, heads=4, ff_width=32, blocks=1, backbone="resnet18", backbone_frozen=True, image_size=32)


@pytest.fixture(scope="module")
def css(tmp_path_factory):
    root = tmp_path_factory.mktemp("css")
    build_css(root, asdict(ScenesWorldConfig(train_scenes=40, test_scenes=12, image_size=32)))
    train, test = read_css(root, "train"), read_css(root, "test")
    vocab = Vocabulary.build(train.texts())
    return (md.SplitInputs(train, md.load_store(train.images, 32)),
            md.SplitInputs(test, md.load_store(test.images, 32)), vocab)


def test_image_store_crops_and_counts_missing(tmp_path):
    Image.new("RGB", (40, 20), (255, 0, 0)).save(tmp_path / "a.png")
    skips = SkipLog()
    table = md.load_store([tmp_path / "a.png", tmp_path / "missing.png"], 16, skips)
    assert isinstance(table, ImageStore) and len(table) == 2 and table.size == 16
    assert table.pixels.shape == (2, 3, 16, 16) and table.pixels.dtype == torch.uint8
    assert (table.pixels[0, 0] == 255).all() and (table.pixels[1] == 128).all()
    assert skips.reasons["missing image"] == 1


def test_a_split_too_large_to_hold_is_read_on_request_with_the_same_pixels(tmp_path):
    Image.new("RGB", (40, 20), (255, 0, 0)).save(tmp_path / "a.png")
    paths = [tmp_path / "a.png", tmp_path / "missing.png"]
    held = md.load_store(paths, 16, SkipLog())
    skips = SkipLog()
    streamed = md.load_store(paths, 16, skips, max_bytes=3 * 16 * 16)   # room for one image: read on request
    assert streamed.pixels is None and len(streamed) == 2
    assert torch.equal(streamed.get([0, 1]), held.pixels)
    assert skips.reasons["missing image"] == 1                           # counted when it was asked for
    trunk = mx.seeded_trunk(TINY, 0)
    assert all(torch.equal(a, b) for a, b in zip(mx.FrozenMaps.compute(trunk, streamed, ["4"], batch_size=1).maps.values(),
                                                  mx.FrozenMaps.compute(trunk, held, ["4"]).maps.values()))


def test_augment_is_reproducible_and_normalised():
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    a = md.augment(x, torch.Generator().manual_seed(3))
    b = md.augment(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == (4, 3, 16, 16)
    assert not torch.equal(a, md.augment(x, torch.Generator().manual_seed(4)))


def test_batches_are_pure_functions_of_the_step(css):
    train, _, _ = css
    fn = mx.make_batch_fn([train], batch_size=6, seed=1)
    a, b = fn(5), fn(5)
    assert a["texts"] == b["texts"] and torch.equal(a["source"], b["source"]) and torch.equal(a["target"], b["target"])
    assert a["texts"] != fn(6)["texts"] or not torch.equal(a["source"], fn(6)["source"])
    texts = {q.captions[0] for q in train.split.queries}
    assert set(a["texts"]) <= texts and a["source"].shape == (6, 3, 32, 32)


def test_evaluate_matches_a_naive_ranking(css):
    _, test, vocab = css
    model = mx.build_seeded(TINY, vocab, 0).eval()
    got = mx.evaluate(model, test, ks=(1, 5, 10))
    split = test.split
    with torch.no_grad():
        gallery = F.normalize(model.embed_catalog(md.normalize_pixels(test.store.pixels)), dim=-1)
        hits = {1: 0, 5: 0, 10: 0}
        per_query = {1: [], 5: [], 10: []}
        for q in split.queries:
            src = md.normalize_pixels(test.store.pixels[[q.source]])
            s = (F.normalize(model.compose(src, [q.captions[0]]), dim=-1) @ gallery.T)[0]
            s[q.source] = -np.inf  # the reference never retrieves itself
            order = torch.argsort(s, descending=True, stable=True).tolist()
            first = next(r for r, g in enumerate(order) if split.labels[g] == q.target_label)
            for k in hits:
                hits[k] += first < k
                per_query[k].append(first < k)
    for k in hits:
        assert got.percent()[f"R@{k}"] == pytest.approx(100 * hits[k] / len(split.queries))
    _, got_hits = mx.evaluate_per_query(model, test, ks=(1, 5, 10))
    for k in hits:  # the per-query hits the claims are decided on: the same ranking, query by query
        assert got_hits[k].tolist() == per_query[k]
    refs = mx.query_references(md.PreparedDataset("css", "d", [], {"test": test}, vocab, "f", SkipLog()))
    assert refs["test"].tolist() == [q.source for q in split.queries] and len(refs["test"]) == len(got_hits[1])


def test_frozen_maps_give_the_same_embeddings_as_pixels(css):
    _, test, vocab = css
    model = mx.build_seeded(TINY, vocab, 0).eval()
    key = mx.backbone_key(TINY, 0)
    test.maps[key] = mx.FrozenMaps.compute(mx.seeded_trunk(TINY, 0), test.store, ["3", "4"])
    a = mx.evaluate(model, test, ks=(1, 10))
    b = mx.evaluate(model, test, ks=(1, 10), maps_key=key)
    assert a.percent() == pytest.approx(b.percent(), abs=2.0)  # float16 maps: ties may move by a rank
    del test.maps[key]


@pytest.mark.slow
def test_training_learns_above_chance_and_is_cached(css, tmp_path):
    train, test, vocab = css
    cache = mx.result_cache(tmp_path)
    cfg = TINY
    for g in (train, test):
        g.maps[mx.backbone_key(cfg, 0)] = mx.FrozenMaps.compute(mx.seeded_trunk(cfg, 0), g.store, ["3", "4"])
    spec = mx.TrainSpec(steps=150, batch_size=16, lr=0.05)
    result = mx.run_experiment("MAAF", cfg, spec, [train], {"test": test}, vocab, "css-fixture", cache,
                               keep_model=True)
    chance = 100 * 10 / len(test.split.images)
    assert result.recall["test"]["R@10"] > 2 * chance
    assert result.log["loss"].iloc[-20:].mean() < result.log["loss"].iloc[:20].mean()
    again = mx.run_experiment("MAAF", cfg, spec, [train], {"test": test}, vocab, "css-fixture", cache,
                              keep_model=True)
    assert cache.hits == ["maaf-maaf"] and again.recall == result.recall
    assert not any(k.startswith("trunk.") for k in again.state)  # the frozen backbone is not stored
    model = mx.restore(cfg, vocab, 0, again.state)
    assert mx.evaluate(model, test, ks=(10,)).percent()["R@10"] == pytest.approx(result.recall["test"]["R@10"], abs=2.0)


def test_seeded_trunk_is_the_models_trunk(css):
    _, _, vocab = css
    for fusion in ("maaf", "tirg"):
        cfg = dataclasses.replace(TINY, fusion=fusion)
        model = mx.build_seeded(cfg, vocab, 3)
        assert torch.equal(model.trunk.layer4[0].conv1.weight, mx.seeded_trunk(cfg, 3).layer4[0].conv1.weight)


def test_pretrained_weights_load_into_the_models(tmp_path):
    state = mp.pretrain_trunk("resnet18", image_size=32, steps=2, n_photos=16, batch_size=8)
    acc = state.pop("__accuracy__")
    assert set(acc) == set(mp.ATTRIBUTE_HEADS)
    torch.save(state, tmp_path / "w.pth")
    trunk = ResNetTrunk("resnet18", tmp_path / "w.pth")
    assert torch.equal(trunk.stem[0].weight, state["conv1.weight"])


def test_plan_runs_and_bad_ablation(css):
    from visualsearch.config import load_params

    p = load_params("maaf_ablations", "smoke")
    runs = mx.plan_runs(p, None)
    names = [(r.dataset, r.name) for r in runs]
    assert ("fashioniq", "MAAF") in names and ("css", "tirg") in names
    assert ("fashioniq", "ablation: mean pooling") in names
    ablation = next(r for r in runs if r.name == "ablation: mean pooling")
    full = next(r for r in runs if r.name == "MAAF" and r.dataset == "fashioniq")
    assert ablation.cfg.pooling == "mean" and ablation.spec == full.spec
    reseeded = next(r for r in runs if r.name == "MAAF, seed 1")
    assert reseeded.cfg == full.cfg and reseeded.spec == dataclasses.replace(full.spec, seed=1)
    longer = next(r for r in runs if r.name == f"TIRG ({p.longer_tirg}x steps)" and r.dataset == "css")
    assert longer.cfg.fusion == "tirg" and longer.spec.steps == p.longer_tirg * p.steps["css"]
    assert [r.name for r in runs].count("MAAF, seed 1") == 1  # the reference seed, once
    table = mx.ablation_results(runs, {(r.dataset, r.name): r.name for r in runs})
    assert list(table)[:2] == ["MAAF (full model)", "MAAF (full model), seed 1"] and table["MAAF (full model)"] == "MAAF"
    assert table["mean pooling"] == "ablation: mean pooling"
    bad = load_params("maaf_ablations", "smoke", {"ablations": [{"name": "x", "change": {"depth": 3}}]})
    with pytest.raises(ValueError, match="unknown switches"):
        mx.plan_runs(bad, None)


def test_ablations_at_other_steps_compare_with_the_full_model_trained_as_long():
    from visualsearch.config import load_params

    p = load_params("maaf_ablations", "smoke", {"ablation_steps": 5})
    runs = mx.plan_runs(p, None)
    by_name = {r.name: r for r in runs if r.dataset == "fashioniq"}
    ref, ref_seed = by_name[mx.ABLATION_REFERENCE], by_name[f"{mx.ABLATION_REFERENCE}, seed 1"]
    assert ref.spec.steps == ref_seed.spec.steps == by_name["ablation: mean pooling"].spec.steps == 5
    assert ref.cfg == by_name["MAAF"].cfg and by_name["MAAF"].spec.steps == p.steps["fashioniq"]
    assert ref_seed.spec.seed == 1 and not ref.keep_model
    table = mx.ablation_results(runs, {(r.dataset, r.name): r.name for r in runs})
    assert table["MAAF (full model)"] == mx.ABLATION_REFERENCE
    assert table["MAAF (full model), seed 1"] == f"{mx.ABLATION_REFERENCE}, seed 1"
    assert set(table) == {"MAAF (full model)", "MAAF (full model), seed 1", *(row["name"] for row in p.ablations)}
    assert mx.ABLATION_REFERENCE not in mx.seed_results(runs, {(r.dataset, r.name): r for r in runs}, "fashioniq")


def test_trained_backbone_on_augmented_pixels_runs(css):
    """The paper preset's path: no frozen maps, the backbone trained at a lower lr on augmented pixels."""
    train, test, vocab = css
    cfg = dataclasses.replace(TINY, backbone_frozen=False)
    spec = mx.TrainSpec(steps=3, batch_size=4, augment=True, image_lr_scale=0.1)
    before = mx.build_seeded(cfg, vocab, 0).trunk.layer4[0].conv1.weight.clone()
    result = mx.run_experiment("pixels", cfg, spec, [train], {"test": test}, vocab, "fixture", keep_model=True)
    assert len(result.log) == 3 and set(result.recall["test"]) == {"R@1", "R@5", "R@10", "R@50"}
    assert not torch.equal(result.state["trunk.layer4.0.conv1.weight"], before)  # the backbone trained


def test_backbone_pretraining_resumes_exactly(tmp_path, monkeypatch):
    """Backbone pretraining killed after its checkpoint at step 4 and resumed ends with the weights and
    running accuracies of a run that went straight through; another pretraining refuses the checkpoint."""
    from visualsearch.train import CheckpointMismatch

    torch.set_num_threads(1)
    args = dict(arch="resnet18", image_size=32, steps=7, n_photos=16, batch_size=4, identity="x")
    straight = mp.pretrain_trunk(**args)
    real_step, calls = torch.optim.SGD.step, {"n": 0}

    def dying(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 6:  # in step 6, after its forward pass moved the BatchNorm statistics, before its update
            raise KeyboardInterrupt
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.SGD, "step", dying)
    with pytest.raises(KeyboardInterrupt):
        mp.pretrain_trunk(**args, run_dir=tmp_path, checkpoint_every=4)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["step"] == 5  # completed steps kept
    monkeypatch.setattr(torch.optim.SGD, "step", real_step)
    with pytest.raises(CheckpointMismatch):
        mp.pretrain_trunk(**{**args, "lr": 0.1}, run_dir=tmp_path, checkpoint_every=4)
    resumed = mp.pretrain_trunk(**args, run_dir=tmp_path, checkpoint_every=4)
    assert resumed.pop("__accuracy__") == straight.pop("__accuracy__")
    for k, v in straight.items():
        assert torch.equal(v, resumed[k]), k


def test_run_resumes_from_its_cache_run_dir_exactly(css, tmp_path, monkeypatch):
    """A run killed mid-training resumes from the checkpoint in its cache entry's run folder and ends with
    the result of an uninterrupted run; the folder is removed once the entry is stored."""
    train, test, vocab = css
    torch.set_num_threads(1)
    spec = mx.TrainSpec(steps=8, batch_size=6, lr=0.05)
    cfg = dataclasses.replace(TINY, backbone_frozen=False)
    args = ("TIRG", dataclasses.replace(cfg, fusion="tirg"), spec, [train], {"test": test}, vocab, "css-fixture")
    straight = mx.run_experiment(*args, mx.result_cache(tmp_path / "a"), keep_model=True)
    torch.set_num_threads(1)  # a process's first retrieval may have reset it
    cache = mx.result_cache(tmp_path / "b")
    real, calls = mx.make_step_fn, {"n": 0}

    def make_dying(loss="softmax", precision="fp32", device="cpu"):
        step = real(loss, precision, device)

        def dying(model, batch):
            calls["n"] += 1
            if calls["n"] == 7:
                raise KeyboardInterrupt
            return step(model, batch)
        return dying

    monkeypatch.setattr(mx, "make_step_fn", make_dying)
    with pytest.raises(KeyboardInterrupt):
        mx.run_experiment(*args, cache, keep_model=True, checkpoint_every=3)
    key = mx.run_key(args[1], spec, "css-fixture", vocab, {"test": test}, (1, 5, 10, 50), True, 0, None)
    run_dir = cache.run_dir(mx.cache_name("TIRG"), key)
    assert torch.load(run_dir / "checkpoint.pt", weights_only=False)["step"] == 6
    monkeypatch.setattr(mx, "make_step_fn", real)
    torch.set_num_threads(1)
    resumed = mx.run_experiment(*args, cache, keep_model=True, checkpoint_every=3)
    assert resumed.recall == straight.recall and list(resumed.log["step"]) == list(range(1, 9))
    for k, v in straight.state.items():
        assert torch.equal(v, resumed.state[k]), k
    assert not run_dir.exists() and cache.has(mx.cache_name("TIRG"), key)


def test_backbone_weights_file_is_found_under_the_data_root(tmp_path):
    """The paper preset names its ImageNet state dict relative to data_root (as the triplet notebook does);
    a missing file is a clear error naming where it was looked for; "none" is a random init."""
    from visualsearch.config import load_params

    def params(weights):
        return load_params("maaf_ablations", "paper", {"backbone_weights": weights}, data_root=tmp_path)

    with pytest.raises(FileNotFoundError, match=f"no such file {tmp_path}/resnet50-imagenet.pth"):
        mx.backbone_weights_file(load_params("maaf_ablations", "paper", data_root=tmp_path), mx.result_cache(tmp_path))
    torch.save({}, tmp_path / "w.pth")
    assert mx.backbone_weights_file(params("w.pth"), mx.result_cache(tmp_path)) == str(tmp_path / "w.pth")
    assert mx.backbone_weights_file(params(str(tmp_path / "w.pth")), mx.result_cache(tmp_path)) == str(tmp_path / "w.pth")
    assert mx.backbone_weights_file(params("none"), mx.result_cache(tmp_path)) is None
    a, b = mx.weights_key(tmp_path / "w.pth"), mx.weights_key(None)
    torch.save({"x": torch.ones(1)}, tmp_path / "w.pth")
    assert b == {} and a != mx.weights_key(tmp_path / "w.pth")  # a key names the weights, not only the file


# ------------------------------------------------------------------- tables and claims (was maaf_report)

def result(r10s, r50s):
    recall = {c: {"R@10": a, "R@50": b} for c, a, b in zip(("dress", "shirt", "toptee"), r10s, r50s)}
    return mx.RunResult(recall, pd.DataFrame({"step": [1], "loss": [1.0]}))


def test_fiq_rows_average_over_categories():
    df = mt.fiq_rows({"MAAF": result((20, 30, 40), (50, 60, 70)), "TIRG": result((10, 10, 10), (30, 30, 30))})
    get = lambda m, d, k: df[(df.method == m) & (df.dataset == d) & (df.metric == k)]["reproduced"].item()
    assert get("MAAF", "average", "R@10") == 30 and get("MAAF", "average", "R@50") == 60
    assert get("MAAF", "average", mt.FIQ_SCORE) == 45 and get("TIRG", "average", mt.FIQ_SCORE) == 20
    assert get("MAAF", "shirt", "R@50") == 60
    assert mt.fiq_score(result((20, 30, 40), (50, 60, 70))) == 45


def test_recall_tables_carry_trainable_parameters():
    with_params = mx.RunResult({"test": {"R@1": 50.0}}, None, extra={"trainable_params": 1234})
    without = mx.RunResult({"test": {"R@1": 40.0}}, None)  # trained before the count was recorded: no row
    df = mt.recall_rows({"MAAF": with_params, "TIRG": without}, "CSS", ks=(1,))
    params = df[df.metric == mt.PARAMS]
    assert params.method.tolist() == ["MAAF"] and params.reproduced.item() == 1234
    fiq = mt.fiq_rows({"MAAF": mx.RunResult(result((1, 2, 3), (4, 5, 6)).recall, None, extra={"trainable_params": 7})})
    assert fiq[fiq.metric == mt.PARAMS].dataset.item() == "average"


def test_trainable_parameters_leave_the_frozen_backbone_out():
    torch.manual_seed(0)
    from visualsearch.models.fusion import build_model
    cfg = MAAFConfig(dim=16, heads=4, ff_width=8, blocks=1, backbone="resnet18", fusion="tirg")
    vocab = Vocabulary(["a", "b"])
    frozen = mx.trainable_parameters(build_model(dataclasses.replace(cfg, backbone_frozen=True), vocab))
    trained = mx.trainable_parameters(build_model(cfg, vocab))
    trunk = sum(p.numel() for p in ResNetTrunk("resnet18").parameters())
    assert trained - frozen == trunk and frozen > 0


def test_comparison_rows_show_every_compared_method():
    claim = vclaims.Claim("spot_beats_baselines", "beats", "paper", "MAAF", ["TIRG", "image only"], "hit@1 per query")
    scored = mc.Scored(claim, "spot_the_diff", [0, 1],
                       {"MAAF": np.array([[1, 0], [1, 1]]), "TIRG": np.array([[0, 0], [1, 0]]),
                        "image only": np.array([[1, 1], [1, 1]])}, None)
    df = mt.comparison_rows([scored], {"spot_the_diff": "Spot-the-Diff"}).set_index(["method", "metric"]).reproduced
    assert df[("MAAF vs TIRG", "difference")] == pytest.approx(0.5)
    assert df[("MAAF vs image only", "difference")] == pytest.approx(-0.25)  # a loss is shown, not hidden
    assert df[("MAAF vs image only", "compared")] == 1.0


def test_ablation_changes_and_margins():
    rows = mt.ablation_rows({"full": result((20, 30, 40), (50, 60, 70)), "no text": result((10, 30, 40), (50, 60, 70))},
                            {"no text": "text_in_pooling=False"}, "full")
    change = rows[(rows.metric == "change vs full model")].set_index("method")["reproduced"]
    assert change["full"] == 0 and change["no text (text_in_pooling=False)"] == pytest.approx(-10 / 6)


def test_place_attention_rows(tmp_path):
    build_css(tmp_path, asdict(ScenesWorldConfig(train_scenes=4, test_scenes=6, image_size=64)))
    test = read_css(tmp_path, "test")
    group = md.SplitInputs(test, md.load_store(test.images, 64))
    cfg = MAAFConfig(dim=16, heads=2, ff_width=16, blocks=2, backbone="resnet18", image_size=64)
    model = mx.build_seeded(cfg, Vocabulary.build(test.texts()), 0)
    places = mx.place_attention(model, group)
    assert set(places.columns) == {"block", "stage", "queries", "ratio"}
    assert set(places.block) <= {1, 2} and (places.ratio > 0).all() and (places.queries > 0).all()
    named = sum(any(w in q.captions[0].replace("-", "").split() for w in ("topleft", "middlecenter", "bottomright",
                                                                          "topcenter", "topright", "middleleft",
                                                                          "middleright", "bottomleft", "bottomcenter"))
                for q in test.queries)
    assert places[(places.block == 1) & (places.stage == "layer3")]["queries"].item() == named
    items = mx.place_attention_items(model, group)
    assert len(items[(items.block == 1) & (items.stage == "all")]) == named  # every cell holds layer3 tokens
    assert places.set_index(["block", "stage"]).ratio.to_dict() == pytest.approx(
        items[items.stage != "all"].groupby(["block", "stage"]).ratio.mean().to_dict())
    # one word by hand: its attention to the named cell's tokens of both grids over its mean on all image tokens
    from visualsearch.models.maaf import word_attention_maps

    row = items[(items.stage == "all") & (items.block == 2)].iloc[0]
    q = md.eval_queries(test)[int(row.query)]
    assert int(row.reference) == q.source
    with torch.no_grad():
        out = model.compose(md.normalize_pixels(group.store.get([q.source])), [test.query_text(q)], return_attention=True)
    word = out.tokens[0][int(row.word)]
    cell = {f"{r}{c}": (i, j) for i, r in enumerate(("top", "middle", "bottom"))
            for j, c in enumerate(("left", "center", "right"))}[word]
    inside, every = [], []
    for grid in word_attention_maps(out, 0, 1).values():
        h, w = grid.shape[-2:]
        for y in range(h):
            for x in range(w):
                every.append(float(grid[int(row.word), y, x]))
                if (int((y + 0.5) / h * 3), int((x + 0.5) / w * 3)) == cell:
                    inside.append(every[-1])
    assert row.ratio == pytest.approx(np.mean(inside) / np.mean(every), rel=1e-5)


# ------------------------------------------------------------------------------- what the home added

def test_batches_are_drawn_as_the_per_paper_sampler_drew_them(css):
    """make_batch_fn on samplers.UniformBatches draws what the MAAF notebook's own sampler drew: a group, then
    the queries, then the captions' order from the same stream (so no cached number moves)."""
    from visualsearch.seeding import step_seed

    train, _, _ = css
    joined = md.SplitInputs(dataclasses.replace(train.split, queries=train.split.queries[:5], caption_mode="join"),
                            train.store)
    groups = [train, joined]
    fn = mx.make_batch_fn(groups, batch_size=6, seed=4)
    for step in range(6):
        rng = np.random.default_rng(step_seed(4, step))
        g = groups[int(rng.integers(len(groups)))]
        n = len(g.split.queries)
        queries = [g.split.queries[int(i)] for i in rng.choice(n, size=6, replace=n < 6)]
        texts = [g.split.query_text(q, rng) for q in queries]
        got = fn(step)
        assert got["texts"] == texts
        assert torch.equal(got["source"], md.normalize_pixels(g.store.pixels[[q.source for q in queries]]))
        assert torch.equal(got["target"], md.normalize_pixels(g.store.pixels[[q.target for q in queries]]))


def test_evaluate_caps_k_at_the_retrievable_gallery(css):
    """A k above the gallery less the excluded reference is evaluated at that cap (evaluate.search)."""
    _, test, vocab = css
    model = mx.build_seeded(TINY, vocab, 0).eval()
    cap = len(test.split.images) - 1
    got = mx.evaluate(model, test, ks=(1, cap, 10 * cap))
    assert got.k_cap == cap and got.indices.shape == (len(test.split.queries), cap)
    assert got.percent()[f"R@{10 * cap}"] == got.percent()[f"R@{cap}"]


def test_load_data_reads_every_dataset_of_the_parameters():
    from visualsearch.config import load_params

    p = load_params("maaf_ablations", "smoke", {"datasets": ["css", "spot_the_diff"], "workers": 1})
    data = md.load_data(p, progress=False)
    assert list(data) == ["css", "spot_the_diff"] and len(data) == 2 and "css" in data and data.get("x") is None
    css = data["css"]
    assert css.description == "synthetic scenes world in CSS format" and css.fingerprint and css.skips.count == 0
    assert isinstance(css.eval["test"].store, ImageStore) and len(css.eval["test"].store) == len(css.eval["test"].split.images)
    summary = md.data_summary(data)
    assert list(summary.columns) == ["dataset", "data", "training queries", "evaluation queries", "gallery images",
                                     "vocabulary", "skipped"]
    assert list(summary.dataset) == ["css", "spot_the_diff"]
    assert summary.set_index("dataset").loc["css", "gallery images"] == len(css.eval["test"].split.images)


def test_figures_draw_what_the_experiment_computed(css):
    import matplotlib

    matplotlib.use("Agg")
    _, test, vocab = css
    model = mx.build_seeded(dataclasses.replace(TINY, blocks=2), vocab, 0)
    att = mx.word_attention(model, test, 0, max_words=3)
    assert att.text == test.split.query_text(test.split.queries[0]) and len(att.words) <= 3
    assert att.pixels.dtype == torch.uint8 and att.pixels.shape == (3, 32, 32)
    assert len(att.maps) == 2 and att.stages == ["3", "4"] and set(att.maps[0]) == {"3", "4"}
    fig = mf.attention_figure(att)
    assert len(fig.axes) == 2 * 2 * (len(att.words) + 1)
    ex = mx.retrieval_examples(model, test, [0, 3], k=4)
    assert ex.results.shape == (2, 4, 3, 32, 32) and ex.hits.shape == (2, 4) and ex.texts[1] == test.split.query_text(
        test.split.queries[3])
    assert torch.equal(ex.references[1], test.store.pixels[test.split.queries[3].source])
    assert len(mf.retrieval_figure(ex).axes) == 2 * 5
    log = pd.DataFrame({"step": [1, 2, 3], "loss": [3.0, 2.0, 1.0], "R@10": [None, 10.0, 20.0]})
    assert len(mf.curves_figure({"MAAF": mx.RunResult({}, log)}).axes) == 2
    matplotlib.pyplot.close("all")


def test_retrieval_examples_exclude_the_reference_and_mark_hits(css):
    _, test, vocab = css
    model = mx.build_seeded(TINY, vocab, 0)
    picks = list(range(len(test.split.queries)))
    ex = mx.retrieval_examples(model, test, picks, k=3)
    gallery = F.normalize(embed(lambda i: model.embed_catalog(md.normalize_pixels(test.store.get(i))),
                                 len(test.split.images), normalize=False), dim=-1)
    for row, q in enumerate(test.split.queries):
        with torch.no_grad():
            s = F.normalize(model.compose(md.normalize_pixels(test.store.get([q.source])), [q.captions[0]]), dim=-1)
        s = (s @ gallery.T)[0]
        s[q.source] = -np.inf
        top = s.topk(3).indices.tolist()
        assert q.source not in top
        assert torch.equal(ex.results[row], test.store.pixels[top])
        assert ex.hits[row].tolist() == [test.split.labels[g] == q.target_label for g in top]


def hits_result(per_group: dict):
    """A RunResult whose per-query hits are given: {group: {k: list of 0/1}}."""
    hits = {g: {k: torch.tensor(v, dtype=torch.bool) for k, v in ks.items()} for g, ks in per_group.items()}
    recall = {g: {f"R@{k}": 100 * float(v.float().mean()) for k, v in ks.items()} for g, ks in hits.items()}
    return mx.RunResult(recall, None, hits=hits)


def test_per_query_hits_match_a_naive_loop_and_recall_at_k():
    from visualsearch.evaluate import recall_at_k

    g = torch.Generator().manual_seed(0)
    gallery_labels = torch.randint(0, 6, (40,), generator=g)
    query_labels = torch.randint(0, 8, (25,), generator=g)  # labels 6, 7: no relevant item at all
    indices = torch.stack([torch.randperm(40, generator=g)[:7] for _ in range(25)])
    ks = (1, 3, 7, 50)  # 50: above the retrieved columns
    got = mx.per_query_hits(indices, query_labels, gallery_labels, ks)
    for k in ks:
        naive = [any(int(gallery_labels[indices[q, r]]) == int(query_labels[q]) for r in range(min(k, 7)))
                 for q in range(25)]
        assert got[k].tolist() == naive
        assert float(got[k].float().mean()) == pytest.approx(recall_at_k(indices, query_labels, gallery_labels, [k])[k])
    assert got[50].tolist() == got[7].tolist() and not got[1][query_labels >= 6].any()


def test_item_scores_pool_the_categories_and_average_the_named_ks():
    r = hits_result({"dress": {10: [1, 0, 0], 50: [1, 1, 0]}, "shirt": {10: [0, 1], 50: [1, 1]}})
    assert mc.metric_ks("(hit@10+hit@50)/2 per Fashion IQ-style query") == (10, 50)
    assert mc.metric_ks("hit@1 per CSS-style query") == (1,)
    with pytest.raises(ValueError, match="names no hit@k"):
        mc.metric_ks("R@1")
    assert mc.item_scores(r, ["dress", "shirt"], (10, 50)).tolist() == [1.0, 0.5, 0.0, 0.5, 1.0]
    assert mc.item_scores(r, ["shirt"], (10,)).tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="no per-query hits"):
        mc.item_scores(r, ["dress"], (1,))
    refs = {"dress": torch.tensor([0, 0, 2]), "shirt": torch.tensor([0, 1])}
    clusters = mc.clusters_of(refs)  # (category, reference): the same reference index in two categories differs
    assert clusters[0] == clusters[1] and len(set(clusters.tolist())) == 4


def test_a_comparison_claim_is_decided_by_the_one_test_on_pooled_seeds():
    claim = vclaims.Claim("css_beats_baselines", "MAAF beats existing approaches on Fashion IQ and CSS", "paper",
                          "MAAF", ["TIRG", "image only"], "hit@1 per CSS-style query")
    maaf = {0: [1, 1, 1, 0, 1, 1], 1: [1, 1, 0, 1, 1, 1]}
    tirg = {0: [0, 1, 0, 0, 0, 1], 1: [0, 0, 0, 1, 0, 0], 2: [1, 1, 1, 1, 1, 1]}  # seed 2: not shared, left out
    image = {0: [0, 0, 0, 0, 1, 0], 1: [1, 0, 0, 0, 0, 0]}
    by_method = {m: {s: hits_result({"test": {1: v}}) for s, v in runs.items()}
                 for m, runs in (("MAAF", maaf), ("TIRG", tirg), ("image only", image))}
    refs = {"test": torch.tensor([0, 0, 1, 2, 3, 3])}
    rep = RecordingReporter()
    scored = mc.decide_comparison(rep, claim, by_method, refs)
    (got_claim, decision), = rep.decided
    assert got_claim is claim and scored.seeds == [0, 1] and scored.scores["TIRG"].shape == (2, 6)
    direct = vclaims.decide(claim, {"MAAF": torch.tensor([maaf[0], maaf[1]]), "TIRG": torch.tensor([tirg[0], tirg[1]]),
                                    "image only": torch.tensor([image[0], image[1]])},
                            torch.tensor([0, 0, 1, 2, 3, 3]), cluster_name=mc.CLUSTERS)
    assert decision == direct and decision.seeds == 2 and "4 reference images" in decision.criterion
    assert decision.better_score == pytest.approx(10 / 12)
    # a compared method that was not trained: recorded as not decided, never skipped silently
    rep = RecordingReporter()
    assert mc.decide_comparison(rep, claim, {"MAAF": by_method["MAAF"], "TIRG": by_method["TIRG"]}, refs) is None
    (text, passed, detail, _, fields), = rep.checks
    assert not passed and "image only" in detail and fields["claim_id"] == claim.id and fields["seeds"] == 0


def place_items(seed_ratios: dict) -> dict:
    """place_attention_items-style rows: {seed: {(query, word, reference): {block: ratio}}}."""
    return {seed: pd.DataFrame([(q, r, w, b, "all", v) for (q, w, r), blocks in words.items() for b, v in blocks.items()]
                               + [(q, r, w, 1, "layer3", 9.0) for (q, w, r) in words],  # other stages: not decided on
                               columns=["query", "reference", "word", "block", "stage", "ratio"])
            for seed, words in seed_ratios.items()}


def test_the_attention_claim_needs_every_block_below_the_average_token():
    claim = vclaims.Claim("words_avoid_named_region", "words avoid \"attending\" to the image region they refer to",
                          "paper", "average image token", ["named region (block 1)", "named region (block 2)"],
                          "attention of a CSS-style place word, relative to its average image token", proxy="why")
    low = {(q, 2, q // 2): {1: 0.5 + 0.01 * q, 2: 0.6} for q in range(12)}
    items = place_items({0: low, 1: {**low, (99, 1, 50): {1: 0.1, 2: 0.1}}})  # a word only seed 1 has: left out
    rep = RecordingReporter()
    scored = mc.decide_words_avoid(rep, claim, items)
    (_, decision), = rep.decided
    assert decision.passed and decision.seeds == 2 and scored.scores["named region (block 2)"].shape == (2, 12)
    assert scored.scores[mc.AVERAGE_TOKEN].tolist() == [[1.0] * 12] * 2 and "6 reference images" in decision.criterion
    assert decision.worse_score == pytest.approx(0.6)  # block 2 (0.6 against 0.555 in block 1): the closest
    assert "vs named region (block 1) 0.555" in decision.detail
    high = {k: {1: v[1], 2: 1.3} for k, v in low.items()}  # block 2 looks at the named cell: the claim fails
    rep = RecordingReporter()
    mc.decide_words_avoid(rep, claim, place_items({0: high, 1: high}))
    assert not rep.decided[0][1].passed
    one_block = {k: {1: v[1]} for k, v in low.items()}  # a 1-block model cannot decide a block-2 claim
    rep = RecordingReporter()
    assert mc.decide_words_avoid(rep, claim, place_items({0: one_block})) is None
    assert "block 2" in rep.checks[0][2] and not rep.checks[0][1]
    with pytest.raises(ValueError, match="named region"):
        mc.block_of("block 2")


@pytest.mark.parametrize("preset", ["smoke", "default", "paper"])
def test_declared_claims_name_runs_the_plan_makes(preset):
    """Every declared claim parses, is one the code decides, names methods the plan trains (with claim_seeds
    seeds) and a metric the evaluation computes; the paper's claims are the paper's."""
    from visualsearch.config import load_params

    p = load_params("maaf_ablations", preset)
    declared = mc.declared(p)
    assert set(declared) == set(mc.CLAIM_DATASETS) and {c.source for c in declared.values()} == {"paper"}
    runs = mx.plan_runs(p, None, mc.seeded_runs(p))
    for c in declared.values():
        d = mc.CLAIM_DATASETS[c.id]
        if c.id in mc.ATTENTION_CLAIMS:
            blocks = dict(p.dataset_model[d]).get("blocks") or p.model["blocks"]
            assert {mc.block_of(m) for m in c.worse} == set(range(1, blocks + 1)) and c.proxy
            continue
        assert set(mc.metric_ks(c.metric)) <= {1, 5, 10, 50}  # the ks every run is evaluated at
        methods = {mt.method_name(r.base) for r in runs if r.dataset == d}
        assert {c.better, *c.worse} <= methods, (c.id, methods)
        for m in (c.better, *c.worse):
            seeds = sorted(r.spec.seed for r in runs if r.dataset == d and mt.method_name(r.base) == m
                           and not r.name.startswith("ablation"))
            assert seeds == list(range(p.seed, p.seed + p.claim_seeds)), (c.id, m, seeds)
    assert p.claim_seeds >= (1 if preset == "paper" else 2)
    assert mc.declared(p)["fiq_beats_baselines"].metric.startswith("(hit@10+hit@50)/2")
    assert declared["f200k_competitive"].threshold < 0  # "competitive": within d


def test_plan_runs_seeds_only_the_runs_a_claim_compares():
    from visualsearch.config import load_params

    p = load_params("maaf_ablations", "smoke", {"claim_seeds": 3})
    runs = mx.plan_runs(p, None, {"css": {"MAAF", "tirg"}})
    css = {r.name: r for r in runs if r.dataset == "css"}
    assert {"MAAF, seed 1", "MAAF, seed 2", "tirg, seed 1", "tirg, seed 2"} <= set(css)
    assert "concat, seed 1" not in css and not any(", seed" in r.name for r in runs if r.dataset == "fashion200k")
    again = css["tirg, seed 2"]
    assert again.base == "tirg" and again.cfg == css["tirg"].cfg and again.spec == dataclasses.replace(css["tirg"].spec, seed=2)
    assert css["MAAF, seed 1"].keep_model and not css["MAAF, seed 1"].eval_every  # kept for attention; no curve
    fake = {(r.dataset, r.name): r.spec.seed for r in runs}
    grouped = mx.seed_results(runs, fake, "css")
    assert grouped["MAAF"] == {0: 0, 1: 1, 2: 2} and grouped["concat"] == {0: 0}
    assert "ablation: mean pooling" not in mx.seed_results(runs, fake, "fashioniq")
    with pytest.raises(ValueError, match="does not make"):
        mx.plan_runs(p, None, {"css": {"add"}})


def test_claim_and_attention_tables():
    claim = vclaims.Claim("b2w_beats_baselines", "t", "paper", "MAAF", ["TIRG"], "hit@1 per query")
    decision = vclaims.decide(claim, {"MAAF": torch.tensor([[1., 1, 0], [1, 0, 0]]), "TIRG": torch.zeros(2, 3)})
    scored = mc.Scored(claim, "birds_to_words", [0, 1], {"MAAF": np.array([[1., 1, 0], [1, 0, 0]]),
                                                          "TIRG": np.zeros((2, 3))}, decision)
    df = mt.claim_score_rows([scored], {"birds_to_words": "Birds-to-Words"})
    get = lambda m, k: df[(df.method == m) & (df.metric == k)]["reproduced"].item()
    assert get("MAAF", "seed 0") == pytest.approx(2 / 3) and get("MAAF", "seed 1") == pytest.approx(1 / 3)
    assert get("MAAF", "seeds pooled") == pytest.approx(0.5) and get("TIRG", "items") == 3
    assert set(df.dataset) == {"b2w_beats_baselines (Birds-to-Words)"} and set(df["item score"]) == {"hit@1 per query"}
    items = place_items({0: {(0, 1, 0): {1: 0.5, 2: 1.5}, (1, 1, 0): {1: 0.7, 2: 0.5}}})
    rows = mt.place_attention_rows(items)
    assert rows[rows.metric == "block 1 all: place / mean attention"]["reproduced"].item() == pytest.approx(0.6)
    assert rows[rows.metric == "block 2 all: place / mean attention"]["words"].item() == 2
    assert set(rows.method) == {"MAAF (seed 0)"}


_EMPTY_SPLIT = md.FeedbackSplit("x", "test", [], [], [])


def test_the_cache_and_the_figures_key_on_the_right_code(tmp_path):
    """Runs are cached under the experiment module's import closure; figures, tables and claims import no
    model and no training (restyling a figure retrains nothing)."""
    from pathlib import Path

    from visualsearch.cache import import_closure

    assert mx.result_cache(tmp_path).code == "visualsearch.papers.maaf.experiment"
    lib = Path(mx.__file__).resolve().parents[2]
    for module in ("figures", "tables", "claims"):
        closure = {f.relative_to(lib).as_posix() for f in import_closure([f"visualsearch.papers.maaf.{module}"], lib)}
        assert not any(f.startswith("models/") or f == "train.py" or f.endswith("experiment.py") for f in closure), closure


def test_from_trained_runs_the_model_once_and_reads_the_view_back(monkeypatch, tmp_path):
    """What a figure reads off a trained model is cached under the run and the call: a rerun restores no model."""
    from types import SimpleNamespace

    from visualsearch.cache import ResultCache

    restored = []
    monkeypatch.setattr(mx, "restore", lambda cfg, vocab, seed, state: restored.append(seed) or f"model-{seed}")
    run = mx.Run("MAAF", "css", mx.MAAFConfig(dim=8), mx.TrainSpec(steps=3, seed=4), keep_model=True)
    datasets = {"css": SimpleNamespace(vocab=None, fingerprint="fp1")}
    results = {("css", "MAAF"): SimpleNamespace(state={"w": 1})}
    cache = ResultCache(tmp_path, code=mx.__name__)

    def view(model, n, k=1):
        return (model, n, k)

    assert mx.from_trained(cache, run, datasets, results, view, 3, k=2) == ("model-4", 3, 2)
    assert mx.from_trained(cache, run, datasets, results, view, 3, k=2) == ("model-4", 3, 2)
    assert restored == [4]                                              # the second call read the cache
    mx.from_trained(cache, run, datasets, results, view, 5, k=2)        # another call: computed
    datasets["css"].fingerprint = "fp2"                                 # other data: computed
    mx.from_trained(cache, run, datasets, results, view, 3, k=2)
    assert restored == [4, 4, 4]
    results[("css", "MAAF")].state = None
    with pytest.raises(ValueError, match="kept no weights"):
        mx.from_trained(cache, run, datasets, results, view, 9)
