"""Readers of the retail retrieval benchmarks in their published layouts, and a Dataset over them.

- Stanford Online Products (Song et al. 2016): `Ebay_train.txt`, `Ebay_test.txt`: a header line
  `image_id class_id super_class_id path`, then one image per line. Every test image queries all other test
  images (the query itself excluded).
- DeepFashion In-shop: `Eval/list_eval_partition.txt`: a count line, a header line
  `image_name item_id evaluation_status`, then rows with status train / query / gallery;
  `Anno/list_bbox_inshop.txt`: count, header `image_name clothes_type pose_type x_1 y_1 x_2 y_2`, rows.
- DeepFashion Consumer-to-Shop: `Eval/list_eval_partition.txt`: count, header
  `image_pair_name_1 image_pair_name_2 item_id evaluation_status` (consumer photo, shop photo), status
  train / val / test; `Anno/list_bbox_consumer2shop.txt`: count, header naming the columns (image_name,
  clothes_type, source_type, x_1, y_1, x_2, y_2; columns are found by name). Queries are the consumer photos
  of the test pairs; the gallery is every shop photo of val + test, as the dataset's README prescribes.

List files are looked for in the dataset root and in its `Eval/` and `Anno/` folders (the release layout);
image paths are resolved against the root, or `Img/` below it when the root has no `img/`. A malformed
line raises DataFormatError naming the file, the line and the field; images that are missing or cannot be
decoded are skipped and counted in the benchmark's SkipLog.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..progress import bar
from .errors import DataFormatError, SkipLog, require_dir
from .images import check_images, decode_all, load_image


@dataclass
class RetailSplit:
    """The images of one split, as parallel lists. `labels` are product ids as consecutive integers
    (shared across the splits of one benchmark); `categories` index `category_names`."""

    paths: list = field(default_factory=list)        # absolute Paths
    item_ids: list = field(default_factory=list)     # the dataset's product id strings
    labels: list = field(default_factory=list)       # int product label
    categories: list = field(default_factory=list)   # int category index
    bboxes: list = field(default_factory=list)       # (x_1, y_1, x_2, y_2) in pixels, or None

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, keep) -> "RetailSplit":
        keep = list(keep)
        return RetailSplit(*[[getattr(self, f)[i] for i in keep] for f in
                             ("paths", "item_ids", "labels", "categories", "bboxes")])

    def label_tensor(self) -> torch.Tensor:
        return torch.tensor(self.labels, dtype=torch.long)

    def category_tensor(self) -> torch.Tensor:
        return torch.tensor(self.categories, dtype=torch.long)


@dataclass
class RetrievalBenchmark:
    """Train images plus a query set searched against a gallery. `queries_in_gallery` (SOP) means the
    query set *is* the gallery and each query must not retrieve itself."""

    name: str
    root: Path
    train: RetailSplit
    query: RetailSplit
    gallery: RetailSplit
    category_names: list
    queries_in_gallery: bool = False
    skips: SkipLog = field(default_factory=SkipLog)


# ----------------------------------------------------------------------------------------------- parsing

def _find_list(root: Path, name: str, subdir: str, what: str) -> Path:
    for p in (root / name, root / subdir / name):
        if p.is_file():
            return p
    raise DataFormatError(root / subdir / name, f"missing file: {what} not found (looked in {root} and {root / subdir})")


def _image_root(root: Path, first_path: str) -> Path:
    if (root / first_path).exists() or not (root / "Img").is_dir():
        return root
    return root / "Img"


def _read_counted(path: Path, header: list[str] | None, min_fields: int) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Read a DeepFashion list: count line, header line, rows. Returns (header fields, [(line no, fields)])."""
    lines = path.read_text().splitlines()
    if len(lines) < 2:
        raise DataFormatError(path, "file too short", expected="a count line and a header line")
    try:
        count = int(lines[0].strip())
    except ValueError:
        raise DataFormatError(path, f"first line is {lines[0][:40]!r}", line=1, field="count",
                              expected="the number of entries")
    head = lines[1].split()
    if header is not None and head[:len(header)] != header:
        raise DataFormatError(path, f"header is {' '.join(head)!r}", line=2, expected=" ".join(header))
    rows = []
    for i, line in enumerate(lines[2:], start=3):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < min_fields:
            raise DataFormatError(path, f"{len(parts)} fields in {line[:80]!r}", line=i,
                                  expected=f"{min_fields} fields: {' '.join(head)}")
        rows.append((i, parts))
    if count != len(rows):
        raise DataFormatError(path, f"count line says {count} entries but {len(rows)} follow", line=1, field="count")
    return head, rows


def _int(path, lineno, name, value) -> int:
    try:
        return int(value)
    except ValueError:
        raise DataFormatError(path, f"{value!r} is not an integer", line=lineno, field=name, expected="an integer")


def read_bbox_list(path: Path) -> dict[str, tuple[int, int, int, int]]:
    """image name -> (x_1, y_1, x_2, y_2) from a DeepFashion bbox list; the coordinate columns are found by
    their header names, so In-shop and Consumer-to-Shop layouts both read."""
    head, rows = _read_counted(path, None, 5)
    try:
        cols = [head.index(c) for c in ("x_1", "y_1", "x_2", "y_2")]
    except ValueError:
        raise DataFormatError(path, f"header {' '.join(head)!r} lacks a bbox column", line=2,
                              expected="image_name ... x_1 y_1 x_2 y_2")
    out = {}
    for lineno, parts in rows:
        if len(parts) != len(head):
            raise DataFormatError(path, f"{len(parts)} fields", line=lineno, expected=f"{len(head)}: {' '.join(head)}")
        box = tuple(_int(path, lineno, head[c], parts[c]) for c in cols)
        if box[2] <= box[0] or box[3] <= box[1]:
            raise DataFormatError(path, f"empty box {box}", line=lineno, field="x_1 y_1 x_2 y_2",
                                  expected="x_1 < x_2 and y_1 < y_2")
        out[parts[0]] = box
    return out


class _Builder:
    """Collects images into splits with shared label and category numbering, checking the image files."""

    def __init__(self, image_root: Path, skips: SkipLog, check: bool):
        self.root, self.skips, self.check = image_root, skips, check
        self.label_of: dict[str, int] = {}
        self.cat_of: dict[str, int] = {}
        self.splits: dict[str, RetailSplit] = {}

    def add(self, split: str, rel: str, item: str, category: str, bbox):
        s = self.splits.setdefault(split, RetailSplit())
        s.paths.append(self.root / rel)
        s.item_ids.append(item)
        s.labels.append(self.label_of.setdefault(item, len(self.label_of)))
        s.categories.append(self.cat_of.setdefault(category, len(self.cat_of)))
        s.bboxes.append(bbox)

    def finish(self, names) -> dict[str, RetailSplit]:
        out = {}
        for name in names:
            s = self.splits.get(name, RetailSplit())
            if self.check and len(s):
                ok = check_images(s.paths, self.skips)
                s = s.subset(i for i, good in enumerate(ok) if good)
            out[name] = s
        return out

    def category_names(self) -> list[str]:
        return sorted(self.cat_of, key=self.cat_of.get)


# ----------------------------------------------------------------------------------------------- readers

def _sop_category(rel: str, super_class_id: str) -> str:
    """`bicycle_final/1110_0.JPG` -> `bicycle`; an In-shop style path -> its garment folder; else the id."""
    first = rel.split("/")[0]
    if first.endswith("_final"):
        return first[:-6]
    if first == "img" and rel.count("/") >= 4:
        return _inshop_category(rel)
    return f"super_class_{super_class_id}"


def read_sop(root, skips: SkipLog | None = None, check_files: bool = True) -> RetrievalBenchmark:
    """Stanford Online Products from `root` holding Ebay_train.txt, Ebay_test.txt and the image folders.
    Categories are the super classes, named after their folder (`bicycle_final` -> `bicycle`)."""
    root = require_dir(root, "Stanford Online Products root")
    skips = skips if skips is not None else SkipLog()
    b = _Builder(root, skips, check_files)
    for split, name in (("train", "Ebay_train.txt"), ("test", "Ebay_test.txt")):
        path = _find_list(root, name, ".", f"SOP split list {name}")
        lines = path.read_text().splitlines()
        expected = ["image_id", "class_id", "super_class_id", "path"]
        if not lines or lines[0].split() != expected:
            raise DataFormatError(path, f"header is {lines[0][:60] if lines else ''!r}", line=1, expected=" ".join(expected))
        for i, line in enumerate(lines[1:], start=2):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 4:
                raise DataFormatError(path, f"{len(parts)} fields in {line[:80]!r}", line=i, expected="4 fields: " + " ".join(expected))
            for f, v in zip(expected[:3], parts[:3]):
                _int(path, i, f, v)
            b.add(split, parts[3], f"class_{parts[1]}", _sop_category(parts[3], parts[2]), None)
    splits = b.finish(["train", "test"])
    return RetrievalBenchmark("sop", root, splits["train"], splits["test"], splits["test"], b.category_names(),
                              queries_in_gallery=True, skips=skips)


def _inshop_category(rel: str) -> str:
    """`img/WOMEN/Dresses/id_00000002/02_1_front.jpg` -> `Dresses`; else the folder above the item's."""
    parts = rel.split("/")
    return parts[2] if len(parts) >= 5 and parts[0] == "img" else (parts[-3] if len(parts) >= 3 else "all")


def read_inshop(root, skips: SkipLog | None = None, check_files: bool = True) -> RetrievalBenchmark:
    """DeepFashion In-shop from `root` (list_eval_partition.txt in root or root/Eval; list_bbox_inshop.txt,
    optional, in root or root/Anno). Categories are the garment folders of the image paths."""
    root = require_dir(root, "DeepFashion In-shop root")
    skips = skips if skips is not None else SkipLog()
    part = _find_list(root, "list_eval_partition.txt", "Eval", "In-shop evaluation partition")
    _, rows = _read_counted(part, ["image_name", "item_id", "evaluation_status"], 3)
    try:
        boxes = read_bbox_list(_find_list(root, "list_bbox_inshop.txt", "Anno", "In-shop bounding boxes"))
    except DataFormatError as e:
        if "missing file" not in e.problem:
            raise
        boxes = {}
    img_root = _image_root(root, rows[0][1][0]) if rows else root
    b = _Builder(img_root, skips, check_files)
    for lineno, (name, item, status, *_) in rows:
        if status not in ("train", "query", "gallery"):
            raise DataFormatError(part, f"status {status!r}", line=lineno, field="evaluation_status",
                                  expected="train, query or gallery")
        b.add(status, name, item, _inshop_category(name), boxes.get(name))
    s = b.finish(["train", "query", "gallery"])
    return RetrievalBenchmark("inshop", root, s["train"], s["query"], s["gallery"], b.category_names(), skips=skips)


def read_consumer2shop(root, skips: SkipLog | None = None, check_files: bool = True,
                       query_status: str = "test", gallery_status: tuple = ("val", "test")) -> RetrievalBenchmark:
    """DeepFashion Consumer-to-Shop from `root`. Train = every photo of the train pairs; queries = consumer
    photos of `query_status` pairs; gallery = shop photos of `gallery_status` pairs. Category = the top folder
    of the image path (`img/TROUSERS/Chiffon/id_00000001/comsumer_01.jpg` -> `TROUSERS`)."""
    root = require_dir(root, "DeepFashion Consumer-to-Shop root")
    skips = skips if skips is not None else SkipLog()
    part = _find_list(root, "list_eval_partition.txt", "Eval", "Consumer-to-Shop evaluation partition")
    _, rows = _read_counted(part, ["image_pair_name_1", "image_pair_name_2", "item_id", "evaluation_status"], 4)
    try:
        boxes = read_bbox_list(_find_list(root, "list_bbox_consumer2shop.txt", "Anno", "Consumer-to-Shop bounding boxes"))
    except DataFormatError as e:
        if "missing file" not in e.problem:
            raise
        boxes = {}
    img_root = _image_root(root, rows[0][1][0]) if rows else root
    b = _Builder(img_root, skips, check_files)
    seen = {"train": set(), "query": set(), "gallery": set()}

    def add(split, name, item):
        if name not in seen[split]:
            seen[split].add(name)
            parts = name.split("/")
            b.add(split, name, item, parts[1] if len(parts) > 2 else "all", boxes.get(name))

    for lineno, (consumer, shop, item, status, *_) in rows:
        if status not in ("train", "val", "test"):
            raise DataFormatError(part, f"status {status!r}", line=lineno, field="evaluation_status",
                                  expected="train, val or test")
        if status == "train":
            add("train", consumer, item)
            add("train", shop, item)
        if status == query_status:
            add("query", consumer, item)
        if status in gallery_status:
            add("gallery", shop, item)
    s = b.finish(["train", "query", "gallery"])
    return RetrievalBenchmark("consumer2shop", root, s["train"], s["query"], s["gallery"], b.category_names(), skips=skips)


# ------------------------------------------------------------------------------------------ image access

def crop_to_box(img: Image.Image, bbox, margin: float = 0.1) -> Image.Image:
    """Crop around `bbox` enlarged by `margin` of its size on each side, made square (so resizing keeps the
    aspect ratio), clipped to the image. None = the whole image."""
    if bbox is None:
        return img
    x1, y1, x2, y2 = bbox
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    half = max(x2 - x1, y2 - y1) * (0.5 + margin)
    W, H = img.size
    box = (max(0, int(round(cx - half))), max(0, int(round(cy - half))),
           min(W, int(round(cx + half))), min(H, int(round(cy + half))))
    if box[2] <= box[0] or box[3] <= box[1]:
        return img
    return img.crop(box)


def image_to_uint8(img: Image.Image, size: int) -> torch.Tensor:
    """A PIL image as uint8 [3, size, size] (bilinear resize when needed)."""
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


def load_split_images(split: RetailSplit, size: int, use_boxes: bool = True, margin: float = 0.1,
                      skips: SkipLog | None = None, desc: str | None = None,
                      cache_dir=None) -> tuple[torch.Tensor, torch.Tensor]:
    """All images of a split as one uint8 tensor [N, 3, size, size] (cropped around their boxes), for
    training and embedding small datasets from memory. Returns (images, kept index) so that an image that
    fails to load here (skipped and counted) drops out of labels too. `desc`: a progress bar so labelled;
    `cache_dir`: where the decoded split is kept for the next run (images.decode_all)."""
    boxes = split.bboxes if use_boxes else [None] * len(split.paths)

    def decode(i, log):
        img = load_image(split.paths[i], log if skips is not None else None)  # no SkipLog: a bad image raises
        if img is None:
            return None
        return image_to_uint8(crop_to_box(img, boxes[i], margin) if use_boxes else img, size)

    how = {"reader": "retail.load_split_images", "size": size, "use_boxes": use_boxes, "margin": margin,
           "boxes": [list(b) if b is not None else None for b in boxes]}
    return decode_all(split.paths, decode, size, skips, how, cache_dir, desc=desc)


class RetailDataset(Dataset):
    """Yields (image float tensor [3, size, size] in [0, 1], product label, category) per image of a split,
    cropped around its bounding box when it has one. `transform` (optional) maps a PIL image to a tensor and
    replaces the plain resize. Images were checked when the benchmark was read; one that has vanished since
    raises, naming the file."""

    def __init__(self, split: RetailSplit, size: int = 224, use_boxes: bool = True, margin: float = 0.1,
                 transform=None):
        self.split, self.size, self.use_boxes, self.margin, self.transform = split, size, use_boxes, margin, transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i):
        img = load_image(self.split.paths[i])
        if self.use_boxes:
            img = crop_to_box(img, self.split.bboxes[i], self.margin)
        x = self.transform(img) if self.transform else image_to_uint8(img, self.size).float() / 255
        return x, self.split.labels[i], self.split.categories[i]
