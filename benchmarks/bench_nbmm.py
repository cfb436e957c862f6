"""Time the NB mixed model's per-gene Newton fit: analytic Hessian against the Hessian by
forward differences of the analytic gradient (the previous method), same data, same run.

Simulated data: ``--cells`` cells × ``--donors`` donors (equal sizes) × ``--genes`` genes,
``~ cond`` (a donor-level condition, half the donors), one size factor per cell, donor
intercepts N(0, 0.3²), NB α = 0.3, gene means log-uniform on [0.05, 5]. Fit only (JIT
compilation excluded by a warm-up on the first 5 genes); medians of ``--repeats`` runs, the two
methods alternated. Results in ``benchmarks/results/bench_nbmm.json``.

Usage: ``python benchmarks/bench_nbmm.py [--cells 20000] [--donors 20] [--genes 200]
[--repeats 3]``. Not a comparison with glmmTMB or NEBULA (issue left-to-do).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numba
import numpy as np
import scipy.sparse as sp

from pyflashmm._nbmm import fit as _fit


def simulate(cells, donors, genes, seed=0):
    rng = np.random.default_rng(seed)
    donor = np.repeat(np.arange(donors), cells // donors)
    m = donor.size
    cond = (donor % 2).astype(float)
    X = np.column_stack([np.ones(m), cond])
    s = np.exp(rng.normal(0.0, 0.3, m))
    base = np.exp(rng.uniform(np.log(0.05), np.log(5.0), genes))
    eff = rng.normal(0.0, 0.3, genes) * (rng.random(genes) < 0.2)
    b = rng.normal(0.0, 0.3, (donors, genes))
    mu = s[:, None] * base[None, :] * np.exp(eff[None, :] * cond[:, None] + b[donor])
    alpha = 0.3
    y = rng.negative_binomial(1.0 / alpha, 1.0 / (1.0 + alpha * mu)).astype(np.float64)
    return sp.csr_matrix(y), X, donor, s


def run(Y, X, donor, s, analytic):
    _fit._ANALYTIC_HESSIAN = analytic
    t = time.perf_counter()
    f = _fit.nbmm(Y, X, donor, size_factors=s, warn=False)
    return time.perf_counter() - t, f


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cells", type=int, default=20000)
    ap.add_argument("--donors", type=int, default=20)
    ap.add_argument("--genes", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    Y, X, donor, s = simulate(a.cells, a.donors, a.genes)
    for an in (False, True):
        run(Y[:, :5], X, donor, s, an)
    times = {"fd": [], "analytic": []}
    fits = {}
    for _ in range(a.repeats):
        for name, an in (("fd", False), ("analytic", True)):
            t, fits[name] = run(Y, X, donor, s, an)
            times[name].append(t)
    _fit._ANALYTIC_HESSIAN = True
    fd, an = fits["fd"], fits["analytic"]
    both = np.isin(fd.status, ("ok", "boundary")) & np.isin(an.status, ("ok", "boundary"))
    res = {
        "cells": a.cells,
        "donors": a.donors,
        "genes": a.genes,
        "threads": numba.get_num_threads(),
        "density": Y.nnz / (Y.shape[0] * Y.shape[1]),
        "times_s": times,
        "median_s": {k: float(np.median(v)) for k, v in times.items()},
        "genes_per_s": {k: a.genes / float(np.median(v)) for k, v in times.items()},
        "mean_iter": {"fd": float(fd.n_iter.mean()), "analytic": float(an.n_iter.mean())},
        "status_equal": bool((fd.status == an.status).all()),
        "max_rel_diff_coef": float(
            np.max(np.abs(fd.coef[both] - an.coef[both]) / np.maximum(np.abs(fd.coef[both]), 1e-3))
        ),
        "max_rel_diff_se": float(np.max(np.abs(fd.se[both] / an.se[both] - 1.0))),
        "max_abs_diff_loglik": float(np.max(np.abs(fd.loglik[both] - an.loglik[both]))),
    }
    res["speedup"] = res["median_s"]["fd"] / res["median_s"]["analytic"]
    print(json.dumps(res, indent=1))
    out = Path(__file__).parent / "results" / "bench_nbmm.json"
    out.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
