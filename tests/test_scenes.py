"""Scenes world: CSS and Spot-the-Diff layouts, texts that really describe the change, determinism."""
import hashlib
import json
from dataclasses import asdict

import numpy as np
import pytest
from PIL import Image

from visualsearch.data.scenes import (COLOURS, CSS_FILE, ROWS, COLUMNS, ScenesWorldConfig, build_css,
                                      build_spot_the_diff, css_world, render_scene, scene_key)
from visualsearch.data.text_feedback import read_css, read_spot_the_diff

SMALL = ScenesWorldConfig(train_scenes=30, test_scenes=12, spot_pairs=(10, 4, 4), image_size=48)


@pytest.fixture(scope="module")
def css(tmp_path_factory):
    folder = tmp_path_factory.mktemp("css")
    build_css(folder, asdict(SMALL))
    return folder


def _cell(place):
    row, col = place.split("-")
    return [ROWS.index(row), COLUMNS.index(col)]


def apply_text(objects, text):
    """An independent interpreter of the CSS-style texts: what the target scene must be."""
    words = text.split()
    objs = [dict(o) for o in objects]

    def find(ref):
        if ref[-1] == "object":
            return [o for o in objs if o["cell"] == _cell(ref[0])]
        return [o for o in objs if o["color"] == ref[0] and o["shape"] == ref[1]]

    if words[0] == "add":
        size, colour, shape, _, place = words[1:]
        return objs + [{"cell": _cell(place), "shape": shape, "color": colour, "size": size}]
    if words[0] == "remove":
        (hit,) = find(words[1:])
        return [o for o in objs if o is not hit]
    (hit,) = find(words[1:3])
    key = "size" if words[3] in ("small", "large") else "color"
    hit[key] = words[3]
    return objs


def test_css_layout_and_texts_describe_the_change(css):
    data = np.load(css / CSS_FILE, allow_pickle=True, encoding="latin1").item()
    assert set(data) == {"train", "test"}
    for split in ("train", "test"):
        part = data[split]
        assert len(part["labels"]) == len(part["objects_img"])
        assert all((css / "images" / f"css_{split}_{i:06d}.png").is_file() for i in range(len(part["labels"])))
        n_pairs = 0
        for mod in part["mods"]:
            assert len(mod["from"]) == len(mod["to"]) >= 1
            for f, t in zip(mod["from"], mod["to"]):
                expected = apply_text(part["objects_img"][f], mod["to_str"])
                assert scene_key(expected) == scene_key(part["objects_img"][t]), mod["to_str"]
                n_pairs += 1
        assert n_pairs > len(part["mods"])  # texts are shared by several (from, to) pairs, as in CSS
        # equal labels <=> equal scenes
        keys = [scene_key(o) for o in part["objects_img"]]
        for i in range(0, len(keys), 7):
            for j in range(len(keys)):
                assert (keys[i] == keys[j]) == (part["labels"][i] == part["labels"][j])
        kinds = {mod["to_str"].split()[0] for mod in part["mods"]}
        assert kinds == {"add", "remove", "make"}


def test_css_world_reads_back_with_the_css_protocol(css):
    split = read_css(css, "test")
    data = np.load(css / CSS_FILE, allow_pickle=True).item()["test"]
    assert len(split.queries) == sum(len(m["from"]) for m in data["mods"])
    assert split.skips.count == 0 and len(split.images) == len(data["labels"])
    q = split.queries[0]
    assert split.labels[q.target] == q.target_label and split.labels[q.source] != q.target_label


def test_rendering_puts_the_colour_where_the_object_is():
    obj = {"cell": [0, 2], "shape": "rectangle", "color": "red", "size": "large", "pos": [1 / 6, 5 / 6]}
    img = np.asarray(render_scene([obj], 64))
    assert np.abs(img[10, 53].astype(int) - COLOURS["red"]).max() < 10   # inside the square
    assert (img[53, 10] == 255).all()                                    # empty bottom-left cell


def test_worlds_are_deterministic_and_cached(tmp_path):
    a = css_world(SMALL, root=tmp_path)
    assert css_world(SMALL, root=tmp_path) == a
    b = tmp_path / "again"
    build_css(b, asdict(SMALL))
    digest = lambda f: hashlib.sha256(f.read_bytes()).hexdigest()
    assert digest(a / CSS_FILE) == digest(b / CSS_FILE)
    assert digest(a / "images" / "css_test_000005.png") == digest(b / "images" / "css_test_000005.png")


def test_spot_the_diff_layout(tmp_path):
    build_spot_the_diff(tmp_path, asdict(SMALL))
    for split, n in zip(("train", "val", "test"), SMALL.spot_pairs):
        entries = json.loads((tmp_path / "annotations" / f"{split}.json").read_text())
        assert len(entries) == n
        for e in entries:
            a = (tmp_path / "resized_images" / f"{e['img_id']}.png").read_bytes()
            b = (tmp_path / "resized_images" / f"{e['img_id']}_2.png").read_bytes()
            assert a != b and len([s for s in e["sentences"] if s]) == 1
    test = read_spot_the_diff(tmp_path, "test")
    assert len(test.images) == 2 * SMALL.spot_pairs[2]
    assert all(test.labels[q.target] == test.labels[q.source] + "_2" for q in test.queries)


def test_spot_the_diff_afters_are_look_alikes_told_apart_by_the_text(tmp_path):
    """Entries come in groups of `spot_variants` with one before scene (pixel-identical befores), each after
    changing another cell, each sentence different: only the text tells the target from its look-alikes."""
    build_spot_the_diff(tmp_path, asdict(SMALL))
    entries = json.loads((tmp_path / "annotations" / "train.json").read_text())
    k = SMALL.spot_variants
    assert k >= 2
    pixels = lambda name: np.asarray(Image.open(tmp_path / "resized_images" / name), dtype=np.int16)
    for g in range(0, len(entries) - k + 1, k):
        group = entries[g:g + k]
        befores = [pixels(f"{e['img_id']}.png") for e in group]
        afters = [pixels(f"{e['img_id']}_2.png") for e in group]
        assert all((b == befores[0]).all() for b in befores)
        changed = [np.abs(a - befores[0]).sum(-1) > 30 for a in afters]
        assert all(c.any() for c in changed)
        for i in range(k):  # each after differs from the before somewhere the others do not
            assert (changed[i] & ~np.any([changed[j] for j in range(k) if j != i], axis=0)).any()
        assert len({e["sentences"][0] for e in group}) == k


def test_spot_variants_must_fit_the_grid():
    with pytest.raises(ValueError, match="spot_variants"):
        ScenesWorldConfig(spot_variants=10)


def test_bad_config_is_clear():
    with pytest.raises(ValueError, match="unknown shapes"):
        ScenesWorldConfig(shapes=("hexagon",))
