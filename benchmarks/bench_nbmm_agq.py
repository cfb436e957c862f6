"""Time the NB mixed model with adaptive Gauss–Hermite quadrature (``method="agq"``) against
the Laplace fit it starts from, same data, same run.

Data as ``bench_nbmm.py`` (its ``simulate``): ``--cells`` × ``--donors`` × ``--genes``,
``~ cond``, one size factor per cell. Fit only (JIT compilation excluded by a warm-up); the
AGQ time includes its Laplace start. Medians of ``--repeats`` runs, methods alternated.
Results in ``benchmarks/results/bench_nbmm_agq.json``.

Usage: ``python benchmarks/bench_nbmm_agq.py [--cells 2000] [--donors 20] [--genes 50]
[--n-agq 11] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numba
import numpy as np

from pyflashmm._nbmm.fit import nbmm

sys.path.insert(0, str(Path(__file__).parent))
from bench_nbmm import simulate  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cells", type=int, default=2000)
    ap.add_argument("--donors", type=int, default=20)
    ap.add_argument("--genes", type=int, default=50)
    ap.add_argument("--n-agq", type=int, default=11)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    sim = simulate(a.cells, a.donors, a.genes)
    Y, X, donor, s = sim[0], sim[1], sim[2], sim[3]
    kw = {"size_factors": s, "warn": False}
    nbmm(Y[:, :3], X, donor, **kw)
    nbmm(Y[:, :3], X, donor, method="agq", n_agq=a.n_agq, **kw)
    times = {"laplace": [], "agq": []}
    fits = {}
    for _ in range(a.repeats):
        for name, extra in (("laplace", {}), ("agq", {"method": "agq", "n_agq": a.n_agq})):
            t = time.perf_counter()
            fits[name] = nbmm(Y, X, donor, **kw, **extra)
            times[name].append(time.perf_counter() - t)
    lap, agq = fits["laplace"], fits["agq"]
    both = np.isin(lap.status, ("ok",)) & np.isin(agq.status, ("ok",))
    res = {
        "cells": a.cells, "donors": a.donors, "genes": a.genes, "n_agq": a.n_agq,
        "threads": numba.get_num_threads(),
        "median_s": {k: float(np.median(v)) for k, v in times.items()},
        "ratio": float(np.median(times["agq"]) / np.median(times["laplace"])),
        "status_laplace": {k: int(v) for k, v in zip(*np.unique(lap.status, return_counts=True),
                                                      strict=True)},
        "status_agq": {k: int(v) for k, v in zip(*np.unique(agq.status, return_counts=True),
                                                  strict=True)},
        "mean_agq_iterations": float(np.mean((agq.n_iter - lap.n_iter)[both])),
        "max_abs_beta_change": float(np.nanmax(np.abs(agq.coef - lap.coef)[both])),
        "max_loglik_change": float(np.nanmax(np.abs(agq.loglik - lap.loglik)[both])),
    }  # fmt: skip
    print(json.dumps(res, indent=1))
    out = Path(__file__).parent / "results" / "bench_nbmm_agq.json"
    out.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
