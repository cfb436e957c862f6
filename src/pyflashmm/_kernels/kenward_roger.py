"""Numba kernels for the Kenward–Roger adjustment of LMM fits, from summary statistics.

Notation as in :mod:`pyflashmm._kernels.lmm` and :mod:`pyflashmm._lmm.kenward_roger`: per gene,
θ = (σ₁², …, σ_K², σ²), γₖ = σₖ²/σ², D = diag(γ) over the q columns of Z, V = σ²(I + Z D Zᵀ),
V₀ = I and Vₖ = ZₖZₖᵀ, Φ = Cov(β̂) = (XᵀV⁻¹X)⁻¹ and W the inverse expected REML information.

The kernels return, per gene,

* Dᵢ = ΦAᵢΦ with Aᵢ = XᵀV⁻¹VᵢV⁻¹X (= −Pᵢ in Kenward & Roger's notation; Dᵢ = ∂Φ/∂θᵢ), and
* Λ = Φ [Σᵢⱼ Wᵢⱼ (Qᵢⱼ − AᵢΦAⱼ)] Φ with Qᵢⱼ = XᵀV⁻¹VᵢV⁻¹VⱼV⁻¹X,

from which every contrast's adjusted variance and denominator df follow (p × p algebra).

Everything reduces to ZᵀX, ZᵀZ, XᵀX and θ through the operator M = (I + ZZ·D)⁻¹ = I − T_Z D
(T_Z = (I + ZZ·D)⁻¹ZZ, the kernels' ``gene_T`` on ZZ^{1/2}):

* E = ZᵀV⁻¹X = M·ZX/σ², F = ZᵀV⁻²X = M·E/σ², F₂ = ZᵀV⁻³X = M·F/σ², ZᵀV⁻¹Z = T_Z/σ²;
* Aₖ = EₖᵀEₖ (rows of block k), A₀ = XᵀV⁻²X = XX/σ⁴ − ZXᵀD(E/σ² + F);
* Qₖₗ = Eₖᵀ(T_Z)ₖₗEₗ/σ², Qₖ₀ = EₖᵀFₖ = Q₀ₖᵀ, Q₀₀ = XᵀV⁻³X = A₀/σ² − ZXᵀD F₂.

(Each follows from V⁻¹ = (I − Z H Zᵀ)/σ² with H = (I + D·ZZ)⁻¹D and H·ZZ·… = D·T_Z·….)

K = 1: with ZZ = Q diag(μ) Qᵀ, z_j the rows of QᵀZX and r_j = 1/(1 + γμ_j), M is diagonal in
that basis and every matrix above is a weighted sum Σ_j c_j z_j z_jᵀ (plus a multiple of XX):
A₁ = Σ r_j² z_j z_jᵀ/σ⁴, A₀ = (XX − Σ γ(r_j + r_j²) z_j z_jᵀ)/σ⁴ and
Σᵢⱼ WᵢⱼQᵢⱼ = (W₀₀XX + Σ [W₁₁μ_j r_j³ + 2W₁₀r_j³ − W₀₀γ(r_j + r_j² + r_j³)] z_j z_jᵀ)/σ⁶,
so a gene costs O(q p² + p³), linear in q as the fit. The p × p products are BLAS calls
(single-threaded, one gene per Numba thread), so results do not depend on the thread count.
"""

from __future__ import annotations

import numpy as np

from pyflashmm._jit import njit, prange
from pyflashmm._kernels.linalg import symmetrize
from pyflashmm._kernels.lmm import gene_T


@njit
def _weighted_outer(ZqT, Zq, c, work, out):
    """out = Σ_j c_j z_j z_jᵀ = Zqᵀ diag(c) Zq over the rows z_j of ``Zq`` (one BLAS product;
    ``ZqT`` = Zqᵀ contiguous, ``work`` a q × p scratch array)."""
    q, p = Zq.shape
    for j in range(q):
        cj = c[j]
        for a in range(p):
            work[j, a] = cj * Zq[j, a]
    np.dot(ZqT, work, out)


@njit
def _adjustment(Phi, A, Qsum, Winv, D, Lam):
    """Dᵢ = ΦAᵢΦ and Λ = Φ(Σ WᵢⱼQᵢⱼ − Σᵢⱼ WᵢⱼAᵢΦAⱼ)Φ, written into ``D`` and ``Lam``.

    ``A`` is (K+1) × p × p, ``Qsum`` = Σᵢⱼ WᵢⱼQᵢⱼ (p × p), ``Winv`` = W. With Bᵢ = ΦAᵢ and
    Sᵢ = Σⱼ WᵢⱼAⱼ (symmetric), AᵢΦSᵢ = BᵢᵀSᵢ = (SᵢBᵢ)ᵀ: 3(K+1) + 2 products of p × p matrices,
    each one BLAS call (faster than loops from p ≈ 10 on; BLAS runs single-threaded inside the
    parallel loop over genes, see :func:`pyflashmm._jit.numba_parallel_only`).
    """
    K1, p, _ = A.shape
    B = np.empty((K1, p, p))
    U = Qsum.copy()
    S = np.empty((p, p))
    tmp = np.empty((p, p))
    for i in range(K1):
        np.dot(Phi, A[i], B[i])
        np.dot(B[i], Phi, D[i])
    for i in range(K1):
        S[:, :] = 0.0
        for j in range(K1):
            S += Winv[i, j] * A[j]
        np.dot(S, B[i], tmp)
        U -= tmp.T
    np.dot(Phi, U, tmp)
    np.dot(tmp, Phi, Lam)
    symmetrize(Lam)


@njit
def _finite(a):
    for v in a.ravel():
        if not np.isfinite(v):
            return False
    return True


@njit
def _k1_weights(gam, mu, Winv, c1, c0, cq):
    """The weights of z_j z_jᵀ in A₁σ⁴ (c¹ = r²), in XX − A₀σ⁴ (c⁰ = γ(r + r²)) and in
    Σᵢⱼ WᵢⱼQᵢⱼσ⁶ − W₀₀XX (c^Q), r_j = 1/(1 + γμ_j); False when some 1 + γμ_j ≤ 0 (V not
    positive definite)."""
    w11 = Winv[0, 0]
    w10 = Winv[0, 1]
    w00 = Winv[1, 1]
    for j in range(mu.shape[0]):
        den = 1.0 + gam * mu[j]
        if not den > 0.0:
            return False
        r = 1.0 / den
        r2 = r * r
        r3 = r2 * r
        c1[j] = r2
        c0[j] = gam * (r + r2)
        cq[j] = w11 * mu[j] * r3 + 2.0 * w10 * r3 - w00 * gam * (r + r2 + r3)
    return True


@njit
def _k1_gene(theta, Winv, cov, mu):
    """(usable, σ², c¹, c⁰, c^Q) of one gene: unusable when θ, W or Φ is not finite, σ² ≤ 0
    or V is not positive definite."""
    q = mu.shape[0]
    c1 = np.empty(q)
    c0 = np.empty(q)
    cq = np.empty(q)
    s1 = theta[0]
    s0 = theta[1]
    if not (np.isfinite(s1) and s0 > 0.0 and _finite(Winv) and _finite(cov)):
        return False, s0, c1, c0, cq
    return _k1_weights(s1 / s0, mu, Winv, c1, c0, cq), s0, c1, c0, cq


@njit(parallel=True)
def adjustment_k1(theta, Winv, mu, ZXq, ZXqT, XX, cov):
    """Dᵢ (G × 2 × p × p) and Λ (G × p × p) for K = 1 (the module docstring's eigen form).

    ``mu``: eigenvalues of ZZ = Q diag(μ) Qᵀ; ``ZXq`` = QᵀZX and ``ZXqT`` its transpose
    (contiguous); ``cov`` = Φ per gene; ``Winv`` the inverse expected information. Genes with
    non-finite inputs or V not PD get NaN.
    """
    G = theta.shape[0]
    q, p = ZXq.shape
    D = np.full((G, 2, p, p), np.nan)
    Lam = np.full((G, p, p), np.nan)
    for g in prange(G):
        ok, s0, c1, c0, cq = _k1_gene(theta[g], Winv[g], cov[g], mu)
        if not ok:
            continue
        s02 = s0 * s0
        A = np.empty((2, p, p))
        Qsum = np.empty((p, p))
        work = np.empty((q, p))
        _weighted_outer(ZXqT, ZXq, c1, work, A[0])
        _weighted_outer(ZXqT, ZXq, c0, work, A[1])
        _weighted_outer(ZXqT, ZXq, cq, work, Qsum)
        for a in range(p):
            for b in range(p):
                A[0, a, b] = A[0, a, b] / s02
                A[1, a, b] = (XX[a, b] - A[1, a, b]) / s02
                Qsum[a, b] = (Winv[g, 1, 1] * XX[a, b] + Qsum[a, b]) / (s02 * s0)
        _adjustment(cov[g], A, Qsum, Winv[g], D[g], Lam[g])
    return D, Lam


@njit(parallel=True)
def single_contrasts_k1(theta, Winv, mu, ZXq, XX, cov, C):
    """(f, f_A, a) of :func:`single_contrasts` for K = 1 without forming Dᵢ and Λ.

    For one row c only quadratic forms in v = Φc are needed: with u = (QᵀZX)v (u_j = z_jᵀv),
    the weights c¹, c⁰, c^Q of :func:`adjustment_k1` and aᵢ = Aᵢv,

    * ∇fᵢ = cᵀDᵢc = vᵀAᵢv: vᵀA₁v = Σ c¹_j u_j²/σ⁴, vᵀA₀v = (vᵀXXv − Σ c⁰_j u_j²)/σ⁴;
    * cᵀΛc = vᵀ(Σᵢⱼ WᵢⱼQᵢⱼ)v − Σᵢⱼ Wᵢⱼ aᵢᵀΦaⱼ, the first term (W₀₀vᵀXXv + Σ c^Q_j u_j²)/σ⁶,
      with a₁ = (QᵀZX)ᵀ(c¹∘u)/σ⁴ and a₀ = (XXv − (QᵀZX)ᵀ(c⁰∘u))/σ⁴.

    A gene and contrast cost O(qp + p²) rather than the O(qp² + p³) of forming Dᵢ and Λ.
    ``C`` (m × p) holds the contrasts; genes whose inputs are not finite or whose V is not
    positive definite get NaN.
    """
    G = theta.shape[0]
    q, p = ZXq.shape
    m = C.shape[0]
    f = np.full((G, m), np.nan)
    fa = np.full((G, m), np.nan)
    a = np.full((G, m), np.nan)
    for g in prange(G):
        ok, s0, c1, c0, cq = _k1_gene(theta[g], Winv[g], cov[g], mu)
        if not ok:
            continue
        Phi = cov[g]
        s02 = s0 * s0
        u = np.empty(q)
        vec = np.empty((2, p))
        Pa = np.empty((2, p))
        for l in range(m):
            v = Phi @ C[l]
            XXv = XX @ v
            vXXv = 0.0
            fl = 0.0
            for s in range(p):
                vXXv += v[s] * XXv[s]
                fl += C[l, s] * v[s]
            q1 = 0.0
            q0 = 0.0
            qq = 0.0
            for j in range(q):
                uj = 0.0
                for s in range(p):
                    uj += ZXq[j, s] * v[s]
                u2 = uj * uj
                q1 += c1[j] * u2
                q0 += c0[j] * u2
                qq += cq[j] * u2
                u[j] = uj
            for s in range(p):
                vec[0, s] = 0.0
                vec[1, s] = XXv[s]
            for j in range(q):
                e1 = c1[j] * u[j]
                e0 = c0[j] * u[j]
                for s in range(p):
                    vec[0, s] += e1 * ZXq[j, s]
                    vec[1, s] -= e0 * ZXq[j, s]
            for i in range(2):
                for s in range(p):
                    vec[i, s] /= s02
                Pa[i] = Phi @ vec[i]
            g1 = q1 / s02
            g0 = (vXXv - q0) / s02
            lam = (Winv[g, 1, 1] * vXXv + qq) / (s02 * s0)
            for i in range(2):
                for j in range(2):
                    d = 0.0
                    for s in range(p):
                        d += vec[i, s] * Pa[j, s]
                    lam -= Winv[g, i, j] * d
            quad = g1 * (Winv[g, 0, 0] * g1 + Winv[g, 0, 1] * g0) + g0 * (
                Winv[g, 1, 0] * g1 + Winv[g, 1, 1] * g0
            )
            f[g, l] = fl
            fa[g, l] = fl + 2.0 * lam
            a[g, l] = quad / (fl * fl)
    return f, fa, a


@njit
def _apply_M(Tz, dvec, Bm, s0):
    """(I − T_Z D) Bm / σ² for a q × p matrix ``Bm`` (one application of V⁻¹ in the Z basis)."""
    DB = dvec.reshape(-1, 1) * Bm
    return (Bm - Tz @ DB) / s0


@njit(parallel=True)
def adjustment_general(theta, Winv, blocks, Wz, ZX, XX, cov):
    """Dᵢ (G × (K+1) × p × p) and Λ (G × p × p) for any K (dense in q: O(q³) per gene).

    ``Wz`` = (ZᵀZ)^{1/2}, ``blocks`` the block of each column of Z. Genes with non-finite
    inputs or V not PD get NaN.
    """
    G, K1 = theta.shape
    K = K1 - 1
    q, p = ZX.shape
    D = np.full((G, K1, p, p), np.nan)
    Lam = np.full((G, p, p), np.nan)
    for g in prange(G):
        if not (_finite(Winv[g]) and _finite(cov[g])):
            continue
        ok, Tz, dvec = gene_T(theta[g], blocks, Wz)
        if not ok:
            continue
        s0 = theta[g, K]
        E = _apply_M(Tz, dvec, ZX, s0)  # ZᵀV⁻¹X
        F = _apply_M(Tz, dvec, E, s0)  # ZᵀV⁻²X
        F2 = _apply_M(Tz, dvec, F, s0)  # ZᵀV⁻³X
        A = np.zeros((K1, p, p))
        for i in range(q):
            k = blocks[i]
            for a in range(p):
                e = E[i, a]
                for b in range(p):
                    A[k, a, b] += e * E[i, b]
        DZX = dvec.reshape(-1, 1) * ZX
        A[K] = XX / (s0 * s0) - DZX.T @ (E / s0 + F)
        Q00 = A[K] / s0 - DZX.T @ F2
        # Σ_kl W_kl Eₖᵀ(T_Z)ₖₗEₗ/σ² + Σ_k W_k0 (EₖᵀFₖ + FₖᵀEₖ) + W₀₀Q₀₀
        Tw = np.empty((q, q))
        w0 = np.empty(q)
        for i in range(q):
            w0[i] = Winv[g, blocks[i], K]
            for j in range(q):
                Tw[i, j] = Tz[i, j] * Winv[g, blocks[i], blocks[j]] / s0
        EwF = E.T @ (w0.reshape(-1, 1) * F)
        Qsum = E.T @ (Tw @ E) + EwF + EwF.T + Winv[g, K, K] * Q00
        _adjustment(cov[g], A, Qsum, Winv[g], D[g], Lam[g])
    return D, Lam


@njit(parallel=True)
def single_contrasts(cov, Lam, D, Winv, C):
    """Per gene and single-row contrast c (rows of ``C``, m × p): (f, f_A, a) with f = cᵀΦc,
    f_A = cᵀ(Φ + 2Λ)c and a = ∇fᵀW∇f/f², ∇fᵢ = cᵀDᵢc (each G × m)."""
    G, K1, p, _ = D.shape
    m = C.shape[0]
    f = np.full((G, m), np.nan)
    fa = np.full((G, m), np.nan)
    a = np.full((G, m), np.nan)
    for g in prange(G):
        grad = np.empty(K1)
        for l in range(m):
            c = C[l]
            v = 0.0
            lam = 0.0
            for i in range(K1):
                grad[i] = 0.0
            for s in range(p):
                cs = c[s]
                if cs == 0.0:
                    continue
                for t in range(p):
                    w = cs * c[t]
                    v += w * cov[g, s, t]
                    lam += w * Lam[g, s, t]
                    for i in range(K1):
                        grad[i] += w * D[g, i, s, t]
            quad = 0.0
            for i in range(K1):
                for j in range(K1):
                    quad += grad[i] * Winv[g, i, j] * grad[j]
            f[g, l] = v
            fa[g, l] = v + 2.0 * lam
            a[g, l] = quad / (v * v)
    return f, fa, a
