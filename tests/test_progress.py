"""visualsearch.progress: which form progress takes, where it is written, and that it changes nothing."""
import sys
import types

import pytest

from visualsearch import progress


@pytest.fixture(autouse=True)
def no_forced_mode(monkeypatch):
    monkeypatch.delenv(progress.ENV, raising=False)
    monkeypatch.delenv("RANK", raising=False)
    progress._open_line[0] = None


def fake_kernel(monkeypatch, shell_class: str):
    shell = type(shell_class, (), {})()
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: shell))


@pytest.mark.parametrize("value", ["widget", "text", "off", " Text "])
def test_env_var_forces_the_mode(monkeypatch, value):
    monkeypatch.setenv(progress.ENV, value)
    assert progress.mode() == value.strip().lower()


def test_unknown_env_value_is_refused(monkeypatch):
    monkeypatch.setenv(progress.ENV, "fancy")
    with pytest.raises(ValueError, match="widget, text, off"):
        progress.mode()


def test_mode_follows_the_environment(monkeypatch):
    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    assert progress.mode() == "text"                       # plain Python (this test process)
    fake_kernel(monkeypatch, "TerminalInteractiveShell")
    assert progress.mode() == "text"                       # IPython in a terminal
    fake_kernel(monkeypatch, "ZMQInteractiveShell")
    assert progress.mode() == "widget"                     # a Jupyter kernel with ipywidgets installed
    monkeypatch.setattr(progress, "find_spec", lambda name: None)
    assert progress.mode() == "text"                       # a kernel without ipywidgets


def test_widget_mode_gives_a_notebook_bar(monkeypatch):
    from tqdm.notebook import tqdm as widget_bar

    monkeypatch.setenv(progress.ENV, "widget")
    b = progress.bar(total=2, desc="w", leave=False)
    try:
        assert isinstance(b, widget_bar)
    finally:
        b.close()


def test_text_bar_writes_stdout_only_and_yields_every_item(monkeypatch, capsys):
    monkeypatch.setenv(progress.ENV, "text")
    assert list(progress.bar(range(50), desc="training batch_hard", unit="step")) == list(range(50))
    out, err = capsys.readouterr()
    assert err == ""
    last = out.split("\r")[-1]
    assert last.startswith("training batch_hard: 100%|##########| 50/50 [") and last.endswith("\n")
    assert out.count("\r") <= 3 and "\x1b" not in out   # redrawn at most every 10 s; no cursor moves


def test_manual_bar_shows_the_postfix_once_at_the_end(monkeypatch, capsys):
    monkeypatch.setenv(progress.ENV, "text")
    with progress.bar(total=100, desc="run") as b:
        for i in range(100):
            b.set_postfix(loss=f"{i:.4f}", refresh=False)
            b.update(1)
    out, err = capsys.readouterr()
    assert err == "" and out.count("\r") <= 3 and "100/100" in out and "loss=99.0000" in out


@pytest.mark.parametrize("how", ["off", "disable", "forked", "rank"])
def test_silent_bars_and_stages_yield_every_item(monkeypatch, capsys, how):
    monkeypatch.setenv(progress.ENV, "off" if how == "off" else "text")
    if how == "forked":
        monkeypatch.setattr(progress, "_PID", -1)  # as in a process forked by a worker pool
    if how == "rank":
        monkeypatch.setenv("RANK", "1")
    items = list(progress.bar(iter("abc"), desc="x", disable=how == "disable"))
    if how != "disable":
        with progress.stage("a step"):
            pass
        progress.note("a run")
    assert items == ["a", "b", "c"]
    assert capsys.readouterr() == ("", "")


def test_stage_is_one_line_with_its_time(monkeypatch, capsys):
    monkeypatch.setenv(progress.ENV, "text")
    with progress.stage("drawing the products world (first run only)"):
        pass
    out, err = capsys.readouterr()
    assert err == ""
    assert out.startswith("drawing the products world (first run only) ... ") and out.endswith(" s\n")
    assert out.count("\n") == 1


def test_nested_output_keeps_one_line_each(monkeypatch, capsys):
    monkeypatch.setenv(progress.ENV, "text")
    with progress.stage("reading"):
        for _ in progress.bar(range(3), desc="images"):
            pass
    for _ in progress.bar(range(2), desc="runs"):
        progress.note("a run finished")
    out = capsys.readouterr().out
    shown = [line.split("\r")[-1] for line in out.rstrip("\n").split("\n")]  # as a notebook or terminal shows it
    assert shown[0] == "reading ..."
    assert shown[1].startswith("images: 100%|##########| 3/3")
    assert shown[2].startswith("reading: ") and shown[2].endswith(" s")
    assert shown[3].startswith("runs:   0%") and shown[4:6] == ["a run finished"] * 2
    assert shown[6].startswith("runs: 100%|##########| 2/2") and len(shown) == 7


def test_a_failing_stage_says_so(monkeypatch, capsys):
    monkeypatch.setenv(progress.ENV, "text")
    with pytest.raises(KeyError):
        with progress.stage("step"):
            raise KeyError("x")
    assert "step ... failed after " in capsys.readouterr().out


def test_quiet_hf_loading_restores_transformers_settings():
    from transformers.utils import logging as hf_logging

    before = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    with progress.quiet_hf_loading():
        assert not hf_logging.is_progress_bar_enabled()
        assert hf_logging.get_verbosity() == hf_logging.ERROR
    assert (hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()) == before
