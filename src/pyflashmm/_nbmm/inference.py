"""Tests of a fitted NB mixed model: Wald z, Wald t on the donor-level df, and likelihood-ratio
tests, for any contrast.

Notation: gene g, β̂ (natural-log scale, p coefficients) with covariance Σ (the β block of
``NbmmFit.cov``, the inverse negative Hessian of the Laplace log-likelihood), J donors, m cells,
a contrast c (p) or a joint contrast L (p × r).

* Wald: estimate cᵀβ̂, standard error √(cᵀΣc), statistic cᵀβ̂/√(cᵀΣc). With ``df="z"`` it is
  referred to N(0, 1) (glmmTMB's ``summary`` z); with ``df="between"`` to a t distribution on the
  between–within df of the contrast (as :func:`pyflashmm.lmmtest`'s ``df="between"``): J − r_b
  when the contrast involves only donor-level columns (columns of X constant within every donor,
  r_b their rank), else m − J − (p − r_b). A donor-level effect is estimated from J donor means,
  not from m cells: referring it to N(0, 1) ignores that Σ is estimated from J donors, which
  is anti-conservative with few donors. A joint contrast gives
  W = (Lᵀβ̂)ᵀ(LᵀΣL)⁻¹(Lᵀβ̂), referred to χ²_r (``"z"``) or W/r to F(r, df) (``"between"``).
* LRT: 2(ℓ_full − ℓ_reduced) ~ χ²_{p − p₀}, ℓ the Laplace log-likelihoods, the reduced model
  (the same NB mixed model, σ² and α re-estimated) refitted to every gene. The reduced design is
  ``reduced`` when given, else X without the coefficients the contrast picks, or X·N with N an
  orthonormal basis of the null space of Lᵀ (as :func:`pyflashmm.nbglm_test`). The log fold
  change is the full fit's.
* Genes without a fit (status ``all_zero``, ``one_group``, ``not_positive_definite``, …) get NaN;
  so do LRTs whose reduced fit failed. BH is applied over genes per contrast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import stats

from pyflashmm import _status
from pyflashmm._checks import aliased_columns
from pyflashmm._contrasts import as_contrasts
from pyflashmm._multitest import bh_adjust
from pyflashmm._nbglm.inference import reduced_design
from pyflashmm._nbmm.fit import fit_arrays

if TYPE_CHECKING:
    from pyflashmm._nbmm.fit import NbmmFit

#: reference distributions of the Wald test ("auto" is "between")
DF_METHODS = ("auto", "between", "z")
TESTS = ("wald", "lrt")

#: columns of the table of :func:`nbmm_test`, in order
COLUMNS = (
    "variable",
    "contrast",
    "log_fc",
    "se",
    "stat",
    "df",
    "p_value",
    "adj_p_value",
    "method",
    "base_mean",
    "sigma2",
    "dispersion",
    "converged",
    "status",
)

_LN2 = np.log(2.0)


def between_columns(X: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """Columns of X constant within every donor (``groups`` the donor code of each cell)."""
    counts = np.bincount(groups, minlength=n_groups).astype(np.float64)
    means = np.zeros((n_groups, X.shape[1]))
    np.add.at(means, groups, X)
    means /= counts[:, None]
    dev = np.abs(X - means[groups]).max(axis=0)
    scale = np.maximum(np.abs(X).max(axis=0), 1e-300)
    return dev <= 1e-12 * scale


def between_df(fit: NbmmFit, L: np.ndarray) -> float:
    """Between–within df of contrast L (module docstring)."""
    X = fit.X
    J = len(fit.group_names)
    m, p = X.shape
    between = between_columns(X, fit.data.groups, J)
    sub = X[:, between]
    r_b = sub.shape[1] - len(aliased_columns(sub.T @ sub)) if between.any() else 0
    touches_within = np.any(np.abs(L[~between]) > 0)
    df = m - J - (p - r_b) if touches_within else J - r_b
    if df <= 0:
        raise ValueError(
            f"df='between' leaves {df} degrees of freedom for this design ({J} donors); use df='z'"
        )
    return float(df)


def _wald(fit: NbmmFit, L: np.ndarray, df_method: str):
    """(estimate, standard error, statistic, p-value, df) of contrast L, natural-log scale."""
    p = fit.coef.shape[1]
    S = fit.cov[:, :p, :p]
    r = L.shape[1]
    df = between_df(fit, L) if df_method == "between" else np.inf
    G = fit.coef.shape[0]
    if r == 1:
        c = np.ascontiguousarray(L[:, 0])
        est = fit.coef @ c
        se = np.sqrt(np.maximum(np.einsum("i,gij,j->g", c, S, c), 0.0))
        with np.errstate(invalid="ignore", divide="ignore"):
            stat = est / se
        dist = stats.norm if np.isinf(df) else stats.t(df)
        return est, se, stat, 2.0 * dist.sf(np.abs(stat)), df
    b = fit.coef @ L
    V = np.einsum("ik,gij,jl->gkl", L, S, L)
    W = np.full(G, np.nan)
    ok = np.isfinite(b).all(axis=1) & np.isfinite(V).all(axis=(1, 2))
    if ok.any():
        # a pseudo-inverse: one gene with a singular LᵀΣL must not stop the others
        W[ok] = np.einsum("gk,gk->g", b[ok], (np.linalg.pinv(V[ok]) @ b[ok][..., None])[..., 0])
    nan = np.full(G, np.nan)
    if np.isinf(df):
        return nan, nan.copy(), W, stats.chi2.sf(W, r), float(r)
    F = W / r
    return nan, nan.copy(), F, stats.f.sf(F, r, df), df


def check_reduced(reduced, X: np.ndarray) -> np.ndarray:
    """The reduced design of an LRT as float64 (m × p₀, 1 ≤ p₀ < p, full column rank)."""
    m, p = X.shape
    R = np.asarray(reduced, dtype=np.float64)
    if R.ndim != 2 or R.shape[0] != m or not (1 <= R.shape[1] < p):
        raise ValueError(f"reduced must have shape ({m}, p0) with 1 <= p0 < {p}, got {R.shape}")
    if not np.isfinite(R).all():
        raise ValueError("reduced contains NaN or infinite values")
    if aliased_columns(R.T @ R):
        raise ValueError("reduced is not of full column rank")
    return R


def _reduced_loglik(fit: NbmmFit, X0: np.ndarray, progress) -> np.ndarray:
    """ℓ of the reduced model with design X0 for every gene (NaN where its fit failed)."""
    res = fit_arrays(fit.data, X0, fit.size_factors, len(fit.group_names), progress)
    ll = res["loglik"]
    return np.where(np.isin(res["status"], (_status.OK, _status.BOUNDARY)), ll, np.nan)


def _lrt(fit: NbmmFit, L, reduced, cache: dict, progress):
    """(statistic, p-value, df) of the LRT of contrast L; reduced fits cached by design."""
    X0 = reduced if reduced is not None else reduced_design(fit.X, L)
    if X0.shape[1] == 0:
        raise ValueError(
            "contrast: the reduced model of this LRT has no fixed effects (the design has one "
            "column); use test='wald'"
        )
    key = (X0.shape, np.ascontiguousarray(X0).tobytes())
    if key not in cache:
        cache[key] = _reduced_loglik(fit, X0, progress)
    stat = 2.0 * (fit.loglik - cache[key])
    # the reduced model's maximum cannot exceed the full one's: negatives within the fits'
    # precision (Newton decrement < tol, log-likelihood rounding) are 0; a larger negative means
    # the full fit is not at its maximum, and the test is NaN
    slack = 10.0 * fit.data.tol + 1e-10 * np.abs(fit.loglik)
    stat = np.where(stat < 0, np.where(stat >= -slack, 0.0, np.nan), stat)
    r = fit.X.shape[1] - X0.shape[1]
    return stat, stats.chi2.sf(stat, r), float(r)


def nbmm_test(
    fit: NbmmFit,
    contrast=None,
    reduced=None,
    *,
    test: str = "wald",
    df: str = "between",
    progress: bool | None = None,
) -> pd.DataFrame:
    """Test contrasts of a fitted NB mixed model (Wald or likelihood ratio).

    Parameters
    ----------
    fit : NbmmFit
        The result of :func:`pyflashmm.nbmm`.
    contrast : None, str, list, dict, ndarray or DataFrame
        What to test, by :func:`pyflashmm.contrast_matrix`'s rules: a coefficient name or
        expression (``"conditionstim"``), a list of them, a dict name → expression (a list of
        expressions is one joint test), a numeric vector or a p × L array. None tests every
        coefficient.
    reduced : array_like, shape (m, p₀), optional
        LRT only: the reduced design, the same for every contrast; default, per contrast, X
        without the coefficients it tests (module docstring).
    test : {"wald", "lrt"}
        Wald (no refit) or likelihood ratio (one reduced fit per distinct reduced design). The
        LRT needs an ML fit (``nbmm(..., reml=False)``): a REML fit raises ValueError.
    df : {"between", "auto", "z"}
        Wald only: t (F for joint contrasts) on the between–within df (default; ``"auto"`` is
        the same, as in :func:`pyflashmm.de`), or the normal (χ²) reference distribution as
        glmmTMB's z. The LRT is referred to χ².
    progress : bool, optional
        Progress bar of the reduced fits.

    Returns
    -------
    pandas.DataFrame
        One row per (gene, contrast), contrasts in blocks: ``variable``, ``contrast``,
        ``log_fc`` (log2 fold change; NaN for a joint contrast), ``se`` (log2), ``stat`` (t, z,
        F, χ² or the LR statistic), ``df``, ``p_value``, ``adj_p_value`` (BH per contrast),
        ``method`` ("nbmm"), ``base_mean``, ``sigma2``, ``dispersion``, ``converged``,
        ``status``. ``attrs["test"]`` and ``attrs["df"]`` record the test.
    """
    test = str(test).lower()
    if test not in TESTS:
        raise ValueError(f"test must be one of {TESTS}, got {test!r}")
    if df not in DF_METHODS:
        raise ValueError(f"df must be one of {DF_METHODS}, got {df!r}")
    df = "between" if df == "auto" else df
    if fit.data is None:
        raise ValueError("fit carries no data for tests (it was not made by nbmm)")
    if reduced is not None and test != "lrt":
        raise ValueError("reduced: a reduced design is for test='lrt' only")
    if test == "lrt" and getattr(fit, "reml", False):
        # the REML likelihood integrates β out: its value depends on the fixed-effects design,
        # so REML likelihoods of a full and a reduced model are not comparable
        raise ValueError(
            "test='lrt' on a REML fit: REML likelihoods of models with different fixed "
            "effects are not comparable; refit with reml=False for the LRT, or use test='wald'"
        )
    contrasts = as_contrasts(list(fit.coef_names), contrast)
    if test == "lrt" and reduced is not None:
        reduced = check_reduced(reduced, fit.X)
    G = fit.coef.shape[0]
    cache: dict = {}
    blocks = []
    for L in contrasts.values():
        if test == "wald":
            est, se, stat, pval, dfk = _wald(fit, L, df)
        else:
            est, se = np.full(G, np.nan), np.full(G, np.nan)
            if L.shape[1] == 1:
                est, se = _wald(fit, L, "z")[:2]
            stat, pval, dfk = _lrt(fit, L, reduced, cache, progress)
        pval = np.where(fit.converged, pval, np.nan)  # no test of a fit that did not converge
        blocks.append((est / _LN2, se / _LN2, stat, dfk, pval, bh_adjust(pval)))
    K = len(blocks)
    table = pd.DataFrame(
        {
            "variable": np.tile(np.asarray(fit.gene_names, dtype=object), K),
            "contrast": np.repeat(np.asarray(list(contrasts), dtype=object), G),
            "log_fc": np.concatenate([b[0] for b in blocks]),
            "se": np.concatenate([b[1] for b in blocks]),
            "stat": np.concatenate([b[2] for b in blocks]),
            "df": np.repeat([b[3] for b in blocks], G),
            "p_value": np.concatenate([b[4] for b in blocks]),
            "adj_p_value": np.concatenate([b[5] for b in blocks]),
            "method": np.full(G * K, "nbmm", dtype=object),
            "base_mean": np.tile(fit.base_mean, K),
            "sigma2": np.tile(fit.sigma2, K),
            "dispersion": np.tile(fit.dispersion, K),
            "converged": np.tile(fit.converged, K),
            "status": np.tile(fit.status, K),
        }
    )
    table.attrs["test"] = test
    table.attrs["df"] = df if test == "wald" else "chi2"
    return table
