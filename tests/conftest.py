"""Shared fixtures. Tests never write into the repository's results/ or figures/ or its .cache/."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Point the world and result caches at a per-session temporary folder (worlds are shared across
    tests of one session, never with the user's own cache)."""
    old = os.environ.get("VISUALSEARCH_CACHE")
    os.environ["VISUALSEARCH_CACHE"] = str(tmp_path_factory.mktemp("vs-cache"))
    yield
    if old is None:
        os.environ.pop("VISUALSEARCH_CACHE", None)
    else:
        os.environ["VISUALSEARCH_CACHE"] = old


_SMOKE_RUNS: dict[str, Path] = {}


@pytest.fixture(scope="session")
def smoke_outputs(tmp_path_factory):
    """smoke_outputs(notebook) -> folder with results/ and figures/ of that notebook executed at smoke size
    through the real runner (papermill). Executed once per session; a failing run fails the test with the
    runner's message (notebook, failing cell, traceback location)."""

    def run(notebook: str) -> Path:
        if notebook not in _SMOKE_RUNS:
            out = tmp_path_factory.mktemp(f"smoke-{notebook}")
            proc = subprocess.run([sys.executable, "-m", "visualsearch.runner", "--preset", "smoke", "--only",
                                   notebook, "--out", str(out)], capture_output=True, text=True, cwd=ROOT,
                                  env=dict(os.environ))
            if proc.returncode != 0:
                log = out / "results" / notebook / f"{notebook}.papermill.log"
                tail = log.read_text()[-4000:] if log.is_file() else ""
                pytest.fail(f"{notebook} failed at smoke size:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}\n{tail}")
            _SMOKE_RUNS[notebook] = out
        return _SMOKE_RUNS[notebook]

    return run
