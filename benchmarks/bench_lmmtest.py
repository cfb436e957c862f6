"""Benchmark ``lmmtest``'s variants (df methods, moderation) on one fit, in one run.

Cases:
  (a) the FLASHMM vignette's shape: 10,000 genes, n = 100,000, p = 21 (log library size,
      10 clusters, cluster:treatment), 25 subjects as one random intercept (K = 1)
  (b) the same with an 8-level batch crossed with the subjects (K = 2, the dense path)

Inputs are drawn exactly from the model's sufficient statistics (``sufficient_stats.py``; the
cost of inference does not depend on n). Each variant tests all 21 coefficients (identity
contrasts) on the same REML fit. Times are medians of ``--repeats`` runs after one warm-up
(compilation excluded); the ratio is to the first variant (Satterthwaite) of the same case.

Variants are the list ``VARIANTS`` of (name, keyword arguments of ``lmmtest``); a new row (say
``moderate=True``) is one more entry there.

Usage: python benchmarks/bench_lmmtest.py [--quick] [--repeats N (5)] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import NamedTuple

import numba
import numpy as np
import sufficient_stats as ss

import pyflashmm as fm

HERE = Path(__file__).parent


class Variant(NamedTuple):
    name: str
    kwargs: dict


#: the rows of the table; the first is the baseline of the ratios
VARIANTS = [
    Variant("satterthwaite", {"df": "satterthwaite"}),
    Variant("kenward-roger", {"df": "kenward-roger"}),
    Variant("kenward-roger, constant prior", {"df": "kenward-roger", "moderate": True,
                                              "trend": False}),
    Variant("kenward-roger, trended prior", {"df": "kenward-roger", "moderate": True,
                                             "trend": True}),
    Variant("satterthwaite, trended prior", {"df": "satterthwaite", "moderate": True,
                                             "trend": True}),
    Variant("satterthwaite, robust prior", {"df": "satterthwaite", "moderate": True,
                                            "robust": True}),
]  # fmt: skip


def median_time(fn, repeats):
    fn()  # warm-up: compilation and caches
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def case_rows(label, stats, repeats):
    """One row per variant: median time of ``lmmtest`` over all coefficients of one fit."""
    fit = fm.lmm(stats, warn=False)
    rows = []
    for v in VARIANTS:
        seconds = median_time(lambda v=v: fm.lmmtest(fit, **v.kwargs), repeats)
        table = fm.lmmtest(fit, **v.kwargs)
        rows.append(
            {
                "case": label,
                "variant": v.name,
                "genes": stats.n_genes,
                "p": stats.p,
                "q": stats.q,
                "K": len(stats.d),
                "tests": len(table),
                "seconds": seconds,
                "ratio_to_" + VARIANTS[0].name: seconds / rows[0]["seconds"] if rows else 1.0,
                "finite_df": float(np.isfinite(table["df"]).mean()),
                "median_df": float(np.nanmedian(table["df"])),
            }
        )
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--json", type=Path, default=None,
        help="write results here (default: results/bench_lmmtest.json, not for --quick)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    rng = np.random.default_rng(20261205)
    f = 20 if args.quick else 1
    print(
        f"pyflashmm {fm.__version__}, numba threads {numba.get_num_threads()}, "
        f"cpus {os.cpu_count()}"
    )
    rows = []
    X, Z, d = ss.vignette_design(rng, 100_000 // f)
    stats = ss.simulate_stats(rng, X, Z, d, 10_000 // f, theta=(0.1, 1.0))
    rows += case_rows("(a) vignette K=1", stats, args.repeats)
    X, Z, d = ss.vignette_design(rng, 100_000 // f, extra_factors=(8,))
    stats = ss.simulate_stats(rng, X, Z, d, 10_000 // f, theta=(0.1, 0.05, 1.0))
    rows += case_rows("(b) crossed K=2", stats, args.repeats)
    for row in rows:
        print(json.dumps(row))
    print()
    ratio = "ratio_to_" + VARIANTS[0].name
    print(f"{'case':18s} {'variant':30s} {'genes':>6s} {'p':>3s} {'q':>3s} {'tests':>7s} "
          f"{'median s':>9s} {'ratio':>6s} {'median df':>10s}")  # fmt: skip
    for r in rows:
        print(
            f"{r['case']:18s} {r['variant']:30s} {r['genes']:6d} {r['p']:3d} {r['q']:3d} "
            f"{r['tests']:7d} {r['seconds']:9.3f} {r[ratio]:6.2f} {r['median_df']:10.1f}"
        )
    if args.json is None and not args.quick:
        args.json = HERE / "results" / "bench_lmmtest.json"
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
