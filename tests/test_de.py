"""de(): the FLASHMM vignette's analysis end to end, the other methods, scanpy export, CLI."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import pyflashmm as fm

VIGNETTE = "~ 0 + log(libsize) + cls + cls:trt"


@pytest.fixture(scope="module")
def sim():
    # the vignette's simulation call, smaller (FLASHMM: nGenes = 100, nCells = 100,000)
    return fm.simulate_rnaseq(
        n_genes=60, n_cells=8000, n_samples=12, n_de_genes=6, min_beta=0.5, max_beta=1.0,
        var_random_effects=0.1, rng=2503,
    )  # fmt: skip


def vignette_matrices(obs):
    """X and Z built by hand, as the vignette does with model.matrix (independent of design())."""
    cls = obs["cls"].astype(str)
    levels = list(obs["cls"].cat.categories)
    onehot = np.column_stack([(cls == c).to_numpy(float) for c in levels])
    trtB = (obs["trt"].astype(str) == "B").to_numpy(float)
    X = np.column_stack([np.log(obs["libsize"].to_numpy()), onehot, onehot * trtB[:, None]])
    names = ["log(libsize)"] + [f"cls{c}" for c in levels] + [f"cls{c}:trtB" for c in levels]
    sams = list(obs["sam"].cat.categories)
    Z = np.column_stack([(obs["sam"].astype(str) == s).to_numpy(float) for s in sams])
    return pd.DataFrame(X, columns=names), Z


def test_vignette_analysis_end_to_end(sim):
    adata = sim.to_anndata()
    contrasts = {f"B_vs_A_cls{c}": f"cls{c}:trtB" for c in sim.obs["cls"].cat.categories}
    table = fm.de(adata, fixed=VIGNETTE, random="sam", contrast=contrasts, df="residual")
    # the vignette's own route: Y = log2(1 + counts), X and Z by hand, lmmfit, t-test on n − p
    X, Z = vignette_matrices(sim.obs)
    Y = np.log2(1 + sim.counts.toarray())
    fit = fm.lmmfit(Y, X, Z, gene_names=list(sim.gene_names))
    assert fit.converged.all()
    for name, expr in contrasts.items():
        rows = table[table["contrast"] == name].set_index("variable").loc[fit.gene_names]
        j = fit.fixed_names.index(expr)
        np.testing.assert_allclose(rows["log_fc"], fit.coef[:, j], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(rows["p_value"], fit.p_value[:, j], rtol=1e-8, atol=1e-300)
    # the simulated DE effects are found in their own cluster: right sign when significant, and
    # most of them significant (low-count genes may be missed)
    found = 0
    for _, de_gene in sim.de_genes.iterrows():
        row = table[(table["variable"] == de_gene["gene"])
                    & (table["contrast"] == f"B_vs_A_cls{de_gene['cluster']}")].iloc[0]  # fmt: skip
        if row["p_value"] < 0.01:
            assert np.sign(row["log_fc"]) == np.sign(de_gene["beta"])
            found += 1
    assert found >= 4, sim.de_genes
    # and the calibrated default (Satterthwaite) gives fewer df than n − p for these contrasts
    sat = fm.de(adata, fixed=VIGNETTE, random="sam", contrast=contrasts)
    assert (sat["df"] < 8000 - X.shape[1]).all()
    assert set(sat.columns) >= {"variable", "contrast", "log_fc", "se", "stat", "df",
                                "p_value", "adj_p_value", "method"}  # fmt: skip


def test_de_from_counts_and_obs_and_backed_file(sim, tmp_path):
    a = fm.de((sim.counts, sim.obs), fixed="~ trt + log(libsize)", random="sam",
              contrast={"trt": "trtB"})  # fmt: skip
    path = tmp_path / "sim.h5ad"
    sim.write_h5ad(path)
    import anndata

    backed = anndata.read_h5ad(path, backed="r")
    try:
        b = fm.de(backed, fixed="~ trt + log(libsize)", random="sam", contrast={"trt": "trtB"},
                  chunk_size=1000)  # fmt: skip
    finally:
        backed.file.close()
    np.testing.assert_allclose(a["p_value"], b["p_value"], rtol=1e-10)
    assert (a["variable"].str.startswith("gene")).all()  # (counts, obs): default gene names
    assert list(b["variable"]) == list(sim.gene_names)


def test_de_nb_methods_and_rank_genes_groups(sim):
    adata = sim.to_anndata()
    pb = fm.de(adata, fixed="~ trt", random="sam", method="pseudobulk", cell_type="cls",
               contrast={"trt": "trtB"})  # fmt: skip
    assert {"variable", "contrast", "cell_type", "log_fc", "p_value", "adj_p_value"} <= set(
        pb.columns
    )
    assert len(pb) == adata.n_vars * sim.obs["cls"].nunique()
    cell = fm.de(adata, fixed="~ cls + trt + log(libsize)", method="nbglm",
                 contrast={"trt": "trtB"})  # fmt: skip
    assert len(cell) == adata.n_vars and cell["p_value"].dropna().between(0, 1).all()
    table = fm.de(adata, fixed=VIGNETTE, random="sam",
                  contrast={"c1": "cls1:trtB", "c2": "cls2:trtB"})  # fmt: skip
    fm.to_rank_genes_groups(table, adata)
    res = adata.uns["rank_genes_groups"]
    assert res["names"].dtype.names == ("c1", "c2")
    scores = np.asarray(res["scores"]["c1"], dtype=float)
    assert (np.diff(scores) <= 1e-6).all()  # highest first, as scanpy sorts


def test_de_bad_input(sim):
    adata = sim.to_anndata()
    with pytest.raises(KeyError, match="libsze"):
        fm.de(adata, fixed="~ log(libsze)", random="sam")
    with pytest.raises(ValueError, match="method must be one of"):
        fm.de(adata, fixed="~ trt", random="sam", method="edger")
    with pytest.raises(KeyError, match="layer 'counts'"):
        fm.de(adata, fixed="~ trt", random="sam", layer="counts")
    with pytest.raises(TypeError, match="AnnData, a path to an .h5ad file, or a \\(counts, obs\\)"):
        fm.de(np.zeros((3, 3)), fixed="~ trt")


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "pyflashmm", *args],
                          capture_output=True, text=True)  # fmt: skip


def test_cli_de_on_a_small_h5ad(sim, tmp_path):
    path = tmp_path / "small.h5ad"
    sim.write_h5ad(path)
    out = tmp_path / "res.csv"
    run = run_cli("de", str(path), "--fixed", VIGNETTE, "--random", "sam",
                  "--contrast", "c1=cls1:trtB", "--contrast", "avg=(cls1:trtB + cls2:trtB)/2",
                  "-o", str(out), "--quiet")  # fmt: skip
    assert run.returncode == 0, run.stderr
    table = pd.read_csv(out)
    assert len(table) == 2 * sim.counts.shape[1]
    assert set(table["contrast"]) == {"c1", "avg"}
    ref = fm.de(sim.to_anndata(), fixed=VIGNETTE, random="sam",
                contrast={"c1": "cls1:trtB", "avg": "(cls1:trtB + cls2:trtB)/2"})  # fmt: skip
    np.testing.assert_allclose(table["p_value"], ref["p_value"], rtol=1e-9)
    help_text = run_cli("de", "--help").stdout
    assert "examples" in help_text and "--contrast" in help_text and "--cell-type" in help_text
    assert sp.issparse(sim.counts)


def test_cli_help_lists_the_commands():
    run = run_cli("--help")
    assert run.returncode == 0 and "de" in run.stdout and "simulate" in run.stdout
    assert "reproduce" not in run.stdout  # a repository tool: python -m validation
    bad = run_cli("nonsense")
    assert bad.returncode == 2
