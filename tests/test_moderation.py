"""Empirical-Bayes moderated LMM contrast tests (lmmtest(..., moderate=True))."""

import dataclasses
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import optimize, special
from scipy import stats as sps

import pyflashmm as fm
from pyflashmm._ebayes import squeeze_var
from pyflashmm._lmm.inference import lmmtest
from pyflashmm._lmm.moderation import mean_response, moderate_t
from pyflashmm._multitest import bh_adjust

STIM = {"stim_vs_ctrl": "conditionstim"}  # between donors
COLUMNS = ["variable", "contrast", "log_fc", "se", "stat", "df", "df_num", "p_value",
           "adj_p_value", "method", "converged", "status"]  # fmt: skip


def _obs(rng, n_donors=24, cells=(15, 40), balanced=False):
    """Cells of n_donors donors; condition between donors, cell type within."""
    sizes = np.full(n_donors, 26) if balanced else rng.integers(cells[0], cells[1], n_donors)
    donor = np.repeat(np.arange(n_donors), sizes)
    if balanced:
        cell_type = np.concatenate([np.repeat(["B", "T"], s // 2) for s in sizes])
    else:
        cell_type = rng.choice(["B", "T"], donor.size)
    return pd.DataFrame(
        {
            "donor_id": [f"D{i + 1:02d}" for i in donor],
            "condition": np.where(donor % 2 == 0, "ctrl", "stim"),
            "cell_type": cell_type,
        }
    )


def _fit(rng, obs, G=300, d0=8.0, sigma2_donor=0.3, sigma2=1.0, scale=None):
    """Genes whose variances share a scaled inverse-χ² law (prior df d0): σ_b,g² and σ_g² are
    sigma2_donor and sigma2 times one gene factor d0/χ²_{d0} (or ``scale``)."""
    dsg = fm.design(obs, "~ condition + cell_type", random="(1 | donor_id)")
    s = d0 / rng.chisquare(d0, G) if scale is None else scale
    Z = dsg.Z.toarray()
    q = Z.shape[1]
    Y = (
        dsg.X @ rng.normal(0, 0.5, (dsg.X.shape[1], G))
        + Z @ (rng.normal(size=(q, G)) * np.sqrt(sigma2_donor * s))
        + rng.normal(size=(len(obs), G)) * np.sqrt(sigma2 * s)
    )
    return fm.lmmfit(Y, dsg, gene_names=[f"GENE{g + 1}" for g in range(G)])


@pytest.fixture(scope="module")
def fit():
    rng = np.random.default_rng(20260508)
    return _fit(rng, _obs(rng))


def _prior(table):
    return pd.DataFrame(table.attrs["moderation"]).set_index("contrast")


def test_moderated_table_follows_the_prior(fit):
    plain = lmmtest(fit, STIM, df="satterthwaite")
    mod = lmmtest(fit, STIM, df="satterthwaite", moderate=True, trend=False)
    assert list(mod.columns) == COLUMNS and len(mod) == len(plain)
    prior = _prior(mod).loc["stim_vs_ctrl"]
    assert prior["d0_summary"] == "common" and prior["n_genes"] == fit.n_genes
    d0, s0_sq = prior["d0"], prior["s0_squared"]
    assert np.isfinite(d0) and 2 < d0 < 30  # the genes were drawn with d0 = 8
    d = plain["df"].to_numpy()
    assert d.std() > 0.1  # unbalanced donors: gene-specific Satterthwaite df
    np.testing.assert_allclose(mod["df"], d0 + d, rtol=1e-12)  # far below the cap Σ d_g
    v = plain["se"].to_numpy() ** 2
    np.testing.assert_allclose(mod["se"] ** 2, (d0 * s0_sq + d * v) / (d0 + d), rtol=1e-12)
    np.testing.assert_array_equal(mod["log_fc"], plain["log_fc"])
    np.testing.assert_allclose(mod["stat"], mod["log_fc"] / mod["se"], rtol=1e-12)
    np.testing.assert_allclose(
        mod["p_value"], 2 * sps.t.sf(np.abs(mod["stat"]), mod["df"]), rtol=1e-10
    )
    np.testing.assert_allclose(mod["adj_p_value"], bh_adjust(mod["p_value"].to_numpy()))
    # the prior is squeeze_var's on (se², df)
    sq = squeeze_var(v, d)
    assert (sq.df_prior, sq.var_prior) == (d0, s0_sq)
    greater = lmmtest(
        fit, STIM, df="satterthwaite", moderate=True, trend=False, alternative="greater"
    )
    np.testing.assert_allclose(greater["p_value"], sps.t.sf(mod["stat"], mod["df"]), rtol=1e-10)


def test_one_gene_by_hand(fit):
    """The prior by the method of moments in plain NumPy/SciPy, then one gene's test."""
    plain = lmmtest(fit, STIM)
    v, d = plain["se"].to_numpy() ** 2, plain["df"].to_numpy()
    e = np.log(v) - special.digamma(d / 2) + np.log(d / 2)
    excess = np.var(e, ddof=1) - np.mean(special.polygamma(1, d / 2))
    half_d0 = optimize.brentq(lambda x: special.polygamma(1, x) - excess, 1e-3, 1e6, xtol=1e-14)
    d0 = 2 * half_d0
    s0_sq = np.exp(np.mean(e) + special.digamma(half_d0) - np.log(half_d0))
    prior = _prior(lmmtest(fit, STIM, moderate=True, trend=False)).loc["stim_vs_ctrl"]
    np.testing.assert_allclose([prior["d0"], prior["s0_squared"]], [d0, s0_sq], rtol=1e-10)
    g = 7
    var_post = (d0 * s0_sq + d[g] * v[g]) / (d0 + d[g])
    t = plain["log_fc"][g] / np.sqrt(var_post)
    p = 2 * sps.t.sf(abs(t), d0 + d[g])
    row = lmmtest(fit, STIM, moderate=True, trend=False).iloc[g]
    np.testing.assert_allclose([row["stat"], row["df"], row["p_value"]], [t, d0 + d[g], p],
                               rtol=1e-9)  # fmt: skip


def test_between_subject_variance_is_a_common_multiple(rng):
    """Balanced design: the between-donor contrast's variance is (σ_b² + σ²/m)·u with
    u = cᵀ(X_bᵀX_b)⁻¹c the same for every gene (1/12 + 1/12: 12 donors per arm), so
    moderating se² is moderating σ_b² + σ²/m; and moderation is scale-equivariant."""
    obs = _obs(rng, balanced=True)
    fit = _fit(rng, obs, G=60)
    m = 26
    total = fit.theta[:, 0] + fit.theta[:, 1] / m
    c = np.array([0.0, 1.0, 0.0])
    v = np.einsum("a,gab,b->g", c, fit.cov, c)
    np.testing.assert_allclose(v / total, 1 / 12 + 1 / 12, rtol=1e-8)
    d = lmmtest(fit, STIM)["df"].to_numpy()
    est = fit.coef @ c
    a = moderate_t(est, v, d)
    b = moderate_t(est, total, d)  # the between-donor total variance, same df
    np.testing.assert_allclose(a.t * np.sqrt(1 / 6), b.t, rtol=1e-8)  # est/√(u·ṽ) vs est/√ṽ
    np.testing.assert_allclose(a.df, b.df, rtol=1e-8)
    np.testing.assert_allclose(a.se**2, b.se**2 / 6, rtol=1e-8)
    assert a.prior.df_prior == pytest.approx(b.prior.df_prior, rel=1e-8)


def test_robust_differs_where_the_outliers_are(rng):
    """Ten genes with 25× the variance: the robust prior gives them (and few others) a small
    prior df of their own, keeps a common one elsewhere, and its common prior is close to the
    one fitted without the outliers, which drag the non-robust d0 down."""
    G = 400
    scale = 8 / rng.chisquare(8, G)
    outliers = np.arange(0, G, 40)
    scale[outliers] *= 25
    fit = _fit(rng, _obs(rng), G=G, scale=scale)
    plain = lmmtest(fit, STIM)
    rob = lmmtest(fit, STIM, moderate=True, trend=False, robust=True)
    info = _prior(rob).loc["stim_vs_ctrl"]
    assert info["d0_summary"] == "median over genes"
    v, d = plain["se"].to_numpy() ** 2, plain["df"].to_numpy()
    sq = squeeze_var(v, d, robust=True)
    assert np.isclose(info["d0"], np.median(sq.df_prior), rtol=1e-12, atol=0)
    assert sq.df_prior.shape == (G,)
    np.testing.assert_allclose(rob["df"], sq.df_prior + d, rtol=1e-12)
    np.testing.assert_allclose(rob["se"] ** 2, sq.var_post, rtol=1e-12)
    common = np.max(sq.df_prior)
    shrunk = np.flatnonzero(sq.df_prior < common)
    assert set(outliers) <= set(shrunk) and len(shrunk) < G // 5
    assert (sq.df_prior[outliers] < 0.25 * common).all()
    own_weight = d / (sq.df_prior + d)  # outliers keep their own variance
    assert (own_weight[outliers] > 0.95).all()
    non_robust = squeeze_var(v, d)
    clean = squeeze_var(np.delete(v, outliers), np.delete(d, outliers))
    assert abs(common - clean.df_prior) < abs(non_robust.df_prior - clean.df_prior)
    assert sq.var_prior == pytest.approx(clean.var_prior, rel=0.03)


def test_infinite_prior_df_uses_the_prior_variance(rng):
    """Genes that are scaled copies of one gene (spread 0.1%): their contrast variances scatter
    far less than their df allow, d0 = ∞, and every t uses s0² on Σ d_g df (limma's cap)."""
    obs = _obs(rng)
    dsg = fm.design(obs, "~ condition + cell_type", random="(1 | donor_id)")
    base = dsg.X @ [1.0, 0.5, -0.3] + dsg.Z.toarray() @ rng.normal(0, 0.5, dsg.Z.shape[1])
    base = base + rng.normal(size=len(obs))
    Y = base[:, None] * (1 + 1e-3 * np.arange(50))[None, :]
    fit = fm.lmmfit(Y, dsg)
    plain = lmmtest(fit, STIM)
    mod = lmmtest(fit, STIM, moderate=True, trend=False)
    prior = _prior(mod).loc["stim_vs_ctrl"]
    assert prior["d0"] == np.inf
    np.testing.assert_allclose(prior["s0_squared"], np.mean(plain["se"] ** 2), rtol=1e-12)
    np.testing.assert_allclose(mod["se"] ** 2, prior["s0_squared"], rtol=1e-12)
    np.testing.assert_allclose(mod["df"], plain["df"].sum(), rtol=1e-12)


@pytest.mark.parametrize("df", ["residual", "between"])
def test_common_df(fit, df):
    plain = lmmtest(fit, STIM, df=df)
    mod = lmmtest(fit, STIM, df=df, moderate=True, trend=False)
    d0 = _prior(mod).loc["stim_vs_ctrl", "d0"]
    assert plain["df"].nunique() == 1
    np.testing.assert_allclose(mod["df"], d0 + plain["df"], rtol=1e-12)


def test_joint_contrasts_warn_and_stay_unmoderated(fit):
    spec = {"stim": "conditionstim", "both": ["conditionstim", "cell_typeT"]}
    with pytest.warns(UserWarning, match="not moderated: 'both'") as record:
        mod = lmmtest(fit, spec, moderate=True, trend=False)
    assert len(record) == 1 and record[0].filename == __file__
    plain = lmmtest(fit, spec)
    joint = mod["contrast"] == "both"
    pd.testing.assert_frame_equal(mod[joint], plain[joint])
    assert not np.allclose(mod.loc[~joint, "p_value"], plain.loc[~joint, "p_value"])
    assert list(_prior(mod).index) == ["stim"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lmmtest(fit, {"stim": "conditionstim"}, moderate=True, trend=False)  # no joint: no warning


def test_genes_without_df_are_left_out(fit):
    plain = lmmtest(fit, STIM)
    est, v = plain["log_fc"].to_numpy(), plain["se"].to_numpy() ** 2
    d = plain["df"].to_numpy().copy()
    d[[3, 9]] = np.nan
    v2 = v.copy()
    v2[12] = np.nan
    res = moderate_t(est, v2, d)
    gone = [3, 9, 12]
    assert np.isnan(res.t[gone]).all() and np.isnan(res.p_value[gone]).all()
    keep = np.setdiff1d(np.arange(len(est)), gone)
    assert res.used.sum() == len(keep) and np.isfinite(res.t[keep]).all()
    ref = squeeze_var(v[keep], d[keep])
    assert res.prior.df_prior == ref.df_prior and res.prior.var_prior == ref.var_prior
    none = moderate_t(est[:2], v[:2], np.full(2, np.nan))
    assert none.prior is None and np.isnan(none.t).all()


def test_unfitted_gene_is_left_out_of_the_prior(rng):
    obs = _obs(rng)
    dsg = fm.design(obs, "~ condition + cell_type", random="(1 | donor_id)")
    Y = rng.normal(size=(len(obs), 30)) + dsg.Z.toarray() @ rng.normal(0, 0.5, (24, 30))
    Y[:, 4] = 0.0  # no variance: no fit
    with pytest.warns(fm.ConvergenceWarning, match="zero_variance"):
        fit = fm.lmmfit(Y, dsg)
    mod = lmmtest(fit, STIM, moderate=True, trend=False)
    assert np.isnan(mod.loc[4, "p_value"]) and mod["p_value"].drop(4).notna().all()
    assert _prior(mod).loc["stim_vs_ctrl", "n_genes"] == 29


def test_bad_arguments(fit):
    with pytest.raises(TypeError, match="moderate must be a bool"):
        lmmtest(fit, STIM, moderate="yes")
    with pytest.raises(TypeError, match="robust must be a bool"):
        lmmtest(fit, STIM, moderate=True, trend=False, robust=1)
    with pytest.raises(ValueError, match="robust=True .* moderate=True"):
        lmmtest(fit, STIM, robust=True)


def test_moderated_tables_concatenate(fit):
    a = lmmtest(fit, STIM, moderate=True, trend=False)
    b = lmmtest(fit, {"T": "cell_typeT"}, moderate=True, trend=False)
    both = pd.concat([a, b], ignore_index=True)  # attrs are compared by pandas: no error
    assert len(both) == len(a) + len(b)
    assert "moderation" not in lmmtest(fit, STIM).attrs


# --------------------------------------------------------------------------------------------
# trend=True: a prior scale that follows each gene's mean response (limma-trend)
# --------------------------------------------------------------------------------------------


def _trend_curve(mean):
    """The variance factor of a gene with mean response ``mean`` (high for low means)."""
    return 0.2 + 2.0 * np.exp(-0.7 * mean)


@pytest.fixture(scope="module")
def trend_data():
    """Genes with means in [0, 6] whose variances (donor and residual alike) are
    _trend_curve(mean) times a scaled inverse-χ² factor with d0 = 8; 8 donors."""
    rng = np.random.default_rng(20260518)
    obs = _obs(rng, n_donors=8)
    G = 600
    mean = rng.uniform(0, 6, G)
    scale = _trend_curve(mean) * 8.0 / rng.chisquare(8.0, G)
    dsg = fm.design(obs, "~ condition + cell_type", random="(1 | donor_id)")
    Z = dsg.Z.toarray()
    Y = (
        mean
        + Z @ (rng.normal(size=(Z.shape[1], G)) * np.sqrt(0.3 * scale))
        + rng.normal(size=(len(obs), G)) * np.sqrt(scale)
    )
    return Y, fm.lmmfit(Y, dsg), mean


def test_trend_prior_follows_the_mean(trend_data):
    """The per-gene prior follows the curve the variances were drawn around, the prior df
    comes back near the d0 = 8 they were drawn with (a constant prior mistakes the trend for
    scatter between genes and gets a much smaller d0), and the table is squeeze_var's."""
    Y, fit, mean = trend_data
    plain = lmmtest(fit, STIM)
    flat = _prior(lmmtest(fit, STIM, moderate=True, trend=False)).loc["stim_vs_ctrl"]
    table = lmmtest(fit, STIM, moderate=True, trend=True)
    prior = _prior(table).loc["stim_vs_ctrl"]
    assert bool(prior["trend"]) and not bool(flat["trend"])
    assert 5 < prior["d0"] < 13 and flat["d0"] < 0.6 * prior["d0"]
    v, d = plain["se"].to_numpy() ** 2, plain["df"].to_numpy()
    ybar = Y.mean(axis=0)
    ref = squeeze_var(v, d, covariate=ybar)
    np.testing.assert_allclose(table["se"] ** 2, ref.var_post, rtol=1e-10)
    np.testing.assert_allclose(table["df"], np.minimum(ref.df_prior + d, d.sum()), rtol=1e-12)
    assert prior["d0"] == pytest.approx(ref.df_prior, rel=1e-12)
    assert prior["s0_squared"] == pytest.approx(np.median(ref.var_prior), rel=1e-12)
    # s0²(ȳ_g) is proportional to the curve (the design factor is common to the genes)
    # up to the spline's fit and unbalanced donors: a spread of ~10% about a curve that
    # itself spans a factor of 10
    ratio = ref.var_prior / _trend_curve(mean)
    assert np.std(np.log(ratio)) < 0.2 * np.std(np.log(_trend_curve(mean)))
    assert np.corrcoef(np.log(ref.var_prior), np.log(_trend_curve(mean)))[0, 1] > 0.98


def test_trend_covariate_is_the_mean_of_y():
    """ȳ_g from the summary statistics (the donor block's rows of ZᵀY) is the mean of the
    transformed cell-level counts; without an indicator block an intercept gives it, without
    both it is an error."""
    sim = fm.simulate_rnaseq(n_genes=80, n_cells=400, n_samples=6, n_clusters=2, null=True,
                             rng=11)  # fmt: skip
    dsg = fm.design(sim.obs, "~ trt + cls", random="(1 | sam)")
    fit = fm.lmmfit(sim.counts, dsg, transform="log2p1")
    direct = np.log2(1.0 + sim.counts.toarray()).mean(axis=0)
    np.testing.assert_allclose(mean_response(fit.stats), direct, rtol=1e-12, atol=1e-14)
    # a first block that is not an indicator block (ZᵀZ not diagonal): the intercept's XᵀY
    s = fit.stats
    zz = s.ZZ.copy()
    zz[0, 1] = zz[1, 0] = 1.0
    not_indicator = dataclasses.replace(s, ZZ=zz)
    np.testing.assert_allclose(mean_response(not_indicator), direct, rtol=1e-12, atol=1e-14)
    names = ["a", *s.fixed_names[1:]]
    with pytest.raises(ValueError, match="indicator block.*intercept"):
        mean_response(dataclasses.replace(not_indicator, fixed_names=names))
    # the moderated test runs on these log counts, with a trend
    table = lmmtest(fit, {"trt": "trtB"}, moderate=True, trend=True)
    assert np.isfinite(table["p_value"]).all()


def test_trend_bad_arguments(fit):
    with pytest.raises(TypeError, match="trend must be a bool"):
        lmmtest(fit, STIM, moderate=True, trend="yes")
    with pytest.raises(ValueError, match="trend=True .* moderate=True"):
        lmmtest(fit, STIM, trend=True)
    with pytest.raises(ValueError, match="trend=True with robust=True"):
        lmmtest(fit, STIM, moderate=True, robust=True, trend=True)
    with pytest.raises(ValueError, match="summary statistics"):
        lmmtest(dataclasses.replace(fit, stats=None), STIM, moderate=True, trend=True)
