"""The NB mixed model (``_nbmm``): glmmTMB reference fits, a plain SciPy oracle of the Laplace
likelihood, the analytic gradient against finite differences, bad genes and input forms."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numba
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy import optimize, stats

from pyflashmm._kernels import nbmm as _k
from pyflashmm._nbmm.fit import NbmmFit, cell_classes, nbmm

ROOT = Path(__file__).parent / "data" / "glmmtmb-1.1.5"
FREE = np.ones(5, np.bool_)
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
    fit = nbmm(d[genes].to_numpy(), X, d.donor.to_numpy(), size_factors=d.s.to_numpy())
    fx = pd.read_csv(ROOT / request.param / "fixef.csv")
    ft = pd.read_csv(ROOT / request.param / "fit.csv").set_index("gene")
    return request.param, genes, fit, fx, ft


def test_reference_is_polished(scenario):
    _, _, _, _, ft = scenario
    assert (ft.max_abs_grad < 1e-6).all()  # glmmTMB's gradient at the fixture's optimum


def test_matches_glmmtmb(scenario):
    name, genes, fit, fx, ft = scenario
    for g_i, g in enumerate(genes):
        ref = ft.loc[g]
        b = fx[fx.gene == g]
        assert list(b.term) == list(fit.coef_names)
        boundary = ref.log_sigma < -10  # glmmTMB at σ² → 0
        assert fit.status[g_i] == ("boundary" if boundary else "ok"), (name, g)
        np.testing.assert_allclose(fit.coef[g_i], b.estimate, rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(fit.se[g_i], b.se, rtol=1e-4)
        np.testing.assert_allclose(fit.loglik[g_i], ref.logLik, rtol=1e-5)
        # glmmTMB's log θ = −ln α and log σ = ½ ln σ²
        np.testing.assert_allclose(np.log(fit.dispersion[g_i]), -ref.log_theta, rtol=1e-5)
        np.testing.assert_allclose(fit.log_dispersion_se[g_i], ref.log_theta_se, rtol=1e-4)
        if boundary:
            assert fit.sigma2[g_i] == 0.0 and np.isnan(fit.log_sigma2_se[g_i])
        else:
            np.testing.assert_allclose(np.log(fit.sigma2[g_i]), 2 * ref.log_sigma, rtol=1e-5)
            np.testing.assert_allclose(fit.log_sigma2_se[g_i], 2 * ref.log_sigma_se, rtol=1e-4)


# --- the Laplace likelihood against a plain SciPy oracle ------------------------------------


def _oracle_laplace(y, X, donor, s, beta, tau, lam):
    """L cell by cell: SciPy's NB pmf, each donor's mode by brentq, H by the formula (checked
    against a numerical second derivative)."""
    theta = math.exp(lam)
    s2 = math.exp(tau)
    eta0 = X @ beta + np.log(s)
    total = 0.0
    modes = []
    for j in np.unique(donor):
        idx = donor == j
        yj, ej = y[idx], eta0[idx]

        def f(b, yj=yj, ej=ej):
            mu = np.exp(ej + b)
            return stats.nbinom.logpmf(yj, theta, theta / (theta + mu)).sum() + stats.norm.logpdf(
                b, 0, math.sqrt(s2)
            )

        def df(b, yj=yj, ej=ej):
            mu = np.exp(ej + b)
            return np.sum(theta * (yj - mu) / (theta + mu)) - b / s2

        bh = optimize.brentq(df, -30, 30, xtol=1e-15, rtol=1e-15)
        mu = np.exp(ej + bh)
        H = np.sum(theta * mu * (yj + theta) / (theta + mu) ** 2) + 1 / s2
        e = 1e-4
        np.testing.assert_allclose(-(f(bh + e) - 2 * f(bh) + f(bh - e)) / e**2, H, rtol=1e-5)
        total += f(bh) + 0.5 * math.log(2 * math.pi) - 0.5 * math.log(H)
        modes.append(bh)
    return total, np.array(modes)


def _kernel_inputs(y, X, donor, s):
    code = np.unique(donor, return_inverse=True)[1].astype(np.int64)
    J = int(code.max()) + 1
    cls, doff, Xc, lsc, ncl = cell_classes(X, code, s, J)
    sy = np.bincount(cls, weights=y, minlength=ncl.size)
    yv = y[y > 0].astype(float)
    return Xc, lsc, ncl, sy, doff, yv, J


@pytest.fixture(scope="module")
def small_data():
    rng = np.random.default_rng(7)
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
def test_laplace_matches_oracle(small_data, tau, lam):
    y, X, donor, s = small_data
    beta = np.array([0.4, 0.2, 0.1])
    ref, modes = _oracle_laplace(y, X, donor, s, beta, tau, lam)
    Xc, lsc, ncl, sy, doff, yv, J = _kernel_inputs(y, X, donor, s)
    assert ncl.max() > 1  # the class sums are exercised
    b = np.zeros(J)
    psi = np.concatenate([beta, [tau, lam]])
    grad = np.empty(5)
    got = _k.objective(psi, 3, FREE, Xc, lsc, ncl, sy, doff, b, yv, True, grad, np.empty(ncl.size))
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    np.testing.assert_allclose(b, modes, rtol=1e-10, atol=1e-12)


def test_gradient_matches_finite_differences(small_data):
    y, X, donor, s = small_data
    Xc, lsc, ncl, sy, doff, yv, J = _kernel_inputs(y, X, donor, s)
    psi = np.array([0.4, 0.2, 0.1, -0.8, 0.3])
    eta0 = np.empty(ncl.size)

    def L(q):
        b, g = np.zeros(J), np.empty(5)
        return _k.objective(q, 3, FREE, Xc, lsc, ncl, sy, doff, b, yv, False, g, eta0)

    grad = np.empty(5)
    _k.objective(psi, 3, FREE, Xc, lsc, ncl, sy, doff, np.zeros(J), yv, True, grad, eta0)
    fd = np.empty(5)
    for a in range(5):
        e = np.zeros(5)
        e[a] = 1e-5
        fd[a] = (L(psi + e) - L(psi - e)) / 2e-5
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-7)


# --- bad genes, input forms, determinism ----------------------------------------------------


def test_bad_genes_get_status_and_nan(small_data):
    y, X, donor, s = small_data
    one_donor = np.where(donor == 2, y + 1, 0.0)
    Y = np.column_stack([y, np.zeros_like(y), one_donor, y[::-1]])
    fit = nbmm(Y, X, donor, size_factors=s)
    assert list(fit.status) == ["ok", "all_zero", "one_group", "ok"]
    for g in (1, 2):
        assert np.isnan(fit.coef[g]).all() and np.isnan(fit.se[g]).all()
        assert np.isnan(fit.loglik[g]) and not fit.converged[g]
    alone = nbmm(y[:, None], X, donor, size_factors=s)
    np.testing.assert_array_equal(alone.coef[0], fit.coef[0])
    np.testing.assert_array_equal(alone.loglik[0], fit.loglik[0])


def test_sparse_dense_and_threads_agree(small_data):
    y, X, donor, s = small_data
    rng = np.random.default_rng(3)
    Y = np.column_stack([y, rng.permutation(y), np.roll(y, 7)])
    dense = nbmm(Y, X, donor, size_factors=s)
    sparse = nbmm(sp.csr_matrix(Y), X, donor, size_factors=s)
    old = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = nbmm(Y, X, donor, size_factors=s)
    finally:
        numba.set_num_threads(old)
    for other in (sparse, one):
        for f in ("coef", "se", "sigma2", "dispersion", "loglik", "modes"):
            np.testing.assert_array_equal(getattr(dense, f), getattr(other, f))


def test_result_and_frame(small_data):
    y, X, donor, s = small_data
    fit = nbmm(pd.DataFrame({"a": y + 1, "b": y[::-1] + 1}), X, donor)
    assert isinstance(fit, NbmmFit)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fit.coef = None
    fr = fit.to_frame()
    assert list(fr.variable) == ["a", "b"]
    assert {"coef_x0", "se_x2", "sigma2", "dispersion", "loglik", "status"} <= set(fr.columns)
    assert fit.modes.shape == (2, 6)
    assert np.all(fit.size_factors > 0)  # poscounts by default


def test_validation(small_data):
    y, X, donor, s = small_data
    Y = y[:, None]
    with pytest.raises(ValueError, match="rows"):
        nbmm(Y, X[:-1], donor)
    with pytest.raises(ValueError, match="full column rank"):
        nbmm(Y, np.column_stack([X, X[:, 1]]), donor)
    with pytest.raises(ValueError, match="fewer than 2 levels"):
        nbmm(Y, X, np.zeros_like(donor))
    with pytest.raises(ValueError, match="size_factors"):
        nbmm(Y, X, donor, size_factors=-s)
    with pytest.raises(ValueError, match="size_factors"):
        nbmm(Y, X, donor, size_factors="median")
    with pytest.raises(ValueError, match="groups"):
        nbmm(Y, X, donor[:-1])


def test_poisson_gene_is_boundary(small_data):
    _, X, donor, s = small_data
    rng = np.random.default_rng(11)
    mu = np.exp(1.0 + 0.3 * X[:, 1] + rng.normal(0, 0.4, 6)[donor]) * s
    y = rng.poisson(mu).astype(float)
    fit = nbmm(y[:, None], X, donor, size_factors=s)
    assert fit.status[0] == "boundary"  # α → 0: held at its bound, reported as 0
    assert fit.dispersion[0] == 0.0 and np.isnan(fit.log_dispersion_se[0])
    assert np.all(np.isfinite(fit.coef[0])) and np.all(np.isfinite(fit.se[0]))
    assert fit.sigma2[0] > 0


def test_one_cell_donor_and_donor_level_covariate(small_data):
    y, X, donor, s = small_data
    keep = np.r_[0:1, 15:90]  # donor 0 keeps one cell; X[:, 1] is constant within donors
    fit = nbmm(y[keep, None], X[keep], donor[keep], size_factors=s[keep])
    assert fit.status[0] == "ok"
    assert np.all(np.isfinite(fit.coef[0])) and np.all(np.isfinite(fit.se[0]))
    ref, _ = _oracle_laplace(
        y[keep], X[keep], donor[keep], s[keep], fit.coef[0],
        math.log(fit.sigma2[0]), -math.log(fit.dispersion[0]),
    )  # fmt: skip
    np.testing.assert_allclose(fit.loglik[0], ref, rtol=1e-12)


@pytest.mark.parametrize("psi", [[0.4, 0.2, 0.1, -0.8, 0.3], [0.4, 0.2, 0.1, -6.0, 3.0],
                                 [0.4, 0.2, 0.1, 0.7, -1.2]])  # fmt: skip
def test_analytic_hessian_matches_differences(small_data, psi):
    y, X, donor, s = small_data
    y = y.copy()
    y[:3] = [70.0, 100.0, 65.0]  # counts ≥ 64: the trigamma branch
    Xc, lsc, ncl, sy, doff, yv, J = _kernel_inputs(y, X, donor, s)
    psi = np.array(psi)
    eta0 = np.empty(ncl.size)
    g, g2 = np.empty(5), np.empty(5)
    ll = _k.objective(psi, 3, FREE, Xc, lsc, ncl, sy, doff, np.zeros(J), yv, True, g, eta0)
    H = np.empty((5, 5))
    b = np.zeros(J)
    ll2 = _k.laplace_hessian(psi, 3, FREE, Xc, lsc, ncl, sy, doff, b, yv, g2, H, eta0)
    assert ll2 == pytest.approx(ll, rel=1e-14)
    np.testing.assert_allclose(g2, g, rtol=1e-12, atol=1e-12)
    Hf = np.empty((5, 5))
    _k.fd_hessian(psi, 3, FREE, Xc, lsc, ncl, sy, doff, b, yv, Hf, eta0, g, True)
    np.testing.assert_allclose(H, H.T, rtol=0, atol=0)
    assert np.abs(H - Hf).max() <= 1e-6 * np.abs(Hf).max()
    # parameters held fixed: zero rows and columns
    free = FREE.copy()
    free[3] = False
    _k.laplace_hessian(psi, 3, free, Xc, lsc, ncl, sy, doff, b, yv, g2, H, eta0)
    assert not H[3].any() and not H[:, 3].any() and g2[3] == 0.0


def test_analytic_and_difference_newton_agree(small_data, monkeypatch):
    from pyflashmm._nbmm import fit as _fit

    y, X, donor, s = small_data
    Y = np.column_stack([y, np.roll(y, 7), np.roll(y, 31)])
    a = nbmm(Y, X, donor, size_factors=s)
    monkeypatch.setattr(_fit, "_ANALYTIC_HESSIAN", False)
    f = nbmm(Y, X, donor, size_factors=s)
    assert list(a.status) == list(f.status)
    np.testing.assert_allclose(a.coef, f.coef, rtol=1e-8)
    np.testing.assert_allclose(a.se, f.se, rtol=1e-6)
    np.testing.assert_allclose(a.loglik, f.loglik, rtol=1e-12)


@pytest.mark.parametrize(
    "psi",
    [[0.4, 0.2, 0.1, -0.8, 0.3], [0.4, 0.2, 0.1, -6.0, 3.0], [0.4, 0.2, 0.1, 0.7, -1.2],
     [0.4, 0.2, 0.1, -0.8, 16.0]],
)  # fmt: skip
def test_fast_path_matches_reference_kernels(small_data, psi):
    # the Newton fit's fast path (runs of design rows, tail counts, one log1p per class)
    # against laplace_hessian / objective / nz_terms, including counts ≥ 64, a non-integer
    # count and a cell-level covariate (several runs per donor)
    y, X, donor, s = small_data
    y = y.copy()
    y[:4] = [70.0, 100.0, 65.0, 2.5]
    Xc, lsc, ncl, sy, doff, yv, J = _kernel_inputs(y, X, donor, s)
    roff, drun = _k.design_runs(Xc, doff)
    assert roff.size - 1 > J and roff.size - 1 < ncl.size  # runs: > 1 per donor, < classes
    for r in range(roff.size - 1):  # one design row per run, runs inside donors
        assert (Xc[roff[r] : roff[r + 1]] == Xc[roff[r]]).all()
    assert np.all(np.isin(doff, roff))
    tail, big, lgy = _k.count_tails(yv)
    psi = np.array(psi)
    theta = math.exp(psi[4])
    c, dp = _k.nz_terms(theta, yv)
    c2, dp2, d2 = _k.nz_terms_tails(theta, tail, big, lgy, True)
    np.testing.assert_allclose([c2, dp2, d2], [c, dp, _k.nz_d2(theta, yv)], rtol=1e-13)
    eta0 = np.empty(ncl.size)
    g, H, b = np.empty(5), np.empty((5, 5)), np.zeros(J)
    ll = _k.laplace_hessian(psi, 3, FREE, Xc, lsc, ncl, sy, doff, b, yv, g, H, eta0)
    sfc, xb = np.exp(lsc), np.empty(roff.size - 1)
    g2, H2, b2, db = np.empty(5), np.empty((5, 5)), np.zeros(J), np.empty((J, 5))
    args = (Xc, roff, drun, lsc, sfc, ncl, sy)
    ll2 = _k.hess_fast(psi, 3, FREE, *args, b2, tail, big, lgy, xb, g2, H2, db)
    assert ll2 == pytest.approx(ll, rel=1e-13)
    np.testing.assert_allclose(b2, b, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(g2, g, rtol=1e-10, atol=1e-10 * np.abs(g).max())
    np.testing.assert_allclose(H2, H, rtol=1e-10, atol=1e-12 * np.abs(H).max())
    b3 = np.zeros(J)
    assert _k.lik_fast(psi, 3, *args, b3, tail, big, lgy, xb) == pytest.approx(ll, rel=1e-13)
    # the modes' derivatives (used as warm starts) against differences of the modes
    for a in (0, 2, 3, 4):
        e = 1e-6 * max(1.0, abs(psi[a]))
        bp, bm = b.copy(), b.copy()
        for q, bb in ((psi.copy(), bp), (psi.copy(), bm)):
            q[a] += e if bb is bp else -e
            _k.objective(q, 3, FREE, Xc, lsc, ncl, sy, doff, bb, yv, False, g, eta0)
        np.testing.assert_allclose(db[:, a], (bp - bm) / (2 * e), rtol=1e-5, atol=1e-8)
    # a fixed parameter: zero row and column, as laplace_hessian
    free = FREE.copy()
    free[3] = False
    _k.hess_fast(psi, 3, free, *args, b2, tail, big, lgy, xb, g2, H2, db)
    assert not H2[3].any() and not H2[:, 3].any() and g2[3] == 0.0


def test_gamma_differences_hold_at_large_theta():
    # lnΓ(y+θ) − lnΓ(θ), ψ(y+θ) − ψ(θ), ψ′(y+θ) − ψ′(θ) against the exact finite sums
    # Σ_{i<y} ln(θ+i), Σ 1/(θ+i), −Σ 1/(θ+i)², up to θ = e³⁰ (α held at 0), where the plain
    # differences lose up to 0.3 of the log-likelihood to cancellation. Below STIRLING_THETA
    # the plain differences are kept; there the trigamma (nb_density's) is good to ~2e-10.
    from pyflashmm._kernels.nbmm import STIRLING_THETA, gamma_at, gamma_differences

    for lam in np.arange(2.0, 30.5, 1.5):
        theta = math.exp(lam)
        for y in (64, 97, 1000, 20_000):
            z = theta + np.arange(y, dtype=float)
            exact = (math.fsum(np.log(z)), math.fsum(1 / z), -math.fsum(1 / z**2))
            got = gamma_differences(theta, float(y), True, gamma_at(theta, True))
            rtol = [1e-13, 1e-13, 1e-13 if theta >= STIRLING_THETA else 1e-9]
            for k in range(3):
                np.testing.assert_allclose(got[k], exact[k], rtol=rtol[k], err_msg=f"{lam} {y}")


def test_high_count_poisson_genes_fit_at_the_dispersion_bound():
    # Poisson counts (α = 0) of 25–50 per cell: the fit walks α → 0 and holds it there. With
    # the plain lnΓ differences, the likelihood's rounding noise at θ ≳ e²⁰ stopped 7 of these
    # 100 genes with line_search_failed
    rng = np.random.default_rng(5)
    J, n, G = 12, 100, 100
    donor = np.repeat(np.arange(J), n)
    X = pd.DataFrame({"(Intercept)": 1.0, "cond": (donor % 2).astype(float)})
    b = rng.normal(0, math.sqrt(0.1), J)
    mu = rng.uniform(25, 50, G) * np.exp(b[donor])[:, None]
    Y = rng.poisson(mu).astype(float)
    fit = nbmm(Y, X, donor, size_factors=np.ones(J * n))
    assert set(fit.status) <= {"ok", "boundary"}, np.unique(fit.status, return_counts=True)
    assert (fit.dispersion[fit.status == "boundary"] == 0).all()
    assert np.isfinite(fit.loglik).all()
