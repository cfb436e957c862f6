"""Cell-level NB fits distributed over gene blocks: one process against a Dask cluster.

Data (generated once, cached under ``--data-dir``, never committed): a ``.zarr`` store of
100,000 cells × 1,000 genes, 24 donors (``sam``, nested in two arms ``trt``), 8 cell types,
drawn by the streamed simulator from the sparse reference of ``bench_scale.py``.

Measurements, each in a fresh subprocess (its own peak RSS), Numba's cache warmed first:

* ``nbmm``: ``de(path, fixed="~ cls + trt", random="sam", method="nbmm", reml=False,
  contrast="trtB")``, one process (2 threads), ``scheduler=False``;
* ``nbmm_dask``: the same with ``scheduler=`` a ``LocalCluster`` of 2 worker processes × 1
  thread started in the child (its start-up not timed): the counts are read by the workers,
  cut into gene blocks and fitted there;
* ``nbglm`` and ``nbglm_dask``: ``de(path, fixed="~ cls + trt", method="nbglm",
  contrast="trtB")`` (the cell-level NB GLM, LRT) the two ways.

The efficiency is the one-process time over the cluster's on the same 2 cores; the tables are
checked equal bit for bit. Usage: ``python benchmarks/bench_gene_blocks.py [--repeats N]
[--cells N] [--genes N]``; writes ``benchmarks/results/bench_gene_blocks.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import _peak_gb, reference  # noqa: E402
from bench_scale import run_child as _run_child  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "bench_gene_blocks.json"
FIXED = "~ cls + trt"
KINDS = ("nbmm", "nbmm_dask", "nbglm", "nbglm_dask")


def dataset(data_dir: Path, n_cells: int, n_genes: int) -> Path:
    import pyflashmm as fm

    path = data_dir / f"nbfits_{n_cells}x{n_genes}.zarr"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        ref = reference(n_genes + 200, 5000, np.random.default_rng(1))
        fm.simulate_rnaseq(ref, n_genes=n_genes, n_cells=n_cells, n_samples=24, n_clusters=8,
                           rng=5, out=path)  # fmt: skip
    return path


def child(kind: str, path: str) -> dict:
    import warnings

    import pyflashmm as fm

    warnings.simplefilter("ignore")  # genes that do not converge are counted below
    method = kind.split("_")[0]
    # 16,384-cell chunks, the default when the recorded runs were made (now 8,192)
    kw = {"fixed": FIXED, "method": method, "contrast": "trtB", "progress": False,
          "chunk_size": 16_384}  # fmt: skip
    if method == "nbmm":
        kw.update(random="sam", reml=False)
    out: dict = {"kind": kind}
    if kind.endswith("_dask"):
        from dask.distributed import Client, LocalCluster

        cluster = LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None)
        with cluster, Client(cluster) as client:
            t0 = time.perf_counter()
            table = fm.de(path, scheduler=client, **kw)
            out["seconds"] = time.perf_counter() - t0
            out["workers_rss_gb_at_end"] = max(
                w["metrics"]["memory"] for w in client.scheduler_info()["workers"].values()
            ) / 1e9  # fmt: skip
    else:
        t0 = time.perf_counter()
        table = fm.de(path, scheduler=False, **kw)
        out["seconds"] = time.perf_counter() - t0
    out["peak_rss_gb"] = _peak_gb()
    out["genes_failed"] = int((~table["converged"]).sum())
    values = table.drop(columns=["method"]).to_csv(index=False).encode()
    out["table_sha256"] = hashlib.sha256(values).hexdigest()
    return out


def run_child(kind: str, path: Path) -> dict:
    return _run_child(kind, path, None, __file__)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default="/tmp/pyflashmm-scale")
    p.add_argument("--cells", type=int, default=100_000)
    p.add_argument("--genes", type=int, default=1_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--path", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.path)))
        return 0
    path = dataset(Path(args.data_dir), args.cells, args.genes)
    run_child("nbglm", path)  # compiles / loads Numba's cache; warms the disk
    runs: dict[str, list[dict]] = {k: [] for k in KINDS}
    for _ in range(args.repeats):
        for k in KINDS:
            load = os.getloadavg()[0]
            r = run_child(k, path)
            r["load1_before"] = load
            runs[k].append(r)
            print(json.dumps(r), file=sys.stderr)
    med = {k: statistics.median(r["seconds"] for r in runs[k]) for k in KINDS}
    same = {m: len({r["table_sha256"] for r in runs[m] + runs[f"{m}_dask"]}) == 1
            for m in ("nbmm", "nbglm")}  # fmt: skip
    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },  # fmt: skip
        "data": {
            "cells": args.cells,
            "genes": args.genes,
            "donors": 24,
            "cell_types": 8,
            "format": "zarr",
        },  # fmt: skip
        "model": {"fixed": FIXED, "nbmm": "random=sam, ML, Wald t", "nbglm": "LRT"},
        "repeats": args.repeats,
        "median_seconds": med,
        "efficiency_of_2_workers": {m: med[m] / med[f"{m}_dask"] for m in ("nbmm", "nbglm")},
        "tables_bitwise_equal": same,
        "runs": runs,
    }
    text = json.dumps(result, indent=1)
    print(text)
    Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
