"""The method engine of the scenario experiments and the mock nulls: every Python method on a
small scenario, power on DE genes, the dream weighted LMM and the within contrast against
statsmodels, failures and missing R as data."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy import stats

from validation import scenario_methods as sm
from validation.scenarios import CONTROL, SCENARIOS, TREATED, simulate_scenario

#: the droplet scenario with expressed genes, so that every model fits every gene
EXPRESSED = dataclasses.replace(SCENARIOS["droplet"], name="expressed", mean_median=1.0,
                                mean_sdlog=0.5)  # fmt: skip
KW = dict(donor="donor_id", cell_type="cell_type", condition="condition",
          levels=(CONTROL, TREATED), layer="counts")  # fmt: skip
#: statuses of genes that no method can test (no count, constant)
UNTESTABLE = {"all_zero", "zero_variance", "constant"}


def _reml(model):
    """statsmodels' REML fit to ~1e-9 (BFGS at gtol 1e-10, as validation/agreement.py)."""
    import warnings

    fit = {"method": "bfgs", "gtol": 1e-10, "maxiter": 1000}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = model.fit(reml=True, **fit)
        if not res.converged:  # BFGS from statsmodels' default start can stall
            res = model.fit(reml=True, start_params=model.fit(reml=True).params_object, **fit)
    return res if res.converged else None


@pytest.fixture(scope="module")
def small():
    return simulate_scenario(EXPRESSED, n_donors=6, cells_per_donor=40, n_genes=24, seed=11,
                             null=True).to_anndata()  # fmt: skip


@pytest.fixture(scope="module")
def within(small):
    return sm.test_data(small, **KW, question="within", methods=sm.PYTHON_METHODS)


def test_every_python_method_tests_every_gene_in_every_cell_type(small, within):
    table, notes = within
    assert list(table.columns) == sm.COLUMNS
    genes = list(small.var_names)
    types = set(small.obs["cell_type"].astype(str))
    for m in sm.PYTHON_METHODS:
        t = table[table["method"] == m]
        assert set(t["cell_type"]) == types, m
        for _, g in t.groupby("cell_type"):
            assert g["gene"].tolist() == genes, m
        p = t["p_value"]
        assert p[p.notna()].between(0, 1).all(), m
        assert t.loc[p.isna(), "status"].isin(UNTESTABLE).all(), (m, t.loc[p.isna(), "status"])
        assert p.notna().mean() > 0.95, m
        assert (t["lfc_scale"] == sm.METHODS[m].lfc_scale).all()
        assert (t["seconds"] > 0).all() and t["seconds"].notna().all(), m
        assert not t["status"].str.startswith("failed").any(), m
    # one-fit methods: one time for all the cell types; per-type methods: one per type
    secs = table.groupby("method")["seconds"].nunique()
    assert secs["lmm"] == 1 and secs["dream"] == 1 and secs["pseudobulk"] == len(types)
    scales = {m: sm.METHODS[m].lfc_scale for m in ("lmm", "pseudobulk", "wilcoxon")}
    assert "log2(1 + count)" in scales["lmm"] and "not a log fold change" in scales["lmm"]
    assert scales["pseudobulk"].startswith("log2 fold change")
    assert "logfoldchanges" in scales["wilcoxon"]
    assert not any("skipped" in n for n in notes)


def test_average_question_is_one_test_per_gene(small):
    table, _ = sm.test_data(small, **KW, question="average",
                            methods=("lmm", "lm", "pseudobulk", "wilcoxon", "dream"))  # fmt: skip
    assert (table["cell_type"] == "all").all()
    assert (table.groupby("method").size() == small.n_vars).all()
    assert table["p_value"].dropna().between(0, 1).all()


def test_de_genes_get_smaller_p_values(tmp_path):
    sc = dataclasses.replace(EXPRESSED, de_fraction=0.3, lfc_range=(1.0, 1.5))
    data = simulate_scenario(sc, n_donors=10, cells_per_donor=60, n_genes=40, seed=4)
    assert data.var["de"].sum() == 12  # simulate_scenario(null=False): DE in CD14 Mono only
    methods = ("lmm", "lmm_satterthwaite", "lmm_moderated", "pseudobulk", "dream")
    table, _ = sm.test_data(data.to_anndata(), **KW, cell_types=["CD14 Mono"], methods=methods)
    de = table["gene"].map(data.var["de"])
    assert set(table["cell_type"]) == {"CD14 Mono"}
    for m in methods:
        t = table[table["method"] == m]
        p_de, p_null = t.loc[de[t.index], "p_value"], t.loc[~de[t.index], "p_value"]
        assert p_de.median() < 0.01 < p_null.median(), m
        assert stats.mannwhitneyu(p_de, p_null, alternative="less").pvalue < 1e-4, m


def test_dream_weighted_lmm_is_statsmodels_mixedlm_on_scaled_rows(small):
    import statsmodels.api as smapi

    data = sm.prepare(small, **KW, question="within")
    d = sm.dream_inputs(data)
    assert d.w.shape == d.logcpm.shape and (d.w > 0).all()
    donors = np.asarray(d.Z.argmax(axis=1))
    L = d.L.to_numpy()
    checked = 0
    for j in range(d.logcpm.shape[1]):
        st = sm.weighted_lmm_stats(d.logcpm[:, j], d.X, d.Z, d.w[:, j],
                                   fixed_names=d.dsg.fixed_names,
                                   random_names=d.dsg.random_names, gene_names=["g"])  # fmt: skip
        fit = sm.fm.lmm(st, method="REML", nonneg=True, warn=False)
        if fit.status[0] != "ok":  # interior fits only: statsmodels' optimiser on the boundary
            continue
        sw = np.sqrt(d.w[:, j])
        model = smapi.MixedLM(d.logcpm[:, j] * sw, d.X * sw[:, None], groups=donors,
                              exog_re=sw[:, None])  # fmt: skip
        ref = _reml(model)
        if ref is None:
            continue
        # the variance components, and Cov(β̂) = (X*ᵀV⁻¹X*)⁻¹ at statsmodels' estimates
        # (its cov_params() inverts the Hessian of all the parameters instead)
        sigma_b2, sigma2 = float(np.asarray(ref.cov_re)[0, 0]), float(ref.scale)
        np.testing.assert_allclose(fit.theta[0], [sigma_b2, sigma2], rtol=1e-5)
        Xs, Zs = d.X * sw[:, None], d.Z * sw[:, None]
        V = sigma2 * np.eye(len(sw)) + sigma_b2 * Zs @ Zs.T
        cov = np.linalg.inv(Xs.T @ np.linalg.solve(V, Xs))
        est, se = L.T @ fit.coef[0], np.sqrt(np.einsum("pk,pq,qk->k", L, fit.cov[0], L))
        np.testing.assert_allclose(est, L.T @ ref.fe_params, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(se, np.sqrt(np.einsum("pk,pq,qk->k", L, cov, L)), rtol=1e-5)
        checked += 1
        if checked == 3:
            break
    assert checked == 3


def test_within_contrast_is_the_cell_types_interaction_coefficient(small, within):
    import statsmodels.api as smapi

    table, _ = within
    obs = small.obs
    lib = np.asarray(small.layers["counts"].sum(axis=1)).ravel()
    keep = lib > 0
    X = pd.get_dummies(obs["cell_type"], drop_first=True, dtype=float)  # CD14 Mono, B
    treated = (obs["condition"] == TREATED).to_numpy(float)
    for t in obs["cell_type"].cat.categories:
        X[f"{t}:stim"] = (obs["cell_type"] == t).to_numpy(float) * treated
    X.insert(0, "loglib", np.log(np.maximum(lib, 1)))
    X.insert(0, "const", 1.0)
    counts = small.layers["counts"].toarray()
    t = "CD14 Mono"
    rows = table[(table["method"] == "lmm_satterthwaite") & (table["cell_type"] == t)]
    rows = rows.set_index("gene")
    j = list(X.columns).index(f"{t}:stim")
    checked = 0
    for g, gene in enumerate(small.var_names):
        if rows.loc[gene, "status"] != "ok":  # interior fits only (σ_b² > 0 for both)
            continue
        y = np.log2(1 + counts[keep, g])
        ref = _reml(smapi.MixedLM(y, X[keep].to_numpy(), groups=obs["donor_id"].to_numpy()[keep]))
        if ref is None or np.asarray(ref.cov_re)[0, 0] <= 1e-6:
            continue
        assert rows.loc[gene, "log_fc"] == pytest.approx(ref.fe_params[j], rel=1e-5)
        checked += 1
        if checked == 2:
            break
    assert checked == 2
    # every LMM variant reports the same estimate (one REML fit), differing in the test only
    lmms = table[table["method"].str.startswith("lmm") & (table["cell_type"] == t)]
    spread = lmms.groupby("gene")["log_fc"].agg(np.ptp)
    assert spread.max() < 1e-10
    assert table.loc[table["method"] == "lm", "log_fc"].notna().any()


def test_wilcoxon_log_fc_is_scanpys(rng):
    dense = rng.poisson(1.5, (50, 4)).astype(float)
    dense[:, 0] += 1
    in_b = np.arange(50) < 20
    p, lfc = sm.wilcoxon(sp.csr_matrix(dense), in_b)
    x = np.log1p(dense / dense.sum(axis=1, keepdims=True) * 1e4)
    ref = np.log2((np.expm1(x[in_b].mean(0)) + 1e-9) / (np.expm1(x[~in_b].mean(0)) + 1e-9))
    np.testing.assert_allclose(lfc, ref, rtol=1e-12)
    for g in range(4):
        want = stats.mannwhitneyu(x[in_b, g], x[~in_b, g], method="asymptotic").pvalue
        assert p[g] == pytest.approx(want, rel=1e-12)


def test_a_failing_method_is_data_and_the_others_proceed(small, monkeypatch):
    def boom(data, names):
        raise RuntimeError("boom")

    monkeypatch.setitem(sm.METHODS, "nbmm", dataclasses.replace(sm.METHODS["nbmm"], run=boom))
    table, _ = sm.test_data(small, **KW, methods=("nbmm", "lm"))
    bad = table[table["method"] == "nbmm"]
    assert len(bad) == 3 * small.n_vars and bad["p_value"].isna().all()
    assert (bad["status"] == "failed: RuntimeError: boom").all()
    assert table.loc[table["method"] == "lm", "p_value"].notna().mean() > 0.95


def test_missing_r_skips_r_methods_with_a_note(small, monkeypatch):
    from validation import r_de

    monkeypatch.setattr(r_de, "r_methods_unavailable",
                        lambda methods: {m: "Rscript not found" for m in methods})  # fmt: skip
    assert sm.default_methods() == sm.PYTHON_METHODS
    table, notes = sm.test_data(small, **KW, methods=("lm", "edger_ql", "glmmtmb"))
    assert set(table["method"]) == {"lm"}
    assert "edger_ql skipped: Rscript not found" in notes
    assert "glmmtmb skipped: Rscript not found" in notes
    monkeypatch.setattr(sm, "_r_de", lambda: None)
    _, notes = sm.test_data(small, **KW, methods=("lm", "deseq2_r"))
    assert "deseq2_r skipped: validation.r_de cannot be imported" in notes


def test_cell_types_and_min_cells(small):
    table, notes = sm.test_data(small, **KW, methods=("lm",), cell_types=["B", "NK"])
    assert set(table["cell_type"]) == {"B"}
    assert any("['NK']" in n for n in notes)
    table, notes = sm.test_data(small, **KW, methods=("lm",), min_cells=10_000)
    assert table.empty and "no cell type to test" in notes


def test_bad_arguments_are_named(small):
    with pytest.raises(ValueError, match="methods: unknown"):
        sm.test_data(small, **KW, methods=("edger",))
    with pytest.raises(ValueError, match="question must be one of"):
        sm.test_data(small, **KW, question="pooled")
    with pytest.raises(ValueError, match="levels must be two distinct levels"):
        sm.test_data(small, **{**KW, "levels": ("control", "ctrl")})
    with pytest.raises(ValueError, match="donor: no column 'patient'"):
        sm.test_data(small, **{**KW, "donor": "patient"})
    paired = small.copy()
    paired.obs["condition"] = np.where(np.arange(paired.n_obs) % 2, CONTROL, TREATED)
    with pytest.raises(ValueError, match="donors must be nested"):
        sm.test_data(paired, **KW)


def test_registry():
    assert set(sm.R_METHODS) == {"edger_ql", "limma_voom", "deseq2_r", "glmmtmb", "lmertest"}
    assert sm.PYTHON_METHODS == ("lmm", "lmm_satterthwaite", "lmm_between_within",
                                 "lmm_moderated", "lm", "nbmm", "pseudobulk", "nbglm_cells",
                                 "wilcoxon", "dream")  # fmt: skip
    for name, spec in sm.METHODS.items():
        assert spec.name == name and spec.label and spec.lfc_scale
        assert bool(spec.r_packages) == (name in sm.R_METHODS)


@pytest.mark.slow
def test_r_methods_run_through_the_engine(small):
    missing = sm.r_unavailable(sm.R_METHODS)
    if missing:
        pytest.skip(f"R methods unavailable: {missing}")
    for question in ("within", "average"):
        table, notes = sm.test_data(small, **KW, question=question, methods=sm.R_METHODS,
                                    r_gene_subset=3, seed=2)  # fmt: skip
        assert set(table["method"]) == set(sm.R_METHODS), notes
        assert not table["status"].str.startswith("failed: RuntimeError").any()
        p = table["p_value"]
        assert p.dropna().between(0, 1).all() and p.notna().mean() > 0.8
        assert (table.groupby(["method", "cell_type"])["gene"].size()
                .loc[["glmmtmb", "lmertest"]] == 3).all()  # fmt: skip
        assert table["seconds"].notna().all()
