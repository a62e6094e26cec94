"""Our vector exp, sigmoid, tanh and both GELUs keep their documented ulp bounds on every export
target, judged against float64 over a sweep of each function's interesting range. WebAssembly has no
fused multiply-add: there the exact products the kernels rely on come from Dekker's split
(`vecmath.two_product`; without it exact GELU was 65 ulp off for x < -2.9 and GELU 2.2 ulp)."""

from __future__ import annotations

import numpy as np
import pytest

import tinycomp as tc
from tests.export.runners import TARGETS, run_export, skip_unless_runnable
from tinycomp.codegen import vecmath
from tinycomp.codegen.vector_ops import MAX_ULP
from tinycomp.frontend.functions import stack
from tinycomp.ir.ops import OPS
from tinycomp.nn import GELU, Layer, Sigmoid, Tanh

FUNCTIONS = ("gelu", "gelu_erf", "sigmoid", "tanh", "exp")
WIDTH = 64


class Functions(Layer):
    """Each of FUNCTIONS of every input, stacked: (N, 64) -> (N, 5, 64)."""

    def __init__(self):
        self.gelu, self.gelu_erf, self.sigmoid, self.tanh = GELU(), GELU("none"), Sigmoid(), Tanh()

    def forward(self, x):
        return stack([self.gelu(x), self.gelu_erf(x), self.sigmoid(x), self.tanh(x), x.exp()], axis=1)


def _inputs() -> np.ndarray:
    """Where the kernels branch or cancel: GELU's tails, erfc's range, exp's under- and overflow."""
    rng = np.random.default_rng(11)
    parts = [np.linspace(-14.3, 4, 24_576), np.linspace(-4, -1.5, 8_192), rng.uniform(-90, 90, 8_192),
             np.linspace(-60, 20, 4_096), rng.standard_normal(4_096) * 3]
    x = np.concatenate(parts).astype(np.float32)
    return x[: len(x) // WIDTH * WIDTH].reshape(-1, WIDTH)


def _reference(name: str, x32: np.ndarray) -> np.ndarray:
    x = x32.astype(np.float64)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        if name == "gelu":  # NumPy's float32 formula rounds 1.702 x first, as the kernel does
            return x * OPS["sigmoid"].ref((x32 * np.float32(vecmath.GELU_ALPHA)).astype(np.float64))
        return np.asarray(OPS[name].ref(x), np.float64)


def _ulps(got: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """|got - ref| in float32 ulps of ref, where ref is a normal float32 (the bounds' domain)."""
    _, exponent = np.frexp(np.abs(ref))
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):  # inf and 0 are left out below
        err = np.abs(got.astype(np.float64) - ref) / np.ldexp(1.0, exponent - 24)
        normal = np.isfinite(ref.astype(np.float32)) & (np.abs(ref) >= 2.0**-126)
    return np.where(normal, err, 0.0)


@pytest.mark.parametrize("target", TARGETS)
def test_vector_math_keeps_its_ulp_bounds_on_every_target(tmp_path, target):
    skip_unless_runnable(target)
    x = _inputs()
    tc.export(Functions(), tmp_path, input_shape=(None, WIDTH), target=target)
    got = run_export(target, tmp_path, x, [len(x)])[len(x)].reshape(len(x), len(FUNCTIONS), WIDTH)
    for i, name in enumerate(FUNCTIONS):
        err = _ulps(got[:, i], _reference(name, x))
        worst = np.unravel_index(np.argmax(err), err.shape)
        assert err.max() <= MAX_ULP[name], f"{target} {name}: {err.max():.2f} ulp at x = {x[worst]!r}"
