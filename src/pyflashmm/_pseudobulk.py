"""Pseudobulk aggregation: Y_pb[g, :] = Σ_{cells c in group g} Y[c, :].

Groups are the distinct combinations of the ``by`` columns of ``obs`` (in order of first
appearance). Backed or very large inputs are streamed over chunks of cells: sparse chunks are
added entry by entry into the groups × genes output (never densified or converted), dense
chunks through an indicator-matrix product. Memory beyond the output is one chunk.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from pyflashmm._kernels.aggregate import add_rows_by_group_csr


def pseudobulk(counts, obs, by=("sam", "cls"), *, chunk_size: int = 10_000):
    """Summed counts per group of cells and the group table.

    Parameters
    ----------
    counts : array_like, scipy.sparse matrix or AnnData-backed matrix, shape (n_cells, G)
    obs : pandas.DataFrame, n_cells rows, holding the ``by`` columns.
    by : sequence of str
        Grouping columns (e.g. sample and cell type).
    chunk_size : int
        Cells per chunk when streaming.

    Returns
    -------
    (numpy.ndarray of shape (n_groups, G), pandas.DataFrame)
        Summed counts and the group table: the ``by`` columns, ``n_cells`` and ``libsize``
        (total counts of the group).
    """
    if isinstance(by, str):
        by = [by]
    by = list(by)
    if not isinstance(obs, pd.DataFrame):
        raise TypeError("obs must be a pandas DataFrame")
    missing = [b for b in by if b not in obs.columns]
    if missing:
        raise ValueError(f"by: columns {missing} not in obs")
    n = counts.shape[0]
    if len(obs) != n:
        raise ValueError(f"obs has {len(obs)} rows, counts has {n} cells")
    if obs[by].isna().any().any():
        raise ValueError("by columns of obs contain missing values")
    keys = obs[by].astype(str).agg("\x1f".join, axis=1).to_numpy() if len(by) > 1 else (
        obs[by[0]].astype(str).to_numpy())  # fmt: skip
    uniq, first, lab = np.unique(keys, return_index=True, return_inverse=True)
    order = np.argsort(first)
    remap = np.empty_like(order)
    remap[order] = np.arange(order.size)
    lab = remap[lab.ravel()]
    ng = order.size
    G = counts.shape[1]
    out = np.zeros((ng, G))
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        chunk = counts[start:stop]
        if sp.issparse(chunk):
            chunk = chunk.tocsr()
            add_rows_by_group_csr(out, chunk.data, chunk.indices, chunk.indptr, lab[start:stop])
        else:
            ind = sp.csr_matrix(
                (np.ones(stop - start), (lab[start:stop], np.arange(stop - start))),
                shape=(ng, stop - start),
            )
            out += ind @ np.asarray(chunk, dtype=np.float64)
    table = obs.iloc[first[order]][by].reset_index(drop=True).copy()
    table["n_cells"] = np.bincount(lab, minlength=ng)
    table["libsize"] = out.sum(axis=1)
    return out, table
