from pathlib import Path

import pytest
import torch
from torch import nn

import visualsearch
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


def test_altered_but_loadable_entry_is_recomputed_and_said(tmp_path, capsys):
    """An entry changed after it was written (rows of a stored tensor reordered: it still loads) fails its
    checksum: it is recomputed, with one printed line, and the recomputed value is stored afresh."""
    cache = ResultCache(tmp_path)
    calls = []

    def compute():
        calls.append(1)
        return {"emb": torch.arange(12.0).view(4, 3)}

    cache.get_or_compute("run", {"k": 1}, compute)
    path = cache.path("run", {"k": 1})
    torch.save({"emb": torch.arange(12.0).view(4, 3)[[1, 0, 2, 3]]}, path)  # loadable, altered
    capsys.readouterr()
    value = ResultCache(tmp_path).get_or_compute("run", {"k": 1}, compute)
    out = capsys.readouterr().out.strip().splitlines()
    assert len(calls) == 2 and torch.equal(value["emb"], torch.arange(12.0).view(4, 3))
    assert len(out) == 1 and "does not match its checksum" in out[0] and "recomputing" in out[0]
    again = ResultCache(tmp_path)
    assert torch.equal(again.get_or_compute("run", {"k": 1}, compute)["emb"], value["emb"])
    assert len(calls) == 2 and again.hits == ["run"] and again.has("run", {"k": 1})


def test_entry_without_checksum_is_recomputed(tmp_path, capsys):
    """An entry whose sidecar lacks the checksum (an older version, or a crash between the two writes) is
    not trusted."""
    cache = ResultCache(tmp_path)
    path = cache.path("run", {"k": 1})
    path.parent.mkdir(parents=True)
    torch.save(41, path)
    assert not cache.has("run", {"k": 1})
    assert cache.get_or_compute("run", {"k": 1}, lambda: 42) == 42
    assert "has no checksum" in capsys.readouterr().out
    assert cache.has("run", {"k": 1})


def test_run_dir_is_per_entry_and_removed_once_stored(tmp_path):
    cache = ResultCache(tmp_path / "results")
    a, b = cache.run_dir("run", {"k": 1}), cache.run_dir("run", {"k": 2})
    assert a != b and a == ResultCache(tmp_path / "results").run_dir("run", {"k": 1})

    def compute():
        a.mkdir(parents=True)
        (a / "checkpoint.pt").write_bytes(b"x")
        return 1

    cache.get_or_compute("run", {"k": 1}, compute)
    assert not a.exists()


def _in_fresh_process(imports: str, expression: str) -> str:
    """Print `expression` (code_version and sys in scope) in a new Python process after `imports`."""
    import subprocess
    import sys

    prog = f"import sys; {imports}; from visualsearch.cache import code_version; print({expression})"
    return subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, check=True).stdout.strip()


def test_code_version_follows_the_library_modules_in_use():
    """Stable within a process; another set of modules in use (here the MAAF code besides the FLOP counter)
    gives another version, so a change to the MAAF model cannot invalidate a notebook that never uses it."""
    from visualsearch.cache import code_version

    assert code_version() == code_version()
    versions = {_in_fresh_process(f"import visualsearch.flops{extra}", "code_version()")
                for extra in ("", ", visualsearch.papers.maaf.experiment")}
    assert len(versions) == 2


def test_a_cache_made_for_a_compute_module_keys_on_its_closure_only():
    """ResultCache(code=module): the version is that module's import closure, whatever else the process has
    loaded (the notebook's figures and report code), and it changes with any file of the closure."""
    from visualsearch.cache import code_version, import_closure

    name = "visualsearch.papers.triplet.experiment"
    versions = {_in_fresh_process(imports, f"code_version({name!r})")
                for imports in ("import visualsearch.flops", "import visualsearch.report, visualsearch.papers.triplet.figures")}
    assert len(versions) == 1
    assert code_version(name) != code_version("visualsearch.papers.maaf.experiment")
    closure = {f.name for f in import_closure([name], Path(visualsearch.__file__).parent)}
    assert {"experiment.py", "losses.py", "train.py"} <= closure and "report.py" not in closure
    with pytest.raises(ValueError, match="no library module named visualsearch.nothing_here"):
        code_version("visualsearch.nothing_here")


def test_code_version_does_not_depend_on_which_lazy_imports_have_run():
    """data/imaterialist.py imports the products world inside a function; whether that function ran (a cache
    miss) or was skipped (a hit) must not change the version, or every later cached result is recomputed."""
    out = [_in_fresh_process(f"import visualsearch.data.imaterialist{extra}",
                             "'visualsearch.data.products' in sys.modules, code_version()").split()
           for extra in ("", ", visualsearch.data.products")]
    assert out[0][0] == "False" and out[1][0] == "True"  # the lazy module loaded in the second process only
    assert out[0][1] == out[1][1]


def test_import_closure_follows_relative_absolute_and_function_level_imports(tmp_path):
    from visualsearch.cache import import_closure

    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n\ndef f():\n    from . import c\n")
    (pkg / "sub" / "b.py").write_text("from ..d import x\nimport os\n")
    (pkg / "c.py").write_text("import pkg.e\n")
    (pkg / "d.py").write_text("x = 1\n")
    (pkg / "e.py").write_text("")
    (pkg / "unused.py").write_text("")
    names = {p.relative_to(pkg).as_posix() for p in import_closure(["pkg.a"], pkg, "pkg")}
    assert names == {"__init__.py", "a.py", "sub/__init__.py", "sub/b.py", "c.py", "d.py", "e.py"}

