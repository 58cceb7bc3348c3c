"""Result cache: a trained model and its evaluation, stored under a hash of what produced them.

Why: re-running a notebook to restyle a figure must not retrain for ten minutes. The key is
(name, the caller's key dict: model/training config, data fingerprint, seed) plus the library's code
version, a hash of the library modules loaded by the run, so that a change to a loss or a model
invalidates what it produced while a change to a notebook's markdown does not.
"""
from __future__ import annotations

import hashlib
import json
import os
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


def code_version() -> str:
    """Hash of the sources of the library modules loaded in this process.

    A notebook imports only what it uses, so a change to the MAAF model does not invalidate the triplet
    notebook's cached training, while a change to anything the triplet notebook ran (its loss, the training
    loop, the evaluator) does."""
    lib = Path(__file__).resolve().parent
    files = sorted({str(Path(m.__file__).resolve()) for name, m in list(sys.modules.items())
                    if (name == "visualsearch" or name.startswith("visualsearch.")) and getattr(m, "__file__", None)
                    and Path(m.__file__).resolve().is_relative_to(lib)})
    return _hash_files(tuple(files))


class ResultCache:
    """get_or_compute(name, key, compute): load the stored value for (name, key, code version) or compute,
    store atomically and return it. Set VISUALSEARCH_NO_CACHE=1 to recompute everything."""

    def __init__(self, root=None):
        self.root = Path(root) if root else cache_root() / "results"
        self.hits: list[str] = []    # names loaded from the cache in this session (shown in provenance)
        self.misses: list[str] = []  # names computed in this session

    def path(self, name: str, key: dict) -> Path:
        blob = json.dumps({"name": name, "key": key, "code": code_version()}, sort_keys=True, default=str)
        return self.root / name / (hashlib.sha256(blob.encode()).hexdigest()[:20] + ".pt")

    def get_or_compute(self, name: str, key: dict, compute: Callable[[], Any]) -> Any:
        path = self.path(name, key)
        if path.is_file() and not os.environ.get("VISUALSEARCH_NO_CACHE"):
            try:
                value = torch.load(path, map_location="cpu", weights_only=False)
                self.hits.append(name)
                return value
            except Exception:  # an unreadable entry is recomputed, never trusted
                path.unlink(missing_ok=True)
        value = compute()
        atomic.torch_save(value, path)
        path.with_suffix(".json").write_text(json.dumps({"name": name, "key": key, "code": code_version()},
                                                        indent=1, sort_keys=True, default=str))
        self.misses.append(name)
        return value
