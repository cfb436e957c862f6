"""Numba kernels that accumulate the per-gene summary statistics XᵀY, ZᵀY and Σy².

Notation: Y is cells × genes (n × G); the designs enter as one CSR matrix W = [X | Z]
(n × (p + q); arrays ``w_indptr``, ``w_indices``, ``w_data``), so the exact zeros of one-hot
design columns cost nothing. The kernels *add* into the accumulator ``WY`` ((p + q) × G,
i.e. [XᵀY; ZᵀY], one contiguous row per design column) and ``Ynorm`` (G), so a caller can
stream cell chunks through them. ``transform`` codes: 0 none, 1 ``log(1 + y)``, 2
``log2(1 + y)``; every transform maps 0 to 0, so sparse data stays sparse.

Determinism: work is split either over *genes* (blocks of columns: each gene's sums are taken
in cell order) or over fixed blocks of cells whose partial sums are added in block order; the
blocks never depend on the number of threads, so results are bit-identical for any thread count.
"""

from __future__ import annotations

import numpy as np

from pyflashmm._jit import njit, prange

TRANSFORM_CODES = {None: 0, "log1p": 1, "log2p1": 2}
#: integer counts below this are transformed by table lookup
TABLE_SIZE = 4096


def transform_table(code: int) -> np.ndarray:
    """f(0), f(1), …, f(TABLE_SIZE − 1) for transform ``code`` (computed with NumPy)."""
    k = np.arange(TABLE_SIZE, dtype=np.float64)
    if code == 1:
        return np.log1p(k)
    if code == 2:
        return np.log1p(k) * _INV_LOG2
    return k


_INV_LOG2 = 1.0 / np.log(2.0)


@njit
def _apply(value, transform, table):
    """The transformed value in float64 (float32 counts are widened before the log).

    Integer values below ``len(table)`` (most counts) are looked up in ``table``, the transform
    precomputed with NumPy for 0, 1, 2, …; others are computed.
    """
    x = np.float64(value)
    if transform == 0:
        return x
    if 0.0 <= x < table.shape[0]:
        k = int(x)
        if k == x:
            return table[k]
    if transform == 1:
        return np.log1p(x)
    return np.log1p(x) * _INV_LOG2


@njit
def _add_cell_gene(g, i, y, w_indptr, w_indices, w_data, WY, Ynorm):
    for k in range(w_indptr[i], w_indptr[i + 1]):
        WY[w_indices[k], g] += y * w_data[k]
    Ynorm[g] += y * y


@njit(parallel=True)
def accumulate_csr(
    indptr, indices, data, gene_bounds, w_indptr, w_indices, w_data, transform, table, WY, Ynorm
):
    """Add the statistics of CSR rows (cells) into the accumulators.

    ``indptr`` has n + 1 entries indexing ``indices``/``data`` (sorted column indices within each
    row). ``gene_bounds`` splits genes into blocks processed in parallel; within a block each row's
    entries are located by binary search, so every stored value is read once overall. A cell's
    values in the block are transformed once, then added along the rows of ``WY`` of the cell's
    design columns (contiguous, in gene order).
    """
    n = indptr.shape[0] - 1
    n_blocks = gene_bounds.shape[0] - 1
    for b in prange(n_blocks):
        g_lo = gene_bounds[b]
        g_hi = gene_bounds[b + 1]
        ys = np.empty(g_hi - g_lo)
        genes = np.empty(g_hi - g_lo, np.int64)
        for i in range(n):
            start = indptr[i]
            end = indptr[i + 1]
            if start == end:
                continue
            row = indices[start:end]
            k0 = start + np.searchsorted(row, g_lo)
            m = start + np.searchsorted(row, g_hi) - k0
            for t in range(m):
                g = indices[k0 + t]
                y = _apply(data[k0 + t], transform, table)
                ys[t] = y
                genes[t] = g
                Ynorm[g] += y * y
            for kw in range(w_indptr[i], w_indptr[i + 1]):
                target = WY[w_indices[kw]]
                w = w_data[kw]
                for t in range(m):
                    target[genes[t]] += ys[t] * w


@njit(parallel=True)
def csr_cell_block_partials(
    indptr, indices, data, cell_bounds, w_indptr, w_indices, w_data, transform, table, parts, norms
):
    """The statistics of each fixed block of CSR rows, into its own zeroed partial sums.

    Block b scans rows ``cell_bounds[b]:cell_bounds[b+1]`` linearly (contiguous memory) into
    ``parts[b]``/``norms[b]``, blocks in parallel; the caller adds the partials in a fixed
    order, so the result is bit-identical for any number of threads.
    """
    n_blocks = cell_bounds.shape[0] - 1
    for b in prange(n_blocks):
        part = parts[b]
        norm = norms[b]
        for i in range(cell_bounds[b], cell_bounds[b + 1]):
            for k in range(indptr[i], indptr[i + 1]):
                y = _apply(data[k], transform, table)
                _add_cell_gene(indices[k], i, y, w_indptr, w_indices, w_data, part, norm)


@njit(parallel=True)
def accumulate_csc(indptr, indices, data, w_indptr, w_indices, w_data, transform, table, WY, Ynorm):
    """Add the statistics of CSC columns (genes); one gene per parallel iteration."""
    G = indptr.shape[0] - 1
    for g in prange(G):
        for k in range(indptr[g], indptr[g + 1]):
            y = _apply(data[k], transform, table)
            _add_cell_gene(g, indices[k], y, w_indptr, w_indices, w_data, WY, Ynorm)


@njit(parallel=True)
def accumulate_dense(Y, gene_bounds, w_indptr, w_indices, w_data, transform, table, WY, Ynorm):
    """Add the statistics of a dense C-order cells × genes block; zeros are skipped."""
    n = Y.shape[0]
    n_blocks = gene_bounds.shape[0] - 1
    for b in prange(n_blocks):
        for i in range(n):
            for g in range(gene_bounds[b], gene_bounds[b + 1]):
                v = Y[i, g]
                if v == 0.0:
                    continue
                y = _apply(v, transform, table)
                _add_cell_gene(g, i, y, w_indptr, w_indices, w_data, WY, Ynorm)
