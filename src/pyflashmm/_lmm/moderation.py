"""Empirical-Bayes moderated t tests of LMM contrasts (limma's moderation, per contrast).

For gene g and a single-row contrast c, the LMM gives the estimate ĉ_g = cᵀβ̂_g, its variance
v̂_g = cᵀCov(β̂_g)c = se_g² and the test's df d_g. The variance moderated is **v̂_g itself**:

* **The χ² model holds for (v̂_g, d_g).** Satterthwaite's d_g = 2v_g²/Var(v̂_g) is exactly the
  df of the scaled-χ² approximation v̂_g ~ v_g χ²_{d_g}/d_g (v_g = E v̂_g, matched in mean and
  variance), so (v̂_g, d_g) is the (s², d) pair of limma's model s² | σ² ~ σ² χ²_d/d. With
  ``df="residual"`` or ``"between"`` the common df plays that role.
* **It is comparable across genes.** For a between-subject contrast in a balanced design
  (m̄ cells per subject), v_g = (σ_b,g² + σ_g²/m̄)·u with u = cᵀ(X_bᵀX_b)⁻¹c (X_b the
  subject-level design) the same for every gene, and the prior fit is scale-equivariant
  (multiplying every v̂_g by u multiplies s0² and each posterior by u and leaves d0 unchanged:
  ``tests/test_moderation.py``); so moderating v̂_g is moderating the between-subject total
  variance σ_b² + σ²/m̄, the variance that governs the test. For a within-subject contrast
  in a balanced design, likewise v_g = σ_g²·u′ with u′ common to all genes. In unbalanced
  designs v_g is no exact multiple of one gene-level variance (the donors' GLS weights depend
  on each gene's σ_b²/σ²); the prior then describes the contrast variances themselves, still
  the quantity each test divides by.
* Moderating the residual variance σ² instead (as applying limma's eBayes to the residual
  standard deviations of mixed-model fits does, e.g. dream) shrinks a variance that is not the
  one a between-subject contrast is tested against, on df that are not the test's.

The prior σ_g⁻² ~ s0⁻² χ²_{d0}/d0 is fitted to all genes' (v̂_g, d_g) by
:func:`pyflashmm._ebayes.squeeze_var`, and the moderated test is

    ṽ_g = (d0 s0² + d_g v̂_g)/(d0 + d_g),   t̃_g = ĉ_g/√ṽ_g  on  min(d0 + d_g, Σ_g d_g) df

(the cap is limma's: the df cannot exceed the information of all genes together). d0 = ∞
gives ṽ_g = s0² for every gene. Genes without a finite estimate, variance or df > 0 are left
out of the prior and get NaN.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from pyflashmm._ebayes import SqueezedVar, squeeze_var
from pyflashmm._pvalues import t_two_sided

__all__ = [
    "ModeratedT",
    "check_moderation_args",
    "moderate_t",
    "prior_columns",
    "prior_summary",
    "warn_joint_not_moderated",
]

#: the columns of a table's ``attrs["moderation"]``
PRIOR_COLUMNS = ("contrast", "d0", "s0_squared", "d0_summary", "n_genes")


@dataclass(frozen=True)
class ModeratedT:
    """Moderated t tests of one contrast (arrays over genes).

    Attributes
    ----------
    t, se, df, p_value : ndarray
        t̃_g, √ṽ_g, the df min(d0 + d_g, Σ d_g) and the two-sided p-value; NaN for genes left
        out.
    used : ndarray of bool
        Genes that entered the prior.
    prior : SqueezedVar or None
        The fitted prior (``var_post`` over the used genes); None when no gene was usable.
    """

    t: np.ndarray
    se: np.ndarray
    df: np.ndarray
    p_value: np.ndarray
    used: np.ndarray
    prior: SqueezedVar | None


def check_moderation_args(moderate, robust) -> None:
    """``moderate`` and ``robust`` must be booleans; ``robust`` needs ``moderate``."""
    for name, value in (("moderate", moderate), ("robust", robust)):
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{name} must be a bool (True or False); got {value!r}")
    if robust and not moderate:
        raise ValueError("robust=True applies to the moderated test: set moderate=True too")


def moderate_t(est, var, df, *, robust: bool = False) -> ModeratedT:
    """Moderate the variances ``var`` of the estimates ``est`` (with df ``df``) across genes.

    Parameters
    ----------
    est : array_like, shape (G,)
        Contrast estimates ĉ_g.
    var : array_like, shape (G,)
        Their variances v̂_g = se_g².
    df : float or array_like, shape (G,)
        Their df d_g (Satterthwaite's, or a common df); NaN marks a gene without one.
    robust : bool
        Robust prior (outlying variances get a smaller, gene-specific d0).

    Returns
    -------
    ModeratedT
    """
    est = np.asarray(est, dtype=np.float64)
    var = np.asarray(var, dtype=np.float64)
    df = np.broadcast_to(np.asarray(df, dtype=np.float64), est.shape)
    if est.ndim != 1 or var.shape != est.shape:
        raise ValueError(f"est and var must be 1-d of one shape; got {est.shape}, {var.shape}")
    used = np.isfinite(est) & np.isfinite(var) & (var >= 0) & (df > 0)  # NaN df: False
    t, se, df_total, p = (np.full(est.shape, np.nan) for _ in range(4))
    if not used.any():
        return ModeratedT(t, se, df_total, p, used, None)
    d = df[used]
    prior = squeeze_var(var[used], d, robust=robust)
    se[used] = np.sqrt(prior.var_post)
    df_total[used] = np.minimum(prior.df_prior + d, np.sum(d))
    with np.errstate(invalid="ignore", divide="ignore"):
        t[used] = est[used] / se[used]
    p[used] = t_two_sided(t[used], df_total[used])
    return ModeratedT(t, se, df_total, p, used, prior)


def prior_summary(contrast: str, res: ModeratedT, robust: bool) -> dict:
    """One row of the table's ``attrs["moderation"]``: the contrast's prior."""
    prior = res.prior
    if prior is None:
        d0, s0_sq = np.nan, np.nan
    else:
        d0, s0_sq = float(np.median(prior.df_prior)), prior.var_prior
    return {
        "contrast": contrast,
        "d0": d0,
        "s0_squared": s0_sq,
        "d0_summary": "median over genes" if robust else "common",
        "n_genes": int(res.used.sum()),
    }


def prior_columns(rows: list[dict]) -> dict[str, list]:
    """The priors of :func:`prior_summary` as columns, for ``table.attrs["moderation"]``.

    Plain lists rather than a DataFrame: pandas compares the ``attrs`` of tables it
    concatenates, and a DataFrame there would make ``pd.concat`` of two tables fail.
    """
    return {k: [row[k] for row in rows] for k in PRIOR_COLUMNS}


def warn_joint_not_moderated(names, stacklevel: int = 4) -> None:
    """One warning naming the joint (multi-row) contrasts that ``moderate=True`` leaves as is.

    ``stacklevel`` 4: this function, :func:`lmmtest`, its BLAS-limiting wrapper, the caller.
    """
    if names:
        warnings.warn(
            "moderate=True applies to single-row contrasts only; joint F tests are not "
            f"moderated: {', '.join(repr(n) for n in names)}",
            UserWarning,
            stacklevel=stacklevel,
        )
