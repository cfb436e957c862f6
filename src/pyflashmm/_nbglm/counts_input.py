"""The check of a count matrix shared by the NB models and the size factors: numeric,
non-negative, finite and (unless allowed otherwise) integer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from pyflashmm._checks import check_numeric_dtype
from pyflashmm._kernels.checks import count_problems


def as_counts(counts, *, allow_non_integer: bool = False, name: str = "counts"):
    """Validate a cells/samples × genes count matrix; return it as float64, dense or CSR.

    Accepts a NumPy array (or nested lists), a scipy.sparse matrix or a pandas DataFrame held
    in memory; anything else (an h5py or backed AnnData dataset, a lazy array) is a TypeError,
    as is a non-numeric dtype (strings are not converted). Sparse input is kept as CSR (CSR
    input is not copied when it is float64 already); all stored values are checked in one pass
    (``_kernels.checks.count_problems``).
    """
    if sp.issparse(counts):
        check_numeric_dtype(name, counts.dtype)
        mat = sp.csr_matrix(counts, dtype=np.float64)
        if not mat.has_canonical_format:  # duplicates summed, indices sorted (on a copy)
            mat = mat.copy()
            mat.sum_duplicates()
        data = mat.data
    else:
        if isinstance(counts, pd.DataFrame):
            counts = counts.to_numpy()
        elif not isinstance(counts, np.ndarray | list | tuple):
            kind = f"{type(counts).__module__}.{type(counts).__qualname__}"
            raise TypeError(
                f"{name} must be a NumPy array, a scipy.sparse matrix or a pandas DataFrame "
                f"held in memory, got {kind}; load it first (e.g. adata.to_memory() or "
                "np.asarray(dataset[:])), or call pyflashmm.de with the backed file, which "
                "reads it in chunks"
            )
        arr = np.asarray(counts)
        check_numeric_dtype(name, arr.dtype)
        mat = np.asarray(arr, dtype=np.float64)
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
