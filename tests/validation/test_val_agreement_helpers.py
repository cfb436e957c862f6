"""The agreement experiment's helpers: relative differences, the design grid, one design."""

import numpy as np
import pytest

from validation.agreement import design_grid, statsmodels_design
from validation.differences import AgreementTables, relative_difference, summarise


def test_relative_difference_uses_the_floor():
    ours = np.array([1.1, 0.0, 1e-12, np.nan])
    ref = np.array([1.0, 1e-14, 0.0, 1.0])
    rel = relative_difference(ours, ref, floor=[0.0, 1e-10, 0.0, 0.0])
    np.testing.assert_allclose(rel[:2], [0.1, 1e-4], rtol=1e-12)
    assert rel[2] == np.inf  # no scale to judge a difference from an exact 0 on
    assert np.isnan(rel[3])
    assert relative_difference([0.0], [0.0], 0.0)[0] == 0.0


def test_summarise_drops_nan_pairs():
    s = summarise([1.0, 2.2, np.nan, 5.0], [1.0, 2.0, 3.0, -4.0], floor=[0, 0, 0, 10])
    assert s["n_values"] == 3
    np.testing.assert_allclose(s["max_rel_diff"], 0.9)  # |5 − (−4)| / max(4, 10)
    np.testing.assert_allclose(s["median_rel_diff"], 0.1)
    np.testing.assert_allclose(s["max_abs_diff"], 9.0)
    assert summarise([np.nan], [1.0], 0.0)["n_values"] == 0


@pytest.mark.parametrize(("ours", "ref", "floor", "arg"), [
    ([1.0, 2.0], [1.0], 0.0, "shapes"),
    ([1.0], [1.0], -1.0, "floor"),
])  # fmt: skip
def test_bad_input(ours, ref, floor, arg):
    with pytest.raises(ValueError, match=arg):
        relative_difference(ours, ref, floor)


def test_tables_have_the_readme_columns():
    t = AgreementTables()
    scen = {"scenario": "s", "K": 1, "fit_method": "REML", "n_subjects": 5, "n_cells": 100,
            "balanced": True}  # fmt: skip
    t.add("lmm_vs_statsmodels", scen, "beta", [1.0, 2.0], [1.0, 2.5], 0.0)
    assert list(t.summary().columns) == [
        "comparison", "scenario", "K", "fit_method", "n_subjects", "n_cells", "balanced",
        "quantity", "n_values", "max_rel_diff", "median_rel_diff", "max_abs_diff",
    ]  # fmt: skip
    assert list(t.values().columns) == ["comparison", "scenario", "quantity", "ours", "reference"]
    assert len(t.values()) == 2


def test_design_grid_rejects_too_few_cells():
    cfg = {"grid_K": [1], "grid_methods": ["ML"], "grid_balanced": [True],
           "grid_sizes": [[5, 100], [20, 30]]}  # fmt: skip
    with pytest.raises(ValueError, match="designs"):
        design_grid(cfg)
    cfg["grid_sizes"] = [[5, 100]]
    cfg["extra_designs"] = [{"K": 2, "method": "REML", "subjects": 4, "cells": 50,
                             "balanced": False}]  # fmt: skip
    assert [d["K"] for d in design_grid(cfg)] == [1, 2]


@pytest.mark.parametrize("K", [1, 2])
def test_one_design_agrees_with_statsmodels(K):
    d = {"K": K, "method": "REML", "subjects": 6, "cells": 120, "balanced": False}
    s = statsmodels_design((d, 2, np.random.SeedSequence(3))).summary().set_index("quantity")
    for q in ("beta", "se", "theta", "loglik", "loglik_at_ours", "p_value"):
        assert s.loc[q, "n_values"] > 0
        assert s.loc[q, "max_rel_diff"] < 1e-6, q
