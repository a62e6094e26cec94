"""The `lnmlp` benchmark model: `depth` x [LayerNorm(width) -> Linear(width, width) -> GELU].

Like `models.BenchModel`, built identically in every process from a seed, with the same model in
every engine's own terms: the tinycomp eager model, plain NumPy (float32 and the float64
reference), an ONNX graph of standard ops (LayerNormalization, MatMul, Add, Mul, Sigmoid) built
with `onnx.helper`, and a torch module. GELU is tinycomp's, x * sigmoid(1.702 x), in every engine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..frontend.layers import Layer, Linear
from ..frontend.transformer import LayerNorm
from ..nn import GELU, Sequential, manual_seed
from .onnx_graph import serialized_model

Weights = dict[str, np.ndarray]
GELU_K = 1.702


@dataclass(frozen=True)
class NormMLPModel:
    name: str
    description: str
    width: int
    depth: int
    eps: float = 1e-5  # LayerNorm's default

    @property
    def in_shape(self) -> tuple[int, ...]:
        return (self.width,)

    @property
    def flops_per_sample(self) -> int:
        """2 x multiply-adds of the Linear layers (norms, bias and GELU not counted, as `BenchModel`)."""
        return self.depth * 2 * self.width * self.width

    @property
    def weight_bytes(self) -> int:
        w = self.width
        return 4 * self.depth * (w * w + 3 * w)  # weight, bias, gamma, beta

    def build(self, seed: int = 0) -> Sequential:
        """The eager model in eval mode: seeded weights, seeded non-zero biases, gamma and beta."""
        manual_seed(seed)
        layers: list[Layer] = []
        for _ in range(self.depth):
            layers += [LayerNorm(self.width, eps=self.eps), Linear(self.width, self.width), GELU()]
        rng = np.random.default_rng(seed + 1)
        for layer in layers:
            if isinstance(layer, Linear):
                assert layer.bias is not None
                layer.bias.data[...] = (0.1 * rng.standard_normal(layer.bias.shape)).astype(np.float32)
            elif isinstance(layer, LayerNorm):
                layer.gamma.data[...] = rng.uniform(0.5, 1.5, layer.gamma.shape).astype(np.float32)
                layer.beta.data[...] = (0.1 * rng.standard_normal(layer.beta.shape)).astype(np.float32)
        model = Sequential(*layers)
        model.eval()
        return model

    def weights(self, model: Any) -> Weights:
        """Per stage i: `i.g`, `i.b` (the norm's gamma, beta), `i.w`, `i.bias` (the Linear's)."""
        norms = [layer for layer in model.layers if isinstance(layer, LayerNorm)]
        linears = [layer for layer in model.layers if isinstance(layer, Linear)]
        out: Weights = {}
        for i, (ln, lin) in enumerate(zip(norms, linears, strict=True)):
            assert lin.bias is not None
            out[f"{i}.g"], out[f"{i}.b"] = ln.gamma.data, ln.beta.data
            out[f"{i}.w"], out[f"{i}.bias"] = lin.weight.data, lin.bias.data
        return out

    def sample(self, batch: int, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(10_000 + seed)
        return rng.standard_normal((batch, self.width), dtype=np.float32)


def numpy_lnmlp(bm: NormMLPModel, weights: Weights, dtype: type = np.float32) -> Callable[[np.ndarray], np.ndarray]:
    """The model as plain NumPy over the given weights (float64 for the parity reference)."""
    w: Weights = {k: np.ascontiguousarray(v, dtype) for k, v in weights.items()}
    eps, k = dtype(bm.eps), dtype(-GELU_K)

    def run(x: np.ndarray) -> np.ndarray:
        h: np.ndarray = x.astype(dtype, copy=False)
        for i in range(bm.depth):
            mu = h.mean(axis=-1, keepdims=True)
            var = ((h - mu) ** 2).mean(axis=-1, keepdims=True)
            z = ((h - mu) / np.sqrt(var + eps) * w[f"{i}.g"] + w[f"{i}.b"]) @ w[f"{i}.w"] + w[f"{i}.bias"]
            with np.errstate(over="ignore"):
                h = z / (1 + np.exp(k * z))
        return h

    return run


def onnx_lnmlp_bytes(bm: NormMLPModel, weights: Weights) -> bytes:
    """The model as an ONNX graph of standard ops (opset 17), batch dimension dynamic."""
    from onnx import helper, numpy_helper

    inits = [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in weights.items()]
    inits.append(numpy_helper.from_array(np.array(GELU_K, np.float32), "k"))
    nodes: list[Any] = []

    def node(op: str, inputs: list[str], out: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    h = "x"
    for i in range(bm.depth):
        n = node("LayerNormalization", [h, f"{i}.g", f"{i}.b"], f"n{i}", axis=-1, epsilon=bm.eps)
        z = node("Add", [node("MatMul", [n, f"{i}.w"], f"mm{i}"), f"{i}.bias"], f"z{i}")
        sig = node("Sigmoid", [node("Mul", [z, "k"], f"zk{i}")], f"s{i}")
        h = node("Mul", [z, sig], "y" if i == bm.depth - 1 else f"h{i}")
    return serialized_model(bm.name, nodes, inits, [bm.width], [bm.width])


def torch_lnmlp(bm: NormMLPModel, weights: Weights) -> Any:
    """The model as a torch module over the given weights (eval mode)."""
    import torch

    t = {k: torch.from_numpy(np.ascontiguousarray(v, np.float32)) for k, v in weights.items()}

    class NormMLP(torch.nn.Module):
        def forward(self, x: Any) -> Any:
            for i in range(bm.depth):
                n = torch.nn.functional.layer_norm(x, (bm.width,), t[f"{i}.g"], t[f"{i}.b"], bm.eps)
                z = n @ t[f"{i}.w"] + t[f"{i}.bias"]
                x = z * torch.sigmoid(GELU_K * z)
            return x

    return NormMLP().eval()
