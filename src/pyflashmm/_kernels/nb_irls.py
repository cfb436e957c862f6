"""IRLS for the coefficients of the NB GLM at fixed dispersions, and its log-likelihood.

Model (gene g, sample j): y_j ~ NB(μ_j, α), ln μ_j = ln s_j + x_jᵀβ (DESeq2's ``fitBeta``).
β is on the natural-log scale with a ridge Λ = diag(λ); each step, with μ floored at
``minmu``, z_j = ln(μ_j/s_j) + (y_j − μ_j)/μ_j and w_j = μ_j/(1 + αμ_j), solves

  β ← (XᵀWX + Λ)⁻¹ XᵀWz.

Convergence: |Δdev|/(|dev| + 0.1) < ``tol`` after the first step, with the deviance
dev = −2 Σ_j ln f(y_j; μ_j, α); a gene with any |β| > 30 or a NaN deviance is aborted with
``iter = maxit``. The start is the least-squares fit of ln(y/s + 0.1): β₀ = P·(per-row sums of
ln(y/s + 0.1)) with P (p×R) from the QR decomposition of X. At the end the covariance is
Σ = (XᵀWX+Λ)⁻¹ XᵀWX (XᵀWX+Λ)⁻¹ and the hat diagonal h_j = w_j x_jᵀ(XᵀWX+Λ)⁻¹x_j.

The design enters as its R distinct rows and the samples as classes of one size factor and one
design row (``nb_layout``). With n_c samples and count total Y_c in class c, the sums over
samples are sums over classes (exact identities, up to summation order):
Σ_{j∈c} w_j = n_c w_c, Σ_{j∈c} w_j z_j = w_c [n_c ln(μ_c/s_c) + (Y_c − n_c μ_c)/μ_c], and the
deviance terms Σ_{j∈c} [−r ln(1+αμ_j) + y_j(ln μ_j − ln(r+μ_j))] =
−n_c r ln(1+αμ_c) + Y_c(ln μ_c − ln r − ln(1+αμ_c)); the lnΓ part is summed once per gene over
the distinct non-zero counts. η, exp(η) and x_rᵀ(XᵀWX+Λ)⁻¹x_r are computed once per distinct
row; XᵀWX and XᵀWz come from per-row sums of w and wz. Only the non-zero counts are visited.
Without shared size factors every sample is its own class and the arithmetic is that of the
per-sample loop.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from pyflashmm._jit import njit, prange
from pyflashmm._kernels.linalg import cholesky_inverse, cholesky_lower, cholesky_solve_vector
from pyflashmm._kernels.nb_density import lgamma_sum, small_alpha_part, xtwx_rows
from pyflashmm._kernels.nb_layout import gene_nonzeros, survival_counts, table_of_nonzeros
from pyflashmm._kernels.vecmath import log1p_recip, log_vec


class Irls(NamedTuple):
    """IRLS settings (module docstring): the ridge ``lam`` (p, natural-log scale), the floor
    ``minmu`` of μ, the convergence ``tol`` on the relative deviance change, ``maxit``."""

    lam: np.ndarray
    minmu: float
    tol: float
    maxit: int


class _Consts(NamedTuple):
    """Per-call constants: samples per design row, ln s_c and ln(minmu/s_c) of every class,
    ln minmu."""

    rcount: np.ndarray
    logcsf: np.ndarray
    lzf: np.ndarray
    lmin: float


class _Gene(NamedTuple):
    """Per-gene state of :func:`_irls_gene`: β, η and exp(η) per design row, the class terms,
    per-row sums, p×p work matrices."""

    beta: np.ndarray
    eta: np.ndarray
    E: np.ndarray
    mc: np.ndarray  # floored μ of every class
    wn: np.ndarray  # n w of every class (``_class_terms``)
    wzc: np.ndarray  # its share of Σ w z
    devc: np.ndarray  # its deviance term
    yc: np.ndarray  # count total of every class
    wsum: np.ndarray
    wz: np.ndarray
    A: np.ndarray
    L: np.ndarray
    Ainv: np.ndarray
    rhs: np.ndarray


@njit
def _consts(counts, design, classes, minmu):
    """The fields of :class:`_Consts` (a parallel loop cannot take a named tuple made outside
    it, so each gene packs them)."""
    R = design.Xr.shape[0]
    nc = classes.sf.shape[0]
    rcount = np.zeros(R)  # samples per design row
    for j in range(counts.m):
        rcount[design.lab[j]] += 1.0
    logcsf = np.empty(nc)
    lzf = np.empty(nc)  # ln(minmu/s) of a class whose μ is floored
    for c in range(nc):
        logcsf[c] = math.log(classes.sf[c])
        lzf[c] = math.log(minmu / classes.sf[c])
    return rcount, logcsf, lzf, math.log(minmu)


@njit
def _gene_state(R, p, nc):
    return _Gene(
        np.empty(p),
        np.empty(R),
        np.empty(R),
        np.empty(nc),
        np.empty(nc),
        np.empty(nc),
        np.empty(nc),
        np.zeros(nc),
        np.empty(R),
        np.empty(R),
        np.empty((p, p)),
        np.empty((p, p)),
        np.empty((p, p)),
        np.empty(p),
    )


@njit
def _class_terms(al, r_al, logr, classes, cst, minmu, st):
    """The IRLS terms of every class c (n_c samples, count total Y_c, design row q = row_c),
    from η and exp(η) per design row in ``st``, into ``st`` (a :class:`_Gene`).

    μ_c = max(s_c e^{η_q}, minmu) into ``mc``; with w_c = μ_c/(1 + αμ_c) and
    z-offset ℓz_c = ln(μ_c/s_c) (η_q, or ln(minmu/s_c) when floored): n_c w_c into ``wn``,
    w_c [n_c ℓz_c + (Y_c − n_c μ_c)/μ_c] into ``wzc`` and the deviance term
    −r n_c ln(1+αμ_c) + Y_c(ln μ_c − ln r − ln(1+αμ_c)) into ``devc`` (r = 1/α).

    The lookups by design row come first, in a loop of their own: the second loop then has
    only selects and arithmetic, and LLVM vectorises it.
    """
    E = st.E
    eta = st.eta
    yc = st.yc
    mc = st.mc
    wn = st.wn
    wzc = st.wzc
    devc = st.devc
    n = mc.shape[0]
    clab = classes.row
    csf = classes.sf
    csize = classes.size
    logcsf = cst.logcsf
    lzf = cst.lzf
    lmin = cst.lmin
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
def _row_sums(coff, st):
    """Per design row q: Σ w and Σ w z over its classes (``coff[q]``..``coff[q+1]``−1) into
    ``st.wsum``/``st.wz``; returns the sum of the deviance terms of all classes."""
    wn = st.wn
    wzc = st.wzc
    devc = st.devc
    wsum = st.wsum
    wz = st.wz
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


@njit
def _eta(Xr, beta, eta, E):
    """η_r = x_rᵀβ and exp(η_r) of every distinct row."""
    R, p = Xr.shape
    for r in range(R):
        s = 0.0
        for k in range(p):
            s += Xr[r, k] * beta[k]
        eta[r] = s
        E[r] = math.exp(s)


@njit
def _irls_gene(counts, g, sf, design, classes, al, P, irls, cst, st):
    """IRLS of gene g at dispersion ``al`` (module docstring). Leaves β in ``st.beta``, exp(η)
    where the weights were last evaluated in ``st.E`` and their per-row sums in ``st.wsum``;
    returns the number of iterations (``maxit`` when aborted)."""
    m = counts.m
    Xr = design.Xr
    lab = design.lab
    R, p = Xr.shape
    beta = st.beta
    wsum = st.wsum
    wz = st.wz
    A = st.A
    L = st.L
    rhs = st.rhs
    yc = st.yc
    lam = irls.lam
    minmu = irls.minmu
    maxit = irls.maxit
    vals = np.empty(m)
    cnts = np.empty(m)
    nzj = np.empty(m, dtype=np.int64)
    nnz = gene_nonzeros(counts, g, vals, nzj)
    for i in range(nnz):
        yc[classes.cls[nzj[i]]] += vals[i]
    # the least-squares start: P times the per-row sums of ln(y/s + 0.1)
    for r in range(R):
        wz[r] = 0.0
        wsum[r] = cst.rcount[r]  # zero counts of row r (after the loop below)
    # ln(y/s + 0.1) into cnts (unused until later): the gather in a loop of its own, so that
    # the logarithms vectorise
    for i in range(nnz):
        cnts[i] = sf[nzj[i]]
    for i in range(nnz):
        cnts[i] = log_vec(vals[i] / cnts[i] + 0.1)
    for i in range(nnz):
        q = lab[nzj[i]]
        wz[q] += cnts[i]
        wsum[q] -= 1.0
    l01 = math.log(0.1)
    for r in range(R):
        wz[r] += wsum[r] * l01
    for k in range(p):
        s = 0.0
        for r in range(R):
            s += P[k, r] * wz[r]
        beta[k] = s
    r_al = 1.0 / al
    logr = math.log(r_al)
    # lnΓ part of the deviance, Σ_k c_k[lnΓ(v_k + r) − lnΓ(r) − lnΓ(v_k + 1)], over the
    # distinct non-zero counts v_k (multiplicity c_k), term by term when they allow it
    K, _yt = table_of_nonzeros(vals, nnz, cnts)
    surv = survival_counts(vals, cnts, K)
    tb = np.empty(surv.shape[0])
    lg_const = lgamma_sum(r_al, K, vals, cnts, surv, tb) - lgamma_sum(1.0, K, vals, cnts, surv, tb)
    # one fused pass: mu and the per-row sums of w and w z for the next step
    _eta(Xr, beta, st.eta, st.E)
    _class_terms(al, r_al, logr, classes, cst, minmu, st)
    _row_sums(classes.offsets, st)
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
        _eta(Xr, beta, st.eta, st.E)
        _class_terms(al, r_al, logr, classes, cst, minmu, st)
        dev = _row_sums(classes.offsets, st)
        dev = -2.0 * (dev + lg_const)
        conv = abs(dev - dev_old) / (abs(dev) + 0.1)
        if np.isnan(conv):
            n_it = maxit
            break
        if t > 0 and conv < irls.tol:
            break
        dev_old = dev
    return n_it


@njit
def _penalised_inverse(Xr, wsum, lam, A, L, Ainv):
    """A = XᵀWX from the per-row weight sums and Ainv = (A + Λ)⁻¹; False when A + Λ is not
    positive definite."""
    p = lam.shape[0]
    xtwx_rows(Xr, wsum, A)
    for k in range(p):
        A[k, k] += lam[k]
    if not cholesky_lower(A, L):
        return False
    cholesky_inverse(L, Ainv)
    for k in range(p):
        A[k, k] -= lam[k]
    return True


@njit(parallel=True)
def fit_beta(counts, sf, design, classes, alpha, P, irls):
    """IRLS (module docstring) of every gene of ``counts`` (``CountsCSR``) at dispersions
    ``alpha``, with the design rows ``design`` (``DesignRows``), the sample classes
    ``classes`` (``SampleClasses``), the start map ``P`` (p×R) and settings ``irls`` (``Irls``).

    The fitted means and hat diagonals are returned per design row (G×R each, no G×m array):
    ``row_mu`` = exp(x_rᵀβ) at the final β (μ_j = s_j·row_mu[lab_j], unfloored);
    ``row_wmu`` = exp(x_rᵀβ_w) at the β_w where the weights W were last evaluated (β itself,
    unless the gene was aborted) and ``row_hat`` = x_rᵀ(XᵀWX + Λ)⁻¹x_r (NaN when that matrix is
    not positive definite), so that the hat diagonal of sample j is
    h_j = w_j·row_hat[lab_j] with w_j = μ̃_j/(1 + αμ̃_j), μ̃_j = max(s_j·row_wmu[lab_j], minmu).
    Returns (beta G×p, sigma G×p×p, iter G, row_mu, row_wmu, row_hat).
    """
    G = counts.indptr.shape[0] - 1
    Xr = design.Xr
    R, p = Xr.shape
    nc = classes.sf.shape[0]
    lam = irls.lam
    beta_out = np.empty((G, p))
    sigma_out = np.full((G, p, p), np.nan)
    row_mu = np.empty((G, R))
    row_wmu = np.empty((G, R))
    row_hat = np.empty((G, R))
    iters = np.zeros(G, dtype=np.int64)
    rcount, logcsf, lzf, lmin = _consts(counts, design, classes, irls.minmu)
    for g in prange(G):
        cst = _Consts(rcount, logcsf, lzf, lmin)
        st = _gene_state(R, p, nc)
        iters[g] = _irls_gene(counts, g, sf, design, classes, alpha[g], P, irls, cst, st)
        beta = st.beta
        A = st.A
        Ainv = st.Ainv
        for k in range(p):
            beta_out[g, k] = beta[k]
        # E holds exp(η) where the weights (wsum) were last evaluated; the means at the final β
        for r in range(R):
            row_wmu[g, r] = st.E[r]
            s = 0.0
            for k in range(p):
                s += Xr[r, k] * beta[k]
            row_mu[g, r] = math.exp(s)
        # covariance and per-row hat factors at those weights
        if _penalised_inverse(Xr, st.wsum, lam, A, st.L, Ainv):
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
    return beta_out, sigma_out, iters, row_mu, row_wmu, row_hat


@njit(parallel=True)
def fit_beta_means(counts, sf, design, classes, alpha, P, irls):
    """:func:`fit_beta` for a model whose coefficients are needed only through its means (the
    reduced model of a likelihood-ratio test): no covariance or hat factors, only whether
    every coefficient variance is positive (the diagonal of Σ, computed as in ``fit_beta``).
    Returns (beta G×p, iter G, var_ok G, row_mu G×R)."""
    G = counts.indptr.shape[0] - 1
    Xr = design.Xr
    R, p = Xr.shape
    nc = classes.sf.shape[0]
    lam = irls.lam
    beta_out = np.empty((G, p))
    row_mu = np.empty((G, R))
    var_ok = np.zeros(G, dtype=np.bool_)
    iters = np.zeros(G, dtype=np.int64)
    rcount, logcsf, lzf, lmin = _consts(counts, design, classes, irls.minmu)
    for g in prange(G):
        cst = _Consts(rcount, logcsf, lzf, lmin)
        st = _gene_state(R, p, nc)
        iters[g] = _irls_gene(counts, g, sf, design, classes, alpha[g], P, irls, cst, st)
        beta = st.beta
        A = st.A
        Ainv = st.Ainv
        for k in range(p):
            beta_out[g, k] = beta[k]
        for r in range(R):
            s = 0.0
            for k in range(p):
                s += Xr[r, k] * beta[k]
            row_mu[g, r] = math.exp(s)
        ok = _penalised_inverse(Xr, st.wsum, lam, A, st.L, Ainv)
        if ok:
            for a_ in range(p):
                s = 0.0
                for c in range(p):
                    for d in range(p):
                        s += Ainv[a_, c] * A[c, d] * Ainv[d, a_]
                ok &= s > 0.0
        var_ok[g] = ok
    return beta_out, iters, var_ok, row_mu


@njit(parallel=True)
def intercept_fit(counts, sf, alpha):
    """The intercept-only fit of every gene: the base mean b = Σ_j (y_j/s_j)/m and
    Σ_j w_j with w_j = 1/(1/(b s_j) + α). Returns (b, Σ w)."""
    G = counts.indptr.shape[0] - 1
    m = counts.m
    indptr = counts.indptr
    indices = counts.indices
    data = counts.data
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
def design_row_means(Xr, beta):
    """exp(x_rᵀβ_g) (G×R) of every gene and distinct design row, summed as ``fit_beta`` does
    (so the means of an IRLS fit are reproduced bit for bit from its coefficients)."""
    G, p = beta.shape
    R = Xr.shape[0]
    out = np.empty((G, R))
    for g in prange(G):
        for r in range(R):
            s = 0.0
            for k in range(p):
                s += Xr[r, k] * beta[g, k]
            out[g, r] = math.exp(s)
    return out


@njit
def _nonzero_term(y, mu, r, alpha, lgr, d, tail, lg_r, lg_1):
    """ln f(y; μ, α) for y > 0 with the per-gene and per-class parts given: ln Γ(r) ``lgr``,
    d = ln μ − ln(r + μ), tail = r ln(1 − μ/(r + μ)), and ln Γ(y + r), ln Γ(y + 1) (``lg_r``,
    ``lg_1``); the same operations, in the same order, as ``nb_density.nb_logpdf``."""
    if mu <= 0.0:
        return -np.inf
    if r > 1e4 and y < 64.0 and y == math.floor(y):
        return small_alpha_part(y, mu, r) - lg_1 + tail
    return lg_r - lgr - lg_1 + y * d + tail


@njit(parallel=True)
def nb_loglik(counts, classes, row_mu, alpha):
    """Σ_j ln f(y_gj; μ_gj, α_g) for every gene g (G), μ_gj = s_j·row_mu[g, lab_j], summed over
    the samples in order.

    The result is that of summing ``nb_density.nb_logpdf`` sample by sample, bit for bit; the
    work is not: the parts that depend only on μ (the same for all samples of a class, see
    ``nb_layout.SampleClasses``) are computed once per class, ln Γ(r) once per gene and
    ln Γ(y + r), ln Γ(y + 1) once per distinct small integer count.
    """
    G = counts.indptr.shape[0] - 1
    m = counts.m
    nc = classes.sf.shape[0]
    cls = classes.cls
    indptr = counts.indptr
    indices = counts.indices
    data = counts.data
    out = np.empty(G)
    for g in prange(G):
        al = alpha[g]
        r = 1.0 / al
        lgr = math.lgamma(r)
        muc = np.empty(nc)
        tail = np.empty(nc)
        d = np.full(nc, np.nan)  # ln μ − ln(r + μ), made when a class has a non-zero count
        for c in range(nc):
            mu = classes.sf[c] * row_mu[g, classes.row[c]]
            muc[c] = mu
            tail[c] = 0.0 if mu <= 0.0 else r * math.log1p(-mu / (r + mu))
        p0 = indptr[g]
        p1 = indptr[g + 1]
        vmax = 0.0
        for k in range(p0, p1):
            vmax = max(vmax, data[k])
        n_tab = int(vmax) + 1 if vmax <= 4.0 * (p1 - p0) + 64.0 else 0
        lg_r = np.full(n_tab, np.nan)  # ln Γ(v + r) and ln Γ(v + 1) of integer counts v
        lg_1 = np.full(n_tab, np.nan)
        s = 0.0
        k = p0
        nxt = indices[k] if k < p1 else m
        for j in range(m):
            c = cls[j]
            if j != nxt:
                s += tail[c]
                continue
            y = data[k]
            k += 1
            nxt = indices[k] if k < p1 else m
            mu = muc[c]
            if mu > 0.0 and np.isnan(d[c]):
                d[c] = math.log(mu) - math.log(r + mu)
            if n_tab > 0 and y == math.floor(y):  # then y ≤ v_max: a small integer
                v = int(y)
                if np.isnan(lg_r[v]):
                    lg_r[v] = math.lgamma(y + r)
                    lg_1[v] = math.lgamma(y + 1.0)
                a_r = lg_r[v]
                a_1 = lg_1[v]
            else:
                a_r = math.lgamma(y + r)
                a_1 = math.lgamma(y + 1.0)
            s += _nonzero_term(y, mu, r, al, lgr, d[c], tail[c], a_r, a_1)
        out[g] = s
    return out
