"""The triplet product search notebook at smoke size: every table, figure and claim it promises."""
import json

import numpy as np
import pandas as pd
import pytest

pytestmark = [pytest.mark.notebook, pytest.mark.slow]
NB = "triplet_product_search"


@pytest.fixture(scope="module")
def out(smoke_outputs):
    return smoke_outputs(NB)


def _table(out, name):
    return pd.read_csv(out / "results" / NB / f"{name}.csv")


def test_inshop_table_has_every_method_and_k(out):
    df = _table(out, "inshop_recall")
    methods = ["off-the-shelf features", "random triplets", "batch-hard online (paper)", "semi-hard online",
               "batch-all online"]
    assert list(dict.fromkeys(df.method)) == methods
    assert sorted(set(df.metric), key=lambda m: int(m[2:])) == ["R@1", "R@10", "R@20", "R@30", "R@40", "R@50"]
    assert df.reproduced.between(0, 1).all() and (df.preset == "smoke").all()
    assert df.reported.isna().all()  # the paper's numbers are unknown and stay empty
    assert df.data.str.contains("synthetic").all()
    for m in methods:  # recall never decreases with k
        r = df[df.method == m].set_index("metric").reproduced
        assert (np.diff([r[f"R@{k}"] for k in (1, 10, 20, 30, 40, 50)]) >= 0).all()


def test_sop_table_sweeps_p_and_says_when_k_is_capped(out):
    df = _table(out, "sop_recall")
    assert set(df.method) == {"off-the-shelf features", "single-category p=0", "single-category p=0.5",
                              "single-category p=0.8 (paper)", "single-category p=1"}
    assert any("capped at" in m for m in df.metric)  # the smoke test set is smaller than 1000 images
    assert "R@1" in set(df.metric) and df.reproduced.between(0, 1).all()


def test_context_and_error_tables(out):
    ctx = _table(out, "sop_context")
    assert ctx.reproduced.isna().all() and (ctx.reported > 0).all()  # others' numbers, never shown as ours
    err = _table(out, "sop_error_sources")
    assert set(err.metric) == {"wrong_top1", "lookalike", "same_category", "other_category"}


def test_claims_declared_decided_on_two_seeds_with_their_proxies(out):
    claims = _table(out, "claims")
    assert list(claims.id) == ["online_triplets_deepfashion", "single_category_sop"]
    assert (claims.source == "paper").all() and (claims.seeds == 2).all()
    assert claims.proxy.str.len().gt(20).all()  # both are proxies, each says why
    assert claims.criterion.str.contains(r"paired bootstrap over .* test products .*, 2\+? seed\(s\) pooled", regex=True).all()
    assert claims.comparison.tolist() == ["batch_hard > random, off_the_shelf on hit@1 per In-shop query",
                                          "p=0.8 > p=0 on hit@1 per SOP test image"]
    assert claims.detail.str.contains(r"vs random [0-9.]+: [+-]", regex=True).any()
    assert (claims.verdict == "not evaluated (smoke size)").all()


def test_per_seed_tables_back_the_claims(out):
    runs = _table(out, "claim_runs_by_seed")
    assert set(runs.metric) == {"R@1 seed 0", "R@1 seed 1", "R@1 mean of 2 seeds"}
    assert set(runs.method) == {"batch-hard online (paper)", "random triplets", "off-the-shelf features",
                                "single-category p=0.8 (paper)", "single-category p=0"}
    r = runs.set_index(["method", "metric"]).reproduced
    # seed 0 is the tables' own run
    inshop = _table(out, "inshop_recall").set_index(["method", "metric"]).reproduced
    sop = _table(out, "sop_recall").set_index(["method", "metric"]).reproduced
    assert r[("batch-hard online (paper)", "R@1 seed 0")] == pytest.approx(inshop[("batch-hard online (paper)", "R@1")])
    assert r[("single-category p=0", "R@1 seed 0")] == pytest.approx(sop[("single-category p=0", "R@1")])
    assert r[("off-the-shelf features", "R@1 seed 0")] == r[("off-the-shelf features", "R@1 seed 1")]
    diffs = _table(out, "claim_differences_by_seed")
    assert set(diffs.metric) == {"R@1 difference", "95% low", "95% high"}
    assert diffs.method.str.endswith("(2 seeds pooled)").sum() == 3 * 3  # 3 comparisons x 3 metrics


def test_figures_and_provenance(out):
    figs = out / "figures" / NB
    for name in ("world_examples", "inshop_recall_at_k", "inshop_similarity_hist", "inshop_recall20_per_category",
                 "inshop_top1_category_confusion", "inshop_retrieval_examples", "inshop_training_curves",
                 "sop_recall1_vs_steps", "sop_training_curves"):
        assert (figs / f"{name}.png").is_file() and (figs / f"{name}.pdf").is_file(), name
    side = json.loads((out / "results" / NB / "inshop_recall.provenance.json").read_text())
    assert side["preset"] == "smoke" and side["parameters"]["train"]["steps"] > 0
    assert any("synthetic products world" in k for k in side["data"])
