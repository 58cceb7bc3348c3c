"""What a committed notebook holds, and the JupyterLab hook that keeps it so.

Why: people read, run and save the notebooks in JupyterLab, and the same files are committed. A run's
outputs (tables, figures, tracebacks, machine paths) must never reach a commit by an ordinary save or by
JupyterLab's autosave, and the kernel named in a notebook must be the one this project registers, or every
notebook opens already "modified". So every save of a notebook under `notebooks/` goes through `clean`
(installed by scripts/setup_env.sh as the Jupyter server's pre-save hook); the executed copies with outputs
are papermill's, written elsewhere (results/ for the committed default run, scratch/ for the rest).

Each notebook is a jupytext pair (notebooks/jupytext.toml): `<name>.ipynb` for JupyterLab and papermill,
`<name>.py` (percent format) with the same cells as text. `pair_differences` is the check that both agree.
"""
from __future__ import annotations

from pathlib import Path

from .config import repo_root

KERNEL_NAME = "visualsearch"
# exactly what `ipykernel install --name visualsearch --display-name ...` registers (scripts/setup_env.sh)
KERNELSPEC = {"display_name": "visualsearch (Python 3.11)", "language": "python", "name": KERNEL_NAME}
# cell metadata a run adds (papermill timings, JupyterLab's execution record and view state): not content
RUN_CELL_METADATA = ("execution", "papermill", "collapsed", "scrolled", "jp-MarkdownHeadingCollapsed")


def _language_info() -> dict:
    from .kernel import LANGUAGE_INFO

    return dict(LANGUAGE_INFO)


def notebooks_dir() -> Path:
    return repo_root() / "notebooks"


def clean(nb: dict) -> dict:
    """Strip what a run leaves in a notebook (outputs, execution counts, run metadata) and set the project's
    kernelspec. Works on the JSON dict in place and returns it."""
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
        meta = cell.get("metadata", {})
        for key in RUN_CELL_METADATA:
            meta.pop(key, None)
    meta = nb.setdefault("metadata", {})
    meta["kernelspec"] = dict(KERNELSPEC)
    meta["language_info"] = _language_info()  # what the project's kernel reports, so opening changes nothing
    for key in ("papermill", "widgets"):  # (jupytext's own entry stays: jupytext writes it on every save/sync)
        meta.pop(key, None)
    return nb


def is_project_notebook(os_path) -> bool:
    """True for a source notebook: an .ipynb beside a jupytext.toml (notebooks/), not an executed copy."""
    path = Path(os_path).resolve()
    return path.suffix == ".ipynb" and (path.parent / "jupytext.toml").is_file()


def pre_save_hook(model, path, contents_manager, **kwargs):
    """Jupyter server pre-save hook: a source notebook (see `is_project_notebook`) is stored clean (`clean`).
    Other notebooks (the executed copies under results/ and scratch/) are saved as they are."""
    if model.get("type") != "notebook" or not model.get("content"):
        return
    os_path = contents_manager._get_os_path(path) if hasattr(contents_manager, "_get_os_path") else path
    if is_project_notebook(os_path):
        clean(model["content"])


def _cells(nb) -> list[tuple]:
    return [(c["cell_type"], c["source"] if isinstance(c["source"], str) else "".join(c["source"]),
             tuple(c.get("metadata", {}).get("tags", []))) for c in nb["cells"]]


def pair_differences(name: str, folder: Path | None = None) -> list[str]:
    """What differs between notebooks/<name>.ipynb and its paired <name>.py (empty when they agree): the
    cells (type, source, tags), in order, and the kernelspec."""
    import jupytext
    import nbformat

    folder = Path(folder or notebooks_dir())
    ipynb, py = folder / f"{name}.ipynb", folder / f"{name}.py"
    if not py.is_file():
        return [f"{py} is missing (the text half of the pair)"]
    a = nbformat.read(ipynb, as_version=4)
    b = jupytext.read(py)
    problems = []
    if a.metadata.get("kernelspec") != b.metadata.get("kernelspec"):
        problems.append(f"kernelspec: {a.metadata.get('kernelspec')} in .ipynb, {b.metadata.get('kernelspec')} in .py")
    ca, cb = _cells(a), _cells(b)
    if len(ca) != len(cb):
        problems.append(f"{len(ca)} cells in .ipynb, {len(cb)} in .py")
    for i, (x, y) in enumerate(zip(ca, cb)):
        if x != y:
            first = next((j for j, (u, v) in enumerate(zip(x[1], y[1])) if u != v), min(len(x[1]), len(y[1])))
            problems.append(f"cell {i} ({x[0]}) differs near {x[1][max(0, first - 30):first + 30]!r}")
            break
    return problems
