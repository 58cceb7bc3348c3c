"""The MAAF notebook at smoke size: every table and figure written, in the tidy format, with the published
numbers where known and the claims recorded."""
import pandas as pd
import pytest

NB = "maaf_ablations"
PARAMS = "trainable parameters"


@pytest.fixture(scope="module")
def out(smoke_outputs):
    return smoke_outputs(NB)


def read(out, name):
    return pd.read_csv(out / "results" / NB / f"{name}.csv")


def test_fiq_table_has_protocol_rows_and_reported_numbers(out):
    df = read(out, "fiq_recall")
    assert {"method", "dataset", "metric", "reproduced", "reported", "data", "preset"} <= set(df.columns)
    params = df[df.metric == PARAMS].set_index("method")["reproduced"]
    ours = df[df["reproduced"].notna() & (df.metric != PARAMS)]
    assert {"MAAF", "TIRG", "TIRG (matched capacity)", "image only", "concat"} <= set(ours["method"])
    # the capacity control: about MAAF's trainable parameters, well above plain TIRG's
    assert abs(params["TIRG (matched capacity)"] - params["MAAF"]) <= 0.02 * params["MAAF"]
    assert params["TIRG"] < 0.9 * params["MAAF"]
    assert set(ours["dataset"]) == {"dress", "shirt", "toptee", "average"}
    assert ours["reproduced"].between(0, 100).all()
    overall = df[(df.method == "MAAF") & (df.dataset == "average") & (df.metric == "(R@10+R@50)/2")].iloc[0]
    assert overall["reported"] == pytest.approx(36.6)
    tirg = df[(df.method == "TIRG") & (df.dataset == "average") & (df.metric == "(R@10+R@50)/2")].iloc[0]
    assert tirg["reported"] == pytest.approx(23.66) and "TIRG" in tirg["reported_source"]
    # the average is the mean over categories
    maaf = ours[(ours.method == "MAAF") & (ours.metric == "R@10")].set_index("dataset")["reproduced"]
    assert maaf["average"] == pytest.approx(maaf[["dress", "shirt", "toptee"]].mean())


@pytest.mark.parametrize("name, metrics", [("css_recall", {"R@1", "R@5", "R@10", "R@50"}),
                                           ("fashion200k_recall", {"R@1", "R@10", "R@50"}),
                                           ("birds_to_words_recall", {"R@1", "R@5", "R@10", "R@50"}),
                                           ("spot_the_diff_recall", {"R@1", "R@5", "R@10", "R@50"})])
def test_other_datasets(out, name, metrics):
    df = read(out, name)
    assert set(df["metric"]) == metrics | {PARAMS} and {"MAAF", "TIRG", "TIRG (matched capacity)"} <= set(df["method"])
    assert df[df.metric != PARAMS]["reproduced"].between(0, 100).all()
    assert (df[df.metric == PARAMS]["reproduced"] > 0).all()


def test_every_claim_comparison_is_tabulated(out):
    df = read(out, "claim_comparisons")
    assert {"MAAF vs TIRG (matched capacity)", "MAAF vs image only", "MAAF vs TIRG"} <= set(df["method"])
    assert {"Spot-the-Diff", "Birds-to-Words", "Fashion200k", "CSS", "Fashion IQ"} == set(df["dataset"])
    wide = df.pivot_table(index=["method", "dataset"], columns="metric", values="reproduced")
    assert wide["difference"].to_numpy() == pytest.approx((wide["MAAF"] - wide["compared"]).to_numpy())


def test_ablations_and_claims(out):
    ab = read(out, "ablations")
    assert ab["method"].str.startswith("MAAF (full model)").any() and len(set(ab["method"])) >= 3
    full = ab[(ab.method == "MAAF (full model)") & (ab.metric == "change vs full model")]["reproduced"]
    assert full.iloc[0] == 0
    claims = read(out, "claims")
    assert {"id", "claim", "comparison", "source", "verdict", "criterion", "seeds", "detail", "proxy"} <= set(claims.columns)
    assert list(claims["id"]) == ["fiq_beats_baselines", "css_beats_baselines", "f200k_competitive",
                                  "b2w_beats_baselines", "spot_beats_baselines", "words_avoid_named_region"]
    assert set(claims["source"]) == {"paper"} and (claims["seeds"] == 2).all()  # every claim decided, on 2 seeds
    assert claims["criterion"].str.startswith("paired bootstrap over").all()
    assert set(claims["verdict"]) == {"not evaluated (smoke size)"}
    assert claims.set_index("id")["proxy"].notna().tolist() == [False] * 5 + [True]
    assert claims.set_index("id").loc["f200k_competitive", "comparison"].startswith(
        "MAAF within 0.02 of TIRG, TIRG (matched capacity), concat")


def test_the_per_seed_table_holds_every_decided_claim(out):
    scores = read(out, "claim_scores")
    assert {f"seed {s}" for s in (0, 1)} | {"seeds pooled", "items"} == set(scores["metric"])
    assert {d.split(" (")[0] for d in scores["dataset"]} == set(read(out, "claims")["id"])
    pooled = scores[scores.metric == "seeds pooled"].set_index(["dataset", "method"])["reproduced"]
    by_seed = scores[scores.metric.str.startswith("seed ")].groupby(["dataset", "method"])["reproduced"].mean()
    assert pooled.sort_index().to_numpy() == pytest.approx(by_seed.sort_index().to_numpy())  # same items per seed
    costs = read(out, "run_costs")
    assert {"MAAF, seed 1", "tirg, seed 1"} <= set(costs[costs.dataset == "css"]["method"])
    places = read(out, "css_place_attention")
    assert {"MAAF (seed 0)", "MAAF (seed 1)"} == set(places["method"])


def test_css_table_shows_the_published_r1(out):
    css = read(out, "css_recall")
    row = css[(css.method == "MAAF") & (css.metric == "R@1")].iloc[0]
    assert row["reported"] == pytest.approx(87.8) and "3D-to-3D" in row["reported_source"]


def test_figures_and_sidecars(out):
    figures = out / "figures" / NB
    for name in ("attention_css_0", "attention_fashioniq_0", "retrieval_fashioniq", "retrieval_css",
                 "training_curves_fashioniq"):
        assert (figures / f"{name}.png").is_file() and (figures / f"{name}.pdf").is_file()
        assert (figures / f"{name}.provenance.json").is_file()
