"""The float32-only `x ** c` (codegen/vecpow32.py, for targets without float64 hardware) against the
float64 power of the same float32 input and exponent: within vecpow32.MAX_ULP on the dense sweeps of
test_vecpow.py, and every special value exactly as the eager rule `ir.ops.power` gives it."""

from __future__ import annotations

import numpy as np
import pytest
from jit_util import emit_map_kernel, jit, new_module, run_map
from test_vecmath import ulp_errors
from test_vecpow import EXPONENTS, SPECIALS, pow_kernels, sweep

from tinycomp.codegen import vecpow, vecpow32
from tinycomp.ir.refs import power

WIDTHS = (4, 1)


@pytest.fixture(scope="module")
def kernels():
    yield pow_kernels("pow32", WIDTHS, float64=False)


def run(kernels, i: int, x: np.ndarray, width: int) -> np.ndarray:
    return run_map(kernels[1][(i, width)], np.ascontiguousarray(x, np.float32), width)


def reference(x: np.ndarray, c: float) -> np.ndarray:
    """float64 power of x and of c as the float32 NumPy's float32 power takes it."""
    with np.errstate(all="ignore"):
        return power(x.astype(np.float64), np.float64(np.float32(c)))


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("i", range(len(EXPONENTS)))
def test_pow32_within_its_ulp_bound_on_a_sweep(kernels, i, width):
    x = sweep(100_000 if width == 4 else 20_000)
    got = run(kernels, i, x, width)
    err = ulp_errors(got, reference(x, EXPONENTS[i]))
    worst = int(np.argmax(err))
    assert err[worst] <= vecpow32.MAX_ULP, \
        f"x ** {EXPONENTS[i]}: {err[worst]:.3f} ulp at x={x[worst]!r}: {got[worst]!r}"


@pytest.mark.parametrize("i", range(len(EXPONENTS)))
def test_pow32_special_values_follow_the_eager_rule(kernels, i):
    """Zeros, infinities and NaN exactly as eager's float32 power (C99 pow), signs included; the
    rest of the specials (subnormals, 3.4e38, 1 +- ulp) within the bound."""
    got = run(kernels, i, SPECIALS, 1)
    with np.errstate(all="ignore"):
        want = power(SPECIALS, np.float32(EXPONENTS[i]))
    exact = ~np.isfinite(want) | (want == 0) | ~np.isfinite(SPECIALS) | (SPECIALS == 0)
    np.testing.assert_array_equal(got[exact], want[exact])  # nan matches nan
    zero = exact & (want == 0)
    np.testing.assert_array_equal(np.signbit(got[zero]), np.signbit(want[zero]))
    err = ulp_errors(got, reference(SPECIALS, EXPONENTS[i]))
    assert err.max() <= vecpow32.MAX_ULP, f"x ** {EXPONENTS[i]}: {dict(zip(SPECIALS, got, strict=True))}"


@pytest.mark.parametrize("c", [1e-50, 1e39, -1e39, 3.0000000001])
def test_an_exponent_counts_as_the_float32_it_rounds_to(c):
    """NumPy's float32 power takes a Python exponent as float32: 1e-50 is 0 (x ** 0 = 1, NaN too),
    1e39 is inf, 3.0000000001 is the odd integer 3. The kernel picks its special cases on that value."""
    module = new_module("vecpow_rounded_exponent")
    emit_map_kernel(module, "k", 1, lambda b, m, x: vecpow.emit_pow(b, m, x, c, float64=False))
    engine, addresses = jit(module, "k")
    x = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, -1.0, 2.0, -2.0, 0.5, 3.0], np.float32)
    got = run_map(addresses["k"], x, 1)
    with np.errstate(all="ignore"):
        want = power(x, np.float32(c))
    np.testing.assert_array_equal(got, want)


def ulp_window(lo: float, hi: float, n: int) -> np.ndarray:
    """n float32 values evenly spaced in their bit patterns from lo to hi (positive)."""
    bits = np.linspace(np.float32(lo).view(np.int32), np.float32(hi).view(np.int32), n)
    return bits.astype(np.int32).view(np.float32)


@pytest.mark.parametrize("c", [255.0, -255.0, 200.0, 100.5, -100.5])
def test_pow32_near_overflow_with_mantissas_near_sqrt2(c):
    """Where log|x| is largest against its series (m near sqrt(2) and sqrt(1/2), where log m's cube
    term is ~1 % of it) and c log|x| nears float32's overflow or underflow, any error in the log
    pair is magnified by |c log x| (up to 88): 6.7 ulp at c = -255 when the cube term was a plain
    float32. Also the whole range of x whose power is a finite non-zero float32."""
    module = new_module("vecpow32_near_sqrt2")
    emit_map_kernel(module, "k", 4, lambda b, m, x: vecpow.emit_pow(b, m, x, c, float64=False))
    engine, addresses = jit(module, "k")
    limit = 88.7 / abs(c)  # |log x| where x ** c leaves the float32 range
    x = np.concatenate([ulp_window(1.3, 1.42, 100_000), ulp_window(0.69, 0.72, 100_000),
                        ulp_window(np.exp(-limit), np.exp(limit), 100_000)])
    got = run_map(addresses["k"], x, 4)
    err = ulp_errors(got, reference(x, c))
    worst = int(np.argmax(err))
    assert err[worst] <= vecpow32.MAX_ULP, f"x ** {c}: {err[worst]:.3f} ulp at x={x[worst]!r}: {got[worst]!r}"
