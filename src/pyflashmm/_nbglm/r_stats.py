"""R's summaries where the NB GLM must round as DESeq2 does: ``mean(x, trim=)``, ``mad``
and the default (type 7) ``quantile``."""

from __future__ import annotations

import numpy as np


def trimmed_mean(x, trim, axis=-1):
    """R's ``mean(x, trim=)``: drop floor(n·trim) values at each end of the sorted data."""
    x = np.sort(np.asarray(x, dtype=np.float64), axis=axis)
    n = x.shape[axis]
    if trim <= 0 or n == 0:
        return x.mean(axis=axis)
    if trim >= 0.5:
        return np.median(x, axis=axis)
    lo = int(np.floor(n * trim))
    hi = n - lo
    return np.take(x, np.arange(lo, hi), axis=axis).mean(axis=axis)


def mad(x):
    """R's ``mad``: 1.4826 · median |x − median(x)|."""
    x = np.asarray(x, dtype=np.float64)
    return 1.4826 * np.median(np.abs(x - np.median(x)))


def r_quantile(x, probs):
    """R's default (type 7) quantile."""
    return np.quantile(np.asarray(x, dtype=np.float64), probs, method="linear")
