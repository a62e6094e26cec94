"""Float64 NumPy references of the transformer layers (written from the formulas, not from tinycomp's
code), shared by the eager and the compiled parity tests."""

from __future__ import annotations

import numpy as np

from tinycomp.nn import MLP, LayerNorm, Linear, MultiHeadAttention, TransformerBlock


def f64(t) -> np.ndarray:
    return np.asarray(t.data, np.float64)


def linear64(layer: Linear, x: np.ndarray) -> np.ndarray:
    return x @ f64(layer.weight) + f64(layer.bias)


def layer_norm64(ln: LayerNorm, x: np.ndarray) -> np.ndarray:
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + ln.eps) * f64(ln.gamma) + f64(ln.beta)


def mlp64(mlp: MLP, x: np.ndarray) -> np.ndarray:
    h = linear64(mlp.linear1, x)
    return linear64(mlp.linear2, h / (1 + np.exp(-1.702 * h)))


def attention64(mha: MultiHeadAttention, x: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Per head h: softmax(q_h k_h^T / sqrt(d) + (1 - mask) * -1e9) v_h, heads concatenated, projected."""
    b, s, e = x.shape
    heads, d = mha.num_heads, e // mha.num_heads
    q, k, v = (linear64(p, x).reshape(b, s, heads, d) for p in (mha.q_proj, mha.k_proj, mha.v_proj))
    scores = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(d)
    if mask is not None:
        m = np.asarray(mask, np.float64)
        m = m[:, None] if m.ndim == 3 else m
        scores = scores + (1 - m) * -1e9
    scores = scores - scores.max(axis=-1, keepdims=True) if scores.size else scores
    w = np.exp(scores)
    w = w / w.sum(axis=-1, keepdims=True)
    out = np.einsum("bhqk,bkhd->bqhd", w, v).reshape(b, s, e)
    return linear64(mha.out_proj, out)


def block64(block: TransformerBlock, x: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    h = x + attention64(block.attention, layer_norm64(block.ln1, x), mask)
    return h + mlp64(block.mlp, layer_norm64(block.ln2, h))


def causal_mask(batch: int, seq: int) -> np.ndarray:
    """(batch, seq, seq): 1 where query i may attend to key j <= i."""
    return np.broadcast_to(np.tril(np.ones((seq, seq), np.float32)), (batch, seq, seq)).copy()
