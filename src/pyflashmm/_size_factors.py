"""Size factors s_j of samples (or cells) j for counts y_ji (samples × genes), shared by the count
models (the NB GLM, the NB mixed model, pseudobulk).

* ``ratio`` (DESeq2 median of ratios): s_j = exp(median_i[ln y_ji − mean_v ln y_vi]) over
  genes with no zero count; an error when every gene has a zero.
* ``poscounts`` (DESeq2): gene geometric means over positive counts only,
  ln g_i = Σ_{y>0} ln y_ji / m (m counts all samples), ratios over y_ji > 0, then the factors
  are rescaled to geometric mean 1.
* ``normed_sum`` (glmGamPoi): column sums rescaled to geometric mean 1.
* ``iterate`` (DESeq2): alternate an intercept-only NB fit (gene-wise, ``mean`` trend and MAP
  dispersions) and a maximisation of the NB likelihood over the centred ln s (the 5 % worst
  genes left out) until Σ(Δ ln s)² < 1e-4.

Every method needs at least one count in every sample; a sample without any is named.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy import optimize, stats

from pyflashmm._kernels import size_factors as _ks
from pyflashmm._nbglm import dispersion as _disp
from pyflashmm._nbglm import trend as _trend
from pyflashmm._nbglm.count_block import CountBlock
from pyflashmm._nbglm.counts_input import as_counts
from pyflashmm._nbglm.layout import design_layout, sample_classes

METHODS = ("ratio", "poscounts", "normed_sum", "iterate")


def size_factors(counts, method: str = "ratio", *, allow_non_integer: bool = False):
    """Size factors of the rows (samples or cells) of a count matrix.

    Parameters
    ----------
    counts : array_like or scipy.sparse matrix, shape (m, G)
        Non-negative counts, samples/cells in rows and genes in columns.
    method : {"ratio", "poscounts", "normed_sum", "iterate"}
        See the module docstring for the formulas; ``ratio`` raises when every gene has a zero
        (use ``poscounts`` for sparse data) and never falls back silently.
    allow_non_integer : bool
        Accept non-integer (estimated) counts.

    Returns
    -------
    numpy.ndarray, shape (m,)
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return size_factors_checked(as_counts(counts, allow_non_integer=allow_non_integer), method)


def check_samples_have_counts(Y) -> None:
    """ValueError naming the samples (rows) of Y without any count."""
    tot = np.asarray(Y.sum(axis=1)).ravel()
    empty = np.flatnonzero(tot <= 0)
    if empty.size:
        what = "sample (row) has" if empty.size == 1 else "samples (rows) have"
        raise ValueError(
            f"counts: {empty.size} {what} no counts at all (first: row {empty[0]}); "
            "remove them before fitting"
        )


def size_factors_checked(Y, method: str):
    """:func:`size_factors` of counts already validated by ``as_counts`` (float64, dense or
    CSR; ``nbglm`` checks its input once and comes here)."""
    m, G = Y.shape
    check_samples_have_counts(Y)
    if method == "normed_sum":
        return normed_sum_rescaled(np.asarray(Y.sum(axis=1)).ravel())
    if method == "iterate":
        return _iterate(Y)
    if method == "ratio":
        if sp.issparse(Y):
            full = np.bincount(Y.indices, minlength=G) == m  # genes stored in every row
            if not full.any():
                raise ValueError(
                    "counts: every gene contains at least one zero, cannot compute log "
                    "geometric means (method='ratio'); use method='poscounts'"
                )
            Yd = Y[:, full].toarray()
            return _median_ratios_dense(Yd, _ks.log_geo_means_dense(Yd))
        loggeo = _ks.log_geo_means_dense(np.ascontiguousarray(Y, dtype=np.float64))
        if np.isinf(loggeo).all():
            raise ValueError(
                "counts: every gene contains at least one zero, cannot compute log "
                "geometric means (method='ratio'); use method='poscounts'"
            )
        return _median_ratios_dense(Y, loggeo)
    # poscounts: dense and sparse input go through the same CSR kernels (bitwise-equal factors)
    Yr = sp.csr_matrix(Y)
    if not Yr.has_sorted_indices:
        Yr = Yr.sorted_indices()  # a sorted copy: the caller's arrays are left as they are
    indptr = Yr.indptr.astype(np.int64)
    indices = Yr.indices.astype(np.int64)
    data = np.ascontiguousarray(Yr.data, dtype=np.float64)
    loggeo = _ks.log_geo_means_csr(indptr, indices, data, G)
    if np.isinf(loggeo).all():
        raise ValueError("counts: every gene is all-zero")
    return poscounts_rescaled(_ks.median_log_ratios_csr(indptr, indices, data, loggeo))


def given_size_factors(size_factors, n: int) -> np.ndarray:
    """Size factors passed as an array: ``n`` positive finite numbers (else ``ValueError``)."""
    sf = np.asarray(size_factors, dtype=np.float64)
    if sf.shape != (n,):
        raise ValueError(f"size_factors must have {n} entries (one per cell), got {sf.shape}")
    if not np.all(np.isfinite(sf) & (sf > 0)):
        raise ValueError("size_factors must be positive and finite")
    return sf


def normed_sum_rescaled(totals: np.ndarray) -> np.ndarray:
    """``"normed_sum"`` size factors from the samples' total counts: totals over their
    geometric mean."""
    return totals / np.exp(np.mean(np.log(totals)))


def poscounts_rescaled(ratios: np.ndarray) -> np.ndarray:
    """The poscounts size factors from every sample's exp(median log ratio): checked (a NaN is
    a sample without a usable count) and rescaled to geometric mean 1."""
    sf = _usable(ratios)
    return sf / np.exp(np.mean(np.log(sf)))


def _median_ratios_dense(Y, loggeo):
    """exp(median_i[ln y_ji − ln g_i]) of every sample j over the genes with finite ln g_i."""
    return _usable(_ks.median_log_ratios_dense(np.ascontiguousarray(Y, dtype=np.float64), loggeo))


def _usable(sf):
    """``sf``, or a ValueError naming the first sample without a usable gene (NaN)."""
    bad = np.flatnonzero(np.isnan(sf))
    if bad.size:
        raise ValueError(f"counts: sample {bad[0]} has no positive count on a usable gene")
    return sf


def _iterate(Y, niter=10, q_trim=0.05):
    """DESeq2's ``type="iterate"`` size factors (module docstring; L-BFGS-B on ln s)."""
    Yd = Y.toarray() if sp.issparse(Y) else np.asarray(Y)
    m = Yd.shape[0]
    keep = Yd.sum(axis=0) > 0
    cts = Yd[:, keep].T
    blk = CountBlock.from_dense(cts)
    layout = design_layout(np.ones((m, 1)))
    sf = np.ones(m)
    for i in range(niter):
        classes = sample_classes(sf, layout)
        est, mu0, _ = _disp.gene_wise_block(blk, sf, layout, classes, 0.5)
        bm = (cts / sf).mean(axis=1)
        dfit = _trend.fit_trend(bm, est, "mean")(bm) * np.ones_like(bm)
        vl = _trend.var_log_disp_ests(est, dfit)
        pv = _trend.prior_variance(est, dfit, m, 1)
        disps = _disp.map_dispersion(blk, mu0, sf, layout, classes, est, dfit, pv, vl).dispersion
        q = _disp.expand_means(mu0, sf, layout) / sf
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
