"""Plain-NumPy oracles of the LMM maths on the full n × n matrices (small n only).

Independent of the summary-statistic algebra in pyflashmm: V, P and the likelihood are built
directly from their definitions.
"""

from __future__ import annotations

import numpy as np


def random_design(rng, n, p, sizes, *, sparse_groups=True):
    """X (intercept + normal covariates) and Z made of one indicator block per entry of sizes."""
    X = np.column_stack([np.ones(n), rng.normal(size=(n, p - 1))])
    blocks = []
    for q in sizes:
        g = rng.integers(0, q, n)
        g[:q] = np.arange(q)  # every level present
        Zk = np.zeros((n, q))
        Zk[np.arange(n), g] = 1.0
        blocks.append(Zk)
    return X, np.hstack(blocks), np.asarray(sizes)


def simulate_y(rng, X, Z, d, theta, G):
    """G responses from the model with variance components theta (residual last)."""
    n = X.shape[0]
    beta = rng.normal(size=(X.shape[1], G))
    Y = X @ beta
    start = 0
    for k, q in enumerate(d):
        Y += Z[:, start : start + q] @ rng.normal(0, np.sqrt(theta[k]), (q, G))
        start += q
    return Y + rng.normal(0, np.sqrt(theta[-1]), (n, G))


def covariance_derivatives(Z, d):
    """V_k = ∂V/∂θ_k: Z_k Z_kᵀ for each block, then I for the residual."""
    out = []
    start = 0
    for q in d:
        Zk = Z[:, start : start + q]
        out.append(Zk @ Zk.T)
        start += q
    out.append(np.eye(Z.shape[0]))
    return out


def loglik_score_info(y, X, Z, d, theta, method):
    """REML criterion (lme4 scale) or ML log-likelihood, score and expected information."""
    n, p = X.shape
    Vk = covariance_derivatives(Z, d)
    V = sum(t * v for t, v in zip(theta, Vk, strict=True))
    Vi = np.linalg.inv(V)
    XtViX = X.T @ Vi @ X
    P = Vi - Vi @ X @ np.linalg.solve(XtViX, X.T @ Vi)
    yPy = y @ P @ y
    logdetV = np.linalg.slogdet(V)[1]
    if method == "REML":
        ll = -0.5 * ((n - p) * np.log(2 * np.pi) + logdetV + np.linalg.slogdet(XtViX)[1] + yPy)
        Tr = P
    else:
        ll = -0.5 * (n * np.log(2 * np.pi) + logdetV + yPy)
        Tr = Vi
    Py = P @ y
    score = np.array([0.5 * (Py @ Vm @ Py - np.trace(Tr @ Vm)) for Vm in Vk])
    info = np.array([[0.5 * np.trace(Tr @ Va @ Tr @ Vb) for Vb in Vk] for Va in Vk])
    return ll, score, info


def gls(y, X, Z, d, theta):
    """β̂ and Cov(β̂) by generalised least squares at θ."""
    Vk = covariance_derivatives(Z, d)
    V = sum(t * v for t, v in zip(theta, Vk, strict=True))
    Vi = np.linalg.inv(V)
    cov = np.linalg.inv(X.T @ Vi @ X)
    return cov @ X.T @ Vi @ y, cov


def kenward_roger(X, Z, d, theta):
    """Kenward–Roger ingredients at θ (REML) from the n × n matrices, by their definitions.

    Returns Φ = (XᵀV⁻¹X)⁻¹, Λ = Φ[Σᵢⱼ Wᵢⱼ(Qᵢⱼ − PᵢΦPⱼ)]Φ, the list of Pᵢ = −XᵀV⁻¹VᵢV⁻¹X and
    W = the inverse of the expected REML information ½tr(PVᵢPVⱼ) (P the REML projection).
    """
    Vk = covariance_derivatives(Z, d)
    V = sum(t * v for t, v in zip(theta, Vk, strict=True))
    Vi = np.linalg.inv(V)
    Phi = np.linalg.inv(X.T @ Vi @ X)
    proj = Vi - Vi @ X @ Phi @ X.T @ Vi
    m = len(Vk)
    P = [-X.T @ Vi @ Va @ Vi @ X for Va in Vk]
    info = np.array([[0.5 * np.trace(proj @ Va @ proj @ Vb) for Vb in Vk] for Va in Vk])
    W = np.linalg.inv(info)
    U = np.zeros_like(Phi)
    for i in range(m):
        for j in range(m):
            Qij = X.T @ Vi @ Vk[i] @ Vi @ Vk[j] @ Vi @ X
            U += W[i, j] * (Qij - P[i] @ Phi @ P[j])
    return Phi, Phi @ U @ Phi, P, W


def kenward_roger_test(L, beta, Phi, Lam, P, W):
    """KR test of H₀: Lβ = 0 for L (r × p) as Kenward & Roger (1997) define it: the adjusted
    covariance Φ_A = Φ + 2Λ, the Wald statistic on Φ_A, its scaling and denominator df.

    Returns (variance of Lβ̂ under Φ_A (r × r), scaled F, ddf). For r = 1, F = t².
    """
    L = np.atleast_2d(L)
    r = L.shape[0]
    Theta = L.T @ np.linalg.solve(L @ Phi @ L.T, L)
    u = [Theta @ Phi @ Pi @ Phi for Pi in P]
    pairs = [(i, j) for i in range(len(P)) for j in range(len(P))]
    A1 = sum(W[i, j] * np.trace(u[i]) * np.trace(u[j]) for i, j in pairs)
    A2 = sum(W[i, j] * np.trace(u[i] @ u[j]) for i, j in pairs)
    B = (A1 + 6 * A2) / (2 * r)
    g = ((r + 1) * A1 - (r + 4) * A2) / ((r + 2) * A2)
    den = 3 * r + 2 * (1 - g)
    c1, c2, c3 = g / den, (r - g) / den, (r + 2 - g) / den
    rho = ((1 - A2 / r) / (1 - c2 * B)) ** 2 * (1 + c1 * B) / (r * (1 - c3 * B))
    ddf = 4 + (r + 2) / (r * rho - 1)
    scale = ddf * (1 - A2 / r) / (ddf - 2)
    PhiA = Phi + 2 * Lam
    VA = L @ PhiA @ L.T
    est = L @ beta
    F = scale * est @ np.linalg.solve(VA, est) / r
    return VA, F, ddf
