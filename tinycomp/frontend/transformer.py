"""`LayerNorm`, `MLP`, `MultiHeadAttention`, `TransformerBlock` (TinyTorch modules 12-13 semantics).

Written with Tensor operations only, so the tracer records them op by op and `tinycomp.compile`
compiles them like any other model: reductions over the last axis, reshapes that keep the batch
first, transposes, batched matmuls and a softmax over the last axis.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from ..checks import positive_int
from ..errors import CompileError
from .activations import GELU
from .layers import Layer, Linear
from .tensor import Tensor, apply_op, as_tensor

MASK_VALUE = -1e9  # added to the scores of blocked positions (TinyTorch's MASK_VALUE)


class LayerNorm(Layer):
    """(x - mean) / sqrt(var + eps) * gamma + beta, mean and (biased) variance over the last axis."""

    def __init__(self, normalized_shape: int | tuple[int, ...], eps: float = 1e-5):
        dims = tuple(normalized_shape) if isinstance(normalized_shape, (tuple, list)) else (normalized_shape,)
        shape = tuple(positive_int("LayerNorm", "normalized_shape", d) for d in dims)
        if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not eps >= 0:
            raise ValueError(f"LayerNorm eps must be a non-negative number; got {eps!r}")
        self.normalized_shape: int | tuple[int, ...] = normalized_shape
        self.eps: float = float(eps)
        self.gamma: Tensor = Tensor(np.ones(shape), requires_grad=True)
        self.beta: Tensor = Tensor(np.zeros(shape), requires_grad=True)

    def forward(self, x: Tensor) -> Tensor:
        x = as_tensor(x)
        mean = x.mean(axis=-1, keepdims=True)
        diff = x - mean
        variance = (diff * diff).mean(axis=-1, keepdims=True)
        return diff / (variance + self.eps).sqrt() * self.gamma + self.beta

    def parameters(self) -> list[Tensor]:
        return [self.gamma, self.beta]

    def __repr__(self) -> str:
        return f"LayerNorm(normalized_shape={self.normalized_shape}, eps={self.eps:g})"


def dropout_probability(owner: str, p: Any) -> float:
    """TinyTorch's MLP and TransformerBlock take `dropout_prob` and apply no dropout with it; so do
    these (a model ported from TinyTorch computes what it computed there). Checked as Dropout's p."""
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"{owner} dropout_prob must be a number in [0, 1]; got {p!r}")
    return float(p)


class MLP(Layer):
    """The transformer feed-forward network: linear1 -> GELU -> linear2 (hidden_dim: 4 x embed_dim).
    `dropout_prob` is TinyTorch's argument, kept and unused as there (`dropout_probability`)."""

    def __init__(self, embed_dim: int, hidden_dim: int | None = None, dropout_prob: float = 0.1):
        self.dropout_prob = dropout_probability("MLP", dropout_prob)
        self.embed_dim = positive_int("MLP", "embed_dim", embed_dim)
        self.hidden_dim = 4 * self.embed_dim if hidden_dim is None else positive_int("MLP", "hidden_dim", hidden_dim)
        self.linear1 = Linear(self.embed_dim, self.hidden_dim)
        self.gelu = GELU()
        self.linear2 = Linear(self.hidden_dim, self.embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear2(self.gelu(self.linear1(x)))

    def parameters(self) -> list[Tensor]:
        return [*self.linear1.parameters(), *self.linear2.parameters()]

    def __repr__(self) -> str:
        return f"MLP(embed_dim={self.embed_dim}, hidden_dim={self.hidden_dim})"


def scaled_dot_product_attention(Q: Tensor, K: Tensor, V: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """softmax(Q @ K^T / sqrt(d) + (1 - mask) * MASK_VALUE) @ V over the last two axes; returns
    (output, attention weights). mask: 1 = attend, 0 = blocked, broadcast against the scores."""
    scores = Q.matmul(K.transpose(-2, -1)) * (1.0 / math.sqrt(Q.shape[-1]))
    if mask is not None:
        scores = scores + (1 - mask) * MASK_VALUE
    weights = apply_op("softmax", scores, dim=-1)
    return weights.matmul(V), weights


class MultiHeadAttention(Layer):
    """Self-attention with `num_heads` heads over (batch, seq, embed_dim) inputs.

    `forward(x, mask=None)`: mask 1 = attend, 0 = blocked (blocked scores get MASK_VALUE added
    before the softmax); shape (seq, seq) for every sample, (batch, seq, seq) per sample, or
    (batch, heads, seq, seq)."""

    def __init__(self, embed_dim: int, num_heads: int):
        embed_dim = positive_int("MultiHeadAttention", "embed_dim", embed_dim)
        num_heads = positive_int("MultiHeadAttention", "num_heads", num_heads)
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads}): each of the "
                             f"heads takes embed_dim // num_heads features")
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.q_proj = Linear(embed_dim, embed_dim)
        self.k_proj = Linear(embed_dim, embed_dim)
        self.v_proj = Linear(embed_dim, embed_dim)
        self.out_proj = Linear(embed_dim, embed_dim)

    def _split_heads(self, t: Tensor, batch_size: Any, seq_len: int) -> Tensor:
        """(batch, seq, embed) -> (batch, heads, seq, head_dim)."""
        return t.reshape(batch_size, seq_len, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        x = as_tensor(x)
        if x.ndim != 3 or x.shape[-1] != self.embed_dim:
            raise ValueError(f"MultiHeadAttention expects input of shape (batch, seq, {self.embed_dim}); "
                             f"got shape {tuple(x.shape)} (Input dimension mismatch)")
        batch_size, seq_len, _ = x.shape
        Q = self._split_heads(self.q_proj(x), batch_size, seq_len)
        K = self._split_heads(self.k_proj(x), batch_size, seq_len)
        V = self._split_heads(self.v_proj(x), batch_size, seq_len)
        attended, _ = scaled_dot_product_attention(Q, K, V, self._mask(mask, batch_size, seq_len))
        merged = attended.transpose(1, 2).reshape(batch_size, seq_len, self.embed_dim)
        return self.out_proj(merged)

    def _mask(self, mask: Any, batch_size: Any, seq_len: int) -> Tensor | None:
        """The mask broadcast against scores of shape (batch, heads, seq, seq)."""
        if mask is None:
            return None
        mask = as_tensor(mask)
        forms = (f"({seq_len}, {seq_len}), (batch or 1, {seq_len}, {seq_len}) or (batch or 1, heads or 1, {seq_len}, "
                 f"{seq_len})")
        if mask.ndim == 2 and not isinstance(mask.shape[0], int):  # traced with the batch N where a seq must be
            raise CompileError(f"attention mask must have shape {forms}; got {tuple(mask.shape)}, a 2-D mask traced "
                               "with the batch first")
        if not 2 <= mask.ndim <= 4 or tuple(mask.shape[-2:]) != (seq_len, seq_len):
            raise ValueError(f"attention mask must have shape {forms}; got {tuple(mask.shape)}")
        if mask.ndim == 3:  # one mask per sample, shared by its heads; (1, S, S) for every sample, as
            first = mask.shape[0]  # TinyTorch's create_causal_mask makes it
            if isinstance(first, int) and isinstance(batch_size, int) and first not in (1, batch_size):
                raise ValueError(f"attention mask must have shape {forms}; got {tuple(mask.shape)} for a batch "
                                 f"of {batch_size}")
            return mask.reshape(-1, 1, seq_len, seq_len)
        return mask

    def parameters(self) -> list[Tensor]:
        return [p for proj in (self.q_proj, self.k_proj, self.v_proj, self.out_proj) for p in proj.parameters()]

    def __repr__(self) -> str:
        return f"MultiHeadAttention(embed_dim={self.embed_dim}, num_heads={self.num_heads})"


class TransformerBlock(Layer):
    """Pre-norm block: h = x + attention(ln1(x), mask); out = h + mlp(ln2(h)). The MLP's hidden width
    is `ff_dim`, or int(embed_dim * mlp_ratio). The positional arguments are TinyTorch's;
    `dropout_prob` is kept and unused as there (`dropout_probability`)."""

    def __init__(self, embed_dim: int, num_heads: int, mlp_ratio: float = 4, dropout_prob: float = 0.1, *,
                 ff_dim: int | None = None):
        self.dropout_prob = dropout_probability("TransformerBlock", dropout_prob)
        self.embed_dim = positive_int("TransformerBlock", "embed_dim", embed_dim)
        self.num_heads = num_heads
        self.attention = MultiHeadAttention(embed_dim, num_heads)
        self.ln1 = LayerNorm(embed_dim)
        self.ln2 = LayerNorm(embed_dim)
        if ff_dim is None:
            if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, numbers.Real) or not mlp_ratio > 0:
                raise ValueError(f"TransformerBlock mlp_ratio must be a positive number; got {mlp_ratio!r}")
            ff_dim = int(embed_dim * mlp_ratio)
            if ff_dim <= 0:
                raise ValueError(f"TransformerBlock mlp_ratio={mlp_ratio!r} leaves the MLP no hidden units: "
                                 f"int({embed_dim} * {mlp_ratio!r}) = {ff_dim}; give a larger ratio or ff_dim")
        else:
            ff_dim = positive_int("TransformerBlock", "ff_dim", ff_dim)
        self.mlp = MLP(embed_dim, ff_dim)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        x = as_tensor(x)
        h = x + self.attention(self.ln1(x), mask)
        return h + self.mlp(self.ln2(h))

    def parameters(self) -> list[Tensor]:
        return [*self.attention.parameters(), *self.ln1.parameters(), *self.ln2.parameters(), *self.mlp.parameters()]

    def __repr__(self) -> str:
        return (f"TransformerBlock(embed_dim={self.embed_dim}, num_heads={self.num_heads}, "
                f"ff_dim={self.mlp.hidden_dim})")
