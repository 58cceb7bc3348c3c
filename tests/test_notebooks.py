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



@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_notebook_and_its_text_pair_agree(notebook):
    """notebooks/<name>.ipynb and notebooks/<name>.py (jupytext percent format) hold the same cells and kernel:
    JupyterLab in the project's environment saves both at once; an edit made to one file outside it must be
    synced, or review reads one notebook and papermill runs another."""
    from visualsearch.notebook_files import pair_differences

    problems = pair_differences(notebook)
    assert not problems, (f"notebooks/{notebook}.ipynb and notebooks/{notebook}.py differ: {problems}. Save it from "
                          f"JupyterLab (.venv/bin/jupyter lab), or run .venv/bin/jupytext --sync notebooks/{notebook}.ipynb "
                          f"(the newer file wins)")


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_source_notebook_is_stored_as_a_save_would_store_it(notebook):
    """The committed .ipynb is already what the pre-save hook makes of it: opening, running and saving it in
    JupyterLab leaves the file byte-for-byte as committed unless its cells were edited."""
    import copy

    from visualsearch.notebook_files import clean

    nb = json.loads((ROOT / "notebooks" / f"{notebook}.ipynb").read_text())
    assert clean(copy.deepcopy(nb)) == nb, "run .venv/bin/jupytext --sync and save it from JupyterLab"


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_source_notebook_names_the_registered_kernel(notebook):
    """A kernelspec other than the registered one makes JupyterLab rewrite it: every notebook opens modified."""
    from visualsearch.notebook_files import KERNELSPEC

    nb = json.loads((ROOT / "notebooks" / f"{notebook}.ipynb").read_text())
    assert nb["metadata"]["kernelspec"] == KERNELSPEC
    setup = (ROOT / "scripts" / "setup_env.sh").read_text()
    assert f'--name {KERNELSPEC["name"]} --display-name "{KERNELSPEC["display_name"]}"' in setup


def test_a_save_from_jupyterlab_keeps_the_edit_and_drops_the_outputs(tmp_path):
    """What JupyterLab's save (and autosave) does to a source notebook, through the same contents manager the
    project's Jupyter server uses (jupytext's, with the pre-save hook that scripts/setup_env.sh installs): the
    edit reaches both files of the pair, the outputs and execution counts reach neither, and the pair still
    passes the tests above."""
    import shutil

    import nbformat
    from jupyter_server.services.contents.filemanager import FileContentsManager
    from jupytext import build_sync_jupytext_contents_manager_class

    from visualsearch.notebook_files import KERNELSPEC, pair_differences, pre_save_hook

    folder = tmp_path / "notebooks"
    shutil.copytree(ROOT / "notebooks", folder, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    cm = build_sync_jupytext_contents_manager_class(FileContentsManager)(root_dir=str(folder),
                                                                          pre_save_hook=pre_save_hook)
    name = NOTEBOOKS[0]
    model = cm.get(f"{name}.ipynb")
    nb = model["content"]
    md = next(c for c in nb["cells"] if c["cell_type"] == "markdown")
    md["source"] += "\n\nA sentence a reader added in JupyterLab."
    for c in nb["cells"]:
        if c["cell_type"] == "code":
            c["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "/home/someone/run\n"}]
            c["execution_count"] = 7
    nb["metadata"]["language_info"] = {"name": "python", "version": "3.11.9"}
    cm.save({"type": "notebook", "content": nb}, f"{name}.ipynb")

    saved = nbformat.read(folder / f"{name}.ipynb", as_version=4)
    assert "A sentence a reader added in JupyterLab." in (folder / f"{name}.py").read_text()
    assert any("A sentence a reader added" in c.source for c in saved.cells)
    assert not any(c.get("outputs") or c.get("execution_count") for c in saved.cells if c.cell_type == "code")
    assert saved.metadata["kernelspec"] == KERNELSPEC
    assert pair_differences(name, folder) == []
    committed = json.loads((ROOT / "notebooks" / f"{name}.ipynb").read_text())
    assert json.loads((folder / f"{name}.ipynb").read_text())["metadata"] == committed["metadata"], \
        "a save must not change the notebook's metadata (git status would show every opened notebook)"


def test_executed_copies_are_saved_as_they_are(tmp_path):
    """The hook leaves notebooks outside a paired folder alone: an executed copy keeps its outputs."""
    from visualsearch.notebook_files import is_project_notebook

    assert is_project_notebook(ROOT / "notebooks" / f"{NOTEBOOKS[0]}.ipynb")
    assert not is_project_notebook(ROOT / "results" / NOTEBOOKS[0] / f"{NOTEBOOKS[0]}.ipynb")


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
    assert len(claims) and set(claims.columns) >= {"claim", "reproduced", "verdict", "detail"}
    assert set(claims["verdict"]) == {"not evaluated (smoke size)"}, "a smoke run draws no verdict"
    executed = json.loads((results / f"{notebook}.ipynb").read_text())
    outputs = [o for c in executed["cells"] for o in c.get("outputs", [])]
    images = sum("image/png" in o.get("data", {}) for o in outputs)
    assert images >= len(pngs), f"{len(pngs)} figures written but {images} shown in the executed notebook"
    assert not [o for o in outputs if o["output_type"] == "error"]


def test_the_registered_kernel_reports_the_language_info_the_notebooks_hold():
    """JupyterLab copies the kernel's language_info into a notebook when the kernel connects and marks the
    notebook modified if it differs: the project's kernel must report exactly what the notebooks hold."""
    from jupyter_client.manager import start_new_kernel

    nb = json.loads((ROOT / "notebooks" / f"{NOTEBOOKS[0]}.ipynb").read_text())
    km, kc = start_new_kernel(kernel_name="visualsearch")
    try:
        kc.kernel_info()
        reply = kc.get_shell_msg(timeout=30)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    assert reply["content"]["language_info"] == nb["metadata"]["language_info"]


MACHINE_PATHS = ("/tmp/", "/root/", "/home/", "/Users/", "/work/", "/private/var/")


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_the_committed_executed_notebook_reads_like_a_report(notebook):
    """results/<nb>/<nb>.ipynb (written by ./run_all.sh at the default preset) shows every figure the run saved
    inline, no error, no stderr box and no path of the machine it ran on."""
    executed = ROOT / "results" / notebook / f"{notebook}.ipynb"
    text = executed.read_text()
    outputs = [o for c in json.loads(text)["cells"] for o in c.get("outputs", [])]
    images = sum("image/png" in o.get("data", {}) for o in outputs)
    figures = list((ROOT / "figures" / notebook).glob("*.png"))
    assert figures and images >= len(figures), f"{len(figures)} figure files, {images} inline images"
    assert not [o for o in outputs if o["output_type"] == "error" or o.get("name") == "stderr"]
    leaked = [m for m in MACHINE_PATHS if m in text]
    assert not leaked, f"machine paths in the executed notebook: {leaked}"
