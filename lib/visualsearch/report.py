"""Tables, figures, claim checks and their provenance: everything a notebook writes goes through here.

Why: a reader of results/ must be able to tell, for every number, which code, parameters, data and
machine produced it, and how it compares with what the paper published. So every table is tidy (one row
per method, dataset, metric) with `reproduced` beside `reported`; every figure is saved as PNG and PDF at
a fixed size in one theme; every file gets a provenance sidecar; every write is atomic.
"""
from __future__ import annotations

import io
import json
import math
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import pandas as pd

from . import atomic
from .config import repo_root

TIDY_COLUMNS = ["method", "dataset", "metric", "reproduced", "reported", "reported_source", "data", "preset"]
FIGSIZES = {"single": (4.0, 3.0), "wide": (8.0, 3.2), "square": (4.5, 4.5), "grid": (8.0, 6.0), "tall": (8.0, 9.0)}
PACKAGES = ("torch", "torchvision", "numpy", "pandas", "scikit-learn", "matplotlib", "seaborn", "papermill",
            "sentence-transformers", "transformers", "faiss-cpu")


def set_theme() -> None:
    """The one plotting theme of the companion (seaborn paper context, white grid)."""
    import matplotlib
    import seaborn as sns

    sns.set_theme(context="paper", style="whitegrid", palette="colorblind")
    matplotlib.rcParams.update({"figure.dpi": 110, "savefig.dpi": 150, "savefig.bbox": "tight",
                                "pdf.fonttype": 42})


def figsize(kind: str = "single") -> tuple[float, float]:
    """Fixed figure sizes (inches): single, wide, square, grid, tall."""
    if kind not in FIGSIZES:
        raise ValueError(f"unknown figure size '{kind}' (valid: {', '.join(FIGSIZES)})")
    return FIGSIZES[kind]


OUTPUT_DIRS = ("results", "figures")  # what the notebooks write: not part of the code a result came from


def git_state(root: Path | None = None) -> dict:
    """The commit, and whether the code differs from it: changes under results/ and figures/ do not count,
    since a run writes there itself (every result of a run over a clean checkout would read dirty)."""
    root = root or repo_root()
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10).stdout.strip() or "unknown"
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "."]
                                    + [f":(exclude){d}" for d in OUTPUT_DIRS], cwd=root,
                                    capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "unknown", None
    return {"commit": commit, "dirty": dirty}


def package_versions() -> dict:
    out = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def device_description(device: str) -> str:
    import torch

    if str(device).startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def markdown_table(df: pd.DataFrame, floatfmt: str = ".3f") -> str:
    """A GitHub markdown table of `df` (no extra dependency); NaN shown as an empty cell."""
    def cell(v):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        if isinstance(v, float):
            return format(v, floatfmt)
        return str(v).replace("|", "\\|").replace("\n", " ")

    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- published numbers

def reported_numbers(paper: str) -> pd.DataFrame:
    """The published numbers of `paper` (lib/visualsearch/reported/<paper>.csv): columns paper, table,
    method, dataset, metric, value, source, status. `value` is NaN where the number is not transcribed."""
    path = Path(__file__).resolve().parent / "reported" / f"{paper}.csv"
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.csv"))
        raise FileNotFoundError(f"no reported numbers for paper '{paper}' ({path}); known: {', '.join(known)}")
    return pd.read_csv(path, comment="#")


def with_reported(df: pd.DataFrame, paper: str) -> pd.DataFrame:
    """Fill `reported` and `reported_source` of a tidy table from reported/<paper>.csv by (method, dataset,
    metric). Rows the paper has no number for keep `reported` empty."""
    ref = reported_numbers(paper)[["method", "dataset", "metric", "value", "source", "status"]]
    out = df.drop(columns=[c for c in ("reported", "reported_source") if c in df.columns])
    out = out.merge(ref, on=["method", "dataset", "metric"], how="left")
    out["reported_source"] = [f"{s} [{st}]" if isinstance(s, str) else None for s, st in zip(out["source"], out["status"])]
    return out.rename(columns={"value": "reported"}).drop(columns=["source", "status"])


def context_rows(paper: str, table: str) -> pd.DataFrame:
    """Other papers' published numbers kept for context in `table` (status 'cited'), as tidy rows with an
    empty `reproduced`: shown beside ours, labelled with their source, never mistaken for ours."""
    ref = reported_numbers(paper)
    ref = ref[(ref["table"] == table)]
    return pd.DataFrame({"method": ref["method"], "dataset": ref["dataset"], "metric": ref["metric"],
                         "reproduced": float("nan"), "reported": ref["value"],
                         "reported_source": [f"{s} [{st}]" for s, st in zip(ref["source"], ref["status"])]})


# ---------------------------------------------------------------- the reporter

class Reporter:
    """Writes a notebook's tables, figures and claim checks under <out_dir>/results|figures/<notebook>/."""

    def __init__(self, notebook: str, params, seed: int | None = None):
        self.notebook = notebook
        self.params = dict(params)
        self.preset = self.params.get("preset", "?")
        out = Path(self.params.get("out_dir") or repo_root())
        self.results_dir = out / "results" / notebook
        self.figures_dir = out / "figures" / notebook
        self.seed = seed if seed is not None else self.params.get("seed")
        self.started = time.time()
        self.data: dict[str, str] = {}        # data description -> fingerprint
        self.skips: dict[str, dict] = {}      # data description -> SkipLog.summary()
        self.claims: list[dict] = []
        self.cache = None                     # a ResultCache, if the notebook uses one (hits shown)
        self.written: list[Path] = []
        from .train import dist_info
        self.enabled = dist_info()[0] == 0    # under torchrun only rank 0 writes
        set_theme()

    # provenance --------------------------------------------------------
    def note_data(self, description: str, fingerprint: str, skips=None) -> None:
        """Record a dataset this notebook used (and inputs skipped while reading it)."""
        self.data[description] = fingerprint
        if skips is not None:
            self.skips[description] = skips.summary()

    def provenance(self, what: str, extra: dict | None = None) -> dict:
        return {
            "file": what, "notebook": self.notebook, "preset": self.preset,
            "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "git": git_state(), "parameters": self.params, "seed": self.seed,
            "packages": package_versions(), "device": device_description(self.params.get("device", "cpu")),
            "wall_s_since_start": round(time.time() - self.started, 1),
            "data": self.data, "skipped_inputs": self.skips,
            "cache": {"hits": list(self.cache.hits), "computed": list(self.cache.misses)} if self.cache else None,
            **(extra or {}),
        }

    def _sidecar(self, path: Path, extra: dict | None = None) -> None:
        if not self.enabled:
            return
        atomic.write_text(path.with_suffix(".provenance.json"),
                          json.dumps(self.provenance(path.name, extra), indent=1, default=str))

    # tables -------------------------------------------------------------
    def table(self, name: str, df: pd.DataFrame, data: str, note: str = "") -> pd.DataFrame:
        """Write a tidy table as CSV + markdown + sidecar; return a wide view (metrics as columns) to show."""
        missing = {"method", "dataset", "metric", "reproduced"} - set(df.columns)
        if missing:
            raise ValueError(f"table '{name}' lacks the tidy columns {sorted(missing)}")
        df = df.copy()
        for col in ("reported", "reported_source"):
            if col not in df.columns:
                df[col] = None
        df["data"] = df["data"] if "data" in df.columns else data
        df["preset"] = self.preset
        df = df[TIDY_COLUMNS + [c for c in df.columns if c not in TIDY_COLUMNS]]
        csv = self.results_dir / f"{name}.csv"
        if not self.enabled:
            return self.wide(df)
        atomic.write_text(csv, df.to_csv(index=False))
        md = f"# {self.notebook}: {name}\n\nData: {data}. Preset: {self.preset}.\n"
        md += (f"\n{note}\n" if note else "") + "\n" + markdown_table(self.wide(df)) + "\n"
        md += "Empty `reported` cells: the paper's number is not known (not transcribed) or the paper has no such row.\n"
        atomic.write_text(csv.with_suffix(".md"), md)
        self._sidecar(csv, {"data_description": data, "note": note})
        self.written.append(csv)
        return self.wide(df)

    @staticmethod
    def wide(df: pd.DataFrame) -> pd.DataFrame:
        """method x dataset rows, one column per metric (reproduced), plus reported values where known."""
        order = list(dict.fromkeys(df["metric"]))
        rows = list(dict.fromkeys(zip(df["method"], df["dataset"])))
        repro = df.pivot_table(index=["method", "dataset"], columns="metric", values="reproduced", aggfunc="first",
                               dropna=False).reindex(columns=order)
        out = repro.reindex(rows)
        rep = df.dropna(subset=["reported"]) if "reported" in df else df.iloc[:0]
        if len(rep):
            rep = rep.assign(reported=pd.to_numeric(rep["reported"], errors="coerce"))
            rwide = rep.pivot_table(index=["method", "dataset"], columns="metric", values="reported",
                                    aggfunc="first").reindex(columns=[m for m in order if m in set(rep["metric"])])
            rwide.columns = [f"{c} (reported)" for c in rwide.columns]
            out = out.join(rwide)
        return out.reset_index()

    # figures ------------------------------------------------------------
    def figure(self, name: str, fig, data: str = "") -> Path:
        """Save `fig` as PNG and PDF (+ sidecar) and return the PNG path."""
        png = self.figures_dir / f"{name}.png"
        if not self.enabled:
            return png
        for ext in ("png", "pdf"):
            buf = io.BytesIO()
            fig.savefig(buf, format=ext)
            atomic.atomic_write(png.with_suffix(f".{ext}"), lambda f: f.write(buf.getvalue()))
        self._sidecar(png, {"data_description": data})
        self.written.append(png)
        return png

    # claims -------------------------------------------------------------
    def check(self, claim: str, passed: bool, detail: str, measured: float | None = None) -> bool:
        """Record whether a claim of the paper held on this preset. Never raises: a claim that does not
        reproduce is a result, written into claims.csv with its numbers."""
        self.claims = [c for c in self.claims if c["claim"] != claim]
        self.claims.append({"claim": claim, "reproduced": bool(passed), "detail": detail,
                            "measured": measured, "preset": self.preset})
        df = pd.DataFrame(self.claims)
        csv = self.results_dir / "claims.csv"
        if not self.enabled:
            return bool(passed)
        atomic.write_text(csv, df.to_csv(index=False))
        atomic.write_text(csv.with_suffix(".md"), f"# {self.notebook}: claims checked on preset {self.preset}\n\n"
                          + markdown_table(df[["claim", "reproduced", "detail"]]))
        self._sidecar(csv)
        print(f"[{'REPRODUCED' if passed else 'NOT REPRODUCED'}] {claim}: {detail}")
        return bool(passed)

    def claims_table(self) -> pd.DataFrame:
        return pd.DataFrame(self.claims)


# ---------------------------------------------------------------- the index page

def write_index(out_dir, notebooks: list[str] | None = None, summary: list[dict] | None = None) -> Path:
    """results/index.md: every table and figure of a run, grouped by notebook, with data and provenance."""
    out_dir = Path(out_dir)
    res, figs = out_dir / "results", out_dir / "figures"
    if notebooks is None:
        notebooks = sorted(p.name for p in res.iterdir() if p.is_dir()) if res.is_dir() else []
    names = notebooks
    lines = ["# The reproduction at a glance", "",
             "Every table and figure of the last `./run_all.sh` run, grouped by paper. Each file has a "
             "`.provenance.json` sidecar (commit, parameters, seed, packages, device, data fingerprint).", ""]
    if summary:
        lines += ["| notebook | status | wall time (s) | preset |", "|---|---|---|---|"]
        lines += [f"| {s['notebook']} | {s['status']} | {s['wall_s']:.0f} | {s.get('preset', '')} |" for s in summary]
        lines.append("")
    for nb in names:
        lines += [f"## {nb}", ""]
        claims = res / nb / "claims.csv"
        if claims.is_file():
            c = pd.read_csv(claims)
            lines += ["Claims checked:", ""] + [
                f"- {'✅' if r.reproduced else '❌'} {r.claim}: {r.detail}" for r in c.itertuples()] + [""]
        for csv in sorted((res / nb).glob("*.csv")):
            if csv.name == "claims.csv":
                continue
            prov = csv.with_suffix(".provenance.json")
            meta = json.loads(prov.read_text()) if prov.is_file() else {}
            commit = (meta.get("git") or {}).get("commit", "?")[:10]
            lines.append(f"- table [{csv.stem}]({nb}/{csv.stem}.md): data {meta.get('data_description', '?')}; "
                         f"preset {meta.get('preset', '?')}; commit {commit}")
        for png in sorted((figs / nb).glob("*.png")):
            rel = Path("..") / "figures" / nb / png.name
            lines += [f"- figure {png.stem}", "", f"  ![{png.stem}]({rel.as_posix()})", ""]
        lines.append("")
    return atomic.write_text(res / "index.md", "\n".join(lines))
