"""The synthetic products world: real formats, determinism, look-alike structure, bounding boxes."""
from dataclasses import asdict, replace

import numpy as np
import pytest
from PIL import Image

from visualsearch.data import products as P
from visualsearch.data.worlds import ensure_world

SMALL = dict(seed=3, categories=("dress", "trousers", "jacket"), train_products_per_category=6,
             test_products_per_category=4, lookalike_groups_per_category=3, shop_photos=1, street_photos=2,
             image_size=48)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("worlds")
    return ensure_world("products", asdict(P.ProductsWorldConfig(**SMALL)), P.build_products, root=root)


def _rows(path, skip):
    return [line.split() for line in path.read_text().splitlines()[skip:]]


def test_sop_lists_follow_the_published_layout(world):
    n_img = 3 * (6 + 4) * 3
    train = (world / "Ebay_train.txt").read_text().splitlines()
    test = (world / "Ebay_test.txt").read_text().splitlines()
    assert train[0] == "image_id class_id super_class_id path" == test[0]
    assert len(train) - 1 == 3 * 6 * 3 and len(test) - 1 == 3 * 4 * 3 and len(train) + len(test) - 2 == n_img
    rows = _rows(world / "Ebay_train.txt", 1)
    assert [int(r[0]) for r in rows] == list(range(1, len(rows) + 1))  # image ids 1..N
    assert {int(r[2]) for r in rows} == {1, 2, 3}  # super class = category index
    train_classes = {int(r[1]) for r in rows}
    test_classes = {int(r[1]) for r in _rows(world / "Ebay_test.txt", 1)}
    assert len(train_classes) == 18 and len(test_classes) == 12 and not train_classes & test_classes
    for r in rows[:5]:
        assert (world / r[3]).is_file()


def test_inshop_lists_follow_the_published_layout(world):
    lines = (world / "Eval" / "list_eval_partition.txt").read_text().splitlines()
    assert int(lines[0]) == len(lines) - 2
    assert lines[1].split() == ["image_name", "item_id", "evaluation_status"]
    rows = [l.split() for l in lines[2:]]
    status = [r[2] for r in rows]
    assert status.count("train") == 18 * 3 and status.count("gallery") == 12 and status.count("query") == 24
    assert all(r[1].startswith("id_") and len(r[1]) == 11 for r in rows)
    # queries are street photos, gallery shop photos; every query item has a gallery photo
    assert all(r[0].endswith("street.jpg") for r in rows if r[2] == "query")
    assert {r[1] for r in rows if r[2] == "query"} == {r[1] for r in rows if r[2] == "gallery"}
    bb = (world / "Anno" / "list_bbox_inshop.txt").read_text().splitlines()
    assert int(bb[0]) == len(bb) - 2 == len(rows)
    assert bb[1].split() == ["image_name", "clothes_type", "pose_type", "x_1", "y_1", "x_2", "y_2"]
    for line in bb[2:]:
        name, ctype, pose, *box = line.split()
        x1, y1, x2, y2 = map(int, box)
        assert ctype in "123" and pose in "12456"
        assert 0 <= x1 < x2 <= 48 and 0 <= y1 < y2 <= 48


def test_images_have_the_configured_size(world):
    names = [l.split()[0] for l in (world / "Eval" / "list_eval_partition.txt").read_text().splitlines()[2:]]
    for n in names[::7]:
        with Image.open(world / n) as im:
            assert im.size == (48, 48) and im.mode == "RGB"


def test_lookalike_groups_share_coarse_attributes_and_differ_in_details(world):
    att = P.read_attributes(world)
    assert len(att) == 30
    assert att.groupby("category").group.nunique().tolist() == [3, 3, 3]
    coarse = ["category", "colour", "pattern", "sleeve", "length", "neckline"]
    assert (att.groupby("group")[coarse].nunique() == 1).all().all()
    # train and test hold new instances of the same looks
    assert set(att[att.split == "test"].group) <= set(att[att.split == "train"].group)
    details = ["trim_colour", "logo_shape", "logo_place", "buttons", "pattern_phase", "shade"]
    dup = att.duplicated(subset=coarse + details)
    assert not dup.any()


def test_image_table_records_views_and_boxes(world):
    im = P.read_image_table(world)
    assert len(im) == 90
    assert set(im.kind) == {"shop", "street"}
    assert (im.groupby("product_id").kind.apply(lambda k: (k == "shop").sum()) == 1).all()
    bb = (world / "Anno" / "list_bbox_inshop.txt").read_text().splitlines()[2:]
    first = bb[0].split()
    row = im[im.image_name == first[0]].iloc[0]
    assert [row.x_1, row.y_1, row.x_2, row.y_2] == list(map(int, first[3:]))


def test_world_is_deterministic_by_seed(tmp_path):
    cfg = P.ProductsWorldConfig(**{**SMALL, "train_products_per_category": 2, "test_products_per_category": 1})
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    P.build_products(a, asdict(cfg))
    P.build_products(b, cfg)
    assert (a / "Ebay_train.txt").read_text() == (b / "Ebay_train.txt").read_text()
    assert (a / "images.csv").read_text() == (b / "images.csv").read_text()
    name = (a / "Ebay_test.txt").read_text().splitlines()[1].split()[3]
    assert (a / name).read_bytes() == (b / name).read_bytes()
    c = tmp_path / "c"
    c.mkdir()
    P.build_products(c, replace(cfg, seed=4))
    assert (a / "attributes.csv").read_text() != (c / "attributes.csv").read_text()


def test_world_drawn_in_worker_processes_is_the_same_files(tmp_path):
    """build_products renders in forked workers: their number must change no byte of any file."""
    cfg = P.ProductsWorldConfig(**{**SMALL, "train_products_per_category": 3, "test_products_per_category": 2})
    folders = {}
    for workers in (1, 3):
        folders[workers] = tmp_path / f"w{workers}"
        folders[workers].mkdir()
        P.build_products(folders[workers], cfg, workers=workers)
    files = {w: sorted(p.relative_to(f) for p in f.rglob("*") if p.is_file()) for w, f in folders.items()}
    assert files[1] == files[3] and len(files[1]) > 10
    for rel in files[1]:
        assert (folders[1] / rel).read_bytes() == (folders[3] / rel).read_bytes(), rel


def test_bbox_encloses_the_garment_on_a_plain_background():
    rng = np.random.default_rng(0)
    prod = P.sample_product(rng, "skirt", ("red", "solid", "none", "knee", "none"))
    view = replace(P.sample_view(rng, "shop"), bg_colours=((240, 240, 240), (240, 240, 240)), rotation=0.0)
    img, (x1, y1, x2, y2) = P.render_photo(prod, view, 64)
    a = np.asarray(img, np.float32)
    far = np.abs(a - 240).max(-1) > 60  # clearly not background
    ys, xs = np.nonzero(far)
    assert xs.min() >= x1 - 1 and xs.max() < x2 + 1 and ys.min() >= y1 - 1 and ys.max() < y2 + 1
    assert (x2 - x1) * (y2 - y1) < 0.8 * 64 * 64  # a box, not the whole image
    red = np.array(P.PALETTE["red"], np.float32)
    centre = a[(y1 + y2) // 2, (x1 + x2) // 2]
    assert np.abs(centre - red).max() < 50


def test_changing_one_attribute_changes_the_photo_and_nothing_else_does():
    rng = np.random.default_rng(1)
    prod = P.sample_product(rng, "dress")
    view = P.sample_view(rng, "street")
    a, _ = P.render_photo(prod, view, 64)
    b, _ = P.render_photo(prod, view, 64)
    other = "blue" if prod.colour != "blue" else "red"
    c, _ = P.render_photo(replace(prod, colour=other), view, 64)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert np.abs(np.asarray(a, np.float32) - np.asarray(c, np.float32)).mean() > 2


def test_every_category_and_pattern_renders():
    rng = np.random.default_rng(2)
    for cat in P.CATEGORIES:
        for pat in P.PATTERNS:
            _, sleeves, lengths, necks = P.CATEGORIES[cat]
            prod = P.sample_product(rng, cat, ("green", pat, sleeves[-1], lengths[0], necks[-1]))
            g = np.asarray(P.render_garment(prod, 32))
            assert g.shape == (32, 32, 4) and 0.05 < (g[..., 3] > 128).mean() < 0.8


def test_bad_config_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown.*'hat'"):
        P.ProductsWorldConfig(categories=("dress", "hat"))
    with pytest.raises(ValueError, match="street"):
        P.sample_view(np.random.default_rng(0), "studio")
