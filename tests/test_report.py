"""Reporting: tidy tables with reported numbers, atomic writes, provenance sidecars, claims, index."""
import json

import matplotlib
import pandas as pd
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from visualsearch import atomic  # noqa: E402
from visualsearch.data.errors import SkipLog  # noqa: E402
from visualsearch.report import Reporter, context_rows, markdown_table, with_reported, write_index  # noqa: E402


@pytest.fixture
def rep(tmp_path):
    return Reporter("toy_nb", {"preset": "smoke", "out_dir": str(tmp_path), "device": "cpu", "seed": 5})


def test_table_csv_md_and_sidecar(rep, tmp_path):
    skips = SkipLog()
    skips.add("img/a.jpg", "corrupt image")
    rep.note_data("synthetic toy", "abc123", skips)
    df = pd.DataFrame({"method": ["ours", "ours"], "dataset": ["d", "d"], "metric": ["R@1", "R@10"],
                       "reproduced": [0.5, 0.9]})
    wide = rep.table("recall", df, data="synthetic toy")
    csv = tmp_path / "results" / "toy_nb" / "recall.csv"
    out = pd.read_csv(csv)
    assert list(out.columns[:8]) == ["method", "dataset", "metric", "reproduced", "reported", "reported_source",
                                     "data", "preset"]
    assert set(out["preset"]) == {"smoke"} and set(out["data"]) == {"synthetic toy"}
    assert list(wide.frame.columns) == ["method", "dataset", "R@1", "R@10"]
    assert "| ours | d | 0.500 | 0.900 |" in csv.with_suffix(".md").read_text()
    prov = json.loads(csv.with_suffix(".provenance.json").read_text())
    assert prov["seed"] == 5 and prov["data"] == {"synthetic toy": "abc123"}
    assert prov["skipped_inputs"]["synthetic toy"]["skipped"] == 1
    assert prov["packages"]["torch"].startswith("2.14.1") and "commit" in prov["git"]
    assert prov["parameters"]["preset"] == "smoke"


def test_table_requires_tidy_columns(rep):
    with pytest.raises(ValueError, match="tidy columns"):
        rep.table("bad", pd.DataFrame({"method": ["x"]}), data="d")


def test_reported_numbers_joined_and_unknown_left_empty():
    df = pd.DataFrame({"method": ["MAAF", "MAAF", "mine"], "dataset": ["average", "Fashion200k", "average"],
                       "metric": ["(R@10+R@50)/2", "R@1", "(R@10+R@50)/2"], "reproduced": [0.3, 0.5, 0.2]})
    out = with_reported(df, "maaf")
    assert out.loc[0, "reported"] == 36.6 and "cited" in out.loc[0, "reported_source"]
    assert pd.isna(out.loc[1, "reported"]) and "not transcribed" in out.loc[1, "reported_source"]
    assert pd.isna(out.loc[2, "reported"]) and pd.isna(out.loc[2, "reported_source"])
    ctx = context_rows("triplet", "sop_context")
    assert ctx["reproduced"].isna().all() and 79.5 in set(ctx["reported"])


def test_every_reported_file_is_well_formed():
    from visualsearch.report import reported_numbers

    for paper in ("triplet", "face", "maaf", "cfq"):
        df = reported_numbers(paper)
        assert list(df.columns) == ["paper", "table", "method", "dataset", "metric", "value", "source", "status"]
        unknown = df["status"] == "not transcribed"
        assert df.loc[unknown, "value"].isna().all(), f"{paper}: an unknown number has a value"
        assert df.loc[~unknown, "value"].notna().all(), f"{paper}: a known number lacks its value"


def test_figure_png_pdf_and_claims(tmp_path):
    rep = Reporter("toy_nb", {"preset": "default", "out_dir": str(tmp_path), "device": "cpu", "seed": 5})
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    assert rep.figure("curve", fig, data="synthetic toy") is None  # a cell ending with it shows no path
    png = tmp_path / "figures" / "toy_nb" / "curve.png"
    assert png.is_file() and png.with_suffix(".pdf").is_file() and png.with_suffix(".provenance.json").is_file()
    assert not plt.fignum_exists(fig.number), "the figure is closed, so the inline backend does not draw it twice"
    assert rep.check("A beats B", False, "A 0.1 vs B 0.2") is False
    rep.check("C holds", True, "margin 0.3")
    claims = pd.read_csv(tmp_path / "results" / "toy_nb" / "claims.csv")
    assert list(claims["reproduced"]) == [False, True]
    assert list(claims["verdict"]) == ["NOT REPRODUCED", "reproduced"]
    index = write_index(tmp_path).read_text()
    assert "❌ A beats B" in index and "✅ C holds" in index and "figures/toy_nb/curve.png" in index


def test_index_puts_the_last_cold_time_beside_a_warm_rerun(tmp_path):
    summary = [{"notebook": "toy_nb", "status": "ok", "wall_s": 12.4, "preset": "default", "cache": "warm",
                "cold_s": 266.2, "warm_s": 12.4},
               {"notebook": "other_nb", "status": "ok", "wall_s": 300.0, "preset": "default", "cache": "trained",
                "cold_s": 300.0}]
    index = write_index(tmp_path, notebooks=[], summary=summary).read_text()
    assert "| toy_nb | ok | default | 12 | warm | 266 | 12 |" in index
    assert "| other_nb | ok | default | 300 | trained | 300 | not measured |" in index


def test_smoke_claims_draw_no_verdict(rep, tmp_path):
    rep.check("A beats B", False, "A 0.1 vs B 0.2")
    claims = pd.read_csv(tmp_path / "results" / "toy_nb" / "claims.csv")
    assert list(claims["verdict"]) == ["not evaluated (smoke size)"]
    assert "NOT REPRODUCED" not in (tmp_path / "results" / "toy_nb" / "claims.md").read_text()
    assert "❌" not in write_index(tmp_path).read_text()


def test_shown_tables_are_rounded_without_index_and_name_their_sources(rep):
    from visualsearch.report import show

    df = pd.DataFrame({"method": ["MAAF", "MAAF"], "dataset": ["average", "CSS"],
                       "metric": ["(R@10+R@50)/2", "R@1"], "reproduced": [31.23456, 50.0]})
    table = rep.table("t", with_reported(df, "maaf"), data="d")
    html = table._repr_html_()
    assert "31.2" in html and "31.23" not in html and "36.6" in html  # percentages to one decimal
    assert "cited" in html  # the status of the published number travels with it
    assert ">0<" not in html and ">1<" not in html  # no row index
    frac = show(pd.DataFrame({"m": ["a"], "R@1": [0.123456], "n": [1200]}))._repr_html_()
    assert "0.123" in frac and "0.1235" not in frac and "1,200" in frac


def test_reporter_says_where_it_writes(tmp_path, capsys):
    Reporter("toy_nb", {"preset": "smoke", "out_dir": str(tmp_path), "device": "cpu"})
    said = capsys.readouterr().out
    assert str(tmp_path) in said and "results/toy_nb/toy_nb.ipynb" in said


def test_atomic_write_keeps_the_previous_file_on_failure(tmp_path):
    path = tmp_path / "table.csv"
    atomic.write_text(path, "old contents\n")

    def half_then_crash(f):
        f.write("new half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic.atomic_write(path, half_then_crash, mode="w")
    assert path.read_text() == "old contents\n"
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_markdown_table_escapes_and_blanks():
    md = markdown_table(pd.DataFrame({"a": ["x|y"], "b": [float("nan")]}))
    assert "x\\|y" in md and md.strip().endswith("| x\\|y |  |")


def test_markdown_table_shows_counts_as_whole_numbers_and_scores_with_decimals():
    md = markdown_table(pd.DataFrame({"R@1": [24.1667, 35.0], "trainable parameters": [452737.0, float("nan")],
                                      "steps": [300.0, 150.0]}))
    assert "| 24.167 | 452,737 | 300.000 |" in md  # whole numbers under 1,000 keep the table's format
    assert "| 35.000 |  | 150.000 |" in md


def test_git_state_is_dirty_for_code_changes_not_for_written_results(tmp_path):
    import subprocess

    from visualsearch.report import git_state

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "t.csv").write_text("a\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", "-A")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init")
    assert git_state(tmp_path)["dirty"] is False
    (tmp_path / "results" / "t.csv").write_text("b\n")
    assert git_state(tmp_path)["dirty"] is False
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_state(tmp_path)["dirty"] is True


def test_written_files_honour_the_umask(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        path = atomic.write_text(tmp_path / "t.csv", "a\n")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_published_numbers_are_shown_as_the_paper_wrote_them(rep, tmp_path):
    df = pd.DataFrame({"method": ["chosen", "MAAF"], "dataset": ["d", "d"], "metric": ["GFLOPs", "R@10"],
                       "reproduced": [0.25, 0.5], "reported": [1.0, 23.8]})
    wide = rep.table("published", df, data="toy")
    md = (tmp_path / "results" / "toy_nb" / "published.md").read_text()
    assert "| 1 |" in md and "23.8 |" in md and "1.000" not in md and "23.800" not in md
    assert "0.250" in md                                   # reproduced numbers keep their precision
    assert list(wide.frame["GFLOPs (reported)"]) == ["1", ""]
