"""The vectorisable logarithm against libm, and that it does vectorise."""

from __future__ import annotations

import math
import platform

import numba
import numpy as np
import pytest

from pyflashmm._kernels import vecmath


@numba.njit(error_model="numpy")  # the project's error model; not cached, so inspectable
def _log_all(x, out):
    for i in range(x.shape[0]):
        out[i] = vecmath.log_vec(x[i])


def _ulps(a, b):
    return np.abs(a - b) / np.spacing(np.abs(b))


def test_log_vec_matches_libm_to_two_ulps_over_all_doubles():
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [
            np.exp(rng.uniform(-745.0, 709.0, 200_000)),  # every binade, subnormals included
            1.0 + rng.random(50_000) * 1e-6,  # near 1: ln x small
            rng.uniform(0.5, 2.0, 50_000),
            1.0 + np.exp(rng.uniform(-40.0, 20.0, 50_000)),  # 1 + αμ of the line search
            [math.sqrt(2.0), np.nextafter(math.sqrt(2.0), 0.0), 2.0, 0.5, 1.0, 5e-324, 2.2e-308],
        ]
    )
    out = np.empty_like(x)
    _log_all(x, out)
    ref = np.array([math.log(v) for v in x])
    exact = ref == 0.0
    assert (out[exact] == 0.0).all()
    assert _ulps(out[~exact], ref[~exact]).max() <= 2.0
    # the line search's arguments (x ≥ 1): at most one unit in the last place
    ge1 = (x > 1.0) & ~exact
    assert _ulps(out[ge1], ref[ge1]).max() <= 1.0


@pytest.mark.parametrize(
    ("x", "expected"),
    [(0.0, -math.inf), (-1.0, math.nan), (math.inf, math.inf), (math.nan, math.nan)],
)
def test_log_vec_special_values(x, expected):
    out = np.empty(1)
    _log_all(np.array([x]), out)
    if math.isnan(expected):
        assert math.isnan(out[0])
    else:
        assert out[0] == expected


def test_series_coefficients_approximate_the_atanh_series():
    # R(z)/z = Σ 2 zᵏ/(2k + 3), summed directly, against the degree-6 polynomial in use
    z = np.linspace(0.0, vecmath.Z_MAX, 10_001)
    series = sum(2.0 * z**k / (2 * k + 3) for k in range(40))
    # the constants compiled into the kernels, and the fit that produced them recomputed here:
    # the error of ln x each causes, relative to ln(1 + f) ≈ 2s, is |ΔR|·s/(2s) = z·|ΔQ|/2.
    # The two are not compared coefficient by coefficient: the degree-6 least-squares fit on an
    # interval of width 0.03 is ill-conditioned, and LAPACK builds differ in its last digits
    # (numpy 2.4.6 moves the z⁶ coefficient by 1e-4 relative) at the same accuracy
    # (1.2e-17 for the compiled constants, 9.5e-18 for numpy 2.4.6's refit).
    for coefficients in (vecmath.COEFFICIENTS, vecmath.series_coefficients()):
        poly = np.polynomial.polynomial.polyval(z, coefficients)
        assert (np.abs(poly - series) * z / 2).max() < 5e-17
        assert abs(coefficients[0] - 2.0 / 3.0) < 1e-15


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 registers")
def test_log_vec_loop_compiles_to_simd():
    x = np.linspace(1.0, 2.0, 64)
    _log_all(x, np.empty_like(x))
    asm = next(iter(_log_all.inspect_asm().values()))
    assert "ymm" in asm or "zmm" in asm


@numba.njit(error_model="numpy")
def _log1p_all(x, out, inv):
    for i in range(x.shape[0]):
        out[i], inv[i] = vecmath.log1p_recip(x[i])


def test_log1p_recip_matches_libm():
    rng = np.random.default_rng(1)
    x = np.concatenate(
        [
            np.exp(rng.uniform(-60.0, 30.0, 100_000)),  # αμ: from far below 2⁻⁵³ to 10¹³
            rng.uniform(-0.5, 0.5, 20_000),
            [0.0, 1e-300, 2.0**-53, 2.0**-52, 1.0],
        ]
    )
    out, inv = np.empty_like(x), np.empty_like(x)
    _log1p_all(x, out, inv)
    ref = np.array([math.log1p(v) for v in x])
    nz = ref != 0.0
    assert (out[~nz] == 0.0).all()
    assert _ulps(out[nz], ref[nz]).max() <= 2.0
    assert _ulps(inv, 1.0 / (1.0 + x)).max() <= 0.5
