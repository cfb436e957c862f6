"""Kenward–Roger inference (``lmmtest(..., df="kenward-roger")``): against pbkrtest 0.5.2 through
lmerTest, against a dense oracle of the formulas on the cell-level data, and its edge cases.

Fixtures: ``tests/data/pbkrtest-0.5.2/<scenario>/`` written by ``make_fixtures.R`` (see the README
there). pyflashmm fits the same data from summary statistics (tol 1e-10 on the score); the fits
are checked against lme4's first, as the KR quantities can only agree when the fits do.

Tolerance against pbkrtest: ``RTOL_KR = 1e-4`` relative for SE, df, t, p and F. lme4's variance
components are accurate to ~1e-7 (its bobyqa stopping rule, see tests/data/lme4-1.1.31/README.md)
and the KR quantities are smooth functions of them, so 1e-4 leaves a wide margin. Observed maxima
(``max_relative_differences``, all scenarios) when these tests were written: SE 3.2e-7, t 3.2e-7,
df of t 1.8e-7, p of t 1.9e-6, F 1.5e-7, ddf of F 1.5e-9, p of F 8.2e-7.

Singular fits (``SINGULAR_SCENARIOS``: every gene has one variance component that lme4 puts at
exactly 0): pyflashmm fits them with ``nonneg=True`` (status ``boundary``). KR keeps the zero
component in W, as pbkrtest; Satterthwaite treats it as known, as lmerTest (fixtures
``contrasts_satterthwaite.csv``). Observed maxima, KR (k1_6_singular / k2_crossed_singular): SE
7e-15 / 2.3e-7, df of t 8e-15 / 2.5e-8, t 8e-15 / 2.3e-7, p of t 4.3e-13 / 5.7e-7, F 7e-15 /
6.7e-9, ddf of F 4.9e-15 / 4.1e-11, p of F 2.6e-14 / 3.8e-8; Satterthwaite: df of t 3.9e-11 /
7.1e-7, t 3.9e-15 / 2.3e-7, p of t 9.8e-10 / 1.6e-6, F 3.3e-15 / 6.6e-9, ddf of F 3.2e-11 /
3.7e-8, p of F 5.5e-11 / 2.1e-7 (K = 1 at θ = 0 is exact: β and σ² are closed-form there).
"""

from __future__ import annotations

import functools

import numba
import numpy as np
import pandas as pd
import pytest

import pyflashmm as fm
from pyflashmm._kernels import kenward_roger as _kk
from pyflashmm._lmm import kenward_roger as kr
from pyflashmm._lmm.inference import lmmtest
from tests import oracle
from validation.lme4_reference import indicators, model_matrix
from validation.provenance import REPO_ROOT

DATA = REPO_ROOT / "tests" / "data" / "pbkrtest-0.5.2"
SCENARIOS = ("k1_4_balanced", "k1_10_unbalanced", "k1_40_balanced", "k2_nested", "k2_crossed")
#: every gene singular in lme4 (one component exactly 0); fitted here with nonneg=True
SINGULAR_SCENARIOS = ("k1_6_singular", "k2_crossed_singular")
RTOL_KR = 1e-4
#: the fits against lme4, as tests/test_lme4_reference.py
RTOL_FIT = 1e-6
#: summary-statistic path against the dense oracle of the same formulas (rounding only)
RTOL_ORACLE = 1e-10


@functools.cache
def load(scenario: str):
    """Data, design, lme4's fits and pbkrtest's tests of one scenario."""
    root = DATA / scenario
    spec = pd.read_csv(root / "spec.csv").iloc[0]
    data = pd.read_csv(root / "data.csv.gz")
    genes = spec["genes"].split(";")
    X, x_names = model_matrix(data, spec["fixed"])
    Z, d, _ = indicators(data, spec["random"].split(";"))
    mats = pd.read_csv(root / "contrast_matrices.csv")
    assert list(mats.columns[2:]) == x_names
    contrasts = {
        name: grp[x_names].to_numpy(dtype=float).T
        for name, grp in mats.groupby("contrast", sort=False)
    }
    return {
        "genes": genes,
        "Y": data[genes].to_numpy(dtype=np.float64),
        "X": pd.DataFrame(X, columns=x_names),
        "Z": Z,
        "d": d,
        "matrices": contrasts,
        **{name: pd.read_csv(root / f"{name}.csv") for name in ("fit", "theta", "contrasts")},
    }


@functools.cache
def fit_and_test(scenario: str, df: str = "kenward-roger"):
    """pyflashmm's fits of a scenario (``nonneg=True`` for the singular ones) and its tests of
    the scenario's contrasts with ``df``."""
    s = load(scenario)
    fit = fm.lmmfit(s["Y"], s["X"], s["Z"], s["d"], gene_names=s["genes"], tol=1e-10,
                    max_iter=200, nonneg=scenario in SINGULAR_SCENARIOS, warn=False)  # fmt: skip
    return fit, lmmtest(fit, s["matrices"], df=df)


def rel(a, b):
    return np.abs(np.asarray(a, dtype=float) - b) / np.abs(b)


def max_relative_differences(scenario: str, df: str = "kenward-roger") -> dict[str, float]:
    """Max relative difference of each KR (pbkrtest) or Satterthwaite (lmerTest, singular
    scenarios) quantity over the scenario."""
    s = load(scenario)
    _, table = fit_and_test(scenario, df)
    ref = s["contrasts"] if df == "kenward-roger" else satterthwaite_reference(scenario)
    merged = ref.merge(
        table.rename(columns={"variable": "gene"}), on=["gene", "contrast"], validate="1:1"
    )
    t_rows, f_rows = merged[merged["type"] == "t"], merged[merged["type"] == "F"]
    return {
        "se": rel(t_rows["se_x"], t_rows["se_y"]).max(),
        "df (t)": rel(t_rows["df_y"], t_rows["df_x"]).max(),
        "t": rel(t_rows["stat"], t_rows["t"]).max(),
        "p (t)": rel(t_rows["p_value_y"], t_rows["p_value_x"]).max(),
        "F": rel(f_rows["stat"], f_rows["F"]).max(),
        "ddf (F)": rel(f_rows["df_y"], f_rows["ddf"]).max(),
        "p (F)": rel(f_rows["p_value_y"], f_rows["p_value_x"]).max(),
    }


def satterthwaite_reference(scenario: str) -> pd.DataFrame:
    """lmerTest's Satterthwaite tests of the scenario's contrasts (singular scenarios)."""
    return pd.read_csv(DATA / scenario / "contrasts_satterthwaite.csv")


@pytest.mark.parametrize("scenario", SCENARIOS + SINGULAR_SCENARIOS)
def test_fits_match_lme4(scenario):
    """The REML fits coincide with lme4's (the precondition of the KR comparison)."""
    s = load(scenario)
    fit, table = fit_and_test(scenario)
    assert fit.converged.all()
    if scenario in SINGULAR_SCENARIOS:
        # every gene on lme4's boundary, exactly, and ours held at 0 in the same component
        assert s["fit"]["isSingular"].all() and (s["fit"]["min_theta"] == 0).all()
        assert (fit.status == "boundary").all()
        zero = np.stack([s["theta"].query("gene == @g")["vcov"].to_numpy()[:-1] == 0
                         for g in s["genes"]])  # fmt: skip
        np.testing.assert_array_equal(fit.boundary, zero)
        assert (fit.theta[:, :-1][zero] == 0).all()
    else:
        assert not s["fit"]["isSingular"].any()  # every gene is compared (README: none singular)
    for j, gene in enumerate(s["genes"]):
        v = s["theta"].query("gene == @gene")["vcov"].to_numpy()
        scale = np.maximum(np.abs(v), v[-1])
        assert (np.abs(fit.theta[j] - v) / scale).max() < RTOL_FIT, gene
        ll = float(s["fit"].query("gene == @gene")["logLik"].iloc[0])
        assert abs(fit.loglik[j] - ll) < RTOL_FIT * abs(ll)
    ref = s["contrasts"][s["contrasts"]["type"] == "t"]
    keys = list(zip(ref["gene"], ref["contrast"], strict=True))
    ours = table.set_index(["variable", "contrast"]).loc[keys]
    # estimates judged on their (unadjusted) standard errors, as in test_lme4_reference
    err = np.abs(ours["log_fc"].to_numpy() - ref["estimate"]) / ref["se_unadj"]
    assert err.max() < RTOL_FIT


@pytest.mark.parametrize("scenario", SCENARIOS + SINGULAR_SCENARIOS)
def test_kenward_roger_matches_pbkrtest(scenario):
    """t tests (SE from Φ_A, Lb_ddf df) and 2-df F tests (scaled F, ddf) against lmerTest's
    contest1D / contestMD with ddf="Kenward-Roger"."""
    s = load(scenario)
    _, table = fit_and_test(scenario)
    ours = table.set_index(["variable", "contrast"])
    checked = {"t": 0, "F": 0}
    for _, row in s["contrasts"].iterrows():
        o = ours.loc[(row["gene"], row["contrast"])]
        msg = f"{scenario} {row['gene']} {row['contrast']}"
        if row["type"] == "t":
            np.testing.assert_allclose(o["se"], row["se"], rtol=RTOL_KR, err_msg=msg)
            np.testing.assert_allclose(o["df"], row["df"], rtol=RTOL_KR, err_msg=msg)
            np.testing.assert_allclose(o["stat"], row["t"], rtol=RTOL_KR, err_msg=msg)
            assert o["df_num"] == 1
        else:
            np.testing.assert_allclose(o["stat"], row["F"], rtol=RTOL_KR, err_msg=msg)
            np.testing.assert_allclose(o["df"], row["ddf"], rtol=RTOL_KR, err_msg=msg)
            assert o["df_num"] == row["ndf"] == 2
        np.testing.assert_allclose(o["p_value"], row["p_value"], rtol=RTOL_KR, err_msg=msg)
        checked[row["type"]] += 1
    assert checked["t"] >= 20 and checked["F"] >= 5
    assert max(max_relative_differences(scenario).values()) < RTOL_KR


@pytest.mark.parametrize("scenario", SINGULAR_SCENARIOS)
def test_satterthwaite_at_singular_fits_matches_lmertest(scenario):
    """At lme4's boundary (one σₖ² exactly 0; K = 1 and crossed K = 2) lmerTest's Satterthwaite
    t and F tests (contest1D / contestMD): the component held at 0 is treated as known and drops
    out of ν, unlike KR, which keeps it in W."""
    _, table = fit_and_test(scenario, "satterthwaite")
    ours = table.set_index(["variable", "contrast"])
    checked = {"t": 0, "F": 0}
    for _, row in satterthwaite_reference(scenario).iterrows():
        o = ours.loc[(row["gene"], row["contrast"])]
        msg = f"{scenario} {row['gene']} {row['contrast']}"
        if row["type"] == "t":
            np.testing.assert_allclose(o["se"], row["se"], rtol=RTOL_KR, err_msg=msg)
            np.testing.assert_allclose(o["df"], row["df"], rtol=RTOL_KR, err_msg=msg)
            np.testing.assert_allclose(o["stat"], row["t"], rtol=1e-6, err_msg=msg)
            assert o["df_num"] == 1
        else:
            np.testing.assert_allclose(o["stat"], row["F"], rtol=1e-6, err_msg=msg)
            np.testing.assert_allclose(o["df"], row["ddf"], rtol=RTOL_KR, err_msg=msg)
            assert o["df_num"] == row["ndf"] == 2
        np.testing.assert_allclose(o["p_value"], row["p_value"], rtol=RTOL_KR, err_msg=msg)
        checked[row["type"]] += 1
    assert checked["t"] == 20 and checked["F"] == 5
    assert max(max_relative_differences(scenario, "satterthwaite").values()) < RTOL_KR


def test_singular_fits_kenward_roger_keeps_the_zero_component():
    """KR and Satterthwaite differ at a singular fit: with the subject variance at 0 the
    between-subject treatment gets Satterthwaite's residual-like df (the zero component is
    known) but a KR df of the order of the number of subjects (it stays in W)."""
    s = load("k2_crossed_singular")
    sat = satterthwaite_reference("k2_crossed_singular").set_index(["gene", "contrast"])
    krt = s["contrasts"].set_index(["gene", "contrast"])
    sam_zero = s["theta"].query("component == 'var1' and vcov == 0")["gene"]
    assert len(sam_zero) == 3
    for g in sam_zero:
        assert sat.loc[(g, "trtstim"), "df"] > 100 > 10 > krt.loc[(g, "trtstim"), "df"]


def test_between_subject_df_with_four_subjects():
    """Four subjects, two per arm: the treatment's KR df ≈ 2 (subjects − 2), far below n − p."""
    _, table = fit_and_test("k1_4_balanced")
    trt = table[table["contrast"] == "trtstim"]["df"]
    assert ((trt > 1.9) & (trt < 2.2)).all()


# ------------------------------------------------------------------- the formulas themselves


def _oracle_tests(X, Z, d, fit, contrasts):
    """(se or None, stat, df) per (gene, contrast) from the dense oracle at the fit's θ̂."""
    out = {}
    for g in range(fit.n_genes):
        Phi, Lam, P, W = oracle.kenward_roger(X, Z, d, fit.theta[g])
        for name, Lm in contrasts.items():
            VA, F, ddf = oracle.kenward_roger_test(Lm.T, fit.coef[g], Phi, Lam, P, W)
            if Lm.shape[1] == 1:
                se = np.sqrt(VA[0, 0])
                out[g, name] = (se, float(Lm[:, 0] @ fit.coef[g]) / se, ddf)
            else:
                out[g, name] = (None, F, ddf)
    return out


def _compare_with_oracle(X, Z, d, fit, rtol=RTOL_ORACLE):
    p = X.shape[1]
    contrasts = {
        "x1": np.eye(p)[:, [1]],
        "combo": np.array([[1.0], [0.5], [-2.0]]),
        "joint": np.eye(p)[:, 1:3],
    }
    table = lmmtest(fit, contrasts, df="kenward-roger").set_index(["variable", "contrast"])
    for (g, name), (se, stat, df) in _oracle_tests(X, Z, d, fit, contrasts).items():
        row = table.loc[(fit.gene_names[g], name)]
        if se is not None:
            np.testing.assert_allclose(row["se"], se, rtol=rtol)
        np.testing.assert_allclose([row["stat"], row["df"]], [stat, df], rtol=rtol)


@pytest.mark.parametrize("sizes", [(9,), (5, 4)])
def test_summary_statistics_match_dense_oracle(rng, sizes):
    """KR from ZᵀX, ZᵀZ, XᵀX and θ against the definitions on the n × n matrices."""
    X, Z, d = oracle.random_design(rng, 150, 3, sizes)
    Y = oracle.simulate_y(rng, X, Z, d, (0.5, 0.3, 1.0)[-(len(d) + 1) :], 3)
    fit = fm.lmmfit(Y, X, Z, d, tol=1e-10)
    assert fit.converged.all()
    _compare_with_oracle(X, Z, d, fit)
    # the ingredients themselves: Dᵢ = −ΦPᵢΦ and Λ (relative to their largest entry)
    W = kr.inverse_expected_information(fit)
    engines = ("auto", "dense") if len(d) == 1 else ("auto",)
    for engine in engines:  # K = 1: the eigen form and the general kernel
        D, Lam = kr.adjustment(fit, W, engine=engine)
        for g in range(fit.n_genes):
            Phi, LamO, P, WO = oracle.kenward_roger(X, Z, d, fit.theta[g])
            np.testing.assert_allclose(W[g], WO, rtol=1e-10)
            for i, Pi in enumerate(P):
                Di = -Phi @ Pi @ Phi
                np.testing.assert_allclose(D[g, i], Di, atol=1e-10 * np.abs(Di).max())
            # Λ is a difference of larger terms: the oracle's own rounding is ~1e-11 of it
            np.testing.assert_allclose(Lam[g], LamO, atol=1e-9 * np.abs(LamO).max())


@pytest.mark.parametrize("sizes", [(9,), (5, 4)])
def test_boundary_and_negative_components(rng, sizes):
    """A variance component at 0 (nonneg) or below 0 with V positive definite (FLASHMM's
    semantics): no crash, finite results, still the formulas at that θ̂."""
    X, Z, d = oracle.random_design(rng, 120, 3, sizes)
    theta = (0.0, 0.0, 1.0)[-(len(d) + 1) :]  # no random effect: θ̂ₖ ≤ 0 is common
    Y = oracle.simulate_y(rng, X, Z, d, theta, 40)
    for nonneg in (True, False):
        fit = fm.lmmfit(Y, X, Z, d, nonneg=nonneg, tol=1e-10, warn=False)
        keep = np.flatnonzero(fit.converged & (fit.theta[:, :-1] <= 0).any(axis=1))[:2]
        assert len(keep) == 2
        # the batch also holds genes stopped at the edge of the PD region (nonneg=False): V is
        # nearly singular there and Φ_A need not be PD; they must give NaN, not a warning
        assert nonneg or (fit.status == "pd_boundary").any()
        res = lmmtest(fit, {"x1": "x1", "joint": ["x1", "x2"]}, df="kenward-roger")
        ok = res["variable"].isin([fit.gene_names[g] for g in keep])
        assert np.isfinite(res.loc[ok, ["stat", "df", "p_value"]].to_numpy()).all()
        assert np.isfinite(res.loc[ok & (res["df_num"] == 1), "se"]).all()
        sub = fm.lmmfit(Y[:, keep], X, Z, d, nonneg=nonneg, tol=1e-10, warn=False)
        _compare_with_oracle(X, Z, d, sub, rtol=1e-8)


def test_single_row_df_is_expected_information_satterthwaite():
    """For one row, pbkrtest's formulas reduce to ν = 2/a (a = ∇fᵀW∇f/f²) and no F scaling."""
    a = np.array([1e-6, 1e-3, 0.1, 0.4, 0.5, 0.7, 1.0, 2.0])
    nu, scale = kr.kr_ddf(a, a, 1)
    np.testing.assert_allclose(nu, 2.0 / a, rtol=1e-9)
    np.testing.assert_allclose(scale[np.abs(nu - 2) > 0.01], 1.0, rtol=1e-9)


def test_failed_genes_give_nan(rng):
    X, Z, d = oracle.random_design(rng, 100, 3, (6,))
    Y = oracle.simulate_y(rng, X, Z, d, (0.5, 1.0), 3)
    Y[:, 1] = X @ np.array([1.0, 2.0, -1.0])  # in the span of X: no fit
    fit = fm.lmmfit(Y, X, Z, d, warn=False)
    assert fit.status[1] == "zero_variance"
    res = lmmtest(fit, {"x1": "x1", "joint": ["x1", "x2"]}, df="kenward-roger")
    bad = res["variable"] == "gene1"
    assert res.loc[bad, ["stat", "df", "p_value"]].isna().all().all()
    assert np.isfinite(res.loc[~bad, ["stat", "df", "p_value"]].to_numpy()).all()


def test_ml_fit_raises(rng):
    X, Z, d = oracle.random_design(rng, 100, 3, (6,))
    Y = oracle.simulate_y(rng, X, Z, d, (0.5, 1.0), 2)
    fit = fm.lmmfit(Y, X, Z, d, method="ML")
    with pytest.raises(ValueError, match="df='kenward-roger' is defined for REML"):
        lmmtest(fit, df="kenward-roger")


@pytest.mark.parametrize("sizes", [(9,), (5, 4)])
def test_results_do_not_depend_on_thread_count(rng, sizes):
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 Numba threads")
    X, Z, d = oracle.random_design(rng, 200, 3, sizes)
    Y = oracle.simulate_y(rng, X, Z, d, (0.5, 0.3, 1.0)[-(len(d) + 1) :], 64)
    fit = fm.lmmfit(Y, X, Z, d, warn=False)
    c = {"x1": "x1", "combo": "x1 - x2/2", "joint": ["x1", "x2"]}
    before = numba.get_num_threads()
    try:
        out = []
        for threads in (1, 2):
            numba.set_num_threads(threads)
            out.append(lmmtest(fit, c, df="kenward-roger"))
    finally:
        numba.set_num_threads(before)
    pd.testing.assert_frame_equal(out[0], out[1], check_exact=True)


def test_single_rows_without_the_adjustment_matrices(rng):
    """K = 1, single rows: the quadratic forms in Φc equal cᵀΦc, cᵀΦ_Ac and a from the full
    Dᵢ and Λ (including genes at σ₁² = 0 and a failed gene), to rounding."""
    X, Z, d = oracle.random_design(rng, 150, 4, (9,))
    Y = oracle.simulate_y(rng, X, Z, d, (0.02, 1.0), 40)
    Y[:, 3] = X @ np.array([1.0, 2.0, -1.0, 0.5])  # in the span of X: a failed fit
    fit = fm.lmmfit(Y, X, Z, d, nonneg=True, warn=False)
    assert (fit.theta[:, 0] == 0).any() and fit.status[3] == "zero_variance"
    W = kr.inverse_expected_information(fit)
    prep = kr.prepared(fit)
    C = np.ascontiguousarray(np.array([[0, 1, 0, 0], [0, 0.5, -2, 0], [1, 1, 1, 1.0]]))
    cov = np.ascontiguousarray(fit.cov)
    D, Lam = kr.adjustment(fit, W, prep=prep)
    full = _kk.single_contrasts(cov, Lam, D, W, C)
    fast = kr._single_k1(fit, W, slice(None), prep, cov, C)
    for ref, got in zip(full, fast, strict=True):
        np.testing.assert_array_equal(np.isnan(ref), np.isnan(got))
        np.testing.assert_allclose(got, ref, rtol=1e-9)
    assert np.isnan(fast[0][3]).all() and np.isfinite(fast[0][np.arange(40) != 3]).all()


def test_single_and_joint_contrasts_over_several_gene_blocks(rng, monkeypatch):
    """kenward_roger() with single rows and a joint contrast, genes in blocks of 7: the single
    rows are bitwise those of a call without the joint contrast, and equal the general
    (dense) kernel's to rounding."""
    X, Z, d = oracle.random_design(rng, 160, 3, (8,))
    Y = oracle.simulate_y(rng, X, Z, d, (0.4, 1.0), 30)
    fit = fm.lmmfit(Y, X, Z, d, warn=False)
    monkeypatch.setattr(kr, "_GENE_BLOCK", 7)
    single = {"x1": np.eye(3)[:, [1]], "combo": np.array([[1.0], [0.5], [-2.0]])}
    both = kr.kenward_roger(fit, {**single, "joint": np.eye(3)[:, 1:3]})
    alone = kr.kenward_roger(fit, single)
    W = kr.inverse_expected_information(fit)
    D, Lam = kr.adjustment(fit, W, engine="dense")
    C = np.ascontiguousarray(np.stack([v[:, 0] for v in single.values()]))
    _, f_adj, a = _kk.single_contrasts(np.ascontiguousarray(fit.cov), Lam, D, W, C)
    for j, name in enumerate(single):
        np.testing.assert_array_equal(both[name].cov, alone[name].cov)
        np.testing.assert_array_equal(both[name].df, alone[name].df)
        np.testing.assert_allclose(both[name].cov[:, 0, 0], f_adj[:, j], rtol=1e-9)
        np.testing.assert_allclose(both[name].df, kr.kr_ddf(a[:, j], a[:, j], 1)[0], rtol=1e-8)
    assert np.isfinite(both["joint"].df).all()
