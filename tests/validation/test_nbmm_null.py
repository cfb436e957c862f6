"""validation/nbmm_null.py (the NB mixed model's null check) and the ``nbmm*`` methods of
validation/methods.py: the tiny variant end to end, its tables recomputed from its p-values."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.proportion import proportion_confint

import pyflashmm as fm
from validation import nbmm_null
from validation.calibration import KEYS, simulate_null
from validation.config import load_config
from validation.methods import ALL_METHODS, METHODS, NBMM_VARIANTS, run_methods

ALPHAS = (0.05, 0.01)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("nbmm_null")
    assert nbmm_null.main(["--tiny", "--out", str(out), "--workers", "1", "--quiet"]) == 0
    return out, load_config("nbmm_null", "tiny")


def _tables(out):
    type1 = pd.read_csv(out / "type1.csv")
    pvals = pd.read_csv(out / "pvalues.csv.gz")
    status = pd.read_csv(out / "status_counts.csv")
    return type1, pvals, status


def test_tiny_writes_every_output(tiny):
    out, cfg = tiny
    names = {p.name for p in out.iterdir()}
    assert names == {"type1.csv", "status_counts.csv", "summary.md", "nbmm_null.meta.json",
                     "pvalues.csv.gz"}  # fmt: skip
    type1, _, _ = _tables(out)
    per_alpha = [f"{c}_{a:g}" for a in ALPHAS for c in ("n_rejected", "type1", "ci_low",
                                                          "ci_high")]  # fmt: skip
    assert list(type1.columns) == [*KEYS, "method", "n_tests", "n_failed", *per_alpha,
                                   "seed", "version", "git_rev"]  # fmt: skip
    n_settings = (
        len(cfg["var_random_effects"]) * len(cfg["n_subjects"]) * len(cfg["cells_per_subject"])
    )
    assert len(type1) == n_settings * len(cfg["methods"])
    # methods in the config's order within each setting
    assert list(type1["method"][: len(cfg["methods"])]) == list(cfg["methods"])
    assert (type1["n_tests"] + type1["n_failed"] == cfg["n_genes"] * cfg["replicates"]).all()
    assert (type1["seed"] == cfg["seed"]).all()
    meta = json.loads((out / "nbmm_null.meta.json").read_text())
    assert meta["seed"] == cfg["seed"] and meta["config"]["methods"] == cfg["methods"]
    assert len(meta["task_seeds"]) == n_settings * cfg["replicates"]
    assert meta["wall_seconds"] > 0 and meta["git_rev"]


def test_tiny_rates_recomputed_from_pvalues(tiny):
    out, _ = tiny
    type1, pvals, status = _tables(out)
    for _, row in type1.iterrows():
        sel = pvals["method"] == row["method"]
        for k in KEYS:
            sel &= np.isclose(pvals[k], row[k])
        p = pvals.loc[sel, "p_value"].to_numpy()
        ok = np.isfinite(p)
        assert row["n_tests"] == ok.sum() and row["n_failed"] == (~ok).sum()
        for a in ALPHAS:
            k = int((p[ok] <= a).sum())
            assert row[f"n_rejected_{a:g}"] == k
            assert row[f"type1_{a:g}"] == pytest.approx(k / ok.sum(), rel=1e-9)
    # the status counts partition each (setting, method)'s genes as the p-value table does
    ref = pvals.groupby([*KEYS, "method", "status"]).size().rename("ref").reset_index()
    both = status.merge(ref, on=[*KEYS, "method", "status"], how="outer")
    assert (both["n_genes"] == both["ref"]).all()


def test_tiny_wilson_intervals(tiny):
    out, _ = tiny
    type1, _, _ = _tables(out)
    for a in ALPHAS:
        k, n = type1[f"n_rejected_{a:g}"], type1["n_tests"]
        lo, hi = proportion_confint(k, n, alpha=0.05, method="wilson")
        np.testing.assert_allclose(type1[f"ci_low_{a:g}"], lo, rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(type1[f"ci_high_{a:g}"], hi, rtol=1e-8, atol=1e-12)
        rate = type1[f"type1_{a:g}"]
        assert ((type1[f"ci_low_{a:g}"] <= rate) & (rate <= type1[f"ci_high_{a:g}"])).all()
        # an interval, not a point: every n_tests here is positive and finite
        assert (type1[f"ci_high_{a:g}"] > type1[f"ci_low_{a:g}"]).all()


def test_tiny_summary_matches_csv(tiny):
    out, cfg = tiny
    type1, _, _ = _tables(out)
    md = (out / "summary.md").read_text()
    for a in ALPHAS:
        section = md.split(f"## α = {a:g}\n", 1)[1].split("## α", 1)[0]
        rows = [ln for ln in section.splitlines() if re.match(r"\| [0-9.]+ \|", ln)]
        assert len(rows) == len(type1) // len(cfg["methods"])
        header = next(ln for ln in section.splitlines() if ln.startswith("| σ_b²"))
        methods = [c.strip() for c in header.strip("|").split("|")][3:]
        assert methods == list(cfg["methods"])
        cells = [c.strip() for c in rows[0].strip("|").split("|")][3:]
        for m, cell in zip(methods, cells, strict=True):
            r = type1[type1["method"] == m].iloc[0]
            want = f"{r[f'type1_{a:g}']:.3f} [{r[f'ci_low_{a:g}']:.3f}, {r[f'ci_high_{a:g}']:.3f}]"
            assert cell.startswith(want)
            assert cell.endswith("†") == bool(r[f"ci_low_{a:g}"] > a)


def test_tiny_needs_out():
    with pytest.raises(SystemExit) as exc:
        nbmm_null.main(["--tiny"])
    assert exc.value.code == 2


# ---------------------------------------------------------------------------- nbmm methods


def test_nbmm_methods_not_in_the_six():
    # the calibration and power configs name METHODS; the NB mixed model is only run by name
    assert not set(NBMM_VARIANTS) & set(METHODS)
    assert set(NBMM_VARIANTS) <= set(ALL_METHODS)


def test_nbmm_methods_are_one_fit_and_its_tests():
    S = 6
    sim = simulate_null(0.1, S, 30, 25, 1, 11)
    counts = sim.counts.toarray()
    counts[:, 3] = 0  # an all-zero gene: no fit, no p-value, a status
    res = run_methods(counts, sim.obs, treatment=sim.treatment, methods=list(NBMM_VARIANTS),
                      gene_names=sim.gene_names)  # fmt: skip
    assert list(res["method"].unique()) == list(NBMM_VARIANTS)
    by = {m: g.reset_index(drop=True) for m, g in res.groupby("method")}
    # the reference: the package's fit with the design the module docstring states
    trt = (sim.obs["trt"].astype(str) == str(sim.treatment)).astype(float).to_numpy()
    X = pd.DataFrame({"Intercept": np.ones(len(trt)), "trt": trt})
    donors = sim.obs["sam"].astype(str).to_numpy()
    fits = {reml: fm.nbmm(counts, X, donors, reml=reml, warn=False, progress=False)
            for reml in (False, True)}  # fmt: skip
    for m, (reml, _, _) in NBMM_VARIANTS.items():
        ref_lfc = fits[reml].coef[:, 1] / np.log(2.0)
        np.testing.assert_allclose(by[m]["log_fc"], ref_lfc, rtol=1e-8, equal_nan=True)
        assert by[m].loc[3, "status"] == "all_zero" and np.isnan(by[m].loc[3, "p_value"])
    # REML's σ² is not shrunk as ML's: larger on most genes with 6 donors
    both = (fits[False].sigma2 > 0) & np.isfinite(fits[True].sigma2)
    assert np.mean(fits[True].sigma2[both] > fits[False].sigma2[both]) > 0.8
    # Wald z and Wald t share the statistic; t is referred to S − 2 df (two arm-level columns)
    zr = by["nbmm_reml_z"]["stat"].to_numpy()
    np.testing.assert_allclose(by["nbmm_reml"]["stat"], zr, rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(by["nbmm_reml"]["p_value"], 2 * stats.t.sf(np.abs(zr), S - 2),
                               rtol=1e-10, equal_nan=True)  # fmt: skip
    z = by["nbmm_z"]["stat"].to_numpy()
    np.testing.assert_allclose(by["nbmm"]["stat"], z, rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(by["nbmm_z"]["p_value"], 2 * stats.norm.sf(np.abs(z)),
                               rtol=1e-10, equal_nan=True)  # fmt: skip
    np.testing.assert_allclose(by["nbmm"]["p_value"], 2 * stats.t.sf(np.abs(z), S - 2),
                               rtol=1e-10, equal_nan=True)  # fmt: skip
    # the LRT's statistic is the likelihood ratio: χ²₁ p-values from it, and close to z² here
    lr = by["nbmm_lrt"]["stat"].to_numpy()
    np.testing.assert_allclose(by["nbmm_lrt"]["p_value"], stats.chi2.sf(lr, 1), rtol=1e-10,
                               equal_nan=True)  # fmt: skip
    ok = np.isfinite(lr) & np.isfinite(z)
    assert ok.sum() >= 20
    assert np.corrcoef(lr[ok], z[ok] ** 2)[0, 1] > 0.9
