"""IRLS of the NB GLM and its log-likelihood (``_kernels.nb_irls``) against statsmodels, SciPy
and the per-sample arithmetic."""

from __future__ import annotations

import math

import numpy as np
from nbsim import two_group
from scipy import stats

from pyflashmm._kernels import nb_irls as K
from pyflashmm._kernels.nb_density import nb_logpdf
from pyflashmm._nbglm.count_block import CountBlock
from pyflashmm._nbglm.layout import design_layout, sample_classes


def test_fit_beta_matches_statsmodels(rng):
    """IRLS at fixed α vs statsmodels' NB GLM (ridge 1e-6 changes β by < 1e-6)."""
    import statsmodels.api as sm

    Y, X = two_group(rng, m=20, G=5)
    sf = np.exp(rng.normal(0, 0.2, X.shape[0]))
    alpha = np.full(5, 0.1)
    lay = design_layout(X)
    classes = sample_classes(sf, lay)
    assert classes.size.size == X.shape[0]  # every sample its own class: the per-sample IRLS
    irls = K.Irls(np.full(2, 1e-6 / math.log(2) ** 2), 1e-300, 1e-12, 200)
    beta, sigma, *_ = K.fit_beta(
        CountBlock.from_dense(Y.T).csr, sf, lay.rows, classes, alpha, lay.start, irls
    )
    for g in range(5):
        mod = sm.GLM(
            Y[:, g], X, family=sm.families.NegativeBinomial(alpha=0.1), offset=np.log(sf)
        ).fit(tol=1e-13)
        np.testing.assert_allclose(beta[g], mod.params, atol=1e-5)
        np.testing.assert_allclose(np.sqrt(np.diag(sigma[g])), mod.bse, rtol=1e-4)


def test_fit_beta_classes_equal_per_sample(rng):
    """IRLS over classes of samples sharing size factor and design row = per-sample IRLS."""
    m = 300
    X = np.column_stack([np.ones(m), rng.integers(0, 2, m), rng.integers(0, 2, m)]).astype(float)
    sf = rng.choice([0.5, 0.8, 1.0, 1.7], m)
    Y = rng.negative_binomial(3, 0.7, (6, m)).astype(float)
    Y[0] = 0.0
    Y[0, :2] = 1.0
    lay = design_layout(X)
    shared = sample_classes(sf, lay)
    own = sample_classes(sf, lay, shared=False)  # every sample its own class
    assert shared.size.size < m and own.size.size == m
    irls = K.Irls(np.full(3, 1e-6), 1e-6, 1e-10, 100)
    alpha = np.full(6, 0.3)
    blk = CountBlock.from_dense(Y).csr
    a = K.fit_beta(blk, sf, lay.rows, shared, alpha, lay.start, irls)
    b = K.fit_beta(blk, sf, lay.rows, own, alpha, lay.start, irls)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-8, atol=1e-12)


def test_means_only_fit_and_row_means_reproduce_the_full_fit(rng):
    """``fit_beta_means`` (the reduced model of an LRT) gives ``fit_beta``'s coefficients and
    means bit for bit, and ``design_row_means`` recomputes the means from the coefficients."""
    m = 40
    X = np.column_stack([np.ones(m), rng.integers(0, 3, m), rng.normal(0, 1, m)])
    sf = np.exp(rng.normal(0, 0.3, m))
    Y = rng.negative_binomial(2, 0.3, (25, m)).astype(float)
    Y[3] = 0.0
    Y[3, 0] = 500.0  # a gene that needs many iterations or aborts
    lay = design_layout(X)
    cls = sample_classes(sf, lay)
    irls = K.Irls(np.full(3, 2e-6), 0.5, 1e-8, 100)
    alpha = rng.uniform(0.05, 2.0, 25)
    blk = CountBlock.from_dense(Y).csr
    beta, sigma, it, row_mu, _wmu, _hat = K.fit_beta(blk, sf, lay.rows, cls, alpha, lay.start, irls)
    beta2, it2, var_ok, row_mu2 = K.fit_beta_means(blk, sf, lay.rows, cls, alpha, lay.start, irls)
    np.testing.assert_array_equal(beta, beta2)
    np.testing.assert_array_equal(it, it2)
    np.testing.assert_array_equal(row_mu, row_mu2)
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(var_ok, (np.diagonal(sigma, axis1=1, axis2=2) > 0).all(1))
    ok = np.isfinite(beta).all(axis=1)
    np.testing.assert_array_equal(K.design_row_means(lay.rows.Xr, beta[ok]), row_mu[ok])


def test_intercept_fit_matches_numpy(rng):
    Y = rng.negative_binomial(2, 0.3, (25, 60)).astype(float)
    sf = rng.uniform(0.5, 2.0, 60)
    alpha = rng.uniform(0.05, 1.0, 25)
    bm, xtwx = K.intercept_fit(CountBlock.from_dense(Y).csr, sf, alpha)
    ref = (Y / sf).mean(axis=1)
    np.testing.assert_allclose(bm, ref, rtol=1e-14)
    w = 1.0 / (1.0 / np.outer(ref, sf) + alpha[:, None])
    np.testing.assert_allclose(xtwx, w.sum(axis=1), rtol=1e-13)


def test_nb_loglik_matches_scipy_and_the_per_sample_sum(rng):
    # the per-class and per-count caches change the work, not a bit of the result: the sum of
    # nb_logpdf over the samples in order (tiny α, non-integer and huge counts, a zero mean)
    m, G = 60, 12
    X = np.eye(3)[np.r_[0, 1, 2, rng.integers(0, 3, m - 3)]]
    lay = design_layout(X)
    sf = rng.choice([0.5, 0.8, 1.3], m)
    Y = rng.negative_binomial(2, 0.3, (G, m)).astype(float)
    Y[0, :3] = [2.5, 1e6, 7.0]
    row_mu = np.exp(rng.normal(1, 1, (G, 3)))
    row_mu[1, 0] = 0.0
    alpha = rng.uniform(0.05, 1.0, G)
    alpha[2] = 1e-7
    lab = lay.rows.lab
    for classes in (sample_classes(sf, lay), sample_classes(sf, lay, shared=False)):
        got = K.nb_loglik(CountBlock.from_dense(Y).csr, classes, row_mu, alpha)
        for g in range(G):
            ref = 0.0
            for j in range(m):
                ref += nb_logpdf(Y[g, j], sf[j] * row_mu[g, lab[j]], alpha[g])
            assert got[g] == ref or (np.isnan(ref) and np.isnan(got[g]))
    ok = np.arange(G) > 1
    mu = sf * row_mu[:, lab]
    r = 1 / alpha[:, None]
    ref = stats.nbinom.logpmf(Y, r, r / (r + mu)).sum(axis=1)
    np.testing.assert_allclose(
        got[ok & (np.arange(G) != 2)], ref[ok & (np.arange(G) != 2)], rtol=1e-11
    )
    assert got[1] == -np.inf  # a zero mean under a positive count
