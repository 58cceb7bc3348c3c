"""The face paper's claims (visualsearch.papers.face.claims): the selection/decision split by person, per-image
scores against naive loops, the earlier depth chosen on the selection half only, the capacity control deciding
with the depth claims, the declared claims naming what the code produces, and the wiring into the reporter."""
import pytest
import torch

from visualsearch.claims import declared_claims
from visualsearch.config import load_params
from visualsearch.data.images import ImageStore
from visualsearch.papers.face import claims
from visualsearch.papers.face.data import ATTRIBUTES, FaceSplit
from stubs import RecordingReporter

N_PEOPLE, PHOTOS = 40, 5
DEPTHS = [0, 2, 4]
SEEDS = [0, 1]


def _split(n_people=N_PEOPLE, photos=PHOTOS, unlabelled_emotion=0):
    n = n_people * photos
    g = torch.Generator().manual_seed(3)
    labels = {a: torch.randint(0, 4, (n,), generator=g) for a in ATTRIBUTES}
    labels["emotion"][:unlabelled_emotion] = -1
    return FaceSplit(ImageStore(4, torch.zeros(n, 3, 4, 4, dtype=torch.uint8)), labels,
                     torch.arange(n_people).repeat_interleave(photos), torch.full((n,), float("nan")))


def _runs(split, acc, seeds=SEEDS, depths=DEPTHS):
    """Fake runs: the prediction of (attr, method, depth, seed) is right on each image with probability
    acc(attr, method, depth, image mask) (a float, or a function of the image index)."""
    runs = {}
    n = len(split)
    for a in ATTRIBUTES:
        y = split.labels[a].clamp(min=0)
        for m in ("finetune", "probe"):
            for d in depths:
                for s in seeds:
                    g = torch.Generator().manual_seed(1000 * ATTRIBUTES.index(a) + 100 * (m == "probe") + 10 * d + s)
                    prob = torch.as_tensor([acc(a, m, d, i) for i in range(n)], dtype=torch.float64)
                    right = torch.rand(n, generator=g, dtype=torch.float64) < prob
                    runs[(a, m, d, s)] = {"pred": torch.where(right, y, (y + 1) % 4).to(torch.int16)}
    return runs


def _params(capacity_control=True, **extra):
    p = load_params("face_attribute_sharing", "default")
    p = {**p, "depths": DEPTHS, "seeds": SEEDS, **extra}
    p["claim_tests"] = {**p["claim_tests"], "capacity_control": capacity_control, "n_boot": 500}
    return p


def test_split_keeps_people_whole_and_is_declared_by_its_seed():
    ident = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, -1, -1, -1, -1, 5, 5])
    h = claims.split_by_person(ident, 0.5, seed=0)
    for person in (0, 1, 2, 3, 5):
        assert h.select[ident == person].unique().numel() == 1      # a person's photos sit on one side
    known = ident >= 0
    assert int(h.select[known].sum()) in (4, 6) and int(h.select[~known].sum()) == 2
    assert torch.equal(h.clusters[known], ident[known]) and h.clusters[~known].unique().numel() == 4
    assert not set(h.clusters[~known].tolist()) & set(ident[known].tolist())
    assert torch.equal(claims.split_by_person(ident, 0.5, seed=0).select, h.select)
    assert any(not torch.equal(claims.split_by_person(ident, 0.5, seed=s).select, h.select) for s in range(1, 6))
    assert torch.equal(h.decide, ~h.select) and h.identities_known
    assert not claims.split_by_person(torch.full((6,), -1), 0.5, 0).identities_known


def test_per_image_scores_against_naive_loops():
    split = _split(n_people=6, photos=3, unlabelled_emotion=4)
    runs = _runs(split, lambda a, m, d, i: 0.6)
    c = claims.correct(runs, split, "emotion", "finetune", 2, SEEDS)
    for si, s in enumerate(SEEDS):
        for i in range(len(split)):
            y = int(split.labels["emotion"][i])
            want = float("nan") if y < 0 else float(int(runs[("emotion", "finetune", 2, s)]["pred"][i]) == y)
            assert (c[si, i].isnan() and want != want) or float(c[si, i]) == want
    items = torch.tensor([i % 2 == 0 for i in range(len(split))])
    pattern = {"age": 0, "gender": 2, "ethnicity": 4, "emotion": 2}
    sc = claims.pattern_scores(runs, split, pattern, SEEDS, items)
    assert sc.shape == (len(SEEDS), int(items.sum()))
    for si, s in enumerate(SEEDS):   # the mean over items is the mean over attributes of each one's accuracy
        accs = []
        for a, d in pattern.items():
            hits = [int(runs[(a, "finetune", d, s)]["pred"][i]) == int(split.labels[a][i])
                    for i in range(len(split)) if items[i] and split.labels[a][i] >= 0]
            accs.append(sum(hits) / len(hits))
        assert float(sc[si].mean()) == pytest.approx(sum(accs) / len(accs))
    h = claims.Halves(items, torch.arange(len(split)), True)
    assert claims.accuracy_on(runs, split, h.select, "emotion", "finetune", 2, SEEDS) == pytest.approx(
        float(torch.nanmean(c[:, items])))


def test_the_earlier_depth_is_chosen_on_the_selection_half_only():
    split = _split()
    h = claims.split_by_person(split.identity, 0.5, 0)
    sel = h.select.tolist()
    # depth 0 is best on the selection half, depth 2 on the decision half: the choice must be 0
    runs = _runs(split, lambda a, m, d, i: {0: 0.9 if sel[i] else 0.3, 2: 0.3 if sel[i] else 0.9, 4: 0.5}[d])
    assert claims.earlier_depth(runs, split, h, "age", "finetune", DEPTHS, SEEDS) == 0
    flat = _runs(split, lambda a, m, d, i: 1.0)                       # ties go to the deeper, cheaper depth
    assert claims.earlier_depth(flat, split, h, "age", "finetune", DEPTHS, SEEDS) == 2
    acc = claims.selection_accuracy(runs, split, h, {"depths": DEPTHS, "seeds": SEEDS})
    assert acc["age"][0] > 0.8 and acc["age"][2] < 0.4


def _depth_world(finetune_gain, probe_gain):
    """Fake runs where the earlier depths beat the last one by the given gains (fine-tuning, probe)."""
    split = _split()

    def acc(a, m, d, i):
        gain = finetune_gain if m == "finetune" else probe_gain
        return 0.4 + (gain[a] if d < 4 else 0.0)
    return split, _runs(split, acc)


def test_depth_claims_decide_with_the_capacity_control():
    big = {"emotion": 0.4, "age": 0.4, "gender": 0.0, "ethnicity": 0.0}
    none = {a: 0.0 for a in ATTRIBUTES}
    p = _params()
    ids = declared_claims(p)
    split, runs = _depth_world(big, big)
    h = claims.halves_of(split, p)
    d = claims.decide_depth_claim(ids["emotion_earlier"], "emotion", runs, split, h, p)
    assert d.passed and d.seeds == 2 and "capacity control (holds)" in d.detail
    assert "selection half (20 people)" in d.criterion and "20 test people" in d.criterion
    split, runs = _depth_world(big, none)        # fine-tuning gains, the equal-capacity probe does not
    d = claims.decide_depth_claim(ids["emotion_earlier"], "emotion", runs, split, h, p)
    assert not d.passed and d.low > 0 and "capacity control (FAILS)" in d.detail
    off = _params(capacity_control=False)
    assert claims.decide_depth_claim(ids["emotion_earlier"], "emotion", runs, split, h, off).passed
    split, runs = _depth_world(none, none)       # no gain at all: fails
    assert not claims.decide_depth_claim(ids["age_earlier"], "age", runs, split, h, p).passed


def test_gains_little_is_head_only_within_the_declared_margin():
    p = _params()
    ids = declared_claims(p)
    assert ids["gender_little"].threshold == -0.05 and ids["gender_little"].source == "extension"
    split, runs = _depth_world({a: 0.0 for a in ATTRIBUTES}, {a: 0.0 for a in ATTRIBUTES})
    h = claims.halves_of(split, p)
    d = claims.decide_depth_claim(ids["gender_little"], "gender", runs, split, h, p)
    assert d.passed and "capacity control" not in d.detail     # the control belongs to the paper's claims
    split, runs = _depth_world({a: 0.3 for a in ATTRIBUTES}, {a: 0.0 for a in ATTRIBUTES})
    assert not claims.decide_depth_claim(ids["ethnicity_little"], "ethnicity", runs, split, h, p).passed


def test_claims_reach_the_reporter_with_source_criterion_and_seeds():
    p = _params()
    split, runs = _depth_world({"emotion": 0.4, "age": 0.4, "gender": 0.0, "ethnicity": 0.0},
                               {"emotion": 0.4, "age": 0.4, "gender": 0.0, "ethnicity": 0.0})
    h = claims.halves_of(split, p)
    rep = RecordingReporter()
    out = claims.check_depth_claims(rep, runs, split, h, p)
    assert [c.id for c, _ in rep.decided] == list(claims.DEPTH_CLAIMS) == list(out)
    assert all(d.passed for d in out.values())
    assert {c.id: c.source for c, _ in rep.decided} == {"emotion_earlier": "paper", "age_earlier": "paper",
                                                         "gender_little": "extension", "ethnicity_little": "extension"}
    d = claims.check_loss_vs_separate(rep, runs, split, h, {"age": 2, "gender": 4, "ethnicity": 4, "emotion": 2}, p)
    claim, decision = rep.decided[-1]
    assert claim.id == "chosen_vs_separate" and claim.source == "extension" and decision is d
    assert d.passed and "age@2 gender@4 ethnicity@4 emotion@2 vs age@0 gender@0 ethnicity@0 emotion@0" in d.detail
    worse = claims.check_loss_vs_separate(rep, runs, split, h, {a: 4 for a in ATTRIBUTES}, p)
    assert not worse.passed    # head only everywhere loses 0.2 on average against depth 0: more than 0.02
    p["sharing"] = {"convention": "flops", "budget": 1e9}
    pat = {"age": 2, "gender": 0, "ethnicity": 0, "emotion": 0}
    net = "the paper preset's network at 112 px"
    assert p["checks"]["one_gflop"]["tolerance"] == 0.25
    assert claims.check_budget(rep, pat, {"flops": 1.2e9, "macs": 0.6e9, "params": 1}, net, p)  # "about": within 25%
    assert not claims.check_budget(rep, pat, {"flops": 1.3e9, "macs": 0.65e9, "params": 1}, net, p)  # it can fail
    p["sharing"]["convention"] = "macs"
    assert claims.check_budget(rep, pat, {"flops": 1.3e9, "macs": 0.65e9, "params": 1}, net, p)
    text, ok, detail, measured, kw = rep.checks[-3]
    assert text == "the final network needs only about 1 GFLOP for all predictions" and ok
    assert detail == ("age@2 gender@0 ethnicity@0 emotion@0 on the paper preset's network at 112 px: 1.200 GFLOPs "
                      "(2 per multiply-add) = 0.600 G multiply-adds; bound 1.25 G flops") and measured == pytest.approx(1.2)
    assert kw["source"] == "paper" and kw["seeds"] == 2 and kw["claim_id"] == "one_gflop"
    assert kw["criterion"] and "no budget filter" in kw["comparison"] and "without the budget filter" in kw["proxy"]


@pytest.mark.parametrize("preset", ["smoke", "default", "paper"])
def test_declared_claims_parse_and_name_the_methods_the_code_compares(preset):
    p = load_params("face_attribute_sharing", preset)
    declared = declared_claims(p)
    assert set(declared) == set(claims.DEPTH_CLAIMS) | {claims.PATTERN_CLAIM}
    for c in declared.values():
        assert {c.better, *c.worse} <= set(claims.METHODS), c
    paper = {c.id for c in declared.values() if c.source == "paper"}
    assert paper == {"emotion_earlier", "age_earlier"}
    for cid in paper:   # the paper's words, quoted
        assert declared[cid].text.startswith("Age and emotion improve when fine-tuned from earlier layers onward")
        assert declared[cid].better == claims.EARLIER and declared[cid].threshold == 0.0
    assert len(p["seeds"]) >= 2 and p["claim_tests"]["capacity_control"]
    check = p["checks"][claims.BUDGET_CHECK]
    assert check["source"] == "paper" and check["proxy"].strip()
    assert check["preset"] == "paper" and 0 < check["tolerance"] < 1
