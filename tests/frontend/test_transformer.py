"""The transformer layers in eager mode (TinyTorch modules 12-13 names and semantics), against float64
NumPy references written from the formulas (tests/transformer_ref.py)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.transformer_ref import attention64, block64, causal_mask, layer_norm64, mlp64
from tinycomp.nn import (
    MLP,
    LayerNorm,
    MultiHeadAttention,
    Tensor,
    TransformerBlock,
    manual_seed,
    scaled_dot_product_attention,
)


def x_of(batch: int, seq: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, seq, width)).astype(np.float32)


def assert_close_to(out: Tensor, ref: np.ndarray, rtol: float = 2e-5) -> None:
    assert out.dtype == np.float32 and out.shape == ref.shape
    scale = max(1.0, float(np.abs(ref).max(initial=0)))
    np.testing.assert_allclose(out.data.astype(np.float64), ref, rtol=rtol, atol=rtol * scale)


# ---------------------------------------------------------------- LayerNorm

@pytest.mark.parametrize("batch", [0, 1, 7])
def test_layer_norm_matches_float64_and_normalizes(batch):
    ln = LayerNorm(13)
    ln.gamma.data[:] = np.linspace(0.5, 2, 13)
    ln.beta.data[:] = np.linspace(-1, 1, 13)
    x = x_of(batch, 5, 13) * 3 + 2
    assert_close_to(ln(Tensor(x)), layer_norm64(ln, x.astype(np.float64)))
    plain = LayerNorm(13)(Tensor(x)).data.astype(np.float64)  # gamma 1, beta 0: mean 0, std 1 per row
    np.testing.assert_allclose(plain.mean(axis=-1), 0, atol=1e-5)
    np.testing.assert_allclose(plain.std(axis=-1), 1, atol=1e-4)


def test_layer_norm_as_tinytorch():
    ln = LayerNorm(4, eps=1e-3)
    assert ln.eps == 1e-3 and ln.normalized_shape == 4
    assert [p.shape for p in ln.parameters()] == [(4,), (4,)]
    assert ln.parameters()[0] is ln.gamma and ln.parameters()[1] is ln.beta
    np.testing.assert_array_equal(ln.gamma.data, np.ones(4))
    np.testing.assert_array_equal(ln.beta.data, np.zeros(4))
    out = ln(Tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]))
    assert out.shape == (2, 4)
    assert repr(ln) == "LayerNorm(normalized_shape=4, eps=0.001)"
    with pytest.raises(ValueError, match="normalized_shape must be a positive integer; got 0"):
        LayerNorm(0)
    with pytest.raises(ValueError, match="eps must be a non-negative number"):
        LayerNorm(4, eps=-1)


# ---------------------------------------------------------------- MLP

def test_mlp_matches_float64_and_defaults_to_4x():
    manual_seed(0)
    mlp = MLP(11, 17)
    x = x_of(7, 3, 11)
    assert_close_to(mlp(Tensor(x)), mlp64(mlp, x.astype(np.float64)))
    assert MLP(8).hidden_dim == 32 and len(MLP(8).parameters()) == 4
    assert repr(mlp) == "MLP(embed_dim=11, hidden_dim=17)"
    assert mlp.linear1.weight.shape == (11, 17) and mlp.linear2.weight.shape == (17, 11)


# ---------------------------------------------------------------- attention

@pytest.mark.parametrize("batch", [0, 1, 7])
@pytest.mark.parametrize("mask_kind", [None, "2d", "3d", "4d"])
def test_attention_matches_float64(batch, mask_kind):
    manual_seed(1)
    mha = MultiHeadAttention(12, 3)
    x = x_of(batch, 5, 12)
    mask = None
    if mask_kind == "2d":
        mask = np.tril(np.ones((5, 5), np.float32))
    elif mask_kind == "3d":
        mask = causal_mask(batch, 5)
        mask[:, 2, 0] = 0  # per-sample masks may differ from the causal one
    elif mask_kind == "4d":
        mask = np.broadcast_to(np.tril(np.ones((5, 5), np.float32)), (batch, 3, 5, 5)).copy()
    out = mha(Tensor(x), None if mask is None else Tensor(mask))
    assert_close_to(out, attention64(mha, x.astype(np.float64), mask), rtol=5e-5)


def test_blocked_positions_get_no_weight():
    rng = np.random.default_rng(3)
    q, k, v = (Tensor(rng.standard_normal((2, 4, 6))) for _ in range(3))
    mask = Tensor(np.tril(np.ones((2, 4, 4))))
    out, weights = scaled_dot_product_attention(q, k, v, mask)
    w = weights.data
    assert out.shape == (2, 4, 6) and w.shape == (2, 4, 4)
    np.testing.assert_allclose(w.sum(axis=-1), 1, atol=1e-6)
    assert np.all(w[:, np.triu_indices(4, 1)[0], np.triu_indices(4, 1)[1]] < 1e-6)
    np.testing.assert_allclose(w[:, 0, 0], 1, atol=1e-6)  # the first query sees only itself


def test_attention_as_tinytorch_and_its_errors():
    mha = MultiHeadAttention(64, 8)
    assert (mha.embed_dim, mha.num_heads, mha.head_dim) == (64, 8, 8)
    assert len(mha.parameters()) == 8
    assert repr(mha) == "MultiHeadAttention(embed_dim=64, num_heads=8)"
    with pytest.raises(ValueError, match=r"embed_dim \(10\) must be divisible by num_heads \(4\)"):
        MultiHeadAttention(10, 4)
    with pytest.raises(ValueError, match=r"expects input of shape \(batch, seq, 64\); got shape \(2, 3, 32\)"):
        mha(Tensor(np.zeros((2, 3, 32))))
    with pytest.raises(ValueError, match=r"attention mask must have shape \(3, 3\)"):
        mha(Tensor(np.zeros((2, 3, 64))), Tensor(np.ones((2, 3, 4))))


def test_a_causal_mask_made_once_for_every_sample_as_tinytorch_makes_it():
    """TinyTorch's create_causal_mask(S) is (1, S, S), passed to every block at any batch: eager said
    "cannot reshape (1, 5, 5) to (2, 1, 5, 5)", never naming the mask; compiled blamed tinycomp's own
    reshape. A (1, S, S) mask now means the same mask for every sample, as a (S, S) one."""
    import tinycomp as tc
    manual_seed(3)
    mha = MultiHeadAttention(16, 4)
    x = x_of(2, 5, 16)
    one = np.tril(np.ones((5, 5), np.float32))[None]
    want = mha(Tensor(x), Tensor(one[0])).data
    np.testing.assert_array_equal(mha(Tensor(x), Tensor(one)).data, want)
    fast = tc.compile(mha, input_shape=[(None, 5, 16), (1, 5, 5)])
    np.testing.assert_allclose(fast(x, one).data, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"attention mask must have shape .*got \(3, 5, 5\) for a batch of 2"):
        mha(Tensor(x), Tensor(np.ones((3, 5, 5))))


# ---------------------------------------------------------------- TransformerBlock

@pytest.mark.parametrize("batch", [0, 1, 7])
@pytest.mark.parametrize("masked", [False, True])
def test_block_matches_float64(batch, masked):
    manual_seed(2)
    block = TransformerBlock(12, 4, ff_dim=20)
    for ln in (block.ln1, block.ln2):
        ln.gamma.data[:] = np.random.default_rng(4).uniform(0.5, 1.5, 12)
        ln.beta.data[:] = np.random.default_rng(5).uniform(-0.5, 0.5, 12)
    x = x_of(batch, 9, 12)
    mask = causal_mask(batch, 9) if masked else None
    out = block(Tensor(x), None if mask is None else Tensor(mask))
    assert_close_to(out, block64(block, x.astype(np.float64), mask), rtol=5e-5)


def test_block_as_tinytorch():
    block = TransformerBlock(128, 8, mlp_ratio=2)
    assert block.mlp.hidden_dim == 256 and block.embed_dim == 128 and block.num_heads == 8
    assert TransformerBlock(16, 4).mlp.hidden_dim == 64
    assert TransformerBlock(16, 4, ff_dim=24).mlp.hidden_dim == 24
    params = block.parameters()
    assert len(params) == 16 and len({id(p) for p in params}) == 16  # 8 attention, 2 + 2 norms, 4 mlp
    assert repr(block) == "TransformerBlock(embed_dim=128, num_heads=8, ff_dim=256)"
    with pytest.raises(ValueError, match="mlp_ratio must be a positive number"):
        TransformerBlock(16, 4, mlp_ratio=0)
    with pytest.raises(ValueError, match=r"mlp_ratio=0.01 leaves the MLP no hidden units: int\(10 \* 0.01\) = 0"):
        TransformerBlock(10, 2, mlp_ratio=0.01)
    with pytest.raises(ValueError, match="TransformerBlock ff_dim must be a positive integer; got 0"):
        TransformerBlock(10, 2, ff_dim=0)
    # TinyTorch's signatures: (embed_dim, num_heads, mlp_ratio=4, dropout_prob=0.1), MLP(embed_dim,
    # hidden_dim=None, dropout_prob=0.1); its blocks apply no dropout with it, nor do these
    tiny = TransformerBlock(16, 4, 2, 0.1)
    assert tiny.mlp.hidden_dim == 32 and tiny.dropout_prob == 0.1 and MLP(8, 16, dropout_prob=0.2).dropout_prob == 0.2
    y = Tensor(x_of(2, 3, 16))
    np.testing.assert_array_equal(tiny(y).data, tiny(y).data)  # no dropout drawn
    with pytest.raises(ValueError, match=r"TransformerBlock dropout_prob must be a number in \[0, 1\]; got 1.5"):
        TransformerBlock(16, 4, 4, 1.5)
    x = Tensor(np.random.default_rng(0).standard_normal((2, 8, 128)))
    assert block(x).shape == (2, 8, 128) and block.forward(x, Tensor(causal_mask(2, 8))).shape == (2, 8, 128)
