"""iMaterialist-style weak supervision: caption rules, neighbour rule, reader, evaluation queries."""
import json

import numpy as np
import pytest
from PIL import Image

from visualsearch.data import imaterialist as im
from visualsearch.data.errors import DataFormatError, SkipLog


def test_caption_rules_each_case():
    # R empty -> the target label's name
    assert im.caption_choices(["Dresses"], ["Dresses", "Floral"]) == ["Floral"]
    # T empty -> "not {R}"
    assert im.caption_choices(["Dresses", "Floral"], ["Dresses"]) == ["not Floral"]
    # one each way, a curated sleeve change
    assert im.caption_choices(["Long Sleeved"], ["Short Sleeves"])[0] == "shorter sleeves"
    # one each way, a curated target pattern
    assert "with a floral pattern" in im.caption_choices(["Stripes", "Dresses"], ["Floral", "Dresses"])
    # one each way, generic with synonyms
    assert im.caption_choices(["Red"], ["Multi Color"]) == ["multicolor not Red", "multicolored not Red"]
    assert im.caption_choices(["Red"], ["Blue"]) == ["Blue not Red"]
    # several -> every combination
    assert sorted(im.caption_choices(["Red", "Mini"], ["Blue", "Maxi"])) == sorted(
        ["Blue not Red", "Blue not Mini", "Maxi not Red", "Maxi not Mini"])
    with pytest.raises(ValueError, match="same labels"):
        im.caption_choices(["Red"], ["Red"])


def naive_neighbors(sets, max_changes, min_shared):
    out = []
    for i, s in enumerate(sets):
        out.append({j for j, t in enumerate(sets) if t != s and len(s & t) >= min_shared
                    and len(s - t) <= max_changes and len(t - s) <= max_changes})
    return out


@pytest.mark.parametrize("max_changes", [1, 2])
def test_neighbor_index_finds_exactly_the_rule_against_all_pairs(max_changes):
    rng = np.random.default_rng(max_changes)
    sets = [frozenset(rng.choice(9, size=rng.integers(1, 5), replace=False).tolist()) for _ in range(120)]
    found = im.find_neighbors(sets, max_changes=max_changes, min_shared=1, max_neighbors=1000)
    expected = naive_neighbors(sets, max_changes, 1)
    assert [set(f) for f in found] == expected
    assert sum(map(len, expected)) > 50  # the test is not vacuous


def test_neighbors_fewest_changes_first_and_capped():
    sets = [{1, 2}, {1, 2, 3}, {1, 3}, {1, 2, 3, 4}, {5}]
    found = im.find_neighbors(sets, max_changes=2, max_neighbors=2, ids=[10, 11, 12, 13, 14])
    assert len(found[0]) == 2 and found[0][0] == 11  # |{1,2} ^ {1,2,3}| = 1 comes first
    assert found[4] == ()  # shares no label with anyone


def write_imat(root, annotations, names, split="validation", missing=()):
    root.mkdir(parents=True, exist_ok=True)
    (root / "imat2018_label_map.tsv").write_text(
        "labelId\tlabelName\n" + "".join(f"{k}\t{v}\n" for k, v in names.items()))
    (root / f"{split}.json").write_text(json.dumps({"images": [], "annotations": annotations}))
    for a in annotations:
        if int(a["imageId"]) in missing:
            continue
        p = im.image_path(root, split, a["imageId"])
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(p)
    return root


NAMES = {1: "Dresses", 2: "Floral", 3: "Long Sleeved", 4: "Short Sleeves", 5: "Red"}


def test_reader_computes_neighbors_and_skips_missing_images(tmp_path):
    ann = [{"imageId": "1", "labelId": ["1", "3"]}, {"imageId": "2", "labelId": ["1", "4"]},
           {"imageId": "3", "labelId": ["1", "3", "2"]}, {"imageId": "4", "labelId": ["1", "3", "5"]}]
    root = write_imat(tmp_path, ann, NAMES, missing=(4,))
    skips = SkipLog()
    split = im.read_imat(root, "val", skips)
    assert skips.reasons["missing image"] == 1
    a = split.annotations.set_index("imageId")
    assert a.loc[1, "labels"] == (1, 3)
    assert set(a.loc[1, "neighbors"]) == {2, 3}  # 4 is missing, so not a neighbour
    assert im.image_path(root, "val", 1).name == "0000001.jpeg"
    pair = im.draw_pair(split, np.random.default_rng(0), index=1)  # image 2: Short Sleeves
    assert pair.reference == 2 and pair.target in (1, 3)
    q = im.evaluation_queries(split)
    assert len(q) == 3 and set(im.evaluation_gallery(q)) == {1, 2, 3}


def test_reader_prefers_released_neighbors_file(tmp_path):
    ann = [{"imageId": 1, "labelId": [1, 3], "neighbors": [2]}, {"imageId": 2, "labelId": [1, 4], "neighbors": []}]
    root = write_imat(tmp_path, ann, NAMES)
    (root / "validation_with_neighbors.json").write_text(json.dumps(ann))
    split = im.read_imat(root, "validation")
    assert split.annotations.neighbors.tolist() == [(2,), ()]
    assert im.draw_pair(split, np.random.default_rng(0)).caption in im.caption_choices(["Dresses", "Long Sleeved"],
                                                                                        ["Dresses", "Short Sleeves"])


def test_reader_errors_name_the_problem(tmp_path):
    root = write_imat(tmp_path, [{"imageId": "1", "labelId": ["1", "99"]}], NAMES)
    with pytest.raises(DataFormatError, match=r"labels \[99\] not in the label map"):
        im.read_imat(root)
    (root / "validation.json").write_text(json.dumps({"annotations": [{"imageId": "x", "labelId": []}]}))
    with pytest.raises(DataFormatError, match="'x' is not an integer"):
        im.read_imat(root)
    (root / "validation.json").write_text("{")
    with pytest.raises(DataFormatError, match="invalid JSON"):
        im.read_imat(root)
    (root / "imat2018_label_map.tsv").write_text("id\tname\n1\tRed\n")
    with pytest.raises(DataFormatError, match="line 1.*labelId<TAB>labelName"):
        im.read_imat(root)


def test_synthetic_world_in_the_released_layout(tmp_path):
    from visualsearch.data.products import Product

    p = Product(category="dress", colour="red", pattern="solid", sleeve="long", length="maxi", neckline="v")
    assert im.product_labels(p) == ["Dresses", "Red", "Long Sleeved", "Maxi", "V-Necks"]  # solid: no label
    im.build_imat(tmp_path, im.IMatWorldConfig(train_images=120, val_images=40, image_size=16))
    train = im.read_imat(tmp_path, "train")
    val = im.read_imat(tmp_path, "val")
    assert len(train.annotations) == 120 and len(val.annotations) == 40 and not train.skips.count
    assert set(train.label_names.values()) == set(im.synthetic_label_names())
    assert (train.annotations.neighbors.map(len) > 0).mean() > 0.5
    sets = dict(zip(train.annotations.imageId, map(frozenset, train.annotations.labels)))
    for image, ns in zip(train.annotations.imageId, train.annotations.neighbors):
        for n in ns:  # the rule: one label added, removed or replaced
            assert len(sets[image] - sets[n]) <= 1 and len(sets[n] - sets[image]) <= 1 and sets[n] != sets[image]
    pair = im.draw_pair(train, np.random.default_rng(1))
    assert pair.caption and pair.target in sets
