"""The transformer-block benchmark model: `TransformerBlock(embed, heads)` on (batch, seq, embed) inputs.

Like `models.BenchModel`, built identically in every process from a seed, with the same model in
every engine's own terms: the tinycomp eager model, plain NumPy (float32 and the float64
reference), an ONNX graph of standard ops (MatMul, Add, LayerNormalization, Reshape, Transpose,
Softmax, Sigmoid) built with `onnx.helper`, and a torch module. A `causal` block attends to earlier
positions only: its model holds the (seq, seq) 0/1 mask as a tensor and passes it to the block, and
every other engine adds the same term, (1 - mask) * -1e9, to the scores.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..frontend.layers import Layer, Linear
from ..frontend.tensor import Tensor
from ..frontend.transformer import MASK_VALUE, TransformerBlock
from ..nn import manual_seed
from .onnx_graph import serialized_model

Weights = dict[str, np.ndarray]


@dataclass(frozen=True)
class BlockModel:
    name: str
    description: str
    embed: int
    heads: int
    seq: int
    mlp_ratio: int = 4
    eps: float = 1e-5  # LayerNorm's default, which TransformerBlock's norms take
    causal: bool = False  # every position attends to itself and the earlier ones only

    def mask_term(self, dtype: type = np.float32) -> np.ndarray | None:
        """What a causal block adds to its scores, (1 - mask) * MASK_VALUE as eager rounds it; None if
        not causal."""
        if not self.causal:
            return None
        return ((1 - causal_mask(self.seq).astype(dtype)) * dtype(MASK_VALUE)).astype(dtype)

    @property
    def hidden(self) -> int:
        return self.embed * self.mlp_ratio

    @property
    def in_shape(self) -> tuple[int, ...]:
        return (self.seq, self.embed)

    @property
    def flops_per_sample(self) -> int:
        """2 x multiply-adds: four projections, scores and weights x values, the two MLP layers."""
        s, e, h = self.seq, self.embed, self.hidden
        return 2 * (4 * s * e * e + 2 * s * s * e + 2 * s * e * h)

    @property
    def weight_bytes(self) -> int:
        e, h = self.embed, self.hidden
        return 4 * (4 * (e * e + e) + (e * h + h) + (h * e + e) + 4 * e)

    def build(self, seed: int = 0) -> TransformerBlock | CausalBlock:
        """The eager block in eval mode: seeded weights, seeded non-zero biases, gamma and beta (a
        causal one wrapped with its mask)."""
        manual_seed(seed)
        block = TransformerBlock(self.embed, self.heads, mlp_ratio=self.mlp_ratio)
        assert block.ln1.eps == block.ln2.eps == self.eps
        rng = np.random.default_rng(seed + 1)
        for lin in _linears(block).values():
            assert lin.bias is not None
            lin.bias.data[...] = (0.1 * rng.standard_normal(lin.bias.shape)).astype(np.float32)
        for ln in (block.ln1, block.ln2):
            ln.gamma.data[...] = rng.uniform(0.5, 1.5, ln.gamma.shape).astype(np.float32)
            ln.beta.data[...] = (0.1 * rng.standard_normal(ln.beta.shape)).astype(np.float32)
        block.eval()
        return CausalBlock(block, causal_mask(self.seq)) if self.causal else block

    def weights(self, model: Any) -> Weights:
        """The block's parameter arrays by name (`model`: a block `build` made)."""
        out: Weights = {}
        model = model.block if isinstance(model, CausalBlock) else model
        for key, lin in _linears(model).items():
            assert lin.bias is not None
            out[f"{key}.w"], out[f"{key}.b"] = lin.weight.data, lin.bias.data
        for key, ln in (("ln1", model.ln1), ("ln2", model.ln2)):
            out[f"{key}.g"], out[f"{key}.b"] = ln.gamma.data, ln.beta.data
        return out

    def sample(self, batch: int, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(10_000 + seed)
        return rng.standard_normal((batch, self.seq, self.embed), dtype=np.float32)


def causal_mask(seq: int) -> np.ndarray:
    """(seq, seq) float32: 1 where query i may attend to key j <= i, else 0."""
    return np.tril(np.ones((seq, seq), np.float32))


class CausalBlock(Layer):
    """A TransformerBlock that passes its own causal mask on: forward(x) = block(x, mask)."""

    def __init__(self, block: TransformerBlock, mask: np.ndarray):
        self.block, self.mask = block, Tensor(mask)

    def forward(self, x: Any) -> Any:
        return self.block(x, self.mask)

    def parameters(self) -> list[Tensor]:
        return self.block.parameters()


def _linears(block: TransformerBlock) -> dict[str, Linear]:
    att = block.attention
    return {"q": att.q_proj, "k": att.k_proj, "v": att.v_proj, "out": att.out_proj,
            "fc1": block.mlp.linear1, "fc2": block.mlp.linear2}


def numpy_block(bm: BlockModel, weights: Weights, dtype: type = np.float32) -> Callable[[np.ndarray], np.ndarray]:
    """The block as plain NumPy over the given weights (float64 for the parity reference)."""
    w: Weights = {k: np.ascontiguousarray(v, dtype) for k, v in weights.items()}
    eps = bm.eps
    heads, d = bm.heads, bm.embed // bm.heads
    term = bm.mask_term(dtype)

    def norm(x: np.ndarray, key: str) -> np.ndarray:
        mu = x.mean(axis=-1, keepdims=True)
        var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
        return (x - mu) / np.sqrt(var + dtype(eps)) * w[f"{key}.g"] + w[f"{key}.b"]

    def attention(x: np.ndarray) -> np.ndarray:
        n, s, e = x.shape
        q, k, v = ((x @ w[f"{p}.w"] + w[f"{p}.b"]).reshape(n, s, heads, d).transpose(0, 2, 1, 3) for p in "qkv")
        scores = q @ k.transpose(0, 1, 3, 2) * dtype(1 / np.sqrt(d))
        if term is not None:
            scores = scores + term
        if scores.size:
            scores = scores - scores.max(axis=-1, keepdims=True)
        p = np.exp(scores)
        p = p / p.sum(axis=-1, keepdims=True)
        merged = (p @ v).transpose(0, 2, 1, 3).reshape(n, s, e)
        return merged @ w["out.w"] + w["out.b"]

    def run(x: np.ndarray) -> np.ndarray:
        x = x.astype(dtype, copy=False)
        h = x + attention(norm(x, "ln1"))
        z = norm(h, "ln2") @ w["fc1.w"] + w["fc1.b"]
        with np.errstate(over="ignore"):
            z = z / (1 + np.exp(dtype(-1.702) * z))
        return h + (z @ w["fc2.w"] + w["fc2.b"])

    return run


def onnx_block_bytes(bm: BlockModel, weights: Weights) -> bytes:
    """The block as an ONNX graph of standard ops (opset 17), batch dimension dynamic."""
    from onnx import helper, numpy_helper

    e, s, heads, d = bm.embed, bm.seq, bm.heads, bm.embed // bm.heads
    consts: Weights = {"split": np.array([0, s, heads, d], np.int64), "merge": np.array([0, s, e], np.int64),
              "scale": np.array(1 / np.sqrt(d), np.float32), "k1702": np.array(1.702, np.float32)}
    inits = [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in weights.items()]
    inits += [numpy_helper.from_array(v, k) for k, v in consts.items()]
    nodes: list[Any] = []

    def node(op: str, inputs: list[str], out: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def linear(x: str, key: str, out: str) -> str:
        return node("Add", [node("MatMul", [x, f"{key}.w"], f"{out}.mm"), f"{key}.b"], out)

    def layer_norm(x: str, key: str) -> str:
        return node("LayerNormalization", [x, f"{key}.g", f"{key}.b"], f"{key}.y", axis=-1, epsilon=bm.eps)

    n1 = layer_norm("x", "ln1")
    q, k, v = (node("Transpose", [node("Reshape", [linear(n1, p, p), "split"], f"{p}.heads")], f"{p}.t",
                    perm=[0, 2, 3, 1] if p == "k" else [0, 2, 1, 3]) for p in "qkv")
    scores = node("Mul", [node("MatMul", [q, k], "qk"), "scale"], "scores")
    term = bm.mask_term()
    if term is not None:
        inits.append(numpy_helper.from_array(term, "mask_term"))
        scores = node("Add", [scores, "mask_term"], "masked")
    attended = node("MatMul", [node("Softmax", [scores], "probs", axis=-1), v], "attended")
    merged = node("Reshape", [node("Transpose", [attended], "attended.t", perm=[0, 2, 1, 3]), "merge"], "merged")
    h = node("Add", ["x", linear(merged, "out", "attn")], "h")
    z = linear(layer_norm(h, "ln2"), "fc1", "fc1")
    gelu = node("Mul", [z, node("Sigmoid", [node("Mul", [z, "k1702"], "z1702")], "sig")], "gelu")
    node("Add", [h, linear(gelu, "fc2", "fc2")], "y")
    return serialized_model(bm.name, nodes, inits, [s, e], [s, e])


def torch_block(bm: BlockModel, weights: Weights) -> Any:
    """The block as a torch module over the given weights (eval mode)."""
    import torch

    tensors = {k: torch.from_numpy(np.ascontiguousarray(v, np.float32)) for k, v in weights.items()}
    mask_term = bm.mask_term()
    term = None if mask_term is None else torch.from_numpy(mask_term)
    eps = bm.eps
    heads, d = bm.heads, bm.embed // bm.heads

    class Block(torch.nn.Module):
        def forward(self, x: Any) -> Any:
            t = tensors
            n, s, e = x.shape
            a = torch.nn.functional.layer_norm(x, (e,), t["ln1.g"], t["ln1.b"], eps)
            q, k, v = ((a @ t[f"{p}.w"] + t[f"{p}.b"]).view(n, s, heads, d).transpose(1, 2) for p in "qkv")
            scores = q @ k.transpose(-2, -1) * (1 / d ** 0.5)
            probs = torch.softmax(scores if term is None else scores + term, dim=-1)
            merged = (probs @ v).transpose(1, 2).reshape(n, s, e)
            h = x + merged @ t["out.w"] + t["out.b"]
            z = torch.nn.functional.layer_norm(h, (e,), t["ln2.g"], t["ln2.b"], eps) @ t["fc1.w"] + t["fc1.b"]
            return h + (z * torch.sigmoid(1.702 * z)) @ t["fc2.w"] + t["fc2.b"]

    return Block().eval()
