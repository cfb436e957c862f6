"""Adaptive Gauss–Hermite quadrature for the NB mixed model (``nbmm(method="agq")``): n = 1 is
the Laplace approximation, the AGQ log-likelihood against adaptive quadrature (SciPy ``quad``)
of each donor's integral, the AGQ maximum against a SciPy maximisation of that integral, lme4's
AGQ deviance (fixtures), and the batch behaviour."""

from __future__ import annotations

import math
from pathlib import Path

import numba
import numpy as np
import pandas as pd
import pytest
from numpy.polynomial.hermite import hermgauss
from scipy import integrate, optimize, special, stats

from pyflashmm._kernels import nbmm as _k
from pyflashmm._kernels import nbmm_agq as _ka
from pyflashmm._nbmm.agq import hermite_rule
from pyflashmm._nbmm.fit import cell_classes, nbmm

# the AGQ kernels take about a minute to compile on a cold cache (the CI's): the slow run
pytestmark = pytest.mark.slow

LME4 = Path(__file__).parent / "data" / "lme4-1.1.31" / "nbmm_agq"


def _simulate(seed, J, n, b0, sigma, theta):
    rng = np.random.default_rng(seed)
    donor = np.repeat(np.arange(J), n)
    m = donor.size
    X = np.column_stack([np.ones(m), (donor >= J // 2).astype(float), rng.normal(0, 1, m)])
    s = np.exp(rng.normal(0, 0.3, m))
    mu = np.exp(b0 + 0.3 * X[:, 1] + 0.2 * X[:, 2] + rng.normal(0, sigma, J)[donor]) * s
    y = rng.negative_binomial(theta, theta / (theta + mu)).astype(float)
    return y, X, donor, s


@pytest.fixture(scope="module")
def low_gene():
    """Low counts (mean 0.75, half zeros): the Laplace approximation is worst here."""
    return _simulate(5, 6, 12, -1.0, 0.9, 1.5)


@pytest.fixture(scope="module")
def high_gene():
    return _simulate(2, 6, 12, 2.5, 0.5, 8.0)


class Inputs:
    """The kernel's class-level inputs for one gene."""

    def __init__(self, y, X, donor, s):
        code = np.unique(donor, return_inverse=True)[1].astype(np.int64)
        self.J = int(code.max()) + 1
        cls, self.doff, self.Xc, self.lsc, self.ncl = cell_classes(X, code, s, self.J)
        self.sy = np.bincount(cls, weights=y, minlength=self.ncl.size)
        self.yv = y[y > 0].astype(float)
        self.p = X.shape[1]

    def agq(self, psi, n, grad=None, free=None):
        xk, lwk = hermite_rule(n)
        P = self.p + 2
        free = np.ones(P, np.bool_) if free is None else free
        g = np.empty(P) if grad is None else grad
        return _ka.agq_loglik(
            np.asarray(psi, float), self.p, free, self.Xc, self.lsc, self.ncl, self.sy,
            self.doff, np.zeros(self.J), self.yv, xk, lwk, grad is not None, g,
            np.empty(self.ncl.size), np.empty((n, self.p + 3)),
        )  # fmt: skip

    def laplace(self, psi, grad):
        P = self.p + 2
        return _k.objective(
            np.asarray(psi, float), self.p, np.ones(P, np.bool_), self.Xc, self.lsc, self.ncl,
            self.sy, self.doff, np.zeros(self.J), self.yv, True, grad, np.empty(self.ncl.size),
        )  # fmt: skip


# --- plain SciPy oracle: each donor's integral by adaptive quadrature -----------------------


def _donor_logdens(yj, ej, theta, s2):
    """f_j(b) = Σ_i ln NB(y_i; e^{η_i + b}, θ) + ln N(b; 0, σ²), vectorised over b; the NB
    log-pmf written out with ``gammaln`` (checked against ``scipy.stats.nbinom`` below)."""
    const = np.sum(special.gammaln(yj + theta) - special.gammaln(theta) - special.gammaln(yj + 1))
    const += yj.size * theta * math.log(theta) - 0.5 * math.log(2 * math.pi * s2)

    def f(b):
        b = np.atleast_1d(b)[:, None]
        eta = ej[None, :] + b
        ll = np.sum(yj * eta - (yj + theta) * np.logaddexp(math.log(theta), eta), axis=1)
        return const + ll - 0.5 * b[:, 0] ** 2 / s2

    return f


def test_oracle_density_is_scipys(low_gene):
    y, X, donor, s = low_gene
    ej = X[donor == 0] @ [0.3, 0.2, 0.1] + np.log(s[donor == 0])
    yj = y[donor == 0]
    f = _donor_logdens(yj, ej, 1.7, 0.6)
    for b in (-2.0, 0.1, 1.5):
        mu = np.exp(ej + b)
        ref = stats.nbinom.logpmf(yj, 1.7, 1.7 / (1.7 + mu)).sum()
        ref += stats.norm.logpdf(b, 0, math.sqrt(0.6))
        assert f(b)[0] == pytest.approx(ref, rel=1e-13)


def _donor_mode(yj, ej, theta, s2):
    def df(b):
        mu = np.exp(ej + b)
        return np.sum(theta * (yj - mu) / (theta + mu)) - b / s2

    bh = optimize.brentq(df, -40, 40, xtol=1e-15, rtol=1e-15)
    mu = np.exp(ej + bh)
    H = np.sum(theta * mu * (yj + theta) / (theta + mu) ** 2) + 1 / s2
    return bh, H


def _oracle_loglik(y, X, donor, s, psi):
    """Σ_j ln ∫ exp f_j(b) db by ``scipy.integrate.quad`` (relative tolerance 1e-13). f_j is
    strongly concave with f_j″ ≤ −1/σ², so the integrand is below e^{f_j(b̂) − (b−b̂)²/(2σ²)}
    and b̂ ± 40σ holds all of its mass; breakpoints at b̂ ± (1, 4, 12)/√H_j guide quad."""
    p = X.shape[1]
    beta, s2, theta = np.asarray(psi[:p]), math.exp(psi[p]), math.exp(psi[p + 1])
    eta0 = X @ beta + np.log(s)
    total = 0.0
    for j in np.unique(donor):
        idx = donor == j
        yj, ej = y[idx], eta0[idx]
        f = _donor_logdens(yj, ej, theta, s2)
        bh, H = _donor_mode(yj, ej, theta, s2)
        f0 = f(bh)[0]
        half = 40 * math.sqrt(s2)
        sd = 1 / math.sqrt(H)
        pts = [bh + k * sd for k in (-12, -4, -1, 0, 1, 4, 12) if abs(k * sd) < half]
        val, _ = integrate.quad(
            lambda b, f=f, f0=f0: math.exp(f(b)[0] - f0), bh - half, bh + half,
            points=pts, epsabs=0.0, epsrel=1e-13, limit=500,
        )  # fmt: skip
        total += f0 + math.log(val)
    return total


PSI = [[-0.9, 0.25, 0.15, math.log(0.8), math.log(1.5)], [2.4, 0.3, 0.2, math.log(0.3), 2.0]]


# --- (a) n = 1 is the Laplace approximation ------------------------------------------------


@pytest.mark.parametrize("psi", [[0.4, 0.2, 0.1, -0.8, 0.3], [0.4, 0.2, 0.1, -6.0, 3.0],
                                 [-1.0, 0.3, 0.2, 0.7, -1.2]])  # fmt: skip
def test_one_node_is_laplace(low_gene, psi):
    d = Inputs(*low_gene)
    g1, g2 = np.empty(5), np.empty(5)
    lap = d.laplace(psi, g1)
    one = d.agq(psi, 1, grad=g2)
    assert one == pytest.approx(lap, rel=1e-12, abs=0)
    np.testing.assert_allclose(g2, g1, rtol=1e-10, atol=1e-10)


def test_gradient_matches_differences(low_gene, high_gene):
    for data, psi in zip((low_gene, high_gene), PSI, strict=True):
        d = Inputs(*data)
        for n in (2, 11):
            g = np.empty(5)
            d.agq(psi, n, grad=g)
            fd = np.empty(5)
            for a in range(5):
                e = np.zeros(5)
                e[a] = 1e-5
                fd[a] = (d.agq(np.add(psi, e), n) - d.agq(np.subtract(psi, e), n)) / 2e-5
            np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-6)


# --- (b) the AGQ log-likelihood against adaptive quadrature --------------------------------


@pytest.mark.parametrize("which", [0, 1])
def test_loglik_matches_quad(low_gene, high_gene, which):
    data = (low_gene, high_gene)[which]
    psi = PSI[which]
    ref = _oracle_loglik(*data, psi)
    d = Inputs(*data)
    err = {n: abs(d.agq(psi, n) - ref) for n in (1, 2, 3, 5, 11, 25)}
    assert err[25] <= 1e-8 * abs(ref)
    # the error falls as nodes are added (until rounding)
    assert err[1] > err[3] > err[5] > err[11]
    assert err[1] > 1e-4  # the Laplace error is resolved by the oracle
    assert err[11] < 1e-3 * err[1]


# --- (c) the AGQ maximum against a SciPy maximisation of the quad likelihood ---------------


@pytest.mark.parametrize("which", [0, pytest.param(1, marks=pytest.mark.slow)])  # 1: ~20 s
def test_maximum_matches_quad_maximum(low_gene, high_gene, which):
    y, X, donor, s = (low_gene, high_gene)[which]
    fit = nbmm(y[:, None], X, donor, size_factors=s, method="agq", n_agq=25)
    lap = nbmm(y[:, None], X, donor, size_factors=s)
    assert fit.status[0] == "ok" and fit.n_agq == 25 and lap.n_agq == 1
    got = np.r_[fit.coef[0], math.log(fit.sigma2[0]), math.log(fit.dispersion[0])]
    start = np.r_[lap.coef[0], math.log(lap.sigma2[0]), -math.log(lap.dispersion[0])]

    def nll(q):
        return -_oracle_loglik(y, X, donor, s, q)

    def ngrad(q):
        g = np.empty(q.size)
        for a in range(q.size):
            e = np.zeros(q.size)
            e[a] = 1e-5
            g[a] = (nll(q + e) - nll(q - e)) / 2e-5
        return g

    res = optimize.minimize(nll, start, jac=ngrad, method="BFGS", options={"gtol": 1e-7})
    ref = res.x.copy()
    ref[4] = -ref[4]  # ln θ → ln α
    assert np.abs(ngrad(res.x)).max() < 1e-5
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fit.loglik[0], -res.fun, rtol=1e-10)
    if which == 0:  # low counts: AGQ moved β away from Laplace by more than the tolerance
        assert np.abs(got[:3] - lap.coef[0]).max() > 1e-4


# --- (d) lme4's AGQ deviance (glmer, negative.binomial(θ), θ fixed) ------------------------


@pytest.fixture(scope="module")
def lme4_data():
    d = pd.read_csv(LME4 / "data.csv")
    X = np.column_stack([np.ones(len(d)), d.x.to_numpy(float)])
    return d, X


def _lme4_variant(y, X, donor, s, psi, n):
    """lme4's AGQ in the oracle's terms: the same rule, but scaled by the expected (Fisher)
    curvature at the mode, H_F = Σ θμ/(θ+μ) + 1/σ² (its PIRLS weights), not the observed H."""
    p = X.shape[1]
    beta, s2, theta = np.asarray(psi[:p]), math.exp(psi[p]), math.exp(psi[p + 1])
    x, w = hermgauss(n)
    eta0 = X @ beta + np.log(s)
    total = 0.0
    for j in np.unique(donor):
        idx = donor == j
        yj, ej = y[idx], eta0[idx]
        bh, _ = _donor_mode(yj, ej, theta, s2)
        mu = np.exp(ej + bh)
        HF = np.sum(theta * mu / (theta + mu)) + 1 / s2
        c = math.sqrt(2 / HF)
        e = np.log(w) + x**2 + _donor_logdens(yj, ej, theta, s2)(bh + c * x)
        total += math.log(c) + e.max() + math.log(np.exp(e - e.max()).sum())
    return total


def test_lme4_agq_deviance(lme4_data):
    """lme4's nAGQ > 1 deviance is −2 (AGQ log-likelihood − Σ ln NB(y; μ = y, θ)) (sums of
    deviance residuals; ``sat`` in the fixture). With 25 nodes it equals pyflashmm's AGQ to
    rounding; with fewer nodes lme4 scales the rule by the Fisher curvature (its PIRLS weights),
    so its values differ from pyflashmm's (observed curvature, as glmmTMB's Laplace) by the
    quadrature error of either, and agree with the oracle's reconstruction of lme4's rule."""
    d, X = lme4_data
    dev = pd.read_csv(LME4 / "deviance.csv")
    s = d.s.to_numpy(float)
    donor = d.donor.to_numpy()
    assert len(dev) == 30
    for r in dev.itertuples():
        y = d[r.gene].to_numpy(float)
        psi = [r.b0, r.b1, 2 * math.log(r.sigma), math.log(r.theta)]
        lme4_ll = -0.5 * r.deviance + r.sat
        mine = Inputs(y, X, donor, s).agq(psi, r.nAGQ)
        # (1e-9: lme4's curvature is taken from the PIRLS weights one step before its mode)
        np.testing.assert_allclose(_lme4_variant(y, X, donor, s, psi, r.nAGQ), lme4_ll,
                                   rtol=1e-9)  # fmt: skip
        if r.nAGQ == 25:
            np.testing.assert_allclose(mine, lme4_ll, rtol=1e-11)
            np.testing.assert_allclose(_oracle_loglik(y, X, donor, s, psi), lme4_ll, rtol=1e-11)
        elif r.nAGQ == 2:
            assert abs(mine - lme4_ll) > 1e-9  # the two scalings are different rules


def test_lme4_maximum_theta_fixed(lme4_data):
    """The AGQ (25 nodes) maximum over (β, ln σ²) with θ held at the fixture's value, against
    lme4's polished maximum of its 25-node deviance (σ = lme4's relative SD ``theta``)."""
    d, X = lme4_data
    opt = pd.read_csv(LME4 / "optimum.csv")
    s = d.s.to_numpy(float)
    donor = d.donor.to_numpy()
    xk, lwk = hermite_rule(25)
    for r in opt.itertuples():
        assert r.max_abs_grad < 1e-8
        inp = Inputs(d[r.gene].to_numpy(float), X, donor, s)
        psi = np.array([0.0, 0.0, math.log(0.25), math.log(r.theta)])
        free = np.array([True, True, True, False])
        cov = np.empty((4, 4))
        b = np.zeros(inp.J)
        ll, st, _ = _ka.agq_fit_gene(
            psi, 2, free, inp.Xc, inp.lsc, inp.ncl, inp.sy, inp.doff, b, inp.yv, xk, lwk,
            100, 1e-10, cov, np.empty(inp.ncl.size), np.empty((25, 5)),
        )  # fmt: skip
        assert st == 1  # "boundary": θ held
        np.testing.assert_allclose(psi[:2], [r.b0, r.b1], rtol=1e-6)
        np.testing.assert_allclose(psi[2], 2 * math.log(r.sigma), rtol=1e-6)
        np.testing.assert_allclose(ll, -0.5 * r.deviance + r.sat, rtol=1e-11)


# --- (e) options, bad genes, threads ---------------------------------------------------------


def test_method_validation(low_gene):
    y, X, donor, s = low_gene
    Y = y[:, None]
    for bad in (1, 0, 2.0, True, "11"):
        with pytest.raises(ValueError, match="n_agq"):
            nbmm(Y, X, donor, size_factors=s, method="agq", n_agq=bad)
    for bad in (2, 11, 0):
        with pytest.raises(ValueError, match="n_agq"):
            nbmm(Y, X, donor, size_factors=s, n_agq=bad)
    with pytest.raises(ValueError, match="method"):
        nbmm(Y, X, donor, size_factors=s, method="AGQ")
    one = nbmm(Y, X, donor, size_factors=s, method="laplace", n_agq=1)
    default = nbmm(Y, X, donor, size_factors=s, method="agq")
    assert one.n_agq == 1 and default.n_agq == 11


def test_batch_with_bad_and_boundary_genes(low_gene, high_gene):
    y, X, donor, s = low_gene
    yh = high_gene[0]
    rng = np.random.default_rng(5)
    # a gene with no donor effect (σ² → 0 boundary under Laplace) and one in a single donor
    flat = rng.negative_binomial(4.0, 4.0 / (4.0 + 3.0 * s)).astype(float)
    one_donor = np.where(donor == 2, y + 1, 0.0)
    Y = np.column_stack([y, np.zeros_like(y), flat, one_donor, yh])
    lap = nbmm(Y, X, donor, size_factors=s)
    fit = nbmm(Y, X, donor, size_factors=s, method="agq")
    assert list(lap.status) == ["ok", "all_zero", "boundary", "one_group", "ok"]
    assert list(fit.status) == list(lap.status)
    assert lap.sigma2[2] == 0.0
    for f in ("coef", "se", "sigma2", "dispersion", "loglik", "modes"):
        np.testing.assert_array_equal(getattr(fit, f)[1:4], getattr(lap, f)[1:4])
    assert fit.loglik[0] > lap.loglik[0] + 1e-6 or fit.loglik[0] < lap.loglik[0] - 1e-6
    assert np.all(np.isfinite(fit.se[[0, 4]]))
    alone = nbmm(y[:, None], X, donor, size_factors=s, method="agq")
    np.testing.assert_array_equal(alone.coef[0], fit.coef[0])
    old = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = nbmm(Y, X, donor, size_factors=s, method="agq")
    finally:
        numba.set_num_threads(old)
    for f in ("coef", "se", "sigma2", "dispersion", "loglik", "modes", "n_iter"):
        np.testing.assert_array_equal(getattr(one, f), getattr(fit, f))
