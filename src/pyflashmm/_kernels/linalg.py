"""Small dense linear algebra that never raises: Cholesky with a success flag, solves and inverse.

These run per gene inside the fixed-effects and general-K kernels, so they are written for
small matrices (p, q ≲ 300): contiguous inner loops, no allocation beyond one work array.
Numba's ``np.linalg.cholesky`` raises on a matrix that is not positive definite; inside a
``prange`` loop over genes an exception would sink the whole batch, so kernels use these instead
and turn a failed factorisation into a per-gene status code.
"""

from __future__ import annotations

import numpy as np

from pyflashmm._jit import njit

#: reassociation and FMA contraction only (lets the reductions vectorise); unlike blanket
#: fastmath these flags do not assume the absence of NaN/Inf, so a NaN still fails the checks
_FLOAT_FLAGS = {"reassoc", "contract"}


@njit(fastmath=_FLOAT_FLAGS)
def cholesky_lower(A, L):
    """Write the lower Cholesky factor of symmetric ``A`` into ``L``; return False if A is not PD.

    Only the lower triangle of ``A`` is read. ``L`` must be a zero-initialised (or overwritable)
    square array of the same size; its strict upper triangle is set to zero.
    """
    m = A.shape[0]
    for j in range(m):
        s = A[j, j]
        for k in range(j):
            s -= L[j, k] * L[j, k]
        if not s > 0.0:  # also catches NaN
            return False
        ljj = np.sqrt(s)
        L[j, j] = ljj
        for i in range(j + 1, m):
            t = A[i, j]
            for k in range(j):
                t -= L[i, k] * L[j, k]
            L[i, j] = t / ljj
        for i in range(j):
            L[i, j] = 0.0
    return True


@njit(fastmath=_FLOAT_FLAGS)
def cholesky_logdet(L):
    """log|A| = 2 Σ log L_jj for A = L Lᵀ."""
    s = 0.0
    for j in range(L.shape[0]):
        s += np.log(L[j, j])
    return 2.0 * s


@njit(fastmath=_FLOAT_FLAGS)
def forward_substitute(L, B):
    """Overwrite ``B`` (m×k) with L⁻¹B for lower-triangular ``L``."""
    m = L.shape[0]
    k = B.shape[1]
    for c in range(k):
        for i in range(m):
            t = B[i, c]
            for j in range(i):
                t -= L[i, j] * B[j, c]
            B[i, c] = t / L[i, i]


@njit(fastmath=_FLOAT_FLAGS)
def cholesky_solve_vector(L, b, out):
    """Solve (L Lᵀ) x = b into ``out``."""
    m = L.shape[0]
    for i in range(m):
        t = b[i]
        for j in range(i):
            t -= L[i, j] * out[j]
        out[i] = t / L[i, i]
    for i in range(m - 1, -1, -1):
        t = out[i]
        for j in range(i + 1, m):
            t -= L[j, i] * out[j]
        out[i] = t / L[i, i]


@njit(fastmath=_FLOAT_FLAGS)
def cholesky_inverse(L, out):
    """Write (L Lᵀ)⁻¹ into ``out`` (symmetric, both triangles filled).

    U = (L⁻¹)ᵀ is built a row at a time (row c solves L x = e_c by forward substitution), then
    (LLᵀ)⁻¹ = L⁻ᵀL⁻¹ = U Uᵀ from dot products of U's rows; every inner loop is contiguous.
    """
    m = L.shape[0]
    U = np.empty((m, m))
    for c in range(m):
        x = U[c]
        for i in range(c):
            x[i] = 0.0
        x[c] = 1.0 / L[c, c]
        for i in range(c + 1, m):
            t = 0.0
            Li = L[i]
            for j in range(c, i):
                t += Li[j] * x[j]
            x[i] = -t / L[i, i]
    for a in range(m):
        Ua = U[a]
        for b in range(a + 1):
            Ub = U[b]
            t = 0.0
            for k in range(a, m):
                t += Ua[k] * Ub[k]
            out[a, b] = t
            out[b, a] = t


@njit
def symmetrize(A):
    """A ← (A + Aᵀ)/2 in place: a matrix symmetric up to rounding made exactly symmetric."""
    m = A.shape[0]
    for a in range(m):
        for c in range(a):
            v = 0.5 * (A[a, c] + A[c, a])
            A[a, c] = v
            A[c, a] = v
