"""Inference on LMM fits: contrasts with calibrated degrees of freedom, variance components, BLUPs.

Notation (as in :mod:`pyflashmm._lmm.fit`): θ = (σ₁², …, σ_K², σ²), V = Σₖ θₖ Vₖ with Vₖ = ZₖZₖᵀ and
V₀ = I (the residual), Cov(β̂) = (XᵀV⁻¹X)⁻¹, P the REML projection, ℓ the log-likelihood (ML) or
REML criterion.

Contrast c (one row): estimate cᵀβ̂, variance f(θ) = cᵀCov(β̂)c, t = cᵀβ̂/√f.

**Satterthwaite** degrees of freedom (as lmerTest): ν = 2f² / (∇fᵀ A ∇f), with
∂f/∂θᵢ = wᵀXᵀV⁻¹VᵢV⁻¹Xw (w = Cov(β̂)c) and A = J⁻¹ the inverse *observed* information of θ,
J = −∂²ℓ/∂θ∂θᵀ = Q − I, where Qᵢⱼ = yᵀPVᵢPVⱼPy and I is the expected information (½tr(PVᵢPVⱼ) for
REML, ½tr(V⁻¹VᵢV⁻¹Vⱼ) for ML). Everything is computed from the summary statistics:

* ZᵀPy = a/σ², ZᵀPZ = T/σ² (kernel notation), so Q_kl = a_kᵀT_kl a_l/σ⁶,
  Q_k0 = a_kᵀ(a − TDa)_k/σ⁶, Q_00 = (σ²yᵀPy − 2aᵀDa + aᵀDTDa)/σ⁶;
* ZᵀV⁻¹X = (I + ZZ·D)⁻¹ZX/σ² and σ⁴XᵀV⁻²X = XX − 2ZXᵀH ZX + ZXᵀH·ZZ·H ZX, H = (I + D·ZZ)⁻¹D.

A joint (multi-row) contrast L (p × r) gives F = (Lᵀβ̂)ᵀ(LᵀCov L)⁻¹(Lᵀβ̂)/r with denominator df
from the eigen-decomposition of LᵀCov L (Fai & Cornelius 1996, as lmerTest's ``contestMD``):
νₘ per eigen-direction, E = Σ νₘ/(νₘ − 2), ddf = 2E/(E − r) (2 if some νₘ ≤ 2).

**Kenward–Roger** (REML fits only, as pbkrtest and lmerTest's ``ddf="Kenward-Roger"``):
the covariance of β̂ is replaced by the adjusted Φ_A = Φ + 2Λ, Φ = Cov(β̂),
Λ = Φ[Σᵢⱼ Wᵢⱼ(Qᵢⱼ − PᵢΦPⱼ)]Φ with Pᵢ = −XᵀV⁻¹VᵢV⁻¹X, Qᵢⱼ = XᵀV⁻¹VᵢV⁻¹VⱼV⁻¹X and W the
inverse *expected* REML information (``fit.fim_theta``). A single row c is tested by
t = cᵀβ̂/√(cᵀΦ_Ac) on ν = 2f²/(∇fᵀW∇f) df (pbkrtest's ``Lb_ddf`` for one row: Satterthwaite's
formula with the expected information); a joint L by the scaled F = λ(Lᵀβ̂)ᵀ(LᵀΦ_AL)⁻¹(Lᵀβ̂)/r
on (r, ν) df, λ and ν from Kenward & Roger's moment matching (formulas in
:mod:`pyflashmm._lmm.kenward_roger`). Pᵢ and Qᵢⱼ come from ZᵀX, ZᵀZ, XᵀX and θ (a cost per gene
linear in q for one random-effect block, through ZᵀZ's eigen-decomposition).

``df="residual"`` is FLASHMM's n − p. ``df="between"`` is the number of levels of the first
random-effect block minus the rank of the fixed-effect columns that are constant within those
levels (the residual df of the subject-level regression), appropriate for between-subject
contrasts.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as sps

from pyflashmm import _checks
from pyflashmm._contrasts import as_contrasts
from pyflashmm._jit import numba_parallel_only
from pyflashmm._kernels import lmm_inference as _ki
from pyflashmm._lmm import kenward_roger as _kr
from pyflashmm._lmm import moderation as _mod
from pyflashmm._lmm.fit import LmmFit, _Prepared, _Problem, prepared
from pyflashmm._lmm.information import batched_inverse, inverse_expected_information
from pyflashmm._multitest import bh_adjust
from pyflashmm._pvalues import t_two_sided

_ALTERNATIVES = ("two-sided", "less", "greater")
DF_METHODS = (
    "auto",
    "satterthwaite",
    "satterthwaite-expected",
    "kenward-roger",
    "residual",
    "between",
)
#: df methods built on Satterthwaite's formula ν = 2f²/(∇fᵀA∇f), by the A they use
_SATTERTHWAITE = ("satterthwaite", "satterthwaite-expected")


# --------------------------------------------------------------------------------------------
# Satterthwaite ingredients
# --------------------------------------------------------------------------------------------


def _require_stats(fit: LmmFit):
    if fit.stats is None:
        raise ValueError("fit: this LmmFit carries no summary statistics (fit.stats is None)")
    return fit.stats


def observed_information(fit: LmmFit, prep: _Prepared | None = None) -> np.ndarray:
    """J = −∂²ℓ/∂θ∂θᵀ at θ̂ per gene (G × (K+1) × (K+1)), from the summary statistics.

    J = Q − I with Qᵢⱼ = yᵀPVᵢPVⱼPy and I the expected information kept by the fit.
    ``prep``: the fit's prepared problem (default: the one it kept).
    """
    _require_stats(fit)
    prob = (prep or prepared(fit)).inference_problem()
    theta = np.ascontiguousarray(fit.theta)
    if prob.eigen:
        Q = _ki.quadratic_terms_k1(theta, prob.W, prob.yRy, prob.lam)
    else:
        Q = _ki.quadratic_terms_general(theta, prob.W, prob.yRy, prob.Ws, prob.blocks, prob.K)
    return Q - fit.fim_theta


def _cov_gradient(fit: LmmFit, Wc: np.ndarray, prep: _Prepared | None = None) -> np.ndarray:
    """∂(cᵀCov(β̂)c)/∂θ for w = Cov(β̂)c given as ``Wc`` (G × L × p); returns G × L × (K+1)."""
    s = _require_stats(fit)
    prep = prep or prepared(fit)
    theta = np.ascontiguousarray(fit.theta)
    if len(s.d) == 1:
        mu = prep.inference_problem().mu
        return _ki.cov_gradient_k1(theta, mu, prep.ZXq(), s.XX, Wc)
    return _ki.cov_gradient_general(
        theta,
        prep.Wz(),
        prep.blocks,
        np.ascontiguousarray(s.ZX),
        np.ascontiguousarray(s.ZZ),
        s.XX,
        Wc,
    )


def inverse_observed_information(fit: LmmFit, prep: _Prepared | None = None) -> np.ndarray:
    """A = J⁻¹ per gene (G × (K+1) × (K+1)), the asymptotic covariance of θ̂ used by
    Satterthwaite; NaN where J is not finite or singular.

    A component held at 0 (``fit.boundary``) is treated as known: its rows and columns of A are
    0 and the rest is the inverse of J restricted to the free components. This is lmerTest's
    df at a singular fit: it differentiates on the standard-deviation scale sₖ = √σₖ², where
    at sₖ = 0 the gradient of cᵀCov(β̂)c in sₖ vanishes and the Hessian has no cross terms
    with sₖ, so sₖ drops out of ν.
    """
    J = observed_information(fit, prep)
    K1 = J.shape[1]
    free = np.ones((J.shape[0], K1), dtype=bool)
    free[:, : fit.boundary.shape[1]] = ~fit.boundary
    # held components: identity rows/columns in J, zeroed in A after the inverse
    mask = free[:, :, None] & free[:, None, :]
    eye = np.broadcast_to(np.eye(K1, dtype=bool), J.shape)
    J = np.where(mask, J, np.where(eye, 1.0, 0.0))
    A = batched_inverse(J)
    A[~mask & np.isfinite(A).all(axis=(1, 2))[:, None, None]] = 0.0
    return A


def _satterthwaite(
    fit: LmmFit, C: np.ndarray, A: np.ndarray, prep: _Prepared | None = None
) -> np.ndarray:
    """Satterthwaite df of per-gene single-row contrasts ``C`` (G × L × p): G × L.

    ν = 2f²/(∇fᵀA∇f) with f = cᵀCov(β̂)c and A = J⁻¹ (see the module docstring).
    """
    Wc = np.ascontiguousarray(np.einsum("gab,glb->gla", fit.cov, C))
    grad = _cov_gradient(fit, Wc, prep)
    var = np.einsum("glp,glp->gl", C, Wc)
    denom = np.einsum("glk,gkm,glm->gl", grad, A, grad)
    with np.errstate(invalid="ignore", divide="ignore"):
        nu = 2.0 * var**2 / denom
    nu[~(nu > 0)] = np.nan
    return nu


def _between_columns(fit: LmmFit) -> tuple[np.ndarray, int]:
    """Columns of X constant within the levels of the first random block, and their rank."""
    s = _require_stats(fit)
    q1 = int(s.d[0])
    ZZ1 = s.ZZ[:q1, :q1]
    ZX1 = s.ZX[:q1]
    proj = np.einsum("ja,jk,ka->a", ZX1, np.linalg.pinv(ZZ1), ZX1)  # ‖P_Z x‖² per column
    between = np.diag(s.XX) - proj <= 1e-10 * np.maximum(np.diag(s.XX), 1e-300)
    sub = s.XX[np.ix_(between, between)]
    rank = sub.shape[0] - len(_checks.aliased_columns(sub)) if between.any() else 0
    return between, int(rank)


def _between_df(fit: LmmFit, Lm: np.ndarray) -> float:
    """Between–within df: q₁ − r_b for contrasts of between-subject columns only, otherwise
    n − q₁ − (p − r_b) (the residual df of [X Z₁]); r_b is the rank of the between columns."""
    between, rank = _between_columns(fit)
    q1 = int(fit.d[0])
    touches_within = np.any(np.abs(Lm[~between]) > 0)
    df = fit.n - q1 - (len(between) - rank) if touches_within else q1 - rank
    if df <= 0:
        raise ValueError(f"df='between' leaves {df} degrees of freedom for this design")
    return float(df)


# --------------------------------------------------------------------------------------------
# public tests
# --------------------------------------------------------------------------------------------


@numba_parallel_only
def lmmtest(
    fit: LmmFit,
    contrast=None,
    *,
    index=None,
    alternative: str = "two-sided",
    df: str = "auto",
    moderate: bool = False,
    robust: bool = False,
    trend: bool | None = None,
) -> pd.DataFrame:
    """Test coefficients or contrasts of every gene; one tidy row per (gene, contrast).

    Parameters
    ----------
    fit : LmmFit
        From :func:`pyflashmm.lmm` (with ``output_cov=True``).
    contrast : dict, str, list of str, ndarray or DataFrame, optional
        ``{"name": "expression"}`` (parsed by :func:`pyflashmm.contrast_matrix`), a list of
        expressions, a p × L matrix (one test per column) or a DataFrame from
        :func:`contrast_matrix`. A dict value that is a *list* of expressions (or a p × r
        matrix) is one joint hypothesis, tested by an F test.
    index : str, int or list, optional
        Coefficients to test (identity contrasts) when ``contrast`` is None; default all.
    alternative : {"two-sided", "less", "greater"}
        For single-row contrasts.
    df : {"auto", "kenward-roger", "satterthwaite", "satterthwaite-expected", "residual", \
"between"}
        Denominator degrees of freedom (see the module docstring); ``table.attrs["df"]`` says
        which was used. ``"auto"`` (default): Kenward–Roger for REML fits, Satterthwaite for
        ML fits. Chosen on the calibration experiment (``validation/lmm_inference.py``, 96
        null settings with 6–40 donors): with ``lmm``'s default ``nonneg="refit"``,
        Kenward–Roger had no setting whose Wilson interval of the type-I error lay above
        α = 0.05, and 5 above α = 0.01 (σ_b² = 0 with 1,000 cells per donor, where negative
        σ_b² estimates shrink the between-donor SE: 2.1% with 6 donors); Satterthwaite had 2
        and 11. ML fits underestimate the donor variance with few donors, and every df method
        over-rejects on them (pooled 7–11% at α = 0.05): test on REML fits. FLASHMM's n − p
        gives inflated type-I error for between-subject contrasts. ``"satterthwaite"`` is
        lmerTest's (the inverse *observed* information of θ); ``"satterthwaite-expected"``
        uses the inverse *expected* information, the df Kenward–Roger uses, without its
        covariance adjustment, and for ML fits too.
        ``"kenward-roger"`` (REML fits only; an ML fit raises ValueError) also adjusts the
        covariance of β̂: ``se`` is √(cᵀΦ_Ac) with Φ_A = Φ + 2Λ the Kenward–Roger adjusted
        covariance, ``stat`` t = cᵀβ̂/se on ν = 2f²/(∇fᵀW∇f) df (W the inverse expected
        information of θ, f = cᵀΦc), and for joint tests the scaled F statistic and its
        denominator df, as pbkrtest's ``KRmodcomp`` and lmerTest's
        ``contest(..., ddf="Kenward-Roger")``. NaN where the adjustment is not defined
        (failed fits, singular information, cᵀΦ_Ac ≤ 0).
    moderate : bool
        Empirical-Bayes moderated t tests (limma's moderation, one prior per contrast): each
        gene's contrast variance v̂_g = se_g² with the test's df d_g is shrunk towards a prior
        s0² fitted to all genes, ṽ_g = (d0 s0² + d_g v̂_g)/(d0 + d_g), and t = estimate/√ṽ_g
        on min(d0 + d_g, Σ d_g) df. The moderated variance is the contrast's own, so for a
        between-subject contrast it is the between-subject variance σ_b² + σ²/m̄ (in a
        balanced design exactly, times a design factor common to all genes), not the residual
        σ²; Satterthwaite's d_g is the df of the scaled-χ² law of v̂_g that the prior's model
        needs (see :mod:`pyflashmm._lmm.moderation`).
        Joint (multi-row) contrasts are not moderated (a warning names them).
    robust : bool
        With ``moderate``: robust prior (limma's ``robust=TRUE``); genes with outlying
        variances get a smaller prior df of their own.
    trend : bool, optional
        With ``moderate``: a mean–variance trend in the prior (limma-trend). Default (None):
        on when ``moderate`` is, ``robust`` is not, and ȳ_g can be computed (see below); a
        constant prior otherwise (``trend=False`` is limma's plain ``squeezeVar``). In the
        calibration experiment the constant prior's Wilson interval lay above α in 3–9
        settings per grid, the trended prior's in 0–2 (``validation/lmm_inference.py``): on
        log counts a gene's variance depends on its expression. The prior scale
        becomes a function of each gene's mean response ȳ_g = 1ᵀy_g/n (on the model's scale,
        e.g. log counts): log s0²(ȳ) is a natural cubic spline in ȳ (up to 4 df, as limma's
        ``squeezeVar(covariate=)``), d0 stays common, and ṽ_g = (d0 s0²(ȳ_g) + d_g v̂_g)/(d0 +
        d_g). ȳ_g is computed from the summary statistics: from the first random-effect block
        when it is a random intercept (an indicator block), otherwise from an intercept column
        of X; ValueError when there is neither, and with ``robust=True`` (not implemented).

    Returns
    -------
    pandas.DataFrame
        ``variable`` (gene), ``contrast``, ``log_fc`` (the contrast estimate on the model's
        scale; NaN for joint tests), ``se``, ``stat`` (t, or F for joint tests; Kenward–Roger's
        scaled F with ``df="kenward-roger"``), ``df``,
        ``df_num`` (1, or r), ``p_value``, ``adj_p_value`` (BH over genes, per contrast),
        ``method``, ``converged``, ``status`` (the fit's, e.g. ``boundary`` for a σₖ² held
        at 0; ``LmmFit.refitted`` says which genes were refitted). With ``moderate``, ``se``,
        ``stat`` and ``df`` are the moderated ones, and ``attrs["moderation"]`` holds each
        moderated contrast's prior as columns (``pd.DataFrame(table.attrs["moderation"])``):
        ``contrast``, ``d0``, ``s0_squared`` (with ``trend`` the median over genes of
        s0²(ȳ_g)), ``d0_summary`` ("common", or with ``robust`` "median over genes" of the
        per-gene d0), ``trend``, ``n_genes`` (genes in the prior).
    """
    if not isinstance(fit, LmmFit):
        raise TypeError(f"fit must be an LmmFit; got {type(fit).__name__}")
    if alternative not in _ALTERNATIVES:
        raise ValueError(f"alternative must be one of {_ALTERNATIVES}; got {alternative!r}")
    if df not in DF_METHODS:
        raise ValueError(f"df must be one of {DF_METHODS}; got {df!r}")
    _mod.check_moderation_args(moderate, robust, False if trend is None else trend)
    trend, ybar = _mod.resolve_trend(fit.stats, moderate, robust, trend)  # ȳ: the covariate
    if fit.cov is None:
        raise ValueError("fit has no covariance matrices: refit with lmm(..., output_cov=True)")
    if df == "auto":
        df = "kenward-roger" if fit.method == "REML" else "satterthwaite"
    if df == "kenward-roger":
        _kr.check_fit(fit)
    contrasts = as_contrasts(fit.fixed_names, contrast, index)
    for name, Lm in contrasts.items():
        if Lm.shape[1] > 1 and alternative != "two-sided":
            raise ValueError(f"contrast {name!r} is a joint test: alternative must be two-sided")
    G = fit.n_genes
    method = f"lmm_{fit.method.lower()}"
    # one problem for every contrast
    prep = prepared(fit) if df in (*_SATTERTHWAITE, "kenward-roger") else None
    if df == "satterthwaite":
        A = inverse_observed_information(fit, prep)
    elif df == "satterthwaite-expected":
        A = inverse_expected_information(fit)
    else:
        A = None
    kr = _kr.kenward_roger(fit, contrasts, prep) if df == "kenward-roger" else None
    single = {k: v[:, 0] for k, v in contrasts.items() if v.shape[1] == 1}
    nu_single = {}
    if single and df in _SATTERTHWAITE:
        C = np.stack(list(single.values()), axis=0)  # L × p, one pass for all single contrasts
        nu = _satterthwaite(fit, np.broadcast_to(C, (G, *C.shape)), A, prep)
        nu_single = {k: nu[:, j] for j, k in enumerate(single)}
    frames, priors = [], []
    for name, Lm in contrasts.items():
        r = Lm.shape[1]
        est = fit.coef @ Lm  # G × r
        if kr is not None:  # Kenward–Roger: Lᵀ Φ_A L (adjusted covariance) and its ν
            V, nu = kr[name].cov, kr[name].df
        else:
            V = np.einsum("al,gab,bm->glm", Lm, fit.cov, Lm)
            if df in _SATTERTHWAITE:
                nu = nu_single[name] if r == 1 else None
            elif df == "residual":
                nu = np.full(G, fit.df)
            else:
                nu = np.full(G, _between_df(fit, Lm))
        if r == 1:
            se = np.sqrt(V[:, 0, 0])
            if moderate:
                mod = _mod.moderate_t(est[:, 0], V[:, 0, 0], nu, robust=robust, covariate=ybar)
                se, nu = mod.se, mod.df
                priors.append(_mod.prior_summary(name, mod, robust, trend))
            with np.errstate(invalid="ignore", divide="ignore"):
                stat = est[:, 0] / se
            if alternative == "two-sided":
                pval = t_two_sided(stat, nu)
            elif alternative == "greater":
                pval = sps.t.sf(stat, nu)
            else:
                pval = sps.t.cdf(stat, nu)
            log_fc = est[:, 0]
        else:
            if kr is not None:
                stat = kr[name].stat
            else:
                stat, nu_joint = _joint_test(fit, Lm, est, V, A, prep)
                nu = nu_joint if nu is None else nu
            pval = sps.f.sf(stat, r, nu)
            log_fc = se = np.full(G, np.nan)
        frames.append(
            pd.DataFrame(
                {
                    "variable": fit.gene_names,
                    "contrast": name,
                    "log_fc": log_fc,
                    "se": se,
                    "stat": stat,
                    "df": nu,
                    "df_num": r,
                    "p_value": pval,
                    "adj_p_value": bh_adjust(pval),
                    "method": method,
                    "converged": fit.converged,
                    "status": fit.status,
                }
            )
        )
    table = pd.concat(frames, ignore_index=True)
    table.attrs["df"] = df
    if moderate:
        _mod.warn_joint_not_moderated([k for k, v in contrasts.items() if v.shape[1] > 1])
        table.attrs["moderation"] = _mod.prior_columns(priors)
    return table


def _joint_test(fit, Lm, est, V, A, prep=None):
    """F statistic of a joint contrast and, when ``A`` (J⁻¹) is given, its Satterthwaite ddf.

    Along the eigenvectors P of LᵀCov L (eigenvalues λₘ) the contrasts L Pₘ are independent
    with variances λₘ: F = Σₘ (Pₘᵀ Lᵀβ̂)²/λₘ / r, and ddf combines their df νₘ.
    """
    G, r = est.shape
    evals = np.full((G, r), np.nan)
    evecs = np.full((G, r, r), np.nan)
    good = np.isfinite(V).all(axis=(1, 2))
    evals[good], evecs[good] = np.linalg.eigh(V[good])
    with np.errstate(invalid="ignore", divide="ignore"):
        proj = np.einsum("grm,gr->gm", evecs, est)
        F = np.sum(proj**2 / evals, axis=1) / r
    if A is None:
        return F, None
    C = np.einsum("pr,grm->gmp", Lm, np.nan_to_num(evecs))  # the r eigen-contrasts per gene
    nus = _satterthwaite(fit, C, A, prep)
    nus[~good] = np.nan
    return F, _fstat_ddf(nus)


def _fstat_ddf(nus: np.ndarray) -> np.ndarray:
    """Denominator df of an r-df F test from the per-direction Satterthwaite df."""
    r = nus.shape[1]
    out = np.full(nus.shape[0], np.nan)
    finite = np.isfinite(nus).all(axis=1)
    small = finite & (nus <= 2).any(axis=1)
    out[small] = 2.0
    ok = finite & ~small
    E = np.sum(nus[ok] / (nus[ok] - 2.0), axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out[ok] = np.where(E > r, 2.0 * E / (E - r), np.nan)
    return out


def vctest(fit: LmmFit) -> pd.DataFrame:
    """FLASHMM's z-test of each variance component: H₀ σₖ² ≤ 0 vs σₖ² > 0.

    z = θ̂ₖ/se(θ̂ₖ) and the one-sided p = P(Z > z). Valid because θₖ may be negative
    (no boundary at 0); with ``nonneg=True`` fits use :func:`lrt` with the χ² mixture instead.
    One row per (gene, component).
    """
    K = fit.theta.shape[1] - 1
    rows = []
    for k in range(K):
        with np.errstate(invalid="ignore", divide="ignore"):
            z = fit.theta[:, k] / fit.se_theta[:, k]
        p = sps.norm.sf(z)
        rows.append(
            pd.DataFrame(
                {
                    "variable": fit.gene_names,
                    "component": fit.theta_names[k],
                    "estimate": fit.theta[:, k],
                    "se": fit.se_theta[:, k],
                    "stat": z,
                    "p_value": p,
                    "adj_p_value": bh_adjust(p),
                }
            )
        )
    return pd.concat(rows, ignore_index=True)


def lrt(fit0: LmmFit, fit1: LmmFit, *, boundary: bool = True) -> pd.DataFrame:
    """Likelihood-ratio test of nested fits (fit0 ⊂ fit1), gene by gene.

    Λ = 2(ℓ₁ − ℓ₀) on df = (number of parameters of fit1) − (of fit0). When fit1 was fitted with
    ``nonneg=True`` and differs from fit0 by one variance component, that component is tested
    at its boundary 0 and the null distribution is the 50:50 mixture of χ²₀ and χ²₁ (Self &
    Liang 1987): p = ½P(χ²₁ > Λ) for Λ > 0 (``boundary=True``). With FLASHMM's default
    (components may be negative) there is no boundary and Λ ~ χ²₁. REML fits must share X (the
    criteria are otherwise not comparable); use ML to compare fixed effects.
    """
    for name, f in (("fit0", fit0), ("fit1", fit1)):
        if not isinstance(f, LmmFit):
            raise TypeError(f"{name} must be an LmmFit; got {type(f).__name__}")
    if fit0.method != fit1.method:
        raise ValueError(f"fit0 is {fit0.method} but fit1 is {fit1.method}")
    if fit0.n != fit1.n or fit0.gene_names != fit1.gene_names:
        raise ValueError("fit0 and fit1 must be fitted to the same cells and genes")
    same_x = fit0.fixed_names == fit1.fixed_names
    if fit0.method == "REML" and not same_x:
        raise ValueError("REML fits with different fixed effects are not comparable: use ML")
    k0 = len(fit0.fixed_names) + fit0.theta.shape[1]
    k1 = len(fit1.fixed_names) + fit1.theta.shape[1]
    ddf = k1 - k0
    if ddf <= 0:
        raise ValueError(f"fit1 must have more parameters than fit0 (got {k1} vs {k0})")
    stat = 2.0 * (fit1.loglik - fit0.loglik)
    stat = np.where(stat < 0, 0.0, stat)  # rounding at the boundary
    if boundary and same_x and ddf == 1 and fit1.nonneg:
        p = np.where(stat > 0, 0.5 * sps.chi2.sf(stat, 1), 1.0)
    else:
        p = sps.chi2.sf(stat, ddf)
    p = np.where(np.isfinite(fit0.loglik) & np.isfinite(fit1.loglik), p, np.nan)
    return pd.DataFrame(
        {
            "variable": fit1.gene_names,
            "stat": stat,
            "df": ddf,
            "p_value": p,
            "adj_p_value": bh_adjust(p),
            "converged": fit0.converged & fit1.converged,
        }
    )


@numba_parallel_only
def random_effects(fit: LmmFit, stats=None) -> pd.DataFrame:
    """BLUPs of the random effects per gene: b̂ = H(ZᵀY − ZᵀXβ̂), H = (I + D·ZᵀZ)⁻¹D,
    D = diag(σₖ²/σ²) over the columns of each block.

    Parameters
    ----------
    fit : LmmFit
    stats : SummaryStats, optional
        Statistics of the same genes and design to use instead of ``fit.stats``.

    Returns
    -------
    pandas.DataFrame
        Genes × q (rows: gene names). Columns are the level labels of the random effects: for
        one block, an Index of its levels named after the block (``columns.name ==
        "donor_id"``); for several, a MultiIndex (block, level), so that
        ``random_effects(fit)["batch"]`` selects one block. Statistics without labels (from
        bare matrices) give the names of Z's columns (``donor_idD01``, or ``z0, z1, …``).
        Genes without a fit are NaN.
    """
    s = stats if stats is not None else _require_stats(fit)
    if s.n_genes != fit.n_genes or s.p != fit.coef.shape[1]:
        raise ValueError("stats do not match the fit (genes or fixed effects differ)")
    if s is fit.stats:
        prep = prepared(fit)
    else:  # other statistics of the same genes: their own problem
        prep = _Prepared(s, fit.method, _Problem.build(s, fit.method, "dense"))
    b = _ki.blups(
        np.ascontiguousarray(fit.theta), prep.blocks, prep.Wz(), np.ascontiguousarray(s.ZY.T),
        np.ascontiguousarray(s.ZX), np.nan_to_num(fit.coef),
    )  # fmt: skip
    b[~np.isfinite(fit.coef).all(axis=1)] = np.nan
    return pd.DataFrame(b, index=fit.gene_names, columns=_random_columns(s))


def _random_columns(s) -> pd.Index:
    """Column labels of the BLUPs: (block, level) labels when the statistics carry them."""
    if s.random_blocks and s.random_levels:
        if len(s.random_blocks) == 1:
            return pd.Index(s.random_levels, name=s.random_blocks[0])
        block = np.repeat(np.asarray(s.random_blocks, dtype=object), s.d)
        return pd.MultiIndex.from_arrays([block, s.random_levels], names=["block", "level"])
    return pd.Index(_checks.check_names("random_names", s.random_names or None, s.q, "z"))
