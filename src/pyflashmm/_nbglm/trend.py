"""The dispersion trend and the prior of the log dispersions (DESeq2's
``estimateDispersionsFit`` and ``estimateDispersionsPriorVar``).

Notation: base means μ̄_i, gene-wise dispersions α̂_i, trend α_tr(μ̄), m samples, p coefficients.

* ``parametric``: α_tr = a₀ + a₁/μ̄ by Gamma-family (identity link) IRLS on the genes with
  1e-4 < α̂/α_tr < 15, refitted until Σ ln(coef ratio)² < 1e-6; on failure DESeq2 uses
  ``local``.
* ``local``: a local quadratic, tricube, nearest-neighbour fraction 0.7 fit of ln α̂ on ln μ̄
  weighted by μ̄, evaluated on locfit's adaptive tree with cubic Hermite interpolation.
* ``mean``: the 0.1 %-trimmed mean of α̂.

Only genes with α̂ > 100·minDisp enter the trend.

Prior variance σ²_d = max(mad(ln α̂ − ln α_tr)² − ψ₁((m − p)/2), 0.25); for 1 ≤ m − p ≤ 3 a
distribution match of ln χ²_{m−p}/(m−p) + N(0, σ²) to the residual histogram.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import signal, special, stats

from pyflashmm._nbglm.r_stats import mad, trimmed_mean

MIN_DISP = 1e-8


class TrendFitError(RuntimeError):
    """The parametric trend could not be fitted (DESeq2 then uses the local fit)."""


def _gamma_identity_glm(y, x, start, maxit=25, epsilon=1e-8):
    """R's ``glm(y ~ x, family=Gamma("identity"), start=)``: returns (coef, converged)."""
    X = np.column_stack([np.ones_like(x), x])
    if y.size == 0:
        raise TrendFitError("no genes left for the parametric trend")

    def dev_of(mu):
        return np.sum(-2.0 * (np.log(np.where(y == 0, 1.0, y / mu)) - (y - mu) / mu))

    coef = np.asarray(start, dtype=np.float64)
    coefold = coef.copy()
    mu = X @ coef
    if not (np.all(np.isfinite(mu)) and np.all(mu > 0)):
        raise TrendFitError("cannot find valid starting values")
    devold = dev_of(mu)
    conv = False
    for _ in range(maxit):
        z = mu + (y - mu)
        w = 1.0 / np.abs(mu)
        new, *_ = np.linalg.lstsq(X * w[:, None], z * w, rcond=None)
        mu = X @ new
        dev = dev_of(mu) if np.all(mu > 0) else np.inf
        ii = 0
        while not np.isfinite(dev):
            ii += 1
            if ii > maxit:
                raise TrendFitError("inner loop 1; cannot correct step size")
            new = (new + coefold) / 2.0
            mu = X @ new
            dev = dev_of(mu) if np.all(mu > 0) else np.inf
        if not (np.all(np.isfinite(mu)) and np.all(mu > 0)):
            ii = 0
            while not (np.all(np.isfinite(mu)) and np.all(mu > 0)):
                ii += 1
                if ii > maxit:
                    raise TrendFitError("inner loop 2; cannot correct step size")
                new = (new + coefold) / 2.0
                mu = X @ new
            dev = dev_of(mu)
        coef = new
        if abs(dev - devold) / (abs(dev) + 0.1) < epsilon:
            conv = True
            break
        devold = dev
        coefold = coef.copy()
    return coef, conv


def parametric_trend(means, disps):
    """Coefficients (a₀, a₁) of α_tr = a₀ + a₁/μ̄; raises TrendFitError as DESeq2 does."""
    coefs = np.array([0.1, 1.0])
    it = 0
    with np.errstate(divide="ignore", invalid="ignore"):
        while True:
            resid = disps / (coefs[0] + coefs[1] / means)
            good = (resid > 1e-4) & (resid < 15)
            new, conv = _gamma_identity_glm(disps[good], 1.0 / means[good], coefs)
            old = coefs
            coefs = new
            if not np.all(coefs > 0):
                raise TrendFitError("parametric dispersion fit failed")
            if np.sum(np.log(coefs / old) ** 2) < 1e-6 and conv:
                break
            it += 1
            if it > 10:
                raise TrendFitError("dispersion fit did not converge")
    return coefs


class LocalTrend:
    """Local quadratic regression of ln α̂ on ln μ̄ (weights μ̄), locfit-style.

    Nearest-neighbour bandwidth h(x₀) = the ⌊0.7 n⌋-th smallest |x_i − x₀|, tricube kernel
    (1 − (d/h)³)³, weighted least squares on (1, x − x₀, (x − x₀)²). The fit is evaluated at
    the vertices of an adaptive binary tree over [min x, max x] (a cell is split at its
    midpoint while its length exceeds 0.8 × the smaller vertex bandwidth), and predictions
    are cubic Hermite interpolants of the vertex values and slopes.
    """

    #: deepest split of the evaluation tree; deeper means base means concentrated on a few
    #: values (the cells would shrink forever), reported as a failed fit
    MAX_DEPTH = 60

    def __init__(self, x, y, w, alpha=0.7, cut=0.8):
        if np.size(x) < 3:
            raise TrendFitError(f"a local quadratic fit needs at least 3 genes, got {np.size(x)}")
        self.x = np.asarray(x, float)
        self.y = np.asarray(y, float)
        self.w = np.asarray(w, float)
        self.alpha = alpha
        self.cut = cut
        self.k = max(int(np.floor(self.x.size * alpha)), 1)
        self.vert = {}
        lo, hi = float(self.x.min()), float(self.x.max())
        self.lo, self.hi = lo, hi
        self.splits = {}
        self._grow(lo, hi)

    def _fit(self, x0):
        if x0 in self.vert:
            return self.vert[x0]
        d = np.abs(self.x - x0)
        h = np.partition(d, self.k - 1)[self.k - 1]
        if h <= 0:
            h = d.max() if d.max() > 0 else 1.0
        u = d / h
        kw = np.where(u < 1, (1 - u**3) ** 3, 0.0) * self.w
        dx = self.x - x0
        A = np.column_stack([np.ones_like(dx), dx, dx * dx])
        sw = np.sqrt(kw)
        coef, *_ = np.linalg.lstsq(A * sw[:, None], self.y * sw, rcond=None)
        self.vert[x0] = (coef[0], coef[1], h)
        return self.vert[x0]

    def _grow(self, lo, hi, depth=0):
        if depth > self.MAX_DEPTH:
            raise TrendFitError("the evaluation tree of the local fit does not terminate")
        hl = self._fit(lo)[2]
        hh = self._fit(hi)[2]
        hmin = min(h for h in (hl, hh) if h > 0) if (hl > 0 or hh > 0) else 0.0
        if hmin > 0 and (hi - lo) / hmin > self.cut:
            mid = 0.5 * (lo + hi)
            self.splits[(lo, hi)] = mid
            self._fit(mid)
            self._grow(lo, mid, depth + 1)
            self._grow(mid, hi, depth + 1)

    def __call__(self, x):
        x = np.atleast_1d(np.asarray(x, float))
        out = np.empty_like(x)
        for n, x0 in enumerate(x):
            if x0 < self.lo or x0 > self.hi:
                # outside the fitted range: first-order extrapolation from the end vertex
                # (locfit's own rule differs by a small quadratic term, see tests)
                e = self.lo if x0 < self.lo else self.hi
                v, s, _ = self.vert[e]
                out[n] = v + s * (x0 - e)
                continue
            lo, hi = self.lo, self.hi
            while (lo, hi) in self.splits:
                mid = self.splits[(lo, hi)]
                if x0 <= mid:
                    hi = mid
                else:
                    lo = mid
            v0, s0, _ = self.vert[lo]
            v1, s1, _ = self.vert[hi]
            L = hi - lo
            t = (x0 - lo) / L
            h00 = 1 - 3 * t * t + 2 * t**3
            h01 = 3 * t * t - 2 * t**3
            h10 = t - 2 * t * t + t**3
            h11 = -t * t + t**3
            out[n] = v0 * h00 + v1 * h01 + L * (s0 * h10 + s1 * h11)
        return out


@dataclass(frozen=True)
class DispersionTrend:
    """A fitted dispersion trend α_tr(μ̄) (module docstring); call it on base means.

    Attributes
    ----------
    kind : {"parametric", "local", "mean"}
        The trend used (``local`` also when ``parametric`` was asked for and failed).
    coefficients : ndarray or None
        (a₀, a₁) of the parametric trend.
    mean : float or None
        The trimmed mean of the ``mean`` trend.
    local : LocalTrend or None
        The local fit (on the log-log scale).
    """

    kind: str
    coefficients: np.ndarray | None = None
    mean: float | None = None
    local: LocalTrend | None = None

    def __call__(self, base_mean) -> np.ndarray:
        q = np.asarray(base_mean, dtype=np.float64)
        if self.kind == "parametric":
            c = self.coefficients
            return c[0] + c[1] / q
        if self.kind == "local":
            return np.exp(self.local(np.log(q)))
        return np.full(np.shape(q), self.mean)


def fit_trend(base_mean, disp_gene_est, fit_type="parametric", min_disp=MIN_DISP):
    """The dispersion trend of ``fit_type`` (module docstring) as a :class:`DispersionTrend`.

    Raises ValueError when no gene-wise dispersion is usable or the trend cannot be fitted
    (the parametric trend first falls back to the local one, as in DESeq2).
    """
    use = disp_gene_est > 100 * min_disp
    if not use.any():
        raise ValueError(
            "counts: all gene-wise dispersion estimates are within 2 orders of magnitude of the "
            "minimum value; the trend cannot be fitted"
        )
    if fit_type == "parametric":
        try:
            coefs = parametric_trend(base_mean[use], disp_gene_est[use])
            return DispersionTrend("parametric", coefficients=coefs)
        except (TrendFitError, np.linalg.LinAlgError, ValueError):
            fit_type = "local"
    if fit_type == "local":
        means = base_mean[use]
        try:
            lt = LocalTrend(np.log(means), np.log(disp_gene_est[use]), means)
        except (TrendFitError, np.linalg.LinAlgError) as exc:
            raise ValueError(
                f"counts: the local dispersion trend could not be fitted: {exc} "
                f"({int(use.sum())} genes with a gene-wise dispersion above 100 × minDisp); "
                "fit_type='mean' fits a constant instead"
            ) from None
        return DispersionTrend("local", local=lt)
    if fit_type == "mean":
        use_mean = disp_gene_est > 10 * min_disp
        return DispersionTrend("mean", mean=trimmed_mean(disp_gene_est[use_mean], 0.001))
    raise ValueError(f"fit_type must be 'parametric', 'local' or 'mean', got {fit_type!r}")


# ----------------------------------------------------------------------------- prior variance


def var_log_disp_ests(disp_gene_est, disp_fit, min_disp=MIN_DISP):
    above = disp_gene_est >= min_disp * 100
    if not above.any():
        return np.nan
    resid = np.log(disp_gene_est[above]) - np.log(disp_fit[above])
    return mad(resid) ** 2


def prior_variance(disp_gene_est, disp_fit, m, p, min_disp=MIN_DISP):
    """σ²_d of the log-dispersion prior (with DESeq2's rule for 1 ≤ m − p ≤ 3).

    For m − p ≤ 3 DESeq2 matches, by Kullback–Leibler divergence of histograms (breaks
    −10..10 by 0.5), the residuals ln α̂ − ln α_tr to ln χ²_{m−p}/(m−p) + N(0, σ²), with a
    Monte-Carlo sample (R seed 2, 10⁴ draws) and a loess smooth over σ² ∈ [0, 8]. Here the
    same divergence is computed from the exact density of that sum (numerical convolution),
    minimised on the same 1,000-point grid: the same target without the Monte-Carlo noise,
    so values differ from DESeq2's by that noise (typically a few percent).
    """
    above = disp_gene_est >= min_disp * 100
    if not above.any():
        raise ValueError("counts: no gene-wise dispersion is above 100 × minDisp")
    vlde = var_log_disp_ests(disp_gene_est, disp_fit, min_disp)
    df = m - p
    if 1 <= df <= 3:
        resid = np.log(disp_gene_est[above]) - np.log(disp_fit[above])
        brks = np.arange(-20, 21) / 2.0
        resid = resid[(resid > brks[0]) & (resid < brks[-1])]
        obs, _ = np.histogram(resid, bins=brks, density=True)
        # exact density of ln(χ²_df / df) on a fine grid
        t = np.linspace(-30, 12, 8401)
        dt = t[1] - t[0]
        v = np.exp(t) * df
        base = stats.chi2.pdf(v, df) * v
        fine = np.linspace(0, 8, 1000)
        kls = np.empty(fine.size)
        for n, s2 in enumerate(fine):
            if s2 > 0:
                half = int(8 * np.sqrt(s2) / dt) + 1
                kern = stats.norm.pdf(np.arange(-half, half + 1) * dt, scale=np.sqrt(s2)) * dt
                dens = signal.fftconvolve(base, kern, mode="same")
            else:
                dens = base
            cdf = np.concatenate([[0.0], np.cumsum(dens) * dt])
            edges = np.interp(brks, np.concatenate([[t[0] - dt / 2], t + dt / 2]), cdf)
            mass = np.diff(edges)
            mass = mass / mass.sum()
            rnd = mass / 0.5
            z = np.concatenate([obs, rnd])
            small = z[z > 0].min()
            kls[n] = np.sum(obs * (np.log(obs + small) - np.log(rnd + small)))
        return max(float(fine[np.argmin(kls)]), 0.25)
    if m > p:
        return max(vlde - float(special.polygamma(1, df / 2.0)), 0.25)
    return vlde
