"""Image loading shared by every reader: RGB PIL images, with missing or corrupt files skipped and counted."""
from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError

from .errors import SkipLog


def load_image(path, skips: SkipLog | None = None) -> Image.Image | None:
    """Open `path` as an RGB image; return None (and record why in `skips`) when it is missing or corrupt.

    Without a SkipLog a bad image raises, naming the file, so nothing is skipped silently.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except FileNotFoundError:
        reason = "missing image"
        err = FileNotFoundError(f"{path}: image file not found")
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        reason = "corrupt image"
        err = OSError(f"{path}: image cannot be decoded ({e.__class__.__name__}: {e})")
    if skips is None:
        raise err
    skips.add(path, reason)
    return None


def check_images(paths, skips: SkipLog) -> list[bool]:
    """Return, per path, whether it opens; failures are counted in `skips`. Used by readers at load time so
    that a dataset's item list only holds usable images."""
    ok = []
    for p in paths:
        p = Path(p)
        if not p.is_file():
            skips.add(p, "missing image")
            ok.append(False)
            continue
        try:
            with Image.open(p) as im:
                im.verify()
            ok.append(True)
        except Exception:
            skips.add(p, "corrupt image")
            ok.append(False)
    return ok
