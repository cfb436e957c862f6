"""Numba kernels of the negative-binomial GLM (DESeq2-style), batched over genes.

Notation (one gene; samples or cells j = 1..m, coefficients k = 1..p):

* ``y`` (m) counts, ``sf`` (m) size factors, ``X`` (m×p) design, ``mu`` (m) fitted means,
  ``a = ln α`` log dispersion, ``r = 1/α`` the NB size.
* NB log density  ln f(y; μ, α) = lnΓ(y+r) − lnΓ(r) − lnΓ(y+1) + r ln(r/(r+μ)) + y ln(μ/(r+μ)).
* Cox–Reid adjusted log posterior of ``a`` (the objective of the dispersion line search):
  lp(a) = Σ_j [lnΓ(y_j+r) − lnΓ(r) − y_j ln(μ_j+r) − r ln(1+αμ_j)] − ½ ln det(XᵀWX)
  − (a − a₀)²/(2σ²) (prior term only for the MAP step), with W = diag(1/(1/μ_j + α)).
* IRLS for β (natural log scale): z = ln(μ/s) + (y−μ)/μ, w = μ/(1+αμ),
  β ← (XᵀWX + Λ)⁻¹ XᵀWz, μ = max(s·exp(Xβ), minmu); covariance
  Σ = (XᵀWX+Λ)⁻¹ XᵀWX (XᵀWX+Λ)⁻¹; hat diagonal h_j = w_j x_jᵀ(XᵀWX+Λ)⁻¹x_j.

Kernels take contiguous float64 arrays (genes in rows), loop over genes with ``prange`` and
return arrays plus per-gene iteration counts; they never raise.
"""

from __future__ import annotations

import math

import numpy as np

from pyflashmm._jit import njit, prange
from pyflashmm._kernels.linalg import cholesky_inverse, cholesky_lower, cholesky_solve_vector
from pyflashmm._kernels.vecmath import log1p_recip, log_vec

# ----------------------------------------------------------------------------- special functions


@njit
def _cox_reid_derivative(B, dB, L, Binv):
    """−½ tr(B⁻¹ dB): the derivative of the Cox–Reid term −½ log|XᵀWX| (B = XᵀWX, dB its
    derivative in the dispersion); NaN when B is not positive definite."""
    if not cholesky_lower(B, L):
        return np.nan
    cholesky_inverse(L, Binv)
    p = B.shape[0]
    tr = 0.0
    for i in range(p):
        for k in range(p):
            tr += Binv[i, k] * dB[k, i]
    return -0.5 * tr


@njit
def digamma(x):
    """ψ(x) for x > 0: upward recurrence to x ≥ 6, then the asymptotic series."""
    res = 0.0
    while x < 6.0:
        res -= 1.0 / x
        x += 1.0
    f = 1.0 / (x * x)
    t = f * (
        -1.0 / 12.0
        + f
        * (
            1.0 / 120.0
            + f * (-1.0 / 252.0 + f * (1.0 / 240.0 + f * (-1.0 / 132.0 + f * (691.0 / 32760.0))))
        )
    )
    return res + math.log(x) - 0.5 / x + t


@njit
def nb_logpdf(y, mu, alpha):
    """ln f(y; μ, α) of the NB distribution (Var = μ + αμ²), accurate for small α."""
    r = 1.0 / alpha
    if mu <= 0.0:
        return 0.0 if y == 0.0 else -np.inf
    tail = r * math.log1p(-mu / (r + mu))
    if y == 0.0:
        return tail
    if r > 1e4 and y < 64.0 and y == math.floor(y):
        acc = 0.0
        k = 0.0
        while k < y:
            acc += math.log1p((k - mu) / (r + mu))
            k += 1.0
        return acc + y * math.log(mu) - math.lgamma(y + 1.0) + tail
    return (
        math.lgamma(y + r)
        - math.lgamma(r)
        - math.lgamma(y + 1.0)
        + y * (math.log(mu) - math.log(r + mu))
        + tail
    )


@njit
def nb_logpdf_fast(y, mu, alpha):
    """ln f(y; μ, α) through lnΓ differences (for convergence checks only)."""
    r = 1.0 / alpha
    tail = r * math.log1p(-mu / (r + mu))
    if y == 0.0:
        return tail
    return (
        math.lgamma(y + r)
        - math.lgamma(r)
        - math.lgamma(y + 1.0)
        + y * (math.log(mu) - math.log(r + mu))
        + tail
    )


# Gene blocks reach the kernels as CSR arrays (genes × samples: ``indptr``, ``indices`` in
# increasing order within a row, ``data`` without explicit zeros); the count of samples is
# passed as m. Kernels that only need the non-zero counts read them in place; the others
# expand one gene at a time into a dense work row (``_gene_row``), never the G×m block.


@njit
def _gene_row(indptr, indices, data, g, y):
    """Counts of gene g as a dense row, into ``y`` (length m)."""
    y[:] = 0.0
    for k in range(indptr[g], indptr[g + 1]):
        y[indices[k]] = data[k]


@njit
def _gene_nonzeros(indptr, indices, data, g, nzv, nzj):
    """The non-zero counts of gene g (values into ``nzv``, samples into ``nzj``, in sample
    order, as ``_compact_nonzeros`` on its dense row gives them); returns their number."""
    p0 = indptr[g]
    n = indptr[g + 1] - p0
    for i in range(n):
        nzv[i] = data[p0 + i]
        nzj[i] = indices[p0 + i]
    return n


@njit(parallel=True)
def dense_to_csr(Y):
    """CSR arrays (indptr, indices, data) of the non-zero entries of a dense G×m array."""
    G, m = Y.shape
    indptr = np.zeros(G + 1, dtype=np.int64)
    for g in prange(G):
        n = 0
        for j in range(m):
            n += Y[g, j] != 0.0
        indptr[g + 1] = n
    for g in range(G):
        indptr[g + 1] += indptr[g]
    indices = np.empty(indptr[G], dtype=np.int32)
    data = np.empty(indptr[G])
    for g in prange(G):
        k = indptr[g]
        for j in range(m):
            v = Y[g, j]
            if v != 0.0:
                indices[k] = j
                data[k] = v
                k += 1
    return indptr, indices, data


@njit(parallel=True)
def intercept_fit(indptr, indices, data, m, sf, alpha):
    """The intercept-only fit of every gene: the base mean b = Σ_j (y_j/s_j)/m and
    Σ_j w_j with w_j = 1/(1/(b s_j) + α). Returns (b, Σ w)."""
    G = indptr.shape[0] - 1
    bm = np.empty(G)
    xtwx = np.empty(G)
    for g in prange(G):
        t = 0.0
        for k in range(indptr[g], indptr[g + 1]):
            t += data[k] / sf[indices[k]]
        b = t / m
        w = 0.0
        for j in range(m):
            w += 1.0 / (1.0 / (b * sf[j]) + alpha[g])
        bm[g] = b
        xtwx[g] = w
    return bm, xtwx


@njit(parallel=True)
def nb_loglik(indptr, indices, data, m, sf, lab, row_mu, alpha):
    """Σ_j ln f(y_gj; μ_gj, α_g) for every gene g (G), with μ_gj = s_j·row_mu[g, lab_j]."""
    G = indptr.shape[0] - 1
    out = np.empty(G)
    for g in prange(G):
        y = np.empty(m)
        _gene_row(indptr, indices, data, g, y)
        s = 0.0
        for j in range(m):
            s += nb_logpdf(y[j], sf[j] * row_mu[g, lab[j]], alpha[g])
        out[g] = s
    return out


# ----------------------------------------------------------------------------- small dense algebra


@njit
def _xtwx(X, w, B):
    m, p = X.shape
    for a in range(p):
        for b in range(a + 1):
            s = 0.0
            for j in range(m):
                s += X[j, a] * w[j] * X[j, b]
            B[a, b] = s
            B[b, a] = s


# ----------------------------------------------------------------------------- dispersion


@njit
def log_posterior(a, y, mu, X, prior_mean, prior_var, use_prior, use_cr, w, B, L):
    """Cox–Reid adjusted log posterior lp(a) of one gene (see module notation)."""
    m = y.shape[0]
    alpha = math.exp(a)
    r = 1.0 / alpha
    lgr = math.lgamma(r)
    ll = 0.0
    for j in range(m):
        yj = y[j]
        term = -r * math.log(1.0 + mu[j] * alpha)
        if yj != 0.0:
            term = math.lgamma(yj + r) - lgr - yj * math.log(mu[j] + r) + term
        ll += term
    cr = 0.0
    if use_cr:
        for j in range(m):
            w[j] = 1.0 / (1.0 / mu[j] + alpha)
        _xtwx(X, w, B)
        if not cholesky_lower(B, L):
            return -np.inf
        ld = 0.0
        for k in range(B.shape[0]):
            ld += 2.0 * math.log(L[k, k])
        cr = -0.5 * ld
    prior = 0.0
    if use_prior:
        prior = -0.5 * (a - prior_mean) ** 2 / prior_var
    return ll + prior + cr


@njit
def dlog_posterior(a, y, mu, X, prior_mean, prior_var, use_prior, use_cr, w, B, L, Binv, dB):
    """d lp / d a (derivative with respect to the log dispersion)."""
    m = y.shape[0]
    alpha = math.exp(a)
    r = 1.0 / alpha
    psr = digamma(r)
    s = 0.0
    for j in range(m):
        yj = y[j]
        ma = mu[j] * alpha
        term = math.log(1.0 + ma) - ma / (1.0 + ma)
        if yj != 0.0:
            term += psr - digamma(yj + r) + yj / (mu[j] + r)
        s += term
    ll = s / (alpha * alpha)
    cr = 0.0
    if use_cr:
        for j in range(m):
            w[j] = 1.0 / (1.0 / mu[j] + alpha)
        _xtwx(X, w, B)
        for j in range(m):
            w[j] = -w[j] * w[j]
        _xtwx(X, w, dB)
        cr = _cox_reid_derivative(B, dB, L, Binv)
    prior = 0.0
    if use_prior:
        prior = -(a - prior_mean) / prior_var
    return (ll + cr) * alpha + prior


# The line search evaluates lp and lp' tens of times per gene, so each gene is first
# compressed (``_prep_gene``), exactly, into E "entries" that share one μ: the cells of a class
# (same size factor and design row, hence the same fitted μ, which is checked) or else single
# cells, ordered by design row. With n_e cells and count total Y_e in entry e, ℓ_e = ln(1+αμ_e),
# w_e = 1/(1/μ_e + α), and the distinct non-zero counts v_k with multiplicities c_k (glmGamPoi's
# table trick), the identities ln(μ+r) = ln r + ℓ, αμ/(1+αμ) = αw and y/(μ+r) = αyw/μ give
#   lp = Σ_k c_k[lnΓ(v_k+r) − lnΓ(r)] − (Σ_j y_j) ln r − Σ_e (r n_e + Y_e) ℓ_e + CR + prior,
#   dlp/dα = α⁻² {Σ_k c_k[ψ(r) − ψ(v_k+r)] + Σ_e [n_e(ℓ_e − αw_e) + αY_e w_e/μ_e]} + dCR/dα,
# and XᵀWX from the per-row sums Σ n_e w_e over the R distinct design rows (R·p², not m·p²).
# When the distinct counts are integers and not much larger than their number, the lnΓ and ψ
# sums are taken term by term instead: with N_i = Σ_{k: v_k > i} c_k (cells with y > i),
#   Σ_k c_k[lnΓ(v_k+r) − lnΓ(r)] = Σ_{i<v_max} N_i ln(r+i),
#   Σ_k c_k[ψ(r) − ψ(v_k+r)] = −Σ_{i<v_max} N_i/(r+i)
# (lnΓ(v+r) = lnΓ(r) + Σ_{i<v} ln(r+i) and ψ(v+r) = ψ(r) + Σ_{i<v} 1/(r+i)): v_max vectorised
# logarithms or divisions instead of K calls of lnΓ or ψ, and no cancellation between
# lnΓ(v_k+r) and lnΓ(r) when r is large.
# ℓ_e and w_e of the last lp are cached, so lp' at an accepted point costs no log or division.
# Only the summation order, these exact identities and the vectorisable logarithm ``log_vec``
# (within 1 ulp of libm's for the arguments 1 + αμ ≥ 1) differ from ``log_posterior`` /
# ``dlog_posterior`` (the per-cell formulas).


@njit
def _compact_nonzeros(y, nzv, nzj):
    """The non-zero entries of y, in order: values into ``nzv``, positions into ``nzj``.

    Branch-free (every entry is written, the count advances on non-zeros), so random zeros
    cost no mispredicted branches. Returns their number.
    """
    n = 0
    for j in range(y.shape[0]):
        v = y[j]
        nzv[n] = v
        nzj[n] = j
        n += v != 0.0
    return n


@njit
def _table_of_nonzeros(vals, nnz, cnts):
    """Distinct values (ascending) and multiplicities of the non-zero values ``vals[:nnz]``,
    written over them into (vals, cnts). Returns (K distinct values, their total).

    Integer counts up to 4·nnz + 64 are tallied in a table, other data sorted.
    """
    ymax = 0.0
    ytot = 0.0
    integer = True
    for i in range(nnz):
        v = vals[i]
        ytot += v
        ymax = max(ymax, v)
        integer &= v == math.floor(v)
    K = 0
    if nnz > 0:
        if integer and ymax <= 4.0 * nnz + 64.0:
            tab = np.zeros(int(ymax) + 1, dtype=np.int64)
            for i in range(nnz):
                tab[int(vals[i])] += 1
            for v in range(1, int(ymax) + 1):
                if tab[v] > 0:
                    vals[K] = float(v)
                    cnts[K] = float(tab[v])
                    K += 1
        else:
            srt = np.sort(vals[:nnz])
            vals[0] = srt[0]
            cnts[0] = 1.0
            K = 1
            for i in range(1, nnz):
                if srt[i] == vals[K - 1]:
                    cnts[K - 1] += 1.0
                else:
                    vals[K] = srt[i]
                    cnts[K] = 1.0
                    K += 1
    return K, ytot


@njit
def _value_table(y, vals, cnts, nzj):
    """Distinct non-zero values of y (ascending) and their multiplicities into (vals, cnts);
    ``nzj`` is scratch. Returns (K distinct values, Σ y)."""
    return _table_of_nonzeros(vals, _compact_nonzeros(y, vals, nzj), cnts)


@njit
def _prep_gene(y, mu, cls, ccnt, croff, n_cls, order, roff, emu, en, ey, eoff, vals, cnts, nzj):
    """Compress one gene; returns (E entries, K distinct non-zero values, Σ y).

    Entries go to (emu, en, ey) with the entries of design row q at eoff[q]..eoff[q+1]−1:
    the ``n_cls`` classes (``cls`` per cell, sizes ``ccnt``, row offsets ``croff``) when every
    cell of a class has the same μ, else the cells in the row-sorted ``order`` (offsets
    ``roff``). The distinct non-zero values and their counts go to (vals, cnts).
    """
    m = y.shape[0]
    R = roff.shape[0] - 1
    K, ytot = _value_table(y, vals, cnts, nzj)
    ok = n_cls > 0
    if ok:
        # branch-free: μ of a class from any of its cells, then every cell checked against it
        for j in range(m):
            emu[cls[j]] = mu[j]
        for c in range(n_cls):
            ey[c] = 0.0
        for j in range(m):
            c = cls[j]
            ok &= emu[c] == mu[j]
            ey[c] += y[j]
        if ok:
            for c in range(n_cls):
                en[c] = ccnt[c]
            for q in range(R + 1):
                eoff[q] = croff[q]
            return n_cls, K, ytot
    for i in range(m):
        j = order[i]
        emu[i] = mu[j]
        en[i] = 1.0
        ey[i] = y[j]
    for q in range(R + 1):
        eoff[q] = roff[q]
    return m, K, ytot


@njit
def _prep_gene_rows(indptr, indices, data, g, means_g, minmu, csf, clab, cls, ccnt, croff, emu,
                    en, ey, eoff, vals, cnts, nzj):  # fmt: skip
    """``_prep_gene`` of gene g (CSR) for means given per design row: class c (size factor
    ``csf[c]``, design row ``clab[c]``) has μ_c = max(means_g[clab[c]]·s_c, minmu), the same for
    all its cells by construction, so no cell is checked and only the non-zero counts are
    visited."""
    n_cls = csf.shape[0]
    R = croff.shape[0] - 1
    for c in range(n_cls):
        emu[c] = max(means_g[clab[c]] * csf[c], minmu)
        en[c] = ccnt[c]
        ey[c] = 0.0
    nnz = _gene_nonzeros(indptr, indices, data, g, vals, nzj)
    for i in range(nnz):
        ey[cls[nzj[i]]] += vals[i]
    for q in range(R + 1):
        eoff[q] = croff[q]
    K, ytot = _table_of_nonzeros(vals, nnz, cnts)
    return n_cls, K, ytot


@njit
def _xtwx_rows(Xr, wsum, B):
    R, p = Xr.shape
    for a in range(p):
        for b in range(a + 1):
            s = 0.0
            for r in range(R):
                s += Xr[r, a] * wsum[r] * Xr[r, b]
            B[a, b] = s
            B[b, a] = s


#: term-by-term lnΓ/ψ sums are used when v_max ≤ SURVIVAL_FACTOR · K + SURVIVAL_SLACK
SURVIVAL_FACTOR = 8
SURVIVAL_SLACK = 64


@njit
def _survival_counts(vals, cnts, K):
    """N_i = Σ_{k: v_k > i} c_k for i < v_max (see the comment above), or an empty array when
    the distinct non-zero counts ``vals[:K]`` (ascending) are not integers or v_max exceeds
    ``SURVIVAL_FACTOR`` · K + ``SURVIVAL_SLACK`` (then K calls of lnΓ and ψ are cheaper)."""
    if K == 0:
        return np.zeros(0)
    vmax = vals[K - 1]
    if vmax > SURVIVAL_FACTOR * K + SURVIVAL_SLACK:
        return np.empty(0)
    for k in range(K):
        if vals[k] != math.floor(vals[k]):
            return np.empty(0)
    V = int(vmax)
    surv = np.empty(V)
    n = 0.0
    for k in range(K):  # cells with y ≥ v_k
        n += cnts[k]
    i = 0
    for k in range(K):
        v = int(vals[k])
        while i < v:
            surv[i] = n
            i += 1
        n -= cnts[k]
    return surv


@njit
def _lgamma_sum(r, K, vals, cnts, surv, tb):
    """Σ_k c_k[lnΓ(v_k + r) − lnΓ(r)]; term by term over ``surv`` (N_i) when it is not empty
    (or the gene has no non-zero count), with ``tb`` as scratch."""
    V = surv.shape[0]
    if V > 0 or K == 0:
        for i in range(V):  # vectorised
            tb[i] = log_vec(r + i)
        t = 0.0
        for i in range(V):
            t += surv[i] * tb[i]
        return t
    lgr = math.lgamma(r)
    t = 0.0
    for k in range(K):
        t += cnts[k] * (math.lgamma(vals[k] + r) - lgr)
    return t


@njit
def _digamma_sum(r, K, vals, cnts, surv, tb):
    """Σ_k c_k[ψ(r) − ψ(v_k + r)], term by term as in ``_lgamma_sum``."""
    V = surv.shape[0]
    if V > 0 or K == 0:
        for i in range(V):  # vectorised
            tb[i] = 1.0 / (r + i)
        t = 0.0
        for i in range(V):
            t -= surv[i] * tb[i]
        return t
    psr = digamma(r)
    t = 0.0
    for k in range(K):
        t += cnts[k] * (psr - digamma(vals[k] + r))
    return t


@njit
def _log_and_weight(alpha, emu, im, ne, lc, wc):
    """ℓ_e = ln(1 + α μ_e) and w_e = 1/(1/μ_e + α) = μ_e/(1 + α μ_e) for e < ``ne``.

    No reductions and ``log_vec`` instead of ``math.log``: this loop compiles to SIMD code.
    """
    for e in range(ne):
        lc[e] = log_vec(1.0 + emu[e] * alpha)
        wc[e] = 1.0 / (im[e] + alpha)


@njit
def _lp_e(a, K, ytot, emu, en, ey, eoff, vals, cnts, surv, tb, Xr, prior_mean, prior_var,
          use_prior, use_cr, wsum, B, L, lc, wc, st, im):  # fmt: skip
    """lp(a) of one compressed gene (``log_posterior`` up to summation order, see above).

    ℓ and w of every entry are left in ``lc``/``wc`` (``st[0]`` = a) for ``_dlp_e``.
    """
    alpha = math.exp(a)
    r = 1.0 / alpha
    ll = _lgamma_sum(r, K, vals, cnts, surv, tb)
    ll -= ytot * math.log(r)
    R = wsum.shape[0]
    _log_and_weight(alpha, emu, im, eoff[R], lc, wc)
    for q in range(R):
        ws = 0.0
        for e in range(eoff[q], eoff[q + 1]):
            ll -= (r * en[e] + ey[e]) * lc[e]
            ws += en[e] * wc[e]
        wsum[q] = ws
    st[0] = a
    cr = 0.0
    if use_cr:
        _xtwx_rows(Xr, wsum, B)
        if not cholesky_lower(B, L):
            return -np.inf
        ld = 0.0
        for k in range(B.shape[0]):
            ld += 2.0 * math.log(L[k, k])
        cr = -0.5 * ld
    prior = 0.0
    if use_prior:
        prior = -0.5 * (a - prior_mean) ** 2 / prior_var
    return ll + prior + cr


@njit
def _dlp_e(a, K, emu, en, ey, eoff, vals, cnts, surv, tb, Xr, prior_mean, prior_var, use_prior,
           use_cr, wsum, w2sum, B, L, Binv, dB, lc, wc, st, im):  # fmt: skip
    """lp'(a) of one compressed gene (``dlog_posterior`` up to summation order; reuses the
    ℓ and w of ``_lp_e`` at the same a)."""
    alpha = math.exp(a)
    r = 1.0 / alpha
    hit = st[0] == a
    s = _digamma_sum(r, K, vals, cnts, surv, tb)
    R = wsum.shape[0]
    if not hit:
        _log_and_weight(alpha, emu, im, eoff[R], lc, wc)
        st[0] = a
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
    if use_cr:
        _xtwx_rows(Xr, wsum, B)
        _xtwx_rows(Xr, w2sum, dB)
        cr = _cox_reid_derivative(B, dB, L, Binv)
    prior = 0.0
    if use_prior:
        prior = -(a - prior_mean) / prior_var
    return (ll + cr) * alpha + prior


#: genes per work chunk of ``fit_disp`` (its work arrays are allocated once per chunk)
GENE_CHUNK = 8


@njit(parallel=True)
def fit_disp(indptr, indices, data, m, MU, means, sf, lab, minmu, Xr, order, roff, cls, ccnt,
             croff, n_cls, csf, clab, log_alpha0, prior_mean, prior_var, use_prior,
             min_log_alpha, kappa0, tol, maxit, use_cr):  # fmt: skip
    """Armijo line search in a = ln α, gene by gene (DESeq2's dispersion optimiser).

    Gradient ascent a ← a + κ·lp'(a); a step is accepted when
    −lp(a+κ lp') ≤ −lp(a) − 1e-4 κ lp'²; otherwise κ is halved. After an accepted step κ grows
    ×1.1 (at most κ₀) and is halved every fifth accept. Proposals are clamped to [−30, 10].
    Stops when the gain is < ``tol``, when a < ``min_log_alpha`` or after ``maxit`` trials.
    The counts are CSR arrays over m samples (see ``_gene_row``). The design enters as its R
    distinct rows ``Xr``, the cells sorted by row (``order``, row offsets ``roff``);
    ``cls``/``ccnt``/``croff``/``n_cls`` are the cell classes of ``_prep_gene`` (``n_cls`` = 0:
    none), with size factor ``csf`` and design row ``clab``.
    lp at an accepted proposal is the value already computed for the Armijo test. The means
    are ``MU`` (G×m), or, when ``means`` has G rows, μ_gj = max(means[g, lab_j]·s_j, minmu):
    the values of ``expand_row_means``, without its G×m array, per class when there are
    classes (``_prep_gene_rows``), else made one gene at a time.

    Returns (log_alpha, iter, iter_accept, initial_lp, last_lp).
    """
    G = indptr.shape[0] - 1
    R, p = Xr.shape
    out_a = np.empty(G)
    iters = np.zeros(G, dtype=np.int64)
    accepts = np.zeros(G, dtype=np.int64)
    lp0 = np.empty(G)
    lp_last = np.empty(G)
    ne_max = max(m, n_cls)
    from_means = means.shape[0] == G
    by_class = from_means and n_cls > 0
    n_chunks = (G + GENE_CHUNK - 1) // GENE_CHUNK
    for ch in prange(n_chunks):
        # work arrays of a chunk of genes (allocated once, not per gene)
        mu_buf = np.empty(m if from_means and not by_class else 0)
        y_buf = np.empty(0 if by_class else m)
        nzj = np.empty(m, dtype=np.int64)
        emu = np.empty(ne_max)
        en = np.empty(ne_max)
        ey = np.empty(ne_max)
        eoff = np.empty(R + 1, dtype=np.int64)
        vals = np.empty(m)
        cnts = np.empty(m)
        wsum = np.empty(R)
        w2sum = np.empty(R)
        B = np.empty((p, p))
        L = np.empty((p, p))
        Binv = np.empty((p, p))
        dB = np.empty((p, p))
        lc = np.empty(ne_max)
        wc = np.empty(ne_max)
        im = np.empty(ne_max)  # 1/μ of every entry (μ is fixed during the search)
        st = np.empty(1)
        for g in range(ch * GENE_CHUNK, min((ch + 1) * GENE_CHUNK, G)):
            st[0] = np.nan  # no cached ℓ, w yet
            if by_class:
                ne, K, ytot = _prep_gene_rows(indptr, indices, data, g, means[g], minmu, csf, clab,
                                              cls, ccnt, croff, emu, en, ey, eoff, vals, cnts,
                                              nzj)  # fmt: skip
            else:
                _gene_row(indptr, indices, data, g, y_buf)
                if from_means:
                    mu_g = mu_buf
                    for j in range(m):
                        mu_g[j] = max(means[g, lab[j]] * sf[j], minmu)
                else:
                    mu_g = MU[g]
                ne, K, ytot = _prep_gene(y_buf, mu_g, cls, ccnt, croff, n_cls, order, roff, emu,
                                         en, ey, eoff, vals, cnts, nzj)  # fmt: skip
            surv = _survival_counts(vals, cnts, K)
            tb = np.empty(surv.shape[0])
            for e in range(ne):
                im[e] = 1.0 / emu[e]
            pm = prior_mean[g]
            a = log_alpha0[g]
            lp = _lp_e(a, K, ytot, emu, en, ey, eoff, vals, cnts, surv, tb, Xr, pm, prior_var,
                       use_prior, use_cr, wsum, B, L, lc, wc, st, im)  # fmt: skip
            dlp = _dlp_e(a, K, emu, en, ey, eoff, vals, cnts, surv, tb, Xr, pm, prior_var,
                         use_prior, use_cr, wsum, w2sum, B, L, Binv, dB, lc, wc, st,
                         im)  # fmt: skip
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
                lp_k = _lp_e(a_new, K, ytot, emu, en, ey, eoff, vals, cnts, surv, tb, Xr, pm,
                             prior_var, use_prior, use_cr, wsum, B, L, lc, wc, st, im)  # fmt: skip
                theta_k = -lp_k
                theta_hat = -lp - kappa * 1e-4 * dlp * dlp
                if theta_k <= theta_hat:
                    n_acc += 1
                    a = a_new
                    lpnew = lp_k
                    change = lpnew - lp
                    if change < tol:
                        lp = lpnew
                        break
                    if a < min_log_alpha:
                        break
                    lp = lpnew
                    dlp = _dlp_e(a, K, emu, en, ey, eoff, vals, cnts, surv, tb, Xr, pm, prior_var,
                                 use_prior, use_cr, wsum, w2sum, B, L, Binv, dB, lc, wc, st,
                                 im)  # fmt: skip
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
def fit_disp_grid(Y, MU, Xr, order, roff, prior_mean, prior_var, use_prior, grid, use_cr):
    """Coarse grid over ln α, then a fine grid of the same size within ±1 coarse step."""
    G, m = Y.shape
    R, p = Xr.shape
    n = grid.shape[0]
    delta = grid[1] - grid[0]
    out = np.empty(G)
    cls = np.zeros(1, dtype=np.int64)
    ccnt = np.zeros(1)
    for g in prange(G):
        emu = np.empty(m)
        en = np.empty(m)
        ey = np.empty(m)
        eoff = np.empty(R + 1, dtype=np.int64)
        vals = np.empty(m)
        cnts = np.empty(m)
        wsum = np.empty(R)
        B = np.empty((p, p))
        L = np.empty((p, p))
        lc = np.empty(m)
        wc = np.empty(m)
        im = np.empty(m)
        st = np.full(1, np.nan)
        ne, K, ytot = _prep_gene(Y[g], MU[g], cls, ccnt, roff, 0, order, roff, emu, en, ey, eoff,
                                 vals, cnts, np.empty(m, dtype=np.int64))  # fmt: skip
        surv = _survival_counts(vals, cnts, K)
        tb = np.empty(surv.shape[0])
        for e in range(ne):
            im[e] = 1.0 / emu[e]
        pm = prior_mean[g]
        best = -np.inf
        ahat = grid[0]
        for t in range(n):
            v = _lp_e(grid[t], K, ytot, emu, en, ey, eoff, vals, cnts, surv, tb, Xr, pm, prior_var,
                      use_prior, use_cr, wsum, B, L, lc, wc, st, im)  # fmt: skip
            if v > best:
                best = v
                ahat = grid[t]
        lo = ahat - delta
        step = 2.0 * delta / (n - 1)
        best = -np.inf
        afine = lo
        for t in range(n):
            at = lo + t * step if t < n - 1 else ahat + delta
            v = _lp_e(at, K, ytot, emu, en, ey, eoff, vals, cnts, surv, tb, Xr, pm, prior_var,
                      use_prior, use_cr, wsum, B, L, lc, wc, st, im)  # fmt: skip
            if v > best:
                best = v
                afine = at
        out[g] = afine
    return out


# ----------------------------------------------------------------------------- IRLS for beta


@njit
def _class_terms(al, r_al, logr, E, eta, clab, csf, csize, yc, logcsf, lzf, minmu, lmin, mc, wn,
                 wzc, devc):  # fmt: skip
    """The IRLS terms of every class c (n_c samples, count total Y_c, design row q = clab[c]).

    μ_c = max(s_c e^{η_q}, minmu) into ``mc``; with w_c = μ_c/(1 + αμ_c) and
    z-offset ℓz_c = ln(μ_c/s_c) (η_q, or ln(minmu/s_c) when floored): n_c w_c into ``wn``,
    w_c [n_c ℓz_c + (Y_c − n_c μ_c)/μ_c] into ``wzc`` and the deviance term
    −r n_c ln(1+αμ_c) + Y_c(ln μ_c − ln r − ln(1+αμ_c)) into ``devc`` (r = 1/α).

    The lookups by design row come first, in a loop of their own: the second loop then has
    only selects and arithmetic, and LLVM vectorises it.
    """
    n = mc.shape[0]
    for c in range(n):
        q = clab[c]
        mc[c] = csf[c] * E[q]
        wzc[c] = eta[q]
    for c in range(n):
        raw = mc[c]
        eq = wzc[c]
        low = raw < minmu
        mj = minmu if low else raw
        lz = lzf[c] if low else eq
        lm = lmin if low else eq + logcsf[c]
        l1, inv = log1p_recip(al * mj)  # ln(r+μ) = ln r + ln(1+αμ)
        wj = mj * inv
        nc_ = csize[c]
        yt = yc[c]
        mc[c] = mj
        wn[c] = nc_ * wj
        wzc[c] = wj * (nc_ * lz + (yt - nc_ * mj) / mj)
        t = -r_al * l1 * nc_
        devc[c] = t + yt * (lm - (logr + l1)) if yt != 0.0 else t


@njit
def _row_sums(coff, wn, wzc, devc, wsum, wz):
    """Per design row q: Σ w and Σ w z over its classes (``coff[q]``..``coff[q+1]``−1) into
    ``wsum``/``wz``; returns the sum of the deviance terms of all classes."""
    dev = 0.0
    for q in range(coff.shape[0] - 1):
        a = 0.0
        b = 0.0
        for c in range(coff[q], coff[q + 1]):
            a += wn[c]
            b += wzc[c]
            dev += devc[c]
        wsum[q] = a
        wz[q] = b
    return dev


@njit(parallel=True)
def fit_beta_rows(indptr, indices, data, m, sf, Xr, lab, cls, csize, csf, clab, coff, alpha,
                  beta0, P, lam, minmu, tol, maxit, start):  # fmt: skip
    """Ridge-penalised IRLS for the NB GLM with log link and offsets ln s (DESeq2's fitBeta),
    at fixed α, with the design as its R distinct rows ``Xr`` and the samples in classes.

    ``lam`` is the ridge on the natural-log scale and μ is floored at ``minmu``. Convergence:
    |Δdev|/(|dev|+0.1) < ``tol`` after the first step; a gene with any |β| > 30 or a NaN
    deviance is aborted with ``iter = maxit``.

    The counts are CSR arrays over m samples (see ``_gene_row``). Sample j has design row
    ``lab[j]`` and class ``cls[j]``; class c has ``csize[c]`` samples,
    all with size factor ``csf[c]`` and design row ``clab[c]`` (hence one fitted μ_c); classes
    are numbered by design row, those of row q being ``coff[q]``..``coff[q+1]``−1. With
    n_c samples and count total Y_c in class c, the IRLS sums over samples become sums over
    classes (exact identities, up to summation order):
    Σ_{j∈c} w_j = n_c w_c, Σ_{j∈c} w_j z_j = w_c [n_c ln(μ_c/s_c) + (Y_c − n_c μ_c)/μ_c] and
    the deviance terms Σ_{j∈c} [−r ln(1+αμ_j) + y_j(ln μ_j − ln(r+μ_j))] =
    −n_c r ln(1+αμ_c) + Y_c(ln μ_c − ln r − ln(1+αμ_c)); the lnΓ part is summed once per
    gene, over the distinct non-zero counts. Without shared size factors every sample is its
    own class and the arithmetic is that of the per-sample loop.
    η, exp(η) and xᵀ(XᵀWX+Λ)⁻¹x are computed once
    per distinct row; XᵀWX and XᵀWz come from per-row sums of w and wz. With ``start`` the
    initial β is ``P`` (p×R) times the per-row sums of ln(y/s + 0.1) (the least-squares
    start; zero counts contribute ln 0.1 each), else ``beta0``. Only the non-zero counts are
    visited per gene.

    The fitted means and hat diagonals are returned per design row (G×R each, no G×m array):
    ``row_mu`` = exp(x_rᵀβ) at the final β (μ_j = s_j·row_mu[lab_j], unfloored);
    ``row_wmu`` = exp(x_rᵀβ_w) at the β_w where the weights W were last evaluated (β itself,
    unless the gene was aborted) and ``row_hat`` = x_rᵀ(XᵀWX + Λ)⁻¹x_r (NaN when that matrix is
    not positive definite), so that the hat diagonal of sample j is
    h_j = w_j·row_hat[lab_j] with w_j = μ̃_j/(1 + αμ̃_j), μ̃_j = max(s_j·row_wmu[lab_j], minmu).
    Returns (beta G×p, sigma G×p×p, iter G, deviance G, row_mu, row_wmu, row_hat).
    """
    G = indptr.shape[0] - 1
    R, p = Xr.shape
    nc = csize.shape[0]
    beta_out = np.empty((G, p))
    sigma_out = np.full((G, p, p), np.nan)
    row_mu = np.empty((G, R))
    row_wmu = np.empty((G, R))
    row_hat = np.empty((G, R))
    iters = np.zeros(G, dtype=np.int64)
    devs = np.empty(G)
    lmin = math.log(minmu)
    l01 = math.log(0.1)
    rcount = np.zeros(R)  # samples per design row
    for j in range(m):
        rcount[lab[j]] += 1.0
    logcsf = np.empty(nc)
    lzf = np.empty(nc)  # ln(minmu/s) of a class whose μ is floored
    for c in range(nc):
        logcsf[c] = math.log(csf[c])
        lzf[c] = math.log(minmu / csf[c])
    for g in prange(G):
        al = alpha[g]
        beta = np.empty(p)
        eta = np.empty(R)
        E = np.empty(R)
        mc = np.empty(nc)  # floored μ of every class
        wn = np.empty(nc)  # n w of every class (``_class_terms``)
        wzc = np.empty(nc)  # its share of Σ w z
        devc = np.empty(nc)  # its deviance term
        yc = np.zeros(nc)  # count total of every class
        wsum = np.empty(R)
        wz = np.empty(R)
        A = np.empty((p, p))
        L = np.empty((p, p))
        Ainv = np.empty((p, p))
        rhs = np.empty(p)
        vals = np.empty(m)
        cnts = np.empty(m)
        nzj = np.empty(m, dtype=np.int64)
        nnz = _gene_nonzeros(indptr, indices, data, g, vals, nzj)
        for i in range(nnz):
            yc[cls[nzj[i]]] += vals[i]
        if start:
            for r in range(R):
                wz[r] = 0.0
                wsum[r] = rcount[r]  # zero counts of row r (after the loop below)
            # ln(y/s + 0.1) into cnts (unused until later): the gather in a loop of its own,
            # so that the logarithms vectorise
            for i in range(nnz):
                cnts[i] = sf[nzj[i]]
            for i in range(nnz):
                cnts[i] = log_vec(vals[i] / cnts[i] + 0.1)
            for i in range(nnz):
                q = lab[nzj[i]]
                wz[q] += cnts[i]
                wsum[q] -= 1.0
            for r in range(R):
                wz[r] += wsum[r] * l01
            for k in range(p):
                s = 0.0
                for r in range(R):
                    s += P[k, r] * wz[r]
                beta[k] = s
        else:
            for k in range(p):
                beta[k] = beta0[g, k]
        r_al = 1.0 / al
        logr = math.log(r_al)
        # lnΓ part of the deviance, Σ_k c_k[lnΓ(v_k + r) − lnΓ(r) − lnΓ(v_k + 1)], over the
        # distinct non-zero counts v_k (multiplicity c_k), term by term when they allow it
        K, _yt = _table_of_nonzeros(vals, nnz, cnts)
        surv = _survival_counts(vals, cnts, K)
        tb = np.empty(surv.shape[0])
        lg_const = _lgamma_sum(r_al, K, vals, cnts, surv, tb) - _lgamma_sum(
            1.0, K, vals, cnts, surv, tb
        )
        # one fused pass: mu and the per-row sums of w and w z for the next step
        for r in range(R):
            s = 0.0
            for k in range(p):
                s += Xr[r, k] * beta[k]
            eta[r] = s
            E[r] = math.exp(s)
        _class_terms(al, r_al, logr, E, eta, clab, csf, csize, yc, logcsf, lzf, minmu, lmin, mc,
                     wn, wzc, devc)  # fmt: skip
        _row_sums(coff, wn, wzc, devc, wsum, wz)
        dev = 0.0
        dev_old = 0.0
        n_it = 0
        for t in range(maxit):
            n_it += 1
            for a_ in range(p):
                s2 = 0.0
                for r in range(R):
                    s2 += Xr[r, a_] * wz[r]
                rhs[a_] = s2
                for b_ in range(a_ + 1):
                    s = 0.0
                    for r in range(R):
                        s += Xr[r, a_] * wsum[r] * Xr[r, b_]
                    A[a_, b_] = s
                    A[b_, a_] = s
            for k in range(p):
                A[k, k] += lam[k]
            if not cholesky_lower(A, L):
                n_it = maxit
                for k in range(p):
                    beta[k] = np.nan
                break
            cholesky_solve_vector(L, rhs, beta)
            big = False
            for k in range(p):
                if abs(beta[k]) > 30.0:
                    big = True
            if big:
                n_it = maxit
                break
            for r in range(R):
                s = 0.0
                for k in range(p):
                    s += Xr[r, k] * beta[k]
                eta[r] = s
                E[r] = math.exp(s)
            _class_terms(al, r_al, logr, E, eta, clab, csf, csize, yc, logcsf, lzf, minmu, lmin,
                         mc, wn, wzc, devc)  # fmt: skip
            dev = _row_sums(coff, wn, wzc, devc, wsum, wz)
            dev = -2.0 * (dev + lg_const)
            conv = abs(dev - dev_old) / (abs(dev) + 0.1)
            if np.isnan(conv):
                n_it = maxit
                break
            if t > 0 and conv < tol:
                break
            dev_old = dev
        iters[g] = n_it
        devs[g] = dev
        for k in range(p):
            beta_out[g, k] = beta[k]
        # E holds exp(η) where the weights (wsum) were last evaluated; the means at the final β
        for r in range(R):
            row_wmu[g, r] = E[r]
            s = 0.0
            for k in range(p):
                s += Xr[r, k] * beta[k]
            row_mu[g, r] = math.exp(s)
        # covariance and per-row hat factors at those weights
        _xtwx_rows(Xr, wsum, A)
        for k in range(p):
            A[k, k] += lam[k]
        if cholesky_lower(A, L):
            cholesky_inverse(L, Ainv)
            for k in range(p):
                A[k, k] -= lam[k]
            for a_ in range(p):
                for b_ in range(p):
                    s = 0.0
                    for c in range(p):
                        for d in range(p):
                            s += Ainv[a_, c] * A[c, d] * Ainv[d, b_]
                    sigma_out[g, a_, b_] = s
            for r in range(R):
                s = 0.0
                for a_ in range(p):
                    for b_ in range(p):
                        s += Xr[r, a_] * Ainv[a_, b_] * Xr[r, b_]
                row_hat[g, r] = s
        else:
            for r in range(R):
                row_hat[g, r] = np.nan
    return beta_out, sigma_out, iters, devs, row_mu, row_wmu, row_hat


@njit
def _class_cooks(g, csf, clab, row_mu, row_wmu, row_hat, al, a, p, minmu, muc, kc):
    """Cook's distance of sample j in class c is D_j = (y_j − μ_c)²·k_c: the fitted mean μ_c
    (``muc``) and k_c = h_c/(1 − h_c)² / (p(μ_c + aμ_c²)) (``kc``) of every class of gene g,
    with h_c = w_c·row_hat[q] (see ``fit_beta_rows``) and ``a`` the gene's robust dispersion."""
    for c in range(muc.shape[0]):
        q = clab[c]
        mu = csf[c] * row_mu[g, q]
        mw = max(csf[c] * row_wmu[g, q], minmu)
        h = mw / (1.0 + al * mw) * row_hat[g, q]
        muc[c] = mu
        kc[c] = h / ((1.0 - h) * (1.0 - h)) / (p * (mu + a * (mu * mu)))


@njit(parallel=True)
def cooks_summary(indptr, indices, data, m, cls, csf, clab, row_mu, row_wmu, row_hat, alpha, a, p,
                  minmu, use, keep):  # fmt: skip
    """Row summaries of the Cook's distances D (G×m, never formed; see ``_class_cooks``).

    Per gene: the maximum of D over the samples with ``use`` (NaN if one is NaN); the same
    with D set to 0 where ``keep`` is False; the largest D ignoring NaN; and
    #{j : y_j > y_j*} with j* = argmax D (the first largest value, or the first NaN; DESeq2's
    check that the largest distance is not at one of the 3 largest counts).
    Returns (max_use, max_use_keep, max_all, n_above).
    """
    G = indptr.shape[0] - 1
    nc = csf.shape[0]
    max_use = np.empty(G)
    max_keep = np.empty(G)
    max_all = np.empty(G)
    n_above = np.empty(G, dtype=np.int64)
    for g in prange(G):
        muc = np.empty(nc)
        kc = np.empty(nc)
        y = np.empty(m)
        _gene_row(indptr, indices, data, g, y)
        _class_cooks(g, csf, clab, row_mu, row_wmu, row_hat, alpha[g], a[g], p, minmu, muc, kc)
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
def cooks_matrix(indptr, indices, data, m, cls, csf, clab, row_mu, row_wmu, row_hat, alpha, a, p,
                 minmu):  # fmt: skip
    """The Cook's distances D (G×m) of ``cooks_summary``, for the few genes that need them."""
    G = indptr.shape[0] - 1
    nc = csf.shape[0]
    out = np.empty((G, m))
    for g in prange(G):
        muc = np.empty(nc)
        kc = np.empty(nc)
        y = out[g]
        _gene_row(indptr, indices, data, g, y)
        _class_cooks(g, csf, clab, row_mu, row_wmu, row_hat, alpha[g], a[g], p, minmu, muc, kc)
        for j in range(m):
            c = cls[j]
            d = y[j] - muc[c]
            out[g, j] = d * d * kc[c]
    return out


@njit(parallel=True)
def divide_cols(Y, sf):
    """Y / sf (G×m, per-column divisor), in parallel over genes."""
    G, m = Y.shape
    out = np.empty((G, m))
    for g in prange(G):
        for j in range(m):
            out[g, j] = Y[g, j] / sf[j]
    return out


# ------------------------------------------------------------------------ pipeline helpers


@njit
def _select(a, lo, hi, k):
    """Reorder a[lo:hi] in place so that a[k] holds its rank-(k − lo) value, with
    a[lo:k] ≤ a[k] ≤ a[k+1:hi] (Hoare partitions around a median-of-three pivot)."""
    hi -= 1
    while hi > lo:
        x = a[lo]
        y = a[(lo + hi) // 2]
        z = a[hi]
        if x > y:
            x, y = y, x
        if y > z:
            y = z
            if x > y:
                y = x
        i = lo
        j = hi
        while i <= j:
            while a[i] < y:
                i += 1
            while a[j] > y:
                j -= 1
            if i <= j:
                t = a[i]
                a[i] = a[j]
                a[j] = t
                i += 1
                j -= 1
        # a[lo..j] ≤ pivot ≤ a[i..hi]; entries strictly between j and i equal the pivot
        if k <= j:
            hi = j
        elif k >= i:
            lo = i
        else:
            return


@njit
def _rank_sum(a, n, i0, i1):
    """Σ of the values of ranks i0..i1−1 among a[:n] (a is reordered, not sorted)."""
    if i0 >= i1:
        return 0.0
    if i0 > 0:
        _select(a, 0, n, i0)
    if i1 < n:
        _select(a, i0, n, i1 - 1)
    s = 0.0
    for i in range(i0, i1):
        s += a[i]
    return s


@njit
def _median_inplace(a, n):
    """Median of a[:n] (n > 0; a is reordered): the middle value, or the mean of the two middle
    values, as ``np.median`` gives, without its copy of the data."""
    h = n // 2
    _select(a, 0, n, h)
    if n % 2 == 1:
        return a[h]
    lo = a[0]
    for i in range(1, h):  # the largest of the lower half is the other middle value
        if a[i] > lo:
            lo = a[i]
    return (lo + a[h]) / 2.0


@njit
def _tmean_parts(less, nl, c0, v, more, nm, lo, hi):
    """Trimmed mean (ranks lo..hi−1) of data given as its nl entries below v (``less``), c0
    copies of v and its nm entries above v (``more``); only the ranks inside lo..hi−1 are
    selected (O(n) on average) and summed. ``less`` and ``more`` are reordered."""
    s = _rank_sum(less, nl, lo, min(hi, nl))
    k0 = max(lo, nl)
    k1 = min(hi, nl + c0)
    if k1 > k0:
        s += (k1 - k0) * v
    s += _rank_sum(more, nm, max(lo, nl + c0) - nl - c0, hi - nl - c0)
    return s / (hi - lo)


@njit
def _tmean_row(row, n_more_v, v, lo, hi, less, more):
    """Trimmed mean (ranks lo..hi−1) of ``row`` plus ``n_more_v`` further copies of v, by
    selection rather than sorting.

    Entries equal to v (e.g. the many zero counts of a row) are counted; the entries below
    and above v are kept apart (``_tmean_parts``).
    """
    n = row.shape[0]
    nl = 0
    nm = 0
    for j in range(n):  # branch-free: both slots written, the counts advance
        x = row[j]
        less[nl] = x
        more[nm] = x
        nl += x < v
        nm += x > v
    return _tmean_parts(less, nl, n + n_more_v - nl - nm, v, more, nm, lo, hi)


@njit(parallel=True)
def trimmed_mean_rows(A, v0, trim):
    """R's ``mean(x, trim=)`` of every row of A (G×n), rows of non-negative data.

    Entries equal to ``v0[g]`` (e.g. the many zero counts of a row) are counted, not sorted:
    only the trimmed ranks of the other entries are selected (see ``_tmean_row``).
    """
    G, n = A.shape
    lo = int(math.floor(n * trim))
    hi = n - lo
    out = np.empty(G)
    for g in prange(G):
        less = np.empty(n)
        more = np.empty(n)
        out[g] = _tmean_row(A[g], 0, v0[g], lo, hi, less, more)
    return out


@njit(parallel=True)
def robust_var_rows(indptr, indices, data, m, sf, cols, off, trims, scales):
    """max over sample sets k of scale_k · trimmed mean (trim_k) of (q − q̄_t)², q = y/s.

    Set k is ``cols[off[k]:off[k+1]]`` (disjoint sets, each in increasing sample order); q̄_t
    is the trimmed mean of q over the set. This is the
    per-sample variance of DESeq2's robust moment dispersion (one set per design row with
    ≥ 3 samples, the maximum over rows). Returns G values.

    The counts are CSR arrays over m samples (see ``_gene_row``); they are non-negative and
    s > 0, so q ≥ 0. Only the non-zero q of a set are stored: the
    zeros are the lowest ranks of q, and all map
    to q̄_t² in the second trimmed mean, so both means count them instead of selecting them
    (the values and their order are those of ``_tmean_row`` on the whole set).
    """
    G = indptr.shape[0] - 1
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
        nnz = _gene_nonzeros(indptr, indices, data, g, nzv, nzj)
        best = 0.0
        for k in range(nset):
            n = off[k + 1] - off[k]
            lo = int(math.floor(n * trims[k]))
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
            cm = _tmean_parts(less, 0, n - nz, 0.0, more, nz, lo, hi)
            for t in range(nz):
                d = q[t] - cm
                q[t] = d * d
            v = scales[k] * _tmean_row(q[:nz], n - nz, cm * cm, lo, hi, less, more)
            best = v if k == 0 else max(best, v)
        out[g] = best
    return out


#: row chunks of ``log_geo_means_csr`` (fixed, so the sums do not depend on the thread count)
GEO_CHUNKS = 16

#: ln k for the integer counts k < LOG_TABLE_SIZE is looked up (the same values as math.log)
LOG_TABLE_SIZE = 4096


@njit
def _log_table():
    """ln k for k = 0..LOG_TABLE_SIZE−1 (−inf at 0), from ``math.log``."""
    t = np.empty(LOG_TABLE_SIZE)
    t[0] = -np.inf
    for k in range(1, LOG_TABLE_SIZE):
        t[k] = math.log(k)
    return t


@njit
def _log_count(v, table):
    """ln v (v > 0): looked up for small integer counts, else ``math.log`` (same values)."""
    if v < LOG_TABLE_SIZE:
        k = int(v)
        if k == v:
            return table[k]
    return math.log(v)


@njit(parallel=True)
def log_geo_means_csr(indptr, indices, data, G):
    """ln g_i = Σ_{y_ji > 0} ln y_ji / m of every column i of an m×G CSR matrix; −inf for a
    column without a positive entry (DESeq2's poscounts geometric means).

    The rows are split into ``GEO_CHUNKS`` fixed ranges summed in parallel (each in row
    order), and the partial sums are added in chunk order.
    """
    m = indptr.shape[0] - 1
    part = np.zeros((GEO_CHUNKS, G))
    npos = np.zeros((GEO_CHUNKS, G), dtype=np.int64)
    table = _log_table()
    for ch in prange(GEO_CHUNKS):
        for j in range(m * ch // GEO_CHUNKS, m * (ch + 1) // GEO_CHUNKS):
            for t in range(indptr[j], indptr[j + 1]):
                v = data[t]
                if v > 0.0:
                    i = indices[t]
                    part[ch, i] += _log_count(v, table)
                    npos[ch, i] += 1
    out = np.empty(G)
    for i in range(G):
        s = 0.0
        n = 0
        for ch in range(GEO_CHUNKS):
            s += part[ch, i]
            n += npos[ch, i]
        out[i] = s / m if n > 0 else -np.inf
    return out


@njit(parallel=True)
def median_log_ratios_csr(indptr, indices, data, loggeo):
    """exp(median of ln y − ln g over the positive entries on usable genes) of each CSR row.

    Returns NaN for a row without such an entry.
    """
    m = indptr.shape[0] - 1
    out = np.empty(m)
    table = _log_table()
    for j in prange(m):
        lo = indptr[j]
        hi = indptr[j + 1]
        buf = np.empty(hi - lo)
        k = 0
        for t in range(lo, hi):
            v = data[t]
            lg = loggeo[indices[t]]
            if v > 0.0 and np.isfinite(lg):
                buf[k] = _log_count(v, table) - lg
                k += 1
        out[j] = math.exp(_median_inplace(buf, k)) if k > 0 else np.nan
    return out


@njit(parallel=True)
def log_geo_means_dense(Y):
    """ln g_i = Σ_j ln y_ji / m of every column i of a dense m×G matrix; −inf for a column
    with a zero. The sums are compensated (Neumaier), so they are as accurate as R's
    ``rowMeans`` with its long-double accumulation (DESeq2's geometric means), within an ulp."""
    m, G = Y.shape
    out = np.empty(G)
    table = _log_table()
    for i in prange(G):
        s = 0.0
        c = 0.0
        zero = False
        for j in range(m):
            v = Y[j, i]
            if v <= 0.0:
                zero = True
                break
            x = _log_count(v, table)
            t = s + x
            c += (s - t) + x if abs(s) >= abs(x) else (x - t) + s
            s = t
        out[i] = -np.inf if zero else (s + c) / m
    return out


@njit(parallel=True)
def median_log_ratios_dense(Y, loggeo):
    """``median_log_ratios_csr`` for a dense m×G matrix: exp(median of ln y − ln g over the
    positive entries on genes with finite ln g) of each row; NaN for a row without one."""
    m, G = Y.shape
    out = np.empty(m)
    table = _log_table()
    for j in prange(m):
        buf = np.empty(G)
        k = 0
        for i in range(G):
            v = Y[j, i]
            lg = loggeo[i]
            if v > 0.0 and np.isfinite(lg):
                buf[k] = _log_count(v, table) - lg
                k += 1
        out[j] = math.exp(_median_inplace(buf, k)) if k > 0 else np.nan
    return out


@njit(parallel=True)
def initial_disp(Qn, FIT, df, xim):
    """min(rough, moments) initial dispersions (before clipping) from normalized counts Qn
    and their OLS fit FIT (both G×m): rough = Σ[(q − μ̂)² − μ̂]/μ̂²/df with μ̂ = max(1, FIT),
    floored at 0; moments = (var q − xim·mean q)/mean q² (var with m − 1 denominators)."""
    G, m = Qn.shape
    out = np.empty(G)
    for g in prange(G):
        q = Qn[g]
        s = 0.0
        tot = 0.0
        for j in range(m):
            mu = max(1.0, FIT[g, j])
            d = q[j] - mu
            s += (d * d - mu) / (mu * mu)
            tot += q[j]
        rough = max(s / df, 0.0)
        bm = tot / m
        ss = 0.0
        for j in range(m):
            d = q[j] - bm
            ss += d * d
        bv = ss / (m - 1)
        mom = (bv - xim * bm) / (bm * bm)
        out[g] = np.nan if np.isnan(mom) else min(rough, mom)
    return out


@njit(parallel=True)
def group_design_start(indptr, indices, data, m, sf, lab, R, df, xim):
    """Group-design start of the dispersion stage, from counts (CSR, m samples), without G×m
    temporaries.

    With q = y/s: per-row means of q (G×R, the OLS fit of a group design), the base mean
    (mean of q) and ``initial_disp`` of (q, row means). Returns (means, base_mean, alpha0).
    """
    G = indptr.shape[0] - 1
    means = np.empty((G, R))
    bmean = np.empty(G)
    a0 = np.empty(G)
    nrow = np.zeros(R)
    for j in range(m):
        nrow[lab[j]] += 1.0
    for g in prange(G):
        y = np.empty(m)
        _gene_row(indptr, indices, data, g, y)
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
