"""Image loading shared by every reader: RGB PIL images, with missing or corrupt files skipped and counted;
and `ImageStore`, the one container every paper keeps its decoded images in.

An image is checked by decoding it completely, exactly as it will be loaded later (`Image.verify()` alone
passes a half-written JPEG, whose decode then fails in the middle of a run): a reader that checked its images
with `check_images` hands on only images that `load_image` can load, in streaming and in-memory mode alike.

`decode_all` decodes every image of a split once, in threads, and keeps the decoded pixels in the cache
(`.cache/decoded/`), keyed by how they were decoded and by every file's path, size and modification time: a
second run of a notebook reads one file instead of decoding thousands of images again, and a changed, added or
removed image decodes everything anew. The images it skipped are recorded with the pixels and counted again.
A split larger than `DECODED_CACHE_MAX_BYTES` decoded is not kept: at paper scale (Fashion200k at 224 px is
about 30 GB of pixels) the copy would fill the disk, and decoding the JPEGs is what such a run costs anyway.
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import torch
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


def to_uint8_tensor(img: Image.Image) -> torch.Tensor:
    """An RGB PIL image as a uint8 tensor [3, H, W]."""
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)


DECODED_VERSION = 1  # bump when the stored form of `decode_all`'s cache changes
# Largest decoded split `decode_all` keeps in the cache (bytes of pixels); $VISUALSEARCH_DECODED_CACHE_GB sets it.
# The default preset's largest split is about 0.1 GB.
DECODED_CACHE_MAX_BYTES = 2 * 1024 ** 3


def _bytes_setting(variable: str, default: int) -> int:
    """A size limit in bytes from the environment variable `variable` (a number of GB), else `default`."""
    env = os.environ.get(variable)
    if env is None:
        return default
    try:
        return int(float(env) * 1024 ** 3)
    except ValueError:
        raise ValueError(f"{variable} must be a number of GB, got {env!r}") from None


def decoded_cache_max_bytes() -> int:
    return _bytes_setting("VISUALSEARCH_DECODED_CACHE_GB", DECODED_CACHE_MAX_BYTES)


# Largest set of images a reader holds decoded in memory (bytes of uint8 pixels): the one rule that decides
# between a store held in memory and one read from its files on request (`fits_in_memory`);
# $VISUALSEARCH_IN_MEMORY_GB sets it. 8 GB: every default-preset set is under 0.2 GB; at 224 px Fashion200k
# (~30 GB), the real iMaterialist (~150 GB) and Fashion IQ (~12 GB) are read on request unless it is raised
# (e.g. to 16 on a machine with 128 GB, to hold Fashion IQ and decode no JPEG per batch).
IN_MEMORY_MAX_BYTES = 8 * 1024 ** 3


def fits_in_memory(n_images: int, size: int, max_bytes: int | None = None) -> bool:
    """Whether `n_images` images of `size` x `size` (uint8 RGB) are at most `max_bytes` (default
    `IN_MEMORY_MAX_BYTES`, or $VISUALSEARCH_IN_MEMORY_GB): a reader holds such a set decoded in memory, else
    reads it from its files per batch."""
    limit = _bytes_setting("VISUALSEARCH_IN_MEMORY_GB", IN_MEMORY_MAX_BYTES) if max_bytes is None else max_bytes
    return n_images * 3 * size * size <= limit


def _files_digest(paths, how: dict) -> str:
    """Hash of `how` (the decoding: size, crop, reader) and of every file's path, size and mtime (a missing file
    counts too): what a decoded split depends on."""
    h = hashlib.sha256(json.dumps({"how": how, "version": DECODED_VERSION}, sort_keys=True, default=str).encode())
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p}\0missing\n".encode())
    return h.hexdigest()[:24]


def decode_all(paths, decode: Callable[[int, SkipLog], torch.Tensor | None], size: int, skips: SkipLog | None = None,
               how: dict | None = None, cache_dir=None, threads: int | None = None,
               desc: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image of `paths` decoded once: (uint8 pixels [K, 3, size, size], kept indices [K]) where
    `decode(i, skips)` gives image i as uint8 [3, size, size], or None for an image it skipped (and recorded in
    the SkipLog it was handed). Decoding runs in `threads` threads (PIL releases the GIL; default: one per core,
    up to 8), with a progress bar labelled `desc`.

    With `how` (a JSON-able description of the decoding: every parameter of `decode`) and `cache_dir`, the result
    is read from `cache_dir/<digest>.pt` when there (digest: `how` and every file's path, size and mtime), else
    computed and written there atomically (VISUALSEARCH_NO_CACHE=1: decoded anew) unless larger than
    `decoded_cache_max_bytes()`; the images skipped are replayed into `skips` either way."""
    from .. import atomic
    from ..progress import bar

    paths = list(paths)
    target = None
    if how is not None and cache_dir is not None:
        target = Path(cache_dir) / f"{_files_digest(paths, how)}.pt"
        limit = decoded_cache_max_bytes()  # read first: a mistyped setting fails before the decoding, not after
        if target.is_file() and not os.environ.get("VISUALSEARCH_NO_CACHE"):
            try:
                stored = torch.load(target, weights_only=False)
            except Exception:  # noqa: BLE001  (a damaged cache file is decoded anew, never trusted)
                stored = None
            if stored is not None:
                if skips is not None:
                    skips.merge(stored["skips"])
                return stored["pixels"], stored["kept"]
    def one(i):
        log = SkipLog()  # one log per image, merged in path order below: the same examples whatever the threads did
        return decode(i, log), log

    threads = threads or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(threads) as pool:
        decoded = list(bar(pool.map(one, range(len(paths))), total=len(paths), desc=desc or "", unit="img",
                           disable=desc is None))
    ordered = SkipLog()
    for _, log in decoded:
        if log.count:
            ordered.merge(log)
    kept = [i for i, (x, _) in enumerate(decoded) if x is not None]
    pixels = torch.stack([decoded[i][0] for i in kept]) if kept else torch.zeros(0, 3, size, size, dtype=torch.uint8)
    kept_t = torch.tensor(kept, dtype=torch.long)
    if target is not None and pixels.numel() <= limit:
        atomic.torch_save({"pixels": pixels, "kept": kept_t, "skips": ordered}, target)
    if skips is not None:
        skips.merge(ordered)
    return pixels, kept_t


class ImageStore:
    """The one image container: the images of a split (or of a whole experiment) as uint8 [3, S, S] tensors.

    Why one: every paper needs "the pixels of images i, j, k" cheaply and many times. A store holds them
    decoded once in memory (`pixels`, uint8 [N, 3, S, S]; the synthetic worlds and small real sets), or decodes
    the requested ones from their files each time (`decode(i) -> uint8 [3, S, S]`, for sets too large to
    hold, read in `threads` threads). How an image becomes S x S (crop to a box, centre crop, plain resize) and
    what an unreadable one becomes is the paper's choice and happens before or inside `decode`; the labels
    belong to the paper's data classes, indexed like the store.
    """

    def __init__(self, size: int, pixels: torch.Tensor | None = None, paths=(), decode=None, threads: int = 8):
        if pixels is None and decode is None:
            raise ValueError("ImageStore needs its pixels or a decode function")
        if pixels is not None and (pixels.dtype != torch.uint8 or pixels.dim() != 4):
            raise ValueError(f"ImageStore pixels must be uint8 [N, 3, S, S], got {pixels.dtype} {tuple(pixels.shape)}")
        self.size = size                 # side of the square images handed to the models
        self.pixels = pixels             # uint8 [N, 3, S, S] when held in memory, else None
        self.paths = list(paths)         # the image files, in store order (may be empty for generated pixels)
        self.decode = decode             # i -> uint8 [3, S, S], for stores read on request
        self.threads = threads           # decoding threads of a store read on request

    def __len__(self) -> int:
        return len(self.pixels) if self.pixels is not None else len(self.paths)

    def get(self, idx) -> torch.Tensor:
        """uint8 images [B, 3, S, S] of the given indices."""
        idx = torch.as_tensor(idx, dtype=torch.long).reshape(-1)
        if self.pixels is not None:
            return self.pixels[idx]
        if not len(idx):
            return torch.zeros(0, 3, self.size, self.size, dtype=torch.uint8)
        with ThreadPoolExecutor(self.threads) as pool:
            return torch.stack(list(pool.map(self.decode, idx.tolist())))

    def subset(self, idx) -> "ImageStore":
        """The images at `idx`, as a store of their own (in memory when this one is)."""
        idx = torch.as_tensor(idx, dtype=torch.long).reshape(-1)
        paths = [self.paths[i] for i in idx.tolist()] if self.paths else []
        if self.pixels is not None:
            return ImageStore(self.size, self.pixels[idx], paths)
        return ImageStore(self.size, None, paths, lambda i: self.decode(int(idx[i])), self.threads)
