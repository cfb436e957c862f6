"""Size factors s_j of samples (or cells) j for counts y_ij (samples × genes here).

* ``ratio`` (DESeq2 median of ratios): s_j = exp(median_i[ln y_ji − mean_v ln y_vi]) over
  genes with no zero count; an error when every gene has a zero.
* ``poscounts`` (DESeq2): gene geometric means over positive counts only,
  ln g_i = Σ_{y>0} ln y_ji / m (m counts all samples), ratios over y_ji > 0, then the factors
  are rescaled to geometric mean 1.
* ``normed_sum`` (glmGamPoi): column sums rescaled to geometric mean 1.
* ``iterate`` (DESeq2): alternate a mean-only NB fit and a likelihood maximisation over the
  centred ln s (5 % worst genes left out) until Σ(Δ ln s)² < 1e-4.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from pyflashmm._kernels import nb as _nb
from pyflashmm._nbglm._util import as_counts

METHODS = ("ratio", "poscounts", "normed_sum", "iterate")


def _median_ratios_dense(Y, loggeo):
    """exp(median_i[ln y_ji − ln g_i]) of every sample j over the genes with finite ln g_i."""
    return _usable(_nb.median_log_ratios_dense(np.ascontiguousarray(Y, dtype=np.float64), loggeo))


def _usable(sf):
    """``sf``, or a ValueError naming the first sample without a usable gene (NaN)."""
    bad = np.flatnonzero(np.isnan(sf))
    if bad.size:
        raise ValueError(f"counts: sample {bad[0]} has no positive count on a usable gene")
    return sf


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


def size_factors_checked(Y, method: str):
    """:func:`size_factors` of counts already validated by ``as_counts`` (float64, dense or
    CSR; ``nbglm`` checks its input once and comes here)."""
    m, G = Y.shape
    if method == "normed_sum":
        tot = np.asarray(Y.sum(axis=1)).ravel()
        if (tot <= 0).any():
            raise ValueError(f"counts: sample {int(np.argmin(tot))} has zero total count")
        return tot / np.exp(np.mean(np.log(tot)))
    if method == "iterate":
        from pyflashmm._nbglm.glm import _size_factors_iterate

        return _size_factors_iterate(Y)
    if method == "ratio":
        if sp.issparse(Y):
            full = np.bincount(Y.indices, minlength=G) == m  # genes stored in every row
            if not full.any():
                raise ValueError(
                    "counts: every gene contains at least one zero, cannot compute log "
                    "geometric means (method='ratio'); use method='poscounts'"
                )
            Yd = Y[:, full].toarray()
            return _median_ratios_dense(Yd, _nb.log_geo_means_dense(Yd))
        loggeo = _nb.log_geo_means_dense(np.ascontiguousarray(Y, dtype=np.float64))
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
    loggeo = _nb.log_geo_means_csr(indptr, indices, data, G)
    if np.isinf(loggeo).all():
        raise ValueError("counts: every gene is all-zero")
    sf = _usable(_nb.median_log_ratios_csr(indptr, indices, data, loggeo))
    return sf / np.exp(np.mean(np.log(sf)))
