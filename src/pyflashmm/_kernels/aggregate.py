"""Numba kernels that read CSR arrays in place: pseudobulk sums of cell rows per group, and
dense copies of selected rows (gene blocks of the NB GLM)."""

from __future__ import annotations

import numpy as np

from pyflashmm._jit import njit, prange

#: what :func:`count_flaws` finds, in the order the checks report them
FLAW_NONE, FLAW_NON_FINITE, FLAW_NEGATIVE, FLAW_NON_INTEGER = 0, 1, 2, 3


@njit
def count_flaws(values):
    """The first flaw, by priority, of values meant to be counts: NaN/Inf (reported first,
    whatever else there is), a negative value, a non-integer value, or none. One pass, no
    temporary arrays (``values`` of any numeric dtype, flattened)."""
    negative = False
    fraction = False
    for v in values:
        if not np.isfinite(v):
            return FLAW_NON_FINITE
        if v < 0:
            negative = True
        elif not fraction and v != np.floor(v):
            fraction = True
    if negative:
        return FLAW_NEGATIVE
    return FLAW_NON_INTEGER if fraction else FLAW_NONE


#: the groups are split into this many interleaved sets, one parallel task each
GROUP_SETS = 16


@njit(parallel=True)
def add_rows_by_group_csr(out, data, indices, indptr, lab):
    """out[lab[c], j] += Y[c, j] for every stored entry of the CSR chunk Y (in place).

    Reads the CSR arrays as they are (any integer or float dtype), so no converted copy of the
    chunk is made. The groups are split into :data:`GROUP_SETS` interleaved sets (group
    mod the number of sets), one parallel task each: a task adds the rows of its groups' cells,
    in cell order, so every sum is taken in the same order whatever the threads, and no two
    tasks write the same row. Each stored entry is read once overall.
    """
    n_sets = GROUP_SETS
    for t in prange(n_sets):
        for c in range(indptr.shape[0] - 1):
            g = lab[c]
            if g % n_sets != t:
                continue
            for k in range(indptr[c], indptr[c + 1]):
                out[g, indices[k]] += data[k]


@njit
def add_rows_by_group_dense(out, block, lab):
    """out[lab[c], :] += block[c, :] for every row c of a dense chunk (in place), row after row,
    so the sums round exactly as the CSR kernel's (and do not depend on where chunks end)."""
    for c in range(block.shape[0]):
        g = lab[c]
        for j in range(block.shape[1]):
            out[g, j] += block[c, j]


@njit(parallel=True)
def csr_rows_dense(indptr, indices, data, rows, n_cols):
    """Rows ``rows`` of a CSR matrix as a dense float64 array (len(rows) × ``n_cols``).

    Rows are filled in parallel straight from the CSR arrays (no sliced sparse copy first).
    """
    out = np.zeros((rows.shape[0], n_cols))
    for i in prange(rows.shape[0]):
        r = rows[i]
        for k in range(indptr[r], indptr[r + 1]):
            out[i, indices[k]] += data[k]  # duplicates add up, as in scipy's toarray
    return out
