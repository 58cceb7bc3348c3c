"""Exact-retrieval throughput and peak memory, beside the bare matrix products and FAISS.

Default shape: 10k queries x 100k gallery x 512-d float32, top-50 (the issue's reference run on a 2-core
machine: chunked torch matmul + top-k 8.1 s, FAISS IndexFlatIP 6.3 s, bare matmuls 7.1 s = 144 GFLOP/s).

A time is only as good as the machine it was taken on, so the bench also prints what each backend runs on: the
threads torch and FAISS use, the BLAS each is linked against (torch: MKL; the faiss-cpu wheel: its own OpenBLAS
and its own copy of GNU OpenMP, a second thread pool beside torch's), the environment variables that steer them,
the load average before and after, and, per stage, the process's CPU time beside the wall time: CPU time far
below threads x wall means the process waited for cores others held (load), far above the bare products' CPU
time for the same work means threads spun or fought (oversubscription). `--faiss-threads` and `--torch-threads`
set the thread counts, to test that. Found on the 2-core machine (2026-11-29): the faiss wheel bundles its own
libgomp and an OpenMP build of OpenBLAS 0.3.15, but its OpenMP symbols resolve to the libgomp torch loaded first,
so torch and FAISS share one pool (setting either's threads sets both); under a load average of 10-17 every stage
got 8-17% of its two threads, and FAISS's CPU time was 1.3-1.7x that of the bare products (more with
OMP_WAIT_POLICY=ACTIVE or unset than PASSIVE): load, not a slow BLAS, explained its slow wall times there.
"""
from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

import torch

from visualsearch.evaluate import retrieve


def _reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux)
    except OSError:
        pass


def _peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_s() -> float:
    """CPU seconds (user + system) of this process, all its threads."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


_LAST_CPU = {"s": 0.0}  # CPU seconds of the last _timed call (read by the lines that print its wall time)


def _timed(fn):
    _reset_peak()
    base = _rss_mb()
    c0, t0 = _cpu_s(), time.perf_counter()
    out = fn()
    _LAST_CPU["s"] = _cpu_s() - c0
    return out, time.perf_counter() - t0, _peak_rss_mb() - base


ENV_VARS = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
            "KMP_BLOCKTIME", "OMP_PROC_BIND")


def load_line() -> str:
    """The load average and the cores: on a shared machine a time means little without them."""
    try:
        one, five, _ = os.getloadavg()
    except OSError:
        return "load average unknown"
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"


def busy_machine() -> bool:
    """Whether other processes want more cores than there are (1-minute load average above the core count)."""
    try:
        return os.getloadavg()[0] > (os.cpu_count() or 1)
    except OSError:
        return False


def thread_pools() -> list[str]:
    """One line per thread pool and BLAS loaded in this process (threadpoolctl when installed: which library
    file, its version, kernel architecture and threads), else the libraries the faiss extension links."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return _ldd_faiss()
    lines = []
    for d in threadpool_info():
        what = d.get("internal_api") or d.get("user_api")
        extra = ", ".join(f"{k} {d[k]}" for k in ("version", "architecture", "threading_layer") if d.get(k))
        lines.append(f"{what}: {d.get('num_threads')} threads{', ' + extra if extra else ''} ({d.get('filepath')})")
    return lines


def _ldd_faiss() -> list[str]:
    import subprocess

    try:
        import faiss
    except ImportError:
        return ["faiss not installed"]
    so = sorted(Path(faiss.__file__).parent.glob("_swigfaiss*.so"))
    if not so:
        return ["faiss extension not found"]
    try:
        out = subprocess.run(["ldd", str(so[0])], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError) as e:
        return [f"ldd failed: {e}"]
    return [line.strip() for line in out.splitlines() if any(x in line for x in ("blas", "gomp", "omp", "mkl"))]


def environment_report() -> list[str]:
    """What the timings ran on: torch's and FAISS's threads and BLAS, the OpenMP/BLAS environment variables,
    the load average."""
    lines = [f"torch {torch.__version__}: {torch.get_num_threads()} threads, "
             f"BLAS {'MKL' if torch.backends.mkl.is_available() else 'not MKL'}, "
             f"parallel backend {torch.__config__.parallel_info().splitlines()[-1].split(':')[-1].strip()}"]
    try:
        import faiss
        lines.append(f"faiss {faiss.__version__}: omp_get_max_threads() = {faiss.omp_get_max_threads()}")
    except ImportError:
        lines.append("faiss not installed")
    lines += thread_pools()
    lines.append("environment: " + ", ".join(f"{v}={os.environ.get(v, '(unset)')}" for v in ENV_VARS))
    lines.append(load_line())
    return lines


def _cpu_note(wall: float, threads: int) -> str:
    """CPU seconds of the last stage and how busy its threads were: CPU / (threads x wall)."""
    cpu = _LAST_CPU["s"]
    return f"cpu {cpu:6.2f} s ({cpu / max(wall, 1e-9) / max(threads, 1):.0%} of {threads} threads)"


def ranking_agreement(ours, theirs) -> str:
    """How far two top-k lists agree. Two BLAS libraries sum the 512 products in different orders, so scores
    differ in the last float32 bits and near-equal items can swap places; such swaps are not errors when the
    scores at the differing positions agree to within that rounding."""
    same_rows = (ours.indices == theirs.indices).all(1)
    text = f"identical for {same_rows.float().mean().item():.2%} of queries"
    if not same_rows.all():
        gap = (ours.scores - theirs.scores).abs().max().item()
        text += (f"; where they differ, the scores at the same rank differ by at most {gap:.1e} "
                 f"(float32 rounding is ~{torch.finfo(torch.float32).eps * ours.scores.abs().max().item():.0e} here)")
    return text


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m visualsearch.bench retrieval")
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--gallery", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--chunk-size", type=int, default=4096, help="queries per block")
    ap.add_argument("--gallery-chunk-size", type=int, default=1024, help="gallery items per block")
    ap.add_argument("--torch-threads", type=int, default=0, help="torch's threads (0: as found)")
    ap.add_argument("--faiss-threads", type=int, default=0, help="FAISS's OpenMP threads (0: as found)")
    ap.add_argument("--faiss-first", action="store_true",
                    help="time FAISS before torch (so no torch thread pool has run yet in this process)")
    args = ap.parse_args(argv)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    try:
        import faiss
        if args.faiss_threads:
            before = torch.get_num_threads()
            faiss.omp_set_num_threads(args.faiss_threads)
            if torch.get_num_threads() != before:
                print(f"note: faiss.omp_set_num_threads({args.faiss_threads}) also set torch's threads "
                      f"({before} -> {torch.get_num_threads()}): the faiss wheel's OpenMP calls resolve to the GNU "
                      "OpenMP that torch loaded first, so both libraries share one thread pool")
        faiss_threads = faiss.omp_get_max_threads()
    except ImportError:
        faiss = None
        faiss_threads = 0
    print("running on:")
    for line in environment_report():
        print("  " + line)
    if busy_machine():
        print("  WARNING: the load average exceeds the cores: others hold the CPU, so wall times measure the wait "
              "as much as the code; compare the CPU times, or rerun on an idle machine before quoting a ratio")

    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(args.queries, args.dim, generator=g), dim=1)
    gal = torch.nn.functional.normalize(torch.randn(args.gallery, args.dim, generator=g), dim=1)
    flop = 2.0 * args.queries * args.gallery * args.dim
    print(f"exact retrieval: {args.queries} queries x {args.gallery} gallery x {args.dim}-d float32, top-{args.k}; "
          f"{torch.get_num_threads()} threads")

    def bare():
        for q0 in range(0, args.queries, args.chunk_size):
            for g0 in range(0, args.gallery, args.gallery_chunk_size):
                q[q0:q0 + args.chunk_size] @ gal[g0:g0 + args.gallery_chunk_size].T

    threads = torch.get_num_threads()

    def run_faiss():
        if faiss is None:
            print("  FAISS not installed: skipped")
            return None
        theirs, t_faiss, m_faiss = _timed(lambda: retrieve(q, gal, args.k, backend="faiss"))
        print(f"  FAISS IndexFlatIP:                  {t_faiss:6.2f} s  {args.queries / t_faiss:8.0f} queries/s  "
              f"peak +{m_faiss:.0f} MB  {_cpu_note(t_faiss, faiss_threads)}")
        return theirs, t_faiss

    faiss_out = run_faiss() if args.faiss_first else None
    _, t_jit, _ = _timed(lambda: retrieve(q[:2], gal[:100], 5))
    print(f"  first call (loads or compiles the selection kernel, once per process): {t_jit:.2f} s")
    # ours before the bare products: its peak must not hide in memory the products already took and freed
    ours, t_ours, m_ours = _timed(lambda: retrieve(q, gal, args.k, chunk_size=args.chunk_size,
                                                   gallery_chunk_size=args.gallery_chunk_size))
    ours_cpu = _cpu_note(t_ours, threads)
    block_mb = min(args.chunk_size, args.queries) * min(args.gallery_chunk_size, args.gallery) * 4 / 2**20
    result_mb = args.queries * args.k * (4 + 8) / 2**20
    _, t_mm, m_mm = _timed(bare)
    print(f"  bare matrix products (same blocks): {t_mm:6.2f} s  {flop / t_mm / 1e9:6.1f} GFLOP/s  "
          f"peak +{m_mm:.0f} MB (a fresh {block_mb:.0f} MB block per product, plus BLAS workspace)  "
          f"{_cpu_note(t_mm, threads)}")
    print(f"  visualsearch exact (torch):         {t_ours:6.2f} s  {args.queries / t_ours:8.0f} queries/s  "
          f"peak +{m_ours:.0f} MB (score block {block_mb:.0f} MB + result {result_mb:.0f} MB + BLAS workspace)  "
          f"{ours_cpu}")
    if not args.faiss_first:
        faiss_out = run_faiss()
    if faiss_out is not None:
        theirs, t_faiss = faiss_out
        print(f"  rankings: {ranking_agreement(ours, theirs)}")
        print(f"  ratio visualsearch / FAISS time: {t_ours / t_faiss:.2f} (on this machine, at this load: see above)")
    print("  after: " + load_line())
