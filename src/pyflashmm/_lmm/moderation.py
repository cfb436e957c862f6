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

**Trend** (limma-trend, ``trend=True``). On log counts a gene's variance depends strongly on
its expression level, and one s0² for all genes shrinks lowly expressed (high-variance) genes
too little and highly expressed ones too much. With a trend the prior's scale is a function of
the gene's mean response ȳ_g = 1ᵀy_g/n: log s0²(ȳ) is a natural cubic spline in ȳ (limma's
``squeezeVar(covariate=)``, :func:`pyflashmm._ebayes.fit_f_dist`), d0 stays common, and
ṽ_g = (d0 s0²(ȳ_g) + d_g v̂_g)/(d0 + d_g). ȳ_g comes from the summary statistics
(:func:`mean_response`): the first random-effect block of a model with a random intercept per
donor is an indicator matrix Z₁ (one 1 per row), whose columns sum to the ones vector, so
1ᵀy_g = Σ_rows (Z₁ᵀY)_{·g}; otherwise an intercept column of X gives 1ᵀy_g as its row of XᵀY.
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
    "mean_response",
    "moderate_t",
    "prior_columns",
    "prior_summary",
    "warn_joint_not_moderated",
]

#: the columns of a table's ``attrs["moderation"]``
PRIOR_COLUMNS = ("contrast", "d0", "s0_squared", "d0_summary", "trend", "n_genes")


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


def check_moderation_args(moderate, robust, trend=False) -> None:
    """``moderate``, ``robust`` and ``trend`` must be booleans; ``robust`` and ``trend`` need
    ``moderate``; ``robust`` and ``trend`` together are not implemented."""
    for name, value in (("moderate", moderate), ("robust", robust), ("trend", trend)):
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{name} must be a bool (True or False); got {value!r}")
    if robust and not moderate:
        raise ValueError("robust=True applies to the moderated test: set moderate=True too")
    if trend and not moderate:
        raise ValueError("trend=True applies to the moderated test: set moderate=True too")
    if trend and robust:
        raise ValueError(
            "trend=True with robust=True is not implemented (limma's robust trend fits a "
            "lowess curve): use one of them"
        )


def resolve_trend(stats, moderate, robust, trend):
    """(trend, ȳ): the ``trend`` argument with None resolved, and the covariate it needs.

    None means on when ``moderate`` is, ``robust`` is not and :func:`mean_response` can be
    computed; ȳ is None without a trend. ``trend=True`` where ȳ cannot be computed raises.
    The arguments were checked by :func:`check_moderation_args`.
    """
    if trend is None:
        if not moderate or robust:
            return False, None
        try:
            return True, mean_response(stats)
        except ValueError:
            return False, None
    return trend, (mean_response(stats) if trend else None)


def mean_response(stats) -> np.ndarray:
    """Each gene's mean response ȳ_g = 1ᵀy_g/n, from the summary statistics alone.

    * An intercept column of X (named ``(Intercept)``, with squared norm n): its row of XᵀY
      is 1ᵀy_g.
    * Otherwise the first random-effect block, when it is an indicator matrix Z₁ (a random
      intercept per level: each cell in exactly one level): its columns sum to the ones
      vector, so 1ᵀy_g = 1ᵀZ₁ᵀy_g, the sum of that block's rows of ZᵀY. Recognised by its ZᵀZ
      sub-block, which is then diagonal with the level sizes (non-negative integers) summing
      to n. A first block that is a random slope of a ±1 covariate passes the same test; put
      a random intercept first (as ``de()`` does for its grouping) in such a design.

    Parameters
    ----------
    stats : SummaryStats
        The statistics of the fit (``LmmFit.stats``).

    Returns
    -------
    ndarray, shape (G,)

    Raises
    ------
    ValueError
        When neither applies (no indicator first block and no intercept column): 1ᵀy is then
        not determined by the statistics.
    """
    if stats is None:
        raise ValueError("trend=True needs the fit's summary statistics (fit.stats is None)")
    n = float(stats.n)
    names = list(stats.fixed_names)
    if "(Intercept)" in names:
        i = names.index("(Intercept)")
        if abs(float(np.asarray(stats.XX)[i, i]) - n) <= 1e-8 * max(n, 1.0):
            return np.asarray(stats.XY)[i] / n
    d = np.atleast_1d(stats.d)
    if d.size and d[0] > 0:
        q1 = int(d[0])
        block = np.asarray(stats.ZZ)[:q1, :q1]
        sizes = np.diag(block)
        tol = 1e-8 * max(n, 1.0)
        off_diagonal = block - np.diag(sizes)
        if (
            np.all(np.abs(off_diagonal) <= tol)
            and np.all(sizes >= -tol)
            and np.all(np.abs(sizes - np.round(sizes)) <= tol)
            and abs(sizes.sum() - n) <= tol
        ):
            return np.asarray(stats.ZY)[:q1].sum(axis=0) / n
    raise ValueError(
        "trend=True needs each gene's mean response 1ᵀy/n from the summary statistics: the "
        "first random-effect block must be a random intercept (an indicator block), or X must "
        "have an intercept column '(Intercept)'"
    )


def moderate_t(est, var, df, *, robust: bool = False, covariate=None) -> ModeratedT:
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
    covariate : array_like, shape (G,), optional
        x_g for a prior scale that trends with it (limma-trend: log s0²(x) a natural cubic
        spline in x; the LMM uses the mean response, :func:`mean_response`). Genes with a
        non-finite covariate are left out.

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
    if covariate is not None:
        covariate = np.asarray(covariate, dtype=np.float64)
        if covariate.shape != est.shape:
            raise ValueError(f"covariate must have shape {est.shape}; got {covariate.shape}")
        used &= np.isfinite(covariate)
    t, se, df_total, p = (np.full(est.shape, np.nan) for _ in range(4))
    if not used.any():
        return ModeratedT(t, se, df_total, p, used, None)
    d = df[used]
    cov_used = None if covariate is None else covariate[used]
    prior = squeeze_var(var[used], d, robust=robust, covariate=cov_used)
    se[used] = np.sqrt(prior.var_post)
    df_total[used] = np.minimum(prior.df_prior + d, np.sum(d))
    with np.errstate(invalid="ignore", divide="ignore"):
        t[used] = est[used] / se[used]
    p[used] = t_two_sided(t[used], df_total[used])
    return ModeratedT(t, se, df_total, p, used, prior)


def prior_summary(contrast: str, res: ModeratedT, robust: bool, trend: bool = False) -> dict:
    """One row of the table's ``attrs["moderation"]``: the contrast's prior (with a trend,
    ``s0_squared`` is the median of the per-gene s0²(ȳ_g) over the genes in the prior)."""
    prior = res.prior
    if prior is None:
        d0, s0_sq = np.nan, np.nan
    else:
        d0, s0_sq = float(np.median(prior.df_prior)), float(np.median(prior.var_prior))
    return {
        "contrast": contrast,
        "d0": d0,
        "s0_squared": s0_sq,
        "d0_summary": "median over genes" if robust else "common",
        "trend": bool(trend),
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
