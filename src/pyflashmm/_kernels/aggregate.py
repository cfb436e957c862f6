"""Numba kernel of pseudobulk aggregation: sums of cell rows per group, straight from CSR."""

from __future__ import annotations

from pyflashmm._jit import njit


@njit
def add_rows_by_group_csr(out, data, indices, indptr, lab):
    """out[lab[c], j] += Y[c, j] for every stored entry of the CSR chunk Y (in place).

    Reads the CSR arrays as they are (any integer or float dtype), so no converted copy of the
    chunk is made; the work is one pass over the stored entries.
    """
    for c in range(indptr.shape[0] - 1):
        g = lab[c]
        for k in range(indptr[c], indptr[c + 1]):
            out[g, indices[k]] += data[k]
