"""Run the companion's notebooks with papermill: what `./run_all.sh` calls.

Each notebook runs in its own papermill process (its own kernel) with the preset, data root, device and
output folder injected into its `parameters` cell; several run at once with --jobs.

Where outputs go: only the default preset with no overrides, no data root, on the CPU and without --out is
the committed reproduction (results/ and figures/ of the repository); any other run goes to --out or to the
preset's git-ignored scratch folder (scratch/<preset>/). Every run writes aside first, into `.staging/` under
its target, and moves each notebook's results/ and figures/ folders into place only when every notebook of
the run succeeded; index.md and run_times.json are written after that. A failed run leaves the target as it
was and keeps its executed notebooks (with the failing cell) in the staging folder.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import atomic
from .config import PRESETS, ConfigError, display_path, load_params, repo_root, scratch_dir
from .notebook_files import KERNEL_NAME as KERNEL
from .report import write_index

STAGING = ".staging"  # the folder, under a run's target, that a run writes into before its outputs move


@dataclass
class NotebookRun:
    notebook: str                     # notebook name (file stem)
    status: str = "pending"           # ok | failed
    wall_s: float = 0.0               # seconds for this notebook
    output: Path | None = None        # the executed notebook
    log: Path | None = None           # papermill's stdout/stderr
    written: list = field(default_factory=list)  # tables and figures written by this run
    failure: str = ""                 # the failing cell and error, when failed


def notebooks_dir() -> Path:
    return repo_root() / "notebooks"


def available() -> list[str]:
    return sorted(p.stem for p in notebooks_dir().glob("*.ipynb"))


def failing_cell(executed: Path) -> str:
    """'cell N (first line of source): ErrorName: message' for the first cell with an error output."""
    try:
        nb = json.loads(executed.read_text())
    except (OSError, json.JSONDecodeError):
        return "the executed notebook could not be read"
    for i, cell in enumerate(nb.get("cells", [])):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                src = "".join(cell.get("source", "")).strip().splitlines()
                first = src[0][:80] if src else ""
                return f"cell {i} ({first!r}): {out.get('ename')}: {out.get('evalue', '')[:300]}"
    return "no cell holds an error (the kernel died, timed out or the notebook could not start)"


def _outputs(out_dir: Path, notebook: str, since: float) -> list[Path]:
    found = []
    for sub, pats in (("results", ("*.csv",)), ("figures", ("*.png",))):
        folder = out_dir / sub / notebook
        for pat in pats:
            found += [p for p in folder.glob(pat) if p.stat().st_mtime >= since]
    return sorted(found)


# papermill started so that it ends with the runner, even when the runner is killed with SIGKILL: Linux's
# parent-death signal (prctl PR_SET_PDEATHSIG, kept across exec) sends it SIGTERM. Its kernel then exits by
# itself (ipykernel polls its parent). Elsewhere the prctl call is skipped.
_PAPERMILL_DYING_WITH_PARENT = (
    "import ctypes, os, signal, sys\n"
    "try:\n    ctypes.CDLL(None).prctl(1, signal.SIGTERM)\nexcept Exception:\n    pass\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'papermill', *sys.argv[1:]])")
_RUNNING: set = set()  # papermill processes of this runner, stopped when the runner is asked to stop
_SPAWN = threading.Lock()  # held while a papermill starts, so a stop never misses one starting meanwhile
_STOPPING = threading.Event()


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (papermill -> its kernel -> the kernel's worker processes), read from
    /proc; empty where there is no /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _signal_all(pids, sig) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _stop_on_signal(signum, frame) -> None:
    """SIGINT/SIGTERM/SIGHUP: stop every papermill of this run with its kernel and the kernel's workers (the
    whole process tree: a kernel's forked workers would otherwise outlive it), then exit with one line."""
    _STOPPING.set()
    with _SPAWN:  # no papermill starts after this point
        procs = list(_RUNNING)
    trees = {proc: [proc.pid] + descendants(proc.pid) for proc in procs}
    for pids in trees.values():
        _signal_all(pids, signal.SIGTERM)
    deadline = time.time() + 10
    for proc, pids in trees.items():
        try:
            proc.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            pass
        _signal_all(pids, signal.SIGKILL)
    name = signal.Signals(signum).name
    print(f"\nstopped by {name}: the notebooks of this run were stopped; nothing was moved into place (the "
          f"committed results are as they were). Trained models already cached are kept.", file=sys.stderr, flush=True)
    os._exit(128 + signum)


def run_notebook(notebook: str, preset: str, out_dir: Path, data_root=None, device: str = "cpu",
                 overrides: dict | None = None, cell_timeout: int = 3600, threads: int | None = None,
                 source_dir: Path | None = None) -> NotebookRun:
    """Execute one notebook (from notebooks/ or `source_dir`) with papermill in a subprocess; never raises
    for a failing notebook: the failure is in the returned NotebookRun."""
    run = NotebookRun(notebook)
    res = out_dir / "results" / notebook
    res.mkdir(parents=True, exist_ok=True)
    run.output, run.log = res / f"{notebook}.ipynb", res / f"{notebook}.papermill.log"
    params = {"preset": preset, "data_root": str(data_root) if data_root else None, "device": device,
              "out_dir": display_path(out_dir), "overrides": overrides or {}}
    source_dir = Path(source_dir) if source_dir else notebooks_dir()
    cmd = [sys.executable, "-c", _PAPERMILL_DYING_WITH_PARENT, str(source_dir / f"{notebook}.ipynb"), str(run.output),
           "-k", KERNEL, "-y", yaml.safe_dump(params), "--execution-timeout", str(cell_timeout),
           "--cwd", str(source_dir), "--no-progress-bar", "--log-output"]
    # OMP_WAIT_POLICY=PASSIVE: idle OpenMP threads sleep instead of spinning; on a busy 2-core machine
    # spinning threads made training steps up to 20x slower (measured while tuning the triplet notebook).
    # Progress as text lines: widget bars saved without their widget state show as errors in the copies.
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("MPLBACKEND", None)  # the kernel's inline backend, as in JupyterLab
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env.setdefault("VISUALSEARCH_PROGRESS", "text")
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    t0 = time.time()
    with open(run.log, "w") as log:
        with _SPAWN:
            if _STOPPING.is_set():
                run.status, run.failure = "failed", "not started: the run was being stopped"
                return run
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            _RUNNING.add(proc)
        try:
            proc.wait()
        finally:
            _RUNNING.discard(proc)
    run.wall_s = time.time() - t0
    run.status = "ok" if proc.returncode == 0 else "failed"
    if proc.returncode != 0:
        run.failure = failing_cell(run.output) if run.output.is_file() else \
            f"papermill exited {proc.returncode} before writing a notebook; see {run.log}"
    run.written = _outputs(out_dir, notebook, t0)
    return run


ALL = "all notebooks"  # the run_times.json label of a run of every notebook


def _times_file(out_dir: Path) -> Path:
    return out_dir / "results" / "run_times.json"


def record_times(out_dir: Path, preset: str, label: str, wall_s: float, warm: bool) -> dict:
    """Keep the last cold (something trained) and warm (all from cache) time per preset and per `label`:
    a notebook's name, or "all notebooks" for a run of every notebook. Returns {cold_s, warm_s} of `label`."""
    path = _times_file(out_dir)
    try:
        times = json.loads(path.read_text()) if path.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        print(f"warning: {display_path(path)} was not valid JSON; starting it afresh", file=sys.stderr)
        times = {}
    if not isinstance(times, dict):
        times = {}
    if any(not isinstance(v, dict) for v in times.get(preset, {}).values()):
        times[preset] = {}  # an older file kept one total per preset, whatever notebooks ran: start afresh
    times.setdefault(preset, {}).setdefault(label, {})["warm_s" if warm else "cold_s"] = round(wall_s, 1)
    atomic.write_text(path, json.dumps(times, indent=1, sort_keys=True))
    return times[preset][label]


def _cache_was_warm(out_dir: Path, runs: list[NotebookRun]) -> bool:
    """True when no notebook of the run had to compute a cached entry (read from the sidecars)."""
    for run in runs:
        for p in run.written:
            prov = p.with_suffix(".provenance.json")
            if prov.is_file():
                cache = json.loads(prov.read_text()).get("cache") or {}
                if cache.get("computed"):
                    return False
    return True


def _times_text(times: dict) -> str:
    return f"last cold run {times.get('cold_s', '?')} s, last warm-cache run {times.get('warm_s', '?')} s"


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="run_all.sh", description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="default", choices=PRESETS, help="configs/<notebook>/<preset>.yaml")
    ap.add_argument("--data-root", default=None, help="folder with the real datasets (default: synthetic worlds)")
    ap.add_argument("--only", default=None, help="comma-separated notebook names to run (default: all)")
    ap.add_argument("--jobs", type=int, default=1, help="notebooks run in parallel, as separate processes")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    ap.add_argument("--out", default=None, help="write OUT/results and OUT/figures (default: the repository)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a parameter in every notebook run (value parsed as YAML; section.key for nested ones)")
    ap.add_argument("--cell-timeout", type=int, default=3600, help="seconds allowed per cell")
    return ap.parse_args(argv)


def parse_overrides(items: list[str]) -> dict:
    """--set KEY=VALUE items as a parameter mapping; VALUE is parsed as YAML, and a dotted KEY
    (model.input_size=48) sets one field of a section."""
    overrides: dict = {}
    for item in items:
        if "=" not in item:
            sys.exit(f"error: --set expects KEY=VALUE, got '{item}'")
        k, v = item.split("=", 1)
        *parents, leaf = k.strip().split(".")
        section = overrides
        for name in parents:
            section = section.setdefault(name, {})
            if not isinstance(section, dict):
                sys.exit(f"error: --set {item}: '{name}' was already set to a value, not a section")
        section[leaf] = _yaml_value(v)
    return overrides


def _yaml_value(text: str):
    """A --set value parsed as YAML, except that numbers like 1e-3 (YAML 1.1 wants 1.0e-3) are floats."""
    value = yaml.safe_load(text)
    if isinstance(value, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+", value.strip()):
        return float(value)
    return value


def _check_kernel() -> None:
    from jupyter_client.kernelspec import KernelSpecManager

    if KERNEL not in KernelSpecManager().find_kernel_specs():
        sys.exit(f"error: the Jupyter kernel '{KERNEL}' is not registered; run scripts/setup_env.sh "
                 f"(./run_all.sh does it for you)")


def _check_parameters(names: list[str], args, overrides: dict) -> None:
    """Validate the preset, --set keys, data root and device for every notebook before any runs: a typo
    must stop the run at once, not after the first notebook trained."""
    problems = []
    for name in names:
        try:
            load_params(name, args.preset, overrides, data_root=args.data_root, device=args.device)
        except ConfigError as e:
            problems.append(f"  {name}: {e}")
    if problems:
        hint = "" if args.only else " (--set applies to every notebook run; choose them with --only)"
        sys.exit("error: invalid parameters" + hint + "\n" + "\n".join(problems))
    if str(args.device).startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            sys.exit(f"error: --device {args.device}, but torch sees no CUDA GPU on this machine")


def target_of(args, overrides: dict) -> Path:
    """Where this run's outputs end up (see the module docstring)."""
    if args.out:
        return Path(args.out).resolve()
    if args.preset == "default" and not overrides and not args.data_root and args.device == "cpu":
        return repo_root()
    return scratch_dir(args.preset)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def prepare_staging(target: Path) -> Path:
    """An empty staging folder under `target`, locked by this process's pid (a second run into the same
    target stops with a message instead of mixing its files with the first's)."""
    staging = target / STAGING
    lock = staging / ".lock"
    if lock.is_file():
        try:
            pid = int(lock.read_text().strip() or 0)
        except ValueError:
            pid = 0
        if pid and pid != os.getpid() and _pid_alive(pid):
            sys.exit(f"error: another run (pid {pid}) is writing into {display_path(target)}; wait for it, or "
                     f"choose another folder with --out")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    lock.write_text(str(os.getpid()))
    return staging


def tidy_executed_notebook(path: Path, source: Path) -> None:
    """Papermill records the input and output paths as absolute paths of this machine; an executed notebook
    that is committed must not carry them: keep them relative to the repository (or absolute outside it)."""
    import nbformat

    if not path.is_file():
        return
    nb = nbformat.read(path, as_version=4)
    meta = nb.metadata.get("papermill")
    if not meta:
        return
    meta["input_path"], meta["output_path"] = display_path(source), display_path(path)
    atomic.write_text(path, nbformat.writes(nb) + "\n")


def publish(staging: Path, target: Path, names: list[str]) -> None:
    """Move each notebook's results/<nb> and figures/<nb> from `staging` into `target`, replacing the old
    folders (a rename each: the old folder is removed only after the new one is in place)."""
    for name in names:
        for sub in ("results", "figures"):
            src, dst = staging / sub / name, target / sub / name
            if not src.is_dir():
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            old = dst.with_name(f".{name}.old")
            shutil.rmtree(old, ignore_errors=True)
            if dst.exists():
                dst.rename(old)
            src.rename(dst)
            shutil.rmtree(old, ignore_errors=True)
        tidy_executed_notebook(target / "results" / name / f"{name}.ipynb", notebooks_dir() / f"{name}.ipynb")


def main(argv=None) -> int:
    args = parse_args(argv)
    names = available()
    if args.only:
        wanted = [n.strip().removesuffix(".ipynb") for n in args.only.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in names]
        if unknown:
            sys.exit(f"error: unknown notebook(s) {', '.join(unknown)}; available: {', '.join(names)}")
        names = wanted
    if not names:
        sys.exit(f"error: no notebooks found in {notebooks_dir()}")
    if args.data_root and not Path(args.data_root).is_dir():
        sys.exit(f"error: --data-root {args.data_root} is not a folder")
    overrides = parse_overrides(args.set)
    _check_parameters(names, args, overrides)
    _check_kernel()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _stop_on_signal)
    target = target_of(args, overrides)
    staging = prepare_staging(target)
    jobs = max(1, args.jobs)
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None
    what = ("the committed reproduction" if target == repo_root() else
            "scratch, not the committed reproduction" if target.parent == scratch_dir(args.preset).parent else "--out")
    print(f"running {len(names)} notebook(s) with preset '{args.preset}' on {args.device}, {jobs} at a time; "
          f"outputs go to {display_path(target)}/results and {display_path(target)}/figures ({what}) once every "
          f"notebook succeeded", flush=True)

    t0 = time.time()

    def one(i_name):
        i, name = i_name
        print(f"[{i + 1}/{len(names)}] {name}: started", flush=True)
        run = run_notebook(name, args.preset, staging, args.data_root, args.device, overrides,
                           args.cell_timeout, threads)
        extra = f" ({run.failure})" if run.failure else ""
        print(f"[{i + 1}/{len(names)}] {name}: {run.status} in {run.wall_s:.0f} s{extra}", flush=True)
        return run

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        runs = list(pool.map(one, enumerate(names)))
    total = time.time() - t0
    ok = all(r.status == "ok" for r in runs)
    if not ok:
        print("\nsummary")
        for r in runs:
            print(f"  {r.notebook:32s} {r.status:7s} {r.wall_s:7.0f} s")
        for r in runs:
            if r.status != "ok":
                print(f"\nFAILED: {r.notebook}: {r.failure}\n  executed notebook with the traceback: "
                      f"{display_path(r.output)}\n  papermill log: {display_path(r.log)}", file=sys.stderr)
        print(f"\nnothing was moved into {display_path(target)}: its results/ and figures/ are as they were. This "
              f"run's outputs stay in {display_path(staging)} until the next run; trained models are cached, so a "
              f"rerun repeats only what failed.", file=sys.stderr)
        return 1

    warm = {r.notebook: _cache_was_warm(staging, [r]) for r in runs}
    written = {r.notebook: [p.name for p in r.written] for r in runs}
    publish(staging, target, names)
    times = {r.notebook: record_times(target, args.preset, r.notebook, r.wall_s, warm[r.notebook]) for r in runs}
    if sorted(names) == sorted(available()):
        times[ALL] = record_times(target, args.preset, ALL, total, warm=all(warm.values()))
    summary = [{"notebook": r.notebook, "status": r.status, "wall_s": r.wall_s, "preset": args.preset,
                "cache": "warm" if warm[r.notebook] else "trained", **times[r.notebook]} for r in runs]
    write_index(target, summary=summary)
    shutil.rmtree(staging, ignore_errors=True)

    print("\nsummary")
    for r in runs:
        tables = [n for n in written[r.notebook] if n.endswith(".csv")]
        figures = [n for n in written[r.notebook] if n.endswith(".png")]
        print(f"  {r.notebook:32s} {r.status:7s} {r.wall_s:7.0f} s   {len(tables)} tables, {len(figures)} figures")
        print(f"    preset '{args.preset}': {_times_text(times[r.notebook])}")
        if tables:
            print(f"    tables:  {', '.join(tables)}")
        if figures:
            print(f"    figures: {', '.join(figures)}")
    print(f"  total {total:.0f} s" + (f"; all notebooks, preset '{args.preset}': {_times_text(times[ALL])}"
                                       if ALL in times else ""))
    print(f"  index of every table and figure: {display_path(target / 'results' / 'index.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
