"""Sums over cell chunks, in one process or on a Dask cluster, with one fixed reduction order.

Summary statistics and pseudobulk counts are sums over cells. Both are computed the same way
whether or not a Dask client is used:

1. the cells are cut into fixed *leaves* of :data:`LEAF_CELLS` cells (the last one shorter),
   whatever the chunks in which they are read;
2. every leaf gives a partial sum computed from zero by the Numba kernels (a tuple of float64
   arrays), adding its cells in order; a leaf read in several pieces is accumulated piece
   after piece, which adds the same numbers in the same order;
3. the leaves' partial sums are added by :class:`TreeSum`, a pairwise tree whose shape depends
   only on the number of leaves.

Floating-point addition is commutative but not associative, so fixing which partial sums are
added to which (the tree), and computing each leaf from zero, makes the result a function of
the data alone: the chunk size, the number of workers, the order in which they finish and the
number of threads do not change a bit. A Dask task takes 2^j whole leaves aligned on a
multiple of 2^j leaves (or the tail), which is exactly one node of the tree (or the tail's
nodes, added last), so the tasks' results slot into the same tree.

With a client, the cells are read by the workers themselves (from the file, for ``.h5ad``
and ``.zarr`` input; from the dask graph for a dask array; from data scattered once for
in-memory input) and the tree's additions are tasks too, so only the final sum travels back
to the client.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

#: cells per leaf of the reduction tree (fixed: changing it changes the rounding of the sums)
LEAF_CELLS = 4096


class ChunkError(ValueError):
    """A chunk of cells could not be read or processed; the message names its row range."""


class TreeSum:
    """Pairwise sum of a stream of values in a fixed order (a binary counter of subtrees).

    ``push`` merges two subtrees as soon as they hold the same number of leaves, so at most
    log2(n) + 1 partial sums are alive; ``result`` adds the remaining subtrees from the right.
    The tree depends only on the number of values pushed, so the same ``add`` operations happen
    whether the values are arrays (one process) or futures (Dask).

    Parameters
    ----------
    add : callable
        ``add(left, right)``, the sum of two values (may reuse ``left``'s storage).
    """

    def __init__(self, add: Callable):
        self._add = add
        self._stack: list[tuple[int, object]] = []  # (level, subtree sum), levels decreasing

    def push(self, value, level: int = 0) -> None:
        """Add a subtree of 2**level leaves (the next leaves in order)."""
        while self._stack and self._stack[-1][0] == level:
            _, left = self._stack.pop()
            value = self._add(left, value)
            level += 1
        self._stack.append((level, value))

    def result(self, tail=None):
        """The total; ``tail``, the sum of the last leaves (fewer than the smallest subtree
        pushed, computed by a TreeSum of their own), is added first."""
        if tail is not None:
            self._stack.append((-1, tail))
        if not self._stack:
            raise ValueError("TreeSum: nothing to add")
        _, acc = self._stack.pop()
        while self._stack:
            _, left = self._stack.pop()
            acc = self._add(left, acc)
        return acc


def add_in_place(left: tuple, right: tuple) -> tuple:
    """``left + right`` elementwise over tuples of arrays, stored in ``left`` (one process:
    ``left`` is a partial sum nobody else holds; ``x += y`` rounds exactly as ``x + y``)."""
    for x, y in zip(left, right, strict=True):
        x += y
    return left


def add_new(left: tuple, right: tuple) -> tuple:
    """``left + right`` elementwise over tuples of arrays, as new arrays (Dask: the inputs are
    task results that must not change)."""
    return tuple(x + y for x, y in zip(left, right, strict=True))


def is_dask_array(Y) -> bool:
    """Whether ``Y`` is a ``dask.array.Array`` (without importing dask)."""
    mod = sys.modules.get("dask.array")
    return mod is not None and isinstance(Y, mod.Array)


def row_chunks(Y, n: int, chunk_size: int) -> list[tuple[int, int]]:
    """The row ranges ``(start, stop)`` of the chunks: ``chunk_size`` rows each, or for a dask
    array runs of its own row chunks (reading a range costs whole blocks), as many
    consecutive blocks as fit in ``chunk_size`` rows (at least one: anndata's ``read_lazy``
    cuts 1,000-row blocks, and one computation per block would cost more than the block)."""
    if not is_dask_array(Y):
        return [(a, min(n, a + chunk_size)) for a in range(0, n, chunk_size)]
    out: list[tuple[int, int]] = []
    start = stop = 0
    for size in Y.chunks[0]:
        if stop > start and stop + size - start > chunk_size:
            out.append((start, stop))
            start = stop
        stop += int(size)
    if stop > start:
        out.append((start, stop))
    return out


@dataclass(frozen=True)
class FileSource:
    """Where a worker reads rows of an on-disk matrix: the file, the element in it, the format.

    Attributes
    ----------
    kind : {"h5", "zarr"}
    path : str
        The ``.h5ad`` file or ``.zarr`` store.
    key : str
        The matrix's path inside it (``/X``, ``/layers/counts``).
    """

    kind: str
    path: str
    key: str

    def __str__(self) -> str:
        return f"{self.path} ({self.key})"


def file_source(Y) -> FileSource | None:
    """The file behind a backed matrix (anndata's on-disk sparse dataset, an h5py dataset, a
    zarr array), or None for anything else."""
    group = getattr(Y, "group", None)  # anndata's CSRDataset / CSCDataset
    obj = group if group is not None else Y
    h5py = sys.modules.get("h5py")
    if h5py is not None and isinstance(obj, h5py.Group | h5py.Dataset):
        return FileSource("h5", str(obj.file.filename), str(obj.name))
    zarr = sys.modules.get("zarr")
    if zarr is not None and isinstance(obj, zarr.Group | zarr.Array):
        root = getattr(obj.store, "root", None)  # a local directory store
        if root is not None:
            return FileSource("zarr", str(root), str(obj.path))
    return None


def read_rows(source: FileSource, start: int, stop: int):
    """Rows ``start:stop`` of the matrix at ``source`` (CSR for a sparse group, else dense)."""
    import anndata

    if source.kind == "h5":
        import h5py

        with h5py.File(source.path, "r") as f:
            obj = f[source.key]
            if isinstance(obj, h5py.Group):
                return anndata.io.sparse_dataset(obj)[start:stop]
            return obj[start:stop]
    import zarr

    obj = zarr.open_group(source.path, mode="r")[source.key]
    if isinstance(obj, zarr.Group):
        return anndata.io.sparse_dataset(obj)[start:stop]
    return obj[start:stop]


class RowReader:
    """A reader of a matrix's rows for :func:`read_block`, in this process, one chunk after
    another (nothing was read yet).

    Rows of a CSR matrix in an HDF5 file (a backed ``.h5ad``) are read straight into arrays
    kept from one read to the next (``reuse=True``): a block read earlier is overwritten by the
    next read, so the reader must be done with it (as :func:`sum_range` is). Fresh arrays for
    every chunk cost more than the copy itself: a page fault per 4 KiB on first touch. scipy
    still copies a block's arrays when they fill less than half of the kept ones (a short
    last chunk) and casts int64 indices that fit to int32; the result is the same.
    ``reuse=False`` (one read whose block the caller keeps) allocates exactly the block.
    """

    def __init__(self, Y, reuse: bool = True):
        self.Y = Y
        self._h5 = _h5_csr(Y)
        self._reuse = reuse
        self._store: tuple[np.ndarray, np.ndarray] | None = None

    def rows(self, start: int, stop: int):
        if self._h5 is None:
            block = self.Y[start:stop]
            return block.compute() if hasattr(block, "compute") else block
        import scipy.sparse as sp

        data, indices, indptr, n_cols = self._h5
        ptr = indptr[start : stop + 1].astype(np.int64)
        lo, hi = int(ptr[0]), int(ptr[-1])
        k = hi - lo
        if self._store is None or self._store[0].size < k or not self._reuse:
            size = k + k // 4 if self._reuse else k  # room for the next, larger chunks
            self._store = (np.empty(size, data.dtype), np.empty(size, indices.dtype))
        d, i = self._store[0][:k], self._store[1][:k]
        if k:
            data.read_direct(d, np.s_[lo:hi], np.s_[0:k])
            indices.read_direct(i, np.s_[lo:hi], np.s_[0:k])
        return sp.csr_matrix((d, i, ptr - lo), shape=(stop - start, n_cols), copy=False)


def _h5_csr(Y):
    """(data, indices, indptr, number of columns) of anndata's backed CSR matrix in an HDF5
    file, or None for anything else."""
    group = getattr(Y, "group", None)
    h5py = sys.modules.get("h5py")
    if h5py is None or not isinstance(group, h5py.Group) or getattr(Y, "format", None) != "csr":
        return None
    if not all(k in group for k in ("data", "indices", "indptr")):
        return None
    return group["data"], group["indices"], group["indptr"], int(Y.shape[1])


def read_block(data, start: int, stop: int, where: str):
    """The chunk's rows: read from a file, sliced, or (already a block) as they are. Reading
    errors become a :class:`ChunkError` naming the rows."""
    if not isinstance(data, FileSource | RowReader):
        return data
    try:
        if isinstance(data, FileSource):
            return read_rows(data, start, stop)
        return data.rows(start, stop)
    except Exception as exc:  # noqa: BLE001 - any failure to read is reported with the rows
        raise ChunkError(chunk_message(where, start, stop, exc)) from exc


def read_chunk(Y, start: int, stop: int, where: str):
    """Rows ``start:stop`` of ``Y`` read here (a dask block computed); reading errors become a
    :class:`ChunkError` naming the rows."""
    return read_block(RowReader(Y, reuse=False), start, stop, where)


def chunk_message(where: str, start: int, stop: int, exc: BaseException) -> str:
    reason = str(exc).splitlines()[0] if str(exc) else ""
    return (
        f"cannot read cells {start}:{stop} of {where} ({type(exc).__name__}: {reason}); the "
        "file or the source of this chunk may be damaged"
    )


def sum_range(op, data, start: int, stop: int, reads, args, where: str) -> tuple:
    """The tree sum of the leaves of cells ``start:stop`` (``start`` on a leaf boundary), read
    in the row ranges ``reads`` (consecutive, covering ``start:stop``).

    ``op`` has ``prepare(block, a, b)`` (check a chunk, give it the kernel's format),
    ``zeros()`` (a leaf's empty partial sum) and ``add(block, r0, r1, acc, args, offset)`` (add
    rows ``r0:r1`` of the block, which are cells ``start + offset`` on, into ``acc``); ``args``
    are the per-cell arguments of cells ``start:stop``.

    The partial sums that the tree has added into another are zeroed and reused as new leaves:
    fresh arrays of this size cost a page fault per 4 KiB page on first touch.
    """
    spare: list[tuple] = []

    def add(left, right):
        add_in_place(left, right)
        spare.append(right)
        return left

    tree = TreeSum(add)
    acc = None
    leaf_end = start
    for a, b in reads:
        block = op.prepare(read_block(data, a, b, where), a, b)
        i = a
        while i < b:
            if i == leaf_end:
                acc = _zeroed(spare.pop()) if spare else op.zeros()
                leaf_end = min(stop, (i // LEAF_CELLS + 1) * LEAF_CELLS)
            j = min(b, leaf_end)
            op.add(block, i - a, j - a, acc, args, i - start)
            i = j
            if i == leaf_end:
                tree.push(acc)
    return tree.result()


def _zeroed(arrays: tuple) -> tuple:
    for x in arrays:
        x.fill(0)
    return arrays


def resolve_client(scheduler):
    """The Dask client to use and whether this call opened it (and must close it).

    ``None``: the active client if ``dask.distributed`` is imported and one exists, else none;
    ``False``: none; a ``Client``: it; a string: a new client connected to that address.
    """
    if scheduler is False:
        return None, False
    if scheduler is None:
        if "distributed" not in sys.modules:
            return None, False
        from distributed import default_client

        try:
            return default_client(), False
        except ValueError:  # no client was started
            return None, False
    try:
        from distributed import Client
    except ImportError:
        raise ImportError(
            "scheduler= needs Dask's distributed scheduler: pip install 'pyflashmm[dask]'"
        ) from None
    if isinstance(scheduler, Client):
        return scheduler, False
    if isinstance(scheduler, str):
        return Client(scheduler, set_as_default=False), True
    raise TypeError(
        "scheduler must be None (the active Dask client, if any), False, a dask.distributed "
        f"Client or a scheduler address; got {type(scheduler).__name__}"
    )


@contextlib.contextmanager
def client_for(scheduler) -> Iterator:
    """Context manager: the client of :func:`resolve_client`, closed on exit if opened here."""
    client, opened = resolve_client(scheduler)
    try:
        yield client
    finally:
        if opened:
            client.close()


def chunk_sum(op, Y, n: int, chunk_size: int, args_of: Callable, *, client=None,
              where: str = "the counts", progress=None) -> tuple:  # fmt: skip
    """Σ over cells of ``op``'s partial sums, added leaf by leaf in the fixed tree order.

    Parameters
    ----------
    op : object
        The kernels of one kind of sum (see :func:`sum_range`).
    Y : matrix
        The cells × genes input (in memory, backed, or a dask array).
    n : int
        Number of cells.
    chunk_size : int
        Cells read at a time (a dask array is read in its own row chunks); with a client, the
        cells of one task (rounded to a power-of-two number of leaves).
    args_of : callable
        ``args_of(start, stop)``, the per-cell arguments of cells ``start:stop`` (their rows of
        the design, their group labels).
    client : dask.distributed.Client, optional
        Compute on its workers; without one, here, one chunk after another.
    where : str
        How messages name the input.
    progress : callable, optional
        Wraps the iteration over read chunks (a progress bar; one process only).
    """
    if client is None:
        reads = row_chunks(Y, n, chunk_size)
        reads = progress(reads) if progress is not None else reads
        return sum_range(op, RowReader(Y), 0, n, reads, args_of(0, n), where)
    return _chunk_sum_dask(op, Y, n, chunk_size, args_of, client, where)


def task_ranges(n: int, chunk_size: int) -> tuple[list[tuple[int, int]], int]:
    """The cells of each Dask task, 2**level leaves each (the last may be shorter), and level."""
    level = max(0, int(chunk_size // LEAF_CELLS).bit_length() - 1)
    size = LEAF_CELLS << level
    return [(a, min(n, a + size)) for a in range(0, n, size)], level


def source_name(Y, where: str) -> str:
    """How messages name the counts read by the workers: the file, the dask array, or
    ``where``."""
    source = file_source(Y)
    return str(source) if source is not None else "the dask array" if is_dask_array(Y) else where


def submit_on_rows(client, Y, fn, start: int, stop: int, where: str, *args):
    """A future of ``fn(rows, start, stop, where, *args)`` computed on a worker, which reads
    the rows from ``Y``'s file itself, or (a dask array) computes them in the same task graph,
    so that a block is dropped as soon as ``fn`` has used it. Anything else (an in-memory
    matrix, a store the workers cannot open by path) is read here and scattered."""
    source = file_source(Y)
    if source is not None:
        return client.submit(fn, source, start, stop, where, *args, pure=False)
    if is_dask_array(Y):
        import dask

        block = Y[start:stop].rechunk(-1).to_delayed().ravel()[0]
        return client.compute(dask.delayed(fn, pure=False)(block, start, stop, where, *args))
    block = client.scatter([read_chunk(Y, start, stop, where)], hash=False)[0]
    return client.submit(fn, block, start, stop, where, *args, pure=False)


def _sum_task(data, start: int, stop: int, where: str, op, args) -> tuple:
    """One Dask task of :func:`chunk_sum`: the tree sum of its leaves."""
    return sum_range(op, data, start, stop, [(start, stop)], args, where)


def _chunk_sum_dask(op, Y, n, chunk_size, args_of, client, where):
    tasks, level = task_ranges(n, chunk_size)
    where = source_name(Y, where)
    leaves = [submit_on_rows(client, Y, _sum_task, a, b, where, op, args_of(a, b))
              for a, b in tasks]  # fmt: skip
    tree = TreeSum(lambda left, right: client.submit(add_new, left, right, pure=False))
    full = LEAF_CELLS << level
    for leaf, (a, b) in zip(leaves, tasks, strict=True):
        if b - a == full:
            tree.push(leaf, level)
    tail = leaves[-1] if tasks[-1][1] - tasks[-1][0] < full else None
    total = tree.result(tail)
    try:
        # copies: arrays unpickled from a worker's buffers can sit at addresses that are not
        # multiples of 8, and the BLAS behind the fits then rounds differently (a fit of the
        # same statistics gave other bits in the last place)
        return tuple(np.array(a, copy=True) for a in total.result())
    except ChunkError:
        raise
    except Exception as exc:
        raise_chunk_failure(exc, leaves, tasks, where, reads_in_task=is_dask_array(Y))
        raise


def raise_chunk_failure(exc, futures, tasks, where, *, reads_in_task: bool) -> None:
    """Raise the error of the first failed task of ``futures`` (one per row range of
    ``tasks``) in terms of its cells: a :class:`ChunkError` naming them, or the chunk's own
    ValueError/TypeError (the checks of the sums name the rows). ``reads_in_task``: the tasks
    computed their dask blocks in the same graph, so any error but a ChunkError is the
    block's, named by its cells. Returns when none of them failed (the failure was
    elsewhere)."""
    from distributed import wait

    wait(futures)
    for fut, (a, b) in zip(futures, tasks, strict=True):
        if fut.status != "error":
            continue
        err = fut.exception()
        if isinstance(err, ChunkError) or (
            not reads_in_task and isinstance(err, ValueError | TypeError)
        ):
            raise err from None
        raise ChunkError(chunk_message(where, a, b, err)) from exc
