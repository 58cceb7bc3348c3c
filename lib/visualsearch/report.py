"""Tables, figures, claim checks and their provenance: everything a notebook writes goes through here.

Why: a reader of results/ must be able to tell, for every number, which code, parameters, data and
machine produced it, and how it compares with what the paper published. So every table is tidy (one row
per method, dataset, metric) with `reproduced` beside `reported`; every figure is saved as PNG and PDF at
a fixed size in one theme; every file gets a provenance sidecar; every write is atomic.
"""
from __future__ import annotations

import functools
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
from .config import display_path, repo_root, resolve_out_dir

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
    """The versions of PACKAGES (read once per process: what a running process has imported does not change)."""
    return dict(_package_versions())


@functools.lru_cache(maxsize=1)
def _package_versions() -> tuple:
    out = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return tuple(out.items())


def device_description(device: str) -> str:
    import torch

    if str(device).startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def markdown_table(df: pd.DataFrame, floatfmt: str = ".3f") -> str:
    """A GitHub markdown table of `df` (no extra dependency); NaN shown as an empty cell. Numbers get `floatfmt`,
    except a column of counts (whole numbers, some of them 1,000 or more, e.g. trainable parameters), which is
    shown as whole numbers with thousands separators."""
    def is_counts(column: pd.Series) -> bool:
        finite = pd.to_numeric(column, errors="coerce").dropna()
        return (not finite.empty and column.map(lambda v: isinstance(v, (int, float))).all()
                and (finite == finite.round()).all() and finite.abs().max() >= 1000)

    def cell(v, counts: bool):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        if isinstance(v, float):
            return format(v, ",.0f" if counts else floatfmt)
        return str(v).replace("|", "\\|").replace("\n", " ")

    cols = [str(c) for c in df.columns]
    counts = [is_counts(df.iloc[:, i]) for i in range(df.shape[1])]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(cell(v, c) for v, c in zip(row, counts)) + " |" for row in df.itertuples(index=False)]
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


# ---------------------------------------------------------------- what a notebook shows

CLAIM_COLUMNS = ["claim", "comparison", "source", "verdict", "criterion", "detail"]  # what claims.md and the notebook show

SMOKE_NOTE = ("Smoke preset: tiny data and models that test the code, not the papers; the checks run but no "
              "verdict is drawn. The committed default run holds the verdicts.")


def verdict_of(passed: bool, preset: str) -> str:
    """The words a claims table shows: a smoke-size run draws no verdict."""
    if preset == "smoke":
        return "not evaluated (smoke size)"
    return "reproduced" if passed else "NOT REPRODUCED"


def _number_format(values: pd.Series) -> str:
    """Digits a column is shown with: 3 for fractions, 1 for percentages and other scores, 0 for counts."""
    finite = pd.to_numeric(values, errors="coerce").dropna()
    if finite.empty:
        return "{:.3f}"
    if (finite == finite.round()).all():
        return "{:,.0f}"
    return "{:.3f}" if finite.abs().max() <= 1.0 else "{:.1f}"


def show(df) -> "Table":
    """A DataFrame (or Series) as a notebook shows it: no row index (a meaningful index becomes columns),
    numbers rounded per column (`_number_format`), missing values blank."""
    if isinstance(df, pd.Series):
        df = df.to_frame()
    df = df.reset_index() if not isinstance(df.index, pd.RangeIndex) else df
    return Table(df)


class Table:
    """A table as a notebook shows it: HTML in JupyterLab and in the executed copies, the same rounded text
    where only text is read. What `Reporter.table` returns (the written table's wide view, with the published
    numbers' sources) and what `show` makes of any DataFrame. `.frame` is the DataFrame for further work."""

    def __init__(self, frame: pd.DataFrame):
        self.frame = frame

    def _formats(self) -> dict:
        df = self.frame
        return {c: _number_format(df[c]) for c in df.columns
                if pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])}

    def _repr_html_(self) -> str:
        return self.frame.style.hide(axis="index").format(self._formats(), na_rep="").to_html()

    def __repr__(self) -> str:
        formats = self._formats()
        text = self.frame.copy()
        for c, fmt in formats.items():
            text[c] = [("" if pd.isna(v) else fmt.format(v)) for v in self.frame[c]]
        return text.to_string(index=False)


def _show_inline(png: bytes, fig) -> None:
    """Display the saved PNG in a running notebook (works whatever the matplotlib backend, so papermill's
    executed copies carry every figure); nothing outside IPython."""
    try:
        from IPython import get_ipython
        from IPython.display import Image, display
    except ImportError:
        return
    if get_ipython() is None:
        return
    width = int(fig.get_figwidth() * 110)  # the theme's screen dpi: the PNG is saved at 150 for print
    display(Image(data=png, format="png", width=width))


# ---------------------------------------------------------------- the reporter

class Reporter:
    """Writes a notebook's tables, figures and claim checks under <out_dir>/results|figures/<notebook>/."""

    def __init__(self, notebook: str, params, seed: int | None = None):
        self.notebook = notebook
        self.params = dict(params)
        self.preset = self.params.get("preset", "?")
        out = resolve_out_dir(self.params.get("out_dir"), self.preset)
        self.results_dir = out / "results" / notebook
        self.figures_dir = out / "figures" / notebook
        self.seed = seed if seed is not None else self.params.get("seed")
        self.started = time.time()
        self.data: dict[str, str] = {}        # data description -> fingerprint
        self.skips: dict[str, dict] = {}      # data description -> SkipLog.summary()
        self.claims: list[dict] = []
        self.cache = None                     # a ResultCache, if the notebook uses one (hits shown)
        self.written: list[Path] = []
        from .distributed import dist_info
        self.enabled = dist_info()[0] == 0    # under torchrun only rank 0 writes
        set_theme()
        if self.enabled:
            print(self.where())

    def where(self) -> str:
        """Where this run writes, and where the committed default run is: the first thing a reader needs."""
        res, figs = display_path(self.results_dir), display_path(self.figures_dir)
        committed = f"results/{self.notebook}/{self.notebook}.ipynb"
        staging = self.results_dir.parent.parent
        if staging.name == ".staging":  # ./run_all.sh writes aside, then moves the folders into place
            final = staging.parent
            res, figs = display_path(final / "results" / self.notebook), display_path(final / "figures" / self.notebook)
            return (f"Preset '{self.preset}', run by ./run_all.sh: tables go to {res}/, figures to {figs}/ (written in "
                    f"{display_path(staging)}/ first, moved there when every notebook of the run succeeded).")
        return (f"Preset '{self.preset}': tables go to {res}/, figures to {figs}/.\n"
                f"The committed default run (./run_all.sh) is results/{self.notebook}/ and figures/{self.notebook}/; "
                f"its executed notebook is {committed}.")

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
    def table(self, name: str, df: pd.DataFrame, data: str, note: str = "") -> "Table":
        """Write a tidy table as CSV + markdown + sidecar; return its wide view (metrics as columns) as a
        `Table`, which a notebook shows rounded and without a row index (`.frame` is the DataFrame)."""
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
            return Table(self.wide(df))
        atomic.write_text(csv, df.to_csv(index=False))
        md = f"# {self.notebook}: {name}\n\nData: {data}. Preset: {self.preset}.\n"
        md += (f"\n{note}\n" if note else "") + "\n" + markdown_table(self.wide(df)) + "\n"
        md += "Empty `reported` cells: the paper's number is not known (not transcribed) or the paper has no such row.\n"
        atomic.write_text(csv.with_suffix(".md"), md)
        self._sidecar(csv, {"data_description": data, "note": note})
        self.written.append(csv)
        return Table(self.wide(df))

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
            # a published number is shown as the paper wrote it (23.8, 36.55, "about 1" as 1), not padded
            # to the reproduced numbers' three decimals
            out = out.join(rwide.map(lambda v: "" if v != v else format(v, "g")))
            if "reported_source" in rep:  # where each published number comes from, and its status
                src = rep.groupby(["method", "dataset"], sort=False)["reported_source"].agg(
                    lambda v: "; ".join(dict.fromkeys(str(x) for x in v if isinstance(x, str))))
                out["reported source"] = src.reindex(out.index)
        return out.reset_index()

    # figures ------------------------------------------------------------
    def figure(self, name: str, fig, data: str = "") -> None:
        """Save `fig` as PNG and PDF (+ sidecar), show the saved PNG inline when running in a notebook, and
        close the figure (so the inline backend does not draw it a second time). Returns nothing, so a cell
        that ends with it shows the figure and no path."""
        png = self.figures_dir / f"{name}.png"
        if self.enabled:
            buffers = {}
            for ext in ("png", "pdf"):
                buffers[ext] = buf = io.BytesIO()
                fig.savefig(buf, format=ext)
                atomic.atomic_write(png.with_suffix(f".{ext}"), lambda f, b=buf: f.write(b.getvalue()))
            self._sidecar(png, {"data_description": data})
            self.written.append(png)
            _show_inline(buffers["png"].getvalue(), fig)
        import matplotlib.pyplot as plt

        plt.close(fig)

    # claims -------------------------------------------------------------
    def check(self, claim: str, passed: bool, detail: str, measured: float | None = None, source: str = "paper",
              criterion: str = "", seeds: int | None = None, proxy: str = "", comparison: str = "",
              claim_id: str | None = None) -> bool:
        """Record whether a claim held on this preset. Never raises: a claim that does not reproduce is a
        result, written into claims.csv with its numbers. `source`: paper | extension | exploratory (see
        claims.Claim); `criterion`: the test in words; `seeds`: training seeds it rests on; `proxy`: why the
        check stands in for the paper's words, when it does. At the smoke preset (tiny data and models, a test
        of the code) the check still runs but its verdict is "not evaluated". Prefer `decide`. A claim checked
        again (same `claim_id`, else same text) replaces its earlier row."""
        claim_id = claim_id or claim
        self.claims = [c for c in self.claims if c["id"] != claim_id]
        verdict = verdict_of(bool(passed), self.preset)
        self.claims.append({"id": claim_id, "claim": claim, "comparison": comparison, "source": source,
                            "reproduced": bool(passed), "verdict": verdict, "criterion": criterion, "seeds": seeds,
                            "detail": detail, "proxy": proxy, "measured": measured, "preset": self.preset})
        df = pd.DataFrame(self.claims)
        csv = self.results_dir / "claims.csv"
        if not self.enabled:
            return bool(passed)
        atomic.write_text(csv, df.to_csv(index=False))
        atomic.write_text(csv.with_suffix(".md"), f"# {self.notebook}: claims checked on preset {self.preset}\n\n"
                          + (SMOKE_NOTE + "\n\n" if self.preset == "smoke" else "")
                          + markdown_table(df[CLAIM_COLUMNS]))
        self._sidecar(csv)
        print(f"[{verdict}] ({source}) {claim}: {detail}")
        return bool(passed)

    def decide(self, claim, decision) -> bool:
        """Record a declared claim (claims.Claim) as decided by claims.decide (claims.Decision)."""
        return self.check(claim.text, decision.passed, decision.detail, decision.difference, source=claim.source,
                          criterion=decision.criterion, seeds=decision.seeds, proxy=claim.proxy,
                          comparison=claim.comparison, claim_id=claim.id)

    def claims_table(self) -> "Table":
        """The claims checked so far, to show in the notebook (claim, verdict, numbers)."""
        df = pd.DataFrame(self.claims)
        return Table(df[CLAIM_COLUMNS] if len(df) else df)


# ---------------------------------------------------------------- the index page

CLAIM_LISTS = (("paper", "The paper's claims"), ("extension", "Extensions (claims this companion adds)"),
               ("exploratory", "Exploratory findings (noticed after seeing results; not claims of the paper)"))


def claims_index_lines(c: pd.DataFrame) -> list[str]:
    """The claims of one notebook for index.md: the paper's claims first, then extensions, then exploratory
    findings, each in its own list (a finding never sits with a check mark among the paper's claims)."""
    if "verdict" not in c:
        c["verdict"] = [verdict_of(bool(r), str(pre)) for r, pre in zip(c["reproduced"], c["preset"])]
    if "source" not in c:
        c["source"] = "paper"
    mark = {"reproduced": "✅", "NOT REPRODUCED": "❌"}
    lines = []
    for source, title in CLAIM_LISTS:
        rows = c[c["source"] == source]
        if not len(rows):
            continue
        lines += [f"{title}:", ""]
        for r in rows.itertuples():
            symbol = mark.get(r.verdict, "⏸") if source != "exploratory" else "•"
            proxy = f" (checked by a proxy: {r.proxy})" if isinstance(getattr(r, "proxy", None), str) and r.proxy else ""
            comparison = f" [{r.comparison}]" if isinstance(getattr(r, "comparison", None), str) and r.comparison else ""
            lines.append(f"- {symbol} {r.claim}{comparison}{proxy} ({r.verdict}): {r.detail}")
        lines.append("")
    return lines


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
        def seconds(s, key):
            return f"{s[key]:.0f}" if isinstance(s.get(key), (int, float)) else "not measured"
        # This run's time alone misleads after a warm rerun (seconds, not the minutes that training takes), so the
        # last cold (trained) and warm (all from cache) times of the preset stand beside it.
        lines += ["| notebook | status | preset | this run (s) | this run's cache | last cold run (s) | "
                  "last warm run (s) |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {s['notebook']} | {s['status']} | {s.get('preset', '')} | {s['wall_s']:.0f} | "
                  f"{s.get('cache', '?')} | {seconds(s, 'cold_s')} | {seconds(s, 'warm_s')} |" for s in summary]
        lines.append("")
    for nb in names:
        lines += [f"## {nb}", ""]
        claims = res / nb / "claims.csv"
        if claims.is_file():
            lines += claims_index_lines(pd.read_csv(claims))
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
