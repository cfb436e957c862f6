"""``CountBlock``: the counts of a block of genes as the NB GLM kernels read them.

A block is genes × samples in CSR form (non-zero counts only, samples in increasing order
within a gene), so cell-level data are densified one gene per thread at a time. The dense G×m
array is made only on request, for the steps that need it (the linear-model start of a
non-group design, Cook's robust variance when every design cell has fewer than 1,000
samples, ``exact_dispersion``); it is kept only by blocks made from a dense array. The grid
fallback of the dispersions takes its genes as a block of their own (``subset``), the
optimiser fallback of the GLM one gene at a time as a dense row (``rows``).

:class:`GeneBlocks` cuts a count matrix into blocks once and keeps them between the passes of
a fit when that is cheap.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from pyflashmm._kernels.aggregate import csr_rows_dense
from pyflashmm._kernels.nb_layout import CountsCSR, dense_to_csr


class CountBlock:
    """Counts of G genes over m samples (see the module docstring).

    Parameters
    ----------
    indptr, indices, data : np.ndarray
        CSR arrays (int64, int32, float64) of the genes × samples counts, without explicit
        zeros and with increasing sample indices within each gene.
    n_samples : int
        m.
    dense : np.ndarray, optional
        The same counts as a dense G×m float64 array, when the caller already has it.
    """

    def __init__(self, indptr, indices, data, n_samples, dense=None):
        self.indptr = indptr
        self.indices = indices
        self.data = data
        self.n_samples = int(n_samples)
        self._dense = dense

    @classmethod
    def from_dense(cls, Y) -> CountBlock:
        """A block from a dense G×m array (kept as the block's dense form)."""
        Y = np.ascontiguousarray(Y, dtype=np.float64)
        return cls(*dense_to_csr(Y), Y.shape[1], dense=Y)

    @classmethod
    def from_csr_rows(cls, Yt, rows) -> CountBlock:
        """Rows ``rows`` of a canonical genes × samples CSR matrix ``Yt`` (no explicit zeros).

        When the rows are increasing and every row they skip is empty (e.g. consecutive
        genes that are not all-zero), the block's counts are views of Yt's arrays, not copies.
        """
        rows = np.asarray(rows, dtype=np.int64)
        start = Yt.indptr[rows]
        stop = Yt.indptr[rows + 1]
        p0, p1 = int(Yt.indptr[rows[0]]), int(Yt.indptr[rows[-1] + 1])
        if np.all(np.diff(rows) > 0) and int(np.sum(stop - start)) == p1 - p0:
            indptr = np.empty(rows.size + 1, dtype=np.int64)
            indptr[0] = 0
            np.cumsum(stop - start, out=indptr[1:])
            return cls(
                indptr,
                np.ascontiguousarray(Yt.indices[p0:p1], dtype=np.int32),
                np.ascontiguousarray(Yt.data[p0:p1], dtype=np.float64),
                Yt.shape[1],
            )
        sub = Yt[rows]
        return cls(
            np.ascontiguousarray(sub.indptr, dtype=np.int64),
            np.ascontiguousarray(sub.indices, dtype=np.int32),
            np.ascontiguousarray(sub.data, dtype=np.float64),
            Yt.shape[1],
        )

    @property
    def shape(self) -> tuple[int, int]:
        return (self.indptr.shape[0] - 1, self.n_samples)

    @property
    def csr(self) -> CountsCSR:
        """The counts as the kernels read them."""
        return CountsCSR(self.indptr, self.indices, self.data, self.n_samples)

    def dense(self) -> np.ndarray:
        """All counts as a dense G×m array: the block's own for a block made from one, else a
        new array each call (a sparse block never keeps a dense copy)."""
        if self._dense is not None:
            return self._dense
        return self.rows(slice(None))

    def rows(self, idx) -> np.ndarray:
        """Genes ``idx`` (an index, indices, a slice or a boolean mask) as a dense k×m array."""
        idx = np.atleast_1d(np.arange(self.shape[0])[idx])
        if self._dense is not None:
            return np.ascontiguousarray(self._dense[idx])
        rows = np.ascontiguousarray(idx, dtype=np.int64)
        return csr_rows_dense(self.indptr, self.indices, self.data, rows, self.n_samples)

    def subset(self, idx) -> CountBlock:
        """Genes ``idx`` as a block of their own."""
        sub = sp.csr_matrix((self.data, self.indices, self.indptr), shape=self.shape)[idx]
        dense = None if self._dense is None else self._dense[idx]
        return CountBlock(
            np.ascontiguousarray(sub.indptr, dtype=np.int64),
            np.ascontiguousarray(sub.indices, dtype=np.int32),
            np.ascontiguousarray(sub.data, dtype=np.float64),
            self.n_samples,
            dense=None if dense is None else np.ascontiguousarray(dense),
        )


def genes_by_samples(Y):
    """Counts Y (samples × genes, validated: float64 dense or canonical CSR) as genes × samples,
    the layout gene blocks are cut from: a transposed view of a dense array, or a CSR copy
    without explicit zeros (sorted sample indices within each gene)."""
    if sp.issparse(Y):
        Yt = Y.T.tocsr()
        Yt.eliminate_zeros()
        return Yt
    return Y.T


def gene_block(Yt, idx) -> CountBlock:
    """Genes ``idx`` of ``genes_by_samples`` output as a :class:`CountBlock`."""
    if sp.issparse(Yt):
        return CountBlock.from_csr_rows(Yt, idx)
    return CountBlock.from_dense(Yt[idx])


#: dense-input gene blocks (the dense array and its CSR form, ≤ 20 bytes per count) are kept
#: between passes up to 256 MiB in total; sparse blocks (CSR views) are always kept
CACHE_BYTES = 2**28


class GeneBlocks:
    """The genes ``genes`` of Yt (``genes_by_samples``) in blocks of ``size`` genes.

    Iterating yields (gene indices, :class:`CountBlock`); the blocks are made on the first
    pass and kept for later passes when they are CSR views or small enough (``CACHE_BYTES``),
    otherwise made again.
    """

    def __init__(self, Yt, genes, size: int):
        self.Yt = Yt
        self.index = [genes[k : k + size] for k in range(0, len(genes), size)]
        self.keep = sp.issparse(Yt) or len(genes) * Yt.shape[1] * 20 <= CACHE_BYTES
        self._kept: list = []

    def __len__(self) -> int:
        return len(self.index)

    def __iter__(self):
        for b, idx in enumerate(self.index):
            if b < len(self._kept):
                yield idx, self._kept[b]
                continue
            blk = gene_block(self.Yt, idx)
            if self.keep:
                self._kept.append(blk)
            yield idx, blk
