"""The structure of a design that every NB GLM stage uses, derived once per fit.

A design X (m × p) has R distinct rows x_q; sample j has design row lab_j (numbered by first
appearance). Samples that also share a size factor s have one fitted mean μ for any
coefficients, so the kernels sum over those classes instead of over samples
(``_kernels.nb_layout``). :func:`design_layout` derives the rows, the replicate counts (samples
per design row, for Cook's distances and outlier replacement), the group-design flag (R = p:
DESeq2's ``linearMu`` rule) and the least-squares start of the IRLS; :func:`sample_classes`
adds the size factors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pyflashmm._kernels.nb_layout import DesignRows, SampleClasses


@dataclass(frozen=True)
class DesignLayout:
    """A design X and its distinct rows (module docstring).

    Attributes
    ----------
    X : ndarray, m × p
        The design (float64, in the memory order it was given).
    rows : DesignRows
        The kernels' bundle: distinct rows ``Xr`` (R × p, first-appearance order), the row
        ``lab`` of every sample, the samples sorted by row and the row offsets.
    row_size : ndarray, R
        Samples per distinct row.
    replicates : ndarray, m
        Samples sharing each sample's design row (itself included).
    start : ndarray, p × R, or None
        The IRLS start map P: β₀ = P · (per-row sums of ln(y/s + 0.1)) is the least-squares
        fit of ln(y/s + 0.1) on X (from X = QR: P = R⁻¹ Qᵀ restricted to one sample per row,
        since the rows of Q of equal rows of X are equal). None when p = 0.
    """

    X: np.ndarray
    rows: DesignRows
    row_size: np.ndarray
    replicates: np.ndarray
    start: np.ndarray | None

    @property
    def m(self) -> int:
        return self.X.shape[0]

    @property
    def p(self) -> int:
        return self.X.shape[1]

    @property
    def n_rows(self) -> int:
        """R, the number of distinct rows."""
        return self.row_size.size

    @property
    def is_group(self) -> bool:
        """As many distinct rows as columns: the fitted means are the row means of y/s."""
        return self.n_rows == self.p

    @property
    def intercept_only(self) -> bool:
        """X is a single column of ones (the closed-form intercept fit applies)."""
        return self.p == 1 and bool(np.all(self.X == 1.0))

    def replicated(self, n) -> np.ndarray:
        """Samples whose design row occurs at least ``n`` times (m booleans)."""
        return self.replicates >= n


def row_labels(X: np.ndarray) -> tuple[np.ndarray, int]:
    """Label of every row of X among its distinct rows (first-appearance order) and their
    number.

    Rows are told apart column by column (the codes of each column's distinct values, combined
    with those of the columns before and renumbered), which sorts m numbers per column instead
    of m rows of p: the same groups as comparing whole rows (values equal as floats).
    """
    m, p = X.shape
    if p == 0:
        return np.zeros(m, dtype=np.int64), 1
    key = np.zeros(m, dtype=np.int64)
    for k in range(p):
        _, code = np.unique(X[:, k], return_inverse=True)
        _, key = np.unique(key * (int(code.max()) + 1) + code.ravel(), return_inverse=True)
    _, first, inv = np.unique(key, return_index=True, return_inverse=True)
    order = np.argsort(first)
    remap = np.empty_like(order)
    remap[order] = np.arange(order.size)
    return remap[inv.ravel()].astype(np.int64), order.size


def design_layout(X, *, coarsens: DesignLayout | None = None) -> DesignLayout:
    """The :class:`DesignLayout` of X (m × p, p ≥ 0).

    ``coarsens``: the layout of a design whose rows determine those of X sample by sample (X
    made from it by dropping columns or as X·N, e.g. the reduced design of a contrast); the
    distinct rows of X are then looked for among its R rows instead of the m samples (the
    same labels: parent rows are numbered by first appearance, so the first appearance of a
    row of X is that of its first parent row).

    X keeps its memory order (a DataFrame's values are usually column-major): the NumPy
    products of the L-BFGS-B fallback depend on it in the last bit.
    """
    X = np.asarray(X, dtype=np.float64)
    m, p = X.shape
    if coarsens is None:
        lab, R = row_labels(X)
    else:
        parent = coarsens.rows.lab
        first = np.empty(coarsens.n_rows, dtype=np.int64)
        first[parent[::-1]] = np.arange(m)[::-1]
        lab_r, R = row_labels(X[first])
        lab = lab_r[parent]
    lab = np.ascontiguousarray(lab, dtype=np.int64)
    Xr = np.empty((R, p))
    Xr[lab] = X
    order = np.argsort(lab, kind="stable").astype(np.int64)
    size = np.bincount(lab, minlength=R)
    off = np.zeros(R + 1, np.int64)
    off[1:] = np.cumsum(size)
    start = None
    if p > 0:
        q, r = np.linalg.qr(X)
        first = np.empty(R, dtype=np.int64)
        first[lab[::-1]] = np.arange(m)[::-1]
        start = np.ascontiguousarray(np.linalg.solve(r, q[first].T))
    rows = DesignRows(np.ascontiguousarray(Xr, dtype=np.float64), lab, order, off)
    return DesignLayout(X, rows, size, size[lab], start)


def sample_classes(sf, layout: DesignLayout, *, shared: bool = True) -> SampleClasses:
    """Classes of samples sharing a size factor and a design row, numbered by design row and,
    within a row, by size factor; with ``shared=False``, or when no two samples share both,
    every sample is its own class (numbered in the row order of ``layout.rows.order``)."""
    sf = np.ascontiguousarray(sf, dtype=np.float64)
    lab = layout.rows.lab
    m, R = lab.size, layout.n_rows
    if shared:
        order = np.lexsort((sf, lab))  # the distinct (row, size factor) pairs, sorted
        ls, ss = lab[order], sf[order]
        first = np.ones(m, dtype=bool)
        first[1:] = (ls[1:] != ls[:-1]) | (ss[1:] != ss[:-1])
        n_cls = int(np.count_nonzero(first))
        if n_cls < m:
            cls = np.empty(m, np.int64)
            cls[order] = np.cumsum(first) - 1
            size = np.bincount(cls, minlength=n_cls).astype(np.float64)
            off = np.zeros(R + 1, np.int64)
            off[1:] = np.cumsum(np.bincount(ls[first], minlength=R))
            csf = np.empty(n_cls)
            clab = np.empty(n_cls, np.int64)
            csf[cls] = sf
            clab[cls] = lab
            return SampleClasses(cls, size, csf, clab, off)
    order = layout.rows.order
    cls = np.empty(m, np.int64)
    cls[order] = np.arange(m)
    return SampleClasses(cls, np.ones(m), sf[order], lab[order], layout.rows.offsets.copy())
