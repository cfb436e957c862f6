"""Summary statistics of a linear mixed model: everything the LMM fit needs, computed in one pass.

Notation (FLASHMM's names; Y is cells × genes, n × G):

=========  ===========  =====================================================
name       shape        definition
=========  ===========  =====================================================
``XX``     p × p        XᵀX
``XY``     p × G        XᵀY
``ZX``     q × p        ZᵀX
``ZY``     q × G        ZᵀY
``ZZ``     q × q        ZᵀZ
``Ynorm``  G            Σ_cells y²  (per gene)
``n``      scalar       number of cells
``d``      K            sizes of the random-effect blocks, Σ d = q
=========  ===========  =====================================================

X, Z and d come from a :class:`~pyflashmm.Design` (``summary_stats(Y, design)``, which also
carries the names: of the coefficients, of Z's columns, of the random-effect blocks and of their
levels, so that the fit can name its variance components and BLUPs) or are given as matrices
(``summary_stats(Y, X, Z, d)``, FLASHMM's call).

Every statistic is a sum over cells, so the statistics of disjoint cell chunks add up:
``summary_stats(Y[a]) + summary_stats(Y[b]) == summary_stats(Y[a ∪ b])``. Y is read chunk by chunk
(``chunk_size`` cells at a time) and sparse Y is never densified; the extra memory is
O(chunk + (p + q)·G).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp
from tqdm.auto import tqdm

from pyflashmm import _checks
from pyflashmm import _distributed as _dist
from pyflashmm._design import Design
from pyflashmm._jit import num_threads
from pyflashmm._kernels import sumstats as _k

#: default number of cells per chunk (2 leaves of the reduction tree): at the TB atlas's shape
#: a chunk of 8,192 cells holds ~85 MB of counts; 16,384-cell chunks added 0.17 GB to the peak
DEFAULT_CHUNK_SIZE = 8_192
#: genes are split into blocks for the parallel kernels, at least this many and two per thread:
#: each gene's sums are taken in cell order within its block, so the results do not depend on
#: the blocks (nor on the threads); fewer, wider blocks mean fewer binary searches per cell
#: (32 blocks cost 9.8 ns per stored value at the TB atlas's shape, 8 blocks 7.2 ns)
_MIN_GENE_BLOCKS = 8
#: rows per block of the NaN/Inf check of dense Y (bounds its temporary mask)
_FINITE_CHECK_ROWS = 4096


@dataclass(frozen=True, eq=False)
class SummaryStats:
    """Summary statistics of an LMM for G genes (see the module docstring for the notation).

    Attributes
    ----------
    XX, XY, ZX, ZY, ZZ, Ynorm : numpy.ndarray
        The sums over cells, shapes p×p, p×G, q×p, q×G, q×q and (G,).
    n : int
        Number of cells.
    d : numpy.ndarray
        Random-effect block sizes (K,), ``d.sum() == q``.
    fixed_names, random_names, gene_names : list of str
        Names of the columns of X, of Z (R-style, ``donor_idD01``) and of the genes.
    transform : str or None
        The transform that was applied to Y (``None``, ``"log1p"``, ``"log2p1"``).
    random_blocks : list of str
        The label of each random-effect block (K entries: ``"donor_id"``,
        ``"donor_id:cell_type"``), or empty when unknown (statistics from bare matrices).
    random_levels : list of str
        The level label of each column of Z within its block (q entries: ``"D01"``,
        ``"D01:CD4 T"``), or empty when unknown.
    """

    XX: np.ndarray
    XY: np.ndarray
    ZX: np.ndarray
    ZY: np.ndarray
    ZZ: np.ndarray
    Ynorm: np.ndarray
    n: int
    d: np.ndarray
    fixed_names: list[str] = field(default_factory=list)
    random_names: list[str] = field(default_factory=list)
    gene_names: list[str] = field(default_factory=list)
    transform: str | None = None
    random_blocks: list[str] = field(default_factory=list)
    random_levels: list[str] = field(default_factory=list)

    def __post_init__(self):
        K = len(np.atleast_1d(self.d))
        q = self.ZZ.shape[0] if np.ndim(self.ZZ) == 2 else None
        if self.random_blocks and len(self.random_blocks) != K:
            raise ValueError(
                f"random_blocks has {len(self.random_blocks)} labels but d has {K} blocks"
            )
        if self.random_levels and q is not None and len(self.random_levels) != q:
            raise ValueError(
                f"random_levels has {len(self.random_levels)} labels but Z has {q} columns"
            )

    @property
    def n_genes(self) -> int:
        return self.XY.shape[1]

    @property
    def p(self) -> int:
        return self.XX.shape[0]

    @property
    def q(self) -> int:
        return self.ZZ.shape[0]

    def __add__(self, other: SummaryStats) -> SummaryStats:
        """Merge the statistics of two disjoint sets of cells (same genes, same design columns)."""
        if not isinstance(other, SummaryStats):
            return NotImplemented
        for attr in (
            "fixed_names", "random_names", "gene_names", "transform", "random_blocks",
            "random_levels",
        ):  # fmt: skip
            if getattr(self, attr) != getattr(other, attr):
                raise ValueError(f"cannot add SummaryStats with different {attr}")
        if not np.array_equal(self.d, other.d):
            raise ValueError(f"cannot add SummaryStats with different d: {self.d} vs {other.d}")
        return SummaryStats(
            XX=self.XX + other.XX,
            XY=self.XY + other.XY,
            ZX=self.ZX + other.ZX,
            ZY=self.ZY + other.ZY,
            ZZ=self.ZZ + other.ZZ,
            Ynorm=self.Ynorm + other.Ynorm,
            n=self.n + other.n,
            d=self.d.copy(),
            fixed_names=list(self.fixed_names),
            random_names=list(self.random_names),
            gene_names=list(self.gene_names),
            transform=self.transform,
            random_blocks=list(self.random_blocks),
            random_levels=list(self.random_levels),
        )

    def subset_genes(self, index) -> SummaryStats:
        """The statistics of a subset of genes (``index``: integer positions or a boolean mask)."""
        idx = np.arange(self.n_genes)[index]
        return SummaryStats(
            XX=self.XX,
            XY=self.XY[:, idx],
            ZX=self.ZX,
            ZY=self.ZY[:, idx],
            ZZ=self.ZZ,
            Ynorm=self.Ynorm[idx],
            n=self.n,
            d=self.d,
            fixed_names=self.fixed_names,
            random_names=self.random_names,
            gene_names=[self.gene_names[i] for i in idx],
            transform=self.transform,
            random_blocks=self.random_blocks,
            random_levels=self.random_levels,
        )

    def save(self, path) -> None:
        """Write to a ``.npz`` file (uncompressed; names stored as string arrays)."""
        np.savez(
            path,
            XX=self.XX,
            XY=self.XY,
            ZX=self.ZX,
            ZY=self.ZY,
            ZZ=self.ZZ,
            Ynorm=self.Ynorm,
            n=np.int64(self.n),
            d=self.d,
            fixed_names=np.array(self.fixed_names, dtype=str),
            random_names=np.array(self.random_names, dtype=str),
            gene_names=np.array(self.gene_names, dtype=str),
            transform=np.array("" if self.transform is None else self.transform),
            random_blocks=np.array(self.random_blocks, dtype=str),
            random_levels=np.array(self.random_levels, dtype=str),
        )

    @classmethod
    def load(cls, path) -> SummaryStats:
        """Read statistics written by :meth:`save` (files written before the block and level
        labels were stored load without them)."""
        with np.load(path, allow_pickle=False) as z:
            transform = str(z["transform"]) or None
            labels = {
                key: z[key].tolist() if key in z.files else []
                for key in ("random_blocks", "random_levels")
            }
            return cls(
                XX=z["XX"],
                XY=z["XY"],
                ZX=z["ZX"],
                ZY=z["ZY"],
                ZZ=z["ZZ"],
                Ynorm=z["Ynorm"],
                n=int(z["n"]),
                d=z["d"].astype(np.int64),
                fixed_names=z["fixed_names"].tolist(),
                random_names=z["random_names"].tolist(),
                gene_names=z["gene_names"].tolist(),
                transform=transform,
                **labels,
            )


def _gene_bounds(n_genes: int) -> np.ndarray:
    n_blocks = max(1, min(max(_MIN_GENE_BLOCKS, 2 * num_threads()), n_genes))
    return np.linspace(0, n_genes, n_blocks + 1).round().astype(np.int64)


#: memory for the leaves' partial sums computed at once by the in-memory CSR pass
_PARTIALS_BUDGET = 256 * 2**20
_MAX_CELL_BLOCKS = 16


def _csr_in_memory(Y, G, P, w_indptr, w_indices, w_data, code, table):
    """(WY, Ynorm) of in-memory CSR Y: the leaves of :mod:`pyflashmm._distributed`, a batch
    of them in parallel (as many as memory allows, ≤ 16), added in the fixed tree order, so
    the result is bitwise that of the chunked and the distributed paths."""
    n = Y.shape[0]
    leaf = _dist.LEAF_CELLS
    edges = np.append(np.arange(0, n, leaf, dtype=np.int64), np.int64(n))
    n_leaves = edges.size - 1
    batch = int(min(_MAX_CELL_BLOCKS, max(1, _PARTIALS_BUDGET // (8 * G * (P + 1)))))
    tree = _dist.TreeSum(_dist.add_in_place)
    for b0 in range(0, n_leaves, batch):
        bounds = edges[b0 : min(n_leaves, b0 + batch) + 1]
        k = bounds.size - 1
        parts = np.zeros((k, P, G))
        norms = np.zeros((k, G))
        _k.csr_cell_block_partials(Y.indptr, Y.indices, Y.data, bounds, w_indptr, w_indices,
                                   w_data, code, table, parts, norms)  # fmt: skip
        for i in range(k):
            tree.push((parts[i], norms[i]))
    return tree.result()


def _finish(Xd, Zs, WY, Ynorm, n, d, names: _Names, gene_names, transform):
    """Assemble :class:`SummaryStats` from the accumulators and the designs."""
    p = Xd.shape[1]
    XX, ZX = Xd.T @ Xd, Zs.T @ Xd
    return SummaryStats(
        XX=XX.toarray() if sp.issparse(XX) else XX,
        XY=WY[:p],
        ZX=ZX.toarray() if sp.issparse(ZX) else np.asarray(ZX),
        ZY=WY[p:],
        ZZ=np.asarray((Zs.T @ Zs).toarray()),
        Ynorm=Ynorm,
        n=n,
        d=d,
        fixed_names=names.fixed,
        random_names=names.random,
        gene_names=gene_names,
        transform=transform,
        random_blocks=names.blocks,
        random_levels=names.levels,
    )


@dataclass(frozen=True)
class _Names:
    """The names the statistics carry: of the columns of X and Z, of the blocks, of the levels."""

    fixed: list[str]
    random: list[str]
    blocks: list[str] = field(default_factory=list)
    levels: list[str] = field(default_factory=list)


def _designs(X, Z, d, n: int):
    """(dense X, CSR Z with sorted indices, d, names) from a Design or from X, Z and d."""
    if isinstance(X, Design):
        if Z is not None or d is not None:
            raise TypeError(
                "summary_stats: pass a Design alone (it holds X, Z and d) or X, Z and d, not "
                "both; got a Design and Z or d"
            )
        if X.n != n:
            raise ValueError(f"the design has {X.n} cells (rows) but Y has {n}")
        names = _Names(
            list(X.fixed_names), list(X.random_names), list(X.random_blocks), list(X.random_levels)
        )
        X, Z, d = X.X, X.Z, X.d
    else:
        if Z is None:
            raise TypeError(
                "summary_stats needs the random-effects design Z (and d), or a Design in place of X"
            )
        names = None
    fixed_names = _names_from(X, np.shape(X)[1] if np.ndim(X) == 2 else 1, "x")
    if isinstance(X, sp.csr_matrix) and names is not None:  # a Design's sparse X: kept sparse
        Xd = sp.csr_matrix(X, dtype=np.float64)
        _checks.check_finite("X", Xd)
    else:
        Xd = _checks.as_float_matrix("X", X, n_rows=n)
    if sp.issparse(Z):
        Zs = sp.csr_matrix(Z, dtype=np.float64)
        _checks.check_numeric_dtype("Z", Z.dtype)
        if Zs.shape[0] != n:
            raise ValueError(f"Z has {Zs.shape[0]} rows but Y has {n} cells (rows)")
        _checks.check_finite("Z", Zs)
        random_names = _checks.default_names("z", Zs.shape[1])
    else:
        random_names = _names_from(Z, np.shape(Z)[1] if np.ndim(Z) == 2 else 1, "z")
        Zs = sp.csr_matrix(_checks.as_float_matrix("Z", Z, n_rows=n))
    Zs.sort_indices()
    if Zs.shape[1] == 0:
        raise ValueError("Z has no columns: the mixed model needs at least one random effect")
    d_arr = _checks.check_block_sizes(d, Zs.shape[1])
    if names is None:
        names = _Names(fixed_names, random_names)
    return Xd, Zs, d_arr, names


def _names_from(obj, k: int, prefix: str) -> list[str]:
    cols = getattr(obj, "columns", None)
    if cols is not None and len(cols) == k:
        return [str(c) for c in cols]
    return _checks.default_names(prefix, k)


def _as_cell_chunk(block):
    """A chunk as CSR (sorted indices) or C-order float64 ndarray, plus its format tag."""
    if sp.issparse(block):
        if block.format not in ("csr", "csc"):
            block = block.tocsr()
        if not block.has_canonical_format:  # sorted indices, duplicates summed
            block = block.copy()
            block.sum_duplicates()
        return block, block.format
    if hasattr(block, "compute"):  # dask array chunk
        block = block.compute()
        return _as_cell_chunk(block)
    arr = np.ascontiguousarray(np.asarray(block), dtype=np.float64)
    return arr, "dense"


def _frame_values(Y: pd.DataFrame):
    """A DataFrame's values: CSR for an all-sparse frame, else float64 (pandas NA → NaN)."""
    bad = [
        str(c)
        for c, t in Y.dtypes.items()
        if not pd.api.types.is_numeric_dtype(t) or pd.api.types.is_bool_dtype(t)
    ]
    if bad:
        raise TypeError(f"Y must hold real numbers; columns {bad[:5]} do not")
    if len(Y.columns) and all(isinstance(t, pd.SparseDtype) for t in Y.dtypes):
        return Y.sparse.to_coo().tocsr()  # a sparse DataFrame stays sparse
    return Y.to_numpy(dtype=np.float64, na_value=np.nan)


def _check_Y(Y) -> tuple[int, int]:
    shape = getattr(Y, "shape", None)
    if shape is None or len(shape) != 2:
        raise TypeError(
            "Y must be a 2-D cells × genes matrix (ndarray, scipy.sparse, backed or dask array)"
        )
    dtype = getattr(Y, "dtype", None)
    if dtype is not None:
        _checks.check_numeric_dtype("Y", dtype)
    if sp.issparse(Y):
        _checks.check_finite("Y", Y)
    elif isinstance(Y, np.ndarray):
        values = Y
        for start in range(0, values.shape[0], _FINITE_CHECK_ROWS):  # bounded extra memory
            block = values[start : start + _FINITE_CHECK_ROWS]
            if not np.isfinite(block).all():
                i, j = np.argwhere(~np.isfinite(block))[0]
                raise ValueError(f"Y contains NaN or Inf (first at row {start + i}, column {j})")
    return int(shape[0]), int(shape[1])


def _check_transform(transform, Y) -> int:
    if transform not in _k.TRANSFORM_CODES:
        raise ValueError(f"transform must be one of None, 'log1p', 'log2p1'; got {transform!r}")
    if transform is not None and (isinstance(Y, np.ndarray) or sp.issparse(Y)):
        values = Y.data if sp.issparse(Y) else Y
        if values.size and np.min(values) <= -1:
            raise ValueError(f"transform={transform!r} needs Y > -1 (counts); Y has values ≤ -1")
    return _k.TRANSFORM_CODES[transform]


@dataclass(frozen=True)
class _StatsOp:
    """The kernels of the summary statistics for :func:`pyflashmm._distributed.sum_range`: a
    leaf's partial sum is (WY, Ynorm) from zero; args are the cells' rows of W = [X | Z]."""

    G: int
    P: int
    code: int
    check_finite: bool

    def prepare(self, block, start, stop):
        block, kind = _as_cell_chunk(block)
        if block.shape != (stop - start, self.G):
            raise ValueError(
                f"Y[{start}:{stop}] has shape {block.shape}; expected {(stop - start, self.G)}"
            )
        if self.check_finite:
            _checks.check_finite(f"Y (cells {start}:{stop})", block)
        return block.tocsr() if kind == "csc" else block  # rows of a backed CSC chunk

    def zeros(self):
        return np.zeros((self.P, self.G)), np.zeros(self.G)

    def add(self, block, r0, r1, acc, args, offset):
        w_indptr, w_indices, w_data = args
        wi = w_indptr[offset : offset + r1 - r0 + 1]  # offsets into w_indices stay absolute
        table = _k.transform_table(self.code)
        bounds = _gene_bounds(self.G)
        if sp.issparse(block):  # the kernel reads rows r0:r1 through their slice of indptr
            _k.accumulate_csr(block.indptr[r0 : r1 + 1], block.indices, block.data, bounds, wi,
                              w_indices, w_data, self.code, table, *acc)  # fmt: skip
        else:
            _k.accumulate_dense(block[r0:r1], bounds, wi, w_indices, w_data, self.code, table,
                                *acc)  # fmt: skip


def summary_stats(
    Y,
    X,
    Z=None,
    d=None,
    *,
    transform: str | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    gene_names=None,
    progress: bool | None = None,
    scheduler=None,
    layer: str | None = None,
) -> SummaryStats:
    """Compute the LMM summary statistics of Y in one pass over cell chunks.

    XX = XᵀX, XY = XᵀY, ZX = ZᵀX, ZY = ZᵀY, ZZ = ZᵀZ and Ynorm = Σ_cells y² (per gene), with Y
    transformed on the fly; every one is a sum over cells.

    Parameters
    ----------
    Y : array-like, AnnData or path, cells × genes (n × G)
        ndarray, pandas DataFrame, ``scipy.sparse`` CSR/CSC (never densified), or any object
        with ``shape`` whose row slices ``Y[a:b]`` give one of those (backed AnnData ``X``,
        h5py-backed sparse datasets, dask arrays of CSR or dense chunks); or an AnnData (in
        memory, ``backed="r"`` or from ``anndata.experimental.read_lazy``) or a path to an
        ``.h5ad`` file or ``.zarr`` store, whose ``X`` (or ``layers[layer]``) is read in row
        chunks and whose ``var_names`` name the genes.
    X : Design or array-like, n × p
        A :class:`~pyflashmm.Design` (then ``Z`` and ``d`` are omitted: X, Z, d, the names of
        the coefficients and random effects, and the block and level labels all come from it),
        or the fixed-effects design (dense; a DataFrame's columns name the coefficients).
    Z : array-like, n × q
        Random-effects design, dense or sparse (indicator columns); required unless ``X`` is a
        Design.
    d : sequence of int, optional
        Sizes of the K random-effect blocks (``sum(d) == q``); default one block ``[q]``.
    transform : {None, "log1p", "log2p1"}
        Applied on the fly to every stored value: ``log(1 + y)`` or ``log2(1 + y)``.
    chunk_size : int
        Cells per chunk; bounds the extra memory for dense and backed input. A dask array is
        read in its own row chunks instead.
    gene_names : sequence of str, optional
        Default: a DataFrame's columns or ``gene0, gene1, ...``.
    progress : bool, optional
        Show a progress bar over chunks (default: when there are more than 4 chunks; one
        process only).
    scheduler : None, False, str or dask.distributed.Client
        Where the chunks are computed. ``None`` (default): on the workers of the active Dask
        client if there is one, else here; ``False``: here; a ``Client`` or a scheduler
        address: on its workers. With a client, each chunk's statistics are computed by a
        worker (which reads the chunk from the file itself for backed ``.h5ad``/``.zarr``
        input) and the partial sums are added in the same fixed tree order as here, so the
        result is bitwise the same as without Dask, for any ``chunk_size`` and any number of
        workers (in-memory CSC input without a client is summed gene by gene instead, which
        agrees to rounding, about 1e-15 relative).
    layer : str, optional
        With an AnnData or a path: the layer holding the counts (default ``X``).

    Returns
    -------
    SummaryStats

    Raises
    ------
    TypeError
        A Design together with ``Z`` or ``d``; no ``Z`` without a Design; Y not a 2-D matrix
        of real numbers.
    ValueError
        Shapes that do not match, NaN/Inf in Y, X or Z, a transform of values ≤ −1.
    pyflashmm.ChunkError
        A chunk of Y could not be read (a damaged file, a failing dask block); names its rows.

    Examples
    --------
    >>> des = design(adata.obs, "~ 0 + cell_type + cell_type:condition",
    ...              random="(1 | donor_id)")  # doctest: +SKIP
    >>> stats = summary_stats(adata.X, des, transform="log1p")  # doctest: +SKIP
    >>> stats.random_blocks  # doctest: +SKIP
    ['donor_id']
    """
    from pyflashmm._frontend.inputs import is_anndata, open_cells

    if is_anndata(Y) or isinstance(Y, str | os.PathLike):
        cells = open_cells(Y, layer)
        names = cells.gene_names if gene_names is None else gene_names
        try:
            return summary_stats(cells.counts, X, Z, d, transform=transform,
                                 chunk_size=chunk_size, gene_names=names, progress=progress,
                                 scheduler=scheduler)  # fmt: skip
        finally:
            cells.close()
    if layer is not None:
        raise ValueError("layer: only an AnnData (or a path to one) has layers")
    if isinstance(Y, pd.DataFrame):
        gene_names = gene_names if gene_names is not None else list(map(str, Y.columns))
        Y = _frame_values(Y)
    n, G = _check_Y(Y)
    if not isinstance(chunk_size, int | np.integer) or chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive integer; got {chunk_size!r}")
    code = _check_transform(transform, Y)
    table = _k.transform_table(code)
    Xd, Zs, d_arr, names = _designs(X, Z, d, n)
    q = Zs.shape[1]
    gene_names = _checks.check_names("gene_names", gene_names, G, "gene")
    if n == 0:
        raise ValueError("Y has no cells (rows)")

    p = Xd.shape[1]
    # [X | Z]; a dense X's exact zeros are dropped, as a sparse X (from design) never stores them
    W = sp.hstack([sp.csr_matrix(Xd), Zs], format="csr")
    W.sort_indices()
    w_indptr = W.indptr.astype(np.int64)
    w_indices = W.indices.astype(np.int64)
    w_data = W.data.astype(np.float64)

    if sp.issparse(Y) and Y.format not in ("csr", "csc"):
        Y = Y.tocsr()  # COO, LIL, ...: one conversion (CSR and CSC are used as they are)
    if sp.issparse(Y) and not Y.has_canonical_format:
        Y = Y.copy()  # duplicate entries must be summed before the transform and the squares
        Y.sum_duplicates()
    client, opened = _dist.resolve_client(scheduler)
    try:
        in_memory = client is None and sp.issparse(Y)
        if in_memory and Y.format == "csr":
            # the data are in memory already: one linear pass per leaf, leaves in parallel
            WY, Ynorm = _csr_in_memory(Y, G, p + q, w_indptr, w_indices, w_data, code, table)
            return _finish(Xd, Zs, WY, Ynorm, n, d_arr, names, gene_names, transform)
        if in_memory and Y.format == "csc":
            # column-major data in memory: one pass over genes, no row slicing (no copy); cells
            # are added in order, not by leaves, so this agrees with the others to rounding
            WY = np.zeros((p + q, G))
            Ynorm = np.zeros(G)
            _k.accumulate_csc(
                Y.indptr, Y.indices, Y.data, w_indptr, w_indices, w_data, code, table, WY, Ynorm
            )
            return _finish(Xd, Zs, WY, Ynorm, n, d_arr, names, gene_names, transform)
        n_reads = len(_dist.row_chunks(Y, n, chunk_size))
        show = n_reads > 4 if progress is None else bool(progress)
        check = not (isinstance(Y, np.ndarray) or sp.issparse(Y))

        def args_of(start, stop):
            # the cells' rows of W = [X | Z], with offsets from 0
            lo, hi = w_indptr[start], w_indptr[stop]
            return w_indptr[start : stop + 1] - lo, w_indices[lo:hi], w_data[lo:hi]

        def bar(it):
            return tqdm(it, total=n_reads, disable=not show, desc="summary stats", unit="chunk")

        WY, Ynorm = _dist.chunk_sum(
            _StatsOp(G, p + q, code, check), Y, n, chunk_size, args_of, client=client,
            progress=bar, where="Y",
        )  # fmt: skip
    finally:
        if opened:
            client.close()
    return _finish(Xd, Zs, WY, Ynorm, n, d_arr, names, gene_names, transform)
