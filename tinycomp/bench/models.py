"""Named benchmark models, built identically in every process from a seed.

A model is a list of `Layer` specs `(in, out, activation)`; from it we build the tinycomp eager
model, a plain NumPy function over the same weights, a float64 reference and (if `onnx` is
installed) an ONNX graph. Weights come from `manual_seed(seed)` plus seeded non-zero biases, and the
input from its own seeded generator, so every engine process sees the same numbers. The transformer
block models (`block.py`) take (batch, seq, embed) inputs and offer the same parts, as does the
LayerNorm MLP (`lnmlp.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..frontend.layers import Layer
from ..nn import GELU, Dropout, Linear, ReLU, Sequential, Softmax, Tanh, manual_seed
from .block import BlockModel, numpy_block, onnx_block_bytes, torch_block
from .lnmlp import NormMLPModel, numpy_lnmlp, onnx_lnmlp_bytes, torch_lnmlp
from .onnx_graph import serialized_model

ACTIVATIONS = {"relu": ReLU, "gelu": GELU, "tanh": Tanh, "softmax": Softmax}


@dataclass(frozen=True)
class LayerSpec:
    inputs: int
    outputs: int
    activation: str | None  # a key of ACTIVATIONS or None
    dropout: float = 0.0  # eval-mode dropout after the activation (folded away by compile)


@dataclass(frozen=True)
class BenchModel:
    name: str
    description: str
    layers: tuple[LayerSpec, ...]

    @property
    def in_features(self) -> int:
        return self.layers[0].inputs

    @property
    def in_shape(self) -> tuple[int, ...]:
        """The features of one sample (what follows the batch dimension)."""
        return (self.in_features,)

    @property
    def out_features(self) -> int:
        return self.layers[-1].outputs

    @property
    def flops_per_sample(self) -> int:
        """2 x multiply-adds of the Linear layers (bias and activations not counted)."""
        return sum(2 * s.inputs * s.outputs for s in self.layers)

    @property
    def weight_bytes(self) -> int:
        """Bytes of float32 weights and biases: what a batch-1 call must read at least once."""
        return sum(4 * (s.inputs + 1) * s.outputs for s in self.layers)

    def build(self, seed: int = 0) -> Sequential:
        """The tinycomp eager model in eval mode, with seeded weights and seeded non-zero biases."""
        manual_seed(seed)
        layers: list[Layer] = []
        linears: list[Linear] = []
        for spec in self.layers:
            linears.append(Linear(spec.inputs, spec.outputs))
            layers.append(linears[-1])
            if spec.activation is not None:
                layers.append(ACTIVATIONS[spec.activation]())
            if spec.dropout:
                layers.append(Dropout(spec.dropout))
        rng = np.random.default_rng(seed + 1)
        for lin in linears:
            assert lin.bias is not None  # every benchmark Linear has a bias
            lin.bias.data[...] = (0.1 * rng.standard_normal(lin.bias.shape)).astype(np.float32)
        model = Sequential(*layers)
        model.eval()
        return model

    def weights(self, model: Any) -> list[tuple[np.ndarray, np.ndarray]]:
        return [(layer.weight.data, layer.bias.data) for layer in model.layers
                if isinstance(layer, Linear) and layer.bias is not None]

    def sample(self, batch: int, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(10_000 + seed)
        return rng.standard_normal((batch, self.in_features), dtype=np.float32)


AnyModel = BenchModel | BlockModel | NormMLPModel


def _sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return 1 / (1 + np.exp(-x))


def numpy_activation(name: str | None, h: np.ndarray) -> np.ndarray:
    """The activations written as plain NumPy (they also run in float64 for the reference)."""
    if name is None:
        return h
    if name == "relu":
        return np.maximum(h, 0)
    if name == "gelu":
        return h * _sigmoid(h.dtype.type(1.702) * h)
    if name == "tanh":
        return np.tanh(h)
    if name == "softmax":
        e = np.exp(h - h.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    raise ValueError(f"no NumPy form for activation {name!r}")


def numpy_function(bm: AnyModel, weights: Any, dtype: type = np.float32) -> Callable[[np.ndarray], np.ndarray]:
    """`act(...act(x @ W1 + b1) @ W2 + b2 ...)` as plain NumPy over the given weights (a block: block.py;
    the LayerNorm MLP: lnmlp.py)."""
    if isinstance(bm, BlockModel):
        return numpy_block(bm, weights, dtype)
    if isinstance(bm, NormMLPModel):
        return numpy_lnmlp(bm, weights, dtype)
    ws: list[tuple[np.ndarray, np.ndarray]] = [
        (np.ascontiguousarray(w, dtype), np.ascontiguousarray(b, dtype)) for w, b in weights]
    acts = [s.activation for s in bm.layers]
    if dtype == np.float32 and acts[:3] == ["relu", "relu", None] and len(ws) == 3:
        (w1, b1), (w2, b2), (w3, b3) = ws

        def mlp(x: np.ndarray) -> np.ndarray:  # the baseline, exactly as written there
            return np.maximum(np.maximum(x @ w1 + b1, 0) @ w2 + b2, 0) @ w3 + b3

        return mlp

    def run(x: np.ndarray) -> np.ndarray:
        h: np.ndarray = x.astype(dtype, copy=False)
        for (w, b), act in zip(ws, acts, strict=True):
            h = numpy_activation(act, h @ w + b)
        return h

    return run


def onnx_model_bytes(bm: AnyModel, weights: Any) -> bytes:
    """The model as an ONNX graph (MatMul + Add + activation per layer), batch dimension dynamic."""
    if isinstance(bm, BlockModel):
        return onnx_block_bytes(bm, weights)
    if isinstance(bm, NormMLPModel):
        return onnx_lnmlp_bytes(bm, weights)
    from onnx import helper, numpy_helper

    nodes, inits = [], []
    h = "x"
    for i, ((w, b), spec) in enumerate(zip(weights, bm.layers, strict=True)):
        inits += [numpy_helper.from_array(np.asarray(w, np.float32), f"W{i}"),
                  numpy_helper.from_array(np.asarray(b, np.float32), f"b{i}")]
        nodes += [helper.make_node("MatMul", [h, f"W{i}"], [f"mm{i}"]),
                  helper.make_node("Add", [f"mm{i}", f"b{i}"], [f"z{i}"])]
        h = f"z{i}"
        act = spec.activation
        if act == "relu":
            nodes.append(helper.make_node("Relu", [h], [f"a{i}"]))
        elif act == "tanh":
            nodes.append(helper.make_node("Tanh", [h], [f"a{i}"]))
        elif act == "softmax":
            nodes.append(helper.make_node("Softmax", [h], [f"a{i}"], axis=-1))
        elif act == "gelu":  # x * sigmoid(1.702 x), the tinycomp definition
            inits.append(numpy_helper.from_array(np.array(1.702, np.float32), f"k{i}"))
            nodes += [helper.make_node("Mul", [h, f"k{i}"], [f"s{i}"]),
                      helper.make_node("Sigmoid", [f"s{i}"], [f"g{i}"]),
                      helper.make_node("Mul", [h, f"g{i}"], [f"a{i}"])]
        elif act is not None:
            raise ValueError(f"no ONNX form for activation {act!r}")
        if act is not None:
            h = f"a{i}"
    nodes.append(helper.make_node("Identity", [h], ["y"]))
    return serialized_model(bm.name, nodes, inits, [bm.in_features], [bm.out_features])


def _mlp() -> BenchModel:
    return BenchModel("mlp", "reference MLP 784-256-128-10, ReLU, dropout (folded)",
                      (LayerSpec(784, 256, "relu", 0.5), LayerSpec(256, 128, "relu", 0.3), LayerSpec(128, 10, None)))


def torch_module(bm: AnyModel, weights: Any) -> Any:
    """The model as a torch module over the given weights (eval mode)."""
    if isinstance(bm, BlockModel):
        return torch_block(bm, weights)
    if isinstance(bm, NormMLPModel):
        return torch_lnmlp(bm, weights)
    import torch

    acts: dict[str, Any] = {"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh, "softmax": lambda: torch.nn.Softmax(dim=-1)}
    layers: list[Any] = []
    for (w, b), spec in zip(weights, bm.layers, strict=True):
        lin = torch.nn.Linear(spec.inputs, spec.outputs)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(w.T)))
            lin.bias.copy_(torch.from_numpy(b))
        layers.append(lin)
        if spec.activation == "gelu":
            class Gelu(torch.nn.Module):
                def forward(self, x: Any) -> Any:
                    return x * torch.sigmoid(1.702 * x)
            layers.append(Gelu())
        elif spec.activation is not None:
            layers.append(acts[spec.activation]())
    return torch.nn.Sequential(*layers).eval()


MODELS: dict[str, AnyModel] = {
    "mlp": _mlp(),
    "wide": BenchModel("wide", "1024-1024-1024-1024, GELU", tuple(
        LayerSpec(1024, 1024, "gelu" if i < 2 else None) for i in range(3))),
    "odd": BenchModel("odd", "100-37-10, Tanh, Softmax head",
                      (LayerSpec(100, 37, "tanh"), LayerSpec(37, 10, "softmax"))),
    "deep": BenchModel("deep", "16 x (Linear(128,128) + ReLU)", tuple(LayerSpec(128, 128, "relu") for _ in range(16))),
    "tiny": BenchModel("tiny", "12-16-5, ReLU (for tests)", (LayerSpec(12, 16, "relu"), LayerSpec(16, 5, None))),
    "block": BlockModel("block", "TransformerBlock: embed 128, 4 heads, seq 64, MLP 512", 128, 4, 64),
    "block-tiny": BlockModel("block-tiny", "TransformerBlock: embed 12, 3 heads, seq 5 (for tests)", 12, 3, 5),
    "block-causal": BlockModel("block-causal", "TransformerBlock as `block`, with a causal mask", 128, 4, 64,
                               causal=True),
    "lnmlp": NormMLPModel("lnmlp", "4 x [LayerNorm(512) -> Linear(512, 512) -> GELU]", 512, 4),
    "lnmlp-tiny": NormMLPModel("lnmlp-tiny", "2 x [LayerNorm(17) -> Linear(17, 17) -> GELU] (for tests)", 17, 2),
    "block-tiny-causal": BlockModel("block-tiny-causal", "block-tiny with a causal mask (for tests)", 12, 3, 5,
                                    causal=True),
}


def get_model(name: str) -> AnyModel:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown benchmark model {name!r}; models are {', '.join(MODELS)}") from None


def flops(bm: BenchModel, batch: int) -> float:
    return float(bm.flops_per_sample) * batch


