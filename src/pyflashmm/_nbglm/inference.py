"""Tests of a fitted NB GLM: Wald and likelihood-ratio tests of any contrast, DESeq2's result
rules, independent filtering and Benjamini–Hochberg.

Notation: gene g, coefficients β̂ (natural-log scale, p of them) with covariance Σ (G×p×p on
``NbGlmFit.cov``), m samples, a contrast c (p) or a joint contrast L (p × r).

* Wald (DESeq2's ``results(contrast=numeric)``): log2 fold change cᵀβ̂/ln 2, standard error
  √(cᵀΣc)/ln 2, z = cᵀβ̂/√(cᵀΣc) with normal p-values, or t with m − p df (``use_t``). A joint
  contrast gives W = (Lᵀβ̂)ᵀ(LᵀΣL)⁻¹(Lᵀβ̂) ~ χ²_r (F = W/r ~ F(r, m − p) with ``use_t``); its
  log fold change and standard error are NaN.
* LRT: 2(ℓ_full − ℓ_reduced) ~ χ²_{p − p₀}, the reduced GLM refitted (IRLS only) at the
  fit's final dispersions, from the counts the fit used (outliers replaced where they were).
  The reduced design is ``reduced`` when given, else, for each contrast, X without its
  coefficients when each column of L picks one coefficient (DESeq2's reduced formula), or
  X·N with N an orthonormal basis of the null space of Lᵀ (a reparametrisation in which the
  contrast is zero). p₀ = 0 is allowed (μ = s). The log fold change is that of c from the full
  fit, as in DESeq2.
* Result rules (DESeq2 1.38 ``results()``): all-zero genes have NA p-values; p-values of Cook's
  outliers (``NbGlmFit.cooks_outlier``) are NA; genes all-zero after outlier replacement get
  log fold change, standard error and statistic 0 and p-value 1.
* Independent filtering (``pvalueAdjustment``) on the base mean at FDR ``alpha``, then BH
  (:func:`pyflashmm._multitest.bh_adjust`), per contrast.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pandas as pd
import scipy.linalg
from scipy import stats

from pyflashmm._checks import check_full_rank
from pyflashmm._contrasts import as_contrasts
from pyflashmm._kernels.lowess import lowess
from pyflashmm._multitest import bh_adjust
from pyflashmm._nbglm.cooks import REFIT_MINMU
from pyflashmm._nbglm.count_block import CountBlock, gene_block
from pyflashmm._nbglm.irls import LN2, fit_means, loglik, row_means_of
from pyflashmm._nbglm.layout import DesignLayout, design_layout, sample_classes
from pyflashmm._nbglm.r_stats import r_quantile

if TYPE_CHECKING:
    from pyflashmm._nbglm.fit import NbGlmFit

#: columns of the table of :func:`nbglm_test`, in order
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
    "dispersion",
    "converged",
    "status",
)


class ContrastTest(NamedTuple):
    """One contrast tested for every gene: log2 fold change and its standard error (NaN for a
    joint contrast), the statistic, the df of its reference distribution, the p-value, the
    BH-adjusted p-value and the base-mean threshold of independent filtering (NaN without)."""

    log_fc: np.ndarray
    se: np.ndarray
    stat: np.ndarray
    df: float
    p_value: np.ndarray
    adj_p_value: np.ndarray
    filter_threshold: float


# ----------------------------------------------------------------------------- arguments


def check_reduced(reduced, layout: DesignLayout) -> np.ndarray:
    """The reduced design of an LRT as float64 (m × p₀, p₀ < p, of full column rank)."""
    m, p = layout.m, layout.p
    names = [str(c) for c in reduced.columns] if isinstance(reduced, pd.DataFrame) else None
    R = np.asarray(reduced, dtype=np.float64)
    if R.ndim != 2 or R.shape[0] != m or R.shape[1] >= p:
        raise ValueError(f"reduced must have shape ({m}, p0) with p0 < {p}, got {R.shape}")
    if not np.isfinite(R).all():
        raise ValueError("reduced contains NaN or infinite values")
    if R.shape[1] > 0:
        names = names or [f"x{k}" for k in range(R.shape[1])]
        check_full_rank(R.T @ R, names, "reduced")
    return R


def reduced_design(X, L) -> np.ndarray:
    """The reduced design of contrast L (module docstring): X without the coefficients L picks
    one each, else X·N with N an orthonormal basis of the null space of Lᵀ."""
    picks = [np.flatnonzero(L[:, k]) for k in range(L.shape[1])]
    cols = [int(nz[0]) for nz in picks if nz.size == 1]
    if len(cols) == L.shape[1] and len(set(cols)) == len(cols):
        return np.delete(X, cols[0] if len(cols) == 1 else cols, axis=1)
    return X @ scipy.linalg.null_space(L.T)


# ----------------------------------------------------------------------------- log-likelihoods


def _blocks(fit: NbGlmFit):
    """(genes, counts block, minmu) of the genes the fit used, with the replaced counts of the
    genes refitted after outlier replacement; all-zero genes are left out."""
    d = fit.data
    skip = fit.all_zero.copy()
    skip[d.refit_genes] = True
    genes = np.flatnonzero(~skip)
    bs = d.block_size
    for k in range(0, genes.size, bs):
        idx = genes[k : k + bs]
        yield idx, gene_block(d.counts, idx), d.minmu
    for k in range(0, d.refit_genes.size, bs):
        idx = d.refit_genes[k : k + bs]
        yield idx, CountBlock.from_dense(d.refit_counts[k : k + bs]), REFIT_MINMU


def _full_loglik_block(fit: NbGlmFit, idx, blk, minmu):
    d = fit.data
    row_mu = row_means_of(d.layout, fit.coef[idx], d.fallback[idx])
    return loglik(
        blk,
        fit.size_factors,
        d.layout,
        d.classes,
        row_mu,
        d.fallback[idx],
        fit.dispersion[idx],
        minmu=minmu,
    )


def full_loglik(fit: NbGlmFit) -> np.ndarray:
    """ℓ_full of every gene (NaN for all-zero genes): the NB log-likelihood at the fitted means,
    from the counts the fit used."""
    out = np.full(fit.base_mean.size, np.nan)
    for idx, blk, minmu in _blocks(fit):
        out[idx] = _full_loglik_block(fit, idx, blk, minmu)
    return out


def _lrt_stats(fit: NbGlmFit, designs: list, derived: bool) -> list:
    """2(ℓ_full − ℓ_reduced) of every gene for each reduced design (one pass over the gene
    blocks; each reduced design's layout and sample classes made once, from the fit's layout
    when the designs are ``derived`` from X)."""
    G = fit.base_mean.size
    sf = fit.size_factors
    parent = fit.data.layout if derived else None
    layouts = [design_layout(X0, coarsens=parent) for X0 in designs]
    classes = [sample_classes(sf, lay) for lay in layouts]
    full = fit.loglik
    need_full = full is None
    if need_full:
        full = np.full(G, np.nan)
    out = [np.full(G, np.nan) for _ in designs]
    for idx, blk, minmu in _blocks(fit):
        if need_full:
            full[idx] = _full_loglik_block(fit, idx, blk, minmu)
        alpha = fit.dispersion[idx]
        for k, (lay, cls) in enumerate(zip(layouts, classes, strict=True)):
            row_mu, fallback = fit_means(blk, sf, lay, cls, alpha, minmu=minmu)
            red = loglik(blk, sf, lay, cls, row_mu, fallback, alpha, minmu=minmu)
            out[k][idx] = 2.0 * (full[idx] - red)
    return out


# ----------------------------------------------------------------------------- the tests


def _rejections(filt, pvalue, cutoffs, alpha) -> np.ndarray:
    """Number of genes BH rejects at ``alpha`` among those with ``filt ≥ c``, for each cutoff c.

    BH rejects the i smallest of m p-values, i the largest index with p₍ᵢ₎·m/i < alpha (the
    adjusted p-value min_{j ≥ i} p₍ⱼ₎·m/j is below alpha exactly there). The p-values are
    sorted once; each filtered set keeps that order, and p₍ᵢ₎·m/i is computed as
    :func:`~pyflashmm._multitest.bh_adjust` computes it, so the counts are those of the
    adjusted p-values.
    """
    finite = np.isfinite(pvalue)
    order = np.argsort(pvalue[finite], kind="stable")
    p_sorted = pvalue[finite][order]
    f_sorted = filt[finite][order]
    out = np.zeros(cutoffs.size, dtype=np.int64)
    for k, c in enumerate(cutoffs):
        sel = p_sorted[f_sorted >= c]
        m = sel.size
        if m:
            below = np.flatnonzero(sel * m / np.arange(1, m + 1) < alpha)
            out[k] = below[-1] + 1 if below.size else 0
    return out


def independent_filter(base_mean, pvalue, alpha):
    """DESeq2 1.38's pvalueAdjustment: filter on the base mean, pick θ by lowess, then BH.
    Returns (adjusted p-values, base-mean threshold).

    The number of rejections at each of 50 quantiles θ of the base mean is smoothed by R's
    ``lowess(f = 1/5)``; θ is the first quantile whose count exceeds the smooth's maximum
    minus the root mean square of its residuals (θ = 0 when at most 10 genes are ever
    rejected).
    """
    filt = base_mean
    lower = np.mean(filt == 0)
    upper = 0.95 if lower < 0.95 else 1.0
    theta = np.linspace(lower, upper, 50)
    cutoffs = r_quantile(filt, theta)
    num_rej = _rejections(filt, pvalue, cutoffs, alpha)
    if num_rej.max() <= 10:
        j = 0
    else:
        delta = 0.01 * (theta[-1] - theta[0])
        lo = lowess(num_rej.astype(np.float64), theta, 1 / 5, 3, float(delta))
        resid = num_rej[num_rej > 0] - lo[num_rej > 0] if (num_rej != 0).any() else np.zeros(1)
        thresh = lo.max() - math.sqrt(np.mean(resid**2))
        above = np.flatnonzero(num_rej > thresh)
        j = int(above[0]) if above.size else 0
    use = filt >= cutoffs[j]
    padj = np.full(filt.size, np.nan)
    if use.any():
        padj[use] = bh_adjust(pvalue[use])
    return padj, float(cutoffs[j])


def _estimate(fit: NbGlmFit, c):
    """cᵀβ̂ and √(cᵀΣc) of every gene (natural-log scale)."""
    est = fit.coef @ c
    se = np.sqrt(np.maximum(np.einsum("i,gij,j->g", c, fit.cov, c), 0.0))
    return est, se


def _wald(fit: NbGlmFit, L, use_t):
    """(natural-log estimate, its standard error, statistic, p-value, df) of contrast L."""
    beta, sigma = fit.coef, fit.cov
    m, p = fit.X.shape
    r = L.shape[1]
    if r == 1:
        est, se = _estimate(fit, np.ascontiguousarray(L[:, 0]))
        with np.errstate(invalid="ignore", divide="ignore"):
            stat = est / se
        if use_t:
            df = float(m - p)
            return est, se, stat, 2.0 * stats.t.sf(np.abs(stat), df), df
        return est, se, stat, 2.0 * stats.norm.sf(np.abs(stat)), np.inf
    G = beta.shape[0]
    b = beta @ L
    V = np.einsum("ik,gij,jl->gkl", L, sigma, L)
    W = np.full(G, np.nan)
    ok = np.isfinite(b).all(axis=1) & np.isfinite(V).all(axis=(1, 2))
    if ok.any():
        W[ok] = np.einsum("gk,gk->g", b[ok], (np.linalg.pinv(V[ok]) @ b[ok][..., None])[..., 0])
    nan = np.full(G, np.nan)
    if use_t:
        df = float(m - p)
        stat = W / r
        return nan, nan.copy(), stat, stats.f.sf(stat, r, df), df
    return nan, nan.copy(), W, stats.chi2.sf(W, r), float(r)


def _apply_rules(fit: NbGlmFit, est, se, stat, pval, alpha, independent_filtering):
    """DESeq2's result rules (module docstring), filtering and BH; returns (est, se, stat,
    p-value, adjusted p-value, filter threshold) with est and se on the natural-log scale."""
    pval = np.where(fit.all_zero, np.nan, pval)
    zero_after = fit.zero_after_replacement
    if zero_after.any():
        for arr in (est, se, stat, pval):
            arr[zero_after] = np.nan
    pval = np.where(fit.cooks_outlier, np.nan, pval)
    now_zero = (fit.replaced | zero_after) & (fit.base_mean == 0)
    if now_zero.any():
        est[now_zero] = 0.0
        se[now_zero] = 0.0
        stat[now_zero] = 0.0
        pval[now_zero] = 1.0
    thr = np.nan
    if independent_filtering:
        padj, thr = independent_filter(fit.base_mean, pval, alpha)
    else:
        padj = bh_adjust(pval)
    return est, se, stat, pval, padj, thr


def test_key(L, reduced, test, use_t, alpha, independent_filtering) -> tuple:
    """What a test's result depends on besides the fit (to recognise a test already run)."""
    L = np.ascontiguousarray(L, dtype=np.float64)
    red = None if reduced is None else (reduced.shape, np.ascontiguousarray(reduced).tobytes())
    return (test, bool(use_t), float(alpha), bool(independent_filtering), L.shape, L.tobytes(),
            red)  # fmt: skip


def test_contrasts(
    fit: NbGlmFit,
    contrasts: dict,
    reduced,
    *,
    test,
    use_t,
    alpha,
    independent_filtering,
    lrt_stats: dict | None = None,
    done: dict | None = None,
) -> dict[str, ContrastTest]:
    """Test each {name: p × r matrix} of ``contrasts`` (module docstring); ``reduced`` a checked
    reduced design or None. ``lrt_stats`` maps reduced designs to LRT statistics already
    computed and ``done`` :func:`test_key` to tests already run: both are reused, and
    completed with the new ones."""
    done = {} if done is None else done
    keys = {
        name: test_key(L, reduced, test, use_t, alpha, independent_filtering)
        for name, L in contrasts.items()
    }
    todo = {name: L for name, L in contrasts.items() if keys[name] not in done}
    if todo:
        new = _run_tests(fit, todo, reduced, test=test, use_t=use_t, alpha=alpha,
                         independent_filtering=independent_filtering,
                         lrt_stats=lrt_stats)  # fmt: skip
        for name, res in new.items():
            done[keys[name]] = res
    return {name: done[keys[name]] for name in contrasts}


def _run_tests(fit, contrasts, reduced, *, test, use_t, alpha, independent_filtering, lrt_stats):
    """The tests of :func:`test_contrasts` not run before."""
    X = fit.X
    p = X.shape[1]
    lrt = {}
    if test == "lrt":
        known = {} if lrt_stats is None else lrt_stats
        derived = reduced is None
        new_designs, new_keys, key_of = [], [], {}
        for name, L in contrasts.items():
            X0 = reduced if reduced is not None else reduced_design(X, L)
            key = (derived, X0.shape, X0.tobytes())
            if key not in known and key not in new_keys:
                new_keys.append(key)
                new_designs.append(X0)
            key_of[name] = (key, p - X0.shape[1])
        if new_designs:
            known.update(zip(new_keys, _lrt_stats(fit, new_designs, derived=derived), strict=True))
        lrt = {name: (known[key], dfk) for name, (key, dfk) in key_of.items()}
    out = {}
    G = fit.base_mean.size
    for name, L in contrasts.items():
        if test == "wald":
            est, se, stat, pval, df = _wald(fit, L, use_t)
        else:
            # the log fold change of a single contrast from the full fit, as DESeq2 reports it
            est, se = np.full(G, np.nan), np.full(G, np.nan)
            if L.shape[1] == 1:
                est, se = _estimate(fit, np.ascontiguousarray(L[:, 0]))
            stat, dfk = lrt[name]
            stat = stat.copy()
            pval = stats.chi2.sf(stat, dfk)
            df = float(dfk)
        est, se, stat, pval, padj, thr = _apply_rules(
            fit, est, se, stat, pval, alpha, independent_filtering
        )
        out[name] = ContrastTest(est / LN2, se / LN2, stat, df, pval, padj, thr)
    return out


def nbglm_test(
    fit: NbGlmFit,
    contrast=None,
    reduced=None,
    *,
    test=None,
    use_t=None,
    alpha=None,
    independent_filtering=None,
) -> pd.DataFrame:
    """Test contrasts of a fitted NB GLM (Wald or LRT) without refitting it.

    Parameters
    ----------
    fit : NbGlmFit
        The result of :func:`pyflashmm.nbglm`.
    contrast : None, str, list, dict, ndarray or DataFrame
        What to test (parsed by :func:`pyflashmm.contrast_matrix`'s rules): a coefficient name
        or expression (``"trtB - trtA"``), a list of them, a dict name → expression, numeric
        vector (length p) or list of expressions (a joint test), a p × L array (one contrast
        per column, named c0, c1, …) or the DataFrame of ``contrast_matrix``. None tests every
        coefficient (one block of rows per coefficient, named by it).
    reduced : array_like, shape (m, p₀), optional
        For the LRT: the reduced design, the same for every contrast; default the reduced
        design of each contrast (module docstring).
    test : {"wald", "lrt"}, optional
        Default: the fit's.
    use_t : bool, optional
        Wald tests with t (F for joint contrasts) on m − p df; default: the fit's.
    alpha : float, optional
        FDR of independent filtering; default: the fit's.
    independent_filtering : bool, optional
        Default: the fit's.

    Returns
    -------
    pandas.DataFrame
        One row per (gene, contrast), contrasts in blocks: ``variable`` (gene), ``contrast``,
        ``log_fc`` (log2; NaN for a joint contrast), ``se`` (log2), ``stat`` (z, t, χ² or F),
        ``df`` (∞ for z, m − p for t and F, the χ² df otherwise), ``p_value``,
        ``adj_p_value`` (BH after independent filtering, per contrast), ``method`` ("nbglm"),
        ``base_mean``, ``dispersion``, ``converged``, ``status``.
    """
    test = fit.test if test is None else str(test).lower()
    if test not in ("wald", "lrt"):
        raise ValueError(f"test must be 'wald' or 'lrt', got {test!r}")
    use_t = fit.use_t if use_t is None else bool(use_t)
    alpha = fit.alpha if alpha is None else float(alpha)
    independent_filtering = (
        fit.independent_filtering if independent_filtering is None else bool(independent_filtering)
    )
    if fit.data is None:
        raise ValueError("fit carries no fitted data (it was not made by nbglm)")
    contrasts = as_contrasts(list(fit.coef_names), contrast)
    if test == "lrt" and reduced is not None:
        reduced = check_reduced(reduced, fit.data.layout)
    res = test_contrasts(
        fit,
        contrasts,
        reduced,
        test=test,
        use_t=use_t,
        alpha=alpha,
        independent_filtering=independent_filtering,
        lrt_stats=dict(fit.data.lrt_stats),  # copies: the fit stays as it was
        done=dict(fit.data.tests),
    )
    G = fit.base_mean.size
    K = len(res)
    tests = list(res.values())
    columns = {
        "variable": np.tile(np.asarray(fit.gene_names, dtype=object), K),
        "contrast": np.repeat(np.asarray(list(res), dtype=object), G),
        "log_fc": np.concatenate([t.log_fc for t in tests]),
        "se": np.concatenate([t.se for t in tests]),
        "stat": np.concatenate([t.stat for t in tests]),
        "df": np.repeat([t.df for t in tests], G),
        "p_value": np.concatenate([t.p_value for t in tests]),
        "adj_p_value": np.concatenate([t.adj_p_value for t in tests]),
        "method": np.full(G * K, "nbglm", dtype=object),
        "base_mean": np.tile(fit.base_mean, K),
        "dispersion": np.tile(fit.dispersion, K),
        "converged": np.tile(fit.converged, K),
        "status": np.tile(fit.status, K),
    }
    return pd.DataFrame(columns)
