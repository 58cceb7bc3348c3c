"""Challenging Fashion Queries (CFQ): the reader of the released layout, and a synthetic CFQ in that layout.

Layout (as released with yahoo/maaf):
    judgments.tsv             one row per annotator judgment; tab-separated with a header; the columns used
                              are subset, query_hash, caption, catalog_hash, accurate (yes | not sure | no),
                              similar (reasonable | somewhat reasonable | not reasonable), case-insensitive;
                              other columns are kept untouched
    equivalent_captions.json  {caption: [paraphrase, ...]}
    images/{hash}.jpeg        query and catalog images

Why a reader of our own rather than pandas.read_csv: a malformed row must be reported with its line and
field, and the three catalog images missing from the release must cost only the judgments that need them
(skipped and counted), never the run.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..cfq_metrics import aggregate_judgments
from .errors import DataFormatError, SkipLog, require_dir, require_file
from .images import check_images, load_image

ACCURATE_VALUES = {"yes": 1, "not sure": 0, "no": -1}  # released code's mapping of the accuracy answer
SIMILAR_VALUES = {"reasonable": 1, "somewhat reasonable": 0, "not reasonable": -1}  # of the similarity answer
REQUIRED_COLUMNS = ("subset", "query_hash", "caption", "catalog_hash", "accurate", "similar")


@dataclass
class CFQData:
    """CFQ as read from disk.

    `judgments`: one row per usable judgment, `accurate` and `similar` numeric in {-1, 0, 1}, hashes as
    strings; judgments needing a missing or corrupt image are dropped and counted in `skips`.
    """

    root: Path
    judgments: pd.DataFrame
    equivalent_captions: dict = field(default_factory=dict)
    skips: SkipLog = field(default_factory=SkipLog)
    dropped_judgments: int = 0  # judgments dropped because an image they need is missing or corrupt

    def image_path(self, image_hash: str) -> Path:
        return self.root / "images" / f"{image_hash}.jpeg"

    def load_image(self, image_hash: str):
        """PIL RGB image of `image_hash`, or None (counted in `skips`) if it cannot be read."""
        return load_image(self.image_path(image_hash), self.skips)

    def aggregated(self) -> pd.DataFrame:
        """Judgments averaged per (subset, query, caption, catalog item), with labels and relevance."""
        return aggregate_judgments(self.judgments)

    def queries(self) -> pd.DataFrame:
        """Distinct (query_hash, caption) pairs: what the model embeds as queries."""
        return self.judgments[["query_hash", "caption"]].drop_duplicates().reset_index(drop=True)

    def catalog(self) -> list[str]:
        """Distinct catalog item hashes, in first-seen order."""
        return list(dict.fromkeys(self.judgments["catalog_hash"]))

    def subsets(self) -> list[str]:
        return sorted(self.judgments["subset"].unique())


def _parse_answer(value: str, mapping: dict, path: Path, line: int, column: str) -> int:
    key = " ".join(value.strip().lower().split())
    if key not in mapping:
        raise DataFormatError(path, f"unknown answer {value!r}", line=line, field=column,
                              expected=" | ".join(mapping))
    return mapping[key]


def read_judgments(path) -> pd.DataFrame:
    """Parse judgments.tsv into a frame with numeric `accurate` / `similar`; every problem names its line."""
    path = require_file(path, "CFQ judgments.tsv")
    rows = []
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        try:
            header = next(reader)
        except StopIteration:
            raise DataFormatError(path, "empty file", line=1, expected="a header row") from None
        header = [h.strip() for h in header]
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise DataFormatError(path, f"header lacks columns {missing}", line=1,
                                  expected="tab-separated columns including " + ", ".join(REQUIRED_COLUMNS))
        for line_no, fields in enumerate(reader, start=2):
            if not fields or all(not f.strip() for f in fields):
                continue
            if len(fields) != len(header):
                raise DataFormatError(path, f"{len(fields)} fields", line=line_no,
                                      expected=f"{len(header)} tab-separated fields as in the header")
            row = dict(zip(header, fields))
            for col in ("subset", "query_hash", "caption", "catalog_hash"):
                if not row[col].strip():
                    raise DataFormatError(path, "empty value", line=line_no, field=col, expected="a non-empty string")
                row[col] = row[col].strip()
            row["accurate"] = _parse_answer(row["accurate"], ACCURATE_VALUES, path, line_no, "accurate")
            row["similar"] = _parse_answer(row["similar"], SIMILAR_VALUES, path, line_no, "similar")
            row["line"] = line_no
            rows.append(row)
    if not rows:
        raise DataFormatError(path, "no judgments", expected="at least one row after the header")
    return pd.DataFrame(rows)


def read_equivalent_captions(path) -> dict:
    """{caption: [paraphrases]}; the file is optional (the metrics do not use it), a malformed one is not."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataFormatError(path, f"invalid JSON ({e.msg})", line=e.lineno) from None
    if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, list) and all(isinstance(s, str) for s in v) for k, v in data.items()):
        raise DataFormatError(path, "wrong structure", expected="an object {caption: [paraphrase, ...]}")
    return data


def read_cfq(root, skips: SkipLog | None = None, verify_images: bool = True) -> CFQData:
    """Read a CFQ folder. Judgments whose query or catalog image is missing or corrupt are dropped, the
    image counted once in `skips` (three catalog images are known to be missing from the release)."""
    root = require_dir(root, "CFQ data root")
    skips = skips if skips is not None else SkipLog()
    judgments = read_judgments(root / "judgments.tsv")
    equivalent = read_equivalent_captions(root / "equivalent_captions.json")
    require_dir(root / "images", "CFQ images/ folder")
    hashes = list(dict.fromkeys(list(judgments["query_hash"]) + list(judgments["catalog_hash"])))
    paths = [root / "images" / f"{h}.jpeg" for h in hashes]
    if verify_images:
        usable = dict(zip(hashes, check_images(paths, skips)))
    else:
        usable = {}
        for h, p in zip(hashes, paths):
            usable[h] = p.is_file()
            if not usable[h]:
                skips.add(p, "missing image")
    keep = judgments["query_hash"].map(usable) & judgments["catalog_hash"].map(usable)
    data = CFQData(root=root, judgments=judgments[keep].reset_index(drop=True), equivalent_captions=equivalent,
                   skips=skips, dropped_judgments=int((~keep).sum()))
    if data.judgments.empty:
        raise DataFormatError(root / "images", "no judgment has both its images readable",
                              expected="images/{hash}.jpeg for the hashes in judgments.tsv")
    return data
