"""Size factors (``pyflashmm._size_factors``, ``_kernels.size_factors``) against NumPy oracles,
and their errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from pyflashmm import size_factors
from pyflashmm._kernels import size_factors as K


def test_size_factor_oracles(rng):
    Y = rng.poisson(20, size=(6, 50)).astype(float) + 1
    lg = np.log(Y).mean(axis=0)
    oracle = np.exp(np.median(np.log(Y) - lg, axis=1))
    np.testing.assert_allclose(size_factors(Y, "ratio"), oracle, rtol=1e-12)
    Y[0, :10] = 0
    lc = np.where(Y > 0, np.log(np.where(Y > 0, Y, 1)), 0.0)
    lgp = lc.sum(axis=0) / Y.shape[0]
    sfp = np.array([np.exp(np.median(np.log(Y[j][Y[j] > 0]) - lgp[Y[j] > 0])) for j in range(6)])
    sfp /= np.exp(np.mean(np.log(sfp)))
    np.testing.assert_allclose(size_factors(Y, "poscounts"), sfp, rtol=1e-12)
    np.testing.assert_allclose(size_factors(sp.csr_matrix(Y), "poscounts"), sfp, rtol=1e-12)
    tot = Y.sum(axis=1)
    np.testing.assert_allclose(size_factors(Y, "normed_sum"), tot / np.exp(np.log(tot).mean()))


def test_size_factor_errors():
    Y = np.array([[0, 1, 2], [3, 0, 1], [1, 2, 0]], float)
    with pytest.raises(ValueError, match="every gene contains at least one zero"):
        size_factors(Y, "ratio")
    with pytest.raises(ValueError, match="every gene contains at least one zero"):
        size_factors(sp.csc_matrix(Y), "ratio")
    with pytest.raises(ValueError, match="method"):
        size_factors(Y, "tmm")


@pytest.mark.parametrize("method", ["ratio", "poscounts", "normed_sum", "iterate"])
def test_samples_without_counts_are_named(rng, method):
    Y = rng.poisson(5.0, (20, 30)).astype(float) + 1.0
    Y[[4, 17]] = 0.0
    msg = r"counts: 2 samples \(rows\) have no counts at all \(first: row 4\)"
    with pytest.raises(ValueError, match=msg):
        size_factors(Y, method)
    with pytest.raises(ValueError, match=msg):
        size_factors(sp.csr_matrix(Y), method)


def test_string_counts_are_rejected():
    with pytest.raises(TypeError, match="counts must hold real numbers"):
        size_factors(np.array([["1", "2"], ["3", "4"]]), "poscounts")


@pytest.mark.skipif(
    np.finfo(np.longdouble).eps >= np.finfo(np.float64).eps,
    reason="needs an extended-precision long double for the reference",
)
def test_log_geo_means_dense_match_long_double_means():
    # against long-double sums (R's rowMeans accumulates in long double)
    rng = np.random.default_rng(12)
    Y = rng.negative_binomial(3, 0.02, (250, 60)).astype(float)
    Y[5, 3] = 0.0
    got = K.log_geo_means_dense(Y)
    with np.errstate(divide="ignore"):
        ref = np.log(Y).astype(np.longdouble).mean(axis=0).astype(np.float64)
    assert np.isneginf(got[3]) and np.isneginf(ref[3])
    ok = np.isfinite(ref)
    np.testing.assert_allclose(got[ok], ref[ok], rtol=4e-16, atol=0)


def test_duplicate_sparse_entries_are_summed_before_size_factors():
    rng = np.random.default_rng(13)
    Y = rng.poisson(3.0, (30, 20)).astype(float) + 1.0
    C = sp.csr_matrix(Y)
    # split every stored value of row 2 into two entries of the same column
    r0, r1 = C.indptr[2], C.indptr[3]
    idx = np.r_[C.indices[:r0], np.repeat(C.indices[r0:r1], 2), C.indices[r1:]]
    half = C.data[r0:r1] / 2.0
    data = np.r_[C.data[:r0], np.column_stack([half, half]).ravel(), C.data[r1:]]
    ptr = C.indptr.copy()
    ptr[3:] += r1 - r0
    dup = sp.csr_matrix((data, idx, ptr), shape=C.shape)
    for method in ("ratio", "poscounts"):
        np.testing.assert_allclose(size_factors(dup, method), size_factors(Y, method), rtol=1e-12)


def test_log_of_counts_table_equals_math_log():
    table = K._log_table()
    vals = [1.0, 2.0, 3.0, 17.0, 4095.0, 4096.0, 1e6, 0.5, 2.5, 4095.5, 1e300]
    for v in vals:
        assert K._log_count(v, table) == math.log(v)
    assert all(table[k] == math.log(k) for k in range(1, K.LOG_TABLE_SIZE))
