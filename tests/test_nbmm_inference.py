"""Tests of the NB mixed model (``nbmm_test``, ``de(method="nbmm")``): LRTs against glmmTMB's
reduced fits, Wald z and t, the between–within df against the LMM's, joint contrasts against a
plain NumPy computation, bad genes, errors, and a scanpy-style AnnData through de() and the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import pyflashmm as fm
from tests.frontend.realistic import realistic_adata
from tests.frontend.test_de_realistic import run_cli

ROOT = Path(__file__).parent / "data" / "glmmtmb-1.1.5"
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
    fit = fm.nbmm(d[genes].to_numpy(), X, d.donor.to_numpy(), size_factors=d.s.to_numpy())
    return request.param, d, genes, X, fit


def test_lrt_matches_glmmtmb_reduced_fits(scenario):
    name, _, genes, X, fit = scenario
    ref = pd.read_csv(ROOT / name / "reduced.csv").set_index("gene").loc[genes]
    assert (ref.max_abs_grad < 1e-6).all()  # polished reduced optima
    table = fm.nbmm_test(fit, "cond", test="lrt")
    # the LR statistic is a difference of two log-likelihoods that each agree to ~1e-12
    # relative (|ℓ| ≈ 300–900): absolute agreement 1e-6 covers statistics near 0
    np.testing.assert_allclose(table.stat, ref.lr_stat, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(table.p_value, ref.p_value, rtol=1e-5, atol=1e-8)
    assert (table.df == 1).all() and table.attrs["test"] == "lrt"
    # the log fold change is the full fit's, in log2
    np.testing.assert_allclose(table.log_fc, fit.coef[:, 1] / np.log(2), rtol=1e-14)
    # the default reduced design (X without cond) and the same design given explicitly
    explicit = fm.nbmm_test(fit, "cond", X.drop(columns="cond"), test="lrt")
    np.testing.assert_allclose(explicit.stat, table.stat, rtol=1e-12, atol=1e-12)


def test_wald_z_uses_glmmtmb_estimates_and_ses(scenario):
    name, _, genes, _, fit = scenario
    fx = pd.read_csv(ROOT / name / "fixef.csv")
    ref = fx[fx.term == "cond"].set_index("gene").loc[genes]
    z = ref.estimate / ref.se
    table = fm.nbmm_test(fit, "cond", df="z")
    np.testing.assert_allclose(table.stat, z, rtol=1e-4)
    np.testing.assert_allclose(table.p_value, 2 * stats.norm.sf(np.abs(z)), rtol=1e-3)
    np.testing.assert_allclose(table.se, ref.se / np.log(2), rtol=1e-4)
    assert np.isinf(table.df).all()


def test_between_df_is_the_lmms(scenario):
    """The donor-level df of cond (and of z, a cell-level covariate) equal lmmtest's
    df='between' on the same design, an independent implementation from summary statistics."""
    _, d, genes, X, fit = scenario
    obs = d[["donor"] + [c for c in X.columns if c != "(Intercept)"]]
    sim = np.log1p(d[genes].to_numpy(dtype=float))
    lm = fm.lmm(fm.summary_stats(sim, fm.design(obs, "~ " + " + ".join(X.columns[1:]),
                                                "donor"), transform=None))  # fmt: skip
    for term in X.columns[1:]:
        ours = fm.nbmm_test(fit, term).df.iloc[0]
        theirs = fm.lmmtest(lm, term, df="between").df.iloc[0]
        assert ours == theirs, (term, ours, theirs)
    J = d.donor.nunique()
    assert fm.nbmm_test(fit, "cond").df.iloc[0] == J - 2


def test_wald_t_and_joint_contrast_against_numpy(scenario):
    _, d, genes, X, fit = scenario
    J = d.donor.nunique()
    t = fm.nbmm_test(fit, {"cond": "cond"})
    stat = fit.coef[:, 1] / fit.se[:, 1]
    np.testing.assert_allclose(t.stat, stat, rtol=1e-12)
    np.testing.assert_allclose(t.p_value, 2 * stats.t.sf(np.abs(stat), J - 2), rtol=1e-10)
    np.testing.assert_allclose(t.adj_p_value, stats.false_discovery_control(t.p_value),
                               rtol=1e-12)  # fmt: skip
    joint = fm.nbmm_test(fit, {"both": ["(Intercept)", "cond"]}, df="z")
    for g in range(len(genes)):
        b = fit.coef[g, :2]
        W = b @ np.linalg.inv(fit.cov[g, :2, :2]) @ b
        np.testing.assert_allclose(joint.stat.iloc[g], W, rtol=1e-10)
        np.testing.assert_allclose(joint.p_value.iloc[g], stats.chi2.sf(W, 2), rtol=1e-8)
    assert joint.log_fc.isna().all() and (joint.df == 2).all()
    F = fm.nbmm_test(fit, {"both": ["(Intercept)", "cond"]})
    np.testing.assert_allclose(F.stat, joint.stat / 2, rtol=1e-12)
    np.testing.assert_allclose(F.p_value, stats.f.sf(joint.stat / 2, 2, J - 2), rtol=1e-10)


def test_every_coefficient_and_numeric_contrasts(scenario):
    _, _, genes, X, fit = scenario
    table = fm.nbmm_test(fit)
    assert list(table.contrast.unique()) == list(X.columns)
    assert len(table) == len(genes) * X.shape[1]
    c = np.zeros(X.shape[1])
    c[1] = 1.0
    numeric = fm.nbmm_test(fit, c)
    np.testing.assert_array_equal(numeric.stat, table[table.contrast == "cond"].stat)


# ------------------------------------------------------------------------ bad genes, errors


@pytest.fixture(scope="module")
def donors_data():
    rng = np.random.default_rng(5)
    J, n = 8, 20
    donor = np.repeat([f"donor_{j}" for j in range(J)], n)
    code = np.repeat(np.arange(J), n)
    X = pd.DataFrame({"(Intercept)": 1.0, "conditionstim": (code % 2).astype(float)})
    s = np.exp(rng.normal(0, 0.4, donor.size))
    mu = 2.0 * s * np.exp(rng.normal(0, 0.3, J)[code])
    y = rng.negative_binomial(3.0, 3.0 / (3.0 + mu[:, None]), (donor.size, 3)).astype(float)
    return y, X, donor, s, code


def test_bad_genes_are_nan_and_the_rest_proceed(donors_data):
    y, X, donor, s, code = donors_data
    one_donor = np.where(code == 3, y[:, 0] + 1, 0.0)
    Y = np.column_stack([y[:, 0], np.zeros(len(donor)), one_donor, y[:, 1]])
    fit = fm.nbmm(Y, X, donor, size_factors=s)
    for test in ("wald", "lrt"):
        t = fm.nbmm_test(fit, "conditionstim", test=test)
        assert list(t.status[1:3]) == ["all_zero", "one_group"]
        assert set(t.status.iloc[[0, 3]]) <= {"ok", "boundary"}
        assert t.p_value.iloc[[1, 2]].isna().all() and t.adj_p_value.iloc[[1, 2]].isna().all()
        assert t.p_value.iloc[[0, 3]].notna().all()
        # BH over the genes with a p-value only
        np.testing.assert_allclose(
            t.adj_p_value.iloc[[0, 3]],
            stats.false_discovery_control(t.p_value.iloc[[0, 3]]),
            rtol=1e-12,
        )


def test_one_cell_donors_and_within_donor_constant_covariates(donors_data):
    y, X, donor, s, code = donors_data
    keep = np.r_[0:1, 20:40, 41:42, 60:160]  # donors 0 and 2 keep one cell each
    Xk = X.iloc[keep].assign(age=(code[keep] * 3.0 + 20.0))  # a donor-level covariate
    fit = fm.nbmm(y[keep], Xk, donor[keep], size_factors=s[keep])
    t = fm.nbmm_test(fit, "conditionstim")
    assert set(t.status) <= {"ok", "boundary"}
    assert t.p_value.notna().all()
    assert (t.df == 8 - 3).all()  # donors − rank of [1, condition, age]


def test_errors_name_the_argument(donors_data):
    y, X, donor, s, _ = donors_data
    fit = fm.nbmm(y, X, donor, size_factors=s)
    with pytest.raises(ValueError, match="test must be"):
        fm.nbmm_test(fit, test="score")
    with pytest.raises(ValueError, match="df must be"):
        fm.nbmm_test(fit, df="satterthwaite")
    with pytest.raises(ValueError, match="reduced: a reduced design is for test='lrt'"):
        fm.nbmm_test(fit, "conditionstim", X[["(Intercept)"]])
    with pytest.raises(ValueError, match="reduced must have shape"):
        fm.nbmm_test(fit, "conditionstim", X, test="lrt")
    with pytest.raises(ValueError, match="not a coefficient|nosuch"):
        fm.nbmm_test(fit, "nosuch")
    with pytest.raises(ValueError, match="one random intercept"):
        fm.nbmm(y, X, np.column_stack([donor, donor]), size_factors=s)
    only_intercept = fm.nbmm(y, X[["(Intercept)"]], donor, size_factors=s)
    with pytest.raises(ValueError, match="no fixed effects"):
        fm.nbmm_test(only_intercept, test="lrt")
    with pytest.raises(ValueError, match="df='between' leaves"):
        fm.nbmm_test(fm.nbmm(y[:40], X[:40], donor[:40], size_factors=s[:40]), "conditionstim")


# ------------------------------------------------------------------------ de() and the CLI


@pytest.fixture(scope="module")
def pbmc():
    adata, truth = realistic_adata(n_genes=30, n_cells=1600, seed=11)
    return adata, truth


def test_de_nbmm_on_an_anndata(pbmc):
    adata, _ = pbmc
    table = fm.de(adata, layer="counts", fixed="~ condition", random="donor_id",
                  contrast={"stim": "conditionstim"}, method="nbmm")  # fmt: skip
    assert list(table.variable) == list(adata.var_names)
    assert (table.method == "nbmm").all() and (table.contrast == "stim").all()
    # REML by default for a Wald test (the better calibrated with few donors)
    assert table.attrs["method"] == "nbmm" and table.attrs["test"] == "wald (between), reml"
    assert table.attrs["reference"] == {"condition": "ctrl"}
    # the same as nbmm + nbmm_test on the same inputs
    counts = adata.layers["counts"]
    X = fm.design(adata.obs, "~ condition").X_frame()
    donors = adata.obs["donor_id"].astype(str).to_numpy()
    direct = fm.nbmm_test(fm.nbmm(counts, X, donors, reml=True), "conditionstim")
    np.testing.assert_array_equal(table.p_value, direct.p_value)
    assert (table.df == adata.obs["donor_id"].nunique() - 2).all()
    lrt = fm.de(adata, layer="counts", fixed="~ condition", random="(1|donor_id)",
                contrast="conditionstim", method="nbmm", test="lrt")  # fmt: skip
    assert lrt.attrs["test"] == "lrt" and (lrt.df == 1).all()
    z = fm.de(adata, layer="counts", fixed="~ condition", random="donor_id",
              contrast="conditionstim", method="nbmm", df="z")  # fmt: skip
    assert np.isinf(z.df).all()
    np.testing.assert_allclose(z.stat, table.stat, rtol=1e-14)
    ml = fm.de(adata, layer="counts", fixed="~ condition", random="donor_id",
               contrast="conditionstim", method="nbmm", reml=False)  # fmt: skip
    direct = fm.nbmm_test(fm.nbmm(counts, X, donors), "conditionstim")
    np.testing.assert_array_equal(ml.p_value, direct.p_value)
    assert ml.attrs["test"] == "wald (between)"
    with pytest.raises(ValueError, match="test='lrt' compares ML likelihoods"):
        fm.de(adata, layer="counts", fixed="~ condition", random="donor_id", method="nbmm",
              reml=True, test="lrt")  # fmt: skip


def test_de_nbmm_refuses_what_it_cannot_fit(pbmc):
    adata, _ = pbmc
    kw = {"fixed": "~ condition", "method": "nbmm"}
    with pytest.raises(ValueError, match="random: method='nbmm' needs"):
        fm.de(adata, layer="counts", **kw)
    with pytest.raises(ValueError, match="one random intercept"):
        fm.de(adata, layer="counts", random="(1|donor_id) + (1|batch)", **kw)
    with pytest.raises(ValueError, match="df: method='nbmm'"):
        fm.de(adata, layer="counts", random="donor_id", df="kenward-roger", **kw)
    with pytest.raises(ValueError, match="models raw counts"):
        fm.de(adata, random="donor_id", **kw)  # log-normalised X


def test_cli_nbmm(pbmc, tmp_path):
    path = tmp_path / "pbmc.h5ad"
    pbmc[0].write_h5ad(path)
    out = tmp_path / "nbmm.csv"
    run = run_cli("de", str(path), "--layer", "counts", "--method", "nbmm", "--random",
                  "donor_id", "--fixed", "~ condition", "--contrast", "stim=conditionstim",
                  "--df", "z", "-o", str(out))  # fmt: skip
    assert run.returncode == 0, run.stderr
    table = pd.read_csv(out)
    assert len(table) == 30 and (table.method == "nbmm").all() and np.isinf(table.df).all()
    assert run.stderr.strip().splitlines()[-1].startswith("pyflashmm de: 30 rows")
    run = run_cli("de", str(path), "--layer", "counts", "--random", "donor_id", "--fixed",
                  "~ condition", "--agq", "5", "-o", str(out))  # fmt: skip
    assert run.returncode == 2 and "--agq N needs --method nbmm" in run.stderr
    # the LRT fits by ML by default; asking for REML with it is refused, naming the reason
    run = run_cli("de", str(path), "--layer", "counts", "--method", "nbmm", "--random",
                  "donor_id", "--fixed", "~ condition", "--contrast", "stim=conditionstim",
                  "--test", "lrt", "-o", str(out))  # fmt: skip
    assert run.returncode == 0, run.stderr
    lrt = pd.read_csv(out)
    assert (lrt.df == 1).all() and lrt.p_value.notna().all()
    run = run_cli("de", str(path), "--layer", "counts", "--method", "nbmm", "--random",
                  "donor_id", "--fixed", "~ condition", "--test", "lrt", "--reml", "-o",
                  str(out))  # fmt: skip
    assert run.returncode == 2 and "compares ML likelihoods" in run.stderr


# the AGQ kernels take about a minute to compile on a cold cache: AGQ is tested in the slow run
@pytest.mark.slow
def test_de_nbmm_by_agq_on_an_anndata(pbmc):
    adata, _ = pbmc
    counts = adata.layers["counts"]
    X = fm.design(adata.obs, "~ condition").X_frame()
    donors = adata.obs["donor_id"].astype(str).to_numpy()
    agq = fm.de(adata, layer="counts", fixed="~ condition", random="donor_id",
                contrast="conditionstim", method="nbmm", n_agq=5)  # fmt: skip
    direct = fm.nbmm(counts, X, donors, method="agq", n_agq=5)  # ML: REML has no AGQ
    np.testing.assert_array_equal(agq.log_fc, direct.coef[:, 1] / np.log(2))


@pytest.mark.slow
def test_lrt_of_an_agq_fit_refits_by_agq(donors_data):
    y, X, donor, s, _ = donors_data
    fit = fm.nbmm(y, X, donor, size_factors=s, method="agq", n_agq=5)
    reduced = fm.nbmm(y, X[["(Intercept)"]], donor, size_factors=s, method="agq", n_agq=5)
    table = fm.nbmm_test(fit, "conditionstim", test="lrt")
    np.testing.assert_allclose(table.stat, 2 * (fit.loglik - reduced.loglik), rtol=1e-12)
    laplace = fm.nbmm_test(fm.nbmm(y, X, donor, size_factors=s), "conditionstim", test="lrt")
    assert not np.allclose(table.stat, laplace.stat, rtol=1e-10, atol=0)


def test_separated_and_unconverged_genes_have_no_test(donors_data):
    y, X, donor, s, code = donors_data
    stim = code % 2 == 1
    separated = np.where(stim, y[:, 0] + 1, 0.0)  # every ctrl count zero: β_stim → ∞
    Y = np.column_stack([y[:, 0], separated, y[:, 1]])
    fit = fm.nbmm(Y, X, donor, size_factors=s, warn=False)
    assert fit.status[1] == "separation" and not fit.converged[1]
    assert np.isfinite(fit.coef[1]).all()  # the last iterate is kept, for inspection
    for test in ("wald", "lrt"):
        t = fm.nbmm_test(fit, "conditionstim", test=test)
        assert np.isnan(t.p_value.iloc[1]) and t.status.iloc[1] == "separation"
        assert t.p_value.iloc[[0, 2]].notna().all()
    with pytest.warns(fm.ConvergenceWarning, match="1 of 3 genes"):
        fm.nbmm(Y, X, donor, size_factors=s)
    # the iteration limit: estimates kept, no p-value
    short = fm.nbmm(y, X, donor, size_factors=s, max_iter=1, warn=False)
    assert set(short.status) == {"max_iter"}
    assert np.isfinite(short.coef).all()
    assert fm.nbmm_test(short, "conditionstim").p_value.isna().all()


def test_options_are_checked_before_the_counts(donors_data):
    y, X, donor, s, _ = donors_data
    bad_counts = -np.ones_like(y)  # would fail validation, but the option is reported first
    for kw, name in [({"max_iter": 0}, "max_iter"), ({"tol": -1.0}, "tol"),
                     ({"reml": "yes"}, "reml"), ({"method": "quad"}, "method"),
                     ({"n_agq": 3}, "n_agq"), ({"progress": "bar"}, "progress")]:  # fmt: skip
        with pytest.raises(ValueError, match=name):
            fm.nbmm(bad_counts, X, donor, size_factors=s, **kw)
    with pytest.raises(ValueError, match="X must be numeric"):
        fm.nbmm(y, np.full((len(donor), 2), "a", dtype=object), donor)
