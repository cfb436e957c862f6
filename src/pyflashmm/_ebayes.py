"""Empirical-Bayes prior for gene-wise variances (limma's ``squeezeVar``, gene-specific df).

Model (Smyth 2004, with per-gene degrees of freedom): for gene g,

* s_g² | σ_g² ~ σ_g² χ²_{d_g} / d_g  (the estimate and its df d_g, possibly non-integer);
* σ_g⁻² ~ s0⁻² χ²_{d0} / d0          (the prior: scale s0², df d0, common to all genes).

Marginally s_g²/s0² ~ F(d_g, d0). The prior is estimated by moments of log s_g²:
E[log s_g²] = log s0² + ψ(d_g/2) − log(d_g/2) − ψ(d0/2) + log(d0/2) and
Var[log s_g²] = ψ′(d_g/2) + ψ′(d0/2) (ψ digamma, ψ′ trigamma). The posterior mean of σ_g⁻² gives
the moderated variance

    s̃_g² = (d0 s0² + d_g s_g²) / (d0 + d_g),

which replaces s_g² in a t statistic with d0 + d_g df. d0 = ∞ (the log-variances scatter no
more than sampling alone explains) means every gene shares σ² = s0², and s̃_g² = s0².

With a covariate x_g (limma-trend; the gene's mean expression) the prior's scale trends with
it: log s0²(x) is a natural cubic spline in x (up to 4 df, limma's choice), fitted by least
squares to the bias-corrected log-variances, and d0 stays common; ``var_prior`` is then per gene.

The robust variant (Phipson et al. 2016) estimates the prior from Winsorized log-variances and
gives outlying genes a smaller, gene-specific prior df, so that their own variance counts more.

The implementations follow the published algorithms of limma 3.54 (``fitFDist`` with and
without ``covariate``, ``fitFDistRobustly`` without it, ``squeezeVar``), including its
safeguards (variances that are zero or tiny offset away from zero, genes without a usable
variance left out of the estimate), and are checked against it to 1e-6 relative in
``tests/test_ebayes.py``. limma 3.62 added a different estimator for unequal df and uses it by
default (``legacy=FALSE``); this module is the earlier method (``legacy=TRUE`` there), the one
whose moment equations are stated above.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy import interpolate, optimize, special
from scipy import linalg as scipy_linalg
from scipy import stats as sps

__all__ = ["SqueezedVar", "fit_f_dist", "squeeze_var"]

#: Gauss–Legendre rule on [0, 1] for the Winsorized moments (128 nodes, as limma's)
_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(128)
_NODES = (_NODES + 1.0) / 2.0
_WEIGHTS = _WEIGHTS / 2.0


@dataclass(frozen=True)
class SqueezedVar:
    """Result of :func:`squeeze_var`.

    Attributes
    ----------
    df_prior : float or ndarray
        d0: a scalar, or one value per gene with ``robust=True`` (outliers get less).
    var_prior : float or ndarray
        s0², the prior's scale (the typical variance): a scalar, or one value per gene with a
        ``covariate`` (the trend s0²(x_g)).
    var_post : ndarray
        s̃_g² = (d0 s0² + d_g s_g²)/(d0 + d_g) per gene; s0² where d0 = ∞ or d_g = 0, s_g²
        where d_g = ∞, NaN where s_g² is NaN.
    """

    df_prior: float | np.ndarray
    var_prior: float | np.ndarray
    var_post: np.ndarray


# --------------------------------------------------------------------------------------------
# special functions
# --------------------------------------------------------------------------------------------


def trigamma_inverse(x: float) -> float:
    """y with ψ′(y) = x (x > 0), by Newton's method on 1/ψ′ from y₀ = ½ + 1/x.

    1/ψ′(y) is nearly linear in y (ψ′(y) ≈ 1/y + 1/(2y²)), so Newton converges quickly and
    monotonically from that start. Far out the asymptotes are used: y = 1/√x for x > 10⁷ and
    y = 1/x for x < 10⁻⁶.
    """
    x = float(x)
    if np.isnan(x):
        return np.nan
    if x < 0:
        raise ValueError(f"trigamma_inverse: x must be ≥ 0; got {x}")
    if x > 1e7:
        return 1.0 / np.sqrt(x)
    if x < 1e-6:
        return 1.0 / x
    y = 0.5 + 1.0 / x
    for _ in range(50):
        tri = special.polygamma(1, y)
        step = tri * (1.0 - tri / x) / special.polygamma(2, y)
        y += step
        if -step / y < 1e-8:
            # Newton's last step was already below 1e-8 relative: the iterate is at the
            # quadratic-convergence floor; one more step polishes it to machine precision
            tri = special.polygamma(1, y)
            return float(y + tri * (1.0 - tri / x) / special.polygamma(2, y))
    warnings.warn("trigamma_inverse: iteration limit reached", RuntimeWarning, stacklevel=2)
    return float(y)


def _f_logsf(f, df1, df2):
    """log P(F(df1, df2) > f), accurate far into the tail; df2 may be ∞ (χ²_{df1}/df1)."""
    f, df1 = np.broadcast_arrays(np.asarray(f, dtype=np.float64), df1)
    if np.isinf(df2):
        return sps.chi2.logsf(f * df1, df1)
    # P(F > f) = I_x(df2/2, df1/2) with x = df2/(df2 + df1 f)
    a, b = df2 / 2.0, df1 / 2.0
    x = df2 / (df2 + df1 * f)
    p = special.betainc(a, b, x)
    with np.errstate(divide="ignore"):
        out = np.log(p)
    tiny = (p < 1e-280) & (x > 0)  # x = 0 (f = ∞): log P = −∞ as computed
    if np.any(tiny):  # I_x(a,b) = xᵃ(1−x)ᵇ / (a B(a,b)) · ₂F₁(a+b, 1; a+1; x), x small there
        xt, bt = x[tiny], b[tiny]
        out[tiny] = (
            a * np.log(xt)
            + bt * np.log1p(-xt)
            - np.log(a)
            - special.betaln(a, bt)
            + np.log(special.hyp2f1(a + bt, 1.0, a + 1.0, xt))
        )
    return out


def _f_logcdf(f, df1, df2):
    """log P(F(df1, df2) ≤ f); df2 may be ∞."""
    if np.isinf(df2):
        return sps.chi2.logcdf(np.asarray(f) * df1, df1)
    return sps.f.logcdf(f, df1, df2)


def _f_quantile(p, df1, df2, *, upper: bool):
    """Quantile of F(df1, df2) at lower-tail probability p (upper-tail when ``upper``)."""
    if np.isinf(df2):
        q = sps.chi2.isf(p, df1) if upper else sps.chi2.ppf(p, df1)
        return q / df1
    return sps.f.isf(p, df1, df2) if upper else sps.f.ppf(p, df1, df2)


def _f_pdf(f, df1, df2):
    """Density of F(df1, df2); df2 may be ∞."""
    if np.isinf(df2):
        return df1 * sps.chi2.pdf(f * df1, df1)
    return sps.f.pdf(f, df1, df2)


# --------------------------------------------------------------------------------------------
# the prior
# --------------------------------------------------------------------------------------------


def _as_inputs(s2, df) -> tuple[np.ndarray, np.ndarray]:
    s2 = np.asarray(s2, dtype=np.float64)
    if s2.ndim != 1:
        raise ValueError(f"s2 must be one-dimensional; got shape {s2.shape}")
    df = np.asarray(df, dtype=np.float64)
    if df.ndim > 1 or (df.ndim == 1 and df.shape != s2.shape):
        raise ValueError(f"df must be a scalar or have the shape of s2 {s2.shape}; got {df.shape}")
    if np.any(df < 0):
        raise ValueError("df must be non-negative")
    return s2, np.broadcast_to(df, s2.shape).copy()


def _as_covariate(covariate, shape) -> np.ndarray:
    """The covariate as floats of the variances' shape; ±∞ moved just outside the finite range
    (to its minimum − 1 and maximum + 1; with no finite value, to ∓1), as limma does."""
    x = np.array(covariate, dtype=np.float64)
    if x.shape != shape:
        raise ValueError(f"covariate must have the shape of s2 {shape}; got {x.shape}")
    if np.isnan(x).any():
        raise ValueError("covariate has NaN values: give every gene a covariate value")
    fin = np.isfinite(x)
    if not fin.all():
        if fin.any():
            lo, hi = x[fin].min(), x[fin].max()
            x[x == -np.inf] = lo - 1.0
            x[x == np.inf] = hi + 1.0
        else:
            x = np.sign(x)
    return x


class _NaturalSpline:
    """A basis of the natural cubic splines that ``splines::ns(x, df, intercept=TRUE)`` spans.

    Knots as ``ns`` places them: boundary knots at the range of ``x``, df − 2 interior knots at
    its quantiles (R's default type 7, which is numpy's ``linear``) at probabilities
    1/(df − 1), …, (df − 2)/(df − 1). The space is that of the cubic B-splines on these knots
    whose second derivative vanishes at both boundary knots, continued linearly beyond them.
    The basis here is those B-splines (on x standardised to [0, 1]) times an orthonormal basis
    of the null space of the two boundary constraints: another basis of the same space as
    ``ns``'s, so least-squares fitted values (and the residual variance) are the same.
    """

    def __init__(self, x: np.ndarray, df: int):
        self.lo = float(np.min(x))
        self.width = float(np.max(x)) - self.lo
        if not self.width > 0:
            raise ValueError("a spline needs at least two distinct covariate values")
        u = (x - self.lo) / self.width
        inner = np.quantile(u, np.linspace(0.0, 1.0, df)[1:-1])
        knots = np.concatenate([np.zeros(4), inner, np.ones(4)])
        nb = knots.size - 4
        self._bs = interpolate.BSpline(knots, np.eye(nb), 3, extrapolate=False)
        self._d1 = self._bs.derivative(1)
        ends = np.array([0.0, 1.0])
        self._null = scipy_linalg.null_space(self._bs.derivative(2)(ends))  # nb × df
        self._at_ends = self._bs(ends) @ self._null  # 2 × df
        self._slope_ends = self._d1(ends) @ self._null

    def basis(self, x: np.ndarray) -> np.ndarray:
        u = (np.asarray(x, dtype=np.float64) - self.lo) / self.width
        out = np.empty((u.size, self._null.shape[1]))
        left, right = u < 0.0, u > 1.0
        inside = ~(left | right)
        out[inside] = self._bs(u[inside]) @ self._null
        for side, j in ((left, 0), (right, 1)):  # linear beyond the boundary knots
            if side.any():
                du = u[side] - float(j)
                out[side] = self._at_ends[j] + du[:, None] * self._slope_ends[j]
        return out


def _spline_df(covariate_ok: np.ndarray) -> int:
    """limma's spline df for n genes: 1 + [n ≥ 3] + [n ≥ 6] + [n ≥ 30], at most the number of
    distinct covariate values."""
    n = covariate_ok.size
    df = 1 + int(n >= 3) + int(n >= 6) + int(n >= 30)
    return min(df, np.unique(covariate_ok).size)


def fit_f_dist(s2, df1, covariate=None) -> tuple[float | np.ndarray, float]:
    """Moment estimate of the scaled-F prior of the variances ``s2`` with df ``df1``.

    Under the module's model s_g²/s0² ~ F(d_g, d0). With e_g = log s_g² − ψ(d_g/2) + log(d_g/2)
    (the log-variance with its df-dependent bias removed), E[e_g] = log s0² − ψ(d0/2) +
    log(d0/2) and Var[e_g] = ψ′(d_g/2) + ψ′(d0/2); so ψ′(d0/2) = var(e) − mean ψ′(d_g/2) and
    s0² = exp(mean e + ψ(d0/2) − log(d0/2)). When the excess variance is ≤ 0, d0 = ∞ and s0² is
    the mean variance.

    With a ``covariate`` x_g (limma-trend: typically the gene's mean expression) the prior's
    scale depends on it: log s0²(x) = h(x) − ψ(d0/2) + log(d0/2) with h a natural cubic spline
    in x, fitted to e_g by least squares; var(e) above becomes the residual variance
    RSS/(n − rank) of that fit. The spline has 1 + [n ≥ 3] + [n ≥ 6] + [n ≥ 30] df (n the genes
    in the fit), at most the number of distinct covariate values, with knots as
    ``splines::ns(x, df, intercept=TRUE)`` places them (see :class:`_NaturalSpline`); with one
    df it is a constant (the fit without covariate). With d0 = ∞, s0²(x_g) = exp h(x_g).
    Genes left out of the fit (below) get the spline's value at their covariate, continued
    linearly beyond the covariate's range.

    Genes enter the estimate when s_g² is finite and ≥ 0 and d_g is finite and > 0 (NaN
    variances, d_g = 0 and d_g = ∞ are left out, as limma does). Zero variances would give
    log 0: every variance is raised to at least 10⁻⁵ × their median first (with a warning),
    and when more than half are zero the median is taken as 1.

    Parameters
    ----------
    s2 : array_like, shape (G,)
        Variance estimates s_g².
    df1 : float or array_like, shape (G,)
        Their degrees of freedom d_g (non-integer allowed).
    covariate : array_like, shape (G,), optional
        x_g for a prior scale that trends with it. NaN is an error; ±∞ is moved to just
        outside the finite values' range (minimum − 1, maximum + 1), as limma does.

    Returns
    -------
    (float or ndarray, float)
        s0² (the prior's scale: one value per gene, shape (G,), with a ``covariate``) and d0
        (its df; may be ``inf``). With a single usable gene, (its variance, 0).
    """
    s2, df1 = _as_inputs(s2, df1)
    if s2.size == 0:
        raise ValueError("s2 is empty")
    cov = None if covariate is None else _as_covariate(covariate, s2.shape)

    def _scale(value):  # one value per gene with a covariate
        return float(value) if cov is None else np.full(s2.shape, float(value))

    if s2.size == 1:
        return _scale(s2[0]), 0.0
    ok = np.isfinite(df1) & (df1 > 1e-15) & np.isfinite(s2) & (s2 > -1e-15)
    n_ok = int(ok.sum())
    if n_ok == 0:
        raise ValueError("no gene has a finite variance with finite positive df")
    if n_ok == 1:
        return _scale(s2[ok][0]), 0.0
    spline = None
    if cov is not None:
        spline_df = _spline_df(cov[ok])
        if spline_df >= 2:
            spline = _NaturalSpline(cov[ok], spline_df)
    x = np.maximum(s2[ok], 0.0)
    d = df1[ok]
    med = np.median(x)
    if med == 0:
        warnings.warn(
            "more than half of the variances are exactly zero: the prior is unreliable",
            RuntimeWarning,
            stacklevel=2,
        )
        med = 1.0
    elif np.any(x == 0):
        warnings.warn(
            "zero variances offset away from zero (to 1e-5 × the median)",
            RuntimeWarning,
            stacklevel=2,
        )
    x = np.maximum(x, 1e-5 * med)
    e = np.log(x) - special.digamma(d / 2.0) + np.log(d / 2.0)
    if spline is None:
        e_mean = float(np.mean(e))
        e_var = float(np.var(e, ddof=1))
    else:
        coef, _, rank, _ = np.linalg.lstsq(spline.basis(cov[ok]), e, rcond=None)
        resid = e - spline.basis(cov[ok]) @ coef
        e_var = float(np.sum(resid**2) / (n_ok - rank))
        e_mean = spline.basis(cov) @ coef  # every gene, the left-out ones too
    excess = e_var - float(np.mean(special.polygamma(1, d / 2.0)))
    if excess > 0:
        d0 = 2.0 * trigamma_inverse(excess)
        s0_sq = np.exp(e_mean + special.digamma(d0 / 2.0) - np.log(d0 / 2.0))
    else:
        d0 = np.inf
        s0_sq = float(np.mean(x)) if spline is None else np.exp(e_mean)
    if spline is None:
        return _scale(s0_sq), float(d0)
    return s0_sq, float(d0)


def _trimmed_mean(z: np.ndarray, trim: float) -> float:
    """Mean of z without its floor(n·trim) smallest and largest values (R's ``mean(trim=)``)."""
    if trim >= 0.5:
        return float(np.median(z))
    k = int(np.floor(z.size * trim))
    return float(np.mean(np.sort(z)[k : z.size - k]))


def _to_unit(df2):
    """df ∈ [0, ∞] ↦ df/(1 + df) ∈ [0, 1]: the scale on which the robust df is searched."""
    return 1.0 if np.isinf(df2) else df2 / (1.0 + df2)


def _from_unit(u):
    return np.inf if u >= 1.0 else u / (1.0 - u)


def _winsorized_moments(df1: float, df2: float, tail_p: tuple[float, float]):
    """Mean and variance of log F(df1, df2) Winsorized at its tail_p[0] and 1 − tail_p[1]
    quantiles: the tails as point masses at the quantiles, the middle integrated by Gauss–
    Legendre on the u = F/(1 + F) scale (a finite interval even for heavy upper tails)."""
    tail = np.asarray(tail_p, dtype=np.float64)
    fq = np.array(
        [
            _f_quantile(tail[0], df1, df2, upper=False),
            _f_quantile(tail[1], df1, df2, upper=True),
        ]
    )
    zq = np.log(fq)
    uq = fq / (1.0 + fq)
    width = uq[1] - uq[0]
    u = uq[0] + width * _NODES
    f = u / (1.0 - u)
    logf = np.log(f)
    dens = _f_pdf(f, df1, df2) / (1.0 - u) ** 2  # dF/du = 1/(1 − u)²
    mean = width * np.sum(_WEIGHTS * dens * logf) + np.sum(zq * tail)
    var = width * np.sum(_WEIGHTS * dens * (logf - mean) ** 2) + np.sum((zq - mean) ** 2 * tail)
    return float(mean), float(var)


def _fit_f_dist_robustly(s2, df1, tail_p):
    """Robust (s0², d0, per-gene d0) after Phipson et al. (2016), as limma's
    ``fitFDistRobustly`` without a covariate.

    The prior's df is the one whose Winsorized log-F variance equals the observed Winsorized
    variance of log s_g²; each gene's df is then shrunk by its probability of being an outlier
    (its tail probability under the fitted F against its empirical rank), made monotone in the
    tail probability.
    """
    n = s2.size
    if n < 2:
        return np.nan, np.nan, np.full(n, np.nan)
    if n == 2:
        s0_sq, d0 = fit_f_dist(s2, df1)
        return s0_sq, d0, np.full(n, d0)
    ok = ~np.isnan(s2) & np.isfinite(df1) & (df1 > 1e-6)
    if not ok.all():  # fit on the usable genes; the others get the robust prior's df
        s0_sq, d0, shrunk_ok = _fit_f_dist_robustly(s2[ok], df1[ok], tail_p)
        shrunk = np.full(n, d0)
        shrunk[ok] = shrunk_ok
        return s0_sq, d0, shrunk
    med = np.median(s2)
    if not med > 0:
        raise ValueError("the variances are mostly ≤ 0: no robust prior")
    x = s2.copy()
    tiny = x < med * 1e-12
    if tiny.any():
        warnings.warn(
            f"{int(tiny.sum())} very small variance(s) offset away from zero",
            RuntimeWarning,
            stacklevel=3,
        )
        x[tiny] = med * 1e-12
    s0_nr, d0_nr = fit_f_dist(x, df1)
    lo_p, hi_p = tail_p
    if lo_p < 1.0 / n and hi_p < 1.0 / n:  # nothing to Winsorize
        return s0_nr, d0_nr, np.full(n, d0_nr)

    # one df for all: map each gene's F value to the quantile with the largest df1 that has
    # the same tail probability under the non-robust prior (through the nearer tail)
    d1max = float(np.max(df1))
    lower = df1 < d1max - 1e-14
    if lower.any():
        f = x[lower] / s0_nr
        log_up = _f_logsf(f, df1[lower], d0_nr)
        log_lo = _f_logcdf(f, df1[lower], d0_nr)
        up = log_up < log_lo
        f[up] = _f_quantile(np.exp(log_up[up]), d1max, d0_nr, upper=True)
        f[~up] = _f_quantile(np.exp(log_lo[~up]), d1max, d0_nr, upper=False)
        x[lower] = f * s0_nr
    d1 = d1max

    z = np.log(x)
    z_trend = _trimmed_mean(z, hi_p)
    z_res = z - z_trend
    q_lo, q_hi = np.quantile(z_res, [lo_p, 1.0 - hi_p])
    z_win = np.clip(z_res, q_lo, q_hi)
    zw_mean = float(np.mean(z_win))
    zw_var = float(np.var(z_win, ddof=1))
    tails = (lo_p, hi_p)

    mean_inf, var_inf = _winsorized_moments(d1, np.inf, tails)
    gap_inf = np.log(zw_var / var_inf)
    if gap_inf <= 0:  # no more scatter than sampling: d0 = ∞, outliers judged by χ²
        centre = z_trend + zw_mean - mean_inf
        s0_sq = float(np.exp(centre))
        fstat = np.exp(z - centre)
        tail_prob = sps.chi2.sf(fstat * d1, d1)
        rank = sps.rankdata(fstat)
        not_outlier = np.minimum(tail_prob / ((n - rank + 0.5) / n), 1.0)
        shrunk = np.full(n, np.inf)
        out = not_outlier < 1
        if out.any():
            shrunk[out] = not_outlier[out] * n * d1
            order = np.argsort(tail_prob, kind="stable")
            shrunk[order] = np.maximum.accumulate(shrunk[order])
        return s0_sq, np.inf, shrunk
    if np.isinf(d0_nr):
        return s0_nr, d0_nr, np.full(n, d0_nr)

    def gap(u):
        return np.log(zw_var / _winsorized_moments(d1, _from_unit(u), tails)[1])

    u_lo = _to_unit(d0_nr)
    gap_lo = gap(u_lo)
    if gap_lo >= 0:
        d0 = d0_nr
    else:
        d0 = _from_unit(optimize.brentq(gap, u_lo, 1.0, xtol=1e-15, rtol=4 * np.finfo(float).eps))
    mean_d0 = _winsorized_moments(d1, d0, tails)[0]
    centre = z_trend + zw_mean - mean_d0
    s0_sq = float(np.exp(centre))
    fstat = np.exp(z - centre)
    log_tail = _f_logsf(fstat, d1, d0)
    rank = sps.rankdata(fstat)
    log_not_outlier = np.minimum(log_tail - (np.log(n - rank + 0.5) - np.log(n)), 0.0)
    if not (log_not_outlier < 0).any():
        return s0_sq, d0, np.full(n, d0)
    not_outlier = np.exp(log_not_outlier)
    outlier = -np.expm1(log_not_outlier)
    min_log_tail = float(np.min(log_tail))
    if min_log_tail == -np.inf:
        shrunk = not_outlier * d0
    else:
        # the df at which the most extreme gene would have tail probability ½, refined once
        d0_out = np.log(0.5) / min_log_tail * d0
        d0_out = np.log(0.5) / float(_f_logsf(np.max(fstat), d1, d0_out)) * d0_out
        shrunk = not_outlier * d0 + outlier * d0_out
    order = np.argsort(log_tail, kind="stable")
    ordered = shrunk[order]
    running = np.cumsum(ordered) / np.arange(1, n + 1)
    imin = int(np.argmin(running))
    ordered[: imin + 1] = running[imin]
    shrunk[order] = np.maximum.accumulate(ordered)
    return s0_sq, d0, shrunk


def _posterior(s2, df, var_prior, df_prior) -> np.ndarray:
    """(d0 s0² + d_g s_g²)/(d0 + d_g) with the limits: s0² where d0 = ∞, s_g² where d_g = ∞."""
    df_prior = np.broadcast_to(np.asarray(df_prior, dtype=np.float64), s2.shape)
    var_prior = np.broadcast_to(np.asarray(var_prior, dtype=np.float64), s2.shape)
    post = var_prior.copy()
    fin = np.isfinite(df_prior)
    with np.errstate(invalid="ignore", divide="ignore"):
        mix = (df * s2 + df_prior * var_prior) / (df + df_prior)
    post[fin] = mix[fin]
    known = fin & np.isinf(df)  # a variance known exactly is its own posterior
    post[known] = s2[known]
    return post


def squeeze_var(
    s2, df, *, covariate=None, robust: bool = False, winsor_tail_p=(0.05, 0.1)
) -> SqueezedVar:
    """Empirical-Bayes moderation of gene-wise variances (limma's ``squeezeVar``).

    Model (see the module docstring): s_g² | σ_g² ~ σ_g² χ²_{d_g}/d_g and
    σ_g⁻² ~ s0⁻² χ²_{d0}/d0; the prior (s0², d0) is estimated from all genes by
    :func:`fit_f_dist` and each variance is replaced by its posterior value
    s̃_g² = (d0 s0² + d_g s_g²)/(d0 + d_g), which has d0 + d_g df. With a ``covariate`` x_g
    the prior's scale trends with it, s0² = s0²(x_g) with log s0²(x) a natural cubic spline in
    x (limma-trend; :func:`fit_f_dist`), and d0 stays common.

    Parameters
    ----------
    s2 : array_like, shape (G,)
        Variance estimates s_g² (NaN allowed: left out of the prior, NaN posterior).
    df : float or array_like, shape (G,)
        Their degrees of freedom d_g: non-integer allowed; 0 (no information: the posterior is
        s0²) and ∞ (a known variance: left out of the prior, posterior s_g²) allowed.
    covariate : array_like, shape (G,), optional
        x_g for a prior scale that trends with it (``var_prior`` becomes per gene). Finite
        values, or ±∞ (moved just outside the finite range); NaN raises ValueError.
    robust : bool
        Estimate the prior robustly and give outlying genes a smaller prior df
        (``df_prior`` becomes a per-gene vector), as limma's ``robust=TRUE``. Not available
        together with ``covariate`` (ValueError): limma's robust trend fits a lowess curve,
        which is not implemented here.
    winsor_tail_p : (float, float)
        Lower and upper tail proportions Winsorized by the robust estimate.

    Returns
    -------
    SqueezedVar
        ``df_prior`` (d0), ``var_prior`` (s0²; per gene with a covariate), ``var_post`` (s̃_g²).

    Notes
    -----
    The prior, and so every posterior, scales with the variances: multiplying every s_g² by
    u > 0 multiplies s0² and s̃_g² by u and leaves d0 unchanged.

    One deviation from limma 3.54: a gene with d_g = ∞ gets s̃_g² = s_g² (the limit of the
    formula) where limma's arithmetic gives NaN (∞/∞).
    """
    if not isinstance(robust, (bool, np.bool_)):
        raise TypeError(f"robust must be a bool; got {robust!r}")
    if robust and covariate is not None:
        raise ValueError(
            "robust=True with a covariate is not implemented (limma's robust trend fits a "
            "lowess curve): use robust=False with the covariate, or robust=True without it"
        )
    tail_p = tuple(float(t) for t in np.broadcast_to(np.asarray(winsor_tail_p, float), (2,)))
    if not all(0 <= t < 0.5 for t in tail_p):
        raise ValueError(f"winsor_tail_p must lie in [0, 0.5); got {winsor_tail_p!r}")
    s2, df = _as_inputs(s2, df)
    if s2.size == 0:
        raise ValueError("s2 is empty")
    if covariate is not None:
        covariate = _as_covariate(covariate, s2.shape)
    if s2.size == 1:
        var_prior = float(s2[0]) if covariate is None else s2.copy()
        return SqueezedVar(df_prior=0.0, var_prior=var_prior, var_post=s2.copy())
    s2 = np.where(df == 0, 0.0, s2)  # no information: the value does not matter
    if robust:
        var_prior, _, df_prior = _fit_f_dist_robustly(s2, df, tail_p)
        if np.isnan(df_prior).any():
            raise ValueError("could not estimate the prior df")
    else:
        var_prior, df_prior = fit_f_dist(s2, df, covariate=covariate)
    var_post = _posterior(s2, df, var_prior, df_prior)
    if covariate is None:
        var_prior = float(var_prior)
    return SqueezedVar(df_prior=df_prior, var_prior=var_prior, var_post=var_post)
