"""Numba kernels: per-gene Fisher scoring for the LMM y = Xβ + Σₖ Zₖbₖ + ε from summary statistics.

Notation (all per gene unless shared)
-------------------------------------
θ = (σ₁², …, σ_K², σ²): variance components, residual last; γₖ = σₖ²/σ²; D = diag(γ) expanded
over the q random-effect columns (``dvec``); V = σ²(Iₙ + Z D Zᵀ).
A = (XᵀX)⁻¹; R = I − X A Xᵀ. Shared: S = ZᵀRZ = ZZ − ZX A ZXᵀ (q×q). Per gene: u = ZᵀRy (q),
yRy = yᵀRy. P = V⁻¹ − V⁻¹X(XᵀV⁻¹X)⁻¹XᵀV⁻¹ (the REML projection).

With W = S^{1/2} and B = I + W D W (PD iff the REML criterion is defined),
T = (I + S D)⁻¹S = W B⁻¹ W (symmetric) and a = (I + S D)⁻¹u = u − T D u:

* ZᵀPy = a/σ², ZᵀPZ = T/σ², σ²·yᵀPy = yRy − uᵀDa, σ⁴·yᵀP²y = yRy − 2uᵀDa + (Da)ᵀS(Da).

REML uses the trace matrix T_t = T and n_eff = n − p; ML uses T_t built from ZZ instead of S
(traces of V⁻¹ rather than P) and n_eff = n. With M = I − D T_t:

* score  gₖ = ½(‖aₖ‖²/σ⁴ − tr T_t,kk/σ²),  g₀ = ½(σ⁴yᵀP²y/σ⁴ − (n_eff − tr D T_t)/σ²)
* expected information  I_kl = ½‖T_t,kl‖²_F/σ⁴,  I_k0 = ½ tr(T_t M)_kk/σ⁴,
  I_00 = ½(n_eff − 2 tr D T_t + tr (D T_t)²)/σ⁴
* log-likelihood on lme4's scale
  REML: −½[(n−p) log 2πσ² + log|XᵀX| + log|I + D S| + σ²yᵀPy/σ²]
  ML:   −½[n log 2πσ² + log|I + D ZZ| + σ²yᵀPy/σ²]

K = 1 fast path: S = U diag(λ) Uᵀ and ZZ = Q diag(μ) Qᵀ once for all genes; with w = Uᵀu every
quantity above is a sum over q eigenvalues, so an iteration costs O(q) per gene.

Optimiser: Fisher scoring θ ← θ + t·I⁻¹g, with t halved until the log-likelihood does not
decrease and V stays positive definite (σ² > 0 and I + D ZZ ≻ 0); with ``nonneg`` the σₖ² are
projected onto [0, ∞) and a component held at 0 with a negative score counts as converged.
Converged means max |g| < tol on the absolute scale of θ (FLASHMM's criterion) and a Fisher
decrement gᵀI⁻¹g < 1e-12 (scale-free: y on a large scale gives a small score long before the
optimum). Negative
components can put the maximum on the edge of the region where V is PD (REML: the criterion is
finite there when λ_max(S) < λ_max(ZZ); ML: the likelihood is unbounded there); such genes stop
with status PD_BOUNDARY at the last PD iterate and are not counted as converged.
"""

from __future__ import annotations

import numpy as np

from pyflashmm._jit import njit, prange
from pyflashmm._kernels.linalg import (
    cholesky_inverse,
    cholesky_logdet,
    cholesky_lower,
    forward_substitute,
)
from pyflashmm._status import (
    BOUNDARY,
    LINE_SEARCH_FAILED,
    MAX_ITER,
    NOT_POSITIVE_DEFINITE,
    OK,
    PD_BOUNDARY,
    SINGULAR_INFORMATION,
    ZERO_VARIANCE,
)

_LOG_2PI = np.log(2.0 * np.pi)
_MAX_HALVINGS = 40
#: relative distance to the edge of the positive-definite region that counts as "on the edge"
_EDGE = 1e-6
#: largest Fisher decrement gᵀI⁻¹g (log-likelihood units) at convergence
_DECREMENT_TOL = 1e-12


@njit
def _solve_small(A, b, out):
    """Solve the small symmetric system A x = b (Gaussian elimination, partial pivoting).

    Returns False if A is singular to working precision.
    """
    m = A.shape[0]
    M = A.copy()
    x = b.copy()
    scale = 0.0
    for i in range(m):
        scale = max(scale, abs(M[i, i]))
    if not scale > 0.0:
        return False
    for c in range(m):
        piv = c
        for r in range(c + 1, m):
            if abs(M[r, c]) > abs(M[piv, c]):
                piv = r
        if not abs(M[piv, c]) > 1e-14 * scale:
            return False
        if piv != c:
            for k in range(m):
                M[c, k], M[piv, k] = M[piv, k], M[c, k]
            x[c], x[piv] = x[piv], x[c]
        for r in range(c + 1, m):
            f = M[r, c] / M[c, c]
            for k in range(c, m):
                M[r, k] -= f * M[c, k]
            x[r] -= f * x[c]
    for r in range(m - 1, -1, -1):
        t = x[r]
        for k in range(r + 1, m):
            t -= M[r, k] * out[k]
        out[r] = t / M[r, r]
    return True


@njit
def _held_at_zero(theta, score, k, nonneg):
    """σₖ² is held at its bound 0 (nonneg) because its score points below 0."""
    return nonneg and k < theta.shape[0] - 1 and theta[k] == 0.0 and score[k] <= 0.0


@njit
def _fisher_step(theta, score, info, nonneg, step):
    """Fisher-scoring direction I⁻¹g on the free components; held components get 0.

    With ``nonneg``, components at 0 whose score is ≤ 0 are fixed (active set), and the system
    is solved for the others only: the full step's other entries assume the held ones go
    negative, so projecting it afterwards would not improve the likelihood.
    """
    K1 = theta.shape[0]
    free = np.empty(K1, dtype=np.int64)
    m = 0
    for k in range(K1):
        step[k] = 0.0
        if not _held_at_zero(theta, score, k, nonneg):
            free[m] = k
            m += 1
    A = np.empty((m, m))
    b = np.empty(m)
    x = np.empty(m)
    for i in range(m):
        b[i] = score[free[i]]
        for j in range(m):
            A[i, j] = info[free[i], free[j]]
    if not _solve_small(A, b, x):
        return False
    for i in range(m):
        step[free[i]] = x[i]
    return True


@njit
def _converged(theta, score, step, stepped, tol, nonneg):
    """max |g| < tol (a σₖ² held at 0 by ``nonneg`` with its score below 0 excepted), and the
    Fisher decrement gᵀI⁻¹g = gᵀ·step below _DECREMENT_TOL.

    The first condition is FLASHMM's; it depends on the scale of y (the score scales as 1/σ⁴),
    so the second, scale-free one (≈ twice the log-likelihood still to gain) keeps data on a
    large scale from stopping early.
    """
    K1 = theta.shape[0]
    at_bound = False
    decrement = 0.0
    for k in range(K1):
        g = score[k]
        if _held_at_zero(theta, score, k, nonneg):
            at_bound = True
            continue
        if not abs(g) < tol:
            return False, at_bound
        decrement += g * step[k]
    if stepped and not decrement < _DECREMENT_TOL:
        return False, at_bound
    return True, at_bound


# --------------------------------------------------------------------------------------------
# K = 1 fast path
# --------------------------------------------------------------------------------------------


@njit
def _k1_eval(s1, s0, w, yRy, lam, mu_t, n_eff, ll_const, score, info):
    """Log-likelihood, score and information for K = 1 at θ = (s1, s0); O(q).

    ``lam``: eigenvalues of S (quadratic terms); ``mu_t``: eigenvalues of the trace matrix
    (S for REML, ZZ for ML); ``ll_const`` is n_eff·log 2π (+ log|XᵀX| for REML).
    """
    gam = s1 / s0
    norm_a = 0.0
    uDa = 0.0
    aDSDa = 0.0
    for j in range(lam.shape[0]):
        den = 1.0 + gam * lam[j]
        w2 = w[j] * w[j]
        norm_a += w2 / (den * den)
        uDa += gam * w2 / den
        aDSDa += gam * gam * lam[j] * w2 / (den * den)
    trT = 0.0
    trT2 = 0.0
    trTM = 0.0
    logdet = 0.0
    for j in range(mu_t.shape[0]):
        den = 1.0 + gam * mu_t[j]
        t = mu_t[j] / den
        trT += t
        trT2 += t * t
        trTM += t / den
        logdet += np.log(den)
    quad1 = yRy - uDa
    quad2 = yRy - 2.0 * uDa + aDSDa
    s02 = s0 * s0
    score[0] = 0.5 * (norm_a / s02 - trT / s0)
    score[1] = 0.5 * (quad2 / s02 - (n_eff - gam * trT) / s0)
    info[0, 0] = 0.5 * trT2 / s02
    info[0, 1] = 0.5 * trTM / s02
    info[1, 0] = info[0, 1]
    info[1, 1] = 0.5 * (n_eff - 2.0 * gam * trT + gam * gam * trT2) / s02
    return -0.5 * (ll_const + n_eff * np.log(s0) + logdet + quad1 / s0)


@njit
def _k1_valid(s1, s0, mu_max):
    """V ≻ 0 for K = 1: σ² > 0 and 1 + γ·λ_max(ZZ) > 0."""
    if not s0 > 0.0:
        return False
    gam = s1 / s0
    return gam >= 0.0 or 1.0 + gam * mu_max > 0.0


@njit(parallel=True)
def fit_k1(
    W, yRy, lam, mu_t, mu_max, n_eff, ll_const, theta0, max_iter, tol, nonneg, zero_tol, Ynorm
):
    """Fisher scoring for all genes, one random-effect block (see the module docstring).

    Parameters: ``W`` G×q rotated ZᵀRy (w = Uᵀu per gene); ``yRy`` (G); ``theta0`` G×2 start.
    Returns theta (G×2), score (G×2), info (G×2×2), loglik (G), niter (G), status (G).
    """
    G = W.shape[0]
    theta = np.full((G, 2), np.nan)
    score = np.full((G, 2), np.nan)
    info = np.full((G, 2, 2), np.nan)
    loglik = np.full(G, np.nan)
    niter = np.zeros(G, dtype=np.int64)
    status = np.zeros(G, dtype=np.int64)
    for g in prange(G):
        if not yRy[g] > zero_tol * max(Ynorm[g], 1e-300):
            status[g] = ZERO_VARIANCE
            continue
        th = theta0[g].copy()
        if nonneg and th[0] < 0.0:
            th[0] = 0.0
        if not _k1_valid(th[0], th[1], mu_max):
            status[g] = NOT_POSITIVE_DEFINITE
            continue
        sc = np.empty(2)
        fim = np.empty((2, 2))
        ll = _k1_eval(th[0], th[1], W[g], yRy[g], lam, mu_t, n_eff, ll_const, sc, fim)
        st = MAX_ITER
        it = 0
        step = np.empty(2)
        trial = np.empty(2)
        sc_new = np.empty(2)
        fim_new = np.empty((2, 2))
        while True:
            stepped = _fisher_step(th, sc, fim, nonneg, step)
            conv, at_bound = _converged(th, sc, step, stepped, tol, nonneg)
            if conv:
                st = BOUNDARY if at_bound else OK
                break
            if it >= max_iter:
                st = MAX_ITER
                break
            it += 1
            if not stepped:
                edge = th[0] < 0.0 and 1.0 + th[0] / th[1] * mu_max < _EDGE
                st = PD_BOUNDARY if edge else SINGULAR_INFORMATION
                break
            t = 1.0
            accepted = False
            left_pd = False
            for _ in range(_MAX_HALVINGS):
                trial[0] = th[0] + t * step[0]
                trial[1] = th[1] + t * step[1]
                if nonneg and trial[0] < 0.0:
                    trial[0] = 0.0
                if _k1_valid(trial[0], trial[1], mu_max):
                    ll_new = _k1_eval(
                        trial[0],
                        trial[1],
                        W[g],
                        yRy[g],
                        lam,
                        mu_t,
                        n_eff,
                        ll_const,
                        sc_new,
                        fim_new,
                    )
                    if ll_new >= ll - 1e-12 * abs(ll):
                        accepted = True
                        break
                else:
                    left_pd = True
                t *= 0.5
            if not accepted:
                st = PD_BOUNDARY if left_pd else LINE_SEARCH_FAILED
                break
            th[0] = trial[0]
            th[1] = trial[1]
            ll = ll_new
            sc[0] = sc_new[0]
            sc[1] = sc_new[1]
            fim[:, :] = fim_new
        theta[g] = th
        score[g] = sc
        info[g] = fim
        loglik[g] = ll
        niter[g] = it
        status[g] = st
    return theta, score, info, loglik, niter, status


@njit
def _finish_fixed_effects(C, rhs, sigma2, g, coef, cov, se, store_cov):
    """From C (lower triangle) and the right-hand side: β̂ = C⁻¹rhs, Cov = σ²C⁻¹, se.

    Returns False when C is not positive definite.
    """
    p = C.shape[0]
    L = np.zeros((p, p))
    if not cholesky_lower(C, L):
        return False
    Ci = np.empty((p, p))
    cholesky_inverse(L, Ci)
    for a in range(p):
        t = 0.0
        for b in range(p):
            t += Ci[a, b] * rhs[b]
        coef[g, a] = t
        se[g, a] = np.sqrt(sigma2 * Ci[a, a])
    if store_cov:
        for a in range(p):
            for b in range(p):
                cov[g, a, b] = sigma2 * Ci[a, b]
    return True


@njit(parallel=True)
def fixed_effects_from_C(C, XX, rhs, sigma2, ok, coef, se, bad):
    """In place over a block of genes: C holds XX − σ²XᵀV⁻¹X (b×p×p) and becomes Cov(β̂).

    First C ← XX − C = σ²XᵀV⁻¹X, then Cov(β̂) = σ²C⁻¹ overwrites it.

    ``rhs`` (b×p) is XᵀV⁻¹y·σ²; writes β̂ = C⁻¹rhs into ``coef`` and √diag Cov into ``se``;
    ``bad`` is set where C is not positive definite (C is then overwritten with NaN).
    """
    nb, p, _ = C.shape
    for g in prange(nb):
        if not ok[g]:
            C[g] = np.nan
            continue
        Ci = C[g]
        for a in range(p):
            for b in range(p):
                Ci[a, b] = XX[a, b] - Ci[a, b]
        L = np.zeros((p, p))
        if not cholesky_lower(Ci, L):
            bad[g] = 1
            C[g] = np.nan
            continue
        cholesky_inverse(L, Ci)
        s2 = sigma2[g]
        for a in range(p):
            t = 0.0
            for b in range(p):
                t += Ci[a, b] * rhs[g, b]
            coef[g, a] = t
        for a in range(p):
            for b in range(p):
                Ci[a, b] *= s2
            se[g, a] = np.sqrt(Ci[a, a])


# --------------------------------------------------------------------------------------------
# General path: any number K of blocks
# --------------------------------------------------------------------------------------------


@njit
def _expand(theta, blocks, dvec):
    s0 = theta[theta.shape[0] - 1]
    for j in range(dvec.shape[0]):
        dvec[j] = theta[blocks[j]] / s0


@njit
def _solve_T(Wm, dvec):
    """T = W B⁻¹ W with B = I + W D W, and log|B|; (ok, T, logdet)."""
    q = Wm.shape[0]
    B = (Wm * dvec[None, :]) @ Wm
    for j in range(q):
        B[j, j] += 1.0
    L = np.zeros((q, q))
    if not cholesky_lower(B, L):
        return False, B, 0.0
    X = Wm.copy()
    forward_substitute(L, X)  # X = L⁻¹W
    T = X.T @ X
    return True, T, cholesky_logdet(L)


@njit
def gene_T(theta, blocks, Wm):
    """For one gene at θ: (ok, T = W B⁻¹ W, dvec) with B = I + W D W, D = diag(θₖ/σ²).

    ok is False when θ is not finite, σ² ≤ 0 or B is not positive definite.
    """
    q = blocks.shape[0]
    dvec = np.empty(q)
    K = theta.shape[0] - 1
    if not (np.isfinite(theta).all() and theta[K] > 0.0):
        return False, np.empty((q, q)), dvec
    _expand(theta, blocks, dvec)
    ok, T, _ = _solve_T(Wm, dvec)
    return ok, T, dvec


@njit
def _v_positive_definite(Wz, dvec):
    for j in range(dvec.shape[0]):
        if dvec[j] < 0.0:
            ok, _, _ = _solve_T(Wz, dvec)
            return ok
    return True


@njit
def _near_pd_edge(theta, blocks, Wz):
    """V is PD at θ but not when its negative components grow by the relative margin _EDGE."""
    q = blocks.shape[0]
    dvec = np.empty(q)
    _expand(theta, blocks, dvec)
    any_negative = False
    for j in range(q):
        if dvec[j] < 0.0:
            dvec[j] *= 1.0 + _EDGE
            any_negative = True
    return any_negative and not _v_positive_definite(Wz, dvec)


@njit
def _general_eval(theta, blocks, K, u, yRy, S, Ws, Wz, reml, n_eff, ll_const, score, info):
    """Log-likelihood, score and information at θ for any K; returns (ok, loglik)."""
    q = u.shape[0]
    K1 = K + 1
    s0 = theta[K]
    if not s0 > 0.0:
        return False, np.nan
    dvec = np.empty(q)
    _expand(theta, blocks, dvec)
    if not _v_positive_definite(Wz, dvec):
        return False, np.nan
    ok, T, logdet_s = _solve_T(Ws, dvec)
    if not ok:
        return False, np.nan
    Du = dvec * u
    a = u - T @ Du
    Da = dvec * a
    uDa = 0.0
    for j in range(q):
        uDa += u[j] * Da[j]
    aDSDa = Da @ (S @ Da)
    quad1 = yRy - uDa
    quad2 = yRy - 2.0 * uDa + aDSDa
    if reml:
        Tt = T
        logdet = logdet_s
    else:
        ok, Tt, logdet = _solve_T(Wz, dvec)
        if not ok:
            return False, np.nan
    s02 = s0 * s0
    for k in range(K1):
        score[k] = 0.0
        for m in range(K1):
            info[k, m] = 0.0
    trDT = 0.0
    trDTDT = 0.0
    for i in range(q):
        ki = blocks[i]
        score[ki] += 0.5 * (a[i] * a[i] / s02 - Tt[i, i] / s0)
        trDT += dvec[i] * Tt[i, i]
        tdt_ii = 0.0  # (T D T)_ii = Σ_j d_j T_ij²
        for j in range(q):
            t2 = Tt[i, j] * Tt[i, j]
            info[ki, blocks[j]] += 0.5 * t2 / s02
            tdt_ii += dvec[j] * t2
        info[ki, K] += 0.5 * (Tt[i, i] - tdt_ii) / s02
        trDTDT += dvec[i] * tdt_ii
    for k in range(K):
        info[K, k] = info[k, K]
    score[K] = 0.5 * (quad2 / s02 - (n_eff - trDT) / s0)
    info[K, K] = 0.5 * (n_eff - 2.0 * trDT + trDTDT) / s02
    ll = -0.5 * (ll_const + n_eff * np.log(s0) + logdet + quad1 / s0)
    return True, ll


@njit(parallel=True)
def fit_general(
    U,
    yRy,
    S,
    Ws,
    Wz,
    blocks,
    K,
    reml,
    n_eff,
    ll_const,
    theta0,
    max_iter,
    tol,
    nonneg,
    zero_tol,
    Ynorm,
):
    """Fisher scoring for all genes with K blocks; ``U`` is G×q ZᵀRy, ``blocks`` maps column→block.

    ``Ws`` = S^{1/2}, ``Wz`` = ZZ^{1/2}. Returns theta, score, info, loglik, niter, status.
    """
    G = U.shape[0]
    K1 = K + 1
    theta = np.full((G, K1), np.nan)
    score = np.full((G, K1), np.nan)
    info = np.full((G, K1, K1), np.nan)
    loglik = np.full(G, np.nan)
    niter = np.zeros(G, dtype=np.int64)
    status = np.zeros(G, dtype=np.int64)
    for g in prange(G):
        if not yRy[g] > zero_tol * max(Ynorm[g], 1e-300):
            status[g] = ZERO_VARIANCE
            continue
        th = theta0[g].copy()
        if nonneg:
            for k in range(K):
                th[k] = max(th[k], 0.0)
        sc = np.empty(K1)
        fim = np.empty((K1, K1))
        ok, ll = _general_eval(
            th, blocks, K, U[g], yRy[g], S, Ws, Wz, reml, n_eff, ll_const, sc, fim
        )
        if not ok:
            status[g] = NOT_POSITIVE_DEFINITE
            continue
        st = MAX_ITER
        it = 0
        step = np.empty(K1)
        trial = np.empty(K1)
        sc_new = np.empty(K1)
        fim_new = np.empty((K1, K1))
        while True:
            stepped = _fisher_step(th, sc, fim, nonneg, step)
            conv, at_bound = _converged(th, sc, step, stepped, tol, nonneg)
            if conv:
                st = BOUNDARY if at_bound else OK
                break
            if it >= max_iter:
                st = MAX_ITER
                break
            it += 1
            if not stepped:
                st = PD_BOUNDARY if _near_pd_edge(th, blocks, Wz) else SINGULAR_INFORMATION
                break
            t = 1.0
            accepted = False
            left_pd = False
            ll_new = np.nan
            for _ in range(_MAX_HALVINGS):
                for k in range(K1):
                    trial[k] = th[k] + t * step[k]
                if nonneg:
                    for k in range(K):
                        trial[k] = max(trial[k], 0.0)
                ok, ll_new = _general_eval(
                    trial,
                    blocks,
                    K,
                    U[g],
                    yRy[g],
                    S,
                    Ws,
                    Wz,
                    reml,
                    n_eff,
                    ll_const,
                    sc_new,
                    fim_new,
                )
                if ok and ll_new >= ll - 1e-12 * abs(ll):
                    accepted = True
                    break
                left_pd = left_pd or not ok
                t *= 0.5
            if not accepted:
                st = PD_BOUNDARY if left_pd else LINE_SEARCH_FAILED
                break
            th[:] = trial
            ll = ll_new
            sc[:] = sc_new
            fim[:, :] = fim_new
        theta[g] = th
        score[g] = sc
        info[g] = fim
        loglik[g] = ll
        niter[g] = it
        status[g] = st
    return theta, score, info, loglik, niter, status


@njit(parallel=True)
def fixed_effects_general(theta, ok, blocks, Wz, ZX, ZYt, XX, XYt, store_cov):
    """β̂, Cov(β̂) and se per gene for any K: C = XX − ZXᵀH ZX with H = D − D T_Z D."""
    G = theta.shape[0]
    p = XX.shape[0]
    q = ZX.shape[0]
    coef = np.full((G, p), np.nan)
    se = np.full((G, p), np.nan)
    cov = np.full((G if store_cov else 1, p, p), np.nan)
    bad = np.zeros(G, dtype=np.int64)
    for g in prange(G):
        if not ok[g]:
            continue
        dvec = np.empty(q)
        _expand(theta[g], blocks, dvec)
        okT, Tz, _ = _solve_T(Wz, dvec)
        if not okT:
            bad[g] = 1
            continue
        H = np.empty((q, q))
        for i in range(q):
            for j in range(q):
                H[i, j] = -dvec[i] * Tz[i, j] * dvec[j]
            H[i, i] += dvec[i]
        HZX = H @ ZX
        C = XX - ZX.T @ HZX
        rhs = XYt[g] - HZX.T @ ZYt[g]
        if not _finish_fixed_effects(C, rhs, theta[g, -1], g, coef, cov, se, store_cov):
            bad[g] = 1
    return coef, cov, se, bad


@njit(parallel=True)
def inverse_information_diagonal(info):
    """√diag(I⁻¹) per gene (the standard errors of θ̂); NaN where I is singular or NaN."""
    G, K1, _ = info.shape
    out = np.full((G, K1), np.nan)
    for g in prange(G):
        e = np.zeros(K1)
        x = np.empty(K1)
        for k in range(K1):
            e[:] = 0.0
            e[k] = 1.0
            if not _solve_small(info[g], e, x):
                break
            out[g, k] = np.sqrt(x[k]) if x[k] >= 0.0 else np.nan
    return out


@njit(parallel=True)
def evaluate_k1(theta, W, yRy, lam, mu_t, n_eff, ll_const):
    """Log-likelihood, score and information at given θ (G×2) for K = 1 (NaN where σ² ≤ 0)."""
    G = W.shape[0]
    loglik = np.full(G, np.nan)
    score = np.full((G, 2), np.nan)
    info = np.full((G, 2, 2), np.nan)
    for g in prange(G):
        if not theta[g, 1] > 0.0:
            continue
        sc = np.empty(2)
        fim = np.empty((2, 2))
        loglik[g] = _k1_eval(
            theta[g, 0], theta[g, 1], W[g], yRy[g], lam, mu_t, n_eff, ll_const, sc, fim
        )
        score[g] = sc
        info[g] = fim
    return loglik, score, info


@njit(parallel=True)
def evaluate_general(theta, U, yRy, S, Ws, Wz, blocks, K, reml, n_eff, ll_const):
    """Log-likelihood, score and information at given θ (G×(K+1)); NaN where V is not PD."""
    G = U.shape[0]
    K1 = K + 1
    loglik = np.full(G, np.nan)
    score = np.full((G, K1), np.nan)
    info = np.full((G, K1, K1), np.nan)
    for g in prange(G):
        sc = np.empty(K1)
        fim = np.empty((K1, K1))
        th = theta[g].copy()
        ok, ll = _general_eval(
            th, blocks, K, U[g], yRy[g], S, Ws, Wz, reml, n_eff, ll_const, sc, fim
        )
        if ok:
            loglik[g] = ll
            score[g] = sc
            info[g] = fim
    return loglik, score, info
