"""ImageStore: the one image container, in memory or decoded on request."""
import os

import pytest
import torch
from PIL import Image

from visualsearch.data.images import ImageStore, fits_in_memory, to_uint8_tensor


def test_in_memory_store_returns_the_requested_images():
    pixels = torch.randint(0, 255, (5, 3, 4, 4), dtype=torch.uint8)
    store = ImageStore(4, pixels, paths=[f"{i}.jpg" for i in range(5)])
    assert len(store) == 5 and torch.equal(store.get([3, 1]), pixels[[3, 1]])
    sub = store.subset([4, 0])
    assert sub.paths == ["4.jpg", "0.jpg"] and torch.equal(sub.get([1]), pixels[[0]])


def test_store_read_on_request_decodes_only_what_is_asked(tmp_path):
    paths = []
    for i in range(4):
        p = tmp_path / f"{i}.png"
        Image.new("RGB", (4, 4), (10 * i, 0, 0)).save(p)
        paths.append(p)
    asked = []

    def decode(i):
        asked.append(i)
        return to_uint8_tensor(Image.open(paths[i]).convert("RGB"))

    store = ImageStore(4, None, paths, decode, threads=2)
    got = store.get([2, 0])
    assert sorted(asked) == [0, 2] and got.dtype == torch.uint8 and got.shape == (2, 3, 4, 4)
    assert got[0, 0, 0, 0] == 20 and got[1, 0, 0, 0] == 0
    assert store.subset([3]).get([0])[0, 0, 0, 0] == 30 and store.get([]).shape == (0, 3, 4, 4)


def test_store_refuses_what_it_cannot_hold():
    with pytest.raises(ValueError, match="pixels or a decode"):
        ImageStore(4)
    with pytest.raises(ValueError, match="uint8"):
        ImageStore(4, torch.zeros(2, 3, 4, 4))


def test_one_byte_rule_decides_what_is_held_in_memory(monkeypatch):
    monkeypatch.delenv("VISUALSEARCH_IN_MEMORY_GB", raising=False)
    assert fits_in_memory(2, 8, max_bytes=2 * 3 * 8 * 8) and not fits_in_memory(3, 8, max_bytes=2 * 3 * 8 * 8)
    assert fits_in_memory(10_000, 64)  # the default presets' sets: held
    assert not fits_in_memory(200_000, 224)  # Fashion200k-sized at 224 px (~30 GB): read on request


def test_the_in_memory_limit_is_set_from_the_environment(monkeypatch):
    monkeypatch.setenv("VISUALSEARCH_IN_MEMORY_GB", "40")
    assert fits_in_memory(200_000, 224)
    monkeypatch.setenv("VISUALSEARCH_IN_MEMORY_GB", "8 GB")
    with pytest.raises(ValueError, match="VISUALSEARCH_IN_MEMORY_GB must be a number of GB, got '8 GB'"):
        fits_in_memory(10, 8)


def _write_images(folder, n=5, size=12):
    paths = []
    for i in range(n):
        p = folder / f"im{i}.png"
        Image.new("RGB", (size, size), (40 * i, 10, 200 - 30 * i)).save(p)
        paths.append(p)
    return paths


def _decoder(paths, calls):
    from visualsearch.data.images import load_image

    def decode(i, log):
        calls.append(i)
        img = load_image(paths[i], log)
        return None if img is None else to_uint8_tensor(img)
    return decode


def test_decode_all_keeps_order_skips_bad_images_and_reads_back_from_its_cache(tmp_path):
    from visualsearch.data.errors import SkipLog
    from visualsearch.data.images import decode_all

    paths = _write_images(tmp_path)
    (tmp_path / "im2.png").write_bytes(b"not a png")         # corrupt
    paths.append(tmp_path / "gone.png")                      # missing
    calls, skips = [], SkipLog()
    pixels, kept = decode_all(paths, _decoder(paths, calls), 12, skips, {"r": 1}, tmp_path / "cache", threads=2)
    assert kept.tolist() == [0, 1, 3, 4]
    assert pixels.shape == (4, 3, 12, 12) and pixels.dtype == torch.uint8
    assert pixels[2, 0, 0, 0] == 120                         # image 3's red channel: order follows the paths
    assert skips.reasons == {"corrupt image": 1, "missing image": 1}
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1

    calls2, skips2 = [], SkipLog()                           # a second run: read back, nothing decoded
    again, kept2 = decode_all(paths, _decoder(paths, calls2), 12, skips2, {"r": 1}, tmp_path / "cache")
    assert calls2 == [] and torch.equal(again, pixels) and torch.equal(kept2, kept)
    assert skips2.reasons == skips.reasons                   # the skips are counted again

    Image.new("RGB", (12, 12), (1, 2, 3)).save(paths[0])     # a changed image: decoded anew
    os.utime(paths[0], ns=(1, 1))
    calls3 = []
    changed, _ = decode_all(paths, _decoder(paths, calls3), 12, SkipLog(), {"r": 1}, tmp_path / "cache")
    assert sorted(calls3) == [0, 1, 2, 3, 4, 5] and changed[0, 0, 0, 0] == 1

    calls4 = []                                              # another decoding (`how`): decoded anew
    decode_all(paths, _decoder(paths, calls4), 12, SkipLog(), {"r": 2}, tmp_path / "cache")
    assert len(calls4) == 6


def test_decode_all_keeps_no_copy_of_a_split_over_the_cache_limit(tmp_path, monkeypatch):
    from visualsearch.data.images import decode_all

    paths = _write_images(tmp_path, 3)
    monkeypatch.setenv("VISUALSEARCH_DECODED_CACHE_GB", str(2 * 3 * 12 * 12 / 1024 ** 3))  # two images' worth
    pixels, kept = decode_all(paths, _decoder(paths, []), 12, None, {"r": 1}, tmp_path / "cache")
    assert kept.tolist() == [0, 1, 2] and not list((tmp_path / "cache").glob("*.pt"))
    decode_all(paths[:2], _decoder(paths, []), 12, None, {"r": 1}, tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1                               # within it: kept
    monkeypatch.setenv("VISUALSEARCH_DECODED_CACHE_GB", "lots")
    with pytest.raises(ValueError, match="VISUALSEARCH_DECODED_CACHE_GB"):
        decode_all(paths, _decoder(paths, []), 12, None, {"r": 1}, tmp_path / "cache")


def test_decode_all_without_a_skip_log_raises_on_a_bad_image(tmp_path):
    from visualsearch.data.images import decode_all, load_image

    paths = _write_images(tmp_path, 2)
    paths[1].write_bytes(b"broken")

    def strict(i, log):
        return to_uint8_tensor(load_image(paths[i]))         # no SkipLog: load_image raises, naming the file

    with pytest.raises(OSError, match="im1.png"):
        decode_all(paths, strict, 12)
