"""Benchmark of ``simulate_rnaseq(..., out=...)``: a large data set streamed to a zarr store.

Reports wall and CPU time, peak RSS of the process (``ru_maxrss``; the run is the only work
after a small warm-up) and the store's size. The reference is ``bench_simulate``'s realistic
one (5,000 cells, ~7 % of the simulated entries non-zero) or, with ``--synthetic``,
FLASHMM's synthetic reference of ``--cells`` cells (~75 % non-zero; it is reduced to its
moments wave by wave, so it costs a second pass of draws but no memory).

Usage: ``python benchmarks/bench_simulate_stream.py [--cells N] [--genes G] [--synthetic]
[--out DIR]``; the store is deleted afterwards unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_simulate import realistic_reference  # noqa: E402


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=1_000_000)
    p.add_argument("--genes", type=int, default=2_000)
    p.add_argument("--synthetic", action="store_true", help="FLASHMM's synthetic reference")
    p.add_argument("--out", default=None, help="folder for the store (default: a temp folder)")
    p.add_argument("--keep", action="store_true", help="keep the store")
    args = p.parse_args(argv)

    import numba

    import pyflashmm as fm
    from pyflashmm._simulate_store import stored_nnz

    folder = Path(args.out or tempfile.mkdtemp(prefix="bench_stream_"))
    ref = None
    if not args.synthetic:
        ref = realistic_reference(args.genes, 5000, np.random.default_rng(1))
    kw = {"n_genes": args.genes}
    # compile / warm up
    fm.simulate_rnaseq(ref, n_cells=20_000, rng=0, out=folder / "warm.zarr", overwrite=True, **kw)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    path = folder / "atlas.zarr"
    t0 = time.perf_counter()
    c0 = time.process_time()
    fm.simulate_rnaseq(ref, n_cells=args.cells, rng=2, out=path, overwrite=True, **kw)
    cpu = time.process_time() - c0
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    nnz = stored_nnz(path)
    result = {
        "case": f"{args.genes} genes x {args.cells} cells to zarr "
        + ("(synthetic reference)" if args.synthetic else "(realistic reference 5000 cells)"),
        "threads": numba.get_num_threads(),
        "seconds": seconds,
        "cpu_seconds": cpu,
        "nnz": nnz,
        "density": nnz / (args.cells * args.genes),
        "csr_bytes_in_memory": nnz * 8 + (args.cells + 1) * 8,
        "store_bytes": du(path),
        "peak_rss_bytes": peak,
        "rss_before_call_bytes": rss_before,
        "ns_per_nnz": seconds / max(nnz, 1) * 1e9,
    }
    print(json.dumps(result, indent=1))
    if not args.keep:
        shutil.rmtree(folder / "warm.zarr", ignore_errors=True)
        shutil.rmtree(path, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
