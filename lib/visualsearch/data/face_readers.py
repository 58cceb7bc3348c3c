"""Readers of the face datasets in their published formats: FairFace, UTKFace, FER2013, folder-per-identity.

Why: the face notebook runs on the synthetic faces world by default and on real data under `data_root`; both
go through these readers, so a researcher swapping in FairFace or FER2013 gets the same tables. Every reader
returns a pandas DataFrame with one row per usable image and the same column names where they apply:

    file (absolute path) | identity | age_bin (index into FairFace's 9 bins, -1 unknown) | age_years (NaN
    unknown) | gender | race | emotion   (strings, "" when the dataset has no such label)

Malformed rows raise DataFormatError naming the file, line, field and what was expected. Missing or corrupt
images are skipped and counted in the SkipLog passed in (without one they raise, so nothing is skipped
silently).
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .errors import DataFormatError, SkipLog, require_dir, require_file
from .face_labels import AGE_BINS, GENDERS, RACES, age_bin
from .images import check_images, decode_all, load_image

FER_EMOTIONS = ("angry", "disgust", "fear", "happy", "sad", "surprised", "neutral")  # FER2013 label order 0..6
FER_USAGES = ("Training", "PublicTest", "PrivateTest")
UTK_RACES = ("White", "Black", "Asian", "Indian", "Others")  # UTKFace race codes 0..4
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
COLUMNS = ("file", "identity", "age_bin", "age_years", "gender", "race", "emotion")


def _keep_readable(df: pd.DataFrame, skips: SkipLog | None, what: str) -> pd.DataFrame:
    """Drop rows whose image is missing or corrupt (counted in `skips`; without `skips`, raise)."""
    log = skips if skips is not None else SkipLog()
    ok = check_images(df["file"], log)
    if skips is None and not all(ok):
        bad = df["file"][[not o for o in ok]].iloc[0]
        raise DataFormatError(bad, f"{what} image is missing or cannot be decoded "
                              f"({log}); pass a SkipLog to skip and count such images")
    return df[ok].reset_index(drop=True)


def read_fairface(csv_path, image_root=None, skips: SkipLog | None = None, check: bool = True) -> pd.DataFrame:
    """Read a FairFace label file (`fairface_label_train.csv` / `_val.csv`).

    Required columns `file,age,gender,race,service_test` (age one of the 9 FairFace bins, gender
    Male/Female, race one of FairFace's 7 groups, service_test True/False); optional `emotion` (FER names),
    `identity` and `age_years` columns, which the synthetic world adds. `file` is relative to `image_root`
    (default: the CSV's folder), as in the FairFace release (`train/1.jpg`).
    """
    path = require_file(csv_path, "FairFace label CSV")
    root = Path(image_root) if image_root is not None else path.parent
    rows = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in ("file", "age", "gender", "race", "service_test") if c not in header]
        if missing:
            raise DataFormatError(path, f"header lacks column(s) {missing}", line=1,
                                  expected="columns file,age,gender,race,service_test[,emotion,identity,age_years]")
        for rec in reader:
            line = reader.line_num

            def bad(fld, expected):
                raise DataFormatError(path, f"bad value {rec.get(fld)!r}", line=line, field=fld, expected=expected)

            if None in rec or any(v is None for v in rec.values()):
                raise DataFormatError(path, "wrong number of fields", line=line, expected=f"{len(header)} fields")
            if not rec["file"].strip():
                bad("file", "a relative image path")
            if rec["age"] not in AGE_BINS:
                bad("age", "one of " + ", ".join(AGE_BINS))
            if rec["gender"] not in GENDERS:
                bad("gender", "Male or Female")
            if rec["race"] not in RACES:
                bad("race", "one of " + ", ".join(RACES))
            if rec["service_test"] not in ("True", "False"):
                bad("service_test", "True or False")
            emotion = rec.get("emotion", "")
            if emotion and emotion not in FER_EMOTIONS:
                bad("emotion", "one of " + ", ".join(FER_EMOTIONS))
            years = math.nan
            if rec.get("age_years", ""):
                try:
                    years = float(rec["age_years"])
                except ValueError:
                    bad("age_years", "a number of years")
                if not 0 <= years <= 120:
                    bad("age_years", "years in [0, 120]")
            rows.append({"file": str(root / rec["file"]), "identity": rec.get("identity", ""),
                         "age_bin": AGE_BINS.index(rec["age"]), "age_years": years, "gender": rec["gender"],
                         "race": rec["race"], "emotion": emotion})
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    return _keep_readable(df, skips, "FairFace") if check else df


def parse_utkface_name(name: str):
    """(age, gender, race) from a UTKFace file name `age_gender_race_date.jpg[.chip.jpg]`.

    Raises ValueError(field, expected) when a field is malformed.
    """
    parts = name.split(".")[0].split("_")
    if len(parts) != 4:
        raise ValueError("name", "4 fields age_gender_race_date separated by '_'")
    age, gender, race, date = parts
    if not age.isdigit() or not 0 <= int(age) <= 116:
        raise ValueError("age", "an integer age 0-116")
    if gender not in ("0", "1"):
        raise ValueError("gender", "0 (male) or 1 (female)")
    if race not in ("0", "1", "2", "3", "4"):
        raise ValueError("race", "0-4 (White, Black, Asian, Indian, Others)")
    if not date.isdigit():
        raise ValueError("date", "a digit date-time stamp")
    return int(age), GENDERS[int(gender)], UTK_RACES[int(race)]


def read_utkface(folder, skips: SkipLog | None = None, check: bool = True) -> pd.DataFrame:
    """Read UTKFace from its image folder; labels come from the file names `age_gender_race_date.jpg`.

    The real release has a few malformed names: with a SkipLog they are skipped and counted, without one
    they raise DataFormatError naming the file and field.
    """
    folder = require_dir(folder, "UTKFace image folder")
    rows = []
    for p in sorted(folder.iterdir()):
        if not p.is_file() or not p.name.lower().endswith(IMAGE_EXTENSIONS):
            continue
        try:
            age, gender, race = parse_utkface_name(p.name)
        except ValueError as e:
            fld, expected = e.args
            if skips is None:
                raise DataFormatError(p, "malformed UTKFace file name", field=fld, expected=expected) from None
            skips.add(p, "malformed UTKFace file name")
            continue
        rows.append({"file": str(p), "identity": "", "age_bin": age_bin(age), "age_years": float(age),
                     "gender": gender, "race": race, "emotion": ""})
    if not rows:
        raise DataFormatError(folder, "no UTKFace images found", expected="files named age_gender_race_date.jpg")
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    return _keep_readable(df, skips, "UTKFace") if check else df


def read_fer2013(csv_path) -> tuple[np.ndarray, pd.DataFrame]:
    """Read FER2013 (`emotion,pixels,Usage`; 48x48 grey pixels as 2304 space-separated integers 0-255).

    Returns (images uint8 [N, 48, 48], DataFrame with `emotion` (FER_EMOTIONS names) and `usage`).
    """
    path = require_file(csv_path, "FER2013 CSV")
    images, rows = [], []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in ("emotion", "pixels", "Usage") if c not in header]
        if missing:
            raise DataFormatError(path, f"header lacks column(s) {missing}", line=1, expected="emotion,pixels,Usage")
        for rec in reader:
            line = reader.line_num
            if None in rec or any(v is None for v in rec.values()):
                raise DataFormatError(path, "wrong number of fields", line=line, expected="emotion,pixels,Usage")
            e = rec["emotion"].strip()
            if not e.isdigit() or int(e) > 6:
                raise DataFormatError(path, f"bad value {e!r}", line=line, field="emotion", expected="an integer 0-6")
            try:
                px = np.array(rec["pixels"].split(), dtype=np.int64)
            except ValueError:
                raise DataFormatError(path, "pixels are not integers", line=line, field="pixels",
                                      expected="2304 space-separated integers 0-255") from None
            if px.size != 48 * 48 or px.min() < 0 or px.max() > 255:
                raise DataFormatError(path, f"{px.size} pixel values in [{px.min()}, {px.max()}]", line=line,
                                      field="pixels", expected="2304 space-separated integers 0-255")
            if rec["Usage"] not in FER_USAGES:
                raise DataFormatError(path, f"bad value {rec['Usage']!r}", line=line, field="Usage",
                                      expected=" / ".join(FER_USAGES))
            images.append(px.astype(np.uint8).reshape(48, 48))
            rows.append({"emotion": FER_EMOTIONS[int(e)], "usage": rec["Usage"]})
    if not rows:
        raise DataFormatError(path, "no rows", expected="one row per 48x48 face")
    return np.stack(images), pd.DataFrame(rows)


def write_fer2013(path, images: np.ndarray, emotions, usages) -> Path:
    """Write FER2013's `fer2013.csv`: header `emotion,pixels,Usage`, one row per 48x48 grey face (`images` uint8
    [N, 48, 48]; `emotions` FER_EMOTIONS names, written as their index 0-6; `usages` among FER_USAGES)."""
    images = np.asarray(images)
    if images.ndim != 3 or images.shape[1:] != (48, 48) or images.dtype != np.uint8:
        raise ValueError(f"FER2013 faces are uint8 [N, 48, 48], got {images.dtype} {list(images.shape)}")
    if not len(images) == len(emotions) == len(usages):
        raise ValueError(f"{len(images)} faces, {len(emotions)} emotions and {len(usages)} usages")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["emotion", "pixels", "Usage"])
        for img, emotion, usage in zip(images, emotions, usages):
            if emotion not in FER_EMOTIONS or usage not in FER_USAGES:
                raise ValueError(f"emotion {emotion!r} / usage {usage!r}: expected one of {FER_EMOTIONS} / {FER_USAGES}")
            w.writerow([FER_EMOTIONS.index(emotion), " ".join(map(str, img.reshape(-1).tolist())), usage])
    return path


def read_identity_folders(root, skips: SkipLog | None = None, min_images: int = 1, check: bool = True) -> pd.DataFrame:
    """Read a folder-per-identity set (`root/<identity>/<image>`: CASIA-WebFace, VGGFace2, CelebA by id).

    Identities with fewer than `min_images` readable images are dropped (they cannot be split or sampled).
    """
    root = require_dir(root, "folder-per-identity root")
    rows = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        for p in sorted(d.iterdir()):
            if p.is_file() and p.name.lower().endswith(IMAGE_EXTENSIONS):
                rows.append({"file": str(p), "identity": d.name, "age_bin": -1, "age_years": math.nan,
                             "gender": "", "race": "", "emotion": ""})
    if not rows:
        raise DataFormatError(root, "no identity folders with images", expected="root/<identity>/<image>.jpg")
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    if check:
        df = _keep_readable(df, skips, "identity")
    counts = df["identity"].value_counts()
    return df[df["identity"].map(counts) >= min_images].reset_index(drop=True)


def load_face_tensor(files, size: int, skips: SkipLog | None = None, cache_dir=None) -> tuple[torch.Tensor, np.ndarray]:
    """Load images as a uint8 tensor [N, 3, size, size] (resized with area averaging), decoded in threads and,
    with `cache_dir`, kept there for the next run (images.decode_all).

    Returns (images, kept): `kept` marks which files loaded; the others are skipped and counted in `skips`.
    """
    files = [str(f) for f in files]

    def decode(i, log):
        im = load_image(files[i], log if skips is not None else None)  # no SkipLog: a bad image raises
        if im is None:
            return None
        if im.size != (size, size):
            im = im.resize((size, size), resample=2 if min(im.size) < size else 4)  # bilinear up, box down
        return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)

    images, kept = decode_all(files, decode, size, skips, {"reader": "face_readers.load_face_tensor", "size": size},
                              cache_dir)
    mask = np.zeros(len(files), bool)
    mask[kept.numpy()] = True
    return images.contiguous(), mask


def grey_to_tensor(images: np.ndarray, size: int) -> torch.Tensor:
    """FER2013 grey 48x48 arrays -> uint8 RGB tensor [N, 3, size, size] (grey copied into 3 channels)."""
    x = torch.from_numpy(images).float().unsqueeze(1)
    if size != images.shape[-1]:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
