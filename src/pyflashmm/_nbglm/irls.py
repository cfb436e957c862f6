"""The NB GLM of a gene block at fixed dispersions (DESeq2's ``fitNbinomGLMs`` without a β prior).

Model (gene i, sample j): y_ij ~ NB(μ_ij, α_i), ln μ_ij = ln s_j + x_jᵀβ_i. β is fitted on the
natural-log scale by ridge-penalised IRLS (``_kernels.nb_irls``), λ = 1e-6 on the log2 scale
(λ/ln²2 on the natural scale), μ floored at ``minmu``. Genes whose IRLS did not converge, gave
NaN coefficients or a non-positive coefficient variance are refitted by L-BFGS-B on the log2
scale within [−30, 30] (DESeq2's ``optim`` fallback); their means and log-likelihoods then use
μ floored at ``minmu`` and their hat diagonals stay those of the IRLS, as in DESeq2.

An intercept-only design has the closed form β = ln(base mean), Σ = 1/Σ_j w_j (DESeq2's
shortcut, which does not floor μ).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats
from scipy.special import gammaln

from pyflashmm._kernels import nb_irls as _ki
from pyflashmm._kernels.nb_density import nb_logpdf
from pyflashmm._kernels.nb_layout import FittedRows
from pyflashmm._nbglm.count_block import CountBlock
from pyflashmm._nbglm.layout import DesignLayout

LN2 = math.log(2.0)
#: ridge on the log2-scale coefficients (DESeq2's default without a β prior)
LAMBDA_LOG2 = 1e-6
#: IRLS convergence: relative change of the deviance, and the iteration limit
BETA_TOL = 1e-8
MAXIT = 100


@dataclass(frozen=True)
class GlmBlockFit:
    """The GLM fit of a gene block (G genes, p coefficients).

    Attributes
    ----------
    beta : ndarray, G × p
        Coefficients on the natural-log scale.
    sigma : ndarray, G × p × p
        Their covariance (XᵀWX+Λ)⁻¹ XᵀWX (XᵀWX+Λ)⁻¹ (NaN when XᵀWX+Λ is not positive definite).
    fitted : FittedRows
        Means, weight means and hat factors per design row (for Cook's distances).
    converged : ndarray of bool, G
        IRLS converged, or the L-BFGS-B fallback succeeded.
    fallback : ndarray of bool, G
        Refitted by L-BFGS-B.
    """

    beta: np.ndarray
    sigma: np.ndarray
    fitted: FittedRows
    converged: np.ndarray
    fallback: np.ndarray


def ridge(p: int) -> np.ndarray:
    """The ridge λ (natural-log scale) of each of the p coefficients."""
    return np.full(p, LAMBDA_LOG2 / LN2**2)


def fit_glm(blk: CountBlock, sf, layout: DesignLayout, classes, alpha, *, minmu=0.5) -> GlmBlockFit:
    """The GLM of every gene of ``blk`` at dispersions ``alpha`` (module docstring);
    ``classes`` are the sample classes of ``sf`` and ``layout``."""
    G = blk.shape[0]
    p = layout.p
    sf = np.ascontiguousarray(sf, dtype=np.float64)
    alpha = np.ascontiguousarray(alpha, dtype=np.float64)
    if layout.intercept_only:
        bm, xtwx = _ki.intercept_fit(blk.csr, sf, alpha)
        row_mu = bm[:, None].copy()
        fitted = FittedRows(row_mu, row_mu, (1.0 / xtwx)[:, None], 0.0)
        return GlmBlockFit(
            np.log(bm)[:, None],
            (1.0 / xtwx)[:, None, None],
            fitted,
            np.ones(G, bool),
            np.zeros(G, bool),
        )
    irls = _ki.Irls(ridge(p), float(minmu), BETA_TOL, MAXIT)
    beta, sigma, it, row_mu, row_wmu, row_hat = _ki.fit_beta(
        blk.csr, sf, layout.rows, classes, alpha, layout.start, irls
    )
    var = np.diagonal(sigma, axis1=1, axis2=2)
    stable = ~np.isnan(beta).any(axis=1)
    conv = it < MAXIT
    rows = np.flatnonzero(~conv | ~stable | ~(var > 0).all(axis=1))
    fallback = np.zeros(G, bool)
    fallback[rows] = True
    X, Xr, lab = layout.X, layout.rows.Xr, layout.rows.lab
    lam = irls.lam
    for i in rows:
        y = blk.rows(i)[0]
        beta[i], conv[i] = _optim_fallback(y, sf, layout, alpha[i], beta[i], stable[i])
        row_mu[i] = np.exp(Xr @ beta[i])  # the hat diagonals stay those of the IRLS
        mf = np.maximum(sf * row_mu[i][lab], minmu)
        w = 1.0 / (1.0 / mf + alpha[i])
        xtwx = (X * w[:, None]).T @ X
        ainv = np.linalg.inv(xtwx + np.diag(lam))
        sigma[i] = ainv @ xtwx @ ainv
    fitted = FittedRows(row_mu, row_wmu, row_hat, float(minmu))
    return GlmBlockFit(beta, sigma, fitted, conv, fallback)


def fit_means(blk: CountBlock, sf, layout: DesignLayout, classes, alpha, *, minmu):
    """The means of the GLM of every gene of ``blk`` at dispersions ``alpha``, as
    :func:`fit_glm` fits them but without covariances (the reduced model of a
    likelihood-ratio test). Returns (row means G×R, fallback G)."""
    G = blk.shape[0]
    sf = np.ascontiguousarray(sf, dtype=np.float64)
    alpha = np.ascontiguousarray(alpha, dtype=np.float64)
    if layout.p == 0:  # μ_j = s_j
        return np.ones((G, 1)), np.zeros(G, bool)
    if layout.intercept_only:
        bm, _ = _ki.intercept_fit(blk.csr, sf, alpha)
        return bm[:, None].copy(), np.zeros(G, bool)
    irls = _ki.Irls(ridge(layout.p), float(minmu), BETA_TOL, MAXIT)
    beta, it, var_ok, row_mu = _ki.fit_beta_means(
        blk.csr, sf, layout.rows, classes, alpha, layout.start, irls
    )
    stable = ~np.isnan(beta).any(axis=1)
    rows = np.flatnonzero((it >= MAXIT) | ~stable | ~var_ok)
    fallback = np.zeros(G, bool)
    fallback[rows] = True
    for i in rows:
        b, _ = _optim_fallback(blk.rows(i)[0], sf, layout, alpha[i], beta[i], stable[i])
        row_mu[i] = np.exp(layout.rows.Xr @ b)
    return row_mu, fallback


def row_means_of(layout: DesignLayout, beta, fallback) -> np.ndarray:
    """The per-row means exp(x_rᵀβ) (G × R) of coefficients fitted by :func:`fit_glm`, bit for
    bit as the fit computed them (the kernel's sums for IRLS genes, NumPy's for the genes of
    the L-BFGS-B fallback)."""
    Xr = layout.rows.Xr
    row_mu = _ki.design_row_means(Xr, np.ascontiguousarray(beta, dtype=np.float64))
    for i in np.flatnonzero(fallback):
        row_mu[i] = np.exp(Xr @ beta[i])
    return row_mu


def loglik(blk: CountBlock, sf, layout: DesignLayout, classes, row_mu, fallback, alpha, *, minmu):
    """Σ_j ln f(y_ij; μ_ij, α_i) of every gene of ``blk`` with μ_ij = s_j·row_mu[i, lab_j]
    (``classes`` the sample classes of ``sf`` and ``layout``); for the genes of the L-BFGS-B
    fallback μ is floored at ``minmu`` (as DESeq2 does)."""
    sf = np.ascontiguousarray(sf, dtype=np.float64)
    alpha = np.ascontiguousarray(alpha, dtype=np.float64)
    ll = _ki.nb_loglik(blk.csr, classes, np.ascontiguousarray(row_mu), alpha)
    lab = layout.rows.lab
    for i in np.flatnonzero(fallback):
        y = blk.rows(i)[0]
        mf = np.maximum(sf * row_mu[i][lab], minmu)
        ll[i] = sum(nb_logpdf(y[j], mf[j], alpha[i]) for j in range(y.size))
    return ll


def _optim_fallback(y, sf, layout: DesignLayout, alpha, beta, stable):
    """The L-BFGS-B refit of one gene from its IRLS coefficients when they are finite and
    within ±30 on the log2 scale, else from the least-squares start; returns (β, success)."""
    lab = layout.rows.lab
    b_log2 = beta / LN2
    if stable and np.all(np.abs(b_log2) < 30):
        start = b_log2
    else:
        start = layout.start @ np.bincount(
            lab, weights=np.log(y / sf + 0.1), minlength=layout.n_rows
        )
    res = _optim_row(y, sf, layout.X, alpha, start, LAMBDA_LOG2)
    return res.x * LN2, res.success


def _optim_row(y, sf, X, alpha, start, lam_log2):
    """L-BFGS-B on the log2-scale coefficients within [−30, 30] (DESeq2's fallback)."""
    r = 1.0 / alpha
    sd = math.sqrt(1.0 / lam_log2)

    def fn(b):
        eta = X @ b * LN2
        mu = sf * np.exp(eta)
        ll = np.sum(
            gammaln(y + r)
            - gammaln(r)
            - gammaln(y + 1)
            + r * np.log(r / (r + mu))
            + y * np.log(mu / (r + mu))
        )
        lp = np.sum(stats.norm.logpdf(b, 0, sd))
        val = -(ll + lp)
        grad_ll = X.T @ ((y - mu) * r / (r + mu)) * LN2
        grad = -(grad_ll - b / sd**2)
        if not np.isfinite(val):
            return 1e300, np.zeros_like(b)
        return val, grad

    return optimize.minimize(
        fn, np.asarray(start, float), jac=True, method="L-BFGS-B", bounds=[(-30, 30)] * X.shape[1]
    )
