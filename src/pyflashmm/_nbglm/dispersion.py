"""Gene-wise and MAP dispersions of the DESeq2 pipeline.

Notation: genes i, samples j (m of them), design X (m×p), size factors s_j, normalized
counts q_ij = y_ij/s_j, base mean μ̄_i = mean_j q_ij, dispersion α_i (Var = μ + αμ²).

1. Initial α̂⁰ = min(rough, moments) clipped to [minDisp, max(10, m)] with
   rough = Σ_j[(q_ij − μ̂_ij)² − μ̂_ij]/μ̂_ij² / (m − p) (μ̂ = max(1, OLS fit of q)) and
   moments = (Var_j q_ij − mean_j(1/s_j)·μ̄_i)/μ̄_i².
2. Means μ̂_ij = s_j · (OLS fit of q_ij on X) when X has as many distinct rows as columns (the
   "linear model" route: the row means of q), else an NB GLM fit at α̂⁰; floored at ``minmu``.
3. Gene-wise α̂_i maximises the Cox–Reid adjusted likelihood by DESeq2's Armijo line search
   in ln α (``_kernels.nb_dispersion``); a fit that does not raise lp by |lp|·1e-6 reverts to
   α̂⁰; a non-converged fit (maxit reached or a single step) above 1e-7 is redone on a grid.
4. The trend α_tr and the prior variance σ²_d (:mod:`pyflashmm._nbglm.trend`).
5. MAP: maximise lp(a) − (a − ln α_tr)²/(2σ²_d) from α̂ (or α_tr when α̂ < 0.1 α_tr);
   genes with ln α̂ > ln α_tr + 2·sqrt(mad²) keep α̂ (dispersion outliers).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from pyflashmm._kernels import nb_dispersion as _kd
from pyflashmm._kernels.nb_density import log_posterior
from pyflashmm._kernels.nb_layout import RowMeans, divide_cols
from pyflashmm._nbglm.count_block import CountBlock
from pyflashmm._nbglm.irls import fit_glm
from pyflashmm._nbglm.layout import DesignLayout, sample_classes
from pyflashmm._nbglm.trend import MIN_DISP

# ----------------------------------------------------------------------------- initial values


def ols_basis(layout: DesignLayout) -> np.ndarray:
    """An orthonormal basis q (m×p, C order) of the columns of X: the OLS fit of a row Q_g of
    normalized counts is q (qᵀ Q_g), which ``_kernels.nb_dispersion.initial_disp`` sums gene
    by gene in a fixed order (the same bits for a gene whatever block it is fitted in)."""
    q, _ = np.linalg.qr(layout.X)
    return np.ascontiguousarray(q, dtype=np.float64)


def expand_means(means: RowMeans, sf, layout: DesignLayout) -> np.ndarray:
    """The G×m means μ_gj = max(means[g, lab_j]·s_j, minmu) of :class:`RowMeans`."""
    sub = np.ascontiguousarray(means.means, dtype=np.float64)
    return _kd.expand_row_means(sub, sf, layout.rows.lab, float(means.minmu))


def subset_means(means: RowMeans, idx) -> RowMeans:
    return RowMeans(np.ascontiguousarray(means.means[idx], dtype=np.float64), means.minmu)


class GeneWise(NamedTuple):
    """Gene-wise dispersions of a block: the estimates α̂, the means they were estimated at
    (per design row; reused by the MAP step) and the base means μ̄."""

    disp: np.ndarray
    means: RowMeans
    base_mean: np.ndarray


def gene_wise_block(
    blk: CountBlock, sf, layout: DesignLayout, classes, minmu, *, exact=False, min_disp=MIN_DISP
) -> GeneWise:
    """Steps 1–3 of the module docstring for a gene block (``classes`` the sample classes of
    ``sf`` and ``layout``)."""
    m, p = layout.m, layout.p
    xim = float(np.mean(1.0 / sf))
    if layout.is_group:
        means, bm, a0 = _kd.group_design_start(blk.csr, sf, layout.rows, float(m - p), xim)
    else:
        Qn = divide_cols(blk.dense(), sf)
        a0 = _kd.initial_disp(Qn, ols_basis(layout), float(m - p), xim)
        bm = Qn.mean(axis=1)
    a0 = np.clip(a0, min_disp, max(10.0, m))
    if not layout.is_group:  # the means of a GLM fit at the initial dispersions (minmu 0.5)
        means = fit_glm(blk, sf, layout, classes, a0).fitted.mu
    mu0 = RowMeans(np.ascontiguousarray(means, dtype=np.float64), float(minmu))
    est = gene_wise_dispersion(blk, mu0, sf, layout, classes, a0, min_disp=min_disp, exact=exact)
    return GeneWise(est, mu0, bm)


# ----------------------------------------------------------------------------- the searches


def line_search(
    blk: CountBlock,
    means: RowMeans,
    layout: DesignLayout,
    classes,
    log_alpha0,
    *,
    prior_mean=None,
    prior_var=1.0,
    use_prior=False,
    min_disp=MIN_DISP,
    kappa0=1.0,
    tol=1e-6,
    maxit=100,
    use_cr=True,
):
    """DESeq2's line search in ln α (``_kernels.nb_dispersion``) for every gene of ``blk`` from
    ``log_alpha0``; returns (log_alpha, iterations, initial lp, last lp)."""
    G = blk.shape[0]
    if prior_mean is None:
        prior_mean = np.zeros(G)
    obj = _kd.Objective(float(prior_var), bool(use_prior), bool(use_cr))
    search = _kd.LineSearch(float(kappa0), float(tol), int(maxit), float(np.log(min_disp / 10.0)))
    la, it, _acc, lp0, lp1 = _kd.fit_dispersion(
        blk.csr,
        means,
        layout.rows,
        classes,
        np.ascontiguousarray(log_alpha0, dtype=np.float64),
        np.ascontiguousarray(prior_mean, dtype=np.float64),
        obj,
        search,
    )
    return la, it, lp0, lp1


def grid_search(
    blk: CountBlock,
    means: RowMeans,
    sf,
    layout: DesignLayout,
    *,
    prior_mean=None,
    prior_var=1.0,
    use_prior=False,
    use_cr=True,
):
    """DESeq2's grid fallback: 20 points over ln α ∈ [ln 1e-8, ln max(10, m)], then a fine grid
    within ±1 step. Samples enter one by one (no classes), as in DESeq2. Returns α."""
    G = blk.shape[0]
    if prior_mean is None:
        prior_mean = np.zeros(G)
    grid = np.linspace(np.log(1e-8), np.log(max(10.0, layout.m)), 20)
    obj = _kd.Objective(float(prior_var), bool(use_prior), bool(use_cr))
    la = _kd.fit_dispersion_grid(
        blk.csr,
        means,
        layout.rows,
        sample_classes(sf, layout, shared=False),
        np.ascontiguousarray(prior_mean, dtype=np.float64),
        obj,
        grid,
    )
    return np.exp(la)


def gene_wise_dispersion(
    blk: CountBlock,
    means: RowMeans,
    sf,
    layout: DesignLayout,
    classes,
    alpha_init,
    *,
    min_disp=MIN_DISP,
    maxit=100,
    exact=False,
):
    """Gene-wise Cox–Reid dispersions (step 3 of the module docstring).

    ``alpha_init`` must already be clipped to [min_disp, max_disp]. With ``exact=True`` the
    line-search result is polished by a bounded 1-D optimiser to the true optimum of the
    Cox–Reid likelihood (not DESeq2's behaviour; off by default).
    """
    m = layout.m
    max_disp = max(10.0, m)
    la, it, lp0, lp1 = line_search(
        blk, means, layout, classes, np.log(alpha_init), min_disp=min_disp, maxit=maxit
    )
    est = np.minimum(np.exp(la), max_disp)
    no_increase = lp1 < lp0 + np.abs(lp0) / 1e6
    est[no_increase] = alpha_init[no_increase]
    conv = (it < maxit) & (it != 1)
    refit = ~conv & (est > min_disp * 10)
    if refit.any():
        est[refit] = grid_search(blk.subset(refit), subset_means(means, refit), sf, layout)
    if exact:
        est = _polish(
            blk.dense(), expand_means(means, sf, layout), layout.X, est, min_disp, max_disp
        )
    return np.clip(est, min_disp, max_disp)


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
            return -log_posterior(a, Y[i], MU[i], Xc, pm, prior_var, use_prior, True, w, B, L)

        res = minimize_scalar(
            f,
            bounds=(np.log(min_disp), np.log(max_disp)),
            method="bounded",
            options={"xatol": 1e-10},
        )
        if res.fun <= f(np.log(est[i])):
            out[i] = np.exp(res.x)
    return out


# ----------------------------------------------------------------------------- MAP


class MapDispersion(NamedTuple):
    """MAP step of a block: the final dispersions (MAP, or α̂ for dispersion outliers), the
    MAP estimates and the outlier flags."""

    dispersion: np.ndarray
    disp_map: np.ndarray
    outlier: np.ndarray


def map_dispersion(
    blk: CountBlock,
    means: RowMeans,
    sf,
    layout: DesignLayout,
    classes,
    disp_gene_est,
    disp_fit,
    prior_var,
    var_log_disp,
    *,
    min_disp=MIN_DISP,
    maxit=100,
    outlier_sd=2.0,
    exact=False,
) -> MapDispersion:
    """MAP dispersions and outlier flags (step 5 of the module docstring)."""
    m = layout.m
    init = np.where(disp_gene_est > 0.1 * disp_fit, disp_gene_est, disp_fit)
    la, it, _lp0, _lp1 = line_search(
        blk,
        means,
        layout,
        classes,
        np.log(init),
        prior_mean=np.log(disp_fit),
        prior_var=prior_var,
        use_prior=True,
        min_disp=min_disp,
        maxit=maxit,
    )
    disp_map = np.exp(la)
    refit = ~(it < maxit)
    if refit.any():
        disp_map[refit] = grid_search(
            blk.subset(refit),
            subset_means(means, refit),
            sf,
            layout,
            prior_mean=np.log(disp_fit[refit]),
            prior_var=prior_var,
            use_prior=True,
        )
    max_disp = max(10.0, m)
    if exact:
        disp_map = _polish(
            blk.dense(),
            expand_means(means, sf, layout),
            layout.X,
            disp_map,
            min_disp,
            max_disp,
            np.log(disp_fit),
            prior_var,
            True,
        )
    disp_map = np.clip(disp_map, min_disp, max_disp)
    outlier = np.log(disp_gene_est) > np.log(disp_fit) + outlier_sd * np.sqrt(var_log_disp)
    final = np.where(outlier, disp_gene_est, disp_map)
    return MapDispersion(final, disp_map, outlier)
