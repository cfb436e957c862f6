"""Dispersion estimation of the DESeq2 pipeline.

Notation: genes i, samples j (m of them), design X (m×p), size factors s_j, normalized
counts y_ij/s_j, base mean μ̄_i = mean_j y_ij/s_j, dispersion α_i (Var = μ + αμ²).

1. Initial α̂⁰ = min(rough, moments) clipped to [minDisp, max(10, m)] with
   rough = Σ_j[(q_ij − μ̂_ij)² − μ̂_ij]/μ̂_ij² / (m − p) (μ̂ = max(1, OLS fit of q = y/s)) and
   moments = (Var_j q_ij − mean_j(1/s_j)·μ̄_i)/μ̄_i².
2. μ̂_ij = s_j · (OLS fit of q_ij on X) when X has as many distinct rows as columns (the
   "linear model" route), else an NB GLM fit at α̂⁰; floored at ``minmu``.
3. Gene-wise α̂_i maximises the Cox–Reid adjusted likelihood by DESeq2's Armijo line search
   in ln α (``_kernels.nb.fit_disp``); a fit that does not raise lp by |lp|·1e-6 reverts to
   α̂⁰; a non-converged fit (maxit reached or a single step) above 1e-7 is redone on a grid.
4. Trend α_tr(μ̄): ``parametric`` a₀ + a₁/μ̄ by Gamma-family (identity link) IRLS on genes
   with 1e-4 < α̂/α_tr < 15, refitted until Σ ln(coef ratio)² < 1e-6; on failure ``local``
   (a local quadratic, tricube, nearest-neighbour fraction 0.7 fit of ln α̂ on ln μ̄ weighted
   by μ̄, evaluated on locfit's adaptive tree with cubic Hermite interpolation); ``mean`` is
   the 0.1 %-trimmed mean.
5. Prior variance σ²_d = max(mad(ln α̂ − ln α_tr)² − ψ₁((m − p)/2), 0.25); for 1 ≤ m−p ≤ 3
   a distribution match of ln χ²_{m−p}/(m−p) + N(0, σ²) to the residual histogram.
6. MAP: maximise lp(a) − (a − ln α_tr)²/(2σ²_d) from α̂ (or α_tr when α̂ < 0.1 α_tr);
   genes with ln α̂ > ln α_tr + 2·sqrt(mad²) keep α̂ (dispersion outliers).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import signal, special, stats

from pyflashmm._kernels import nb as _nb
from pyflashmm._nbglm._util import mad, row_groups, trimmed_mean
from pyflashmm._nbglm.count_block import CountBlock

MIN_DISP = 1e-8


# ----------------------------------------------------------------------------- initial values


def linear_model_mu(Q, X):
    """OLS fitted values of each row of Q (G×m) on X (m×p): Q X (XᵀX)⁻¹ Xᵀ.

    For a group design (as many distinct rows as columns) the fit is the mean of each group,
    computed as such (samples of a group then get bitwise-equal fitted values).
    """
    lab, R = row_groups(X)
    if R == X.shape[1]:
        ind = np.zeros((X.shape[0], R))
        ind[np.arange(X.shape[0]), lab] = 1.0
        means = (Q @ ind) / np.bincount(lab, minlength=R)
        return means[:, lab]
    q, _ = np.linalg.qr(X)
    return (Q @ q) @ q.T


def rough_disp(Qn, X):
    """DESeq2's rough moment estimate from normalized counts Qn (G×m)."""
    m, p = X.shape
    mu = np.maximum(1.0, linear_model_mu(Qn, X))
    est = (((Qn - mu) ** 2 - mu) / mu**2).sum(axis=1) / (m - p)
    return np.maximum(est, 0.0)


def moments_disp(Qn, sf):
    bm = Qn.mean(axis=1)
    bv = Qn.var(axis=1, ddof=1)
    xim = np.mean(1.0 / sf)
    return (bv - xim * bm) / bm**2


def is_group_design(X):
    """True when X has as many distinct rows as columns (DESeq2's linearMu rule)."""
    return row_groups(X)[1] == X.shape[1]


# ----------------------------------------------------------------------------- line search wrappers


def design_rows(X):
    """Distinct rows Xr (R×p, first-appearance order) of X and the row label of each sample."""
    lab, R = row_groups(X)
    Xr = np.empty((R, X.shape[1]))
    Xr[lab] = X
    return np.ascontiguousarray(Xr, dtype=np.float64), np.ascontiguousarray(lab, dtype=np.int64)


def row_order(lab, R):
    """Samples sorted by design row (stable) and the R + 1 offsets of each row's samples."""
    order = np.argsort(lab, kind="stable").astype(np.int64)
    off = np.zeros(R + 1, np.int64)
    off[1:] = np.cumsum(np.bincount(lab, minlength=R))
    return order, off


def cell_classes(sf, lab, R):
    """Classes of samples sharing a size factor and a design row (hence the same fitted μ).

    Classes are numbered by design row first. Returns (cls, sizes, row offsets, n_cls);
    ``n_cls`` = 0 (no grouping) without ``sf`` or when every class would be a single sample.
    """
    m = lab.size
    none = np.zeros(m, np.int64), np.zeros(1), np.zeros(R + 1, np.int64), 0
    if sf is None:
        return none
    sf = np.asarray(sf, dtype=np.float64)
    # classes are the distinct (row, size factor) pairs in lexicographic order
    order = np.lexsort((sf, lab))
    ls, ss = lab[order], sf[order]
    first = np.ones(m, dtype=bool)
    first[1:] = (ls[1:] != ls[:-1]) | (ss[1:] != ss[:-1])
    n_cls = int(np.count_nonzero(first))
    if n_cls >= m:
        return none
    cls = np.empty(m, np.int64)
    cls[order] = np.cumsum(first) - 1
    size = np.bincount(cls, minlength=n_cls).astype(np.float64)
    off = np.zeros(R + 1, np.int64)
    off[1:] = np.cumsum(np.bincount(ls[first], minlength=R))
    return cls, size, off, n_cls


def class_keys(cls, n_cls, sf, lab):
    """The size factor and design row of each of the ``n_cls`` classes of ``cell_classes``."""
    csf = np.empty(n_cls)
    clab = np.empty(n_cls, np.int64)
    csf[cls] = sf
    clab[cls] = lab
    return csf, clab


@dataclass(frozen=True)
class RowMeans:
    """The initial means of a group design, kept as per-row means: μ_gj = max(means[g, lab_j]
    · s_j, minmu). The line search expands them one gene at a time instead of holding the
    G×m matrix (at cell level, hundreds of MB); ``rows``/``dense`` expand on request."""

    means: np.ndarray  # G×R
    sf: np.ndarray
    lab: np.ndarray
    minmu: float

    def rows(self, idx) -> np.ndarray:
        """μ of genes ``idx`` (dense, len(idx)×m)."""
        sub = np.ascontiguousarray(self.means[idx], dtype=np.float64)
        return _nb.expand_row_means(sub, self.sf, self.lab, float(self.minmu))

    def dense(self) -> np.ndarray:
        """μ of every gene (dense, G×m)."""
        return self.rows(slice(None))


def mu_rows(MU, idx):
    """Rows ``idx`` of μ given as a G×m array or as :class:`RowMeans`."""
    return MU.rows(idx) if isinstance(MU, RowMeans) else MU[idx]


def fit_disp_line(Y, MU, X, log_alpha0, *, prior_mean=None, prior_var=1.0, use_prior=False,
                  min_disp=MIN_DISP, kappa0=1.0, tol=1e-6, maxit=100, use_cr=True,
                  sf=None):  # fmt: skip
    """Run the line-search kernel; returns (log_alpha, iter, initial_lp, last_lp).

    ``sf`` (optional) lets samples with the same size factor and design row share their
    terms (exact: such samples have the same fitted μ, which the kernel checks). With
    :class:`RowMeans` indexed by the rows of X the classes come from its size factors (their
    μ is shared by construction) and ``sf`` is not needed. ``Y`` is a G×m array (dense or
    sparse) or a :class:`~pyflashmm._nbglm.count_block.CountBlock`.
    """
    Y = CountBlock.of(Y)
    G = Y.shape[0]
    if prior_mean is None:
        prior_mean = np.zeros(G)
    Xr, lab = design_rows(np.asarray(X, dtype=np.float64))
    R = Xr.shape[0]
    order, roff = row_order(lab, R)
    if isinstance(MU, RowMeans):
        sf = MU.sf if np.array_equal(MU.lab, lab) else None
    cls, ccnt, croff, n_cls = cell_classes(sf, lab, R)
    csf, clab = class_keys(cls, n_cls, sf, lab) if n_cls else (np.empty(0), np.empty(0, np.int64))
    if isinstance(MU, RowMeans):
        mu_args = (np.empty((1, 1)), np.ascontiguousarray(MU.means, dtype=np.float64),
                   MU.sf, MU.lab, float(MU.minmu))  # fmt: skip
    else:
        mu_args = (np.ascontiguousarray(MU, dtype=np.float64), np.empty((0, 1)), np.ones(1),
                   np.zeros(1, np.int64), 0.0)  # fmt: skip
    la, it, _acc, lp0, lp1 = _nb.fit_disp(
        *Y.csr,
        *mu_args,
        Xr,
        order,
        roff,
        cls,
        ccnt,
        croff,
        int(n_cls),
        csf,
        clab,
        np.ascontiguousarray(log_alpha0, dtype=np.float64),
        np.ascontiguousarray(prior_mean, dtype=np.float64),
        float(prior_var),
        bool(use_prior),
        float(np.log(min_disp / 10.0)),
        float(kappa0),
        float(tol),
        int(maxit),
        bool(use_cr),
    )
    return la, it, lp0, lp1


def fit_disp_grid(Y, MU, X, m, *, prior_mean=None, prior_var=1.0, use_prior=False, use_cr=True):
    """DESeq2's grid fallback: 20 points over ln α ∈ [ln 1e-8, ln max(10, m)], then refine."""
    G = Y.shape[0]
    if prior_mean is None:
        prior_mean = np.zeros(G)
    grid = np.linspace(np.log(1e-8), np.log(max(10.0, m)), 20)
    Xr, lab = design_rows(np.asarray(X, dtype=np.float64))
    order, roff = row_order(lab, Xr.shape[0])
    la = _nb.fit_disp_grid(
        np.ascontiguousarray(Y, dtype=np.float64),
        np.ascontiguousarray(MU, dtype=np.float64),
        Xr,
        order,
        roff,
        np.ascontiguousarray(prior_mean, dtype=np.float64),
        float(prior_var),
        bool(use_prior),
        grid,
        bool(use_cr),
    )
    return np.exp(la)


def gene_wise_dispersion(Y, MU, X, alpha_init, *, min_disp=MIN_DISP, maxit=100, exact=False,
                         sf=None):  # fmt: skip
    """Gene-wise Cox–Reid dispersions (step 3 of the module docstring).

    ``alpha_init`` must already be clipped to [min_disp, max_disp]. With ``exact=True`` the
    line-search result is polished by a bounded 1-D optimiser to the true optimum of the
    Cox–Reid likelihood (not DESeq2's behaviour; off by default).
    Returns (disp_gene_est, iterations).
    """
    m = X.shape[0]
    max_disp = max(10.0, m)
    Y = CountBlock.of(Y)
    la, it, lp0, lp1 = fit_disp_line(Y, MU, X, np.log(alpha_init), min_disp=min_disp, maxit=maxit,
                                     sf=sf)  # fmt: skip
    est = np.minimum(np.exp(la), max_disp)
    no_increase = lp1 < lp0 + np.abs(lp0) / 1e6
    est[no_increase] = alpha_init[no_increase]
    conv = (it < maxit) & (it != 1)
    refit = ~conv & (est > min_disp * 10)
    if refit.any():
        est[refit] = fit_disp_grid(Y.rows(refit), mu_rows(MU, refit), X, m)
    if exact:
        est = _polish(Y.dense(), mu_rows(MU, slice(None)), X, est, min_disp, max_disp)
    return np.clip(est, min_disp, max_disp), it


def _polish(Y, MU, X, est, min_disp, max_disp, prior_mean=None, prior_var=1.0, use_prior=False):
    from scipy.optimize import minimize_scalar

    p = X.shape[1]
    m = X.shape[0]
    out = est.copy()
    w = np.empty(m)
    B = np.empty((p, p))
    L = np.empty((p, p))
    Xc = np.ascontiguousarray(X, dtype=np.float64)
    for i in range(Y.shape[0]):
        pm = 0.0 if prior_mean is None else prior_mean[i]

        def f(a, i=i, pm=pm):
            return -_nb.log_posterior(a, Y[i], MU[i], Xc, pm, prior_var, use_prior, True, w, B, L)

        res = minimize_scalar(
            f, bounds=(np.log(min_disp), np.log(max_disp)), method="bounded",
            options={"xatol": 1e-10},
        )  # fmt: skip
        if res.fun <= f(np.log(est[i])):
            out[i] = np.exp(res.x)
    return out


# ----------------------------------------------------------------------------- trend


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

    def __init__(self, x, y, w, alpha=0.7, cut=0.8):
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

    def _grow(self, lo, hi):
        hl = self._fit(lo)[2]
        hh = self._fit(hi)[2]
        hmin = min(h for h in (hl, hh) if h > 0) if (hl > 0 or hh > 0) else 0.0
        if hmin > 0 and (hi - lo) / hmin > self.cut:
            mid = 0.5 * (lo + hi)
            self.splits[(lo, hi)] = mid
            self._fit(mid)
            self._grow(lo, mid)
            self._grow(mid, hi)

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


def fit_trend(base_mean, disp_gene_est, fit_type="parametric", min_disp=MIN_DISP):
    """Dispersion trend; returns (callable of μ̄, fit type actually used, info dict)."""
    use = disp_gene_est > 100 * min_disp
    if not use.any():
        raise ValueError(
            "all gene-wise dispersion estimates are within 2 orders of magnitude of the minimum "
            "value; the trend cannot be fitted"
        )
    info = {}
    if fit_type == "parametric":
        try:
            coefs = parametric_trend(base_mean[use], disp_gene_est[use])
            info["coefficients"] = coefs
            return (lambda q, c=coefs: c[0] + c[1] / q), "parametric", info
        except (TrendFitError, np.linalg.LinAlgError, ValueError):
            fit_type = "local"
            info["fallback"] = "local"
    if fit_type == "local":
        means = base_mean[use]
        disps = disp_gene_est[use]
        if np.all(disps < min_disp * 10):
            return (lambda q: np.full(np.shape(q), min_disp)), "local", info
        keep = disps >= min_disp * 10
        lt = LocalTrend(np.log(means[keep]), np.log(disps[keep]), means[keep])
        return (lambda q, lt=lt: np.exp(lt(np.log(q)))), "local", info
    if fit_type == "mean":
        use_mean = disp_gene_est > 10 * min_disp
        md = trimmed_mean(disp_gene_est[use_mean], 0.001)
        info["mean"] = md
        return (lambda q, md=md: np.full(np.shape(q), md)), "mean", info
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
        raise ValueError("no gene-wise dispersion is above 100 × minDisp")
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


def map_dispersion(Y, MU, X, disp_gene_est, disp_fit, prior_var, var_log_disp, *,
                   min_disp=MIN_DISP, maxit=100, outlier_sd=2.0, exact=False,
                   sf=None):  # fmt: skip
    """MAP dispersions and outlier flags (step 6 of the module docstring)."""
    m = X.shape[0]
    Y = CountBlock.of(Y)
    init = np.where(disp_gene_est > 0.1 * disp_fit, disp_gene_est, disp_fit)
    la, it, _lp0, _lp1 = fit_disp_line(
        Y, MU, X, np.log(init), prior_mean=np.log(disp_fit), prior_var=prior_var,
        use_prior=True, min_disp=min_disp, maxit=maxit, sf=sf,
    )  # fmt: skip
    disp_map = np.exp(la)
    refit = ~(it < maxit)
    if refit.any():
        disp_map[refit] = fit_disp_grid(
            Y.rows(refit), mu_rows(MU, refit), X, m, prior_mean=np.log(disp_fit[refit]),
            prior_var=prior_var, use_prior=True,
        )  # fmt: skip
    max_disp = max(10.0, m)
    if exact:
        disp_map = _polish(Y.dense(), mu_rows(MU, slice(None)), X, disp_map, min_disp, max_disp,
                           np.log(disp_fit), prior_var, True)  # fmt: skip
    disp_map = np.clip(disp_map, min_disp, max_disp)
    outlier = np.log(disp_gene_est) > np.log(disp_fit) + outlier_sd * np.sqrt(var_log_disp)
    final = np.where(outlier, disp_gene_est, disp_map)
    return final, disp_map, outlier, it
