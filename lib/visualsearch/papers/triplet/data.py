"""The triplet paper's data: the In-shop (or Consumer-to-Shop) and SOP style benchmarks as image stores with
product labels, read from the real layouts under a data root or from the synthetic products world."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from ...data.errors import SkipLog
from ...data.images import ImageStore, load_image
from ...data.products import ProductsWorldConfig, products_world, read_attributes
from ...data.retail import (RetailSplit, crop_to_box, image_to_uint8, load_split_images, read_consumer2shop,
                            read_inshop, read_sop)
from ...data.worlds import cache_root, fingerprint_dir
from ...progress import stage


@dataclass
class ProductImages:
    """Images of one split (an ImageStore: uint8 [N, 3, S, S] in memory when small, the synthetic world; else
    read from disk on request, real datasets, cropped around boxes) with their product labels and categories."""

    store: ImageStore                       # the images, indexed like the labels
    labels: torch.Tensor                    # [N] product label
    categories: torch.Tensor                # [N] category index
    item_ids: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def size(self) -> int:
        """Side of the square images handed to the model."""
        return self.store.size

    @property
    def paths(self) -> list:
        """The image files kept (after skipped ones), in order."""
        return self.store.paths


def split_decoder(split: RetailSplit, size: int, use_boxes: bool = True):
    """i -> uint8 [3, size, size] of image i of `split`, cropped around its box when `use_boxes`."""
    def decode(i):
        img = load_image(split.paths[i])
        if use_boxes:
            img = crop_to_box(img, split.bboxes[i])
        return image_to_uint8(img, size)

    return decode


def load_images(split: RetailSplit, size: int, use_boxes: bool = True, in_memory: bool = True,
                skips=None, desc: str | None = None) -> ProductImages:
    """The ProductImages of `split`; in memory, images that fail to load are skipped and counted in `skips`
    (`desc`: a progress bar so labelled while they load), and the decoded split is kept in the cache
    (`.cache/decoded/`, images.decode_all) for the next run."""
    if in_memory:
        images, kept = load_split_images(split, size, use_boxes=use_boxes, skips=skips, desc=desc,
                                         cache_dir=cache_root() / "decoded")
        keep = kept.tolist()
        return ProductImages(ImageStore(size, images, [split.paths[i] for i in keep]),
                             torch.tensor(split.labels)[kept] if len(keep) else torch.zeros(0, dtype=torch.long),
                             torch.tensor(split.categories)[kept] if len(keep) else torch.zeros(0, dtype=torch.long),
                             item_ids=[split.item_ids[i] for i in keep])
    return ProductImages(ImageStore(size, paths=list(split.paths), decode=split_decoder(split, size, use_boxes)),
                         split.label_tensor(), split.category_tensor(), item_ids=list(split.item_ids))


def attribute_targets(item_ids: list, attributes: pd.DataFrame, names=("category", "colour", "pattern")) -> dict:
    """Per-image integer targets of the world's attributes (for pretraining), from the item ids of a
    ProductImages (`class_<pid>` in SOP lists, `id_<pid>` in In-shop lists) and attributes.csv."""
    pid = [int(s.rsplit("_", 1)[1]) for s in item_ids]
    att = attributes.set_index("product_id").loc[pid]
    out = {}
    for name in names:
        values = sorted(attributes[name].unique())
        out[name] = torch.tensor([values.index(v) for v in att[name]], dtype=torch.long)
    return out


@dataclass
class TripletData:
    """Everything the notebook evaluates on: an In-shop style benchmark (query vs gallery, boxes) and an
    SOP style one (every test image queries the others), as ProductImages at the model's input size."""

    inshop_train: ProductImages
    inshop_query: ProductImages
    inshop_gallery: ProductImages
    sop_train: ProductImages
    sop_test: ProductImages
    inshop_categories: list
    sop_categories: list
    inshop_name: str              # dataset label in tables
    sop_name: str
    description: str              # data label in tables ("synthetic products world ..." or the real names)
    fingerprint: str
    skips: object                 # SkipLog
    attributes: pd.DataFrame | None = None   # synthetic world only: attributes.csv
    folder: object = None


def resolve(root, rel) -> Path:
    """`rel` under `root`, unless it is absolute."""
    rel = Path(rel)
    return rel if rel.is_absolute() else Path(root) / rel


def load_data(p) -> TripletData:
    """The synthetic products world (p.data_root is None) or the real datasets under p.data_root:
    p.data.inshop_dir (In-shop, or Consumer-to-Shop when p.data.inshop_benchmark says so) and p.data.sop_dir."""
    skips = SkipLog()
    size, mem = p.model.input_size, p.data.in_memory
    # In memory, every image is decoded once, when it is loaded (a bad one is skipped and counted there): the
    # readers need not decode it first to check it. Read from disk per batch, the readers check each image.
    check = not mem
    with stage("reading the In-shop and SOP lists" + (" (every image is decoded once to check it)" if check else "")):
        if p.data_root is None:
            folder = products_world(ProductsWorldConfig(**p.world.to_dict()))
            inshop, sop = read_inshop(folder, skips, check), read_sop(folder, skips, check)
            att = read_attributes(folder)
            names = ("synthetic products (In-shop format)", "synthetic products (SOP format)")
            desc = f"synthetic products world {folder.name}"
            fp = fingerprint_dir(folder)
        else:
            ins_root = resolve(p.data_root, p.data.inshop_dir)
            if p.data.inshop_benchmark == "consumer2shop":
                inshop, names0 = read_consumer2shop(ins_root, skips, check), "DeepFashion Consumer-to-Shop"
            elif p.data.inshop_benchmark == "inshop":
                inshop, names0 = read_inshop(ins_root, skips, check), "DeepFashion In-shop"
            else:
                raise ValueError("data.inshop_benchmark must be inshop or consumer2shop, "
                                 f"got {p.data.inshop_benchmark!r}")
            sop_root = resolve(p.data_root, p.data.sop_dir)
            sop = read_sop(sop_root, skips, check)
            att, folder = None, None
            names = (names0, "Stanford Online Products")
            desc = f"{names0} ({ins_root}) and Stanford Online Products ({sop_root})"
            fp = fingerprint_dir(ins_root)[:8] + fingerprint_dir(sop_root)[:8]
    sets = dict(
        inshop_train=load_images(inshop.train, size, True, mem, skips, "reading In-shop train images"),
        inshop_query=load_images(inshop.query, size, True, mem, skips, "reading In-shop query images"),
        inshop_gallery=load_images(inshop.gallery, size, True, mem, skips, "reading In-shop gallery images"),
        sop_train=load_images(sop.train, size, False, mem, skips, "reading SOP train images"),
        sop_test=load_images(sop.query, size, False, mem, skips, "reading SOP test images"))
    roots = {"inshop": inshop.root, "sop": sop.root}
    kept = kept_images_digest({k: (v.paths, roots[k.split("_")[0]]) for k, v in sets.items()})
    return TripletData(**sets, inshop_categories=inshop.category_names, sop_categories=sop.category_names,
                       inshop_name=names[0], sop_name=names[1], description=desc, fingerprint=f"{fp}-{kept}",
                       skips=skips, attributes=att, folder=folder)


def kept_images_digest(sets: dict) -> str:
    """Hash of the images each set kept after skipped files ({name: (paths, root)}; paths relative to their
    root, so that the same dataset in another folder has the same digest): part of the data fingerprint, so
    that a result computed from one set of images is never reused for another."""
    h = hashlib.sha256()
    for name in sorted(sets):
        paths, root = sets[name]
        h.update(f"{name}:{len(paths)}\n".encode())
        for path in paths:
            h.update(os.path.relpath(path, root).encode() + b"\n")
    return h.hexdigest()[:8]


def data_summary(d: TripletData) -> pd.DataFrame:
    rows = []
    for bench, sets in ((d.inshop_name, ("inshop_train", "inshop_query", "inshop_gallery")),
                        (d.sop_name, ("sop_train", "sop_test"))):
        for s in sets:
            im = getattr(d, s)
            rows.append({"benchmark": bench, "split": s.split("_", 1)[1], "images": len(im),
                         "products": len(set(im.labels.tolist())), "categories": len(set(im.categories.tolist()))})
    return pd.DataFrame(rows)


def lookalike_groups_of(d: TripletData, images: ProductImages) -> torch.Tensor | None:
    """Look-alike group per image (synthetic world only)."""
    if d.attributes is None:
        return None
    grp = d.attributes.set_index("product_id").group
    return torch.tensor([int(grp[int(s.rsplit("_", 1)[1])]) for s in images.item_ids])
