"""Readers of SOP, DeepFashion In-shop and Consumer-to-Shop on tiny fixtures written in the real layouts."""
from dataclasses import asdict

import numpy as np
import pytest
import torch
from PIL import Image

from visualsearch.data import products as P
from visualsearch.data.errors import DataFormatError, SkipLog
from visualsearch.data.retail import (RetailDataset, crop_to_box, load_split_images, read_consumer2shop,
                                      read_inshop, read_sop)


def _img(path, colour=(200, 30, 30), size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


# --------------------------------------------------------------------------------------------------- SOP

def _sop(root, extra_test=""):
    train = ["image_id class_id super_class_id path",
             "1 1 1 bicycle_final/111_0.JPG", "2 1 1 bicycle_final/111_1.JPG", "3 2 2 chair_final/222_0.JPG"]
    test = ["image_id class_id super_class_id path",
            "1 3 1 bicycle_final/333_0.JPG", "2 3 1 bicycle_final/333_1.JPG", "3 4 2 chair_final/444_0.JPG"]
    (root / "Ebay_train.txt").write_text("\n".join(train) + "\n")
    (root / "Ebay_test.txt").write_text("\n".join(test) + "\n" + extra_test)
    for line in train[1:] + test[1:]:
        _img(root / line.split()[3])


def test_sop_reads_splits_labels_categories(tmp_path):
    _sop(tmp_path)
    b = read_sop(tmp_path)
    assert (len(b.train), len(b.query), len(b.gallery)) == (3, 3, 3) and b.queries_in_gallery
    assert b.category_names == ["bicycle", "chair"]
    assert b.train.labels == [0, 0, 1] and b.query.labels == [2, 2, 3]
    assert b.query.categories == [0, 0, 1] and b.query.bboxes == [None] * 3
    assert b.query.paths[0] == tmp_path / "bicycle_final/333_0.JPG"


def test_sop_missing_and_corrupt_images_are_skipped_and_counted(tmp_path):
    _sop(tmp_path)
    (tmp_path / "bicycle_final/333_1.JPG").unlink()
    (tmp_path / "chair_final/444_0.JPG").write_bytes(b"not a jpeg")
    skips = SkipLog()
    b = read_sop(tmp_path, skips)
    assert len(b.query) == 1 and b.query.labels == [2]
    assert skips.reasons == {"missing image": 1, "corrupt image": 1} and b.skips is skips


def truncate_jpeg(path):
    """Rewrite `path` as a half-written JPEG: its header parses (Image.verify() passes) but decoding fails."""
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((64, 64, 3)) * 255).astype("uint8")).save(path, format="JPEG", quality=90)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with Image.open(path) as im:
        im.verify()  # what the old check did: it passes


def test_truncated_jpeg_is_skipped_when_read_never_raises_later(tmp_path):
    """A half-written JPEG is found by decoding when the benchmark is read, in streaming and in-memory mode
    alike: counted as corrupt, dropped from the split; nothing left in the split fails to load afterwards."""
    from visualsearch.data.images import check_images, load_image

    _sop(tmp_path)
    bad = tmp_path / "chair_final/444_0.JPG"
    truncate_jpeg(bad)
    skips = SkipLog()
    assert check_images([bad, tmp_path / "chair_final/222_0.JPG"], skips) == [False, True]
    assert skips.reasons == {"corrupt image": 1}
    skips = SkipLog()
    b = read_sop(tmp_path, skips)
    assert len(b.query) == 2 and bad not in b.query.paths and skips.reasons == {"corrupt image": 1}
    for p in b.query.paths + b.train.paths:  # streaming: every kept image decodes without a SkipLog
        load_image(p)
    images, kept = load_split_images(b.query, 16, use_boxes=False, skips=skips)  # in memory: same set
    assert len(kept) == len(b.query) and skips.count == 1
    with pytest.raises(OSError, match="444_0.JPG: image cannot be decoded"):
        load_image(bad)


def test_check_images_in_threads_keeps_order(tmp_path):
    from visualsearch.data.images import check_images

    paths = []
    for i in range(100):
        p = tmp_path / f"{i}.png"
        if i % 7 == 0:
            p.write_bytes(b"no image")
        elif i % 11 != 0:
            _img(p)
        paths.append(p)
    skips = SkipLog()
    ok = check_images(paths, skips, threads=4)
    assert ok == [i % 7 != 0 and i % 11 != 0 for i in range(100)]
    assert skips.reasons == {"corrupt image": 15, "missing image": 8}
    assert skips.examples["corrupt image"][:2] == [str(paths[0]), str(paths[7])]


def test_sop_errors_name_file_line_and_field(tmp_path):
    _sop(tmp_path, extra_test="4 x 1 chair_final/444_1.JPG\n")
    with pytest.raises(DataFormatError, match=r"Ebay_test.txt, line 5, field 'class_id'.*integer"):
        read_sop(tmp_path)
    _sop(tmp_path, extra_test="4 5 chair_final/444_1.JPG\n")
    with pytest.raises(DataFormatError, match=r"Ebay_test.txt, line 5.*3 fields.*expected 4 fields"):
        read_sop(tmp_path)
    (tmp_path / "Ebay_train.txt").write_text("id class path\n")
    with pytest.raises(DataFormatError, match=r"Ebay_train.txt, line 1.*header"):
        read_sop(tmp_path)
    (tmp_path / "Ebay_train.txt").unlink()
    with pytest.raises(DataFormatError, match=r"missing file.*Ebay_train.txt"):
        read_sop(tmp_path)
    with pytest.raises(DataFormatError, match="missing folder"):
        read_sop(tmp_path / "nowhere")


# ------------------------------------------------------------------------------------------------ In-shop

INSHOP = [("img/WOMEN/Dresses/id_00000002/01_1_front.jpg", "id_00000002", "train", (5, 4, 30, 25)),
          ("img/WOMEN/Dresses/id_00000002/02_2_side.jpg", "id_00000002", "train", (1, 2, 20, 28)),
          ("img/MEN/Pants/id_00000007/01_1_front.jpg", "id_00000007", "query", (0, 0, 40, 30)),
          ("img/MEN/Pants/id_00000007/02_4_full.jpg", "id_00000007", "gallery", (10, 5, 20, 15)),
          ("img/WOMEN/Dresses/id_00000009/01_1_front.jpg", "id_00000009", "gallery", (2, 2, 12, 12))]


def _inshop(root, release_layout=True, rows=INSHOP, count=None):
    ev, an, im = (root / "Eval", root / "Anno", root / "Img") if release_layout else (root, root, root)
    ev.mkdir(parents=True, exist_ok=True), an.mkdir(parents=True, exist_ok=True)
    (ev / "list_eval_partition.txt").write_text(
        f"{count or len(rows)}\nimage_name item_id evaluation_status\n" + "".join(f"{n}   {i}  {s}\n" for n, i, s, _ in rows))
    (an / "list_bbox_inshop.txt").write_text(
        f"{len(rows)}\nimage_name  clothes_type  pose_type  x_1  y_1  x_2  y_2\n"
        + "".join(f"{n} 1 1 {b[0]} {b[1]} {b[2]} {b[3]}\n" for n, _, _, b in rows))
    for n, *_ in rows:
        _img(im / n)


@pytest.mark.parametrize("release_layout", [True, False])
def test_inshop_reads_partition_boxes_and_both_layouts(tmp_path, release_layout):
    _inshop(tmp_path, release_layout)
    b = read_inshop(tmp_path)
    assert (len(b.train), len(b.query), len(b.gallery)) == (2, 1, 2) and not b.queries_in_gallery
    assert b.train.bboxes == [(5, 4, 30, 25), (1, 2, 20, 28)]
    assert b.query.labels == [1] and b.gallery.labels == [1, 2] and b.train.labels == [0, 0]
    assert b.category_names == ["Dresses", "Pants"] and b.gallery.categories == [1, 0]
    assert b.gallery.paths[0].is_file() and b.skips.count == 0


def test_inshop_without_bbox_file_has_no_boxes(tmp_path):
    _inshop(tmp_path)
    (tmp_path / "Anno" / "list_bbox_inshop.txt").unlink()
    assert read_inshop(tmp_path).train.bboxes == [None, None]


def test_inshop_errors(tmp_path):
    _inshop(tmp_path, count=7)
    with pytest.raises(DataFormatError, match=r"list_eval_partition.txt, line 1, field 'count'.*says 7.*5 follow"):
        read_inshop(tmp_path)
    rows = INSHOP[:2] + [(INSHOP[2][0], INSHOP[2][1], "test", INSHOP[2][3])]
    _inshop(tmp_path, rows=rows)
    with pytest.raises(DataFormatError, match=r"line 5, field 'evaluation_status'.*train, query or gallery"):
        read_inshop(tmp_path)
    _inshop(tmp_path)
    bb = tmp_path / "Anno" / "list_bbox_inshop.txt"
    bb.write_text(bb.read_text().replace(" 5 4 30 25", " 5 4 3 25"))
    with pytest.raises(DataFormatError, match=r"list_bbox_inshop.txt, line 3.*empty box"):
        read_inshop(tmp_path)
    (tmp_path / "Eval" / "list_eval_partition.txt").write_text("2\nimage item status\n")
    with pytest.raises(DataFormatError, match=r"line 2.*expected image_name item_id evaluation_status"):
        read_inshop(tmp_path)
    (tmp_path / "Eval" / "list_eval_partition.txt").unlink()
    with pytest.raises(DataFormatError, match="missing file: In-shop evaluation partition"):
        read_inshop(tmp_path)


# ------------------------------------------------------------------------------------------ Consumer2Shop

def _c2s(root):
    pairs = [("img/TROUSERS/Chiffon/id_00000001/comsumer_01.jpg", "img/TROUSERS/Chiffon/id_00000001/shop_01.jpg", "id_00000001", "train"),
             ("img/TROUSERS/Chiffon/id_00000001/comsumer_02.jpg", "img/TROUSERS/Chiffon/id_00000001/shop_01.jpg", "id_00000001", "train"),
             ("img/DRESSES/Lace/id_00000005/comsumer_01.jpg", "img/DRESSES/Lace/id_00000005/shop_01.jpg", "id_00000005", "test"),
             ("img/DRESSES/Lace/id_00000005/comsumer_01.jpg", "img/DRESSES/Lace/id_00000005/shop_02.jpg", "id_00000005", "test"),
             ("img/DRESSES/Lace/id_00000006/comsumer_01.jpg", "img/DRESSES/Lace/id_00000006/shop_01.jpg", "id_00000006", "val")]
    (root / "Eval").mkdir(parents=True), (root / "Anno").mkdir(parents=True)
    (root / "Eval" / "list_eval_partition.txt").write_text(
        f"{len(pairs)}\nimage_pair_name_1 image_pair_name_2 item_id evaluation_status\n"
        + "".join(" ".join(p) + "\n" for p in pairs))
    names = sorted({n for p in pairs for n in p[:2]})
    # columns found by header name: source_type sits before the box
    (root / "Anno" / "list_bbox_consumer2shop.txt").write_text(
        f"{len(names)}\nimage_name clothes_type source_type x_1 y_1 x_2 y_2\n"
        + "".join(f"{n} 2 {2 if 'comsumer' in n else 1} 3 4 {13 + i} 24\n" for i, n in enumerate(names)))
    for n in names:
        _img(root / "img" / n.split("img/", 1)[1])
    return names


def test_consumer2shop_protocol(tmp_path):
    names = _c2s(tmp_path)
    b = read_consumer2shop(tmp_path)
    assert len(b.train) == 3  # 2 consumer + 1 shop photo, each once
    assert [p.name for p in b.query.paths] == ["comsumer_01.jpg"] and b.query.item_ids == ["id_00000005"]
    assert sorted(b.gallery.item_ids) == ["id_00000005", "id_00000005", "id_00000006"]  # val + test shop photos
    assert b.category_names == ["TROUSERS", "DRESSES"] and b.query.categories == [1]
    i = names.index("img/DRESSES/Lace/id_00000005/comsumer_01.jpg")
    assert b.query.bboxes == [(3, 4, 13 + i, 24)]
    b2 = read_consumer2shop(tmp_path, gallery_status=("test",))
    assert len(b2.gallery) == 2


def test_consumer2shop_errors(tmp_path):
    _c2s(tmp_path)
    bb = tmp_path / "Anno" / "list_bbox_consumer2shop.txt"
    bb.write_text(bb.read_text().replace("x_1 y_1 x_2 y_2", "a b c d"))
    with pytest.raises(DataFormatError, match="lacks a bbox column"):
        read_consumer2shop(tmp_path)
    bb.write_text(bb.read_text().replace("a b c d", "x_1 y_1 x_2 y_2"))
    ev = tmp_path / "Eval" / "list_eval_partition.txt"
    ev.write_text(ev.read_text().replace(" val", " dev"))
    with pytest.raises(DataFormatError, match="train, val or test"):
        read_consumer2shop(tmp_path)


# ------------------------------------------------------------------------------------------- image access

def test_crop_to_box_is_square_with_margin_and_clipped():
    img = Image.new("RGB", (100, 80))
    assert crop_to_box(img, (40, 30, 60, 50), margin=0.5).size == (40, 40)
    assert crop_to_box(img, (0, 0, 20, 10), margin=0.0).size == (20, 15)  # clipped at the image's corner
    assert crop_to_box(img, None) is img


def test_dataset_and_tensor_loading_crop_around_the_box(tmp_path):
    img = np.zeros((40, 40, 3), np.uint8)
    img[10:20, 10:20] = (255, 0, 0)  # a red square inside the box, black elsewhere
    (tmp_path / "Eval").mkdir(), (tmp_path / "Anno").mkdir()
    rows = [("img/MEN/Pants/id_00000001/a.jpg", "id_00000001", "query", (10, 10, 20, 20)),
            ("img/MEN/Pants/id_00000001/b.png", "id_00000001", "gallery", (10, 10, 20, 20))]
    _inshop(tmp_path, release_layout=False, rows=rows)
    for n, *_ in rows:
        Image.fromarray(img).save(tmp_path / n)
    b = read_inshop(tmp_path)
    x, label, cat = RetailDataset(b.gallery, size=16, margin=0.0)[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and label == 0 and cat == 0
    assert x[0].min() > 0.9 and x[1].max() < 0.1  # all red: the crop kept only the box
    full, _, _ = RetailDataset(b.gallery, size=16, use_boxes=False)[0]
    assert full[0].mean() < 0.2
    (tmp_path / rows[0][0]).unlink()  # vanished after reading: skipped and counted when loading tensors
    skips = SkipLog()
    ims, kept = load_split_images(b.query, 8, skips=skips)
    assert ims.shape == (0, 3, 8, 8) and skips.count == 1
    ims, kept = load_split_images(b.gallery, 8, margin=0.0)
    assert ims.dtype == torch.uint8 and ims.shape == (1, 3, 8, 8) and kept.tolist() == [0] and ims[0, 0].min() > 230


def test_readers_read_the_synthetic_products_world(tmp_path):
    cfg = P.ProductsWorldConfig(seed=1, categories=("dress", "skirt"), train_products_per_category=3,
                                test_products_per_category=2, lookalike_groups_per_category=2, image_size=32)
    P.build_products(tmp_path, asdict(cfg))
    sop, ins = read_sop(tmp_path), read_inshop(tmp_path)
    assert len(sop.train) == len(ins.train) == 6 * 4 and len(sop.query) == 4 * 4
    assert len(ins.query) == len(ins.gallery) == 4 * 2
    assert sop.category_names == ins.category_names == ["Dresses", "Skirts"]
    att = P.read_attributes(tmp_path).set_index("product_id")
    # SOP item ids are the world's product ids; In-shop item ids their zero-padded form
    pid = int(sop.query.item_ids[0].split("_")[1])
    assert att.loc[pid, "category"] == "dress" and ins.query.item_ids[0] == f"id_{int(ins.query.item_ids[0][3:]):08d}"
    assert all(bb is not None for bb in ins.query.bboxes)
