import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import statsmodels.api as sm
from statsmodels.regression.mixed_linear_model import MixedLMParams
from statsmodels.tools.sm_exceptions import ConvergenceWarning as SmConvergenceWarning

import pyflashmm as fm
from tests import oracle
from validation.agreement import SM_FIT

# Tolerances, defined once with their reasons.
#: same maths, two evaluation orders (summary statistics vs n × n matrices): rounding only
RTOL_ORACLE = 1e-10
#: central differences with step h·|θ| have truncation error O(h²) ≈ 1e-8 relative, plus
#: rounding of the log-likelihood (|ℓ|·1e-16/h ≈ 1e-10)
RTOL_FD = 1e-6
#: statsmodels' own log-likelihood evaluated at our estimates: identical function, rounding only
RTOL_SM_LOGLIK = 1e-8
#: statsmodels' default optimiser stops early (θ off by 1.5e-4 relative on a K = 1 gene whose
#: log-likelihood it left 1e-9 below ours); refitted with BFGS at gtol 1e-10 it agrees with our
#: optimum to ~1e-9, so estimates are compared at 1e-6
RTOL_SM_ESTIMATES = 1e-6
#: the eigen (K = 1) path and the dense path compute the same iterates in different algebra
RTOL_ENGINES = 1e-8


def fit_case(rng, sizes=(12,), n=240, p=3, theta=(0.5, 1.0), G=4):
    X, Z, d = oracle.random_design(rng, n, p, sizes)
    Y = oracle.simulate_y(rng, X, Z, d, theta, G)
    return X, Z, d, Y


@pytest.mark.parametrize("method", ["REML", "ML"])
@pytest.mark.parametrize(
    ("sizes", "theta"),
    [
        ((9,), (0.4, 1.3)),
        ((9,), (-0.05, 1.1)),
        ((6, 4), (0.5, 0.2, 0.9)),
        ((6, 4), (0.3, -0.02, 1)),
    ],
)
@pytest.mark.parametrize("engine", ["auto", "dense"])
def test_loglik_score_information_match_oracle(rng, method, sizes, theta, engine):
    X, Z, d, Y = fit_case(rng, sizes=sizes, n=70, G=3)
    stats = fm.summary_stats(Y, X, Z, d)
    ll, score, info = fm.loglik_score(stats, np.array(theta), method=method, engine=engine)
    for g in range(Y.shape[1]):
        ll_o, score_o, info_o = oracle.loglik_score_info(Y[:, g], X, Z, d, theta, method)
        np.testing.assert_allclose(ll[g], ll_o, rtol=RTOL_ORACLE)
        scale = np.abs(info_o).max()  # score components can be ≈ 0: compare on the info scale
        np.testing.assert_allclose(score[g], score_o, rtol=0, atol=RTOL_ORACLE * scale)
        np.testing.assert_allclose(info[g], info_o, rtol=RTOL_ORACLE)


@pytest.mark.parametrize("method", ["REML", "ML"])
@pytest.mark.parametrize("sizes", [(10,), (5, 3)])
def test_score_is_gradient_of_loglik(rng, method, sizes):
    X, Z, d, Y = fit_case(rng, sizes=sizes, n=150, G=2)
    stats = fm.summary_stats(Y, X, Z, d)
    theta = np.array([0.4, 0.3, 1.2][-(len(d) + 1) :])
    _, score, info = fm.loglik_score(stats, theta, method=method)
    for k in range(len(theta)):
        h = 1e-5 * theta[k]
        up, down = theta.copy(), theta.copy()
        up[k] += h
        down[k] -= h
        fd = (
            fm.loglik_score(stats, up, method=method)[0]
            - fm.loglik_score(stats, down, method=method)[0]
        ) / (2 * h)
        np.testing.assert_allclose(score[:, k], fd, rtol=RTOL_FD, atol=RTOL_FD * np.abs(info).max())


@pytest.mark.parametrize("method", ["REML", "ML"])
@pytest.mark.parametrize("sizes", [(15,), (6, 5)])
def test_fixed_effects_match_gls_oracle(rng, method, sizes):
    X, Z, d, Y = fit_case(rng, sizes=sizes, n=120, theta=(0.6, 0.3, 1.0)[-(len(sizes) + 1) :])
    fit = fm.lmmfit(Y, X, Z, d, method=method, tol=1e-9)
    assert fit.converged.all()
    for g in range(Y.shape[1]):
        beta, cov = oracle.gls(Y[:, g], X, Z, d, fit.theta[g])
        np.testing.assert_allclose(fit.coef[g], beta, rtol=RTOL_ORACLE, atol=1e-12)
        np.testing.assert_allclose(fit.cov[g], cov, rtol=RTOL_ORACLE, atol=1e-14)
        _, score, _ = oracle.loglik_score_info(Y[:, g], X, Z, d, fit.theta[g], method)
        assert np.abs(score).max() < 1e-9  # the oracle agrees that θ̂ is a stationary point


def sm_k1(y, X, groups, reml):
    model = sm.MixedLM(y, X, groups=groups)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmConvergenceWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        res = model.fit(reml=reml, **SM_FIT)
    return model, res


def sm_loglik_at(model, fit, g, blocks_k):
    """statsmodels' own (scale-profiled) log-likelihood at our variance ratios."""
    gam = fit.theta[g, :-1] / fit.theta[g, -1]
    if blocks_k == "re":
        params = MixedLMParams.from_components(fit.coef[g], cov_re=np.array([[gam[0]]]))
    else:
        params = MixedLMParams.from_components(fit.coef[g], cov_re=np.zeros((0, 0)), vcomp=gam)
    return model.loglike(params, profile_fe=False)


@pytest.mark.parametrize("method", ["REML", "ML"])
@pytest.mark.parametrize("sparse_y", [False, True])
def test_k1_against_statsmodels(rng, method, sparse_y):
    n, q = 600, 20
    X, Z, d = oracle.random_design(rng, n, 3, (q,))
    counts = rng.negative_binomial(2, 2 / (2 + np.exp(0.5 + Z @ rng.normal(0, 0.5, (q, 5)))))
    Y = np.log1p(counts)
    groups = Z.argmax(axis=1)
    Yin = sp.csr_matrix(counts.astype(float)) if sparse_y else Y
    fit = fm.lmmfit(Yin, X, sp.csr_matrix(Z), transform="log1p" if sparse_y else None,
                    method=method, tol=1e-8)  # fmt: skip
    for g in range(Y.shape[1]):
        model, res = sm_k1(Y[:, g], X, groups, reml=method == "REML")
        ours = fit.loglik[g]
        np.testing.assert_allclose(sm_loglik_at(model, fit, g, "re"), ours, rtol=RTOL_SM_LOGLIK)
        assert ours >= res.llf - 1e-9 * abs(ours)  # never worse than statsmodels' optimum
        if res.converged and fit.theta[g, 0] > 0:
            np.testing.assert_allclose(fit.coef[g], res.fe_params, rtol=RTOL_SM_ESTIMATES)
            sm_theta = [np.asarray(res.cov_re)[0, 0], res.scale]
            np.testing.assert_allclose(fit.theta[g], sm_theta, rtol=RTOL_SM_ESTIMATES)
            # SEs are not compared here: statsmodels' bse_fe inverts the observed Hessian of all
            # parameters jointly (0.06% off σ²(XᵀV⁻¹X)⁻¹ here); ours equal the GLS oracle
            # (test_fixed_effects_match_gls_oracle) and lme4's vcov (test_lme4_reference).


@pytest.mark.parametrize("method", ["REML", "ML"])
@pytest.mark.parametrize("sparse_y", [False, True])
def test_k2_against_statsmodels_vc_formula(rng, method, sparse_y):
    n = 300
    X, Z, d = oracle.random_design(rng, n, 2, (8, 5))
    Y = oracle.simulate_y(rng, X, Z, d, (0.6, 0.3, 1.0), 3)
    Y[np.abs(Y) < 0.5] = 0.0  # some exact zeros, so that sparse storage drops entries
    Yin = sp.csr_matrix(Y) if sparse_y else Y
    fit = fm.lmmfit(Yin, X, sp.csr_matrix(Z), d, method=method, tol=1e-8)
    df = pd.DataFrame({"a": Z[:, :8].argmax(1), "b": Z[:, 8:].argmax(1), "x": X[:, 1]})
    for g in range(Y.shape[1]):
        df["y"] = Y[:, g]
        model = sm.MixedLM.from_formula(
            "y ~ x", data=df, groups=np.zeros(n), re_formula="0",
            vc_formula={"a": "0 + C(a)", "b": "0 + C(b)"},
        )  # fmt: skip
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = model.fit(reml=method == "REML", **SM_FIT)
        ours = fit.loglik[g]
        np.testing.assert_allclose(sm_loglik_at(model, fit, g, "vc"), ours, rtol=RTOL_SM_LOGLIK)
        assert ours >= res.llf - 1e-9 * abs(ours)
        if res.converged and (fit.theta[g, :-1] > 0).all():
            np.testing.assert_allclose(fit.coef[g], res.fe_params, rtol=RTOL_SM_ESTIMATES)
            sm_theta = np.r_[res.vcomp, res.scale]
            np.testing.assert_allclose(fit.theta[g], sm_theta, rtol=RTOL_SM_ESTIMATES)


@pytest.mark.parametrize("method", ["REML", "ML"])
def test_eigen_and_dense_engines_agree(rng, method):
    X, Z, d, Y = fit_case(rng, sizes=(25,), n=800, theta=(0.3, 1.0), G=20)
    Y[:, :5] = X @ rng.normal(size=(3, 5)) + rng.normal(size=(800, 5))  # no random effect
    a = fm.lmmfit(Y, X, Z, method=method, engine="eigen", warn=False)
    b = fm.lmmfit(Y, X, Z, method=method, engine="dense", warn=False)
    np.testing.assert_array_equal(a.status, b.status)
    ok = a.converged
    for name in ("coef", "theta", "se", "loglik"):
        x, y = getattr(a, name)[ok], getattr(b, name)[ok]
        np.testing.assert_allclose(x, y, rtol=RTOL_ENGINES, atol=RTOL_ENGINES * np.abs(y).max())


def test_negative_components_allowed_and_nonneg(rng):
    n, q = 500, 30
    X, Z, d = oracle.random_design(rng, n, 2, (q,))
    Y = X @ rng.normal(size=(2, 40)) + rng.normal(size=(n, 40))  # no subject effect at all
    free = fm.lmmfit(Y, X, Z, tol=1e-8)
    assert free.converged.all() and (free.theta[:, 0] < 0).any()
    mu_max = np.linalg.eigvalsh(Z.T @ Z).max()
    assert (1 + free.theta[:, 0] / free.theta[:, 1] * mu_max > 0).all()  # V stays PD
    held = fm.lmmfit(Y, X, Z, tol=1e-8, nonneg=True)
    assert (held.theta[:, 0] >= 0).all() and held.converged.all()
    neg = free.theta[:, 0] < 0
    assert (held.status[neg] == "boundary").all() and (held.theta[neg, 0] == 0).all()
    # at the boundary the constrained optimum is lower, never higher
    assert (held.loglik[neg] <= free.loglik[neg] + 1e-9 * np.abs(free.loglik[neg])).all()


def test_refit_gives_genes_at_the_pd_edge_the_nonneg_fit(rng):
    """nonneg="refit": FLASHMM's fit everywhere it has a maximum, lme4's where it has none."""
    n, q = 400, 4  # few subjects and no subject effect: some maxima lie beyond the PD edge
    X, Z, d = oracle.random_design(rng, n, 2, (q,))
    Y = X @ rng.normal(size=(2, 200)) + rng.normal(size=(n, 200))
    free = fm.lmmfit(Y, X, Z, nonneg=False, warn=False)
    held = fm.lmmfit(Y, X, Z, nonneg=True, warn=False)
    both = fm.lmmfit(Y, X, Z, nonneg="refit", warn=False)
    edge = ~free.converged
    assert (free.status == "pd_boundary").any() and (both.refitted == edge).all()
    assert both.nonneg == "refit" and both.converged.all()
    np.testing.assert_array_equal(both.theta[~edge], free.theta[~edge])
    np.testing.assert_array_equal(both.coef[~edge], free.coef[~edge])
    np.testing.assert_array_equal(both.theta[edge], held.theta[edge])
    np.testing.assert_array_equal(both.cov[edge], held.cov[edge])
    np.testing.assert_array_equal(both.status[edge], held.status[edge])
    assert (both.boundary[:, 0] == (both.status == "boundary")).all()
    table = fm.lmmtest(both)
    assert table["p_value"].notna().all()
    lost = fm.lmmtest(free).set_index("variable").loc[np.array(free.gene_names)[edge]]
    assert lost["p_value"].isna().any()  # what the refit repairs
    with pytest.raises(ValueError, match="nonneg must be True, False or 'refit'"):
        fm.lmmfit(Y, X, Z, nonneg="yes")


def test_bad_genes_get_nan_and_one_warning(rng):
    X, Z, d, Y = fit_case(rng, G=5)
    Y[:, 1] = 0.0  # all zero
    Y[:, 3] = X @ np.array([1.0, 2.0, -1.0])  # exactly in the span of X
    with pytest.warns(fm.ConvergenceWarning, match="2 of 5 genes did not converge") as rec:
        fit = fm.lmmfit(Y, X, Z)
    assert len(rec) == 1
    assert fit.status.tolist() == ["ok", "zero_variance", "ok", "zero_variance", "ok"]
    assert np.isnan(fit.coef[[1, 3]]).all() and np.isnan(fit.theta[[1, 3]]).all()
    assert np.isfinite(fit.coef[[0, 2, 4]]).all()


def test_max_iter_status(rng):
    X, Z, d, Y = fit_case(rng, G=3)
    with pytest.warns(fm.ConvergenceWarning, match="max_iter: 3"):
        fit = fm.lmmfit(Y, X, Z, max_iter=1, tol=1e-12, nonneg=False)
    assert (fit.status == "max_iter").all() and not fit.converged.any()
    assert (fit.niter == 1).all()


def test_flashmm_positional_call_and_outputs(rng):
    X, Z, d, Y = fit_case(rng)
    s = fm.summary_stats(Y, X, Z)
    a = fm.lmm(s)
    b = fm.lmm(s.XX, s.XY, s.ZX, s.ZY, s.ZZ, s.Ynorm, s.n, [Z.shape[1]])
    np.testing.assert_array_equal(a.coef, b.coef)
    np.testing.assert_array_equal(a.theta, b.theta)
    c = fm.lmm(s, output_cov=False)
    assert c.cov is None and np.array_equal(c.se, a.se)
    assert a.df == Y.shape[0] - X.shape[1]
    frame = a.to_frame()
    assert list(frame.columns[:7]) == [
        "variable",
        "term",
        "estimate",
        "se",
        "stat",
        "df",
        "p_value",
    ]
    assert len(frame) == Y.shape[1] * X.shape[1]
    assert a.theta_names == ["var1", "residual"]
    assert a.theta_frame().shape[0] == Y.shape[1]


def test_bad_input_to_lmm(rng):
    X, Z, d, Y = fit_case(rng)
    X2 = np.column_stack([X, X[:, 1] + X[:, 2]])
    names = ["(Intercept)", "a", "b", "a_plus_b"]
    s = fm.summary_stats(Y, pd.DataFrame(X2, columns=names), Z)
    with pytest.raises(ValueError, match="not of full column rank.*'a_plus_b'"):
        fm.lmm(s)
    s = fm.summary_stats(Y, X, Z)
    with pytest.raises(ValueError, match="method must be"):
        fm.lmm(s, method="REM")
    with pytest.raises(ValueError, match="theta0 must have shape"):
        fm.lmm(s, theta0=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="residual variance"):
        fm.lmm(s, theta0=[0.1, 0.0])
    with pytest.raises(ValueError, match="XY has shape"):
        fm.lmm(s.XX, s.XY[:2], s.ZX, s.ZY, s.ZZ, s.Ynorm, s.n, None)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        fm.lmm(s.XX, s.XY, s.ZX, s.ZY, s.ZZ, s.Ynorm, -5, None)
    with pytest.raises(ValueError, match=r"sum\(d\)"):
        fm.lmm(s.XX, s.XY, s.ZX, s.ZY, s.ZZ, s.Ynorm, s.n, [3, 3])
    with pytest.raises(ValueError, match="Ynorm contains NaN"):
        fm.lmm(s.XX, s.XY, s.ZX, s.ZY, s.ZZ, s.Ynorm * np.nan, s.n, None)
    with pytest.raises(TypeError, match="pass either"):
        fm.lmm(s, s.XY)
    with pytest.raises(ValueError, match="engine='eigen' needs one"):
        fm.lmm(fm.summary_stats(Y, X, Z, [6, 6]), engine="eigen")


def test_convergence_does_not_depend_on_the_scale_of_y(rng):
    """FLASHMM's max|score| < tol alone stops early when y is on a large scale (the score
    scales as 1/σ⁴); the Fisher-decrement condition makes the fit scale-equivariant."""
    X, Z, d, Y = fit_case(rng, sizes=(12,), n=500, theta=(0.3, 1.0), G=5)
    small = fm.lmmfit(Y, X, Z, tol=1e-8)
    large = fm.lmmfit(Y * 1000.0, X, Z, tol=1e-8)
    assert large.converged.all()
    np.testing.assert_allclose(large.theta / 1e6, small.theta, rtol=1e-6)
    np.testing.assert_allclose(large.coef / 1e3, small.coef, rtol=1e-6, atol=1e-9)


def test_positional_call_accepts_n_from_an_npz(rng, tmp_path):
    X, Z, d, Y = fit_case(rng)
    s = fm.summary_stats(Y, X, Z)
    s.save(tmp_path / "s.npz")
    z = np.load(tmp_path / "s.npz")
    fit = fm.lmm(z["XX"], z["XY"], z["ZX"], z["ZY"], z["ZZ"], z["Ynorm"], z["n"], z["d"])
    np.testing.assert_array_equal(fit.coef, fm.lmm(s).coef)
    with pytest.raises(TypeError, match="n must be a number"):
        fm.lmm(s.XX, s.XY, s.ZX, s.ZY, s.ZZ, s.Ynorm, "300", None)


# ------------------------------------------------------------------- names from a Design


def design_case(rng, random, G=4):
    """A realistic cell table, its Design and responses drawn from the model."""
    from tests.test_design import cell_table

    obs = cell_table(rng, n=500)
    des = fm.design(obs, "~ 0 + cell_type + cell_type:condition", random)
    Z = des.Z.toarray()
    Y = oracle.simulate_y(rng, des.X, Z, des.d, (0.3,) * len(des.d) + (1.0,), G)
    return des, Y


@pytest.mark.parametrize(
    ("random", "names"),
    [
        ("(1 | donor_id)", ["donor_id", "residual"]),
        ("(1 | donor_id) + (1 | batch)", ["donor_id", "batch", "residual"]),
        ("(1 | donor_id/cell_type)", ["donor_id", "donor_id:cell_type", "residual"]),
        ("(1 + time || donor_id)", ["donor_id", "donor_id:time", "residual"]),
    ],
)
def test_theta_names_are_the_block_labels(rng, random, names):
    des, Y = design_case(rng, random)
    fit = fm.lmmfit(Y, des, warn=False)
    assert fit.theta_names == names
    frame = fit.theta_frame()
    assert list(frame.columns[: 2 * len(names)]) == names + [f"se_{nm}" for nm in names]
    np.testing.assert_array_equal(frame[names[0]], fit.theta[:, 0])
    # the same statistics without labels: same numbers, positional names
    bare = fm.lmm(fm.summary_stats(Y, des.X, des.Z, des.d), warn=False)
    np.testing.assert_array_equal(bare.theta, fit.theta)
    np.testing.assert_array_equal(bare.coef, fit.coef)
    assert bare.theta_names == [f"var{k + 1}" for k in range(len(des.d))] + ["residual"]
    assert fit.fixed_names == des.fixed_names


def test_status_codes_come_from_one_table():
    from pyflashmm import _status

    assert fm.STATUS_NAMES is _status.STATUS_NAMES
    for code, name in enumerate(_status.STATUS_NAMES):
        assert getattr(_status, name.upper()) == code
