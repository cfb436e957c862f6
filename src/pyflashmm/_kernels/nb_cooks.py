"""Cook's distances of the NB GLM and DESeq2's robust moment dispersion behind them.

For sample j of a gene with fitted mean μ_j, hat diagonal h_j (``nb_irls``), p coefficients
and robust dispersion α̃:

  D_j = (y_j − μ_j)² / (μ_j + α̃μ_j²) / p · h_j/(1 − h_j)².

Samples of one class (size factor and design row, ``nb_layout.SampleClasses``) share μ_c and
h_c, so D_j = (y_j − μ_c)²·k_c with k_c = h_c/(1 − h_c)²/(p(μ_c + α̃μ_c²)). The G×m matrix D is
formed only for the few genes whose outliers are replaced; the others are summarised per gene.

Robust moment dispersion (DESeq2's ``robustMethodOfMomentsDisp``): with q = y/s, the variance
of q is estimated per design row with ≥ 3 samples as scale · trimmed mean of (q − q̄_t)² (q̄_t
the trimmed mean of q; trim 1/3, 1/4 or 1/8 and scale 2.04, 1.86 or 1.51 for ≤ 3, ≤ 23 and
more samples), the maximum over rows; then α̃ = max((v − μ̄)/μ̄², 0.04) (in the Python layer).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from pyflashmm._jit import njit, prange
from pyflashmm._kernels.nb_layout import gene_nonzeros, gene_row
from pyflashmm._kernels.order_stats import trimmed_mean_parts, trimmed_mean_row


class SampleSets(NamedTuple):
    """Disjoint sets of samples, set k being ``cols[offsets[k]:offsets[k+1]]`` (increasing),
    with the trim and scale of its trimmed variance."""

    cols: np.ndarray  # int64
    offsets: np.ndarray  # int64, n_sets + 1
    trims: np.ndarray
    scales: np.ndarray


@njit
def _class_cooks(g, classes, fitted, al, a, p, muc, kc):
    """The fitted mean μ_c (``muc``) and k_c = h_c/(1 − h_c)²/(p(μ_c + aμ_c²)) (``kc``) of
    every class of gene g (module docstring), with h_c = w_c·hat[q], w_c = μ̃_c/(1 + αμ̃_c),
    μ̃_c = max(s_c·wmu[q], minmu) (``fitted`` a ``FittedRows``) and ``a`` the gene's robust
    dispersion."""
    csf = classes.sf
    clab = classes.row
    row_mu = fitted.mu
    row_wmu = fitted.wmu
    row_hat = fitted.hat
    minmu = fitted.minmu
    for c in range(muc.shape[0]):
        q = clab[c]
        mu = csf[c] * row_mu[g, q]
        mw = max(csf[c] * row_wmu[g, q], minmu)
        h = mw / (1.0 + al * mw) * row_hat[g, q]
        muc[c] = mu
        kc[c] = h / ((1.0 - h) * (1.0 - h)) / (p * (mu + a * (mu * mu)))


@njit(parallel=True)
def cooks_summary(counts, classes, fitted, alpha, a, p, use, keep):
    """Per-gene summaries of the Cook's distances D (G×m, never formed).

    Per gene: the maximum of D over the samples with ``use`` (NaN if one is NaN); the same
    with D set to 0 where ``keep`` is False; the largest D ignoring NaN; and
    #{j : y_j > y_j*} with j* = argmax D (the first largest value, or the first NaN; DESeq2's
    check that the largest distance is not at one of the 3 largest counts).
    Returns (max_use, max_use_keep, max_all, n_above).
    """
    G = counts.indptr.shape[0] - 1
    m = counts.m
    nc = classes.sf.shape[0]
    cls = classes.cls
    max_use = np.empty(G)
    max_keep = np.empty(G)
    max_all = np.empty(G)
    n_above = np.empty(G, dtype=np.int64)
    for g in prange(G):
        muc = np.empty(nc)
        kc = np.empty(nc)
        y = np.empty(m)
        gene_row(counts, g, y)
        _class_cooks(g, classes, fitted, alpha[g], a[g], p, muc, kc)
        mu_ = -np.inf
        mk = -np.inf
        ma = -np.inf
        best = -np.inf
        jm = -1
        for j in range(m):
            c = cls[j]
            d = y[j] - muc[c]
            v = d * d * kc[c]
            if use[j] and not v <= mu_:  # a larger value, or NaN (which stays)
                if not np.isnan(mu_):
                    mu_ = v
            vk = v if keep[j] else 0.0
            if use[j] and not vk <= mk:
                if not np.isnan(mk):
                    mk = vk
            if v > ma:
                ma = v
            if jm < 0 or (not np.isnan(best) and (v > best or np.isnan(v))):
                best = v
                jm = j
        ym = y[jm]
        cnt = 0
        for j in range(m):
            cnt += y[j] > ym
        max_use[g] = mu_
        max_keep[g] = mk
        max_all[g] = ma
        n_above[g] = cnt
    return max_use, max_keep, max_all, n_above


@njit(parallel=True)
def cooks_matrix(counts, classes, fitted, alpha, a, p):
    """The Cook's distances D (G×m) of :func:`cooks_summary`, for the few genes that need
    them."""
    G = counts.indptr.shape[0] - 1
    m = counts.m
    nc = classes.sf.shape[0]
    cls = classes.cls
    out = np.empty((G, m))
    for g in prange(G):
        muc = np.empty(nc)
        kc = np.empty(nc)
        y = out[g]
        gene_row(counts, g, y)
        _class_cooks(g, classes, fitted, alpha[g], a[g], p, muc, kc)
        for j in range(m):
            c = cls[j]
            d = y[j] - muc[c]
            out[g, j] = d * d * kc[c]
    return out


@njit(parallel=True)
def robust_var_rows(counts, sf, sets):
    """max over the sample sets k of scale_k · trimmed mean (trim_k) of (q − q̄_t)², q = y/s,
    q̄_t the trimmed mean of q over the set (``sets`` a :class:`SampleSets`): the variance of
    DESeq2's robust moment dispersion (module docstring). Returns G values.

    Counts are non-negative and s > 0, so q ≥ 0. Only the non-zero q of a set are stored:
    the zeros are the lowest ranks of q, and all map to q̄_t² in the second trimmed mean, so
    both means count them instead of selecting them (the values and their order are those of
    ``trimmed_mean_row`` on the whole set).
    """
    G = counts.indptr.shape[0] - 1
    m = counts.m
    cols = sets.cols
    off = sets.offsets
    nset = off.shape[0] - 1
    nmax = 0
    set_of = np.full(m, -1, dtype=np.int64)  # the set of every sample (sets are disjoint)
    for k in range(nset):
        nmax = max(nmax, off[k + 1] - off[k])
        for t in range(off[k], off[k + 1]):
            set_of[cols[t]] = k
    out = np.empty(G)
    for g in prange(G):
        q = np.empty(nmax + 1)  # + 1: the branch-free filter writes one past the set's end
        less = np.empty(nmax + 1)
        more = np.empty(nmax + 1)
        nzv = np.empty(m)
        nzj = np.empty(m, dtype=np.int64)
        nnz = gene_nonzeros(counts, g, nzv, nzj)
        best = 0.0
        for k in range(nset):
            n = off[k + 1] - off[k]
            lo = int(math.floor(n * sets.trims[k]))
            hi = n - lo
            nz = 0
            for i in range(nnz):  # the non-zero counts of the set, in sample order
                q[nz] = nzv[i]
                more[nz] = sf[nzj[i]]
                nz += set_of[nzj[i]] == k
            for t in range(nz):
                q[t] = q[t] / more[t]
            for t in range(nz):
                more[t] = q[t]
            cm = trimmed_mean_parts(less, 0, n - nz, 0.0, more, nz, lo, hi)
            for t in range(nz):
                d = q[t] - cm
                q[t] = d * d
            v = sets.scales[k] * trimmed_mean_row(q[:nz], n - nz, cm * cm, lo, hi, less, more)
            best = v if k == 0 else max(best, v)
        out[g] = best
    return out
