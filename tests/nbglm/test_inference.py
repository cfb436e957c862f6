"""``nbglm_test`` (``_nbglm.inference``): the same numbers as ``nbglm``'s own test, numeric and
joint contrasts against NumPy/SciPy computed from ``fit.coef``/``fit.cov``, LRTs of general
contrasts against explicitly reparametrised reduced designs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from nbsim import three_arm
from scipy import stats
from statsmodels.stats.multitest import multipletests

from pyflashmm import contrast_matrix, nbglm, nbglm_test
from pyflashmm._nbglm.inference import COLUMNS

LN2 = np.log(2.0)


@pytest.fixture(scope="module")
def fits():
    rng = np.random.default_rng(31)
    Y, X = three_arm(rng, m=24, G=150)
    Y.iloc[:, 7] = 0  # an all-zero gene
    wald = nbglm(Y, X, contrast="conditionstim")
    lrt = nbglm(Y, X, contrast="conditionstim", test="lrt")
    return Y, X, wald, lrt


def _same(a, b):
    np.testing.assert_array_equal(np.asarray(a, float), np.asarray(b, float))


@pytest.mark.parametrize("which", ["wald", "lrt"])
def test_default_contrast_equals_the_fit_fields(fits, which):
    _, _, wald, lrt = fits
    fit = wald if which == "wald" else lrt
    # the fit keeps its own test's results; without them nbglm_test must recompute the same
    fresh = dataclasses.replace(fit, data=dataclasses.replace(fit.data, tests={}, lrt_stats={}))
    _same(nbglm_test(fresh, "conditionstim")["p_value"], fit.p_value)
    _same(nbglm_test(fresh, "conditionstim")["stat"], fit.stat)
    t = nbglm_test(fit, "conditionstim")
    assert tuple(t.columns) == COLUMNS
    assert (t["contrast"] == "conditionstim").all() and (t["method"] == "nbglm").all()
    for col, field in (
        ("log_fc", "log2_fold_change"),
        ("se", "lfc_se"),
        ("stat", "stat"),
        ("p_value", "p_value"),
        ("adj_p_value", "adj_p_value"),
        ("base_mean", "base_mean"),
        ("dispersion", "dispersion"),
    ):
        _same(t[col], getattr(fit, field))
    assert (t["df"] == fit.df).all()
    assert list(t["variable"]) == list(fit.gene_names)
    pd.testing.assert_frame_equal(t, fit.to_frame())


def test_lrt_of_a_wald_fit_equals_the_lrt_fit(fits):
    # the full-model log-likelihood recomputed from the coefficients, bit for bit
    _, _, wald, lrt = fits
    t = nbglm_test(wald, "conditionstim", test="lrt")
    _same(t["stat"], lrt.stat)
    _same(t["p_value"], lrt.p_value)
    _same(t["adj_p_value"], lrt.adj_p_value)


def test_numeric_contrast_matches_numpy(fits):
    _, X, fit, _ = fits
    c = np.array([0.0, 0.0, 1.0, -1.0])  # stim vs IFN
    t = nbglm_test(fit, {"stim_vs_IFN": c}, independent_filtering=False)
    est = fit.coef @ c
    se = np.sqrt(np.einsum("i,gij,j->g", c, fit.cov, c))
    z = est / se
    p = 2 * stats.norm.sf(np.abs(z))
    p[fit.all_zero | fit.cooks_outlier] = np.nan
    ok = ~fit.all_zero
    np.testing.assert_allclose(t["log_fc"][ok], est[ok] / LN2, rtol=1e-12)
    np.testing.assert_allclose(t["se"][ok], se[ok] / LN2, rtol=1e-12)
    np.testing.assert_allclose(t["stat"][ok], z[ok], rtol=1e-12)
    np.testing.assert_allclose(t["p_value"], p, rtol=1e-10, equal_nan=True)
    fin = np.isfinite(p)
    padj = np.full_like(p, np.nan)
    padj[fin] = multipletests(p[fin], method="fdr_bh")[1]
    np.testing.assert_allclose(t["adj_p_value"], padj, rtol=1e-10, equal_nan=True)
    # the same contrast as an expression, a p × 1 array and a contrast_matrix frame
    by_expr = nbglm_test(fit, "conditionstim - conditionIFN", independent_filtering=False)
    by_array = nbglm_test(fit, c[:, None], independent_filtering=False)
    by_frame = nbglm_test(
        fit,
        contrast_matrix({"s_vs_i": "conditionstim - conditionIFN"}, list(X.columns)),
        independent_filtering=False,
    )
    assert by_array["contrast"].iloc[0] == "c0" and by_frame["contrast"].iloc[0] == "s_vs_i"
    for other in (by_expr, by_array, by_frame):
        _same(other["p_value"], t["p_value"])
    # t test on m − p df
    tt = nbglm_test(fit, {"stim_vs_IFN": c}, use_t=True, independent_filtering=False)
    assert (tt["df"] == 20.0).all()
    pt = 2 * stats.t.sf(np.abs(z), 20.0)
    pt[fit.all_zero | fit.cooks_outlier] = np.nan
    np.testing.assert_allclose(tt["p_value"], pt, rtol=1e-10, equal_nan=True)


def test_joint_contrast_matches_numpy(fits):
    _, _, fit, _ = fits
    t = nbglm_test(
        fit, {"condition": ["conditionstim", "conditionIFN"]}, independent_filtering=False
    )
    L = np.zeros((4, 2))
    L[2, 0] = L[3, 1] = 1.0
    W = np.full(fit.base_mean.size, np.nan)
    for g in np.flatnonzero(~fit.all_zero):
        b = L.T @ fit.coef[g]
        W[g] = b @ np.linalg.solve(L.T @ fit.cov[g] @ L, b)
    p = stats.chi2.sf(W, 2)
    p[fit.cooks_outlier] = np.nan
    assert t["log_fc"].isna().all() and t["se"].isna().all() and (t["df"] == 2.0).all()
    np.testing.assert_allclose(t["stat"], W, rtol=1e-9, equal_nan=True)
    np.testing.assert_allclose(t["p_value"], p, rtol=1e-8, equal_nan=True)
    tf = nbglm_test(
        fit,
        {"condition": ["conditionstim", "conditionIFN"]},
        use_t=True,
        independent_filtering=False,
    )
    pf = stats.f.sf(W / 2, 2, 20.0)
    pf[fit.cooks_outlier] = np.nan
    np.testing.assert_allclose(tf["stat"], W / 2, rtol=1e-9, equal_nan=True)
    np.testing.assert_allclose(tf["p_value"], pf, rtol=1e-8, equal_nan=True)


def test_every_coefficient_when_no_contrast_is_given(fits):
    _, X, fit, _ = fits
    t = nbglm_test(fit)
    G = fit.base_mean.size
    assert list(dict.fromkeys(t["contrast"])) == list(X.columns)
    assert len(t) == G * X.shape[1]
    for k, name in enumerate(X.columns):
        block = t.iloc[k * G : (k + 1) * G].reset_index(drop=True)
        pd.testing.assert_frame_equal(block, nbglm_test(fit, name))


def test_lrt_of_one_coefficient_drops_its_column(fits):
    _, X, fit, lrt = fits
    explicit = nbglm_test(fit, "conditionstim", X.drop(columns="conditionstim"), test="lrt")
    _same(explicit["stat"], lrt.stat)
    # a scaled coefficient is the same hypothesis (and the same reduced design)
    scaled = nbglm_test(fit, {"twice": "2*conditionstim"}, test="lrt")
    _same(scaled["stat"], lrt.stat)
    _same(scaled["log_fc"], 2 * lrt.log2_fold_change)


def test_lrt_of_a_general_contrast_equals_the_reparametrised_model(fits):
    _, X, fit, _ = fits
    # stim = IFN: the reduced model has one "stimulated" column for both
    X0 = np.column_stack([X["Intercept"], X["batchB"], X["conditionstim"] + X["conditionIFN"]])
    general = nbglm_test(fit, "conditionstim - conditionIFN", test="lrt")
    explicit = nbglm_test(fit, "conditionstim - conditionIFN", X0, test="lrt")
    assert (general["df"] == 1.0).all()
    # the two reduced fits differ only by the ridge (1e-6 on the log2 scale) in another basis
    np.testing.assert_allclose(general["stat"], explicit["stat"], rtol=1e-5, atol=1e-6)
    # joint contrast: both condition coefficients (X without them, df 2)
    joint = nbglm_test(fit, {"condition": ["conditionstim", "conditionIFN"]}, test="lrt")
    drop = nbglm_test(fit, "conditionstim", X[["Intercept", "batchB"]], test="lrt")
    assert (joint["df"] == 2.0).all() and joint["log_fc"].isna().all()
    _same(joint["stat"], drop["stat"])
    _same(joint["p_value"], stats.chi2.sf(drop["stat"], 2))


def test_lrt_against_an_empty_reduced_design_uses_the_size_factors_as_means(rng):
    G, m = 60, 20
    sf = np.exp(rng.normal(0, 0.3, m))
    mu = sf[:, None] * np.exp(rng.normal(2, 1, G))
    Y = rng.negative_binomial(5, 5 / (5 + mu)).astype(float)
    X = pd.DataFrame({"Intercept": np.ones(m)})
    fit = nbglm(Y, X, size_factors=sf, independent_filtering=False)
    t = nbglm_test(fit, test="lrt")
    r = 1 / fit.dispersion
    full = stats.nbinom.logpmf(Y, r, r / (r + sf[:, None] * np.exp(fit.coef[:, 0]))).sum(0)
    null = stats.nbinom.logpmf(Y, r, r / (r + sf[:, None])).sum(0)
    np.testing.assert_allclose(t["stat"], 2 * (full - null), rtol=1e-7, atol=1e-7)
    assert (t["df"] == 1.0).all() and (t["contrast"] == "Intercept").all()


def test_argument_errors(fits):
    _, X, fit, _ = fits
    with pytest.raises(ValueError, match="unknown name 'conditionstm'"):
        nbglm_test(fit, "conditionstm")
    with pytest.raises(ValueError, match="is zero"):
        nbglm_test(fit, {"none": np.zeros(4)})
    with pytest.raises(ValueError, match="rows"):
        nbglm_test(fit, {"short": np.ones(3)})
    with pytest.raises(ValueError, match="reduced must have shape"):
        nbglm_test(fit, "conditionstim", np.ones((5, 1)), test="lrt")
    with pytest.raises(ValueError, match="reduced is not of full column rank"):
        nbglm_test(fit, "conditionstim", np.ones((24, 2)), test="lrt")
    with pytest.raises(ValueError, match="test must be"):
        nbglm_test(fit, "conditionstim", test="score")
