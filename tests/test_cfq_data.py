"""CFQ reader against small fixture folders in the released layout."""
import json

import pytest
from PIL import Image

from visualsearch.data.cfq import read_cfq, read_judgments
from visualsearch.data.errors import DataFormatError, SkipLog

HEADER = "subset\tquery_hash\tcaption\tcatalog_hash\taccurate\tsimilar\tworker\n"


def write_cfq(root, lines, images=("q1", "a", "b", "c"), equivalent=None):
    (root / "images").mkdir(parents=True, exist_ok=True)
    for h in images:
        Image.new("RGB", (8, 8), (200, 10, 10)).save(root / "images" / f"{h}.jpeg")
    (root / "judgments.tsv").write_text(HEADER + "".join(lines))
    if equivalent is not None:
        (root / "equivalent_captions.json").write_text(json.dumps(equivalent))
    return root


GOOD = [
    "broad\tq1\tis red\ta\tYes\tReasonable\tw1\n",
    "broad\tq1\tis red\ta\tnot sure\tsomewhat reasonable\tw2\n",
    "broad\tq1\tis red\tb\tNO\tNot Reasonable\tw1\n",
    "broad\tq1\tis red\tc\tno\tsomewhat  reasonable\tw1\n",
]


def test_reads_answers_case_insensitively_and_keeps_hashes_as_strings(tmp_path):
    root = write_cfq(tmp_path, GOOD + ["broad\t0123\tis red\ta\tyes\treasonable\tw3\n"],
                     images=("q1", "a", "b", "c", "0123"), equivalent={"is red": ["is a red one"]})
    data = read_cfq(root)
    j = data.judgments
    assert j.accurate.tolist() == [1, 0, -1, -1, 1] and j.similar.tolist() == [1, 0, -1, 0, 1]
    assert "0123" in set(j.query_hash)  # a leading zero survives: hashes are strings
    assert data.equivalent_captions == {"is red": ["is a red one"]}
    agg = data.aggregated()
    row = agg[(agg.query_hash == "q1") & (agg.catalog_hash == "a")].iloc[0]
    assert row.accurate == pytest.approx(0.5) and row.n_judgments == 2
    assert data.catalog() == ["a", "b", "c"] and len(data.queries()) == 2
    assert data.load_image("a").size == (8, 8)


def test_missing_image_is_skipped_and_counted_not_fatal(tmp_path):
    root = write_cfq(tmp_path, GOOD, images=("q1", "a", "b"))  # c is missing
    (root / "images" / "b.jpeg").write_bytes(b"not a jpeg")  # b is corrupt
    skips = SkipLog()
    data = read_cfq(root, skips)
    assert set(data.judgments.catalog_hash) == {"a"}
    assert data.dropped_judgments == 2
    assert skips.reasons["missing image"] == 1 and skips.reasons["corrupt image"] == 1


def test_unknown_answer_names_line_field_and_expected(tmp_path):
    root = write_cfq(tmp_path, GOOD[:2] + ["broad\tq1\tis red\tb\tmaybe\treasonable\tw1\n"])
    with pytest.raises(DataFormatError) as e:
        read_judgments(root / "judgments.tsv")
    msg = str(e.value)
    assert "line 4" in msg and "'accurate'" in msg and "not sure" in msg


def test_wrong_field_count_empty_field_and_missing_column(tmp_path):
    root = write_cfq(tmp_path, ["broad\tq1\tis red\ta\tyes\n"])
    with pytest.raises(DataFormatError, match="line 2.*fields"):
        read_judgments(root / "judgments.tsv")
    (root / "judgments.tsv").write_text(HEADER + "broad\tq1\t \ta\tyes\treasonable\tw\n")
    with pytest.raises(DataFormatError, match="line 2, field 'caption'"):
        read_judgments(root / "judgments.tsv")
    (root / "judgments.tsv").write_text("subset\tquery_hash\tcaption\n")
    with pytest.raises(DataFormatError, match="header lacks columns"):
        read_judgments(root / "judgments.tsv")


def test_missing_files_and_bad_json(tmp_path):
    with pytest.raises(DataFormatError, match="missing folder"):
        read_cfq(tmp_path / "nope")
    tmp_path.joinpath("empty").mkdir()
    with pytest.raises(DataFormatError, match="judgments.tsv"):
        read_cfq(tmp_path / "empty")
    root = write_cfq(tmp_path / "x", GOOD)
    (root / "equivalent_captions.json").write_text("{\"a\": 3}")
    with pytest.raises(DataFormatError, match="equivalent_captions.json.*structure"):
        read_cfq(root)


# ------------------------------------------------------------------------------------------ synthetic CFQ
import pandas as pd  # noqa: E402

from visualsearch.cfq_metrics import cfq_metrics  # noqa: E402
from visualsearch.data.cfq import (CFQWorldConfig, Constraint, build_cfq, caption_text, truth_levels)  # noqa: E402
from visualsearch.data.products import Product  # noqa: E402


def garment(**kw):
    base = dict(category="dress", colour="red", pattern="solid", sleeve="short", length="knee", neckline="round")
    return Product(**{**base, **kw})


def test_constraints_and_truth_levels_by_hand():
    ref = garment()
    shorter = Constraint("sleeve", "shorter", "short")
    assert shorter.holds(garment(sleeve="sleeveless")) and not shorter.holds(ref)
    assert not shorter.holds(garment(sleeve="long"))
    not_red = Constraint("colour", "not", "red")
    assert caption_text([not_red, shorter]) == "not red and shorter sleeves"
    # caption true, nothing else changed: yes / reasonable
    assert truth_levels(ref, [not_red], garment(colour="blue")) == (2, 2)
    # the reference itself: ruled out by the caption, but as similar as can be
    assert truth_levels(ref, [not_red], ref) == (0, 2)
    # caption true, two unmentioned attributes changed: not reasonable
    assert truth_levels(ref, [not_red], garment(colour="blue", pattern="dots", length="maxi")) == (2, 0)
    # one of two constraints holds: not sure; another category: not reasonable
    assert truth_levels(ref, [not_red, shorter], garment(colour="blue")) == (1, 2)
    assert truth_levels(ref, [not_red], garment(category="shirt", colour="blue"))[1] == 0


def test_synthetic_cfq_in_the_released_layout(tmp_path):
    cfg = CFQWorldConfig(queries_per_subset=4, catalog_size=8, annotators=3, annotator_noise=0.0, image_size=32,
                         missing_images=2)
    build_cfq(tmp_path, cfg)
    skips = SkipLog()
    data = read_cfq(tmp_path, skips)
    assert skips.reasons["missing image"] == 2 and data.dropped_judgments == 2 * 3
    assert set(data.subsets()) == {"broad", "focused"}
    assert len(data.queries()) == 8 and data.load_image(data.queries().query_hash[0]).size == (32, 32)
    assert len(data.equivalent_captions) >= 1 and all(len(v) == 2 for v in data.equivalent_captions.values())
    # without annotator noise the mean judgments are the world's truth
    kinds = pd.read_csv(tmp_path / "catalog_kinds.csv", dtype=str)
    agg = data.aggregated().merge(kinds, on=["subset", "query_hash", "caption", "catalog_hash"])
    assert (agg.n_judgments == 3).all()
    assert (agg.accurate == agg.true_accurate.astype(float)).all() and (agg.similar == agg.true_similar.astype(float)).all()
    by_kind = agg.groupby("kind")[["accurate", "similar"]].mean()
    assert by_kind.loc["target"].tolist() == [1.0, 1.0]
    assert by_kind.loc["look-alike ruled out", "accurate"] == -1.0 and by_kind.loc["look-alike ruled out", "similar"] > 0
    # an oracle that scores accuracy first gets accurate mAP 1
    oracle = cfq_metrics(agg, agg.accurate + 0.1 * agg.similar).primary()
    assert oracle["accurate mAP"] == pytest.approx(1.0)


def test_synthetic_cfq_annotators_disagree_with_noise(tmp_path):
    build_cfq(tmp_path, CFQWorldConfig(queries_per_subset=3, catalog_size=6, annotator_noise=0.5, image_size=16,
                                       missing_images=0))
    agg = read_cfq(tmp_path).aggregated()
    assert ((agg.accurate != agg.accurate.round()) | (agg.similar != agg.similar.round())).any()
