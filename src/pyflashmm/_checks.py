"""Input validation shared by the public functions: every check names the argument it rejects.

All checks run before any numerical work, so a bad call fails fast with a message a user can act
on (the argument, the shape, the first bad index).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp


class MissingColumnError(ValueError, KeyError):
    """A column or layer that is not there: a ValueError (the project's convention) that code
    catching ``KeyError`` for a missing key also catches; printed without KeyError's quotes."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def is_sparse(a) -> bool:
    return sp.issparse(a)


def check_numeric_dtype(name: str, dtype) -> None:
    """TypeError unless ``dtype`` is a boolean, integer or real floating type."""
    dt = np.dtype(dtype)
    if dt.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers; got dtype {dt}")


def first_nonfinite(values: np.ndarray) -> int | None:
    """Flat index of the first NaN/Inf in ``values`` or None."""
    bad = ~np.isfinite(values)
    if bad.any():
        return int(np.flatnonzero(bad.ravel())[0])
    return None


def check_finite(name: str, a) -> None:
    """ValueError naming ``name`` and the first position of a NaN/Inf (dense or sparse)."""
    if is_sparse(a):
        idx = first_nonfinite(np.asarray(a.data))
        if idx is not None:
            coo = a.tocoo()
            bad = ~np.isfinite(coo.data)
            r, c = int(coo.row[bad][0]), int(coo.col[bad][0])
            raise ValueError(f"{name} contains NaN or Inf (first at row {r}, column {c})")
        return
    arr = np.asarray(a)
    idx = first_nonfinite(arr)
    if idx is not None:
        pos = np.unravel_index(idx, arr.shape)
        raise ValueError(f"{name} contains NaN or Inf (first at index {tuple(map(int, pos))})")


def as_float_matrix(name: str, a, n_rows: int | None = None) -> np.ndarray:
    """A dense, finite, C-contiguous float64 2-D copy/view of ``a``; checks the row count."""
    if is_sparse(a):
        a = a.toarray()
    arr = np.asarray(a)
    check_numeric_dtype(name, arr.dtype)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D matrix; got {arr.ndim} dimensions")
    if n_rows is not None and arr.shape[0] != n_rows:
        raise ValueError(f"{name} has {arr.shape[0]} rows but Y has {n_rows} cells (rows)")
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    check_finite(name, arr)
    return arr


def check_block_sizes(d, q: int, name: str = "d") -> np.ndarray:
    """Validate the random-effect block sizes ``d`` (positive integers summing to q)."""
    if d is None:
        d = [q]
    arr = np.atleast_1d(np.asarray(d))
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty sequence of block sizes; got {d!r}")
    if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers; got dtype {arr.dtype}")
    if np.any(arr <= 0):
        raise ValueError(f"{name} must hold positive block sizes; got {arr.tolist()}")
    if int(arr.sum()) != q:
        raise ValueError(
            f"sum({name}) = {int(arr.sum())} must equal q = {q}, the number of columns of Z"
        )
    return arr.astype(np.int64)


def aliased_columns(XX: np.ndarray, rtol: float = 1e-10) -> list[int]:
    """Indices of columns of X that are linear combinations of earlier columns, from XᵀX.

    Greedy Gram–Schmidt on the Gram matrix: column j is aliased when its squared residual after
    projection on the kept earlier columns is ≤ ``rtol`` × its squared norm.
    """
    p = XX.shape[0]
    kept: list[int] = []
    aliased: list[int] = []
    for j in range(p):
        norm2 = XX[j, j]
        if norm2 <= 0:
            aliased.append(j)
            continue
        if kept:
            G = XX[np.ix_(kept, kept)]
            b = XX[kept, j]
            coef = np.linalg.lstsq(G, b, rcond=None)[0]
            resid = norm2 - b @ coef
        else:
            resid = norm2
        if resid <= rtol * norm2:
            aliased.append(j)
        else:
            kept.append(j)
    return aliased


def check_full_rank(XX: np.ndarray, names: Sequence[str], name: str = "X") -> None:
    """ValueError naming the aliased columns when X is not of full column rank."""
    bad = aliased_columns(XX)
    if bad:
        cols = ", ".join(repr(names[j]) for j in bad)
        raise ValueError(
            f"{name} is not of full column rank: column(s) {cols} are linear combinations of "
            "earlier columns (or all zero); drop them or reparametrise the design"
        )


def default_names(prefix: str, k: int) -> list[str]:
    return [f"{prefix}{j}" for j in range(k)]


def check_names(name: str, names, k: int, prefix: str) -> list[str]:
    if names is None:
        return default_names(prefix, k)
    names = [str(x) for x in names]
    if len(names) != k:
        raise ValueError(f"{name} has {len(names)} entries but there are {k} columns")
    return names
