"""What the front end reads: counts, the cell table and gene names from an AnnData, a file or
a ``(counts, obs)`` pair, checked before any work is done.

Counts stay where they are: an in-memory matrix is used as it is, a backed ``.h5ad`` (opened
from a path, or an AnnData opened with ``backed="r"``) and a ``.zarr`` store (opened from a
path) are read in row chunks, including a layer (``layers[name]`` is opened as an on-disk
sparse dataset rather than loaded), and so is a dask array (an AnnData opened with
``anndata.experimental.read_lazy``, whose X and layers are dask arrays of CSR chunks, or a
``(dask array, obs)`` pair), in its own row chunks. Only the cell table (and the gene names)
is loaded whole.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from pyflashmm._checks import MissingColumnError
from pyflashmm._distributed import is_dask_array, read_chunk

#: rows read to decide what kind of values the counts hold (integers, non-integers, negatives)
PEEK_ROWS = 2_000


@dataclass(frozen=True, eq=False)
class CellData:
    """Counts (cells × genes, row-sliceable), the cell table and the gene names.

    Attributes
    ----------
    counts : ndarray, scipy.sparse matrix or a backed dataset
        Cells × genes; ``counts[a:b]`` gives a dense or sparse block.
    obs : pandas.DataFrame
        One row per cell.
    gene_names : list of str
    where : str
        Where the counts were read, for messages (``"X"``, ``"layers['counts']"``, ``"counts"``).
    layer : str or None
    backed : bool
        The counts are read from disk in chunks.
    """

    counts: object
    obs: pd.DataFrame
    gene_names: list[str]
    where: str
    layer: str | None
    backed: bool
    _close: Callable[[], None] | None = field(default=None, repr=False)

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.counts.shape[0]), int(self.counts.shape[1])

    def close(self) -> None:
        """Close the file this object opened (nothing for data the caller opened)."""
        if self._close is not None:
            self._close()


def is_anndata(data) -> bool:
    return hasattr(data, "obs") and hasattr(data, "var_names") and hasattr(data, "layers")


def _open_path(path: Path):
    """An ``.h5ad`` file opened backed (read in chunks) as an AnnData, and True."""
    import anndata

    if not path.exists():
        raise FileNotFoundError(f"data: no such file: {path}")
    suffix = path.suffix.lower()
    if suffix == ".h5ad":
        try:
            return anndata.read_h5ad(path, backed="r"), True
        except OSError as exc:  # h5py's "file signature not found" and the like
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ValueError(f"data: cannot read {path} as an .h5ad file ({reason})") from None
    raise ValueError(f"data: {str(path)!r} is not an .h5ad file or a .zarr store")


def _open_zarr(path: Path, layer: str | None) -> CellData:
    """The cells of a ``.zarr`` AnnData store, opened lazily: the cell table and the gene
    names are loaded, the counts (``X`` or ``layers[layer]``) stay in the store and are read
    in row chunks (a sparse matrix through anndata's on-disk sparse dataset, a dense one as a
    zarr array)."""
    import anndata
    import zarr

    try:
        root = zarr.open_group(path.resolve(), mode="r")  # workers may run elsewhere
        obs = anndata.io.read_elem(root["obs"])
        var = anndata.io.read_elem(root["var"])
    except Exception as exc:  # noqa: BLE001 - zarr raises many types; report one line
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"data: cannot read {path} as a .zarr store ({reason})") from None
    layers = list(root["layers"].keys()) if "layers" in root else []
    if layer is None:
        if "X" not in root:
            raise ValueError(
                "data: the AnnData has no X (adata.X is None); pass layer= naming the counts "
                f"(layers: {layers})"
            )
        elem, where = root["X"], "X"
    else:
        if not isinstance(layer, str):
            raise TypeError(f"layer must be a layer name (str) or None; got {type(layer).__name__}")
        if layer not in layers:
            raise MissingColumnError(f"layer {layer!r} not in the AnnData (layers: {layers})")
        elem, where = root["layers"][layer], f"layers[{layer!r}]"
    if isinstance(elem, zarr.Group):
        encoding = str(elem.attrs.get("encoding-type", ""))
        if not encoding.endswith("_matrix"):
            raise ValueError(f"data: {where} of {path} is not a matrix (encoding {encoding!r})")
        counts = anndata.io.sparse_dataset(elem)
    else:
        counts = elem
    genes = [str(g) for g in var.index]
    return CellData(counts, obs, genes, where, layer, True, None)


def _obs_frame(obs) -> pd.DataFrame:
    """The cell table as a pandas DataFrame: an AnnData opened with
    ``anndata.experimental.read_lazy`` holds it as a lazy ``Dataset2D``, loaded here (the one
    thing that is loaded whole)."""
    if isinstance(obs, pd.DataFrame):
        return obs
    if hasattr(obs, "to_memory"):
        return obs.to_memory()
    raise TypeError(f"data: the AnnData's obs is a {type(obs).__name__}, not a table")


def _anndata_counts(adata, layer):
    """The counts of ``adata`` (X or a layer) and where they came from."""
    backed = bool(getattr(adata, "isbacked", False))
    if layer is None:
        if (backed and "X" not in adata.file) or (not backed and adata.X is None):
            raise ValueError(
                "data: the AnnData has no X (adata.X is None); pass layer= naming the counts "
                f"(layers: {list(adata.layers)})"
            )
        return adata.X, "X"
    if not isinstance(layer, str):
        raise TypeError(f"layer must be a layer name (str) or None; got {type(layer).__name__}")
    if layer not in adata.layers:
        raise MissingColumnError(
            f"layer {layer!r} not in the AnnData (layers: {list(adata.layers)})"
        )
    if backed:  # read from the file in chunks, as X is (anndata loads backed layers whole)
        import anndata
        import h5py

        stored = adata.file[f"layers/{layer}"]
        if isinstance(stored, h5py.Dataset):
            return stored, f"layers[{layer!r}]"
        if str(stored.attrs.get("encoding-type", "")).endswith("_matrix"):
            return anndata.io.sparse_dataset(stored), f"layers[{layer!r}]"
    return adata.layers[layer], f"layers[{layer!r}]"


def open_cells(data, layer: str | None = None) -> CellData:
    """Counts, cell table and gene names of ``data`` (see :func:`pyflashmm.de`).

    Parameters
    ----------
    data : AnnData, str or path-like, SimulatedData or (counts, obs)
        An AnnData (in memory or backed), a path to ``.h5ad`` (opened backed) or ``.zarr``
        (opened lazily: both are read in row chunks),
        the result of :func:`pyflashmm.simulate_rnaseq`, or a pair of a cells × genes matrix
        (ndarray, scipy.sparse, or a DataFrame, whose rows are matched to obs by label) and a
        DataFrame.
    layer : str, optional
        The AnnData layer holding the counts (default ``X``).
    """
    close = None
    if isinstance(data, str | os.PathLike):
        path = Path(data)
        if path.suffix.lower() == ".zarr":
            if not path.exists():
                raise FileNotFoundError(f"data: no such file: {path}")
            return _open_zarr(path, layer)
        adata, backed = _open_path(path)
        close = adata.file.close if backed else None
        data = adata
    if is_anndata(data):
        try:
            counts, where = _anndata_counts(data, layer)
        except Exception:
            if close is not None:
                close()
            raise
        backed = bool(getattr(data, "isbacked", False)) or is_dask_array(counts)
        genes = [str(g) for g in data.var_names]
        return CellData(counts, _obs_frame(data.obs), genes, where, layer, backed, close)
    if hasattr(data, "counts") and hasattr(data, "obs") and hasattr(data, "gene_names"):
        if layer is not None:  # a SimulatedData: its counts, cell table and gene names
            raise ValueError("layer: simulated data have no layers")
        return CellData(data.counts, data.obs, [str(g) for g in data.gene_names], "counts",
                        None, False, None)  # fmt: skip
    if isinstance(data, tuple | list) and len(data) == 2:
        counts, obs = data
        if layer is not None:
            raise ValueError("layer: only an AnnData has layers; data is a (counts, obs) pair")
        if not isinstance(obs, pd.DataFrame):
            raise TypeError(f"data: obs must be a pandas DataFrame; got {type(obs).__name__}")
        if isinstance(counts, pd.DataFrame):
            counts = _aligned(counts, obs)
            genes = [str(c) for c in counts.columns]
            counts = counts.sparse.to_coo().tocsr() if _all_sparse(counts) else counts.to_numpy()
        else:
            if not hasattr(counts, "shape") or len(counts.shape) != 2:
                raise TypeError(
                    "data: counts must be a 2-D cells × genes matrix (ndarray, scipy.sparse, "
                    f"DataFrame); got {type(counts).__name__}"
                )
            genes = [f"gene{j}" for j in range(counts.shape[1])]
        return CellData(counts, obs, genes, "counts", None, False, None)
    raise TypeError(
        "data must be an AnnData, a path to an .h5ad file, or a (counts, obs) pair; got "
        f"{type(data).__name__}"
    )


def _aligned(counts: pd.DataFrame, obs: pd.DataFrame) -> pd.DataFrame:
    """The counts' rows in the order of ``obs``: a DataFrame's rows are matched to the cells by
    label, as pandas aligns, unless they carry no labels (a default RangeIndex)."""
    if counts.index.equals(obs.index):
        return counts
    if isinstance(counts.index, pd.RangeIndex) and counts.index.equals(pd.RangeIndex(len(counts))):
        return counts  # no cell labels: rows are taken in order
    if len(counts) == len(obs) and counts.index.is_unique and set(counts.index) == set(obs.index):
        return counts.loc[obs.index]
    missing = obs.index.difference(counts.index)
    raise ValueError(
        "data: the rows of the counts DataFrame are not the cells of obs (its index differs; "
        f"{len(missing)} cells of obs have no row, e.g. {list(missing[:3])})"
    )


def _all_sparse(frame: pd.DataFrame) -> bool:
    return len(frame.columns) > 0 and all(isinstance(t, pd.SparseDtype) for t in frame.dtypes)


def _dense_or_csr(block):
    if hasattr(block, "compute"):  # a block of a dask array (of CSR chunks, or dense)
        block = block.compute()
    if sp.issparse(block):
        return sp.csr_matrix(block)
    return np.asarray(block)


@dataclass(frozen=True)
class ValueSummary:
    """What the first rows of a count matrix hold (see :func:`peek_values`)."""

    numeric: bool
    negative: float | None  # a negative value, if any
    non_integer: float | None  # a non-integer value, if any
    non_finite: bool


def peek_values(cells: CellData, rows: int = PEEK_ROWS) -> ValueSummary:
    """Look at the stored values of the first ``rows`` cells: are they counts?"""
    dtype = getattr(cells.counts, "dtype", None)
    if dtype is not None and np.dtype(dtype).kind not in "biuf":
        return ValueSummary(False, None, None, False)
    block = _dense_or_csr(cells.counts[: min(rows, cells.shape[0])])
    values = np.asarray(block.data if sp.issparse(block) else block)
    if values.dtype.kind not in "biuf":
        return ValueSummary(False, None, None, False)
    values = values.ravel()
    finite = np.isfinite(values)
    v = values[finite]
    neg = v[v < 0]
    frac = v[v != np.floor(v)]
    return ValueSummary(
        True,
        float(neg[0]) if neg.size else None,
        float(frac[0]) if frac.size else None,
        not bool(finite.all()),
    )


def read_csr(cells: CellData, chunk_size: int) -> sp.csr_matrix | np.ndarray:
    """The whole count matrix in memory, for fits that need every cell of a gene at once
    (in one process): in-memory input as it is; backed input read in row chunks into one CSR
    matrix (its sparse form is the only copy made). A chunk that cannot be read raises a
    ChunkError naming its cells."""
    counts = cells.counts
    if isinstance(counts, np.ndarray) or sp.issparse(counts):
        return counts
    n = cells.shape[0]
    parts = [sp.csr_matrix(read_chunk(counts, a, min(n, a + chunk_size), cells.where))
             for a in range(0, n, chunk_size)]  # fmt: skip
    return sp.vstack(parts, format="csr") if parts else sp.csr_matrix(cells.shape)
