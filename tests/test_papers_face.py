"""The face paper's home (visualsearch.papers.face): data loading (world and real formats), scoring, the grid's
runs, tables; and that presentation code stays out of what the cache keys on."""
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.metrics import confusion_matrix

from visualsearch.data.errors import DataFormatError
from visualsearch.data.faces import EMOTIONS
from visualsearch.data.images import ImageStore
from visualsearch.papers.face import tables
from visualsearch.papers.face import experiment as fx
from visualsearch.papers.face.data import ATTRIBUTES, FaceData, FaceSplit, load_data

TINY_NET = {"widths": [4, 8, 8, 16], "blocks": [1, 1, 1, 1], "stem_stride": 1, "input_size": 16}
SECTION = {"steps": 30, "batch_size": 16, "lr": 0.01, "weight_decay": 0.0, "decay_at": [0.8], "feature_cache_mb": 100}


def _params(**extra):
    p = {"seed": 0, "seeds": [0, 1], "depths": [0, 2, 4], "model": TINY_NET, "trunk": SECTION, "finetune": SECTION,
         "control": {"probe_width": 8}, "data_root": None, "precision": "bf16",
         "world": {"seed": 1, "image_size": 24, "n_pretrain_identities": 6, "n_train_identities": 4,
                   "n_val_identities": 4, "photos_per_identity": 5}}
    p.update(extra)
    return p


def test_age_mae_from_bin_centres():
    pred = torch.tensor([3, 8, 0])
    true = torch.tensor([3, 6, 1])
    years = torch.tensor([27.0, float("nan"), 4.0])
    # |24.5-27| + |77.5-54.5| (true bin centre used where years unknown) + |1-4|
    assert fx.age_mae_years(pred, true, years) == pytest.approx((2.5 + 23.0 + 3.0) / 3)


def test_score_ignores_unlabelled_and_confusion_matches_sklearn():
    split = FaceSplit(ImageStore(4, torch.zeros(5, 3, 4, 4, dtype=torch.uint8)),
                         {a: torch.tensor([0, 1, -1, 1, 2]) for a in ATTRIBUTES},
                         torch.zeros(5, dtype=torch.long), torch.full((5,), float("nan")))
    logits = torch.eye(3)[torch.tensor([0, 2, 1, 1, 2])]
    s = fx.score("emotion", logits, split)
    assert s["accuracy"] == pytest.approx(3 / 4) and s["n_test"] == 4
    cm = tables.confusion(s["pred"], split.labels["emotion"], 3)
    assert (cm == confusion_matrix([0, 1, 1, 2], [0, 2, 1, 2], labels=[0, 1, 2])).all()
    assert "mae_years" in fx.score("age", logits, split)


def _runs(gains):
    """Synthetic runs: accuracy(attr, depth, seed) = base + gain if depth < 4, with seed noise."""
    rows = []
    for a, (base, gain, noise) in gains.items():
        for d in range(5):
            for s in range(3):
                rows.append({"attribute": a, "method": "finetune", "depth": d, "seed": s, "trainable_params": 10,
                             "accuracy": base + (gain if d == 1 else gain / 2 if d < 4 else 0) + noise * (s - 1),
                             "mae_years": np.nan})
    return pd.DataFrame(rows)


def test_summarize_mean_and_spread():
    runs = _runs({a: (0.5, 0.1, 0.05) for a in ATTRIBUTES})
    s = tables.summarize(runs).set_index(["attribute", "method", "depth"])
    row = s.loc[("age", "finetune", 1)]
    assert row["mean"] == pytest.approx(0.6) and row["std"] == pytest.approx(0.05) and row["count"] == 3
    assert row["max"] - row["min"] == pytest.approx(0.1)


def test_fit_classifier_learns_and_is_reproducible(one_thread):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 6, generator=g)
    y = (x[:, 0] > 0).long()
    def run():
        torch.manual_seed(123)
        return fx.fit_classifier(torch.nn.Linear(6, 2), x, y, {**SECTION, "lr": 0.05}, seed=3).model
    a, b = run(), run()
    assert torch.equal(a.weight, b.weight)
    assert (a(x).argmax(1) == y).float().mean() > 0.9


@pytest.fixture
def one_thread():
    """Tiny models run faster on one thread, and do not stall when other processes share the cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny_world_data():
    return load_data(_params())


def test_load_world_splits(tiny_world_data):
    d = tiny_world_data
    assert len(d.pretrain) == 30 and len(d.train) == 20 and len(d.test) == 20 and d.n_identities == 6
    assert d.pretrain.images.pixels.shape[1:] == (3, 16, 16) and d.pretrain.images.pixels.dtype == torch.uint8
    assert set(d.vocab["emotion"]) <= set(EMOTIONS) and (d.train.labels["gender"] >= 0).all()
    assert sorted(d.test.identity.unique().tolist()) == [0, 1, 2, 3]  # test people indexed among themselves
    assert not torch.isnan(d.test.age_years).any()


@pytest.mark.slow
def test_grid_runs_multihead_and_feature_bank_agree(tiny_world_data, one_thread):
    d = tiny_world_data
    p = _params()
    torch.manual_seed(0)
    trunk, info, key = fx.train_identity_trunk(d, p)
    assert 0 <= info["test_identity_rank1"] <= 1
    torch.set_num_threads(1)  # the rank-1 retrieval leaves torch at numba's thread count: 15x slower on busy cores
    # frozen features kept in memory or recomputed per batch: the same run
    a = fx.finetune_run(trunk, d, fx.FeatureBank(trunk, d, "cpu", 100), "emotion", "finetune", 2, 0, p, keep_state=True)
    b = fx.finetune_run(trunk, d, fx.FeatureBank(trunk, d, "cpu", 0), "emotion", "finetune", 2, 0, p)
    assert a["accuracy"] == pytest.approx(b["accuracy"]) and torch.equal(a["pred"], b["pred"])
    runs_df, runs = fx.run_grid(trunk, key, d, p, progress=False)
    assert len(runs_df) == (3 * 2 * 4 + 4) * 2  # (finetune + probe) x depths x attributes + scratch, x seeds
    pattern = {"age": 0, "gender": 4, "ethnicity": 2, "emotion": 2}
    net = fx.build_multihead(trunk, pattern, runs, d, seed=0)
    one = fx.evaluate_multihead(net, d)
    for attr, depth in pattern.items():  # one pass of the tree = the separately trained branches
        assert torch.equal(one[attr]["pred"], runs[(attr, "finetune", depth, 0)]["pred"])


def test_real_formats_with_fer2013(tmp_path):
    root = tmp_path
    for who in ("ann", "bob"):
        for k in range(2):
            (root / "ids" / who).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((20, 20, 3), 50 + k, np.uint8)).save(root / "ids" / who / f"{k}.jpg")
    (root / "ff" / "train").mkdir(parents=True)
    for i in (1, 2):
        Image.fromarray(np.full((20, 20, 3), 90, np.uint8)).save(root / "ff" / "train" / f"{i}.jpg")
    hdr = "file,age,gender,race,service_test\n"
    (root / "ff" / "train.csv").write_text(hdr + "train/1.jpg,20-29,Male,White,False\ntrain/2.jpg,3-9,Female,Black,True\n")
    (root / "ff" / "val.csv").write_text(hdr + "train/2.jpg,3-9,Female,Black,True\n")
    px = " ".join(["9"] * 2304)
    (root / "fer.csv").write_text(f"emotion,pixels,Usage\n3,{px},Training\n0,{px},PublicTest\n6,{px},Training\n")
    p = _params(data_root=str(root), data={"identity_dir": "ids", "min_images_per_identity": 2,
                                           "fairface_train": "ff/train.csv", "fairface_val": "ff/val.csv",
                                           "fairface_images": "ff", "fer2013": "fer.csv"})
    d = load_data(p)
    assert d.n_identities == 2 and len(d.pretrain) == 4
    assert d.vocab["emotion"] == ("angry", "happy", "neutral")  # FER order, only the emotions present
    assert len(d.train) == 4 and len(d.test) == 2
    assert d.train.labels["emotion"].tolist() == [-1, -1, 1, 2] and d.train.labels["gender"].tolist() == [0, 1, -1, -1]
    assert d.test.labels["emotion"].tolist() == [-1, 0] and d.test.images.pixels.shape[1:] == (3, 16, 16)


class _Interrupt(Exception):
    pass


def _interrupted_train(monkeypatch, after_steps):
    """Make the experiment's trainings die after `after_steps` optimizer steps (as a killed run would)."""
    real = fx.train

    def train(model, step_fn, batch_fn, cfg, **kw):
        calls = {"n": 0}

        def dying_step(m, batch):
            if calls["n"] == after_steps:
                raise _Interrupt(f"killed at step {after_steps}")
            calls["n"] += 1
            return step_fn(m, batch)
        return real(model, dying_step, batch_fn, cfg, **kw)
    monkeypatch.setattr(fx, "train", train)


def test_killed_trunk_training_resumes_to_the_uninterrupted_weights(tiny_world_data, one_thread, tmp_path,
                                                                     monkeypatch):
    """The trunk checkpoints into the cache's run folder of its entry; killed mid-way and rerun, it resumes from
    the checkpoint and ends with exactly the weights of a run that went straight through."""
    d = tiny_world_data
    p = _params(checkpoint_every=4, trunk={**SECTION, "steps": 12})
    # (each training on one thread: the rank-1 retrieval after a training leaves torch at numba's thread count,
    # and a sum over 2 threads rounds differently)
    torch.set_num_threads(1)
    straight, _, _ = fx.train_identity_trunk(d, p, fx.result_cache(tmp_path / "a" / "results"))
    cache = fx.result_cache(tmp_path / "b" / "results")
    key = {"data": d.fingerprint, "model": fx.asdict(fx.net_config(p)), "trunk": dict(p["trunk"]), "seed": p["seed"],
           "device": "cpu", "precision": p["precision"]}
    run_dir = cache.run_dir("face_trunk", key)
    _interrupted_train(monkeypatch, after_steps=6)
    torch.set_num_threads(1)
    with pytest.raises(_Interrupt):
        fx.train_identity_trunk(d, p, cache)
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 6 and not cache.path("face_trunk", key).is_file()  # killed: a checkpoint, no entry
    monkeypatch.undo()
    torch.set_num_threads(1)
    resumed, info, _ = fx.train_identity_trunk(d, p, cache)
    a, b = straight.state_dict(), resumed.state_dict()
    diff = [(k, (a[k].float() - b[k].float()).abs().max().item()) for k in a if not torch.equal(a[k], b[k])]
    assert a.keys() == b.keys() and not diff, diff
    assert not run_dir.exists()  # the stored entry replaces the checkpoints


def test_finetune_runs_checkpoint_into_their_own_run_dirs(tiny_world_data, one_thread, tmp_path, monkeypatch):
    """Every fine-tuning run of the grid (forked workers included) trains in the run folder of its own cache
    entry: two runs never share one."""
    d = tiny_world_data
    p = _params(seeds=[0], depths=[2, 4], finetune={**SECTION, "steps": 3}, trunk={**SECTION, "steps": 3},
                parallel={"workers": 2, "threads_per_worker": 1})
    cache = fx.result_cache(tmp_path / "results")
    trunk, _, key = fx.train_identity_trunk(d, p, cache)
    torch.set_num_threads(1)  # (see above)
    seen = []
    real = fx.fit_classifier

    def spy(*args, run_dir=None, **kw):
        seen.append(run_dir)
        return real(*args, run_dir=run_dir, **kw)
    monkeypatch.setattr(fx, "fit_classifier", spy)
    for job in fx.grid_jobs(p)[:3]:  # in this process (the forked workers call the same finetune_run)
        fx.cached_training(cache, "face_finetune", fx._job_key(key, p, job), lambda run_dir, job=job: fx.finetune_run(
            trunk, d, fx.FeatureBank(trunk, d, "cpu", 100), job[1], job[2], job[0], job[3], p, run_dir=run_dir))
    assert len(seen) == 3 and len(set(seen)) == 3 and all(r.parent.name == "face_finetune" for r in seen)
    monkeypatch.undo()
    misses = len(cache.misses)
    runs_df, _ = fx.run_grid(trunk, key, d, p, cache, progress=False)  # the rest in 2 forked workers
    assert len(runs_df) == len(fx.grid_jobs(p))
    # the workers' runs count as computed (the runner's cold/warm flag reads this from the provenance)
    assert cache.misses[misses:] == ["face_finetune"] * (len(fx.grid_jobs(p)) - 3)
    assert not any((cache.root.parent / "runs" / "face_finetune").iterdir())  # every run's folder removed once stored


def test_identity_table_says_in_words_when_retrieval_cannot_be_computed(tiny_world_data):
    info = {"test_identity_rank1": float("nan"), "train_acc_last10pct": 0.5}
    d = tiny_world_data
    no_ids = FaceData(d.pretrain, d.train, FaceSplit(d.test.images, d.test.labels,
                                                           torch.full_like(d.test.identity, -1), d.test.age_years),
                         d.vocab, d.n_identities, d.description, d.fingerprint)
    table, note = tables.identity_table(info, no_ids, "real faces")
    row = table[table.metric == "rank-1 identity retrieval, unseen people"].iloc[0]
    assert pd.isna(row["reproduced"]) and row["note"].startswith("not computable") and "identity" in note
    table, note = tables.identity_table({**info, "test_identity_rank1": 0.75}, d, "synthetic faces")
    assert table["reproduced"].tolist() == [0.75, 0.5] and note == "" and (table["note"] == "").all()


def test_missing_real_files_are_named_before_anything_is_read(tmp_path):
    (tmp_path / "identities").mkdir()
    p = _params(data_root=str(tmp_path), data={"identity_dir": "identities", "min_images_per_identity": 2,
                                               "fairface_train": "fairface_label_train.csv",
                                               "fairface_val": "fairface_label_val.csv", "fairface_images": ".",
                                               "fer2013": "fer2013.csv"})
    with pytest.raises(DataFormatError) as e:
        load_data(p)
    msg = str(e.value)
    assert "fairface_label_train.csv" in msg and "fairface_label_val.csv" in msg and "fer2013.csv" in msg
    assert "identities" not in msg.split("missing under the data root")[1]  # the folder that is there


def test_published_layout_reads_back_with_the_paper_presets_paths(tmp_path):
    """The writers' data root (FairFace's released columns, FER2013, identity folders) is what the paper preset's
    `data` paths read: emotion from FER2013 only, no identities in the attribute sets."""
    from visualsearch.config import load_params
    from visualsearch.data.faces import write_published_layout

    write_published_layout(tmp_path, {"seed": 1, "image_size": 24, "n_pretrain_identities": 4,
                                      "n_train_identities": 3, "n_val_identities": 3, "photos_per_identity": 5})
    header = (tmp_path / "fairface_label_train.csv").read_text().splitlines()[0]
    assert header == "file,age,gender,race,service_test"
    p = load_params("face_attribute_sharing", "paper", {"model": {"input_size": 16}}, data_root=tmp_path)
    d = load_data(p)
    assert d.n_identities == 4 and len(d.pretrain) == 20
    assert len(d.train) == 15 + 6 and len(d.test) == 15 + 6  # FairFace rows + FER2013 rows (2 per person)
    assert (d.train.labels["emotion"][:15] == -1).all() and (d.train.labels["emotion"][15:] >= 0).all()
    assert (d.test.identity == -1).all() and "FER2013" in d.description


def test_readme_names_what_the_paper_preset_reads():
    from test_papers_cfq import readme_names
    from visualsearch.config import load_params

    names = readme_names("face")
    d = load_params("face_attribute_sharing", "paper")["data"]
    assert {d["identity_dir"] + "/<person>/<image>.jpg", d["fairface_train"], d["fairface_val"], d["fer2013"],
            "train/", "val/"} <= names and d["fairface_images"] == "."


# ------------------------------------------------------------------ what the move to papers/face added

def _old_loop(fn, x, batch=3):
    """The per-module batch loop that predict / features_at / evaluate_multihead had before they used
    evaluate.embed: fn over consecutive slices, float rows on the CPU, concatenated."""
    with torch.no_grad():
        return torch.cat([fn(x[i:i + batch]).float().cpu() for i in range(0, len(x), batch)])


def test_the_shared_embedding_loop_gives_the_old_loops_numbers(tiny_world_data, one_thread):
    """predict, features_at, evaluate_multihead and the identity retrieval run through evaluate.embed
    (normalize=False): the same batches and operations as their old loops, so the same bits."""
    from visualsearch.evaluate import recall_at_k, retrieve
    from visualsearch.models.face import IdentityNet, prepare_images

    d = tiny_world_data
    torch.manual_seed(0)
    cfg = fx.net_config(_params())
    net = IdentityNet(cfg, d.n_identities).eval()
    trunk = net.trunk
    x = d.test.images.pixels
    for depth in (0, 2):
        old = _old_loop(lambda v: trunk(prepare_images(v), 0, depth), x)
        assert torch.equal(fx.features_at(trunk, d.test.images, depth, batch=3), old)
    feats = fx.features_at(trunk, d.test.images, 2)
    head = fx.make_attribute_branch(trunk, "probe", 2, 5, 8).eval()
    assert torch.equal(fx.predict(head, feats, batch=3), _old_loop(head, feats))
    whole = fx.FrozenPrefixNet(trunk, fx.make_attribute_branch(trunk, "finetune", 0, 5, 8), 0).eval()
    assert torch.equal(fx.predict(whole, x, batch=3), _old_loop(lambda v: whole(prepare_images(v)), x))
    pattern = {"age": 0, "gender": 4, "ethnicity": 2, "emotion": 2}
    multi = fx.MultiHeadFaceNet(trunk, {a: fx.make_branch(trunk, dep, len(d.vocab[a])) for a, dep in pattern.items()})
    one = fx.evaluate_multihead(multi, d, batch=3)
    for a in pattern:
        old = _old_loop(lambda v: multi(prepare_images(v))[a], x)
        assert torch.equal(one[a]["pred"], fx.score(a, old, d.test)["pred"])
        assert one[a]["accuracy"] == fx.score(a, old, d.test)["accuracy"]
    known = d.test.identity >= 0
    emb = _old_loop(lambda v: net.embed(prepare_images(v)), x[known], batch=256)
    top = retrieve(emb, emb, k=1, exclude="self")
    old_rank1 = recall_at_k(top.indices, d.test.identity[known], d.test.identity[known], ks=(1,))[1]
    assert fx.identity_rank1(net, d.test) == old_rank1


def test_the_splits_hold_their_images_in_an_image_store(tiny_world_data):
    d = tiny_world_data
    for split in (d.pretrain, d.train, d.test):
        assert isinstance(split.images, ImageStore) and split.images.size == 16 and len(split.images) == len(split)
        assert torch.equal(split.images.get([1, 0]), split.images.pixels[[1, 0]])


def test_presentation_code_imports_no_model_and_no_training():
    """tables, figures and claims draw from results: none of them reaches models/ or train.py, and the
    experiment's closure (what the cache keys on) holds none of them."""
    from pathlib import Path

    from visualsearch.cache import import_closure

    lib = Path(fx.__file__).resolve().parents[2]
    for module in ("tables", "figures", "claims"):
        closure = {f.relative_to(lib).as_posix() for f in import_closure([f"visualsearch.papers.face.{module}"], lib)}
        assert "train.py" not in closure and not any(f.startswith("models/") for f in closure), (module, closure)
    closure = {f.relative_to(lib).as_posix() for f in import_closure(["visualsearch.papers.face.experiment"], lib)}
    assert not closure & {"papers/face/tables.py", "papers/face/figures.py", "papers/face/claims.py", "report.py"}


def test_prediction_figure_draws_the_chosen_test_faces(tiny_world_data):
    import matplotlib
    matplotlib.use("Agg")
    from visualsearch.papers.face import figures

    d = tiny_world_data
    idx = figures.prediction_examples(d, 4)
    assert idx == sorted(idx) and len(set(idx)) == 4 and max(idx) < len(d.test)
    preds = {a: torch.zeros(len(d.test), dtype=torch.int16) for a in ATTRIBUTES}
    fig = figures.plot_predictions(d.test.images.get(idx), preds, d.test, d.vocab, idx)
    shown = [ax for ax in fig.axes if ax.images]
    first = d.test.images.get(idx[0])[0].permute(1, 2, 0).numpy()
    assert len(shown) == 4 and (shown[0].images[0].get_array() == first).all()
    import matplotlib.pyplot as plt
    plt.close(fig)


def test_precision_is_checked_and_both_precisions_learn(one_thread):
    """bf16 autocast (the default preset's) and fp32 both fit a separable problem; an unknown precision is refused."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 6, generator=g)
    y = (x[:, 0] > 0).long()
    for precision in ("fp32", "bf16"):
        m = fx.fit_classifier(torch.nn.Linear(6, 2), x, y, {**SECTION, "lr": 0.05}, seed=3, precision=precision).model
        assert (m(x).argmax(1) == y).float().mean() > 0.9
    with pytest.raises(ValueError, match="precision 'fp16'"):
        fx.autocast("cpu", "fp16")


def test_linear_readout_rows_and_finding(tiny_world_data, one_thread):
    """The diagnostic of head-only emotion: one row per attribute, depth and pooling grid, accuracies in [0, 1],
    the 3x3 grid reading 9x the channels; the finding sentence quotes the table's numbers."""
    d = tiny_world_data
    p = _params(trunk={**SECTION, "steps": 3})
    trunk, _, key = fx.train_identity_trunk(d, p)
    torch.set_num_threads(1)
    r = fx.readout_diagnostic(trunk, key, d, depths=(3, 4), grids=(1, 3))
    assert len(r) == 2 * 2 * 2 and r.test_accuracy.between(0, 1).all() and r.train_accuracy.between(0, 1).all()
    last = r[(r.depth == 4) & (r.attribute == "emotion")].set_index("grid")
    assert last.loc[3, "features"] == 9 * last.loc[1, "features"] == 9 * TINY_NET["widths"][-1]
    summary = pd.DataFrame([{"attribute": "emotion", "method": "finetune", "depth": 4, "mean": 0.2}])
    text = tables.readout_finding(r, summary)
    assert "head-only fine-tuning 0.200" in text and f"{last.loc[1, 'test_accuracy']:.3f}" in text
    tab = tables.readout_table(r, "synthetic faces", {"emotion": 0.2, "gender": 0.5})
    assert set(tab.metric) == {f"{a} {k} accuracy" for a in ("emotion", "gender") for k in ("test", "training")}
