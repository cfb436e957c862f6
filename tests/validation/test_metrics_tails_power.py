"""Tail counts against Poisson intervals and TPR at a matched observed FDR, against brute force."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from validation.metrics import (
    bh_points,
    discovery_curve,
    lfc_accuracy,
    replicate_interval,
    tail_counts,
    tpr_at_matched_fdr,
)


def test_tail_counts_flag_an_inflated_tail(rng):
    n = 20_000
    uniform = rng.uniform(size=n)
    inflated = np.concatenate([uniform[:-40], rng.uniform(0, 1e-4, 40)])  # 40 extra tiny p
    (u3, u4) = tail_counts(np.append(uniform, np.nan), (1e-3, 1e-4))
    assert u3["n_tests"] == n and u3["expected"] == pytest.approx(20.0)
    assert u3["observed"] == int((uniform <= 1e-3).sum()) and u3["within"] and u4["within"]
    lo, hi = stats.poisson.ppf([0.005, 0.995], 2.0)
    assert (u4["lo"], u4["hi"]) == (lo, hi)
    (_, i4) = tail_counts(inflated, (1e-3, 1e-4))
    assert i4["observed"] >= 40 and not i4["within"]


def _brute_force(p, de, target):
    best = (0, 0.0, 0, 0)
    for c in np.unique(p[~np.isnan(p)]):
        hit = p <= c
        tp, fp = int((hit & de).sum()), int((hit & ~de).sum())
        if fp <= target * (tp + fp) and tp + fp > best[0]:
            best = (tp + fp, tp / de.sum(), tp, fp)
    return best


@pytest.mark.parametrize("target", [0.05, 0.1, 0.3])
def test_tpr_at_matched_fdr_is_the_largest_allowed_cutoff(rng, target):
    for _ in range(20):
        de = rng.uniform(size=300) < 0.2
        p = np.where(de, rng.beta(0.2, 3.0, 300), rng.uniform(size=300))
        p = np.round(p, 3)  # ties
        p[rng.choice(300, 5, replace=False)] = np.nan  # never called
        got = tpr_at_matched_fdr(p, de, target)
        n, tpr, tp, fp = _brute_force(p, de, target)
        assert (got["n_discoveries"], got["tp"], got["fp"]) == (n, tp, fp)
        assert got["tpr"] == pytest.approx(tpr)
        if n:
            assert (
                got["observed_fdr"] <= target and np.nanmax(p[p <= got["cutoff"]]) == got["cutoff"]
            )


def test_tpr_at_matched_fdr_without_discoveries():
    de = np.array([True, False, False])
    got = tpr_at_matched_fdr([0.5, 0.01, 0.02], de, 0.05)
    assert got["tpr"] == 0.0 and got["n_discoveries"] == 0 and np.isnan(got["cutoff"])
    with pytest.raises(ValueError, match="at least one DE gene"):
        tpr_at_matched_fdr([0.1, 0.2], [False, False])


# --- the scenario power metrics: discovery curves, BH points, LFC accuracy, intervals ---


def test_discovery_curve_by_hand():
    # ranked p: 0.01 (DE), 0.02 (null), 0.03 (DE), 0.03 (DE, tied), 0.5 (null), NaN (DE)
    p = np.array([0.03, 0.5, 0.01, np.nan, 0.02, 0.03])
    de = np.array([True, False, True, True, False, True])
    c = discovery_curve(p, de)
    assert c["n_de"] == 4
    np.testing.assert_array_equal(c["k"], [1, 2, 4, 5])  # the tie at 0.03 enters as one step
    np.testing.assert_array_equal(c["tp"], [1, 1, 3, 3])
    np.testing.assert_array_equal(c["fp"], [0, 1, 1, 2])
    np.testing.assert_allclose(c["fdr"], [0, 1 / 2, 1 / 4, 2 / 5])
    np.testing.assert_allclose(c["tpr"], [1 / 4, 1 / 4, 3 / 4, 3 / 4])
    np.testing.assert_allclose(c["cutoff"], [0.01, 0.02, 0.03, 0.5])


def test_discovery_curve_against_brute_force_and_thinning(rng):
    de = rng.uniform(size=500) < 0.15
    p = np.round(np.where(de, rng.beta(0.3, 3.0, 500), rng.uniform(size=500)), 3)
    c = discovery_curve(p, de)
    for k, tp, fp, cut in zip(c["k"], c["tp"], c["fp"], c["cutoff"], strict=True):
        hit = p <= cut
        assert (k, tp, fp) == (hit.sum(), (hit & de).sum(), (hit & ~de).sum())
    assert np.all(np.diff(c["k"]) > 0) and c["k"][-1] == 500
    thin = discovery_curve(p, de, max_points=20)
    assert len(thin["k"]) <= 20 and thin["k"][0] == c["k"][0] and thin["k"][-1] == 500
    assert set(thin["k"]) <= set(c["k"])
    with pytest.raises(ValueError, match="at least one DE gene"):
        discovery_curve(p, np.zeros(500, bool))


def test_bh_points_lie_on_the_curve_and_match_brute_force_bh(rng):
    de = rng.uniform(size=400) < 0.2
    p = np.where(de, rng.beta(0.2, 4.0, 400), rng.uniform(size=400))
    p[:3] = np.nan
    m = np.isfinite(p).sum()
    c = discovery_curve(p, de)
    for pt in bh_points(p, de, (0.01, 0.05, 0.1)):
        a = pt["level"]
        # BH by its definition: the largest i with p_(i) <= i a / m, then the i smallest called
        srt = np.sort(p[np.isfinite(p)])
        ok = np.flatnonzero(srt <= np.arange(1, m + 1) * a / m)
        k = ok[-1] + 1 if ok.size else 0
        hit = p <= srt[k - 1] if k else np.zeros(400, bool)
        assert pt["n_discoveries"] == k == hit.sum()
        assert (pt["tp"], pt["fp"]) == ((hit & de).sum(), (hit & ~de).sum())
        assert pt["tpr"] == pytest.approx(pt["tp"] / de.sum())
        if k:
            i = np.flatnonzero(c["k"] == k)
            assert i.size == 1 and c["fdr"][i[0]] == pytest.approx(pt["observed_fdr"])
            assert pt["controlled"] == (pt["observed_fdr"] <= a)
    none = bh_points([0.9, 0.8], [True, False], (0.05,))[0]
    assert none["n_discoveries"] == 0 and np.isnan(none["observed_fdr"])
    assert not none["controlled"]


def test_tpr_at_matched_fdr_picks_the_largest_cutoff_within_the_target():
    # ranked: DE, DE, null, DE, DE, DE, null, null, DE, null (n_DE = 6)
    # k:       1   2    3   4   5   6    7     8    9   10
    # FP/k:    0   0  1/3 1/4 1/5 1/6  2/7   3/8  3/9  4/10
    p = np.arange(1, 11) / 100
    de = np.array([1, 1, 0, 1, 1, 1, 0, 0, 1, 0], bool)
    got = tpr_at_matched_fdr(p, de, 0.2)  # k = 5 (1/5 = 0.2) and k = 6 (1/6): take 6
    assert (got["n_discoveries"], got["tp"], got["fp"]) == (6, 5, 1)
    assert got["cutoff"] == pytest.approx(0.06) and got["tpr"] == pytest.approx(5 / 6)
    assert got["n_de"] == 6
    got = tpr_at_matched_fdr(p, de, 0.1)  # only k = 1, 2 have FDR <= 0.1
    assert (got["n_discoveries"], got["cutoff"]) == (2, pytest.approx(0.02))
    got = tpr_at_matched_fdr(p, de, 0.35)  # 3/9 = 0.333 <= 0.35 < 3/8 ... largest k = 9
    assert (got["n_discoveries"], got["tp"]) == (9, 6)


def test_lfc_accuracy_on_a_log2_scale_by_hand():
    truth = np.array([-1.0, -0.5, 0.5, 1.0])  # natural log
    est = truth / np.log(2) * 0.5  # log2 FCs shrunk to half
    got = lfc_accuracy(est, truth, "log2")
    assert got["comparable"] and got["n"] == 4
    assert got["slope"] == pytest.approx(0.5) and got["intercept"] == pytest.approx(0.0)
    assert got["pearson"] == pytest.approx(1.0) and got["sign_agreement"] == 1.0
    # θ̂ = est·ln2 = truth/2: bias 0 (symmetric), RMSE = sqrt(mean((truth/2)²))
    assert got["bias"] == pytest.approx(0.0, abs=1e-12)
    assert got["rmse"] == pytest.approx(np.sqrt(np.mean((truth / 2) ** 2)))
    assert got["magnitude_error"] == pytest.approx(-0.375) and got["bias_sign"] == -1.0
    exact = lfc_accuracy(truth / np.log(2), truth, "log2")
    assert exact["slope"] == pytest.approx(1.0) and exact["rmse"] == pytest.approx(0.0)


def test_lfc_accuracy_on_the_log2_1p_scale_reports_no_bias():
    truth = np.array([0.4, 0.8, -0.6, 1.2, np.nan])
    est = np.array([0.05, 0.12, -0.07, 0.2, 0.3])  # log2(1 + y) differences, attenuated
    got = lfc_accuracy(est, truth, "log2_1p")
    assert not got["comparable"] and got["n"] == 4
    assert np.isnan(got["bias"]) and np.isnan(got["rmse"])
    t2, e = truth[:4] / np.log(2), est[:4]  # the truth as a log2 fold change
    slope, intercept = np.polyfit(t2, e, 1)
    assert got["slope"] == pytest.approx(slope) and got["intercept"] == pytest.approx(intercept)
    assert got["pearson"] == pytest.approx(np.corrcoef(e, t2)[0, 1])
    assert got["magnitude_error"] == pytest.approx(np.mean(np.abs(e) - np.abs(t2)))
    assert got["bias_sign"] == -1.0 and got["sign_agreement"] == 1.0
    nat = lfc_accuracy(est[:4], truth[:4], "ln")
    assert nat["slope"] == pytest.approx(np.polyfit(truth[:4], est[:4], 1)[0])
    with pytest.raises(ValueError, match="scale must be one of"):
        lfc_accuracy(est, truth, "log10")


def test_replicate_interval_t_and_percentile():
    x = np.array([0.2, 0.4, 0.3, np.nan])
    got = replicate_interval(x)
    half = stats.t.ppf(0.975, 2) * np.std([0.2, 0.4, 0.3], ddof=1) / np.sqrt(3)
    assert got["n"] == 3 and got["mean"] == pytest.approx(0.3)
    assert (got["lo"], got["hi"]) == (pytest.approx(0.3 - half), pytest.approx(0.3 + half))
    pct = replicate_interval(np.arange(1.0, 102.0), method="percentile")
    assert (pct["lo"], pct["hi"]) == (pytest.approx(3.5), pytest.approx(98.5))
    one = replicate_interval([0.7])
    assert one["mean"] == 0.7 and np.isnan(one["lo"]) and one["n"] == 1
    assert np.isnan(replicate_interval([0.1, 0.2], method="percentile")["lo"])
    assert np.isnan(replicate_interval([np.nan])["mean"])
    with pytest.raises(ValueError, match="method"):
        replicate_interval(x, method="bootstrap")
