"""Cook's distances, the robust moment variance and the selection-based order statistics behind
them (``_kernels.nb_cooks``, ``_kernels.order_stats``) against NumPy."""

from __future__ import annotations

import numpy as np
from numba import njit

from pyflashmm._kernels import nb_cooks as K
from pyflashmm._kernels.nb_layout import FittedRows
from pyflashmm._kernels.order_stats import median_inplace, trimmed_mean_row
from pyflashmm._nbglm.count_block import CountBlock
from pyflashmm._nbglm.layout import design_layout, sample_classes
from pyflashmm._nbglm.r_stats import trimmed_mean


@njit
def _trimmed_means(A, v0, trim):
    """``trimmed_mean_row`` of every row of A (the v0[g] entries counted, not selected)."""
    G, n = A.shape
    lo = int(np.floor(n * trim))
    out = np.empty(G)
    for g in range(G):
        out[g] = trimmed_mean_row(A[g], 0, v0[g], lo, n - lo, np.empty(n), np.empty(n))
    return out


def test_trimmed_means_by_selection_match_sorting(rng):
    """Selection-based trimmed means (ties, many zeros, the counted value v) equal R's
    sorted ``mean(x, trim=)``; the robust variance kernel equals its NumPy definition."""
    for t in range(300):
        n = int(rng.integers(1, 60))
        A = rng.choice([0.0, 0.5, 1.0, 2.0, 7.5], (3, n)) if t % 2 else rng.random((3, n))
        A[:, rng.random(n) < 0.4] = 0.0
        trim = float(rng.choice([1 / 8, 1 / 4, 1 / 3]))
        v0 = A[np.arange(3), rng.integers(0, n, 3)] if t % 3 else np.zeros(3)
        np.testing.assert_allclose(
            _trimmed_means(A, v0, trim), trimmed_mean(A, trim, 1), rtol=1e-13, atol=0
        )
    Y = rng.negative_binomial(2, 0.6, (7, 90)).astype(float)
    sf = np.exp(rng.normal(0, 0.3, 90))
    sets = [np.arange(0, 90, 2), np.arange(1, 60, 2), np.arange(61, 90, 2)]
    trims = np.array([1 / 8, 1 / 4, 1 / 3])
    scales = np.array([1.51, 1.86, 2.04])
    off = np.cumsum([0] + [c.size for c in sets]).astype(np.int64)
    got = K.robust_var_rows(
        CountBlock.from_dense(Y).csr,
        sf,
        K.SampleSets(np.concatenate(sets).astype(np.int64), off, trims, scales),
    )
    Q = Y / sf
    ref = np.max(
        [
            s * trimmed_mean((Q[:, c] - trimmed_mean(Q[:, c], tr, 1)[:, None]) ** 2, tr, 1)
            for c, tr, s in zip(sets, trims, scales, strict=True)
        ],
        axis=0,
    )
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=0)


def test_median_by_selection_equals_numpy(rng):
    for n in (1, 2, 3, 10, 11, 100):
        a = rng.choice([0.0, 1.0, 2.5, -3.0], n) if n % 2 else rng.normal(size=n)
        assert median_inplace(a.copy(), n) == np.median(a)


def test_cooks_distances_and_summaries_match_numpy():
    """Cook's distances from per-row fit quantities and per-class terms vs the per-sample
    formula in NumPy; the row summaries vs NumPy on the kernel's own distance matrix."""
    rng = np.random.default_rng(11)
    G, m, p, minmu = 30, 400, 3, 0.5
    X = np.column_stack([np.ones(m), rng.integers(0, 2, m), rng.integers(0, 3, m)]).astype(float)
    lay = design_layout(X)
    lab, R = lay.rows.lab, lay.n_rows
    sf = rng.choice([0.3, 0.8, 1.0, 1.7, 2.2], m)
    classes = sample_classes(sf, lay)
    assert classes.sf.size < m
    row_mu = np.exp(rng.normal(0, 1, (G, R)))
    row_wmu = row_mu * np.exp(rng.normal(0, 0.1, (G, R)))
    row_hat = rng.uniform(1e-4, 0.05, (G, R))
    row_hat[3] = np.nan  # a gene whose XᵀWX was not positive definite
    alpha = rng.uniform(0.01, 1.0, G)
    a = rng.uniform(0.04, 0.5, G)
    Y = rng.poisson(row_mu[:, lab] * sf * 1.3).astype(float)
    Y[8] = 2.0  # ties: the first largest distance counts
    fitted = FittedRows(row_mu, row_wmu, row_hat, minmu)
    got = K.cooks_matrix(CountBlock.from_dense(Y).csr, classes, fitted, alpha, a, float(p))
    mu = sf * row_mu[:, lab]
    mw = np.maximum(sf * row_wmu[:, lab], minmu)
    h = mw / (1 + alpha[:, None] * mw) * row_hat[:, lab]
    ref = (Y - mu) ** 2 / (mu + a[:, None] * mu**2) / p * h / (1 - h) ** 2
    np.testing.assert_allclose(got, ref, rtol=1e-13)
    assert np.isnan(got[3]).all()
    use = rng.random(m) < 0.7
    keep = rng.random(m) < 0.5
    mx, mx_keep, mx_all, n_above = K.cooks_summary(
        CountBlock.from_dense(Y).csr, classes, fitted, alpha, a, float(p), use, keep
    )
    np.testing.assert_array_equal(mx, got[:, use].max(axis=1))
    np.testing.assert_array_equal(mx_keep, np.where(keep, got, 0.0)[:, use].max(axis=1))
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(mx_all[np.arange(G) != 3], np.nanmax(np.delete(got, 3, 0), 1))
    assert mx_all[3] == -np.inf
    at = np.take_along_axis(Y, np.argmax(got, axis=1)[:, None], axis=1)
    np.testing.assert_array_equal(n_above, (Y > at).sum(axis=1))
