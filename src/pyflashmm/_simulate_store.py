"""AnnData stores (``.zarr`` directories, ``.h5ad`` files) written one cell block at a time.

The simulator's ``out=`` path: the cell and gene tables and the truth go in first through
anndata's element writers, then ``X`` is a CSR group (anndata's ``csr_matrix`` encoding)
whose ``data`` and ``indices`` grow by one wave of cell blocks at a time, while ``indptr`` (one
entry per cell, known up front) is filled in slice by slice. Nothing of the size of the
matrix is ever held in memory, and the result reads back with ``anndata.read_zarr`` /
``anndata.read_h5ad`` like a file written by ``AnnData.write_*``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import anndata

__all__ = ["SUFFIXES", "CountsStore", "check_out", "remove_store", "stored_nnz"]

#: the store kinds, by (lower-case) suffix of the path
SUFFIXES = (".zarr", ".h5ad")
#: entries per chunk of X/data and X/indices (zarr: 4 MiB of int32 before compression)
ZARR_CHUNK_ENTRIES = 1 << 20
#: HDF5 chunks are smaller: h5py's default chunk cache is 1 MiB, and a chunk that does not
#: fit it is read and rewritten for every partial write
H5_CHUNK_ENTRIES = 1 << 18
#: anndata's encoding of a CSR matrix group
CSR_ATTRS = {"encoding-type": "csr_matrix", "encoding-version": "0.1.0"}


def check_out(out, overwrite: bool) -> Path:
    """The store path ``out`` as a Path, checked before any work is done.

    Raises
    ------
    ValueError
        Unknown suffix, a parent folder that does not exist, or an existing path without
        ``overwrite=True``.
    """
    if not isinstance(out, (str, os.PathLike)):
        raise ValueError(f"out must be a path ending in .zarr or .h5ad, got {type(out).__name__}")
    path = Path(out)
    if path.suffix.lower() not in SUFFIXES:
        raise ValueError(f"out={str(out)!r} must end in .zarr or .h5ad")
    parent = path.parent
    if not parent.is_dir():
        raise ValueError(f"out={str(out)!r}: the folder {str(parent)!r} does not exist")
    if path.exists() and not overwrite:
        raise ValueError(f"out={str(out)!r} exists; pass overwrite=True to replace it")
    return path


def remove_store(path: Path) -> None:
    """Delete a store (a zarr directory or any file) if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def stored_nnz(path) -> int:
    """Number of stored non-zeros of the store's ``X`` (reads only its shape)."""
    path = Path(path)
    if path.suffix.lower() == ".h5ad":
        import h5py

        with h5py.File(path, "r") as f:
            return int(f["X/data"].shape[0])
    import zarr

    return int(zarr.open_group(path, mode="r")["X/data"].shape[0])


class CountsStore:
    """An AnnData store at ``path`` whose ``X`` (n_cells × n_genes CSR) is appended row-wise.

    Parameters
    ----------
    path : pathlib.Path
        ``.zarr`` or ``.h5ad`` path (checked by :func:`check_out`; replaced if it exists).
    skeleton : anndata.AnnData
        obs, var, uns, varm, ... of the result, without ``X``.
    """

    def __init__(self, path: Path, skeleton: anndata.AnnData):
        try:
            from anndata.io import write_elem
        except ImportError:  # anndata < 0.11
            from anndata.experimental import write_elem

        self.path = path
        self.n_cells, self.n_genes = skeleton.shape
        self.total = 0  # non-zeros written so far
        self.rows = 0  # cells written so far
        self._h5 = path.suffix.lower() == ".h5ad"
        remove_store(path)
        skeleton = skeleton.copy()
        # as AnnData.write_h5ad / write_zarr do by default, so that the tables read back the same
        skeleton.strings_to_categoricals()
        if self._h5:
            import h5py

            self._file = root = h5py.File(path, "w")
        else:
            import anndata
            import zarr

            kwargs = {}
            if int(zarr.__version__.split(".")[0]) >= 3:
                # the format AnnData.write_zarr would pick (chosen here: anndata's own group
                # opener warns about the v2 default)
                kwargs["zarr_format"] = anndata.settings.zarr_write_format
            self._file = None
            root = zarr.open_group(path, mode="w", **kwargs)
        write_elem(root, "/", skeleton)
        root.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
        X = root.create_group("X")
        X.attrs.update({**CSR_ATTRS, "shape": [self.n_cells, self.n_genes]})
        self._data = self._growable(X, "data", np.int32)
        self._indices = self._growable(X, "indices", np.int32)
        # anndata reads indptr[0] and the row ends; int64 since nnz may pass 2^31
        self._indptr = self._fixed(X, "indptr", np.int64, self.n_cells + 1)

    def _growable(self, group, name, dtype):
        if self._h5:
            return group.create_dataset(
                name, shape=(0,), maxshape=(None,), chunks=(H5_CHUNK_ENTRIES,), dtype=dtype
            )
        return _zarr_array(group, name, 0, dtype)

    def _fixed(self, group, name, dtype, n):
        if self._h5:
            chunks = (min(H5_CHUNK_ENTRIES, n),)
            arr = group.create_dataset(name, shape=(n,), chunks=chunks, dtype=dtype, fillvalue=0)
        else:
            arr = _zarr_array(group, name, n, dtype)
        arr[0:1] = np.zeros(1, dtype=dtype)
        return arr

    def append(self, r0: int, r1: int, ends: np.ndarray, indices, data) -> None:
        """Rows ``r0:r1`` (the next ones): their non-zeros ``indices``/``data`` in row order,
        ``ends`` the cumulative non-zeros at the end of each row (0-based in this call)."""
        if r0 != self.rows or r1 - r0 != ends.shape[0]:
            raise RuntimeError(f"rows {r0}:{r1} do not follow row {self.rows}")
        k = int(data.shape[0])
        t0 = self.total
        if k:
            for arr, values in ((self._data, data), (self._indices, indices)):
                if self._h5:
                    arr.resize((t0 + k,))
                    arr[t0 : t0 + k] = values
                else:
                    arr.append(np.ascontiguousarray(values, dtype=arr.dtype))
        if r1 > r0:
            self._indptr[r0 + 1 : r1 + 1] = t0 + np.asarray(ends, dtype=np.int64)
        self.total = t0 + k
        self.rows = r1

    def close(self) -> None:
        """Check that every row was written and release the file."""
        try:
            if self.rows != self.n_cells:
                raise RuntimeError(f"{self.rows} of {self.n_cells} rows were written")
        finally:
            if self._file is not None:
                self._file.close()
                self._file = None

    def close_quietly(self) -> None:
        """Release the file without checks (after an error)."""
        if self._file is not None:
            try:
                self._file.close()
            finally:
                self._file = None


def _zarr_array(group, name, n, dtype):
    chunks = (ZARR_CHUNK_ENTRIES,)
    if hasattr(group, "create_array"):  # zarr-python 3
        return group.create_array(name, shape=(n,), chunks=chunks, dtype=dtype, fill_value=0)
    return group.create_dataset(name, shape=(n,), chunks=chunks, dtype=dtype, fill_value=0)
