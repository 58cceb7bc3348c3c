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

from visualsearch.claims import beats_all
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
        for q in split.queries:
            src = md.normalize_pixels(test.store.pixels[[q.source]])
            s = (F.normalize(model.compose(src, [q.captions[0]]), dim=-1) @ gallery.T)[0]
            s[q.source] = -np.inf  # the reference never retrieves itself
            order = torch.argsort(s, descending=True, stable=True).tolist()
            first = next(r for r, g in enumerate(order) if split.labels[g] == q.target_label)
            for k in hits:
                hits[k] += first < k
    for k in hits:
        assert got.percent()[f"R@{k}"] == pytest.approx(100 * hits[k] / len(split.queries))


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
    longer = next(r for r in runs if r.name.startswith("TIRG, ") and r.dataset == "css")
    assert longer.cfg.fusion == "tirg" and longer.spec.steps == p.longer_tirg * p.steps["css"]
    bad = load_params("maaf_ablations", "smoke", {"ablations": [{"name": "x", "change": {"depth": 3}}]})
    with pytest.raises(ValueError, match="unknown switches"):
        mx.plan_runs(bad, None)


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

    def make_dying(loss="softmax"):
        step = real(loss)

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


def test_ablation_changes_and_margins():
    rows = mt.ablation_rows({"full": result((20, 30, 40), (50, 60, 70)), "no text": result((10, 30, 40), (50, 60, 70))},
                            {"no text": "text_in_pooling=False"}, "full")
    change = rows[(rows.metric == "change vs full model")].set_index("method")["reproduced"]
    assert change["full"] == 0 and change["no text (text_in_pooling=False)"] == pytest.approx(-10 / 6)
    ok, detail = beats_all({"MAAF": 50.0, "TIRG": 40.0, "concat": 52.0}, "MAAF", ["TIRG", "concat"], 100)
    assert not ok and "vs TIRG 40.0: +10.0" in detail and "vs concat 52.0: -2.0" in detail and "s.e. ~5.0" in detail
    assert beats_all({"MAAF": 50.0, "TIRG": 40.0}, "MAAF", ["TIRG"], 100)[0]


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


class FakeReporter:
    def __init__(self):
        self.checks = []

    def check(self, claim, passed, detail, measured=None):
        self.checks.append((claim, passed, detail, measured))
        return bool(passed)


def test_claims_check_maaf_against_the_baselines_and_the_named_places():
    fiq = md.PreparedDataset("fashioniq", "d", [], {c: md.SplitInputs(
        dataclasses.replace(_EMPTY_SPLIT, queries=[None] * 10), None) for c in ("dress", "shirt", "toptee")},
        None, "f", SkipLog())
    rep = FakeReporter()
    results = {"MAAF": result((20, 30, 40), (50, 60, 70)), "TIRG": result((10, 10, 10), (30, 30, 30)),
               "TIRG, 2x steps": result((20, 30, 40), (50, 60, 60)), "concat": result((1, 1, 1), (1, 1, 1)),
               "add": result((90, 90, 90), (90, 90, 90))}
    assert mc.beats_on_fashion_iq(rep, results, fiq)  # 45 against 20, 43.3 (TIRG trained longer) and 1
    claim, passed, detail, measured = rep.checks[-1]
    assert claim == "MAAF beats TIRG, concat and image-only on Fashion IQ-style data ((R@10+R@50)/2)" and passed
    assert measured == 45 and "over 30 queries" in detail and "vs add" not in detail and "vs concat" in detail
    ok, text = beats_all({m: mt.fiq_score(r) for m, r in results.items()}, "MAAF",
                         ["TIRG", "TIRG, 2x steps", "concat"], 30)
    assert (passed, detail) == (ok, text)
    css = md.PreparedDataset("css", "d", [], {"test": md.SplitInputs(
        dataclasses.replace(_EMPTY_SPLIT, queries=[None] * 4), None)}, None, "f", SkipLog())
    css_results = {m: mx.RunResult({"test": {"R@1": v}}, None) for m, v in
                   (("MAAF", 50.0), ("TIRG", 40.0), ("image only", 20.0))}
    assert mc.beats_on_css(rep, css_results, css)
    assert rep.checks[-1][0] == "MAAF beats TIRG, concat and image-only on CSS-style scenes (R@1)"
    assert rep.checks[-1][2] == beats_all({"MAAF": 50.0, "TIRG": 40.0, "image only": 20.0}, "MAAF",
                                          ["TIRG", "image only"], 4)[1]
    places = pd.DataFrame({"block": [1, 2], "stage": ["layer3", "layer4"], "queries": [5, 6], "ratio": [0.5, 1.25]})
    assert not mc.words_avoid_named_places(rep, places)
    claim, passed, detail, measured = rep.checks[-1]
    assert claim.startswith("Words attend less to the image region they name")
    assert detail == "block 1 layer3: 0.50 over 5 words; block 2 layer4: 1.25 over 6 words" and measured == 0.875


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
