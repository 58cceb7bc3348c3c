"""Image loading shared by every reader: RGB PIL images, with missing or corrupt files skipped and counted.

An image is checked by decoding it completely, exactly as it will be loaded later (`Image.verify()` alone
passes a half-written JPEG, whose decode then fails in the middle of a run): a reader that checked its images
with `check_images` hands on only images that `load_image` can load, in streaming and in-memory mode alike.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from .errors import SkipLog


def _decode(path: Path) -> Image.Image:
    """The whole image decoded, as RGB (raises on a missing, truncated or undecodable file)."""
    with Image.open(path) as im:
        im.load()
        return im.convert("RGB")


def load_image(path, skips: SkipLog | None = None) -> Image.Image | None:
    """Open `path` as an RGB image; return None (and record why in `skips`) when it is missing or corrupt.

    Without a SkipLog a bad image raises, naming the file, so nothing is skipped silently.
    """
    path = Path(path)
    try:
        return _decode(path)
    except FileNotFoundError:
        reason = "missing image"
        err = FileNotFoundError(f"{path}: image file not found")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        reason = "corrupt image"
        err = OSError(f"{path}: image cannot be decoded ({e.__class__.__name__}: {e})")
    if skips is None:
        raise err
    skips.add(path, reason)
    return None


def _problem(path: Path) -> str | None:
    """None when `path` decodes completely, else the skip reason."""
    if not path.is_file():
        return "missing image"
    try:
        _decode(path)
    except Exception:  # noqa: BLE001  (any failure to decode is a corrupt image)
        return "corrupt image"
    return None


def check_images(paths, skips: SkipLog, threads: int | None = None) -> list[bool]:
    """Return, per path, whether it decodes completely (not only whether its header parses); failures are
    counted in `skips`, in the order of `paths`. Used by readers at load time so that a dataset's item list
    only holds usable images. Decoding runs in `threads` threads (PIL releases the GIL while decoding;
    default: up to 8, one per core)."""
    paths = [Path(p) for p in paths]
    threads = threads or min(8, os.cpu_count() or 1)
    if threads > 1 and len(paths) > 64:
        with ThreadPoolExecutor(threads) as pool:
            problems = list(pool.map(_problem, paths, chunksize=64))
    else:
        problems = [_problem(p) for p in paths]
    for p, reason in zip(paths, problems):
        if reason is not None:
            skips.add(p, reason)
    return [reason is None for reason in problems]
