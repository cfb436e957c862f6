"""The report's calibration verdicts: Bonferroni over a scenario's settings, the replicate
interval, the Poisson tail rule — checked on a hand-made type-I table against the formulas."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from validation.scenario_report import scenario_verdicts, setting_verdicts


def _wilson_low(rate, n, level):
    """The Wilson score interval's lower end, written out."""
    z = stats.norm.ppf(0.5 + level / 2)
    centre = (rate + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z / (1 + z**2 / n) * np.sqrt(rate * (1 - rate) / n + z**2 / (4 * n**2))
    return centre - half


def _row(s, rate05, *, n=2000, rep_lo=np.nan, n_rep=4, tail3=2, method="lmm"):
    return {"scenario": "droplet", "n_donors": s, "cells_per_donor": 200, "method": method,
            "cell_type": "all", "n_tests": n, "type1_0.05": rate05, "type1_0.01": 0.01,
            "tail_0.001": tail3, "expected_0.001": n * 1e-3, "tail_0.0001": 0,
            "expected_0.0001": n * 1e-4, "n_replicates": n_rep, "rep_lo_0.05": rep_lo,
            "rep_lo_0.01": 0.0}  # fmt: skip


def test_verdicts_correct_for_settings_and_need_the_replicates_to_agree():
    k = 3
    # 6.1% of 2,000: above 5% at 95% (the old, uncorrected rule) but not at 1 - 0.05/3
    assert _wilson_low(0.061, 2000, 0.95) > 0.05
    assert _wilson_low(0.061, 2000, 1 - 0.05 / k) < 0.05
    # 8% of 2,000 is above 5% even corrected
    assert _wilson_low(0.08, 2000, 1 - 0.05 / k) > 0.05
    tail_hi = stats.poisson.ppf(1 - 0.005 / k, 2.0)  # the corrected upper end at n·10⁻³ = 2
    t = pd.DataFrame([
        _row(4, 0.061, rep_lo=0.055),
        _row(10, 0.08, rep_lo=0.065),  # inflated: Wilson and replicates agree
        _row(40, 0.05, tail3=int(tail_hi) + 1),  # inflated: the tail count
        _row(4, 0.08, rep_lo=0.04, method="pseudobulk"),  # replicates disagree: not shown
        _row(10, 0.08, rep_lo=np.nan, n_rep=2, method="pseudobulk"),  # 2 replicates: Wilson
        _row(40, 0.05, tail3=int(tail_hi), method="pseudobulk"),  # at the upper end: fine
    ])  # fmt: skip
    t["lo_0.05"] = [_wilson_low(x, 2000, 0.95) for x in t["type1_0.05"]]
    t["lo_0.01"] = 0.0
    t["tail_ok_0.001"] = [x <= stats.poisson.ppf(0.995, 2.0) for x in t["tail_0.001"]]
    t["tail_ok_0.0001"] = True
    v = setting_verdicts(t).set_index(["method", "n_donors"])
    assert (v["k"] == k).all()
    corrected = v["calibrated_corrected"]
    assert corrected[("lmm", 4)]
    assert not corrected[("lmm", 10)]
    assert v.loc[("lmm", 10), "reason_corrected"] == "type-I 8.0% at α = 0.05"
    assert not corrected[("lmm", 40)]
    assert v.loc[("lmm", 40), "reason_corrected"].startswith(f"{int(tail_hi) + 1} p ≤ 0.001")
    assert corrected[("pseudobulk", 4)]
    assert not corrected[("pseudobulk", 10)]
    assert corrected[("pseudobulk", 40)]
    # the plain rule (95% Wilson, 99% Poisson, no replicates): every 6.1% and 8% fails
    plain = v["calibrated"]
    assert not plain[("lmm", 4)] and not plain[("lmm", 10)] and not plain[("pseudobulk", 4)]
    assert plain[("lmm", 40)] == (int(tail_hi) + 1 <= stats.poisson.ppf(0.995, 2.0))
    assert not plain[("pseudobulk", 40)] or int(tail_hi) <= stats.poisson.ppf(0.995, 2.0)
    per = scenario_verdicts(v.reset_index()).set_index("method")
    assert per.loc["lmm", "n_calibrated_corrected"] == 1
    assert per.loc["pseudobulk", "n_calibrated_corrected"] == 2
    assert per.loc["lmm", "n_calibrated"] == int(plain.loc["lmm"].sum())


def test_verdicts_read_tables_without_replicate_columns():
    """Tables written before the replicate intervals existed: the Wilson rule alone."""
    t = pd.DataFrame([_row(4, 0.08), _row(10, 0.05)]).drop(
        columns=["n_replicates", "rep_lo_0.05", "rep_lo_0.01"]
    )
    t["lo_0.05"], t["lo_0.01"] = [0.068, 0.041], 0.0
    t["tail_ok_0.001"], t["tail_ok_0.0001"] = True, True
    v = setting_verdicts(t).set_index("n_donors")
    assert not v.loc[4, "calibrated_corrected"] and v.loc[10, "calibrated_corrected"]
    assert not v.loc[4, "calibrated"] and v.loc[10, "calibrated"]
    assert (v["n_replicates"] == 0).all()
