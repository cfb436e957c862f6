"""Adaptive Gauss–Hermite quadrature (AGQ) for the NB mixed model: the refit of a Laplace fit.

Per donor the marginal likelihood is a 1-D integral over the donor intercept b_j; AGQ with n
nodes centres the Gauss–Hermite rule at the mode b̂_j and scales it by √(2/H_j), H_j the
curvature there (:mod:`pyflashmm._kernels.nbmm_agq` has the formulas). n = 1 is the Laplace
approximation; the error falls quickly with n. The AGQ maximum is found by Newton steps on
ψ = (β, ln σ², ln θ) started from the Laplace estimate, with the analytic gradient of the AGQ
log-likelihood and its Hessian by differences of that gradient.
"""

from __future__ import annotations

import numpy as np
from numpy.polynomial.hermite import hermgauss

from pyflashmm._kernels import nbmm_agq as _ka

#: default number of quadrature nodes for ``method="agq"`` (lme4's common choice; the error
#: on realistic genes is already far below the sampling error)
DEFAULT_N_AGQ = 11


def hermite_rule(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss–Hermite nodes x_i and ln ω_i + x_i² for n points (∫ e^{−x²} g ≈ Σ ω_i g(x_i));
    the e^{x²} factor turns the rule into one for ∫ g(x) dx around a Gaussian-shaped g."""
    x, w = hermgauss(n)
    return np.ascontiguousarray(x), np.log(w) + x * x


def check_method(method, n_agq) -> int:
    """The number of quadrature nodes for ``method``/``n_agq`` (1 = Laplace), or ValueError.

    ``method="laplace"`` takes ``n_agq`` None or 1; ``method="agq"`` takes an integer ≥ 2
    (None: :data:`DEFAULT_N_AGQ`).
    """
    if method not in ("laplace", "agq"):
        raise ValueError(f"method must be 'laplace' or 'agq', got {method!r}")
    is_int = isinstance(n_agq, int | np.integer) and not isinstance(n_agq, bool)
    if method == "laplace":
        if n_agq is not None and not (is_int and n_agq == 1):
            raise ValueError(
                f"n_agq must be None or 1 with method='laplace' (use method='agq' for "
                f"quadrature), got {n_agq!r}"
            )
        return 1
    if n_agq is None:
        return DEFAULT_N_AGQ
    if not (is_int and n_agq >= 2):
        raise ValueError(f"n_agq must be an integer >= 2 with method='agq', got {n_agq!r}")
    return int(n_agq)


def agq_refit(
    gptr, gcell, gval, cls, Xc, lsc, ncl, doff, n_agq, max_iter, tol,
    coef, cov, sigma2, theta, loglik, status, n_iter, modes,
):  # fmt: skip
    """Refit every gene by AGQ with ``n_agq`` nodes from its Laplace fit.

    Parameters
    ----------
    gptr, gcell, gval, cls, Xc, lsc, ncl, doff
        The gene-major CSR counts and the cell classes, as ``_fit`` builds them.
    n_agq : int
        Number of Gauss–Hermite nodes (≥ 1; 1 reproduces the Laplace fit's likelihood).
    max_iter, tol
        Newton iterations and the Newton-decrement threshold.
    coef, cov, sigma2, theta, loglik, status, n_iter, modes
        The Laplace fit (:func:`pyflashmm._kernels.nbmm.fit_genes`'s outputs, ``cov`` in
        (β, ln σ², ln θ)); not modified.

    Returns
    -------
    tuple
        (coef, cov, sigma2, theta, loglik, status, n_iter, modes) of the AGQ fit, the same
        layout: ``loglik`` is Σ_j ln[√(2/H_j) Σ_i ω_i e^{x_i²} exp f_j(b̂_j + √(2/H_j) x_i)]
        plus the count-only constant, ``cov`` = (−∇²L)⁻¹ at the AGQ maximum, ``n_iter`` the
        Laplace plus the AGQ iterations. Genes with σ² held at 0 (status ``boundary``) keep
        the Laplace result, which is the AGQ result there; genes without a fit keep their
        status.
    """
    xk, lwk = hermite_rule(n_agq)
    out = [np.array(a, copy=True) for a in (coef, cov, sigma2, theta, loglik, status, n_iter,
                                            modes)]  # fmt: skip
    _ka.agq_fit_genes(gptr, gcell, gval, cls, Xc, lsc, ncl, doff, xk, lwk, max_iter, tol, *out)
    return tuple(out)
