"""Mock nulls: random balanced donor splits of an .h5ad, every Python method, the tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy import stats

from validation import mock_null
from validation.scenarios import simulate_scenario


@pytest.fixture(scope="module")
def h5ad(tmp_path_factory):
    data = simulate_scenario("droplet", n_donors=8, cells_per_donor=80, n_genes=120, seed=3)
    path = tmp_path_factory.mktemp("mock") / "pbmc_like.h5ad"
    data.to_anndata().write_h5ad(path)
    return path


def test_splits_are_balanced_random_and_reproducible():
    donors = [f"HC-{i:03d}" for i in range(9)]
    splits = mock_null.mock_splits(donors, 50, seed=7)
    assert all(sorted(s) == donors for s in splits)
    assert all(list(s.values()).count(mock_null.GROUP_B) == 4 for s in splits)
    assert len({tuple(s.values()) for s in splits}) > 30
    assert splits == mock_null.mock_splits(donors, 50, seed=7)


def test_every_method_on_a_simulated_h5ad(h5ad, tmp_path):
    pvalues, type1 = mock_null.run(h5ad, donor="donor_id", cell_type="cell_type", layer="counts",
                                   keep="condition=control", n_splits=2, out=tmp_path,
                                   progress=False)  # fmt: skip
    assert set(pvalues["method"]) == set(mock_null.METHODS)
    assert set(pvalues["split"]) == {0, 1}
    ok = pvalues["p_value"].notna()
    assert pvalues.loc[ok, "p_value"].between(0, 1).all()
    assert not pvalues["status"].str.startswith("failed").any()
    # genes with no count in a cell type are the only ones without a p-value
    assert (pvalues.loc[~ok, "status"].isin(["all_zero", "zero_variance", "constant"])).all()
    overall = type1[type1["cell_type"] == "all"].set_index("method")
    assert (overall["n_tests"] > 500).all()
    assert ((overall["lo_0.05"] <= overall["type1_0.05"] + 1e-12)
            & (overall["type1_0.05"] <= overall["hi_0.05"])).all()  # fmt: skip
    written = pd.read_csv(tmp_path / "mock_null_type1.csv")
    assert {"git_rev", "seed"} <= set(written.columns) and len(written) == len(type1)
    assert (tmp_path / "mock_null_pvalues.csv.gz").exists()


def test_wilcoxon_is_scanpys_default_on_log_normalised_counts(rng):
    dense = rng.poisson(0.8, (60, 5)).astype(np.float32)
    dense[:, 0] += 1  # every cell has counts
    counts = sp.csr_matrix(dense)
    in_b = np.arange(60) < 25
    got = mock_null._wilcoxon(counts, in_b)
    x = np.log1p(dense / dense.sum(axis=1, keepdims=True) * 1e4)
    for g in range(5):
        ref = stats.mannwhitneyu(x[in_b, g], x[~in_b, g], method="asymptotic").pvalue
        assert got[g] == pytest.approx(ref, rel=1e-12)


def test_bad_arguments_are_named(h5ad):
    kw = dict(cell_type="cell_type", layer="counts", n_splits=1, progress=False)
    with pytest.raises(ValueError, match="donor: no column 'patient'"):
        mock_null.run(h5ad, donor="patient", **kw)
    with pytest.raises(ValueError, match="methods: unknown"):
        mock_null.run(h5ad, donor="donor_id", methods=("edger",), **kw)
    with pytest.raises(ValueError, match="keep must be COLUMN=VALUE"):
        mock_null.run(h5ad, donor="donor_id", keep="stim", **kw)
    with pytest.raises(ValueError, match="layer: no layer 'raw'"):
        mock_null.run(h5ad, donor="donor_id", **{**kw, "layer": "raw"})
