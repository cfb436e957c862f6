"""The negative-binomial density and the Cox–Reid log posterior of its dispersion.

Notation (one gene; samples j = 1..m, coefficients k = 1..p): counts ``y``, means ``mu``,
design ``X`` (m×p), dispersion α (Var = μ + αμ²), ``a`` = ln α, r = 1/α the NB size.

* NB log density ln f(y; μ, α) = lnΓ(y+r) − lnΓ(r) − lnΓ(y+1) + r ln(r/(r+μ)) + y ln(μ/(r+μ)).
* Cox–Reid adjusted log posterior of a (the objective of the dispersion estimates):
  lp(a) = Σ_j [lnΓ(y_j+r) − lnΓ(r) − y_j ln(μ_j+r) − r ln(1+αμ_j)] − ½ ln det(XᵀWX)
  − (a − a₀)²/(2σ²) (the prior term only for the MAP step), W = diag(1/(1/μ_j + α));
  d/da [−½ ln det B] = −½ α tr(B⁻¹ dB/dα) with dB/dα = Xᵀ diag(−w_j²) X.
* Over the distinct non-zero counts v_k (multiplicities c_k, see ``nb_layout``):
  Σ_j [lnΓ(y_j+r) − lnΓ(r)] = Σ_k c_k[lnΓ(v_k+r) − lnΓ(r)] = Σ_{i<v_max} N_i ln(r+i) and
  Σ_j [ψ(r) − ψ(y_j+r)] = −Σ_{i<v_max} N_i/(r+i) (lnΓ(v+r) = lnΓ(r) + Σ_{i<v} ln(r+i),
  ψ(v+r) = ψ(r) + Σ_{i<v} 1/(r+i)): no cancellation between lnΓ(v_k+r) and lnΓ(r) when r is
  large, and vectorised logarithms or divisions instead of lnΓ or ψ calls.
"""

from __future__ import annotations

import math

import numpy as np

from pyflashmm._jit import njit
from pyflashmm._kernels.linalg import cholesky_inverse, cholesky_lower
from pyflashmm._kernels.vecmath import log_vec


@njit
def digamma(x):
    """ψ(x) for x > 0: upward recurrence to x ≥ 6, then the asymptotic series."""
    res = 0.0
    while x < 6.0:
        res -= 1.0 / x
        x += 1.0
    f = 1.0 / (x * x)
    t = f * (
        -1.0 / 12.0
        + f
        * (
            1.0 / 120.0
            + f * (-1.0 / 252.0 + f * (1.0 / 240.0 + f * (-1.0 / 132.0 + f * (691.0 / 32760.0))))
        )
    )
    return res + math.log(x) - 0.5 / x + t


@njit
def trigamma(x):
    """ψ′(x) for x > 0: upward recurrence to x ≥ 6, then the asymptotic series."""
    res = 0.0
    while x < 6.0:
        res += 1.0 / (x * x)
        x += 1.0
    f = 1.0 / (x * x)
    t = (
        1.0 / x
        + 0.5 * f
        + (1.0 / x) * f * (1.0 / 6.0 + f * (-1.0 / 30.0 + f * (1.0 / 42.0 + f * (-1.0 / 30.0))))
    )
    return res + t


@njit
def small_alpha_part(y, mu, r):
    """Σ_{k<y} ln(1 + (k − μ)/(r + μ)) + y ln μ: ln Γ(y + r) − ln Γ(r) + y ln(μ/(r + μ)) for a
    small integer y and a large size r = 1/α, where the difference of ln Γ would cancel."""
    acc = 0.0
    k = 0.0
    while k < y:
        acc += math.log1p((k - mu) / (r + mu))
        k += 1.0
    return acc + y * math.log(mu)


@njit
def cox_reid_term(B, L):
    """−½ ln|B| of a positive definite B (Cholesky factor written to L), −inf otherwise: the
    Cox–Reid adjustment with B = XᵀWX."""
    if not cholesky_lower(B, L):
        return -np.inf
    ld = 0.0
    for k in range(B.shape[0]):
        ld += 2.0 * math.log(L[k, k])
    return -0.5 * ld


@njit
def nb_logpdf(y, mu, alpha):
    """ln f(y; μ, α) of the NB distribution (Var = μ + αμ²), accurate for small α."""
    r = 1.0 / alpha
    if mu <= 0.0:
        return 0.0 if y == 0.0 else -np.inf
    tail = r * math.log1p(-mu / (r + mu))
    if y == 0.0:
        return tail
    if r > 1e4 and y < 64.0 and y == math.floor(y):
        return small_alpha_part(y, mu, r) - math.lgamma(y + 1.0) + tail
    return (
        math.lgamma(y + r)
        - math.lgamma(r)
        - math.lgamma(y + 1.0)
        + y * (math.log(mu) - math.log(r + mu))
        + tail
    )


@njit
def xtwx(X, w, B):
    """B = Xᵀ diag(w) X (X m×p)."""
    m, p = X.shape
    for a in range(p):
        for b in range(a + 1):
            s = 0.0
            for j in range(m):
                s += X[j, a] * w[j] * X[j, b]
            B[a, b] = s
            B[b, a] = s


@njit
def xtwx_rows(Xr, wsum, B):
    """B = Σ_r wsum_r x_r x_rᵀ over the distinct design rows x_r (Xr R×p)."""
    R, p = Xr.shape
    for a in range(p):
        for b in range(a + 1):
            s = 0.0
            for r in range(R):
                s += Xr[r, a] * wsum[r] * Xr[r, b]
            B[a, b] = s
            B[b, a] = s


@njit
def cox_reid_derivative(B, dB, L, Binv):
    """−½ tr(B⁻¹ dB): the derivative of the Cox–Reid term −½ ln det B (B = XᵀWX, dB its
    derivative in the dispersion); NaN when B is not positive definite."""
    if not cholesky_lower(B, L):
        return np.nan
    cholesky_inverse(L, Binv)
    p = B.shape[0]
    tr = 0.0
    for i in range(p):
        for k in range(p):
            tr += Binv[i, k] * dB[k, i]
    return -0.5 * tr


@njit
def log_posterior(a, y, mu, X, prior_mean, prior_var, use_prior, use_cr, w, B, L):
    """lp(a) of one gene, summed sample by sample (module notation); ``w``, ``B``, ``L`` are
    work arrays (m, p×p, p×p). The line search uses the compressed form of
    ``nb_dispersion``; this one polishes the estimates of ``exact_dispersion``."""
    m = y.shape[0]
    alpha = math.exp(a)
    r = 1.0 / alpha
    lgr = math.lgamma(r)
    ll = 0.0
    for j in range(m):
        yj = y[j]
        term = -r * math.log(1.0 + mu[j] * alpha)
        if yj != 0.0:
            term = math.lgamma(yj + r) - lgr - yj * math.log(mu[j] + r) + term
        ll += term
    cr = 0.0
    if use_cr:
        for j in range(m):
            w[j] = 1.0 / (1.0 / mu[j] + alpha)
        xtwx(X, w, B)
        cr = cox_reid_term(B, L)
        if cr == -np.inf:
            return cr
    prior = 0.0
    if use_prior:
        prior = -0.5 * (a - prior_mean) ** 2 / prior_var
    return ll + prior + cr


@njit
def lgamma_sum(r, K, vals, cnts, surv, tb):
    """Σ_k c_k[lnΓ(v_k + r) − lnΓ(r)] over the count table (vals, cnts)[:K]; term by term over
    the survival counts ``surv`` (N_i) when it is not empty (or the gene has no non-zero
    count), with ``tb`` as scratch."""
    V = surv.shape[0]
    if V > 0 or K == 0:
        for i in range(V):  # vectorised
            tb[i] = log_vec(r + i)
        t = 0.0
        for i in range(V):
            t += surv[i] * tb[i]
        return t
    lgr = math.lgamma(r)
    t = 0.0
    for k in range(K):
        t += cnts[k] * (math.lgamma(vals[k] + r) - lgr)
    return t


@njit
def digamma_sum(r, K, vals, cnts, surv, tb):
    """Σ_k c_k[ψ(r) − ψ(v_k + r)], term by term as in :func:`lgamma_sum`."""
    V = surv.shape[0]
    if V > 0 or K == 0:
        for i in range(V):  # vectorised
            tb[i] = 1.0 / (r + i)
        t = 0.0
        for i in range(V):
            t -= surv[i] * tb[i]
        return t
    psr = digamma(r)
    t = 0.0
    for k in range(K):
        t += cnts[k] * (psr - digamma(vals[k] + r))
    return t
