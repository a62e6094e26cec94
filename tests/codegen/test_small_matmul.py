"""Batched matmul of small matrices (`codegen/small_matmul.py`): each product in registers, with the
bits the layer GEMM gives for the same rows; larger or narrow-layer shapes keep the GEMM."""

from __future__ import annotations

import numpy as np
import pytest

import tinycomp as tc
from tinycomp.codegen.small_matmul import is_small
from tinycomp.codegen.target import host
from tinycomp.nn import Layer, Tensor


class BatchedProduct(Layer):
    def forward(self, a, b):
        return a.matmul(b)


class SharedProduct(Layer):
    """x @ W with W a parameter: one GEMM over every row of the batch."""

    def __init__(self, w):
        self.w = Tensor(w)

    def forward(self, x):
        return x.matmul(self.w)


WIDTH = host().vector_width
# In the host's vectors (W lanes): one lane, part of one vector, one whole, one past, two and a
# half, the four-vector limit, a J that is not a multiple of the vector, a one-column B.
SHAPES = [(1, 1, 1), (4, 8, 4), (3, 7, WIDTH - 1), (9, WIDTH, WIDTH), (13, 2 * WIDTH + 1, WIDTH + 1),
          (8, 4 * WIDTH, 4 * WIDTH), (5, WIDTH + 4, 2 * WIDTH + WIDTH // 2), (2, WIDTH - 1, 1)]


@pytest.mark.parametrize("I, K, J", SHAPES)
def test_small_products_match_float64_and_the_layer_gemm_bit_for_bit(I, K, J):
    """Every sample's product within float32 rounding of float64, and the very bits the GEMM of
    `x @ W` gives those rows (sums over k in the same order, from +0, one FMA per k)."""
    assert is_small(K, J, WIDTH)
    rng = np.random.default_rng(I * 100 + K + J)
    w = rng.standard_normal((K, J)).astype(np.float32)
    a = rng.standard_normal((6, I, K)).astype(np.float32)
    fast = tc.compile(BatchedProduct(), threads=1)
    got = fast(a, np.broadcast_to(w, (6, K, J)).copy()).data
    assert "tinycomp.smallmm" in fast.dump("llvm")
    ref = a.astype(np.float64) @ w.astype(np.float64)
    bound = 2 * K * np.finfo(np.float32).eps * (np.abs(a).astype(np.float64) @ np.abs(w).astype(np.float64))
    assert np.all(np.abs(got - ref) <= bound)
    np.testing.assert_array_equal(got, tc.compile(SharedProduct(w), threads=1)(a).data)


@pytest.mark.parametrize("K, J", [(4 * WIDTH + 1, 4), (WIDTH, 4 * WIDTH + 1), (32, 3), (100, 100)])
def test_large_and_narrow_layer_shapes_keep_the_gemm(K, J):
    """K or J past 4 vectors, and a narrow layer's shape (J under a vector with K >= 32: the GEMM's dot products
    sum in a pairwise tree, more accurate under cancellation than one sum in a lane)."""
    assert not is_small(K, J, WIDTH)
    rng = np.random.default_rng(K + J)
    a, b = rng.standard_normal((3, 5, K)).astype(np.float32), rng.standard_normal((3, K, J)).astype(np.float32)
    fast = tc.compile(BatchedProduct(), threads=1)
    got = fast(a, b).data
    assert "tinycomp.smallmm" not in fast.dump("llvm")
    np.testing.assert_allclose(got, a.astype(np.float64) @ b, rtol=1e-4, atol=1e-4 * np.sqrt(K))


def test_broadcast_leading_dims_nan_and_threads():
    """(N, H, I, K) @ (N, 1, K, J): one b slice for every head; a NaN stays in its sample's rows it
    reaches; the batch split across two threads gives the same bits."""
    rng = np.random.default_rng(7)
    a = rng.standard_normal((40, 3, 5, 12)).astype(np.float32)
    b = rng.standard_normal((40, 1, 12, 20)).astype(np.float32)
    a[7, 1, 2, 4] = np.nan
    one = tc.compile(BatchedProduct(), threads=1)(a, b).data
    np.testing.assert_array_equal(tc.compile(BatchedProduct(), threads=2)(a, b).data, one)
    eager = BatchedProduct()(Tensor(a), Tensor(b)).data
    np.testing.assert_array_equal(np.isnan(one), np.isnan(eager))
    assert np.isnan(one[7, 1, 2]).all() and np.isnan(one).sum() == 20
    np.testing.assert_allclose(one, eager, rtol=1e-5, atol=1e-5)
