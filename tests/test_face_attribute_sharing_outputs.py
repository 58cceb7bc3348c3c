"""What the face notebook writes at smoke size: the depth table, the sharing patterns, the chosen network
against its baselines, the claims, and the figures."""
import pandas as pd
import pytest

NB = "face_attribute_sharing"
ATTRS = ("age", "gender", "ethnicity", "emotion")


@pytest.fixture(scope="module")
def out(smoke_outputs):
    return smoke_outputs(NB)


@pytest.mark.notebook
def test_accuracy_by_depth_table(out):
    df = pd.read_csv(out / "results" / NB / "accuracy_by_depth.csv")
    ours = df[df["variant"].notna()]
    for method in ("finetune", "probe"):
        for a in ATTRS:
            rows = ours[(ours.variant == method) & (ours.attribute == a) & (ours.metric == f"{a} accuracy")]
            assert sorted(rows.depth) == [0, 2, 4]  # the smoke preset's depths
            assert rows.reproduced.between(0, 1).all() and (rows.n_seeds == 2).all() and (rows["std"] >= 0).all()
    assert len(ours[(ours.variant == "scratch")]) >= 4
    assert (ours[ours.metric == "age MAE (years)"].reproduced > 0).all()
    paper = df[df["variant"].isna()]
    assert len(paper) and paper.reported.isna().all()  # the paper's per-depth numbers are unknown


@pytest.mark.notebook
def test_sharing_patterns_and_chosen_network(out):
    pats = pd.read_csv(out / "results" / NB / "sharing_patterns.csv")
    chosen = pats[pats.role.fillna("").str.contains("chosen")]
    own = chosen[chosen.cost_at == "this preset's network at 32 px"]  # the network whose accuracies are reported
    g = own[own.metric == "GFLOPs (2 per multiply-add)"].reproduced.iloc[0]
    m = own[own.metric == "GMACs (multiply-adds)"].reproduced.iloc[0]
    assert g == pytest.approx(2 * m) and g <= 1.0
    # every pattern is also costed on the paper preset's network at 112 px, where the paper's budget is checked
    paper = chosen[chosen.cost_at.str.contains("paper preset's network") & chosen.cost_at.str.contains("112 px")]
    assert paper[paper.metric == "GFLOPs (2 per multiply-add)"].reproduced.iloc[0] > 20 * g
    base = pd.read_csv(out / "results" / NB / "chosen_vs_baselines.csv")
    methods = " | ".join(base.method.unique())
    for name in ("one forward pass", "head only", "separate networks (share nothing)", "from scratch"):
        assert name in methods
    one = base[base.method.str.contains("one forward pass")]
    assert set(one.metric) >= {f"{a} accuracy" for a in ATTRS} | {"age MAE (years)", "GFLOPs (2 per multiply-add)"}
    # the chosen pattern's cost equals that of the network built from it
    built = one[one.metric == "GFLOPs (2 per multiply-add)"].reproduced.iloc[0]
    assert built == pytest.approx(g)


@pytest.mark.notebook
def test_claims_and_figures(out):
    claims = pd.read_csv(out / "results" / NB / "claims.csv")
    assert len(claims) == 6 and claims.detail.str.len().min() > 20
    assert list(claims.id) == ["emotion_earlier", "age_earlier", "gender_little", "ethnicity_little", "one_gflop",
                               "chosen_vs_separate"]
    source = dict(zip(claims.id, claims.source))
    assert [i for i, s in source.items() if s == "paper"] == ["emotion_earlier", "age_earlier", "one_gflop"]
    assert set(source.values()) == {"paper", "extension"}
    assert (claims.seeds == 2).all() and claims.criterion.str.len().min() > 20  # the smoke preset's 2 seeds
    assert claims.comparison.str.len().min() > 10 and claims.verdict.str.startswith("not evaluated").all()
    depth = claims.set_index("id").loc["emotion_earlier"]
    assert "selection half" in depth.criterion and "capacity control" in depth.detail
    assert claims.set_index("id").loc["one_gflop"].proxy.strip()
    figs = {p.stem for p in (out / "figures" / NB).glob("*.png")}
    assert figs >= {"accuracy_vs_depth", "flops_vs_accuracy", "confusion_matrices", "faces_identities_by_emotion",
                    "predictions_grid"}


@pytest.mark.notebook
def test_linear_readout_table(out):
    """The diagnostic of head-only emotion: global pooling against a 3x3 grid, after stages 3 and 4."""
    df = pd.read_csv(out / "results" / NB / "linear_readout.csv")
    test = df[df.metric.str.endswith("test accuracy")]
    assert set(test.attribute) == {"emotion", "gender"} and sorted(set(test.depth)) == [3, 4]
    assert sorted(set(test.grid)) == [1, 3] and test.reproduced.between(0, 1).all()
    chance = df[df.attribute == "emotion"].chance.tolist()
    assert chance == pytest.approx([0.2] * len(chance))
