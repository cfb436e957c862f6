"""Pseudobulk aggregation: Y_pb[g, :] = Σ_{cells c in group g} Y[c, :].

Groups are the distinct combinations of the ``by`` columns of the cell table (in order of
first appearance). Backed or very large inputs are streamed over chunks of cells: sparse chunks
are added entry by entry into the groups × genes output (never densified or converted), dense
chunks through an indicator-matrix product. Memory beyond the output is one chunk.

The group table keeps, besides the ``by`` columns, every cell-table column that is constant
within each group (a donor's condition, age, sex, batch, …), as decoupler's pseudobulk does, so
that a sample-level design can be built from it directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from pyflashmm import _distributed as _dist
from pyflashmm._design import check_columns_exist, check_no_nan
from pyflashmm._kernels.aggregate import (
    FLAW_NEGATIVE,
    FLAW_NON_FINITE,
    FLAW_NON_INTEGER,
    add_rows_by_group_csr,
    add_rows_by_group_dense,
    count_flaws,
)


def _as_frame_by(by) -> list[str]:
    if by is None:
        raise TypeError(
            "by: give the column(s) that define a pseudobulk sample, e.g. by='donor_id' or "
            "by=['donor_id', 'cell_type']"
        )
    cols = [by] if isinstance(by, str) else list(by)
    if not cols or not all(isinstance(c, str) for c in cols):
        raise TypeError(f"by must be a column name or a list of column names; got {by!r}")
    if len(set(cols)) != len(cols):
        raise ValueError(f"by: columns are repeated: {cols}")
    return cols


def group_labels(obs: pd.DataFrame, by: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The group of every cell (0, 1, … in order of first appearance) and the first cell of
    each group."""
    check_columns_exist(obs, by, "by", "the pseudobulk grouping")
    check_no_nan(obs, by, "by")
    codes = [pd.factorize(obs[b], sort=False)[0].astype(np.int64) for b in by]
    key = codes[0]
    for c in codes[1:]:
        key = key * (int(c.max()) + 1) + c
    _, first, lab = np.unique(key, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    remap = np.empty_like(order)
    remap[order] = np.arange(order.size)
    return remap[lab.ravel()], first[order]


def sample_table(obs: pd.DataFrame, by: list[str]) -> tuple[np.ndarray, pd.DataFrame]:
    """The group of every cell and the group table: the ``by`` columns and every other column
    of ``obs`` that is constant within each group (a categorical keeps its categories)."""
    lab, first = group_labels(obs, by)
    table = obs.iloc[first][by].reset_index(drop=True)
    for col in obs.columns:
        if col in by:
            continue
        codes = pd.factorize(obs[col], sort=False, use_na_sentinel=False)[0]
        if np.array_equal(codes, codes[first][lab]):
            table[col] = obs[col].iloc[first].reset_index(drop=True)
    return lab, table


def varying_example(obs: pd.DataFrame, lab: np.ndarray, col: str):
    """Two values of ``col`` that differ within one group (for messages)."""
    codes = pd.factorize(obs[col], sort=False, use_na_sentinel=False)[0]
    first_code = np.full(lab.max() + 1, -1)
    first_code[lab[::-1]] = codes[::-1]
    i = int(np.flatnonzero(codes != first_code[lab])[0])
    j = int(np.flatnonzero(lab == lab[i])[0])
    return obs[col].iloc[j], obs[col].iloc[i]


def _kernel_dtype(dtype: np.dtype) -> bool:
    """Values the Numba kernels read as stored: native-order integers, float32 and float64."""
    return dtype.isnative and (dtype.kind in "iu" or dtype in (np.float32, np.float64))


def _check_chunk(block, start: int, allow_non_integer: bool) -> None:
    values = block.data if sp.issparse(block) else block
    if values.dtype.kind not in "biuf":
        raise TypeError(f"counts must hold real numbers; got dtype {values.dtype}")
    if values.size == 0:
        return
    flaw = count_flaws(np.ravel(values))  # one pass (the chunks of an atlas are large)
    if flaw == FLAW_NON_FINITE:
        raise ValueError(f"counts contain NaN or Inf (cells {start}:{start + block.shape[0]})")
    if flaw == FLAW_NEGATIVE:
        raise ValueError(
            f"counts contain negative values (cells {start}:{start + block.shape[0]}): a "
            "pseudobulk sums raw counts; pass the counts layer (layer='counts')"
        )
    if not allow_non_integer and flaw == FLAW_NON_INTEGER:
        raise ValueError(
            f"counts contain non-integer values (cells {start}:{start + block.shape[0]}): they "
            "look normalised or log-transformed, and a pseudobulk sums raw counts; pass the "
            "counts layer (layer='counts'), or allow_non_integer=True for estimated counts"
        )


def pseudobulk(data, obs=None, by=None, *, layer=None, gene_names=None,
               allow_non_integer: bool = False, chunk_size: int = 10_000,
               scheduler=None):  # fmt: skip
    """Summed counts per group of cells and the group table.

    Parameters
    ----------
    data : AnnData, or array_like / scipy.sparse / backed matrix of shape (n_cells, G)
        Counts, cells × genes. An AnnData (in memory or backed) gives ``obs`` and gene names.
    obs : pandas.DataFrame, optional
        One row per cell, holding the ``by`` columns (required unless ``data`` is an AnnData).
    by : str or sequence of str
        Grouping columns: the sample (e.g. ``"donor_id"``) and, for per-cell-type pseudobulks,
        the cell type (``["donor_id", "cell_type"]``).
    layer : str, optional
        AnnData layer holding the counts (default ``X``).
    gene_names : sequence of str, optional
        Default: the AnnData's ``var_names``, a DataFrame's columns, or ``gene0, gene1, …``.
    allow_non_integer : bool
        Accept non-integer values (estimated counts); by default they are an error, since
        summing normalised or log-transformed values is not a pseudobulk.
    chunk_size : int
        Cells per chunk when streaming (a dask array is read in its own row chunks).
    scheduler : None, False, str or dask.distributed.Client
        Where the chunks are summed: ``None`` (default) on the active Dask client's workers if
        there is one, else here; ``False`` here; a ``Client`` or a scheduler address on its
        workers (which read backed ``.h5ad``/``.zarr`` counts from the file themselves). The
        sums are bitwise the same either way (see :func:`pyflashmm.summary_stats`).

    Returns
    -------
    counts : pandas.DataFrame, groups × genes
        Summed counts (float64), columns = gene names, index = sample names (the ``by`` values
        joined by ``"_"``).
    groups : pandas.DataFrame
        One row per group, same index: the ``by`` columns, every obs column constant within the
        groups, ``n_cells`` and ``libsize`` (the group's total count).

    Raises
    ------
    TypeError, ValueError
        Missing ``by``, columns not in ``obs``, missing values in them, negative, NaN or
        non-numeric counts.
    """
    from pyflashmm._frontend.inputs import open_cells

    by = _as_frame_by(by)
    if obs is None:
        cells = open_cells(data, layer)
    else:
        cells = open_cells((data, obs), None)
        if layer is not None:
            raise ValueError("layer: only an AnnData has layers; pass the counts matrix itself")
    try:
        with _dist.client_for(scheduler) as client:
            return _pseudobulk(cells, by, gene_names, chunk_size, allow_non_integer, client)
    finally:
        cells.close()


def _pseudobulk(cells, by, gene_names, chunk_size, allow_non_integer=False, client=None):
    if not isinstance(chunk_size, int | np.integer) or chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive integer; got {chunk_size!r}")
    n, G = cells.shape
    if len(cells.obs) != n:
        raise ValueError(f"obs has {len(cells.obs)} rows, counts has {n} cells")
    genes = cells.gene_names if gene_names is None else [str(g) for g in gene_names]
    if len(genes) != G:
        raise ValueError(f"gene_names has {len(genes)} entries for {G} genes")
    lab, table = sample_table(cells.obs, by)
    return sum_counts(cells, lab, table, by, genes, chunk_size, allow_non_integer, client)


@dataclass(frozen=True)
class _SumOp:
    """The kernels of the pseudobulk sums for :func:`pyflashmm._distributed.sum_range`: a
    leaf's partial sum is the groups × genes table from zero; args are the cells' groups."""

    n_groups: int
    G: int
    allow_non_integer: bool

    def prepare(self, chunk, start, stop):
        # the kernels read native int/float32/float64 values as stored and add them to float64
        # sums exactly as a float64 copy would (no copy is made); other numbers (bool,
        # float16, long double, big-endian) are converted first, as Numba cannot read them
        if sp.issparse(chunk):
            chunk = sp.csr_matrix(chunk)
            if not chunk.has_canonical_format:
                chunk = chunk.copy()
                chunk.sum_duplicates()
        else:
            chunk = np.asarray(chunk)
        if chunk.dtype.kind in "biuf" and not _kernel_dtype(chunk.dtype):
            chunk = chunk.astype(np.float64)
        if chunk.shape != (stop - start, self.G):
            raise ValueError(
                f"counts[{start}:{stop}] has shape {chunk.shape}; expected {(stop - start, self.G)}"
            )
        _check_chunk(chunk, start, self.allow_non_integer)
        if sp.issparse(chunk):
            chunk.data = np.ascontiguousarray(chunk.data)
            return chunk
        return np.ascontiguousarray(chunk)

    def zeros(self):
        return (np.zeros((self.n_groups, self.G)),)

    def add(self, chunk, r0, r1, acc, lab, offset):
        labs = lab[offset : offset + r1 - r0]
        if sp.issparse(chunk):  # the kernel reads rows r0:r1 through their slice of indptr
            add_rows_by_group_csr(acc[0], chunk.data, chunk.indices, chunk.indptr[r0 : r1 + 1],
                                  labs)  # fmt: skip
        else:
            add_rows_by_group_dense(acc[0], chunk[r0:r1], labs)


def _sum_integer_counts(op, counts, n, chunk_size, lab, where) -> np.ndarray:
    """The groups × genes sums of integer counts, added chunk after chunk into one table.

    Every value is a non-negative integer (``op.prepare`` checks each chunk), so every partial
    sum is an integer no larger than the final one; while that is below 2**53, float64 adds
    them exactly and the result does not depend on the order of the additions: it is bitwise
    the tree sum of :func:`pyflashmm._distributed.chunk_sum`, without a zeroed groups × genes
    table per leaf of 4,096 cells. A larger total (never seen with real counts) is summed by
    the tree instead.
    """
    out = np.zeros((op.n_groups, op.G))
    rows = _dist.RowReader(counts)  # one reader: its arrays are reused from chunk to chunk
    for a, b in _dist.row_chunks(counts, n, chunk_size):
        block = op.prepare(_dist.read_block(rows, a, b, where), a, b)
        op.add(block, 0, b - a, (out,), lab[a:b], 0)
    if out.size and out.max() >= 2.0**53:
        (out,) = _dist.chunk_sum(op, counts, n, chunk_size, lambda a, b: lab[a:b], where=where)
    return out


def sum_counts(cells, lab, table, by, genes, chunk_size, allow_non_integer=False, client=None):
    """The summed counts of each group (groups × genes DataFrame) and the group table with
    ``n_cells`` and ``libsize`` added, both indexed by sample name.

    The cells are summed leaf by leaf in the fixed tree order of
    :mod:`pyflashmm._distributed`, here or (``client``) on Dask workers: bitwise the same.
    Integer counts summed here skip the leaves (:func:`_sum_integer_counts`: exact sums, so
    bitwise the same too)."""
    n, G = cells.shape
    ng = len(table)
    lab = np.asarray(lab, dtype=np.int64)
    op = _SumOp(ng, G, bool(allow_non_integer))
    if client is None and not allow_non_integer:
        out = _sum_integer_counts(op, cells.counts, n, chunk_size, lab, cells.where)
    else:
        (out,) = _dist.chunk_sum(op, cells.counts, n, chunk_size, lambda a, b: lab[a:b],
                                 client=client, where=cells.where)  # fmt: skip
    table = table.copy()
    table["n_cells"] = np.bincount(lab, minlength=ng)
    table["libsize"] = out.sum(axis=1)
    names = table[by].astype(str).agg("_".join, axis=1) if len(by) > 1 else (
        table[by[0]].astype(str))  # fmt: skip
    index = pd.Index(names, name="sample") if names.is_unique else pd.RangeIndex(ng, name="sample")
    table.index = index
    return pd.DataFrame(out, index=index, columns=pd.Index(genes)), table
