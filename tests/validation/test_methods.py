"""validation/methods.py (the six DE methods) and validation/metrics.py (error-rate helpers)."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint

import pyflashmm as fm
from validation import metrics
from validation.calibration import type1_table
from validation.methods import METHODS, ols_from_stats, run_methods
from validation.power import summarise

# ------------------------------------------------------------------------------------ metrics


def test_wilson_matches_statsmodels():
    k = np.array([0, 1, 7, 50, 99, 100, 3])
    n = np.array([100, 100, 100, 100, 100, 100, 9])
    lo, hi = metrics.wilson_interval(k, n)
    ref_lo, ref_hi = proportion_confint(k, n, alpha=0.05, method="wilson")
    np.testing.assert_allclose(lo, ref_lo, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(hi, ref_hi, rtol=1e-12, atol=1e-15)
    lo90, _ = metrics.wilson_interval(7, 100, level=0.9)
    assert lo90 == pytest.approx(proportion_confint(7, 100, alpha=0.1, method="wilson")[0])


def test_wilson_rejects_bad_input():
    with pytest.raises(ValueError, match="level"):
        metrics.wilson_interval(1, 10, level=1.5)
    with pytest.raises(ValueError, match="k must"):
        metrics.wilson_interval(11, 10)
    lo, hi = metrics.wilson_interval(0, 0)
    assert np.isnan(lo) and np.isnan(hi)


def test_bh_matches_statsmodels(rng):
    p = rng.uniform(size=200) ** 3
    p[[3, 17]] = np.nan
    adj = metrics.bh_adjust(p)
    ok = np.isfinite(p)
    ref = multipletests(p[ok], method="fdr_bh")[1]
    np.testing.assert_allclose(adj[ok], ref, rtol=1e-12)
    assert np.isnan(adj[~ok]).all()


def _auc_pairs(p, lab):
    """Brute force: P(p_DE < p_null) + ½ P(tie) over all (DE, null) pairs."""
    p = np.where(np.isnan(p), 1.0, p)
    wins = [
        1.0 if a < b else 0.5 if a == b else 0.0
        for a, b in itertools.product(p[lab], p[~lab])
    ]  # fmt: skip
    return float(np.mean(wins))


def test_roc_auc_brute_force(rng):
    lab = rng.uniform(size=80) < 0.3
    p = np.round(rng.uniform(size=80) ** np.where(lab, 3.0, 1.0), 2)  # ties on purpose
    p[[0, 5]] = np.nan
    assert metrics.roc_auc(p, lab) == pytest.approx(_auc_pairs(p, lab), abs=1e-12)
    assert metrics.roc_auc(np.where(lab, 0.001, 0.5), lab) == 1.0
    assert np.isnan(metrics.roc_auc(p, np.zeros(80, bool)))


def test_fdr_tpr_curve_brute_force(rng):
    lab = rng.uniform(size=150) < 0.2
    padj = np.round(rng.uniform(size=150) ** np.where(lab, 4.0, 1.0), 2)
    padj[7] = np.nan
    fdr, tpr = metrics.fdr_tpr_curve(padj, lab, max_points=10_000)
    cuts = np.unique(padj[np.isfinite(padj)])
    assert fdr.size == cuts.size
    for c, f, t in zip(cuts, fdr, tpr, strict=True):
        tp, fp = metrics.called(padj, lab, c)
        assert tp == int((lab & (padj <= c)).sum())
        assert t == pytest.approx(tp / lab.sum())
        assert f == pytest.approx(fp / (fp + tp))
    fdr_t, tpr_t = metrics.fdr_tpr_curve(padj, lab, max_points=20)
    assert fdr_t.size <= 20 and tpr_t[-1] == tpr[-1] and tpr_t[0] == tpr[0]
    assert np.all(np.diff(tpr_t) >= 0)
    with pytest.raises(ValueError, match="is_de"):
        metrics.fdr_tpr_curve(padj, np.zeros(150, bool))


def test_type1_table_counts_and_skips_nan():
    pv = pd.DataFrame(
        {"var_random_effects": 0.1, "n_subjects": 6, "cells_per_subject": 50,
         "replicate": [0] * 4 + [1] * 4, "method": "lm", "gene": list("abcd") * 2,
         "p_value": [0.001, 0.03, 0.5, np.nan, 0.04, 0.9, 0.2, 0.011]}
    )  # fmt: skip
    out = type1_table(pv, [0.01, 0.05]).set_index("alpha")
    assert out.loc[0.01, "n_tests"] == 7 and out.loc[0.01, "n_rejected"] == 1
    assert out.loc[0.05, "n_rejected"] == 4
    assert out.loc[0.05, "type1_error"] == pytest.approx(4 / 7)
    lo, hi = proportion_confint(4, 7, method="wilson")
    assert out.loc[0.05, "ci_low"] == pytest.approx(lo) and out.loc[0.05, "ci_high"] == hi


def test_power_summary_pools_replicates():
    rows = []
    for rep, p in enumerate(([0.001, 0.002, 0.3, 0.004], [0.001, 0.6, 0.7, 0.8])):
        for g, (pv, de) in enumerate(zip(p, [True, True, False, False], strict=True)):
            rows.append(("within_type", 0.4, 10, 200, rep, "lm", f"g{g}", de, pv))
    cols = ["scope", "abs_beta", "n_subjects", "cells_per_subject", "replicate", "method",
            "gene", "is_de", "p_value"]  # fmt: skip
    res = pd.DataFrame(rows, columns=cols)
    summary, curves = summarise(res, [0.05])
    row = summary.iloc[0]
    # replicate 0: BH calls g0, g1, g3 (TP 2, FP 1); replicate 1: g0 only (TP 1)
    assert (row["n_de"], row["tp"], row["fp"]) == (4, 3, 1)
    assert row["tpr"] == pytest.approx(3 / 4) and row["observed_fdr"] == pytest.approx(1 / 4)
    auc0 = _auc_pairs(np.array([0.001, 0.002, 0.3, 0.004]), np.array([1, 1, 0, 0], bool))
    assert row["auc"] == pytest.approx((auc0 + 1.0) / 2)  # replicate 1 ranks DE genes first
    assert curves["tpr"].iloc[-1] == 1.0


# ------------------------------------------------------------------------------------ methods


@pytest.fixture(scope="module")
def null_data():
    sim = fm.simulate_rnaseq(n_genes=30, n_cells=600, n_samples=8, n_clusters=2,
                             var_random_effects=0.1, null=True, rng=7)  # fmt: skip
    return sim


def test_ols_from_stats_matches_statsmodels(null_data):
    sim = null_data
    dsg = fm.design(sim.obs, "~ log(libsize) + cls + trt", random="sam")
    st = fm.summary_stats(sim.counts, dsg.X_frame(), dsg.Z, dsg.d, transform="log2p1")
    res = ols_from_stats(st, "trtB")
    Y = np.log2(1.0 + sim.counts.toarray())
    X = dsg.X_frame().to_numpy()
    for g in (0, 11, 29):
        ref = sm.OLS(Y[:, g], X).fit()
        j = list(dsg.fixed_names).index("trtB")
        assert res["log_fc"].iat[g] == pytest.approx(ref.params[j], rel=1e-9)
        assert res["stat"].iat[g] == pytest.approx(ref.tvalues[j], rel=1e-7)
        assert res["p_value"].iat[g] == pytest.approx(ref.pvalues[j], rel=1e-6)
    with pytest.raises(ValueError, match="coef"):
        ols_from_stats(st, "trtZ")


def test_run_methods_table_and_agreement_with_public_api(null_data):
    sim = null_data
    res = run_methods(sim.counts, sim.obs, treatment=sim.treatment, gene_names=sim.gene_names)
    assert list(res.columns) == ["gene", "method", "log_fc", "stat", "p_value", "status"]
    assert list(res["method"].unique()) == list(METHODS)
    assert len(res) == len(METHODS) * 30
    by = {m: g.reset_index(drop=True) for m, g in res.groupby("method")}
    # (a) and (b): one REML fit, the same estimate, different df
    sat, res_df = by["lmm_satterthwaite"], by["lmm_residual_df"]
    np.testing.assert_array_equal(sat["log_fc"], res_df["log_fc"])
    ref = fm.de((sim.counts, sim.obs), fixed="~ log(libsize) + cls + trt", random="sam",
                contrast={"t": "trtB"}, df="satterthwaite", nonneg=False,
                warn=False)  # fmt: skip
    ok = by["lmm_satterthwaite"]["status"].eq("ok").to_numpy()
    assert ok.sum() >= 20
    np.testing.assert_allclose(by["lmm_satterthwaite"]["p_value"][ok], ref["p_value"][ok],
                               rtol=1e-10)  # fmt: skip
    # (e) per-subject pseudobulk: as many samples as subjects; a real test of the null
    pb = by["nbglm_pseudobulk"]["p_value"].to_numpy()
    assert np.isfinite(pb).sum() >= 25 and ((pb >= 0) & (pb <= 1))[np.isfinite(pb)].all()


def test_run_methods_subset_and_errors(null_data):
    sim = null_data
    res = run_methods(sim.counts, sim.obs, treatment=sim.treatment, methods=["lm", "lmm_ml"])
    assert list(res["method"].unique()) == ["lm", "lmm_ml"]
    with pytest.raises(ValueError, match="methods"):
        run_methods(sim.counts, sim.obs, treatment=sim.treatment, methods=["t_test"])
    with pytest.raises(ValueError, match="treatment"):
        run_methods(sim.counts, sim.obs, treatment="Z")
    crossed = sim.obs.assign(sam="S" + (np.arange(len(sim.obs)) % 4).astype(str))
    with pytest.raises(ValueError, match="nested"):
        run_methods(sim.counts, crossed, treatment=sim.treatment)


def test_failing_method_gives_nan_not_an_exception(null_data):
    sim = null_data
    # two subjects: the pseudobulk GLM has 2 samples for 2 coefficients (no residual df)
    obs = sim.obs.copy()
    obs["sam"] = np.where(obs["trt"] == sim.treatment, "B1", "A1")
    res = run_methods(sim.counts, obs, treatment=sim.treatment, methods=["nbglm_pseudobulk"])
    assert res["p_value"].isna().all()
    assert res["status"].str.startswith("failed: ValueError").all()


def test_run_methods_b_d_e_f_against_direct_computations(null_data):
    """(b) t on n − p df recomputed with scipy; (f) a direct ML fit + Satterthwaite test;
    (d), (e) direct calls of nbglm on the cells and on the per-subject pseudobulk."""
    from scipy import stats

    sim = null_data
    res = run_methods(sim.counts, sim.obs, treatment=sim.treatment, gene_names=sim.gene_names)
    by = {m: g.reset_index(drop=True) for m, g in res.groupby("method")}
    # (b): p = 2·t_{n−p}(−|t|), n cells, p = 4 columns of ~ log(libsize) + cls + trt
    b = by["lmm_residual_df"]
    ok = np.isfinite(b["p_value"].to_numpy())
    p_ref = 2 * stats.t.sf(np.abs(b["stat"].to_numpy()), df=len(sim.obs) - 4)
    np.testing.assert_allclose(b["p_value"][ok], p_ref[ok], rtol=1e-10)
    # (f): ML fit, Satterthwaite df
    dsg = fm.design(sim.obs, "~ log(libsize) + cls + trt", random="sam")
    st = fm.summary_stats(sim.counts, dsg.X_frame(), dsg.Z, dsg.d, transform="log2p1")
    fit = fm.lmm(st, method="ML", warn=False)
    ref = fm.lmmtest(fit, {"t": "trtB"}, df="satterthwaite")
    f = by["lmm_ml"]
    ok = f["status"].eq("ok").to_numpy()
    assert ok.sum() >= 20
    np.testing.assert_allclose(f["p_value"][ok], ref["p_value"][ok], rtol=1e-10)
    # (d): the single-cell preset on the cells, design ~ cls + trt
    X = pd.DataFrame({"(Intercept)": 1.0, "cls2": (sim.obs["cls"].astype(str) == "2") * 1.0,
                      "trtB": (sim.obs["trt"] == "B") * 1.0})  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d_ref = fm.nbglm(sim.counts, X, preset="single_cell", contrast="trtB").p_value
    np.testing.assert_allclose(by["nbglm_cells"]["p_value"], d_ref, rtol=1e-10)
    # (e): per-subject sums, design ~ trt, DESeq2 defaults
    summed, groups = fm.pseudobulk(sim.counts, sim.obs, by=["sam"])
    trt = sim.obs.groupby("sam", observed=True)["trt"].first().loc[groups["sam"]].to_numpy()
    Xp = pd.DataFrame({"(Intercept)": 1.0, "trtB": (trt == "B") * 1.0})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        e_ref = fm.nbglm(summed, Xp, contrast="trtB").p_value
    np.testing.assert_allclose(by["nbglm_pseudobulk"]["p_value"], e_ref, rtol=1e-10)
