"""CFQ scoring against scikit-learn and hand-computed cases."""
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, ndcg_score, roc_auc_score

from visualsearch import cfq_metrics as cm


def judgments(rows):
    """rows of (subset, query, caption, item, accurate, similar) -> a judgments frame."""
    return pd.DataFrame(rows, columns=["subset", "query_hash", "caption", "catalog_hash", "accurate", "similar"])


def test_threshold_names_follow_the_released_code():
    assert [cm.threshold_name(t) for t in cm.THRESHOLDS] == ["-1", "-2/3", "-1/3", "0", "1/3", "2/3", "1"]
    cols = cm.label_columns()
    assert cols[3] == "accurate_0" and cols[8] == "similar_-2/3" and len(cols) == 14


def test_aggregation_means_labels_and_relevance_by_hand():
    df = judgments([
        ("broad", "q1", "red", "a", 1, 1), ("broad", "q1", "red", "a", 0, -1), ("broad", "q1", "red", "a", -1, 1),
        ("broad", "q1", "red", "b", -1, -1), ("broad", "q1", "red", "b", -1, 0),
    ])
    agg = cm.aggregate_judgments(df).set_index("catalog_hash")
    assert agg.loc["a", "accurate"] == pytest.approx(0.0) and agg.loc["a", "similar"] == pytest.approx(1 / 3)
    assert agg.loc["a", "n_judgments"] == 3
    # relevance int(3 (0 + 1/3 + 2)) = 7 ; b: int(3 (-1 - 0.5 + 2)) = 1
    assert agg.loc["a", "relevance"] == 7 and agg.loc["b", "relevance"] == 1
    # accurate mean 0 > -0.01 -> accurate_0 True ; 0 > 0.33 False
    assert bool(agg.loc["a", "accurate_0"]) and not bool(agg.loc["a", "accurate_1/3"])
    # similar mean -0.5 of b: > -0.67 True, > -0.34 False
    assert bool(agg.loc["b", "similar_-2/3"]) and not bool(agg.loc["b", "similar_-1/3"])
    # a mean of exactly -2/3 counts as positive at the threshold named -2/3 (it is -0.67)
    exact = cm.aggregate_judgments(judgments([("s", "q", "c", "x", -1, -1), ("s", "q", "c", "x", -1, 0),
                                              ("s", "q", "c", "x", 0, -1)]))
    assert bool(exact["similar_-2/3"].iloc[0]) and bool(exact["accurate_-2/3"].iloc[0])
    assert not bool(exact["accurate_-1/3"].iloc[0])


def test_graded_relevance_does_not_lose_a_level_to_rounding():
    acc = np.array([2 / 3, -1 / 3, 1.0, -1.0, 1 / 3])
    sim = np.array([2 / 3, 1 / 3, 1.0, -1.0, 0.0])
    assert cm.graded_relevance(acc, sim).tolist() == [10, 6, 12, 0, 7]


def test_aggregation_rejects_non_numeric_judgments():
    df = judgments([("s", "q", "c", "x", "yes", 1)])
    with pytest.raises(ValueError, match="accurate"):
        cm.aggregate_judgments(df)


@pytest.mark.parametrize("seed", range(6))
def test_binary_metrics_match_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 40))
    scores = np.round(rng.normal(size=n), 1)  # rounding makes ties
    labels = rng.random((n, 4)) < np.array([0.1, 0.4, 0.7, 0.9])
    labels[0, :] = [True, False, True, False]
    labels[1, :] = [False, True, False, True]
    auc = cm.roc_auc_columns(scores, labels)
    ap = cm.average_precision_columns(scores, labels)
    for j in range(4):
        assert auc[j] == pytest.approx(roc_auc_score(labels[:, j], scores))
        assert ap[j] == pytest.approx(average_precision_score(labels[:, j], scores))


def test_single_class_columns_are_undefined():
    scores = np.array([0.3, 0.1, 0.2])
    labels = np.array([[True, False], [True, False], [True, False]])
    assert np.isnan(cm.roc_auc_columns(scores, labels)).all()
    assert np.isnan(cm.average_precision_columns(scores, labels)).all()
    rp = cm.r_precision_columns(scores, labels)
    assert rp[0] == 1.0 and np.isnan(rp[1])


def test_r_precision_by_hand():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    labels = np.array([True, False, True, True, False])[:, None]  # R = 3; top 3 hold 2 positives
    assert cm.r_precision_columns(scores, labels)[0] == pytest.approx(2 / 3)
    assert cm.r_precision_columns(scores, labels, as_fraction=False)[0] == 2


@pytest.mark.parametrize("seed", range(6))
def test_ndcg_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 30))
    scores = np.round(rng.normal(size=n), 1)
    rel = rng.integers(0, 13, size=n)
    rel[0] = 5
    assert cm.ndcg(scores, rel) == pytest.approx(ndcg_score(rel[None], scores[None]))
    assert cm.ndcg(scores, rel, exponential=True) == pytest.approx(ndcg_score((2.0 ** rel - 1)[None], scores[None]))


def test_ndcg_by_hand_and_undefined_cases():
    # ranking [rel 1, rel 3]: DCG = 1 + 3/log2(3); ideal = 3 + 1/log2(3)
    expected = (1 + 3 / math.log2(3)) / (3 + 1 / math.log2(3))
    assert cm.ndcg(np.array([2.0, 1.0]), np.array([1, 3])) == pytest.approx(expected)
    assert math.isnan(cm.ndcg(np.array([1.0]), np.array([3])))
    assert math.isnan(cm.ndcg(np.array([1.0, 0.5]), np.array([0, 0])))


def two_subset_world():
    """Two subsets; broad has 2 query images, 'other' has 1. Scores fixed by hand."""
    rows = []
    # broad / q1 / "red": items a (acc yes, sim reasonable), b (no, somewhat), c (no, not)
    for item, acc, sim in (("a", 1, 1), ("b", -1, 0), ("c", -1, -1)):
        rows += [("broad", "q1", "red", item, acc, sim)] * 2
    # broad / q2 / "red": items d (yes), e (no)
    rows += [("broad", "q2", "red", "d", 1, 1), ("broad", "q2", "red", "e", -1, -1)]
    # other / q3 / "shorter": f (yes), g (not sure, reasonable), h (no)
    rows += [("other", "q3", "shorter", "f", 1, 1), ("other", "q3", "shorter", "g", 0, 1),
             ("other", "q3", "shorter", "h", -1, -1)]
    agg = cm.aggregate_judgments(judgments(rows))
    score = {"a": 0.5, "b": 0.9, "c": 0.1, "d": 0.2, "e": 0.8, "f": 0.7, "g": 0.6, "h": 0.1}
    return agg, agg["catalog_hash"].map(score).to_numpy()


def test_metrics_per_group_and_weighted_over_subsets_by_hand():
    agg, scores = two_subset_world()
    res = cm.cfq_metrics(agg, scores)
    # broad, accurate_0: group q1 ranks b, a, c with only a positive -> AP 1/2, AUC 1/2; group q2 ranks e, d
    # with d positive -> AP 1/2, AUC 0. m_ap(broad) = 1/2, m_auc(broad) = 1/4.
    assert res.value("m_ap", "accurate_0", "broad") == pytest.approx(0.5)
    assert res.value("m_auc", "accurate_0", "broad") == pytest.approx(0.25)
    # other, accurate_0: positives f (0.7), g (0.6; mean 0 >= 0); h negative -> AP 1, AUC 1
    assert res.value("m_ap", "accurate_0", "other") == pytest.approx(1.0)
    # weighted by query images: broad 2, other 1
    assert res.value("m_ap", "accurate_0") == pytest.approx((2 * 0.5 + 1 * 1.0) / 3)
    assert res.value("m_auc", "accurate_0") == pytest.approx((2 * 0.25 + 1 * 1.0) / 3)
    # pooled over broad's five pairs: positives a (0.5), d (0.2); negatives b .9, c .1, e .8
    pooled = agg[agg.subset == "broad"]
    expected = roc_auc_score(pooled["accurate_0"], scores[agg.subset == "broad"])
    assert res.value("roc_auc", "accurate_0", "broad") == pytest.approx(expected)
    assert res.value("ap", "accurate_0", "broad") == pytest.approx(
        average_precision_score(pooled["accurate_0"], scores[agg.subset == "broad"]))
    # R-precision: broad q1 R=1 top is b -> 0, q2 R=1 top is e -> 0; other R=2 top-2 f, g -> 1
    assert res.value("rprec", "accurate_0", "broad") == pytest.approx(0.0)
    assert res.value("rprec", "accurate_0") == pytest.approx(1 / 3)
    # nDCG of 'other': relevance f=12, g=9, h=0; ranking already ideal -> 1
    assert res.value("linear_ndcg", "relevance", "other") == pytest.approx(1.0)
    primary = res.primary()
    assert set(primary) == {"accurate mAP", "similar mAP", "nDCG"}
    assert primary["accurate mAP"] == pytest.approx((2 * 0.5 + 1.0) / 3)


def test_grouping_by_caption_text_merges_query_images():
    agg, scores = two_subset_world()
    res = cm.cfq_metrics(agg, scores, group_by="caption")
    # broad's one caption "red" now ranks b .9, e .8, a .5, d .2, c .1 with a, d positive
    expected = average_precision_score([0, 0, 1, 1, 0], [0.9, 0.8, 0.5, 0.2, 0.1])
    assert res.value("m_ap", "accurate_0", "broad") == pytest.approx(expected)
    assert res.value("m_ap", "accurate_0", "broad") != pytest.approx(
        cm.cfq_metrics(agg, scores).value("m_ap", "accurate_0", "broad"))
    with pytest.raises(ValueError, match="group_by"):
        cm.cfq_metrics(agg, scores, group_by="query")


def test_rprecision_count_option_and_perfect_scores():
    agg, _ = two_subset_world()
    perfect = (agg["accurate"] + 0.1 * agg["similar"]).to_numpy()
    res = cm.cfq_metrics(agg, perfect)
    assert res.value("m_ap", "accurate_0") == pytest.approx(1.0)
    assert res.value("rprec", "accurate_0") == pytest.approx(1.0)
    count = cm.cfq_metrics(agg, perfect, rprecision="count")
    assert count.value("rprec", "accurate_0", "other") == pytest.approx(2.0)  # R = 2 in 'other'


def test_cfq_metrics_rejects_bad_scores():
    agg, scores = two_subset_world()
    with pytest.raises(ValueError, match="scores"):
        cm.cfq_metrics(agg, scores[:-1])
    bad = scores.copy()
    bad[0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        cm.cfq_metrics(agg, bad)


def test_random_scores_give_chance_auc_and_label_fractions():
    rng = np.random.default_rng(0)
    rows = [("broad", f"q{q}", "cap", f"i{q}_{i}", int(rng.integers(-1, 2)), int(rng.integers(-1, 2)))
            for q in range(60) for i in range(8) for _ in range(3)]
    agg = cm.aggregate_judgments(judgments(rows))
    res = cm.cfq_metrics(agg, rng.normal(size=len(agg)))
    assert abs(res.value("roc_auc", "accurate_0") - 0.5) < 0.06
    fr = cm.label_fractions(agg)
    assert fr[fr.label == "accurate_-1"].fraction_positive.iloc[0] > fr[fr.label == "accurate_1"].fraction_positive.iloc[0]
    assert len(fr) == 14


def test_cosine_scores_and_missing_embeddings():
    agg, _ = two_subset_world()
    q = {(r.query_hash, r.caption): np.array([1.0, 0.0]) for r in agg.itertuples()}
    c = {item: np.array([1.0, 1.0]) for item in agg.catalog_hash}
    del c["h"]
    s = cm.cosine_scores(agg, q, c)
    assert np.isnan(s[agg.catalog_hash.to_numpy() == "h"]).all()
    assert s[agg.catalog_hash.to_numpy() == "a"][0] == pytest.approx(1 / math.sqrt(2))


def test_whole_pipeline_matches_a_naive_sklearn_loop():
    """Per-group means, pooled values and subset weights against groupby + scikit-learn on random data."""
    rng = np.random.default_rng(3)
    rows = []
    for subset, n_queries in (("broad", 7), ("narrow", 3)):
        for q in range(n_queries):
            for cap in ("a", "b"):
                for i in range(int(rng.integers(2, 7))):
                    for _ in range(int(rng.integers(1, 4))):
                        rows.append((subset, f"{subset}{q}", cap, f"{subset}{q}{cap}{i}",
                                     int(rng.integers(-1, 2)), int(rng.integers(-1, 2))))
    agg = cm.aggregate_judgments(judgments(rows))
    scores = np.round(rng.normal(size=len(agg)), 1)
    res = cm.cfq_metrics(agg, scores)
    agg = agg.assign(score=scores)
    weights = {"broad": 7, "narrow": 3}
    for label in ("accurate_0", "similar_-2/3", "accurate_1/3"):
        expected = {}
        for subset, part in agg.groupby("subset"):
            aps, aucs = [], []
            for _, g in part.groupby(["query_hash", "caption"]):
                if g[label].nunique() == 2:
                    aps.append(average_precision_score(g[label], g.score))
                    aucs.append(roc_auc_score(g[label], g.score))
            expected[subset] = np.mean(aps)
            assert res.value("m_auc", label, subset) == pytest.approx(np.mean(aucs))
            assert res.value("m_ap", label, subset) == pytest.approx(np.mean(aps))
            assert res.value("roc_auc", label, subset) == pytest.approx(roc_auc_score(part[label], part.score))
        assert res.value("m_ap", label) == pytest.approx(
            sum(weights[s] * v for s, v in expected.items()) / sum(weights.values()))
    nd = [ndcg_score(g.relevance.to_numpy()[None], g.score.to_numpy()[None])
          for _, g in agg[agg.subset == "broad"].groupby(["query_hash", "caption"])
          if len(g) > 1 and g.relevance.sum() > 0]
    assert res.value("linear_ndcg", "relevance", "broad") == pytest.approx(np.mean(nd))


def test_imat_retrieval_metrics_against_sklearn():
    rng = np.random.default_rng(0)
    gallery = [frozenset(s) for s in ([1], [1, 2], [2], [1, 3], [1, 2])]
    targets = [[1, 2], [2], [1, 3]]
    scores = rng.normal(size=(3, 5))
    m = cm.imat_retrieval_metrics(scores, targets, gallery)
    correct = np.array([[g == frozenset(t) for g in gallery] for t in targets])
    assert m["roc_auc"] == pytest.approx(roc_auc_score(correct.ravel(), scores.ravel()))
    assert m["mAP"] == pytest.approx(np.mean([average_precision_score(c, s) for c, s in zip(correct, scores)]))
    with pytest.raises(ValueError, match="target label set"):
        cm.imat_retrieval_metrics(scores, [[7], [2], [1]], gallery)
