"""Design layouts, sample classes and count blocks (``_nbglm.layout``, ``_nbglm.count_block``,
``_kernels.nb_layout``, ``_kernels.aggregate``, ``_kernels.checks``)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from pyflashmm._kernels.aggregate import csr_rows_dense
from pyflashmm._kernels.checks import count_problems
from pyflashmm._nbglm.count_block import CountBlock, GeneBlocks, gene_block, genes_by_samples
from pyflashmm._nbglm.counts_input import as_counts
from pyflashmm._nbglm.layout import design_layout, sample_classes


def test_design_layout_rows_labels_and_start(rng):
    m = 30
    X = np.column_stack([np.ones(m), rng.integers(0, 3, m) == 1, rng.integers(0, 2, m)])
    lay = design_layout(X)
    uniq = np.unique(X, axis=0)
    assert lay.n_rows == uniq.shape[0] and lay.p == 3 and lay.m == m
    np.testing.assert_array_equal(lay.rows.Xr[lay.rows.lab], X)
    first = [int(np.flatnonzero(lay.rows.lab == q)[0]) for q in range(lay.n_rows)]
    assert first == sorted(first)  # rows numbered by first appearance
    np.testing.assert_array_equal(lay.row_size, np.bincount(lay.rows.lab))
    np.testing.assert_array_equal(lay.replicated(8), lay.row_size[lay.rows.lab] >= 8)
    # the start map: P times per-row sums of z is the least-squares fit of z on X
    z = rng.normal(size=m)
    sums = np.bincount(lay.rows.lab, weights=z, minlength=lay.n_rows)
    np.testing.assert_allclose(lay.start @ sums, np.linalg.lstsq(X, z, rcond=None)[0], rtol=1e-10)
    assert design_layout(np.ones((m, 1))).intercept_only
    assert design_layout(np.ones((m, 1))).is_group
    empty = design_layout(np.zeros((m, 0)))
    assert empty.n_rows == 1 and empty.start is None


def test_row_labels_match_whole_row_comparison(rng):
    # column-by-column codes give the groups of np.unique over whole rows (±0 equal, 1e-17 not)
    from pyflashmm._nbglm.layout import row_labels

    for t in range(200):
        m, p = int(rng.integers(1, 300)), int(rng.integers(1, 5))
        X = rng.choice([0.0, -0.0, 1.0, 2.5, 1e-17, -3.0], (m, p))
        if t % 4 == 0:
            X[:, -1] = rng.normal(size=m)
        _, first, inv = np.unique(X, axis=0, return_index=True, return_inverse=True)
        rank = np.empty(first.size, np.int64)
        rank[np.argsort(first)] = np.arange(first.size)  # numbered by first appearance
        lab, R = row_labels(X)
        assert R == first.size
        np.testing.assert_array_equal(lab, rank[inv.ravel()])


def test_layout_of_a_reduced_design_from_the_full_layout(rng):
    # columns dropped or X·N: the distinct rows found among the full layout's rows are those
    # found among the samples, labels included
    import scipy.linalg

    m = 60
    X = np.column_stack(
        [np.ones(m), np.eye(4)[rng.integers(0, 4, m)][:, 1:], rng.integers(0, 2, m)]
    )
    lay = design_layout(X)
    N = scipy.linalg.null_space(np.array([[0.0, 1.0, -1.0, 0.0, 0.0]]))
    for X0 in (np.delete(X, 1, axis=1), np.delete(X, [1, 2], axis=1), X @ N):
        a, b = design_layout(X0, coarsens=lay), design_layout(X0)
        for x, y in zip(a.rows, b.rows, strict=True):
            np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(a.row_size, b.row_size)
        np.testing.assert_array_equal(a.start, b.start)


def test_sample_classes_are_the_sorted_distinct_row_size_factor_pairs():
    rng = np.random.default_rng(8)
    X = np.eye(3)[rng.integers(0, 3, 200)]
    lay = design_layout(X)
    lab = lay.rows.lab
    sf = rng.choice([0.5, 1.0, 1.5, 2.0, 2.5], 200)
    cls = sample_classes(sf, lay)
    key = np.column_stack([lab, sf])
    uniq, inv, cnt = np.unique(key, axis=0, return_inverse=True, return_counts=True)
    n_cls = uniq.shape[0]
    assert cls.sf.size == n_cls
    np.testing.assert_array_equal(cls.cls, inv.ravel())
    np.testing.assert_array_equal(cls.size, cnt)
    np.testing.assert_array_equal(cls.sf, uniq[:, 1])
    np.testing.assert_array_equal(cls.row, uniq[:, 0])
    np.testing.assert_array_equal(
        cls.offsets, np.r_[0, np.cumsum(np.bincount(uniq[:, 0].astype(int)))]
    )
    # every sample its own class, in row order
    own = sample_classes(sf, lay, shared=False)
    np.testing.assert_array_equal(own.sf[own.cls], sf)
    np.testing.assert_array_equal(own.row[own.cls], lab)
    np.testing.assert_array_equal(own.offsets, np.r_[0, np.cumsum(np.bincount(lab))])
    assert (np.diff(own.row) >= 0).all()


def test_count_problems_finds_first_of_each_kind():
    x = np.array([0.0, 3.0, 2.5, -1.0, np.inf, np.nan, -np.inf, -2.0, np.nan, 0.5])
    # [first NaN, first ±inf, first negative (finite), first non-integer]
    assert count_problems(x).tolist() == [5, 4, 3, 2]
    assert count_problems(np.arange(10.0)).tolist() == [-1, -1, -1, -1]


def test_csr_rows_dense_matches_scipy_with_duplicates():
    rng = np.random.default_rng(3)
    A = sp.random(40, 30, density=0.2, random_state=4, format="csr")
    # row 0 gets column 1 stored three times (a non-canonical CSR, built from its arrays)
    extra = np.array([1, 1, 1], dtype=A.indices.dtype)
    indices = np.r_[extra, A.indices]
    data = np.r_[[1.0, 2.0, 4.0], A.data]
    indptr = np.r_[0, A.indptr[1:] + 3]
    dup = sp.csr_matrix((data, indices, indptr), shape=A.shape)
    assert not dup.has_canonical_format
    rows = np.r_[0, rng.choice(np.arange(1, 40), 11, replace=False)].astype(np.int64)
    got = csr_rows_dense(dup.indptr, dup.indices, dup.data, rows, 30)
    np.testing.assert_array_equal(got, dup[rows].toarray())
    assert got[0, 1] == A[0, 1] + 7.0


def test_count_block_forms_agree():
    """CountBlock from dense, from (views of) CSR rows and from CSR rows with gaps: the same
    counts, sample indices increasing, no explicit zeros."""
    rng = np.random.default_rng(3)
    Y = rng.poisson(0.4, (40, 30)).astype(float)
    Y[[4, 5, 17]] = 0.0  # all-zero genes (skipped by the pipeline's blocks)
    Yt = sp.csr_matrix(Y)
    keep = np.flatnonzero(Y.sum(axis=1) > 0)
    view = CountBlock.from_csr_rows(Yt, keep[:20])  # skips empty rows: arrays are views
    assert np.shares_memory(view.data, Yt.data)
    copy = CountBlock.from_csr_rows(Yt, keep[::-1][:20])  # decreasing rows: a copy
    assert not np.shares_memory(copy.data, Yt.data)
    gap = CountBlock.from_csr_rows(Yt, [0, 2, 7])  # skips non-empty rows 1, 3, 6: a copy
    assert not np.shares_memory(gap.data, Yt.data)
    np.testing.assert_array_equal(gap.dense(), Y[[0, 2, 7]])
    np.testing.assert_array_equal(view.dense(), Y[keep[:20]])
    np.testing.assert_array_equal(copy.dense(), Y[keep[::-1][:20]])
    dense = CountBlock.from_dense(Y)
    np.testing.assert_array_equal(dense.dense(), Y)
    whole = CountBlock.from_csr_rows(Yt, np.arange(40))
    np.testing.assert_array_equal(whole.dense(), Y)
    for blk in (dense, whole):
        assert (blk.data != 0).all() and blk.indices.dtype == np.int32
        assert blk.csr.m == 30
        for g in range(blk.shape[0]):
            i = blk.indices[blk.indptr[g] : blk.indptr[g + 1]]
            np.testing.assert_array_equal(i, np.flatnonzero(Y[g]))
        np.testing.assert_array_equal(blk.rows([7, 2]), Y[[7, 2]])
        np.testing.assert_array_equal(blk.rows(9), Y[[9]])
        np.testing.assert_array_equal(blk.subset([3, 8, 1]).dense(), Y[[3, 8, 1]])
    # a sparse block never keeps a dense copy
    assert whole.dense() is not whole.dense()
    # explicit zeros and duplicate entries, as the fit reads them (validated, then genes ×
    # samples): summed, zeros dropped, the caller's matrix unchanged
    coo = sp.coo_matrix(([2.0, 3.0, 0.0], ([0, 0, 1], [1, 1, 2])), shape=(2, 4))
    blk = gene_block(genes_by_samples(as_counts(coo.T)), np.arange(2))
    np.testing.assert_array_equal(blk.dense(), [[0, 5, 0, 0], [0, 0, 0, 0]])
    assert blk.data.tolist() == [5.0]
    csr = sp.csr_matrix(([2.0, 3.0, 0.0], [1, 1, 2], [0, 2, 3]), shape=(2, 4))
    gene_block(genes_by_samples(as_counts(csr.T)), np.arange(2))
    assert csr.data.tolist() == [2.0, 3.0, 0.0] and csr.indptr.tolist() == [0, 2, 3]


def test_gene_blocks_cover_the_genes_once_and_are_reused():
    rng = np.random.default_rng(4)
    Y = rng.poisson(1.0, (50, 12)).astype(float)
    genes = np.array([0, 2, 3, 5, 6, 7, 9, 11])
    for Yt in (Y.T, sp.csr_matrix(Y.T)):
        blocks = GeneBlocks(Yt, genes, 3)
        first = list(blocks)
        assert len(blocks) == 3
        np.testing.assert_array_equal(np.concatenate([i for i, _ in first]), genes)
        for idx, blk in first:
            np.testing.assert_array_equal(blk.dense(), Y.T[idx])
        again = list(blocks)
        assert all(a[1] is b[1] for a, b in zip(first, again, strict=True))
