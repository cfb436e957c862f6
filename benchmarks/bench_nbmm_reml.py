"""REML vs ML fit time of ``nbmm``: 2,000 cells × 20 donors × 50 genes, ``~ cond``, one size
factor per cell; medians of 3 alternated runs in one process (after a warm-up compile).

Run: ``PYTHONPATH=src python benchmarks/bench_nbmm_reml.py``
"""

from __future__ import annotations

import time

import numba
import numpy as np

from pyflashmm import nbmm


def simulate(rng, n_cells=2000, n_donors=20, n_genes=50):
    donor = np.repeat(np.arange(n_donors), n_cells // n_donors)
    cond = (donor >= n_donors // 2).astype(float)
    X = np.column_stack([np.ones(donor.size), cond])
    s = np.exp(rng.normal(0, 0.3, donor.size))
    base = np.log(rng.lognormal(0.0, 1.0, n_genes))
    sig = np.sqrt(rng.uniform(0.05, 0.5, n_genes))
    alpha = rng.uniform(0.05, 1.0, n_genes)
    eta = base + np.outer(cond, rng.normal(0, 0.3, n_genes))
    eta = eta + rng.normal(0, 1, (n_donors, n_genes))[donor] * sig + np.log(s)[:, None]
    mu = np.exp(eta)
    Y = rng.negative_binomial(1 / alpha, 1 / (1 + alpha * mu)).astype(float)
    return Y, X, donor, s


def main():
    Y, X, donor, s = simulate(np.random.default_rng(2026))
    for reml in (False, True):  # compile
        nbmm(Y[:, :2], X, donor, size_factors=s, reml=reml, warn=False)
    times = {False: [], True: []}
    fits = {}
    for _ in range(3):
        for reml in (False, True):
            t0 = time.perf_counter()
            fits[reml] = nbmm(Y, X, donor, size_factors=s, reml=reml, warn=False)
            times[reml].append(time.perf_counter() - t0)
    ml, rf = np.median(times[False]), np.median(times[True])
    print(f"threads {numba.get_num_threads()}; density {np.mean(Y > 0):.2f}")
    print(f"ML   median {ml:.3f} s  ({50 / ml:.0f} genes/s), statuses {_count(fits[False])}")
    print(f"REML median {rf:.3f} s  ({50 / rf:.0f} genes/s), statuses {_count(fits[True])}")
    print(f"REML / ML = {rf / ml:.2f}; mean REML outer iterations "
          f"{np.mean(fits[True].n_iter - fits[False].n_iter):.1f}; median σ² REML/ML "
          f"{np.median(fits[True].sigma2 / fits[False].sigma2):.3f}")  # fmt: skip


def _count(fit):
    v, c = np.unique(fit.status, return_counts=True)
    return dict(zip(v.tolist(), c.tolist(), strict=True))


if __name__ == "__main__":
    main()
