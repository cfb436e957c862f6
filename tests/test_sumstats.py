import numba
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import pyflashmm as fm
from pyflashmm._lmm.stats import SummaryStats

TRANSFORMS = {None: lambda v: v, "log1p": np.log1p, "log2p1": lambda v: np.log2(1 + v)}


def counts_data(rng, n=300, G=40, p=4, q=7, density=0.3):
    Y = sp.random(n, G, density=density, format="csr", random_state=rng, dtype=np.float64)
    Y.data = np.round(Y.data * 20) + 1
    X = np.column_stack([np.ones(n), rng.normal(size=(n, p - 1))])
    g = rng.integers(0, q, n)
    Z = sp.csr_matrix((np.ones(n), (np.arange(n), g)), shape=(n, q))
    return Y, X, Z


def oracle(Y, X, Z, transform):
    Yt = TRANSFORMS[transform](Y.toarray() if sp.issparse(Y) else np.asarray(Y, dtype=float))
    Zd = Z.toarray() if sp.issparse(Z) else Z
    return {
        "XX": X.T @ X,
        "XY": X.T @ Yt,
        "ZX": Zd.T @ X,
        "ZY": Zd.T @ Yt,
        "ZZ": Zd.T @ Zd,
        "Ynorm": (Yt**2).sum(axis=0),
    }


@pytest.mark.parametrize("fmt", ["csr", "csc", "dense", "coo"])
@pytest.mark.parametrize("transform", [None, "log1p", "log2p1"])
def test_kernels_match_numpy_oracle(rng, fmt, transform):
    Y, X, Z = counts_data(rng)
    Yin = Y.toarray() if fmt == "dense" else Y.asformat(fmt)
    s = fm.summary_stats(Yin, X, Z, transform=transform, chunk_size=77)
    ref = oracle(Y, X, Z, transform)
    for name, value in ref.items():
        np.testing.assert_allclose(getattr(s, name), value, rtol=1e-12, atol=1e-12, err_msg=name)
    assert s.n == Y.shape[0] and s.d.tolist() == [Z.shape[1]] and s.transform == transform


def test_unsorted_csr_and_int_data(rng):
    Y, X, Z = counts_data(rng)
    Yi = Y.astype(np.int64)
    # reverse the column order inside each row: same matrix, unsorted indices
    Yu = sp.csr_matrix((Yi.data.copy(), Yi.indices.copy(), Yi.indptr.copy()), shape=Yi.shape)
    for i in range(Yu.shape[0]):
        a, b = Yu.indptr[i], Yu.indptr[i + 1]
        Yu.indices[a:b] = Yu.indices[a:b][::-1]
        Yu.data[a:b] = Yu.data[a:b][::-1]
    Yu.has_sorted_indices = False
    s = fm.summary_stats(Yu, X, Z, transform="log1p", chunk_size=50)
    ref = oracle(Y, X, Z, "log1p")
    np.testing.assert_allclose(s.XY, ref["XY"], rtol=1e-12)
    np.testing.assert_allclose(s.Ynorm, ref["Ynorm"], rtol=1e-12)


def test_chunks_add_up_and_save_load(rng, tmp_path):
    Y, X, Z = counts_data(rng)
    whole = fm.summary_stats(Y, X, Z, transform="log2p1")
    a = fm.summary_stats(Y[:120], X[:120], Z[:120], transform="log2p1")
    b = fm.summary_stats(Y[120:], X[120:], Z[120:], transform="log2p1")
    merged = a + b
    for name in ("XX", "XY", "ZX", "ZY", "ZZ", "Ynorm"):
        np.testing.assert_allclose(getattr(merged, name), getattr(whole, name), rtol=1e-12)
    assert merged.n == whole.n
    path = tmp_path / "stats.npz"
    whole.save(path)
    back = SummaryStats.load(path)
    for name in ("XX", "XY", "ZX", "ZY", "ZZ", "Ynorm", "d"):
        np.testing.assert_array_equal(getattr(back, name), getattr(whole, name))
    assert back.gene_names == whole.gene_names and back.transform == "log2p1"
    with pytest.raises(ValueError, match="transform"):
        whole + fm.summary_stats(Y, X, Z)


def test_chunking_and_threads_do_not_change_bits(rng):
    Y, X, Z = counts_data(rng, n=5000, G=70)
    # dense Y is read in chunks (gene-parallel kernel): the chunk size changes no bit
    dense = Y.toarray()
    ref = fm.summary_stats(dense, X, Z, transform="log1p", chunk_size=5000)
    other = fm.summary_stats(dense, X, Z, transform="log1p", chunk_size=33)
    assert np.array_equal(other.XY, ref.XY) and np.array_equal(other.Ynorm, ref.Ynorm)
    # in-memory CSR (fixed cell blocks, partial sums added in block order) and dense, on 1 and
    # 2 threads: identical bits
    for Yin in (Y, dense):
        before = numba.get_num_threads()
        try:
            numba.set_num_threads(1)
            single = fm.summary_stats(Yin, X, Z, transform="log1p")
        finally:
            numba.set_num_threads(before)
        multi = fm.summary_stats(Yin, X, Z, transform="log1p")
        assert np.array_equal(single.XY, multi.XY) and np.array_equal(single.ZY, multi.ZY)
        assert np.array_equal(single.Ynorm, multi.Ynorm)
    np.testing.assert_allclose(fm.summary_stats(Y, X, Z, transform="log1p").XY, ref.XY,
                               rtol=1e-12)  # fmt: skip


def test_names_from_dataframes(rng):
    pd = pytest.importorskip("pandas")
    Y, X, Z = counts_data(rng, G=3)
    Ydf = pd.DataFrame(Y.toarray(), columns=["a", "b", "c"])
    Xdf = pd.DataFrame(X, columns=["(Intercept)", "u", "v", "w"])
    s = fm.summary_stats(Ydf, Xdf, Z)
    assert s.gene_names == ["a", "b", "c"] and s.fixed_names[0] == "(Intercept)"


@pytest.mark.parametrize(
    ("mutate", "exc", "match"),
    [
        (lambda Y, X, Z: (Y.toarray() * np.nan, X, Z), ValueError, "Y contains NaN"),
        (lambda Y, X, Z: (Y, X[:-1], Z), ValueError, "X has 299 rows"),
        (lambda Y, X, Z: (Y, X, Z[:-1]), ValueError, "Z has 299 rows"),
        (lambda Y, X, Z: (Y, np.where(X > 1, np.inf, X), Z), ValueError, "X contains NaN or Inf"),
        (lambda Y, X, Z: (Y.toarray().astype(str), X, Z), TypeError, "Y must hold real numbers"),
        (lambda Y, X, Z: (Y, X.astype(object).astype(str), Z), TypeError, "X must hold real"),
    ],
)
def test_bad_input_is_named(rng, mutate, exc, match):
    Y, X, Z = counts_data(rng)
    with pytest.raises(exc, match=match):
        fm.summary_stats(*mutate(Y, X, Z))


def test_bad_sizes_and_options(rng):
    Y, X, Z = counts_data(rng)
    with pytest.raises(ValueError, match=r"sum\(d\) = 5 must equal q = 7"):
        fm.summary_stats(Y, X, Z, d=[2, 3])
    with pytest.raises(ValueError, match="positive block sizes"):
        fm.summary_stats(Y, X, Z, d=[-1, 8])
    with pytest.raises(ValueError, match="transform must be one of"):
        fm.summary_stats(Y, X, Z, transform="sqrt")
    with pytest.raises(ValueError, match="chunk_size"):
        fm.summary_stats(Y, X, Z, chunk_size=0)
    Yneg = Y.copy()
    Yneg.data[0] = -3
    with pytest.raises(ValueError, match="Y > -1"):
        fm.summary_stats(Yneg, X, Z, transform="log1p")


def test_backed_anndata_is_streamed(rng, tmp_path):
    """Backed .h5ad (float32 counts, as CELLxGENE stores them) is read in row chunks; the
    transform is taken in float64, so the result equals the float64 oracle."""
    ad = pytest.importorskip("anndata")
    Y, X, Z = counts_data(rng, n=400, G=30)
    path = tmp_path / "y.h5ad"
    ad.AnnData(Y.astype(np.float32)).write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    try:
        s = fm.summary_stats(backed.X, X, Z, transform="log1p", chunk_size=64)
    finally:
        backed.file.close()
    ref = oracle(Y.astype(np.float32).astype(np.float64), X, Z, "log1p")
    for name in ("XY", "ZY", "Ynorm"):
        np.testing.assert_allclose(getattr(s, name), ref[name], rtol=1e-12, err_msg=name)


@pytest.mark.parametrize("fmt", ["csr", "csc"])
def test_duplicate_sparse_entries_are_summed_first(rng, fmt):
    """Non-canonical sparse input (repeated (cell, gene) pairs) means the sum of the entries,
    so the transform and the squares apply to the summed value."""
    Y, X, Z = counts_data(rng, n=200, G=15)
    base = Y.asformat(fmt)
    # every stored value split into two adjacent entries at the same position
    cls = sp.csr_matrix if fmt == "csr" else sp.csc_matrix
    dup = cls(
        (np.repeat(base.data / 2, 2), np.repeat(base.indices, 2), base.indptr * 2),
        shape=Y.shape,
    )
    assert not dup.has_canonical_format
    s = fm.summary_stats(dup, X, Z, transform="log1p")
    ref = oracle(Y, X, Z, "log1p")
    for name in ("XY", "ZY", "Ynorm"):
        np.testing.assert_allclose(getattr(s, name), ref[name], rtol=1e-12, err_msg=name)


def test_sparse_and_extension_dtype_dataframes(rng):
    Y, X, Z = counts_data(rng, n=150, G=6)
    sparse_df = pd.DataFrame.sparse.from_spmatrix(Y, columns=list("abcdef"))
    s = fm.summary_stats(sparse_df, X, Z, transform="log2p1")
    np.testing.assert_allclose(s.Ynorm, oracle(Y, X, Z, "log2p1")["Ynorm"], rtol=1e-12)
    assert s.gene_names == list("abcdef")
    ints = pd.DataFrame(Y.toarray().astype(np.int64)).astype("Int64")
    s2 = fm.summary_stats(ints, X, Z)
    np.testing.assert_allclose(s2.XY, oracle(Y, X, Z, None)["XY"], rtol=1e-12)
    with pytest.raises(TypeError, match="Y must hold real numbers"):
        fm.summary_stats(pd.DataFrame({"a": ["x"] * 150}), X, Z)


# ------------------------------------------------------------------ a Design in place of X


@pytest.fixture
def cells_and_counts(rng):
    from tests.test_design import cell_table

    obs = cell_table(rng, n=400)
    Y = sp.random(400, 12, density=0.3, format="csr", random_state=rng, dtype=np.float64)
    Y.data = np.round(Y.data * 20) + 1
    return obs, Y


@pytest.mark.parametrize(
    "random", ["(1 | donor_id)", "(1 | donor_id) + (1 | batch)", "(1 + time || donor_id)"]
)
def test_design_gives_the_explicit_call_and_its_names(cells_and_counts, random):
    obs, Y = cells_and_counts
    des = fm.design(obs, "~ 0 + cell_type + cell_type:condition", random)
    ours = fm.summary_stats(Y, des, transform="log1p")
    explicit = fm.summary_stats(Y, des.X_frame(), des.Z, des.d, transform="log1p")
    for name in ("XX", "XY", "ZX", "ZY", "ZZ", "Ynorm", "d"):
        np.testing.assert_array_equal(getattr(ours, name), getattr(explicit, name))
    assert ours.n == explicit.n
    assert ours.fixed_names == des.fixed_names == explicit.fixed_names
    assert ours.random_names == des.random_names  # the explicit call has no names for sparse Z
    assert ours.random_blocks == des.random_blocks and ours.random_levels == des.random_levels
    assert explicit.random_blocks == [] and explicit.random_levels == []
    assert ours.fixed_names[:2] == ["cell_typeCD4 T", "cell_typeB cell"]
    # a dense one-pass input and chunks give the same statistics from the Design
    dense = fm.summary_stats(Y.toarray(), des, transform="log1p", chunk_size=97)
    np.testing.assert_allclose(dense.XY, ours.XY, rtol=1e-12)
    assert dense.random_levels == ours.random_levels


def test_design_with_z_or_without_z_is_a_type_error(cells_and_counts):
    obs, Y = cells_and_counts
    des = fm.design(obs, "~ condition", "(1 | donor_id)")
    with pytest.raises(TypeError, match="pass a Design alone .* not both"):
        fm.summary_stats(Y, des, des.Z)
    with pytest.raises(TypeError, match="pass a Design alone"):
        fm.summary_stats(Y, des, d=des.d)
    with pytest.raises(TypeError, match="needs the random-effects design Z"):
        fm.summary_stats(Y, des.X)
    with pytest.raises(ValueError, match="the design has 400 cells .* Y has 399"):
        fm.summary_stats(Y[:399], des)
    with pytest.raises(ValueError, match="Z has no columns"):
        fm.summary_stats(Y, fm.design(obs, "~ condition"))


def test_labels_survive_add_subset_save_and_load(cells_and_counts, tmp_path):
    obs, Y = cells_and_counts
    des = fm.design(obs, "~ condition", "(1 | donor_id) + (1 | donor_id:cell_type)")
    whole = fm.summary_stats(Y, des)
    a = fm.summary_stats(Y[:150], des.apply(obs.iloc[:150]))
    b = fm.summary_stats(Y[150:], des.apply(obs.iloc[150:]))
    merged = a + b
    sub = whole.subset_genes([0, 3])
    whole.save(tmp_path / "s.npz")
    back = SummaryStats.load(tmp_path / "s.npz")
    for s in (merged, sub, back):
        assert s.random_blocks == ["donor_id", "donor_id:cell_type"]
        assert s.random_levels == des.random_levels and s.random_names == des.random_names
    np.testing.assert_allclose(merged.ZY, whole.ZY, rtol=1e-12)
    with pytest.raises(ValueError, match="different random_blocks"):
        whole + SummaryStats(**{**_fields(whole), "random_blocks": ["a", "b"]})


def _fields(s):
    from dataclasses import fields

    return {f.name: getattr(s, f.name) for f in fields(s)}


def test_files_written_before_the_labels_still_load(rng, tmp_path):
    Y, X, Z = counts_data(rng, G=3)
    s = fm.summary_stats(Y, X, Z)
    old = {k: v for k, v in _fields(s).items() if k not in ("random_blocks", "random_levels")}
    old["n"] = np.int64(s.n)
    old["transform"] = np.array("")
    for k in ("fixed_names", "random_names", "gene_names"):
        old[k] = np.array(old[k], dtype=str)
    np.savez(tmp_path / "old.npz", **old)  # the layout save() wrote before
    back = SummaryStats.load(tmp_path / "old.npz")
    assert back.random_blocks == [] and back.random_levels == []
    np.testing.assert_array_equal(back.ZY, s.ZY)
    assert fm.lmm(back).theta_names == ["var1", "residual"]


def test_label_lengths_are_checked(rng):
    Y, X, Z = counts_data(rng, G=3)
    s = _fields(fm.summary_stats(Y, X, Z))
    with pytest.raises(ValueError, match="random_blocks has 2 labels but d has 1 blocks"):
        SummaryStats(**{**s, "random_blocks": ["a", "b"]})
    with pytest.raises(ValueError, match="random_levels has 1 labels but Z has 7 columns"):
        SummaryStats(**{**s, "random_levels": ["a"]})


@pytest.mark.parametrize("blocks", [1, 3, 64])
def test_gene_blocks_do_not_change_bits(rng, monkeypatch, blocks):
    # the gene blocks of the chunked kernels follow the thread count; each gene's sums are
    # taken in cell order within its block, so any split gives the same bits
    from pyflashmm._lmm import stats as _stats

    Y, X, Z = counts_data(rng, n=9000, G=70)

    class Rows:  # row-sliceable, not in memory: the chunked path
        shape = Y.shape

        def __getitem__(self, key):
            return Y[key]

    ref = fm.summary_stats(Y, X, Z, transform="log2p1")
    monkeypatch.setattr(_stats, "_MIN_GENE_BLOCKS", blocks)
    monkeypatch.setattr(_stats, "num_threads", lambda: 1)
    got = fm.summary_stats(Rows(), X, Z, transform="log2p1", chunk_size=5000, progress=False)
    for f in ("XY", "ZY", "Ynorm"):
        assert np.array_equal(getattr(got, f), getattr(ref, f)), f


def test_a_design_with_sparse_x_gives_the_same_statistics():
    """design(..., sparse_x=True) stores X as CSR with the dense values; the statistics that
    come from the counts are bitwise the dense design's, XᵀX and ZᵀX equal to rounding."""
    rng = np.random.default_rng(5)
    n = 70_000  # two of the design's 65,536-row coding blocks
    obs = pd.DataFrame(
        {
            "donor_id": pd.Categorical(rng.choice([f"D{i}" for i in range(9)], n)),
            "cell_type": pd.Categorical(rng.choice(["B cell", "CD14 Mono", "NK"], n)),
            "condition": pd.Categorical(rng.choice(["ctrl", "stim"], n)),
            "libsize": rng.integers(500, 20_000, n).astype(float),
        }
    )
    fixed = "~ 0 + log(libsize) + cell_type + cell_type:condition"
    dense = fm.design(obs, fixed, random="(1 | donor_id)")
    sparse = fm.design(obs, fixed, random="(1 | donor_id)", sparse_x=True)
    assert sp.issparse(sparse.X) and sparse.n == n
    assert np.array_equal(sparse.X.toarray(), dense.X)
    pd.testing.assert_frame_equal(sparse.X_frame(), dense.X_frame())
    Y = sp.random(n, 25, density=0.1, format="csr", random_state=6, dtype=np.float64)
    Y.data = np.round(Y.data * 20)
    a = fm.summary_stats(Y, dense, transform="log2p1", progress=False)
    b = fm.summary_stats(Y, sparse, transform="log2p1", progress=False)
    for attr in ("XY", "ZY", "ZZ", "Ynorm"):
        assert np.array_equal(getattr(a, attr), getattr(b, attr)), attr
    np.testing.assert_allclose(b.XX, a.XX, rtol=1e-12)
    np.testing.assert_allclose(b.ZX, a.ZX, rtol=1e-12, atol=0)
