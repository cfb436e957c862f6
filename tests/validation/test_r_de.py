"""The R comparators of validation/r_de.py against independent expectations.

Each test that runs R skips, with the note of :func:`validation.r_de.r_methods_unavailable`,
when R or the method's packages are missing. Loading R's packages is most of the time (DESeq2
alone takes ~7 s on a small machine), so the pseudobulk methods run in one R call and the
check, which loads the packages once more, is made only when a run fails.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import pyflashmm as fm
from validation import r_de

N_DONORS, N_GENES, N_DE = 8, 300, 30
LFC_DE = np.log(4.0)  # strongly DE genes: 4-fold up in the treated donors


def _run_available(run, methods):
    """``run(methods)``; when R cannot run them, the available ones only. Returns the results
    and {method: note} for the others (the check loads the packages in R: only on failure)."""
    try:
        return run(methods), {}
    except RuntimeError:
        missing = r_de.r_methods_unavailable(methods)
        if not missing:
            raise
    rest = tuple(m for m in methods if m not in missing)
    return (run(rest) if rest else {}), missing


def _skip_unless(missing, *methods):
    for m in methods:
        if m in missing:
            pytest.skip(f"{m}: {missing[m]}")


def _pseudobulk_data(seed=11):
    """8 donors (4 control, 4 treated) × 300 genes of NB counts, the first 30 genes 4-fold up in
    the treated donors, the last gene without counts."""
    rng = np.random.default_rng(seed)
    treated = np.repeat([0, 1], N_DONORS // 2)
    base = rng.lognormal(np.log(200), 1.0, N_GENES)
    lfc = np.where(np.arange(N_GENES) < N_DE, LFC_DE, 0.0)
    depth = rng.uniform(0.6, 1.4, N_DONORS)
    mu = depth[:, None] * base[None, :] * np.exp(treated[:, None] * lfc[None, :])
    disp = 0.05
    counts = rng.negative_binomial(1 / disp, 1 / (1 + disp * mu))
    counts[:, -1] = 0
    samples = pd.DataFrame({
        "sample": [f"donor{i:02d}" for i in range(N_DONORS)],
        "donor_id": [f"donor{i:02d}" for i in range(N_DONORS)],
        "group": treated,
        "condition": pd.Categorical(np.where(treated == 1, "treated", "control"),
                                    categories=["control", "treated"]),
    })  # fmt: skip
    genes = [f"GENE{g:04d}" for g in range(N_GENES)]
    return counts, samples, genes


@pytest.fixture(scope="module")
def pseudobulk():
    counts, samples, genes = _pseudobulk_data()
    res, missing = _run_available(
        lambda methods: r_de.run_r_pseudobulk(counts, samples, genes, design="~ group",
                                              coef="group", methods=methods),
        r_de.PSEUDOBULK_METHODS,
    )  # fmt: skip
    return counts, samples, genes, res, missing


@pytest.mark.parametrize("method", r_de.PSEUDOBULK_METHODS)
def test_pseudobulk_pvalues_power_and_null(pseudobulk, method):
    counts, _, genes, res, missing = pseudobulk
    _skip_unless(missing, method)
    tab = res[method]
    assert list(tab.index) == genes
    assert {"p_value", "log_fc", "status"} <= set(tab.columns)
    assert tab.attrs["seconds"] >= 0 and np.isfinite(tab.attrs["seconds"])
    # the gene without counts gets no fit; every other gene a p-value (DESeq2's Cook's
    # cutoff may take a few away)
    assert tab["status"].iloc[-1] == "all_zero" and np.isnan(tab["p_value"].iloc[-1])
    fitted = tab.iloc[:-1]
    assert fitted["status"].isin(["ok", "cooks_outlier"]).all()
    assert (fitted["status"] == "ok").mean() > 0.97
    p = fitted["p_value"].dropna().to_numpy()
    assert ((p >= 0) & (p <= 1)).all()
    de, null = fitted.iloc[:N_DE], fitted.iloc[N_DE:]
    # 4-fold on 4 vs 4 donors with NB dispersion 0.05: every DE gene is found
    assert (de["p_value"] < 1e-3).all()
    assert (de["log_fc"] > 1).all() and (de["log_fc"] < 3).all()
    assert abs(np.median(de["log_fc"]) - np.log2(4.0)) < 0.2
    # null genes: p-values roughly uniform, log fold changes centred on 0
    pn = null["p_value"].dropna().to_numpy()
    assert stats.kstest(pn, "uniform").pvalue > 1e-3
    assert (pn < 0.05).mean() < 0.15
    assert abs(np.median(null["log_fc"])) < 0.1


@pytest.mark.parametrize("method", r_de.PSEUDOBULK_METHODS)
def test_log_fc_is_the_log2_ratio_of_normalised_means(pseudobulk, method):
    """Independent of R: the log2 ratio of the two groups' mean counts per million, with the
    null genes' total as library size (the true normaliser here: 30 genes 4-fold up inflate
    the raw library sizes of the treated donors by ~20%, which TMM and DESeq2's size factors
    undo). Model-based fold changes (NB GLM, voom's weighted log-CPM) and estimated
    normalisation differ from it a little; a wrong sign, scale (log2) or normaliser does not."""
    counts, samples, _, res, missing = pseudobulk
    _skip_unless(missing, method)
    cpm = counts / counts[:, N_DE:].sum(axis=1, keepdims=True) * 1e6
    treated = samples["group"].to_numpy() == 1
    keep = counts.mean(axis=0) >= 20
    assert keep.sum() > 250
    ratio = np.log2(cpm[treated][:, keep].mean(axis=0) / cpm[~treated][:, keep].mean(axis=0))
    diff = res[method]["log_fc"].to_numpy()[keep] - ratio
    assert np.abs(diff).max() < 0.3
    assert np.median(np.abs(diff)) < 0.12
    assert abs(diff.mean()) < 0.12


def test_deseq2_agrees_with_pyflashmm_nbglm(pseudobulk):
    """DESeq2's Wald test with its defaults against pyflashmm's reproduction of it (they agree
    to ~1e-12 here; 1e-6 allowed)."""
    counts, samples, genes, res, missing = pseudobulk
    _skip_unless(missing, "deseq2_r")
    X = fm.design(samples, "~ group").X_frame()
    keep = counts.sum(axis=0) > 0
    fit = fm.nbglm(pd.DataFrame(counts[:, keep], columns=np.asarray(genes)[keep]), X,
                   contrast="group")  # fmt: skip
    r = res["deseq2_r"].loc[np.asarray(genes)[keep]]
    np.testing.assert_allclose(fit.log2_fold_change, r["log_fc"], atol=1e-6)
    both = np.isfinite(r["p_value"].to_numpy()) & np.isfinite(fit.p_value)
    assert both.sum() > 280
    np.testing.assert_allclose(fit.p_value[both], r["p_value"].to_numpy()[both], rtol=1e-6)


def test_factor_design_reference_level_and_covariate():
    """Donor × cell type pseudobulks with ``~ cell_type + condition``: a categorical's first
    category is R's reference level, so reversing it negates the log fold change."""
    counts, samples, genes = _pseudobulk_data(seed=12)
    other, _, _ = _pseudobulk_data(seed=13)
    two = pd.concat([samples.assign(cell_type="B cell"), samples.assign(cell_type="T cell")],
                    ignore_index=True)  # fmt: skip
    two["sample"] = two["donor_id"] + "_" + two["cell_type"].str[0]
    y = np.vstack([counts, other])
    methods = ("edger_ql", "limma_voom")
    fwd, missing = _run_available(
        lambda ms: r_de.run_r_pseudobulk(y, two, genes, design="~ cell_type + condition",
                                         coef="conditiontreated", methods=ms),
        methods,
    )  # fmt: skip
    _skip_unless(missing, *methods)
    two["condition"] = two["condition"].cat.reorder_categories(["treated", "control"])
    rev = r_de.run_r_pseudobulk(y, two, genes, design="~ cell_type + condition",
                                coef="conditioncontrol", methods=methods)  # fmt: skip
    for m in methods:
        assert (fwd[m]["log_fc"].iloc[:N_DE] > 1).all()
        np.testing.assert_allclose(rev[m]["log_fc"], -fwd[m]["log_fc"], atol=1e-6)
        np.testing.assert_allclose(rev[m]["p_value"], fwd[m]["p_value"], rtol=1e-6)


def test_a_failing_method_is_data_and_a_bad_coefficient_an_error():
    rng = np.random.default_rng(5)
    counts = rng.poisson(20, (3, 12))
    samples = pd.DataFrame({"donor_id": ["D1", "D2", "D3"], "age": [30.0, 45.0, 60.0],
                            "batch": [0.0, 1.0, 0.0]})  # fmt: skip
    genes = [f"GENE{g}" for g in range(12)]
    methods = ("edger_ql", "limma_voom")
    # 3 samples, 3 coefficients: no residual df; each method fails on its own, as data
    res, missing = _run_available(
        lambda ms: r_de.run_r_pseudobulk(counts, samples, genes, design="~ age + batch",
                                         coef="age", methods=ms),
        methods,
    )  # fmt: skip
    _skip_unless(missing, *methods)
    for tab in res.values():
        assert tab["p_value"].isna().all() and tab["status"].str.startswith("failed: ").all()
        assert np.isnan(tab.attrs["seconds"])
    with pytest.raises(RuntimeError, match="not a column of the design"):
        r_de.run_r_pseudobulk(counts, samples, genes, design="~ age", coef="ageX",
                              methods=("edger_ql",))  # fmt: skip


# ---------------------------------------------------------------- cell-level mixed models


def _cell_data(seed=21, n_genes=4, cells_per_donor=40):
    """8 donors × 40 cells; donor random intercepts (σ_b = 0.4) on the log mean; genes 0 and 1
    3-fold up in the treated donors."""
    rng = np.random.default_rng(seed)
    donors = np.repeat(np.arange(N_DONORS), cells_per_donor)
    treated = donors % 2
    n = donors.size
    b = rng.normal(0.0, 0.4, (N_DONORS, n_genes))
    libsize = rng.lognormal(np.log(3000), 0.3, n)
    base = rng.lognormal(np.log(1.5e-3), 0.5, n_genes)
    lfc = np.where(np.arange(n_genes) < 2, np.log(3.0), 0.0)
    mu = libsize[:, None] * base[None, :] * np.exp(treated[:, None] * lfc + b[donors])
    counts = rng.negative_binomial(1 / 0.2, 1 / (1 + 0.2 * mu))
    obs = pd.DataFrame({
        "donor": [f"donor{d:02d}" for d in donors],
        "group": treated,
        "libsize": libsize,
        "size_factor": libsize / np.exp(np.log(libsize).mean()),
    })  # fmt: skip
    return counts, obs, [f"GENE{g:04d}" for g in range(n_genes)]


@pytest.fixture(scope="module")
def cell_models():
    counts, obs, genes = _cell_data()
    res, missing = _run_available(
        lambda methods: r_de.run_r_cell_models(counts, obs, genes, methods=methods),
        r_de.CELL_METHODS,
    )
    return counts, obs, genes, res, missing


def test_glmmtmb_agrees_with_pyflashmm_nbmm(cell_models):
    """The same NB GLMM (ML, Laplace, Wald z) fitted by glmmTMB and by pyflashmm.nbmm:
    log2 fold changes within 1e-4, p-values within 0.1% relative (glmmTMB's optimiser
    tolerance; ~3e-7 and ~2e-6 here, 4e-5 and 4e-4 at worst on 50 genes × 2,000 cells)."""
    counts, obs, genes, res, missing = cell_models
    _skip_unless(missing, "glmmtmb")
    tab = res["glmmtmb"]
    assert tab.attrs["seconds"] > 0 and list(tab.index) == genes
    X = fm.design(obs, "~ group").X_frame()
    fit = fm.nbmm(pd.DataFrame(counts, columns=genes), X, obs["donor"].to_numpy(),
                  size_factors=obs["size_factor"].to_numpy(), reml=False)  # fmt: skip
    ref = fm.nbmm_test(fit, "group", df="z").set_index("variable").loc[genes]
    ok = (tab["status"] == "ok").to_numpy() & (ref["status"] == "ok").to_numpy()
    assert ok.sum() >= len(genes) - 1
    np.testing.assert_allclose(tab["log_fc"][ok], ref["log_fc"][ok], atol=1e-4)
    np.testing.assert_allclose(tab["p_value"][ok], ref["p_value"][ok], rtol=1e-3)
    assert (tab["log_fc"].iloc[:2] > 0.5).all() and (tab["p_value"].iloc[:2] < 0.05).all()


def test_lmertest_agrees_with_pyflashmm_lmm(cell_models):
    """lmerTest's REML fit with Satterthwaite df and pyflashmm.de's LMM of the same model
    (log2(1 + count), σ_b² ≥ 0 as lme4): estimate, df and p-value within 1e-4 relative."""
    counts, obs, genes, res, missing = cell_models
    _skip_unless(missing, "lmertest")
    tab = res["lmertest"]
    assert tab.attrs["seconds"] > 0 and list(tab.index) == genes
    assert (tab["status"] == "ok").all()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = fm.de((pd.DataFrame(counts, columns=genes), obs), fixed="~ log(libsize) + group",
                    random="(1|donor)", contrast="group", df="satterthwaite", nonneg=True,
                    progress=False).set_index("variable").loc[genes]  # fmt: skip
    for col in ("log_fc", "df", "p_value"):
        np.testing.assert_allclose(tab[col], ref[col], rtol=1e-4, err_msg=col)


# ------------------------------------------------------------------------ without R


def test_without_r_every_method_is_unavailable_and_runs_raise(monkeypatch, tmp_path):
    monkeypatch.setattr(r_de, "r_unavailable", lambda *packages: "Rscript not found")
    assert r_de.r_methods_unavailable(["edger_ql", "glmmtmb"]) == {
        "edger_ql": "Rscript not found", "glmmtmb": "Rscript not found"}  # fmt: skip
    monkeypatch.setenv("PATH", str(tmp_path))  # no Rscript on the path
    counts, samples, genes = _pseudobulk_data()
    with pytest.raises(RuntimeError, match="Rscript not found"):
        r_de.run_r_pseudobulk(counts, samples, genes, design="~ group", coef="group")
    counts, obs, genes = _cell_data(n_genes=2, cells_per_donor=5)
    with pytest.raises(RuntimeError, match="Rscript not found"):
        r_de.run_r_cell_models(counts, obs, genes, methods=("lmertest",))


def test_arguments_are_checked_before_r_runs(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # R would raise RuntimeError, not ValueError
    counts, samples, genes = _pseudobulk_data()
    with pytest.raises(ValueError, match="unknown"):
        r_de.r_methods_unavailable(["edger"])
    with pytest.raises(ValueError, match="unknown"):
        r_de.run_r_pseudobulk(counts, samples, genes, design="~ group", coef="group",
                              methods=("glmmtmb",))  # fmt: skip
    with pytest.raises(ValueError, match="rows"):
        r_de.run_r_pseudobulk(counts, samples.iloc[:4], genes, design="~ group", coef="group")
    with pytest.raises(ValueError, match="non-negative integers"):
        r_de.run_r_pseudobulk(counts + 0.5, samples, genes, design="~ group", coef="group")
    cells, obs, cgenes = _cell_data(n_genes=2, cells_per_donor=5)
    with pytest.raises(ValueError, match="missing columns"):
        r_de.run_r_cell_models(cells, obs.drop(columns="size_factor"), cgenes)
    with pytest.raises(ValueError, match="0/1"):
        r_de.run_r_cell_models(cells, obs.assign(group=2), cgenes)


def test_jobs_run_in_one_r_process_as_they_would_alone(pseudobulk, cell_models):
    """Several data sets in one R process: each job's tables are those of its own run; a job R
    stops on (a coefficient not in its design) is that job's RuntimeError and the others run;
    a bad job is named by its index before R starts."""
    counts, samples, genes, alone, missing = pseudobulk
    _skip_unless(missing, "edger_ql", "limma_voom")
    methods = ("edger_ql", "limma_voom")
    job = dict(counts=counts, samples=samples, genes=genes, design="~ group", coef="group")
    half = dict(job, counts=counts[:, :100], genes=genes[:100])
    out = r_de.run_r_pseudobulk_jobs([job, dict(job, coef="groupX"), half], methods=methods)
    assert isinstance(out[1], RuntimeError) and "not a column of the design" in str(out[1])
    for m in methods:
        pd.testing.assert_frame_equal(out[0][m], alone[m], check_exact=True)
        small = r_de.run_r_pseudobulk(**half, methods=(m,))[m]
        pd.testing.assert_frame_equal(out[2][m], small, check_exact=True)
    with pytest.raises(ValueError, match=r"jobs\[1\]: samples has 4 rows"):
        r_de.run_r_pseudobulk_jobs([job, dict(job, samples=samples.iloc[:4])], methods=methods)
    cells, obs, cgenes, cell_alone, cmissing = cell_models
    _skip_unless(cmissing, "lmertest")
    two = r_de.run_r_cell_models_jobs(
        [dict(counts=cells, obs=obs, genes=cgenes)] * 2, methods=("lmertest",)
    )
    for res in two:
        pd.testing.assert_frame_equal(res["lmertest"], cell_alone["lmertest"], check_exact=True)
