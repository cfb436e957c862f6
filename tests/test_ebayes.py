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
