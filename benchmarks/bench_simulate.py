"""Benchmark of ``pyflashmm.simulate_rnaseq``.

1. FLASHMM's vignette call: a synthetic reference of 1,000 genes × 10,000 cells, then
   100 genes × 100,000 cells (10 DE genes). FLASHMM's R ``simuRNAseq`` takes 2.0 s for this size
   on a 2-core machine; when ``Rscript`` with FLASHMM is installed, it is timed here
   too, in the same run (``validation/R/flashmm_simulate_time.R``).
2. 10,000 genes × 1,000,000 cells at realistic sparsity, in a child process so that its peak
   RSS is its own. Reference: 10,000 genes × 5,000 cells, gene means log-normal
   (median 0.016 counts per cell, sd of log 1.5, capped at 50), NB size U(0.5, 3); the 10,000
   simulated genes are resampled from the ~7,000 that pass the moment filter. About 6.8 % of
   the simulated entries are non-zero (~680 detected genes and ~460 counts per cell; 10x data
   are typically 5–10 % non-zero).

Besides wall times, CPU time (``time.process_time``, all threads) per entry (vignette) or per
non-zero (large case) is reported: it is less sensitive to other jobs on a shared machine.

Usage: ``python benchmarks/bench_simulate.py [--quick] [--cells N] [--repeats R]``; the thread
count is Numba's (set ``NUMBA_NUM_THREADS=2`` to mimic CI). FLASHMM is looked up with
``Rscript`` (a private library can be given with ``R_LIBS=...``).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

R_SECONDS_PUBLISHED = 2.0  # FLASHMM simuRNAseq, 100 genes x 100,000 cells, 2 cores (published)

#: the R scripts run here (validation/R/): FLASHMM's simuRNAseq timing and the package probe
R_DIR = Path(__file__).resolve().parents[1] / "validation" / "R"


def time_r() -> float | None:
    """Median seconds of FLASHMM's simuRNAseq in R, or None when unavailable."""
    if shutil.which("Rscript") is None:
        return None
    probe = subprocess.run(
        ["Rscript", str(R_DIR / "check_packages.R"), "FLASHMM"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        return None
    out = subprocess.run(["Rscript", str(R_DIR / "flashmm_simulate_time.R")], capture_output=True,
                         text=True, check=True)  # fmt: skip
    return float(out.stdout.split()[-1])


def bench_vignette(repeats: int) -> dict:
    import numba

    import pyflashmm as fm

    ref = fm.simulate_rnaseq(n_genes=1000, n_cells=10000, rng=2502)
    meta = ref.obs[["sam", "cls", "trt"]]
    kw = {"n_genes": 100, "n_cells": 100_000, "n_de_genes": 10, "min_beta": 0.5}
    fm.simulate_rnaseq(ref.counts, metadata=meta, rng=0, **kw)  # compile / warm up
    times, cpu, synth = [], [], []
    for i in range(repeats):
        t0 = time.perf_counter()
        c0 = time.process_time()
        sim = fm.simulate_rnaseq(ref.counts, metadata=meta, rng=2503 + i, **kw)
        cpu.append(time.process_time() - c0)
        times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        fm.simulate_rnaseq(n_genes=100, n_cells=100_000, rng=i)
        synth.append(time.perf_counter() - t0)
    r_seconds = time_r()
    med = float(np.median(times))
    return {
        "case": "100 genes x 100,000 cells (vignette reference 1000 x 10000)",
        "threads": numba.get_num_threads(),
        "median_s": med,
        "runs_s": [round(t, 4) for t in times],
        "cpu_ns_per_entry": float(np.median(cpu)) / (100 * 100_000) * 1e9,
        "median_s_synthetic_reference_100x100000": float(np.median(synth)),
        "nnz": int(sim.counts.nnz),
        "r_seconds": r_seconds if r_seconds is not None else R_SECONDS_PUBLISHED,
        "r_source": "timed now" if r_seconds is not None else "published (2 cores)",
        "speedup_vs_r": (r_seconds or R_SECONDS_PUBLISHED) / med,
    }


def realistic_reference(n_genes: int, n_ref: int, rng: np.random.Generator):
    mu = np.minimum(np.exp(rng.normal(np.log(0.016), 1.5, n_genes)), 50.0)
    size = rng.uniform(0.5, 3.0, n_genes)
    import scipy.sparse as sp

    cols = []
    for lo in range(0, n_genes, 500):
        hi = min(lo + 500, n_genes)
        block = rng.negative_binomial(
            size[lo:hi], size[lo:hi] / (size[lo:hi] + mu[lo:hi]), (n_ref, hi - lo)
        )
        cols.append(sp.csc_matrix(block.astype(np.int32)))
    return sp.hstack(cols).tocsr()


def bench_large_child(n_cells: int, n_genes: int) -> dict:
    import numba

    import pyflashmm as fm

    rng = np.random.default_rng(1)
    ref = realistic_reference(n_genes, 5000, rng)
    fm.simulate_rnaseq(ref, n_genes=n_genes, n_cells=20_000, rng=0)  # compile / warm up
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    c0 = time.process_time()
    sim = fm.simulate_rnaseq(ref, n_genes=n_genes, n_cells=n_cells, rng=2)
    cpu = time.process_time() - c0
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    Y = sim.counts
    out_bytes = Y.data.nbytes + Y.indices.nbytes + Y.indptr.nbytes
    return {
        "case": f"{n_genes} genes x {n_cells} cells (realistic reference 5000 cells)",
        "threads": numba.get_num_threads(),
        "seconds": seconds,
        "cpu_seconds": cpu,
        "cpu_ns_per_nnz": cpu / max(Y.nnz, 1) * 1e9,
        "cpu_ns_per_entry": cpu / (n_cells * n_genes) * 1e9,
        "nnz": int(Y.nnz),
        "density": Y.nnz / (Y.shape[0] * Y.shape[1]),
        "output_bytes": int(out_bytes),
        "peak_rss_bytes": int(peak),
        "rss_before_call_bytes": int(rss_before),
        "peak_rss_over_output": peak / out_bytes,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="skip the million-cell case")
    p.add_argument("--cells", type=int, default=1_000_000, help="cells of the large case")
    p.add_argument("--genes", type=int, default=10_000, help="genes of the large case")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument(
        "--json", default=None,
        help="write results here (default: results/bench_simulate.json, not for --quick)",
    )  # fmt: skip
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(bench_large_child(args.cells, args.genes)))
        return 0
    res = bench_vignette(args.repeats)
    print(json.dumps(res, indent=1))
    print(
        f"vignette size: {res['median_s']:.3f} s (median of {args.repeats}), "
        f"{res['speedup_vs_r']:.1f}x faster than R ({res['r_source']})"
    )
    if not args.quick:
        cmd = [sys.executable, __file__, "--child", "--cells", str(args.cells)]
        cmd += ["--genes", str(args.genes)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        big = json.loads(out.stdout.strip().splitlines()[-1])
        print(json.dumps(big, indent=1))
        print(
            f"large: {big['seconds']:.1f} s, nnz {big['nnz']:,} ({100 * big['density']:.1f} %), "
            f"output {big['output_bytes'] / 2**30:.2f} GiB, peak RSS "
            f"{big['peak_rss_bytes'] / 2**30:.2f} GiB ({big['peak_rss_over_output']:.2f}x)"
        )
        res["large"] = big
    if args.json is None and not args.quick:
        args.json = str(Path(__file__).parent / "results" / "bench_simulate.json")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
