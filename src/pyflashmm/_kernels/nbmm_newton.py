"""The safeguarded Newton steps shared by the NB mixed model's fits (Laplace reference path, fast
path, adaptive Gauss–Hermite quadrature): one gene's log-likelihood L(ψ) is maximised over
ψ = (β, τ = ln σ², λ = ln θ) with the same direction, step cap, bounds and final covariance.

* Direction: the Newton step of the free parameters, (−∇²L)⁻¹∇L, with Levenberg damping of the
  diagonal (10⁻⁴, ×10, … times max(|A_ii|, 10⁻⁸ max|A|, 10⁻¹²)) when −∇²L is not positive
  definite; τ and λ move at most 2 per iteration (the whole step is scaled down).
* Bounds: σ² → 0 or α → 0 is held at τ = ``TAU_MIN`` or λ = ``LAM_MAX`` when passed, or when the
  fit is converging (flat L) beyond ``TAU_SMALL``/``LAM_BIG``; held parameters leave the free set.
* Covariance: (−∇²L)⁻¹ over the free parameters, NaN rows and columns for held ones.
"""

from __future__ import annotations

import numpy as np

from pyflashmm import _status
from pyflashmm._jit import njit
from pyflashmm._kernels.linalg import cholesky_inverse, cholesky_lower, cholesky_solve_vector

#: ln σ² at which the donor variance is held as 0 (σ² ≈ 1.4e-11)
TAU_MIN = -25.0
#: ln θ (θ = 1/α) at which the dispersion is held as 0 (α ≈ 9e-14, status ``boundary``)
LAM_MAX = 30.0
#: a fit converging (flat L) with ln σ² below ``TAU_SMALL`` (σ² < 2e-9) or ln θ above
#: ``LAM_BIG`` (α < 3e-7) is moved to the bound and finished there (status ``boundary``): on
#: such a flat likelihood the Newton decrement falls below tol before the bound is reached
TAU_SMALL = -20.0
LAM_BIG = 15.0
#: largest move of τ or λ in one iteration
MAX_VARIANCE_STEP = 2.0


@njit
def free_block(Hm, free, A, idx):
    """A[:n, :n] = −∇²L restricted to the free parameters (their indices in ``idx[:n]``);
    returns n."""
    n = 0
    for a in range(Hm.shape[0]):
        if free[a]:
            idx[n] = a
            n += 1
    for i in range(n):
        for c in range(n):
            A[i, c] = -Hm[idx[i], idx[c]]
    return n


@njit
def newton_direction(Hm, grad, p, free, A, L, idx, rhs, step):
    """The damped, capped Newton step of the free parameters into ``step`` (zero for held ones).

    Returns (ok, damp, dec): ``ok`` false when no damping makes −∇²L positive definite; ``damp``
    the damping used (0 for a pure Newton step); ``dec`` = ∇Lᵀ(−∇²L + damping)⁻¹∇L, twice the
    predicted gain (the Newton decrement).
    """
    P = Hm.shape[0]
    n = free_block(Hm, free, A, idx)
    As = A[:n, :n]
    Ls = L[:n, :n]
    for i in range(n):
        rhs[i] = grad[idx[i]]
    damp = 0.0
    scale = 0.0
    for i in range(n):
        scale = max(scale, abs(As[i, i]))
    ok = False
    for _ in range(60):
        Ad = As.copy()
        for i in range(n):
            Ad[i, i] += damp * max(abs(As[i, i]), 1e-8 * scale, 1e-12)
        if cholesky_lower(Ad, Ls):
            ok = True
            break
        damp = 1e-4 if damp == 0.0 else damp * 10.0
    if not ok:
        return False, damp, 0.0
    sol = np.empty(n)
    cholesky_solve_vector(Ls, rhs[:n], sol)
    dec = 0.0
    for i in range(n):
        dec += rhs[i] * sol[i]
    for a in range(P):
        step[a] = 0.0
    for i in range(n):
        step[idx[i]] = sol[i]
    mx = 1.0
    for a in range(p, P):
        if abs(step[a]) > MAX_VARIANCE_STEP:
            mx = max(mx, abs(step[a]) / MAX_VARIANCE_STEP)
    for a in range(P):
        step[a] /= mx
    return True, damp, dec


@njit
def trial_point(psi, step, t, p, trial):
    """trial = ψ + t·step, with λ kept at or below its bound."""
    for a in range(psi.shape[0]):
        trial[a] = psi[a] + t * step[a]
    if trial[p + 1] > LAM_MAX:
        trial[p + 1] = LAM_MAX


@njit
def hold_at_bounds(psi, p, free, converging):
    """Hold τ (σ² → 0) or λ (α → 0) at its bound when past it, or when the fit is converging
    beyond the "small" threshold; returns whether a parameter was newly held."""
    hit_tau = free[p] and (psi[p] < TAU_MIN or (converging and psi[p] < TAU_SMALL))
    hit_lam = free[p + 1] and (psi[p + 1] >= LAM_MAX or (converging and psi[p + 1] > LAM_BIG))
    if hit_tau:
        free[p] = False
        psi[p] = TAU_MIN
    if hit_lam:
        free[p + 1] = False
        psi[p + 1] = LAM_MAX
    return hit_tau or hit_lam


@njit
def finish(Hm, psi, p, free, A, L, idx, cov, status):
    """The end of a fit: ``cov`` = (−∇²L)⁻¹ over the free parameters (NaN elsewhere) when the
    fit stopped at ``OK`` or ``MAX_ITER`` (``Hm`` the Hessian there), the status (``BOUNDARY``
    when a parameter is held, ``NOT_POSITIVE_DEFINITE`` when −∇²L is not), and held parameters
    reported as τ = −∞ (σ² = 0), λ = +∞ (α = 0). Returns the status."""
    P = Hm.shape[0]
    for a in range(P):
        for c in range(P):
            cov[a, c] = np.nan
    if status == _status.OK or status == _status.MAX_ITER:
        n = free_block(Hm, free, A, idx)
        Ls = L[:n, :n]
        Cs = np.empty((n, n))
        if cholesky_lower(A[:n, :n].copy(), Ls):
            cholesky_inverse(Ls, Cs)
            for i in range(n):
                for c in range(n):
                    cov[idx[i], idx[c]] = Cs[i, c]
        elif status == _status.OK:
            status = _status.NOT_POSITIVE_DEFINITE
        if status == _status.OK and not (free[p] and free[p + 1]):
            status = _status.BOUNDARY
    if not free[p]:
        psi[p] = -np.inf
    if not free[p + 1]:
        psi[p + 1] = np.inf
    return status
