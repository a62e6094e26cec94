"""The transformer layers compiled (issue 15): LayerNorm, MLP, MultiHeadAttention and TransformerBlock
through `tc.compile`, with and without a causal mask (a second input, `fast(x, mask)`), against the
eager layers and float64 NumPy references written from the formulas (tests/transformer_ref.py), at
batch 0, 1, 7 and 129 and odd sizes; `explain()` says what fused; in training mode a dropout after
the block draws the eager masks."""

from __future__ import annotations

import numpy as np
import pytest

import tinycomp as tc
from tests.transformer_ref import attention64, block64, causal_mask, layer_norm64, mlp64
from tinycomp.nn import MLP, Dropout, Layer, LayerNorm, MultiHeadAttention, Tensor, TransformerBlock, manual_seed
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


@pytest.fixture(scope="module")
def attention():
    manual_seed(2)
    return MultiHeadAttention(12, 3)


@pytest.mark.parametrize("batch", BATCHES)
def test_attention_without_mask(attention, batch):
    fast = tc.compile(attention)
    x = x_of(batch, 7, 12)
    assert_parity(fast(x), attention(Tensor(x)), attention64(attention, x.astype(np.float64)))


@pytest.mark.parametrize("batch", BATCHES)
def test_attention_with_a_causal_mask_as_second_input(attention, batch):
    fast = tc.compile(attention)
    x, mask = x_of(batch, 7, 12), causal_mask(batch, 7)
    if batch > 1:
        mask[1, 3, :3] = 0  # each sample its own mask: a per-sample input, not a constant
    assert_parity(fast(x, mask), attention(Tensor(x), Tensor(mask)),
                  attention64(attention, x.astype(np.float64), mask))


def test_attention_explain_names_the_fused_projections(attention):
    fast = tc.compile(attention)
    fast(x_of(2, 7, 12))
    lines = fast.explain().splitlines()
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
        assert any(f"in layer '{proj}': fused matmul" in line and "+ bias add" in line for line in lines), lines
    assert not [line for line in lines if line.startswith("matmul")], lines  # no batched matmul is left:
    [fused] = [line for line in lines if line.startswith("attention")]  # scores to weights @ values are one node
    assert "fused matmul" in fused and "softmax" in fused and "5 transposes not copied" in fused, fused


@pytest.fixture(scope="module")
def block():
    manual_seed(3)
    b = TransformerBlock(12, 4, ff_dim=20)
    varied_norms(b.ln1, b.ln2)
    return b


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("masked", [False, True])
def test_transformer_block(block, batch, masked):
    fast = tc.compile(block)
    x = x_of(batch, 9, 12)
    if masked:
        mask = causal_mask(batch, 9)
        got, eager = fast(x, mask), block(Tensor(x), Tensor(mask))
    else:
        mask, got, eager = None, fast(x), block(Tensor(x))
    assert_parity(got, eager, block64(block, x.astype(np.float64), mask))


def test_transformer_block_explain_and_live_weights(block):
    fast = tc.compile(block)
    x = x_of(3, 9, 12)
    fast(x)
    explained = fast.explain()
    assert "in layer 'mlp.linear1': fused matmul" in explained and "+ gelu" in explained, explained
    linears = [line for line in explained.splitlines() if line.startswith("linear") and "fused matmul" in line]
    assert len(linears) == 6, explained  # 4 projections, 2 MLP layers
    # x + attention(...) and x + mlp(...): the GEMMs before them add the residual themselves
    residual = [line.split("'")[1] for line in linears if "+ residual add" in line]
    assert residual == ["attention.out_proj", "mlp.linear2"], explained
    assert "attention" in explained and "softmax" in explained, explained
    old = block.ln2.gamma.data.copy()
    try:
        block.ln2.gamma.data *= 2  # parameters are read live, the norm's included
        assert_parity(fast(x), block(Tensor(x)), block64(block, x.astype(np.float64)))
    finally:
        block.ln2.gamma.data[:] = old


class DroppedBlock(Layer):
    """A block with dropout after it, taking the mask as a second input."""

    def __init__(self):
        self.block, self.drop = TransformerBlock(12, 3, ff_dim=20), Dropout(0.4)

    def forward(self, x, mask=None):
        return self.drop(self.block(x, mask))


@pytest.mark.parametrize("threads", [1, 3])
def test_training_mode_block_with_a_mask_input_draws_the_eager_masks(threads):
    manual_seed(4)
    model = DroppedBlock()
    fast = tc.compile(model, training=True, threads=threads)
    x = x_of(129, 5, 12)
    mask = causal_mask(129, 5)
    manual_seed(5)
    eager = model(Tensor(x), Tensor(mask))
    manual_seed(5)
    got = fast(x, mask)
    dropped = eager.data == 0
    np.testing.assert_array_equal(got.data == 0, dropped)  # the same elements dropped
    assert 0.35 < dropped.mean() < 0.45
    ref = np.where(dropped, 0.0, block64(model.block, x.astype(np.float64), mask) / 0.6)
    assert_parity(got, eager, ref)


def test_an_input_with_an_empty_axis_is_refused_by_name(block):
    """compile(input_shape=...) refuses zero feature sizes; the first call of a lazily compiled model
    says the same instead of failing deep inside the compiler."""
    fast = tc.compile(block)
    with pytest.raises(ValueError, match=r"positive sizes after the batch dimension.*\(2, 0, 12\)"):
        fast(np.zeros((2, 0, 12), np.float32))
    assert fast(x_of(2, 9, 12)).shape == (2, 9, 12)  # nothing was left half-compiled
