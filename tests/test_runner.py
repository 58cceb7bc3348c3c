"""The papermill runner on a tiny notebook: parameters injected, outputs listed, failures named."""
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from visualsearch.runner import descendants, run_notebook

FIXTURES = Path(__file__).parent / "fixtures"


def test_parameters_are_injected_and_outputs_listed(tmp_path):
    run = run_notebook("toy_notebook", "default", tmp_path, overrides={"value": 0.25}, source_dir=FIXTURES)
    assert run.status == "ok", run.failure
    table = pd.read_csv(tmp_path / "results" / "toy_notebook" / "numbers.csv")
    assert table["reproduced"].tolist() == [0.25] and table["preset"].tolist() == ["default"]
    assert [p.name for p in run.written] == ["numbers.csv"]
    executed = json.loads(run.output.read_text())
    injected = [c for c in executed["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert injected and "value" in "".join(injected[0]["source"])


def test_failure_names_the_cell_and_keeps_the_executed_notebook(tmp_path):
    run = run_notebook("toy_notebook", "smoke", tmp_path, overrides={"fail": True}, source_dir=FIXTURES)
    assert run.status == "failed"
    assert "ValueError: boom on purpose" in run.failure and "if overrides.get" in run.failure
    assert run.output.is_file()
    # what ran before the failing cell is kept
    assert (tmp_path / "results" / "toy_notebook" / "numbers.csv").is_file()


def test_unknown_notebook_is_refused_with_the_list(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "visualsearch.runner", "--only", "no_such_notebook",
                           "--out", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode != 0 and "unknown notebook(s) no_such_notebook" in proc.stderr


def test_run_times_are_kept_per_notebook_and_for_the_full_set(tmp_path):
    from visualsearch.runner import ALL, record_times

    (tmp_path / "results").mkdir()
    path = tmp_path / "results" / "run_times.json"
    path.write_text(json.dumps({"default": {"cold_s": 501.4, "warm_s": 23.0}}))  # the older, mixed format
    assert record_times(tmp_path, "default", "maaf_ablations", 500.0, warm=False) == {"cold_s": 500.0}
    assert record_times(tmp_path, "default", "maaf_ablations", 20.04, warm=True) == {"cold_s": 500.0, "warm_s": 20.0}
    record_times(tmp_path, "default", ALL, 1800.0, warm=False)
    record_times(tmp_path, "smoke", "maaf_ablations", 60.0, warm=False)
    times = json.loads(path.read_text())
    assert times["default"] == {"maaf_ablations": {"cold_s": 500.0, "warm_s": 20.0}, ALL: {"cold_s": 1800.0}}
    assert times["smoke"] == {"maaf_ablations": {"cold_s": 60.0}}


def test_set_items_become_nested_overrides_that_the_config_validates():
    from visualsearch.config import ConfigError, load_params
    from visualsearch.runner import parse_overrides

    o = parse_overrides(["model.input_size=48", "finetune.steps=300", "seeds=[0, 1, 2]", "model.widths=[8, 8, 8, 8]"])
    assert o == {"model": {"input_size": 48, "widths": [8, 8, 8, 8]}, "finetune": {"steps": 300}, "seeds": [0, 1, 2]}
    p = load_params("face_attribute_sharing", "smoke", o)
    assert p["model"]["input_size"] == 48 and p["finetune"]["steps"] == 300 and p["finetune"]["batch_size"] == 32
    with pytest.raises(ConfigError, match="model.input_sise"):
        load_params("face_attribute_sharing", "smoke", parse_overrides(["model.input_sise=48"]))
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        parse_overrides(["model.input_size"])


@pytest.fixture
def toy_runner(monkeypatch, tmp_path):
    """runner.main over the toy notebook (its parameters are not validated: it has no presets), with the
    repository root moved to a temporary folder so the committed results are never at stake."""
    from visualsearch import runner

    repo = tmp_path / "repo"
    repo.mkdir()
    monkeypatch.setattr(runner, "notebooks_dir", lambda: FIXTURES)
    monkeypatch.setattr(runner, "_check_parameters", lambda names, args, overrides: None)
    monkeypatch.setattr(runner, "repo_root", lambda: repo)
    monkeypatch.setattr(runner, "scratch_dir", lambda preset: repo / "scratch" / preset)
    return runner, repo


def _committed(target: Path) -> dict:
    """Every file under `target` but the staging folder, with its bytes."""
    return {p.relative_to(target).as_posix(): p.read_bytes() for p in sorted(target.rglob("*"))
            if p.is_file() and not p.relative_to(target).as_posix().startswith(".staging/")}


def test_a_failed_run_leaves_the_target_as_it_was_and_keeps_its_work_aside(toy_runner, tmp_path):
    runner, _ = toy_runner
    out = tmp_path / "out"
    assert runner.main(["--preset", "smoke", "--out", str(out), "--set", "value=0.5"]) == 0
    before = _committed(out)
    assert "results/index.md" in before and "results/run_times.json" in before
    assert runner.main(["--preset", "smoke", "--out", str(out), "--set", "value=0.75", "--set", "fail=true"]) == 1
    assert _committed(out) == before  # tables, executed notebook, index.md and run_times.json untouched
    staged = out / runner.STAGING / "results" / "toy_notebook"
    assert pd.read_csv(staged / "numbers.csv")["reproduced"].tolist() == [0.75]  # nothing computed is lost
    assert "boom on purpose" in (staged / "toy_notebook.ipynb").read_text()


def test_a_successful_run_replaces_each_notebook_folder_and_clears_the_staging(toy_runner, tmp_path):
    runner, _ = toy_runner
    out = tmp_path / "out"
    stale = out / "results" / "toy_notebook" / "stale_table.csv"
    stale.parent.mkdir(parents=True)
    stale.write_text("from an older run\n")
    assert runner.main(["--preset", "smoke", "--out", str(out), "--set", "value=0.5"]) == 0
    assert not stale.exists(), "a table the notebook no longer writes must not survive beside the new ones"
    assert pd.read_csv(out / "results" / "toy_notebook" / "numbers.csv")["reproduced"].tolist() == [0.5]
    assert not (out / runner.STAGING).exists()
    meta = json.loads((out / "results" / "toy_notebook" / "toy_notebook.ipynb").read_text())["metadata"]["papermill"]
    assert meta["output_path"] == str(out / "results" / "toy_notebook" / "toy_notebook.ipynb")  # where it is now


def test_only_the_plain_default_run_targets_the_committed_results(toy_runner):
    runner, repo = toy_runner

    def target(*argv):
        args = runner.parse_args(list(argv))
        return runner.target_of(args, runner.parse_overrides(args.set))

    assert target() == repo
    assert target("--preset", "smoke") == repo / "scratch" / "smoke"
    assert target("--set", "seed=1") == repo / "scratch" / "default"
    assert target("--device", "cuda") == repo / "scratch" / "default"
    assert target("--out", "/tmp/x") == Path("/tmp/x")


def test_a_second_run_into_the_same_target_is_refused(toy_runner, tmp_path):
    import os

    runner, _ = toy_runner
    staging = tmp_path / "out" / runner.STAGING
    staging.mkdir(parents=True)
    (staging / ".lock").write_text(str(os.getppid()))  # a live process that is not this one
    with pytest.raises(SystemExit, match="another run"):
        runner.main(["--preset", "smoke", "--out", str(tmp_path / "out")])


def test_a_misspelt_parameter_stops_before_any_notebook_runs(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "visualsearch.runner", "--only", "triplet_product_search",
                           "--set", "train.stepz=3", "--out", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode != 0 and "train.stepz" in proc.stderr and "triplet_product_search" in proc.stderr
    assert not (tmp_path / "results").exists()


def test_a_truncated_run_times_file_is_started_afresh(tmp_path):
    from visualsearch.runner import record_times

    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "run_times.json").write_text('{"default": {"tri')
    assert record_times(tmp_path, "default", "nb", 12.0, warm=False) == {"cold_s": 12.0}


def test_numbers_in_exponent_form_are_floats():
    from visualsearch.runner import parse_overrides

    assert parse_overrides(["train.lr=1e-3", "name=1e3x", "seed=3"]) == {"train": {"lr": 0.001}, "name": "1e3x",
                                                                         "seed": 3}



def _alive(pids) -> set[int]:
    import os

    out = set()
    for p in pids:
        try:
            os.kill(p, 0)
            state = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]
            if state != "Z":
                out.add(p)
        except (ProcessLookupError, FileNotFoundError):
            pass
    return out


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process tree from /proc")
@pytest.mark.parametrize("signal_name,notebook,processes", [("SIGTERM", "maaf_ablations", 3),
                                                            ("SIGKILL", "triplet_product_search", 2)])
def test_stopping_the_runner_stops_papermill_and_the_kernel(tmp_path, signal_name, notebook, processes):
    """SIGTERM: the runner stops its notebooks, their kernels and the kernels' worker processes (MAAF forks
    workers), and says so in one line. SIGKILL (no chance to clean up): papermill gets SIGTERM from its
    parent-death signal and its kernel exits on its own."""
    import os
    import signal
    import time

    # a cache of its own: with the suite's warm cache a smoke notebook can end before its workers are seen
    env = dict(os.environ, VISUALSEARCH_CACHE=str(tmp_path / "cache"))
    proc = subprocess.Popen([sys.executable, "-m", "visualsearch.runner", "--preset", "smoke", "--only",
                             notebook, "--out", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 90
    while time.time() < deadline and len(descendants(proc.pid)) < processes:  # papermill, kernel, workers
        time.sleep(0.2)
    below = descendants(proc.pid)
    assert len(below) >= processes, f"papermill, its kernel (and workers) did not start: {below}"
    os.kill(proc.pid, getattr(signal, signal_name))
    _, err = proc.communicate(timeout=30)
    deadline = time.time() + 30
    while time.time() < deadline and _alive(below):
        time.sleep(0.5)
    assert not _alive(below), f"still running after {signal_name} to the runner: {_alive(below)}"
    if signal_name == "SIGTERM":
        assert proc.returncode == 128 + signal.SIGTERM and "stopped by SIGTERM" in err and "Traceback" not in err
    assert not (tmp_path / "results" / notebook).exists()


def test_a_key_that_only_some_notebooks_have_is_refused_with_the_hint(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "visualsearch.runner", "--set", "train.steps=3",
                           "--out", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode != 0 and "maaf_ablations" in proc.stderr and "--only" in proc.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_stops_at_once(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "visualsearch.runner", "--only", "triplet_product_search",
                           "--device", "cuda", "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "no CUDA GPU" in proc.stderr
    assert not (tmp_path / "results").exists()


def test_setup_repoints_a_venv_installed_from_another_checkout(tmp_path):
    """A venv shared by two checkouts (VISUALSEARCH_VENV) whose editable install points at the other one is
    reinstalled from this checkout; one that points here and is up to date is left alone. A fake python in
    the venv records what setup_env.sh asks of it."""
    import os

    root = Path(__file__).resolve().parents[1]
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "etc" / "jupyter").mkdir(parents=True)
    log = tmp_path / "calls.log"
    points_at = tmp_path / "points_at"
    points_at.write_text("/somewhere/else")
    fake = venv / "bin" / "python"
    fake.write_text(f"""#!/usr/bin/env bash
echo "$*" >> {log}
case "$*" in
  *"print(pathlib.Path(visualsearch.__file__)"*) cat {points_at} ;;
  "- "*) cat > /dev/null ;;
esac
exit 0
""")
    fake.chmod(0o755)
    env = dict(os.environ, VISUALSEARCH_VENV=str(venv))
    run = lambda: subprocess.run([str(root / "scripts" / "setup_env.sh")], env=env, capture_output=True, text=True)
    assert run().returncode == 0
    assert f"-m pip install -q --no-deps -e {root}" in log.read_text()
    points_at.write_text(str(root))
    log.write_text("")
    assert run().returncode == 0
    assert "pip install" not in log.read_text()  # installed from this checkout and up to date: nothing to do
    points_at.write_text("/somewhere/else")
    assert run().returncode == 0
    assert f"-m pip install -q --no-deps -e {root}" in log.read_text()
