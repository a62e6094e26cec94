"""`x ** c` kernels (codegen/vecpow.py) against the float64 power of the same float32 input: within
MAX_ULP (correctly rounded but for double-rounding ties) on dense sweeps, and every special value
exactly as the eager rule `ir.ops.power` gives it in float32 (C99 pow; sqrt for c = 0.5)."""

from __future__ import annotations

import numpy as np
import pytest
from jit_util import emit_map_kernel, jit, new_module, run_map
from test_vecmath import ulp_errors

from tinycomp.codegen import vecmath, vecpow
from tinycomp.ir.refs import power

EXPONENTS = (2.0, 3.0, 7.0, -1.0, -2.0, -3.0, 0.0, 1.0, 0.5, -0.5, 1.5, 0.25, float(np.float32(1 / 3)), 2.2,
             -1.7, 100.5, 1e-3, 1e10, 2.0**70, np.inf, -np.inf, np.nan,
             -2.5, 7.5, 63.5, -63.5)  # half integers: |x| ** k * sqrt|x| below vecpow.HALF_INTEGER_MAX
WIDTHS = (16, 1)
SPECIALS = np.array([0.0, -0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5, np.inf, -np.inf, np.nan, 2.0**-149, -(2.0**-149),
                     3.4e38, -3.4e38, 1e-38, 0.99999994, 1.0000001], np.float32)


def pow_kernels(name: str, widths: tuple[int, ...], float64: bool | None = None):
    """(engine, {(exponent index, width): address}): a map kernel of x ** c per exponent and width."""
    module = new_module(name)
    names = {}
    for i, c in enumerate(EXPONENTS):
        for w in widths:
            names[(i, w)] = f"{name}_{i}_{w}"
            emit_map_kernel(module, names[(i, w)], w,
                            lambda b, m, x, c=c: vecpow.emit_pow(b, m, x, c, float64=float64))
    engine, addresses = jit(module, *names.values())
    return engine, {key: addresses[n] for key, n in names.items()}


@pytest.fixture(scope="module", params=["avx512", "portable"])
def kernels(request):
    """Both forms of the float64 log and exp (`vecmath.AVX512_FORMS`): the tables an AVX-512 host
    takes (`vecpow.log_f64_table`, `exp_f64_table`) and the series every other target takes."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(vecmath, "AVX512_FORMS", request.param == "avx512")
        built = pow_kernels("pow", WIDTHS)
    yield built


def run(kernels, i: int, x: np.ndarray, width: int) -> np.ndarray:
    return run_map(kernels[1][(i, width)], np.ascontiguousarray(x, np.float32), width)


def sweep(n: int) -> np.ndarray:
    rng = np.random.default_rng(7)
    bits = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32).view(np.float32)
    near_one = np.float32(1 + rng.uniform(-0.01, 0.01, n // 4))
    return np.concatenate([bits[np.isfinite(bits)], np.linspace(-4, 4, n // 4, dtype=np.float32), near_one])


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("i", range(len(EXPONENTS)))
def test_pow_is_correctly_rounded_on_a_sweep(kernels, i, width):
    x = sweep(200_000 if width == 16 else 40_000)
    got = run(kernels, i, x, width)
    with np.errstate(all="ignore"):
        ref = power(x.astype(np.float64), np.float64(EXPONENTS[i]))
    err = ulp_errors(got, ref)
    worst = int(np.argmax(err))
    assert err[worst] <= vecpow.MAX_ULP, f"x ** {EXPONENTS[i]}: {err[worst]:.3f} ulp at x={x[worst]!r}: {got[worst]!r}"


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("i", range(len(EXPONENTS)))
def test_pow_special_values_follow_the_eager_rule(kernels, i, width):
    got = run(kernels, i, SPECIALS, width)
    with np.errstate(all="ignore"):
        want = power(SPECIALS, np.float32(EXPONENTS[i]))
    exact = ~np.isfinite(want) | (want == 0) | ~np.isfinite(SPECIALS) | (SPECIALS == 0)
    np.testing.assert_array_equal(got[exact], want[exact])  # nan matches nan
    zero = exact & (want == 0)
    np.testing.assert_array_equal(np.signbit(got[zero]), np.signbit(want[zero]))
