"""MIT-States: the reader of the published layout (release_dataset/images/<adj noun>/*.jpg, adj_ants.csv) against a
small fixture, TIRG's protocol (noun split, queries, pairs), and the synthetic world written in the same layout."""
from pathlib import Path

import numpy as np
import pytest

from visualsearch.data import mit_states as ms
from visualsearch.data.errors import DataFormatError, SkipLog

FIXTURE = Path(__file__).parent / "fixtures" / "mit_states"


def test_reader_splits_by_noun_and_skips_what_the_protocol_ignores():
    skips = SkipLog()
    test = ms.read_mit_states(FIXTURE, "test", skips)  # the folder holding release_dataset/
    assert [f"{p.parent.name}/{p.name}" for p in test.images] == [
        "blue fish/img_0.jpg", "broken clock/img_0.jpg", "old clock/img_0.jpg", "red fish/img_0.jpg",
        "red fish/img_1.jpg"]  # "adj fish" (no state) ignored; "wet sand" (one state) dropped
    assert test.captions[0] == "blue fish" and test.nouns[1] == "clock" and test.adjs[3] == "red"
    assert skips.reasons["MIT-States folder not named 'adjective noun'"] == 1
    assert skips.reasons["MIT-States file that is not a JPEG"] == 1
    assert skips.reasons["MIT-States noun with a single adjective"] == 1
    assert sum(skips.reasons.values()) == 4  # + the unreadable "old clock/broken.jpg"
    train = ms.read_mit_states(FIXTURE / "release_dataset", "train")  # release_dataset/ itself
    assert set(train.nouns) == {"apple"} and sorted(train.adjs) == ["sliced", "sliced", "whole"]
    assert not set(train.nouns) & set(ms.TEST_NOUNS) and len(ms.TEST_NOUNS) == 49


def test_queries_and_pairs_follow_the_protocol():
    test = ms.read_mit_states(FIXTURE, "test")
    assert test.queries() == [(0, "red", "red fish"), (1, "old", "old clock"), (2, "broken", "broken clock"),
                              (3, "blue", "blue fish"), (4, "blue", "blue fish")]
    # every query's target state exists in the gallery, and never is the query's own state
    for i, text, target in test.queries():
        assert target in test.captions and target != test.captions[i] and target.startswith(text + " ")
    src, tgt, texts = test.pairs(200, seed=3)
    again = test.pairs(200, seed=3)
    assert np.array_equal(src, again[0]) and np.array_equal(tgt, again[1]) and texts == again[2]
    assert all(test.nouns[s] == test.nouns[t] and test.adjs[t] == a for s, t, a in zip(src, tgt, texts))
    assert any(test.adjs[s] == a for s, a in zip(src, texts)) and any(test.adjs[s] != a for s, a in zip(src, texts))


def test_antonyms_and_clear_errors(tmp_path):
    assert ms.read_adj_antonyms(FIXTURE) == {"sliced": ["whole"], "whole": ["sliced", "cut"]}
    assert ms.read_adj_antonyms(tmp_path) == {}
    with pytest.raises(DataFormatError, match="images"):
        ms.read_mit_states(tmp_path, "test")
    (tmp_path / "images" / "red apple").mkdir(parents=True)
    with pytest.raises(DataFormatError, match="no usable test image"):
        ms.read_mit_states(tmp_path, "test")
    with pytest.raises(ValueError, match="train' or 'test"):
        ms.read_mit_states(FIXTURE, "val")
    (tmp_path / "adj_ants.csv").write_text("lonely\n")
    with pytest.raises(DataFormatError, match="line 1"):
        ms.read_adj_antonyms(tmp_path)


def test_synthetic_world_is_read_by_the_same_reader(tmp_path):
    cfg = ms.MITStatesWorldConfig(seed=1, image_size=24, train_nouns=3, test_nouns=2, adjs_per_noun=3,
                                  images_per_state=2)
    folder = ms.mit_states_world(cfg, root=tmp_path)
    assert (folder / "release_dataset" / "adj_ants.csv").is_file()
    assert any(p.name.startswith("adj ") for p in (folder / "release_dataset" / "images").iterdir())
    test, train = ms.read_mit_states(folder, "test"), ms.read_mit_states(folder, "train")
    assert set(test.nouns) == set(ms.TEST_NOUNS[:2]) and len(set(train.nouns)) == 3
    assert len(test.images) == 2 * 3 * 2 and len(test.queries()) == len(test.images) * 2
    assert ms.mit_states_world(cfg, root=tmp_path) == folder  # drawn once, then cached
