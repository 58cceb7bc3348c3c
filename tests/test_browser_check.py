"""The browser check (scripts/browser_check.py): every notebook opens unmodified in JupyterLab with the
project's kernel, runs from top to bottom without an error, shows its figures, and running and saving it
leaves the working tree as it was. Plus fast tests of the script's pure helpers."""
from __future__ import annotations

import importlib.util
import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "browser_check.py"


def _script():
    spec = importlib.util.spec_from_file_location("browser_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["browser_check"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


bc = _script()


def test_free_port_can_be_bound():
    port = bc.free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", port))


def test_parse_porcelain_reads_renames_untracked_files_and_spaces():
    out = b" M lib/a.py\0R  new name.py\0old name.py\0?? scratch/x.png\0"
    assert bc.parse_porcelain(out) == [(" M", "lib/a.py"), ("R ", "new name.py"), ("??", "scratch/x.png")]


def test_state_differences_names_each_change_and_skips_the_excluded_folder():
    before = {"lib/a.py": " M 111", "notes.txt": "?? 222"}
    after = {"lib/a.py": " M 333", "results/t.csv": " M 444", "docs/screenshots/t.png": "?? 555"}
    diff = bc.state_differences(before, after, exclude=("docs/screenshots",))
    assert diff == [" M lib/a.py (changed again)", "   notes.txt (was '??', now as committed)",
                    " M results/t.csv (new)"]
    assert bc.state_differences(after, dict(after)) == []


def test_worktree_state_sees_a_second_change_to_an_already_modified_file(tmp_path):
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]
    subprocess.run(git + ["init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "a.txt").write_text("one\n")
    (tmp_path / ".gitignore").write_text("scratch/\n")
    subprocess.run(git + ["add", "."], cwd=tmp_path, check=True)
    subprocess.run(git + ["commit", "-q", "-m", "c"], cwd=tmp_path, check=True)
    (tmp_path / "a.txt").write_text("two\n")
    first = bc.worktree_state(tmp_path)
    (tmp_path / "a.txt").write_text("three\n")  # `git status --porcelain` alone still says " M a.txt"
    (tmp_path / "scratch").mkdir()
    (tmp_path / "scratch" / "ignored.png").write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "new.csv").write_text("x\n")
    assert bc.state_differences(first, bc.worktree_state(tmp_path)) == [" M a.txt (changed again)",
                                                                        "?? sub/new.csv (new)"]


def test_parse_kernel_frame_reads_both_wire_formats():
    from jupyter_server.services.kernels.connection.base import serialize_msg_to_ws_v1

    msg = {"header": {"msg_id": "m2", "msg_type": "error"}, "parent_header": {"msg_id": "m1"}, "metadata": {},
           "content": {"ename": "ZeroDivisionError", "evalue": "division by zero", "traceback": ["tb"]}}
    frame = serialize_msg_to_ws_v1(msg, "iopub", pack=lambda d: json.dumps(d).encode())
    parsed = bc.parse_kernel_frame(frame)
    assert (parsed.channel, parsed.msg_type, parsed.msg_id, parsed.parent_id) == ("iopub", "error", "m2", "m1")
    assert parsed.content["ename"] == "ZeroDivisionError"
    legacy = bc.parse_kernel_frame(json.dumps({**msg, "channel": "iopub"}))
    assert (legacy.channel, legacy.msg_type, legacy.parent_id) == ("iopub", "error", "m1")
    assert bc.parse_kernel_frame(b"\x01\x00") is None and bc.parse_kernel_frame("not json") is None


def _missing_for_the_browser_check() -> str | None:
    if not (Path("/usr/bin/chromium").exists() or shutil.which("chromium")):
        return "no Chromium: neither /usr/bin/chromium nor chromium on PATH (Debian: apt-get install chromium)"
    if importlib.util.find_spec("playwright") is None:
        return f"the playwright package is missing from {sys.executable} (it is in requirements.txt)"
    return None


@pytest.mark.browser
@pytest.mark.slow
def test_every_notebook_opens_runs_and_saves_cleanly_in_jupyterlab(tmp_path):
    """scripts/browser_check.py on every notebook (each at its own parameters: the smoke preset), screenshots
    into a temporary folder; its report names the notebook and the check that failed."""
    missing = _missing_for_the_browser_check()
    if missing:
        pytest.skip(missing)
    notebooks = list((ROOT / "notebooks").glob("*.ipynb"))
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--screenshots", str(tmp_path / "screenshots")],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=600 * len(notebooks) + 300)
    except subprocess.TimeoutExpired:
        proc.terminate()  # SIGTERM: the script stops JupyterLab, its kernels and Chromium on the way out
        out, _ = proc.communicate(timeout=120)
        pytest.fail(f"the browser check did not finish in time:\n{out[-6000:]}")
    assert proc.returncode == 0, f"the browser check failed (exit {proc.returncode}):\n{out[-8000:]}"
