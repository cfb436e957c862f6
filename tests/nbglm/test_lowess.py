"""The LOWESS smoother of independent filtering against statsmodels' (R's algorithm)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from statsmodels.nonparametric.smoothers_lowess import lowess as sm_lowess

from pyflashmm._kernels.lowess import _numpy_sum, lowess


@pytest.mark.parametrize("n", [1, 5, 8, 9, 17, 128, 129, 300, 1001])
def test_neighbourhood_sums_follow_numpy(rng, n):
    a = rng.random(n + 3) * 10.0 ** rng.uniform(-3, 3, n + 3)
    assert _numpy_sum(a, 2, 2 + n) == np.sum(a[2 : 2 + n])


def test_lowess_equals_statsmodels_bit_for_bit(rng):
    # the shapes DESeq2's filtering produces: decreasing counts of rejections over 50 quantiles,
    # small noisy counts, constants (median residual 0), and other lengths
    for trial in range(400):
        n = 50 if trial % 2 == 0 else int(rng.integers(3, 200))
        lo = rng.random() * 0.5
        theta = np.linspace(lo, 0.95, n)
        kind = trial % 4
        if kind == 0:
            y = np.maximum.accumulate(rng.integers(0, 300, n))[::-1].astype(float)
        elif kind == 1:
            y = rng.integers(0, 15, n).astype(float)
        elif kind == 2:
            y = np.full(n, float(rng.integers(0, 40)))
        else:
            y = np.round(rng.normal(100, 30, n))
        delta = 0.01 * (theta[-1] - theta[0])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            ref = sm_lowess(y, theta, frac=1 / 5, it=3, delta=delta, return_sorted=False)
        np.testing.assert_array_equal(lowess(y, theta, 1 / 5, 3, delta), ref)
