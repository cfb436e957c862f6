"""How the NB GLM kernels read their data: the argument bundles, CSR count rows and count tables.

Bundles (``typing.NamedTuple``; Numba passes them as tuples, fields are read by name):

* :class:`CountsCSR` — the counts y_gj of a block of G genes over m samples, genes × samples in
  CSR form: ``indptr`` (G + 1), ``indices`` (samples, increasing within a gene), ``data`` (the
  non-zero counts, no explicit zeros) and ``m``. Kernels that need only the non-zero counts
  read them in place (:func:`gene_nonzeros`); the others expand one gene at a time into a
  dense work row (:func:`gene_row`), never the G×m block.
* :class:`DesignRows` — the design X (m×p) as its R distinct rows ``Xr`` (R×p), the row label
  ``lab`` of every sample (x_j = Xr[lab_j]), the samples sorted by row (``order``) and the
  R + 1 ``offsets`` of each row's samples in that order.
* :class:`SampleClasses` — samples sharing a size factor and a design row, hence one fitted
  mean μ_c: the class ``cls`` of every sample, the class ``size`` n_c, size factor ``sf`` s_c
  and design row ``row`` of every class, and the R + 1 ``offsets`` of each row's classes
  (classes are numbered by design row). Without any shared pair every sample is its own class.
* :class:`RowMeans` — means given per design row: μ_gj = max(``means``[g, lab_j]·s_j,
  ``minmu``), expanded one gene at a time where used.
* :class:`FittedRows` — a GLM fit kept per design row (see ``nb_irls.fit_beta``): fitted means
  ``mu`` = exp(x_rᵀβ), the means ``wmu`` at which the weights were last evaluated, the
  hat factors ``hat`` = x_rᵀ(XᵀWX + Λ)⁻¹x_r and the floor ``minmu`` of the weights' means.

Count tables: the distinct non-zero counts v_k of a gene with multiplicities c_k
(glmGamPoi's trick; lnΓ and ψ sums over cells become sums over k), and the survival counts
N_i = Σ_{k: v_k > i} c_k, with which Σ_k c_k[lnΓ(v_k+r) − lnΓ(r)] = Σ_{i<v_max} N_i ln(r+i)
(see ``nb_density.lgamma_sum``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from pyflashmm._jit import njit, prange


class CountsCSR(NamedTuple):
    """Counts of G genes over ``m`` samples, genes × samples in CSR form (module docstring)."""

    indptr: np.ndarray  # int64, G + 1
    indices: np.ndarray  # int32, samples increasing within a gene
    data: np.ndarray  # float64, non-zero counts
    m: int


class DesignRows(NamedTuple):
    """The distinct rows of a design and the samples of each (module docstring)."""

    Xr: np.ndarray  # R×p float64
    lab: np.ndarray  # int64, m: design row of every sample
    order: np.ndarray  # int64, m: samples sorted by design row (stable)
    offsets: np.ndarray  # int64, R + 1: samples of row q are order[offsets[q]:offsets[q+1]]


class SampleClasses(NamedTuple):
    """Samples sharing a size factor and a design row (module docstring)."""

    cls: np.ndarray  # int64, m: class of every sample
    size: np.ndarray  # float64, n_cls: samples per class
    sf: np.ndarray  # float64, n_cls: size factor of every class
    row: np.ndarray  # int64, n_cls: design row of every class
    offsets: np.ndarray  # int64, R + 1: classes of row q are offsets[q]..offsets[q+1]−1


class RowMeans(NamedTuple):
    """Means per design row: μ_gj = max(means[g, lab_j]·s_j, minmu) (module docstring)."""

    means: np.ndarray  # G×R float64
    minmu: float


class FittedRows(NamedTuple):
    """A GLM fit of G genes kept per design row (module docstring)."""

    mu: np.ndarray  # G×R: exp(x_rᵀβ) at the final β
    wmu: np.ndarray  # G×R: exp(x_rᵀβ_w) where the weights W were last evaluated
    hat: np.ndarray  # G×R: x_rᵀ(XᵀWX + Λ)⁻¹x_r (NaN when not positive definite)
    minmu: float  # floor of the weights' means (0 for the intercept-only shortcut)


@njit
def gene_row(counts, g, y):
    """Counts of gene g as a dense row, into ``y`` (length m)."""
    y[:] = 0.0
    for k in range(counts.indptr[g], counts.indptr[g + 1]):
        y[counts.indices[k]] = counts.data[k]


@njit
def gene_nonzeros(counts, g, nzv, nzj):
    """The non-zero counts of gene g (values into ``nzv``, samples into ``nzj``, in sample
    order); returns their number."""
    p0 = counts.indptr[g]
    n = counts.indptr[g + 1] - p0
    for i in range(n):
        nzv[i] = counts.data[p0 + i]
        nzj[i] = counts.indices[p0 + i]
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
def divide_cols(Y, sf):
    """Normalized counts Y / s (G×m, per-column divisor), in parallel over genes."""
    G, m = Y.shape
    out = np.empty((G, m))
    for g in prange(G):
        for j in range(m):
            out[g, j] = Y[g, j] / sf[j]
    return out


@njit
def table_of_nonzeros(vals, nnz, cnts):
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


#: term-by-term lnΓ/ψ sums are used when v_max ≤ SURVIVAL_FACTOR · K + SURVIVAL_SLACK
SURVIVAL_FACTOR = 8
SURVIVAL_SLACK = 64


@njit
def survival_counts(vals, cnts, K):
    """N_i = Σ_{k: v_k > i} c_k for i < v_max (module docstring), or an empty array when the
    distinct non-zero counts ``vals[:K]`` (ascending) are not integers or v_max exceeds
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
