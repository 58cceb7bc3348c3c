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
