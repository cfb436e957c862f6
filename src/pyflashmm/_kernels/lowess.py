"""Cleveland's LOWESS smoother (R's ``lowess``, statsmodels' ``lowess``), for DESeq2's
independent filtering, which smooths the number of rejections against the filter quantile θ.

For each point x₀ (in increasing order) a straight line is fitted by weighted least squares to
its k = ⌊f·n⌋ nearest neighbours (k ≥ 2), with tricube weights (1 − (d/r)³)³ of the distance d
to x₀ (r the largest distance in the neighbourhood) times the robustness weights, and ŷ(x₀) is
the line at x₀. Points within ``delta`` of the last fitted point are not fitted but linearly
interpolated. Robustness iterations reweight each point by the bisquare (1 − u²)² of
u = min(|yᵢ − ŷᵢ|/(6·median|y − ŷ|), 1) and fit again.

The arithmetic follows statsmodels' implementation operation for operation (including NumPy's
pairwise summation of the neighbourhood weights), so the results are the same to the last bit;
the gain is that no array is allocated per point (DESeq2's 50 points: 2.4 ms → µs).
"""

from __future__ import annotations

import numpy as np

from pyflashmm._jit import njit


@njit
def _numpy_sum(a, lo, hi):
    """Σ a[lo:hi] in NumPy's order (``np.sum``'s pairwise summation): sequential below 8
    terms; up to 128 terms 8 running partial sums combined pairwise, then the tail; above,
    the two halves (the first a multiple of 8 long) summed so and added."""
    n = hi - lo
    if n < 8:
        s = -0.0
        for j in range(lo, hi):
            s += a[j]
        return s
    if n > 128:
        half = n // 2
        half -= half % 8
        return _numpy_sum(a, lo, lo + half) + _numpy_sum(a, lo + half, hi)
    r0, r1, r2, r3 = a[lo], a[lo + 1], a[lo + 2], a[lo + 3]
    r4, r5, r6, r7 = a[lo + 4], a[lo + 5], a[lo + 6], a[lo + 7]
    i = 8
    while i < n - (n % 8):
        r0 += a[lo + i]
        r1 += a[lo + i + 1]
        r2 += a[lo + i + 2]
        r3 += a[lo + i + 3]
        r4 += a[lo + i + 4]
        r5 += a[lo + i + 5]
        r6 += a[lo + i + 6]
        r7 += a[lo + i + 7]
        i += 8
    s = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        s += a[lo + i]
        i += 1
    return s


@njit
def _fit_point(x, y, i, left, right, radius, rw, w, fit):
    """ŷ at x[i] from the neighbourhood [left, right): the weighted straight line."""
    xval = x[i]
    for j in range(left, right):
        d = abs(x[j] - xval) / radius
        c = d * d * d
        c = 1.0 - c
        w[j] = c * c * c * rw[j]
    total = _numpy_sum(w, left, right)
    nonzero = 0
    for j in range(left, right):
        if w[j] > 1e-12:
            nonzero += 1
    if nonzero < 2:
        fit[i] = y[i]
        return
    for j in range(left, right):
        w[j] /= total
    mean_x = 0.0
    for j in range(left, right):
        mean_x += w[j] * x[j]
    var_x = 0.0
    for j in range(left, right):
        var_x += w[j] * (x[j] - mean_x) ** 2
    var_x = max(var_x, 1e-12)
    acc = 0.0
    for j in range(left, right):
        acc += w[j] * (1.0 + (xval - mean_x) * (x[j] - mean_x) / var_x) * y[j]
    fit[i] = acc


@njit
def lowess(y, x, frac, iterations, delta):
    """Smoothed values at the (increasing, finite) ``x``; see the module docstring."""
    n = x.size
    k = int(frac * n + 1e-10)
    k = min(max(k, 2), n)
    rw = np.ones(n)
    w = np.zeros(n)
    fit = np.zeros(n)
    for _ in range(iterations + 1):
        fit[:] = 0.0
        i = 0
        last = -1
        left = 0
        right = k
        while True:
            xval = x[i]
            w[:] = 0.0
            while right < n and xval > (x[left] + x[right]) / 2.0:
                left += 1
                right += 1
            radius = max(xval - x[left], x[right - 1] - xval)
            _fit_point(x, y, i, left, right, radius, rw, w, fit)
            if last < i - 1:  # interpolate the points skipped within delta
                denom = x[i] - x[last]
                for j in range(last + 1, i):
                    a = (x[j] - x[last]) / denom
                    fit[j] = a * fit[i] + (1.0 - a) * fit[last]
            last = i
            cut = x[last] + delta
            kk = last
            for kk in range(last + 1, n):
                if x[kk] > cut:
                    break
                if x[kk] == x[last]:
                    fit[kk] = fit[last]
                    last = kk
            i = max(kk - 1, last + 1)
            if last >= n - 1:
                break
        resid = np.abs(y - fit)
        med = np.median(resid)
        for j in range(n):
            u = (1.0 if resid[j] > 0 else 0.0) if med == 0 else resid[j] / (6.0 * med)
            u = min(u, 1.0)
            t = 1.0 - u * u
            rw[j] = t * t
    return fit
