"""Adaptive Gauss–Hermite quadrature (AGQ) of the NB mixed model's marginal likelihood, its
analytic gradient, and the per-gene Newton fit started from the Laplace fit.

Notation as :mod:`pyflashmm._kernels.nbmm` (donors j, classes k, θ = 1/α, τ = ln σ²,
λ = ln θ, ψ = (β, τ, λ)). Donor j's joint log-density of its counts and b_j (the y-only
constant Σ_{y>0}[lnΓ(y+θ) − lnΓ(θ) − lnΓ(y+1)] is kept at the gene level) is

    f_j(b) = Σ_k [−n_kθ ln(1 + μ_k/θ) − Sy_k ln(1 + θ/μ_k)] − b²/(2σ²) − ½ ln(2πσ²),

μ_k = exp(x_kᵀβ + ln s_k + b), strictly concave with mode b̂_j and curvature
H_j = −f_j″(b̂_j) = Σ_k w_k + 1/σ², w_k = θμ_k(Sy_k + n_kθ)/(θ+μ_k)².

* AGQ with the n Gauss–Hermite nodes x_i and weights ω_i (∫ e^{−x²} g(x) dx ≈ Σ ω_i g(x_i)),
  scale c_j = √(2/H_j) and nodes b_ji = b̂_j + c_j x_i:

      ln ∫ exp f_j(b) db ≈ A_j = ln c_j + ln Σ_i ω_i e^{x_i²} exp f_j(b_ji),

  computed as a log-sum-exp of e_ji = ln ω_i + x_i² + f_j(b_ji). With n = 1 (x = 0, ω = √π)
  A_j = f_j(b̂_j) + ½ ln 2π − ½ ln H_j, the Laplace approximation. The gene's log-likelihood
  is Σ_j A_j + Σ_{y>0}[lnΓ(y+θ) − lnΓ(θ) − lnΓ(y+1)].
* Gradient. The nodes move with ψ through b̂_j(ψ) and H_j(ψ): with
  b̂_a = ∂_a f_b / H (implicit function theorem, ∂_a f_b = ∂²f/∂b∂ψ_a at b̂) and the total
  derivative of the curvature along the mode DH_a = ∂_a H + H_b b̂_a (H_b = Σ_k v_k,
  v_k = dw_k/dη), dc_j/dψ_a = −c_j DH_a/(2H_j) and db_ji/dψ_a = b̂_a − x_i c_j DH_a/(2H_j), so

      dA_j/dψ_a = −DH_a/(2H_j) + Σ_i π_ji [∂_a f_j(b_ji) + f_j′(b_ji) db_ji/dψ_a],

  π_ji = e^{e_ji} / Σ_l e^{e_jl}. The partial derivatives of f_j at a node b:
  ∂f/∂β = Σ_k x_k θ(Sy_k − n_kμ_k)/(θ+μ_k), ∂f/∂τ = −½ + b²/(2σ²),
  ∂f/∂θ = Σ_k n_k[μ_k/(θ+μ_k) − ln(1+μ_k/θ)] − Sy_k/(θ+μ_k), f′(b) = Σ_k θ(Sy_k −
  n_kμ_k)/(θ+μ_k) − b/σ²; at the mode ∂_β f_b = −Σ x_k w_k, ∂_β H = Σ x_k v_k,
  ∂_τ f_b = b̂/σ², ∂_τ H = −1/σ², ∂_θ f_b = Σ μ_k(Sy_k − n_kμ_k)/(θ+μ_k)²,
  ∂_θ H = Σ μ_k(Sy_k(μ_k − θ) + 2n_kθμ_k)/(θ+μ_k)³; the gene-level θ term adds
  Σ_{y>0}[ψ(y+θ) − ψ(θ)]; d/dλ = θ d/dθ. (n = 1 gives the Laplace gradient.)
* Hessian: differences of this analytic gradient (forward, step ``FD_STEP_FWD`` relative,
  for the Newton steps; central, step ``FD_STEP``, for the standard errors); P = p + 2 is
  small, so this costs P (or 2P) gradient evaluations.
* The fit: Newton steps on ψ from the Laplace estimate, with the Laplace fit's safeguards
  (Levenberg damping, step halving, variance steps capped at 2, the σ² → 0 and α → 0 bounds).
"""

from __future__ import annotations

import math

import numpy as np

from pyflashmm import _status
from pyflashmm._jit import njit, prange
from pyflashmm._kernels.linalg import symmetrize
from pyflashmm._kernels.nbmm import FD_STEP, FD_STEP_FWD, donor_mode, nz_terms
from pyflashmm._kernels.nbmm_newton import (
    LAM_MAX,
    finish,
    hold_at_bounds,
    newton_direction,
    trial_point,
)

HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


@njit
def agq_loglik(psi, p, free, Xc, lsc, ncl, sy, doff, b, yv, xk, lwk, want_grad, grad, eta0, nd):
    """AGQ log-likelihood of one gene at ψ = (β, τ, λ) (module docstring) with the nodes
    ``xk`` and ``lwk`` = ln ω + x²; the donor modes are updated in ``b`` (warm start). With
    ``want_grad`` the gradient in ψ is written to ``grad`` (0 for parameters not ``free``).
    ``eta0`` (classes) and ``nd`` (n × (p + 3)) are scratch."""
    ncls = Xc.shape[0]
    P = p + 2
    J = doff.shape[0] - 1
    nq = xk.shape[0]
    tau = psi[p]
    lam = psi[p + 1]
    theta = math.exp(lam)
    inv_s2 = math.exp(-tau)
    c0, dpsi = nz_terms(theta, yv)
    for k in range(ncls):
        e = lsc[k]
        for a in range(p):
            e += Xc[k, a] * psi[a]
        eta0[k] = e
    if want_grad:
        for a in range(P):
            grad[a] = 0.0
    ll = c0
    dtheta = dpsi
    fbm = np.empty(P)  # ∂_a f_b at the mode
    Hm = np.empty(P)  # ∂_a H at the mode
    DH = np.empty(P)
    bh = np.empty(P)
    # columns of nd: e_i, f′(b_i), ∂f/∂β (p), ∂f/∂θ
    for j in range(J):
        lo_k = doff[j]
        hi_k = doff[j + 1]
        bj = donor_mode(b[j], lo_k, hi_k, eta0, ncl, sy, theta, inv_s2)
        b[j] = bj
        # curvature at the mode and (for the gradient) the mode's derivatives
        h = inv_s2
        sv = 0.0
        for a in range(P):
            fbm[a] = 0.0
            Hm[a] = 0.0
        for k in range(lo_k, hi_k):
            mu = math.exp(eta0[k] + bj)
            n = ncl[k]
            yk = sy[k]
            d = theta + mu
            wk = theta * mu * (yk + n * theta) / (d * d)
            h += wk
            if want_grad:
                vk = wk * (theta - mu) / d
                sv += vk
                for a in range(p):
                    x = Xc[k, a]
                    fbm[a] -= x * wk
                    Hm[a] += x * vk
                fbm[p + 1] += mu * (yk - n * mu) / (d * d)
                Hm[p + 1] += mu * (yk * (mu - theta) + 2.0 * n * theta * mu) / (d * d * d)
        cj = math.sqrt(2.0 / h)
        # f_j at every node
        emax = -np.inf
        for i in range(nq):
            bi = bj + cj * xk[i]
            f = -0.5 * bi * bi * inv_s2 - HALF_LOG_2PI - 0.5 * tau
            fb = -bi * inv_s2
            ft = 0.0
            if want_grad:
                for a in range(p):
                    nd[i, 2 + a] = 0.0
            for k in range(lo_k, hi_k):
                mu = math.exp(eta0[k] + bi)
                n = ncl[k]
                yk = sy[k]
                d = theta + mu
                f -= n * theta * math.log1p(mu / theta)
                if yk > 0.0:
                    f -= yk * math.log1p(theta / mu)
                if want_grad:
                    rk = theta * (yk - n * mu) / d
                    fb += rk
                    for a in range(p):
                        nd[i, 2 + a] += Xc[k, a] * rk
                    ft += n * (mu / d - math.log1p(mu / theta)) - yk / d
            e = lwk[i] + f
            nd[i, 0] = e
            nd[i, 1] = fb
            nd[i, 2 + p] = ft
            if e > emax:
                emax = e
        s = 0.0
        for i in range(nq):
            s += math.exp(nd[i, 0] - emax)
        ll += math.log(cj) + emax + math.log(s)
        if not want_grad:
            continue
        fbm[p] = bj * inv_s2
        Hm[p] = -inv_s2
        for a in range(P):
            bh[a] = fbm[a] / h
            DH[a] = Hm[a] + sv * bh[a]
        for a in range(P):
            acc = -0.5 * DH[a] / h
            for i in range(nq):
                pi = math.exp(nd[i, 0] - emax) / s
                bi = bj + cj * xk[i]
                db = bh[a] - xk[i] * cj * 0.5 * DH[a] / h
                if a < p:
                    fa = nd[i, 2 + a]
                elif a == p:
                    fa = -0.5 + 0.5 * bi * bi * inv_s2
                else:
                    fa = nd[i, 2 + p]
                acc += pi * (fa + nd[i, 1] * db)
            if a == p + 1:
                dtheta += acc
            else:
                grad[a] += acc
    if want_grad:
        grad[p + 1] = theta * dtheta
        for a in range(P):
            if not free[a]:
                grad[a] = 0.0
    return ll


@njit
def agq_fd_hessian(psi, p, free, Xc, lsc, ncl, sy, doff, b, yv, xk, lwk, Hm, g0, central,
                   eta0, nd):  # fmt: skip
    """Hessian of the AGQ log-likelihood by differences of its analytic gradient (symmetrised):
    central with step ``FD_STEP`` · max(1, |ψ_c|) (for the SEs) or forward from the gradient
    ``g0`` at ψ with step ``FD_STEP_FWD`` · max(1, |ψ_c|) (for the Newton steps); rows and
    columns of parameters held fixed are 0, the modes are restored to those at ψ."""
    P = p + 2
    gp = np.empty(P)
    gm = np.empty(P)
    b0 = b.copy()
    q = psi.copy()
    for c in range(P):
        if not free[c]:
            for a in range(P):
                Hm[a, c] = 0.0
            continue
        hstep = (FD_STEP if central else FD_STEP_FWD) * max(1.0, abs(psi[c]))
        q[c] = psi[c] + hstep
        b[:] = b0
        agq_loglik(q, p, free, Xc, lsc, ncl, sy, doff, b, yv, xk, lwk, True, gp, eta0, nd)
        if central:
            q[c] = psi[c] - hstep
            b[:] = b0
            agq_loglik(q, p, free, Xc, lsc, ncl, sy, doff, b, yv, xk, lwk, True, gm, eta0, nd)
            for a in range(P):
                Hm[a, c] = (gp[a] - gm[a]) / (2.0 * hstep)
        else:
            for a in range(P):
                Hm[a, c] = (gp[a] - g0[a]) / hstep
        q[c] = psi[c]
    b[:] = b0
    symmetrize(Hm)
    for a in range(P):
        if not free[a]:
            for c in range(P):
                Hm[a, c] = 0.0


@njit
def agq_fit_gene(psi, p, free, Xc, lsc, ncl, sy, doff, b, yv, xk, lwk, max_iter, tol, cov,
                 eta0, nd):  # fmt: skip
    """Maximise the AGQ log-likelihood over ψ in place from ``psi`` (parameters not ``free``
    stay where they are); ``cov`` receives (−∇²L)⁻¹ in (β, τ, λ) (NaN rows/columns for held
    parameters). Returns (L, status, iterations); the safeguards are the Laplace fit's."""
    P = p + 2
    grad = np.empty(P)
    g2 = np.empty(P)
    Hm = np.empty((P, P))
    A = np.zeros((P, P))
    L = np.zeros((P, P))
    idx = np.empty(P, np.int64)
    rhs = np.empty(P)
    step = np.empty(P)
    trial = np.empty(P)
    btry = b.copy()
    ll = agq_loglik(psi, p, free, Xc, lsc, ncl, sy, doff, b, yv, xk, lwk, True, grad, eta0, nd)
    status = _status.MAX_ITER
    it = 0
    while it < max_iter:
        it += 1
        if not math.isfinite(ll):
            status = _status.NOT_POSITIVE_DEFINITE
            break
        agq_fd_hessian(psi, p, free, Xc, lsc, ncl, sy, doff, b, yv, xk, lwk, Hm, grad, False,
                       eta0, nd)  # fmt: skip
        ok, damp, dec = newton_direction(Hm, grad, p, free, A, L, idx, rhs, step)
        if not ok:
            status = _status.NOT_POSITIVE_DEFINITE
            break
        last = damp == 0.0 and 0.5 * dec < tol
        t = 1.0
        improved = False
        lt = ll
        for _ in range(40):
            trial_point(psi, step, t, p, trial)
            btry[:] = b
            lt = agq_loglik(trial, p, free, Xc, lsc, ncl, sy, doff, btry, yv, xk, lwk, True,
                            g2, eta0, nd)  # fmt: skip
            if lt >= ll - 1e-12 * abs(ll) and math.isfinite(lt):
                improved = True
                break
            t *= 0.5
        if not improved:
            status = _status.LINE_SEARCH_FAILED
            break
        gain = lt - ll
        psi[:] = trial
        b[:] = btry
        ll = lt
        grad[:] = g2
        converging = last or (gain < 0.01 * tol and damp == 0.0 and t == 1.0)
        if hold_at_bounds(psi, p, free, converging):
            # the maximum lies at σ² → 0 or α → 0: that parameter is held at its bound
            ll = agq_loglik(psi, p, free, Xc, lsc, ncl, sy, doff, b, yv, xk, lwk, True, grad,
                            eta0, nd)  # fmt: skip
        elif converging:
            status = _status.OK
            break
    if status == _status.OK or status == _status.MAX_ITER:
        agq_fd_hessian(psi, p, free, Xc, lsc, ncl, sy, doff, b, yv, xk, lwk, Hm, grad, True,
                       eta0, nd)  # fmt: skip
    status = finish(Hm, psi, p, free, A, L, idx, cov, status)
    return ll, status, it


@njit(parallel=True)
def agq_fit_genes(
    gptr, gcell, gval, cell_class, Xc, lsc, ncl, doff, xk, lwk, max_iter, tol,
    coef, cov, sigma2, theta, loglik, status, n_iter, modes,
):  # fmt: skip
    """Refit every gene by AGQ from its Laplace fit, in place in the Laplace result arrays
    (those of :func:`pyflashmm._kernels.nbmm.fit_genes`, ``cov`` in (β, τ, λ)); parallel over
    genes. Genes without a Laplace fit keep its status and NaNs; genes with σ² held at 0 keep
    the Laplace result (the integral over b is degenerate there: AGQ = Laplace); α held at 0
    stays held. ``n_iter`` adds the AGQ iterations to the Laplace ones."""
    G = gptr.shape[0] - 1
    ncls, p = Xc.shape
    J = doff.shape[0] - 1
    P = p + 2
    nq = xk.shape[0]
    for g in prange(G):
        st0 = status[g]
        if not (st0 == _status.OK or st0 == _status.BOUNDARY or st0 == _status.MAX_ITER):
            continue
        if sigma2[g] == 0.0:
            continue
        lo = gptr[g]
        hi = gptr[g + 1]
        sy = np.zeros(ncls)
        for t in range(lo, hi):
            sy[cell_class[gcell[t]]] += gval[t]
        yv = gval[lo:hi].copy()
        free = np.ones(P, np.bool_)
        psi = np.empty(P)
        for a in range(p):
            psi[a] = coef[g, a]
        psi[p] = math.log(sigma2[g])
        if math.isfinite(theta[g]):
            psi[p + 1] = math.log(theta[g])
        else:
            free[p + 1] = False
            psi[p + 1] = LAM_MAX
        b = np.empty(J)
        for j in range(J):
            b[j] = modes[g, j] if math.isfinite(modes[g, j]) else 0.0
        eta0 = np.empty(ncls)
        nd = np.empty((nq, p + 3))
        cv = np.empty((P, P))
        ll, st, it = agq_fit_gene(psi, p, free, Xc, lsc, ncl, sy, doff, b, yv, xk, lwk,
                                  max_iter, tol, cv, eta0, nd)  # fmt: skip
        status[g] = st
        n_iter[g] += it
        for a in range(P):
            for c in range(P):
                cov[g, a, c] = cv[a, c]
        if st == _status.OK or st == _status.BOUNDARY or st == _status.MAX_ITER:
            for a in range(p):
                coef[g, a] = psi[a]
            sigma2[g] = math.exp(psi[p])
            theta[g] = math.exp(psi[p + 1])
            loglik[g] = ll
            for j in range(J):
                modes[g, j] = b[j]
        else:
            for a in range(p):
                coef[g, a] = np.nan
            sigma2[g] = np.nan
            theta[g] = np.nan
            loglik[g] = np.nan
            for j in range(J):
                modes[g, j] = np.nan
