"""Every notebook in notebooks/ executes at smoke size through the real runner (papermill) and writes the
outputs the design promises: tidy tables with provenance, PNG+PDF figures, a claims table, and no outputs
left in the committed source notebook. Each notebook's own checks live in tests/test_<notebook>_outputs.py."""
import json
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))
TIDY = ["method", "dataset", "metric", "reproduced", "reported", "reported_source", "data", "preset"]


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no notebook"


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_source_notebook_is_parameterized_and_clean(notebook):
    nb = json.loads((ROOT / "notebooks" / f"{notebook}.ipynb").read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "visualsearch"
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    params = [c for c in code if "parameters" in c["metadata"].get("tags", [])]
    assert len(params) == 1, "exactly one cell tagged 'parameters'"
    src = "".join(params[0]["source"])
    for name in ("preset", "data_root", "device", "out_dir", "overrides"):
        assert f"{name} =" in src, f"parameters cell lacks {name}"
    assert not any(c.get("outputs") for c in code), "source notebooks are committed without outputs"
    assert (ROOT / "configs" / notebook / "default.yaml").is_file()


@pytest.mark.notebook
@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_smoke_execution_writes_tables_figures_and_claims(notebook, smoke_outputs):
    out = smoke_outputs(notebook)
    results, figures = out / "results" / notebook, out / "figures" / notebook
    tables = [p for p in results.glob("*.csv") if p.name != "claims.csv"]
    assert tables, "no table written"
    for csv in tables:
        df = pd.read_csv(csv)
        assert list(df.columns[:8]) == TIDY, csv.name
        assert len(df) and set(df["preset"]) == {"smoke"}, csv.name
        assert csv.with_suffix(".md").is_file() and csv.with_suffix(".provenance.json").is_file(), csv.name
    pngs = list(figures.glob("*.png"))
    assert pngs, "no figure written"
    for png in pngs:
        assert png.stat().st_size > 2000 and png.with_suffix(".pdf").is_file(), png.name
    claims = pd.read_csv(results / "claims.csv")
    assert len(claims) and set(claims.columns) >= {"claim", "reproduced", "detail"}
    assert (results / f"{notebook}.ipynb").is_file()
