"""Inverses of the per-gene information matrices of θ = (σ₁², …, σ_K², σ²).

Satterthwaite's and Kenward–Roger's df weigh the gradient of a contrast's variance by an
estimate of Cov(θ̂): the inverse observed information (lmerTest's Satterthwaite, in
:mod:`pyflashmm._lmm.inference`) or the inverse expected information kept by the fit
(Kenward–Roger, and Satterthwaite with ``df="satterthwaite-expected"``).
"""

from __future__ import annotations

import numpy as np

from pyflashmm._lmm.fit import LmmFit


def batched_inverse(M: np.ndarray) -> np.ndarray:
    """Inverses of a stack of small square matrices (… × k × k); NaN where one is not finite
    or singular, so that one gene's degenerate information never stops the rest."""
    out = np.full_like(M, np.nan)
    good = np.isfinite(M).all(axis=(-2, -1))
    good[good] = np.abs(np.linalg.det(M[good])) > 0
    if good.any():
        out[good] = np.linalg.inv(M[good])
    return out


def inverse_expected_information(fit: LmmFit) -> np.ndarray:
    """W = I⁻¹ per gene (G × (K+1) × (K+1)), the inverse of the expected information of θ the
    fit kept (REML or ML); NaN where it is not finite or singular. Unlike the observed
    information it keeps a component held at 0 in the df: the expected information there is
    finite and positive."""
    return batched_inverse(fit.fim_theta)
