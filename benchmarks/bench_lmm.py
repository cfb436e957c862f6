"""Benchmark the LMM fit (and the summary statistics) against FLASHMM, in one run.

Cases:
  (a) 10,000 genes, n = 100,000, p = 21, q = 25, K = 1 (the FLASHMM vignette's shape)
  (b) 11,596 genes, p = 62, q = 259, K = 1 (FLASHMM's tuberculosis atlas model)
  (c) K = 2: subject (25) crossed with batch (8), 10,000 genes, n = 100,000, p = 21
  (d) summary statistics of a sparse CSR matrix with 10⁸ stored values, as a ratio to one plain
      pass over the same data: Σ log1p(y)² per gene, the faster of NumPy (log1p over the values,
      bincount over their gene indices) and scipy (``Y.log1p().power(2).sum(0)``).
  (e) inference on the fits of (a) and (c): ``lmmtest`` with Satterthwaite df for three contrasts
      (one coefficient, an average of two, a joint 2-df test) and ``random_effects`` (BLUPs).

Inputs for (a)–(c) are drawn exactly from the model's sufficient statistics
(``sufficient_stats.py``). FLASHMM (R) runs on the same statistics when ``Rscript`` can load it
(set ``R_LIBS``), through ``validation/r_tools.py`` and its script ``validation/R/flashmm_lmm.R``;
for (b) it runs on a subset of genes and its time is scaled to all genes.
Times are medians of ``--repeats`` runs after one warm-up (compilation excluded).

Usage: python benchmarks/bench_lmm.py [--quick] [--repeats N (5)] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numba
import numpy as np
import scipy.sparse as sp

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.resolve().parent))  # the repository root, for validation.r_tools
import sufficient_stats as ss  # noqa: E402

import pyflashmm as fm  # noqa: E402
from validation import r_tools  # noqa: E402


def median_time(fn, repeats):
    fn()  # warm-up: compilation and caches
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def lmm_case(label, stats, repeats, flashmm, flashmm_genes=None):
    t = median_time(lambda: fm.lmm(stats, warn=False), repeats)
    fit = fm.lmm(stats, nonneg=False, warn=False)
    row = {
        "case": label,
        "genes": stats.n_genes,
        "n": stats.n,
        "p": stats.p,
        "q": stats.q,
        "K": len(stats.d),
        "seconds": t,
        "genes_per_s": stats.n_genes / t,
        "converged": float(fit.converged.mean()),
        "median_iter": float(np.median(fit.niter)),
    }
    if flashmm:
        sub = stats if flashmm_genes is None else stats.subset_genes(slice(0, flashmm_genes))
        elapsed, _, theta, coef = r_tools.flashmm_lmm(sub)
        scale = stats.n_genes / sub.n_genes
        row["flashmm_seconds"] = elapsed * scale
        row["flashmm_genes_timed"] = sub.n_genes
        row["speedup_vs_flashmm"] = elapsed * scale / t
        ours = fm.lmm(sub, nonneg=False, warn=False)  # FLASHMM's semantics, to compare θ
        good = ours.converged
        row["max_rel_diff_theta_vs_flashmm"] = float(
            np.max(
                np.abs(ours.theta[good] - theta[good]) / np.abs(theta[good]).max(axis=1)[:, None]
            )
        )
        row["max_abs_diff_coef_vs_flashmm"] = float(np.max(np.abs(ours.coef[good] - coef[good])))
    return row


#: contrasts of the vignette design's cls:trtB coefficients (x11, x12, ...)
INFERENCE_CONTRASTS = {"c1": "x11", "avg": "(x11 + x12)/2", "joint": ["x11", "x12"]}


def inference_case(label, stats, repeats):
    """Median times of lmmtest (Satterthwaite, three contrasts) and random_effects on one fit."""
    fit = fm.lmm(stats, warn=False)
    return {
        "case": f"(e) inference, {label}",
        "genes": stats.n_genes,
        "K": len(stats.d),
        "lmmtest_seconds": median_time(
            lambda: fm.lmmtest(fit, INFERENCE_CONTRASTS, df="satterthwaite"), repeats
        ),
        "random_effects_seconds": median_time(lambda: fm.random_effects(fit), repeats),
    }


def random_csr(rng, n, G, per_row):
    """n × G CSR count matrix with ``per_row`` stored values per row (sorted, may repeat)."""
    indices = np.sort(rng.integers(0, G, (n, per_row), dtype=np.int32), axis=1).ravel()
    data = rng.geometric(0.4, n * per_row).astype(np.float64)
    indptr = np.arange(0, n * per_row + 1, per_row, dtype=np.int64)
    return sp.csr_matrix((data, indices, indptr), shape=(n, G))


def sumstats_case(rng, n, G, per_row, repeats):
    Y = random_csr(rng, n, G, per_row)
    X, Z, d = ss.vignette_design(rng, n)
    t_stats = median_time(
        lambda: fm.summary_stats(Y, X, Z, d, transform="log1p", progress=False), repeats
    )
    # one plain pass over the stored values, Σ log1p(y)² per gene, done two ways (NumPy's
    # bincount over gene indices; scipy's Y.log1p().power(2).sum(0)): the faster is the baseline
    t_bincount = median_time(
        lambda: np.bincount(Y.indices, weights=np.log1p(Y.data) ** 2, minlength=G), repeats
    )
    t_scipy_pass = median_time(lambda: np.asarray(Y.log1p().power(2).sum(axis=0)), repeats)
    t_pass = min(t_bincount, t_scipy_pass)
    t_scipy_xy = median_time(lambda: Y.log1p().T @ X, 1)
    return {
        "case": "(d) summary stats, sparse",
        "n": n,
        "genes": G,
        "nnz": int(Y.nnz),
        "seconds": t_stats,
        "plain_pass_seconds": t_pass,
        "ratio_to_plain_pass": t_stats / t_pass,
        "bincount_pass_seconds": t_bincount,
        "scipy_sum_sq_seconds": t_scipy_pass,
        "scipy_XtY_only_seconds": t_scipy_xy,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-flashmm", action="store_true", help="skip FLASHMM even if present")
    parser.add_argument(
        "--json", type=Path, default=None,
        help="write results here (default: results/bench_lmm.json, not for --quick)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    rng = np.random.default_rng(20261121)
    flashmm = not args.no_flashmm and r_tools.r_unavailable("FLASHMM") is None
    f = 20 if args.quick else 1
    print(
        f"pyflashmm {fm.__version__}, numba threads {numba.get_num_threads()}, "
        f"cpus {os.cpu_count()}, FLASHMM {'found' if flashmm else 'not found (skipped)'}"
    )
    rows = []
    X, Z, d = ss.vignette_design(rng, 100_000 // f)
    stats = ss.simulate_stats(rng, X, Z, d, 10_000 // f, theta=(0.1, 1.0))
    rows.append(lmm_case("(a) vignette K=1", stats, args.repeats, flashmm))
    inference = [inference_case("vignette K=1", stats, args.repeats)]
    X, Z, d = ss.tb_design(rng, 500_000 // f)
    stats = ss.simulate_stats(rng, X, Z, d, 11_596 // f, theta=(0.1, 1.0))
    rows.append(lmm_case("(b) TB atlas K=1", stats, args.repeats, flashmm, flashmm_genes=300 // f))
    X, Z, d = ss.vignette_design(rng, 100_000 // f, extra_factors=(8,))
    stats = ss.simulate_stats(rng, X, Z, d, 10_000 // f, theta=(0.1, 0.05, 1.0))
    rows.append(lmm_case("(c) crossed K=2", stats, args.repeats, flashmm))
    inference.append(inference_case("crossed K=2", stats, args.repeats))
    rows.append(sumstats_case(rng, 1_000_000 // f, 10_000 // (f // 4 or 1), 100, args.repeats))
    rows.extend(inference)
    for row in rows:
        print(json.dumps(row))
    print()
    print(
        f"{'case':28s} {'genes':>7s} {'p':>3s} {'q':>4s} {'time s':>8s} {'genes/s':>9s}  vs FLASHMM"
    )
    for row in rows[:3]:
        vs = (
            f"{row['speedup_vs_flashmm']:.0f}x (FLASHMM {row['flashmm_seconds']:.1f} s)"
            if "speedup_vs_flashmm" in row
            else "-"
        )
        print(
            f"{row['case']:28s} {row['genes']:7d} {row['p']:3d} {row['q']:4d} "
            f"{row['seconds']:8.3f} {row['genes_per_s']:9.0f}  {vs}"
        )
    r = rows[3]
    print(
        f"{r['case']:28s} nnz {r['nnz']:.2e}: {r['seconds']:.2f} s = "
        f"{r['ratio_to_plain_pass']:.2f}x one plain pass ({r['plain_pass_seconds']:.2f} s: the "
        f"faster of NumPy bincount {r['bincount_pass_seconds']:.2f} s and scipy "
        f"{r['scipy_sum_sq_seconds']:.2f} s); scipy's Y.log1p().T @ X alone: "
        f"{r['scipy_XtY_only_seconds']:.2f} s"
    )
    for r in rows[4:]:
        print(
            f"{r['case']:28s} {r['genes']:7d} genes: lmmtest (Satterthwaite, 3 contrasts) "
            f"{r['lmmtest_seconds']:.3f} s, random_effects {r['random_effects_seconds']:.3f} s"
        )
    if args.json is None and not args.quick:
        args.json = HERE / "results" / "bench_lmm.json"
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
