"""Independent jobs in forked worker processes: how every notebook spreads its training runs over the cores.

Why processes and why fork: the runs of a grid are independent, and a small network's step splits poorly over
two intra-op threads (they wait for each other at every layer), while one process per core keeps both busy.
Forked workers inherit what the parent holds (datasets, frozen features, pretrained weights) without pickling
or copying it: the parent puts it in `shared()` before `run_forked`, a worker reads it there.

A worker shows no progress (progress.py: never a forked process); the parent drives one bar over the jobs as
they finish and hands each result to `on_result`, in the order they finish. A worker runs with `threads` torch
threads (torch's thread pool does not survive a fork; a run's floats depend on its thread count, so the count
is fixed here, not inherited). Workers die with their parent: each asks Linux for SIGKILL when the process
that forked it ends (prctl PR_SET_PDEATHSIG), so a killed kernel leaves no worker running on.
"""
from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, Callable, Sequence

from .progress import bar

_SHARED: dict = {}  # what the workers of the current run_forked call inherit (set by the parent, cleared after)
_PR_SET_PDEATHSIG = 1


def shared() -> dict:
    """What the parent left for its workers in this `run_forked` call (in a worker: read it; in the parent:
    the `shared` argument of the call in progress)."""
    return _SHARED


def _die_with_parent(parent: int) -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: workers end when the pool's pipes close
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def _worker_start(parent: int, threads: int) -> None:
    _die_with_parent(parent)
    torch = sys.modules.get("torch")  # jobs that never touch torch (world drawing) do not import it
    if torch is not None:
        torch.set_num_threads(threads)


def run_forked(fn: Callable[[Any], Any], items: Sequence, workers: int, shared: dict | None = None,
               threads: int = 1, desc: str = "jobs", unit: str = "job", progress: bool = True,
               on_result: Callable[[Any, Any], None] | None = None) -> list:
    """fn(item) for every item in min(workers, len(items)) forked processes of `threads` torch threads each;
    returns the results in the order of `items`. `fn` must be a module-level function (it is sent by name);
    `shared` is what the workers read through `shared()`; `on_result(item, result)` runs in the parent as
    each job finishes (e.g. to print a line or count a cache miss). Jobs are submitted in the order given, so
    put the longest first. A job's exception (or Ctrl-C) cancels the jobs not yet started and is raised in the parent once the
    running ones have ended (what they stored in the cache is kept)."""
    items = list(items)
    if not items:
        return []
    workers = max(1, min(int(workers), len(items)))
    _SHARED.clear()
    _SHARED.update(shared or {})
    results: list = [None] * len(items)
    try:
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork"), initializer=_worker_start,
                                 initargs=(os.getpid(), int(threads))) as pool:
            futures = {pool.submit(fn, item): i for i, item in enumerate(items)}
            with bar(total=len(items), desc=f"{desc} ({workers} processes, {threads} thread{'s' * (threads > 1)} each)",
                     unit=unit, disable=not progress) as finished:
                try:
                    for fut in as_completed(futures):
                        i = futures[fut]
                        results[i] = fut.result()
                        if on_result is not None:
                            on_result(items[i], results[i])
                        finished.update(1)
                except BaseException:  # a failed job or Ctrl-C: the jobs not started yet never start
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
    finally:
        _SHARED.clear()
    return results
