"""The scenario power experiment: per-method metrics by hand, the tiny run's tables, config
errors, and the figures drawn from the tiny tables."""

from __future__ import annotations

import importlib

import numpy as np
import pandas as pd
import pytest

from validation import scenario_power as sp
from validation.config import load_config
from validation.scenario_methods import R_METHODS, r_unavailable
from validation.scenarios import SCENARIOS

SUMMARY_COLUMNS = {
    "scenario", "n_donors", "cells_per_donor", "question", "method", "cell_type",
    "n_replicates", "lfc_scale", "n_genes_tested", "n_de", "auc", "auc_lo", "auc_hi",
    "discoveries_0.05", "discoveries_0.05_lo", "discoveries_0.05_hi", "tpr_0.05", "fdr_0.05",
    "fdr_0.05_n", "tpr_matched_0.05", "tpr_matched_0.05_lo", "tpr_matched_0.05_hi",
    "discoveries_matched_0.05", "discoveries_matched_0.05_lo", "discoveries_matched_0.05_hi",
    "fdr_matched_0.05", "cutoff_matched_0.05", "tpr_matched_0.1", "discoveries_matched_0.1",
    "discoveries_0.1", "tpr_0.1", "fdr_0.1", "seconds", "seconds_lo", "seconds_hi",
    "lfc_pearson", "lfc_slope", "lfc_sign_agreement", "lfc_bias", "lfc_rmse", "seed",
    "version", "git_rev",
}  # fmt: skip
REPLICATE_COLUMNS = {
    "scenario", "n_donors", "cells_per_donor", "replicate", "question", "method", "cell_type",
    "n_genes_tested", "n_de", "n_no_p", "n_failed", "seconds", "discoveries_0.05", "tp_0.05",
    "tpr_0.05", "fdr_0.05", "discoveries_0.1", "tpr_matched_0.05", "discoveries_matched_0.05",
    "fdr_matched_0.05", "cutoff_matched_0.05", "tpr_matched_0.1", "auc", "lfc_scale",
    "lfc_n", "lfc_pearson", "lfc_slope", "lfc_intercept", "lfc_sign_agreement", "lfc_bias",
    "lfc_rmse", "lfc_magnitude_error", "lfc_bias_sign", "notes",
}  # fmt: skip
CURVE_COLUMNS = {
    "scenario", "n_donors", "cells_per_donor", "method", "cell_type", "n_replicates", "n_de",
    "point", "nominal", "k", "discoveries_per_replicate", "tp", "fp", "fdr", "tpr", "cutoff",
    "controlled",
}  # fmt: skip
LFC_COLUMNS = {
    "scenario", "n_donors", "cells_per_donor", "method", "cell_type", "lfc_scale",
    "n_replicates", "comparable", "n", "pearson", "slope", "intercept", "sign_agreement",
    "bias", "rmse", "magnitude_error", "bias_sign",
}  # fmt: skip


def _results(method="m", scale="log2"):
    """A hand-made results table: 10 genes, 4 DE, p-values ranking DE, null, DE, ..."""
    genes = [f"G{i}" for i in range(10)]
    # ranked by p: G0 (DE), G1 (null), G2 (DE), G3 (DE), G4 (null), ...; G9 has no p-value
    p = np.array([0.001, 0.002, 0.003, 0.004, 0.2, 0.3, 0.5, 0.7, 0.9, np.nan])
    lfc = np.array([1.0, 0.1, -1.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]) / np.log(2)
    return pd.DataFrame({"method": method, "cell_type": "CD14 Mono", "gene": genes,
                         "p_value": p, "log_fc": lfc, "lfc_scale": scale, "status": "ok",
                         "seconds": 1.5})  # fmt: skip


def _truth():
    theta = np.zeros(10)
    theta[[0, 2, 3, 9]] = [1.0, -1.0, 2.0, 0.5]
    return pd.Series(theta, index=[f"G{i}" for i in range(10)])


def test_method_metrics_by_hand():
    rows, genes, lfc = sp._method_rows(_results(), _truth(), (0.05, 0.34))
    (r,) = rows
    assert (r["n_genes_tested"], r["n_de"], r["n_no_p"], r["seconds"]) == (10, 4, 1, 1.5)
    # BH over the 9 finite p: p_(k) <= 0.05 k / 9 holds up to k = 4 (0.004 <= 0.022)
    assert (r["discoveries_0.05"], r["tp_0.05"]) == (4, 3)
    assert r["fdr_0.05"] == pytest.approx(1 / 4) and r["tpr_0.05"] == pytest.approx(3 / 4)
    # matched FDR 0.05: only k = 1 (FDR 0) qualifies; 0.34: k = 4 has FDR 1/4, k = 3 has 1/3
    assert (r["discoveries_matched_0.05"], r["cutoff_matched_0.05"]) == (1, 0.001)
    assert r["tpr_matched_0.05"] == pytest.approx(1 / 4)
    assert (r["discoveries_matched_0.34"], r["cutoff_matched_0.34"]) == (4, 0.004)
    assert r["tpr_matched_0.34"] == pytest.approx(3 / 4)
    # AUC: G0 ranks above the 6 null genes, G2 and G3 above 5; G9 (no p: p = 1) above none
    assert r["auc"] == pytest.approx((6 + 5 + 5 + 0) / (4 * 6))
    # LFC on the DE genes with an estimate: log2 FCs equal to θ/ln2 except G9 (0 vs 0.5)
    assert r["lfc_scale"] == "log2" and r["lfc_n"] == 4
    assert r["lfc_bias"] == pytest.approx(-0.5 / 4)
    assert len(genes) == 1 and genes[0]["is_de"].sum() == 4
    assert len(lfc) == 1 and set(lfc[0]["gene"]) == {"G0", "G2", "G3", "G9"}


def test_gene_subset_and_log2_1p_scale():
    sub = _results("glmmtmb", "log2(1+y) difference").iloc[[0, 1, 4, 5, 6]]
    (r,), _, _ = sp._method_rows(sub, _truth(), (0.05,))
    assert (r["n_genes_tested"], r["n_de"]) == (5, 1)  # metrics on the tested subset only
    assert r["lfc_scale"] == "log2_1p" and np.isnan(r["lfc_bias"]) and r["lfc_n"] == 1


def test_lfc_scale_names():
    from validation.scenario_methods import METHODS

    got = {m: sp.lfc_scale(spec.lfc_scale) for m, spec in METHODS.items()}
    log1p = {"lmm", "lmm_satterthwaite", "lmm_between_within", "lmm_moderated", "lm",
             "lmertest"}  # fmt: skip
    assert {m for m, s in got.items() if s == "log2_1p"} == log1p
    assert {m for m, s in got.items() if s == "log2_expm1"} == {"wilcoxon"}
    assert {m for m, s in got.items() if s == "log2"} == set(METHODS) - log1p - {"wilcoxon"}
    assert sp.lfc_scale("log2(1+y) difference") == "log2_1p"
    assert sp.lfc_scale("ln") == "ln" and sp.lfc_scale("none") is None


def test_lfc_genes_of_the_average_question_are_those_with_one_effect():
    var = pd.DataFrame({"de": [True, True, False], "de_cell_type": ["all", "B", "none"],
                        "lfc": [0.7, -1.0, 0.0]}, index=["IFI6", "MS4A1", "ACTB"])  # fmt: skip
    assert sp.exact_truth(var, "within").all()
    # MS4A1 is DE in B cells only: its averaged effect depends on the method's estimand
    assert sp.exact_truth(var, "average").tolist() == [True, False, True]


def test_truth_of_the_two_questions():
    var = pd.DataFrame({"lfc": [0.6, -0.9, 0.0, 1.2],
                        "de_cell_type": ["CD14 Mono", "B", "", "all"]})  # fmt: skip
    weights = {"CD4 T": 0.45, "CD14 Mono": 0.35, "B": 0.2}
    within = sp.truth_for(var, "within", "CD14 Mono", weights)
    np.testing.assert_allclose(within, [0.6, 0.0, 0.0, 0.0])
    average = sp.truth_for(var, "average", "all", weights)  # π_t θ where DE in one type
    np.testing.assert_allclose(average, [0.35 * 0.6, 0.2 * -0.9, 0.0, 1.2])


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("n_donors", [2], "n_donors must be integers in 4–40"),
        ("cells_per_donor", [5000], "cells_per_donor must be integers in 20–2,000"),
        ("scenarios", ["nope"], "scenarios must be names in"),
        ("methods", ["no_such_method"], "methods must be names in"),
        ("fdr_levels", [1.5], "fdr_levels must be levels in"),
        ("replicates", 0, "replicates must be an integer >= 1"),
    ],
)
def test_bad_config_is_named(tmp_path, key, value, message):
    cfg = {**load_config("scenario_power", "tiny"), key: value}
    with pytest.raises(ValueError, match=message):
        sp.run(cfg, results_dir=tmp_path, progress=False)


def test_missing_key_is_named(tmp_path):
    cfg = {k: v for k, v in load_config("scenario_power", "tiny").items() if k != "n_genes"}
    with pytest.raises(ValueError, match=r"missing key\(s\) \['n_genes'\]"):
        sp.run(cfg, results_dir=tmp_path, progress=False)


@pytest.fixture(scope="module")
def tiny_tables(tmp_path_factory):
    out = tmp_path_factory.mktemp("scenario-power-tiny")
    cfg = load_config("scenario_power", "tiny")
    paths = sp.run(cfg, results_dir=out, progress=False)
    return cfg, out, paths


def test_tiny_variant_writes_every_table(tiny_tables):
    cfg, out, paths = tiny_tables
    assert [p.name for p in paths] == [
        "scenario_power_summary.csv", "scenario_power_replicates.csv",
        "scenario_power_curves.csv.gz", "scenario_lfc.csv", "scenario_lfc_genes.csv.gz",
    ]  # fmt: skip
    summary, reps, curves, lfc, lfc_genes = (pd.read_csv(p) for p in paths)
    assert set(cfg["scenarios"]) == set(SCENARIOS) == set(summary["scenario"])
    assert SUMMARY_COLUMNS <= set(summary.columns)
    assert REPLICATE_COLUMNS <= set(reps.columns)
    assert CURVE_COLUMNS <= set(curves.columns)
    assert LFC_COLUMNS <= set(lfc.columns)
    assert {"gene", "true_lfc", "log_fc", "lfc_scale", "replicate"} <= set(lfc_genes.columns)
    # the question each scenario asks, and its truth: DE genes in the tested set
    for sc, g in reps.groupby("scenario"):
        assert set(g["question"]) == {SCENARIOS[sc].contrast}
        want = SCENARIOS[sc].de_cell_type if SCENARIOS[sc].contrast == "within" else "all"
        assert set(g["cell_type"]) == {want}
    skipped = r_unavailable(cfg["methods"])  # R methods where R or a package is missing
    expected = [m for m in cfg["methods"] if m not in skipped]
    assert set(reps["method"]) == set(expected)
    limits = cfg["method_limits"]
    ran = reps[reps["n_no_p"] < reps["n_genes_tested"]]  # methods that gave p-values
    for sc, g in ran.groupby("scenario"):
        want = {m for m in expected if sc in limits.get(m, {}).get("scenarios", [sc])}
        assert set(g["method"]) <= want and len(want - set(g["method"])) <= 2, sc
        assert {m for m in want if m in R_METHODS} <= set(g["method"]), sc  # R ran where asked
    subset = ran["method"].isin(["glmmtmb", "lmertest"])
    # (a 5-gene subset may hold no DE gene)
    assert (ran.loc[~subset, "n_de"] > 0).all()
    assert (ran.loc[~subset, "n_genes_tested"] == cfg["n_genes"]).all()
    assert (ran.loc[subset, "n_genes_tested"] == cfg["r_gene_subset"]).all()
    tpr = ran["tpr_matched_0.05"]
    assert (tpr.between(0, 1) | (tpr.isna() & (ran["n_de"] == 0))).all()
    de = ran[ran["n_de"] > 0]
    assert (de["discoveries_matched_0.05"] <= de["discoveries_matched_0.1"]).all()
    # the curves: one BH point per level and method, TPR non-decreasing along k
    bh = curves[curves["point"] == "bh"]
    assert set(bh["nominal"]) == {0.01, 0.05, 0.1}
    for _, c in curves[curves["point"] == "curve"].groupby(["scenario", "method"]):
        if c["tpr"].notna().any():  # (no TPR without a DE gene in a subset)
            assert np.all(np.diff(c["k"]) > 0) and np.all(np.diff(c["tpr"]) >= 0)
    assert set(lfc["lfc_scale"]) <= {"log2", "ln", "log2_1p", "log2_expm1"}


@pytest.mark.parametrize("name", ["fig_scenario_power", "fig_scenario_lfc"])
def test_figures_draw_from_the_tiny_tables(tiny_tables, tmp_path, name):
    _, out, _ = tiny_tables
    mod = importlib.import_module(f"figures.{name}")
    assert all((out / t).exists() for t in mod.INPUTS)
    written = mod.make(out, tmp_path)
    assert set(written) == {tmp_path / f"{o}.{e}" for o in mod.OUTPUTS for e in ("png", "pdf")}
    assert all(p.stat().st_size > 1000 for p in written)


def test_nearest_setting_of_the_fdr_tpr_panels():
    from figures.fig_scenario_power import nearest_setting

    assert nearest_setting([(4, 20), (10, 200), (40, 2000)]) == (10, 200)
    assert nearest_setting([(4, 20), (40, 20)]) == (4, 20)
    assert nearest_setting([(6, 40)]) == (6, 40)
