"""The CFQ paper's home (visualsearch.papers.cfq): image index and store, pretraining captions, pure batches,
stored state, claim logic, the paper preset's settings and local CLIP, resumable stages, tables and figures."""
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from visualsearch import cfq_metrics as cm
from visualsearch.data.images import ImageStore
from visualsearch.models import clip as C
from visualsearch.papers.cfq import claims, data as cd, experiment as cx, figures, tables
from stubs import RecordingReporter


def test_image_index_dedupes_normalises_and_counts_unreadable(tmp_path):
    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "a.png")
    Image.new("RGB", (16, 16), (0, 0, 255)).save(tmp_path / "b.png")
    images = cd.ImageIndex(8)
    assert images.add([tmp_path / "a.png", tmp_path / "b.png", tmp_path / "a.png"]) == [0, 1, 0]
    assert images.add([tmp_path / "gone.png"]) == [2]
    x = cx.Pixels(images, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))([0, 1, 2])
    assert x.shape == (3, 3, 8, 8)
    assert torch.allclose(x[0, 0], torch.ones(8, 8)) and torch.allclose(x[0, 2], -torch.ones(8, 8))
    assert torch.allclose(x[1, 2], torch.ones(8, 8))  # resized 16 -> 8, still blue
    assert images.skips.reasons["missing image"] == 1
    store = images.store()
    assert isinstance(store, ImageStore) and store.pixels.dtype == torch.uint8 and len(store) == 3
    assert store is images.store() and store.pixels[2].eq(0).all()  # decoded once; the unreadable one black
    with pytest.raises(RuntimeError, match="after the images were loaded"):
        images.add([tmp_path / "new.png"])
    lazy = cd.ImageIndex(8, max_bytes=3 * 8 * 8)
    lazy.add([tmp_path / "a.png", tmp_path / "b.png"])
    pixels = cx.Pixels(lazy, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert torch.equal(pixels([1, 0]), x[[1, 0]]) and lazy.store().pixels is None  # decoded per request


def test_attribute_caption_phrases():
    row = {"colour": "blue", "pattern": "stripes", "category": "dress", "sleeve": "long", "length": "knee",
           "neckline": "v", "buttons": 3, "trim_colour": "white", "logo_shape": "star", "logo_colour": "red"}
    rng = np.random.default_rng(0)
    captions = {cd.attribute_caption(row, rng) for _ in range(200)}
    assert all(c.startswith("a blue striped dress") for c in captions)
    phrases = set().union(*(C.caption_phrases(c) for c in captions))
    assert {"with long sleeves", "knee length", "with a v-neck", "with 3 buttons", "with a white trim",
            "with a red star logo"} <= phrases


def test_composed_batches_are_pure_functions_of_the_step():
    pairs = cd.PairSet(np.arange(10), np.arange(10) + 10, [[f"cap {i}", f"alt {i}"] for i in range(10)])
    feats = {"map": torch.arange(20.0).view(20, 1, 1, 1)}
    fn = cx.composed_batches(pairs, cx.ImageInputs(None, feats), batch_size=4, seed=3)
    a, b, c = fn(5), fn(5), fn(6)
    assert torch.equal(a["source"]["map"], b["source"]["map"]) and a["texts"] == b["texts"]
    assert not torch.equal(a["source"]["map"], c["source"]["map"]) or a["texts"] != c["texts"]
    assert torch.equal(a["target"]["map"], a["source"]["map"] + 10)  # each target stays with its reference
    assert len(set(a["source"]["map"].flatten().tolist())) == 4  # distinct pairs in a batch


def test_stored_state_leaves_out_the_frozen_minilm():
    tokens = C.FrozenMiniLMTokens()
    clip = C.small_clip(16, (8, 8, 16, 16), tokens=tokens, text_width=16, text_heads=2)
    state = cx.stored_state(C.build_composition("raf", clip, heads=2, ff_width=8))
    assert not any(".source.model." in k for k in state) and "clip.text_projection.weight" in state
    assert sum(v.numel() for v in state.values()) < 2_000_000  # MiniLM alone has 22M


def _result(per_item, n_cfq=None):
    """A run's result as far as claims and the per-seed table go: per-item scores of every PER_ITEM metric
    (`per_item`: {metric: scores}, or one array used for every metric), the headline numbers their means."""
    if not isinstance(per_item, dict):
        per_item = {m: per_item for m in cx.PER_ITEM}
    per_item = {m: np.asarray(v, dtype=float) for m, v in per_item.items()}
    items = {m: {"keys": [f"{m}/{i}" for i in range(len(v))], "clusters": [i // 2 for i in range(len(v))]}
             for m, v in per_item.items()}
    mean = {m: 100 * float(v.mean()) for m, v in per_item.items()}
    return {"per_item": per_item, "items": items, "fiq": {"(R@10+R@50)/2": mean[cx.FIQ_ITEM]},
            "cfq_primary": {"accurate mAP": mean["CFQ accurate AP"], "similar mAP": mean["CFQ similar AP"],
                            "nDCG": mean["CFQ nDCG"]}}


def _default_claims():
    from visualsearch.config import load_params

    p = load_params("cfq_evaluation", "default")
    return p, claims.declared_claims(p)


def test_declared_claims_parse_and_name_runs_and_scores_the_code_produces():
    """Every declared claim compares runs of the grid on per-item scores `evaluate_all` produces; the paper's
    claims are the paper's (source paper, its words), rest on >= 2 training seeds at the default preset and
    are off the sweep; the sweep's claims are exploratory and compare runs the sweep trains."""
    from visualsearch.config import load_params

    p, declared = _default_claims()
    assert set(declared) >= {"pretraining_matters", "imfq_adds_va", "imfq_adds_raf", "raf_keeps_pretraining"}
    paper_md = (__import__("pathlib").Path(__file__).resolve().parents[2] / "shared" / "papers" / "cfq.md")
    on_sweep = p.claim_tests["on_data_limited"]
    for cid, c in declared.items():
        assert set(claims.metrics_of(c)) <= set(cx.PER_ITEM) and claims.metrics_of(c), cid
        assert all(r in cx.RUNS and r in p.runs for r in claims.runs_of(c)), cid
        if c.source == "paper":
            assert cid not in on_sweep and c.threshold == 0.0
            if paper_md.is_file():
                words = " ".join(paper_md.read_text().replace("**", "").split()).lower()
                assert c.text.lower() in words, cid  # the paper's words, as the facts quote them
        if cid in on_sweep:
            assert c.source == "exploratory" and set(claims.runs_of(c)) <= set(p.data_limited["runs"]), cid
    assert set(on_sweep) <= set(declared)
    assert p.claim_tests["seeds"] >= 2
    assert load_params("cfq_evaluation", "paper", {"model": {"clip_path": "/x"}}).claim_tests["seeds"] >= 2
    assert claims.seeded_runs(declared, on_sweep) == ["clip-fiq", "scratch-fiq", "scratch-fiq-va-lr", "clip-imfq-fiq",
                                                      "raf-imfq-fiq", "raf-fiq", "af-fiq", "clip-scramble-fiq",
                                                      "clip-mismatch-fiq"]
    # the pretraining claim faces the from-scratch arm at both learning rates; the controls for misaligned
    # pretraining are decided as a declared extension (the paper states no claim about them)
    assert list(declared["pretraining_matters"].worse) == ["scratch-fiq", "scratch-fiq-va-lr"]
    assert declared["aligned_pretraining"].source == "extension"
    assert set(declared["aligned_pretraining"].worse) == set(cx.MISALIGNED)
    shown = claims.declared_table(declared)
    assert list(shown.id) == list(declared) and shown.comparison.str.contains(" > ").all()


def test_claims_are_decided_on_every_score_pooled_over_seeds():
    """A claim holds only if A beats B on each of its per-item scores; the seeds' per-item scores are pooled; the
    sweep's claims hold only if they hold at every share; a claim whose runs did not run is not recorded."""
    p, declared = _default_claims()
    rng = np.random.default_rng(0)
    n = 120
    base = rng.random((3, n))

    def runs(shift, worse_on=None):
        out = []
        for k in range(3):
            scores = {m: base[k] + (shift if m != worse_on else -shift) for m in cx.PER_ITEM}
            out.append(_result(scores))
        return out
    seeded = {"scratch-fiq": runs(0.0), "clip-fiq": runs(0.3), "clip-imfq-fiq": runs(0.5),
              "raf-fiq": runs(0.6), "raf-imfq-fiq": runs(0.8, worse_on="CFQ similar AP"), "af-fiq": runs(0.5),
              "scratch-fiq-va-lr": runs(-0.1), "clip-scramble-fiq": runs(0.1), "clip-mismatch-fiq": runs(0.4)}
    limited = {("clip-fiq", 0.5): _result(base[0] + 0.2), ("scratch-fiq", 0.5): _result(base[0]),
               ("clip-fiq", 0.25): _result(base[0] + 0.2), ("scratch-fiq", 0.25): _result(base[0] + 0.3)}
    rep = RecordingReporter()
    out = claims.decide_claims(declared, seeded, limited, [0.25, 0.5], {1.0: 600, 0.5: 300, 0.25: 150}, rep,
                               on_data_limited=p.claim_tests["on_data_limited"], n_boot=300)
    verdicts = {o["id"]: o["passed"] for o in out}
    assert verdicts == {"pretraining_matters": True, "imfq_adds_va": True, "imfq_adds_raf": False,
                        "raf_keeps_pretraining": True, "aligned_pretraining": False,  # mismatch (0.4) beats clip-fiq
                        "scarce_pretraining": False}  # scarce_raf: RAF not swept
    decided = {c.id: d for c, d in rep.decided}
    assert all(decided[c].seeds == 3 for c in ("pretraining_matters", "raf_keeps_pretraining"))
    assert decided["scarce_pretraining"].seeds == 1
    raf = decided["imfq_adds_raf"]
    assert raf.difference == pytest.approx(-1.4) and raf.high < 0  # the failing score (similar AP) decides
    assert "CFQ similar AP" in raf.detail and raf.detail.count(" | ") == len(cx.PER_ITEM) - 1
    assert "all required" in raf.criterion and "3 seed(s) pooled" in raf.criterion and "CFQ nDCG" in raf.criterion
    assert "reference images" in raf.criterion and "query images" in raf.criterion
    keeps = decided["raf_keeps_pretraining"]
    assert keeps.difference == pytest.approx(0.1)  # the closer of clip-fiq (0.3) and af-fiq (0.5)
    scarce = decided["scarce_pretraining"]
    assert "150 FIQ pairs" in scarce.detail and "300 FIQ pairs" in scarce.detail and "each of 2 shares" in scarce.criterion
    # pooling: a seed where B wins by less than A wins on the others still leaves the pooled claim standing
    seeded["clip-fiq"] = [_result(base[0] - 0.1), _result(base[1] + 0.4), _result(base[2] + 0.4)]
    rep = RecordingReporter()
    claims.decide_claims({"pretraining_matters": declared["pretraining_matters"]}, seeded, {}, [], {}, rep)
    assert rep.decided[0][1].passed and rep.decided[0][1].difference == pytest.approx(0.7 / 3)


def test_decide_matches_a_direct_paired_bootstrap_and_refuses_unpaired_items():
    """The conjunction's per-score decisions are visualsearch.claims.decide on [seeds, items] with the stored
    clusters; items that differ between runs or seeds are refused, not silently compared."""
    from visualsearch import claims as vc

    from dataclasses import replace

    _, declared = _default_claims()
    claim = replace(declared["pretraining_matters"], worse=("scratch-fiq",))  # one comparison: one direct bootstrap
    rng = np.random.default_rng(1)
    a, b = rng.random((2, 40)), rng.random((2, 40))
    results = {"clip-fiq": [_result(x) for x in a], "scratch-fiq": [_result(x) for x in b]}
    got = claims.decide_all_metrics(claim, results, n_boot=500)
    direct = vc.paired_bootstrap(torch.tensor(a.mean(0)), torch.tensor(b.mean(0)), np.arange(40) // 2, n_boot=500)
    assert (got.difference, got.low, got.high) == pytest.approx(direct)
    assert got.passed == (direct[1] > 0)
    shifted = _result(b[0])
    shifted["items"][cx.FIQ_ITEM]["keys"] = shifted["items"][cx.FIQ_ITEM]["keys"][::-1]
    with pytest.raises(ValueError, match="differ between seeds"):
        claims.decide_all_metrics(claim, {"clip-fiq": results["clip-fiq"], "scratch-fiq": [_result(b[1]), shifted]})
    with pytest.raises(ValueError, match="different"):
        claims.decide_all_metrics(claim, {"clip-fiq": results["clip-fiq"], "scratch-fiq": [shifted, shifted]})
    with pytest.raises(ValueError, match="no per-item scores"):
        claims.per_item([{"per_item": {}}], cx.FIQ_ITEM)


def test_seed_table_has_every_run_seed_and_headline_number():
    results = {"clip-fiq": [_result(np.full(4, x)) for x in (0.5, 0.6)],
               "scratch-fiq": [_result(np.full(4, x)) for x in (0.4, 0.3)]}
    table = tables.seed_table(results, [0, 1], "CFQ")
    assert len(table) == 2 * 2 * 4 and set(table.metric) == set(tables.HEADLINE)
    row = table[(table.method == "VA, no pretraining, FIQ") & (table.seed == 1) & (table.metric == "CFQ nDCG")]
    assert row.dataset.tolist() == ["CFQ, training seed 1"]
    assert row.reproduced.tolist() == [pytest.approx(30.0)]
    with pytest.raises(ValueError, match="seeds"):
        tables.seed_table(results, [0, 1, 2], "CFQ")


def test_training_seeds_change_what_is_drawn_not_the_data(tmp_path):
    """A run at another training seed is keyed and drawn with that seed (new layers, the from-scratch model),
    while the pretrained dual encoder and the data stay the preset seed's; the preset's seed is the grid's run."""
    from types import SimpleNamespace

    from visualsearch.config import load_params

    exp = cx.CFQExperiment.models_only(load_params("cfq_evaluation", "smoke"), cx.result_cache(tmp_path / "r"))
    assert exp.training_seeds() == [0, 1]
    exp.data = SimpleNamespace(fingerprints={"cfq": "abc"})
    k0, k1 = exp.run_key("raf-fiq"), exp.run_key("raf-fiq", seed=1)
    assert k0 == exp.run_key("raf-fiq", seed=0) and k1["seed"] == 1
    assert {k for k in k0 if k0[k] != k1[k]} == {"seed"} and k1["pretrain"]["seed"] == 0
    assert exp.run_label("raf-fiq", seed=1) == "raf-fiq, seed 1" and exp.run_label("raf-fiq", seed=0) == "raf-fiq"
    a, b = exp.new_clip(0).state_dict(), exp.new_clip(1).state_dict()
    assert not torch.equal(a["image.projection.weight"], b["image.projection.weight"])
    assert torch.equal(a["image.projection.weight"], exp.new_clip().state_dict()["image.projection.weight"])
    with pytest.raises(ValueError, match="preset's seed"):
        exp.run("clip-fiq", 0.5, seed=1)


# ------------------------------------------------------------------ the paper preset's local CLIP and settings

def _trained_looking_clip(folder, seed=7):
    """A tiny transformers CLIP saved with save_pretrained whose every weight is moved off transformers'
    initialisation (as a pretrained CLIP's are: LayerNorms not at 1 / 0, the temperature not at its init)."""
    from test_clip import save_tiny_hf_clip

    model = save_tiny_hf_clip(folder, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for q in model.parameters():
            q.add_(0.05 * torch.randn(q.shape, generator=gen))
    model.save_pretrained(str(folder))
    return model


def _paper_params(clip, **model):
    from visualsearch.config import load_params

    model = {"mismatch_clip_path": str(clip), **model}
    return load_params("cfq_evaluation", "paper", {"model": {"clip_path": str(clip), "image_size": 32, **model},
                                                    "train": {"fiq": {"steps": 6, "batch_size": 4}}})


def test_no_pretraining_arm_is_untrained_on_a_local_clip(tmp_path):
    """scratch-fiq is the local CLIP's architecture with a random initialisation: none of its starting weights is
    the pretrained CLIP's, while the pretrained arms start from exactly those."""
    saved = _trained_looking_clip(tmp_path / "clip")
    exp = cx.CFQExperiment.models_only(_paper_params(tmp_path / "clip"), cx.result_cache(tmp_path / "results"))
    scratch = exp.build("scratch-fiq")[0].clip.state_dict()
    pretrained = exp.build("clip-fiq")[0].clip.state_dict()
    reference = saved.state_dict()
    names = [k for k, v in scratch.items() if v.is_floating_point()]
    assert len(names) >= 40 and scratch.keys() == pretrained.keys()
    same = [k for k in names if torch.equal(scratch[k], pretrained[k])]
    assert same == [], f"{len(same)} of {len(names)} starting tensors of the no-pretraining arm are the CLIP's"
    by_param = dict(zip([id(q) for q in saved.parameters()], [n for n, _ in saved.named_parameters()]))
    assert by_param  # the pretrained arm holds the saved CLIP's weights, every one of them
    loaded = exp.pretrained_clip().state_dict()
    for k, v in pretrained.items():
        assert torch.equal(v, loaded[k])
    assert torch.equal(pretrained["text_projection.weight"], reference["text_projection.weight"])
    assert torch.equal(pretrained["image.projection.weight"], reference["visual_projection.weight"])
    # the random initialisation is a function of the seed: reproducible, and another seed draws another one
    again = C.random_clip(tmp_path / "clip", seed=exp.p["seed"]).state_dict()
    other = C.random_clip(tmp_path / "clip", seed=exp.p["seed"] + 1).state_dict()
    assert all(torch.equal(scratch[k], again[k]) for k in names)
    assert not torch.equal(scratch["image.projection.weight"], other["image.projection.weight"])
    assert exp.pretraining_summary().startswith("pretrained CLIP loaded from") and exp.pretrain_log is None
    # every arm's starting weights (new layers included) are a function of the seed, not of what ran before
    for run in ("raf-fiq", "scratch-fiq"):
        torch.manual_seed(123)
        a = exp.build(run)[0].state_dict()
        torch.rand(7)
        b = exp.build(run)[0].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), run


def test_misaligned_controls_break_only_the_agreement_of_the_towers(tmp_path):
    """scramble: every weight the pretrained arm's, but the text projection's input columns permuted (drawn with
    the training seed); mismatch: the image tower this CLIP's, the text tower and projection the other CLIP's."""
    a = _trained_looking_clip(tmp_path / "a", seed=7).state_dict()
    b = _trained_looking_clip(tmp_path / "b", seed=8).state_dict()
    exp = cx.CFQExperiment.models_only(_paper_params(tmp_path / "a", mismatch_clip_path=str(tmp_path / "b")),
                                       cx.result_cache(tmp_path / "results"))
    aligned = exp.build("clip-fiq")[0].clip.state_dict()
    scrambled = exp.build("clip-scramble-fiq")[0].clip.state_dict()
    mismatched = exp.build("clip-mismatch-fiq")[0].clip.state_dict()
    w, ws = aligned["text_projection.weight"], scrambled["text_projection.weight"]
    assert not torch.equal(w, ws)
    assert sorted(map(tuple, w.T.tolist())) == sorted(map(tuple, ws.T.tolist()))  # the same columns, reordered
    assert all(torch.equal(v, scrambled[k]) for k, v in aligned.items() if k != "text_projection.weight")
    other_seed = exp.build("clip-scramble-fiq", seed=1)[0].clip.state_dict()["text_projection.weight"]
    assert not torch.equal(ws, other_seed)  # the permutation is drawn with the training seed
    assert torch.equal(mismatched["text_projection.weight"], b["text_projection.weight"])
    assert torch.equal(mismatched["image.projection.weight"], a["visual_projection.weight"])
    text = [k for k in mismatched if k.startswith("text.") and mismatched[k].is_floating_point()]
    assert text and all(not torch.equal(mismatched[k], aligned[k]) for k in text)
    image = [k for k in mismatched if k.startswith("image.")]
    assert image and all(torch.equal(mismatched[k], aligned[k]) for k in image)
    with pytest.raises(ValueError, match="unknown misalignment"):
        cx.misalign(exp.pretrained_clip(), "shuffle", 0)


def test_scratch_arm_at_the_va_rate_and_the_jobs_of_the_notebook(tmp_path, monkeypatch):
    """scratch-fiq trains at the new-parameter rate, scratch-fiq-va-lr at CLIP VA's, like clip-fiq; `jobs` lists
    the grid, the claims' seeds and the sweep once each, and the from-scratch runs are scheduled first."""
    from types import SimpleNamespace

    import visualsearch.train as vt
    from visualsearch.config import load_params

    p = load_params("cfq_evaluation", "smoke")
    exp = cx.CFQExperiment.models_only(p, cx.result_cache(tmp_path / "r"))
    exp.data = SimpleNamespace(fiq_train=cd.PairSet(np.arange(4), np.arange(4) + 4, [["a"]] * 4),
                               fingerprints={"x": "y"})
    seen = {}

    def fake_train(model, step_fn, batch_fn, cfg, run_dir=None, param_groups=None, **kw):
        seen["lr"], seen["scales"] = cfg.lr, sorted(g["lr_scale"] for g in param_groups)
        return SimpleNamespace(log=None)
    monkeypatch.setattr(vt, "train", fake_train)
    model = SimpleNamespace(param_groups=lambda scale: [{"params": [], "lr_scale": scale}])
    lrs = {}
    for run in ("scratch-fiq", "scratch-fiq-va-lr", "clip-fiq", "clip-scramble-fiq"):
        exp.train_stage(model, None, run, "fiq")
        lrs[run] = seen["lr"]
    assert lrs["scratch-fiq"] == p.train["fiq"]["lr"] != p.train["va_lr"]
    assert lrs["scratch-fiq-va-lr"] == lrs["clip-fiq"] == lrs["clip-scramble-fiq"] == p.train["va_lr"]
    assert exp.run_key("scratch-fiq")["lr"] != exp.run_key("scratch-fiq-va-lr")["lr"]
    assert exp.run_key("clip-mismatch-fiq")["mismatch"]["seed"] == p.pretrain["mismatch_seed"] != p.seed
    jobs = exp.jobs(["clip-fiq", "scratch-fiq"])
    assert len(jobs) == len(set(jobs))
    assert {(r, 1.0, p.seed) for r in p.runs} <= set(jobs)
    assert {(r, 1.0, s) for r in ("clip-fiq", "scratch-fiq") for s in exp.training_seeds()} <= set(jobs)
    assert {(r, float(sh), p.seed) for r in p.data_limited["runs"] for sh in p.data_limited["shares"]} <= set(jobs)
    ordered = sorted(jobs, key=exp.job_cost, reverse=True)
    assert ordered[0][0].startswith("scratch") and ordered[-1][0] in ("zero-shot", "random")


def test_no_pretraining_arm_on_the_embedded_default_never_reads_pretrained_weights(monkeypatch, tmp_path):
    from visualsearch.config import load_params

    exp = cx.CFQExperiment.models_only(load_params("cfq_evaluation", "smoke"), cx.result_cache(tmp_path / "results"))

    def forbidden():
        raise AssertionError("the no-pretraining arm asked for the pretrained weights")
    monkeypatch.setattr(exp, "pretrained_state", forbidden)
    model, inputs = exp.build("scratch-fiq")
    fresh = exp.new_clip().state_dict()
    assert all(torch.equal(v, fresh[k]) for k, v in model.clip.state_dict().items())
    assert inputs.features is None and model.freeze_bn is False


def test_settings_the_paper_preset_needs_are_named_before_any_work(tmp_path):
    from visualsearch.config import load_params

    (tmp_path / "data" / "cfq").mkdir(parents=True)
    (tmp_path / "data" / "cfq" / "judgments.tsv").write_text("subset\n")
    p = load_params("cfq_evaluation", "paper", data_root=tmp_path / "data")
    with pytest.raises(cd.SettingsError) as e:
        cd.load_data(p)  # fails in require_settings, before anything is read
    msg = str(e.value)
    assert "model.clip_path must be set with a data root" in msg
    assert "fashioniq/captions/cap.dress.train.json" in msg and "imaterialist/imat2018_label_map.tsv" in msg
    assert "cfq/equivalent_captions.json" in msg and "missing folder" in msg and "cfq/judgments.tsv" not in msg
    _trained_looking_clip(tmp_path / "clip")
    p = load_params("cfq_evaluation", "paper", {"model": {"clip_path": str(tmp_path / "clip")}})
    with pytest.raises(cd.SettingsError, match=r"model.image_size is 224 but the CLIP .* takes 32 px"):
        cd.require_settings(p)
    with pytest.raises(cd.SettingsError, match="no config.json"):
        cd.require_settings(load_params("cfq_evaluation", "paper", {"model": {"clip_path": str(tmp_path)}}))
    cd.require_settings(_paper_params(tmp_path / "clip"))  # all there: nothing to say
    with pytest.raises(cd.SettingsError, match="model.mismatch_clip_path must be set"):
        cd.require_settings(_paper_params(tmp_path / "clip", mismatch_clip_path=None))
    cd.require_settings(load_params("cfq_evaluation", "smoke"))


def test_killed_stage_resumes_to_the_uninterrupted_weights(tmp_path, monkeypatch):
    """A run's stage checkpoints into its run folder; killed after 4 of 6 steps and rerun, it resumes and ends
    with exactly the weights of a stage that went straight through."""
    from types import SimpleNamespace

    _trained_looking_clip(tmp_path / "clip")
    p = _paper_params(tmp_path / "clip")
    p["checkpoint_every"] = 2
    for i in range(8):
        Image.new("RGB", (32, 32), (30 * i, 255 - 30 * i, 90)).save(tmp_path / f"{i}.png")
    captions = ["is red", "is blue", "shorter", "has stripes", "not floral", "is green", "longer", "is dark"]

    def experiment():
        exp = cx.CFQExperiment.models_only(p, cx.result_cache(tmp_path / "results"))
        images = cd.ImageIndex(p["model"]["image_size"])
        images.add([tmp_path / f"{i}.png" for i in range(8)])
        exp.data = SimpleNamespace(images=images, fiq_train=cd.PairSet(np.arange(8), (np.arange(8) + 3) % 8,
                                                                       [[c, c + " and darker"] for c in captions]))
        return exp

    torch.set_num_threads(1)
    exp = experiment()
    model, inputs = exp.build("raf-fiq")
    exp.train_stage(model, inputs, "raf-fiq", "fiq", run_dir=tmp_path / "straight")
    straight = model.state_dict()

    real, calls = cx.composed_step, {"n": 0}

    def dying(m, batch):
        if calls["n"] == 4:
            raise KeyboardInterrupt
        calls["n"] += 1
        return real(m, batch)
    exp = experiment()
    model, inputs = exp.build("raf-fiq")
    monkeypatch.setattr(cx, "composed_step", dying)
    with pytest.raises(KeyboardInterrupt):
        exp.train_stage(model, inputs, "raf-fiq", "fiq", run_dir=tmp_path / "killed")
    assert torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=False)["step"] == 4
    monkeypatch.undo()
    exp = experiment()
    model, inputs = exp.build("raf-fiq")  # a new process would start from the pretrained model again
    log = exp.train_stage(model, inputs, "raf-fiq", "fiq", run_dir=tmp_path / "killed")
    resumed = model.state_dict()
    assert len(log) == 6 and straight.keys() == resumed.keys()
    diff = {k: (straight[k].float() - resumed[k].float()).abs().max().item() for k in straight
            if not torch.equal(straight[k], resumed[k])}
    assert not diff, diff
    assert not all(torch.equal(straight[k], v) for k, v in exp.build("raf-fiq")[0].state_dict().items())  # it trained


def readme_names(notebook_row: str) -> set:
    """The backticked names of one row of README's "Real data" table, braces expanded ({a,b} -> a, b)."""
    import itertools
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith(f"| {notebook_row} |"))
    names = set()
    for token in re.findall(r"`([^`]+)`", row):
        parts = re.split(r"(\{[^}]*\})", token)
        choices = [p[1:-1].split(",") if p.startswith("{") else [p] for p in parts]
        names.update("".join(c) for c in itertools.product(*choices))
    return names


def test_readme_names_what_the_paper_preset_reads():
    names = readme_names("CFQ")
    for rel in cd.REAL_FILES:
        assert rel.split("|")[0].strip() in names, rel
    for rel in cd.REAL_FOLDERS:
        assert rel.split("|")[0].strip() + "/" in names, rel


def test_cache_keys_name_the_device(tmp_path):
    """A result computed on the CPU is never reused as a GPU run's (it would be labelled with the GPU)."""
    from types import SimpleNamespace

    from visualsearch.config import load_params

    keys = {}
    for device in ("cpu", "cuda"):
        exp = cx.CFQExperiment.models_only(load_params("cfq_evaluation", "smoke"), cx.result_cache(tmp_path / "r"))
        exp.device, exp.data = device, SimpleNamespace(fingerprints={"cfq": "abc"})
        keys[device] = (exp.pretrain_key(), exp.run_key("raf-fiq"))
    assert keys["cpu"][0] != keys["cuda"][0] and keys["cpu"][1] != keys["cuda"][1]


# ------------------------------------------------------------------ the shared pieces draw and compute as before

def test_result_cache_keys_on_the_experiment_module(tmp_path):
    cache = cx.result_cache(tmp_path)
    assert cache.code == "visualsearch.papers.cfq.experiment" and cache.root == tmp_path


def test_batches_draw_exactly_as_the_paper_did():
    """composed_batches and contrastive_batches (samplers.UniformBatches, "shrink") draw the pairs and then the
    captions from the step's stream exactly as the paper's own batch functions did."""
    from visualsearch.seeding import step_seed

    pairs = cd.PairSet(np.arange(10), np.arange(10) + 10, [[f"cap {i}", f"alt {i}", f"more {i}"] for i in range(10)])
    feats = {"map": torch.arange(20.0).view(20, 1, 1, 1)}
    for batch_size in (4, 16):  # 16 > 10 pairs: a smaller batch of every pair
        fn = cx.composed_batches(pairs, cx.ImageInputs(None, feats), batch_size=batch_size, seed=3)
        for step in (0, 5, 77):
            rng = np.random.default_rng(step_seed(3, step))
            pick = rng.choice(len(pairs), size=min(batch_size, len(pairs)), replace=False)
            texts = [pairs.captions[i][rng.integers(len(pairs.captions[i]))] for i in pick]
            b = fn(step)
            assert b["texts"] == texts and b["source"]["map"].flatten().tolist() == pick.tolist()
    rows = [{"colour": c, "pattern": "solid", "category": "dress", "sleeve": "long", "length": "knee",
             "neckline": "v"} for c in ("red", "blue", "green", "black", "white", "grey")]
    images = np.arange(6) + 100

    class _Pixels:
        def __call__(self, idx):
            return torch.as_tensor(idx, dtype=torch.float32)
    fn = cx.contrastive_batches(_Pixels(), images, rows, batch_size=4, seed=9)
    for step in (0, 3):
        rng = np.random.default_rng(step_seed(9, step))
        pick = rng.choice(len(images), size=4, replace=False)
        texts = [cd.attribute_caption(rows[i], rng) for i in pick]
        b = fn(step)
        assert b["texts"] == texts and b["images"].tolist() == (images[pick]).tolist()


class _Model:
    """A stand-in composition model: catalog embedding = the image row, query = image row + text length."""

    def eval(self):
        return self

    def embed_catalog(self, x):
        return x["v"]

    def compose(self, x, texts):
        return x["v"] + torch.tensor([[float(len(t))] for t in texts])


def test_embed_is_the_paper_s_loop_over_evaluate_embed():
    torch.manual_seed(0)
    feats = {"v": torch.randn(40, 5)}
    inputs = cx.ImageInputs(None, feats)
    idx = [int(i) for i in torch.randperm(40)[:23]]
    texts = [f"t{'x' * (i % 4)}" for i in range(23)]
    for t in (None, texts):
        got = cx.embed(_Model(), inputs, idx, t, batch=7)
        old = []  # the paper's own loop, as it was
        for s in range(0, len(idx), 7):
            x = inputs(list(idx[s:s + 7]))
            e = x["v"] if t is None else _Model().compose(x, list(t[s:s + 7]))
            old.append(torch.nn.functional.normalize(e.float().cpu(), dim=-1))
        assert torch.equal(got, torch.cat(old))


def test_fiq_recall_through_search_equals_the_direct_retrieval():
    """evaluate_fiq's Recall@10/@50 (evaluate.search) are the numbers of retrieve + recall_at_k wherever the
    gallery holds more than 50 retrievable items (search caps k at the gallery, the direct call did not)."""
    from visualsearch.evaluate import recall_at_k, retrieve

    torch.manual_seed(1)
    feats = {"v": torch.randn(80, 4)}
    gen = np.random.default_rng(0)
    gallery = list(range(10, 80))
    refs = [int(i) for i in gen.choice(gallery, size=12, replace=False)]
    d = {"refs": refs, "texts": ["ab"] * 12, "exclude": [gallery.index(r) for r in refs],
         "query_labels": gen.integers(0, 20, size=12).tolist(), "gallery": gallery,
         "gallery_labels": (np.arange(70) % 20).tolist()}
    inputs = cx.ImageInputs(None, feats)
    out = cx.evaluate_fiq(_Model(), inputs, {"dress": d})
    q, g = cx.embed(_Model(), inputs, refs, d["texts"]), cx.embed(_Model(), inputs, gallery)
    top = retrieve(q, g, 50, exclude=torch.tensor(d["exclude"]))
    rec = recall_at_k(top.indices, torch.tensor(d["query_labels"]), torch.tensor(d["gallery_labels"]), (10, 50))
    assert out["dress R@10"] == 100 * rec[10] and out["dress R@50"] == 100 * rec[50]
    assert out["(R@10+R@50)/2"] == (out["avg R@10"] + out["avg R@50"]) / 2


def test_fiq_per_query_scores_against_a_naive_loop():
    """Each query's (hit@10 + hit@50) / 2 is what a plain loop over its ranking gives (reference excluded, k capped
    at the retrievable items); their mean per category is that category's (R@10+R@50)/2; clusters are the
    reference images, queries in category then file order."""
    torch.manual_seed(2)
    feats = {"v": torch.randn(90, 3)}
    gen = np.random.default_rng(3)
    fiq_val = {}
    for cat, (lo, hi) in {"dress": (0, 70), "shirt": (70, 90)}.items():  # shirt: 20 items, k=50 is capped at 19
        gallery = list(range(lo, hi))
        refs = [int(i) for i in gen.choice(gallery, size=9)]            # repeated references allowed
        fiq_val[cat] = {"refs": refs, "texts": ["abc"[: 1 + i % 3] for i in range(9)],
                        "exclude": [gallery.index(r) for r in refs],
                        "query_labels": gen.integers(0, 12, size=9).tolist(), "gallery": gallery,
                        "gallery_labels": (np.arange(len(gallery)) % 12).tolist()}
    inputs = cx.ImageInputs(None, feats)
    out, per_query, refs = cx.fiq_evaluation(_Model(), inputs, fiq_val)
    naive = []
    for cat, d in fiq_val.items():
        q, g = cx.embed(_Model(), inputs, d["refs"], d["texts"]), cx.embed(_Model(), inputs, d["gallery"])
        for i in range(len(d["refs"])):
            sims = (g @ q[i]).tolist()
            order = sorted((j for j in range(len(sims)) if j != d["exclude"][i]), key=lambda j: (-sims[j], j))
            hit = [any(d["gallery_labels"][j] == d["query_labels"][i] for j in order[:k]) for k in (10, 50)]
            naive.append((hit[0] + hit[1]) / 2)
    assert per_query.tolist() == naive
    assert refs == fiq_val["dress"]["refs"] + fiq_val["shirt"]["refs"]
    for c, part in (("dress", per_query[:9]), ("shirt", per_query[9:])):
        assert 100 * part.mean() == pytest.approx((out[f"{c} R@10"] + out[f"{c} R@50"]) / 2)
    assert out == cx.evaluate_fiq(_Model(), inputs, fiq_val)


def test_cfq_per_group_scores_are_the_primary_metrics_per_group():
    """The CFQ per-item scores are the per-(query, caption) AP and nDCG the primary metrics average: AP against
    scikit-learn, their mean per subset weighted by query images equal to the primary metrics; groups where AP is
    undefined (one class) are left out; clusters are the query images."""
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(4)
    rows = []
    for subset in ("broad", "narrow"):
        for q in range(4 if subset == "broad" else 2):
            for cap in ("a", "b"):
                for item in range(6):
                    rows.append({"subset": subset, "query_hash": f"{subset}{q}", "caption": cap,
                                 "catalog_hash": f"c{item}", "accurate": rng.choice([-1, 0, 1]) * 1.0,
                                 "similar": rng.choice([-1, 0, 1]) * 1.0})
    rows += [{"subset": "broad", "query_hash": "broad0", "caption": "one class", "catalog_hash": f"c{i}",
              "accurate": 1.0, "similar": 1.0} for i in range(3)]
    agg = cm.aggregate_judgments(pd.DataFrame(rows).assign(annotator=0))
    scores = rng.normal(size=len(agg))
    res = cm.cfq_metrics(agg, scores)
    items = cx.cfq_per_group(res.per_group)
    assert set(items) == set(cx.PER_ITEM) - {cx.FIQ_ITEM}
    values, keys, clusters = items["CFQ accurate AP"]
    assert not any("one class" in k for k in keys) and len(keys) == len(values) == len(clusters)
    for v, key, cluster in zip(values, keys, clusters):
        subset, query, caption = key.split("/")
        assert cluster == query
        rows_ = (agg.subset == subset) & (agg.query_hash == query) & (agg.caption == caption)
        assert v == pytest.approx(average_precision_score(agg.loc[rows_, "accurate_0"], scores[rows_.to_numpy()]))
    weights = agg.groupby("subset").query_hash.nunique()
    for name, primary in (("CFQ accurate AP", "accurate mAP"), ("CFQ similar AP", "similar mAP"),
                          ("CFQ nDCG", "nDCG")):
        values, keys, _ = items[name]
        subsets = pd.Series([k.split("/")[0] for k in keys])
        means = pd.Series(values).groupby(subsets).mean()
        assert (means * weights[means.index]).sum() / weights[means.index].sum() == pytest.approx(res.primary()[primary])


# ------------------------------------------------------------------------------ what tables and figures read

def _grid_results():
    table = pd.DataFrame({"subset": [cm.WEIGHTED, cm.WEIGHTED, "broad"], "metric": ["m_ap", "ap", "m_ap"],
                          "label": ["accurate_0", "accurate_0", "accurate_0"], "value": [0.5, 0.6, 0.7]})

    def result(k):
        return {"fiq": {"dress R@10": k, "(R@10+R@50)/2": 2 * k}, "imat": {"ROC-AUC": 50 + k, "mAP": k / 2},
                "cfq_primary": {"accurate mAP": 60 + k, "similar mAP": 70 + k, "nDCG": 80 + k}, "cfq_table": table,
                "cfq_scores": np.arange(4.0) * k, "logs": {"fiq": pd.DataFrame({"step": [0, 1], "loss": [2.0, k]})}}
    return {"clip-fiq": result(10), "scratch-fiq": result(8)}, {("clip-fiq", 0.5): result(6),
                                                               ("scratch-fiq", 0.5): result(3)}


def test_tables_from_results():
    results, limited = _grid_results()
    descriptions = {"fashion_iq": "FIQ", "imaterialist": "iMat", "cfq": "CFQ"}
    grid = tables.grid_table(results, descriptions)
    assert len(grid) == 2 * 7 and set(grid.method) == {"CLIP VA, FIQ", "VA, no pretraining, FIQ"}
    assert grid[grid.metric == "mAP"].dataset.eq("iMat, val").all()
    thresholds = tables.cfq_threshold_table(results, "CFQ")
    assert thresholds.metric.tolist() == ["m_ap accurate_0"] * 2 and thresholds.reproduced.eq(50).all()
    sweep = tables.data_limited_table(results, limited, ["clip-fiq", "scratch-fiq"], {1.0: 600, 0.5: 300})
    assert sweep["FIQ training pairs"].tolist() == [300] * 4 + [600] * 4 + [300] * 4 + [600] * 4
    assert sweep.method.tolist()[:8] == ["CLIP VA, FIQ"] * 8 and set(sweep.metric) == set(tables.HEADLINE)
    margins = tables.pretraining_margins(sweep)
    assert margins.loc[300, "FIQ (R@10+R@50)/2"] == 6 and margins.loc[600, "CFQ nDCG"] == 2


def test_figures_draw_from_results_without_models(tmp_path):
    import matplotlib.pyplot as plt

    results, limited = _grid_results()
    exp = cx.CFQExperiment.models_only({"model": {"clip_path": None}, "data_limited": {"shares": [0.5]}},
                                       cx.result_cache(tmp_path))
    exp.results = results
    assert exp.judged_scores(("clip-fiq", "raf-fiq")).keys() == {"clip-fiq"}
    assert exp.stage_logs() == {r: res["logs"] for r, res in results.items()}
    agg = pd.DataFrame({"query_hash": ["q", "q", "q", "r"], "caption": ["c", "c", "c", "d"],
                        "catalog_hash": ["a", "b", "e", "a"], "accurate": [1.0, -1.0, 0.0, 0.5],
                        "similar": [0.0, 1.0, -0.5, 0.5]})
    shown = []

    def load_image(h):
        shown.append(h)
        return None if h == "e" else Image.new("RGB", (16, 16))
    fig = figures.figure1(agg, exp.judged_scores(("clip-fiq", "scratch-fiq")), load_image, n_queries=2, top_k=2)
    assert len(fig.axes) == 2 * (1 + 2 * 3) and {"q", "r", "a", "b"} <= set(shown)
    plt.close(fig)
    plt.close(figures.training_curves(None, exp.stage_logs()))
    sweep = tables.data_limited_table(results, limited, ["clip-fiq", "scratch-fiq"], {1.0: 600, 0.5: 300})
    plt.close(figures.data_limited_figure(sweep))
