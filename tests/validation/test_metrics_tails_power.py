"""Tail counts against Poisson intervals and TPR at a matched observed FDR, against brute force."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from validation.metrics import tail_counts, tpr_at_matched_fdr


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
