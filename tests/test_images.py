"""ImageStore: the one image container, in memory or decoded on request."""
import pytest
import torch
from PIL import Image

from visualsearch.data.images import ImageStore, to_uint8_tensor


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
