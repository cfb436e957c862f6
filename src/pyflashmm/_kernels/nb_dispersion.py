"""Dispersion estimation of the NB GLM: DESeq2's line search in ln α, its grid fallback, and the
initial values.

Notation as in ``nb_density``: gene g, samples j, size factors s_j, design rows x_q (R of
them), a = ln α, r = 1/α, the Cox–Reid log posterior lp(a) (with the prior term for the MAP
step).

Line search (DESeq2's ``fitDisp``): gradient ascent a ← a + κ·lp'(a); a step is accepted when
−lp(a+κ lp') ≤ −lp(a) − 1e-4 κ lp'²; otherwise κ is halved. After an accepted step κ grows
×1.1 (at most κ₀) and is halved every fifth accept. Proposals are clamped to [−30, 10]. It stops
when the gain is < ``tol``, when a < ``min_log_alpha`` or after ``maxit`` trials. Grid
(DESeq2's ``fitDispGrid``): the best of the given points, then a fine grid of the same size
within ±1 coarse step.

lp and lp' are evaluated tens of times per gene, so each gene is first compressed, exactly,
into entries that share one μ: the classes of samples with the same size factor and design row
(``nb_layout.SampleClasses``; every sample its own class when none are shared), ordered by
design row. With n_e samples and count total Y_e in entry e, ℓ_e = ln(1+αμ_e),
w_e = 1/(1/μ_e + α), and the count table of ``nb_layout``, the identities
ln(μ+r) = ln r + ℓ, αμ/(1+αμ) = αw and y/(μ+r) = αyw/μ give

  lp = Σ_k c_k[lnΓ(v_k+r) − lnΓ(r)] − (Σ_j y_j) ln r − Σ_e (r n_e + Y_e) ℓ_e + CR + prior,
  dlp/dα = α⁻² {Σ_k c_k[ψ(r) − ψ(v_k+r)] + Σ_e [n_e(ℓ_e − αw_e) + αY_e w_e/μ_e]} + dCR/dα,

and XᵀWX from the per-row sums Σ n_e w_e (R·p², not m·p²). ℓ_e and w_e of the last lp are
cached, so lp' at an accepted point costs no logarithm or division. Only the summation order,
these identities and the vectorisable logarithm ``log_vec`` (within 1 ulp of libm's for
1 + αμ ≥ 1) differ from the sample-by-sample ``nb_density.log_posterior``.

Initial values (DESeq2's ``estimateDispersionsGeneEst``): with q = y/s and its OLS fit μ̂,
α̂⁰ = min(rough, moments), rough = Σ_j[(q_j − μ̂_j)² − μ̂_j]/μ̂_j²/(m − p) (μ̂ floored at 1,
the result at 0) and moments = (Var q − mean(1/s)·mean q)/mean(q)².
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from pyflashmm._jit import njit, prange
from pyflashmm._kernels.nb_density import (
    cox_reid_derivative,
    cox_reid_term,
    digamma_sum,
    lgamma_sum,
    xtwx_rows,
)
from pyflashmm._kernels.nb_layout import (
    gene_nonzeros,
    gene_row,
    survival_counts,
    table_of_nonzeros,
)
from pyflashmm._kernels.vecmath import log_vec


class Objective(NamedTuple):
    """The log posterior maximised: the prior N(prior_mean_g, ``prior_var``) on a when
    ``use_prior`` (the MAP step), the Cox–Reid term when ``use_cr``."""

    prior_var: float
    use_prior: bool
    use_cr: bool


class LineSearch(NamedTuple):
    """Settings of the line search (module docstring)."""

    kappa0: float
    tol: float
    maxit: int
    min_log_alpha: float


class _Entries(NamedTuple):
    """A gene compressed into entries sharing one μ (module docstring)."""

    mu: np.ndarray  # μ_e
    n: np.ndarray  # n_e samples
    y: np.ndarray  # Y_e count total
    offsets: np.ndarray  # R + 1: entries of design row q
    inv_mu: np.ndarray  # 1/μ_e


class _CountTable(NamedTuple):
    """Distinct non-zero counts of a gene (``nb_layout``), their total and survival counts."""

    vals: np.ndarray
    cnts: np.ndarray
    K: int
    total: float
    surv: np.ndarray
    scratch: np.ndarray


class _Work(NamedTuple):
    """Scratch of lp/lp': per-row weight sums, p×p matrices, cached ℓ_e and w_e (at a =
    ``at[0]``)."""

    wsum: np.ndarray
    w2sum: np.ndarray
    B: np.ndarray
    L: np.ndarray
    Binv: np.ndarray
    dB: np.ndarray
    lc: np.ndarray
    wc: np.ndarray
    at: np.ndarray


@njit
def _work(R, p, n_entries):
    return _Work(
        np.empty(R),
        np.empty(R),
        np.empty((p, p)),
        np.empty((p, p)),
        np.empty((p, p)),
        np.empty((p, p)),
        np.empty(n_entries),
        np.empty(n_entries),
        np.full(1, np.nan),
    )


@njit
def _entries(R, n):
    """Work arrays for the entries of a gene (``n`` classes, R design rows)."""
    return _Entries(np.empty(n), np.empty(n), np.empty(n), np.empty(R + 1, np.int64), np.empty(n))


@njit
def _compress_gene(counts, g, means, classes, ent, vals, cnts, nzj):
    """Gene g as one entry per class (into ``ent``): μ_c = max(means[g, row_c]·s_c, minmu) (the
    same for all its samples by construction), 1/μ_c, n_c and Y_c (from the non-zero counts
    only), with the classes' row offsets; and its count table (in ``vals``, ``cnts``; ``nzj``
    is scratch)."""
    n_cls = classes.sf.shape[0]
    R = classes.offsets.shape[0] - 1
    means_g = means.means[g]
    minmu = means.minmu
    emu = ent.mu
    ey = ent.y
    for c in range(n_cls):
        emu[c] = max(means_g[classes.row[c]] * classes.sf[c], minmu)
        ent.n[c] = classes.size[c]
        ey[c] = 0.0
    nnz = gene_nonzeros(counts, g, vals, nzj)
    for i in range(nnz):
        ey[classes.cls[nzj[i]]] += vals[i]
    for q in range(R + 1):
        ent.offsets[q] = classes.offsets[q]
    for c in range(n_cls):
        ent.inv_mu[c] = 1.0 / emu[c]
    K, ytot = table_of_nonzeros(vals, nnz, cnts)
    surv = survival_counts(vals, cnts, K)
    return _CountTable(vals, cnts, K, ytot, surv, np.empty(surv.shape[0]))


@njit
def _log_and_weight(alpha, emu, im, ne, lc, wc):
    """ℓ_e = ln(1 + α μ_e) and w_e = 1/(1/μ_e + α) = μ_e/(1 + α μ_e) for e < ``ne``.

    No reductions and ``log_vec`` instead of ``math.log``: this loop compiles to SIMD code.
    """
    for e in range(ne):
        lc[e] = log_vec(1.0 + emu[e] * alpha)
        wc[e] = 1.0 / (im[e] + alpha)


# _lp and _dlp run tens of times per gene on a few hundred entries: inlined, so that their
# bundles are not passed by value at every call
@njit(inline="always")
def _lp(a, ent, tab, Xr, prior_mean, obj, wk):
    """lp(a) of one compressed gene (module docstring); leaves ℓ and w of every entry in
    ``wk.lc``/``wk.wc`` (``wk.at[0]`` = a) for :func:`_dlp`."""
    alpha = math.exp(a)
    r = 1.0 / alpha
    ll = lgamma_sum(r, tab.K, tab.vals, tab.cnts, tab.surv, tab.scratch)
    ll -= tab.total * math.log(r)
    wsum = wk.wsum
    R = wsum.shape[0]
    eoff = ent.offsets
    en = ent.n
    ey = ent.y
    lc = wk.lc
    wc = wk.wc
    _log_and_weight(alpha, ent.mu, ent.inv_mu, eoff[R], lc, wc)
    for q in range(R):
        ws = 0.0
        for e in range(eoff[q], eoff[q + 1]):
            ll -= (r * en[e] + ey[e]) * lc[e]
            ws += en[e] * wc[e]
        wsum[q] = ws
    wk.at[0] = a
    cr = 0.0
    if obj.use_cr:
        B = wk.B
        L = wk.L
        xtwx_rows(Xr, wsum, B)
        cr = cox_reid_term(B, L)
        if cr == -np.inf:
            return cr
    prior = 0.0
    if obj.use_prior:
        prior = -0.5 * (a - prior_mean) ** 2 / obj.prior_var
    return ll + prior + cr


@njit(inline="always")
def _dlp(a, ent, tab, Xr, prior_mean, obj, wk):
    """lp'(a) of one compressed gene (module docstring); reuses the ℓ and w of :func:`_lp` at
    the same a."""
    alpha = math.exp(a)
    r = 1.0 / alpha
    hit = wk.at[0] == a
    s = digamma_sum(r, tab.K, tab.vals, tab.cnts, tab.surv, tab.scratch)
    wsum = wk.wsum
    w2sum = wk.w2sum
    R = wsum.shape[0]
    eoff = ent.offsets
    en = ent.n
    ey = ent.y
    im = ent.inv_mu
    lc = wk.lc
    wc = wk.wc
    if not hit:
        _log_and_weight(alpha, ent.mu, im, eoff[R], lc, wc)
        wk.at[0] = a
    for q in range(R):
        ws = 0.0
        w2 = 0.0
        for e in range(eoff[q], eoff[q + 1]):
            we = wc[e]
            s += en[e] * (lc[e] - alpha * we) + alpha * (ey[e] * we * im[e])
            ws += en[e] * we
            w2 -= en[e] * (we * we)
        wsum[q] = ws
        w2sum[q] = w2
    ll = s / (alpha * alpha)
    cr = 0.0
    if obj.use_cr:
        xtwx_rows(Xr, wsum, wk.B)
        xtwx_rows(Xr, w2sum, wk.dB)
        cr = cox_reid_derivative(wk.B, wk.dB, wk.L, wk.Binv)
    prior = 0.0
    if obj.use_prior:
        prior = -(a - prior_mean) / obj.prior_var
    return (ll + cr) * alpha + prior


#: genes per work chunk of ``fit_dispersion`` (its work arrays are allocated once per chunk)
GENE_CHUNK = 8


@njit(parallel=True)
def fit_dispersion(counts, means, design, classes, log_alpha0, prior_mean, obj, search):
    """The line search of the module docstring for every gene of ``counts`` (``CountsCSR``),
    from a = ``log_alpha0``, with means ``means`` (``RowMeans``) over the design rows of
    ``design`` (``DesignRows``) and the samples compressed by ``classes`` (``SampleClasses``).
    lp at an accepted proposal is the value already computed for the Armijo test.

    Returns (log_alpha, iter, iter_accept, initial_lp, last_lp).
    """
    G = counts.indptr.shape[0] - 1
    m = counts.m
    Xr = design.Xr
    R, p = Xr.shape
    out_a = np.empty(G)
    iters = np.zeros(G, dtype=np.int64)
    accepts = np.zeros(G, dtype=np.int64)
    lp0 = np.empty(G)
    lp_last = np.empty(G)
    ne_max = classes.sf.shape[0]
    maxit = search.maxit
    kappa0 = search.kappa0
    n_chunks = (G + GENE_CHUNK - 1) // GENE_CHUNK
    for ch in prange(n_chunks):
        # work arrays of a chunk of genes (allocated once, not per gene)
        ent = _entries(R, ne_max)
        vals = np.empty(m)
        cnts = np.empty(m)
        nzj = np.empty(m, dtype=np.int64)
        wk = _work(R, p, ne_max)
        for g in range(ch * GENE_CHUNK, min((ch + 1) * GENE_CHUNK, G)):
            wk.at[0] = np.nan  # no cached ℓ, w yet
            tab = _compress_gene(counts, g, means, classes, ent, vals, cnts, nzj)
            pm = prior_mean[g]
            a = log_alpha0[g]
            lp = _lp(a, ent, tab, Xr, pm, obj, wk)
            dlp = _dlp(a, ent, tab, Xr, pm, obj, wk)
            kappa = kappa0
            lp0[g] = lp
            n_it = 0
            n_acc = 0
            for _t in range(maxit):
                n_it += 1
                a_prop = a + kappa * dlp
                if a_prop < -30.0:
                    kappa = (-30.0 - a) / dlp
                if a_prop > 10.0:
                    kappa = (10.0 - a) / dlp
                a_new = a + kappa * dlp
                lp_k = _lp(a_new, ent, tab, Xr, pm, obj, wk)
                theta_k = -lp_k
                theta_hat = -lp - kappa * 1e-4 * dlp * dlp
                if theta_k <= theta_hat:
                    n_acc += 1
                    a = a_new
                    lpnew = lp_k
                    change = lpnew - lp
                    if change < search.tol:
                        lp = lpnew
                        break
                    if a < search.min_log_alpha:
                        break
                    lp = lpnew
                    dlp = _dlp(a, ent, tab, Xr, pm, obj, wk)
                    kappa = min(kappa * 1.1, kappa0)
                    if n_acc % 5 == 0:
                        kappa = kappa / 2.0
                else:
                    kappa = kappa / 2.0
            out_a[g] = a
            iters[g] = n_it
            accepts[g] = n_acc
            lp_last[g] = lp
    return out_a, iters, accepts, lp0, lp_last


@njit(parallel=True)
def fit_dispersion_grid(counts, means, design, classes, prior_mean, obj, grid):
    """The grid search of the module docstring over the points ``grid`` (equally spaced) for
    every gene of ``counts``; arguments as for :func:`fit_dispersion`. Returns ln α."""
    G = counts.indptr.shape[0] - 1
    m = counts.m
    Xr = design.Xr
    R, p = Xr.shape
    n = grid.shape[0]
    delta = grid[1] - grid[0]
    ne_max = classes.sf.shape[0]
    out = np.empty(G)
    for g in prange(G):
        ent = _entries(R, ne_max)
        wk = _work(R, p, ne_max)
        tab = _compress_gene(
            counts, g, means, classes, ent, np.empty(m), np.empty(m), np.empty(m, dtype=np.int64)
        )
        pm = prior_mean[g]
        best = -np.inf
        ahat = grid[0]
        for t in range(n):
            v = _lp(grid[t], ent, tab, Xr, pm, obj, wk)
            if v > best:
                best = v
                ahat = grid[t]
        lo = ahat - delta
        step = 2.0 * delta / (n - 1)
        best = -np.inf
        afine = lo
        for t in range(n):
            at = lo + t * step if t < n - 1 else ahat + delta
            v = _lp(at, ent, tab, Xr, pm, obj, wk)
            if v > best:
                best = v
                afine = at
        out[g] = afine
    return out


@njit(parallel=True)
def initial_disp(Qn, q, df, xim):
    """min(rough, moments) initial dispersions (module docstring; before clipping) from
    normalized counts Qn (G×m) and the orthonormal basis ``q`` (m×p, from a QR of X) of the
    design, with ``df`` = m − p and ``xim`` = mean(1/s).

    The OLS fit of row g is μ̂_g = q (qᵀ Qn_g), summed here in a fixed order per gene (the
    sample order for qᵀ Qn_g, the column order for q t): a gene's value depends on its own row
    only. (A BLAS product (Qn q) qᵀ of the whole block gave other last bits to a gene
    depending on the number of rows of its block (OpenBLAS's kernels for the tiles and edges
    of a matrix), so blocks of other sizes, e.g. the gene blocks of a cluster, gave other
    initial dispersions.)"""
    G, m = Qn.shape
    p = q.shape[1]
    out = np.empty(G)
    for g in prange(G):
        row = Qn[g]
        t = np.zeros(p)
        for j in range(m):
            v = row[j]
            for k in range(p):
                t[k] += v * q[j, k]
        s = 0.0
        tot = 0.0
        for j in range(m):
            fit = 0.0
            for k in range(p):
                fit += t[k] * q[j, k]
            mu = max(1.0, fit)
            d = row[j] - mu
            s += (d * d - mu) / (mu * mu)
            tot += row[j]
        rough = max(s / df, 0.0)
        bm = tot / m
        ss = 0.0
        for j in range(m):
            d = row[j] - bm
            ss += d * d
        bv = ss / (m - 1)
        mom = (bv - xim * bm) / (bm * bm)
        out[g] = np.nan if np.isnan(mom) else min(rough, mom)
    return out


@njit(parallel=True)
def group_design_start(counts, sf, design, df, xim):
    """The start of the dispersion stage for a group design (as many distinct rows as
    columns), from the counts without G×m temporaries: with q = y/s, the per-row means of q
    (G×R, the OLS fit of a group design), the base mean (mean of q) and ``initial_disp`` of
    (q, row means). Returns (means, base_mean, alpha0)."""
    G = counts.indptr.shape[0] - 1
    m = counts.m
    lab = design.lab
    R = design.Xr.shape[0]
    means = np.empty((G, R))
    bmean = np.empty(G)
    a0 = np.empty(G)
    nrow = np.zeros(R)
    for j in range(m):
        nrow[lab[j]] += 1.0
    for g in prange(G):
        y = np.empty(m)
        gene_row(counts, g, y)
        q = np.empty(m)
        for j in range(m):  # vectorised
            q[j] = y[j] / sf[j]
        sums = np.zeros(R)
        tot = 0.0
        for j in range(m):
            qj = q[j]
            sums[lab[j]] += qj
            tot += qj
        for r in range(R):
            means[g, r] = sums[r] / nrow[r]
        bm = tot / m
        s = 0.0
        ss = 0.0
        for j in range(m):
            qj = q[j]
            mu = max(1.0, means[g, lab[j]])
            d = qj - mu
            s += (d * d - mu) / (mu * mu)
            d2 = qj - bm
            ss += d2 * d2
        rough = max(s / df, 0.0)
        bv = ss / (m - 1)
        mom = (bv - xim * bm) / (bm * bm)
        bmean[g] = bm
        a0[g] = np.nan if np.isnan(mom) else min(rough, mom)
    return means, bmean, a0


@njit(parallel=True)
def expand_row_means(means, sf, lab, minmu):
    """μ = max(means[g, lab_j]·s_j, minmu) (G×m) from per-row means (G×R)."""
    G = means.shape[0]
    m = sf.shape[0]
    out = np.empty((G, m))
    for g in prange(G):
        for j in range(m):
            out[g, j] = max(means[g, lab[j]] * sf[j], minmu)
    return out
