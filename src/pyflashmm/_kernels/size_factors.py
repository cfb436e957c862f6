"""Size-factor kernels: gene geometric means and per-sample median ratios (DESeq2).

With counts y_ji (sample j, gene i; m samples):

* ``ratio``: ln g_i = Σ_j ln y_ji / m (−inf when a count is 0) and
  s_j = exp(median_i [ln y_ji − ln g_i]) over the genes with finite ln g_i;
* ``poscounts``: ln g_i = Σ_{y_ji > 0} ln y_ji / m (m counts every sample) and the median
  over the positive counts of genes with a positive count (the factors are then rescaled to
  geometric mean 1 by the caller).

Logarithms of small integer counts are looked up in a table of ``math.log`` values (the same
values, without the calls).
"""

from __future__ import annotations

import math

import numpy as np

from pyflashmm._jit import njit, prange
from pyflashmm._kernels.order_stats import median_inplace

#: row chunks of ``log_geo_means_csr`` (fixed, so the sums do not depend on the thread count)
GEO_CHUNKS = 16

#: ln k for the integer counts k < LOG_TABLE_SIZE is looked up (the same values as math.log)
LOG_TABLE_SIZE = 4096


@njit
def _log_table():
    """ln k for k = 0..LOG_TABLE_SIZE−1 (−inf at 0), from ``math.log``."""
    t = np.empty(LOG_TABLE_SIZE)
    t[0] = -np.inf
    for k in range(1, LOG_TABLE_SIZE):
        t[k] = math.log(k)
    return t


@njit
def _log_count(v, table):
    """ln v (v > 0): looked up for small integer counts, else ``math.log`` (same values)."""
    if v < LOG_TABLE_SIZE:
        k = int(v)
        if k == v:
            return table[k]
    return math.log(v)


@njit
def add_log_positive(indptr, indices, data, lo, hi, part, npos):
    """Add ln y of every positive entry of CSR rows ``lo:hi`` to ``part`` at its column and
    count it in ``npos``, rows in order (one row range of :func:`log_geo_means_csr`; the
    distributed size factors add a range read in pieces with the same calls, in the same
    order)."""
    table = _log_table()
    for j in range(lo, hi):
        for t in range(indptr[j], indptr[j + 1]):
            v = data[t]
            if v > 0.0:
                i = indices[t]
                part[i] += _log_count(v, table)
                npos[i] += 1


@njit(parallel=True)
def log_geo_means_csr(indptr, indices, data, G):
    """ln g_i = Σ_{y_ji > 0} ln y_ji / m of every column i of an m×G CSR matrix; −inf for a
    column without a positive entry (DESeq2's poscounts geometric means).

    The rows are split into ``GEO_CHUNKS`` fixed ranges summed in parallel (each in row
    order), and the partial sums are added in chunk order.
    """
    m = indptr.shape[0] - 1
    part = np.zeros((GEO_CHUNKS, G))
    npos = np.zeros((GEO_CHUNKS, G), dtype=np.int64)
    for ch in prange(GEO_CHUNKS):
        add_log_positive(indptr, indices, data, m * ch // GEO_CHUNKS, m * (ch + 1) // GEO_CHUNKS,
                         part[ch], npos[ch])  # fmt: skip
    out = np.empty(G)
    for i in range(G):
        s = 0.0
        n = 0
        for ch in range(GEO_CHUNKS):
            s += part[ch, i]
            n += npos[ch, i]
        out[i] = s / m if n > 0 else -np.inf
    return out


@njit(parallel=True)
def median_log_ratios_csr(indptr, indices, data, loggeo):
    """exp(median of ln y − ln g over the positive entries on usable genes) of each CSR row.

    Returns NaN for a row without such an entry.
    """
    m = indptr.shape[0] - 1
    out = np.empty(m)
    table = _log_table()
    for j in prange(m):
        lo = indptr[j]
        hi = indptr[j + 1]
        buf = np.empty(hi - lo)
        k = 0
        for t in range(lo, hi):
            v = data[t]
            lg = loggeo[indices[t]]
            if v > 0.0 and np.isfinite(lg):
                buf[k] = _log_count(v, table) - lg
                k += 1
        out[j] = math.exp(median_inplace(buf, k)) if k > 0 else np.nan
    return out


@njit(parallel=True)
def log_geo_means_dense(Y):
    """ln g_i = Σ_j ln y_ji / m of every column i of a dense m×G matrix; −inf for a column
    with a zero. The sums are compensated (Neumaier), so they are as accurate as R's
    ``rowMeans`` with its long-double accumulation (DESeq2's geometric means), within an ulp."""
    m, G = Y.shape
    out = np.empty(G)
    table = _log_table()
    for i in prange(G):
        s = 0.0
        c = 0.0
        zero = False
        for j in range(m):
            v = Y[j, i]
            if v <= 0.0:
                zero = True
                break
            x = _log_count(v, table)
            t = s + x
            c += (s - t) + x if abs(s) >= abs(x) else (x - t) + s
            s = t
        out[i] = -np.inf if zero else (s + c) / m
    return out


@njit(parallel=True)
def median_log_ratios_dense(Y, loggeo):
    """``median_log_ratios_csr`` for a dense m×G matrix: exp(median of ln y − ln g over the
    positive entries on genes with finite ln g) of each row; NaN for a row without one."""
    m, G = Y.shape
    out = np.empty(m)
    table = _log_table()
    for j in prange(m):
        buf = np.empty(G)
        k = 0
        for i in range(G):
            v = Y[j, i]
            lg = loggeo[i]
            if v > 0.0 and np.isfinite(lg):
                buf[k] = _log_count(v, table) - lg
                k += 1
        out[j] = math.exp(median_inplace(buf, k)) if k > 0 else np.nan
    return out
