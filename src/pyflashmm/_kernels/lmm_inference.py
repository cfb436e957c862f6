"""Numba kernels for LMM inference: the quadratic part of the observed information of θ, the
gradient of cᵀCov(β̂)c in θ, and BLUPs (notation of :mod:`pyflashmm._lmm.inference` and
:mod:`pyflashmm._kernels.lmm`).

Per gene, with θ = (σ₁², …, σ_K², σ²), D = diag(σₖ²/σ²) over the q columns of Z and
V = σ²(I + Z D Zᵀ):

* Qᵢⱼ = yᵀPVᵢPVⱼPy (V₀ = I), the part of the observed information J = Q − I that the expected
  information I lacks;
* ∂(cᵀCov(β̂)c)/∂θᵢ = wᵀXᵀV⁻¹VᵢV⁻¹Xw with w = Cov(β̂)c (Satterthwaite's ∇f);
* b̂ = (I + D·ZᵀZ)⁻¹D(ZᵀY − ZᵀXβ̂), the BLUPs.
"""

from __future__ import annotations

import numpy as np

from pyflashmm._jit import njit, prange
from pyflashmm._kernels.lmm import gene_T


@njit(parallel=True)
def quadratic_terms_k1(theta, W, yRy, lam):
    """Qᵢⱼ = yᵀPVᵢPVⱼPy for K = 1 from w = Uᵀ(ZᵀRy) and the eigenvalues λ of ZᵀRZ (G×2×2)."""
    G = W.shape[0]
    Q = np.full((G, 2, 2), np.nan)
    for g in prange(G):
        s1 = theta[g, 0]
        s0 = theta[g, 1]
        if not (np.isfinite(s1) and s0 > 0.0):
            continue
        gam = s1 / s0
        q11 = 0.0
        q10 = 0.0
        a2 = 0.0
        uDa = 0.0
        for j in range(lam.shape[0]):
            den = 1.0 + gam * lam[j]
            aj = W[g, j] / den  # a in the eigenbasis of ZᵀRZ
            t = lam[j] / den  # T's eigenvalue
            q11 += aj * t * aj
            q10 += aj * aj * (1.0 - gam * t)
            a2 += aj * aj
            uDa += gam * W[g, j] * aj
        quad1 = yRy[g] - uDa
        aDTDa = gam * gam * q11
        s06 = s0 * s0 * s0
        Q[g, 0, 0] = q11 / s06
        Q[g, 0, 1] = q10 / s06
        Q[g, 1, 0] = q10 / s06
        Q[g, 1, 1] = (quad1 - 2.0 * gam * a2 + aDTDa) / s06
    return Q


@njit(parallel=True)
def quadratic_terms_general(theta, U, yRy, Ws, blocks, K):
    """Qᵢⱼ = yᵀPVᵢPVⱼPy for any K (G×(K+1)×(K+1)); ``U`` is G×q ZᵀRy, ``Ws`` = (ZᵀRZ)^{1/2}."""
    G, q = U.shape
    K1 = K + 1
    Q = np.full((G, K1, K1), np.nan)
    for g in prange(G):
        ok, T, dvec = gene_T(theta[g], blocks, Ws)
        if not ok:
            continue
        s0 = theta[g, K]
        u = U[g]
        a = u - T @ (dvec * u)
        Da = dvec * a
        TDa = T @ Da
        s06 = s0 * s0 * s0
        Qg = np.zeros((K1, K1))
        uDa = 0.0
        aDa = 0.0
        aDTDa = 0.0
        for i in range(q):
            ki = blocks[i]
            uDa += u[i] * Da[i]
            aDa += a[i] * Da[i]
            aDTDa += Da[i] * TDa[i]
            Qg[ki, K] += a[i] * (a[i] - TDa[i])
            for j in range(q):
                Qg[ki, blocks[j]] += a[i] * T[i, j] * a[j]
        Qg[K, K] = yRy[g] - uDa - 2.0 * aDa + aDTDa
        for k in range(K):
            Qg[K, k] = Qg[k, K]
        Q[g] = Qg / s06
    return Q


@njit(parallel=True)
def cov_gradient_k1(theta, mu, ZXq, XX, Wc):
    """∂(cᵀCov c)/∂θ = (wᵀXᵀV⁻¹VᵢV⁻¹Xw)ᵢ for K = 1 (G×L×2); ZZ = Q diag(μ) Qᵀ, ZXq = QᵀZX."""
    G, L, p = Wc.shape
    q = mu.shape[0]
    out = np.full((G, L, 2), np.nan)
    for g in prange(G):
        s0 = theta[g, 1]
        if not (np.isfinite(theta[g, 0]) and s0 > 0.0):
            continue
        gam = theta[g, 0] / s0
        s04 = s0 * s0
        for l in range(L):
            w = Wc[g, l]
            g1 = 0.0
            g0 = 0.0
            for j in range(q):
                zw = 0.0
                for a in range(p):
                    zw += ZXq[j, a] * w[a]
                r = 1.0 / (1.0 + gam * mu[j])
                h = gam * r
                g1 += (r * zw) ** 2
                g0 += (-2.0 * h + h * h * mu[j]) * zw * zw
            for a in range(p):
                for b in range(p):
                    g0 += w[a] * XX[a, b] * w[b]
            out[g, l, 0] = g1 / s04
            out[g, l, 1] = g0 / s04
    return out


@njit(parallel=True)
def cov_gradient_general(theta, Wz, blocks, ZX, ZZ, XX, Wc):
    """∂(cᵀCov c)/∂θ for any K (G×L×(K+1)); ``Wz`` = (ZᵀZ)^{1/2}."""
    G, L, p = Wc.shape
    q = ZX.shape[0]
    K1 = theta.shape[1]
    K = K1 - 1
    out = np.full((G, L, K1), np.nan)
    for g in prange(G):
        ok, Tz, dvec = gene_T(theta[g], blocks, Wz)
        if not ok:
            continue
        s0 = theta[g, K]
        s04 = s0 * s0
        for l in range(L):
            w = Wc[g, l]
            zw = ZX @ w
            # E w = (I + ZZ D)⁻¹ ZX w = zw − T_Z D zw ; H zw = D zw − D T_Z D zw
            Dzw = dvec * zw
            TDzw = Tz @ Dzw
            Ew = zw - TDzw
            Hzw = Dzw - dvec * TDzw
            res = np.zeros(K1)
            for j in range(q):
                res[blocks[j]] += Ew[j] * Ew[j]
            g0 = w @ (XX @ w) - 2.0 * (zw @ Hzw) + Hzw @ (ZZ @ Hzw)
            for k in range(K):
                out[g, l, k] = res[k] / s04
            out[g, l, K] = g0 / s04
    return out


@njit(parallel=True)
def blups(theta, blocks, Wz, ZYt, ZX, coef):
    """b̂ = (I + D·ZZ)⁻¹D(ZᵀY − ZᵀXβ̂) per gene (G×q), D = diag(σₖ²/σ²) over the blocks.

    With T = W B⁻¹ W (W = ZZ^{1/2}, B = I + W D W, Cholesky with a success flag):
    (I + D·ZZ)⁻¹ = I − D T, so b̂ = D r − D T D r; genes whose B is not PD get NaN.
    """
    G = theta.shape[0]
    q = Wz.shape[0]
    out = np.full((G, q), np.nan)
    for g in prange(G):
        ok, T, dvec = gene_T(theta[g], blocks, Wz)
        if not ok:
            continue
        Dr = dvec * (ZYt[g] - ZX @ coef[g])
        out[g] = Dr - dvec * (T @ Dr)
    return out
