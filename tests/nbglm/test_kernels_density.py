"""The NB density, the count-table lnΓ/ψ sums and the Cox–Reid log posterior of the dispersion
(``_kernels.nb_density``, ``_kernels.nb_dispersion``) against SciPy oracles and finite
differences."""

from __future__ import annotations

import numpy as np
import pytest
from nbsim import two_group
from numba import njit
from scipy import special, stats

from pyflashmm._kernels import nb_density as D
from pyflashmm._kernels import nb_dispersion as KD
from pyflashmm._kernels.nb_layout import RowMeans, survival_counts, table_of_nonzeros
from pyflashmm._nbglm.count_block import CountBlock
from pyflashmm._nbglm.layout import design_layout, sample_classes


def test_nb_logpdf_matches_scipy():
    # scipy evaluates lnΓ(y + 1/α) − lnΓ(1/α) directly and loses ~1e-8 at α = 1e-7
    # (lnΓ(1e7) ≈ 1.5e8), hence the looser tolerance for that case.
    cases = [
        (0, 3.0, 0.1, 1e-12),
        (5, 2.0, 1e-7, 1e-7),
        (250, 300.0, 0.3, 1e-10),
        (7, 1e-3, 2.0, 1e-10),
    ]
    for y, mu, a, tol in cases:
        r = 1 / a
        ref = stats.nbinom.logpmf(y, r, r / (r + mu))
        assert abs(D.nb_logpdf(float(y), mu, a) - ref) < tol * max(1, abs(ref))


def test_digamma_matches_scipy():
    x = np.array([1e-3, 0.5, 1.0, 5.9, 6.0, 17.5, 1e4])
    got = np.array([D.digamma(v) for v in x])
    # the asymptotic series is truncated after the x⁻¹² term at x ≥ 6: ~1e-12 relative
    np.testing.assert_allclose(got, special.digamma(x), rtol=1e-11)


@pytest.mark.parametrize("r", [1e-4, 0.7, 25.0, 1e8])
def test_count_table_sums_term_by_term_match_scipy(r):
    # Σ_k c_k[lnΓ(v_k + r) − lnΓ(r)] and Σ_k c_k[ψ(r) − ψ(v_k + r)] from the survival counts
    # N_i (term by term) and from K lnΓ/ψ calls, against scipy on the cells directly
    rng = np.random.default_rng(5)
    y = rng.negative_binomial(2.0, 0.2, 400).astype(float)
    pos = y[y > 0]
    vals, cnts = pos.copy(), np.empty(y.size)
    nk, total = table_of_nonzeros(vals, pos.size, cnts)
    assert total == pos.sum()
    surv = survival_counts(vals, cnts, nk)
    assert surv.size == vals[nk - 1]  # integer counts, v_max small: the term-by-term form
    assert surv[0] == np.count_nonzero(y) and surv[-1] == np.count_nonzero(y == vals[nk - 1])
    lg_ref = np.sum(special.gammaln(pos + r) - special.gammaln(r))
    dg_ref = np.sum(special.digamma(r) - special.digamma(pos + r))
    tb = np.empty(surv.size)
    for table in (surv, np.empty(0)):
        lg = D.lgamma_sum(r, nk, vals, cnts, table, tb)
        dg = D.digamma_sum(r, nk, vals, cnts, table, tb)
        # scipy's own differences of large lnΓ values lose digits when r is large
        scale = np.sum(np.abs(special.gammaln(pos + r))) * 1e-15 + 1e-12
        assert abs(lg - lg_ref) <= scale
        assert dg == pytest.approx(dg_ref, rel=1e-10)


def test_survival_counts_fall_back_on_large_or_fractional_counts():
    vals = np.array([1.0, 1e6, 0.0])
    cnts = np.array([3.0, 1.0, 0.0])
    assert survival_counts(vals, cnts, 2).size == 0  # v_max ≫ K: lnΓ calls
    vals = np.array([1.5, 2.0])
    assert survival_counts(vals, cnts, 2).size == 0  # not integers
    assert survival_counts(vals, cnts, 0).size == 0  # no non-zero count


@njit
def _lp_dlp(counts, g, means, classes, Xr, a, prior_mean, obj):
    """lp(a) and lp'(a) of gene g as the line search evaluates them (compressed by class)."""
    m = counts.m
    n = classes.sf.shape[0]
    R, p = Xr.shape
    ent = KD._entries(R, n)
    tab = KD._compress_gene(
        counts, g, means, classes, ent, np.empty(m), np.empty(m), np.empty(m, dtype=np.int64)
    )
    wk = KD._work(R, p, n)
    lp = KD._lp(a, ent, tab, Xr, prior_mean, obj, wk)
    return lp, KD._dlp(a, ent, tab, Xr, prior_mean, obj, wk)


def _lp_oracle(a, y, mu, X, prior_mean, prior_var):
    """lp(a) sample by sample in NumPy/SciPy (the module docstring's formula)."""
    alpha = np.exp(a)
    r = 1 / alpha
    ll = np.sum(
        special.gammaln(y + r) - special.gammaln(r) - y * np.log(mu + r) - r * np.log1p(mu * alpha)
    )
    w = 1 / (1 / mu + alpha)
    cr = -0.5 * np.linalg.slogdet(X.T @ (w[:, None] * X))[1]
    return ll + cr - 0.5 * (a - prior_mean) ** 2 / prior_var


@pytest.mark.parametrize("shared", [True, False])
def test_log_posterior_and_derivative_match_oracle_and_finite_differences(rng, shared):
    Y, X = two_group(rng, m=24, G=3)
    sf = np.exp(rng.normal(0, 0.3, 24))
    sf[:8] = sf[8:16]  # samples sharing a size factor and a row: classes of several samples
    lay = design_layout(X)
    cls = sample_classes(sf, lay, shared=shared)
    assert (cls.sf.size < 24) == shared
    blk = CountBlock.from_dense(np.ascontiguousarray(Y.T))
    lab = lay.rows.lab
    means = np.array([[np.mean(y[lab == q] / sf[lab == q]) for q in range(2)] for y in Y.T])
    rm = RowMeans(means, 0.5)
    obj = KD.Objective(0.7, True, True)
    for g in range(3):
        mu = np.maximum(means[g][lab] * sf, 0.5)
        for a in (-4.0, -1.0, 0.5):
            lp, dlp = _lp_dlp(blk.csr, g, rm, cls, lay.rows.Xr, a, -1.0, obj)
            ref = _lp_oracle(a, Y[:, g], mu, X, -1.0, 0.7)
            assert lp == pytest.approx(ref, rel=1e-12, abs=1e-10)
            # the sample-by-sample kernel of ``exact_dispersion``
            w, B, L = np.empty(24), np.empty((2, 2)), np.empty((2, 2))
            per = D.log_posterior(a, Y[:, g].copy(), mu, X, -1.0, 0.7, True, True, w, B, L)
            assert per == pytest.approx(ref, rel=1e-12, abs=1e-10)
            h = 1e-5
            fd = (
                _lp_dlp(blk.csr, g, rm, cls, lay.rows.Xr, a + h, -1.0, obj)[0]
                - _lp_dlp(blk.csr, g, rm, cls, lay.rows.Xr, a - h, -1.0, obj)[0]
            ) / (2 * h)
            assert abs(fd - dlp) < 1e-6 * max(1, abs(dlp))


def test_row_means_bundle_is_the_floored_expansion():
    rng = np.random.default_rng(2)
    Y, X = two_group(rng, m=12, G=4)
    sf = np.exp(rng.normal(0, 0.3, 12))
    lay = design_layout(X)
    means = np.exp(rng.normal(-2, 2, (4, 2)))
    rm = RowMeans(means, 0.5)
    dense = KD.expand_row_means(means, sf, lay.rows.lab, 0.5)
    np.testing.assert_array_equal(dense, np.maximum(means[:, lay.rows.lab] * sf, 0.5))
    assert rm.minmu == 0.5
