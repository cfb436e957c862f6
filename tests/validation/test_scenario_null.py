"""The scenario calibration's tiny variant: every scenario, every Python method, the tables."""

from __future__ import annotations

import pandas as pd

from validation import scenario_null
from validation.config import load_config
from validation.mock_null import METHODS
from validation.scenarios import SCENARIOS


def test_tiny_variant_runs_every_scenario_and_method(tmp_path):
    cfg = load_config("scenario_null", "tiny")
    assert set(cfg["scenarios"]) == set(SCENARIOS)
    type1_path, pvalues_path = scenario_null.run(cfg, results_dir=tmp_path, progress=False)
    type1 = pd.read_csv(type1_path)
    pvalues = pd.read_csv(pvalues_path)
    assert set(pvalues["scenario"]) == set(SCENARIOS)
    assert set(pvalues["method"]) == set(METHODS)
    assert not pvalues["status"].str.startswith("failed").any()
    overall = type1[type1["cell_type"] == "all"]
    # one row per scenario × setting × method, each with tests and its interval
    assert len(overall) == len(SCENARIOS) * len(METHODS)
    assert (overall["n_tests"] > 0).all()
    assert (overall["lo_0.05"] <= overall["type1_0.05"] + 1e-12).all()
    assert (overall["type1_0.05"] <= overall["hi_0.05"] + 1e-12).all()
    assert {"tail_0.001", "expected_0.001", "tail_ok_0.0001", "git_rev"} <= set(type1.columns)


def test_bad_config_is_named(tmp_path):
    import pytest

    cfg = {**load_config("scenario_null", "tiny"), "n_donors": [2]}
    with pytest.raises(ValueError, match="n_donors must be integers in 4–40"):
        scenario_null.run(cfg, results_dir=tmp_path, progress=False)
