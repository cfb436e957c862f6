"""REML for the negative-binomial mixed model (glmmTMB's ``REML = TRUE``): the Laplace
approximation of the likelihood integrated over the fixed effects and the donor intercepts
together, maximised over the two variance parameters.

Notation as :mod:`pyflashmm._kernels.nbmm` (classes k of donor j, θ = 1/α, τ = ln σ²,
λ = ln θ, w_k = θμ_k(Sy_k + n_kθ)/(θ+μ_k)² the negative second η-derivative of a class's NB
log density).

* Joint log-density of u = (β, b_1 … b_J) with a flat prior on β:
  h(u) = Σ_j f_j(b_j; β) + C(θ), f_j the donor's class terms plus ln φ(b_j; 0, σ²), C the
  count-only constant Σ_{y>0}[lnΓ(y+θ) − lnΓ(θ) − lnΓ(y+1)].
* Its negative Hessian is an arrowhead: A = Σ_k w_k x_k x_kᵀ (p × p), H_j = Σ_{k∈j} w_k + 1/σ²
  (diagonal), coupling columns h_j = Σ_{k∈j} w_k x_k. With the Schur complement
  S = A − Σ_j h_j h_jᵀ / H_j, ln det(−∇²h) = Σ_j ln H_j + ln det S.
* REML log-likelihood (TMB's Laplace approximation of ∫ e^{h(u)} du, the objective glmmTMB
  maximises and reports as ``logLik`` with ``REML = TRUE``):
  ℓ_R(τ, λ) = h(û) + ((p + J)/2) ln 2π − ½ ln det(−∇²h(û)),
  û the joint mode. The per-donor ½ ln 2π cancels the prior's −½ ln 2π as in the ML kernel,
  so ℓ_R = C + Σ_j [f_j(b̂_j) + ½ ln 2π − ½ ln H_j] + (p/2) ln 2π − ½ ln det S: the ML Laplace
  terms evaluated at the joint mode, plus the β block's term.
* The joint mode: Newton on h over (β, b) with the arrowhead system solved by eliminating
  the donors (S, then each b_j; O(classes · p²) per step, one exp per class), gradient
  ∂h/∂β = Σ_k x_k r_k, ∂h/∂b_j = Σ_{k∈j} r_k − b_j/σ², r_k = θ(Sy_k − n_kμ_k)/(θ+μ_k). h is
  jointly concave (w_k > 0), so the steps with halving converge to the unique mode; warm
  starts (the ML fit, then the last mode) keep it to a few steps.
* Outer: Newton on (τ, λ) with the gradient and Hessian of ℓ_R by central differences of ℓ_R
  (step ``FD_STEP``; each evaluation warm-started from the centre's mode, and converged to
  rounding so that differences of ℓ_R are smooth). Levenberg damping when the Hessian is not
  negative definite, step halving until ℓ_R does not fall; τ held at ``TAU_MIN`` once it falls
  below ``TAU_SMALL`` (σ² → 0), or once a step below ``TAU_PROBE`` heads down and ℓ_R at
  ``TAU_MIN`` is no lower; λ likewise at ``LAM_MAX`` (``LAM_BIG``, ``LAM_PROBE``; α → 0);
  status ``boundary``.
* Covariance (as TMB's ``sdreport(getJointPrecision = TRUE)`` and glmmTMB's REML ``vcov``):
  V = (−∇²ℓ_R)⁻¹ in the free variance parameters; Cov(β̂) = S⁻¹ + D V Dᵀ, S⁻¹ the β block of
  (−∇²h)⁻¹ and D = dβ̂/d(τ, λ) the sensitivity of the inner mode (central differences, from the
  same evaluations as the Hessian); Cov(β̂, (τ, λ)) = D V. A held variance parameter has NaN
  rows and columns and contributes no term.
"""

from __future__ import annotations

import math

import numpy as np

from pyflashmm import _status
from pyflashmm._jit import njit, prange
from pyflashmm._kernels.linalg import cholesky_inverse, cholesky_lower, cholesky_solve_vector
from pyflashmm._kernels.nbmm import LOG_2PI, nz_terms
from pyflashmm._kernels.nbmm_newton import LAM_BIG, LAM_MAX, TAU_MIN, TAU_SMALL

#: absolute step in (τ, λ) of the central differences of ℓ_R: the truncation error (h² ℓ'''')
#: and the rounding error (ε|ℓ_R|/h²) of the second differences are both ≲ 1e-5 relative
FD_STEP = 5e-4
#: largest outer Newton step in τ or λ (a flat ℓ_R must not throw the start far off)
MAX_STEP = 3.0
#: start of τ when the ML fit holds σ² at 0 (REML's σ² is larger; the maximum may be interior)
TAU_START_MIN = -5.0
#: start of λ when the ML fit is near α → 0 (keeps the walk to the bound short but not zero)
LAM_START_MAX = 12.0
#: inner Newton iterations for the joint mode
INNER_MAX_ITER = 200
#: below this τ (σ² < 4.5e-5) a step that lowers τ further tries the bound TAU_MIN directly:
#: there ℓ_R's τ-derivative (∝ σ²) sinks under the rounding noise of its central difference,
#: so Newton would wander at σ² ~ 1e-9…1e-7 until max_iter instead of reaching TAU_SMALL
TAU_PROBE = -10.0
#: the same for λ (α < 4.5e-5) and its bound LAM_MAX
LAM_PROBE = 10.0


@njit
def _inner_pass(beta, b, tau, lam, Xc, lsc, ncl, sy, doff, eta0, S, g, gb, Hd, hc):
    """At u = (β, b): write ∇_β h to ``g``, ∂h/∂b_j to ``gb``, H_j to ``Hd``, the coupling
    columns h_j to ``hc`` (J × p) and the Schur complement S = A − Σ_j h_j h_jᵀ/H_j (both
    triangles) to ``S``; return (h − C, Σ_j ln H_j), h − C = Σ_j [class terms − b_j²/(2σ²)
    − τ/2] (each donor's −½ ln 2π omitted: it cancels that donor's Laplace ½ ln 2π)."""
    ncls, p = Xc.shape
    J = doff.shape[0] - 1
    theta = math.exp(lam)
    inv_s2 = math.exp(-tau)
    for k in range(ncls):
        e = lsc[k]
        for a in range(p):
            e += Xc[k, a] * beta[a]
        eta0[k] = e
    for a in range(p):
        g[a] = 0.0
        for c in range(p):
            S[a, c] = 0.0
    phi = 0.0
    slh = 0.0
    for j in range(J):
        bj = b[j]
        f = 0.0
        h = inv_s2
        gj = -bj * inv_s2
        for a in range(p):
            hc[j, a] = 0.0
        # one pass over the donor's classes (one exp each) for h and every derivative
        for k in range(doff[j], doff[j + 1]):
            mu = math.exp(eta0[k] + bj)
            n = ncl[k]
            yk = sy[k]
            d = theta + mu
            f -= n * theta * math.log1p(mu / theta)
            if yk > 0.0:
                f -= yk * math.log1p(theta / mu)
            wk = theta * mu * (yk + n * theta) / (d * d)
            rk = theta * (yk - n * mu) / d
            h += wk
            gj += rk
            for a in range(p):
                x = Xc[k, a]
                g[a] += x * rk
                hc[j, a] += x * wk
                for c in range(a + 1):
                    S[a, c] += x * wk * Xc[k, c]
        for a in range(p):
            for c in range(a + 1):
                S[a, c] -= hc[j, a] * hc[j, c] / h
        gb[j] = gj
        Hd[j] = h
        phi += f - 0.5 * tau - 0.5 * bj * bj * inv_s2
        slh += math.log(h)
    for a in range(p):
        for c in range(a):
            S[c, a] = S[a, c]
    return phi, slh


@njit
def joint_mode(beta, b, tau, lam, Xc, lsc, ncl, sy, doff, eta0, S, L):
    """The joint mode (β̂, b̂) at (τ, λ) by Newton on h from ``beta``/``b`` (updated in place).
    The arrowhead system [[A, h_j], [h_jᵀ, H_j]] (dβ, db) = (g_β, g_b) is solved by
    eliminating the donors: S dβ = g_β − Σ_j h_j g_bj/H_j, db_j = (g_bj − h_jᵀdβ)/H_j; halving
    until h does not fall (h is concave). On return S holds the Schur complement at the mode
    and L its Cholesky factor. Returns (h − C, Σ_j ln H_j, ln det S, ok)."""
    p = Xc.shape[1]
    J = b.shape[0]
    g = np.empty(p)
    gb = np.empty(J)
    Hd = np.empty(J)
    hc = np.empty((J, p))
    rhs = np.empty(p)
    step = np.empty(p)
    stepb = np.empty(J)
    trial = np.empty(p)
    bt = np.empty(J)
    St = np.empty((p, p))
    gt = np.empty(p)
    gbt = np.empty(J)
    Hdt = np.empty(J)
    hct = np.empty((J, p))
    phi, slh = _inner_pass(beta, b, tau, lam, Xc, lsc, ncl, sy, doff, eta0, S, g, gb, Hd, hc)
    for _ in range(INNER_MAX_ITER):
        if not math.isfinite(phi) or not cholesky_lower(S, L):
            return phi, slh, np.nan, False
        for a in range(p):
            r = g[a]
            for j in range(J):
                r -= hc[j, a] * gb[j] / Hd[j]
            rhs[a] = r
        cholesky_solve_vector(L, rhs, step)
        for j in range(J):
            r = gb[j]
            for a in range(p):
                r -= hc[j, a] * step[a]
            stepb[j] = r / Hd[j]
        t = 1.0
        accepted = False
        for _h in range(40):
            for a in range(p):
                trial[a] = beta[a] + t * step[a]
            for j in range(J):
                bt[j] = b[j] + t * stepb[j]
            pt, st = _inner_pass(
                trial, bt, tau, lam, Xc, lsc, ncl, sy, doff, eta0, St, gt, gbt, Hdt, hct
            )
            # a full Newton step on a concave function rises unless it overshoots (the
            # tolerance: rounding near the mode)
            if math.isfinite(pt) and pt >= phi - 1e-13 * abs(phi):
                accepted = True
                break
            t *= 0.5
        if not accepted:
            return phi, slh, np.nan, False
        small = True
        for a in range(p):
            if abs(t * step[a]) > 1e-8 * (1.0 + abs(beta[a])):
                small = False
        for j in range(J):
            if abs(t * stepb[j]) > 1e-8 * (1.0 + abs(b[j])):
                small = False
        beta[:] = trial
        b[:] = bt
        S[:, :] = St
        g[:] = gt
        gb[:] = gbt
        Hd[:] = Hdt
        hc[:, :] = hct
        phi = pt
        slh = st
        # quadratic convergence: after a step ≤ 1e-8 the mode is exact to rounding
        if small:
            break
    if not cholesky_lower(S, L):
        return phi, slh, np.nan, False
    ld = 0.0
    for a in range(p):
        ld += 2.0 * math.log(L[a, a])
    return phi, slh, ld, True


@njit
def reml_loglik(tau, lam, beta, b, Xc, lsc, ncl, sy, doff, yv, eta0, S, L):
    """ℓ_R at (τ, λ) (module docstring); the joint mode is updated in ``beta``/``b`` (warm
    start) and S, L hold the Schur complement and its factor there. NaN if the mode fails."""
    p = Xc.shape[1]
    c, _ = nz_terms(math.exp(lam), yv)
    phi, slh, ld, ok = joint_mode(beta, b, tau, lam, Xc, lsc, ncl, sy, doff, eta0, S, L)
    if not ok:
        return np.nan
    return c + phi - 0.5 * slh + 0.5 * p * LOG_2PI - 0.5 * ld


@njit
def _stencil(x, free, ll0, beta, b, Xc, lsc, ncl, sy, doff, yv, eta0, grad, Hm, D):
    """Gradient ``grad`` and Hessian ``Hm`` of ℓ_R in (τ, λ) at ``x`` by central differences
    (ℓ_R(x) = ``ll0``; the mixed term from the (+h, +h) and (−h, −h) points), and
    D = dβ̂/d(τ, λ) (p × 2) by central differences of the inner mode; entries of held
    parameters are 0. Returns False if an evaluation failed."""
    p = Xc.shape[1]
    J = b.shape[0]
    h = FD_STEP
    S = np.empty((p, p))
    L = np.zeros((p, p))
    bet = np.empty(p)
    bb = np.empty(J)
    lp = np.zeros(2)
    lm = np.zeros(2)
    for i in range(2):
        grad[i] = 0.0
        for c in range(2):
            Hm[i, c] = 0.0
        for a in range(p):
            D[a, i] = 0.0
    for i in range(2):
        if not free[i]:
            continue
        for sgn in (1.0, -1.0):
            bet[:] = beta
            bb[:] = b
            t0 = x[0] + (sgn * h if i == 0 else 0.0)
            t1 = x[1] + (sgn * h if i == 1 else 0.0)
            v = reml_loglik(t0, t1, bet, bb, Xc, lsc, ncl, sy, doff, yv, eta0, S, L)
            if not math.isfinite(v):
                return False
            if sgn > 0.0:
                lp[i] = v
            else:
                lm[i] = v
            for a in range(p):
                D[a, i] += sgn * bet[a] / (2.0 * h)
        grad[i] = (lp[i] - lm[i]) / (2.0 * h)
        Hm[i, i] = (lp[i] - 2.0 * ll0 + lm[i]) / (h * h)
    if free[0] and free[1]:
        bet[:] = beta
        bb[:] = b
        vpp = reml_loglik(x[0] + h, x[1] + h, bet, bb, Xc, lsc, ncl, sy, doff, yv, eta0, S, L)
        bet[:] = beta
        bb[:] = b
        vmm = reml_loglik(x[0] - h, x[1] - h, bet, bb, Xc, lsc, ncl, sy, doff, yv, eta0, S, L)
        if not (math.isfinite(vpp) and math.isfinite(vmm)):
            return False
        hc = (vpp - lp[0] - lp[1] + 2.0 * ll0 - lm[0] - lm[1] + vmm) / (2.0 * h * h)
        Hm[0, 1] = hc
        Hm[1, 0] = hc
    return True


@njit
def _newton_direction(grad, Hm, free, d):
    """Ascent direction in (τ, λ): (−H)⁻¹ g over the free parameters, with Levenberg damping
    when −H is not positive definite; capped at ``MAX_STEP``. Returns (gᵀd, damped)."""
    d[0] = 0.0
    d[1] = 0.0
    a = -Hm[0, 0]
    c = -Hm[0, 1]
    e = -Hm[1, 1]
    damped = False
    if free[0] and free[1]:
        # smallest eigenvalue of the 2 × 2 matrix [[a, c], [c, e]]
        lmin = 0.5 * (a + e) - math.sqrt(0.25 * (a - e) ** 2 + c * c)
        scale = max(abs(a), abs(e), 1e-8)
        if not (lmin > 1e-10 * scale):
            mu = -lmin + 1e-3 * scale
            a += mu
            e += mu
            damped = True
        det = a * e - c * c
        d[0] = (e * grad[0] - c * grad[1]) / det
        d[1] = (a * grad[1] - c * grad[0]) / det
    else:
        for i in range(2):
            if free[i]:
                hi = a if i == 0 else e
                if hi > 1e-12:
                    d[i] = grad[i] / hi
                else:
                    # flat or convex: a unit step uphill
                    d[i] = 1.0 if grad[i] > 0.0 else -1.0
                    damped = True
    m = max(abs(d[0]), abs(d[1]))
    if m > MAX_STEP:
        d[0] *= MAX_STEP / m
        d[1] *= MAX_STEP / m
        damped = True
    return grad[0] * d[0] + grad[1] * d[1], damped


@njit
def _bound_is_no_worse(tau, lam, ll, beta, b, bet, bb, Xc, lsc, ncl, sy, doff, yv, eta0, S, L):
    """Whether ℓ_R at (τ, λ) (a bound) is at least ``ll`` (less rounding); scratch bet, bb."""
    bet[:] = beta
    bb[:] = b
    lb = reml_loglik(tau, lam, bet, bb, Xc, lsc, ncl, sy, doff, yv, eta0, S, L)
    return math.isfinite(lb) and lb >= ll - 1e-12 * abs(ll)


@njit
def fit_gene_reml(x, beta, b, Xc, lsc, ncl, sy, doff, yv, max_iter, tol, cov):
    """Maximise ℓ_R over x = (τ, λ) in place from the start in ``x`` (β, b: the start of the
    joint mode, updated to the mode at the estimate). ``cov`` ((p+2) × (p+2), in (β, τ, λ))
    receives the covariance of the module docstring. Returns (ℓ_R, status, iterations); τ is
    −inf (λ +inf) when held at its bound."""
    ncls, p = Xc.shape
    P = p + 2
    eta0 = np.empty(ncls)
    S = np.empty((p, p))
    L = np.zeros((p, p))
    free = np.ones(2, np.bool_)
    grad = np.zeros(2)
    Hm = np.zeros((2, 2))
    D = np.zeros((p, 2))
    d = np.zeros(2)
    bet = np.empty(p)
    bb = np.empty(b.shape[0])
    for a in range(P):
        for c in range(P):
            cov[a, c] = np.nan
    ll = reml_loglik(x[0], x[1], beta, b, Xc, lsc, ncl, sy, doff, yv, eta0, S, L)
    if not math.isfinite(ll):
        return ll, _status.NOT_POSITIVE_DEFINITE, 0
    status = _status.MAX_ITER
    it = 0
    final = False
    while it < max_iter:
        it += 1
        if not _stencil(x, free, ll, beta, b, Xc, lsc, ncl, sy, doff, yv, eta0, grad, Hm, D):
            status = _status.NOT_POSITIVE_DEFINITE
            break
        if final:
            status = _status.OK
            break
        dec, damped = _newton_direction(grad, Hm, free, d)
        t = 1.0
        accepted = False
        for _h in range(40):
            bet[:] = beta
            bb[:] = b
            t0 = x[0] + t * d[0]
            t1 = x[1] + t * d[1]
            lt = reml_loglik(t0, t1, bet, bb, Xc, lsc, ncl, sy, doff, yv, eta0, S, L)
            if math.isfinite(lt) and lt >= ll - 1e-12 * abs(ll):
                accepted = True
                break
            t *= 0.5
        if not accepted:
            status = _status.LINE_SEARCH_FAILED
            break
        x[0] = t0
        x[1] = t1
        beta[:] = bet
        b[:] = bb
        ll = lt
        converging = dec < tol and not damped
        # σ² → 0 or α → 0: hold the parameter at its bound and go on with the other
        hit = False
        if free[0] and x[0] < TAU_PROBE and d[0] < 0.0:
            hit = _bound_is_no_worse(TAU_MIN, x[1], ll, beta, b, bet, bb, Xc, lsc, ncl, sy,
                                     doff, yv, eta0, S, L)  # fmt: skip
            if hit:
                free[0] = False
                x[0] = TAU_MIN
        if free[1] and x[1] > LAM_PROBE and d[1] > 0.0:
            if _bound_is_no_worse(x[0], LAM_MAX, ll, beta, b, bet, bb, Xc, lsc, ncl, sy, doff,
                                  yv, eta0, S, L):  # fmt: skip
                free[1] = False
                x[1] = LAM_MAX
                hit = True
        if free[0] and x[0] < TAU_SMALL:
            free[0] = False
            x[0] = TAU_MIN
            hit = True
        if free[1] and x[1] > LAM_BIG:
            free[1] = False
            x[1] = LAM_MAX
            hit = True
        if hit:
            ll = reml_loglik(x[0], x[1], beta, b, Xc, lsc, ncl, sy, doff, yv, eta0, S, L)
            if not math.isfinite(ll):
                status = _status.NOT_POSITIVE_DEFINITE
                break
            if not (free[0] or free[1]):
                final = True
        elif converging:
            # the last (small) Newton step was taken; one more stencil at the estimate gives
            # the Hessian and D for the covariance
            final = True
    if final and status == _status.MAX_ITER:
        # the stencil at the estimate was not reached within max_iter: compute it now
        if _stencil(x, free, ll, beta, b, Xc, lsc, ncl, sy, doff, yv, eta0, grad, Hm, D):
            status = _status.OK
        else:
            status = _status.NOT_POSITIVE_DEFINITE
    if status == _status.OK or status == _status.MAX_ITER:
        # refresh S at the estimate (the stencil's evaluations used their own scratch)
        ll = reml_loglik(x[0], x[1], beta, b, Xc, lsc, ncl, sy, doff, yv, eta0, S, L)
        Sinv = np.empty((p, p))
        cholesky_inverse(L, Sinv)
        V = np.zeros((2, 2))
        ok_v = True
        if free[0] and free[1]:
            a = -Hm[0, 0]
            c = -Hm[0, 1]
            e = -Hm[1, 1]
            det = a * e - c * c
            ok_v = a > 0.0 and det > 0.0
            V[0, 0] = e / det
            V[1, 1] = a / det
            V[0, 1] = -c / det
            V[1, 0] = -c / det
        else:
            for i in range(2):
                if free[i]:
                    ok_v = -Hm[i, i] > 0.0
                    V[i, i] = -1.0 / Hm[i, i]
        if ok_v:
            for a in range(p):
                for c in range(p):
                    s = Sinv[a, c]
                    for i in range(2):
                        for k in range(2):
                            s += D[a, i] * V[i, k] * D[c, k]
                    cov[a, c] = s
                for i in range(2):
                    if not free[i]:
                        continue
                    s = 0.0
                    for k in range(2):
                        s += D[a, k] * V[k, i]
                    cov[a, p + i] = s
                    cov[p + i, a] = s
            for i in range(2):
                for k in range(2):
                    if free[i] and free[k]:
                        cov[p + i, p + k] = V[i, k]
        elif status == _status.OK:
            status = _status.NOT_POSITIVE_DEFINITE
        if status == _status.OK and not (free[0] and free[1]):
            status = _status.BOUNDARY
    if not free[0]:
        x[0] = -np.inf
    if not free[1]:
        x[1] = np.inf
    return ll, status, it


@njit(parallel=True)
def reml_fit_genes(
    gptr, gcell, gval, cell_class, Xc, lsc, ncl, doff, max_iter, tol,
    coef, cov, sigma2, theta, loglik, status, n_iter, modes,
):  # fmt: skip
    """Refit every gene by REML from its ML Laplace fit (the output arrays of
    :func:`pyflashmm._kernels.nbmm.fit_genes`, overwritten in place; ``cov`` in (β, τ, λ)).
    Genes without an ML estimate keep their status and NaN; ``n_iter`` adds the REML
    iterations to the ML ones. Parallel over genes; each gene's result depends on it only."""
    G = gptr.shape[0] - 1
    ncls, p = Xc.shape
    J = doff.shape[0] - 1
    for g in prange(G):
        st0 = status[g]
        if not (st0 == _status.OK or st0 == _status.BOUNDARY or st0 == _status.MAX_ITER):
            continue
        lo = gptr[g]
        hi = gptr[g + 1]
        sy = np.zeros(ncls)
        for t in range(lo, hi):
            sy[cell_class[gcell[t]]] += gval[t]
        yv = gval[lo:hi].copy()
        beta = coef[g].copy()
        b = np.zeros(J)
        for j in range(J):
            bj = modes[g, j]
            b[j] = bj if math.isfinite(bj) else 0.0
        x = np.empty(2)
        x[0] = max(math.log(sigma2[g]), TAU_START_MIN)
        x[1] = min(math.log(theta[g]), LAM_START_MAX)
        cv = np.empty((p + 2, p + 2))
        ll, st, it = fit_gene_reml(x, beta, b, Xc, lsc, ncl, sy, doff, yv, max_iter, tol, cv)
        status[g] = st
        n_iter[g] += it
        cov[g] = cv
        if st == _status.OK or st == _status.BOUNDARY or st == _status.MAX_ITER:
            for a in range(p):
                coef[g, a] = beta[a]
            sigma2[g] = math.exp(x[0])
            theta[g] = math.exp(x[1])
            loglik[g] = ll
            for j in range(J):
                modes[g, j] = b[j]
        else:
            coef[g] = np.nan
            sigma2[g] = np.nan
            theta[g] = np.nan
            loglik[g] = np.nan
            modes[g] = np.nan
