"""Readers of Fashion IQ, CSS, Fashion200k, Birds-to-Words and Spot-the-Diff against fixtures in the real
formats: protocols (queries, galleries, hit labels, caption joining), clear errors, skipped images."""
import json

import numpy as np
import pytest
from PIL import Image

from visualsearch.data.errors import DataFormatError, SkipLog
from visualsearch.data.text_feedback import (FIQ_JOIN, one_word_difference, read_birds_to_words, read_css,
                                             read_fashion200k, read_fashion_iq, read_spot_the_diff)


def png(path, colour=(200, 0, 0)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path, format="PNG")


# ------------------------------------------------------------------------------------------- Fashion IQ

def write_fiq(root, layout="common", missing=()):
    splits = {"dress": ["D1", "D2", "D3"], "shirt": ["S1", "S2"], "toptee": ["T1", "T2"]}
    for cat, asins in splits.items():
        (root / "image_splits").mkdir(parents=True, exist_ok=True)
        (root / "captions").mkdir(parents=True, exist_ok=True)
        (root / "image_splits" / f"split.{cat}.val.json").write_text(json.dumps(asins))
        caps = [{"candidate": asins[0], "target": asins[1], "captions": ["is red", "has long sleeves"]}]
        if cat == "dress":
            caps.append({"candidate": "D3", "target": "D2", "captions": ["shorter", "with dots"]})
        (root / "captions" / f"cap.{cat}.val.json").write_text(json.dumps(caps))
        for a in asins:
            if a in missing:
                continue
            png(root / "img" / cat / a if layout == "authors" else root / "images" / f"{a}.png")


@pytest.mark.parametrize("layout", ["authors", "common"])
def test_fiq_both_layouts_and_protocol(tmp_path, layout):
    write_fiq(tmp_path, layout)
    splits = read_fashion_iq(tmp_path, "val")
    assert set(splits) == {"dress", "shirt", "toptee"}
    dress = splits["dress"]
    assert [p.name.split(".")[0] for p in dress.images] == ["D1", "D2", "D3"]  # gallery = the split file
    assert dress.labels == ["D1", "D2", "D3"]
    q = dress.queries[1]
    assert (q.source, q.target, q.target_label) == (2, 1, "D2")
    assert dress.query_text(q) == f"shorter {FIQ_JOIN} with dots"
    orders = {dress.query_text(q, np.random.default_rng(s)) for s in range(20)}
    assert orders == {f"shorter {FIQ_JOIN} with dots", f"with dots {FIQ_JOIN} shorter"}
    assert FIQ_JOIN in dress.texts()
    gallery, queries = dress.label_ids()
    assert gallery[queries[1]] == queries[1] and gallery == [0, 1, 2]


def test_fiq_missing_image_is_skipped_with_its_queries(tmp_path):
    write_fiq(tmp_path, missing=("D2",))
    skips = SkipLog()
    dress = read_fashion_iq(tmp_path, "val", skips=skips)["dress"]
    assert dress.labels == ["D1", "D3"] and dress.queries == []
    assert skips.reasons["missing image"] == 1 and skips.reasons["query with a missing image"] == 2


def test_fiq_truncated_jpeg_is_skipped_with_its_queries(tmp_path):
    """A half-written JPEG (its header parses, Image.verify() passes) fails when the split is read: the
    image is decoded there, not later in the middle of a run."""
    write_fiq(tmp_path)
    (tmp_path / "images" / "D2.png").unlink()
    jpg = tmp_path / "images" / "D2.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((64, 64, 3)) * 255).astype("uint8")).save(jpg, format="JPEG")
    jpg.write_bytes(jpg.read_bytes()[:jpg.stat().st_size // 2])
    with Image.open(jpg) as im:
        im.verify()
    skips = SkipLog()
    dress = read_fashion_iq(tmp_path, "val", skips=skips)["dress"]
    assert dress.labels == ["D1", "D3"] and dress.queries == []
    assert skips.reasons["corrupt image"] == 1 and skips.reasons["query with a missing image"] == 2


def test_fiq_errors_name_file_and_field(tmp_path):
    write_fiq(tmp_path)
    (tmp_path / "captions" / "cap.shirt.val.json").write_text('[{"candidate": "S1", "captions": ["x"]}]')
    with pytest.raises(DataFormatError, match=r"cap\.shirt\.val\.json.*\[0\]\.target"):
        read_fashion_iq(tmp_path, "val")
    (tmp_path / "captions" / "cap.shirt.val.json").write_text('[{"candidate": "S9", "target": "S1", "captions": ["x"]}]')
    with pytest.raises(DataFormatError, match="not in split.shirt.val.json"):
        read_fashion_iq(tmp_path, "val")
    (tmp_path / "captions" / "cap.shirt.val.json").write_text('[{"candidate": "S1",\n "target": }]')
    with pytest.raises(DataFormatError, match="line 2"):
        read_fashion_iq(tmp_path, "val")
    with pytest.raises(DataFormatError, match="missing file"):
        read_fashion_iq(tmp_path, "train")


# -------------------------------------------------------------------------------------------------- CSS

def write_css(root, missing=()):
    objs = [[{"shape": "circle", "color": "red", "size": "small", "pos": [0.1, 0.1]}]] * 4
    data = {"test": {"objects_img": objs, "labels": [7, 8, 8, 9],
                     "mods": [{"from": [0, 3], "to": [1, 2], "to_str": "make it blue"},
                              {"from": [1], "to": [3], "to_str": "remove circle"}]},
            "train": {"objects_img": objs[:2], "mods": [{"from": [0], "to": [1], "to_str": "add cube"}]}}
    np.save(root / "css_toy_dataset_novel2_small.dup.npy", data, allow_pickle=True)
    for split, n in (("test", 4), ("train", 2)):
        for i in range(n):
            if (split, i) not in missing:
                png(root / "images" / f"css_{split}_{i:06d}.png")


def test_css_queries_are_every_from_to_and_hits_are_labels(tmp_path):
    write_css(tmp_path)
    test = read_css(tmp_path, "test")
    assert [(q.source, q.target, q.captions, q.target_label) for q in test.queries] == [
        (0, 1, ("make it blue",), "8"), (3, 2, ("make it blue",), "8"), (1, 3, ("remove circle",), "9")]
    assert test.labels == ["7", "8", "8", "9"]
    gallery, queries = test.label_ids()
    assert gallery[1] == gallery[2] == queries[0]  # both images of scene 8 are hits
    assert read_css(tmp_path, "train").labels == ["0", "1"]  # no labels: each image its own


def test_css_missing_image_and_bad_file(tmp_path):
    write_css(tmp_path, missing={("test", 2)})
    skips = SkipLog()
    test = read_css(tmp_path, "test", skips)
    assert len(test.images) == 3 and len(test.queries) == 2 and skips.count == 2
    with pytest.raises(DataFormatError, match="no split 'val'"):
        read_css(tmp_path, "val")
    np.save(tmp_path / "css_toy_dataset_novel2_small.dup.npy",
            {"test": {"objects_img": [[]], "mods": [{"from": [0], "to": [5], "to_str": "x"}]}}, allow_pickle=True)
    with pytest.raises(DataFormatError, match="out of range"):
        read_css(tmp_path, "test")


# ------------------------------------------------------------------------------------------ Fashion200k

def write_f200k(root):
    rows = {"train": [("women/dresses/1/1_0.jpeg", "red floral dress"), ("women/dresses/2/2_0.jpeg", "blue floral dress"),
                      ("women/dresses/3/3_0.jpeg", "red floral dress"), ("women/dresses/4/4_0.jpeg", "black leather jacket")],
            "test": [("women/dresses/5/5_0.jpeg", "green midi dress."), ("women/dresses/6/6_0.jpeg", "green maxi dress."),
                     ("women/dresses/7/7_0.jpeg", "green maxi dress.")]}
    (root / "labels").mkdir(parents=True)
    for split, items in rows.items():
        lines = [f"{p}\t0.9{i}\t{c}" for i, (p, c) in enumerate(items)]
        (root / "labels" / f"dress_{split}_detect_all.txt").write_text("\n".join(lines) + "\n")
        for p, _ in items:
            png(root / p)
    (root / "test_queries.txt").write_text("women/dresses/5/5_0.jpeg women/dresses/6/6_0.jpeg\n")


def test_fashion200k_test_queries_and_caption_hits(tmp_path):
    write_f200k(tmp_path)
    test = read_fashion200k(tmp_path, "test")
    (q,) = test.queries
    assert q.captions == ("replace midi with maxi",)
    assert q.target_label == "green maxi dressdotmark"  # the authors' caption clean-up
    gallery, queries = test.label_ids()
    assert [g == queries[0] for g in gallery] == [False, True, True]


def test_fashion200k_training_pairs_differ_by_one_word(tmp_path):
    write_f200k(tmp_path)
    train = read_fashion200k(tmp_path, "train", pairs_per_image=5)
    pairs = {(train.labels[q.source], train.labels[q.target], q.captions[0]) for q in train.queries}
    assert pairs == {("red floral dress", "blue floral dress", "replace red with blue"),
                     ("blue floral dress", "red floral dress", "replace blue with red")}
    assert one_word_difference("a b c", "a x c") == "replace b with x"


def test_fashion200k_malformed_line(tmp_path):
    write_f200k(tmp_path)
    (tmp_path / "labels" / "dress_test_detect_all.txt").write_text("a.jpg\t0.9\tok caption\nbroken line\n")
    with pytest.raises(DataFormatError, match="line 2"):
        read_fashion200k(tmp_path, "test")


# --------------------------------------------------------------------------------------- Birds-to-Words

HEADER = ["img1_observation_url", "img1_url", "img1_species", "img1_selection", "img2_observation_url",
          "img2_url", "img2_species", "img2_selection", "split", "annotation_number", "description"]


def b2w_row(a, b, split, text):
    return [f"https://obs/{a}", f"https://photos/{a}/{a}.jpg", "sp", "x", f"https://obs/{b}",
            f"https://photos/{b}/{b}.jpg", "sp", "x", split, "0", text]


def write_b2w(root, rows):
    root.mkdir(parents=True, exist_ok=True)
    (root / "birds-to-words-v1.0.tsv").write_text("\n".join("\t".join(r) for r in [HEADER] + rows) + "\n")
    for r in rows:
        for url in (r[1], r[5]):
            png(root / "images" / url.split("/")[-1])


def test_birds_to_words_protocol(tmp_path):
    write_b2w(tmp_path, [b2w_row(1, 2, "test", "animal1 is darker than animal2"),
                         b2w_row(1, 2, "test", "animal2 has a longer tail"),
                         b2w_row(3, 1, "train", "animal1 has stripes")])
    test = read_birds_to_words(tmp_path, "test")
    assert test.labels == ["1.jpg", "2.jpg"]  # gallery = the images of the split
    assert [(q.source, q.target, q.captions) for q in test.queries] == [
        (0, 1, ("animal1 is darker than animal2",)), (0, 1, ("animal2 has a longer tail",))]
    train = read_birds_to_words(tmp_path, "train")
    assert sorted((train.labels[q.source], q.captions) for q in train.queries) == [
        ("1.jpg", ("animal2 has stripes",)), ("3.jpg", ("animal1 has stripes",))]


def test_birds_to_words_bad_row(tmp_path):
    write_b2w(tmp_path, [b2w_row(1, 2, "test", "x")])
    with open(tmp_path / "birds-to-words-v1.0.tsv", "a") as fh:
        fh.write("only\tthree\tfields\n")
    with pytest.raises(DataFormatError, match="line 3.*expected 11"):
        read_birds_to_words(tmp_path, "test")


# ---------------------------------------------------------------------------------------- Spot-the-Diff

def test_spot_the_diff_sentences_are_queries(tmp_path):
    (tmp_path / "annotations").mkdir()
    entries = [{"img_id": "10", "sentences": ["the car is gone", "", "a man appeared"]},
               {"img_id": 11, "sentences": [""]}]
    for split in ("train", "test"):
        (tmp_path / "annotations" / f"{split}.json").write_text(json.dumps(entries))
    for i in ("10", "11"):
        png(tmp_path / "resized_images" / f"{i}.png")
        png(tmp_path / "resized_images" / f"{i}_2.png", (0, 0, 200))
    test = read_spot_the_diff(tmp_path, "test")
    assert test.labels == ["10", "10_2", "11", "11_2"]
    assert [(q.source, q.target, q.captions) for q in test.queries] == [
        (0, 1, ("the car is gone",)), (0, 1, ("a man appeared",))]
    (q,) = read_spot_the_diff(tmp_path, "train").queries
    assert q.captions == ("the car is gone", "a man appeared")
    with pytest.raises(DataFormatError, match="missing file"):
        read_spot_the_diff(tmp_path, "val")
    (tmp_path / "annotations" / "val.json").write_text('[{"sentences": []}]')
    with pytest.raises(DataFormatError, match=r"\[0\]\.img_id"):
        read_spot_the_diff(tmp_path, "val")
