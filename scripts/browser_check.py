#!/usr/bin/env python
"""Browser check of the notebooks: open, run and save each one in a real JupyterLab, driven by Chromium.

Why: the notebooks are read, run and saved in JupyterLab (README, "Working in JupyterLab"), and papermill,
which the tests use, does not see what a reader sees there: whether a notebook opens already "modified",
which kernel JupyterLab picks, whether a kernel-choice dialog pops up, what the outputs look like, and
whether running and saving a notebook changes files of the checkout. This script does what a reader does and
checks it:

1. records the state of the working tree (`git status --porcelain`, plus a hash of every file it lists, so a
   file that was already modified and is modified again is seen too);
2. starts `.venv/bin/jupyter lab` ($VISUALSEARCH_VENV/bin/jupyter when that is set) with the repository root as its root dir, on a free port with a random
   token (JupyterLab's own settings and workspaces go to a temporary folder, so the user's are neither used
   nor changed; the news notification is switched off so it does not cover the screenshots);
3. in headless Chromium (playwright, Debian's /usr/bin/chromium), for each notebook, in a fresh workspace:
   opens notebooks/<name>.ipynb and waits for the kernel to be idle; checks that the notebook is not marked
   modified (its tab has no `jp-mod-dirty` class), that no dialog (kernel choice, ...) appeared, and that
   the kernel shown in the notebook toolbar is "visualsearch (Python 3.11)"; runs Run > Run All Cells at
   the notebook's own parameters (the smoke preset) and waits until the kernel has answered every cell;
   checks that every code cell ran, that no cell raised (an `error` message from the kernel: a traceback),
   and that at least one image was rendered; reports stderr boxes as warnings; takes two screenshots (the
   top of the notebook, and the first figure) into the screenshots folder; saves (Ctrl+S), closes the tab
   and shuts the kernel down;
4. stops JupyterLab and every kernel it started, and checks that the working tree is as it was in step 1
   (the screenshots folder excepted: the script writes it on purpose);
5. prints a report and exits 1 when a check failed, naming the notebook and the check.

Errors are read from the kernel's messages (the notebook's websocket, watched through playwright): in the
page, JupyterLab renders a traceback with the same mime type as a stderr stream
(`application/vnd.jupyter.stderr`), so the DOM alone cannot tell them apart.

The working-tree comparison covers the whole checkout: run it when nobody else edits files of the same
checkout, or a change of theirs is reported as one of the run's.

Usage (from anywhere; the repository is the folder above this script):

    .venv/bin/python scripts/browser_check.py                      # every notebook in notebooks/
    .venv/bin/python scripts/browser_check.py --notebooks triplet_product_search --timeout 300
    .venv/bin/python scripts/browser_check.py --screenshots /tmp/shots

Linux only (it follows the server's kernels through /proc to make sure none survives the check).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KERNEL_DISPLAY_NAME = "visualsearch (Python 3.11)"
VIEWPORT = {"width": 1400, "height": 900}
DEFAULT_CHROMIUM = "/usr/bin/chromium"
STDERR_MIME = "application/vnd.jupyter.stderr"
ERROR_MIME = "application/vnd.jupyter.error"

# What a tab, a notebook and its outputs look like in JupyterLab 4.6's DOM (checked against the real page):
#   the notebook's tab: `#jp-main-dock-panel .lm-TabBar-tab[data-type="document-title"]`, its label in
#     `.lm-TabBar-tabLabel`; a modified document's tab has the class `jp-mod-dirty`;
#   the kernel: `.jp-Toolbar-kernelName .jp-ToolbarButtonComponent-label` in the notebook toolbar (the
#     display name; "No Kernel" without one); the kernel state: `.jp-Notebook-ExecutionIndicator[data-status]`
#     ("idle", "busy", ...);
#   a code cell: `.jp-CodeCell`, its prompt `.jp-InputArea-prompt` ("[ ]:" never run, "[*]:" queued or
#     running, "[12]:" ran);
#   an output: `.jp-OutputArea-output[data-mime-type]`; a stderr stream AND a traceback both render as
#     `.jp-RenderedText[data-mime-type="application/vnd.jupyter.stderr"]`; an image as `.jp-RenderedImage img`.
#   Run > Run All Cells: `li.lm-Menu-item[data-command="runmenu:run-all"]`; a dialog: `.jp-Dialog`.
PAGE_STATE_JS = r"""
(label) => {
  const text = (el) => (el ? el.textContent : null);
  const tabs = [...document.querySelectorAll('#jp-main-dock-panel .lm-TabBar-tab[data-type="document-title"]')];
  const tab = tabs.find((t) => (text(t.querySelector('.lm-TabBar-tabLabel')) || '').trim() === label);
  const dialogs = [...document.querySelectorAll('.jp-Dialog')].map((d) => d.textContent.trim().slice(0, 500));
  const panel = document.querySelector('#jp-main-dock-panel .jp-NotebookPanel:not(.lm-mod-hidden)');
  const state = {tab: !!tab, dirty: tab ? tab.classList.contains('jp-mod-dirty') : null, dialogs,
                 panel: !!panel, kernel: null, status: null, prompts: [], sources: [], outputs: [],
                 images: 0, imagesLoaded: 0, widgets: 0, widgetErrors: []};
  if (!panel) return state;
  const kernel = panel.querySelector('.jp-Toolbar-kernelName .jp-ToolbarButtonComponent-label')
              || panel.querySelector('.jp-KernelName');
  state.kernel = kernel ? kernel.textContent.trim() : null;
  const indicator = panel.querySelector('.jp-Notebook-ExecutionIndicator');
  state.status = indicator ? indicator.getAttribute('data-status') : null;
  const cells = [...panel.querySelectorAll('.jp-Notebook .jp-Cell.jp-CodeCell')];
  state.prompts = cells.map((c) => (text(c.querySelector('.jp-InputArea-prompt')) || '').trim());
  state.sources = cells.map((c) => (text(c.querySelector('.cm-line')) || '').trim());
  cells.forEach((c, i) => c.querySelectorAll('.jp-OutputArea-output').forEach((o) => {
    const mime = o.getAttribute('data-mime-type');
    if (mime === '""" + STDERR_MIME + r"""' || mime === '""" + ERROR_MIME + r"""')
      state.outputs.push({cell: i, mime, text: o.textContent});
  }));
  const imgs = [...panel.querySelectorAll('.jp-RenderedImage img')];
  state.images = imgs.length;
  state.imagesLoaded = imgs.filter((im) => im.complete && im.naturalWidth > 0).length;
  const widgets = [...panel.querySelectorAll('.jp-OutputArea-output')].filter((o) =>
    o.getAttribute('data-mime-type') === 'application/vnd.jupyter.widget-view+json'
    || o.querySelector('.jupyter-widgets, .widget-progress'));
  state.widgets = widgets.length;
  state.widgetErrors = widgets.map((w) => w.textContent.trim()).filter((t) => /Error displaying widget|model not found|Loading widget/.test(t))
    .map((t) => t.slice(0, 300));
  return state;
}
"""


# ----------------------------------------------------------------------------------------------------------
# pure helpers (unit-tested in tests/test_browser_check.py)

def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def parse_porcelain(output: bytes) -> list[tuple[str, str]]:
    """`git status --porcelain -z` output -> [(XY status, path)], a rename's original path dropped."""
    entries, fields = [], output.split(b"\0")
    i = 0
    while i < len(fields):
        item = fields[i]
        i += 1
        if len(item) < 4:
            continue
        xy, path = item[:2].decode(), item[3:].decode("utf-8", "surrogateescape")
        if xy[0] in "RC":  # the original path follows as its own field
            i += 1
        entries.append((xy, path))
    return entries


def worktree_state(root: Path) -> dict[str, str]:
    """{path: "XY <sha1 of the file's bytes>"} for every path `git status --porcelain` lists (untracked files
    one by one). The hash makes a second change to an already modified file visible."""
    out = subprocess.run(["git", "status", "--porcelain", "-z", "--untracked-files=all"], cwd=root,
                         capture_output=True, check=True).stdout
    state = {}
    for xy, path in parse_porcelain(out):
        full = root / path
        if full.is_symlink():
            digest = "link:" + os.readlink(full)
        elif full.is_file():
            digest = hashlib.sha1(full.read_bytes()).hexdigest()
        elif full.exists():
            digest = "dir"
        else:
            digest = "missing"
        state[path] = f"{xy} {digest}"
    return state


def state_differences(before: dict[str, str], after: dict[str, str], exclude: tuple[str, ...] = ()) -> list[str]:
    """What changed between two `worktree_state` readings, one line per path (empty when nothing did).
    Paths under a folder in `exclude` (repository-relative, '/'-separated) are left out."""
    def excluded(path):
        return any(path == e or path.startswith(e.rstrip("/") + "/") for e in exclude)

    lines = []
    for path in sorted(set(before) | set(after)):
        if excluded(path) or before.get(path) == after.get(path):
            continue
        if path not in before:
            lines.append(f"{after[path].split()[0]:>2} {path} (new)")
        elif path not in after:
            lines.append(f"   {path} (was '{before[path].split()[0]}', now as committed)")
        elif before[path].split()[0] != after[path].split()[0]:
            lines.append(f"{after[path].split()[0]:>2} {path} (was '{before[path].split()[0]}')")
        else:
            lines.append(f"{after[path].split()[0]:>2} {path} (changed again)")
    return lines


@dataclass
class KernelMessage:
    channel: str
    msg_type: str
    msg_id: str | None
    parent_id: str | None
    content: dict


def parse_kernel_frame(payload: bytes | str) -> KernelMessage | None:
    """One websocket frame of a kernel connection -> KernelMessage, or None if it is not one.

    Two wire formats: JSON text (the legacy protocol), and the binary 'v1.kernel.websocket.jupyter.org'
    protocol JupyterLab 4 uses: a little-endian uint64 count n, n uint64 offsets, then the parts they delimit
    (channel, header, parent_header, metadata, content, buffers...), the last offset being the end."""
    try:
        if isinstance(payload, str):
            msg = json.loads(payload)
            channel, header = msg.get("channel") or "", msg.get("header") or {}
            parent, content = msg.get("parent_header") or {}, msg.get("content") or {}
            msg_type = header.get("msg_type") or msg.get("msg_type")
        else:
            data = bytes(payload)
            n = int.from_bytes(data[:8], "little")
            if n < 6 or 8 * (n + 1) > len(data):
                return None
            offsets = [int.from_bytes(data[8 * (i + 1):8 * (i + 2)], "little") for i in range(n)]
            parts = [data[offsets[i]:offsets[i + 1]] for i in range(n - 1)]
            channel = parts[0].decode()
            header, parent, content = json.loads(parts[1]), json.loads(parts[2]), json.loads(parts[4])
            msg_type = header.get("msg_type")
    except (ValueError, UnicodeDecodeError, AttributeError, IndexError, TypeError):
        return None
    if not isinstance(header, dict) or not msg_type:
        return None
    return KernelMessage(channel, msg_type, header.get("msg_id"), (parent or {}).get("msg_id"),
                         content if isinstance(content, dict) else {})


ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def plain(text: str) -> str:
    """Text without ANSI escapes, whitespace runs collapsed (to compare a traceback with its rendering)."""
    return " ".join(ANSI.sub("", text).split())


def one_line(text: str, width: int = 160) -> str:
    text = " ".join(ANSI.sub("", text).split())
    return text if len(text) <= width else text[:width - 3] + "..."


# ----------------------------------------------------------------------------------------------------------
# processes

def _proc_start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22 (starttime), counted after the ")" of the name


def descendants(pid: int) -> dict[int, str]:
    """{pid: start time} of every process below `pid` (from /proc; empty where there is none)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = {}, [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            start = _proc_start_time(child)
            if start is not None:
                found[child] = start
                todo.append(child)
    return found


def alive(pid: int, start: str) -> bool:
    return _proc_start_time(pid) == start


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through an http_proxy


class JupyterLab:
    """`jupyter lab` on a free port with a random token, root dir = the repository root; its kernels and
    child processes are remembered so that `stop` can make sure none survives."""

    def __init__(self, root: Path, workdir: Path, startup_timeout: float = 180):
        self.root, self.workdir = root, workdir
        self.port, self.token = free_port(), secrets.token_hex(24)
        self.base = f"http://127.0.0.1:{self.port}"
        settings = workdir / "user-settings" / "@jupyterlab" / "apputils-extension"
        settings.mkdir(parents=True)
        (settings / "notification.jupyterlab-settings").write_text(
            json.dumps({"fetchNews": "false", "checkForUpdates": False}))
        self.log_path = workdir / "jupyterlab.log"
        venv = Path(os.environ.get("VISUALSEARCH_VENV") or root / ".venv")  # as scripts/setup_env.sh
        jupyter = venv / "bin" / "jupyter"
        if not jupyter.exists():
            raise RuntimeError(f"{jupyter} is missing: run scripts/setup_env.sh first")
        cmd = [str(jupyter), "lab", "--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={self.port}",
               "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
               f"--ServerApp.root_dir={root}",
               f"--LabApp.user_settings_dir={workdir / 'user-settings'}",
               f"--LabApp.workspaces_dir={workdir / 'workspaces'}"]
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=root, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self.seen: dict[int, str] = {}
        self.startup_timeout = startup_timeout

    def wait_ready(self) -> None:
        """Wait until the server answers its REST API (raises with the log's tail if it exits or times out)."""
        startup_timeout = self.startup_timeout
        deadline = time.monotonic() + startup_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {self.proc.returncode} (its log is printed above)")
            try:
                self.api("GET", "/api/status", timeout=3)
                break
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"jupyter lab did not answer within {startup_timeout:.0f} s")
                time.sleep(0.5)

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text()[-n:]
        except OSError:
            return ""

    def api(self, method: str, path: str, timeout: float = 30):
        req = urllib.request.Request(self.base + path, method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with _DIRECT.open(req, timeout=timeout) as resp:
            body = resp.read()
        return json.loads(body) if body else None

    def remember_children(self) -> None:
        if self.proc.poll() is None:
            self.seen.update(descendants(self.proc.pid))

    def shutdown_sessions(self, path: str) -> None:
        """Shut down the kernel of every session on `path` (repository-relative)."""
        for s in self.api("GET", "/api/sessions") or []:
            if s.get("path") == path:
                self.api("DELETE", f"/api/sessions/{s['id']}")

    def interrupt_kernels(self, path: str) -> None:
        for s in self.api("GET", "/api/sessions") or []:
            if s.get("path") == path and s.get("kernel"):
                self.api("POST", f"/api/kernels/{s['kernel']['id']}/interrupt")

    def stop(self) -> list[str]:
        """Stop the server (its REST shutdown, which shuts its kernels down; then signals) and kill whatever
        of its processes survived. Returns the command lines of the survivors that had to be killed."""
        self.remember_children()
        if self.proc.poll() is None:
            try:
                self.api("POST", "/api/shutdown", timeout=10)
            except (urllib.error.URLError, OSError):
                pass
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
                    try:
                        os.killpg(self.proc.pid, sig)
                    except ProcessLookupError:
                        pass
                    try:
                        self.proc.wait(wait)
                        break
                    except subprocess.TimeoutExpired:
                        continue
        killed = []
        for pid, start in sorted(self.seen.items()):
            if alive(pid, start):
                killed.append(f"{pid} {_cmdline(pid)[:200]}")
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 10
        while any(alive(p, s) for p, s in self.seen.items()) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid, start in self.seen.items():
            if alive(pid, start):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.log.close()
        return killed


# ----------------------------------------------------------------------------------------------------------
# one notebook

@dataclass
class Result:
    name: str
    opened_clean: bool | None = None
    kernel: str | None = None
    code_cells: int = 0
    cells_run: int = 0
    errors: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    images: int = 0
    widgets: int = 0
    seconds: float = 0.0
    screenshots: list[Path] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class KernelWatch:
    """Kernel messages of the page's notebook websocket(s), both directions."""

    def __init__(self, page):
        self.messages: list[tuple[str, KernelMessage]] = []
        page.on("websocket", self._on_ws)

    def _on_ws(self, ws):
        if "/api/kernels/" not in ws.url:
            return
        ws.on("framesent", lambda payload: self._add("sent", payload))
        ws.on("framereceived", lambda payload: self._add("received", payload))

    def _add(self, direction, payload):
        msg = parse_kernel_frame(payload)
        if msg is not None:
            self.messages.append((direction, msg))

    def of(self, direction, msg_type):
        return [m for d, m in self.messages if d == direction and m.msg_type == msg_type]

    def pending_executions(self) -> int:
        asked = {m.msg_id for m in self.of("sent", "execute_request")}
        answered = {m.parent_id for m in self.of("received", "execute_reply")}
        return len(asked - answered)

    def errors(self) -> list[KernelMessage]:
        return [m for m in self.of("received", "error") if m.channel == "iopub"]


def _code_cell_count(path: Path) -> int:
    return sum(1 for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code")


def _ran(prompt: str) -> bool:
    return re.fullmatch(r"\[\d+\]:", prompt) is not None


def _wait(page, seconds: float) -> None:
    page.wait_for_timeout(seconds * 1000)  # lets playwright deliver events (websocket frames), unlike sleep


def check_notebook(browser, lab: JupyterLab, name: str, shots: Path, timeout: float) -> Result:
    res = Result(name)
    nb_rel = f"notebooks/{name}.ipynb"
    label = f"{name}.ipynb"
    res.code_cells = _code_cell_count(lab.root / nb_rel)
    t0 = time.monotonic()
    deadline = t0 + timeout
    context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
    page = context.new_page()
    page.set_default_timeout(30_000)
    watch = KernelWatch(page)

    def state():
        return page.evaluate(PAGE_STATE_JS, label)

    def dialog_failure(st, when):
        if st["dialogs"]:
            res.failures.append(f"a dialog appeared {when}: {one_line(' | '.join(st['dialogs']))}")
            page.keyboard.press("Escape")
            return True
        return False

    try:
        page.goto(f"{lab.base}/lab/workspaces/check-{name}/tree/{nb_rel}?token={lab.token}")
        page.wait_for_selector("#jp-main-dock-panel .jp-NotebookPanel", timeout=120_000)

        # 1. opened: kernel idle, then the notebook must not be modified and the kernel must be ours
        stable = 0
        while True:
            st = state()
            if dialog_failure(st, "when the notebook opened"):
                break
            idle = st["status"] == "idle" and st["kernel"] not in (None, "", "No Kernel") and \
                watch.of("received", "kernel_info_reply")
            stable = stable + 1 if idle else 0
            if stable >= 3:
                break
            if time.monotonic() > min(deadline, t0 + 180):
                res.failures.append(f"the kernel was not idle {time.monotonic() - t0:.0f} s after opening "
                                    f"(kernel '{st['kernel']}', state '{st['status']}')")
                break
            _wait(page, 0.7)
        _wait(page, 1.5)
        st = state()
        res.kernel = st["kernel"]
        res.opened_clean = st["dirty"] is False
        if not st["tab"]:
            res.failures.append(f"no tab labelled {label} was found")
        elif st["dirty"]:
            why = ""
            info = watch.of("received", "kernel_info_reply")
            kernel_li = info[-1].content.get("language_info") if info else None
            file_li = json.loads((lab.root / nb_rel).read_text()).get("metadata", {}).get("language_info")
            if kernel_li is not None and kernel_li != file_li:
                why = (f"; the kernel reports language_info {json.dumps(kernel_li, sort_keys=True)} and the file "
                       f"holds {json.dumps(file_li, sort_keys=True)} (JupyterLab writes the kernel's into the "
                       f"notebook when it connects, which marks it modified)")
            res.failures.append(f"the notebook is marked modified (jp-mod-dirty) right after opening{why}")
        if res.kernel != KERNEL_DISPLAY_NAME:
            res.failures.append(f"the kernel is '{res.kernel}', not '{KERNEL_DISPLAY_NAME}'")
        if len(st["prompts"]) != res.code_cells:
            res.notes.append(f"{len(st['prompts'])} code cells in the page, {res.code_cells} in the file")
        if not watch.messages:
            res.notes.append("no kernel websocket frame was seen: errors are detected from the page only")

        # more room for the notebook in the screenshots: collapse the left sidebar (the file browser)
        current = page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current")
        if current.count():
            current.first.click()

        # 2. Run > Run All Cells, then wait until the kernel answered every cell and is idle
        if not any("kernel was not idle" in f for f in res.failures):
            page.locator(".lm-MenuBar-item", has_text=re.compile(r"^Run$")).click()
            page.locator('li.lm-Menu-item[data-command="runmenu:run-all"]').click()
            _wait(page, 1.0)
            stable = 0
            while True:
                st = state()
                if dialog_failure(st, "during Run All Cells"):
                    break
                busy = any(p == "[*]:" for p in st["prompts"]) or st["status"] != "idle" or \
                    (watch.messages and (watch.pending_executions() or not watch.of("sent", "execute_request")))
                stable = 0 if busy else stable + 1
                if stable >= 3:
                    break
                if time.monotonic() > deadline:
                    res.failures.append(f"Run All Cells did not finish within {timeout:.0f} s "
                                        f"({sum(map(_ran, st['prompts']))} of {res.code_cells} cells ran)")
                    try:
                        lab.interrupt_kernels(nb_rel)
                    except (urllib.error.URLError, OSError):
                        pass
                    _wait(page, 2)
                    break
                _wait(page, 1.0)
            lab.remember_children()

        # 3. what the run left in the page
        st = state()
        res.cells_run = sum(map(_ran, st["prompts"]))
        if res.cells_run < res.code_cells:
            not_run = [i for i, p in enumerate(st["prompts"]) if not _ran(p)]
            first = not_run[0] if not_run else None
            where = f" (first not run: code cell {first}, `{one_line(st['sources'][first], 60)}`)" if not_run else ""
            res.failures.append(f"only {res.cells_run} of {res.code_cells} code cells ran{where}")
        error_texts = []
        for m in watch.errors():
            c = m.content
            tb = plain("\n".join(c.get("traceback") or []))
            error_texts.append(tb)
            cell = next((o["cell"] for o in st["outputs"] if tb and plain(o["text"]) == tb), None)
            at = f"code cell {cell} (`{one_line(st['sources'][cell], 60)}`)" if cell is not None else "a cell"
            res.errors.append(f"{at}: {c.get('ename')}: {one_line(str(c.get('evalue')), 300)}")
        for o in st["outputs"]:
            text = plain(o["text"])
            if o["mime"] == ERROR_MIME or (not watch.messages and "Traceback (most recent call last)" in text):
                res.errors.append(f"code cell {o['cell']}: {one_line(o['text'], 300)}")
            elif text not in error_texts:
                res.stderr.append(f"code cell {o['cell']}: {one_line(o['text'], 300)}")
        for e in res.errors:
            res.failures.append(f"error output in {e}")
        res.images = st["imagesLoaded"]
        if st["images"] != st["imagesLoaded"]:
            res.notes.append(f"{st['images'] - st['imagesLoaded']} of {st['images']} images did not load")
        res.widgets = st["widgets"]
        res.notes += [f"a widget output shows: {one_line(t, 200)}" for t in st["widgetErrors"]]
        if res.images < 1:
            res.failures.append("no rendered image (.jp-RenderedImage img) in the outputs")

        # 4. screenshots: the top of the notebook, then the first figure
        # (the main dock panel: the notebook's tab, whose dot shows a modified notebook, its toolbar and cells)
        shots.mkdir(parents=True, exist_ok=True)
        panel = page.locator("#jp-main-dock-panel").first
        page.evaluate("""() => document.querySelectorAll(
            '#jp-main-dock-panel .jp-NotebookPanel:not(.lm-mod-hidden) .jp-WindowedPanel-outer')
            .forEach((el) => { el.scrollTop = 0; })""")
        _wait(page, 0.8)
        top = shots / f"{name}.png"
        panel.screenshot(path=str(top))
        res.screenshots.append(top)
        if st["images"]:
            # cells out of view are laid out lazily (content-visibility): heights above the figure change as
            # it is scrolled to, so scroll again until the figure stays in view
            for _ in range(8):
                in_view = page.evaluate("""() => {
                    const img = document.querySelector(
                      '#jp-main-dock-panel .jp-NotebookPanel:not(.lm-mod-hidden) .jp-RenderedImage img');
                    const outer = img.closest('.jp-WindowedPanel-outer') || document.documentElement;
                    const a = img.getBoundingClientRect(), b = outer.getBoundingClientRect();
                    const ok = a.height > 0 && a.top >= b.top - 1 && Math.min(a.bottom, b.bottom) - a.top >= Math.min(a.height, b.height) * 0.9;
                    if (!ok) img.scrollIntoView({block: a.height > b.height ? 'start' : 'center'});
                    return ok; }""")
                if in_view:
                    break
                _wait(page, 0.6)
            _wait(page, 0.5)
            fig = shots / f"{name}-figure.png"
            panel.screenshot(path=str(fig))
            res.screenshots.append(fig)

        # 5. save, close the tab, shut the kernel down
        page.locator("#jp-main-dock-panel .jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook").first.focus()
        page.keyboard.press("Control+s")
        saved_by = time.monotonic() + 30
        while time.monotonic() < saved_by:
            _wait(page, 0.5)
            st = state()
            if st["dialogs"] or st["dirty"] is False:
                break
        if dialog_failure(st, "on save"):
            pass
        elif st["dirty"]:
            res.failures.append("the notebook is still marked modified 30 s after Ctrl+S")
        _wait(page, 1.0)
        tab = page.locator('#jp-main-dock-panel .lm-TabBar-tab[data-type="document-title"]',
                           has=page.locator(".lm-TabBar-tabLabel", has_text=label))
        if tab.count():
            tab.first.locator(".lm-TabBar-tabCloseIcon").click()
            _wait(page, 1.0)
            dialog_failure(state(), "when the tab was closed")
    except Exception as exc:  # a broken page must not stop the other notebooks; the report names it
        res.failures.append(f"the browser check itself failed: {type(exc).__name__}: {one_line(str(exc), 400)}")
        try:
            shots.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shots / f"{name}-failure.png"))
            res.notes.append(f"page at the failure: {shots / f'{name}-failure.png'}")
        except Exception:
            pass
    finally:
        try:
            lab.remember_children()
            lab.shutdown_sessions(nb_rel)
        except (urllib.error.URLError, OSError):
            pass
        context.close()
        res.seconds = time.monotonic() - t0
    return res


# ----------------------------------------------------------------------------------------------------------

def report(results: list[Result], tree_changes: list[str], extra_failures: list[str], shots: Path) -> str:
    lines = ["", "browser check of the notebooks in JupyterLab", ""]
    head = (f"{'notebook':<24} {'clean':<6} {'kernel':<28} {'cells':>7} {'errors':>6} {'stderr':>6} {'images':>6} "
            f"{'widgets':>7} {'s':>5}")
    lines += [head, "-" * len(head)]
    for r in results:
        clean = {True: "yes", False: "NO", None: "?"}[r.opened_clean]
        lines.append(f"{r.name:<24} {clean:<6} {str(r.kernel):<28} {f'{r.cells_run}/{r.code_cells}':>7} "
                     f"{len(r.errors):>6} {len(r.stderr):>6} {r.images:>6} {r.widgets:>7} {r.seconds:>5.0f}")
    for r in results:
        if r.stderr or r.notes:
            lines.append("")
            lines += [f"{r.name}: warning: stderr in {s}" for s in r.stderr]
            lines += [f"{r.name}: note: {n}" for n in r.notes]
    lines.append("")
    lines.append(f"screenshots: {shots}")
    for r in results:
        if r.screenshots:
            lines.append("  " + ", ".join(p.name for p in r.screenshots))
    lines.append("")
    failures = [f"{r.name}: {f}" for r in results for f in r.failures] + extra_failures
    if tree_changes:
        failures.append("the run changed the working tree (git status --porcelain differs), "
                        f"{len(tree_changes)} path(s):\n" + "\n".join("    " + c for c in tree_changes[:60]) +
                        ("\n    ..." if len(tree_changes) > 60 else ""))
    if failures:
        lines.append(f"FAILED ({len(failures)}):")
        lines += [f"  - {f}" for f in failures]
    else:
        lines.append("OK: every notebook opened clean with the project's kernel, ran without error, showed "
                     "figures, and the working tree is unchanged")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--notebooks", help="comma-separated notebook names (default: every notebooks/*.ipynb)")
    ap.add_argument("--screenshots", default=str(ROOT / "docs" / "screenshots"),
                    help="folder for <notebook>.png and <notebook>-figure.png (default: docs/screenshots)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per notebook, opening to saving (600)")
    ap.add_argument("--chromium", default=None, help=f"Chromium executable ({DEFAULT_CHROMIUM}, else chromium on PATH)")
    ap.add_argument("--headed", action="store_true", help="show the browser (needs a display)")
    args = ap.parse_args(argv)

    available = sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))
    names = [n.strip().removesuffix(".ipynb") for n in args.notebooks.split(",") if n.strip()] \
        if args.notebooks else available
    unknown = [n for n in names if n not in available]
    if unknown or not names:
        ap.error(f"unknown notebook(s) {unknown}; notebooks/ has {available}")
    chromium = args.chromium or (DEFAULT_CHROMIUM if Path(DEFAULT_CHROMIUM).exists() else shutil.which("chromium"))
    if not chromium:
        ap.error(f"no Chromium: neither {DEFAULT_CHROMIUM} nor chromium on PATH (or pass --chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        ap.error("the playwright package is missing from this Python (it is in requirements.txt)")
    shots = Path(args.screenshots).resolve()
    try:
        shots_rel = shots.relative_to(ROOT).as_posix()
        exclude = (shots_rel,)
    except ValueError:
        exclude = ()

    # SIGTERM (a test runner's timeout, kill) unwinds through the finally blocks like Ctrl+C does
    def on_sigterm(*_):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_sigterm)

    before = worktree_state(ROOT)
    results: list[Result] = []
    extra: list[str] = []
    lab = None
    current = None
    workdir = Path(tempfile.mkdtemp(prefix="browser-check-"))
    try:
        print(f"starting JupyterLab (root dir {ROOT}) ...", flush=True)
        lab = JupyterLab(ROOT, workdir)
        lab.wait_ready()
        print(f"JupyterLab answers at {lab.base}", flush=True)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, headless=not args.headed)
            try:
                for name in names:
                    current = name
                    print(f"{name}: opening, running all cells, saving ...", flush=True)
                    r = check_notebook(browser, lab, name, shots, args.timeout)
                    results.append(r)
                    print(f"{name}: {'ok' if not r.failures else 'FAILED'} in {r.seconds:.0f} s "
                          f"({r.cells_run}/{r.code_cells} cells, {r.images} images)", flush=True)
                current = None
            finally:
                browser.close()
        time.sleep(2)
    except KeyboardInterrupt:
        extra.append(f"interrupted (while checking {current})" if current else "interrupted")
    except Exception as exc:
        extra.append(f"the check could not run: {type(exc).__name__}: {exc}")
        if lab is not None:
            print(f"last lines of JupyterLab's log:\n{lab.log_tail(3000)}", file=sys.stderr)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the cleanup below is bounded (about a minute at most)
        if lab is not None:
            killed = lab.stop()
            if killed:
                extra.append("processes of JupyterLab survived its shutdown and were killed: " + "; ".join(killed))
        leftovers = descendants(os.getpid())
        if leftovers:
            extra.append("processes of the check survived it: " +
                         "; ".join(f"{p} {_cmdline(p)[:120]}" for p in leftovers))
        shutil.rmtree(workdir, ignore_errors=True)
    changes = state_differences(before, worktree_state(ROOT), exclude)
    print(report(results, changes, extra, shots), flush=True)
    return 1 if changes or extra or any(r.failures for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
