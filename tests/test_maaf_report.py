"""MAAF tables and checks from hand-made results: the Fashion IQ averages, ablation changes, margins; the
place-attention measure on a tiny trained-free model (shape of its output)."""
from dataclasses import asdict

import pandas as pd
import pytest

from visualsearch import maaf_experiments as mx, maaf_report as mr
from visualsearch.data.scenes import ScenesWorldConfig, build_css
from visualsearch.data.text_feedback import read_css
from visualsearch.models.maaf import MAAFConfig
from visualsearch.models.text import Vocabulary


def result(r10s, r50s):
    recall = {c: {"R@10": a, "R@50": b} for c, a, b in zip(("dress", "shirt", "toptee"), r10s, r50s)}
    return mx.RunResult(recall, pd.DataFrame({"step": [1], "loss": [1.0]}))


def test_fiq_rows_average_over_categories():
    df = mr.fiq_rows({"MAAF": result((20, 30, 40), (50, 60, 70)), "TIRG": result((10, 10, 10), (30, 30, 30))})
    get = lambda m, d, k: df[(df.method == m) & (df.dataset == d) & (df.metric == k)]["reproduced"].item()
    assert get("MAAF", "average", "R@10") == 30 and get("MAAF", "average", "R@50") == 60
    assert get("MAAF", "average", mr.FIQ_SCORE) == 45 and get("TIRG", "average", mr.FIQ_SCORE) == 20
    assert get("MAAF", "shirt", "R@50") == 60
    assert mr.fiq_score(result((20, 30, 40), (50, 60, 70))) == 45


def test_ablation_changes_and_margins():
    rows = mr.ablation_rows({"full": result((20, 30, 40), (50, 60, 70)), "no text": result((10, 30, 40), (50, 60, 70))},
                            {"no text": "text_in_pooling=False"}, "full")
    change = rows[(rows.metric == "change vs full model")].set_index("method")["reproduced"]
    assert change["full"] == 0 and change["no text (text_in_pooling=False)"] == pytest.approx(-10 / 6)
    ok, detail = mr.beats({"MAAF": 50.0, "TIRG": 40.0, "concat": 52.0}, "MAAF", ["TIRG", "concat"], 100)
    assert not ok and "vs TIRG 40.0: +10.0" in detail and "vs concat 52.0: -2.0" in detail and "s.e. ~5.0" in detail
    assert mr.beats({"MAAF": 50.0, "TIRG": 40.0}, "MAAF", ["TIRG"], 100)[0]


def test_place_attention_rows(tmp_path):
    build_css(tmp_path, asdict(ScenesWorldConfig(train_scenes=4, test_scenes=6, image_size=64)))
    test = read_css(tmp_path, "test")
    group = mx.SplitInputs(test, mx.ImageTable.load(test.images, 64))
    cfg = MAAFConfig(dim=16, heads=2, ff_width=16, blocks=2, backbone="resnet18", image_size=64)
    model = mx.build_seeded(cfg, Vocabulary.build(test.texts()), 0)
    places = mr.place_attention(model, group)
    assert set(places.columns) == {"block", "stage", "queries", "ratio"}
    assert set(places.block) <= {1, 2} and (places.ratio > 0).all() and (places.queries > 0).all()
    named = sum(any(w in q.captions[0].replace("-", "").split() for w in ("topleft", "middlecenter", "bottomright",
                                                                          "topcenter", "topright", "middleleft",
                                                                          "middleright", "bottomleft", "bottomcenter"))
                for q in test.queries)
    assert places[(places.block == 1) & (places.stage == "layer3")]["queries"].item() == named
