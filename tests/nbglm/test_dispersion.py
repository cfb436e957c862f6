"""Dispersion estimation (``_nbglm.dispersion``, ``_nbglm.trend``): the line search over classes
of samples against the sample-by-sample search and against a direct maximisation, and the
trend's failure modes."""

from __future__ import annotations

import numpy as np
import pytest
from nbsim import two_group
from scipy import optimize, special

from pyflashmm._kernels.nb_layout import RowMeans
from pyflashmm._nbglm import dispersion as D
from pyflashmm._nbglm import trend as T
from pyflashmm._nbglm.count_block import CountBlock
from pyflashmm._nbglm.layout import design_layout, sample_classes


def _setup(rng, m=24, G=40):
    Y, X = two_group(rng, m=m, G=G)
    sf = np.exp(rng.normal(0.0, 0.3, m))
    sf[:6] = sf[6:12]  # some samples share a size factor and a design row
    lay = design_layout(X)
    lab = lay.rows.lab
    means = np.array([[np.mean(y[lab == r] / sf[lab == r]) for r in range(2)] for y in Y.T])
    return CountBlock.from_dense(np.ascontiguousarray(Y.T)), sf, lay, RowMeans(means, 0.5)


def test_line_search_over_classes_equals_sample_by_sample(rng):
    # sums over classes of samples instead of samples: the same search up to rounding
    blk, sf, lay, rm = _setup(rng)
    a0 = np.full(blk.shape[0], np.log(0.1))
    shared = sample_classes(sf, lay)
    own = sample_classes(sf, lay, shared=False)
    assert shared.sf.size < own.sf.size
    got = D.line_search(blk, rm, lay, shared, a0)
    ref = D.line_search(blk, rm, lay, own, a0)
    np.testing.assert_array_equal(got[1], ref[1])  # iterations
    for a, b in zip(got, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_gene_wise_dispersion_maximises_the_cox_reid_likelihood(rng):
    # the polished (exact) estimates are the maximum of the Cox–Reid adjusted likelihood,
    # computed here with SciPy; DESeq2's line search stops within its tolerance of it
    blk, sf, lay, rm = _setup(rng, G=8)
    cls = sample_classes(sf, lay)
    a0 = np.full(8, 0.1)
    exact = D.gene_wise_dispersion(blk, rm, sf, lay, cls, a0, exact=True)
    line = D.gene_wise_dispersion(blk, rm, sf, lay, cls, a0)
    mu = D.expand_means(rm, sf, lay)
    Y, X = blk.dense(), lay.X
    for g in range(8):

        def nlp(a, y=Y[g], mu=mu[g]):
            alpha = np.exp(a)
            r = 1 / alpha
            ll = np.sum(
                special.gammaln(y + r)
                - special.gammaln(r)
                - y * np.log(mu + r)
                - r * np.log1p(mu * alpha)
            )
            w = 1 / (1 / mu + alpha)
            return -(ll - 0.5 * np.linalg.slogdet(X.T @ (w[:, None] * X))[1])

        res = optimize.minimize_scalar(
            nlp, bounds=(np.log(1e-8), np.log(24)), method="bounded", options={"xatol": 1e-10}
        )
        if res.x > np.log(1e-6):  # away from the lower bound, where the likelihood is flat
            assert np.log(exact[g]) == pytest.approx(res.x, abs=1e-6)
            assert abs(np.log(line[g]) - res.x) < 1e-2


def test_local_trend_needs_three_genes_and_a_terminating_tree():
    with pytest.raises(T.TrendFitError, match="at least 3 genes"):
        T.LocalTrend(np.log([1.0, 2.0]), np.log([0.1, 0.2]), np.array([1.0, 2.0]))
    # two of three base means equal: the bandwidth shrinks with the cells, which would be
    # split forever
    with pytest.raises(T.TrendFitError, match="does not terminate"):
        T.LocalTrend(np.array([0.0, 0.0, 1.0]), np.zeros(3), np.ones(3))
    with pytest.raises(ValueError, match="local dispersion trend could not be fitted"):
        T.fit_trend(np.array([5.0, 50.0]), np.array([0.3, 0.1]), "local")


def test_fitted_trends_evaluate_their_formulas():
    rng = np.random.default_rng(3)
    bm = np.exp(rng.normal(3, 1.5, 400))
    disp = (0.05 + 2.0 / bm) * np.exp(rng.normal(0, 0.3, 400))
    par = T.fit_trend(bm, disp, "parametric")
    assert par.kind == "parametric"
    a0, a1 = par.coefficients
    np.testing.assert_array_equal(par(bm), a0 + a1 / bm)
    assert a0 == pytest.approx(0.05, rel=0.3) and a1 == pytest.approx(2.0, rel=0.3)
    mean = T.fit_trend(bm, disp, "mean")
    np.testing.assert_array_equal(mean(bm), np.full(400, mean.mean))
    local = T.fit_trend(bm, disp, "local")
    assert local.kind == "local" and local.coefficients is None
    assert np.all(np.abs(np.log(local(bm)) - np.log(par(bm))) < 0.5)
