"""The face paper's data: three splits of disjoint people at the model's input size, from the synthetic faces
world (data_root None) or real data under data_root.

Each split's images are one in-memory `ImageStore` (uint8 [N, 3, S, S]); its labels (attributes, identity,
exact age) live in `FaceSplit` beside it, indexed like the store. No model is imported here, so tables and
figures may use these classes and ATTRIBUTES.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ...data.errors import DataFormatError, SkipLog
from ...data.face_labels import AGE_BINS, GENDERS, RACES
from ...data.face_readers import (FER_EMOTIONS, grey_to_tensor, load_face_tensor, read_fairface, read_fer2013,
                                  read_identity_folders)
from ...data.faces import FacesWorldConfig, build_faces, world_params
from ...data.images import ImageStore
from ...data.worlds import cache_root, ensure_world, fingerprint_dir

ATTRIBUTES = ("age", "gender", "ethnicity", "emotion")


def pattern_name(pattern: dict) -> str:
    """'age@1 gender@4 ...': attribute@branch depth, the name of a sharing pattern in every table (here, beside
    ATTRIBUTES, so that tables and claims name patterns without importing the FLOP counting of `sharing`)."""
    return " ".join(f"{a}@{d}" for a, d in pattern.items())


@dataclass
class FaceSplit:
    images: ImageStore                   # uint8 [N, 3, S, S], in memory
    labels: dict                         # attribute -> LongTensor [N] (class index, -1 = not labelled)
    identity: torch.Tensor               # LongTensor [N] (index into FaceData.identities, -1 = unknown)
    age_years: torch.Tensor              # float [N] (NaN = unknown; then MAE uses the true bin's centre)

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class FaceData:
    pretrain: FaceSplit                  # identity pretraining images (labels: identity only)
    train: FaceSplit                     # attribute fine-tuning images (people unseen in pretraining)
    test: FaceSplit                      # attribute test images (people unseen in both)
    vocab: dict                          # attribute -> tuple of class names
    n_identities: int                    # identities of the pretraining split
    description: str                     # what the data are, for every table
    fingerprint: str                     # changes when the data change (cache keys, provenance)
    skips: SkipLog = field(default_factory=SkipLog)


def _split_from_frame(df: pd.DataFrame, size: int, vocab: dict, skips: SkipLog, id_index: dict | None = None) -> FaceSplit:
    images, kept = load_face_tensor(df["file"], size, skips, cache_root() / "decoded")
    df = df[kept].reset_index(drop=True)
    labels = {
        "age": torch.tensor(df["age_bin"].to_numpy(), dtype=torch.long),
        "gender": torch.tensor([vocab["gender"].index(g) if g else -1 for g in df["gender"]], dtype=torch.long),
        "ethnicity": torch.tensor([vocab["ethnicity"].index(r) if r else -1 for r in df["race"]], dtype=torch.long),
        "emotion": torch.tensor([vocab["emotion"].index(e) if e else -1 for e in df["emotion"]], dtype=torch.long),
    }
    if id_index is None:  # people of an attribute split are indexed among themselves (for identity checks)
        id_index = {n: i for i, n in enumerate(sorted(set(df["identity"]) - {""}))}
    ids = torch.tensor([id_index.get(i, -1) for i in df["identity"]], dtype=torch.long)
    return FaceSplit(ImageStore(size, images), labels, ids,
                     torch.tensor(df["age_years"].to_numpy(dtype=np.float32)))


def _cat(a: FaceSplit, b: FaceSplit) -> FaceSplit:
    return FaceSplit(ImageStore(a.images.size, torch.cat([a.images.pixels, b.images.pixels])),
                     {k: torch.cat([a.labels[k], b.labels[k]]) for k in a.labels},
                     torch.cat([a.identity, b.identity]), torch.cat([a.age_years, b.age_years]))


def _emotion_vocab(*frames) -> tuple:
    present = set().union(*(set(f["emotion"]) for f in frames)) - {""}
    return tuple(e for e in FER_EMOTIONS if e in present)


def world_config(p) -> FacesWorldConfig:
    """The faces world of the notebook's `world` parameters."""
    return FacesWorldConfig(**dict(p["world"]))


def real_paths(p) -> dict:
    """{what: path} of everything read under data_root (the paths in p.data, relative to it)."""
    root, d = Path(p["data_root"]), p["data"]
    out = {"identity folders (data.identity_dir)": root / d["identity_dir"],
           "FairFace training labels (data.fairface_train)": root / d["fairface_train"],
           "FairFace test labels (data.fairface_val)": root / d["fairface_val"],
           "FairFace image root (data.fairface_images)": root / d["fairface_images"]}
    if d.get("fer2013"):
        out["FER2013 CSV (data.fer2013)"] = root / d["fer2013"]
    return out


def require_settings(p) -> None:
    """With a data root, check that every file and folder the notebook reads is there, all named at once,
    before anything is read or trained (DataFormatError)."""
    if not p.get("data_root"):
        return
    missing = [f"{what}: {path}" for what, path in real_paths(p).items()
               if not (path.is_dir() if ("folders" in what or "root" in what) else path.is_file())]
    if missing:
        raise DataFormatError(p["data_root"], "missing under the data root:\n  - " + "\n  - ".join(missing),
                              expected="the layout of p.data (configs/face_attribute_sharing/default.yaml)")


def load_data(p, skips: SkipLog | None = None) -> FaceData:
    """The three splits at the model's input size, from the synthetic world (data_root None) or real data.

    Real data under data_root (paths in p.data): a folder-per-identity set for pretraining, FairFace
    label CSVs for age/gender/race (emotion too if they have the column), and optionally FER2013 for
    emotion (Training rows join the attribute-training split, PublicTest/PrivateTest the test split).
    Attributes a dataset lacks are -1 and left out of that attribute's training and scoring.
    """
    skips = skips if skips is not None else SkipLog()
    require_settings(p)
    size = p["model"]["input_size"]
    if p.get("data_root"):
        root = Path(p["data_root"])
        d = p["data"]
        ids_df = read_identity_folders(root / d["identity_dir"], skips, min_images=d["min_images_per_identity"])
        train_df = read_fairface(root / d["fairface_train"], root / d["fairface_images"], skips)
        test_df = read_fairface(root / d["fairface_val"], root / d["fairface_images"], skips)
        description = f"real: identities from {d['identity_dir']}, FairFace {d['fairface_train']} / {d['fairface_val']}"
        fer = None
        if d.get("fer2013"):
            fer_images, fer_df = read_fer2013(root / d["fer2013"])
            fer = (grey_to_tensor(fer_images, size), fer_df)
            description += f", emotion from FER2013 {d['fer2013']}"
        fingerprint = fingerprint_dir(root)
    else:
        wcfg = world_config(p)
        folder = ensure_world("faces", world_params(wcfg), build_faces)
        ids_df = read_identity_folders(folder / "identities", skips)
        train_df = read_fairface(folder / "fairface" / "fairface_label_train.csv", skips=skips)
        test_df = read_fairface(folder / "fairface" / "fairface_label_val.csv", skips=skips)
        fer = None
        description = (f"synthetic faces world ({wcfg.n_pretrain_identities} pretraining identities, "
                       f"{wcfg.n_train_identities}/{wcfg.n_val_identities} attribute train/test identities, "
                       f"{wcfg.photos_per_identity} photos each; FairFace format)")
        fingerprint = fingerprint_dir(folder)
    names = sorted(set(ids_df["identity"]))
    id_index = {n: i for i, n in enumerate(names)}
    frames = [train_df, test_df] + ([fer[1]] if fer else [])
    vocab = {"age": AGE_BINS, "gender": GENDERS, "ethnicity": RACES, "emotion": _emotion_vocab(*frames)}
    if not vocab["emotion"]:
        raise DataFormatError(p.get("data_root") or "faces world", "no emotion labels in any attribute set",
                              expected="an emotion column in the FairFace-style CSV or data.fer2013")
    pretrain = _split_from_frame(ids_df, size, vocab, skips, id_index)
    train_split = _split_from_frame(train_df, size, vocab, skips)
    test_split = _split_from_frame(test_df, size, vocab, skips)
    if fer is not None:
        fer_images, fer_df = fer
        def fer_split(mask):
            n = int(mask.sum())
            lab = {a: torch.full((n,), -1, dtype=torch.long) for a in ATTRIBUTES}
            lab["emotion"] = torch.tensor([vocab["emotion"].index(e) for e in fer_df["emotion"][mask]], dtype=torch.long)
            return FaceSplit(ImageStore(size, fer_images[torch.from_numpy(np.array(mask))]), lab,
                             torch.full((n,), -1, dtype=torch.long), torch.full((n,), float("nan")))
        is_train = (fer_df["usage"] == "Training").to_numpy()
        train_split = _cat(train_split, fer_split(is_train))
        test_split = _cat(test_split, fer_split(~is_train))
    return FaceData(pretrain, train_split, test_split, vocab, len(names), description, fingerprint, skips)
