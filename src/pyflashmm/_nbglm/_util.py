"""Input checks and small R-compatible helpers shared by the NB-GLM modules."""

from __future__ import annotations

import hashlib

import numpy as np
import scipy.sparse as sp

from pyflashmm._kernels.checks import count_problems


def as_counts(counts, *, allow_non_integer: bool = False, name: str = "counts"):
    """Validate a cells/samples × genes count matrix; return it as float64, dense or CSR.

    Sparse input is kept as CSR (CSR input is not copied when it is float64 already); all
    stored values are checked in one pass (``_kernels.checks.count_problems``).
    """
    if sp.issparse(counts):
        mat = sp.csr_matrix(counts, dtype=np.float64)
        if not mat.has_canonical_format:  # duplicates summed, indices sorted (on a copy)
            mat = mat.copy()
            mat.sum_duplicates()
        data = mat.data
    else:
        if hasattr(counts, "to_numpy"):
            counts = counts.to_numpy()
        mat = np.asarray(counts, dtype=np.float64)
        if mat.ndim != 2:
            raise ValueError(f"{name} must be 2-D (samples × genes), got shape {mat.shape}")
        data = mat
    if mat.shape[0] < 1 or mat.shape[1] < 1:
        raise ValueError(f"{name} is empty: shape {mat.shape}")
    nan, inf, neg, frac = count_problems(np.ascontiguousarray(data).ravel())
    if nan >= 0:
        raise ValueError(f"{name} contains NaN")
    if inf >= 0:
        raise ValueError(f"{name} contains infinite values")
    if neg >= 0:
        where = ""
        if not sp.issparse(mat):
            where = f" (first at {tuple(int(i) for i in np.unravel_index(neg, mat.shape))})"
        raise ValueError(f"{name} contains negative values{where}")
    if not allow_non_integer and frac >= 0:
        raise ValueError(
            f"{name} contains non-integer values; pass allow_non_integer=True for estimated counts"
        )
    return mat


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


_ROW_GROUPS_CACHE: dict = {}


def row_groups(X):
    """Integer label of each distinct row of X (first-appearance order) and group count.

    Memoised on the bytes of X (the pipeline asks for the same design many times).
    """
    X = np.ascontiguousarray(X)
    key = (X.shape, X.dtype.str, hashlib.blake2b(X.tobytes(), digest_size=16).digest())
    hit = _ROW_GROUPS_CACHE.get(key)
    if hit is not None:
        return hit[0].copy(), hit[1]
    _, first, inv = np.unique(X, axis=0, return_index=True, return_inverse=True)
    inv = inv.ravel()
    order = np.argsort(first)
    remap = np.empty_like(order)
    remap[order] = np.arange(order.size)
    lab = remap[inv]
    if len(_ROW_GROUPS_CACHE) >= 8:
        _ROW_GROUPS_CACHE.clear()
    _ROW_GROUPS_CACHE[key] = (lab.copy(), order.size)
    return lab, order.size
