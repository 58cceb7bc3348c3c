"""The one way the library shows progress: a bar per loop, a line per long step without a loop.

Why one module: the notebooks are read in two places. Live in JupyterLab, a widget bar is the readable
form. In the executed copies that papermill writes, a widget saved without its state renders as an error
box, and a text bar written to stderr (tqdm's default) renders as a pink warning box holding hundreds of
`\\r` updates. So the library never calls tqdm directly: `bar()` picks the form once, here.

- widget: `tqdm.notebook` bars, inside an interactive Jupyter kernel that has ipywidgets.
- text: a plain ASCII bar on sys.stdout (never stderr), redrawn at most every TEXT_INTERVAL_S seconds, so
  an executed notebook keeps a few short updates per bar and ends with one readable line per bar, e.g.
  `training batch_hard: 100%|##########| 150/150 [00:20<00:00, 7.48it/s, loss=0.0213]`.
- off: nothing.

The environment variable VISUALSEARCH_PROGRESS (widget | text | off) forces a form; the runner sets `text`
for papermill runs (it is inherited by the kernels). Without it: widget in a Jupyter kernel with ipywidgets,
text anywhere else.

Only one process shows progress: under torchrun rank 0, and never a process forked by the library's worker
pools (its parent reports the finished work as the results come back; output from several processes would
interleave). Showing progress draws no random numbers and changes no computation.
"""
from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from importlib.util import find_spec

from tqdm.std import tqdm as _tqdm

ENV = "VISUALSEARCH_PROGRESS"
MODES = ("widget", "text", "off")
TEXT_INTERVAL_S = 10.0      # text bars redraw at most this often: a few lines per bar in a saved notebook
_PID = os.getpid()          # the process that loaded the library; forked workers differ
_open_line = [None]         # what wrote the last, unfinished stdout line: a text bar, a stage, or None


class _TextBar(_tqdm):
    """tqdm's text bar, keeping track of the line it leaves unfinished (see `_end_line`)."""

    monitor_interval = 0    # no tqdm monitor thread: workers are forked while bars exist

    def display(self, *args, **kwargs):
        drawn = super().display(*args, **kwargs)
        _open_line[0] = self
        return drawn

    def close(self):
        super().close()     # leave=True: the final state and a newline
        if _open_line[0] is self:
            _open_line[0] = None


def mode() -> str:
    """"widget", "text" or "off": VISUALSEARCH_PROGRESS if set, else widget inside a Jupyter kernel that
    can import ipywidgets, else text."""
    forced = os.environ.get(ENV, "").strip().lower()
    if forced:
        if forced not in MODES:
            raise ValueError(f"{ENV}={forced!r}; expected one of {', '.join(MODES)}")
        return forced
    return "widget" if _in_jupyter_kernel() and find_spec("ipywidgets") is not None else "text"


def _in_jupyter_kernel() -> bool:
    """True inside an IPython kernel (JupyterLab, papermill), not in a terminal IPython or plain Python."""
    ipython = sys.modules.get("IPython")  # never imported here: a kernel has loaded it already
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def shown() -> bool:
    """Whether this process shows progress at all (mode not off, rank 0, not a forked worker)."""
    return mode() != "off" and os.getpid() == _PID and int(os.environ.get("RANK", 0)) == 0


def bar(iterable=None, *, total=None, desc: str = "", unit: str = "it", leave: bool = True, disable: bool = False,
        initial: int = 0):
    """A tqdm-compatible bar over `iterable` (or updated by hand up to `total`) in the form `mode()` says;
    `disable` (or a process that shows nothing) gives a silent bar that still yields every item."""
    show = not disable and shown()
    if show and mode() == "widget":
        from tqdm.notebook import tqdm as widget_bar

        return widget_bar(iterable, total=total, desc=desc, unit=unit, leave=leave, initial=initial)
    if show:
        _end_line()
    # position=0: a bar inside another starts a line of its own (_end_line) instead of tqdm's cursor moves,
    # which are escape codes in a notebook
    return _TextBar(iterable, total=total, desc=desc, unit=unit, leave=leave, initial=initial, disable=not show,
                    file=sys.stdout, mininterval=TEXT_INTERVAL_S, ascii=True, position=0)


@contextmanager
def stage(message: str, disable: bool = False):
    """One line for a long step with no loop to count: `message ...` when it starts, the seconds it took
    appended when it ends (`drawing the products world (first run only) ... 14.2 s`). A bar or another
    stage starting inside it ends the line early; the time then comes on a line of its own."""
    if disable or not shown():
        yield
        return
    _end_line()
    print(f"{message} ...", end="", flush=True)
    token = _open_line[0] = object()
    start = time.perf_counter()
    outcome = "failed after "
    try:
        yield
        outcome = ""
    finally:
        took = f"{outcome}{time.perf_counter() - start:.1f} s"
        if _open_line[0] is token:
            print(f" {took}", flush=True)
        else:
            _end_line()
            print(f"{message}: {took}", flush=True)
        _open_line[0] = None


def note(message: str, disable: bool = False) -> None:
    """One line about finished work that no bar of this process counted (a run trained by a worker)."""
    if not disable and shown():
        _end_line()
        print(message, flush=True)


def _end_line() -> None:
    """End the unfinished line a text bar or a stage left, so that new output starts on a line of its own
    (an open bar redraws on the next line; nested bars and stages stay readable, one line each)."""
    if _open_line[0] is not None:
        print(flush=True)
        _open_line[0] = None


@contextmanager
def quiet_hf_loading():
    """Silence Hugging Face's own output while a local model loads: transformers' `Loading weights` bar
    (and huggingface_hub's bars, which transformers switches with its own) and its info logs, all written
    to stderr. Restored afterwards, so a caller's own use of transformers is left as it was."""
    from transformers.utils import logging as hf_logging

    bars, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
