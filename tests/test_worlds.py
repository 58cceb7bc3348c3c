"""The world cache: built once per (parameters, drawing code), atomically."""
import json
import sys

from visualsearch.data.worlds import ensure_world


def test_world_built_once_and_redrawn_when_params_or_code_change(tmp_path):
    calls = []

    def build(folder, params):
        calls.append(params)
        (folder / "list.txt").write_text(str(params["n"]))

    a = ensure_world("toy", {"n": 1}, build, root=tmp_path)
    assert ensure_world("toy", {"n": 1}, build, root=tmp_path) == a and len(calls) == 1
    assert json.loads((a / "params.json").read_text())["n"] == 1
    assert ensure_world("toy", {"n": 2}, build, root=tmp_path) != a and len(calls) == 2

    src = tmp_path / "drawing_mod.py"
    src.write_text("def build(folder, params):\n    (folder / 'x.txt').write_text('v1')\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import drawing_mod

        first = ensure_world("toy2", {"n": 1}, drawing_mod.build, root=tmp_path)
        src.write_text("def build(folder, params):\n    (folder / 'x.txt').write_text('v2')\n")
        del sys.modules["drawing_mod"]
        import drawing_mod as again

        second = ensure_world("toy2", {"n": 1}, again.build, root=tmp_path)
        assert second != first and (second / "x.txt").read_text() == "v2"
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("drawing_mod", None)


def test_failed_build_leaves_nothing_behind(tmp_path):
    def broken(folder, params):
        (folder / "half.txt").write_text("half")
        raise RuntimeError("interrupted")

    try:
        ensure_world("bad", {"n": 1}, broken, root=tmp_path)
    except RuntimeError:
        pass
    assert list(tmp_path.iterdir()) == []
