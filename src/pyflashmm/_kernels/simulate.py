"""Numba kernels of the NB simulator: a seeded generator, samplers and the two-pass CSR builder.

Random numbers
--------------
Every cell block owns one xoshiro256** stream (4 × uint64 state) seeded from a
``numpy.random.SeedSequence.spawn`` child in the Python layer. A block is always processed by
one thread from its own seed, so the output does not depend on the number of threads.

Sampling NB counts sparsely
---------------------------
For y ~ NB(mean μ, size s) (Var = μ + μ²/s): P(y = 0) = (1 + μ/s)^(-s), P(y = k + 1) =
P(y = k) (k + s)/(k + 1) · μ/(μ + s), and binomial thinning of NB(μ, s) with probability p is
NB(pμ, s) (it thins the Poisson of the Gamma–Poisson mixture). Inside a block, cells are sorted
by (group h, library factor f) and cut into chunks of at most ``CHUNK`` cells of one group, so
for gene g the cell means μ_c = M[g, h] f_c (× exp β_g in DE cells) of a chunk are bounded by
μ_max. Per (gene, chunk):

* y_max ~ NB(μ_max, s) is drawn by inverting a CDF table of P(1 ≤ y ≤ k) built lazily, once per
  chunk (Gamma–Poisson above ``MU_INVERSION``); sparse chunks (P(y_max > 0) ≤ ``DENSE_PROB``)
  skip the zeros geometrically and draw only the positive y_max, so the work is
  O(nnz + genes × chunks), never one uniform per zero entry;
* y_c = Binomial(y_max, μ_c/μ_max) is then exactly NB(μ_c, s).

Modes: 0 counts non-zeros per row; 1 replays the same streams and writes the CSR entries at
``indptr[row] + cursor[row]`` (column indices increase because genes are the outer loop);
2 writes (row, gene, value) triples into per-block slots (one pass, then ``scatter_triples``).
"""

from __future__ import annotations

import math

import numpy as np

from pyflashmm._jit import njit, prange

#: chunks whose largest non-zero probability exceeds this are sampled cell by cell
DENSE_PROB = 0.3
#: means above this use Gamma–Poisson draws instead of CDF inversion for the value
MU_INVERSION = 20.0
#: cells per chunk (cells of a chunk share a random-effect group)
CHUNK = 64
#: entries of the per-chunk CDF table (the inversion continues past it without storing)
TABLE = 256

_U11 = np.uint64(11)
_U17 = np.uint64(17)
_U7 = np.uint64(7)
_U57 = np.uint64(57)
_U45 = np.uint64(45)
_U19 = np.uint64(19)
_U5 = np.uint64(5)
_U9 = np.uint64(9)
_TWO_M53 = 2.0**-53


@njit
def next_u64(st):
    """xoshiro256** step on the 4-word state ``st`` (in place); returns a uint64."""
    s0 = st[0]
    s1 = st[1]
    s2 = st[2]
    s3 = st[3]
    x = s1 * _U5
    result = ((x << _U7) | (x >> _U57)) * _U9
    t = s1 << _U17
    s2 ^= s0
    s3 ^= s1
    s1 ^= s2
    s0 ^= s3
    s2 ^= t
    s3 = (s3 << _U45) | (s3 >> _U19)
    st[0] = s0
    st[1] = s1
    st[2] = s2
    st[3] = s3
    return result


@njit
def uniform(st):
    """U(0, 1) on the open interval: 53 random bits, centred in their cell."""
    return ((next_u64(st) >> _U11) + 0.5) * _TWO_M53


@njit
def normal(st):
    """Standard normal by Box–Muller (one of the pair is used)."""
    u1 = uniform(st)
    u2 = uniform(st)
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


@njit
def gamma(st, shape):
    """Gamma(shape, scale 1) by Marsaglia–Tsang; shape < 1 via the U^(1/shape) boost."""
    boost = 1.0
    a = shape
    if a < 1.0:
        boost = uniform(st) ** (1.0 / a)
        a += 1.0
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    while True:
        x = normal(st)
        v = 1.0 + c * x
        if v <= 0.0:
            continue
        v = v * v * v
        u = uniform(st)
        x2 = x * x
        if u < 1.0 - 0.0331 * x2 * x2:
            return d * v * boost
        if math.log(u) < 0.5 * x2 + d * (1.0 - v + math.log(v)):
            return d * v * boost


@njit
def poisson(st, lam):
    """Poisson(lam): CDF inversion below 10, Hörmann's PTRS transformed rejection above."""
    if lam <= 0.0:
        return 0
    if lam < 10.0:
        p = math.exp(-lam)
        cdf = p
        u = uniform(st)
        k = 0
        while u > cdf and k < 1000:
            k += 1
            p *= lam / k
            cdf += p
        return k
    slam = math.sqrt(lam)
    loglam = math.log(lam)
    b = 0.931 + 2.53 * slam
    a = -0.059 + 0.02483 * b
    invalpha = 1.1239 + 1.1328 / (b - 3.4)
    vr = 0.9277 - 3.6224 / (b - 2.0)
    while True:
        u = uniform(st) - 0.5
        v = uniform(st)
        us = 0.5 - abs(u)
        k = math.floor((2.0 * a / us + b) * u + lam + 0.43)
        if us >= 0.07 and v <= vr:
            return int(k)
        if k < 0.0 or (us < 0.013 and v > us):
            continue
        if math.log(v) + math.log(invalpha) - math.log(a / (us * us) + b) <= (
            -lam + k * loglam - math.lgamma(k + 1.0)
        ):
            return int(k)


@njit
def nb_prob_nonzero(mu, size):
    """P(y > 0) for y ~ NB(mean mu, size)."""
    return -math.expm1(-size * math.log1p(mu / size))


@njit
def binomial_count(st, n, p):
    """Number of successes among ``n`` Bernoulli(p) trials (geometric skips, O(1 + n p))."""
    lq = math.log1p(-p)
    pos = -1.0
    cnt = 0
    while True:
        pos += 1.0 + math.floor(math.log(uniform(st)) / lq)
        if pos >= n:
            return cnt
        cnt += 1


@njit
def thin(st, y, p):
    """Binomial(y, p) thinning; NB(mu, size) thinned by p is NB(p mu, size)."""
    if p >= 1.0 or y == 0:
        return y
    if y <= 24:
        k = 0
        for _ in range(y):
            if uniform(st) < p:
                k += 1
        return k
    if p >= 0.5:
        return y - binomial_count(st, y, 1.0 - p)
    return binomial_count(st, y, p)


@njit
def positive_inverse(t, tab, tst, q, size):
    """Smallest k >= 1 with P(1 <= y <= k) > t, y ~ NB; the CDF table grows lazily.

    ``tab[k-1]`` = P(1 <= y <= k) for k <= ``tst[0]``; ``tst`` = [entries, P(y = entries),
    P(1 <= y <= entries)], initialised to [0, P(y = 0), 0] for each (gene, chunk).
    """
    nb = int(tst[0])
    k = 1
    while k <= nb:
        if tab[k - 1] > t:
            return k
        k += 1
    pk = tst[1]
    cum = tst[2]
    cap = tab.shape[0]
    while True:
        pk *= (k - 1 + size) / k * q
        cum += pk
        if k <= cap:
            tab[k - 1] = cum
            tst[0] = k
            tst[1] = pk
            tst[2] = cum
        if cum > t:
            return k
        if (pk < 1e-17 * cum and k > 1.0 + 2.0 * q * size / (1.0 - q)) or k >= 1000000:
            return k  # rounding left t above the total mass: return the tail point
        k += 1


@njit
def gamma_poisson(st, mu, size):
    """NB(mu, size) as Poisson(mu G / size), G ~ Gamma(size)."""
    return poisson(st, mu * gamma(st, size) / size)


@njit
def _emit(mode, b, c, g, value, row_nnz, indptr, indices, data, cap_off, used):
    if mode == 1:
        pos = indptr[c] + row_nnz[c]
        indices[pos] = g
        data[pos] = value
    elif mode == 2:
        k = used[b]
        if cap_off[b] + k < cap_off[b + 1]:
            pos = cap_off[b] + k
            indptr[pos] = c
            indices[pos] = g
            data[pos] = value
        used[b] = k + 1
    row_nnz[c] += 1


@njit(parallel=True)
def nb_csr_pass(
    mode,
    seeds,
    block_ptr,
    perm,
    cell_f,
    cell_cls,
    cell_treated,
    chunk_ptr,
    chunk_lo,
    chunk_hi,
    chunk_h,
    chunk_fmax,
    M,
    size,
    de_cls,
    de_mult,
    row_nnz,
    indptr,
    indices,
    data,
    cap_off,
    used,
):
    """One pass over all cell blocks (parallel over blocks); see the module docstring.

    ``mode`` 0 counts non-zeros per row into ``row_nnz``; 1 writes CSR entries at
    ``indptr[row] + row_nnz[row]`` (``row_nnz`` zero on entry); 2 writes (row, gene, value)
    triples of block b into ``indptr/indices/data[cap_off[b]:cap_off[b+1]]`` (``used[b]``
    counts them, also past the capacity, which then signals overflow).

    Arrays: ``seeds`` (n_blocks, 4) uint64 xoshiro states; block b covers positions
    ``block_ptr[b]:block_ptr[b+1]`` of ``perm`` (cells sorted by group, then f, per block);
    chunks ``chunk_ptr[b]:chunk_ptr[b+1]`` cover ``perm[chunk_lo:chunk_hi]`` with group
    ``chunk_h`` and largest factor ``chunk_fmax``; ``M`` (G, H) means at f = 1; ``size`` (G,);
    ``de_cls[g]`` cluster code where gene g is DE in treated cells (-1: none), ``de_mult[g]``
    = exp(beta_g).
    """
    n_blocks = block_ptr.shape[0] - 1
    G = M.shape[0]
    for b in prange(n_blocks):
        st = seeds[b].copy()
        tab = np.empty(TABLE)
        tst = np.empty(3)
        for g in range(G):
            s = size[g]
            kc = de_cls[g]
            mult = de_mult[g]
            bmult = max(mult, 1.0) if kc >= 0 else 1.0
            for ch in range(chunk_ptr[b], chunk_ptr[b + 1]):
                lo = chunk_lo[ch]
                hi = chunk_hi[ch]
                fmax = chunk_fmax[ch] * bmult
                mu_max = M[g, chunk_h[ch]] * fmax
                if mu_max <= 0.0:
                    continue
                logp0 = -s * math.log1p(mu_max / s)
                pnz = -math.expm1(logp0)
                if pnz <= 0.0:
                    continue
                q = mu_max / (mu_max + s)
                tst[0] = 0.0
                tst[1] = math.exp(logp0)
                tst[2] = 0.0
                if mu_max > MU_INVERSION or pnz > DENSE_PROB:
                    for i in range(lo, hi):
                        c = perm[i]
                        if mu_max > MU_INVERSION:
                            y = gamma_poisson(st, mu_max, s)
                        else:
                            u = uniform(st)
                            if u >= pnz:
                                continue
                            y = positive_inverse(u, tab, tst, q, s)
                        fc = cell_f[c]
                        if kc >= 0 and cell_treated[c] != 0 and cell_cls[c] == kc:
                            fc *= mult
                        y = thin(st, y, fc / fmax)
                        if y > 0:
                            _emit(mode, b, c, g, y, row_nnz, indptr, indices, data, cap_off, used)
                    continue
                lq = math.log1p(-pnz)
                pos = float(lo - 1)
                while True:
                    pos += 1.0 + math.floor(math.log(uniform(st)) / lq)
                    if pos >= hi:
                        break
                    c = perm[int(pos)]
                    y = positive_inverse(uniform(st) * pnz, tab, tst, q, s)
                    fc = cell_f[c]
                    if kc >= 0 and cell_treated[c] != 0 and cell_cls[c] == kc:
                        fc *= mult
                    y = thin(st, y, fc / fmax)
                    if y > 0:
                        _emit(mode, b, c, g, y, row_nnz, indptr, indices, data, cap_off, used)


@njit(parallel=True)
def nnz_bound(
    block_ptr, chunk_ptr, chunk_lo, chunk_hi, chunk_h, chunk_fmax, M, size, de_cls, de_mult
):
    """Per block, sum over chunks and genes of (cells × P(y > 0) at the chunk's largest mean).

    Bounds the expected number of non-zeros of each block (P(y > 0) increases with the mean).
    """
    n_blocks = block_ptr.shape[0] - 1
    G = M.shape[0]
    out = np.zeros(n_blocks)
    for b in prange(n_blocks):
        tot = 0.0
        for g in range(G):
            s = size[g]
            bmult = max(de_mult[g], 1.0) if de_cls[g] >= 0 else 1.0
            for ch in range(chunk_ptr[b], chunk_ptr[b + 1]):
                mu_max = M[g, chunk_h[ch]] * chunk_fmax[ch] * bmult
                tot += (chunk_hi[ch] - chunk_lo[ch]) * nb_prob_nonzero(mu_max, s)
        out[b] = tot
    return out


@njit(parallel=True)
def scatter_triples(block_ptr, cap_off, used, rows, cols, vals, indptr, indices, data, cursor):
    """Mode-2 triples → CSR: entries of each block go to ``indptr[row] + cursor[row]``."""
    n_blocks = block_ptr.shape[0] - 1
    for b in prange(n_blocks):
        for k in range(cap_off[b], cap_off[b] + used[b]):
            c = rows[k]
            pos = indptr[c] + cursor[c]
            indices[pos] = cols[k]
            data[pos] = vals[k]
            cursor[c] += 1


@njit
def draw_gamma_poisson(st, shape, lam, n):
    """Test hook: ``n`` Gamma(shape) draws and ``n`` Poisson(lam) draws from state ``st``."""
    out_g = np.empty(n)
    out_p = np.empty(n, dtype=np.int64)
    for i in range(n):
        out_g[i] = gamma(st, shape)
    for i in range(n):
        out_p[i] = poisson(st, lam)
    return out_g, out_p
