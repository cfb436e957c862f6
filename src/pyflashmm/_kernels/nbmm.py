"""The negative-binomial mixed model with one random intercept: Laplace log-likelihood, its
gradient, and the per-gene Newton fit.

Notation (one gene): donors j, cell classes k (cells of one donor sharing a design row x_k and
a size factor s_k; n_k cells, Sy_k the sum of their counts), θ = 1/α the NB size,
τ = ln σ², λ = ln θ. At a donor intercept b, η_k = x_kᵀβ + ln s_k + b, μ_k = e^{η_k}.

* NB2 log density (Var = μ + μ²/θ), split into a part linear in y and a part free of μ:
  ℓ(y; μ) = −θ ln(1 + μ/θ) + y ln(μ/(θ+μ)) + [lnΓ(y+θ) − lnΓ(θ) − lnΓ(y+1)].
  Summed over a class: n_k(−θ ln(1+μ_k/θ)) + Sy_k ln(μ_k/(θ+μ_k)); the bracket is summed over
  the non-zero counts only (it vanishes at y = 0) and does not depend on β or b.
* Donor j's joint log-density f_j(b) = Σ_k [class terms] − b²/(2σ²) − ½ ln(2πσ²), with
  f_j′(b) = Σ_k θ(Sy_k − n_kμ_k)/(θ+μ_k) − b/σ²,
  H_j(b) = −f_j″(b) = Σ_k w_k + 1/σ², w_k = θμ_k(Sy_k + n_kθ)/(θ+μ_k)²,
  v_k = dw_k/dη = θμ_k(Sy_k + n_kθ)(θ − μ_k)/(θ+μ_k)³.
  f_j is strictly concave, so the mode b̂_j is unique (safeguarded 1-D Newton).
* Laplace log-likelihood (TMB's, as glmmTMB reports it):
  L = Σ_j [f_j(b̂_j) + ½ ln 2π − ½ ln H_j(b̂_j)] + Σ_{y>0}[lnΓ(y+θ) − lnΓ(θ) − lnΓ(y+1)].
* Its gradient (implicit function theorem, db̂/dψ = ∂²f/∂b∂ψ / H):
  dL/dψ = Σ_j [∂f_j/∂ψ − (∂H_j/∂ψ + S_v · db̂_j/dψ)/(2H_j)], S_v = Σ_k v_k, with
  ∂f/∂β = Σ x_k θ(Sy_k − n_kμ_k)/(θ+μ_k), ∂H/∂β = Σ x_k v_k, ∂²f/∂b∂β = −Σ x_k w_k;
  ∂f/∂τ = −½ + b²/(2σ²), ∂H/∂τ = −1/σ², ∂²f/∂b∂τ = b/σ²;
  ∂f/∂θ = Σ n_k[μ_k/(θ+μ_k) − ln(1+μ_k/θ)] − Sy_k/(θ+μ_k) (+ Σ_{y>0}[ψ(y+θ) − ψ(θ)]),
  ∂H/∂θ = Σ μ_k(Sy_k(μ_k − θ) + 2n_kθμ_k)/(θ+μ_k)³, ∂²f/∂b∂θ = Σ μ_k(Sy_k − n_kμ_k)/(θ+μ_k)²;
  d/dλ = θ d/dθ.
* The fit maximises L over ψ = (β, τ, λ) by Newton steps with the analytic Hessian
  (:func:`laplace_hessian`, second implicit derivative of the modes included; the Hessian by
  differences of the gradient, :func:`fd_hessian`, is its oracle; Levenberg damping when it
  is not negative definite, step halving until L does not fall; the steps, bounds and final
  covariance are :mod:`.nbmm_newton`'s). τ is held at ``TAU_MIN`` when the maximum lies at
  σ² → 0, λ at ``LAM_MAX`` when it lies at α → 0 (Poisson), both with status ``boundary``
  (reached, or converged beyond ``TAU_SMALL`` / ``LAM_BIG``).
"""

from __future__ import annotations

import math

import numpy as np

from pyflashmm import _status
from pyflashmm._jit import njit, prange
from pyflashmm._kernels.linalg import cholesky_lower, cholesky_solve_vector, symmetrize
from pyflashmm._kernels.nb_density import digamma, trigamma
from pyflashmm._kernels.nbmm_newton import finish, hold_at_bounds, newton_direction, trial_point

LOG_2PI = math.log(2.0 * math.pi)
#: relative step of the central differences of the gradient (the Hessian for the SEs)
FD_STEP = 1e-4
#: relative step of the forward differences of the gradient (the Hessian of the Newton steps)
FD_STEP_FWD = 1e-6


@njit
def donor_mode(b, lo_k, hi_k, eta0, ncl, sy, theta, inv_s2):
    """The mode b̂ of one donor's joint log-density, Newton from ``b`` kept inside a bracket
    of the root of f′ (f′ decreases in b); classes ``lo_k:hi_k``, η₀ = x_kᵀβ + ln s_k."""
    lo = -np.inf
    hi = np.inf
    for _ in range(200):
        g = -b * inv_s2
        h = inv_s2
        for k in range(lo_k, hi_k):
            mu = math.exp(eta0[k] + b)
            d = theta + mu
            g += theta * (sy[k] - ncl[k] * mu) / d
            h += theta * mu * (sy[k] + ncl[k] * theta) / (d * d)
        if g > 0.0:
            lo = b
        else:
            hi = b
        step = g / h
        if step > 5.0:
            step = 5.0
        elif step < -5.0:
            step = -5.0
        nb = b + step
        if not (lo < nb < hi):
            if math.isfinite(lo) and math.isfinite(hi):
                nb = 0.5 * (lo + hi)
        if abs(nb - b) <= 1e-14 * (1.0 + abs(b)):
            return nb
        b = nb
    return b


@njit
def laplace(beta, tau, lam, Xc, lsc, ncl, sy, doff, b, nz_const, nz_dpsi, want_grad, grad, eta0):
    """Laplace log-likelihood L of one gene at (β, τ, λ) (module docstring); the donor modes
    are updated in ``b`` (warm start). ``nz_const`` = Σ_{y>0}[lnΓ(y+θ) − lnΓ(θ) − lnΓ(y+1)] and
    ``nz_dpsi`` = Σ_{y>0}[ψ(y+θ) − ψ(θ)] at this θ. With ``want_grad`` the gradient in
    (β, τ, λ) is written to ``grad`` (length p + 2). ``eta0`` is scratch (classes)."""
    ncls, p = Xc.shape
    J = doff.shape[0] - 1
    theta = math.exp(lam)
    s2 = math.exp(tau)
    inv_s2 = 1.0 / s2
    for k in range(ncls):
        e = lsc[k]
        for a in range(p):
            e += Xc[k, a] * beta[a]
        eta0[k] = e
    if want_grad:
        for a in range(p + 2):
            grad[a] = 0.0
    ll = nz_const
    dtheta = nz_dpsi
    fa = np.empty(p)
    wa = np.empty(p)
    va = np.empty(p)
    for j in range(J):
        lo_k = doff[j]
        hi_k = doff[j + 1]
        bj = donor_mode(b[j], lo_k, hi_k, eta0, ncl, sy, theta, inv_s2)
        b[j] = bj
        f = 0.0
        h = inv_s2
        sv = 0.0
        ft = 0.0
        ht = 0.0
        fbt = 0.0
        for a in range(p):
            fa[a] = 0.0
            wa[a] = 0.0
            va[a] = 0.0
        # one pass over the donor's classes (one exp each) for L and every gradient sum
        for k in range(lo_k, hi_k):
            mu = math.exp(eta0[k] + bj)
            n = ncl[k]
            yk = sy[k]
            d = theta + mu
            f -= n * theta * math.log1p(mu / theta)
            if yk > 0.0:
                f -= yk * math.log1p(theta / mu)
            wk = theta * mu * (yk + n * theta) / (d * d)
            vk = wk * (theta - mu) / d
            h += wk
            sv += vk
            if want_grad:
                rk = theta * (yk - n * mu) / d
                for a in range(p):
                    x = Xc[k, a]
                    fa[a] += x * rk
                    wa[a] += x * wk
                    va[a] += x * vk
                ft += n * (mu / d - math.log1p(mu / theta)) - yk / d
                ht += mu * (yk * (mu - theta) + 2.0 * n * theta * mu) / (d * d * d)
                fbt += mu * (yk - n * mu) / (d * d)
        ll += f - 0.5 * tau - 0.5 * bj * bj * inv_s2 - 0.5 * math.log(h)
        if not want_grad:
            continue
        # β: ∂f − (∂H + S_v db̂)/(2H), db̂/dβ = −Σ x w / H
        for a in range(p):
            grad[a] += fa[a] - 0.5 * (va[a] - sv * wa[a] / h) / h
        grad[p] += -0.5 + 0.5 * bj * bj * inv_s2 - 0.5 * (-inv_s2 + sv * bj * inv_s2 / h) / h
        dtheta += ft - 0.5 * (ht + sv * fbt / h) / h
    # the Laplace term's +½ ln 2π and the prior's −½ ln 2π cancel for every donor
    if want_grad:
        grad[p + 1] = theta * dtheta
    return ll


#: θ from which :func:`gamma_differences` uses Stirling's series: below it lnΓ(y+θ) − lnΓ(θ)
#: loses at most ε·θ ln θ ≈ 2e-12 to cancellation, above it (θ → ∞, α → 0) that loss grows
#: without bound (0.3 at θ = e³⁰, where a Poisson gene's α is held)
STIRLING_THETA = 1e3


@njit
def gamma_at(theta, want_d2):
    """(lnΓ(θ), ψ(θ), ψ′(θ)) for :func:`gamma_differences` below ``STIRLING_THETA`` (zeros above,
    where they are not used; ψ′ only if ``want_d2``): computed once per θ, not once per count."""
    if theta >= STIRLING_THETA:
        return 0.0, 0.0, 0.0
    return math.lgamma(theta), digamma(theta), trigamma(theta) if want_d2 else 0.0


@njit
def gamma_differences(theta, y, want_d2, at_theta):
    """(lnΓ(y+θ) − lnΓ(θ), ψ(y+θ) − ψ(θ), ψ′(y+θ) − ψ′(θ)) for y > 0 (the last 0 unless
    ``want_d2``), without the cancellation of the plain differences at large θ; ``at_theta`` is
    :func:`gamma_at` of θ.

    For θ ≥ ``STIRLING_THETA``, with u = y/θ and the Stirling corrections
    s(z) = 1/(12z) − 1/(360z³) + 1/(1260z⁵) (truncation < 1e-24 there):
    lnΓ(y+θ) − lnΓ(θ) = y ln θ + (θ + y − ½) log1p(u) − y + s(θ+y) − s(θ);
    ψ(y+θ) − ψ(θ) = log1p(u) + y/(2θ(θ+y)) + y(2θ+y)/(12θ²(θ+y)²) + Δ(1/(120z⁴) − 1/(252z⁶));
    ψ′(y+θ) − ψ′(θ) = −y/(θ(θ+y)) − y(2θ+y)/(2θ²(θ+y)²) + Δ(1/(6z³) − 1/(30z⁵) + 1/(42z⁷)),
    each difference of 1/z, 1/z² taken in closed form, the smaller ones directly."""
    if theta < STIRLING_THETA:
        lgt, dgt, tgt = at_theta
        lg = math.lgamma(y + theta) - lgt
        dg = digamma(y + theta) - dgt
        tg = trigamma(y + theta) - tgt if want_d2 else 0.0
        return lg, dg, tg
    z = theta + y
    it = 1.0 / theta
    iz = 1.0 / z
    l1p = math.log1p(y * it)
    d1 = y * it * iz  # 1/θ − 1/z
    d2 = y * (2.0 * theta + y) * it * it * iz * iz  # 1/θ² − 1/z²
    it3 = it * it * it
    iz3 = iz * iz * iz
    s_corr = (iz - it) / 12.0 - (iz3 - it3) / 360.0 + (iz3 * iz * iz - it3 * it * it) / 1260.0
    lg = y * math.log(theta) + (z - 0.5) * l1p - y + s_corr
    dg = l1p + 0.5 * d1 + d2 / 12.0 + (iz3 * iz - it3 * it) / 120.0
    dg -= (iz3 * iz3 - it3 * it3) / 252.0
    tg = 0.0
    if want_d2:
        tg = -d1 - 0.5 * d2 + (iz3 - it3) / 6.0 - (iz3 * iz * iz - it3 * it * it) / 30.0
        tg += (iz3 * iz3 * iz - it3 * it3 * it) / 42.0
    return lg, dg, tg


@njit
def nz_terms(theta, yv):
    """Σ_{y>0}[lnΓ(y+θ) − lnΓ(θ) − lnΓ(y+1)] and Σ_{y>0}[ψ(y+θ) − ψ(θ)] over the non-zero
    counts ``yv`` (as Σ_{i<y} ln(θ+i) and Σ_{i<y} 1/(θ+i) for y < 64: no cancellation when θ
    is large)."""
    c = 0.0
    dp = 0.0
    at_theta = gamma_at(theta, False)
    for t in range(yv.shape[0]):
        y = yv[t]
        if y < 64.0 and y == math.floor(y):
            i = 0.0
            while i < y:
                c += math.log(theta + i)
                dp += 1.0 / (theta + i)
                i += 1.0
        else:
            lg, dg, _ = gamma_differences(theta, y, False, at_theta)
            c += lg
            dp += dg
        c -= math.lgamma(y + 1.0)
    return c, dp


@njit
def objective(psi, p, free, Xc, lsc, ncl, sy, doff, b, yv, want_grad, grad, eta0):
    """L and (optionally) its gradient at ψ = (β, τ, λ); the gradient entries of parameters
    held fixed (``free`` false) are 0."""
    tau = psi[p]
    lam = psi[p + 1]
    c, dp = nz_terms(math.exp(lam), yv)
    ll = laplace(psi[:p], tau, lam, Xc, lsc, ncl, sy, doff, b, c, dp, want_grad, grad, eta0)
    if want_grad:
        for a in range(p + 2):
            if not free[a]:
                grad[a] = 0.0
    return ll


@njit
def fd_hessian(psi, p, free, Xc, lsc, ncl, sy, doff, b, yv, Hm, eta0, g0, central):
    """Hessian of L at ψ by differences of the analytic gradient (symmetrised): central with
    step ``FD_STEP`` (for the SEs), or forward from the gradient ``g0`` at ψ with step
    ``FD_STEP_FWD`` (half the work, for the Newton steps); the donor modes are restored to
    those at ψ afterwards."""
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
        objective(q, p, free, Xc, lsc, ncl, sy, doff, b, yv, True, gp, eta0)
        if central:
            q[c] = psi[c] - hstep
            b[:] = b0
            objective(q, p, free, Xc, lsc, ncl, sy, doff, b, yv, True, gm, eta0)
            for a in range(P):
                Hm[a, c] = (gp[a] - gm[a]) / (2.0 * hstep)
        else:
            for a in range(P):
                Hm[a, c] = (gp[a] - g0[a]) / hstep
        q[c] = psi[c]
    b[:] = b0
    symmetrize(Hm)


@njit
def nz_d2(theta, yv):
    """Σ_{y>0}[ψ′(y+θ) − ψ′(θ)] (= −Σ_{i<y} 1/(θ+i)² for y < 64), the second θ-derivative of
    the non-zero-count constant."""
    s = 0.0
    at_theta = gamma_at(theta, True)
    for t in range(yv.shape[0]):
        y = yv[t]
        if y < 64.0 and y == math.floor(y):
            i = 0.0
            while i < y:
                s -= 1.0 / ((theta + i) * (theta + i))
                i += 1.0
        else:
            s += gamma_differences(theta, y, True, at_theta)[2]
    return s


@njit
def laplace_hessian(psi, p, free, Xc, lsc, ncl, sy, doff, b, yv, grad, Hm, eta0):
    """L, its gradient (``grad``) and its analytic Hessian (``Hm``) in ψ = (β, τ, λ) in one
    pass over the classes; the donor modes are updated in ``b``. Rows/columns of parameters
    held fixed (``free`` false) are 0.

    Per donor, with D = ∂_ψ + (db̂/dψ)∂_b the derivative along the mode and
    b̂_a = f_ba/H, DH_a = H_a + H_b b̂_a:
    d²L_j/dψ_a dψ_c = f_ac + H b̂_a b̂_c − D²H_ac/(2H) + DH_a DH_c/(2H²), with
    D²H_ac = H_ac + H_ba b̂_c + H_bc b̂_a + H_bb b̂_a b̂_c + H_b b̂_ac and
    b̂_ac = (f_bac − H_a b̂_c − H_c b̂_a − H_b b̂_a b̂_c)/H. Derivatives in θ, converted to
    λ = ln θ at the end (d²/dλ² = θ²d²/dθ² + θ d/dθ)."""
    P = p + 2
    ncls = Xc.shape[0]
    J = doff.shape[0] - 1
    tau = psi[p]
    lam = psi[p + 1]
    theta = math.exp(lam)
    inv_s2 = math.exp(-tau)
    c0, dp = nz_terms(theta, yv)
    for k in range(ncls):
        e = lsc[k]
        for a in range(p):
            e += Xc[k, a] * psi[a]
        eta0[k] = e
    for a in range(P):
        grad[a] = 0.0
        for c in range(P):
            Hm[a, c] = 0.0
    ll = c0
    gth = dp  # dL/dθ
    hthth = nz_d2(theta, yv)  # d²L/dθ²
    # per-donor partials, index P-1 = θ (τ handled explicitly)
    f1 = np.empty(P)
    H1 = np.empty(P)
    Hb1 = np.empty(P)
    fb1 = np.empty(P)
    F2 = np.empty((P, P))
    H2 = np.empty((P, P))
    fb2 = np.empty((P, P))
    bh = np.empty(P)
    DH = np.empty(P)
    T = P - 1
    for j in range(J):
        lo_k = doff[j]
        hi_k = doff[j + 1]
        bj = donor_mode(b[j], lo_k, hi_k, eta0, ncl, sy, theta, inv_s2)
        b[j] = bj
        f1[:] = 0.0
        H1[:] = 0.0
        Hb1[:] = 0.0
        fb1[:] = 0.0
        F2[:, :] = 0.0
        H2[:, :] = 0.0
        fb2[:, :] = 0.0
        f = 0.0
        h = inv_s2
        sv = 0.0
        su = 0.0
        for k in range(lo_k, hi_k):
            mu = math.exp(eta0[k] + bj)
            n = ncl[k]
            S = sy[k]
            d = theta + mu
            d2 = d * d
            d3 = d2 * d
            d4 = d2 * d2
            f -= n * theta * math.log1p(mu / theta)
            if S > 0.0:
                f -= S * math.log1p(theta / mu)
            A = theta * (S + n * theta)
            r = theta * (S - n * mu) / d
            w = A * mu / d2
            v = w * (theta - mu) / d
            u = A * mu * (theta * theta - 4.0 * theta * mu + mu * mu) / d4
            c_t = n * (mu / d - math.log1p(mu / theta)) - S / d
            c_tt = n * mu * mu / (theta * d2) + S / d2
            q = mu * (S - n * mu) / d2
            c_ett = -2.0 * mu * (S - n * mu) / d3
            w_t = mu * (S * (mu - theta) + 2.0 * n * theta * mu) / d3
            B = S + 2.0 * n * theta
            w_te = (
                mu
                * (2.0 * B * theta * mu - B * mu * mu - S * theta * theta + 2.0 * S * theta * mu)
                / d4
            )
            w_tt = 2.0 * mu * (S * theta - 2.0 * S * mu - 2.0 * n * theta * mu + n * mu * mu) / d4
            h += w
            sv += v
            su += u
            for a in range(p):
                x = Xc[k, a]
                f1[a] += x * r
                H1[a] += x * v
                Hb1[a] += x * u
                fb1[a] -= x * w
                F2[T, a] += x * q
                H2[T, a] += x * w_te
                fb2[T, a] -= x * w_t
                for c in range(a + 1):
                    xx = x * Xc[k, c]
                    F2[a, c] -= xx * w
                    H2[a, c] += xx * u
                    fb2[a, c] -= xx * v
            f1[T] += c_t
            F2[T, T] += c_tt
            H1[T] += w_t
            H2[T, T] += w_tt
            Hb1[T] += w_te
            fb1[T] += q
            fb2[T, T] += c_ett
        ll += f - 0.5 * tau - 0.5 * bj * bj * inv_s2 - 0.5 * math.log(h)
        # τ
        b2s = bj * bj * inv_s2
        f1[p] = -0.5 + 0.5 * b2s
        F2[p, p] = -0.5 * b2s
        H1[p] = -inv_s2
        H2[p, p] = inv_s2
        Hb1[p] = 0.0
        fb1[p] = bj * inv_s2
        fb2[p, p] = -bj * inv_s2
        for a in range(P):
            for c in range(a):
                F2[c, a] = F2[a, c]
                H2[c, a] = H2[a, c]
                fb2[c, a] = fb2[a, c]
        for a in range(P):
            bh[a] = fb1[a] / h
            DH[a] = H1[a] + sv * bh[a]
        for a in range(P):
            g = f1[a] - 0.5 * DH[a] / h
            if a == T:
                gth += g
            else:
                grad[a] += g
            for c in range(a + 1):
                bac = (fb2[a, c] - H1[a] * bh[c] - H1[c] * bh[a] - sv * bh[a] * bh[c]) / h
                d2h = H2[a, c] + Hb1[a] * bh[c] + Hb1[c] * bh[a] + su * bh[a] * bh[c] + sv * bac
                Hm[a, c] += (
                    F2[a, c] + h * bh[a] * bh[c] - 0.5 * d2h / h + 0.5 * DH[a] * DH[c] / (h * h)
                )
    # θ → λ
    hthth += Hm[T, T]
    grad[T] = theta * gth
    for c in range(T):
        Hm[T, c] *= theta
    Hm[T, T] = theta * theta * hthth + theta * gth
    for a in range(P):
        for c in range(a):
            Hm[c, a] = Hm[a, c]
    for a in range(P):
        if not free[a]:
            grad[a] = 0.0
            for c in range(P):
                Hm[a, c] = 0.0
                Hm[c, a] = 0.0
    return ll


# --- the fast path of the Newton fit (same L, gradient and Hessian, fewer operations) ---------
#
# * Runs: the classes of a donor sharing a design row are contiguous (``cell_classes`` sorts by
#   donor, design row, size factor); per run and mode iteration one exp, per class
#   μ_k = s_k·exp(x_rᵀβ + b) (a product) — no exp per class.
# * ln(1 + θ/μ) = ln(1 + μ/θ) − ln(μ/θ) with ln(μ/θ) = ln s_k + x_rᵀβ + b − λ: one log1p per
#   class and evaluation (the L term and ∂f/∂θ share it).
# * The design sums (β rows of the gradient and Hessian) are accumulated per run as scalars and
#   multiplied by x_r (x_r x_rᵀ) once per run: with donor-level designs, P² work per donor.
# * The non-zero-count terms from the tail counts #{y > i}, i < 64 (at most 64 logs per
#   evaluation instead of Σy), the rest (y ≥ 64, non-integer y) by lgamma/digamma/trigamma.
# * The donor modes are warm-started at b̂ + (db̂/dψ)·step and stop once a Newton step is below
#   1e-8·(1 + |b|) (the next would be below rounding: |f‴| ≤ Σw ≤ H, so the error after that
#   step is at most ½·step²).
# * The Newton step's first trial evaluates L, the gradient and the Hessian in one pass (kept
#   when the full step is accepted, as it is near the optimum); halved trials evaluate L only.


@njit
def design_runs(Xc, doff):
    """Runs of consecutive classes of one donor with equal design rows: class offsets of the
    runs ``roff`` and, per donor, its runs ``drun[j]:drun[j+1]``."""
    ncls, p = Xc.shape
    J = doff.shape[0] - 1
    roff = np.empty(ncls + 1, np.int64)
    drun = np.empty(J + 1, np.int64)
    nr = 0
    for j in range(J):
        drun[j] = nr
        for k in range(doff[j], doff[j + 1]):
            new = k == doff[j]
            if not new:
                for a in range(p):
                    if Xc[k, a] != Xc[k - 1, a]:
                        new = True
                        break
            if new:
                roff[nr] = k
                nr += 1
    drun[J] = nr
    roff[nr] = ncls
    return roff[: nr + 1].copy(), drun


@njit
def count_tails(yv):
    """The non-zero counts as tail counts ``tail[i]`` = #{y > i} (integer y < 64) and the other
    values (y ≥ 64 or non-integer), with Σ −lnΓ(y+1) over all of them."""
    tail = np.zeros(64)
    nb = 0
    lgy = 0.0
    for t in range(yv.shape[0]):
        y = yv[t]
        lgy -= math.lgamma(y + 1.0)
        if y < 64.0 and y == math.floor(y):
            if y >= 1.0:  # (an explicit zero adds nothing)
                tail[int(y) - 1] += 1.0
        else:
            nb += 1
    big = np.empty(nb)
    nb = 0
    for t in range(yv.shape[0]):
        y = yv[t]
        if not (y < 64.0 and y == math.floor(y)):
            big[nb] = y
            nb += 1
    for i in range(62, -1, -1):
        tail[i] += tail[i + 1]
    return tail, big, lgy


@njit
def nz_terms_tails(theta, tail, big, lgy, want_d2):
    """:func:`nz_terms` and :func:`nz_d2` (if ``want_d2``) from :func:`count_tails`."""
    c = lgy
    dp = 0.0
    d2 = 0.0
    for i in range(64):
        t = tail[i]
        if t == 0.0:
            break
        z = theta + i
        iz = 1.0 / z
        c += t * math.log(z)
        dp += t * iz
        d2 -= t * iz * iz
    at_theta = gamma_at(theta, want_d2)
    for t in range(big.shape[0]):
        lg, dg, tg = gamma_differences(theta, big[t], want_d2, at_theta)
        c += lg
        dp += dg
        d2 += tg
    return c, dp, d2


@njit
def _mode_runs(b, j, drun, roff, xb, sfc, ncl, sy, theta, inv_s2):
    """Donor j's mode (as :func:`donor_mode`, the same bracketed Newton) with μ_k = s_k·e^{x_rβ+b}
    (``xb[r]`` = x_rᵀβ, ``sfc[k]`` = s_k); stops after a Newton step below 1e-8·(1 + |b|)."""
    lo = -np.inf
    hi = np.inf
    for _ in range(200):
        g = -b * inv_s2
        h = inv_s2
        for r in range(drun[j], drun[j + 1]):
            m = math.exp(xb[r] + b)
            for k in range(roff[r], roff[r + 1]):
                mu = sfc[k] * m
                idd = 1.0 / (theta + mu)
                tq = theta * idd
                g += tq * (sy[k] - ncl[k] * mu)
                h += tq * mu * (sy[k] + ncl[k] * theta) * idd
        if g > 0.0:
            lo = b
        else:
            hi = b
        step = g / h
        if step > 5.0:
            step = 5.0
        elif step < -5.0:
            step = -5.0
        nb = b + step
        newton = True
        if not (lo < nb < hi):
            if math.isfinite(lo) and math.isfinite(hi):
                nb = 0.5 * (lo + hi)
                newton = False
        ab = 1.0 + abs(b)
        if abs(nb - b) <= 1e-14 * ab or (newton and abs(step) <= 1e-8 * ab):
            return nb
        b = nb
    return b


@njit
def _eta_runs(beta, Xc, roff, xb):
    """xb[r] = x_rᵀβ per run."""
    p = Xc.shape[1]
    for r in range(roff.shape[0] - 1):
        k = roff[r]
        e = 0.0
        for a in range(p):
            e += Xc[k, a] * beta[a]
        xb[r] = e


@njit
def lik_fast(psi, p, Xc, roff, drun, lsc, sfc, ncl, sy, b, tail, big, lgy, xb):
    """L at ψ (the value of :func:`objective`); modes updated in ``b`` (warm start)."""
    J = drun.shape[0] - 1
    tau = psi[p]
    lam = psi[p + 1]
    theta = math.exp(lam)
    ith = 1.0 / theta
    inv_s2 = math.exp(-tau)
    _eta_runs(psi[:p], Xc, roff, xb)
    ll, _, _ = nz_terms_tails(theta, tail, big, lgy, False)
    for j in range(J):
        bj = _mode_runs(b[j], j, drun, roff, xb, sfc, ncl, sy, theta, inv_s2)
        b[j] = bj
        f = 0.0
        h = inv_s2
        for r in range(drun[j], drun[j + 1]):
            m = math.exp(xb[r] + bj)
            lr = xb[r] + bj - lam
            for k in range(roff[r], roff[r + 1]):
                mu = sfc[k] * m
                n = ncl[k]
                S = sy[k]
                idd = 1.0 / (theta + mu)
                l1 = math.log1p(mu * ith)
                f -= n * theta * l1 + S * (l1 - lsc[k] - lr)
                h += theta * mu * (S + n * theta) * idd * idd
        ll += f - 0.5 * tau - 0.5 * bj * bj * inv_s2 - 0.5 * math.log(h)
    return ll


@njit
def hess_fast(psi, p, free, Xc, roff, drun, lsc, sfc, ncl, sy, b, tail, big, lgy, xb,
              grad, Hm, db):  # fmt: skip
    """L, its gradient and Hessian (the values of :func:`laplace_hessian`) and the modes'
    derivatives ``db[j]`` = db̂_j/dψ (in λ); modes updated in ``b`` (warm start)."""
    P = p + 2
    J = drun.shape[0] - 1
    tau = psi[p]
    lam = psi[p + 1]
    theta = math.exp(lam)
    ith = 1.0 / theta
    inv_s2 = math.exp(-tau)
    c0, gth, hthth = nz_terms_tails(theta, tail, big, lgy, True)
    _eta_runs(psi[:p], Xc, roff, xb)
    for a in range(P):
        grad[a] = 0.0
        for c in range(P):
            Hm[a, c] = 0.0
    ll = c0
    f1 = np.empty(P)
    H1 = np.empty(P)
    Hb1 = np.empty(P)
    fb1 = np.empty(P)
    F2 = np.empty((P, P))
    H2 = np.empty((P, P))
    fb2 = np.empty((P, P))
    bh = np.empty(P)
    DH = np.empty(P)
    T = P - 1
    for j in range(J):
        bj = _mode_runs(b[j], j, drun, roff, xb, sfc, ncl, sy, theta, inv_s2)
        b[j] = bj
        f1[:] = 0.0
        H1[:] = 0.0
        Hb1[:] = 0.0
        fb1[:] = 0.0
        F2[:, :] = 0.0
        H2[:, :] = 0.0
        fb2[:, :] = 0.0
        f = 0.0
        h = inv_s2
        sv = 0.0
        su = 0.0
        ct = 0.0
        ctt = 0.0
        wt = 0.0
        wtt = 0.0
        wte = 0.0
        sq = 0.0
        cett = 0.0
        for r in range(drun[j], drun[j + 1]):
            m = math.exp(xb[r] + bj)
            lr = xb[r] + bj - lam
            # per-run sums of the terms multiplied by x (x xᵀ) below
            rr = 0.0
            rw = 0.0
            rv = 0.0
            ru = 0.0
            rq = 0.0
            rwte = 0.0
            rwt = 0.0
            for k in range(roff[r], roff[r + 1]):
                mu = sfc[k] * m
                n = ncl[k]
                S = sy[k]
                idd = 1.0 / (theta + mu)
                i2 = idd * idd
                i3 = i2 * idd
                i4 = i2 * i2
                l1 = math.log1p(mu * ith)
                f -= n * theta * l1 + S * (l1 - lsc[k] - lr)
                A = theta * (S + n * theta)
                smu = S - n * mu
                w = A * mu * i2
                v = w * (theta - mu) * idd
                u = A * mu * (theta * theta - 4.0 * theta * mu + mu * mu) * i4
                q = mu * smu * i2
                w_t = mu * (S * (mu - theta) + 2.0 * n * theta * mu) * i3
                B = S + 2.0 * n * theta
                w_te = mu * (2.0 * B * theta * mu - B * mu * mu - S * theta * theta
                             + 2.0 * S * theta * mu) * i4  # fmt: skip
                rr += theta * smu * idd
                rw += w
                rv += v
                ru += u
                rq += q
                rwte += w_te
                rwt += w_t
                ct += n * (mu * idd - l1) - S * idd
                ctt += n * mu * mu * ith * i2 + S * i2
                wtt += 2.0 * mu * (S * theta - 2.0 * S * mu - 2.0 * n * theta * mu
                                   + n * mu * mu) * i4  # fmt: skip
                cett -= 2.0 * mu * smu * i3
            h += rw
            sv += rv
            su += ru
            sq += rq
            wt += rwt
            wte += rwte
            k0 = roff[r]
            for a in range(p):
                x = Xc[k0, a]
                f1[a] += x * rr
                H1[a] += x * rv
                Hb1[a] += x * ru
                fb1[a] -= x * rw
                F2[T, a] += x * rq
                H2[T, a] += x * rwte
                fb2[T, a] -= x * rwt
                for c in range(a + 1):
                    xx = x * Xc[k0, c]
                    F2[a, c] -= xx * rw
                    H2[a, c] += xx * ru
                    fb2[a, c] -= xx * rv
        f1[T] = ct
        F2[T, T] = ctt
        H1[T] = wt
        H2[T, T] = wtt
        Hb1[T] = wte
        fb1[T] = sq
        fb2[T, T] = cett
        ll += f - 0.5 * tau - 0.5 * bj * bj * inv_s2 - 0.5 * math.log(h)
        b2s = bj * bj * inv_s2
        f1[p] = -0.5 + 0.5 * b2s
        F2[p, p] = -0.5 * b2s
        H1[p] = -inv_s2
        H2[p, p] = inv_s2
        Hb1[p] = 0.0
        fb1[p] = bj * inv_s2
        fb2[p, p] = -bj * inv_s2
        for a in range(P):
            for c in range(a):
                F2[c, a] = F2[a, c]
                H2[c, a] = H2[a, c]
                fb2[c, a] = fb2[a, c]
        for a in range(P):
            bh[a] = fb1[a] / h
            DH[a] = H1[a] + sv * bh[a]
            db[j, a] = bh[a]
        db[j, T] *= theta
        for a in range(P):
            g = f1[a] - 0.5 * DH[a] / h
            if a == T:
                gth += g
            else:
                grad[a] += g
            for c in range(a + 1):
                bac = (fb2[a, c] - H1[a] * bh[c] - H1[c] * bh[a] - sv * bh[a] * bh[c]) / h
                d2h = H2[a, c] + Hb1[a] * bh[c] + Hb1[c] * bh[a] + su * bh[a] * bh[c] + sv * bac
                Hm[a, c] += (
                    F2[a, c] + h * bh[a] * bh[c] - 0.5 * d2h / h + 0.5 * DH[a] * DH[c] / (h * h)
                )
    hthth += Hm[T, T]
    grad[T] = theta * gth
    for c in range(T):
        Hm[T, c] *= theta
    Hm[T, T] = theta * theta * hthth + theta * gth
    for a in range(P):
        for c in range(a):
            Hm[c, a] = Hm[a, c]
    for a in range(P):
        if not free[a]:
            grad[a] = 0.0
            for c in range(P):
                Hm[a, c] = 0.0
                Hm[c, a] = 0.0
    return ll


@njit
def fit_gene(psi, p, Xc, lsc, ncl, sy, doff, b, yv, max_iter, tol, cov, eta0, analytic=True):
    """Maximise L over ψ = (β, τ, λ) in place from the start in ``psi``; ``cov`` receives
    (−∇²L)⁻¹ in (β, τ, λ) (NaN in the τ row and column at the boundary). Returns
    (L, status, iterations). With ``analytic`` (the default) the Hessian is
    :func:`laplace_hessian`'s, otherwise differences of the gradient (:func:`fd_hessian`)."""
    if analytic:
        roff, drun = design_runs(Xc, doff)
        tail, big, lgy = count_tails(yv)
        return fit_gene_fast(psi, p, Xc, roff, drun, lsc, np.exp(lsc), ncl, sy, b, tail, big,
                             lgy, max_iter, tol, cov)  # fmt: skip
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
    free = np.ones(P, np.bool_)
    ll = objective(psi, p, free, Xc, lsc, ncl, sy, doff, b, yv, True, grad, eta0)
    status = _status.MAX_ITER
    it = 0
    while it < max_iter:
        it += 1
        if not math.isfinite(ll):
            status = _status.NOT_POSITIVE_DEFINITE
            break
        if analytic:
            ll = laplace_hessian(psi, p, free, Xc, lsc, ncl, sy, doff, b, yv, grad, Hm, eta0)
        else:
            fd_hessian(psi, p, free, Xc, lsc, ncl, sy, doff, b, yv, Hm, eta0, grad, False)
        ok, damp, dec = newton_direction(Hm, grad, p, free, A, L, idx, rhs, step)
        if not ok:
            status = _status.NOT_POSITIVE_DEFINITE
            break
        # a Newton decrement below tol: this (full) step is the last one
        last = damp == 0.0 and 0.5 * dec < tol
        t = 1.0
        improved = False
        for _ in range(40):
            trial_point(psi, step, t, p, trial)
            btry[:] = b
            lt = objective(trial, p, free, Xc, lsc, ncl, sy, doff, btry, yv, not analytic, g2, eta0)
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
            # held at σ² = 0 or α = 0: go on with the others
            ll = objective(psi, p, free, Xc, lsc, ncl, sy, doff, b, yv, True, grad, eta0)
        elif converging:
            status = _status.OK
            break
    if status == _status.OK or status == _status.MAX_ITER:
        if analytic:
            laplace_hessian(psi, p, free, Xc, lsc, ncl, sy, doff, b, yv, grad, Hm, eta0)
        else:
            fd_hessian(psi, p, free, Xc, lsc, ncl, sy, doff, b, yv, Hm, eta0, grad, True)
    status = finish(Hm, psi, p, free, A, L, idx, cov, status)
    return ll, status, it


@njit
def fit_gene_fast(psi, p, Xc, roff, drun, lsc, sfc, ncl, sy, b, tail, big, lgy, max_iter, tol,
                  cov):  # fmt: skip
    """:func:`fit_gene` with the analytic Hessian on the fast path (:func:`hess_fast`,
    :func:`lik_fast`; runs from :func:`design_runs`, ``sfc`` = e^{ln s}, the non-zero counts as
    :func:`count_tails`): the same Newton iterations, stopping rule and bounds."""
    P = p + 2
    J = b.shape[0]
    grad = np.empty(P)
    g2 = np.empty(P)
    Hm = np.empty((P, P))
    Ht = np.empty((P, P))
    db = np.zeros((J, P))
    dbt = np.zeros((J, P))
    xb = np.empty(roff.shape[0] - 1)
    A = np.zeros((P, P))
    L = np.zeros((P, P))
    idx = np.empty(P, np.int64)
    rhs = np.empty(P)
    step = np.empty(P)
    trial = np.empty(P)
    btry = b.copy()
    free = np.ones(P, np.bool_)
    ll = hess_fast(psi, p, free, Xc, roff, drun, lsc, sfc, ncl, sy, b, tail, big, lgy, xb,
                   grad, Hm, db)  # fmt: skip
    have_hess = True
    status = _status.MAX_ITER
    it = 0
    while it < max_iter:
        it += 1
        if not math.isfinite(ll):
            status = _status.NOT_POSITIVE_DEFINITE
            break
        if not have_hess:
            ll = hess_fast(psi, p, free, Xc, roff, drun, lsc, sfc, ncl, sy, b, tail, big, lgy,
                           xb, grad, Hm, db)  # fmt: skip
            have_hess = True
        ok, damp, dec = newton_direction(Hm, grad, p, free, A, L, idx, rhs, step)
        if not ok:
            status = _status.NOT_POSITIVE_DEFINITE
            break
        last = damp == 0.0 and 0.5 * dec < tol
        t = 1.0
        improved = False
        full = True
        for ls in range(40):
            trial_point(psi, step, t, p, trial)
            # warm start of the modes: first-order prediction along the step
            for j in range(J):
                e = b[j]
                for a in range(P):
                    e += db[j, a] * (trial[a] - psi[a])
                btry[j] = e
            if ls == 0:
                lt = hess_fast(trial, p, free, Xc, roff, drun, lsc, sfc, ncl, sy, btry, tail,
                               big, lgy, xb, g2, Ht, dbt)  # fmt: skip
            else:
                lt = lik_fast(trial, p, Xc, roff, drun, lsc, sfc, ncl, sy, btry, tail, big, lgy,
                              xb)  # fmt: skip
            if lt >= ll - 1e-12 * abs(ll) and math.isfinite(lt):
                improved = True
                full = ls == 0
                break
            t *= 0.5
        if not improved:
            status = _status.LINE_SEARCH_FAILED
            break
        gain = lt - ll
        psi[:] = trial
        b[:] = btry
        ll = lt
        if full:
            grad[:] = g2
            Hm[:, :] = Ht
            db[:, :] = dbt
        else:
            have_hess = False
        converging = last or (gain < 0.01 * tol and damp == 0.0 and t == 1.0)
        if hold_at_bounds(psi, p, free, converging):
            ll = hess_fast(psi, p, free, Xc, roff, drun, lsc, sfc, ncl, sy, b, tail, big, lgy,
                           xb, grad, Hm, db)  # fmt: skip
            have_hess = True
        elif converging:
            status = _status.OK
            break
    if (status == _status.OK or status == _status.MAX_ITER) and not have_hess:
        hess_fast(psi, p, free, Xc, roff, drun, lsc, sfc, ncl, sy, b, tail, big, lgy, xb,
                  grad, Hm, db)  # fmt: skip
    status = finish(Hm, psi, p, free, A, L, idx, cov, status)
    return ll, status, it


@njit
def start_values(p, Xc, ncl, nzc, psi):
    """Start of β: least squares of ln(y/s + 0.1) on X over the cells, from class sums (zero
    counts contribute ln 0.1; ``nzc[k]`` is the sum of ln(y/s + 0.1) over the non-zero counts of
    class k, ``nzc[ncls + k]`` their number); τ = ln 0.25, λ = ln 2 (α = 0.5). Returns False if
    XᵀX is singular."""
    ncls = Xc.shape[0]
    A = np.zeros((p, p))
    r = np.zeros(p)
    for k in range(ncls):
        z = nzc[k] + (ncl[k] - nzc[ncls + k]) * math.log(0.1)
        for a in range(p):
            r[a] += Xc[k, a] * z
            for c in range(p):
                A[a, c] += Xc[k, a] * ncl[k] * Xc[k, c]
    L = np.zeros((p, p))
    if not cholesky_lower(A, L):
        return False
    sol = np.empty(p)
    cholesky_solve_vector(L, r, sol)
    for a in range(p):
        psi[a] = sol[a]
    psi[p] = math.log(0.25)
    psi[p + 1] = math.log(2.0)
    return True


@njit(parallel=True)
def fit_genes(
    gptr, gcell, gval, cell_class, Xc, lsc, ncl, doff, max_iter, tol,
    coef, cov, sigma2, theta, loglik, status, n_iter, modes, analytic=True,
):  # fmt: skip
    """Fit every gene (gene-major CSR ``gptr``/``gcell``/``gval`` of the non-zero counts),
    parallel over genes; results written to the output arrays (NaN where no fit)."""
    G = gptr.shape[0] - 1
    ncls, p = Xc.shape
    J = doff.shape[0] - 1
    roff, drun = design_runs(Xc, doff)
    sfc = np.exp(lsc)
    for g in prange(G):
        lo = gptr[g]
        hi = gptr[g + 1]
        for a in range(p):
            coef[g, a] = np.nan
        cov[g] = np.nan
        modes[g] = np.nan
        sigma2[g] = np.nan
        theta[g] = np.nan
        loglik[g] = np.nan
        n_iter[g] = 0
        if hi == lo:
            status[g] = _status.ALL_ZERO
            continue
        sy = np.zeros(ncls)
        nzc = np.zeros(2 * ncls)
        for t in range(lo, hi):
            k = cell_class[gcell[t]]
            sy[k] += gval[t]
            nzc[k] += math.log(gval[t] * math.exp(-lsc[k]) + 0.1)
            nzc[ncls + k] += 1.0
        n_donors = 0
        for j in range(J):
            s = 0.0
            for k in range(doff[j], doff[j + 1]):
                s += sy[k]
            if s > 0.0:
                n_donors += 1
        if n_donors < 2:
            status[g] = _status.ONE_GROUP
            continue
        yv = gval[lo:hi].copy()
        psi = np.empty(p + 2)
        if not start_values(p, Xc, ncl, nzc, psi):
            status[g] = _status.NOT_POSITIVE_DEFINITE
            continue
        b = np.zeros(J)
        eta0 = np.empty(ncls)
        cv = np.full((p + 2, p + 2), np.nan)
        if analytic:
            tail, big, lgy = count_tails(yv)
            ll, st, it = fit_gene_fast(
                psi, p, Xc, roff, drun, lsc, sfc, ncl, sy, b, tail, big, lgy, max_iter, tol, cv
            )
        else:
            ll, st, it = fit_gene(
                psi, p, Xc, lsc, ncl, sy, doff, b, yv, max_iter, tol, cv, eta0, False
            )
        status[g] = st
        n_iter[g] = it
        cov[g] = cv
        if st == _status.OK or st == _status.BOUNDARY or st == _status.MAX_ITER:
            for a in range(p):
                coef[g, a] = psi[a]
            sigma2[g] = math.exp(psi[p])
            theta[g] = math.exp(psi[p + 1])
            loglik[g] = ll
            for j in range(J):
                modes[g, j] = b[j]
