"""The scenario calibration's tiny variant: every scenario, the config's methods (R ones where R
runs), each scenario's own question, the tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from validation import scenario_null
from validation.config import load_config
from validation.scenario_methods import PYTHON_METHODS, r_unavailable
from validation.scenarios import SCENARIOS


def test_tiny_variant_runs_every_scenario_and_method(tmp_path):
    cfg = load_config("scenario_null", "tiny")
    assert set(cfg["scenarios"]) == set(SCENARIOS)
    assert set(PYTHON_METHODS) <= set(cfg["methods"])
    type1_path, replicates_path, pvalues_path, qq_path, notes_path = scenario_null.run(
        cfg, results_dir=tmp_path, progress=False
    )
    type1 = pd.read_csv(type1_path)
    pvalues = pd.read_csv(pvalues_path)
    notes = pd.read_csv(notes_path)
    skipped = r_unavailable(cfg["methods"])
    ran = [m for m in cfg["methods"] if m not in skipped]
    assert set(pvalues["scenario"]) == set(SCENARIOS)
    assert set(pvalues["method"]) == set(ran)
    for m in skipped:  # an R method that cannot run leaves a note, not a failure
        assert notes["note"].str.startswith(f"{m} skipped").any()
    # no method fails as a whole (an exception: "failed: <Python error>: ..."); a per-gene fit
    # in R may fail as data (lme4 stops on a gene of 6 donors with "not a positive definite
    # matrix"), the Python methods' never do
    assert not pvalues["status"].str.match(r"failed: \w+(Error|Exception):").any()
    python = pvalues[pvalues["method"].isin(PYTHON_METHODS)]
    assert not python["status"].str.startswith("failed").any()
    assert {"log_fc", "lfc_scale", "seconds", "replicate"} <= set(pvalues.columns)
    assert pvalues["seconds"].notna().all()
    # each scenario's own question: within every cell type, or the averaged contrast
    for sc, g in pvalues.groupby("scenario"):
        want = {"all"} if SCENARIOS[sc].contrast == "average" else set(SCENARIOS[sc].cell_types)
        assert set(g["cell_type"]) == want, sc
    overall = type1[type1["cell_type"] == "all"]
    # one row per scenario × setting × method it ran in (method_limits: DESeq2, glmmTMB and
    # lmerTest in two scenarios), each with tests and its interval
    limits = cfg["method_limits"]
    want = {(sc, m) for sc in SCENARIOS for m in ran
            if sc in limits.get(m, {}).get("scenarios", [sc])}  # fmt: skip
    assert set(zip(overall["scenario"], overall["method"], strict=True)) == want
    assert len(overall) == len(want)
    assert (overall["n_tests"] > 0).all()
    assert (overall["lo_0.05"] <= overall["type1_0.05"] + 1e-12).all()
    assert (overall["type1_0.05"] <= overall["hi_0.05"] + 1e-12).all()
    assert {"tail_0.001", "expected_0.001", "tail_ok_0.0001", "git_rev"} <= set(type1.columns)
    # the QQ table has a curve per scenario, setting and method that ran, with its test count
    qq = pd.read_csv(qq_path)
    assert set(qq.groupby(["scenario", "method"]).groups) == set(
        pvalues.groupby(["scenario", "method"]).groups
    )
    n = pvalues[pvalues["p_value"].notna()].groupby(["scenario", "method"]).size()
    assert (qq.groupby(["scenario", "method"])["n_tests"].first() == n).all()


def test_method_limits_leave_methods_out_with_a_note():
    limits = {"nbmm": {"replicates": 1}, "glmmtmb": {"max_cells_per_donor": 200},
              "deseq2_r": {"scenarios": ["droplet"]}}  # fmt: skip
    methods = ("lmm", "nbmm", "glmmtmb", "deseq2_r")
    kept, notes = scenario_null.limited_methods(methods, limits, scenario="droplet",
                                                cells_per_donor=200, replicate=0)  # fmt: skip
    assert kept == methods and notes == []
    kept, notes = scenario_null.limited_methods(methods, limits, scenario="gamma_donors",
                                                cells_per_donor=2000, replicate=1)  # fmt: skip
    assert kept == ("lmm",)
    assert notes == [
        "nbmm: not run (method_limits: first 1 replicates of a setting)",
        "glmmtmb: not run (method_limits: at most 200 cells per donor)",
        "deseq2_r: not run (method_limits: scenarios ['droplet'])",
    ]
    for bad in ({"nbmm": {"genes": 5}}, {"nbmm": {"scenarios": ["pbmc"]}}):
        cfg = {**load_config("scenario_null", "tiny"), "method_limits": bad}
        with pytest.raises(ValueError, match="method_limits.nbmm must name a method"):
            scenario_null.check(cfg)
    cfg = {**load_config("scenario_null", "tiny"), "tail": {"n_donors": 10}}
    with pytest.raises(ValueError, match="tail must be a table with"):
        scenario_null.check(cfg)


def test_tail_adds_replicates_of_one_setting_and_keeps_the_grid(tmp_path):
    """The tail's tasks are more replicates of one setting with more genes and fewer methods;
    the grid's data are those of a run without a tail (the tail's seeds come after)."""
    base = {
        **load_config("scenario_null", "tiny"),
        "scenarios": ["droplet"],
        "methods": ["lmm", "pseudobulk"],
        "n_genes": 30,
    }
    tail = {
        "n_donors": 6,
        "cells_per_donor": 40,
        "n_genes": 80,
        "replicates": 2,
        "methods": ["lmm"],
    }
    plain = pd.read_csv(scenario_null.run(base, results_dir=tmp_path / "a", progress=False)[2])
    paths = scenario_null.run({**base, "tail": tail}, results_dir=tmp_path / "b",
                              progress=False)  # fmt: skip
    with_tail = pd.read_csv(paths[2])
    grid = with_tail[with_tail["replicate"] == 0].reset_index(drop=True)
    pd.testing.assert_frame_equal(grid.drop(columns="seconds"), plain.drop(columns="seconds"))
    extra = with_tail[with_tail["replicate"] > 0]
    assert sorted(extra["replicate"].unique()) == [1, 2]
    assert set(extra["method"]) == {"lmm"} and extra["gene"].nunique() == 80
    assert (extra.groupby("replicate").size() == 80 * 3).all()  # 3 cell types
    notes = pd.read_csv(paths[4])
    assert notes["note"].str.startswith("tail: 80 genes").sum() == 2
    qq = pd.read_csv(paths[3])
    # the replicate interval: a Student-t interval over the three data sets' type-I errors
    type1 = pd.read_csv(paths[0])
    row = type1[(type1["method"] == "lmm") & (type1["cell_type"] == "all")].iloc[0]
    rates = (with_tail[with_tail["method"] == "lmm"].groupby("replicate")["p_value"]
             .apply(lambda p: (p.dropna() <= 0.05).mean()).to_numpy())  # fmt: skip
    half = stats.t.ppf(0.975, 2) * rates.std(ddof=1) / np.sqrt(3)
    assert row["n_replicates"] == 3
    # (the tables are written with 10 significant digits)
    assert row["rep_lo_0.05"] == pytest.approx(rates.mean() - half, rel=1e-9)
    assert row["rep_hi_0.05"] == pytest.approx(rates.mean() + half, rel=1e-9)
    reps = pd.read_csv(paths[1])
    lmm_all = reps[(reps["method"] == "lmm") & (reps["cell_type"] == "all")]
    np.testing.assert_allclose(lmm_all.sort_values("replicate")["type1_0.05"], rates, rtol=1e-9)
    lmm = with_tail[with_tail["method"] == "lmm"]
    assert len(lmm) == 30 * 3 + 2 * 80 * 3
    assert qq.loc[qq["method"] == "lmm", "n_tests"].max() == lmm["p_value"].notna().sum()


def test_bad_config_is_named(tmp_path):
    cfg = {**load_config("scenario_null", "tiny"), "n_donors": [2]}
    with pytest.raises(ValueError, match="n_donors must be integers in 4–40"):
        scenario_null.run(cfg, results_dir=tmp_path, progress=False)
    cfg = {**load_config("scenario_null", "tiny"), "methods": ["lmm", "edger"]}
    with pytest.raises(ValueError, match="methods must be names in"):
        scenario_null.run(cfg, results_dir=tmp_path, progress=False)


def test_every_variant_names_known_methods():
    for variant in ("tiny", "quick", "full"):
        scenario_null.check(load_config("scenario_null", variant))
