"""Kenward–Roger inference on REML fits, from summary statistics (as pbkrtest and lmerTest).

Notation as in :mod:`pyflashmm._lmm.inference`: θ = (σ₁², …, σ_K², σ²), V = Σᵢ θᵢVᵢ with
Vₖ = ZₖZₖᵀ and V₀ = I (the residual), Φ = Cov(β̂) = (XᵀV⁻¹X)⁻¹ at the REML estimate θ̂.

**The adjusted covariance** (Kenward & Roger 1997, for a covariance linear in θ, so that the
second derivatives of V vanish): with Pᵢ = −XᵀV⁻¹VᵢV⁻¹X, Qᵢⱼ = XᵀV⁻¹VᵢV⁻¹VⱼV⁻¹X and W the
inverse of the expected REML information ½tr(PVᵢPVⱼ) (P the REML projection; pbkrtest's
``2·solve(IE2)`` with IE2 = tr(PVᵢPVⱼ), the fit's ``fim_theta``),

    Λ = Φ [Σᵢⱼ Wᵢⱼ (Qᵢⱼ − PᵢΦPⱼ)] Φ,   Φ_A = Φ + 2Λ.

Φ_A corrects Φ for its small-sample bias and for the variability of θ̂ (the second-order terms
of E[(β̂ − β)(β̂ − β)ᵀ]).

**Denominator df** of H₀: Lβ = 0 (L r × p of rank r, rows = contrasts): with Θ = Lᵀ(LΦLᵀ)⁻¹L
and uᵢ = ΘΦPᵢΦ,

    A₁ = Σᵢⱼ Wᵢⱼ tr(uᵢ) tr(uⱼ),   A₂ = Σᵢⱼ Wᵢⱼ tr(uᵢuⱼ),   B = (A₁ + 6A₂)/(2r),
    g = ((r+1)A₁ − (r+4)A₂)/((r+2)A₂),   c₁, c₂, c₃ = (g, r − g, r + 2 − g)/(3r + 2(1 − g)),
    ρ = [(1 − A₂/r)/(1 − c₂B)]² (1 + c₁B) / (r(1 − c₃B)),   ν = 4 + (r + 2)/(rρ − 1),

and the statistic F = λ·(Lβ̂)ᵀ(LΦ_ALᵀ)⁻¹(Lβ̂)/r with the scaling λ = ν(1 − A₂/r)/(ν − 2)
is referred to F(r, ν). These are pbkrtest's (``vcovAdj``, ``Lb_ddf``, ``KRmodcomp``); as
there, λ = 1 when |ν − 2| < 0.01, 1 + c₁B is taken as 0 when below 1e-10 in absolute value,
and (1 − A₂/r)/(1 − c₂B) as 1 when both are below 1e-14. For one row c (r = 1), tr(uᵢ) =
−∇fᵢ/f with f = cᵀΦc and ∇fᵢ = ∂f/∂θᵢ = cᵀΦAᵢΦc (Aᵢ = −Pᵢ), A₁ = A₂ = a = ∇fᵀW∇f/f², and
the formulas reduce to ν = 2/a, λ = 1: Satterthwaite's df with the expected information of θ
(rather than the observed one :func:`lmmtest`'s ``df="satterthwaite"`` uses), and the t test
t = cᵀβ̂/√(cᵀΦ_Ac) (lmerTest's ``contest1D(..., ddf="Kenward-Roger")``).

**From the summary statistics** (the kernels in :mod:`pyflashmm._kernels.kenward_roger`): each
Pᵢ and Qᵢⱼ is a product of ZᵀV⁻ᵏX (k = 1, 2, 3), ZᵀV⁻¹Z and XᵀX, each a function of ZᵀX, ZᵀZ,
XᵀX and θ. For one random-effect block the eigen-decomposition of ZᵀZ makes the cost per gene
O(q p² + p³) (linear in q, as the fit); for several blocks it is O(q³ + q²p + p³).

**Boundary and failed fits**: the formulas are evaluated at whatever θ̂ the fit has — a
variance component at 0 (``nonneg=True``, lme4's singular fits, where pbkrtest does the same)
or negative with V positive definite (FLASHMM's semantics) — they need only V ≻ 0 and an
invertible expected information. Genes whose fit failed, whose information is singular or
whose KR quantities are not finite get NaN (pbkrtest would fall back on a pseudo-inverse of a
singular information), and so do the SE, t and F where cᵀΦ_Ac ≤ 0 or LΦ_ALᵀ is not positive
definite — which happens only far from a regular optimum, e.g. for genes stopped at the edge of
the region where V is positive definite (status ``pd_boundary``), where V is nearly singular
and Λ explodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pyflashmm._kernels import kenward_roger as _kk
from pyflashmm._lmm.fit import LmmFit, _Prepared, prepared
from pyflashmm._lmm.information import batched_inverse, inverse_expected_information

#: genes per block (bounds the G × (K+1) × p × p temporaries: 1024 genes, K = 2, p = 62 take
#: 95 MB)
_GENE_BLOCK = 1024


@dataclass(frozen=True)
class KrResult:
    """Kenward–Roger results of one contrast L (p × r) for every gene.

    ``cov``: LᵀΦ_AL (G × r × r); ``stat``: the scaled F (G; None for r = 1, whose t the caller
    forms from ``cov``); ``df``: the denominator df ν (G).
    """

    cov: np.ndarray
    stat: np.ndarray | None
    df: np.ndarray


def check_fit(fit: LmmFit) -> None:
    """Kenward–Roger needs a REML fit (its adjustment and df use the REML information)."""
    if fit.method != "REML":
        raise ValueError(
            f"df='kenward-roger' is defined for REML fits only (the adjustment uses the REML "
            f"information of θ, as pbkrtest); this fit is {fit.method}: refit with method='REML'"
        )
    if fit.stats is None:
        raise ValueError("fit: this LmmFit carries no summary statistics (fit.stats is None)")


def adjustment(
    fit: LmmFit,
    W: np.ndarray,
    genes: slice = slice(None),
    prep: _Prepared | None = None,
    engine: str = "auto",
):
    """(D, Λ) for the genes ``genes``: Dᵢ = ΦAᵢΦ = ∂Φ/∂θᵢ (G × (K+1) × p × p) and Λ (G × p × p).

    ``W``: :func:`inverse_expected_information` of those genes. ``engine``: "auto" uses the
    eigen form for K = 1; "dense" the general kernel (any K; for checks).
    """
    s = fit.stats
    prep = prep or prepared(fit)
    theta = np.ascontiguousarray(fit.theta[genes])
    cov = np.ascontiguousarray(fit.cov[genes])
    W = np.ascontiguousarray(W)
    if len(s.d) == 1 and engine == "auto":
        mu = prep.inference_problem().mu
        ZXq = prep.ZXq()
        return _kk.adjustment_k1(theta, W, mu, ZXq, np.ascontiguousarray(ZXq.T), s.XX, cov)
    return _kk.adjustment_general(
        theta, W, prep.blocks, prep.Wz(), np.ascontiguousarray(s.ZX), s.XX, cov
    )


def _single_k1(fit: LmmFit, W, genes: slice, prep: _Prepared, cov, C):
    """(f, f_A, a) of the single-row contrasts ``C`` for K = 1 (see
    :func:`pyflashmm._kernels.kenward_roger.single_contrasts_k1`)."""
    theta = np.ascontiguousarray(fit.theta[genes])
    mu = prep.inference_problem().mu
    return _kk.single_contrasts_k1(theta, np.ascontiguousarray(W), mu, prep.ZXq(),
                                   fit.stats.XX, cov, C)  # fmt: skip


def kr_ddf(A1: np.ndarray, A2: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
    """Denominator df ν and F scaling λ from A₁, A₂ for r rows (the module docstring)."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        B = (A1 + 6.0 * A2) / (2.0 * r)
        g = ((r + 1) * A1 - (r + 4) * A2) / ((r + 2) * A2)
        den = 3.0 * r + 2.0 * (1.0 - g)
        c1, c2, c3 = g / den, (r - g) / den, (r + 2 - g) / den
        v0 = 1.0 + c1 * B
        v0 = np.where(np.abs(v0) < 1e-10, 0.0, v0)
        v1 = 1.0 - c2 * B
        v2 = 1.0 - c3 * B
        x = 1.0 - A2 / r
        ratio = np.where((np.abs(x) < 1e-14) & (np.abs(v1) < 1e-14), 1.0, x / v1)
        rho = ratio**2 * v0 / (r * v2)
        nu = 4.0 + (r + 2) / (r * rho - 1.0)
        scale = np.where(np.abs(nu - 2.0) < 1e-2, 1.0, nu * x / (nu - 2.0))
    nu = np.where(np.isfinite(nu), nu, np.nan)
    return nu, scale


def _joint(Lm, beta, cov, D, Lam, W):
    """Scaled F, ν and LᵀΦ_AL of one joint contrast ``Lm`` (p × r) for a block of genes."""
    r = Lm.shape[1]
    S = np.einsum("ar,gab,bs->grs", Lm, cov, Lm)
    SA = S + 2.0 * np.einsum("ar,gab,bs->grs", Lm, Lam, Lm)
    M = np.einsum("ar,giab,bs->girs", Lm, D, Lm)  # L Dᵢ Lᵀ (= −LΦPᵢΦLᵀ)
    SiM = np.einsum("grs,gist->girt", batched_inverse(S), M)  # S⁻¹LDᵢLᵀ: same traces as ±uᵢ
    tr = np.einsum("girr->gi", SiM)
    A1 = np.einsum("gi,gij,gj->g", tr, W, tr)
    A2 = np.einsum("gij,girs,gjsr->g", W, SiM, SiM)
    nu, scale = kr_ddf(A1, A2, r)
    est = beta @ Lm
    wald = np.einsum("gr,grs,gs->g", est, batched_inverse(SA), est)
    F = scale * wald / r
    # Φ_A need not be positive definite far from a regular optimum (e.g. V almost singular
    # at the edge of the PD region): no test there
    finite = np.isfinite(SA).all(axis=(1, 2))
    pd = np.zeros_like(finite)
    pd[finite] = np.linalg.eigvalsh(SA[finite])[:, 0] > 0
    F[~pd] = np.nan
    return F, nu, SA


def kenward_roger(
    fit: LmmFit, contrasts: dict[str, np.ndarray], prep: _Prepared | None = None
) -> dict[str, KrResult]:
    """Kenward–Roger results of every contrast (``name → p × r matrix``), gene by gene.

    Genes are processed in blocks of :data:`_GENE_BLOCK`; single-row contrasts go through one
    kernel call per block: for one random-effect block, quadratic forms in Φc without the
    p × p matrices Dᵢ and Λ (:func:`pyflashmm._kernels.kenward_roger.single_contrasts_k1`),
    otherwise :func:`pyflashmm._kernels.kenward_roger.single_contrasts` on them. Dᵢ and Λ are
    formed only where needed (several blocks, or joint contrasts).
    """
    check_fit(fit)
    prep = prep or prepared(fit)
    G = fit.n_genes
    W = inverse_expected_information(fit)
    single = [k for k, v in contrasts.items() if v.shape[1] == 1]
    C = (np.ascontiguousarray(np.stack([contrasts[k][:, 0] for k in single]), dtype=np.float64)
         if single else None)  # fmt: skip
    f_adj = np.full((G, len(single)), np.nan)
    a = np.full((G, len(single)), np.nan)
    joint = {k: v for k, v in contrasts.items() if v.shape[1] > 1}
    out_joint = {
        k: (np.full(G, np.nan), np.full(G, np.nan), np.full((G, v.shape[1], v.shape[1]), np.nan))
        for k, v in joint.items()
    }
    # one random-effect block: single rows need only quadratic forms (O(qp + p²) a gene)
    k1_single = bool(single) and len(fit.stats.d) == 1
    single_from_matrices = bool(single) and not k1_single
    for start in range(0, G, _GENE_BLOCK):
        genes = slice(start, min(G, start + _GENE_BLOCK))
        cov = np.ascontiguousarray(fit.cov[genes])
        if k1_single:
            _, f_adj[genes], a[genes] = _single_k1(fit, W[genes], genes, prep, cov, C)
        if not (joint or single_from_matrices):
            continue
        D, Lam = adjustment(fit, W[genes], genes, prep)
        if single_from_matrices:
            _, f_adj[genes], a[genes] = _kk.single_contrasts(cov, Lam, D, W[genes], C)
        for name, Lm in joint.items():
            F, nu, SA = _joint(Lm, fit.coef[genes], cov, D, Lam, W[genes])
            for dst, val in zip(out_joint[name], (F, nu, SA), strict=True):
                dst[genes] = val
    nu_single, _ = kr_ddf(a, a, 1)
    f_adj[~(f_adj > 0)] = np.nan  # cᵀΦ_Ac ≤ 0: no standard error (see _joint)
    results = {}
    for j, name in enumerate(single):
        results[name] = KrResult(f_adj[:, j, None, None], None, nu_single[:, j])
    for name, (F, nu, SA) in out_joint.items():
        results[name] = KrResult(SA, F, nu)
    return results
