"""Time the NB mixed model's estimation options against its default Laplace (ML) fit, same data,
same run: adaptive Gauss–Hermite quadrature (``method="agq"``) and REML (``reml=True``).

Data as ``bench_nbmm.py`` (its ``simulate``): ``--cells`` × ``--donors`` × ``--genes``,
``~ cond``, one size factor per cell. Fit only (JIT compilation excluded by a warm-up); AGQ and
REML start from the Laplace fit, whose time they include. Medians of ``--repeats`` runs, the
three alternated. Results in ``benchmarks/results/bench_nbmm_options.json``.

Usage: ``python benchmarks/bench_nbmm_options.py [--cells 2000] [--donors 20] [--genes 50]
[--n-agq 11] [--repeats 3]``.
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

from pyflashmm import nbmm

sys.path.insert(0, str(Path(__file__).parent))
from bench_nbmm import simulate  # noqa: E402


def _counts(status) -> dict:
    return {str(k): int(v) for k, v in zip(*np.unique(status, return_counts=True), strict=True)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cells", type=int, default=2000)
    ap.add_argument("--donors", type=int, default=20)
    ap.add_argument("--genes", type=int, default=50)
    ap.add_argument("--n-agq", type=int, default=11)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    Y, X, donor, s = simulate(a.cells, a.donors, a.genes)[:4]
    options = {
        "laplace": {},
        "agq": {"method": "agq", "n_agq": a.n_agq},
        "reml": {"reml": True},
    }
    for extra in options.values():  # compile
        nbmm(Y[:, :3], X, donor, size_factors=s, warn=False, **extra)
    times = {k: [] for k in options}
    fits = {}
    for _ in range(a.repeats):
        for name, extra in options.items():
            t = time.perf_counter()
            fits[name] = nbmm(Y, X, donor, size_factors=s, warn=False, **extra)
            times[name].append(time.perf_counter() - t)
    lap = fits["laplace"]
    res = {
        "cells": a.cells, "donors": a.donors, "genes": a.genes, "n_agq": a.n_agq,
        "threads": numba.get_num_threads(),
        "load_average_1_5_15min": list(os.getloadavg()),
        "times_s": times,
        "median_s": {k: float(np.median(v)) for k, v in times.items()},
        "ratio_to_laplace": {k: float(np.median(v) / np.median(times["laplace"]))
                             for k, v in times.items()},
        "status": {k: _counts(f.status) for k, f in fits.items()},
    }  # fmt: skip
    for name in ("agq", "reml"):
        f = fits[name]
        both = (lap.status == "ok") & (f.status == "ok")
        res[name] = {
            "mean_extra_iterations": float(np.mean((f.n_iter - lap.n_iter)[both])),
            "max_abs_beta_change": float(np.max(np.abs(f.coef - lap.coef)[both])),
            "median_sigma2_ratio": float(np.median(f.sigma2[both] / lap.sigma2[both])),
        }
    print(json.dumps(res, indent=1))
    out = Path(__file__).parent / "results" / "bench_nbmm_options.json"
    out.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
