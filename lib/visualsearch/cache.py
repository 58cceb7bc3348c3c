"""Result cache: a trained model and its evaluation, stored under a hash of what produced them.

Why: re-running a notebook to restyle a figure must not retrain for ten minutes. The key is
(name, the caller's key dict: model/training config, data fingerprint, seed) plus the code version of what
computes the entries: the sources of the compute module a cache is made for (a paper's `experiment.py`,
`ResultCache(code=...)`) and of every library module it imports. So a change to a loss or a model
invalidates what it produced, while a change to a notebook's markdown, to report.py or to a paper's
figures and tables (which no compute module imports) reruns nothing.

Integrity: every entry is stored with the SHA-256 of its bytes in its `.json` sidecar, and the checksum is
verified before the entry is used. An entry that was altered after it was written (even one that still loads,
e.g. the rows of a stored tensor reordered), cut short, or written without a checksum is recomputed, and one
printed line says so. What a key must hold is the caller's part: everything that changes the value (model and
training configuration, every data-loading option, the identity of the inputs actually kept after skipped
files, seed, device); the code version is added here.

`run_dir(name, key)` is the checkpoint folder of the training behind an entry: a training killed mid-way
resumes from it (train.train), and it is removed once the entry is stored.
"""
from __future__ import annotations

import ast
import hashlib
import io
import json
import os
import shutil
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import torch

from . import atomic
from .data.worlds import cache_root


@lru_cache(maxsize=64)
def _hash_files(files: tuple) -> str:
    h = hashlib.sha256()
    lib = Path(__file__).resolve().parent
    for f in files:
        p = Path(f)
        h.update(str(p.relative_to(lib)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:12]


def _module_file(name: str, lib: Path, package: str) -> Path | None:
    """The source file of library module `name` (package.a.b -> lib/a/b.py or lib/a/b/__init__.py)."""
    parts = name.split(".")
    if parts[0] != package:
        return None
    base = lib.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate.resolve()
    return None


@lru_cache(maxsize=512)
def _imports_of(path: str, mtime: float, name: str, package: str) -> tuple[str, ...]:
    """Library modules that the source of module `name` imports anywhere, function bodies included."""
    tree = ast.parse(Path(path).read_text(), filename=path)
    is_package = Path(path).name == "__init__.py"
    here = name.split(".") if is_package else name.split(".")[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == package)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[:len(here) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != package:
                continue
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names)  # `from . import atomic` names a module
    return tuple(sorted(found))


def import_closure(names, lib: Path, package: str = "visualsearch") -> list[Path]:
    """Source files of library modules `names` and of every library module they import, directly or not,
    at module level or inside functions (read from the source, not from what has run)."""
    files, todo, seen = set(), list(names), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = _module_file(name, lib, package)
        if path is None:
            continue
        files.add(path)
        todo.extend(_imports_of(str(path), path.stat().st_mtime, name, package))
        parent = name.rpartition(".")[0]
        if parent:
            todo.append(parent)  # importing a.b runs a/__init__.py too
    return sorted(files)


def code_version(modules=None) -> str:
    """Hash of the sources of library `modules` (names) and of every library module they import anywhere in
    their source; `modules=None`: every library module this process has loaded.

    A paper's cache names its compute module, so a change to the MAAF model does not invalidate the triplet
    notebook's cached training, nor a restyled figure any training, while a change to anything the compute
    can run (its loss, the training loop, the evaluator) does. Imports inside functions count whether or not
    they have run yet: otherwise a cache hit that skips such a function would change the version, and
    everything computed after it."""
    lib = Path(__file__).resolve().parent
    if modules is None:
        modules = [name for name, m in list(sys.modules.items())
                   if (name == "visualsearch" or name.startswith("visualsearch.")) and getattr(m, "__file__", None)
                   and Path(m.__file__).resolve().is_relative_to(lib)]
    elif isinstance(modules, str):
        modules = [modules]
    missing = [m for m in modules if _module_file(m, lib, "visualsearch") is None]
    if missing:
        raise ValueError(f"code_version: no library module named {', '.join(missing)}")
    return _hash_files(tuple(str(f) for f in import_closure(list(modules), lib)))


def file_digest(path) -> str:
    """SHA-256 (16 hex digits) of a file's bytes (weights a key must name by content, not by file name),
    remembered per (path, size, mtime) within a process."""
    st = Path(path).stat()
    return _file_digest(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=16)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


class ResultCache:
    """get_or_compute(name, key, compute): load the stored value for (name, key, code version) or compute,
    store atomically and return it. Set VISUALSEARCH_NO_CACHE=1 to recompute everything.

    `code`: the library module (or modules) whose import closure computes the entries, e.g.
    "visualsearch.papers.triplet.experiment"; every paper's experiment module makes its cache this way
    (`experiment.result_cache()`). None: every library module loaded in this process (tests, ad-hoc use)."""

    def __init__(self, root=None, code=None):
        self.root = Path(root) if root else cache_root() / "results"
        self.code = code
        self.hits: list[str] = []    # names loaded from the cache in this session (shown in provenance)
        self.misses: list[str] = []  # names computed in this session

    def _digest(self, name: str, key: dict) -> str:
        blob = json.dumps({"name": name, "key": key, "code": code_version(self.code)}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:20]

    def path(self, name: str, key: dict) -> Path:
        return self.root / name / (self._digest(name, key) + ".pt")

    def run_dir(self, name: str, key: dict) -> Path:
        """The checkpoint folder of the training that computes entry (name, key): same key and code version,
        same folder, so a killed run resumes exactly where it stopped and never from another run's weights
        (train.train also checks its own configuration's fingerprint against the checkpoint)."""
        return self.root.parent / "runs" / name / self._digest(name, key)

    def _verified(self, path: Path) -> tuple[Any, str | None]:
        """(value, None) when the entry at `path` matches the checksum in its sidecar and loads, else
        (None, why not)."""
        try:
            meta = json.loads(path.with_suffix(".json").read_text())
        except (OSError, ValueError):
            meta = {}
        expected = meta.get("sha256") if isinstance(meta, dict) else None
        if not expected:
            return None, "has no checksum (its sidecar is missing or was written by an older version)"
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != expected:
            return None, "does not match its checksum (altered or cut short since it was written)"
        try:
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False), None
        except Exception as e:  # noqa: BLE001  (an unreadable entry is recomputed, never trusted)
            return None, f"cannot be loaded ({e.__class__.__name__})"

    def has(self, name: str, key: dict) -> bool:
        """Whether a stored entry for (name, key) exists and matches its checksum (no loading)."""
        path = self.path(name, key)
        if os.environ.get("VISUALSEARCH_NO_CACHE") or not path.is_file():
            return False
        try:
            meta = json.loads(path.with_suffix(".json").read_text())
            return hashlib.sha256(path.read_bytes()).hexdigest() == meta.get("sha256")
        except (OSError, ValueError, AttributeError):
            return False

    def get_or_compute(self, name: str, key: dict, compute: Callable[[], Any]) -> Any:
        path = self.path(name, key)
        run_dir = self.run_dir(name, key)
        if path.is_file() and not os.environ.get("VISUALSEARCH_NO_CACHE"):
            value, problem = self._verified(path)
            if problem is None:
                self.hits.append(name)
                return value
            print(f"result cache: the stored {name} entry {path.parent.name}/{path.name} {problem}; recomputing it",
                  flush=True)
            path.unlink(missing_ok=True)
        value = compute()
        self.store(name, key, value)
        shutil.rmtree(run_dir, ignore_errors=True)  # its checkpoints are no longer needed: the entry holds the result
        self.misses.append(name)
        return value

    def store(self, name: str, key: dict, value: Any) -> Path:
        """Write `value` as the entry of (name, key) with its checksum (both files atomically)."""
        path = self.path(name, key)
        buf = io.BytesIO()
        torch.save(value, buf)
        data = buf.getvalue()
        meta = {"name": name, "key": key, "code": code_version(self.code), "sha256": hashlib.sha256(data).hexdigest(),
                "bytes": len(data)}
        atomic.atomic_write(path, lambda f: f.write(data))
        atomic.write_text(path.with_suffix(".json"), json.dumps(meta, indent=1, sort_keys=True, default=str))
        return path
