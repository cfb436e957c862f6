"""Mock nulls: random balanced donor splits of an .h5ad, the methods of the engine, the tables
and the command line."""

from __future__ import annotations

import pandas as pd
import pytest

from validation import mock_null, scenario_methods
from validation.scenarios import simulate_scenario

#: a quick subset of the engine's methods: each family once
QUICK = ("lmm", "pseudobulk", "nbglm_cells", "wilcoxon", "dream")


@pytest.fixture(scope="module")
def h5ad(tmp_path_factory):
    data = simulate_scenario("droplet", n_donors=8, cells_per_donor=80, n_genes=60, seed=3)
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


def test_methods_on_a_simulated_h5ad(h5ad, tmp_path):
    pvalues, type1, notes = mock_null.run(h5ad, donor="donor_id", cell_type="cell_type",
                                          layer="counts", keep="condition=control", n_splits=2,
                                          methods=QUICK, out=tmp_path, progress=False)  # fmt: skip
    assert set(pvalues["method"]) == set(QUICK)
    assert set(pvalues["split"]) == {0, 1}
    assert {"log_fc", "lfc_scale", "seconds"} <= set(pvalues.columns)
    ok = pvalues["p_value"].notna()
    assert pvalues.loc[ok, "p_value"].between(0, 1).all()
    assert not pvalues["status"].str.startswith("failed").any()
    # genes with no count in a cell type are the only ones without a p-value
    assert (pvalues.loc[~ok, "status"].isin(["all_zero", "zero_variance", "constant"])).all()
    # the mock group is tested within each cell type: three types, one type-I row each + "all"
    assert set(type1["cell_type"]) == {"CD4 T", "CD14 Mono", "B", "all"}
    overall = type1[type1["cell_type"] == "all"].set_index("method")
    assert (overall["n_tests"] > 250).all()
    assert ((overall["lo_0.05"] <= overall["type1_0.05"] + 1e-12)
            & (overall["type1_0.05"] <= overall["hi_0.05"])).all()  # fmt: skip
    written = pd.read_csv(tmp_path / "mock_null_type1.csv")
    assert {"git_rev", "seed"} <= set(written.columns) and len(written) == len(type1)
    assert (tmp_path / "mock_null_pvalues.csv.gz").exists()
    assert list(pd.read_csv(tmp_path / "mock_null_notes.csv").columns)[:2] == ["split", "note"]
    assert list(notes.columns) == ["split", "note"]


def test_command_line_takes_any_method_id(h5ad, tmp_path, capsys):
    assert set(mock_null.METHODS) == set(scenario_methods.METHODS)
    rc = mock_null.main([str(h5ad), "--donor", "donor_id", "--cell-type", "cell_type",
                         "--layer", "counts", "--keep", "condition=control", "--splits", "1",
                         "--methods", "lm,lmm_moderated", "--out", str(tmp_path)])  # fmt: skip
    assert rc == 0
    out = capsys.readouterr().out
    assert "lmm_moderated" in out and "type1_0.05" in out


def test_type1_table_of_an_average_question_has_one_all_row():
    p = pd.DataFrame({"method": "lm", "cell_type": "all", "gene": ["a", "b", "c"],
                      "p_value": [0.01, 0.5, 0.9]})  # fmt: skip
    t = mock_null.type1_table(p)
    assert len(t) == 1 and t["n_tests"].iat[0] == 3


def test_bad_arguments_are_named(h5ad):
    kw = dict(cell_type="cell_type", layer="counts", n_splits=1, progress=False)
    with pytest.raises(ValueError, match="donor: no column 'patient'"):
        mock_null.run(h5ad, donor="patient", **kw)
    with pytest.raises(ValueError, match="methods: unknown"):
        mock_null.run(h5ad, donor="donor_id", methods=("edger",), **kw)
    with pytest.raises(ValueError, match="keep must be COLUMN=VALUE"):
        mock_null.run(h5ad, donor="donor_id", keep="stim", **kw)
    with pytest.raises(ValueError, match="n_splits must be a positive integer"):
        mock_null.run(h5ad, donor="donor_id", **{**kw, "n_splits": 0})
    with pytest.raises(ValueError, match="layer: no layer 'raw'"):
        mock_null.run(h5ad, donor="donor_id", **{**kw, "layer": "raw"})


def test_command_line_names_a_missing_file_without_a_traceback(tmp_path, capsys):
    from validation.mock_null import main

    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "kang2018.h5ad"), "--donor", "ind", "--cell-type", "cell"])
    assert exc.value.code == 2
    assert "path: no file" in capsys.readouterr().err
