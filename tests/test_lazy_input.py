"""Counts read lazily: an AnnData opened with ``anndata.experimental.read_lazy`` (X and layers
are dask arrays of CSR chunks, obs a lazy table), a path to ``.h5ad``/``.zarr`` and a
``(dask array, obs)`` pair give the in-memory results bitwise, in de(), summary_stats() and
pseudobulk()."""

import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

pytest.importorskip("xarray")  # anndata's lazy obs
anndata = pytest.importorskip("anndata")
read_lazy = pytest.importorskip("anndata.experimental").read_lazy

import pyflashmm as fm  # noqa: E402

N_CELLS = 3_000
N_GENES = 30
FIXED = "~ 0 + cell_type + cell_type:condition"


@pytest.fixture(scope="module")
def atlas(tmp_path_factory):
    """A PBMC-like AnnData (raw counts in layers['counts'], log-normalised X) and its files."""
    rng = np.random.default_rng(7)
    donors = np.array([f"HC-{i:03d}" for i in range(6)])
    donor = rng.integers(0, 6, N_CELLS)
    obs = pd.DataFrame(
        {
            "donor_id": pd.Categorical(donors[donor]),
            "cell_type": pd.Categorical(rng.choice(["B cell", "CD14 Mono", "CD4 T"], N_CELLS)),
            "condition": pd.Categorical(np.where(donor < 3, "ctrl", "IFN-beta")),
        },
        index=[f"AAACCTG-{i}" for i in range(N_CELLS)],
    )
    mu = rng.gamma(0.6, 2.0, N_GENES) * rng.lognormal(0.0, 0.5, (N_CELLS, 1))
    mu = mu * rng.lognormal(0.0, 0.3, (6, N_GENES))[donor]  # donor effects
    counts = rng.poisson(rng.gamma(5.0, mu / 5.0)).astype(np.float32)  # NB, dispersion 0.2
    counts[:, 0] += 1  # every cell has a count (the cell-level NB models need size factors)
    counts = sp.csr_matrix(counts)
    lognorm = counts.multiply(1e4 / counts.sum(axis=1)).tocsr().log1p()
    var = pd.DataFrame(index=[f"ISG{j}" if j % 3 == 0 else f"RPL{j}" for j in range(N_GENES)])
    adata = anndata.AnnData(X=lognorm.astype(np.float32), obs=obs, var=var,
                            layers={"counts": counts})  # fmt: skip
    root = tmp_path_factory.mktemp("lazy")
    adata.write_h5ad(root / "pbmc.h5ad")
    with warnings.catch_warnings():  # anndata's notes on zarr format defaults
        warnings.simplefilter("ignore")
        adata.write_zarr(root / "pbmc.zarr")
    return adata, root


def _lazy(root, suffix):
    """The file opened with read_lazy (dask arrays in row chunks of 1,000 cells)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # anndata's experimental-API notices
        return read_lazy(root / f"pbmc{suffix}")


@pytest.mark.parametrize("suffix", [".h5ad", ".zarr"])
def test_read_lazy_anndata_gives_the_in_memory_lmm_table(atlas, suffix):
    adata, root = atlas
    lazy = _lazy(root, suffix)
    assert not isinstance(lazy.obs, pd.DataFrame)  # the lazy table is loaded by de()
    kw = dict(fixed=FIXED, random="donor_id", layer="counts", progress=False)
    ref = fm.de(adata, **kw)
    got = fm.de(lazy, **kw)
    pd.testing.assert_frame_equal(got, ref, check_exact=True)
    assert got.attrs["counts"] == "layers['counts']"


@pytest.mark.parametrize("suffix", [".h5ad", ".zarr"])
def test_summary_stats_take_an_anndata_a_path_or_a_dask_array(atlas, suffix):
    adata, root = atlas
    des = fm.design(adata.obs, FIXED, random="(1 | donor_id)")
    ref = fm.summary_stats(adata.layers["counts"], des, transform="log2p1", progress=False,
                           gene_names=list(adata.var_names))  # fmt: skip
    lazy = _lazy(root, suffix)
    for Y in (lazy, root / f"pbmc{suffix}", lazy.layers["counts"]):
        layer = None if hasattr(Y, "dask") else "counts"
        got = fm.summary_stats(Y, des, transform="log2p1", layer=layer, progress=False)
        for attr in ("XX", "XY", "ZX", "ZY", "ZZ", "Ynorm"):
            assert np.array_equal(getattr(got, attr), getattr(ref, attr)), (type(Y), attr)
        if layer is not None:
            assert list(got.gene_names) == list(adata.var_names)


def test_summary_stats_layer_needs_an_anndata(atlas):
    adata, _ = atlas
    des = fm.design(adata.obs, FIXED, random="(1 | donor_id)")
    with pytest.raises(ValueError, match="layer: only an AnnData"):
        fm.summary_stats(adata.layers["counts"], des, layer="counts")


@pytest.mark.parametrize("suffix", [".h5ad", ".zarr"])
def test_pseudobulk_of_a_lazy_anndata_and_of_a_dask_array(atlas, suffix):
    adata, root = atlas
    ref, ref_groups = fm.pseudobulk(adata, by=["donor_id", "cell_type"], layer="counts")
    lazy = _lazy(root, suffix)
    got, groups = fm.pseudobulk(lazy, by=["donor_id", "cell_type"], layer="counts")
    pd.testing.assert_frame_equal(got, ref, check_exact=True)
    pd.testing.assert_frame_equal(groups, ref_groups)
    genes = list(adata.var_names)
    pair, _ = fm.pseudobulk(lazy.layers["counts"], lazy.obs.to_memory(),
                            by=["donor_id", "cell_type"], gene_names=genes)  # fmt: skip
    pd.testing.assert_frame_equal(pair, ref, check_exact=True)


@pytest.mark.parametrize("method", ["nbglm", "nbmm"])
def test_cell_level_nb_models_read_a_lazy_anndata(atlas, method):
    adata, root = atlas
    kw = dict(fixed="~ cell_type + condition", layer="counts", method=method, progress=False)
    if method == "nbmm":
        kw["random"] = "donor_id"
    ref = fm.de(adata, **kw)
    got = fm.de(_lazy(root, ".zarr"), **kw)
    pd.testing.assert_frame_equal(got, ref, check_exact=True)


def test_a_dask_array_and_obs_pair_in_de(atlas):
    adata, root = atlas
    lazy = _lazy(root, ".h5ad")
    kw = dict(fixed=FIXED, random="donor_id", progress=False)
    ref = fm.de((adata.layers["counts"], adata.obs), **kw)
    got = fm.de((lazy.layers["counts"], adata.obs), **kw)
    pd.testing.assert_frame_equal(got, ref, check_exact=True)


def test_a_dask_array_is_read_in_runs_of_its_own_blocks():
    from pyflashmm._distributed import row_chunks

    da = pytest.importorskip("dask.array")
    Y = da.zeros((3_500, 4), chunks=((1_000, 1_000, 0, 1_000, 500), 4))
    assert row_chunks(Y, 3_500, 2_500) == [(0, 2_000), (2_000, 3_500)]
    assert row_chunks(Y, 3_500, 600) == [(0, 1_000), (1_000, 2_000), (2_000, 3_000),
                                         (3_000, 3_500)]  # fmt: skip
    assert row_chunks(Y, 3_500, 10**6) == [(0, 3_500)]
