"""Numba kernel of the count-matrix checks: one pass over the stored values."""

from __future__ import annotations

import math

import numpy as np

from pyflashmm._jit import njit


@njit
def count_problems(data):
    """Positions of the first NaN, infinite, negative and non-integer value of ``data`` (1-D).

    Returns an int64 array [nan, inf, negative, non_integer]; −1 where there is none. A first,
    vectorised pass only asks whether every value is a finite non-negative integer; the
    positions are looked for only when one is not (separate NumPy checks would make four
    passes and two temporaries).
    """
    first = np.full(4, -1, dtype=np.int64)
    ok = True
    for i in range(data.shape[0]):  # vectorised: are all values finite non-negative integers?
        v = data[i]
        ok &= (v == np.floor(v)) & (v >= 0.0) & (v < math.inf)  # np.floor: a float
    if ok:
        return first
    for i in range(data.shape[0]):
        v = data[i]
        if v == np.floor(v) and v >= 0.0 and v < math.inf:  # a non-negative integer
            continue
        if math.isnan(v):
            k = 0
        elif math.isinf(v):
            k = 1
        elif v < 0.0:
            k = 2
        else:
            k = 3
        if first[k] < 0:
            first[k] = i
    return first
