"""python -m visualsearch.bench face: images/s of the multi-head sharing network vs four separate networks.

Why: the point of a sharing pattern is to get all four attribute predictions for about the cost of one
network. This measures it on the same input batch: the multi-head network of a pattern (one forward pass,
shared trunk computed once), four separate networks (one full network per attribute, run one after the
other) and, for reference, a single network with four heads on the penultimate features. Weights are random:
speed does not depend on them.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import pandas as pd
import torch

from ..config import load_params, repo_root
from ..flops import count_flops
from ..models.face import FaceTrunk, MultiHeadFaceNet, make_branch
from ..papers.face.data import ATTRIBUTES
from ..papers.face.experiment import net_config

N_CLASSES = {"age": 9, "gender": 2, "ethnicity": 7, "emotion": 5}
FALLBACK_PATTERN = "age@1 gender@4 ethnicity@4 emotion@1"


def parse_pattern(text: str) -> dict:
    """'age@1 gender@4 ...' -> {"age": 1, ...}; every attribute must be given once."""
    out = {}
    for part in text.split():
        name, _, depth = part.partition("@")
        if name not in N_CLASSES or not depth.isdigit():
            raise SystemExit(f"bad pattern part {part!r}: expected attribute@depth with attribute in {', '.join(ATTRIBUTES)}")
        out[name] = int(depth)
    if set(out) != set(ATTRIBUTES):
        raise SystemExit(f"pattern {text!r} must give a depth for each of {', '.join(ATTRIBUTES)}")
    return out


def chosen_pattern(out_dir: Path) -> str | None:
    """The chosen pattern of the last notebook run in out_dir, if any."""
    csv = out_dir / "results" / "face_attribute_sharing" / "sharing_patterns.csv"
    if not csv.is_file():
        return None
    df = pd.read_csv(csv)
    chosen = df[df.get("role", pd.Series(dtype=str)).fillna("").str.contains("chosen")]
    return str(chosen["method"].iloc[0]) if len(chosen) else None


def multihead(trunk: FaceTrunk, pattern: dict) -> MultiHeadFaceNet:
    return MultiHeadFaceNet(trunk, {a: make_branch(trunk, d, N_CLASSES[a]) for a, d in pattern.items()}).eval()


@torch.inference_mode()
def images_per_s(fn, x: torch.Tensor, iters: int, device: str) -> float:
    """Median images/s of `fn(x)` over `iters` timed runs after two warm-up runs."""
    for _ in range(2):
        fn(x)
    times = []
    for _ in range(iters):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn(x)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return len(x) / statistics.median(times)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m visualsearch.bench face", description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="default", help="model of configs/face_attribute_sharing/<preset>.yaml")
    ap.add_argument("--pattern", default=None,
                    help="e.g. 'age@1 gender@4 ethnicity@4 emotion@1' (default: the chosen pattern of the last run)")
    ap.add_argument("--input-size", type=int, default=None, help="input px (default: the preset's model.input_size)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--out", default=None, help="output folder whose results/ hold the chosen pattern")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    p = load_params("face_attribute_sharing", args.preset)
    cfg = net_config(p)
    size = args.input_size or int(p["model"]["input_size"])
    text = args.pattern or chosen_pattern(Path(args.out) if args.out else repo_root())
    if text is None:
        text = FALLBACK_PATTERN
        print(f"(no chosen pattern found in results/; using {text})")
    pattern = parse_pattern(text)
    torch.manual_seed(0)
    trunk = FaceTrunk(cfg).eval()
    x = torch.randn(args.batch_size, 3, size, size, device=args.device)
    shared = multihead(trunk, pattern).to(args.device)
    separate = [multihead(trunk, {a: 0}).to(args.device) for a in ATTRIBUTES]  # one full network per attribute
    head_only = multihead(trunk, {a: trunk.n_stages for a in ATTRIBUTES}).to(args.device)
    x1 = torch.zeros(1, 3, size, size, device=args.device)
    rows = []
    for name, fn, nets in ((f"multi-head ({text})", shared, [shared]),
                           ("four separate networks", lambda v: [n(v) for n in separate], separate),
                           ("one network, four heads (head only)", head_only, [head_only])):
        c = [count_flops(n, x1) for n in nets]
        rows.append({"model": name, "images/s": images_per_s(fn, x, args.iters, args.device),
                     "GFLOPs/image": sum(v["flops"] for v in c) / 1e9, "GMACs/image": sum(v["macs"] for v in c) / 1e9,
                     "params (M)": sum(v["params"] for v in c) / 1e6})
    df = pd.DataFrame(rows)
    df["speed-up vs separate"] = df["images/s"] / df.loc[1, "images/s"]
    print(f"face attribute networks, preset {args.preset} model {list(cfg.widths)} x {list(cfg.blocks)} blocks, "
          f"{size} px, batch {args.batch_size}, device {args.device}, {torch.get_num_threads()} threads")
    print(df.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
