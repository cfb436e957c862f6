"""Tests of the NB simulator (``pyflashmm.simulate_rnaseq``).

Reference values are computed independently: NB moments from their formulas, CDFs from
``scipy.stats.nbinom``/``gamma``/``poisson``, method-of-moments estimates with NumPy on dense
copies. Tolerances of Monte-Carlo checks are stated in standard errors where they are used.
"""

from __future__ import annotations

import numba
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import scipy.stats as st

import pyflashmm as fm
from pyflashmm import _simulate as S
from pyflashmm._kernels import simulate as K

# significance level of the distributional tests (each test is a fixed seed, so a failure is
# reproducible; with ~40 such checks the chance of a false alarm at a given seed is ~1e-3)
ALPHA = 1e-4


def nb_pit(y, mu, size, rng):
    """Randomised probability integral transform: U(0, 1) iff y ~ NB(mu, size)."""
    p = size / (size + mu)
    lo = st.nbinom.cdf(y - 1, size, p)
    hi = st.nbinom.cdf(y, size, p)
    return lo + rng.uniform(size=np.shape(y)) * (hi - lo)


def nb_var(mu, size):
    return mu + mu**2 / size


def nb_var_of_sq_dev(mu, size):
    """Var((y - mu)^2) = kappa4 + 2 kappa2^2 from the NB cumulants."""
    k2 = mu + mu**2 / size
    k4 = mu + 7 * mu**2 / size + 12 * mu**3 / size**2 + 6 * mu**4 / size**3
    return k4 + 2 * k2**2


# ------------------------------------------------------------------------------------------
# the Numba samplers, called from test-only jitted loops


@numba.njit
def draw_gamma_poisson(st, shape, lam, n):
    """``n`` Gamma(shape) draws and ``n`` Poisson(lam) draws from the state ``st``."""
    out_g = np.empty(n)
    out_p = np.empty(n, dtype=np.int64)
    for i in range(n):
        out_g[i] = K.gamma(st, shape)
    for i in range(n):
        out_p[i] = K.poisson(st, lam)
    return out_g, out_p


@numba.njit
def draw_nb(st, mu, size, n):
    """``n`` draws of the per-cell sampler ``nb_draw`` (inversion / Gamma–Poisson)."""
    out = np.empty(n, dtype=np.int64)
    for i in range(n):
        out[i] = K.nb_draw(st, mu, size)
    return out


def test_gamma_and_poisson_samplers_match_scipy():
    for shape, lam in [(0.3, 3.0), (2.5, 25.0), (40.0, 400.0)]:
        state = np.array([11, 22, 33, 44], dtype=np.uint64)
        g, p = draw_gamma_poisson(state, shape, lam, 20000)
        assert st.kstest(g, st.gamma(shape).cdf).pvalue > ALPHA
        # chi-square of the Poisson draws over bins with expected count >= 20
        ks = np.arange(int(lam + 8 * np.sqrt(lam)) + 10)
        expected = st.poisson.pmf(ks, lam) * p.size
        observed = np.bincount(p, minlength=ks.size)[: ks.size].astype(float)
        keep = expected >= 20
        obs = np.append(observed[keep], p.size - observed[keep].sum())
        exp = np.append(expected[keep], p.size - expected[keep].sum())
        assert st.chisquare(obs, exp).pvalue > ALPHA


def _chisquare_nb(y, mu, size):
    """Chi-square p-value of counts ``y`` against NB(mu, size): bins with expected >= 20 and
    one pooled bin for the rest."""
    n = y.size
    ks = np.arange(int(mu + 40 * np.sqrt(mu + mu**2 / size)) + 50)
    expected = st.nbinom.pmf(ks, size, size / (size + mu)) * n
    observed = np.bincount(y, minlength=ks.size)[: ks.size].astype(float)
    keep = expected >= 20
    obs = np.append(observed[keep], n - observed[keep].sum())
    exp = np.append(expected[keep], n - expected[keep].sum())
    if exp[-1] < 1e-9 * n:  # no mass left for the pooled bin
        obs, exp = obs[:-1], exp[:-1] * obs[:-1].sum() / exp[:-1].sum()
    return st.chisquare(obs, exp).pvalue


MEAN_SIZE_GRID = [
    (mu, size)
    for mu in (1e-3, 0.05, 0.7, 3.0, 12.0, 31.0, 55.0)
    for size in (0.1, 1.0, 10.0, 100.0)
]


@pytest.mark.parametrize(("mu", "size"), MEAN_SIZE_GRID)
def test_nb_inverse_is_the_scipy_quantile(mu, size, rng):
    """Survival inversion: nb_inverse(v) = min{k : P(y > k) <= v} = nbinom.ppf(1 - v), checked
    value by value against scipy (v within 1e-9 of a CDF value are left out: rounding)."""
    v = rng.uniform(size=400)
    v = np.append(v, [1e-15, 1 - 1e-12])
    p = size / (size + mu)
    y = np.array([K.nb_inverse(x, mu, size) for x in v])
    ref = st.nbinom.isf(v, size, p)
    clear = np.abs(st.nbinom.sf(ref, size, p) - v) > 1e-9
    clear &= np.abs(st.nbinom.sf(ref - 1, size, p) - v) > 1e-9
    np.testing.assert_array_equal(y[clear], ref[clear])
    assert clear.mean() > 0.9


@pytest.mark.parametrize(("mu", "size"), MEAN_SIZE_GRID)
def test_nb_draw_chisquare(mu, size):
    """The per-cell sampler (inversion; Gamma–Poisson above MU_BIG) against scipy's pmf."""
    n = 200_000 if mu < 0.01 else 20_000
    # a well-mixed xoshiro state, as the simulator seeds it (tiny raw seeds start badly)
    state = np.random.SeedSequence([int(mu * 1000), int(size)]).generate_state(4, np.uint64)
    y = draw_nb(state, mu, size, n)
    assert _chisquare_nb(y, mu, size) > ALPHA


@pytest.mark.parametrize(
    ("mu_lo", "mu_hi", "size"),
    [(0.001, 0.0012, 0.1), (0.3, 0.35, 2.0), (2.0, 2.05, 1.0), (6.0, 6.05, 0.3), (20.0, 20.4, 5.0)],
)
def test_bracket_lookup_equals_direct_inversion(mu_lo, mu_hi, size, rng):
    """Where the two tables decide y, it is the direct inversion for every mean in between."""
    slo, shi, rat = np.empty(K.TABLE), np.empty(K.TABLE), np.empty(K.TABLE)
    logp0 = -size * np.log1p(mu_hi / size)
    pnz = -np.expm1(logp0)
    w = K._tables(mu_lo, mu_hi, logp0, pnz, size, slo, shi, rat, np.ones(1))
    v = pnz * rng.uniform(size=3000)
    decided = 0
    for x in v:
        k = K.bracket_lookup(x, slo, shi, w)
        if k >= 0:
            decided += 1
            for mu in (mu_lo, 0.5 * (mu_lo + mu_hi), mu_hi):
                assert K.nb_inverse(x, mu, size) == k
    # undecided: about (mu_hi - mu_lo) / P(y > 0) of the draws, plus the table tail
    assert decided >= v.size * (1 - 2 * (mu_hi - mu_lo) / pnz - 2 * K.TAIL) - 20


@pytest.mark.parametrize("size", [0.1, 0.7, 1.5, 4.0, 1e3])
def test_fine_table_guides_give_the_full_count(size, rng):
    """The guide of each fine-table row and bucket of V, plus one comparison, gives
    #{j : S(j) > V + EPS} (the count over the whole row), also at the bucket edges."""
    fptr, fj0 = np.array([0, 400]), np.array([3])
    ft, guide = K.fine_tables(np.array([size]), fptr, fj0, 0.05, 32)
    nb = K.FINE_BUCKETS
    edges = np.arange(1, nb) / nb
    v = np.concatenate([rng.uniform(size=200), edges, np.nextafter(edges, 0), [0.5**54, 1.0]])
    guided = 0
    for r in range(ft.shape[0]):
        t = v + K.EPS
        full = (ft[r][None, :] > t[:, None]).sum(axis=1)
        g = guide[r, np.minimum((v * nb).astype(np.int64), nb - 1)].astype(np.int64)
        ok = g != K.NO_GUIDE
        gg = g[ok]
        np.testing.assert_array_equal(full[ok], gg + (ft[r, gg] > t[ok]))
        guided += ok.mean()
    assert guided / ft.shape[0] > 0.5


@pytest.mark.parametrize(
    ("mu", "size", "sd_log_f"),
    [
        (0.02, 0.5, 0.4),
        (1e-3, 0.1, 0.4),
        (0.05, 100.0, 0.4),
        (0.3, 2.0, 0.4),
        (2.0, 2.0, 0.4),
        (2.0, 2.0, 0.03),
        (5.0, 0.3, 0.4),
        (8.0, 0.1, 0.05),
        (15.0, 5.0, 0.4),
        (12.0, 0.5, 0.03),
        (25.0, 10.0, 0.01),
        (60.0, 3.0, 0.4),
        (0.8, 1e4, 0.4),
        (3.0, 100.0, 0.05),
    ],
)
def test_nb_counts_follow_nb_with_cell_specific_means(mu, size, sd_log_f, rng):
    """Sparse chunks, dense runs with shared tables (narrow and wide spreads of the means, so
    many undecided lookups), long tables, and Gamma–Poisson; every cell has its own mean."""
    n = 30000
    f = np.exp(rng.normal(0.0, sd_log_f, n))
    h = rng.integers(0, 3, n)
    M = np.array([[mu, 0.5 * mu, 2.0 * mu]])
    Y = S._simulate_counts(M, np.array([size]), h, f, rng, block_cells=1000)
    assert isinstance(Y, sp.csr_matrix) and Y.shape == (n, 1)
    y = Y.toarray().ravel()
    m = M[0, h] * f
    z_mean = (y.sum() - m.sum()) / np.sqrt(nb_var(m, size).sum())
    z_var = (((y - m) ** 2).sum() - nb_var(m, size).sum()) / np.sqrt(
        nb_var_of_sq_dev(m, size).sum()
    )
    assert abs(z_mean) < 4.5
    assert abs(z_var) < 4.5
    assert st.kstest(nb_pit(y, m, size, rng), "uniform").pvalue > ALPHA


def test_nb_counts_constant_mean_chisquare(rng):
    mu, size, n = 1.3, 0.8, 40000
    Y = S._simulate_counts(np.array([[mu]]), np.array([size]), np.zeros(n, int), np.ones(n), rng)
    y = Y.toarray().ravel()
    ks = np.arange(60)
    expected = st.nbinom.pmf(ks, size, size / (size + mu)) * n
    observed = np.bincount(y, minlength=ks.size)[: ks.size].astype(float)
    keep = expected >= 20
    obs = np.append(observed[keep], n - observed[keep].sum())
    exp = np.append(expected[keep], n - expected[keep].sum())
    assert st.chisquare(obs, exp).pvalue > ALPHA


def test_de_factor_applies_only_to_treated_cells_of_its_cluster(rng):
    n = 40000
    cls = rng.integers(0, 3, n)
    treated = rng.integers(0, 2, n).astype(bool)
    M = np.array([[0.5], [0.5]])
    Y = S._simulate_counts(
        M,
        np.array([2.0, 2.0]),
        np.zeros(n, int),
        np.ones(n),
        rng,
        cell_cls=cls,
        cell_treated=treated,
        de_cls=np.array([1, -1]),
        de_mult=np.array([np.exp(1.0), np.exp(1.0)]),
    ).toarray()
    de_cells = treated & (cls == 1)
    for g, mult in ((0, np.e), (1, 1.0)):
        for sel, m in ((de_cells, 0.5 * mult), (~de_cells, 0.5)):
            y = Y[sel, g]
            z = (y.sum() - m * y.size) / np.sqrt(nb_var(m, 2.0) * y.size)
            assert abs(z) < 4.5, (g, m, z)


def test_buffer_sizes_and_overflow_replay_do_not_change_the_output(rng):
    """Blocks drawn one at a time, with tiny buffers (every block overflows and is replayed
    from its seed, the output arrays grow) give the same CSR bytes as the default."""
    n, G = 3000, 40
    M = np.exp(rng.normal(-1.0, 1.5, (G, 4)))
    size = rng.uniform(0.3, 5.0, G)
    h, f = rng.integers(0, 4, n), np.exp(rng.normal(0, 0.3, n))
    seed = np.random.SeedSequence(7)
    one = S._simulate_counts(M, size, h, f, np.random.default_rng(seed), block_cells=500)
    two = S._simulate_counts(
        M, size, h, f, np.random.default_rng(seed), block_cells=500, scratch_entries=1,
        slot_capacity=3, output_capacity=10,
    )  # fmt: skip
    for a in ("data", "indices", "indptr"):
        np.testing.assert_array_equal(getattr(one, a), getattr(two, a))
    assert one.has_sorted_indices and two.has_sorted_indices
    assert one.nnz > 0 and (one.data > 0).all()
    np.testing.assert_array_equal(one.toarray(), two.toarray())


@pytest.mark.parametrize("output_capacity", [None, 10])
def test_dense_buffers_give_the_same_output_as_scratch_buffers(rng, output_capacity):
    """Blocks drawn into dense rows × genes buffers and compressed into the CSR arrays give the
    same bytes as the scratch buffers of non-zeros, with or without the shared fine tables:
    sparse, dense, Gamma–Poisson and DE cells, a short last block, and
    (``output_capacity=10``) growing output arrays."""
    n, G = 2900, 30
    M = np.exp(rng.normal(0.0, 1.5, (G, 3)))
    M[:3] *= 40.0  # means above MU_BIG
    size = rng.uniform(0.3, 5.0, G)
    h, f = rng.integers(0, 3, n), np.exp(rng.normal(0, 0.3, n))
    cls, treated = rng.integers(0, 2, n), rng.integers(0, 2, n).astype(np.uint8)
    de_cls = np.where(np.arange(G) % 4 == 0, np.arange(G) % 2, -1)
    de_mult = np.exp(rng.uniform(-1.0, 1.0, G))
    out = []
    for dense, fine in ((False, False), (True, False), (True, True), (False, True)):
        kw = {"block_cells": 512, "dense_buffer": dense, "fine_grid": fine}
        kw.update(cell_cls=cls, cell_treated=treated, de_cls=de_cls, de_mult=de_mult)
        kw.update(output_capacity=output_capacity)
        out.append(S._simulate_counts(M, size, h, f, np.random.default_rng(11), **kw))
    sparse, dense = out[0], out[2]
    for other in out[1:]:
        for a in ("data", "indices", "indptr"):
            np.testing.assert_array_equal(getattr(sparse, a), getattr(other, a))
    assert dense.has_sorted_indices and (dense.data > 0).all()
    assert 0.2 < dense.nnz / (n * G) < 0.9


def test_counts_above_the_uint16_dense_buffers_are_drawn_again(rng):
    """Dense buffers hold uint16 counts; a wave with a larger count (a mean of 3e5 here) and
    the later ones are drawn again into the scratch buffers of non-zeros: the same bytes."""
    n, G = 1500, 12
    M = np.exp(rng.normal(0.0, 1.0, (G, 2)))
    M[5, 1] = 3e5  # group 1: the last cells, so the first waves stay in the dense buffers
    size = rng.uniform(0.5, 5.0, G)
    h, f = (np.arange(n) >= 1200).astype(np.int64), np.exp(rng.normal(0, 0.3, n))
    out = []
    for dense in (False, True):
        kw = {"block_cells": 256, "dense_buffer": dense, "scratch_entries": 2048}
        out.append(S._simulate_counts(M, size, h, f, np.random.default_rng(5), **kw))
    assert out[1].data.max() > 65535
    for a in ("data", "indices", "indptr"):
        np.testing.assert_array_equal(getattr(out[0], a), getattr(out[1], a))


# ------------------------------------------------------------------------------------------
# reproducibility


def _csr_bytes(m):
    return m.data.tobytes() + m.indices.tobytes() + m.indptr.tobytes()


def test_same_seed_identical_on_one_and_two_threads():
    kw = {"n_genes": 60, "n_cells": 9000, "var_subject_cluster": 0.05}
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        a = fm.simulate_rnaseq(rng=123, **kw)
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        b = fm.simulate_rnaseq(rng=np.random.SeedSequence(123), **kw)
    finally:
        numba.set_num_threads(before)
    assert _csr_bytes(a.counts) == _csr_bytes(b.counts)
    pd.testing.assert_frame_equal(a.obs, b.obs)
    pd.testing.assert_frame_equal(a.var, b.var)
    c = fm.simulate_rnaseq(rng=124, **kw)
    assert _csr_bytes(a.counts) != _csr_bytes(c.counts)


# ------------------------------------------------------------------------------------------
# FLASHMM semantics


@pytest.fixture(scope="module")
def reference():
    rng = np.random.default_rng(99)
    n, G = 1500, 80
    mu = np.exp(rng.normal(0.0, 1.0, G))
    size = rng.uniform(0.5, 4.0, G)
    counts = rng.negative_binomial(size, size / (size + mu), size=(n, G))
    counts[:, 3] = 0  # mean 0: dropped
    counts[:, 5] = rng.poisson(2.0, n)  # var <= mean likely ...
    counts[:, 5] = np.where(np.arange(n) % 2 == 0, 2, 3)  # ... and certainly here
    cells = [f"c{i}" for i in range(n)]
    genes = [f"g{j}" for j in range(G)]
    meta = pd.DataFrame(
        {
            "sam": rng.choice([f"s{i}" for i in range(8)], n),
            "cls": rng.choice(["T", "B", "NK"], n),
            "trt": rng.choice(["ctrl", "stim"], n),
        },
        index=cells,
    )
    return pd.DataFrame(counts, index=cells, columns=genes), meta


def test_moment_estimates_and_gene_filter(reference):
    counts, meta = reference
    sim = fm.simulate_rnaseq(counts, metadata=meta, n_cells=500, rng=1)
    R = counts.to_numpy().astype(float)
    mu = R.mean(axis=0)
    v = R.var(axis=0, ddof=1)
    np.testing.assert_allclose(sim.ref_mean_dispersion["mu"], mu, rtol=1e-12)
    ok = (mu > 0) & (v > mu)
    np.testing.assert_allclose(
        sim.ref_mean_dispersion["dispersion"].to_numpy()[ok],
        mu[ok] ** 2 / (v[ok] - mu[ok]),
        rtol=1e-9,
    )
    # n_genes=None keeps the eligible genes in reference order, with their names
    assert list(sim.var.index) == [g for g, k in zip(counts.columns, ok, strict=True) if k]
    assert "g3" not in sim.var.index and "g5" not in sim.var.index
    np.testing.assert_allclose(sim.var["mu"], mu[ok], rtol=1e-12)
    assert sim.counts.shape == (500, int(ok.sum()))


def test_resampled_genes_keep_reference_names(reference):
    counts, meta = reference
    sim = fm.simulate_rnaseq(counts, metadata=meta, n_genes=200, n_cells=300, rng=2)
    assert sim.var.index.is_unique and len(sim.var) == 200
    base = sim.var.index.str.replace(r"-\d+$", "", regex=True)
    assert (base == sim.var["ref_gene"]).all()
    np.testing.assert_array_equal(
        sim.var["ref_gene"].to_numpy(), counts.columns.to_numpy()[sim.var["ref_index"]]
    )
    np.testing.assert_allclose(
        sim.var["mu"], sim.ref_mean_dispersion["mu"].to_numpy()[sim.var["ref_index"]]
    )


def test_cells_and_library_sizes_come_from_reference(reference):
    counts, meta = reference
    sim = fm.simulate_rnaseq(counts, metadata=meta, n_cells=700, rng=3)
    ref = sim.obs["ref_cell"].to_numpy()
    np.testing.assert_array_equal(sim.obs["libsize"], counts.to_numpy().sum(axis=1)[ref])
    for col in ("sam", "cls", "trt"):
        np.testing.assert_array_equal(sim.obs[col].astype(str), meta[col].to_numpy()[ref])
    assert sim.treatment == "stim"  # last in sorted order
    flat = fm.simulate_rnaseq(counts, metadata=meta, adjust_library_size=False, rng=3)
    assert np.allclose(flat.obs["libsize"], counts.to_numpy().sum(axis=1).mean())


def test_random_metadata_nested_and_not_nested():
    sim = fm.simulate_rnaseq(n_genes=20, n_cells=4000, n_samples=12, n_clusters=5, rng=4)
    obs = sim.obs
    assert set(obs["cls"].astype(str)) == {"1", "2", "3", "4", "5"}
    assert set(obs["trt"].astype(str)) == {"A", "B"}
    assert sim.treatment == "B"
    arms_per_subject = obs.groupby("sam", observed=True)["trt"].nunique()
    assert (arms_per_subject == 1).all()
    assert all(str(s)[0] == str(t) for s, t in zip(obs["sam"], obs["trt"], strict=True))
    assert obs["sam"].nunique() <= 12
    crossed = fm.simulate_rnaseq(
        n_genes=20, n_cells=4000, n_samples=6, samples_nested=False, rng=4
    ).obs
    assert (crossed.groupby("sam", observed=True)["trt"].nunique() == 2).all()
    assert set(crossed["sam"].astype(str)) == {f"S{i}" for i in range(1, 7)}


def test_synthetic_reference_parameters():
    sim = fm.simulate_rnaseq(n_genes=300, n_cells=3000, rng=5)
    # mu_g = 1 + Pois(1): the MME means scatter around integers >= 1
    md = sim.ref_mean_dispersion
    assert md["mu"].min() > 0.7 and abs(md["mu"].mean() - 2.0) < 0.3
    # libsize = totals of the reference cells; default n_genes keeps the eligible genes
    assert sim.counts.shape[0] == 3000
    assert len(md) == 300


def test_de_genes(reference):
    counts, meta = reference
    sim = fm.simulate_rnaseq(
        counts, metadata=meta, n_genes=60, n_de_genes=9, min_beta=0.5, max_beta=0.8, rng=6
    )
    de = sim.de_genes
    assert len(de) == 9
    assert list(de["gene"]) == list(sim.var.index[-9:])  # the last genes
    assert ((de["beta"].abs() >= 0.5) & (de["beta"].abs() <= 0.8)).all()
    assert set(de["cluster"]) <= {"B", "NK", "T"}
    assert list(de["cluster"]) == sorted(de["cluster"])  # assigned in sorted cluster order
    assert sim.var["de"].sum() == 9 and (sim.var.loc[~sim.var["de"], "beta"] == 0).all()
    per_type = fm.simulate_rnaseq(
        counts, metadata=meta, n_genes=60, n_de_genes_per_type={"NK": 4}, direction="up", rng=6
    )
    assert list(per_type.de_genes["cluster"]) == ["NK"] * 4
    assert (per_type.de_genes["beta"] > 0).all()
    down = fm.simulate_rnaseq(
        counts, metadata=meta, n_genes=60, direction="down", min_beta=-1, max_beta=-0.3, rng=6
    )
    assert (down.de_genes["beta"] < 0).all()
    null = fm.simulate_rnaseq(counts, metadata=meta, n_genes=60, null=True, rng=6)
    assert len(null.de_genes) == 0 and not null.var["de"].any()


def test_counts_match_model_means_per_gene():
    """Per-gene sums vs the model's means (true random effects, DE, library factors)."""
    sim = fm.simulate_rnaseq(
        n_genes=40,
        n_cells=20000,
        n_de_genes=10,
        min_beta=0.5,
        var_subject_cluster=0.05,
        libsize_cluster_scale={"1": 2.0, "2": 0.5},
        rng=7,
    )
    obs, var = sim.obs, sim.var
    loglib = np.log(obs["libsize"].to_numpy())
    f = np.exp(loglib - loglib.mean())
    b = sim.random_effects.loc[obs["sam"].astype(str)].to_numpy()
    pair = obs["sam"].astype(str) + ":" + obs["cls"].astype(str)
    u = sim.random_effects_subject_cluster.loc[pair].to_numpy()
    treated = (obs["trt"].astype(str) == sim.treatment).to_numpy()
    de_on = treated[:, None] & (
        obs["cls"].astype(str).to_numpy()[:, None] == var["cluster"].astype(str).to_numpy()
    )
    mu = var["mu"].to_numpy() * np.exp(b + u + de_on * var["beta"].to_numpy()) * f[:, None]
    size = var["size"].to_numpy()
    Y = sim.counts.toarray()
    vv = nb_var(mu, size)
    z_mean = (Y.sum(0) - mu.sum(0)) / np.sqrt(vv.sum(0))
    z_var = (((Y - mu) ** 2).sum(0) - vv.sum(0)) / np.sqrt(nb_var_of_sq_dev(mu, size).sum(0))
    # 40 genes: |z| beyond 4 has probability ~2.5e-3 overall under the model
    assert np.abs(z_mean).max() < 4.0
    assert np.abs(z_var).max() < 4.5
    # and the z's look standard normal (mean within 4 se, sd within 0.6..1.5)
    assert abs(z_mean.mean()) < 4 / np.sqrt(40) and 0.6 < z_mean.std() < 1.5
    pit = nb_pit(Y[:, 0], mu[:, 0], size[0], np.random.default_rng(0))
    assert st.kstest(pit, "uniform").pvalue > ALPHA
    # cluster-specific library sizes: the factor is applied to libsize itself
    assert np.isclose(
        obs.loc[obs["cls"] == "1", "libsize"].mean() / obs.loc[obs["cls"] == "3", "libsize"].mean(),
        2.0,
        rtol=0.1,
    )


# ------------------------------------------------------------------------------------------
# output


def test_output_types_anndata_and_h5ad(tmp_path):
    sim = fm.simulate_rnaseq(n_genes=25, n_cells=800, rng=8)
    assert isinstance(sim.counts, sp.csr_matrix)
    assert sim.counts.dtype == np.int32 and sim.counts.has_sorted_indices
    assert list(sim.obs.columns[:4]) == ["sam", "cls", "trt", "libsize"]
    assert list(sim.de_genes.columns) == ["gene", "beta", "cluster"]
    with pytest.raises(AttributeError):
        sim.treatment = "A"  # frozen
    ad = sim.to_anndata()
    assert ad.shape == (800, 25) and ad.uns["treatment"] == sim.treatment
    path = tmp_path / "sim.h5ad"
    sim.write_h5ad(path)
    import anndata

    back = anndata.read_h5ad(path)
    assert (back.X != sim.counts).nnz == 0
    np.testing.assert_array_equal(back.var_names, sim.var.index)
    np.testing.assert_allclose(back.uns["de_genes"]["beta"], sim.de_genes["beta"])
    np.testing.assert_allclose(back.varm["random_effects"], sim.random_effects.to_numpy().T)


def test_cli_simulate_writes_h5ad(tmp_path):
    from pyflashmm.cli import main

    out = tmp_path / "cli.h5ad"
    argv = ["simulate", "--n-genes", "15", "--n-cells", "300", "--seed", "3", "--quiet", "-o",
            str(out)]  # fmt: skip
    assert main(argv) == 0
    import anndata

    ad = anndata.read_h5ad(out)
    assert ad.shape == (300, 15)
    expected = fm.simulate_rnaseq(n_genes=15, n_cells=300, rng=3)
    assert (ad.X != expected.counts).nnz == 0


# ------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"min_beta": 1.0, "max_beta": 0.5}, "min_beta"),
        ({"min_beta": -0.5, "max_beta": 0.5}, "direction='both'"),
        ({"direction": "up", "min_beta": -1.0, "max_beta": 1.0}, "min_beta > 0"),
        ({"direction": "down"}, "max_beta < 0"),
        ({"direction": "sideways"}, "direction"),
        ({"n_samples": 1}, "n_samples"),
        ({"treatment": "Z"}, "treatment"),
        ({"n_de_genes": 50}, "n_de_genes"),
        ({"p_de_genes_type": [1.0, 2.0]}, "p_de_genes_type"),
        ({"var_random_effects": -0.1}, "var_random_effects"),
        ({"rng": "seed"}, "rng"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    err = TypeError if "rng" in kwargs else ValueError
    with pytest.raises(err, match=match):
        fm.simulate_rnaseq(n_genes=20, n_cells=100, **kwargs)


def test_bad_reference_and_metadata_raise(reference):
    counts, meta = reference
    with pytest.raises(ValueError, match="counts must be non-negative integers"):
        fm.simulate_rnaseq(counts - 1, metadata=meta)
    with pytest.raises(ValueError, match="counts must be non-negative integers"):
        fm.simulate_rnaseq(counts + 0.5, metadata=meta)
    with pytest.raises(ValueError, match="metadata lacks"):
        fm.simulate_rnaseq(counts, metadata=meta.drop(columns="cls"))
    with pytest.raises(ValueError, match="metadata has 1499 rows"):
        fm.simulate_rnaseq(counts, metadata=meta.iloc[1:])
    shuffled = meta.iloc[::-1]
    with pytest.raises(ValueError, match="metadata rows do not match"):
        fm.simulate_rnaseq(counts, metadata=shuffled)
    with pytest.raises(ValueError, match="n_genes and n_cells are required"):
        fm.simulate_rnaseq(n_genes=10)


# ------------------------------------------------------------------------------------------
# recovery by pyflashmm's linear mixed model on log counts (REML, Satterthwaite intervals)


@pytest.mark.slow
def test_lmm_recovers_random_effect_variance_and_de_effects():
    """High counts (mu ~ e^5, size 20-60) make log1p(y) ~ log mu + b + beta + small noise, so the
    subject variance on the log scale is ~ var_random_effects and the cls:trt coefficients are
    ~ beta (the log1p bias differs between arms by < 0.005, far below the se ~ 0.15)."""
    rng = np.random.default_rng(2024)
    G, n_ref = 20, 3000
    mu = np.exp(rng.uniform(4.5, 5.5, G))
    size = rng.uniform(20.0, 60.0, G)
    ref = rng.negative_binomial(size, size / (size + mu), size=(n_ref, G))
    var_b, n_samples = 0.1, 24
    sim = fm.simulate_rnaseq(
        ref,
        n_cells=4000,
        n_samples=n_samples,
        n_clusters=2,
        n_de_genes_per_type=[8, 8],
        min_beta=0.5,
        max_beta=1.0,
        adjust_library_size=False,
        var_random_effects=var_b,
        rng=5,
    )
    # pyflashmm's own LMM (REML from summary statistics) on log1p counts, Satterthwaite CIs
    from scipy import stats as sps

    dsg = fm.design(sim.obs, "~ 0 + cls + cls:trt", random="sam")
    fit = fm.lmmfit(sim.counts, dsg.X_frame(), dsg.Z, dsg.d, transform="log1p")
    assert fit.converged.all()
    var_est = fit.theta[:, 0]
    covered, n_de = 0, 0
    for g in range(fit.n_genes):
        row = sim.var.iloc[g]
        if row["de"]:
            n_de += 1
            name = f"cls{row['cluster']}:trt{sim.treatment}"
            t = fm.lmmtest(fit, {name: name}).iloc[g]
            half = sps.t.ppf(0.975, t["df"]) * t["se"]
            covered += t["log_fc"] - half <= row["beta"] <= t["log_fc"] + half
    var_est = np.array(var_est)
    # REML variance of 24 subjects (2 arms): se ~ var_b sqrt(2 / 22) per gene
    se_mean = var_b * np.sqrt(2 / (n_samples - 2)) / np.sqrt(G)
    assert abs(var_est.mean() - var_b) < 4 * se_mean, var_est
    # 95 % intervals: P(fewer than 12 of 16 covered) ~ 7e-4 under nominal coverage
    assert n_de == 16 and covered >= 12
