"""Unit tests of the NB-GLM pieces against independent NumPy/statsmodels oracles."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy import stats

from pyflashmm import NbGlmFit, nbglm, pseudobulk, size_factors
from pyflashmm._kernels import nb as K
from pyflashmm._nbglm.count_block import CountBlock


def _sim(rng, m=16, G=120, p_de=0.3):
    grp = np.repeat([0.0, 1.0], m // 2)
    X = np.column_stack([np.ones(m), grp])
    base = np.exp(rng.normal(3.5, 1.2, G))
    lfc = np.where(rng.random(G) < p_de, rng.normal(0, 1, G), 0.0)
    sf = np.exp(rng.normal(0, 0.3, m))
    mu = sf[:, None] * base[None, :] * np.exp(np.outer(grp, lfc))
    disp = 0.05 + 1.0 / base
    Y = rng.negative_binomial(1 / disp, 1 / (1 + mu * disp)).astype(float)
    return Y, X


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


def test_bad_input(rng):
    Y, X = _sim(rng)
    with pytest.raises(ValueError, match="negative"):
        nbglm(-Y, X)
    with pytest.raises(ValueError, match="non-integer"):
        nbglm(Y + 0.5, X)
    Yn = Y.copy()
    Yn[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        nbglm(Yn, X)
    with pytest.raises(ValueError, match="full column rank"):
        nbglm(Y, np.column_stack([X, X[:, 1]]))
    with pytest.raises(ValueError, match="size_factors has length"):
        nbglm(Y, X, size_factors=np.ones(3))
    with pytest.raises(ValueError, match="size_factors must be"):
        nbglm(Y, X, size_factors=np.r_[0.0, np.ones(Y.shape[0] - 1)])
    with pytest.raises(ValueError, match="X must have shape"):
        nbglm(Y, X[:-1])


def test_dlog_posterior_matches_finite_differences(rng):
    Y, X = _sim(rng, G=3)
    mu = np.maximum(Y.mean(axis=0)[None, :] * np.ones((Y.shape[0], 1)), 0.5).T.copy()
    y = np.ascontiguousarray(Y.T[1])
    m, p = X.shape
    w, B, L, Bi, dB = np.empty(m), *(np.empty((p, p)) for _ in range(4))
    for a in (-4.0, -1.0, 0.5):
        args = (y, mu[1], X, -1.0, 0.7, True, True)
        h = 1e-5
        fd = (K.log_posterior(a + h, *args, w, B, L) - K.log_posterior(a - h, *args, w, B, L)) / (
            2 * h
        )
        an = K.dlog_posterior(a, *args, w, B, L, Bi, dB)
        assert abs(fd - an) < 1e-6 * max(1, abs(an))


def test_nb_logpdf_matches_scipy():
    # scipy evaluates lnΓ(y + 1/α) − lnΓ(1/α) directly and loses ~1e-8 at α = 1e-7
    # (lnΓ(1e7) ≈ 1.5e8), hence the looser tolerance for that case.
    cases = [(0, 3.0, 0.1, 1e-12), (5, 2.0, 1e-7, 1e-7), (250, 300.0, 0.3, 1e-10),
             (7, 1e-3, 2.0, 1e-10)]  # fmt: skip
    for y, mu, a, tol in cases:
        r = 1 / a
        ref = stats.nbinom.logpmf(y, r, r / (r + mu))
        assert abs(K.nb_logpdf(float(y), mu, a) - ref) < tol * max(1, abs(ref))


def test_fit_beta_matches_statsmodels(rng):
    """IRLS at fixed α vs statsmodels' NB GLM (ridge 1e-6 changes β by < 1e-6)."""
    import statsmodels.api as sm

    Y, X = _sim(rng, m=20, G=5)
    sf = np.exp(rng.normal(0, 0.2, X.shape[0]))
    alpha = np.full(5, 0.1)
    beta0 = np.zeros((5, 2))
    beta0[:, 0] = np.log(Y.mean(axis=0) + 0.1)
    from pyflashmm._nbglm import dispersion as D
    from pyflashmm._nbglm.glm import _sample_classes

    Xr, lab = D.design_rows(X)
    classes = _sample_classes(sf, lab, Xr.shape[0])
    assert classes[1].size == X.shape[0]  # every sample its own class: the per-sample IRLS
    beta, sigma, *_ = K.fit_beta_rows(
        *CountBlock.of(Y.T).csr, sf, Xr, lab, *classes, alpha, beta0,
        np.empty((2, Xr.shape[0])), np.full(2, 1e-6 / math.log(2) ** 2), 1e-300, 1e-12, 200,
        False,
    )  # fmt: skip
    for g in range(5):
        mod = sm.GLM(Y[:, g], X, family=sm.families.NegativeBinomial(alpha=0.1),
                     offset=np.log(sf)).fit(tol=1e-13)  # fmt: skip
        np.testing.assert_allclose(beta[g], mod.params, atol=1e-5)
        np.testing.assert_allclose(np.sqrt(np.diag(sigma[g])), mod.bse, rtol=1e-4)


def test_sparse_equals_dense_and_frame(rng):
    Y, X = _sim(rng)
    Y[:, 5] = 0
    f1 = nbglm(Y, X, size_factors="poscounts")
    f2 = nbglm(sp.csr_matrix(Y), X, size_factors="poscounts", block_size=37)
    assert isinstance(f1, NbGlmFit)
    assert f1.all_zero[5] and np.isnan(f1.p_value[5])
    np.testing.assert_allclose(f1.p_value, f2.p_value, rtol=1e-9, equal_nan=True)
    df = f1.to_frame()
    assert list(df.columns[:9]) == ["variable", "contrast", "log_fc", "se", "stat", "df",
                                    "p_value", "adj_p_value", "method"]  # fmt: skip
    assert (df["method"] == "nbglm").all()
    np.testing.assert_allclose(f1.natural_log_fold_change, f1.coef[:, 1], equal_nan=True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        f1.base_mean = None  # type: ignore[misc]


def test_lrt_and_single_cell_preset(rng):
    Y, X = _sim(rng, m=30, G=60)
    f = nbglm(Y, X, test="lrt")
    assert f.test == "lrt" and np.all(f.stat[~np.isnan(f.stat)] > -1e-6)
    fs = nbglm(Y, X, preset="single_cell")
    assert fs.test == "lrt"
    assert np.isfinite(fs.p_value).sum() > 50


def test_pseudobulk_matches_groupby(rng):
    n, G = 300, 7
    Y = rng.poisson(1.0, size=(n, G)).astype(float)
    obs = pd.DataFrame({"sam": rng.choice(["s1", "s2", "s3"], n), "cls": rng.choice(["a", "b"], n)})
    pb, tab = pseudobulk(sp.csr_matrix(Y), obs, by=["sam", "cls"], chunk_size=64)
    ref = pd.DataFrame(Y).groupby([obs["sam"], obs["cls"]], sort=False).sum()
    for k, row in tab.iterrows():
        np.testing.assert_allclose(pb[k], ref.loc[(row["sam"], row["cls"])].to_numpy())
        assert row["n_cells"] == ((obs["sam"] == row["sam"]) & (obs["cls"] == row["cls"])).sum()
    np.testing.assert_allclose(tab["libsize"], pb.sum(axis=1))
    pb2, _ = pseudobulk(Y, obs, by=["sam", "cls"])
    np.testing.assert_allclose(pb, pb2)
    with pytest.raises(ValueError, match="by"):
        pseudobulk(Y, obs, by=["nope"])


def test_pseudobulk_sparse_integer_csc_and_duplicate_entries(rng):
    n, G = 200, 5
    Y = rng.poisson(2.0, size=(n, G))
    obs = pd.DataFrame({"sam": rng.choice(["s1", "s2", "s3", "s4"], n)})
    ref = pd.DataFrame(Y).groupby(obs["sam"], sort=False).sum().to_numpy(float)
    pb, _ = pseudobulk(sp.csc_matrix(Y.astype(np.int32)), obs, by="sam", chunk_size=37)
    np.testing.assert_array_equal(pb, ref)
    # the same matrix with every entry stored twice, as halves (non-canonical CSR)
    csr = sp.csr_matrix(Y)
    half = csr.data // 2
    data = np.column_stack([half, csr.data - half]).ravel()
    indices = np.repeat(csr.indices, 2)
    dup = sp.csr_matrix((data, indices, csr.indptr * 2), shape=Y.shape)
    assert dup.nnz == 2 * csr.nnz
    pb2, _ = pseudobulk(dup, obs, by="sam", chunk_size=50)
    np.testing.assert_array_equal(pb2, ref)


def test_trimmed_means_by_selection_match_sorting(rng):
    """Selection-based trimmed means (ties, many zeros, the counted value v) equal R's
    sorted ``mean(x, trim=)``; the robust variance kernel equals its NumPy definition."""
    from pyflashmm._nbglm._util import trimmed_mean

    for t in range(300):
        n = int(rng.integers(1, 60))
        A = rng.choice([0.0, 0.5, 1.0, 2.0, 7.5], (3, n)) if t % 2 else rng.random((3, n))
        A[:, rng.random(n) < 0.4] = 0.0
        trim = float(rng.choice([1 / 8, 1 / 4, 1 / 3]))
        v0 = A[np.arange(3), rng.integers(0, n, 3)] if t % 3 else np.zeros(3)
        np.testing.assert_allclose(K.trimmed_mean_rows(A, v0, trim), trimmed_mean(A, trim, 1),
                                   rtol=1e-13, atol=0)  # fmt: skip
    Y = rng.negative_binomial(2, 0.6, (7, 90)).astype(float)
    sf = np.exp(rng.normal(0, 0.3, 90))
    sets = [np.arange(0, 90, 2), np.arange(1, 60, 2), np.arange(61, 90, 2)]
    trims = np.array([1 / 8, 1 / 4, 1 / 3])
    scales = np.array([1.51, 1.86, 2.04])
    off = np.cumsum([0] + [c.size for c in sets]).astype(np.int64)
    got = K.robust_var_rows(
        *CountBlock.of(Y).csr, sf, np.concatenate(sets).astype(np.int64), off, trims, scales
    )
    Q = Y / sf
    ref = np.max([s * trimmed_mean((Q[:, c] - trimmed_mean(Q[:, c], tr, 1)[:, None]) ** 2, tr, 1)
                  for c, tr, s in zip(sets, trims, scales, strict=True)], axis=0)  # fmt: skip
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=0)


def test_fit_beta_rows_classes_equal_per_sample(rng):
    """IRLS over classes of samples sharing size factor and design row = per-sample IRLS."""
    from pyflashmm._nbglm import dispersion as D
    from pyflashmm._nbglm.glm import _sample_classes

    m = 300
    X = np.column_stack([np.ones(m), rng.integers(0, 2, m), rng.integers(0, 2, m)]).astype(float)
    sf = rng.choice([0.5, 0.8, 1.0, 1.7], m)
    Y = rng.negative_binomial(3, 0.7, (6, m)).astype(float)
    Y[0] = 0.0
    Y[0, :2] = 1.0
    Xr, lab = D.design_rows(X)
    R = Xr.shape[0]
    classes = _sample_classes(sf, lab, R)
    assert classes[1].size < m
    q, r = np.linalg.qr(X)
    first = np.array([np.flatnonzero(lab == k)[0] for k in range(R)])
    P = np.ascontiguousarray(np.linalg.solve(r, q[first].T))
    lam = np.full(3, 1e-6)
    alpha = np.full(6, 0.3)
    common = (P, lam, 1e-6, 1e-10, 100, True)
    order, off = D.row_order(lab, R)  # every sample its own class, numbered by design row
    own = np.empty(m, np.int64)
    own[order] = np.arange(m)
    blk = CountBlock.of(Y).csr
    a = K.fit_beta_rows(*blk, sf, Xr, lab, *classes, alpha, np.empty((1, 3)), *common)
    b = K.fit_beta_rows(*blk, sf, Xr, lab, own, np.ones(m), sf[order], lab[order], off, alpha,
                        np.empty((1, 3)), *common)  # fmt: skip
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("r", [1e-4, 0.7, 25.0, 1e8])
def test_count_table_sums_term_by_term_match_scipy(r):
    # Σ_k c_k[lnΓ(v_k + r) − lnΓ(r)] and Σ_k c_k[ψ(r) − ψ(v_k + r)] from the survival counts
    # N_i (term by term) and from K lnΓ/ψ calls, against scipy on the cells directly
    from scipy.special import digamma, gammaln

    rng = np.random.default_rng(5)
    y = rng.negative_binomial(2.0, 0.2, 400).astype(float)
    vals, cnts = np.empty(y.size), np.empty(y.size)
    nk, _ = K._value_table(y, vals, cnts, np.empty(y.size, np.int64))
    surv = K._survival_counts(vals, cnts, nk)
    assert surv.size == vals[nk - 1]  # integer counts, v_max small: the term-by-term form
    assert surv[0] == np.count_nonzero(y) and surv[-1] == np.count_nonzero(y == vals[nk - 1])
    pos = y[y > 0]
    lg_ref = np.sum(gammaln(pos + r) - gammaln(r))
    dg_ref = np.sum(digamma(r) - digamma(pos + r))
    tb = np.empty(surv.size)
    for table in (surv, np.empty(0)):
        lg = K._lgamma_sum(r, nk, vals, cnts, table, tb)
        dg = K._digamma_sum(r, nk, vals, cnts, table, tb)
        # scipy's own differences of large lnΓ values lose digits when r is large
        scale = np.sum(np.abs(gammaln(pos + r))) * 1e-15 + 1e-12
        assert abs(lg - lg_ref) <= scale
        assert dg == pytest.approx(dg_ref, rel=1e-10)


def test_survival_counts_fall_back_on_large_or_fractional_counts():
    vals = np.array([1.0, 1e6, 0.0])
    cnts = np.array([3.0, 1.0, 0.0])
    assert K._survival_counts(vals, cnts, 2).size == 0  # v_max ≫ K: lnΓ calls
    vals = np.array([1.5, 2.0])
    assert K._survival_counts(vals, cnts, 2).size == 0  # not integers
    assert K._survival_counts(vals, cnts, 0).size == 0  # no non-zero count


def test_count_problems_finds_first_of_each_kind():
    from pyflashmm._kernels.checks import count_problems

    x = np.array([0.0, 3.0, 2.5, -1.0, np.inf, np.nan, -np.inf, -2.0, np.nan, 0.5])
    # [first NaN, first ±inf, first negative (finite), first non-integer]
    assert count_problems(x).tolist() == [5, 4, 3, 2]
    assert count_problems(np.arange(10.0)).tolist() == [-1, -1, -1, -1]


def test_csr_rows_dense_matches_scipy_with_duplicates():
    from pyflashmm._kernels.aggregate import csr_rows_dense

    rng = np.random.default_rng(3)
    A = sp.random(40, 30, density=0.2, random_state=4, format="csr")
    # row 0 gets column 1 stored three times (a non-canonical CSR, built from its arrays)
    extra = np.array([1, 1, 1], dtype=A.indices.dtype)
    indices = np.r_[extra, A.indices]
    data = np.r_[[1.0, 2.0, 4.0], A.data]
    indptr = np.r_[0, A.indptr[1:] + 3]
    dup = sp.csr_matrix((data, indices, indptr), shape=A.shape)
    assert not dup.has_canonical_format
    rows = np.r_[0, rng.choice(np.arange(1, 40), 11, replace=False)].astype(np.int64)
    got = csr_rows_dense(dup.indptr, dup.indices, dup.data, rows, 30)
    np.testing.assert_array_equal(got, dup[rows].toarray())
    assert got[0, 1] == A[0, 1] + 7.0


def test_cell_classes_are_the_sorted_distinct_row_size_factor_pairs():
    from pyflashmm._nbglm.dispersion import cell_classes

    rng = np.random.default_rng(8)
    lab = rng.integers(0, 3, 200)
    sf = rng.choice([0.5, 1.0, 1.5, 2.0, 2.5], 200)
    cls, size, off, n_cls = cell_classes(sf, lab, 3)
    key = np.column_stack([lab, sf])
    uniq, inv, cnt = np.unique(key, axis=0, return_inverse=True, return_counts=True)
    assert n_cls == uniq.shape[0]
    np.testing.assert_array_equal(cls, inv.ravel())
    np.testing.assert_array_equal(size, cnt)
    np.testing.assert_array_equal(off, np.r_[0, np.cumsum(np.bincount(uniq[:, 0].astype(int)))])


def test_cooks_distances_and_summaries_match_numpy():
    """Cook's distances from per-row fit quantities and per-class terms vs the per-sample
    formula in NumPy; the row summaries vs NumPy on the kernel's own distance matrix."""
    from pyflashmm._nbglm import dispersion as D
    from pyflashmm._nbglm.glm import _sample_classes

    rng = np.random.default_rng(11)
    G, m, p, minmu = 30, 400, 3, 0.5
    X = np.column_stack([np.ones(m), rng.integers(0, 2, m), rng.integers(0, 3, m)]).astype(float)
    Xr, lab = D.design_rows(X)
    R = Xr.shape[0]
    sf = rng.choice([0.3, 0.8, 1.0, 1.7, 2.2], m)
    cls, _size, csf, clab, _off = _sample_classes(sf, lab, R)
    assert csf.size < m
    row_mu = np.exp(rng.normal(0, 1, (G, R)))
    row_wmu = row_mu * np.exp(rng.normal(0, 0.1, (G, R)))
    row_hat = rng.uniform(1e-4, 0.05, (G, R))
    row_hat[3] = np.nan  # a gene whose XᵀWX was not positive definite
    alpha = rng.uniform(0.01, 1.0, G)
    a = rng.uniform(0.04, 0.5, G)
    Y = rng.poisson(row_mu[:, lab] * sf * 1.3).astype(float)
    Y[8] = 2.0  # ties: the first largest distance counts
    args = (cls, csf, clab, row_mu, row_wmu, row_hat, alpha, a, float(p), minmu)
    got = K.cooks_matrix(*CountBlock.of(Y).csr, *args)
    mu = sf * row_mu[:, lab]
    mw = np.maximum(sf * row_wmu[:, lab], minmu)
    h = mw / (1 + alpha[:, None] * mw) * row_hat[:, lab]
    ref = (Y - mu) ** 2 / (mu + a[:, None] * mu**2) / p * h / (1 - h) ** 2
    np.testing.assert_allclose(got, ref, rtol=1e-13)
    assert np.isnan(got[3]).all()
    use = rng.random(m) < 0.7
    keep = rng.random(m) < 0.5
    mx, mx_keep, mx_all, n_above = K.cooks_summary(*CountBlock.of(Y).csr, *args, use, keep)
    np.testing.assert_array_equal(mx, got[:, use].max(axis=1))
    np.testing.assert_array_equal(mx_keep, np.where(keep, got, 0.0)[:, use].max(axis=1))
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(mx_all[np.arange(G) != 3], np.nanmax(np.delete(got, 3, 0), 1))
    assert mx_all[3] == -np.inf
    at = np.take_along_axis(Y, np.argmax(got, axis=1)[:, None], axis=1)
    np.testing.assert_array_equal(n_above, (Y > at).sum(axis=1))


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


def test_row_means_line_search_equals_the_dense_means():
    # group design: μ kept as row means (expanded per gene in the kernel) or as the G×m matrix
    from pyflashmm._nbglm import dispersion as D

    rng = np.random.default_rng(14)
    Y, X = _sim(rng, m=24, G=40)
    Y = np.ascontiguousarray(Y.T)  # genes × samples, as the line search takes it
    sf = np.exp(rng.normal(0.0, 0.3, 24))
    sf[:6] = sf[6:12]  # some samples share a size factor: classes of several samples
    lab = D.design_rows(X)[1]
    R = lab.max() + 1
    means = np.array([[np.mean(y[lab == r] / sf[lab == r]) for r in range(R)] for y in Y])
    rm = D.RowMeans(means, sf, lab, 0.5)
    a0 = np.full(Y.shape[0], np.log(0.1))
    got = D.fit_disp_line(Y, rm, X, a0, sf=sf)
    ref = D.fit_disp_line(Y, rm.dense(), X, a0, sf=sf)
    for a, b in zip(got, ref, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_nbglm_results_do_not_depend_on_the_thread_count(tmp_path):
    import subprocess
    import sys

    script = (
        "import numpy as np, scipy.sparse as sp, sys\n"
        "from pyflashmm import nbglm\n"
        "rng = np.random.default_rng(15)\n"
        "m, G = 400, 60\n"
        "grp = rng.integers(0, 2, m)\n"
        "X = np.column_stack([np.ones(m), grp])\n"
        "Y = rng.negative_binomial(2, 0.6, (m, G)).astype(float)\n"
        "f = nbglm(sp.csr_matrix(Y), X, preset='single_cell', block_size=16)\n"
        "np.savez(sys.argv[1], d=f.dispersion, b=f.log2_fold_change, p=f.p_value)\n"
    )
    out = {}
    for t in (1, 2):
        env = {**__import__("os").environ, "NUMBA_NUM_THREADS": str(t)}
        path = tmp_path / f"t{t}.npz"
        subprocess.run([sys.executable, "-c", script, str(path)], env=env, check=True)
        out[t] = np.load(path)
    for k in ("d", "b", "p"):
        np.testing.assert_array_equal(out[1][k], out[2][k])


def test_count_block_forms_agree():
    """CountBlock from dense, from (views of) CSR rows and from CSR rows with gaps: the same
    counts, sample indices increasing, no explicit zeros."""
    rng = np.random.default_rng(3)
    Y = rng.poisson(0.4, (40, 30)).astype(float)
    Y[[4, 5, 17]] = 0.0  # all-zero genes (skipped by the pipeline's blocks)
    Yt = sp.csr_matrix(Y)
    keep = np.flatnonzero(Y.sum(axis=1) > 0)
    view = CountBlock.from_csr_rows(Yt, keep[:20])  # skips empty rows: arrays are views
    assert np.shares_memory(view.data, Yt.data)
    copy = CountBlock.from_csr_rows(Yt, keep[::-1][:20])  # decreasing rows: a copy
    assert not np.shares_memory(copy.data, Yt.data)
    gap = CountBlock.from_csr_rows(Yt, [0, 2, 7])  # skips non-empty rows 1, 3, 6: a copy
    assert not np.shares_memory(gap.data, Yt.data)
    np.testing.assert_array_equal(gap.dense(), Y[[0, 2, 7]])
    np.testing.assert_array_equal(view.dense(), Y[keep[:20]])
    np.testing.assert_array_equal(copy.dense(), Y[keep[::-1][:20]])
    dense = CountBlock.from_dense(Y)
    np.testing.assert_array_equal(dense.dense(), Y)
    np.testing.assert_array_equal(CountBlock.of(Yt).dense(), Y)
    for blk in (dense, CountBlock.of(Yt)):
        assert (blk.data != 0).all() and blk.indices.dtype == np.int32
        for g in range(blk.shape[0]):
            i = blk.indices[blk.indptr[g] : blk.indptr[g + 1]]
            np.testing.assert_array_equal(i, np.flatnonzero(Y[g]))
        np.testing.assert_array_equal(blk.rows([7, 2]), Y[[7, 2]])
        np.testing.assert_array_equal(blk.rows(9), Y[[9]])
        np.testing.assert_array_equal(blk.subset([3, 8, 1]).dense(), Y[[3, 8, 1]])
    # a sparse block never keeps a dense copy
    sparse_blk = CountBlock.of(Yt)
    assert sparse_blk.dense() is not sparse_blk.dense()
    # explicit zeros and duplicate entries: summed, zeros dropped, the caller's matrix unchanged
    coo = sp.coo_matrix(([2.0, 3.0, 0.0], ([0, 0, 1], [1, 1, 2])), shape=(2, 4))
    blk = CountBlock.of(coo)
    np.testing.assert_array_equal(blk.dense(), [[0, 5, 0, 0], [0, 0, 0, 0]])
    assert blk.data.tolist() == [5.0]
    csr = sp.csr_matrix(([2.0, 3.0, 0.0], [1, 1, 2], [0, 2, 3]), shape=(2, 4))
    CountBlock.of(csr)
    assert csr.data.tolist() == [2.0, 3.0, 0.0] and csr.indptr.tolist() == [0, 2, 3]


def test_intercept_fit_matches_numpy(rng):
    Y = rng.negative_binomial(2, 0.3, (25, 60)).astype(float)
    sf = rng.uniform(0.5, 2.0, 60)
    alpha = rng.uniform(0.05, 1.0, 25)
    bm, xtwx = K.intercept_fit(*CountBlock.from_dense(Y).csr, sf, alpha)
    ref = (Y / sf).mean(axis=1)
    np.testing.assert_allclose(bm, ref, rtol=1e-14)
    w = 1.0 / (1.0 / np.outer(ref, sf) + alpha[:, None])
    np.testing.assert_allclose(xtwx, w.sum(axis=1), rtol=1e-13)


def test_log_of_counts_table_equals_math_log():
    table = K._log_table()
    vals = [1.0, 2.0, 3.0, 17.0, 4095.0, 4096.0, 1e6, 0.5, 2.5, 4095.5, 1e300]
    for v in vals:
        assert K._log_count(v, table) == math.log(v)
    assert all(table[k] == math.log(k) for k in range(1, K.LOG_TABLE_SIZE))
