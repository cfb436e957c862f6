"""Cell-level fits on a Dask cluster, distributed over gene blocks.

The cell-level NB models (the NB GLM of cells, the NB mixed model) need every cell of a gene at
once, so unlike the LMM's statistics they are not sums over cell chunks. Their per-gene fits
are independent given the size factors (and, for the NB GLM, the dispersion trend), so the
genes are cut into blocks that the workers fit:

1. **Size factors** (``poscounts``), in two passes over cell chunks on the workers: the log
   geometric mean of every gene (the sums of the in-memory kernel's 16 row ranges, each range
   added chunk after chunk by the same kernel, then the ranges added in order: the same bits),
   then every cell's median ratio (a per-cell kernel). The first pass also counts each gene's
   positive counts, the second each cell's total.
2. **Gene blocks** (a shuffle): a worker reads a chunk of cells from the store once and cuts it
   into the blocks' columns; each block's pieces are stacked on one worker. Reading a block's
   columns straight from a row-oriented (CSR) store would read every row once per block; the
   shuffle reads it once per *wave*. Genes are taken in waves of at most ``wave_nonzeros``
   stored counts (from the counts of the first pass; a block larger than that is a wave of
   its own), so the cluster holds one wave of the matrix at a time, released when the whole
   wave is fitted.
3. **Fits**: each block is fitted (and tested) on its worker by a function of the block's counts
   (cells × block genes, CSC, float64) and its gene range; only its result travels back.

The fits see the same size factors and the same counts of each gene as in one process, so the
results per gene are bitwise the same; what spans genes (BH, the NB GLM's dispersion trend) is
done here on the gathered results.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence

import numpy as np
import scipy.sparse as sp

from pyflashmm._distributed import (
    ChunkError,
    raise_chunk_failure,
    read_block,
    source_name,
    submit_on_rows,
    task_ranges,
)
from pyflashmm._kernels import size_factors as _ks

#: stored counts per wave when the workers' memory is not known (≈ 2.4 GB of CSC float64 and
#: int32 indices, held once as pieces and once stacked)
DEFAULT_WAVE_NONZEROS = 100_000_000
#: share of the cluster's memory that one wave of blocks may take (pieces + stacked copies at
#: 12 bytes per stored count each)
WAVE_MEMORY_SHARE = 0.25


def gene_block_bounds(G: int, genes_per_block: int) -> list[tuple[int, int]]:
    """Consecutive gene ranges of ``genes_per_block`` genes (the last may be shorter)."""
    return [(a, min(G, a + genes_per_block)) for a in range(0, G, genes_per_block)]


def default_genes_per_block(G: int, n_threads: int) -> int:
    """About four blocks per worker thread (load balance), 16 to 1,024 genes each."""
    return int(np.clip(-(-G // max(1, 4 * n_threads)), 16, 1024))


def waves(blocks: Sequence[tuple[int, int]], gene_nnz: np.ndarray, wave_nonzeros: float):
    """Consecutive runs of ``blocks`` holding at most ``wave_nonzeros`` stored counts (at
    least one block each)."""
    out: list[list[tuple[int, int]]] = []
    current: list[tuple[int, int]] = []
    held = 0.0
    for a, b in blocks:
        size = float(gene_nnz[a:b].sum())
        if current and held + size > wave_nonzeros:
            out.append(current)
            current, held = [], 0.0
        current.append((a, b))
        held += size
    if current:
        out.append(current)
    return out


def wave_nonzeros_for(client) -> float:
    """Stored counts per wave: a share of the workers' total memory limit, or the default."""
    workers = client.scheduler_info().get("workers", {}).values()
    limit = sum(float(w.get("memory_limit") or 0) for w in workers)
    if limit <= 0:
        return float(DEFAULT_WAVE_NONZEROS)
    return max(1e6, WAVE_MEMORY_SHARE * limit / 24.0)


def n_worker_threads(client) -> int:
    workers = client.scheduler_info().get("workers", {}).values()
    return max(1, sum(int(w.get("nthreads", 1)) for w in workers))


# ----------------------------------------------------------------------------- reading rows


def _rows(data, start: int, stop: int, where: str, G: int):
    """The block of cells start:stop (read if need be), checked to be rows × G."""
    block = read_block(data, start, stop, where)
    shape = tuple(getattr(block, "shape", ()))
    if shape != (stop - start, G):
        raise ChunkError(
            f"cells {start}:{stop} of {where}: the block read has shape {shape}, expected "
            f"({stop - start}, {G}); the file or the source of this chunk may be damaged"
        )
    return block


def _cancel(client, *futures) -> None:
    """Stop the tasks of a failed run and release what they hold."""
    client.cancel([f for group in futures for f in group])


def _gather_rows(client, futures: list, reads: list, where: str, wanted: list | None = None):
    """The results of ``wanted`` (default: all) of the tasks ``futures`` over the row ranges
    ``reads`` (each computing its own rows); a failure of any of them is raised in terms of
    its cells, and the others are cancelled."""
    try:
        return client.gather(futures if wanted is None else wanted)
    except Exception as exc:
        try:
            raise_chunk_failure(exc, futures, reads, where, reads_in_task=True)
            raise
        finally:
            _cancel(client, futures)


# ----------------------------------------------------------------------------- size factors


def _csr64(block) -> sp.csr_matrix:
    """A block of rows as canonical CSR (duplicates summed, indices sorted), the form the
    in-memory size factors see after ``as_counts``."""
    Y = sp.csr_matrix(block if sp.issparse(block) else np.asarray(block))
    Y.sum_duplicates()  # also sorts the indices
    return Y


def _geo_step(data, start: int, stop: int, where: str, G: int, acc):
    """``acc`` (Σ ln y over positive counts per gene, their number) plus cells start:stop."""
    Y = _csr64(_rows(data, start, stop, where, G))
    if acc is None:
        part, npos = np.zeros(G), np.zeros(G, np.int64)
    else:  # a new partial sum: the previous step's result may be needed again on a retry
        part, npos = acc[0].copy(), acc[1].copy()
    indptr = Y.indptr.astype(np.int64)
    _ks.add_log_positive(indptr, Y.indices.astype(np.int64),
                         np.ascontiguousarray(Y.data, dtype=np.float64), 0, Y.shape[0], part,
                         npos)  # fmt: skip
    return part, npos


def _ratio_step(data, start: int, stop: int, where: str, loggeo):
    """The median ratio (exp of the median log ratio) and the total count of cells start:stop."""
    Y = _csr64(_rows(data, start, stop, where, loggeo.size))
    indptr = Y.indptr.astype(np.int64)
    values = np.ascontiguousarray(Y.data, dtype=np.float64)
    ratios = _ks.median_log_ratios_csr(indptr, Y.indices.astype(np.int64), values, loggeo)
    return ratios, np.asarray(Y.sum(axis=1), dtype=np.float64).ravel()


def _count_step(data, start: int, stop: int, where: str, G: int):
    """The total count of each of cells start:stop and the positive counts per gene."""
    Y = _csr64(_rows(data, start, stop, where, G))
    totals = np.asarray(Y.sum(axis=1), dtype=np.float64).ravel()
    return totals, np.bincount(Y.indices[Y.data > 0], minlength=G)


def totals_on_cluster(client, Y, n: int, G: int, chunk_size: int, where: str):
    """(total count of every cell, positive counts per gene) of ``Y`` in one pass on the
    workers: what the size factors other than poscounts need (the same values as
    :func:`poscounts_on_cluster` gives, without its two passes)."""
    where = source_name(Y, where)
    tasks, _ = task_ranges(n, chunk_size)
    futures = [submit_on_rows(client, Y, _count_step, a, b, where, G) for a, b in tasks]
    out = _gather_rows(client, futures, tasks, where)
    npos = np.sum([c for _, c in out], axis=0, dtype=np.int64)
    if not npos.any():
        raise ValueError("counts: every gene is all-zero")
    return np.concatenate([t for t, _ in out]), npos


def poscounts_on_cluster(client, Y, n: int, G: int, chunk_size: int, where: str):
    """DESeq2's poscounts size factors of the cells × genes counts ``Y`` (a file-backed matrix
    or a dask array), computed on the workers; bitwise :func:`pyflashmm.size_factors`
    (``"poscounts"``) of the same counts in memory.

    Returns
    -------
    raw : ndarray (n,)
        exp(median log ratio) per cell before rescaling (NaN for a cell without a usable
        count; the caller checks and rescales to geometric mean 1).
    totals : ndarray (n,)
        Total count of every cell.
    gene_nnz : ndarray (G,)
        Positive counts per gene.
    """
    ranges = []
    for ch in range(_ks.GEO_CHUNKS):
        lo, hi = n * ch // _ks.GEO_CHUNKS, n * (ch + 1) // _ks.GEO_CHUNKS
        ranges.append([(a, min(hi, a + chunk_size)) for a in range(lo, hi, chunk_size)])
    where = source_name(Y, where)
    steps, reads, chains = [], [], []
    for rng in ranges:  # one chain of steps per range: its rows are added in order
        acc = None
        for a, b in rng:
            acc = submit_on_rows(client, Y, _geo_step, a, b, where, G, acc)
            steps.append(acc)
            reads.append((a, b))
        chains.append(acc)
    # the chains' ends only; a failed step (and the chain after it) is named by its cells
    parts = _gather_rows(client, steps, reads, where, [c for c in chains if c is not None])
    total, npos = np.zeros(G), np.zeros(G, np.int64)
    for part, count in parts:  # the ranges added in order, as the in-memory kernel does
        total += part
        npos += count
    with np.errstate(divide="ignore"):
        loggeo = np.where(npos > 0, total / n, -np.inf)
    if np.isinf(loggeo).all():
        raise ValueError("counts: every gene is all-zero")
    tasks, _ = task_ranges(n, chunk_size)
    shared = client.scatter([loggeo], broadcast=True, hash=False)[0]
    futures = [submit_on_rows(client, Y, _ratio_step, a, b, where, shared) for a, b in tasks]
    out = _gather_rows(client, futures, tasks, where)
    raw = np.concatenate([r for r, _ in out])
    totals = np.concatenate([t for _, t in out])
    return raw, totals, npos


# ----------------------------------------------------------------------------- gene blocks


def _split_columns(data, start: int, stop: int, where: str, bounds, G: int):
    """Cells start:stop cut into the column ranges ``bounds`` (CSC float64 pieces)."""
    # a block that is not a matrix of numbers fails here: fit_blocks reports it by its cells
    block = _rows(data, start, stop, where, G)
    Y = sp.csr_matrix(block if sp.issparse(block) else np.asarray(block))
    lo, hi = bounds[0][0], bounds[-1][1]
    wave = sp.csc_matrix(Y[:, lo:hi], dtype=np.float64)
    return tuple(wave[:, a - lo : b - lo] for a, b in bounds)


def _fit_task(fit: Callable, block, bounds, names, *shared):
    """``fit(block, bounds, names, *shared)`` of one gene block; its errors name the block's
    genes."""
    try:
        return fit(block, bounds, names, *shared)
    except Exception as exc:
        a, b = bounds
        what = f"genes {a}:{b} ({names[a]} … {names[b - 1]})"
        try:
            err = type(exc)(f"{what}: {exc}")
        except Exception:  # noqa: BLE001 - an exception type that takes other arguments
            err = RuntimeError(f"{what}: {type(exc).__name__}: {exc}")
        raise err from exc


def _stack(*pieces) -> sp.csc_matrix:
    """A gene block's pieces (consecutive cell chunks) stacked into cells × genes CSC."""
    out = sp.vstack(pieces, format="csc")
    out.sort_indices()
    return out


def fit_blocks(client, Y, n: int, G: int, fit: Callable, shared: tuple, *, chunk_size: int,
               where: str, gene_nnz: np.ndarray, gene_names: Sequence[str]) -> list:  # fmt: skip
    """``fit(block, (a, b), gene_names, *shared)`` of every gene block on the workers, in gene
    order.

    ``Y`` is read from its file (or computed from its dask graph) by the workers, once per
    wave (``where`` names it in messages); an in-memory ``Y`` is cut into blocks here and the
    blocks are scattered. ``shared`` (the design, the size factors) is sent to every worker
    once. An error of a fit names its genes (``gene_names``), a reading error its cells.
    """
    genes_per_block = default_genes_per_block(G, n_worker_threads(client))
    wave_nonzeros = wave_nonzeros_for(client)
    # one future per argument (a bare list or dict would be scattered item by item)
    names, *shared = client.scatter([list(gene_names), *shared], broadcast=True, hash=False)
    where = source_name(Y, where)
    results: list = []
    in_memory = isinstance(Y, np.ndarray) or sp.issparse(Y)
    tasks, _ = task_ranges(n, chunk_size)
    for wave in waves(gene_block_bounds(G, genes_per_block), gene_nnz, wave_nonzeros):
        splits: list = []
        if in_memory:
            lo, hi = wave[0][0], wave[-1][1]
            part = sp.csc_matrix(Y[:, lo:hi], dtype=np.float64)
            blocks = [client.scatter([part[:, a - lo : b - lo]], hash=False)[0] for a, b in wave]
            del part
        else:
            splits = [submit_on_rows(client, Y, _split_columns, a, b, where, wave, G)
                      for a, b in tasks]  # fmt: skip
            blocks = [client.submit(_stack, *[client.submit(operator.getitem, s, k, pure=False)
                                              for s in splits], pure=False)
                      for k in range(len(wave))]  # fmt: skip
        futures = [client.submit(_fit_task, fit, blk, ab, names, *shared, pure=False)
                   for blk, ab in zip(blocks, wave, strict=True)]  # fmt: skip
        try:
            results.extend(client.gather(futures))
        except Exception as exc:
            try:
                if splits:  # a reading error is reported as such, naming its cells
                    raise_chunk_failure(exc, splits, tasks, where, reads_in_task=True)
                raise
            finally:
                _cancel(client, futures, blocks, splits)
        # the wave's counts are released before the next wave is read
        del splits, blocks, futures
    return results
