"""Summary statistics, pseudobulk sums and de() on a Dask cluster: bitwise the single-process
results, chunk retries after a worker dies, and damaged chunks named by their rows."""

import os
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

distributed = pytest.importorskip("distributed")
da = pytest.importorskip("dask.array")

import pyflashmm as fm  # noqa: E402
from pyflashmm import _distributed as _dist  # noqa: E402
from pyflashmm._frontend.inputs import open_cells  # noqa: E402
from pyflashmm.cli import main  # noqa: E402

N_CELLS = 5 * _dist.LEAF_CELLS + 123  # several leaves and a short last one
N_GENES = 40
FIXED = "~ 0 + cell_type + cell_type:condition"


@pytest.fixture(scope="module")
def client():
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as c,
    ):
        yield c


@pytest.fixture(scope="module")
def atlas(tmp_path_factory):
    """Counts (CSR), obs (donor_id, cell_type, condition) and the .h5ad holding them."""

    rng = np.random.default_rng(11)
    donors = np.array([f"D{i:02d}" for i in range(8)])
    donor = rng.integers(0, 8, N_CELLS)
    obs = pd.DataFrame(
        {
            "donor_id": pd.Categorical(donors[donor]),
            "cell_type": pd.Categorical(rng.choice(["B", "CD4 T", "NK"], N_CELLS)),
            "condition": pd.Categorical(np.where(donor < 4, "ctrl", "stim")),
        },
        index=[f"cell{i}" for i in range(N_CELLS)],
    )
    mu = rng.gamma(1.0, 1.5, N_GENES) * rng.gamma(5.0, 0.2, (8, 1))[donor]
    counts = sp.csr_matrix(rng.poisson(mu).astype(np.float32))
    path = tmp_path_factory.mktemp("atlas") / "atlas.h5ad"
    _as_anndata(counts, obs).write_h5ad(path)
    return counts, obs, path


def _as_anndata(counts, obs):
    """The atlas's AnnData: counts in X and in layers['counts']."""
    import anndata

    var = pd.DataFrame(index=[f"GENE{j}" for j in range(N_GENES)])
    return anndata.AnnData(X=counts.copy(), obs=obs, var=var, layers={"counts": counts})


def _stats_equal(a, b):
    for attr in ("XX", "XY", "ZX", "ZY", "ZZ", "Ynorm"):
        assert np.array_equal(getattr(a, attr), getattr(b, attr)), attr


def test_sums_from_the_workers_are_aligned_arrays(client, atlas):
    """The statistics come back as owned arrays at 8-byte aligned addresses: arrays unpickled
    from a worker's buffers may be misaligned, and the fits of the same (bitwise equal)
    statistics then gave other last bits."""
    counts, obs, path = atlas
    dsg = fm.design(obs, FIXED, random="(1 | donor_id)")
    wide = sp.hstack([counts] * 8, format="csr")  # 320 genes: results sent as larger frames
    stats = fm.summary_stats(wide, dsg, transform="log2p1", scheduler=client)
    for attr in ("XX", "XY", "ZX", "ZY", "ZZ", "Ynorm"):
        arr = getattr(stats, attr)
        assert arr.ctypes.data % 8 == 0, attr
    sums, _ = fm.pseudobulk(str(path), by=["donor_id"], layer="counts", scheduler=client)
    assert sums.to_numpy().ctypes.data % 8 == 0


def test_tree_sum_is_the_same_tree_for_any_grouping():
    """Tasks of 2**j aligned leaves (and a tail) give the leaf-by-leaf tree's result bitwise."""
    rng = np.random.default_rng(0)
    leaves = [(v,) for v in rng.normal(size=(37, 5)) * 10.0 ** rng.integers(-8, 8, (37, 1))]
    ref = _dist.TreeSum(_dist.add_new)
    for leaf in leaves:
        ref.push(leaf)
    ref = ref.result()[0]
    for level in range(4):
        size = 1 << level
        tree = _dist.TreeSum(_dist.add_new)
        groups = [leaves[a : a + size] for a in range(0, len(leaves), size)]
        tail = None
        for g in groups:
            sub = _dist.TreeSum(_dist.add_new)
            for leaf in g:
                sub.push(leaf)
            if len(g) == size:
                tree.push(sub.result(), level)
            else:
                tail = sub.result()
        assert np.array_equal(tree.result(tail)[0], ref)


def test_summary_stats_bitwise(client, atlas):
    counts, obs, path = atlas
    dsg = fm.design(obs, FIXED, random="(1 | donor_id)")
    import anndata

    backed = anndata.read_h5ad(path, backed="r")
    try:
        ref = fm.summary_stats(backed.X, dsg, transform="log2p1", scheduler=False)
        # the file read by the workers, task sizes of 1 and 2 leaves
        for chunk_size in (_dist.LEAF_CELLS, 2 * _dist.LEAF_CELLS + 7):
            got = fm.summary_stats(backed.X, dsg, transform="log2p1", chunk_size=chunk_size)
            _stats_equal(got, ref)
    finally:
        backed.file.close()
    # in memory (scattered), in-memory CSR without Dask, a dask array of CSR chunks
    _stats_equal(fm.summary_stats(counts, dsg, transform="log2p1", scheduler=client), ref)
    _stats_equal(fm.summary_stats(counts, dsg, transform="log2p1", scheduler=False), ref)
    lazy = da.from_array(counts, chunks=(3001, N_GENES), asarray=False)
    _stats_equal(fm.summary_stats(lazy, dsg, transform="log2p1"), ref)
    _stats_equal(fm.summary_stats(lazy, dsg, transform="log2p1", scheduler=False), ref)
    # a chunk size off the leaves: still bitwise (each leaf is summed from zero in cell order)
    _stats_equal(fm.summary_stats(counts.toarray(), dsg, transform="log2p1", chunk_size=999,
                                  scheduler=False), ref)  # fmt: skip


def test_pseudobulk_bitwise(client, atlas):
    counts, obs, path = atlas
    by = ["donor_id", "cell_type"]
    ref, ref_groups = fm.pseudobulk(str(path), by=by, layer="counts", scheduler=False)
    got, groups = fm.pseudobulk(str(path), by=by, layer="counts", scheduler=client)
    assert np.array_equal(got.to_numpy(), ref.to_numpy())
    pd.testing.assert_frame_equal(groups, ref_groups)
    lazy = da.from_array(counts, chunks=(4000, N_GENES), asarray=False)
    got, _ = fm.pseudobulk(lazy, obs, by=by)
    assert np.array_equal(got.to_numpy(), ref.to_numpy())
    # non-integer values: the order of the additions matters, and is the same
    frac = counts.multiply(np.float32(0.37)).tocsr()
    one, _ = fm.pseudobulk(frac, obs, by=by, allow_non_integer=True, scheduler=False)
    two, _ = fm.pseudobulk(frac, obs, by=by, allow_non_integer=True, scheduler=client)
    assert np.array_equal(one.to_numpy(), two.to_numpy())


def _de_kwargs(method):
    """de()'s arguments for the atlas: the LMM's cell-type interaction, or per-type pseudobulk."""
    kw = {"random": "donor_id", "layer": "counts", "method": method}
    if method == "lmm":
        return {**kw, "fixed": FIXED, "contrast": {"stim_B": "cell_typeB:conditionstim"}}
    return {**kw, "fixed": "~ condition", "contrast": "conditionstim", "cell_type": "cell_type"}


@pytest.mark.parametrize("method", ["lmm", "pseudobulk"])
def test_de_bitwise(client, atlas, method):
    _, _, path = atlas
    kw = _de_kwargs(method)
    ref = fm.de(str(path), scheduler=False, **kw)
    got = fm.de(str(path), **kw)  # the active client
    pd.testing.assert_frame_equal(got, ref, check_exact=True)


def _kill_once(block, marker):
    """A chunk loader that kills its own worker process the first time it runs."""
    if not os.path.exists(marker):
        with open(marker, "w") as f:
            f.write("killed")
        os.kill(os.getpid(), 9)
    return block


def test_worker_death_is_retried(client, atlas, tmp_path):
    counts, obs, _ = atlas
    dsg = fm.design(obs, FIXED, random="(1 | donor_id)")
    ref = fm.summary_stats(counts, dsg, transform="log1p", scheduler=False)
    marker = str(tmp_path / "killed")
    lazy = da.from_array(counts, chunks=(4096, N_GENES), asarray=False)
    lazy = lazy.map_blocks(_kill_once, marker, dtype=counts.dtype, meta=counts[:0])
    got = fm.summary_stats(lazy, dsg, transform="log1p", scheduler=client)
    assert os.path.exists(marker)  # a worker did die
    _stats_equal(got, ref)
    client.wait_for_workers(2, timeout=30)


def _fail_rows(block, block_info=None):
    if block_info[0]["array-location"][0][0] == 2 * 4096:
        raise OSError("Can't synchronously read data (inflate() failed)")
    return block


def test_failing_chunk_is_named(client, atlas):
    counts, obs, _ = atlas
    dsg = fm.design(obs, FIXED, random="(1 | donor_id)")
    lazy = da.from_array(counts, chunks=(4096, N_GENES), asarray=False)
    lazy = lazy.map_blocks(_fail_rows, dtype=counts.dtype, meta=counts[:0])
    # the task of cells 8192:12288 holds the failing block
    with pytest.raises(fm.ChunkError, match=r"cells 8192:12288 of the dask array .*inflate"):
        fm.summary_stats(lazy, dsg, chunk_size=4096, scheduler=client)
    with pytest.raises(fm.ChunkError, match=r"cells 8192:12288 of Y .*inflate"):
        fm.summary_stats(lazy, dsg, chunk_size=4096, scheduler=False)
    # read in runs of blocks: the message names the run that holds the failing block
    with pytest.raises(fm.ChunkError, match=r"cells 0:16384 of Y .*inflate"):
        fm.summary_stats(lazy, dsg, chunk_size=16384, scheduler=False)


def test_damaged_file_fails_cleanly(client, atlas, tmp_path):
    """Cells whose stored values were lost: the CLI names the rows and writes no output."""
    import h5py

    _, _, path = atlas
    damaged = tmp_path / "damaged.h5ad"
    damaged.write_bytes(path.read_bytes())
    with h5py.File(damaged, "r+") as f:
        indptr = f["layers/counts/indptr"][:]
        data = f["layers/counts/data"][:]
        data[indptr[3 * 4096] : indptr[3 * 4096 + 10]] = np.nan  # a truncated write
        del f["layers/counts/data"]
        f["layers/counts/data"] = data
    out = tmp_path / "result.csv"
    address = client.scheduler.address
    argv = ["de", str(damaged), "--fixed", "~ condition", "--random", "donor_id",
            "--contrast", "conditionstim", "--layer", "counts", "--method", "pseudobulk",
            "--dask-scheduler", address, "-o", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 2
    assert not out.exists()


@pytest.fixture(scope="module")
def atlas_zarr(atlas, tmp_path_factory):
    """The atlas as a .zarr store, X and layers['counts'] sparse."""
    counts, obs, _ = atlas
    path = tmp_path_factory.mktemp("atlas_zarr") / "atlas.zarr"
    with warnings.catch_warnings():  # anndata's notes on zarr format defaults
        warnings.simplefilter("ignore")
        _as_anndata(counts, obs).write_zarr(path)
    return path


def test_zarr_path_is_read_lazily(atlas, atlas_zarr):
    """A .zarr path is opened lazily (the counts stay in the store, read in row chunks), and
    de(), summary_stats and pseudobulk give bitwise the results of the in-memory counts."""

    counts, obs, h5ad = atlas
    cells = open_cells(str(atlas_zarr), layer="counts")
    assert not sp.issparse(cells.counts) and not isinstance(cells.counts, np.ndarray)
    assert cells.backed and cells.where == "layers['counts']"
    assert cells.gene_names == [f"GENE{j}" for j in range(N_GENES)]
    pd.testing.assert_frame_equal(cells.obs, obs)
    source = _dist.file_source(cells.counts)
    assert source is not None and source.kind == "zarr" and os.path.isabs(source.path)
    assert (_dist.read_rows(source, 100, 300) != counts[100:300]).nnz == 0

    dsg = fm.design(obs, FIXED, random="(1 | donor_id)")
    ref = fm.summary_stats(counts, dsg, transform="log2p1", scheduler=False)
    for chunk_size in (1000, 3 * _dist.LEAF_CELLS):
        got = fm.summary_stats(cells.counts, dsg, transform="log2p1", chunk_size=chunk_size,
                               scheduler=False)  # fmt: skip
        _stats_equal(got, ref)
    kw = {"fixed": FIXED, "random": "donor_id", "layer": "counts",
          "contrast": {"stim_B": "cell_typeB:conditionstim"}}  # fmt: skip
    pd.testing.assert_frame_equal(
        fm.de(str(atlas_zarr), scheduler=False, chunk_size=5000, **kw),
        fm.de(str(h5ad), scheduler=False, **kw),
        check_exact=True,
    )
    by = ["donor_id", "cell_type"]
    one, g1 = fm.pseudobulk(str(atlas_zarr), by=by, layer="counts", scheduler=False)
    two, g2 = fm.pseudobulk(counts, obs, by=by, scheduler=False)
    assert np.array_equal(one.to_numpy(), two.to_numpy())
    pd.testing.assert_frame_equal(g1, g2)


def test_zarr_errors(atlas_zarr, tmp_path):
    from pyflashmm._checks import MissingColumnError

    with pytest.raises(MissingColumnError, match="layer 'raw' not in the AnnData"):
        open_cells(str(atlas_zarr), layer="raw")
    with pytest.raises(FileNotFoundError):
        open_cells(str(tmp_path / "missing.zarr"))
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(ValueError, match="cannot read .* as a .zarr store"):
        open_cells(str(tmp_path / "empty.zarr"))


@pytest.mark.parametrize("method", ["lmm", "pseudobulk"])
def test_zarr_read_by_the_workers(client, atlas, atlas_zarr, method):
    """With a client, the workers read their own rows of the .zarr store: bitwise the
    single-process result."""
    kw = _de_kwargs(method)
    ref = fm.de(str(atlas[2]), scheduler=False, **kw)
    got = fm.de(str(atlas_zarr), scheduler=client, **kw)
    pd.testing.assert_frame_equal(got, ref, check_exact=True)


def test_cli_reads_a_zarr_store(atlas, atlas_zarr, tmp_path):
    """`pyflashmm de` takes a .zarr store as de() does: the table of the .h5ad holding the same
    counts."""
    tables = []
    for src in (atlas[2], atlas_zarr):
        out = tmp_path / f"{src.suffix[1:]}.csv"
        argv = ["de", str(src), "--fixed", FIXED, "--random", "donor_id", "--layer", "counts",
                "--contrast", "stim_B=cell_typeB:conditionstim", "-o", str(out),
                "--quiet"]  # fmt: skip
        assert main(argv) == 0
        tables.append(pd.read_csv(out))
    pd.testing.assert_frame_equal(tables[1], tables[0], check_exact=True)


# ----------------------------------------------------------------------------- gene blocks


@pytest.fixture
def small_blocks(monkeypatch):
    """Gene blocks of 7 genes, and waves of about 60,000 stored counts (several of each on the
    atlas's 40 genes); returns the list of waves run."""
    from pyflashmm import _gene_blocks

    runs = []
    real_waves = _gene_blocks.waves

    def recorded(*args):
        out = real_waves(*args)
        runs.append(out)
        return out

    monkeypatch.setattr(_gene_blocks, "default_genes_per_block", lambda G, n: 7)
    monkeypatch.setattr(_gene_blocks, "wave_nonzeros_for", lambda client: 60_000.0)
    monkeypatch.setattr(_gene_blocks, "waves", recorded)
    return runs


def _lazy_zarr(path):
    from anndata.experimental import read_lazy

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # anndata's experimental-API notices
        return read_lazy(path)


@pytest.mark.parametrize(
    ("method", "source"),
    [
        # the REML fit of a file and the NB GLM from a zarr path take 94 s and 26 s on the CI
        # machine's 2 cores: in the slow suite (the ML fit and the in-memory GLM cover the same
        # machinery in the default run)
        pytest.param("nbmm", "h5ad", marks=pytest.mark.slow),
        ("nbmm", "lazy zarr"),
        pytest.param("nbglm", "zarr", marks=pytest.mark.slow),
        ("nbglm", "in memory"),
    ],
)
def test_cell_level_nb_fits_on_gene_blocks_are_bitwise(client, atlas, atlas_zarr, small_blocks,
                                                       method, source):  # fmt: skip
    """The NB mixed model and the cell-level NB GLM fitted block by block on the workers, in
    several waves, from a file, a dask array or memory: the single-process table bit for
    bit (including BH and independent filtering over all genes)."""
    counts, obs, path = atlas
    contrast = {"stim": "conditionstim", "NK_vs_B": "cell_typeNK"}
    kw = {"fixed": "~ cell_type + condition", "method": method, "layer": "counts",
          "contrast": contrast, "progress": False}  # fmt: skip
    if method == "nbmm":
        kw["random"] = "donor_id"
        kw["reml"] = source == "h5ad"  # de's default once; ML (9× faster) otherwise
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # genes without a GLM fit (both ways)
        # which genes reach max_iter differs between machines (2 of the REML fits on an
        # AVX-512 machine, none elsewhere); both ways warn alike, and the statuses are compared
        warnings.simplefilter("ignore", fm.ConvergenceWarning)
        ref = fm.de(str(path), scheduler=False, **kw)
        data = {"h5ad": str(path), "zarr": str(atlas_zarr), "lazy zarr": _lazy_zarr(atlas_zarr),
                "in memory": _as_anndata(counts, obs)}[source]  # fmt: skip
        got = fm.de(data, scheduler=client, **kw)
    pd.testing.assert_frame_equal(got, ref, check_exact=True)
    assert got.attrs == ref.attrs
    n_waves = len(small_blocks[-1])
    assert n_waves >= 3 if method == "nbmm" else n_waves >= 3 and len(small_blocks) == 2


def test_size_factors_on_the_workers_are_bitwise(client, atlas):
    """poscounts from two passes on the workers (16 row ranges read in chunks): the in-memory
    factors bit for bit; the per-gene positive counts and per-cell totals come with them."""
    from pyflashmm._gene_blocks import poscounts_on_cluster
    from pyflashmm._size_factors import poscounts_rescaled

    counts, _, path = atlas
    backed = open_cells(str(path), "counts")
    try:
        # 500-cell reads: each of the 16 ranges (1,287 or 1,288 cells) is added in 3 pieces
        raw, totals, nnz = poscounts_on_cluster(client, backed.counts, *counts.shape, 500,
                                                "layers['counts']")  # fmt: skip
    finally:
        backed.close()
    assert np.array_equal(poscounts_rescaled(raw), fm.size_factors(counts, "poscounts"))
    assert np.array_equal(nnz, np.asarray((counts > 0).sum(axis=0)).ravel())
    assert np.array_equal(totals, np.asarray(counts.sum(axis=1), dtype=np.float64).ravel())


def test_totals_in_one_pass_equal_the_two_pass_ones(client, atlas):
    """The totals and positive counts that normed_sum and given factors need, in one pass on
    the workers: those of the two poscounts passes, and normed_sum as in memory."""
    from pyflashmm._gene_blocks import poscounts_on_cluster, totals_on_cluster
    from pyflashmm._size_factors import normed_sum_rescaled

    counts, _, path = atlas
    backed = open_cells(str(path), "counts")
    try:
        totals, nnz = totals_on_cluster(client, backed.counts, *counts.shape, 3000, "counts")
        _, totals2, nnz2 = poscounts_on_cluster(client, backed.counts, *counts.shape, 3000,
                                                "counts")  # fmt: skip
    finally:
        backed.close()
    assert np.array_equal(totals, totals2) and np.array_equal(nnz, nnz2)
    assert np.array_equal(normed_sum_rescaled(totals), fm.size_factors(counts, "normed_sum"))


def _kill_when_armed(block, armed, marker):
    """A chunk loader that kills its own worker process once, after ``armed`` exists."""
    if os.path.exists(armed) and not os.path.exists(marker):
        with open(marker, "w") as f:
            f.write("killed")
        os.kill(os.getpid(), 9)
    return block


def test_gene_block_fits_survive_a_worker_death(client, atlas, small_blocks, tmp_path,
                                                monkeypatch):  # fmt: skip
    """A worker dies while the counts are cut into gene blocks (after the size factors):
    Dask recomputes what it held and the table is unchanged."""
    from pyflashmm._frontend import cluster_fits

    counts, obs, _ = atlas
    kw = {"fixed": "~ condition", "random": "donor_id", "method": "nbmm", "reml": False,
          "contrast": "conditionstim", "progress": False}  # fmt: skip
    ref = fm.de((counts, obs), scheduler=False, **kw)
    armed, marker = str(tmp_path / "armed"), str(tmp_path / "killed")
    real = cluster_fits.fit_blocks

    def arm_then_fit(*args, **kwargs):
        open(armed, "w").close()  # the size factors are done: the next read kills
        return real(*args, **kwargs)

    monkeypatch.setattr(cluster_fits, "fit_blocks", arm_then_fit)
    lazy = da.from_array(counts, chunks=(4096, N_GENES), asarray=False)
    lazy = lazy.map_blocks(_kill_when_armed, armed, marker, dtype=counts.dtype, meta=counts[:0])
    got = fm.de((lazy, obs), scheduler=client, **kw)
    assert os.path.exists(marker)  # a worker did die, in the gene-block shuffle
    assert len(small_blocks[-1]) >= 3
    pd.testing.assert_frame_equal(got, ref, check_exact=True)
    client.wait_for_workers(2, timeout=30)


def test_gene_block_fits_name_a_failing_chunk_and_bad_input(client, atlas):
    counts, obs, _ = atlas
    kw = {"fixed": "~ condition", "method": "nbglm", "progress": False}
    lazy = da.from_array(counts, chunks=(4096, N_GENES), asarray=False)
    failing = lazy.map_blocks(_fail_rows, dtype=counts.dtype, meta=counts[:0])
    # the size factors' first pass reads the 16 ranges of n·k//16 cells: 7726:9013 holds 8192
    with pytest.raises(fm.ChunkError, match=r"cells 7726:9013 of the dask array .*inflate"):
        fm.de((failing, obs), scheduler=client, **kw)
    empty = counts.tolil()
    empty[[5, 9]] = 0
    with pytest.raises(ValueError, match=r"2 cells have no counts at all in counts \(first: "
                                         r"'cell5', 'cell9'\)"):  # fmt: skip
        fm.de((da.from_array(empty.tocsr(), chunks=(4096, N_GENES), asarray=False), obs),
              scheduler=client, **kw)  # fmt: skip
    with pytest.raises(ValueError, match="size_factors='ratio': on a Dask cluster, counts"):
        fm.de((lazy, obs), scheduler=client, size_factors="ratio", **kw)


def test_the_shuffle_names_a_failing_chunk(client, atlas):
    """A chunk that fails while the counts are cut into gene blocks: a ChunkError naming its
    cells (not the fits' error), and the run's tasks are cancelled."""
    from pyflashmm._gene_blocks import fit_blocks

    counts, _, _ = atlas
    lazy = da.from_array(counts, chunks=(4096, N_GENES), asarray=False)
    failing = lazy.map_blocks(_fail_rows, dtype=counts.dtype, meta=counts[:0])
    nnz = np.asarray((counts > 0).sum(axis=0)).ravel()
    names = [f"GENE{j}" for j in range(N_GENES)]
    with pytest.raises(fm.ChunkError, match=r"cells 8192:12288 of the dask array .*inflate"):
        fit_blocks(client, failing, *counts.shape, _column_sums, (), chunk_size=4096,
                   where="counts", gene_nnz=nnz, gene_names=names)  # fmt: skip
    sums = fit_blocks(client, lazy, *counts.shape, _column_sums, (), chunk_size=4096,
                      where="counts", gene_nnz=nnz, gene_names=names)  # fmt: skip
    assert np.array_equal(np.concatenate(sums), np.asarray(counts.sum(axis=0)).ravel())
    with pytest.raises(ValueError, match=r"genes \d+:\d+ \(GENE\d+ … GENE\d+\): no fit"):
        fit_blocks(client, lazy, *counts.shape, _failing_fit, (), chunk_size=4096,
                   where="counts", gene_nnz=nnz, gene_names=names)  # fmt: skip


def _column_sums(block, bounds, names):
    return np.asarray(block.sum(axis=0)).ravel()


def _failing_fit(block, bounds, names):
    raise ValueError("no fit")


def test_gene_wise_dispersions_do_not_depend_on_the_block(atlas):
    """A gene's gene-wise dispersion has the same bits in a block of any size (the workers fit
    blocks of other sizes than one process): the OLS start of a design that is not a group
    design was a BLAS product of the whole block, whose last bits for a row depended on the
    number of rows with OpenBLAS's AVX-512 kernels."""
    from pyflashmm._nbglm.blockwise import block_options, gene_wise_of_block

    counts, obs, _ = atlas
    obs = obs.assign(log_depth=np.log(np.asarray(counts.sum(axis=1)).ravel() + 1.0))
    X = fm.design(obs, "~ condition + log_depth").X_frame()
    sf = np.random.default_rng(3).lognormal(0.0, 0.3, len(obs))
    opts = block_options("single_cell", {"size_factors": sf})
    Y = sp.csc_matrix(counts, dtype=np.float64)
    ref = gene_wise_of_block(Y, X, sf, opts)
    for size in (1, 3, 7, 16):
        starts = range(0, N_GENES, size)
        parts = [gene_wise_of_block(Y[:, a : a + size], X, sf, opts) for a in starts]
        for k in range(2):  # dispersions, base means
            assert np.array_equal(np.concatenate([p[k] for p in parts]), ref[k]), (size, k)


def test_gene_block_fits_of_harder_inputs_are_bitwise(client, atlas, small_blocks):
    """All-zero genes filling a whole block, a continuous covariate (a design without groups
    of identical rows), given size factors, joint and Wald contrasts: the single-process
    tables bit for bit. (The atlas's Poisson genes have too few dispersions above the floor
    for the local trend DESeq2 falls back to: the mean trend.)"""
    counts, obs, _ = atlas
    counts = counts.tolil()
    counts[:, 14:21] = 0  # the third block of 7 genes is all-zero
    counts = counts.tocsr()
    obs = obs.assign(log_depth=np.log(np.asarray(counts.sum(axis=1)).ravel() + 1.0))
    lazy = da.from_array(counts, chunks=(3000, N_GENES), asarray=False)
    sf = np.random.default_rng(3).lognormal(0.0, 0.3, len(obs))
    cases = [
        {"method": "nbglm", "fixed": "~ condition + log_depth", "test": "wald", "fit_type": "mean",
         "contrast": {"stim": "conditionstim", "both": ["conditionstim", "log_depth"]}},
        {"method": "nbglm", "fixed": "~ condition + log_depth", "size_factors": sf,
         "fit_type": "mean", "contrast": "conditionstim"},
        {"method": "nbmm", "fixed": "~ condition + log_depth", "random": "donor_id",
         "reml": False, "size_factors": sf,
         "contrast": {"stim": "conditionstim", "both": ["conditionstim", "log_depth"]}},
    ]  # fmt: skip
    for kw in cases:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # genes without a fit (both ways)
            ref = fm.de((counts, obs), scheduler=False, progress=False, **kw)
            got = fm.de((lazy, obs), scheduler=client, progress=False, **kw)
        pd.testing.assert_frame_equal(got, ref, check_exact=True)
        assert (got["status"] == "all_zero").sum() >= 7 * got["contrast"].nunique()


def test_bad_options_fail_before_any_pass_over_the_counts(client, atlas, monkeypatch):
    from pyflashmm._frontend import cluster_fits

    def no_pass(*args, **kwargs):
        raise AssertionError("the counts were read before the options were checked")

    monkeypatch.setattr(cluster_fits, "poscounts_on_cluster", no_pass)
    _, obs, path = atlas
    kw = {"fixed": "~ condition", "random": "donor_id", "method": "nbmm", "scheduler": client}
    with pytest.raises(ValueError, match="max_iter must be a positive integer"):
        fm.de(str(path), max_iter=0, **kw)
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['maxiter'\]"):
        fm.de(str(path), maxiter=5, **kw)
    with pytest.raises(ValueError, match=r"size_factors must have 20603 entries"):
        fm.de(str(path), size_factors=np.ones(5), **kw)
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['fit_typ'\]"):
        fm.de(str(path), fixed="~ condition", method="nbglm", scheduler=client, fit_typ="mean")


def test_cli_fits_the_nb_glm_on_the_workers(client, atlas, tmp_path):
    """`pyflashmm de --method nbglm --dask-scheduler ADDRESS`: the in-process table."""
    _, _, path = atlas
    tables = []
    for extra in ([], ["--dask-scheduler", client.scheduler.address]):
        out = tmp_path / f"nbglm{len(extra)}.csv"
        argv = ["de", str(path), "--fixed", "~ condition", "--method", "nbglm", "--layer",
                "counts", "--contrast", "stim=conditionstim", "-o", str(out), "--quiet",
                *extra]  # fmt: skip
        assert main(argv) == 0
        tables.append(pd.read_csv(out))
    pd.testing.assert_frame_equal(tables[1], tables[0], check_exact=True)


def test_cli_chunk_size_default_is_de_default():
    from pyflashmm.cli import build_parser

    args = build_parser().parse_args(["de", "in.h5ad", "--fixed", "~ trt", "-o", "out.csv"])
    assert args.chunk_size == fm._lmm.stats.DEFAULT_CHUNK_SIZE
