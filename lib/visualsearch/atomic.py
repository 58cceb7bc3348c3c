"""Atomic writes: a file is written beside its target and renamed over it, so a crash mid-write leaves the
previous version intact and a reader never sees half a file."""
from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path, write: Callable[[io.IOBase], None], mode: str = "wb") -> Path:
    """Call `write(fileobj)` on a temporary file in the target's folder, then rename it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a result file is as readable as any other
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_text(path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text), mode="w")


def torch_save(obj: Any, path) -> Path:
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f))
