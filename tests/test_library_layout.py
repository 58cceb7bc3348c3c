"""The library's shape (docs/CONTRIBUTING.md): no import circle, report code apart from training and models,
every paper in its home with the one contract, and no presentation code inside what the cache keys on."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from visualsearch.cache import import_closure

LIB = Path(__file__).resolve().parents[1] / "lib" / "visualsearch"
PAPERS = ("triplet", "face", "maaf", "cfq")
CONTRACT = ("__init__", "data", "experiment", "tables", "figures", "claims")
PRESENTATION = ("report.py", "tables.py", "figures.py", "claims.py")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(LIB.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _direct(path: Path) -> set[Path]:
    name = _module_name(path)
    here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = here[:len(here) - (node.level - 1)] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else [])) if node.level else (node.module or "")
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        for t in targets:
            if t.split(".")[0] != "visualsearch":
                continue
            rel = LIB.parent.joinpath(*t.split("."))
            for f in (rel.with_suffix(".py"), rel / "__init__.py"):
                if f.is_file() and f.resolve() != path.resolve():
                    out.add(f.resolve())
    return out


def _graph() -> dict[Path, set[Path]]:
    return {f.resolve(): {d for d in _direct(f) if d.name != "__init__.py" or d.parent != f.parent}
            for f in LIB.rglob("*.py")}


def test_no_import_circle_between_library_files():
    graph = _graph()
    circles = []
    for start in graph:
        seen, todo = set(), list(graph[start])
        while todo:
            f = todo.pop()
            if f == start:
                circles.append(str(start.relative_to(LIB)))
                break
            if f not in seen:
                seen.add(f)
                todo.extend(graph.get(f, ()))
    assert not circles, f"library files on an import circle: {sorted(circles)}"


def test_report_code_imports_neither_training_nor_models():
    closure = {f.relative_to(LIB).as_posix() for f in import_closure(["visualsearch.report"], LIB)}
    assert not {"train.py"} & closure and not any(f.startswith("models/") for f in closure), closure


@pytest.mark.parametrize("paper", PAPERS)
def test_every_paper_has_the_contract_modules(paper):
    home = LIB / "papers" / paper
    missing = [m for m in CONTRACT if not (home / f"{m}.py").is_file()]
    assert not missing, f"papers/{paper}/ lacks {missing} (docs/CONTRIBUTING.md, 'Adding a paper')"
    assert ast.get_docstring(ast.parse((home / "__init__.py").read_text())), f"papers/{paper}/__init__.py: no docstring"
    init = ast.parse((home / "__init__.py").read_text())
    assert not [n for n in ast.walk(init) if isinstance(n, (ast.Import, ast.ImportFrom))], (
        f"papers/{paper}/__init__.py imports something: every module importing the package would pull it into "
        "its cache key")
    experiment = ast.parse((home / "experiment.py").read_text())
    assert any(isinstance(n, ast.FunctionDef) and n.name == "result_cache" for n in experiment.body), (
        f"papers/{paper}/experiment.py has no result_cache()")
    data = ast.parse((home / "data.py").read_text())
    assert any(isinstance(n, ast.FunctionDef) and n.name == "load_data" for n in data.body), (
        f"papers/{paper}/data.py has no load_data(p)")


@pytest.mark.parametrize("paper", PAPERS)
def test_the_cache_keys_on_compute_code_only(paper):
    """What a paper's cached runs are keyed on (the import closure of its experiment module) holds no
    presentation code: a restyled figure or table retrains nothing."""
    closure = import_closure([f"visualsearch.papers.{paper}.experiment"], LIB)
    assert (LIB / "papers" / paper / "experiment.py").resolve() in closure, f"papers/{paper}/experiment.py missing"
    drawn = [f.relative_to(LIB).as_posix() for f in closure if f.name in PRESENTATION]
    assert not drawn, f"papers/{paper}/experiment.py's closure holds presentation code: {drawn}"
    source = "\n".join(f.read_text() for f in closure)
    assert "matplotlib" not in source and "seaborn" not in source, (
        f"a module in papers/{paper}/experiment.py's closure imports matplotlib or seaborn")


def test_the_old_per_paper_modules_are_gone():
    old = ["triplet_search.py", "face_attributes.py", "face_report.py", "sharing.py", "maaf_experiments.py",
           "maaf_report.py", "cfq_experiment.py"]
    assert not [f for f in old if (LIB / f).exists()]


@pytest.mark.parametrize("paper", PAPERS)
def test_presentation_modules_reach_no_model_training_or_experiment(paper):
    """A paper's tables, figures and claims take computed results: drawing a figure never builds or trains a
    model (CONTRIBUTING, 'Adding a paper')."""
    for module in ("tables", "figures", "claims"):
        closure = import_closure([f"visualsearch.papers.{paper}.{module}"], LIB)
        reached = [f.relative_to(LIB).as_posix() for f in closure
                   if f.relative_to(LIB).parts[0] == "models" or f.name in ("train.py", "experiment.py")]
        assert not reached, f"papers/{paper}/{module}.py reaches {reached}"
