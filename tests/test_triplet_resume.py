"""A killed triplet notebook resumes: `kill -9` of the runner and everything it started (papermill, the kernel)
in the middle of a training, then the same command again. The rerun resumes that training from its checkpoint
(in the result cache's run folder of the training) and writes tables equal, byte for byte, to those of a run
that was never interrupted."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from visualsearch.runner import descendants

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "triplet_product_search"
# the smoke preset, shrunk to one training per table, with trainings long enough to be killed in the middle
SETS = ["train.steps=40", "checkpoint_every=10", "inshop.methods=[batch_hard]", "sop.single_category_probs=[0.8]",
        "sop.eval_every=20"]


def _command(out: Path) -> list[str]:
    cmd = [sys.executable, "-m", "visualsearch.runner", "--preset", "smoke", "--only", NOTEBOOK, "--out", str(out)]
    for s in SETS:
        cmd += ["--set", s]
    return cmd


def _env(cache: Path) -> dict:
    return dict(os.environ, VISUALSEARCH_CACHE=str(cache))



def _tables(out: Path) -> dict:
    folder = out / "results" / NOTEBOOK
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*")) if p.suffix in (".csv", ".md")}


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="finds the kernel through /proc (Linux)")
def test_kill_9_mid_training_then_rerun_resumes_with_equal_tables(tmp_path):
    straight = subprocess.run(_command(tmp_path / "straight"), env=_env(tmp_path / "cache-straight"), cwd=ROOT,
                              capture_output=True, text=True)
    assert straight.returncode == 0, straight.stdout[-3000:] + straight.stderr[-3000:]

    cache, out = tmp_path / "cache-killed", tmp_path / "killed"
    runs = cache / "runs" / "triplet_run"
    proc = subprocess.Popen(_command(out), env=_env(cache), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline, ckpt = time.time() + 240, None
    while ckpt is None and time.time() < deadline and proc.poll() is None:
        found = list(runs.glob("*/checkpoint.pt")) if runs.is_dir() else []
        ckpt = found[0] if found else None
        time.sleep(0.02)
    assert ckpt is not None, "no training checkpoint appeared before the run ended"
    for pid in [proc.pid, *descendants(proc.pid)]:  # the runner, papermill and the kernel, as a crash would
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    time.sleep(0.5)
    step = torch.load(ckpt, weights_only=False)["step"]
    assert 10 <= step < 40  # killed in the middle of the training (a checkpoint every 10 steps)
    assert not (out / "results" / NOTEBOOK).is_dir()  # nothing was published by the killed run

    again = subprocess.run(_command(out), env=_env(cache), cwd=ROOT, capture_output=True, text=True)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    executed = json.loads((out / "results" / NOTEBOOK / f"{NOTEBOOK}.ipynb").read_text())
    text = "".join("".join(o.get("text", "")) for c in executed["cells"] for o in c.get("outputs", []))
    assert f"resumed from the checkpoint at step {step} of 40" in text
    assert not list(runs.glob("*/checkpoint.pt"))  # run folders go once their entries are stored
    a, b = _tables(tmp_path / "straight"), _tables(out)
    assert set(a) == set(b) and len(a) >= 8
    for name in a:
        assert a[name] == b[name], name
    print(f"killed at the checkpoint of step {step} of 40; the rerun resumed from it; {len(a)} tables equal")
