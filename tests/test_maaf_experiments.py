"""The MAAF notebook's engine: image tables, batches as pure functions of the step, the evaluation protocol
against a naive loop, caching, frozen maps, weights pretraining, and learning above chance."""
import dataclasses
from dataclasses import asdict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from visualsearch import maaf_experiments as mx
from visualsearch.cache import ResultCache
from visualsearch.data.errors import SkipLog
from visualsearch.data.scenes import ScenesWorldConfig, build_css
from visualsearch.data.text_feedback import read_css
from visualsearch.models.blocks import ResNetTrunk
from visualsearch.models.maaf import MAAFConfig
from visualsearch.models.text import Vocabulary

TINY = MAAFConfig(dim=32, heads=4, ff_width=32, blocks=1, backbone="resnet18", backbone_frozen=True, image_size=32)


@pytest.fixture(scope="module")
def css(tmp_path_factory):
    root = tmp_path_factory.mktemp("css")
    build_css(root, asdict(ScenesWorldConfig(train_scenes=40, test_scenes=12, image_size=32)))
    train, test = read_css(root, "train"), read_css(root, "test")
    vocab = Vocabulary.build(train.texts())
    return (mx.SplitInputs(train, mx.ImageTable.load(train.images, 32)),
            mx.SplitInputs(test, mx.ImageTable.load(test.images, 32)), vocab)


def test_image_table_crops_and_counts_missing(tmp_path):
    Image.new("RGB", (40, 20), (255, 0, 0)).save(tmp_path / "a.png")
    skips = SkipLog()
    table = mx.ImageTable.load([tmp_path / "a.png", tmp_path / "missing.png"], 16, skips)
    assert table.pixels.shape == (2, 3, 16, 16) and table.pixels.dtype == torch.uint8
    assert (table.pixels[0, 0] == 255).all() and (table.pixels[1] == 128).all()
    assert skips.reasons["missing image"] == 1


def test_augment_is_reproducible_and_normalised():
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    a = mx.augment(x, torch.Generator().manual_seed(3))
    b = mx.augment(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == (4, 3, 16, 16)
    assert not torch.equal(a, mx.augment(x, torch.Generator().manual_seed(4)))


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
        gallery = F.normalize(model.embed_catalog(mx.normalize_pixels(test.table.pixels)), dim=-1)
        hits = {1: 0, 5: 0, 10: 0}
        for q in split.queries:
            src = mx.normalize_pixels(test.table.pixels[[q.source]])
            s = (F.normalize(model.compose(src, [q.captions[0]]), dim=-1) @ gallery.T)[0]
            s[q.source] = -np.inf  # the reference never retrieves itself
            order = torch.argsort(s, descending=True, stable=True).tolist()
            first = next(r for r, g in enumerate(order) if split.labels[g] == q.target_label)
            for k in hits:
                hits[k] += first < k
    for k in hits:
        assert got.recall[f"R@{k}"] == pytest.approx(100 * hits[k] / len(split.queries))


def test_frozen_maps_give_the_same_embeddings_as_pixels(css):
    _, test, vocab = css
    model = mx.build_seeded(TINY, vocab, 0).eval()
    key = mx.backbone_key(TINY, 0)
    test.maps[key] = mx.FrozenMaps.compute(mx.seeded_trunk(TINY, 0), test.table, ["3", "4"])
    a = mx.evaluate(model, test, ks=(1, 10))
    b = mx.evaluate(model, test, ks=(1, 10), maps_key=key)
    assert a.recall == pytest.approx(b.recall, abs=2.0)  # float16 maps: ties may move by a rank
    del test.maps[key]


@pytest.mark.slow
def test_training_learns_above_chance_and_is_cached(css, tmp_path):
    train, test, vocab = css
    cache = ResultCache(tmp_path)
    cfg = TINY
    for g in (train, test):
        g.maps[mx.backbone_key(cfg, 0)] = mx.FrozenMaps.compute(mx.seeded_trunk(cfg, 0), g.table, ["3", "4"])
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
    assert mx.evaluate(model, test, ks=(10,)).recall["R@10"] == pytest.approx(result.recall["test"]["R@10"], abs=2.0)


def test_seeded_trunk_is_the_models_trunk(css):
    _, _, vocab = css
    for fusion in ("maaf", "tirg"):
        cfg = dataclasses.replace(TINY, fusion=fusion)
        model = mx.build_seeded(cfg, vocab, 3)
        assert torch.equal(model.trunk.layer4[0].conv1.weight, mx.seeded_trunk(cfg, 3).layer4[0].conv1.weight)


def test_pretrained_weights_load_into_the_models(tmp_path):
    state = mx.pretrain_trunk("resnet18", image_size=32, steps=2, n_photos=16, batch_size=8)
    acc = state.pop("__accuracy__")
    assert set(acc) == set(mx.ATTRIBUTE_HEADS)
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
    straight = mx.pretrain_trunk(**args)
    real_step, calls = torch.optim.SGD.step, {"n": 0}

    def dying(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 6:  # in step 6, after its forward pass moved the BatchNorm statistics, before its update
            raise KeyboardInterrupt
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.SGD, "step", dying)
    with pytest.raises(KeyboardInterrupt):
        mx.pretrain_trunk(**args, run_dir=tmp_path, checkpoint_every=4)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["step"] == 5  # completed steps kept
    monkeypatch.setattr(torch.optim.SGD, "step", real_step)
    with pytest.raises(CheckpointMismatch):
        mx.pretrain_trunk(**{**args, "lr": 0.1}, run_dir=tmp_path, checkpoint_every=4)
    resumed = mx.pretrain_trunk(**args, run_dir=tmp_path, checkpoint_every=4)
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
    straight = mx.run_experiment(*args, ResultCache(tmp_path / "a"), keep_model=True)
    torch.set_num_threads(1)  # a process's first retrieval may have reset it
    cache = ResultCache(tmp_path / "b")
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
        mx.backbone_weights_file(load_params("maaf_ablations", "paper", data_root=tmp_path), ResultCache(tmp_path))
    torch.save({}, tmp_path / "w.pth")
    assert mx.backbone_weights_file(params("w.pth"), ResultCache(tmp_path)) == str(tmp_path / "w.pth")
    assert mx.backbone_weights_file(params(str(tmp_path / "w.pth")), ResultCache(tmp_path)) == str(tmp_path / "w.pth")
    assert mx.backbone_weights_file(params("none"), ResultCache(tmp_path)) is None
    a, b = mx.weights_key(tmp_path / "w.pth"), mx.weights_key(None)
    torch.save({"x": torch.ones(1)}, tmp_path / "w.pth")
    assert b == {} and a != mx.weights_key(tmp_path / "w.pth")  # a key names the weights, not only the file
