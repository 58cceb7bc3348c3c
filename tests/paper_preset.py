"""What the paper-preset rehearsals (tests/test_paper_preset_*.py) share: damage an image as an interrupted
copy leaves it, run a notebook at the paper preset through the real runner, read a table's provenance."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def truncate(path: Path) -> None:
    """Cut an image file in half, as an interrupted copy leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def run_paper_preset(notebook: str, data_root: Path, out: Path, sets: list[str]) -> float:
    """The runner at the paper preset (shrunk by `sets`, --set items only); returns its wall time, or fails the
    test with the runner's message and the tail of the notebook's papermill log."""
    cmd = [sys.executable, "-m", "visualsearch.runner", "--preset", "paper", "--only", notebook,
           "--data-root", str(data_root), "--out", str(out)]
    for s in sets:
        cmd += ["--set", s]
    start = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=dict(os.environ), timeout=900)
    wall = time.time() - start
    if proc.returncode != 0:
        log = out / ".staging" / "results" / notebook / f"{notebook}.papermill.log"
        tail = log.read_text()[-4000:] if log.is_file() else ""
        pytest.fail(f"{notebook} failed at the paper preset:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}\n{tail}")
    return wall


def provenance(out: Path, notebook: str, name: str) -> dict:
    """The provenance sidecar of table or figure `name` of `notebook` under `out`."""
    return json.loads((out / "results" / notebook / f"{name}.provenance.json").read_text())
