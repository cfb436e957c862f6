"""pyflashmm's LMM against lme4 1.1.31 (REML and ML, K = 1 and K = 2).

Fixtures: ``tests/data/lme4-1.1.31/<scenario>/`` written by ``make_fixtures.R`` (see the README
there), loaded by ``validation/lme4_reference.py`` (shared with the agreement experiment). lme4 was
run with bobyqa and ``rhoend = 1e-12``, so it stops only at the floating-point flatness of its
deviance (see below); pyflashmm is run with ``tol = 1e-10`` on the score.

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

import numpy as np
import pandas as pd
import pytest

from validation.lme4_reference import SCENARIOS, load, pyfit, reference, singular_genes

METHODS = ("REML", "ML")
RTOL = 1e-6  # lme4 itself stops ~1e-7 from the optimum (its bobyqa rhoend), a decade below
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
