"""REML for the NB mixed model (``nbmm(..., reml=True)``): glmmTMB ``REML = TRUE`` reference
fits, the REML objective against a plain SciPy/NumPy oracle on the full (p + J) joint problem,
REML against ML, bad genes, threads and the refused combinations."""

from __future__ import annotations

import math

import numba
import numpy as np
import pandas as pd
import pytest
from scipy import optimize, stats

import pyflashmm as fm
from pyflashmm._kernels import nbmm_reml as _kr
from pyflashmm._nbmm.fit import cell_classes, nbmm

ROOT = __import__("pathlib").Path(__file__).parent / "data" / "glmmtmb-1.1.5"
SCENARIOS = ("high", "low", "unbalanced", "cellcov", "few", "many")


def _load(scenario):
    d = pd.read_csv(ROOT / scenario / "data.csv")
    spec = pd.read_csv(ROOT / scenario / "spec.csv").iloc[0]
    genes = spec.genes.split(";")
    terms = [t.strip() for t in spec.fixed.lstrip("~").split("+")]
    X = pd.DataFrame({"(Intercept)": 1.0, **{t: d[t].astype(float) for t in terms}})
    return d, genes, X


@pytest.fixture(scope="module", params=SCENARIOS)
def scenario(request):
    d, genes, X = _load(request.param)
    args = (d[genes].to_numpy(), X, d.donor.to_numpy())
    fit = nbmm(*args, size_factors=d.s.to_numpy(), reml=True)
    ml = nbmm(*args, size_factors=d.s.to_numpy())
    ref = pd.read_csv(ROOT / request.param / "reml.csv")
    return request.param, genes, fit, ml, ref


def test_reference_is_polished(scenario):
    ref = scenario[4]
    assert (ref.max_abs_grad < 1e-6).all()  # glmmTMB's REML gradient at the fixture's optimum


def test_matches_glmmtmb_reml(scenario):
    name, genes, fit, _, ref = scenario
    p = len(fit.coef_names)
    assert fit.reml
    for g_i, g in enumerate(genes):
        r = ref[ref.gene == g]
        one = r.iloc[0]
        assert list(r.term) == list(fit.coef_names)
        boundary = one.log_sigma < -10  # glmmTMB at σ² → 0
        assert fit.status[g_i] == ("boundary" if boundary else "ok"), (name, g)
        np.testing.assert_allclose(fit.coef[g_i], r.estimate, rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(fit.se[g_i], r.se, rtol=1e-4)
        np.testing.assert_allclose(fit.loglik[g_i], one.logLik, rtol=1e-5)
        # glmmTMB's log θ = −ln α and log σ = ½ ln σ²
        np.testing.assert_allclose(np.log(fit.dispersion[g_i]), -one.log_theta, rtol=1e-5)
        np.testing.assert_allclose(fit.log_dispersion_se[g_i], one.log_theta_se, rtol=1e-4)
        # cross-covariances of β with ln α = −ln θ (glmmTMB's vcov(full = TRUE))
        np.testing.assert_allclose(fit.cov[g_i, :p, p + 1], -r.cov_log_theta, rtol=1e-3, atol=1e-6)
        if boundary:
            assert fit.sigma2[g_i] == 0.0 and np.isnan(fit.log_sigma2_se[g_i])
            assert np.isnan(fit.cov[g_i, :, p]).all()
        else:
            np.testing.assert_allclose(np.log(fit.sigma2[g_i]), 2 * one.log_sigma, rtol=1e-5)
            np.testing.assert_allclose(fit.log_sigma2_se[g_i], 2 * one.log_sigma_se, rtol=1e-4)
            np.testing.assert_allclose(
                fit.cov[g_i, :p, p], 2 * r.cov_log_sigma, rtol=1e-3, atol=1e-6
            )


def test_reml_differs_from_ml_and_mostly_raises_sigma2(scenario):
    name, genes, fit, ml, _ = scenario
    ok = (fit.status == "ok") & (ml.status == "ok")
    assert not np.allclose(fit.coef[ok], ml.coef[ok], rtol=1e-6)
    assert (fit.loglik[ok] != ml.loglik[ok]).all()
    if name == "few":  # 4 donors, 2 per condition: ML's σ² is biased down by ≈ (J − 2)/J
        # every gene: REML σ² above ML's, ≈ 2× here; g3's ML σ² is 0 (boundary), REML's not
        assert (fit.status == "ok").all() and list(ml.status).count("boundary") == 1
        assert (fit.sigma2 > ml.sigma2).all()
        assert np.median(fit.sigma2[ok] / ml.sigma2[ok]) > 1.5


# --- the REML objective against a plain oracle on the full joint problem --------------------


def _nb_logpmf(y, mu, theta):
    return stats.nbinom.logpmf(y, theta, theta / (theta + mu))


def _oracle_reml(y, X, donor, s, tau, lam):
    """ℓ_R cell by cell: u = (β, b) jointly, h(u) = Σ ln NB + Σ ln φ(b_j; 0, σ²), the mode by
    SciPy's trust-region Newton (then
    dense Newton steps), −∇²h = Zᵀ W Z + diag(0, 1/σ²) with Z = [X, donor indicators]
    and W the NB weight (checked against a numerical second derivative of the pmf), log det by
    numpy.linalg.slogdet."""
    theta, s2 = math.exp(lam), math.exp(tau)
    code = np.unique(donor, return_inverse=True)[1]
    J, p = code.max() + 1, X.shape[1]
    Z = np.column_stack([X, np.eye(J)[code]])
    off = np.log(s)
    prior = np.concatenate([np.zeros(p), np.full(J, 1.0 / s2)])

    def parts(u):
        mu = np.exp(Z @ u + off)
        h = _nb_logpmf(y, mu, theta).sum() + stats.norm.logpdf(u[p:], 0, math.sqrt(s2)).sum()
        grad = Z.T @ (theta * (y - mu) / (theta + mu)) - prior * u
        w = theta * mu * (y + theta) / (theta + mu) ** 2
        return h, grad, Z.T @ (w[:, None] * Z) + np.diag(prior), mu, w

    res = optimize.minimize(
        lambda u: -parts(u)[0], np.zeros(p + J), jac=lambda u: -parts(u)[1],
        hess=lambda u: parts(u)[2], method="trust-exact", options={"gtol": 1e-11},
    )  # fmt: skip
    u = res.x
    for _ in range(3):  # full Newton steps on the dense system: the mode to rounding
        u = u + np.linalg.solve(parts(u)[2], parts(u)[1])
    h, grad, neg_hess, mu, w = parts(u)
    assert np.abs(grad).max() < 1e-10
    # the weight is the negative second η-derivative of the pmf (two cells)
    for i in (0, 7):
        e = 1e-4
        d2 = (
            _nb_logpmf(y[i], mu[i] * math.exp(e), theta)
            - 2 * _nb_logpmf(y[i], mu[i], theta)
            + _nb_logpmf(y[i], mu[i] * math.exp(-e), theta)
        ) / e**2
        np.testing.assert_allclose(-d2, w[i], rtol=1e-5)
    sign, logdet = np.linalg.slogdet(neg_hess)
    assert sign > 0
    return h + 0.5 * (p + J) * math.log(2 * math.pi) - 0.5 * logdet, u[:p], u[p:]


@pytest.fixture(scope="module")
def small_data():
    rng = np.random.default_rng(11)
    J, n = 6, 15
    donor = np.repeat(np.arange(J), n)
    m = donor.size
    z = rng.integers(-1, 2, m).astype(float)  # coarse: cells share design rows
    X = np.column_stack([np.ones(m), (donor >= 3).astype(float), z])
    s = np.round(np.exp(rng.normal(0, 0.3, m)), 1)  # shared size factors: classes of > 1 cell
    mu = np.exp(0.5 + 0.3 * X[:, 1] + 0.2 * X[:, 2] + rng.normal(0, 0.5, J)[donor]) * s
    y = rng.negative_binomial(2.0, 2.0 / (2.0 + mu)).astype(float)
    return y, X, donor, s


@pytest.mark.parametrize(("tau", "lam"), [(-1.0, 0.5), (0.7, -1.2), (-6.0, 3.0)])
def test_reml_objective_matches_oracle(small_data, tau, lam):
    y, X, donor, s = small_data
    ref, beta_ref, b_ref = _oracle_reml(y, X, donor, s, tau, lam)
    code = np.unique(donor, return_inverse=True)[1].astype(np.int64)
    J, p = int(code.max()) + 1, X.shape[1]
    cls, doff, Xc, lsc, ncl = cell_classes(X, code, s, J)
    assert ncl.max() > 1  # the class sums are exercised
    sy = np.bincount(cls, weights=y, minlength=ncl.size)
    beta, b = np.zeros(p), np.zeros(J)
    S, L = np.empty((p, p)), np.zeros((p, p))
    got = _kr.reml_loglik(
        tau, lam, beta, b, Xc, lsc, ncl, sy, doff, y[y > 0], np.empty(ncl.size), S, L
    )
    np.testing.assert_allclose(got, ref, rtol=1e-10)
    np.testing.assert_allclose(beta, beta_ref, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(b, b_ref, rtol=1e-7, atol=1e-9)


def test_sigma2_at_zero_reaches_the_bound():
    # null genes with no donor variance (6 donors × 200 cells): REML's maximum in σ² is at 0,
    # where ℓ_R is flat in ln σ² to rounding. These genes (among 1000 simulated) wandered at
    # σ² ~ 1e-9…1e-7 until max_iter before the fit tried the bound directly.
    sim = fm.simulate_rnaseq(n_genes=1000, n_cells=1200, n_samples=6, n_clusters=1,
                             samples_nested=True, var_random_effects=0.0, null=True,
                             rng=np.random.default_rng(7))  # fmt: skip
    genes = [14, 32, 38, 45, 72, 77, 91, 94]
    Y = sim.counts[:, genes]
    X = fm.design(sim.obs, "~ trt").X_frame()
    donor = sim.obs["sam"].to_numpy()
    sf = fm.size_factors(sim.counts, "poscounts")  # as when all 1000 genes are fitted
    fit = nbmm(Y, X, donor, size_factors=sf, reml=True)
    assert set(fit.status) == {"boundary"}
    assert (fit.sigma2 == 0).all() and np.isfinite(fit.se).all()
    # the maximum in ln σ² (at the fitted α) is at the bound: ℓ_R on a grid is no higher
    code = np.unique(donor, return_inverse=True)[1].astype(np.int64)
    cls, doff, Xc, lsc, ncl = cell_classes(X.to_numpy(), code, fit.size_factors, 6)
    p = X.shape[1]
    for g in range(len(genes)):
        y = np.asarray(Y[:, [g]].todense()).ravel()
        sy = np.bincount(cls, weights=y, minlength=ncl.size)
        lam = -math.log(fit.dispersion[g])
        for tau in (-12.0, -8.0, -5.0, -3.0, -1.0):
            beta, b = fit.coef[g].copy(), np.zeros(6)
            scratch = (np.empty(ncl.size), np.empty((p, p)), np.zeros((p, p)))
            ll = _kr.reml_loglik(tau, lam, beta, b, Xc, lsc, ncl, sy, doff, y[y > 0], *scratch)
            assert ll <= fit.loglik[g] + 1e-9 * abs(fit.loglik[g]), (g, tau)


# --- bad genes, threads, errors --------------------------------------------------------------


def test_bad_genes_get_status_and_nan(small_data):
    y, X, donor, s = small_data
    one_donor = np.where(donor == 2, y + 1, 0.0)
    Y = np.column_stack([y, np.zeros_like(y), one_donor, y[::-1]])
    fit = nbmm(Y, X, donor, size_factors=s, reml=True)
    assert list(fit.status) == ["ok", "all_zero", "one_group", "ok"]
    for g in (1, 2):
        assert np.isnan(fit.coef[g]).all() and np.isnan(fit.se[g]).all()
        assert np.isnan(fit.loglik[g]) and not fit.converged[g]
    alone = nbmm(y[:, None], X, donor, size_factors=s, reml=True)
    for f in ("coef", "se", "sigma2", "dispersion", "loglik", "modes"):
        np.testing.assert_array_equal(getattr(alone, f)[0], getattr(fit, f)[0])


def test_threads_agree_bitwise(small_data):
    y, X, donor, s = small_data
    rng = np.random.default_rng(3)
    Y = np.column_stack([y, rng.permutation(y), np.roll(y, 7), np.roll(y, 20)])
    old = numba.get_num_threads()
    try:
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        two = nbmm(Y, X, donor, size_factors=s, reml=True)
        numba.set_num_threads(1)
        one = nbmm(Y, X, donor, size_factors=s, reml=True)
    finally:
        numba.set_num_threads(old)
    for f in ("coef", "cov", "sigma2", "dispersion", "loglik", "modes", "n_iter"):
        np.testing.assert_array_equal(getattr(two, f), getattr(one, f))


def test_wald_on_a_reml_fit(small_data):
    y, X, donor, s = small_data
    fit = nbmm(np.column_stack([y, y[::-1]]), X, donor, size_factors=s, reml=True)
    table = fm.nbmm_test(fit, "x1", df="z")
    np.testing.assert_allclose(table.se * math.log(2), fit.se[:, 1], rtol=1e-12)
    np.testing.assert_allclose(table.stat, fit.coef[:, 1] / fit.se[:, 1], rtol=1e-12)


def test_errors(small_data):
    y, X, donor, s = small_data
    with pytest.raises(ValueError, match="reml=True with method='agq' is not supported"):
        nbmm(y[:, None], X, donor, size_factors=s, method="agq", reml=True)
    with pytest.raises(ValueError, match="reml must be True or False"):
        nbmm(y[:, None], X, donor, size_factors=s, reml="yes")
    fit = nbmm(y[:, None], X, donor, size_factors=s, reml=True)
    with pytest.raises(ValueError, match="REML likelihoods of models with different fixed"):
        fm.nbmm_test(fit, "x1", test="lrt")
    assert nbmm(y[:, None], X, donor, size_factors=s).reml is False
