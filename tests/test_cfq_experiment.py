"""Pieces of the CFQ experiment: image bank, pretraining captions, pure batches, stored state, claim logic."""
import numpy as np
import pytest
import torch
from PIL import Image

from visualsearch import cfq_experiment as cx
from visualsearch.models import clip as C
from visualsearch.models.text import Vocabulary


def test_image_bank_dedupes_normalises_and_counts_unreadable(tmp_path):
    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "a.png")
    Image.new("RGB", (16, 16), (0, 0, 255)).save(tmp_path / "b.png")
    bank = cx.ImageBank(8, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert bank.add([tmp_path / "a.png", tmp_path / "b.png", tmp_path / "a.png"]) == [0, 1, 0]
    assert bank.add([tmp_path / "gone.png"]) == [2]
    x = bank.pixels([0, 1, 2])
    assert x.shape == (3, 3, 8, 8)
    assert torch.allclose(x[0, 0], torch.ones(8, 8)) and torch.allclose(x[0, 2], -torch.ones(8, 8))
    assert torch.allclose(x[1, 2], torch.ones(8, 8))  # resized 16 -> 8, still blue
    assert bank.skips.reasons["missing image"] == 1
    with pytest.raises(RuntimeError, match="after the images were loaded"):
        bank.add([tmp_path / "new.png"])
    lazy = cx.ImageBank(8, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), preload_limit=1)
    lazy.add([tmp_path / "a.png", tmp_path / "b.png"])
    assert torch.equal(lazy.pixels([1, 0]), x[[1, 0]]) and lazy._pixels is None  # decoded per request


def test_attribute_caption_phrases():
    row = {"colour": "blue", "pattern": "stripes", "category": "dress", "sleeve": "long", "length": "knee",
           "neckline": "v", "buttons": 3, "trim_colour": "white", "logo_shape": "star", "logo_colour": "red"}
    rng = np.random.default_rng(0)
    captions = {cx.attribute_caption(row, rng) for _ in range(200)}
    assert all(c.startswith("a blue striped dress") for c in captions)
    phrases = set().union(*(C.caption_phrases(c) for c in captions))
    assert {"with long sleeves", "knee length", "with a v-neck", "with 3 buttons", "with a white trim",
            "with a red star logo"} <= phrases


def test_composed_batches_are_pure_functions_of_the_step():
    pairs = cx.PairSet(np.arange(10), np.arange(10) + 10, [[f"cap {i}", f"alt {i}"] for i in range(10)])
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


class _Results:
    """The part of CFQExperiment that `compare` and `check_claims` read: full-data numbers per run and,
    optionally, numbers per (run, share) of the data-limited sweep."""

    def __init__(self, numbers, limited=None):
        self.results = {r: {"numbers": v} for r, v in numbers.items()}
        self.limited = {key: {"numbers": v} for key, v in (limited or {}).items()}
        self.p = {"data_limited": {"shares": sorted({share for _, share in self.limited})}}

    def headline(self, run, res=None):
        return dict(zip(cx.HEADLINE, (self.results[run] if res is None else res)["numbers"]))

    def fiq_pairs(self, share):
        return range(round(600 * share))


class _Rep:
    def __init__(self):
        self.checks = []

    def check(self, claim, passed, detail, measured=None):
        self.checks.append((claim, passed, detail))


def test_claims_need_every_headline_number():
    numbers = {"clip-fiq": (50, 60, 70, 80), "scratch-fiq": (40, 59, 69, 79),
               "clip-imfq-fiq": (55, 61, 71, 81), "raf-fiq": (52, 62, 72, 82), "raf-imfq-fiq": (53, 62, 71, 83),
               "af-fiq": (51, 61, 70, 80)}
    rep = _Rep()
    out = cx.check_claims(_Results(numbers), rep)
    assert [c["passed"] for c in out] == [True, False, True]  # raf-imfq-fiq loses similar mAP (71 < 72)
    assert "(-1.0)" in out[1]["detail"] and "(+10.0)" in out[0]["detail"]
    assert len(rep.checks) == 3


def test_scarce_data_claims_need_every_share():
    """The sweep's checks hold only if the comparison holds at every share; the detail names the pair counts."""
    numbers = {"clip-fiq": (50, 60, 70, 80), "scratch-fiq": (55, 59, 69, 79), "raf-fiq": (52, 62, 72, 82),
               "af-fiq": (51, 61, 70, 80)}
    limited = {("clip-fiq", 0.25): (40, 60, 70, 80), ("scratch-fiq", 0.25): (30, 50, 60, 70),
               ("clip-fiq", 0.5): (45, 60, 70, 80), ("scratch-fiq", 0.5): (44, 59, 71, 79)}
    rep = _Rep()
    out = cx.check_claims(_Results(numbers, limited), rep)
    by_claim = {c["claim"]: c for c in out}
    assert not by_claim["Multimodal pretraining helps over none (CLIP VA + FIQ beats the same model trained on FIQ "
                        "from scratch)"]["passed"]                    # FIQ recall 50 < 55 on the full data
    scarce = [c for c in out if c["claim"].startswith("With scarce")]
    assert len(scarce) == 1                                           # RAF and AF were not swept: no check
    assert not scarce[0]["passed"]                                    # similar mAP 70 < 71 on 300 pairs
    assert "on 150 FIQ pairs" in scarce[0]["detail"] and "on 300 FIQ pairs" in scarce[0]["detail"]
    limited[("scratch-fiq", 0.5)] = (44, 59, 69, 79)
    out = cx.check_claims(_Results(numbers, limited), _Rep())
    assert [c["passed"] for c in out if c["claim"].startswith("With scarce")] == [True]


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

    return load_params("cfq_evaluation", "paper", {"model": {"clip_path": str(clip), "image_size": 32, **model},
                                                    "train": {"fiq": {"steps": 6, "batch_size": 4}}})


def test_no_pretraining_arm_is_untrained_on_a_local_clip(tmp_path):
    """scratch-fiq is the local CLIP's architecture with a random initialisation: none of its starting weights is
    the pretrained CLIP's, while the pretrained arms start from exactly those."""
    from visualsearch.cache import ResultCache

    saved = _trained_looking_clip(tmp_path / "clip")
    exp = cx.CFQExperiment.models_only(_paper_params(tmp_path / "clip"), ResultCache(tmp_path / "results"))
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


def test_no_pretraining_arm_on_the_embedded_default_never_reads_pretrained_weights(monkeypatch, tmp_path):
    from visualsearch.cache import ResultCache
    from visualsearch.config import load_params

    exp = cx.CFQExperiment.models_only(load_params("cfq_evaluation", "smoke"), ResultCache(tmp_path / "results"))

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
    with pytest.raises(cx.SettingsError) as e:
        cx.CFQExperiment(p)  # fails in require_settings, before anything is read
    msg = str(e.value)
    assert "model.clip_path must be set with a data root" in msg
    assert "fashioniq/captions/cap.dress.train.json" in msg and "imaterialist/imat2018_label_map.tsv" in msg
    assert "cfq/equivalent_captions.json" in msg and "missing folder" in msg and "cfq/judgments.tsv" not in msg
    _trained_looking_clip(tmp_path / "clip")
    p = load_params("cfq_evaluation", "paper", {"model": {"clip_path": str(tmp_path / "clip")}})
    with pytest.raises(cx.SettingsError, match=r"model.image_size is 224 but the CLIP .* takes 32 px"):
        cx.require_settings(p)
    with pytest.raises(cx.SettingsError, match="no config.json"):
        cx.require_settings(load_params("cfq_evaluation", "paper", {"model": {"clip_path": str(tmp_path)}}))
    cx.require_settings(_paper_params(tmp_path / "clip"))  # all there: nothing to say
    cx.require_settings(load_params("cfq_evaluation", "smoke"))


def test_killed_stage_resumes_to_the_uninterrupted_weights(tmp_path, monkeypatch):
    """A run's stage checkpoints into its run folder; killed after 4 of 6 steps and rerun, it resumes and ends
    with exactly the weights of a stage that went straight through."""
    from types import SimpleNamespace

    from visualsearch.cache import ResultCache

    _trained_looking_clip(tmp_path / "clip")
    p = _paper_params(tmp_path / "clip")
    p["checkpoint_every"] = 2
    for i in range(8):
        Image.new("RGB", (32, 32), (30 * i, 255 - 30 * i, 90)).save(tmp_path / f"{i}.png")
    captions = ["is red", "is blue", "shorter", "has stripes", "not floral", "is green", "longer", "is dark"]

    def experiment():
        exp = cx.CFQExperiment.models_only(p, ResultCache(tmp_path / "results"))
        exp.bank.add([tmp_path / f"{i}.png" for i in range(8)])
        exp.data = SimpleNamespace(fiq_train=cx.PairSet(np.arange(8), (np.arange(8) + 3) % 8,
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
    for rel in cx.REAL_FILES:
        assert rel.split("|")[0].strip() in names, rel
    for rel in cx.REAL_FOLDERS:
        assert rel.split("|")[0].strip() + "/" in names, rel


def test_cache_keys_name_the_device(tmp_path):
    """A result computed on the CPU is never reused as a GPU run's (it would be labelled with the GPU)."""
    from types import SimpleNamespace

    from visualsearch.cache import ResultCache
    from visualsearch.config import load_params

    keys = {}
    for device in ("cpu", "cuda"):
        exp = cx.CFQExperiment.models_only(load_params("cfq_evaluation", "smoke"), ResultCache(tmp_path / "r"))
        exp.device, exp.data = device, SimpleNamespace(fingerprints={"cfq": "abc"})
        keys[device] = (exp.pretrain_key(), exp.run_key("raf-fiq"))
    assert keys["cpu"][0] != keys["cuda"][0] and keys["cpu"][1] != keys["cuda"][1]
