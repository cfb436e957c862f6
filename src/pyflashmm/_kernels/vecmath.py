"""A natural logarithm that LLVM can vectorise.

``math.log`` compiles to a call into libm, and a loop that calls it runs one element at a time
(this Numba build has no SVML, Intel's vector maths library). :func:`log_vec` is written in
plain arithmetic (bit operations, one division and a polynomial), so loops over arrays that use
it compile to SIMD instructions. It is used where one logarithm per cell and per trial is
the bulk of the work (the dispersion line search of ``_kernels.nb_dispersion``).

Method
------
Write x = 2ᵉ·m with m ∈ [1/√2, √2) (the exponent and mantissa fields of the IEEE-754 double,
with m halved and e increased when m ≥ √2), f = m − 1 (exact) and s = f / (2 + f), so that
1 + f = (1 + s)/(1 − s) and, with z = s²,

    ln(1 + f) = 2s + s·R(z),   R(z) = Σ_{k≥1} 2 zᵏ/(2k + 1),

the Taylor series of atanh. |s| ≤ 3 − 2√2 < 0.1716 and z < 0.0295. R(z)/z is replaced by
its Chebyshev economisation of degree 6 on [0, 0.0295] (``series_coefficients``; the change
to ln x is below 1.3e-17 relative). For accuracy the small leading terms are kept apart:
since 2s = f − s·f and s·f = (f²/2)(1 − s),

    ln x = e·ln2_hi − ((h − (s·(h + R(z)) + e·ln2_lo)) − f),   h = f²/2,

with ln 2 split into a head of 32 significant bits (e·ln2_hi is exact for |e| < 2¹¹) and a
tail. The result is within one unit in the last place of libm's ``math.log`` for x ≥ 1 and
within two below 1 (the tests compare them over the whole range of doubles). Products and sums
are fused (``llvm.fmuladd``) where the CPU has FMA instructions.
Zero gives −inf, negative numbers NaN, +inf and NaN themselves; subnormal inputs are scaled
by 2⁵⁴ first. All of these are selects, not branches, so the loops still vectorise.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from pyflashmm._jit import njit

#: ln 2 split into a head with 32 significant bits (exact products with small integers) and
#: the rest
LN2_HI = float.fromhex("0x1.62e42fefp-1")
LN2_LO = math.log(2.0) - LN2_HI
_SQRT2 = math.sqrt(2.0)
_MANT = 0x000FFFFFFFFFFFFF
_ONE_BITS = 0x3FF0000000000000
_TWO54 = 2.0**54
_TINY = 2.0**-1022
#: largest z = s² (at m = √2 or 1/√2)
Z_MAX = (3.0 - 2.0 * math.sqrt(2.0)) ** 2


def series_coefficients(degree: int = 6) -> np.ndarray:
    """Coefficients (ascending) of a polynomial Q of ``degree`` with Q(z) ≈ R(z)/z on
    [0, ``Z_MAX``], R(z)/z = Σ_{k≥0} 2 zᵏ/(2k + 3): the series summed to 40 terms at 200
    Chebyshev nodes, then a least-squares Chebyshev fit (near-minimax) in the power basis."""
    from numpy.polynomial import chebyshev, polynomial

    nodes = 0.5 * Z_MAX * (1.0 + np.cos(np.pi * (np.arange(200) + 0.5) / 200))
    series = 2.0 / (2.0 * np.arange(40) + 3.0)
    fit = chebyshev.Chebyshev.fit(nodes, polynomial.polyval(nodes, series), degree, [0, Z_MAX])
    return fit.convert(kind=polynomial.Polynomial).coef


#: ``series_coefficients()`` as computed once and written out (the test recomputes them), so
#: that the compiled kernels do not depend on a least-squares solve at import
_Q0, _Q1, _Q2, _Q3, _Q4, _Q5, _Q6 = (
    float.fromhex(h)
    for h in (
        "0x1.555555555555ap-1",
        "0x1.999999999500cp-2",
        "0x1.2492492e457a0p-2",
        "0x1.c71c6277fcb71p-3",
        "0x1.7462d402de315p-3",
        "0x1.39fa4f5c1237cp-3",
        "0x1.2b8a61b2ad996p-3",
    )
)
COEFFICIENTS = (_Q0, _Q1, _Q2, _Q3, _Q4, _Q5, _Q6)


@intrinsic
def fmuladd(typingctx, a, b, c):
    """a·b + c, fused into one FMA instruction where the CPU has one (``llvm.fmuladd``)."""
    if not all(isinstance(t, types.Float) and t.bitwidth == 64 for t in (a, b, c)):
        return None

    def codegen(context, builder, signature, args):
        d = ir.DoubleType()
        fn = builder.module.declare_intrinsic("llvm.fmuladd", [d], ir.FunctionType(d, [d, d, d]))
        return builder.call(fn, args)

    return types.float64(types.float64, types.float64, types.float64), codegen


@intrinsic
def _as_int64(typingctx, x):
    """The bits of a float64 as an int64 (a bitcast; no conversion)."""
    if not isinstance(x, types.Float) or x.bitwidth != 64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return types.int64(types.float64), codegen


@intrinsic
def _as_float64(typingctx, i):
    """The float64 whose bits are the int64 ``i`` (a bitcast; no conversion)."""
    if not isinstance(i, types.Integer) or i.bitwidth != 64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


@njit(inline="always")
def log_vec(x):
    """ln x for a float64 (see the module docstring); vectorises inside loops."""
    tiny = x < _TINY
    xs = x * _TWO54 if tiny else x
    bits = _as_int64(xs)
    e = float((bits >> 52) - 1023) - (54.0 if tiny else 0.0)
    m = _as_float64((bits & _MANT) | _ONE_BITS)
    big = m >= _SQRT2
    m = 0.5 * m if big else m
    e = e + 1.0 if big else e
    f = m - 1.0
    s = f / (2.0 + f)
    z = s * s
    q = fmuladd(fmuladd(fmuladd(_Q6, z, _Q5), z, _Q4), z, _Q3)
    r = z * fmuladd(fmuladd(fmuladd(q, z, _Q2), z, _Q1), z, _Q0)
    h = 0.5 * f * f
    out = e * LN2_HI - ((h - fmuladd(s, h + r, e * LN2_LO)) - f)
    out = out if x < math.inf else x  # +inf, and NaN (the comparison is false)
    out = out if x != 0.0 else -math.inf
    return out if x >= 0.0 else math.nan


@njit(inline="always")
def log1p_recip(x):
    """(ln(1 + x), 1/(1 + x)) for x > −1 with one division, vectorisable.

    With u = 1 + x rounded, ln(1 + x) = ln u + ln(1 + c/u) ≈ ln u + c/u, where c = x − (u − 1)
    is the rounding error of u (exact); |c/u| ≤ 2⁻⁵³, so the dropped terms are below 2⁻¹⁰⁶
    and the result is as accurate as ``log_vec`` (for x below 2⁻⁵³, u = 1 and the result is x).
    """
    u = 1.0 + x
    inv = 1.0 / u
    return log_vec(u) + (x - (u - 1.0)) * inv, inv
