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
