"""de() and the CLI as a scanpy user meets them: donor_id / cell_type / condition, counts in
layers["counts"], log-normalised X, categorical obs, gene symbols, a backed .h5ad."""

from __future__ import annotations

import inspect
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy import stats

import pyflashmm as fm
from tests.frontend.realistic import realistic_adata

LMM_FIXED = "~ 0 + log(n_counts) + cell_type + cell_type:condition"


@pytest.fixture(scope="module")
def pbmc():
    adata, truth = realistic_adata(n_genes=60, n_cells=3000, seed=11)
    return adata, truth


@pytest.fixture(scope="module")
def pbmc_file(pbmc, tmp_path_factory):
    path = tmp_path_factory.mktemp("h5ad") / "pbmc.h5ad"
    pbmc[0].write_h5ad(path)
    return path


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "pyflashmm", *args], capture_output=True,
                          text=True)  # fmt: skip


# ------------------------------------------------------------------------------ no simulator names


def test_no_public_default_is_a_simulator_column():
    for name in fm.__all__:
        obj = getattr(fm, name)
        if not callable(obj) or name == "simulate_rnaseq" or isinstance(obj, type):
            continue
        for p in inspect.signature(obj).parameters.values():
            default = p.default if isinstance(p.default, tuple | list) else [p.default]
            assert not {"sam", "cls", "trt"} & {d for d in default if isinstance(d, str)}, (
                name,
                p.name,
            )


def test_pseudobulk_needs_by_and_returns_labelled_counts(pbmc):
    adata, _ = pbmc
    with pytest.raises(TypeError, match="by: give the column"):
        fm.pseudobulk(adata, layer="counts")
    counts, samples = fm.pseudobulk(adata, by="donor_id", layer="counts")
    assert list(counts.columns) == list(adata.var_names)
    assert list(counts.index) == list(samples.index) == list(samples["donor_id"].astype(str))
    # donor-level columns are carried (condition, batch); cell-level ones are not
    assert {"condition", "batch", "n_cells", "libsize"} <= set(samples.columns)
    assert "cell_type" not in samples.columns
    assert samples["condition"].dtype == adata.obs["condition"].dtype
    expected = adata.obs.groupby("donor_id", observed=True)["condition"].first()
    assert (
        samples.set_index("donor_id")["condition"] == expected.reindex(samples["donor_id"])
    ).all()
    # the sums, by an independent route
    dense = adata.layers["counts"].toarray()
    for donor in samples["donor_id"]:
        rows = (adata.obs["donor_id"] == donor).to_numpy()
        np.testing.assert_array_equal(counts.loc[str(donor)].to_numpy(), dense[rows].sum(axis=0))


def test_pseudobulk_by_donor_only_with_a_donor_level_condition(pbmc):
    adata, _ = pbmc
    table = fm.de(adata, layer="counts", method="pseudobulk", fixed="~ condition",
                  random="donor_id")  # fmt: skip
    assert set(table["contrast"]) == {"(Intercept)", "conditionstim"}  # every coefficient
    assert len(table) == 2 * adata.n_vars
    assert table["p_value"].notna().all()
    assert table.attrs["reference"] == {"condition": "ctrl"}


def test_pseudobulk_with_a_cell_level_column_says_what_to_do(pbmc):
    adata, _ = pbmc
    with pytest.raises(ValueError, match="'cell_type' varies within.*cell_type='cell_type'"):
        fm.de(adata, layer="counts", method="pseudobulk", fixed="~ cell_type + condition",
              random="donor_id")  # fmt: skip


# ------------------------------------------------------------------------------ pseudobulk per type


def test_pseudobulk_fits_one_model_per_cell_type(pbmc):
    adata, truth = pbmc
    table = fm.de(adata, layer="counts", method="pseudobulk", fixed="~ condition",
                  random="donor_id", cell_type="cell_type",
                  contrast={"stim_vs_ctrl": "conditionstim"})  # fmt: skip
    assert list(table.columns[:3]) == ["variable", "contrast", "cell_type"]
    assert len(table) == adata.n_vars * 4
    assert set(table["cell_type"]) == {"CD4 T", "CD8 T", "B cell", "NK"}
    # each cell type's rows are the NB GLM of that type's donor pseudobulks, fitted alone
    sub = adata[adata.obs["cell_type"] == "B cell"]
    counts, samples = fm.pseudobulk(sub, by="donor_id", layer="counts")
    X = fm.design(samples, "~ condition").X_frame()
    alone = fm.nbglm(counts, X, contrast="conditionstim").to_frame()
    rows = table[table["cell_type"] == "B cell"].reset_index(drop=True)
    np.testing.assert_allclose(rows["log_fc"], alone["log_fc"], rtol=1e-12)
    np.testing.assert_allclose(rows["adj_p_value"], alone["adj_p_value"], rtol=1e-12)
    # the simulated B-cell DE genes are found in B cells
    called = set(rows.loc[rows["adj_p_value"] < 0.05, "variable"])
    true_b = set(truth.loc[truth["cell_type"] == "B cell", "gene"])
    assert len(called & true_b) >= len(true_b) // 2


def test_pooled_pseudobulk_warns_and_is_anticonservative_on_null_data():
    adata, _ = realistic_adata(n_genes=60, n_cells=3000, null=True, var_random_effects=0.3,
                               seed=1)  # fmt: skip
    common = {"layer": "counts", "method": "pseudobulk", "random": "donor_id",
              "cell_type": "cell_type", "contrast": {"stim": "conditionstim"}}  # fmt: skip
    per_type = fm.de(adata, fixed="~ condition", **common)
    with pytest.warns(fm.PseudoreplicationWarning, match="pooled model.*pseudoreplication"):
        pooled = fm.de(adata, fixed="~ cell_type + condition", per_cell_type=False, **common)
    # no gene is DE; the donor effects are shared by a donor's cell types, and the pooled
    # model counts those correlated samples as independent
    assert (pooled["p_value"] < 0.05).mean() > 2 * (per_type["p_value"] < 0.05).mean()
    assert (pooled["adj_p_value"] < 0.05).sum() > (per_type["adj_p_value"] < 0.05).sum()


def test_cell_type_in_a_per_type_formula_is_an_error(pbmc):
    with pytest.raises(ValueError, match="cell-type column 'cell_type'.*one model per cell type"):
        fm.de(pbmc[0], layer="counts", method="pseudobulk", fixed="~ cell_type + condition",
              random="donor_id", cell_type="cell_type")  # fmt: skip


def test_cell_type_types_that_cannot_be_fitted_are_skipped_with_a_warning(pbmc):
    adata = pbmc[0]
    # "NK" cells only from control donors: condition is constant there
    keep = ~((adata.obs["cell_type"] == "NK") & (adata.obs["condition"] == "stim")).to_numpy()
    sub = adata[keep].copy()
    with pytest.warns(UserWarning, match="1 cell type.*'NK'"):
        table = fm.de(sub, layer="counts", method="pseudobulk", fixed="~ condition",
                      random="donor_id", cell_type="cell_type",
                      contrast={"stim": "conditionstim"})  # fmt: skip
    assert set(table["cell_type"]) == {"CD4 T", "CD8 T", "B cell"}


# ------------------------------------------------------------------------------ cell-level NB GLM


def test_nbglm_with_random_warns_once_naming_the_column(pbmc):
    adata = pbmc[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fm.de(adata, layer="counts", method="nbglm", fixed="~ cell_type + condition",
              random="donor_id", contrast={"stim": "conditionstim"})  # fmt: skip
    pseudo = [w for w in caught if issubclass(w.category, fm.PseudoreplicationWarning)]
    assert len(pseudo) == 1
    text = str(pseudo[0].message)
    assert "'donor_id'" in text and "method='pseudobulk'" in text and "method='lmm'" in text
    assert "Squair" in fm.de.__doc__ and "log2 fold change of the NB mean" in fm.de.__doc__


def test_nbglm_honours_test_and_tests_every_coefficient(pbmc):
    adata = pbmc[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        wald = fm.de(adata, layer="counts", method="nbglm", fixed="~ condition", test="wald")
        lrt = fm.de(adata, layer="counts", method="nbglm", fixed="~ condition")
    assert wald.attrs["test"] == "wald" and lrt.attrs["test"] == "lrt"
    assert set(wald["contrast"]) == {"(Intercept)", "conditionstim"}
    stim = wald[wald["contrast"] == "conditionstim"]
    np.testing.assert_allclose(stim["stat"], stim["log_fc"] / stim["se"], rtol=1e-10)
    assert (lrt.loc[lrt["contrast"] == "conditionstim", "stat"].dropna() >= 0).all()


def test_cells_without_counts_are_named(pbmc):
    adata = pbmc[0][:400].copy()
    counts = adata.layers["counts"].tolil()
    counts[[3, 7], :] = 0
    adata.layers["counts"] = counts.tocsr()
    with pytest.raises(ValueError, match=rf"2 cells have no counts.*'{adata.obs_names[3]}'.*"
                                         "filter_cells"):  # fmt: skip
        fm.de(adata, layer="counts", method="nbglm", fixed="~ condition")


def test_nb_methods_reject_log_normalised_values(pbmc):
    with pytest.raises(ValueError, match="models raw counts.*layer='counts'"):
        fm.de(pbmc[0], method="nbglm", fixed="~ condition")


# ------------------------------------------------------------------------------ LMM


def test_lmm_on_log_normalised_x_warns_about_the_double_log(pbmc):
    adata = pbmc[0]
    with pytest.warns(fm.LogTransformWarning, match="layer=.*transform=None"):
        fm.de(adata, fixed="~ condition", random="donor_id", contrast="conditionstim")
    with warnings.catch_warnings():
        warnings.simplefilter("error", fm.LogTransformWarning)
        fm.de(adata, layer="counts", fixed="~ condition", random="donor_id",
              contrast="conditionstim")  # fmt: skip
        fm.de(adata, fixed="~ condition", random="donor_id", contrast="conditionstim",
              transform=None)  # fmt: skip


def test_lmm_finds_the_simulated_effects_in_their_cell_type(pbmc):
    adata, truth = pbmc
    contrasts = {t: f"cell_type{t}:conditionstim" for t in ["B cell", "CD8 T", "NK"]}
    table = fm.de(adata, layer="counts", fixed=LMM_FIXED, random="donor_id", contrast=contrasts)
    assert len(table) == adata.n_vars * 3
    assert list(table["variable"].unique()) == list(adata.var_names)
    for cell_type, rows in table.groupby("contrast"):
        true = truth[truth["cell_type"] == cell_type]
        hits = rows.set_index("variable").loc[true["gene"]]
        # 4 donors per arm leave the between-donor contrast ~7 df: few survive BH among 60
        # genes, but the true effects rank high and have the simulated sign
        found = hits["p_value"] < 0.05
        assert found.mean() >= 0.75, (cell_type, hits)
        assert rows["p_value"].rank().set_axis(rows["variable"]).loc[true["gene"]].mean() < 15
        signs = np.sign(hits.loc[found, "log_fc"]) == np.sign(true.set_index("gene")["beta"])[found]
        assert signs.all()
        adjusted = stats.false_discovery_control(rows["p_value"].to_numpy(), method="bh")
        np.testing.assert_allclose(rows["adj_p_value"], adjusted, rtol=1e-12)


def test_lmm_small_sample_options_reach_lmmtest(pbmc):
    """df=, moderate=, robust= and trend= are lmmtest's, on the same single fit."""
    adata, _ = pbmc
    kw = {"layer": "counts", "fixed": LMM_FIXED, "random": "donor_id",
          "contrast": {"B": "cell_typeB cell:conditionstim"}}  # fmt: skip
    plain = fm.de(adata, **kw)
    mod = fm.de(adata, moderate=True, trend=False, **kw)
    prior = pd.DataFrame(mod.attrs["moderation"])
    assert prior["contrast"].tolist() == ["B"] and np.isfinite(prior["s0_squared"]).all()
    # the moderated df adds the prior's d0 to each gene's df (limma's cap aside)
    d0 = float(prior["d0"].iloc[0])
    ok = np.isfinite(plain["df"])
    expected = np.minimum(plain["df"][ok] + d0, plain["df"][ok].sum())
    np.testing.assert_allclose(mod["df"][ok], expected, rtol=1e-10)
    np.testing.assert_array_equal(mod["log_fc"], plain["log_fc"])
    assert mod.attrs["test"] == "kenward-roger df, moderated"
    sat = fm.de(adata, df="satterthwaite", **kw)
    assert sat.attrs["test"] == "satterthwaite df" and plain.attrs["test"] == "kenward-roger df"
    assert np.isfinite(plain["p_value"]).all() and not np.allclose(sat["df"], plain["df"])
    ml = fm.de(adata, reml=False, **kw)
    assert ml.attrs["test"] == "satterthwaite df"
    assert not prior["trend"].any()
    # trend: the prior's scale follows each gene's mean expression, d0 stays common
    tr = fm.de(adata, moderate=True, **kw)  # the trend is de()'s default when moderating
    tr_prior = pd.DataFrame(tr.attrs["moderation"])
    assert tr_prior["trend"].tolist() == [True] and tr.attrs["test"].endswith("moderated (trend)")
    d0_tr = float(tr_prior["d0"].iloc[0])
    if np.isinf(d0_tr):  # the trend explains the scatter: the prior is s0²(ȳ_g) itself
        s0_sq = tr["se"] ** 2
    else:
        s0_sq = (tr["se"] ** 2 * (d0_tr + plain["df"]) - plain["df"] * plain["se"] ** 2) / d0_tr
    assert np.ptp(s0_sq[ok]) > 1e-3 * float(np.median(s0_sq[ok]))  # per gene, not one value
    np.testing.assert_allclose(np.median(s0_sq[ok]), tr_prior["s0_squared"].iloc[0], rtol=1e-6)
    np.testing.assert_array_equal(tr["log_fc"], plain["log_fc"])
    with pytest.raises(ValueError, match="trend=True applies to the moderated test"):
        fm.de(adata, trend=True, **kw)
    with pytest.raises(ValueError, match="kenward-roger.*REML"):
        fm.de(adata, df="kenward-roger", reml=False, **kw)
    with pytest.raises(ValueError, match="robust=True applies to the moderated test"):
        fm.de(adata, robust=True, **kw)
    with pytest.raises(TypeError, match="moderate must be a bool"):
        fm.de(adata, moderate="yes", **kw)


def test_cli_lists_lmmtests_df_methods():
    from pyflashmm._lmm.inference import DF_METHODS
    from pyflashmm._nbmm.inference import DF_METHODS as NBMM
    from pyflashmm.cli import LMM_DF_METHODS, NBMM_DF_METHODS

    assert set(LMM_DF_METHODS) == set(DF_METHODS)
    assert set(NBMM_DF_METHODS) == set(NBMM)


def test_lmm_needs_a_grouping(pbmc):
    with pytest.raises(ValueError, match="random: method='lmm' needs"):
        fm.de(pbmc[0], layer="counts", fixed="~ condition")


# ------------------------------------------------------------------------------ inputs and errors


def test_backed_file_and_path_give_the_in_memory_answer(pbmc, pbmc_file):
    import anndata

    adata = pbmc[0]
    kw = {"layer": "counts", "fixed": "~ cell_type + condition",
          "contrast": {"stim": "conditionstim"}}  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ref = fm.de(adata, method="nbglm", **kw)
        backed = anndata.read_h5ad(pbmc_file, backed="r")
        try:
            a = fm.de(backed, method="nbglm", chunk_size=700, **kw)
        finally:
            backed.file.close()
        b = fm.de(pbmc_file, method="nbglm", chunk_size=1000, **kw)
    pd.testing.assert_frame_equal(a, ref)
    pd.testing.assert_frame_equal(b, ref)
    lmm_ref = fm.de(adata, layer="counts", fixed=LMM_FIXED, random="donor_id",
                    contrast={"b": "cell_typeNK:conditionstim"})  # fmt: skip
    lmm_file = fm.de(pbmc_file, layer="counts", fixed=LMM_FIXED, random="donor_id",
                     contrast={"b": "cell_typeNK:conditionstim"}, chunk_size=500)  # fmt: skip
    np.testing.assert_allclose(lmm_file["p_value"], lmm_ref["p_value"], rtol=1e-10)


def test_anndata_without_x_and_empty_contrasts(pbmc):
    import anndata

    adata = pbmc[0]
    no_x = anndata.AnnData(X=None, obs=adata.obs, var=adata.var)
    no_x.layers["counts"] = adata.layers["counts"]
    with pytest.raises(ValueError, match=r"adata.X is None.*layer=.*'counts'"):
        fm.de(no_x, fixed="~ condition", random="donor_id")
    table = fm.de(no_x, layer="counts", fixed="~ condition", random="donor_id",
                  contrast="conditionstim")  # fmt: skip
    assert len(table) == adata.n_vars
    for empty in ({}, [], ""):
        with pytest.raises(ValueError, match="contrast is empty"):
            fm.de(adata, layer="counts", fixed="~ condition", random="donor_id",
                  contrast=empty)  # fmt: skip


def test_log_of_zero_in_a_covariate_is_named(pbmc):
    adata = pbmc[0][:500].copy()
    adata.obs["n_genes"] = (adata.layers["counts"] > 0).sum(axis=1).A1.astype(float)
    adata.obs.iloc[4, adata.obs.columns.get_loc("n_genes")] = 0.0
    with pytest.raises(ValueError, match=r"log\(n_genes\).*-?inf"):
        fm.de(adata, layer="counts", fixed="~ log(n_genes) + condition", random="donor_id")


def test_pseudobulk_rejects_negative_counts_and_single_gene_fits_are_clear(pbmc):
    adata = pbmc[0]
    with pytest.raises(ValueError, match="negative"):
        fm.pseudobulk(-adata.layers["counts"], adata.obs, by="donor_id")
    with pytest.raises(ValueError, match="non-integer.*layer='counts'"):
        fm.pseudobulk(adata, by="donor_id")  # X is log-normalised
    one = adata[:, ["CD79A"]].copy()
    with pytest.raises(ValueError, match=r"counts: .*trend across genes and needs at least 2"):
        fm.de(one, layer="counts", method="pseudobulk", fixed="~ condition", random="donor_id")


def test_string_numbers_are_rejected_everywhere(pbmc):
    adata = pbmc[0]
    strings = adata.layers["counts"][:200].toarray().astype(int).astype(str)
    X = fm.design(adata.obs.iloc[:200], "~ condition")
    with pytest.raises(TypeError, match="counts"):
        fm.nbglm(strings, X.X_frame())
    with pytest.raises(TypeError, match="Y must hold real numbers"):
        fm.summary_stats(strings, X.X_frame(), np.ones((200, 1)))


# ------------------------------------------------------------------------------ scanpy interop


def test_rank_genes_groups_layout_and_params(pbmc):
    adata = pbmc[0].copy()
    table = fm.de(adata, layer="counts", method="pseudobulk", fixed="~ condition",
                  random="donor_id", cell_type="cell_type",
                  contrast={"stim": "conditionstim"})  # fmt: skip
    fm.to_rank_genes_groups(table, adata)
    res = adata.uns["rank_genes_groups"]
    assert res["names"].dtype.names == ("CD4 T: stim", "CD8 T: stim", "B cell: stim", "NK: stim")
    p = res["params"]
    assert p["method"] == "pyflashmm pseudobulk (wald)" and p["layer"] == "counts"
    assert p["reference"] == "condition=ctrl"
    assert "log2 fold change" in p["logfoldchanges_scale"]
    scores = np.asarray(res["scores"]["B cell: stim"], dtype=float)
    assert (np.diff(scores[np.isfinite(scores)]) <= 1e-6).all()  # highest first, as scanpy
    assert (scores < 0).any() and (scores > 0).any()


def test_rank_genes_groups_keeps_the_sign_of_lrt_scores_and_states_the_lmm_scale(pbmc):
    adata = pbmc[0].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        cells = fm.de(adata, layer="counts", method="nbglm", fixed="~ cell_type + condition",
                      contrast={"stim": "conditionstim"})  # fmt: skip
    assert cells.attrs["test"] == "lrt"
    fm.to_rank_genes_groups(cells, adata, key="nb")
    scores = np.asarray(adata.uns["nb"]["scores"]["stim"], dtype=float)
    lfc = np.asarray(adata.uns["nb"]["logfoldchanges"]["stim"], dtype=float)
    ok = np.isfinite(scores) & (lfc != 0)
    assert (np.sign(scores[ok]) == np.sign(lfc[ok])).all() and (scores < 0).any()
    lmm = fm.de(adata, layer="counts", fixed="~ condition", random="donor_id",
                contrast={"stim": "conditionstim"})  # fmt: skip
    fm.to_rank_genes_groups(lmm, adata, key="lmm")
    assert "log2(1 + count)" in adata.uns["lmm"]["params"]["logfoldchanges_scale"]


# ------------------------------------------------------------------------------ command line


def test_cli_runs_each_method_on_a_file_and_prints_a_summary(pbmc, tmp_path, pbmc_file):
    out = tmp_path / "pb.csv"
    run = run_cli("de", str(pbmc_file), "--layer", "counts", "--method", "pseudobulk",
                  "--random", "donor_id", "--cell-type", "cell_type", "--fixed", "~ condition",
                  "--contrast", "stim=conditionstim", "-o", str(out))  # fmt: skip
    assert run.returncode == 0, run.stderr
    table = pd.read_csv(out)
    assert len(table) == pbmc[0].n_vars * 4 and "cell_type" in table.columns
    line = run.stderr.strip().splitlines()[-1]
    n_called = int((table["adj_p_value"] < 0.05).sum())
    assert line.startswith(f"pyflashmm de: {len(table)} rows (60 genes × 1 contrast × 4 cell")
    assert f"{n_called} at FDR 0.05" in line
    lmm_out = tmp_path / "lmm.csv"
    run = run_cli("de", str(pbmc_file), "--layer", "counts", "--random", "donor_id", "--fixed",
                  "~ condition", "--contrast", "stim=conditionstim", "-o", str(lmm_out),
                  "--quiet")  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    assert len(pd.read_csv(lmm_out)) == 60
    mod_out = tmp_path / "lmm_mod.csv"
    run = run_cli("de", str(pbmc_file), "--layer", "counts", "--random", "donor_id", "--fixed",
                  "~ condition", "--contrast", "stim=conditionstim", "-o", str(mod_out),
                  "--quiet", "--moderate", "--robust", "--df", "kenward-roger")  # fmt: skip
    assert run.returncode == 0, run.stderr
    moderated = pd.read_csv(mod_out)
    assert len(moderated) == 60
    assert not np.allclose(moderated["df"], pd.read_csv(lmm_out)["df"])
    trend_out = tmp_path / "lmm_trend.csv"
    run = run_cli("de", str(pbmc_file), "--layer", "counts", "--random", "donor_id", "--fixed",
                  "~ condition", "--contrast", "stim=conditionstim", "-o", str(trend_out),
                  "--quiet", "--moderate")  # fmt: skip
    assert run.returncode == 0, run.stderr
    trended = pd.read_csv(trend_out)
    assert np.isfinite(trended["p_value"]).all()
    prior = pd.read_csv(trend_out.with_name("lmm_trend.moderation.csv"))
    assert prior["contrast"].tolist() == ["stim"] and prior["trend"].tolist() == [True]
    assert prior["d0"].iloc[0] > 0 and prior["s0_squared"].iloc[0] > 0
    flat_out = tmp_path / "lmm_flat.csv"
    run = run_cli("de", str(pbmc_file), "--layer", "counts", "--random", "donor_id", "--fixed",
                  "~ condition", "--contrast", "stim=conditionstim", "-o", str(flat_out),
                  "--quiet", "--moderate", "--no-trend")  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert not np.allclose(pd.read_csv(flat_out)["se"], trended["se"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--contrast", "a=conditionstim", "--contrast", "a=(Intercept)"], "'a' is given twice"),
        (["--contrast", "conditionstim"], "NAME=EXPR"),
        (["--pooled"], "--pooled needs --cell-type"),
        (["--fixed", "~ nosuchcolumn"], "nosuchcolumn"),
    ],
)
def test_cli_de_errors_name_the_option(pbmc_file, tmp_path, args, message):
    base = ["de", str(pbmc_file), "--layer", "counts", "--random", "donor_id", "-o",
            str(tmp_path / "r.csv")]  # fmt: skip
    if "--fixed" not in args:
        base += ["--fixed", "~ condition"]
    run = run_cli(*base, *args)
    assert run.returncode == 2
    assert run.stderr.strip().count("\n") == 0 and message in run.stderr, run.stderr


def test_cli_input_and_output_errors(tmp_path):
    text = tmp_path / "counts.csv"
    text.write_text("a,b\n1,2\n")
    fake = tmp_path / "fake.h5ad"
    fake.write_text("not hdf5")
    cases = [
        (["de", str(text), "--fixed", "~ x", "-o", "r.csv"], "is not an .h5ad file"),
        (["de", str(fake), "--fixed", "~ x", "-o", str(tmp_path / "r.csv")], "cannot read"),
        (["de", str(tmp_path / "none.h5ad"), "--fixed", "~ x", "-o", "r.csv"], "no such file"),
        (
            [
                "simulate",
                "--n-genes",
                "5",
                "--n-cells",
                "50",
                "--seed",
                "-1",
                "-o",
                str(tmp_path / "s.h5ad"),
            ],
            "--seed must be a non-negative integer",
        ),  # fmt: skip
        (
            ["simulate", "--reference", str(tmp_path / "ref.h5ad"), "-o", str(tmp_path / "s.h5ad")],
            "--reference: no such file",
        ),  # fmt: skip
        (
            [
                "simulate",
                "--n-genes",
                "5",
                "--n-cells",
                "50",
                "-o",
                str(tmp_path / "missing" / "s.h5ad"),
            ],
            "-o/--output: the folder",
        ),  # fmt: skip
    ]
    for args, message in cases:
        run = run_cli(*args)
        assert run.returncode == 2, (args, run.stderr)
        assert message in run.stderr and "Traceback" not in run.stderr, (args, run.stderr)
        assert run.stderr.strip().count("\n") == 0, run.stderr


def test_sparse_input_is_never_densified_by_pseudobulk(pbmc):
    adata = pbmc[0]
    assert sp.issparse(adata.layers["counts"])
    counts, _ = fm.pseudobulk(adata.layers["counts"], adata.obs, by=["donor_id", "cell_type"])
    assert counts.shape == (8 * 4, adata.n_vars)
    assert counts.index[0] == f"{adata.obs['donor_id'].iloc[0]}_{adata.obs['cell_type'].iloc[0]}"


# ------------------------------------------------------------------------------ names and syntax


def test_names_survive_from_anndata_to_every_table(pbmc):
    adata = pbmc[0]
    dsg = fm.design(adata.obs, "~ condition", random="(1|donor_id)")
    stats = fm.summary_stats(adata.layers["counts"], dsg, transform="log2p1",
                             gene_names=adata.var_names)  # fmt: skip
    fit = fm.lmm(stats)
    assert fit.theta_names == ["donor_id", "residual"]
    assert list(fit.gene_names) == list(adata.var_names)
    blups = fm.random_effects(fit)
    assert list(blups.columns) == list(adata.obs["donor_id"].cat.categories)
    assert blups.columns.name == "donor_id" and list(blups.index) == list(adata.var_names)
    crossed_dsg = fm.design(adata.obs, "~ condition", "(1|donor_id) + (1|batch)")
    with warnings.catch_warnings():  # two batches: some genes end at pd_boundary
        warnings.simplefilter("ignore", fm.ConvergenceWarning)
        crossed = fm.lmm(fm.summary_stats(adata.layers["counts"], crossed_dsg, transform="log2p1"))
    assert crossed.theta_names == ["donor_id", "batch", "residual"]
    assert list(fm.random_effects(crossed)["batch"].columns) == ["b1", "b2"]
    assert set(fm.vctest(crossed)["component"]) == {"donor_id", "batch"}


def test_lme4_syntax_in_de_and_unsupported_terms_named(pbmc):
    adata = pbmc[0]
    kw = {"layer": "counts", "fixed": "~ condition", "contrast": "conditionstim"}
    plain = fm.de(adata, random="donor_id", **kw)
    lme4 = fm.de(adata, random="(1|donor_id)", **kw)
    nlme = fm.de(adata, random="~ 1 | donor_id", **kw)
    pd.testing.assert_frame_equal(plain, lme4.assign())
    np.testing.assert_array_equal(plain["p_value"], nlme["p_value"])
    pb = fm.de(adata, random="(1|donor_id)", method="pseudobulk", **kw)
    assert len(pb) == adata.n_vars
    with pytest.raises(ValueError, match=r"'\(1 \+ n_counts \| donor_id\)'.*correlated"):
        fm.de(adata, random="(1 + n_counts | donor_id)", **kw)
    with pytest.raises(ValueError, match="pseudobulk.*sample grouping"):
        fm.de(adata, random="(0 + n_counts | donor_id)", method="pseudobulk", **kw)


# ------------------------------------------------------------------------------ review findings


def test_a_finer_random_grouping_is_the_pooled_model_and_warns(pbmc):
    adata = pbmc[0]
    kw = {"layer": "counts", "method": "pseudobulk", "contrast": "conditionstim"}
    for random in (["donor_id", "cell_type"], "(1|donor_id:cell_type)", "(1|donor_id/cell_type)"):
        with pytest.warns(fm.PseudoreplicationWarning, match="'donor_id'.*pseudoreplication"):
            fm.de(adata, fixed="~ cell_type + condition", random=random, **kw)
    with warnings.catch_warnings():  # batch is donor-level: the samples are still the donors
        warnings.simplefilter("error", fm.PseudoreplicationWarning)
        fm.de(adata, fixed="~ condition", random=["donor_id", "batch"], **kw)
        fm.de(adata, fixed="~ condition", random=["donor_id", "cell_type"],
              cell_type="cell_type", **kw)  # fmt: skip


def test_a_typo_in_a_per_type_contrast_is_reported_once(pbmc):
    with pytest.raises(ValueError, match="unknown name 'conditionstm'"):
        fm.de(pbmc[0], layer="counts", method="pseudobulk", fixed="~ condition",
              random="donor_id", cell_type="cell_type", contrast="conditionstm")  # fmt: skip
    with pytest.raises(ValueError, match="per_cell_type=False .* needs cell_type"):
        fm.de(pbmc[0], layer="counts", method="pseudobulk", fixed="~ condition",
              random="donor_id", per_cell_type=False)  # fmt: skip


def test_count_frames_are_matched_to_obs_by_label(pbmc):
    adata = pbmc[0]
    frame = pd.DataFrame(adata.layers["counts"].toarray(), index=adata.obs_names,
                         columns=adata.var_names)  # fmt: skip
    kw = {"method": "pseudobulk", "fixed": "~ condition", "random": "donor_id",
          "contrast": "conditionstim"}  # fmt: skip
    ref = fm.de(adata, layer="counts", **kw)
    shuffled = fm.de((frame.iloc[::-1], adata.obs), **kw)
    pd.testing.assert_frame_equal(ref.drop(columns=[]), shuffled, check_like=True)
    with pytest.raises(ValueError, match="data: the rows of the counts DataFrame"):
        fm.de((frame.set_axis([f"x{i}" for i in range(len(frame))]), adata.obs), **kw)


def test_simulated_data_keep_their_gene_names():
    sim = fm.simulate_rnaseq(n_genes=30, n_cells=1500, n_samples=6, n_clusters=2, rng=4)
    table = fm.de(sim, fixed="~ trt", random="sam", contrast="trtB")
    assert list(table["variable"]) == list(sim.gene_names)  # Gene1, Gene2, ...
    counts, _ = fm.pseudobulk(sim, by="sam")
    assert list(counts.columns) == list(sim.gene_names)


def test_obs_as_users_have_them(pbmc):
    adata = pbmc[0][:1500].copy()
    # pandas' string and boolean dtypes (obs.convert_dtypes()), and a column named like a
    # formula function (a sequencing centre)
    obs = adata.obs.astype({"condition": "string"})
    obs["center"] = pd.Categorical(np.where(obs["batch"] == "b1", "Broad", "Sanger"))
    obs["female"] = pd.array(obs["donor_id"].cat.codes % 3 == 0, dtype="boolean")
    adata.obs = obs
    table = fm.de(adata, layer="counts", fixed="~ condition + center + female",
                  random="donor_id")  # fmt: skip
    assert set(table["contrast"]) == {"(Intercept)", "conditionstim", "centerSanger",
                                      "femaleTRUE"}  # fmt: skip
    assert table.attrs["reference"] == {"condition": "ctrl", "center": "Broad",
                                        "female": "FALSE"}  # fmt: skip


def test_backed_files_without_x_and_anndata_given_as_y(pbmc, tmp_path):
    import anndata

    adata = pbmc[0]
    no_x = anndata.AnnData(X=None, obs=adata.obs, var=adata.var)
    no_x.layers["counts"] = adata.layers["counts"].toarray()  # a dense layer, read in chunks
    path = tmp_path / "nox.h5ad"
    no_x.write_h5ad(path)
    with pytest.raises(ValueError, match=r"adata.X is None.*layers: \['counts'\]"):
        fm.de(path, fixed="~ condition", random="donor_id")
    table = fm.de(path, layer="counts", fixed="~ condition", random="donor_id",
                  contrast="conditionstim", chunk_size=400)  # fmt: skip
    ref = fm.de(adata, layer="counts", fixed="~ condition", random="donor_id",
                contrast="conditionstim")  # fmt: skip
    np.testing.assert_allclose(table["p_value"], ref["p_value"], rtol=1e-10)
    dsg = fm.design(adata.obs, "~ condition", random="donor_id")
    # an AnnData (or its file) given as Y: its X or layers[layer], named by its var_names
    ref = fm.summary_stats(adata.layers["counts"], dsg, transform="log2p1", progress=False)
    for data in (adata, path):
        got = fm.summary_stats(data, dsg, layer="counts", transform="log2p1", progress=False)
        assert np.array_equal(got.XY, ref.XY) and np.array_equal(got.Ynorm, ref.Ynorm)
        assert list(got.gene_names) == list(adata.var_names)
    with pytest.raises(ValueError, match=r"adata.X is None"):
        fm.summary_stats(path, dsg)


def test_cli_warnings_are_one_line(pbmc_file, tmp_path):
    run = run_cli("de", str(pbmc_file), "--random", "donor_id", "--fixed", "~ condition",
                  "--contrast", "stim=conditionstim", "-o", str(tmp_path / "r.csv"))  # fmt: skip
    assert run.returncode == 0, run.stderr
    lines = run.stderr.strip().splitlines()
    assert lines[0].startswith("pyflashmm de: LogTransformWarning: de(method='lmm'): X holds")
    assert len(lines) == 2 and lines[1].startswith("pyflashmm de: 60 rows")
