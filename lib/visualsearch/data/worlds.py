"""Where synthetic worlds are generated, once, keyed by their parameters.

Why: every notebook draws its synthetic data from a seed and a size; drawing it again on every run would
waste minutes, and two notebooks asking for the same world must share one copy. A world is written into a
temporary folder and renamed into place only when complete, so an interrupted generation never leaves a
half-written world that a later run would trust.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import types
from pathlib import Path
from typing import Callable

from ..progress import stage


def cache_root() -> Path:
    """Root of all caches: $VISUALSEARCH_CACHE, else `.cache/` at the repository root (next to lib/)."""
    env = os.environ.get("VISUALSEARCH_CACHE")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / ".cache"


def params_hash(params: dict, n: int = 12) -> str:
    """Stable short hash of a JSON-able dict (keys sorted)."""
    blob = json.dumps(params, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:n]


def drawing_code_hash(build: Callable) -> str:
    """Hash of the source of `build`'s module and of the visualsearch.data modules it uses (a world drawn by
    fashion_text renders with products): a change to the drawing code draws the world anew."""
    modules = {sys.modules.get(build.__module__)}
    for value in getattr(build, "__globals__", {}).values():
        mod = value if isinstance(value, types.ModuleType) else sys.modules.get(getattr(value, "__module__", "") or "")
        if mod is not None and mod.__name__.startswith("visualsearch.data"):
            modules.add(mod)
    h = hashlib.sha256()
    for f in sorted({m.__file__ for m in modules if m is not None and getattr(m, "__file__", None)}):
        h.update(Path(f).read_bytes())
    return h.hexdigest()[:8]


def ensure_world(name: str, params: dict, build: Callable[[Path, dict], None], root: Path | None = None) -> Path:
    """Return the folder of world `name` drawn with `params`, building it with `build(folder, params)` if absent.

    The folder is `<cache>/worlds/<name>-<hash(params)>-<hash(drawing code)>`; `params.json` inside records
    what drew it.
    """
    root = Path(root) if root else cache_root() / "worlds"
    final = root / f"{name}-{params_hash(params)}-{drawing_code_hash(build)}"
    if (final / "params.json").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        with stage(f"drawing the {name} world (first run only)"):
            build(tmp, params)
        (tmp / "params.json").write_text(json.dumps({"world": name, **params}, indent=1, sort_keys=True, default=str))
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished the same world first
            if not (final / "params.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def fingerprint_dir(folder, patterns=("*.txt", "*.json", "*.tsv", "*.csv", "*.npy")) -> str:
    """Fingerprint of a dataset folder from its list/annotation files (names, sizes, contents) and the
    number and total size of its other files. Cheap enough for 100k-image datasets; changes when a split
    file or an image set changes."""
    folder = Path(folder)
    h = hashlib.sha256()
    n_other, size_other = 0, 0
    annot = set()
    for pat in patterns:
        annot.update(p for p in folder.rglob(pat) if p.is_file())
    for p in sorted(annot):
        h.update(str(p.relative_to(folder)).encode())
        h.update(p.read_bytes() if p.stat().st_size < 50_000_000 else str(p.stat().st_size).encode())
    for p in folder.rglob("*"):
        if p.is_file() and p not in annot:
            n_other += 1
            size_other += p.stat().st_size
    h.update(f"{n_other}:{size_other}".encode())
    return h.hexdigest()[:16]
