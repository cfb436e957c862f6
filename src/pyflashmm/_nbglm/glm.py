"""The DESeq2-style negative-binomial GLM: ``nbglm`` and its result ``NbGlmFit``.

Model (gene i, sample j): y_ij ~ NB(μ_ij, α_i), Var = μ + αμ², ln μ_ij = ln s_j + x_jᵀβ_i.
Counts are the response, the link is log and ln s_j are offsets. β is fitted on the natural-log
scale with a ridge λ = 1e-6 on the log2 scale (λ/ln²2 on the natural scale) and reported as
log2 fold changes β/ln 2.

Pipeline (DESeq2 1.38, ``DESeq()`` defaults): size factors → dispersions (see
:mod:`pyflashmm._nbglm.dispersion`) → IRLS (``_kernels.nb.fit_beta_rows``; non-converged genes are
refitted by L-BFGS-B on the log2 scale within [−30, 30]) → Wald z (or t with m − p df) or LRT
χ²_{Δp} → Cook's distances D_ij = r²_ij/p · h_ij/(1−h_ij)² with
r² = (y−μ)²/(μ + α̃μ²), α̃ a robust moment estimate → replacement of outliers (D > F_{0.99}(p,
m−p)) by the 0.2-trimmed mean × s_j in samples whose design row occurs ≥ 7 times and refit, or
NA p-values → independent filtering on the base mean and Benjamini–Hochberg.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import optimize, stats

from pyflashmm._jit import numba_parallel_only
from pyflashmm._kernels import nb as _nb
from pyflashmm._multitest import bh_adjust
from pyflashmm._nbglm import dispersion as _disp
from pyflashmm._nbglm._util import as_counts, r_quantile, row_groups, trimmed_mean
from pyflashmm._nbglm.count_block import CountBlock
from pyflashmm._nbglm.size_factors import METHODS as SIZE_FACTOR_METHODS
from pyflashmm._nbglm.size_factors import size_factors_checked as _size_factors_checked

LN2 = math.log(2.0)


@dataclass(frozen=True)
class NbGlmFit:
    """Result of :func:`nbglm`; arrays are gene-major (length G, or G×p).

    Attributes
    ----------
    base_mean : mean of normalized counts y/s (after outlier replacement, as DESeq2).
    log2_fold_change, lfc_se : the tested coefficient or contrast, log2 scale.
    stat, p_value, adj_p_value : Wald z (or t) or LRT χ², p-value (NaN for Cook's outliers and
        all-zero genes), BH-adjusted p after independent filtering (NaN when filtered).
    coef, coef_se : all coefficients on the natural-log scale and their standard errors (G×p).
    disp_gene_est, disp_fit, dispersion : gene-wise, trend and final dispersions.
    disp_map, disp_outlier : MAP dispersion and the outlier flag (gene-wise kept).
    converged : IRLS convergence of β (the full model for the LRT).
    max_cooks : maximum Cook's distance used for p-value filtering (NaN when not recorded).
    replaced : genes with a Cook's distance above the cutoff when outliers could be replaced
        (DESeq2's ``replace``): their outlying counts in samples with enough replicates were
        replaced and the gene refitted (unless it became all-zero).
    all_zero : genes with only zero counts (skipped, NaN results).
    size_factors : per-sample factors used. prior_var : σ²_d. trend : "parametric", "local"
    or "mean". trend_coefficients : (a₀, a₁) of the parametric trend when used.
    """

    base_mean: np.ndarray
    log2_fold_change: np.ndarray
    lfc_se: np.ndarray
    stat: np.ndarray
    p_value: np.ndarray
    adj_p_value: np.ndarray
    coef: np.ndarray
    coef_se: np.ndarray
    disp_gene_est: np.ndarray
    disp_fit: np.ndarray
    dispersion: np.ndarray
    disp_map: np.ndarray
    disp_outlier: np.ndarray
    converged: np.ndarray
    max_cooks: np.ndarray
    replaced: np.ndarray
    all_zero: np.ndarray
    size_factors: np.ndarray
    prior_var: float
    trend: str
    trend_coefficients: np.ndarray | None
    test: str
    contrast_name: str
    coef_names: tuple
    gene_names: tuple
    df: float = field(default=np.inf)
    filter_threshold: float = np.nan

    @property
    def natural_log_fold_change(self) -> np.ndarray:
        """The tested contrast on the natural-log scale (β, not β/ln 2)."""
        return self.log2_fold_change * LN2

    def to_frame(self) -> pd.DataFrame:
        """Tidy table (one row per gene): variable, contrast, log_fc (log2), se, stat, df,
        p_value, adj_p_value, method, base_mean, dispersion, converged."""
        G = self.base_mean.size
        return pd.DataFrame(
            {
                "variable": list(self.gene_names),
                "contrast": [self.contrast_name] * G,
                "log_fc": self.log2_fold_change,
                "se": self.lfc_se,
                "stat": self.stat,
                "df": np.full(G, self.df),
                "p_value": self.p_value,
                "adj_p_value": self.adj_p_value,
                "method": ["nbglm"] * G,
                "base_mean": self.base_mean,
                "dispersion": self.dispersion,
                "converged": self.converged,
            }
        )


# ----------------------------------------------------------------------------- GLM fitting


def _glm_fit(blk, sf, X, alpha, *, minmu=0.5, beta_tol=1e-8, maxit=100, use_optim=True,
             loglik=True):  # fmt: skip
    """DESeq2's fitNbinomGLMs (no β prior) for a gene block (a :class:`CountBlock`).

    Means and hat diagonals are returned per design row (``fit_beta_rows``): μ_j =
    s_j·row_mu[lab_j] and h_j = w_j·row_hat[lab_j] with w_j = μ̃_j/(1 + αμ̃_j),
    μ̃_j = max(s_j·row_wmu[lab_j], hat_minmu); ``classes`` are the (size factor, design row)
    classes of ``_sample_classes``.
    """
    G, m = blk.shape
    p = X.shape[1]
    lam = np.full(p, 1e-6 / LN2**2)
    Xr, lab = _disp.design_rows(X)
    R = Xr.shape[0]
    classes = _sample_classes(sf, lab, R)
    sf = np.ascontiguousarray(sf, dtype=np.float64)
    alpha = np.ascontiguousarray(alpha, dtype=np.float64)
    if p == 1 and np.all(X == 1.0):
        bm, xtwx = _nb.intercept_fit(*blk.csr, sf, alpha)
        row_mu = bm[:, None].copy()
        return {
            "beta": np.log(bm)[:, None],
            "sigma": (1.0 / xtwx)[:, None, None],
            "row_mu": row_mu,
            "row_wmu": row_mu,
            "row_hat": (1.0 / xtwx)[:, None],
            "hat_minmu": 0.0,  # DESeq2's intercept-only shortcut does not floor μ
            "classes": classes,
            "loglik": _nb.nb_loglik(*blk.csr, sf, lab, row_mu, alpha)
            if loglik
            else np.full(G, np.nan),
            "conv": np.ones(G, bool),
        }
    q, r = np.linalg.qr(X)
    first = np.empty(R, dtype=np.int64)
    first[lab[::-1]] = np.arange(m)[::-1]
    P = np.ascontiguousarray(np.linalg.solve(r, q[first].T))  # β₀ = P · row sums of ln(y/s+0.1)
    beta, sigma, it, _dev, row_mu, row_wmu, row_hat = _nb.fit_beta_rows(
        *blk.csr, sf, Xr, lab, *classes, alpha, np.empty((1, p)), P, lam, float(minmu),
        float(beta_tol), int(maxit), True,
    )  # fmt: skip

    def beta0_row(y):
        return P @ np.bincount(lab, weights=np.log(y / sf + 0.1), minlength=R)

    want_ll = loglik
    loglik = np.full(G, np.nan)
    if want_ll:
        with np.errstate(invalid="ignore"):
            loglik = _nb.nb_loglik(*blk.csr, sf, lab, row_mu, alpha)
    var = np.diagonal(sigma, axis1=1, axis2=2)
    stable = ~np.isnan(beta).any(axis=1)
    varpos = (var > 0).all(axis=1)
    conv = it < maxit
    rows = np.flatnonzero(~conv | ~stable | ~varpos) if use_optim else np.flatnonzero(~stable)
    for i in rows:
        y = blk.rows(i)[0]
        b_log2 = beta[i] / LN2
        start = b_log2 if (stable[i] and np.all(np.abs(b_log2) < 30)) else beta0_row(y)
        res = _optim_row(y, sf, X, alpha[i], start, 1e-6)
        conv[i] = res.success
        beta[i] = res.x * LN2
        row_mu[i] = np.exp(Xr @ beta[i])  # the hat diagonals stay those of the IRLS, as in DESeq2
        mf = np.maximum(sf * row_mu[i][lab], minmu)
        w = 1.0 / (1.0 / mf + alpha[i])
        xtwx = (X * w[:, None]).T @ X
        ainv = np.linalg.inv(xtwx + np.diag(lam))
        sigma[i] = ainv @ xtwx @ ainv
        if want_ll:
            loglik[i] = sum(_nb.nb_logpdf(y[j], mf[j], alpha[i]) for j in range(m))
    return {"beta": beta, "sigma": sigma, "row_mu": row_mu, "row_wmu": row_wmu,
            "row_hat": row_hat, "hat_minmu": float(minmu), "classes": classes,
            "loglik": loglik, "conv": conv}  # fmt: skip


def _sample_classes(sf, lab, R):
    """Samples sharing a size factor and a design row (one fitted μ) for ``fit_beta_rows``.

    Classes are numbered by design row. Returns (class of each sample, class sizes, class
    size factors, class design rows, the R + 1 offsets of each row's classes); without any
    shared pair every sample is its own class.
    """
    sf = np.ascontiguousarray(sf, dtype=np.float64)
    cls, size, off, n_cls = _disp.cell_classes(sf, lab, R)
    if n_cls == 0:
        order, off = _disp.row_order(lab, R)
        cls = np.empty(lab.size, np.int64)
        cls[order] = np.arange(lab.size)
        return cls, np.ones(lab.size), sf[order], lab[order], off
    return cls, np.ascontiguousarray(size), *_disp.class_keys(cls, n_cls, sf, lab), off


def _optim_row(y, sf, X, alpha, start, lam_log2):
    """L-BFGS-B on the log2-scale coefficients within [−30, 30] (DESeq2's fallback)."""
    r = 1.0 / alpha
    sd = math.sqrt(1.0 / lam_log2)

    def fn(b):
        eta = X @ b * LN2
        mu = sf * np.exp(eta)
        ll = np.sum(
            special_lgamma(y + r) - special_lgamma(r) - special_lgamma(y + 1)
            + r * np.log(r / (r + mu)) + y * np.log(mu / (r + mu))
        )  # fmt: skip
        lp = np.sum(stats.norm.logpdf(b, 0, sd))
        val = -(ll + lp)
        grad_ll = X.T @ ((y - mu) * r / (r + mu)) * LN2
        grad = -(grad_ll - b / sd**2)
        if not np.isfinite(val):
            return 1e300, np.zeros_like(b)
        return val, grad

    return optimize.minimize(fn, np.asarray(start, float), jac=True, method="L-BFGS-B",
                             bounds=[(-30, 30)] * X.shape[1])  # fmt: skip


def special_lgamma(x):
    from scipy.special import gammaln

    return gammaln(x)


# ----------------------------------------------------------------------------- Cook's distance


def _n_or_more_in_cell(X, n):
    lab, _ = row_groups(X)
    counts = np.bincount(lab)
    return counts[lab] >= n


def _robust_mom_disp(blk, sf, X, mm):
    """DESeq2's robust method-of-moments dispersion for Cook's distances (floor 0.04)."""
    three = _n_or_more_in_cell(X, 3)
    if three.any():
        lab, _ = row_groups(X)
        sets = [np.flatnonzero(lab == lv) for lv in np.unique(lab[three])]
    else:
        sets = [np.arange(blk.n_samples)]
    sizes = np.array([c.size for c in sets])
    k = np.where(sizes <= 3.5, 0, np.where(sizes <= 23.5, 1, 2))
    trims = np.array([1 / 3, 1 / 4, 1 / 8])[k] if three.any() else np.array([1 / 8])
    scales = np.array([2.04, 1.86, 1.51])[k] if three.any() else np.array([1.51])
    if sizes.max() >= 1000:
        # many samples: one kernel over all sets, the trimmed ranks selected (zeros counted)
        off = np.zeros(len(sets) + 1, np.int64)
        off[1:] = np.cumsum(sizes)
        cols = np.concatenate(sets).astype(np.int64)
        v = _nb.robust_var_rows(*blk.csr, sf, cols, off, trims, scales)
    else:  # few samples: numpy's batched sorts are faster
        Qn = _nb.divide_cols(blk.dense(), sf)
        v = None
        for cols, trim, scale in zip(sets, trims, scales, strict=True):
            sub = Qn[:, cols]
            cm = trimmed_mean(sub, trim, axis=1)
            ve = scale * trimmed_mean((sub - cm[:, None]) ** 2, trim, axis=1)
            v = ve if v is None else np.maximum(v, ve)
    return np.maximum((v - mm) / mm**2, 0.04)


@dataclass(frozen=True)
class _Cooks:
    """Cook's distance summaries of a gene block (the G×m distances are never formed).

    ``max``: the largest distance over samples in design cells with ≥ 3 replicates (NaN when
    there are none or m ≤ p), ``max_nonrep``: the same with replaceable samples counted as 0,
    ``any_above``: some distance exceeds the cutoff, ``n_above_argmax``: the number of counts
    above the count at the largest distance, and ``rows``: the full distances of the genes
    with ``any_above`` when outliers can be replaced (else None).
    """

    max: np.ndarray
    max_nonrep: np.ndarray
    any_above: np.ndarray
    n_above_argmax: np.ndarray
    rows: np.ndarray | None


def _cooks(blk, sf, X, fit, alpha, bm, replaceable, cutoff):
    """Cook's distances D_j = (y_j − μ_j)²/(μ_j + α̃μ_j²)/p · h_j/(1 − h_j)² of a fitted block,
    summarised per gene (see :class:`_Cooks`); α̃ is DESeq2's robust moment dispersion."""
    m, p = X.shape
    use = _n_or_more_in_cell(X, 3)
    cls, _csize, csf, clab, _off = fit["classes"]
    per_gene = (
        fit["row_mu"],
        fit["row_wmu"],
        fit["row_hat"],
        np.ascontiguousarray(alpha, dtype=np.float64),
        _robust_mom_disp(blk, sf, X, bm),
    )
    shared = (cls, csf, clab)
    tail = (float(p), float(fit["hat_minmu"]))
    mx, mx_nonrep, mx_all, n_above = _nb.cooks_summary(*blk.csr, *shared, *per_gene, *tail, use,
                                                       ~replaceable)  # fmt: skip
    if not (m > p and use.any()):
        mx[:] = np.nan
        mx_nonrep[:] = np.nan
    any_above = mx_all > cutoff
    rows = None
    if replaceable.any() and any_above.any():
        sel = np.flatnonzero(any_above)
        rows = _nb.cooks_matrix(
            *blk.subset(sel).csr,
            *shared,
            *(np.ascontiguousarray(v[sel]) for v in per_gene),
            *tail,
        )
    return _Cooks(mx, mx_nonrep, any_above, n_above, rows)


# ----------------------------------------------------------------------------- the pipeline


#: dense-input gene blocks (the dense array and its CSR form, ≤ 20 bytes per count) are kept
#: between stages up to 256 MiB in total; sparse blocks (CSR only) are always kept
_CACHE_BYTES = 2**28


def _block(Yt, idx):
    """Genes idx of Yt (genes × samples: dense, or canonical CSR without explicit zeros)."""
    if sp.issparse(Yt):
        return CountBlock.from_csr_rows(Yt, idx)
    return CountBlock.from_dense(Yt[idx])


def _group_mu(blk, sf, X, df):
    """Group design: (row means of y/s G×R, base mean, raw initial dispersion) in one kernel."""
    Xr, lab = _disp.design_rows(X)
    return _nb.group_design_start(
        *blk.csr, sf, lab, Xr.shape[0], float(df), float(np.mean(1.0 / sf))
    )


def _row_means(means, sf, X, minmu):
    """Initial means μ_gj = max(means[g, row of j]·s_j, minmu), kept per design row (expanded
    one gene at a time where they are used)."""
    sf = np.ascontiguousarray(sf, dtype=np.float64)
    return _disp.RowMeans(means, sf, _disp.design_rows(X)[1], float(minmu))


def _gene_est_block(blk, sf, X, minmu, linear_mu, exact, min_disp):
    """Gene-wise dispersions of a block; returns (est, initial means, base_mean)."""
    m, p = X.shape
    if linear_mu:
        means, bm, a0 = _group_mu(blk, sf, X, m - p)
    else:
        Qn = _nb.divide_cols(blk.dense(), sf)
        fit = _disp.linear_model_mu(Qn, X)
        a0 = _nb.initial_disp(Qn, np.ascontiguousarray(fit), float(m - p),
                              float(np.mean(1.0 / sf)))  # fmt: skip
        bm = Qn.mean(axis=1)
    a0 = np.clip(a0, min_disp, max(10.0, m))
    if not linear_mu:  # the means of a GLM fit at the initial dispersions, per design row
        means = _glm_fit(blk, sf, X, a0, loglik=False)["row_mu"]
    mu0 = _row_means(means, sf, X, minmu)
    est, it = _disp.gene_wise_dispersion(blk, mu0, X, a0, min_disp=min_disp, exact=exact, sf=sf)
    return est, mu0, bm


@dataclass(frozen=True)
class _Shared:
    X: np.ndarray
    sf: np.ndarray
    minmu: float
    linear_mu: bool
    exact: bool
    min_disp: float
    trend_fn: object
    prior_var: float
    var_log_disp: float
    test: str
    reduced: np.ndarray | None
    replaceable: np.ndarray  # samples whose outlying counts may be replaced
    cooks_cutoff: float


def _fit_block(blk, sh: _Shared, est=None, mu0=None, bm=None):
    """Everything per gene after the trend: MAP, GLM, test statistics, Cook's."""
    X = sh.X
    if est is None:
        est, mu0, bm = _gene_est_block(blk, sh.sf, X, sh.minmu, sh.linear_mu, sh.exact,
                                          sh.min_disp)  # fmt: skip
    dfit = np.asarray(sh.trend_fn(bm), dtype=float) * np.ones_like(bm)
    final, dmap, outl, _ = _disp.map_dispersion(
        blk, mu0, X, est, dfit, sh.prior_var, sh.var_log_disp, min_disp=sh.min_disp,
        exact=sh.exact, sf=sh.sf,
    )  # fmt: skip
    fit = _glm_fit(blk, sh.sf, X, final, minmu=sh.minmu, loglik=sh.test == "lrt")
    out = {"base_mean": bm, "disp_gene_est": est, "disp_fit": dfit, "dispersion": final,
           "disp_map": dmap, "disp_outlier": outl, "fit": fit}  # fmt: skip
    if sh.test == "lrt":
        red = _glm_fit(blk, sh.sf, sh.reduced, final, minmu=sh.minmu)
        out["lrt_stat"] = 2.0 * (fit["loglik"] - red["loglik"])
    out["cooks"] = _cooks(blk, sh.sf, X, fit, final, bm, sh.replaceable, sh.cooks_cutoff)
    return out


def _independent_filtering(base_mean, pvalue, alpha):
    """DESeq2 1.38's pvalueAdjustment: filter on the base mean, pick θ by lowess, then BH."""
    from statsmodels.nonparametric.smoothers_lowess import lowess

    filt = base_mean
    lower = np.mean(filt == 0)
    upper = 0.95 if lower < 0.95 else 1.0
    theta = np.linspace(lower, upper, 50)
    cutoffs = r_quantile(filt, theta)
    padj = np.full((filt.size, theta.size), np.nan)
    for k, c in enumerate(cutoffs):
        use = filt >= c
        if use.any():
            padj[use, k] = bh_adjust(pvalue[use])
    with np.errstate(invalid="ignore"):
        num_rej = np.sum(padj < alpha, axis=0)
    delta = 0.01 * (theta[-1] - theta[0])
    lo = lowess(num_rej.astype(float), theta, frac=1 / 5, it=3, delta=delta,
                return_sorted=False)  # fmt: skip
    if num_rej.max() <= 10:
        j = 0
    else:
        resid = num_rej[num_rej > 0] - lo[num_rej > 0] if (num_rej != 0).any() else np.zeros(1)
        thresh = lo.max() - math.sqrt(np.mean(resid**2))
        above = np.flatnonzero(num_rej > thresh)
        j = int(above[0]) if above.size else 0
    return padj[:, j], float(cutoffs[j])


def _contrast_vector(contrast, coef_names, p):
    if contrast is None:
        c = np.zeros(p)
        c[-1] = 1.0
        return c, coef_names[-1]
    if isinstance(contrast, str):
        if contrast not in coef_names:
            raise ValueError(f"contrast {contrast!r} is not one of the coefficients {coef_names}")
        c = np.zeros(p)
        c[coef_names.index(contrast)] = 1.0
        return c, contrast
    if isinstance(contrast, (int, np.integer)):
        if not -p <= contrast < p:
            raise ValueError(f"contrast index {contrast} out of range for {p} coefficients")
        c = np.zeros(p)
        c[contrast] = 1.0
        return c, coef_names[contrast]
    c = np.asarray(contrast, dtype=float).ravel()
    if c.size != p:
        raise ValueError(f"contrast has length {c.size}, expected {p} (columns of X)")
    return c, "contrast"


@numba_parallel_only
def nbglm(counts, X, *, size_factors="ratio", fit_type="parametric", test="wald", reduced=None,
          contrast=None, minmu=None, cooks=True, independent_filtering=True, alpha=0.1,
          use_t=False, min_replicates_for_replace=7, prior_var=None, exact_dispersion=False,
          preset=None, allow_non_integer=False, coef_names=None, gene_names=None,
          block_size=512):  # fmt: skip
    """Differential expression with DESeq2's negative-binomial GLM, reproduced step by step.

    Parameters
    ----------
    counts : array_like or scipy.sparse, shape (m, G)
        Counts, samples (or cells) in rows, genes in columns; a pandas DataFrame gives gene
        names. Genes are fitted in blocks of ``block_size``; sparse input stays sparse
        (kernels expand one gene at a time) except in the steps that densify a block: the
        linear-model start of a non-group design, Cook's robust variance when every design
        cell has fewer than 1,000 samples, and ``exact_dispersion``.
    X : array_like, shape (m, p)
        Full-rank design matrix (a DataFrame gives coefficient names).
    size_factors : str or array_like
        A :func:`~pyflashmm.size_factors` method or the factors themselves (m, all > 0).
    fit_type : {"parametric", "local", "mean"}
        Dispersion trend; ``parametric`` falls back to ``local`` as DESeq2 does.
    test : {"wald", "lrt"}
        Wald test of ``contrast``, or likelihood-ratio test of X against ``reduced``.
    reduced : array_like, shape (m, p₀), optional
        Reduced design for the LRT; default: X without the contrast's coefficient.
    contrast : None, str, int or array_like
        Coefficient name or index, or a numeric vector of length p; default the last column.
    minmu : float
        Floor on fitted means (0.5; 1e-6 with ``preset="single_cell"``), in the dispersion
        and GLM stages as in DESeq2's ``DESeq()``; genes refitted after outlier replacement
        use 0.5, as DESeq2's ``refitWithoutOutliers`` does.
    cooks : bool
        Cook's-distance outlier handling (replacement with ≥ ``min_replicates_for_replace``
        replicates, NA p-values otherwise).
    independent_filtering, alpha : bool, float
        DESeq2's independent filtering on the base mean at FDR ``alpha``, then BH.
    use_t : bool
        Wald p-values from t with m − p df instead of the normal.
    prior_var : float, optional
        Fix σ²_d of the log-dispersion prior (DESeq2's ``dispPriorVar``).
    exact_dispersion : bool
        Polish gene-wise and MAP dispersions to the exact optimum (DESeq2's line search stops
        early on some genes; off by default to match DESeq2).
    preset : None or "single_cell"
        DESeq2's single-cell recommendations: poscounts size factors, ``minmu=1e-6``, LRT, no
        outlier replacement.

    Returns
    -------
    NbGlmFit
    """
    if preset not in (None, "single_cell"):
        raise ValueError(f"preset must be None or 'single_cell', got {preset!r}")
    if preset == "single_cell":
        if isinstance(size_factors, str) and size_factors == "ratio":
            size_factors = "poscounts"
        test = "lrt" if test == "wald" else test
        min_replicates_for_replace = np.inf
        if minmu is None:
            minmu = 1e-6
    if minmu is None:
        minmu = 0.5
    test = str(test).lower()
    if test not in ("wald", "lrt"):
        raise ValueError(f"test must be 'wald' or 'lrt', got {test!r}")
    if fit_type not in ("parametric", "local", "mean"):
        raise ValueError(f"fit_type must be 'parametric', 'local' or 'mean', got {fit_type!r}")
    if gene_names is None and isinstance(counts, pd.DataFrame):
        gene_names = [str(c) for c in counts.columns]
    if coef_names is None and isinstance(X, pd.DataFrame):
        coef_names = [str(c) for c in X.columns]
    Y = as_counts(counts, allow_non_integer=allow_non_integer)
    m, G = Y.shape
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] != m:
        raise ValueError(f"X must have shape ({m}, p) to match counts, got {X.shape}")
    if not np.isfinite(X).all():
        raise ValueError("X contains NaN or infinite values")
    p = X.shape[1]
    if np.linalg.matrix_rank(X) < p:
        raise ValueError("X is not of full column rank; remove linearly dependent columns")
    if m <= p:
        raise ValueError(f"X has {p} columns for {m} samples: no residual degrees of freedom")
    coef_names = tuple(coef_names) if coef_names is not None else tuple(f"x{k}" for k in range(p))
    gene_names = tuple(gene_names) if gene_names is not None else tuple(f"g{k}" for k in range(G))
    if len(gene_names) != G:
        raise ValueError(f"gene_names has length {len(gene_names)}, expected {G}")
    cvec, cname = _contrast_vector(contrast, list(coef_names), p)
    if test == "lrt":
        if reduced is None:
            nz = np.flatnonzero(cvec)
            if nz.size != 1:
                raise ValueError("test='lrt' with a numeric contrast needs `reduced`")
            reduced = np.delete(X, nz[0], axis=1)
        reduced = np.asarray(reduced, dtype=np.float64)
        if reduced.ndim != 2 or reduced.shape[0] != m or reduced.shape[1] >= p:
            raise ValueError(
                f"reduced must have shape ({m}, p0) with p0 < {p}, got {reduced.shape}"
            )
        if reduced.shape[1] > 0 and np.linalg.matrix_rank(reduced) < reduced.shape[1]:
            raise ValueError("reduced is not of full column rank")
        if reduced.shape[1] == 0:
            raise ValueError("reduced must have at least one column (e.g. an intercept)")

    # size factors
    if isinstance(size_factors, str):
        if size_factors not in SIZE_FACTOR_METHODS:
            raise ValueError(
                f"size_factors must be one of {SIZE_FACTOR_METHODS} or an array, "
                f"got {size_factors!r}"
            )
        sf = _size_factors_checked(Y, size_factors)
    else:
        sf = np.asarray(size_factors, dtype=np.float64).ravel()
        if sf.size != m:
            raise ValueError(f"size_factors has length {sf.size}, expected {m} (rows of counts)")
        if not (np.isfinite(sf).all() and (sf > 0).all()):
            raise ValueError("size_factors must be finite and > 0")

    colsum = np.asarray(Y.sum(axis=0)).ravel()
    all_zero = colsum == 0
    nz = np.flatnonzero(~all_zero)
    if nz.size == 0:
        raise ValueError("counts: every gene is all-zero")
    min_disp = _disp.MIN_DISP
    linear_mu = _disp.is_group_design(X)
    blocks = [nz[k : k + block_size] for k in range(0, nz.size, block_size)]

    # stage 1: gene-wise dispersions
    Gn = nz.size
    est = np.empty(Gn)
    bm = np.empty(Gn)
    pos = 0
    mu_store = []  # initial means per design row (kept, not refitted)
    if sp.issparse(Y):  # genes × samples: a block is a row slice
        Yt = Y.T.tocsr()  # sorted sample indices within each gene
        Yt.eliminate_zeros()
    else:
        Yt = Y.T
    keep_blocks = sp.issparse(Y) or Gn * m * 20 <= _CACHE_BYTES
    block_store = []
    for idx in blocks:
        blk = _block(Yt, idx)
        e, mu0, b = _gene_est_block(blk, sf, X, minmu, linear_mu, exact_dispersion,
                                    min_disp)  # fmt: skip
        mu_store.append(mu0)
        if keep_blocks:
            block_store.append(blk)
        est[pos : pos + idx.size] = e
        bm[pos : pos + idx.size] = b
        pos += idx.size

    # stage 2: trend and prior
    trend_fn, trend_used, info = _disp.fit_trend(bm, est, fit_type, min_disp)
    dfit = np.asarray(trend_fn(bm), dtype=float) * np.ones_like(bm)
    vlde = _disp.var_log_disp_ests(est, dfit, min_disp)
    if prior_var is None:
        prior_var = _disp.prior_variance(est, dfit, m, p, min_disp)

    # stage 3: MAP, GLM, tests, Cook's
    keys = ("base_mean", "disp_gene_est", "disp_fit", "dispersion", "disp_map", "stat_lrt",
            "max_cooks")  # fmt: skip
    res = {k: np.full(G, np.nan) for k in keys}
    disp_outlier = np.zeros(G, bool)
    converged = np.zeros(G, bool)
    beta = np.full((G, p), np.nan)
    sigma = np.full((G, p, p), np.nan)
    replaced = np.zeros(G, bool)
    cutoff = stats.f.ppf(0.99, p, m - p)
    replaceable = _n_or_more_in_cell(X, min_replicates_for_replace) if (
        cooks and np.isfinite(min_replicates_for_replace)) else np.zeros(m, bool)  # fmt: skip
    orig_cooks_max_nonrep = np.full(G, np.nan)
    two_group_rule = row_groups(X)[1] == 2 and p == 2
    sh = _Shared(X, sf, minmu, linear_mu, exact_dispersion, min_disp, trend_fn, float(prior_var),
                 float(vlde), test, reduced, replaceable, float(cutoff))  # fmt: skip
    heur_ok = np.zeros(G, bool)

    def store(idx, out):
        for k in ("base_mean", "disp_gene_est", "disp_fit", "dispersion", "disp_map"):
            res[k][idx] = out[k]
        disp_outlier[idx] = out["disp_outlier"]
        converged[idx] = out["fit"]["conv"]
        beta[idx] = out["fit"]["beta"]
        sigma[idx] = out["fit"]["sigma"]
        if test == "lrt":
            res["stat_lrt"][idx] = out["lrt_stat"]

    refit_genes = []
    pos = 0
    for b_, idx in enumerate(blocks):
        blk = block_store[b_] if keep_blocks else _block(Yt, idx)
        e = est[pos : pos + idx.size]
        b = bm[pos : pos + idx.size]
        pos += idx.size
        out = _fit_block(blk, sh, e, mu_store[b_], b)
        mu_store[b_] = None
        store(idx, out)
        ck = out["cooks"]
        res["max_cooks"][idx] = ck.max
        if two_group_rule:  # ≥ 3 counts above the count at each gene's largest Cook's distance
            heur_ok[idx] = ck.n_above_argmax >= 3
        if cooks and replaceable.any():
            orig_cooks_max_nonrep[idx] = ck.max_nonrep
            for k, r_ in enumerate(np.flatnonzero(ck.any_above)):
                refit_genes.append((idx[r_], blk.rows(r_)[0], ck.rows[k]))

    # stage 4: replacement of outliers and refit
    new_all_zero = np.zeros(G, bool)
    if cooks and replaceable.any():
        if refit_genes:
            gidx = np.array([g for g, _, _ in refit_genes])
            Ysub = np.array([y for _, y, _ in refit_genes])
            Csub = np.array([c for _, _, c in refit_genes])
            tbm = trimmed_mean(Ysub / sf, 0.2, axis=1)
            repl = np.trunc(np.outer(tbm, sf))
            mask = (Csub > cutoff) & replaceable[None, :]
            Ynew = np.where(mask, repl, Ysub)
            zero_now = Ynew.sum(axis=1) == 0
            res["base_mean"][gidx] = (Ynew / sf).mean(axis=1)
            new_all_zero[gidx[zero_now]] = True
            # DESeq2's replaceOutliers flags every gene with a distance above the cutoff (in
            # any sample) and refitWithoutOutliers refits those not all-zero now, re-estimating
            # with its default minmu (0.5). A gene whose counts did not change would refit to
            # the values it has unless minmu differs from 0.5, so it is skipped otherwise.
            replaced[gidx] = True
            changed = (Ynew != Ysub).any(axis=1)
            todo = ~zero_now & (changed | (sh.minmu != 0.5))
            if todo.any():
                out = _fit_block(CountBlock.from_dense(Ynew[todo]), replace(sh, minmu=0.5))
                store(gidx[todo], out)
        if replaceable.all():
            res["max_cooks"][:] = np.nan
        else:
            res["max_cooks"] = orig_cooks_max_nonrep

    # stage 5: statistics
    lfc_nat = beta @ cvec
    se_nat = np.sqrt(np.maximum(np.einsum("i,gij,j->g", cvec, sigma, cvec), 0.0))
    df = np.inf
    if test == "wald":
        with np.errstate(invalid="ignore", divide="ignore"):
            stat = lfc_nat / se_nat
        if use_t:
            df = float(m - p)
            pval = 2.0 * stats.t.sf(np.abs(stat), df)
        else:
            pval = 2.0 * stats.norm.sf(np.abs(stat))
    else:
        stat = res["stat_lrt"]
        pval = stats.chi2.sf(stat, p - reduced.shape[1])
    pval = np.where(all_zero, np.nan, pval)
    if new_all_zero.any():
        for arr in (lfc_nat, se_nat, stat, pval):
            arr[new_all_zero] = np.nan
    if cooks:
        with np.errstate(invalid="ignore"):
            outlier = res["max_cooks"] > cutoff
        if two_group_rule:
            outlier &= ~heur_ok
        pval = np.where(outlier, np.nan, pval)
    now_zero = (replaced | new_all_zero) & (res["base_mean"] == 0)
    if now_zero.any():
        lfc_nat[now_zero] = 0.0
        se_nat[now_zero] = 0.0
        stat[now_zero] = 0.0
        pval[now_zero] = 1.0
    bmean = res["base_mean"].copy()
    bmean[all_zero] = 0.0
    thr = np.nan
    if independent_filtering:
        padj, thr = _independent_filtering(bmean, pval, alpha)
    else:
        padj = bh_adjust(pval)
    nconv = int(np.sum(~converged[~all_zero]))
    if nconv:
        warnings.warn(f"{nconv} genes did not converge in the GLM fit", RuntimeWarning,
                      stacklevel=2)  # fmt: skip
    coef_se = np.sqrt(np.maximum(np.diagonal(sigma, axis1=1, axis2=2), 0.0))
    return NbGlmFit(
        base_mean=bmean,
        log2_fold_change=lfc_nat / LN2,
        lfc_se=se_nat / LN2,
        stat=stat,
        p_value=pval,
        adj_p_value=padj,
        coef=beta,
        coef_se=coef_se,
        disp_gene_est=res["disp_gene_est"],
        disp_fit=res["disp_fit"],
        dispersion=res["dispersion"],
        disp_map=res["disp_map"],
        disp_outlier=disp_outlier,
        converged=converged,
        max_cooks=res["max_cooks"],
        replaced=replaced,
        all_zero=all_zero,
        size_factors=sf,
        prior_var=float(prior_var),
        trend=trend_used,
        trend_coefficients=info.get("coefficients"),
        test=test,
        contrast_name=cname,
        coef_names=coef_names,
        gene_names=gene_names,
        df=df,
        filter_threshold=thr,
    )


def _size_factors_iterate(Y, niter=10, q_trim=0.05):
    """DESeq2's ``type="iterate"`` size factors (design ~1, mean trend, L-BFGS-B)."""
    Yd = Y.toarray() if sp.issparse(Y) else np.asarray(Y)
    m = Yd.shape[0]
    keep = Yd.sum(axis=0) > 0
    cts = Yd[:, keep].T
    blk = CountBlock.from_dense(cts)
    X = np.ones((m, 1))
    sf = np.ones(m)
    for i in range(niter):
        est, mu0, _ = _gene_est_block(blk, sf, X, 0.5, True, False, _disp.MIN_DISP)
        bm = (cts / sf).mean(axis=1)
        fn, _, _ = _disp.fit_trend(bm, est, "mean")
        dfit = fn(bm) * np.ones_like(bm)
        vl = _disp.var_log_disp_ests(est, dfit)
        pv = _disp.prior_variance(est, dfit, m, 1)
        disps, *_ = _disp.map_dispersion(blk, mu0, X, est, dfit, pv, vl)
        q = mu0.dense() / sf
        old = sf.copy()
        r = 1.0 / disps[:, None]

        def negll(par, q=q, r=r):
            s = np.exp(par - par.mean())
            mu = q * s
            ll = stats.nbinom.logpmf(cts, r, r / (r + mu)).sum(axis=1)
            return -np.sum(ll[ll > np.quantile(ll, q_trim)])

        fit = optimize.minimize(negll, np.log(old), method="L-BFGS-B")
        if not fit.success:
            raise RuntimeError("iterative size factor normalization did not converge")
        sf = np.exp(fit.x - fit.x.mean())
        if i > 0 and np.sum((np.log(old) - np.log(sf)) ** 2) < 1e-4:
            return sf
    raise RuntimeError("iterative size factor normalization did not converge")
