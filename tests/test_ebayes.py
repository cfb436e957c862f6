"""Empirical-Bayes variance prior: limma's squeezeVar (fixtures from limma 3.54.1) and the
model's properties."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import special
from scipy import stats as sps

from pyflashmm._ebayes import SqueezedVar, _f_logsf, fit_f_dist, squeeze_var, trigamma_inverse

DATA = Path(__file__).parent / "data" / "limma-3.54.1"
#: limma and we evaluate the same closed forms; its robust df solves an equation to 1e-8 on the
#: df/(1 + df) scale (ours to machine precision): agreement far inside 1e-6 is expected
RTOL_LIMMA = 1e-6


def _load():
    return (
        pd.read_csv(DATA / "variances.csv"),
        pd.read_csv(DATA / "squeezevar.csv"),
        pd.read_csv(DATA / "prior.csv"),
        pd.read_csv(DATA / "warnings.csv"),
    )


VARIANCES, SQUEEZED, PRIOR, WARNINGS = _load()
SETS = list(dict.fromkeys(VARIANCES["set"]))


def _assert_close(ours, ref, what):
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref), err_msg=f"{what}: NaN pattern")
    np.testing.assert_array_equal(ours[np.isinf(ref)], ref[np.isinf(ref)], err_msg=what)
    fin = np.isfinite(ref)
    np.testing.assert_allclose(ours[fin], ref[fin], rtol=RTOL_LIMMA, atol=0, err_msg=what)


@pytest.mark.parametrize("robust", [False, True])
@pytest.mark.parametrize("name", SETS)
def test_squeeze_var_matches_limma(name, robust):
    inp = VARIANCES[VARIANCES["set"] == name]
    ref = SQUEEZED[(SQUEEZED["set"] == name) & (SQUEEZED["robust"] == robust)]
    prior = PRIOR[(PRIOR["set"] == name) & (PRIOR["robust"] == robust)].iloc[0]
    assert (ref["gene"].to_numpy() == inp["gene"].to_numpy()).all()
    s2, df = inp["s2"].to_numpy(), inp["df"].to_numpy()
    expected = WARNINGS[(WARNINGS["set"] == name) & (WARNINGS["robust"] == robust)]
    if len(expected):  # limma offsets zero variances with a warning; so do we
        with pytest.warns(RuntimeWarning, match="offset away from zero"):
            res = squeeze_var(s2, df, robust=robust)
    else:
        res = squeeze_var(s2, df, robust=robust)
    assert isinstance(res, SqueezedVar)
    if robust:
        assert np.shape(res.df_prior) == s2.shape
    else:
        assert np.ndim(res.df_prior) == 0
        _assert_close(res.df_prior, prior["df_prior"], "df_prior")
    _assert_close(np.broadcast_to(res.df_prior, s2.shape), ref["df_prior"], "df_prior")
    _assert_close(res.var_prior, prior["var_prior"], "var_prior")
    # genes with infinite df: limma's (∞·s² + d0 s0²)/(∞ + d0) is NaN, ours the limit s²
    known = np.isinf(df) & np.isfinite(s2)
    post_ref = ref["var_post"].to_numpy().copy()
    assert np.isnan(post_ref[known]).all()
    post_ref[known] = s2[known]
    _assert_close(res.var_post, post_ref, "var_post")


def test_fixture_sets_cover_the_cases():
    """The special values and both branches of the robust fit are in the fixtures."""
    sp = VARIANCES[VARIANCES["set"] == "special"]
    assert np.isinf(sp["df"]).sum() >= 3 and (sp["df"] == 0).sum() >= 1
    assert np.isnan(sp["s2"]).sum() >= 3 and (sp["s2"] == 0).sum() >= 3
    assert np.isinf(PRIOR.query("set == 'd0_infinite' and not robust")["df_prior"]).all()
    rob = SQUEEZED.query("set == 'd0_infinite_outliers' and robust")["df_prior"]
    assert np.isinf(rob).any() and np.isfinite(rob).sum() >= 3  # d0 = ∞, outliers shrunk
    frac = VARIANCES["df"] % 1
    assert ((frac > 0) & np.isfinite(VARIANCES["df"])).mean() > 0.5  # non-integer df


@pytest.mark.parametrize("robust", [False, True])
def test_squeeze_var_is_scale_equivariant(robust):
    inp = VARIANCES[VARIANCES["set"] == "outliers"]
    s2, df = inp["s2"].to_numpy(), inp["df"].to_numpy()
    a = squeeze_var(s2, df, robust=robust)
    u = 37.25
    b = squeeze_var(u * s2, df, robust=robust)
    np.testing.assert_allclose(b.df_prior, a.df_prior, rtol=1e-9)
    np.testing.assert_allclose(b.var_prior, u * a.var_prior, rtol=1e-9)
    np.testing.assert_allclose(b.var_post, u * a.var_post, rtol=1e-9)


def test_fit_f_dist_recovers_the_prior(rng):
    G, s0_sq, d0 = 20000, 0.3, 6.0
    df = rng.uniform(2, 60, G)
    sigma2 = s0_sq * d0 / rng.chisquare(d0, G)
    s2 = sigma2 * rng.chisquare(df) / df
    est_s0, est_d0 = fit_f_dist(s2, df)
    assert abs(est_d0 - d0) < 0.8 and abs(est_s0 / s0_sq - 1) < 0.05
    # the posterior is the weighted mean of prior and estimate
    res = squeeze_var(s2, df)
    np.testing.assert_allclose(
        res.var_post, (est_d0 * est_s0 + df * s2) / (est_d0 + df), rtol=1e-12
    )


def test_common_variance_gives_infinite_prior_df(rng):
    """Variances that scatter less than sampling explains: d0 = ∞, every posterior is s0²
    (with one true common σ² this happens about half of the time; here by construction)."""
    df = rng.uniform(2, 60, 500)
    s2 = 0.7 * np.exp(rng.normal(0, 0.05, 500))
    s0_sq, d0 = fit_f_dist(s2, df)
    assert d0 == np.inf and s0_sq == pytest.approx(np.mean(s2), rel=1e-15)
    res = squeeze_var(s2, df)
    np.testing.assert_array_equal(res.var_post, s0_sq)


def test_degenerate_inputs():
    assert fit_f_dist([2.0], [3.0]) == (2.0, 0.0)
    assert fit_f_dist([2.0, np.nan, 1.0], [3.0, 4.0, np.inf]) == (2.0, 0.0)  # one usable gene
    res = squeeze_var([2.0], 3.0)
    assert res.df_prior == 0.0 and res.var_post.tolist() == [2.0]
    with pytest.raises(ValueError, match="empty"):
        squeeze_var([], [])
    with pytest.raises(ValueError, match="no gene"):
        fit_f_dist([np.nan, 1.0], [3.0, 0.0])
    with pytest.raises(ValueError, match="shape of s2"):
        squeeze_var([1.0, 2.0], [3.0, 4.0, 5.0])
    with pytest.raises(ValueError, match="non-negative"):
        squeeze_var([1.0, 2.0], [3.0, -1.0])
    with pytest.raises(TypeError, match="robust must be a bool"):
        squeeze_var([1.0, 2.0], 3.0, robust="yes")
    with pytest.raises(ValueError, match="winsor_tail_p"):
        squeeze_var([1.0, 2.0], 3.0, robust=True, winsor_tail_p=(0.05, 0.7))
    scalar = squeeze_var(np.array([1.0, 2.0, 0.5, 1.5]), 5.0)  # a scalar df is every gene's
    vector = squeeze_var(np.array([1.0, 2.0, 0.5, 1.5]), np.full(4, 5.0))
    np.testing.assert_array_equal(scalar.var_post, vector.var_post)


@pytest.mark.parametrize("x", [1e-8, 1e-3, 0.2, 1.0, 7.5, 1e3, 1e6, 1e8])
def test_trigamma_inverse(x):
    y = trigamma_inverse(x)
    if 1e-6 <= x <= 1e7:
        np.testing.assert_allclose(special.polygamma(1, y), x, rtol=1e-13)
    else:  # the asymptotes
        np.testing.assert_allclose(special.polygamma(1, y), x, rtol=1e-5)


def test_f_log_tail_far_out():
    """log P(F > f) stays finite where the probability underflows, and agrees with scipy in
    the range both cover."""
    d1 = np.array([3.0, 8.0, 40.0])
    for f in (0.5, 3.0, 20.0):
        np.testing.assert_allclose(_f_logsf(f, d1, 12.0), sps.f.logsf(f, d1, 12.0), rtol=1e-12)
    np.testing.assert_allclose(_f_logsf(2.0, d1, np.inf), sps.chi2.logsf(2.0 * d1, d1))
    assert _f_logsf(np.array([np.inf]), 4.0, 6.0)[0] == -np.inf
    far = _f_logsf(np.array([1e30, 1e60, 1e200]), 4.0, 6.0)
    assert np.isfinite(far).all() and (np.diff(far) < 0).all()
    # the tail of F(4, 6) is ≈ C·f^(−3): log-slope −3
    np.testing.assert_allclose(np.diff(far) / np.diff(np.log([1e30, 1e60, 1e200])), -3.0)


# --------------------------------------------------------------------------------------------
# limma-trend: squeezeVar(..., covariate=)
# --------------------------------------------------------------------------------------------

TREND_VARIANCES = pd.read_csv(DATA / "trend_variances.csv")
TREND_SQUEEZED = pd.read_csv(DATA / "trend_squeezevar.csv")
TREND_PRIOR = pd.read_csv(DATA / "trend_prior.csv")
TREND_WARNINGS = pd.read_csv(DATA / "trend_warnings.csv")
TREND_SETS = list(dict.fromkeys(TREND_VARIANCES["set"]))


@pytest.mark.parametrize("name", TREND_SETS)
def test_squeeze_var_with_covariate_matches_limma(name):
    inp = TREND_VARIANCES[TREND_VARIANCES["set"] == name]
    ref = TREND_SQUEEZED[TREND_SQUEEZED["set"] == name]
    prior = TREND_PRIOR[TREND_PRIOR["set"] == name].iloc[0]
    assert (ref["gene"].to_numpy() == inp["gene"].to_numpy()).all()
    s2, df, cov = (inp[k].to_numpy() for k in ("s2", "df", "covariate"))
    if (TREND_WARNINGS["set"] == name).any():
        with pytest.warns(RuntimeWarning, match="offset away from zero"):
            res = squeeze_var(s2, df, covariate=cov)
    else:
        res = squeeze_var(s2, df, covariate=cov)
    assert np.ndim(res.df_prior) == 0 and np.shape(res.var_prior) == s2.shape
    _assert_close(res.df_prior, prior["df_prior"], "df_prior")
    _assert_close(res.var_prior, ref["var_prior"], "var_prior")  # every gene, left-out ones too
    known = np.isinf(df) & np.isfinite(s2)  # limma: NaN (∞/∞); ours the limit s²
    post_ref = ref["var_post"].to_numpy().copy()
    assert np.isnan(post_ref[known]).all()
    post_ref[known] = s2[known]
    _assert_close(res.var_post, post_ref, "var_post")
    # fit_f_dist gives the same prior
    if (TREND_WARNINGS["set"] == name).any():
        with pytest.warns(RuntimeWarning):
            s0_sq, d0 = fit_f_dist(np.where(df == 0, 0.0, s2), df, covariate=cov)
    else:
        s0_sq, d0 = fit_f_dist(s2, df, covariate=cov)
    np.testing.assert_array_equal(s0_sq, res.var_prior)
    assert d0 == res.df_prior


def test_trend_fixtures_cover_the_cases():
    """Every spline df 1…4, d0 = ∞, special values, ties, an infinite covariate, and a gene
    outside the fitted covariate range (its prior extrapolated linearly) are in the fixtures."""
    assert set(TREND_PRIOR["spline_df"]) == {1, 2, 3, 4}
    assert np.isinf(TREND_PRIOR["df_prior"]).any()
    big = TREND_VARIANCES[TREND_VARIANCES["set"] == "trend_2000"]
    assert np.isnan(big["s2"]).sum() >= 3 and (big["s2"] == 0).sum() >= 2
    assert np.isinf(big["df"]).sum() >= 2 and (big["df"] == 0).sum() >= 2
    assert big["covariate"].duplicated().sum() > 100  # ties
    usable = np.isfinite(big["s2"]) & np.isfinite(big["df"]) & (big["df"] > 0)
    assert big["covariate"][~usable].max() > big["covariate"][usable].max()
    assert np.isinf(TREND_VARIANCES["covariate"]).any()
    frac = TREND_VARIANCES["df"] % 1
    assert ((frac > 0) & np.isfinite(TREND_VARIANCES["df"])).mean() > 0.5


def test_trend_follows_the_covariate(rng):
    """Variances drawn around s0²(x) = 0.05 + 1.5 e^{−0.8x}: the fitted prior follows the curve
    and the common prior df is recovered (a constant prior would inflate the scatter)."""
    G, d0 = 20000, 8.0
    x = rng.uniform(0, 8, G)
    truth = 0.05 + 1.5 * np.exp(-0.8 * x)
    df = rng.uniform(2, 60, G)
    s2 = truth * d0 / rng.chisquare(d0, G) * rng.chisquare(df) / df
    res = squeeze_var(s2, df, covariate=x)
    np.testing.assert_allclose(res.var_prior, truth, rtol=0.1)
    assert abs(res.df_prior - d0) < 1.0
    flat = squeeze_var(s2, df)
    assert flat.df_prior < res.df_prior / 2


def test_trend_special_cases():
    s2 = np.array([1.0, 2.0, 0.5, 1.5, 3.0, 0.7])
    df = np.full(6, 5.0)
    # one covariate value: the fit without covariate, s0² repeated per gene
    flat = squeeze_var(s2, df)
    same = squeeze_var(s2, df, covariate=np.full(6, 2.0))
    np.testing.assert_allclose(same.var_prior, flat.var_prior, rtol=1e-15)
    assert same.df_prior == flat.df_prior and np.shape(same.var_prior) == (6,)
    # scale equivariance and invariance to an affine map of the covariate
    x = np.array([0.3, 1.0, 2.2, 2.2, 4.0, 7.5])
    a = squeeze_var(s2, df, covariate=x)
    b = squeeze_var(37.25 * s2, df, covariate=-3.0 * x + 100.0)
    np.testing.assert_allclose(b.var_prior, 37.25 * a.var_prior, rtol=1e-10)
    np.testing.assert_allclose(b.var_post, 37.25 * a.var_post, rtol=1e-10)
    # a single gene: its own variance, per gene
    one = squeeze_var([2.0], 3.0, covariate=[1.0])
    assert one.var_prior.tolist() == [2.0] and one.df_prior == 0.0
    # one usable gene
    s0_sq, d0 = fit_f_dist([2.0, np.nan, 1.0], [3.0, 4.0, np.inf], covariate=[1.0, 2.0, 3.0])
    assert s0_sq.tolist() == [2.0, 2.0, 2.0] and d0 == 0.0


def test_trend_bad_arguments():
    s2, df = np.array([1.0, 2.0, 0.5, 1.5]), 5.0
    with pytest.raises(ValueError, match="NaN"):
        squeeze_var(s2, df, covariate=[1.0, np.nan, 2.0, 3.0])
    with pytest.raises(ValueError, match="shape of s2"):
        squeeze_var(s2, df, covariate=[1.0, 2.0])
    with pytest.raises(ValueError, match="robust=True with a covariate"):
        squeeze_var(s2, df, covariate=[1.0, 2.0, 3.0, 4.0], robust=True)
