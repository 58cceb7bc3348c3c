import torch
from torch import nn

from visualsearch.cache import ResultCache
from visualsearch.flops import count_flops, fmt_flops


def test_flops_of_linear_and_conv_hand_computed():
    lin = nn.Linear(10, 20)
    c = count_flops(lin, torch.randn(3, 10))
    assert c["macs"] == 3 * 10 * 20 and c["flops"] == 2 * c["macs"] and c["params"] == 10 * 20 + 20
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    c = count_flops(conv, torch.randn(1, 3, 16, 16))
    assert c["macs"] == 16 * 16 * 8 * 3 * 9
    assert fmt_flops(1.5e9) == "1.50 G" and fmt_flops(2e6) == "2.00 M"


def test_cache_computes_once_and_separates_keys(tmp_path):
    cache = ResultCache(tmp_path)
    calls = []

    def compute():
        calls.append(1)
        return {"w": torch.ones(3), "r1": 0.5}

    a = cache.get_or_compute("run", {"seed": 1}, compute)
    b = cache.get_or_compute("run", {"seed": 1}, compute)
    assert len(calls) == 1 and torch.equal(a["w"], b["w"]) and cache.hits == ["run"]
    cache.get_or_compute("run", {"seed": 2}, compute)
    assert len(calls) == 2


def test_corrupt_cache_entry_is_recomputed(tmp_path):
    cache = ResultCache(tmp_path)
    path = cache.path("run", {"k": 1})
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a torch file")
    assert cache.get_or_compute("run", {"k": 1}, lambda: 42) == 42


def test_code_version_follows_the_loaded_library_modules():
    import importlib
    import sys

    from visualsearch.cache import code_version

    before = code_version()
    assert code_version() == before
    name = next(m for m in ("visualsearch.flops", "visualsearch.atomic") if m in sys.modules)
    mod = sys.modules.pop(name)
    try:
        assert code_version() != before  # one module fewer loaded: another version
    finally:
        sys.modules[name] = mod
    importlib.import_module(name)
    assert code_version() == before
