"""Numba kernels of the NB simulator: a seeded generator, exact NB samplers, the CSR builder.

Random numbers
--------------
Every cell block owns one xoshiro256** stream (4 × uint64 state) seeded from a
``numpy.random.SeedSequence.spawn`` child in the Python layer. A block is always processed by
one thread from its own seed, so the output does not depend on the number of threads (nor on
how many blocks are processed at once).

Sampling NB counts by bracketed inversion
-----------------------------------------
For y ~ NB(mean μ, size s) (Var = μ + μ²/s) let S_μ(k) = P(y > k): S_μ(0) = 1 − (1 + μ/s)^(-s),
P(y = k) = P(y = k − 1) (k − 1 + s)/k · μ/(μ + s). A cell's count is drawn by inversion of its
survival function, y = min{k : S_μ(k) ≤ V} with V ~ U(0, 1). NB(μ, s) increases stochastically
with μ, so S_μlo(k) ≤ S_μ(k) ≤ S_μhi(k) for μlo ≤ μ ≤ μhi and every k. Inside a block, cells are
sorted by (group h, library factor f) (``sort_cells``); for gene g the cells of a group have means
μ_c = M[g, h] f_c, and they are cut into chunks whose means span at most ``TOL``. Per
(gene, chunk) two survival tables, at the chunk's smallest and largest mean, are built lazily
(one log1p and two exp per table, then one multiply-add per entry), and each cell's V is looked
up in both:

* k = #{j : S_μlo(j) > V} is a lower bound of y and, when S_μhi(k) ≤ V, it *is* y; no
  transcendental function is evaluated for the cell;
* otherwise (probability about μhi − μlo ≤ ``TOL``, the mean gap of the two coupled draws) the
  cell's own survival function is evaluated from S_μ(0) with the same V (``nb_inverse``).

The result is exactly NB(μ_c, s) for every cell: the same draw as inversion with the cell's own
mean (comparisons keep a margin ``EPS`` ≫ the rounding of the tables), whichever tables bracket
it. Dense runs (``_run_grid``) bracket each cell by the gene's *fine* tables when it has them
(``_fine_draw``): ``fine_tables`` builds them once per call, shared by all blocks, at the means
j × ``fine`` over the gene's range of means (with and without its fold change), ``FINE_WIDTH``
(Python layer) entries each. Each fine table row has a guide (``_guide_row``): for each of
``FINE_BUCKETS`` buckets of V, the count at the bucket's upper edge, valid when at most one table
entry falls inside the bucket; then one comparison gives k (about 90 % of the cells), otherwise
all the entries above V are counted. Cells without fine tables use the tables at the grid means
j ``GRID`` ≤ μ_c ≤ (j + 1) ``GRID``; a gene's grid tables are built once per block and shared by
all its groups, with ``PREFIX`` entries at once, grown on demand, and the entries above V are
counted without branches (vectorised). The hot helpers are inlined (``inline="always"``),
tables are indexed in 2-D, so no array reference counts are taken per cell, and indices known to
be non-negative are unsigned (``_ix``: no wrap-around of negative indices). Sparse chunks
(S_μhi(0) ≤ ``DENSE_PROB``) skip the cells with V ≥ S_μhi(0), which are certainly zero,
geometrically, and draw V only for the others, so the work is O(nnz + genes × chunks) rather
than one uniform per zero; with fewer than
``TABLE_MIN_CANDIDATES`` expected candidates they use ``nb_inverse`` directly. Means above
``MU_BIG`` are drawn per cell as Gamma–Poisson mixtures. Cells where a DE gene has its fold
change are drawn per cell, after the run's other cells (``_nb_draw_fine``: the draw of
``nb_draw``, looked up in the fine tables when they cover the mean).

Building the CSR matrix
-----------------------
Dense outputs (``dense=True``): ``sample_blocks`` writes every count of a block into a dense
(rows in sorted order) × genes uint16 buffer and counts the block's non-zeros; ``emit_dense``
compresses each cell's row straight into the block's range of the CSR arrays. Otherwise (and
from a wave of blocks with a count above ``DENSE_MAX`` on, drawn again from the same seeds)
``sample_blocks`` writes each block's non-zeros (gene-major) into a per-slot scratch buffer of
(row in block, gene, value) and counts non-zeros per row; ``scatter_blocks`` moves a block's
entries to its contiguous range of the CSR arrays (rows of a block are consecutive cells, and
each row receives its genes in increasing order). A slot whose buffer overflows is replayed
from the same seed with a larger buffer, so the output never depends on buffer sizes.
"""

from __future__ import annotations

import math

import numpy as np

from pyflashmm._jit import njit, prange

#: chunks whose largest non-zero probability exceeds this draw V for every cell
DENSE_PROB = 0.3
#: chunks whose largest mean exceeds this use Gamma–Poisson draws per cell
MU_BIG = 32.0
#: largest spread of the means in a chunk (bounds the share of cells needing their own CDF)
TOL = 0.05
#: spacing of the grid of means whose survival tables bracket the cells of dense genes
GRID = 0.05
#: grid points (means up to ``MU_BIG``, and one above)
NGRID = int(MU_BIG / GRID) + 3
#: entries of each survival table (lookups past it use the cell's own survival function)
TABLE = 512
#: tables stop where the largest mean's survival falls below this share of its P(y > 0)
TAIL = 1e-3
#: sparse chunks expecting fewer candidates than this skip the tables
TABLE_MIN_CANDIDATES = 8.0
#: table entries built at once (the dense lookup counts over this prefix, branch-free)
PREFIX = 16
#: margin of the table comparisons (well above the rounding of a few hundred additions)
EPS = 1e-12
#: buckets of V in the guides of the fine tables (a power of two: V × buckets is exact)
FINE_BUCKETS = 32
#: guide entry of a bucket that holds two or more entries of the table (count them all)
NO_GUIDE = 255
#: largest count of the dense buffers (uint16)
DENSE_MAX = 65535

_U11 = np.uint64(11)
_U17 = np.uint64(17)
_U7 = np.uint64(7)
_U57 = np.uint64(57)
_U45 = np.uint64(45)
_U19 = np.uint64(19)
_U5 = np.uint64(5)
_U9 = np.uint64(9)
_TWO_M53 = 2.0**-53


@njit(inline="always")
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


@njit(inline="always")
def uniform(st):
    """U(0, 1) on the open interval: 53 random bits, centred in their cell."""
    return ((next_u64(st) >> _U11) + 0.5) * _TWO_M53


@njit(inline="always")
def _ix(i):
    """``i`` as an unsigned array index (for indices known to be non-negative): Numba then
    omits the wrap-around of negative indices, a few instructions per access in the per-cell
    loops (about 10 % of ``sample_blocks`` and 15 % of ``emit_dense``)."""
    return np.uint64(i)


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
def gamma_poisson(st, mu, size):
    """NB(mu, size) as Poisson(mu G / size), G ~ Gamma(size)."""
    return poisson(st, mu * gamma(st, size) / size)


@njit
def nb_inverse(v, mu, size):
    """min{k : P(y > k) ≤ v} for y ~ NB(mu, size): inversion of the survival function."""
    logp0 = -size * math.log1p(mu / size)
    surv = -math.expm1(logp0)
    if surv <= v:
        return 0
    p = math.exp(logp0)
    q = mu / (mu + size)
    mode = (size - 1.0) * q / (1.0 - q)
    k = 0
    while True:
        k += 1
        p *= (k - 1 + size) / k * q
        surv -= p
        if surv <= v:
            return k
        # far past the mode the remaining mass (< p q / (1 - q)) is below the rounding of surv
        if k > mode and p * q < 1e-17 * (1.0 - q) or k >= 100_000_000:
            return k


@njit
def nb_draw(st, mu, size):
    """One NB(mu, size) draw: survival inversion, or Gamma–Poisson above ``MU_BIG``."""
    if mu <= 0.0:
        return 0
    if mu > MU_BIG:
        return gamma_poisson(st, mu, size)
    return nb_inverse(uniform(st), mu, size)


@njit
def _tables(mu_lo, mu_hi, logp0_hi, pnz, size, slo, shi, rat, rst):
    """Survival tables S(k) at ``mu_lo`` and ``mu_hi`` for k < w; returns w (a multiple of 8).

    Grows until S_μhi(w − 1) < ``TAIL`` · S_μhi(0) (or ``TABLE``). ``rat[k]`` = (k − 1 + s)/k is
    cached per gene for k < rst[0].
    """
    logp0_lo = -size * math.log1p(mu_lo / size)
    slo[0] = -math.expm1(logp0_lo)
    shi[0] = pnz
    plo = math.exp(logp0_lo)
    phi = math.exp(logp0_hi)
    qlo = mu_lo / (mu_lo + size)
    qhi = mu_hi / (mu_hi + size)
    tail = TAIL * pnz
    nr = int(rst[0])
    k = 1
    while k < TABLE:
        if k >= nr:
            rat[k] = (k - 1 + size) / k
            nr = k + 1
        r = rat[k]
        plo *= r * qlo
        phi *= r * qhi
        slo[k] = slo[k - 1] - plo
        shi[k] = shi[k - 1] - phi
        k += 1
        if (k & 7) == 0 and shi[k - 1] < tail:
            break
    rst[0] = nr
    return k


@njit
def _count_coarse(slo, t, w):
    """#{j < w : slo[j] > t} for a decreasing table: whole groups of 8, then within one."""
    k = 0
    for j in range(7, w, 8):
        k += slo[j] > t
    k *= 8
    if k < w:
        b = k
        for j in range(b, b + 8):
            k += slo[j] > t
    return k


@njit
def bracket_lookup(v, slo, shi, w):
    """y for survival level ``v`` if the two tables decide it, else -1 (module docstring).

    Branch-free count of the table entries above v (the tables decrease), so the cost does
    not depend on y: k = #{j < w : S_μlo(j) > v + EPS}, and y = k when S_μhi(k) ≤ v − EPS.
    """
    t = v + EPS
    k = 0
    if w <= 32:
        for j in range(w):
            k += slo[j] > t
    else:
        k = _count_coarse(slo, t, w)
    if k < w and shi[k] <= v - EPS:
        return k
    return -1


@njit
def _grow(tab, stt, size, rat, rst, wmin, tail):
    """Extend survival table ``tab`` (state ``stt`` = [entries, last pmf, q]) to at least
    ``wmin`` entries, then on to a multiple of 8 where it is below ``tail`` (≤ ``TABLE``)."""
    k = int(stt[0])
    p = stt[1]
    q = stt[2]
    nr = int(rst[0])
    while k < TABLE and (k < wmin or (k & 7) != 0 or tab[k - 1] >= tail):
        if k >= nr:
            rat[k] = (k - 1 + size) / k
            nr = k + 1
        p *= rat[k] * q
        tab[k] = tab[k - 1] - p
        k += 1
    rst[0] = nr
    stt[0] = k
    stt[1] = p
    return k


@njit
def _build(tab, stt, mu, size, rat, rst):
    """First ``PREFIX`` entries of the survival table of NB(mu, size) (state in ``stt``)."""
    logp0 = -size * math.log1p(mu / size)
    p = math.exp(logp0)
    tab[0] = 1.0 - p if p < 0.5 else -math.expm1(logp0)
    stt[0] = 1.0
    stt[1] = p
    stt[2] = mu / (mu + size)
    return _grow(tab, stt, size, rat, rst, PREFIX, math.inf)


@njit
def _lookup_long(v, ta, tb, sta, stb, size, rat, rst):
    """The lookup of ``_run_grid`` when V lies past the tables' prefix: both tables grow by
    ``PREFIX`` entries until they reach V (or ``TABLE``); -1 when undecided."""
    t = v + EPS
    w = int(min(sta[0], stb[0]))
    while ta[w - 1] > t and w < TABLE:
        w = _grow(ta, sta, size, rat, rst, w + PREFIX, math.inf)
        _grow(tb, stb, size, rat, rst, w, math.inf)
    w = int(min(sta[0], stb[0]))
    k = _count_coarse(ta, t, w)
    if k < w and tb[k] <= v - EPS:
        return k
    return -1


@njit(inline="always")
def _fine_draw(v, mu, s, ft, guide, f0, fn, jf0, fine):
    """The count of survival level ``v`` for NB(``mu``, ``s``) from a gene's fine tables, or -1.

    The tables (rows ``f0``.., built once per call by ``fine_tables``) are at the means
    (``jf0`` + r) ``fine``; rows r and r + 1 bracket ``mu`` for r in [0, ``fn``). -1 when
    ``mu`` is outside them or the count is not below their width (the caller falls back).
    The count #{j : S_μlo(j) > v + EPS} comes from the row's guide and one comparison (or,
    without a guide for v's bucket, from all the entries).
    """
    jf = int(mu * (1.0 / fine))
    if jf * fine > mu:
        jf -= 1
    elif (jf + 1) * fine < mu:
        jf += 1
    r = jf - jf0
    if not 0 <= r < fn:
        return -1
    r += f0
    t = v + EPS
    fw = ft.shape[1]
    k = np.int64(guide[_ix(r), _ix(min(int(v * FINE_BUCKETS), FINE_BUCKETS - 1))])
    if k != NO_GUIDE:
        k += ft[_ix(r), _ix(k)] > t
    else:
        k = 0
        for jj in range(fw):
            k += ft[_ix(r), jj] > t
    if k >= fw:
        return -1
    if ft[_ix(r + 1), _ix(k)] > v - EPS:  # undecided: wider tables cannot decide either
        return nb_inverse(v, mu, s)
    return k


@njit
def _nb_draw_fine(st, mu, s, ft, guide, f0, fn, jf0, fine):
    """:func:`nb_draw` (the same draws and random numbers) looked up in the fine tables (not
    inlined: it serves the few DE cells, and one copy of ``_fine_draw`` compiles faster)."""
    if not 0.0 < mu <= MU_BIG or fn <= 0:
        return nb_draw(st, mu, s)
    v = uniform(st)
    y = _fine_draw(v, mu, s, ft, guide, f0, fn, jf0, fine)
    return y if y >= 0 else nb_inverse(v, mu, s)


@njit(inline="always")
def _run_grid(
    st, slot, g, lo, hi, m, s, kc, b0, perm, fs, cell_cls, cell_treated,
    gtab, gst, gstamp, rat, rst, srow, sgene, sval, used, cnt, dbuf, clipped, ng, fine_tables,
):  # fmt: skip
    """Cells perm[lo:hi] (one group, means m fs[i] increasing) of a dense gene g: one V per
    cell, looked up in the gene's fine tables (``_fine_draw``; ``fine_tables`` = (ft, guide,
    fptr, fj0, fine)) or else bracketed by the survival tables at the grid means
    j ``GRID`` ≤ μ ≤ (j + 1) ``GRID``. The grid tables of a gene are built once per block
    (``gstamp[j]`` = g) and shared by its groups."""
    ft, guide, fptr, fj0, fine = fine_tables
    cap = srow.shape[1]
    u = used[slot]
    j = -1
    w = 0
    f0 = fptr[g]
    fn = fptr[g + 1] - f0 - 1
    jf0 = fj0[g]
    for i in range(lo, hi):
        c = perm[_ix(i)]
        if kc >= 0 and _is_de(c, kc, cell_cls, cell_treated):
            continue
        mu = m * fs[_ix(i)]
        v = uniform(st)
        k = _fine_draw(v, mu, s, ft, guide, f0, fn, jf0, fine) if fn > 0 else -1
        if k < 0:
            jn = int(mu * (1.0 / GRID))
            if jn * GRID > mu:
                jn -= 1
            elif (jn + 1) * GRID < mu:
                jn += 1
            if jn != j:  # tables at the grid means j GRID and (j + 1) GRID (2-D: no views)
                j = jn
                for jj in range(j, j + 2):
                    if gstamp[jj] != g:
                        _build(gtab[jj], gst[jj], jj * GRID, s, rat, rst)
                        gstamp[jj] = g
                w = int(min(gst[j, 0], gst[j + 1, 0]))
            t = v + EPS
            k = 0
            for jj in range(w):  # w is not a compile-time constant, so this vectorises
                k += gtab[j, jj] > t
            if k < w:
                if gtab[j + 1, k] > v - EPS:
                    k = -1
            else:
                k = _lookup_long(v, gtab[j], gtab[j + 1], gst[j], gst[j + 1], s, rat, rst)
                w = int(min(gst[j, 0], gst[j + 1, 0]))
            if k < 0:
                k = nb_inverse(v, mu, s)
        nz = 1 if k > 0 else 0
        if ng > 0:  # the block's dense buffer (rows × genes)
            _dense_put(dbuf, clipped, slot, i - b0, ng, g, k)
            u += nz
            continue
        if u < cap:  # branch-free append (zeros are overwritten by the next entry)
            srow[slot, u] = c - b0
            sgene[slot, u] = g
            sval[slot, u] = k
        u += nz
        cnt[c] += nz
    used[slot] = u


@njit(inline="always")
def _dense_put(dbuf, clipped, slot, row, ng, g, value):
    """dbuf[slot, row × ng + g] = ``value``; clipped[slot] = 1 when it exceeds ``DENSE_MAX``
    (the wave is then drawn again into the scratch buffers)."""
    dbuf[_ix(slot), _ix(row * ng + g)] = value
    if value > DENSE_MAX:
        clipped[slot] = 1


@njit(inline="always")
def _emit(slot, c, j, b0, g, value, srow, sgene, sval, used, cnt, dbuf, clipped, ng):
    """Append non-zero ``value`` of (cell c = perm[j], gene g); with ``ng`` > 0 to row j − b0
    of the dense buffer (its rows are in sorted order)."""
    k = used[slot]
    if ng > 0:
        _dense_put(dbuf, clipped, slot, j - b0, ng, g, value)
        used[slot] = k + 1
        return
    if k < srow.shape[1]:
        srow[slot, k] = c - b0
        sgene[slot, k] = g
        sval[slot, k] = value
    used[slot] = k + 1
    cnt[c] += 1


@njit(inline="always")
def _is_de(c, kc, cell_cls, cell_treated):
    return kc >= 0 and cell_treated[c] != 0 and cell_cls[c] == kc


@njit(inline="always")
def _chunk(
    st, slot, g, i0, i1, m, s, kc, b0, perm, fs, cell_cls, cell_treated, logp0_hi, pnz,
    slo, shi, rat, rst, srow, sgene, sval, used, cnt, dbuf, clipped, ng,
):  # fmt: skip
    """Cells perm[i0:i1] (one group, means m fs[i], non-DE cells only) of a sparse gene g:
    the cells with V ≥ P(y > 0) at the largest mean (``pnz``, log P(y = 0) = ``logp0_hi``)
    are certain zeros and are skipped geometrically."""
    if pnz <= 0.0:
        return
    mu_hi = m * fs[i1 - 1]
    cap = srow.shape[1]
    u = used[slot]
    # few expected candidates: each uses its own survival function (no tables to build)
    w = -1 if pnz * (i1 - i0) < TABLE_MIN_CANDIDATES else 0
    pos = float(i0 - 1)
    while True:
        pos += 1.0 + math.floor(math.log(uniform(st)) / logp0_hi)
        if pos >= i1:
            break
        i = int(pos)
        c = perm[i]
        if kc >= 0 and _is_de(c, kc, cell_cls, cell_treated):
            continue
        v = pnz * uniform(st)
        if w == 0:
            w = _tables(m * fs[i0], mu_hi, logp0_hi, pnz, s, slo, shi, rat, rst)
        y = bracket_lookup(v, slo, shi, w) if w > 0 else -1
        if y < 0:
            y = nb_inverse(v, m * fs[i], s)
        if y > 0 and ng > 0:
            _dense_put(dbuf, clipped, slot, i - b0, ng, g, y)
            u += 1
        elif y > 0:
            if u < cap:
                srow[slot, u] = c - b0
                sgene[slot, u] = g
                sval[slot, u] = y
            u += 1
            cnt[c] += 1
    used[slot] = u


@njit(parallel=True)
def sample_blocks(
    blocks,
    seeds,
    block_ptr,
    perm,
    fs,
    cell_cls,
    cell_treated,
    run_ptr,
    run_lo,
    run_hi,
    run_h,
    M,
    size,
    de_cls,
    de_mult,
    cnt,
    srow,
    sgene,
    sval,
    used,
    dbuf,
    clipped,
    dense,
    ft,
    guide,
    fptr,
    fj0,
    fine,
):
    """Draw the counts of cell blocks ``blocks`` (slot i holds block blocks[i]; parallel).

    Block b covers cells ``block_ptr[b]:block_ptr[b+1]``, listed in ``perm`` at the same
    positions sorted by (group, f); ``fs`` = f in perm order. Runs ``run_ptr[b]:run_ptr[b+1]``
    are the groups of the block: ``perm[run_lo:run_hi]`` with group ``run_h``. ``M`` (G, H)
    means at f = 1; ``size`` (G,); ``de_cls[g]`` the cluster where gene g is DE in treated
    cells (-1: none), ``de_mult[g]`` = exp(beta_g). Non-zeros go to the slot's scratch rows
    ``srow/sgene/sval[i]`` (row in the block, gene, value), ``used[i]`` counts them (also past
    the capacity, which signals overflow), ``cnt[cell]`` counts them per cell. With ``dense``,
    every count goes to the slot's rows × genes buffer ``dbuf[i]`` (uint16) instead, and
    ``clipped[i]`` = 1 flags a count that it could not hold.
    """
    G = M.shape[0]
    ng = G if dense else 0
    for i in prange(blocks.shape[0]):
        b = blocks[i]
        b0 = block_ptr[b]
        used[i] = 0
        clipped[i] = 0
        for c in range(b0, block_ptr[b + 1]):
            cnt[c] = 0
        if dense:
            dbuf[i, : (block_ptr[b + 1] - b0) * G] = 0
        st = seeds[b].copy()
        ta = np.empty(TABLE)
        tb = np.empty(TABLE)
        rat = np.empty(TABLE)
        rst = np.empty(1)
        gtab = np.empty((NGRID, TABLE))
        gst = np.empty((NGRID, 3))
        gstamp = np.full(NGRID, -1, dtype=np.int64)
        for g in range(G):
            rst[0] = 1.0
            s = size[g]
            kc = de_cls[g]
            mult = de_mult[g]
            f0 = fptr[g]
            fn = fptr[g + 1] - f0 - 1  # fine tables of gene g (none: fn <= 0)
            jf0 = fj0[g]
            for r in range(run_ptr[b], run_ptr[b + 1]):
                m = M[g, run_h[r]]
                if m <= 0.0:
                    continue
                lo = run_lo[r]
                hi = run_hi[r]
                if m * fs[hi - 1] > MU_BIG:
                    for j in range(lo, hi):
                        c = perm[j]
                        mu = m * fs[j]
                        if kc >= 0 and _is_de(c, kc, cell_cls, cell_treated):
                            mu *= mult
                        y = gamma_poisson(st, mu, s)
                        if y > 0:
                            _emit(
                                i, c, j, b0, g, y, srow, sgene, sval, used, cnt, dbuf, clipped, ng
                            )
                    continue
                logp0 = -s * math.log1p(m * fs[hi - 1] / s)
                pnz = -math.expm1(logp0)
                if pnz > DENSE_PROB:
                    _run_grid(
                        st, i, g, lo, hi, m, s, kc, b0, perm, fs, cell_cls, cell_treated,
                        gtab, gst, gstamp, rat, rst, srow, sgene, sval, used, cnt, dbuf, clipped,
                        ng, (ft, guide, fptr, fj0, fine),
                    )  # fmt: skip
                elif m * (fs[hi - 1] - fs[lo]) <= TOL:
                    _chunk(
                        st, i, g, lo, hi, m, s, kc, b0, perm, fs, cell_cls, cell_treated,
                        logp0, pnz, ta, tb, rat, rst, srow, sgene, sval, used, cnt, dbuf, clipped,
                        ng,
                    )  # fmt: skip
                else:
                    i0 = lo
                    while i0 < hi:  # chunks spanning TOL in mean
                        fb = fs[i0] + TOL / m
                        x = i0 + 1
                        z = hi
                        while x < z:
                            mid = (x + z) >> 1
                            if fs[mid] <= fb:
                                x = mid + 1
                            else:
                                z = mid
                        i1 = x
                        lp = -s * math.log1p(m * fs[i1 - 1] / s)
                        _chunk(
                            st, i, g, i0, i1, m, s, kc, b0, perm, fs, cell_cls, cell_treated,
                            lp, -math.expm1(lp), ta, tb, rat, rst, srow, sgene, sval, used, cnt,
                            dbuf, clipped, ng,
                        )  # fmt: skip
                        i0 = i1
                if kc >= 0:
                    for j in range(lo, hi):
                        c = perm[j]
                        if _is_de(c, kc, cell_cls, cell_treated):
                            mu = m * fs[j] * mult
                            y = _nb_draw_fine(st, mu, s, ft, guide, f0, fn, jf0, fine)
                            if y > 0:
                                _emit(
                                    i, c, j, b0, g, y, srow, sgene, sval, used, cnt, dbuf, clipped,
                                    ng,
                                )  # fmt: skip


@njit(parallel=True)
def scatter_blocks(blocks, block_ptr, base, cnt, srow, sgene, sval, used, indptr, indices, data):
    """Slot i's entries → CSR positions of block blocks[i], starting at ``base[i]``.

    Writes ``indptr[c + 1]`` for the block's cells (``indptr`` is int64 here); each row's
    genes arrive in increasing order, so column indices are sorted.
    """
    for i in prange(blocks.shape[0]):
        b = blocks[i]
        b0 = block_ptr[b]
        nrow = block_ptr[b + 1] - b0
        pos = np.empty(nrow, dtype=np.int64)
        run = base[i]
        for r in range(nrow):
            pos[r] = run
            run += cnt[b0 + r]
            indptr[b0 + r + 1] = run
        for k in range(used[i]):
            r = srow[i, k]
            p = pos[r]
            indices[p] = sgene[i, k]
            data[p] = sval[i, k]
            pos[r] = p + 1


@njit(parallel=True)
def emit_dense(blocks, block_ptr, base, used, dbuf, G, pinv, indptr, indices, data):
    """Slot i's dense buffer (rows × genes) → CSR positions of block blocks[i] from ``base[i]``.

    Buffer rows are in sorted (``perm``) order: cell c is row ``pinv[c]`` − block start.

    Writes ``indptr[c + 1]`` for the block's cells; each row is compressed in gene order with
    branch-free appends that never pass the block's last entry (``base[i] + used[i]``).
    """
    for i in prange(blocks.shape[0]):
        b = blocks[i]
        b0 = block_ptr[b]
        nrow = block_ptr[b + 1] - b0
        p = base[i]
        end = base[i] + used[i]
        for r in range(nrow):
            off = (pinv[b0 + r] - b0) * G
            if p + G <= end:
                for g in range(G):
                    v = dbuf[_ix(i), _ix(off + g)]
                    indices[_ix(p)] = g
                    data[_ix(p)] = v
                    p += 1 if v != 0 else 0
            else:
                for g in range(G):
                    v = dbuf[i, off + g]
                    if v != 0:
                        indices[p] = g
                        data[p] = v
                        p += 1
            indptr[b0 + r + 1] = p


@njit(parallel=True)
def fine_tables(size, fptr, fj0, fine, width):
    """Survival tables of NB(j ``fine``, size_g), ``width`` entries each, for gene g at the grid
    points j = fj0[g] + r, r < fptr[g + 1] − fptr[g] (rows ``fptr[g]``.. of the result), and
    their guides (``_guide_row``)."""
    G = size.shape[0]
    ft = np.empty((fptr[G], width))
    guide = np.empty((fptr[G], FINE_BUCKETS), dtype=np.uint8)
    for g in prange(G):
        s = size[g]
        rat = np.empty(max(width, 2))
        for k in range(1, width):
            rat[k] = (k - 1 + s) / k
        thr = np.arange(FINE_BUCKETS + 1) / FINE_BUCKETS + EPS
        hist = np.empty(FINE_BUCKETS + 2, dtype=np.int64)
        for r in range(fptr[g], fptr[g + 1]):
            mu = (fj0[g] + r - fptr[g]) * fine
            logp0 = -s * math.log1p(mu / s)
            p = math.exp(logp0)
            q = mu / (mu + s)
            ft[r, 0] = 1.0 - p if p < 0.5 else -math.expm1(logp0)
            for k in range(1, width):
                p *= rat[k] * q
                ft[r, k] = ft[r, k - 1] - p
            _guide_row(ft, guide, r, thr, hist)
    return ft, guide


@njit(inline="always")
def _guide_row(ft, guide, r, thr, hist):
    """Guide of table row r: for V in bucket b, [b, b + 1] / ``FINE_BUCKETS``, the count
    #{j : ft[r, j] > V + EPS} lies between c_(b+1) and c_b, the counts at the thresholds
    ``thr`` = b / ``FINE_BUCKETS`` + EPS (rounding is monotone). guide[r, b] = c_(b+1) when
    c_b ≤ c_(b+1) + 1 (then one comparison, with ft[r, c_(b+1)], gives the count), else
    ``NO_GUIDE``; always ``NO_GUIDE`` when c_(b+1) is the table width.

    c_b = #{j : B_j > b} with B_j = #{b : thr[b] < ft[r, j]}, from the histogram of B_j; the
    entries at or below thr[1] (the decreasing tail) have B_j = 1 or 0 and are only counted.
    """
    width = ft.shape[1]
    hist[:] = 0
    j = 0
    while j < width and ft[r, j] > thr[1]:
        x = ft[r, j]
        bj = int(min((x - EPS) * FINE_BUCKETS + 1.0, FINE_BUCKETS + 1.0))  # then made exact
        while not thr[bj - 1] < x:
            bj -= 1
        while bj <= FINE_BUCKETS and thr[bj] < x:
            bj += 1
        hist[bj] += 1
        j += 1
    for jj in range(j, width):
        hist[1] += ft[r, jj] > thr[0]
    c_next = hist[FINE_BUCKETS + 1]
    for b in range(FINE_BUCKETS - 1, -1, -1):
        guide[r, b] = c_next if hist[b + 1] <= 1 and c_next < width else NO_GUIDE
        c_next += hist[b + 1]


@njit
def sort_cells(order, cell_f, cell_h, block_cells):
    """The cells sorted by (block, group, f), ties in index order, and the runs of one group.

    Cell i belongs to block i // ``block_cells`` and group ``cell_h[i]``; ``order`` sorts
    ``cell_f`` (ties in any order). Three stable counting sorts, each O(n): by the rank of f
    (which puts ties in index order), by block, then by group inside each block. Returns
    (perm, run_ptr, run_lo, run_hi, run_h): the cells perm[run_lo[r]:run_hi[r]] of group
    run_h[r] for the runs r in run_ptr[b]:run_ptr[b + 1] of block b (at least one block).
    """
    n = order.shape[0]
    rank = np.empty(n, dtype=np.int64)
    nr = 0
    for p in range(n):
        if p > 0 and cell_f[order[p]] != cell_f[order[p - 1]]:
            nr += 1
        rank[order[p]] = nr
    pos = np.zeros(nr + 2, dtype=np.int64)
    for c in range(n):
        pos[rank[c] + 1] += 1
    for r in range(nr + 1):
        pos[r + 1] += pos[r]
    by_f = np.empty(n, dtype=np.int64)
    for c in range(n):
        by_f[pos[rank[c]]] = c
        pos[rank[c]] += 1
    n_blocks = (n + block_cells - 1) // block_cells
    fill = np.arange(n_blocks) * block_cells
    by_block = np.empty(n, dtype=np.int64)
    for c in by_f:
        b = c // block_cells
        by_block[fill[b]] = c
        fill[b] += 1
    n_groups = cell_h.max() + 1 if n else 1
    start = np.empty(n_groups + 1, dtype=np.int64)
    perm = np.empty(n, dtype=np.int64)
    run_ptr = np.zeros(max(n_blocks, 1) + 1, dtype=np.int64)
    run_lo = np.empty(n, dtype=np.int64)
    run_hi = np.empty(n, dtype=np.int64)
    run_h = np.empty(n, dtype=np.int64)
    nrun = 0
    for b in range(n_blocks):
        lo = b * block_cells
        hi = min(lo + block_cells, n)
        start[:] = 0
        for p in range(lo, hi):
            start[cell_h[by_block[p]] + 1] += 1
        start[0] = lo
        for h in range(n_groups):
            if start[h + 1] > 0:
                run_lo[nrun] = start[h]
                run_hi[nrun] = start[h] + start[h + 1]
                run_h[nrun] = h
                nrun += 1
            start[h + 1] += start[h]
        run_ptr[b + 1] = nrun
        for p in range(lo, hi):
            c = by_block[p]
            perm[start[cell_h[c]]] = c
            start[cell_h[c]] += 1
    return perm, run_ptr, run_lo[:nrun].copy(), run_hi[:nrun].copy(), run_h[:nrun].copy()


#: row chunks of ``reference_stats`` (fixed, so results do not depend on the thread count)
STAT_CHUNKS = 16


@njit(parallel=True)
def reference_stats(indptr, indices, data, n_genes, integral):
    """Column sums, column sums of squares and row sums of a CSR matrix, and its first bad entry.

    Returns (colsum, colsq, rowsum, bad): ``bad`` is the position in ``data`` of the first entry
    that is not a finite non-negative integer, or -1. ``integral``: ``data`` has an integer
    dtype, so only the sign is checked and row sums are accumulated in int64. Sums are in
    float64, exact for integer counts (< 2^53), so the row-chunk order does not matter.
    """
    n = indptr.shape[0] - 1
    part = np.zeros((STAT_CHUNKS, n_genes))
    partsq = np.zeros((STAT_CHUNKS, n_genes))
    bad = np.full(STAT_CHUNKS, -1, dtype=np.int64)
    rowsum = np.zeros(n)
    for ch in prange(STAT_CHUNKS):
        r0 = n * ch // STAT_CHUNKS
        r1 = n * (ch + 1) // STAT_CHUNKS
        c = _ix(ch)
        for r in range(r0, r1):
            j0 = np.int64(indptr[r])
            j1 = np.int64(indptr[r + 1])
            if integral:
                itot = 0
                for j in range(j0, j1):
                    y = data[_ix(j)]
                    if y < 0:
                        if bad[ch] < 0:
                            bad[ch] = j
                        continue
                    x = float(y)
                    g = _ix(indices[_ix(j)])
                    part[c, g] += x
                    partsq[c, g] += x * x
                    itot += y
                rowsum[r] = itot
                continue
            tot = 0.0
            for j in range(j0, j1):
                x = float(data[_ix(j)])
                if not (x >= 0.0 and x < math.inf and x == math.floor(x)):
                    if bad[ch] < 0:
                        bad[ch] = j
                    continue
                g = _ix(indices[_ix(j)])
                part[c, g] += x
                partsq[c, g] += x * x
                tot += x
            rowsum[r] = tot
    colsum = np.zeros(n_genes)
    colsq = np.zeros(n_genes)
    first = -1
    for ch in range(STAT_CHUNKS):
        for g in range(n_genes):
            colsum[g] += part[ch, g]
            colsq[g] += partsq[ch, g]
        if first < 0 and bad[ch] >= 0:
            first = bad[ch]
    return colsum, colsq, rowsum, first
