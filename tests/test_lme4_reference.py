"""pyflashmm's LMM against lme4 1.1.31 (REML and ML, K = 1 and K = 2).

Fixtures: ``tests/data/lme4-1.1.31/<scenario>/`` written by ``make_fixtures.R`` (see the README
there). lme4 was run with bobyqa and ``rhoend = 1e-12``, so it stops only at the floating-point
flatness of its deviance (see below); pyflashmm is run with ``tol = 1e-10`` on the score.

Tolerance: every quantity must agree to ``RTOL = 1e-6`` relative, |a − b| ≤ RTOL · scale, with
``scale`` chosen per quantity (see the comment at ``RTOL``) so that a value near 0 is judged on
the scale on which it is estimated rather than on its own (vanishing) size.

Observed maxima when these tests were written (non-singular genes, over all scenarios/methods):
coef 1.1e-7 (between g4, ML), se 3.7e-7 (k2_crossed g2, REML), theta 7.6e-7 (k2_crossed g2 REML,
batch variance 1.12), logLik 1.3e-13, BLUPs 4.9e-9. The theta maximum is on lme4's side: the
score of our likelihood at lme4's estimates is (−1.6e-5, −1.7e-6, 5.1e-6) against ≈1e-12 at ours,
and the two log-likelihoods agree to 1e-13; a derivative-free optimiser on the deviance cannot
resolve a 6-level component much better (≈ √ε). It is within RTOL, so no tolerance was loosened.

Singular fits (lme4's ``isSingular``: a variance component on the boundary 0): pyflashmm's default
lets variance components go negative (FLASHMM's semantics), which lme4 cannot represent, so those
genes are compared with ``nonneg=True`` (lme4's semantics).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import pyflashmm as fm

DATA = Path(__file__).parent / "data" / "lme4-1.1.31"
SCENARIOS = ("k1", "k2_crossed", "k2_nested", "between")
METHODS = ("REML", "ML")
TOL = 1e-10  # pyflashmm's convergence tolerance (max |score|) for the reference fits
RTOL = 1e-6  # the agreement the issue asks for
# Scale of the relative comparison, per quantity:
#   coef   max(|β̂|, se): a coefficient near 0 is judged against its own standard error, the
#          precision it is estimated with (relative error in units of se).
#   se     |se|.
#   theta  max(|σₖ²|, σ²): a variance component is judged relative to the residual variance —
#          lme4 optimises the ratio σₖ/σ, so small components (e.g. 0.002 in k2_crossed g5) and
#          the boundary value 0 of singular fits have errors proportional to σ².
#   loglik |ℓ|.
#   ranef  σ (residual SD): BLUPs are on the scale of y; singular components give BLUPs of 0.
# ours must not be worse than lme4's optimum by more than this (relative to |ℓ|)
LL_SLACK = 1e-8


@functools.cache
def load(scenario: str):
    """Data, design and lme4's results of one scenario."""
    root = DATA / scenario
    spec = pd.read_csv(root / "spec.csv").iloc[0]
    data = pd.read_csv(root / "data.csv.gz")
    genes = spec["genes"].split(";")
    Y = data[genes].to_numpy(dtype=np.float64)
    if spec["transform"] == "log2p1":
        Y = np.log2(1.0 + Y)
    X, x_names = model_matrix(data, spec["fixed"])
    random = spec["random"].split(";")
    Z, d, z_levels = indicators(data, random)
    ref = {name: pd.read_csv(root / f"{name}.csv") for name in ("fixef", "theta", "fit", "ranef")}
    return {
        "genes": genes,
        "Y": Y,
        "X": X,
        "x_names": x_names,
        "Z": Z,
        "d": d,
        "random": random,
        "z_levels": z_levels,
        **ref,
    }


def model_matrix(data: pd.DataFrame, rhs: str):
    """R's ``model.matrix`` for the terms used here: intercept, numeric columns, ``log(col)``,
    and factors with treatment contrasts (levels sorted, first level dropped, named
    ``<column><level>``) — the column order of R's design matrix."""
    cols, names = [np.ones(len(data))], ["(Intercept)"]
    for term in rhs.removeprefix("~").strip().split(" + "):
        m = re.fullmatch(r"log\((\w+)\)", term)
        if m:
            cols.append(np.log(data[m.group(1)].to_numpy(dtype=np.float64)))
            names.append(term)
        elif pd.api.types.is_numeric_dtype(data[term]):
            cols.append(data[term].to_numpy(dtype=np.float64))
            names.append(term)
        else:
            levels = sorted(data[term].unique())
            for level in levels[1:]:
                cols.append((data[term] == level).to_numpy(dtype=np.float64))
                names.append(f"{term}{level}")
    return np.column_stack(cols), names


def indicators(data: pd.DataFrame, random: list[str]):
    """Dense Z: one block of indicator columns per random term (``a`` or ``a:b``), in the order
    of ``random``; within a block the observed levels, sorted (lme4's level order)."""
    blocks, d, levels = [], [], []
    for term in random:
        group = data[term.split(":")].astype(str).agg(":".join, axis=1).to_numpy()
        lv = np.array(sorted(set(group)))
        blocks.append((group[:, None] == lv[None, :]).astype(np.float64))
        d.append(len(lv))
        levels.append(lv)
    return np.hstack(blocks), np.array(d), levels


def reference(ref, method: str, gene: str):
    fx = ref["fixef"].query("method == @method and gene == @gene")
    th = ref["theta"].query("method == @method and gene == @gene")
    fit = ref["fit"].query("method == @method and gene == @gene").iloc[0]
    return fx, th, fit


def singular_genes(scenario: str) -> list[str]:
    fit = load(scenario)["fit"]
    return sorted(set(fit.loc[fit["isSingular"], "gene"]))


@functools.cache
def pyfit(scenario: str, method: str, nonneg: bool, genes: tuple[str, ...]):
    s = load(scenario)
    cols = [s["genes"].index(g) for g in genes]
    return fm.lmmfit(
        s["Y"][:, cols],
        s["X"],
        s["Z"],
        s["d"],
        method=method,
        tol=TOL,
        nonneg=nonneg,
        max_iter=200,
        warn=False,
    )


def rel_err(ours, ref, scale):
    return np.abs(np.asarray(ours) - np.asarray(ref)) / np.asarray(scale)


def blups(X, Z, d, y, coef, theta):
    """b̂ = D (I + ZᵀZ D)⁻¹ Zᵀ(y − Xβ̂), D = diag(σₖ²/σ²) — the conditional modes."""
    Dg = np.repeat(theta[:-1] / theta[-1], d)
    A = np.eye(Z.shape[1]) + (Z.T @ Z) * Dg[None, :]
    return Dg * np.linalg.solve(A, Z.T @ (y - X @ coef))


def compare(scenario: str, method: str, gene: str, fit, j: int) -> dict[str, float]:
    """Max relative differences (on the SCALES) between pyflashmm's gene j and lme4's fit."""
    s = load(scenario)
    fx, th, ref = reference(s, method, gene)
    assert list(fx["term"]) == s["x_names"]
    assert list(th["grp"]) == [*s["random"], "Residual"]
    se, b, v = fx["se"].to_numpy(), fx["estimate"].to_numpy(), th["vcov"].to_numpy()
    re_ref = s["ranef"].query("method == @method and gene == @gene")
    re_ours = blups(s["X"], s["Z"], s["d"], s["Y"][:, s["genes"].index(gene)], fit.coef[j], v)
    levels = np.concatenate(
        [[f"{t}|{lv}" for lv in lev] for t, lev in zip(s["random"], s["z_levels"], strict=True)]
    )
    ref_levels = (re_ref["grp"] + "|" + re_ref["level"]).to_numpy()
    order = pd.Index(ref_levels).get_indexer(levels)
    assert (order >= 0).all() and len(order) == len(ref_levels)
    return {
        "coef": rel_err(fit.coef[j], b, np.maximum(np.abs(b), se)).max(),
        "se": rel_err(fit.se[j], se, se).max(),
        "theta": rel_err(fit.theta[j], v, np.maximum(np.abs(v), v[-1])).max(),
        "loglik": rel_err(fit.loglik[j], ref["logLik"], abs(ref["logLik"])),
        "ll_deficit": (ref["logLik"] - fit.loglik[j]) / abs(ref["logLik"]),
        # BLUPs from lme4's variance components and our β̂: checks the level order of Z and β̂
        "ranef": rel_err(re_ours, re_ref["value"].to_numpy()[order], np.sqrt(v[-1])).max(),
    }


def check(errs: dict[str, float], label: str) -> None:
    for key in ("coef", "se", "theta", "loglik", "ranef"):
        assert errs[key] <= RTOL, f"{label}: {key} differs by {errs[key]:.2e} (relative)"
    assert errs["ll_deficit"] <= LL_SLACK, f"{label}: logLik below lme4's by {errs['ll_deficit']}"


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_regular_fits_match_lme4(scenario, method):
    """Genes with an interior optimum, pyflashmm's default (unconstrained) semantics."""
    s = load(scenario)
    genes = tuple(g for g in s["genes"] if g not in singular_genes(scenario))
    assert len(genes) >= 3
    fit = pyfit(scenario, method, False, genes)
    assert fit.converged.all(), dict(zip(genes, fit.status, strict=True))
    for j, gene in enumerate(genes):
        check(compare(scenario, method, gene, fit, j), f"{scenario} {method} {gene}")


def test_fixture_has_singular_fits():
    """The fixtures cover lme4's boundary case for K = 1 and K = 2."""
    assert singular_genes("k1") == ["g4", "g5"]
    assert singular_genes("k2_nested") == ["g2"]
    assert singular_genes("between") == ["g6"]


# These cases caught an engine bug (fixed): with nonneg the kernels clipped the *full* Fisher
# step at 0 instead of solving for the free components (active set), and stalled with status
# max_iter, e.g. k1 g4 ML at θ = (0, 1.041208) vs lme4 (0, 1.034266), ℓ −861.47764 vs
# −861.47094; k2_nested g2 REML at (0, 0.552114, 0.965542) vs (3.9e-14, 0.530720, 0.965419).
# With the active-set step they match lme4 to RTOL.
def _singular_cases():
    return [
        (scenario, gene, method)
        for scenario in ("k1", "k2_nested", "between")
        for gene in singular_genes(scenario)
        for method in METHODS
    ]


@pytest.mark.parametrize(("scenario", "gene", "method"), _singular_cases())
def test_singular_fits_match_lme4_with_nonneg(scenario, gene, method):
    """lme4's singular fits against pyflashmm with nonneg=True (lme4's semantics)."""
    fit = pyfit(scenario, method, True, (gene,))
    assert fit.converged[0], fit.status[0]
    assert fit.status[0] == "boundary"
    check(compare(scenario, method, gene, fit, 0), f"{scenario} {method} {gene} (nonneg)")


@pytest.mark.parametrize(("scenario", "gene", "method"), _singular_cases())
def test_singular_fits_without_nonneg(scenario, gene, method):
    """FLASHMM semantics (σₖ² may be < 0): never a lower optimum than lme4's boundary fit.

    lme4's optimum (σₖ² = 0) lies inside our larger feasible set, and the fit starts at σₖ² = 0
    and only ascends, so our criterion is ≥ lme4's. Where the maximum lies on the edge of the
    region where V is PD, the gene stops there with status "pd_boundary" and is not converged.
    """
    fit = pyfit(scenario, method, False, (gene,))
    ll_lme4 = float(reference(load(scenario), method, gene)[2]["logLik"])
    assert fit.status[0] in ("ok", "pd_boundary")
    assert fit.converged[0] == (fit.status[0] == "ok")
    assert (fit.theta[0, :-1] <= 1e-8).any()  # a component at or below lme4's boundary 0
    assert fit.loglik[0] >= ll_lme4 - 1e-8 * abs(ll_lme4)
