"""emit_linear with a residual: C = act(A @ W + B) + R on every GEMM path, exactly the layer without
it plus R (one float32 add), R left as it was."""

from __future__ import annotations

import numpy as np
import pytest
from test_gemm import GUARD, Compiled, make_inputs

from tinycomp.codegen.gemm import plan_narrow

WIDTH = 16
# Tiled (main tiles, a tail panel, leftover rows, both paths, costly activations on whole rows and
# on panels), narrow (transposed and in place), one output column, and K == 0 (the epilogue alone).
LAYERS = [(784, 200, True, "relu"), (128, 128, True, None), (50, 257, True, "gelu"), (100, 37, False, "tanh"),
          (64, 100, True, "sigmoid"), (37, 10, True, "relu"), (64, 3, False, None), (64, 1, True, "sigmoid"),
          (0, 20, True, "tanh")]
MS = [0, 1, 2, 5, 7, 9, 13, 31, 64, 67, 129, 200]


@pytest.fixture(scope="module")
def compiled():
    return Compiled([ly + (res,) for ly in LAYERS for res in (False, True)], WIDTH)


def test_the_layers_cover_every_path():
    assert {plan_narrow(K, N, WIDTH) is None for K, N, *_ in LAYERS} == {True, False}


@pytest.mark.parametrize("layer", LAYERS, ids=lambda ly: f"{ly[0]}x{ly[1]}_{ly[3]}")
def test_residual_is_the_layer_plus_r(compiled, layer):
    K, N, _, _ = layer
    rng = np.random.default_rng(K + 7 * N)
    for M in MS:
        A, W, B = make_inputs(rng, M, K, N)
        R = rng.standard_normal((M, N), dtype=np.float32)
        kept = R.copy()
        out = compiled.run(layer + (True,), A, W, B, R=R)
        plain = compiled.run(layer, A, W, B)
        np.testing.assert_array_equal(out, plain + R, err_msg=f"M={M}")
        np.testing.assert_array_equal(R, kept)


def test_nan_and_inf_in_r_stay_in_their_element(compiled):
    layer = (128, 128, True, None)
    rng = np.random.default_rng(3)
    A, W, B = make_inputs(rng, 13, 128, 128)
    R = np.zeros((13, 128), np.float32)
    R[2, 5], R[12, 127] = np.nan, np.inf
    out = compiled.run(layer + (True,), A, W, B, R=R)
    assert np.isnan(out[2, 5]) and out[12, 127] == np.inf
    bad = np.zeros(out.shape, bool)
    bad[2, 5] = bad[12, 127] = True
    assert np.isfinite(out[~bad]).all()


def test_nothing_is_written_past_c(compiled):
    layer = (50, 257, True, "gelu", True)
    rng = np.random.default_rng(4)
    A, W, B = make_inputs(rng, 7, 50, 257)
    C = np.full(7 * 257 + GUARD, 7.0, np.float32)
    compiled.run(layer, A, W, B, C=C, R=rng.standard_normal((7, 257), dtype=np.float32))
    assert np.all(C[7 * 257:] == 7.0)
