"""The scenario calibration's tiny variant: every scenario, the config's methods (R ones where R
runs), each scenario's own question, the tables."""

from __future__ import annotations

import pandas as pd
import pytest

from validation import scenario_null
from validation.config import load_config
from validation.scenario_methods import PYTHON_METHODS, r_unavailable
from validation.scenarios import SCENARIOS


def test_tiny_variant_runs_every_scenario_and_method(tmp_path):
    cfg = load_config("scenario_null", "tiny")
    assert set(cfg["scenarios"]) == set(SCENARIOS)
    assert set(PYTHON_METHODS) <= set(cfg["methods"])
    type1_path, pvalues_path, notes_path = scenario_null.run(cfg, results_dir=tmp_path,
                                                             progress=False)  # fmt: skip
    type1 = pd.read_csv(type1_path)
    pvalues = pd.read_csv(pvalues_path)
    notes = pd.read_csv(notes_path)
    skipped = r_unavailable(cfg["methods"])
    ran = [m for m in cfg["methods"] if m not in skipped]
    assert set(pvalues["scenario"]) == set(SCENARIOS)
    assert set(pvalues["method"]) == set(ran)
    for m in skipped:  # an R method that cannot run leaves a note, not a failure
        assert notes["note"].str.startswith(f"{m} skipped").any()
    assert not pvalues["status"].str.startswith("failed").any()
    assert {"log_fc", "lfc_scale", "seconds", "replicate"} <= set(pvalues.columns)
    assert pvalues["seconds"].notna().all()
    # each scenario's own question: within every cell type, or the averaged contrast
    for sc, g in pvalues.groupby("scenario"):
        want = {"all"} if SCENARIOS[sc].contrast == "average" else set(SCENARIOS[sc].cell_types)
        assert set(g["cell_type"]) == want, sc
    overall = type1[type1["cell_type"] == "all"]
    # one row per scenario × setting × method, each with tests and its interval
    assert len(overall) == len(SCENARIOS) * len(ran)
    assert (overall["n_tests"] > 0).all()
    assert (overall["lo_0.05"] <= overall["type1_0.05"] + 1e-12).all()
    assert (overall["type1_0.05"] <= overall["hi_0.05"] + 1e-12).all()
    assert {"tail_0.001", "expected_0.001", "tail_ok_0.0001", "git_rev"} <= set(type1.columns)


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
