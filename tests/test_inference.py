"""Inference on LMM fits: Satterthwaite df (vs lmerTest and finite differences), joint tests,
variance-component tests, LRT and BLUPs."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

import pyflashmm as fm
from pyflashmm._lmm.inference import (
    _cov_gradient,
    _joint_test,
    inverse_observed_information,
    lmmtest,
    lrt,
    observed_information,
    random_effects,
    vctest,
)
from pyflashmm._multitest import bh_adjust
from tests import oracle
from validation.lme4_reference import DATA as DATA_ROOT
from validation.lme4_reference import (
    MAX_ITER,
    SCENARIOS,
    TOL,
    fit_scenario,
    load,
    reference,
    singular_genes,
)

#: lmerTest differentiates its deviance numerically (numDeriv, Richardson) at lme4's optimum,
#: which itself is accurate to ~1e-7 (see test_lme4_reference): agreement to 1e-4 is what the
#: numerical derivative allows
RTOL_LMERTEST = 1e-4
#: analytic derivatives against central differences (step 1e-5 relative): O(h²) truncation
RTOL_FD = 1e-6


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("method", ["REML", "ML"])
def test_satterthwaite_df_and_p_match_lmertest(scenario, method):
    s = load(scenario)
    fit = fit_scenario(scenario, method)
    table = lmmtest(fit, df="satterthwaite")  # identity contrasts
    singular = set(singular_genes(scenario))
    checked = 0
    for j, gene in enumerate(s["genes"]):
        if gene in singular or not fit.converged[j]:
            continue  # lme4 at σₖ² = 0, ours negative: different fits (test_lme4_reference)
        fx, _, _ = reference(s, method, gene)
        ours = table[table["variable"] == fit.gene_names[j]].set_index("contrast")
        for _, row in fx.iterrows():
            term = row["term"]
            o = ours.loc[term]
            np.testing.assert_allclose(o["df"], row["df"], rtol=RTOL_LMERTEST, err_msg=term)
            np.testing.assert_allclose(o["p_value"], row["p_value"], rtol=RTOL_LMERTEST,
                                       atol=1e-300, err_msg=term)  # fmt: skip
            # t near 0 (β̂ ≈ 0): judged on the scale of 1, as coefficients are on their se
            np.testing.assert_allclose(o["stat"], row["t"], rtol=1e-6, atol=1e-6, err_msg=term)
            checked += 1
    assert checked >= 10


def _singular_fixture_cases():
    return [(sc, g, m) for sc in SCENARIOS for g in singular_genes(sc) for m in ("REML", "ML")]


@pytest.mark.parametrize(("scenario", "gene", "method"), _singular_fixture_cases())
def test_satterthwaite_at_a_singular_fit_matches_lmertest(scenario, gene, method):
    """At lme4's boundary (σₖ² = 0, ``nonneg=True``) lmerTest still reports a df: the component
    held at 0 drops out of ν (see inverse_observed_information)."""
    s = load(scenario)
    j = s["genes"].index(gene)
    X = pd.DataFrame(s["X"], columns=s["x_names"])
    fit = fm.lmmfit(s["Y"][:, [j]], X, s["Z"], s["d"], method=method, tol=TOL, max_iter=MAX_ITER,
                    nonneg=True, warn=False)  # fmt: skip
    assert fit.status[0] == "boundary" and fit.boundary[0].any()
    fx, _, _ = reference(s, method, gene)
    # k2_nested g2: lme4 stopped at σₖ/σ = 2e-7 (REML) and 1.9e-9 (ML), not at 0. lmerTest's df
    # is continuous there (∂Var(cᵀβ̂)/∂σₖ = 2σₖ ∂Var/∂σₖ² → 0 as σₖ → 0): ours at exactly 0
    # agree to ~1e-7. K = 2 fits at exactly 0: tests/test_kenward_roger.py (k2_crossed_singular).
    table = lmmtest(fit, df="satterthwaite").set_index("contrast")
    for _, row in fx.iterrows():
        o = table.loc[row["term"]]
        np.testing.assert_allclose(o["df"], row["df"], rtol=RTOL_LMERTEST, err_msg=row["term"])
        np.testing.assert_allclose(o["p_value"], row["p_value"], rtol=RTOL_LMERTEST,
                                   atol=1e-300, err_msg=row["term"])  # fmt: skip
        np.testing.assert_allclose(o["stat"], row["t"], rtol=1e-6, atol=1e-6, err_msg=row["term"])


@pytest.mark.parametrize("method", ["REML", "ML"])
@pytest.mark.parametrize("sizes", [(9,), (5, 4)])
def test_observed_information_is_minus_hessian(rng, method, sizes):
    X, Z, d = oracle.random_design(rng, 150, 3, sizes)
    Y = oracle.simulate_y(rng, X, Z, d, (0.5, 0.3, 1.0)[-(len(d) + 1) :], 2)
    fit = fm.lmmfit(Y, X, Z, d, method=method, tol=1e-9)
    J = observed_information(fit)
    for g in range(Y.shape[1]):
        theta = fit.theta[g]
        fd = np.empty((len(theta), len(theta)))
        for k in range(len(theta)):
            h = 1e-5 * abs(theta[k])
            up, down = theta.copy(), theta.copy()
            up[k] += h
            down[k] -= h
            s_up = oracle.loglik_score_info(Y[:, g], X, Z, d, up, method)[1]
            s_dn = oracle.loglik_score_info(Y[:, g], X, Z, d, down, method)[1]
            fd[:, k] = -(s_up - s_dn) / (2 * h)
        np.testing.assert_allclose(J[g], fd, rtol=RTOL_FD, atol=RTOL_FD * np.abs(fd).max())


@pytest.mark.parametrize("sizes", [(9,), (5, 4)])
def test_cov_gradient_matches_finite_differences(rng, sizes):
    X, Z, d = oracle.random_design(rng, 120, 3, sizes)
    Y = oracle.simulate_y(rng, X, Z, d, (0.5, 0.3, 1.0)[-(len(d) + 1) :], 2)
    fit = fm.lmmfit(Y, X, Z, d, tol=1e-9)
    c = np.array([0.0, 1.0, -0.5])
    Wc = np.einsum("gab,b->ga", fit.cov, c)[:, None, :]
    grad = _cov_gradient(fit, np.ascontiguousarray(Wc))[:, 0, :]
    for g in range(2):
        theta = fit.theta[g]
        for k in range(len(theta)):
            h = 1e-5 * abs(theta[k])
            up, down = theta.copy(), theta.copy()
            up[k] += h
            down[k] -= h
            f_up = c @ oracle.gls(Y[:, g], X, Z, d, up)[1] @ c
            f_dn = c @ oracle.gls(Y[:, g], X, Z, d, down)[1] @ c
            np.testing.assert_allclose(grad[g, k], (f_up - f_dn) / (2 * h), rtol=RTOL_FD)


def test_contrasts_residual_df_and_alternatives(rng):
    X, Z, d = oracle.random_design(rng, 300, 3, (12,))
    Y = oracle.simulate_y(rng, X, Z, d, (0.3, 1.0), 6)
    fit = fm.lmmfit(Y, X, Z, d)
    L = np.array([[0.0], [1.0], [-1.0]])
    two = lmmtest(fit, {"diff": L[:, 0]}, df="residual")
    est = fit.coef @ L[:, 0]
    se = np.sqrt(np.einsum("a,gab,b->g", L[:, 0], fit.cov, L[:, 0]))
    np.testing.assert_allclose(two["log_fc"], est, rtol=1e-12)
    np.testing.assert_allclose(two["se"], se, rtol=1e-12)
    np.testing.assert_allclose(two["df"], 300 - 3)
    np.testing.assert_allclose(two["p_value"], 2 * sps.t.sf(np.abs(est / se), 297), rtol=1e-10)
    greater = lmmtest(fit, {"diff": L[:, 0]}, df="residual", alternative="greater")
    np.testing.assert_allclose(greater["p_value"], sps.t.sf(est / se, 297), rtol=1e-10)
    np.testing.assert_allclose(two["adj_p_value"], bh_adjust(two["p_value"].to_numpy()))
    assert list(two.columns[:8]) == [
        "variable", "contrast", "log_fc", "se", "stat", "df", "df_num", "p_value",
    ]  # fmt: skip


def test_joint_f_test(rng):
    X, Z, d = oracle.random_design(rng, 300, 3, (12,))
    Y = oracle.simulate_y(rng, X, Z, d, (0.3, 1.0), 4)
    fit = fm.lmmfit(Y, X, Z, d)
    L = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    res = lmmtest(fit, {"both": L}, df="residual")
    for g in range(4):
        b = L.T @ fit.coef[g]
        V = L.T @ fit.cov[g] @ L
        F = b @ np.linalg.solve(V, b) / 2
        np.testing.assert_allclose(res["stat"][g], F, rtol=1e-10)
        np.testing.assert_allclose(res["p_value"][g], sps.f.sf(F, 2, 297), rtol=1e-10)
    sat = lmmtest(fit, {"both": L}, df="satterthwaite")
    # two within-subject directions: each with many df, so the F df are large and finite
    assert (sat["df"] > 50).all() and (sat["df_num"] == 2).all()
    # the joint machinery on one row reduces to the t test: F = t², same Satterthwaite df
    single = lmmtest(fit, {"x1": L[:, 0]}, df="satterthwaite")
    Lm = L[:, :1]
    V = np.einsum("al,gab,bm->glm", Lm, fit.cov, Lm)
    F, ddf = _joint_test(fit, Lm, fit.coef @ Lm, V, inverse_observed_information(fit))
    np.testing.assert_allclose(F, single["stat"] ** 2, rtol=1e-10)
    np.testing.assert_allclose(ddf, single["df"], rtol=1e-10)


def test_between_subject_df(rng):
    """Treatment between subjects: Satterthwaite df ≈ subjects − 2, far below n − p."""
    n, q = 2000, 20
    X0, Z, d = oracle.random_design(rng, n, 2, (q,))
    subj = Z.argmax(1)
    trt = (subj % 2).astype(float)
    X = np.column_stack([X0, trt])
    Y = oracle.simulate_y(rng, X, Z, d, (0.4, 1.0), 5)
    fit = fm.lmmfit(Y, X, Z, d)
    sat = lmmtest(fit, index=2, df="satterthwaite")
    between = lmmtest(fit, index=2, df="between")
    assert (between["df"] == q - 2).all()  # intercept and treatment are constant within subjects
    assert ((sat["df"] > 10) & (sat["df"] < 30)).all()
    assert (lmmtest(fit, index=2, df="residual")["df"] == n - 3).all()


def test_vctest_and_lrt(rng):
    X, Z, d = oracle.random_design(rng, 400, 2, (15,))
    Y = oracle.simulate_y(rng, X, Z, d, (0.5, 1.0), 4)
    Y[:, 3] = X @ np.array([1.0, 0.5]) + rng.normal(size=400)  # no subject effect
    fit = fm.lmmfit(Y, X, Z, d, tol=1e-9)
    z = vctest(fit)
    np.testing.assert_allclose(z["stat"], fit.theta[:, 0] / fit.se_theta[:, 0], rtol=1e-12)
    np.testing.assert_allclose(z["p_value"], sps.norm.sf(z["stat"]), rtol=1e-12)
    assert (z["p_value"][:3] < 0.05).all()  # 15 subjects: the z-test is not very powerful


@pytest.mark.parametrize("nonneg", [True, False])
def test_lrt_is_calibrated(rng, nonneg):
    """Null: the second (crossed) component is 0. With nonneg the boundary makes Λ a 50:50
    χ²₀/χ²₁ mixture; without it θ̂ may go negative and Λ ~ χ²₁. Either way P(p < α) ≈ α."""
    X, Z, d = oracle.random_design(rng, 300, 2, (10, 8))
    Y = oracle.simulate_y(rng, X, Z, d, (0.5, 0.0, 1.0), 3000)
    f1 = fm.lmmfit(Y, X, Z, d, method="ML", nonneg=nonneg, warn=False)
    f0 = fm.lmmfit(Y, X, Z[:, :10], [10], method="ML", nonneg=nonneg, warn=False)
    res = lrt(f0, f1)
    ok = res["converged"] & np.isfinite(res["p_value"])
    assert ok.mean() > 0.95
    rate = (res["p_value"][ok] < 0.05).mean()
    # binomial sd at 3000 genes is 0.004; 0.035–0.065 is ±3.75 sd
    assert 0.035 < rate < 0.065, rate
    np.testing.assert_allclose(res["stat"], np.maximum(2 * (f1.loglik - f0.loglik), 0))


@pytest.mark.parametrize("scenario", ["k1", "k2_nested"])
def test_blups_match_lme4_ranef(scenario):
    s = load(scenario)
    fit = fit_scenario(scenario, "REML")
    b = random_effects(fit)
    sigma = np.sqrt(fit.theta[:, -1])
    singular = set(singular_genes(scenario))
    for j, gene in enumerate(s["genes"]):
        if gene in singular:
            continue
        ref = s["ranef"].query("method == 'REML' and gene == @gene")
        # the fixture lists BLUPs block by block in Z's column order
        np.testing.assert_allclose(b.iloc[j].to_numpy(), ref["value"].to_numpy(),
                                   atol=1e-6 * sigma[j])  # fmt: skip


def test_lmmtest_bad_input(rng):
    X, Z, d = oracle.random_design(rng, 200, 3, (8,))
    Y = oracle.simulate_y(rng, X, Z, d, (0.3, 1.0), 2)
    fit = fm.lmmfit(Y, X, Z, d)
    with pytest.raises(ValueError, match="alternative must be"):
        lmmtest(fit, alternative="bigger")
    with pytest.raises(ValueError, match="df must be one of"):
        lmmtest(fit, df="kenward")
    with pytest.raises(ValueError, match="unknown coefficient 'x22'; close matches: \\['x2'"):
        lmmtest(fit, index="x22")
    with pytest.raises(ValueError, match="output_cov=True"):
        lmmtest(fm.lmmfit(Y, X, Z, d, output_cov=False))
    with pytest.raises(ValueError, match="linearly dependent"):
        lmmtest(fit, {"bad": np.array([[1.0, 2.0], [0.0, 0.0], [0.0, 0.0]])})
    with pytest.raises(ValueError, match="must have p = 3 rows"):
        lmmtest(fit, {"bad": np.ones(4)})


def test_bh_adjust_matches_statsmodels():
    from statsmodels.stats.multitest import multipletests

    p = np.random.default_rng(3).uniform(size=200) ** 3
    p[[5, 17]] = np.nan
    ok = np.isfinite(p)
    ref = multipletests(p[ok], method="fdr_bh")[1]
    out = bh_adjust(p)
    np.testing.assert_allclose(out[ok], ref, rtol=1e-12)
    assert np.isnan(out[[5, 17]]).all()
    assert isinstance(pd.Series(out), pd.Series)


@pytest.mark.parametrize("scenario", ["k1", "between", "k2_crossed"])
def test_contrasts_and_joint_f_tests_match_lmertest_contest(scenario):
    """Single-row contrasts (t) and multi-row (F, Fai–Cornelius df) against lmerTest::contest.

    Fixtures: ``make_contrast_fixtures.R`` (REML, same lmer control as the other fixtures).
    """
    root = load(scenario)
    ref = pd.read_csv(DATA_ROOT / scenario / "contrasts.csv")
    mats = pd.read_csv(DATA_ROOT / scenario / "contrast_matrices.csv")
    contrasts = {
        name: grp.drop(columns=["contrast", "row"]).to_numpy(dtype=float).T
        for name, grp in mats.groupby("contrast", sort=False)
    }
    fit = fit_scenario(scenario, "REML")
    table = lmmtest(fit, contrasts, df="satterthwaite")
    checked = 0
    for _, row in ref[~ref["singular"]].iterrows():
        j = root["genes"].index(row["gene"])
        ours = table[(table["variable"] == fit.gene_names[j])
                     & (table["contrast"] == row["contrast"])].iloc[0]  # fmt: skip
        msg = f"{scenario} {row['gene']} {row['contrast']}"
        np.testing.assert_allclose(ours["df"], row["df"], rtol=RTOL_LMERTEST, err_msg=msg)
        np.testing.assert_allclose(ours["stat"], row["stat"], rtol=1e-6, atol=1e-6, err_msg=msg)
        np.testing.assert_allclose(ours["p_value"], row["p_value"], rtol=RTOL_LMERTEST,
                                   err_msg=msg)  # fmt: skip
        checked += 1
    assert checked >= 5


# ---------------------------------------------------------------- labels and the kept problem


def test_random_effects_columns_are_the_level_labels(rng):
    from tests.test_lmm import design_case

    des, Y = design_case(rng, "(1 | donor_id)")
    fit = fm.lmmfit(Y, des, warn=False)
    b = random_effects(fit)
    assert list(b.columns) == [f"D{i:02d}" for i in range(1, 9)]
    assert b.columns.name == "donor_id" and list(b.index) == fit.gene_names
    bare = fm.lmmfit(Y, des.X, des.Z, des.d, warn=False)  # bare matrices: positional names
    np.testing.assert_array_equal(random_effects(bare).to_numpy(), b.to_numpy())
    assert list(random_effects(bare).columns) == [f"z{j}" for j in range(8)]
    assert vctest(fit)["component"].unique().tolist() == ["donor_id"]

    des, Y = design_case(rng, "(1 | donor_id) + (1 | batch)")
    fit = fm.lmmfit(Y, des, warn=False)
    b = random_effects(fit)
    assert isinstance(b.columns, pd.MultiIndex) and b.columns.names == ["block", "level"]
    assert list(b["batch"].columns) == ["b1", "b2", "b3"]
    assert b["donor_id"].shape == (Y.shape[1], 8)
    np.testing.assert_array_equal(b["batch"].to_numpy(), b.to_numpy()[:, 8:])
    assert vctest(fit)["component"].unique().tolist() == ["donor_id", "batch"]
    bare = fm.lmmfit(Y, des.X, des.Z, des.d, warn=False)
    np.testing.assert_array_equal(random_effects(bare).to_numpy(), b.to_numpy())


@pytest.mark.parametrize(("sizes", "engine"), [((9,), "auto"), ((9,), "dense"), ((6, 4), "auto")])
def test_inference_reuses_the_fitted_problem(rng, monkeypatch, sizes, engine):
    """lmmtest and random_effects reuse the decompositions the fit kept: no rebuild."""
    from pyflashmm._lmm import fit as fit_module

    X, Z, d = oracle.random_design(rng, 200, 3, sizes)
    Y = oracle.simulate_y(rng, X, Z, d, (0.5, 0.3, 1.0)[-(len(d) + 1) :], 3)
    fit = fm.lmmfit(Y, X, Z, d, engine=engine)
    builds = []
    original = fit_module._Problem.build.__func__
    monkeypatch.setattr(
        fit_module._Problem, "build",
        classmethod(lambda cls, *a, **k: builds.append(a) or original(cls, *a, **k)),
    )  # fmt: skip
    c = {"x1": "x1", "diff": "x1 - x2", "joint": ["x1", "x2"]}
    first = lmmtest(fit, c)
    again = lmmtest(fit, c)
    lmmtest(fit, c, df="satterthwaite")
    lmmtest(fit, c, df="between")
    b1 = random_effects(fit)
    b2 = random_effects(fit)
    assert builds == []
    pd.testing.assert_frame_equal(first, again)
    pd.testing.assert_frame_equal(b1, b2)
    # a fit whose statistics were replaced builds its own problem
    import dataclasses

    other = dataclasses.replace(fit, stats=fm.summary_stats(Y * 2.0, X, Z, d))
    lmmtest(other, c)
    assert len(builds) == 1


def test_kept_problem_is_the_one_inference_built_before(rng):
    """The problem kept by a fit, and what inference derives from it, is bitwise what
    ``_Problem.build`` gives for the path inference uses."""
    from threadpoolctl import threadpool_limits

    from pyflashmm._lmm.fit import _Problem, _psd_sqrt, prepared

    X, Z, d = oracle.random_design(rng, 300, 3, (11,))
    Y = oracle.simulate_y(rng, X, Z, d, (0.4, 1.0), 5)
    for method in ("REML", "ML"):
        s = fm.summary_stats(Y, X, Z, d)
        with threadpool_limits(1, user_api="blas"):  # the fit's BLAS setting
            eigen = _Problem.build(s, method, "eigen")
            dense = _Problem.build(s, method, "dense")
            from_dense = prepared(fm.lmm(s, method=method, engine="dense"))
            from_eigen = prepared(fm.lmm(s, method=method))
            for prep in (from_dense, from_eigen):
                got = prep.inference_problem()
                for name in ("W", "yRy", "S", "lam", "mu", "mu_t", "Q"):
                    np.testing.assert_array_equal(getattr(got, name), getattr(eigen, name))
                assert got.ll_const == eigen.ll_const and got.mu_max == eigen.mu_max
                np.testing.assert_array_equal(prep.Wz(), dense.Wz)
                np.testing.assert_array_equal(prep.Wz(), _psd_sqrt(0.5 * (s.ZZ + s.ZZ.T)))
                np.testing.assert_array_equal(prep.ZXq(), eigen.Q.T @ s.ZX)
