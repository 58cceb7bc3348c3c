"""The one way our notebook-building scripts write a notebook.

Each `scripts/notebooks/make_<name>.py` describes its notebook as a list of markdown and code cells and calls
`write`. Cell ids are derived from the cell's position and text, so rebuilding an unchanged notebook gives a
byte-identical file and a diff shows only the cells that really changed.
"""
import hashlib
from pathlib import Path

import nbformat as nbf

ROOT = Path(__file__).resolve().parents[2]
KERNELSPEC = {"name": "visualsearch", "display_name": "Python (visualsearch)", "language": "python"}


class NotebookBuilder:
    """Collects cells in order; `md` and `code` take the cell text (surrounding blank lines are dropped)."""

    def __init__(self):
        self.cells = []

    def md(self, text: str):
        self.cells.append(nbf.v4.new_markdown_cell(text.strip()))

    def code(self, text: str, tags: list[str] | None = None):
        cell = nbf.v4.new_code_cell(text.strip())
        if tags:
            cell.metadata["tags"] = tags
        self.cells.append(cell)

    def write(self, name: str) -> Path:
        """Write notebooks/<name>.ipynb with the project kernel and stable cell ids."""
        for i, cell in enumerate(self.cells):
            cell["id"] = hashlib.sha1(f"{i}:{cell.source}".encode()).hexdigest()[:8]
        nb = nbf.v4.new_notebook()
        nb.cells = self.cells
        nb.metadata["kernelspec"] = dict(KERNELSPEC)
        nb.metadata["language_info"] = {"name": "python"}
        out = ROOT / "notebooks" / f"{name}.ipynb"
        nbf.write(nb, out)
        print(f"wrote {out}")
        return out
