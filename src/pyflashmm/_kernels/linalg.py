"""Small dense linear algebra that never raises: Cholesky with a success flag, solves and inverse.

Numba's ``np.linalg.cholesky`` raises on a matrix that is not positive definite; inside a
``prange`` loop over genes an exception would sink the whole batch, so kernels use these instead
and turn a failed factorisation into a per-gene status code.
"""

from __future__ import annotations

import numpy as np

from pyflashmm._jit import njit


@njit
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


@njit
def cholesky_logdet(L):
    """log|A| = 2 Σ log L_jj for A = L Lᵀ."""
    s = 0.0
    for j in range(L.shape[0]):
        s += np.log(L[j, j])
    return 2.0 * s


@njit
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


@njit
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


@njit
def cholesky_inverse(L, out):
    """Write (L Lᵀ)⁻¹ into ``out`` (symmetric, both triangles filled)."""
    m = L.shape[0]
    Linv = np.zeros((m, m))
    for c in range(m):
        for i in range(c, m):
            t = 1.0 if i == c else 0.0
            for j in range(c, i):
                t -= L[i, j] * Linv[j, c]
            Linv[i, c] = t / L[i, i]
    for a in range(m):
        for b in range(a + 1):
            s = 0.0
            for k in range(a, m):
                s += Linv[k, a] * Linv[k, b]
            out[a, b] = s
            out[b, a] = s
