"""Agreement of pyflashmm with statsmodels, lme4 / lmerTest and DESeq2.

Three comparisons, written to ``agreement_summary.csv`` (max and median relative difference,
max absolute difference and the number of values, per comparison × scenario × quantity) and
``agreement_values.csv.gz`` (the paired values), as described in ``validation/README.md``.

Relative difference (:mod:`validation.differences`): δ = |ours − ref| / max(|ref|, floor), with
the floor per quantity

* ``beta``, ``log2_fold_change``: the reference's standard error of that value (a coefficient
  near 0 is judged in units of the precision with which it is estimated);
* ``theta``: the reference's residual variance σ² of that gene (a variance component near or
  at the boundary 0 is judged on the scale of σ², on which it is estimated);
* ``p_value``, ``adj_p_value``: 1e-10 (:data:`P_FLOOR`);
* ``t``: 1 (a t statistic near 0 is judged on the scale of 1);
* everything else (``se``, ``loglik``, ``df``, ``dispersion``, ``size_factors``, …): none
  (|ref|, which is positive for these quantities).

**lmm_vs_statsmodels.** Data simulated over a grid of designs (config): K = 1 (a random intercept
per subject) or K = 2 (subject and subject:cluster, nested: statsmodels' ``re_formula="1"`` plus
``vc_formula={"cls": "0 + C(cls)"}`` within subject groups); REML or ML; subjects × cells; balanced
(equal cells per subject) or unbalanced (log-normal subject sizes). Fixed effects: intercept, a
cell-level covariate ``x`` and a between-subject treatment. Genes alternate between Gaussian
responses and log(1 + NB counts). statsmodels' default optimiser stops about 1e-4 short of the
optimum, so, as in ``tests/test_lmm.py``, it is refitted with BFGS at ``gtol = 1e-10``
(:data:`SM_FIT`, which those tests import) from its default start (where that run does not converge,
as happens for K = 2 with many subjects, from the end point of statsmodels' default fit), and
statsmodels' own ``loglike`` is also evaluated at our estimates (quantity ``loglik_at_ours``: the
same function at the same point, so this isolates the implementations from the optimisers). Only
genes that both fits report as converged are compared. pyflashmm's default lets variance components
go negative, which statsmodels cannot represent: genes whose unconstrained fit has a component ≤ 0
are refitted with ``nonneg=True`` (statsmodels' parameter space). Quantities:

* ``beta``, ``theta`` (σₖ², then σ²), ``loglik`` (both optima);
* ``se``: our SEs, sqrt diag σ²(XᵀV⁻¹X)⁻¹ at our θ̂, against the same formula evaluated by
  statsmodels at its θ̂: the inverse of the fixed-effect block of its Hessian, which at the
  optimum (Xᵀ V⁻¹ r = 0) equals (XᵀV⁻¹X)⁻¹ on the data scale;
* ``se_reported``: our SEs against statsmodels' reported ``bse_fe``. Those invert the observed
  Hessian of all parameters jointly, whose β–θ cross terms vanish only in expectation, so
  they differ from σ²(XᵀV⁻¹X)⁻¹ (and from lme4's ``vcov``) by a data-dependent amount: this
  row measures a difference in definitions, not an error;
* ``p_value``: two-sided Wald z p-values, 2Φ(−|β̂/se|), ours against statsmodels' estimate over
  its fixed-effect-block SE; ``p_value_reported``: ours against statsmodels' reported
  ``pvalues`` (z with ``bse_fe``, so they inherit the ``se_reported`` difference).
* The SEs of θ are not compared: statsmodels reports them for variance ratios (its
  parameterisation) from the observed joint Hessian, ours are expected-information SEs of the
  variances.

**lmm_vs_lme4 / lmm_vs_lmertest.** The committed fixtures of ``tests/data/lme4-1.1.31/``
(loaded by :mod:`validation.lme4_reference`, which the tests use too): ``beta``, ``se``,
``theta``, ``loglik`` against lme4 1.1.31; ``df`` (Satterthwaite), ``p_value`` and ``t`` of
every coefficient against lmerTest 3.1.3. Singular lme4 fits (a component at 0) are compared
with ``nonneg=True``, as in the tests, and are left out of the lmerTest rows (lmerTest's df
there are those of a boundary fit).

**nbglm_vs_deseq2.** The committed fixtures of ``tests/data/deseq2-1.38.3/`` (loaded by
:mod:`validation.deseq2_reference`, which the tests use too): ``size_factors``,
``log2_fold_change``, ``lfc_se``, ``dispersion`` (final, MAP), ``p_value`` and ``adj_p_value``
of every gene, NAs dropped. All genes are kept, including those of ``flat_dispersion`` where
DESeq2's local (locfit) trend is extrapolated beyond the fitted base means, which pyflashmm
extrapolates linearly (the one known gap, see the README).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import statsmodels.api as sm
from scipy import stats as sps
from statsmodels.regression.mixed_linear_model import MixedLMParams

import pyflashmm as fm
from validation import deseq2_reference, lme4_reference
from validation.differences import AgreementTables, PairedValues
from validation.parallel import map_replicates, replicate_seeds
from validation.provenance import write_table

NAME = "agreement"
SOURCES = ("differences", "parallel", "provenance", "lme4_reference", "deseq2_reference")
#: folders outside validation/ that the results depend on (part of the stamp)
DATA = ("tests/data/lme4-1.1.31", "tests/data/deseq2-1.38.3")
#: p-values below this are judged on the absolute scale 1e-10
P_FLOOR = 1e-10
#: pyflashmm's convergence tolerance (max |score|) and iteration cap for the reference fits
TOL, MAX_ITER = lme4_reference.TOL, lme4_reference.MAX_ITER
#: statsmodels MixedLM refit: its default optimiser stops about 1e-4 short of the optimum; BFGS
#: at gtol 1e-10 reaches it to ~1e-9 (``tests/test_lmm.py`` compares with the same setting)
SM_FIT = {"method": "bfgs", "gtol": 1e-10, "maxiter": 1000}
#: fixed effects and variance components of the simulated genes
BETA = (1.0, 0.3, 0.2)
VAR_SUBJECT, VAR_NESTED = 0.3, 0.15
N_CLUSTERS = 3


# ---------------------------------------------------------------- statsmodels over a grid
def design_grid(cfg: dict) -> list[dict]:
    """The designs of the config: the product of ``grid_*`` plus ``extra_designs``."""
    out = [
        {"K": K, "method": m, "subjects": s, "cells": c, "balanced": b}
        for K in cfg["grid_K"]
        for m in cfg["grid_methods"]
        for b in cfg["grid_balanced"]
        for s, c in cfg["grid_sizes"]
    ]
    out += [dict(d) for d in cfg.get("extra_designs", [])]
    for d in out:
        if d["cells"] < 2 * d["subjects"]:
            raise ValueError(f"designs: {d} needs at least 2 cells per subject")
    return out


def scenario_name(d: dict) -> str:
    bal = "balanced" if d["balanced"] else "unbalanced"
    return f"K{d['K']}_{d['method']}_s{d['subjects']}_n{d['cells']}_{bal}"


def simulate_design(rng: np.random.Generator, d: dict, n_genes: int):
    """(obs, X, Z, block sizes, Y) of one design; Y is cells × genes."""
    n, S = d["cells"], d["subjects"]
    if d["balanced"]:
        sizes = np.full(S, n // S)
        sizes[: n % S] += 1
    else:
        w = rng.lognormal(0.0, 1.0, S)
        sizes = 2 + rng.multinomial(n - 2 * S, w / w.sum())
    sam = np.repeat(np.arange(S), sizes)
    obs = pd.DataFrame({"sam": sam, "x": rng.normal(size=n), "trt": (sam % 2).astype(float),
                        "cls": rng.integers(0, N_CLUSTERS, n)})  # fmt: skip
    X = np.column_stack([np.ones(n), obs["x"], obs["trt"]])
    blocks = [sam]
    if d["K"] == 2:
        blocks.append(np.unique(sam * N_CLUSTERS + obs["cls"].to_numpy(), return_inverse=True)[1])
    Z = sp.hstack(
        [sp.csr_matrix((np.ones(n), (np.arange(n), b)), shape=(n, b.max() + 1)) for b in blocks],
        format="csr",
    )
    dd = np.array([b.max() + 1 for b in blocks])
    var = np.repeat([VAR_SUBJECT, VAR_NESTED][: d["K"]], dd)
    Y = np.empty((n, n_genes))
    for g in range(n_genes):
        eta = X @ np.asarray(BETA) + Z @ (rng.normal(size=Z.shape[1]) * np.sqrt(var))
        if g % 2 == 0:
            Y[:, g] = eta + rng.normal(size=n)
        else:
            mu = np.exp(eta)
            Y[:, g] = np.log1p(rng.negative_binomial(2.0, 2.0 / (2.0 + mu)))
    return obs, X, Z, dd, Y


def fit_ours(Y, X, Z, d, method):
    """Our fits; genes with a component ≤ 0 refitted with ``nonneg=True``."""
    kw = {"method": method, "tol": TOL, "max_iter": MAX_ITER, "warn": False}
    fit = fm.lmmfit(Y, X, Z, d, **kw)
    coef, se, theta = fit.coef.copy(), fit.se.copy(), fit.theta.copy()
    loglik, ok = fit.loglik.copy(), fit.converged.copy()
    bad = np.flatnonzero((fit.theta[:, :-1] <= 0).any(axis=1))
    if bad.size:
        refit = fm.lmmfit(Y[:, bad], X, Z, d, nonneg=True, **kw)
        coef[bad], se[bad], theta[bad] = refit.coef, refit.se, refit.theta
        loglik[bad], ok[bad] = refit.loglik, refit.converged
    return coef, se, theta, loglik, ok


def _sm_model(y, obs, X, K):
    if K == 1:
        return sm.MixedLM(y, X, groups=obs["sam"].to_numpy())
    data = obs.assign(y=y)
    return sm.MixedLM.from_formula("y ~ x + trt", data=data, groups="sam", re_formula="1",
                                   vc_formula={"cls": "0 + C(cls)"})  # fmt: skip


def _sm_loglik_at(model, coef, theta, K):
    """statsmodels' own log-likelihood at our β̂ and variance ratios θₖ/σ²."""
    gam = theta[:-1] / theta[-1]
    vcomp = gam[1:] if K == 2 else None
    params = MixedLMParams.from_components(coef, cov_re=np.array([[gam[0]]]), vcomp=vcomp)
    return model.loglike(params, profile_fe=False)


def _z_p(beta, se):
    return 2.0 * sps.norm.sf(np.abs(np.asarray(beta) / np.asarray(se)))


def statsmodels_design(task) -> AgreementTables:
    """Compare one design (a task: design dict, genes, seed) with statsmodels MixedLM."""
    d, n_genes, seed = task
    rng = np.random.default_rng(seed)
    obs, X, Z, dd, Y = simulate_design(rng, d, n_genes)
    coef, se, theta, loglik, ok = fit_ours(Y, X, Z, dd, d["method"])
    p = X.shape[1]
    pairs = PairedValues()
    put = pairs.put
    for g in range(n_genes):
        model = _sm_model(Y[:, g], obs, X, d["K"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                reml = d["method"] == "REML"
                res = model.fit(reml=reml, **SM_FIT)
                if not res.converged:  # BFGS from statsmodels' default start can stall
                    start = model.fit(reml=reml).params_object
                    res = model.fit(reml=reml, start_params=start, **SM_FIT)
                hess, _ = model.hessian(res.params_object)
            except (np.linalg.LinAlgError, ValueError):
                continue
        if not (res.converged and ok[g]):
            continue
        sm_theta = np.r_[np.asarray(res.cov_re)[0, 0], np.atleast_1d(res.vcomp)[: d["K"] - 1],
                         res.scale]  # fmt: skip
        fe = np.asarray(res.fe_params)
        sm_se = np.sqrt(np.diag(np.linalg.inv(-hess[:p, :p])))
        put("beta", coef[g], fe, sm_se)
        put("se", se[g], sm_se, 0.0)
        put("se_reported", se[g], np.asarray(res.bse_fe), 0.0)
        put("theta", theta[g], sm_theta, sm_theta[-1])
        put("loglik", loglik[g], res.llf, 0.0)
        put("loglik_at_ours", loglik[g], _sm_loglik_at(model, coef[g], theta[g], d["K"]), 0.0)
        put("p_value", _z_p(coef[g], se[g]), _z_p(fe, sm_se), P_FLOOR)
        put("p_value_reported", _z_p(coef[g], se[g]), np.asarray(res.pvalues)[:p], P_FLOOR)
    scen = {
        "scenario": scenario_name(d), "K": d["K"], "fit_method": d["method"],
        "n_subjects": d["subjects"], "n_cells": d["cells"], "balanced": d["balanced"],
    }  # fmt: skip
    out = AgreementTables()
    out.add_pairs("lmm_vs_statsmodels", scen, pairs)
    return out


# ---------------------------------------------------------------- lme4 / lmerTest fixtures
def lme4_fixtures(scenarios, tables: AgreementTables) -> None:
    """Our fits against the committed lme4 and lmerTest reference fits."""
    for scenario in scenarios:
        s = lme4_reference.load(scenario)
        sizes = s["Z"][:, : s["d"][0]].sum(axis=0)
        for method in ("REML", "ML"):
            fit = lme4_reference.fit_scenario(scenario, method)
            table = fm.lmmtest(fit, df="satterthwaite")  # the fixtures hold lmerTest's
            singular = set(lme4_reference.singular_genes(scenario))
            lme4, lmertest = PairedValues(), PairedValues()
            for j, gene in enumerate(s["genes"]):
                fx, th, ref = lme4_reference.reference(s, method, gene)
                if gene in singular:
                    g_fit, gj = lme4_reference.pyfit(scenario, method, True, (gene,)), 0
                else:
                    g_fit, gj = fit, j
                v, b, se = th["vcov"].to_numpy(), fx["estimate"].to_numpy(), fx["se"].to_numpy()
                lme4.put("beta", g_fit.coef[gj], b, se)
                lme4.put("se", g_fit.se[gj], se, 0.0)
                lme4.put("theta", g_fit.theta[gj], v, v[-1])
                lme4.put("loglik", g_fit.loglik[gj], ref["logLik"], 0.0)
                if gene in singular or not fit.converged[j]:
                    continue
                ours = table[table["variable"] == fit.gene_names[j]].set_index("contrast")
                ours = ours.loc[fx["term"].to_list()]
                lmertest.put("df", ours["df"], fx["df"], 0.0)
                lmertest.put("p_value", ours["p_value"], fx["p_value"], P_FLOOR)
                lmertest.put("t", ours["stat"], fx["t"], 1.0)
            scen = {"scenario": scenario, "K": len(s["d"]), "fit_method": method,
                    "n_subjects": int(s["d"][0]), "n_cells": int(s["Y"].shape[0]),
                    "balanced": bool(np.all(sizes == sizes[0]))}  # fmt: skip
            tables.add_pairs("lmm_vs_lme4", scen, lme4)
            tables.add_pairs("lmm_vs_lmertest", scen, lmertest)


# ---------------------------------------------------------------- DESeq2 fixtures
def deseq2_fixtures(scenarios, tables: AgreementTables) -> None:
    """nbglm against the committed DESeq2 1.38.3 results."""
    for name in scenarios:
        s = deseq2_reference.load_scenario(name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            f = fm.nbglm(s["Y"], s["X"], **s["nbglm_args"])
        r = s["res"]
        scen = {"scenario": name, "K": np.nan, "fit_method": "—", "n_subjects": np.nan,
                "n_cells": int(s["Y"].shape[0]), "balanced": np.nan}  # fmt: skip
        lfc_se = r["lfcSE"].to_numpy()
        for quantity, ours, ref, floor in (
            ("size_factors", f.size_factors, s["sf"], 0.0),
            ("log2_fold_change", f.log2_fold_change, r["log2FoldChange"], np.nan_to_num(lfc_se)),
            ("lfc_se", f.lfc_se, lfc_se, 0.0),
            ("dispersion", f.dispersion, r["dispersion"], 0.0),
            ("p_value", f.p_value, r["pvalue"], P_FLOOR),
            ("adj_p_value", f.adj_p_value, r["padj"], P_FLOOR),
        ):
            tables.add("nbglm_vs_deseq2", scen, quantity, ours, ref, floor)


# ---------------------------------------------------------------- the experiment
def run(config: dict, *, results_dir: Path, workers: int = 1, progress: bool = True) -> list[Path]:
    """Run the three comparisons; write ``agreement_summary.csv`` and
    ``agreement_values.csv.gz`` to ``results_dir`` and return their paths."""
    designs = design_grid(config)
    seeds = replicate_seeds(config["seed"], len(designs))
    tasks = [(d, int(config["genes_per_design"]), s) for d, s in zip(designs, seeds, strict=True)]
    tables = AgreementTables()
    for part in map_replicates(statsmodels_design, tasks, workers=workers, progress=progress,
                               desc="agreement: statsmodels"):  # fmt: skip
        tables.extend(part)
    lme4_fixtures(config["lme4_scenarios"], tables)
    deseq2_fixtures(config["deseq2_scenarios"], tables)
    results_dir = Path(results_dir)
    return [
        write_table(tables.summary(), results_dir / "agreement_summary.csv", seed=config["seed"]),
        write_table(tables.values(), results_dir / "agreement_values.csv.gz", seed=config["seed"]),
    ]
