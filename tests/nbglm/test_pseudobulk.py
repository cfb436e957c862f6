"""``pseudobulk`` sums against pandas' groupby, for dense, sparse and non-canonical input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from pyflashmm import pseudobulk


def test_pseudobulk_matches_groupby(rng):
    n, G = 300, 7
    Y = rng.poisson(1.0, size=(n, G)).astype(float)
    obs = pd.DataFrame({"sam": rng.choice(["s1", "s2", "s3"], n), "cls": rng.choice(["a", "b"], n)})
    pb, tab = pseudobulk(sp.csr_matrix(Y), obs, by=["sam", "cls"], chunk_size=64)
    ref = pd.DataFrame(Y).groupby([obs["sam"], obs["cls"]], sort=False).sum()
    assert (
        list(pb.index)
        == list(tab.index)
        == [f"{s}_{c}" for s, c in zip(tab["sam"], tab["cls"], strict=True)]
    )
    assert list(pb.columns) == [f"gene{j}" for j in range(G)]
    for k, row in tab.iterrows():
        np.testing.assert_allclose(pb.loc[k], ref.loc[(row["sam"], row["cls"])].to_numpy())
        assert row["n_cells"] == ((obs["sam"] == row["sam"]) & (obs["cls"] == row["cls"])).sum()
    np.testing.assert_allclose(tab["libsize"], pb.sum(axis=1))
    pb2, _ = pseudobulk(Y, obs, by=["sam", "cls"])
    np.testing.assert_allclose(pb, pb2)
    with pytest.raises(ValueError, match="by: column 'nope' used in the pseudobulk grouping"):
        pseudobulk(Y, obs, by=["nope"])


def test_pseudobulk_sparse_integer_csc_and_duplicate_entries(rng):
    n, G = 200, 5
    Y = rng.poisson(2.0, size=(n, G))
    obs = pd.DataFrame({"sam": rng.choice(["s1", "s2", "s3", "s4"], n)})
    ref = pd.DataFrame(Y).groupby(obs["sam"], sort=False).sum().to_numpy(float)
    pb, _ = pseudobulk(sp.csc_matrix(Y.astype(np.int32)), obs, by="sam", chunk_size=37)
    np.testing.assert_array_equal(pb, ref)
    # the same matrix with every entry stored twice, as halves (non-canonical CSR)
    csr = sp.csr_matrix(Y)
    half = csr.data // 2
    data = np.column_stack([half, csr.data - half]).ravel()
    indices = np.repeat(csr.indices, 2)
    dup = sp.csr_matrix((data, indices, csr.indptr * 2), shape=Y.shape)
    assert dup.nnz == 2 * csr.nnz
    pb2, _ = pseudobulk(dup, obs, by="sam", chunk_size=50)
    np.testing.assert_array_equal(pb2, ref)


def test_count_flaws_reports_by_priority_in_one_pass():
    """NaN/Inf before a negative value before a non-integer one, whatever their order; any
    numeric dtype."""
    from pyflashmm._kernels import aggregate as k

    cases = [
        ([2.0, 1.5, -1.0, np.nan], k.FLAW_NON_FINITE),
        ([np.inf, 0.0], k.FLAW_NON_FINITE),
        ([1.5, 3.0, -2.0], k.FLAW_NEGATIVE),
        ([0.0, 7.0, 2.25], k.FLAW_NON_INTEGER),
        ([0.0, 7.0, 1e9], k.FLAW_NONE),
    ]
    for values, flaw in cases:
        for dtype in (np.float64, np.float32):
            assert k.count_flaws(np.asarray(values, dtype=dtype)) == flaw, (values, dtype)
    assert k.count_flaws(np.array([3, -1, 2], dtype=np.int32)) == k.FLAW_NEGATIVE
    assert k.count_flaws(np.array([3, 0, 2], dtype=np.uint16)) == k.FLAW_NONE


@pytest.mark.parametrize("dtype", [np.float16, ">f4", ">i4", np.longdouble, np.bool_, np.uint8])
def test_counts_of_any_numeric_dtype_are_summed(dtype):
    """Counts stored as float16, big-endian, long double, bool or uint8 give the float64 sums,
    dense and (where scipy takes the dtype) CSR."""
    rng = np.random.default_rng(4)
    Y = rng.poisson(0.8, (60, 7)).astype(np.float64)
    if np.dtype(dtype) == np.bool_:
        Y = np.minimum(Y, 1.0)
    obs = pd.DataFrame({"donor_id": rng.choice(["D1", "D2", "D3"], 60)})
    ref, _ = pseudobulk(Y, obs, by="donor_id")
    stored = Y.astype(dtype)
    forms = [stored]
    if np.dtype(dtype) in (np.longdouble, np.bool_, np.uint8):  # the others scipy refuses
        forms.append(sp.csr_matrix(stored))
    for counts in forms:
        got, _ = pseudobulk(counts, obs, by="donor_id")
        pd.testing.assert_frame_equal(got, ref, check_exact=True)


def test_group_sums_are_the_same_on_any_number_of_threads(rng):
    """The CSR kernel adds every group's cells in cell order in one task (groups interleaved
    over tasks): non-integer sums are bitwise those of a sequential pass, on 1 or 2 threads."""
    import numba

    from pyflashmm._kernels.aggregate import GROUP_SETS, add_rows_by_group_csr

    n, G, n_groups = 500, 40, GROUP_SETS + 7  # groups in every set, some sets with two
    Y = sp.random(n, G, density=0.3, format="csr", random_state=np.random.default_rng(3))
    Y.data = rng.gamma(0.5, 3.0, Y.nnz)  # non-integer: the order of additions shows
    lab = rng.integers(0, n_groups, n)
    ref = np.zeros((n_groups, G))
    for c in range(n):  # a sequential pass, cell after cell
        for k in range(Y.indptr[c], Y.indptr[c + 1]):
            ref[lab[c], Y.indices[k]] += Y.data[k]
    before = numba.get_num_threads()
    try:
        for threads in sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)}):
            numba.set_num_threads(threads)
            out = np.zeros((n_groups, G))
            add_rows_by_group_csr(out, Y.data, Y.indices, Y.indptr, lab)
            np.testing.assert_array_equal(out, ref)
    finally:
        numba.set_num_threads(before)
