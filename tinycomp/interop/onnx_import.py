"""`from_onnx`: an ONNX graph of Gemm, MatMul, Add, Relu, Sigmoid, Tanh, Softmax, Gelu,
LayerNormalization, Reshape, Flatten, Dropout and Identity nodes -> a `tinycomp.nn` model."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .. import nn as tnn
from ..errors import CompileError
from ..frontend.layers import Layer
from .common import AddConstant, Step, chain_or_graph, layer_key, linear_from, require, unsupported

NODES = ("Gemm", "MatMul", "Add", "Relu", "Sigmoid", "Tanh", "Softmax", "Gelu", "LayerNormalization", "Reshape",
         "Flatten", "Dropout", "Identity")


def from_onnx(model: Any) -> Layer:
    """A `tinycomp.nn` model computing what an ONNX model computes (eager output within float32 rounding).

    `model` is a path to a `.onnx` file, its bytes, or an `onnx.ModelProto`, with one float input whose
    first dimension is the batch. Weights (initializers, or `Constant` nodes) are copied as float32.
    Supported nodes: Gemm (transA=0), MatMul and Add with one constant operand (or Add of two computed
    values, a residual), Relu, Sigmoid, Tanh, Softmax, Gelu (exact and tanh forms),
    LayerNormalization (last axis), Reshape and Flatten that keep the batch first, Dropout (inference:
    the identity) and Identity. Anything else raises `CompileError` naming the node and its op type.
    Needs the `onnx` package (`pip install 'tinycomp[onnx]'`).
    """
    onnx = require("onnx", "from_onnx", "onnx", "the onnx package")
    proto = _load(onnx, model)
    graph = proto.graph
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 13)
    consts = {init.name: onnx.numpy_helper.to_array(init) for init in graph.initializer}
    inputs = [i.name for i in graph.input if i.name not in consts]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise CompileError(f"from_onnx takes a graph with one input and one output; this one has inputs {inputs} "
                           f"and outputs {[o.name for o in graph.output]}")
    importer = _Importer(onnx, consts, opset)
    for node in graph.node:
        importer.add(node)
    model_out = chain_or_graph(importer.layers, importer.steps, inputs[0], importer.alias(graph.output[0].name))
    model_out.eval()
    return model_out


def _load(onnx: Any, model: Any) -> Any:
    if isinstance(model, (str, os.PathLike)):
        return onnx.load(os.fspath(model))
    if isinstance(model, (bytes, bytearray)):
        return onnx.load_from_string(bytes(model))
    if isinstance(model, onnx.ModelProto):
        return model
    raise TypeError(f"from_onnx expects a path, bytes or onnx.ModelProto; got {type(model).__name__}")


class _Importer:
    """Turns nodes, in the graph's (topological) order, into layers and steps."""

    def __init__(self, onnx: Any, consts: dict[str, np.ndarray], opset: int):
        self.onnx, self.consts, self.opset = onnx, consts, opset
        self.layers: dict[str, Layer] = {}
        self.steps: list[Step] = []
        self.aliases: dict[str, str] = {}  # Identity/Dropout outputs -> the value they pass on

    def alias(self, name: str) -> str:
        while name in self.aliases:
            name = self.aliases[name]
        return name

    def attrs(self, node: Any) -> dict[str, Any]:
        return {a.name: self.onnx.helper.get_attribute_value(a) for a in node.attribute}

    def refuse(self, node: Any, detail: str = "") -> CompileError:
        return unsupported("node", node.name or node.output[0], node.op_type, NODES, detail)

    def const(self, node: Any, name: str) -> np.ndarray:
        if name not in self.consts:
            raise self.refuse(node, f"input {name!r} must be a constant (an initializer)")
        return np.asarray(self.consts[name], np.float32)

    def layer(self, node: Any, layer: Layer, source: str) -> None:
        key = layer_key(node.name or node.output[0], self.layers)
        self.layers[key] = layer
        self.steps.append(Step(node.output[0], (self.alias(source),), layer=key))

    def add(self, node: Any) -> None:
        op, ins, a = node.op_type, list(node.input), self.attrs(node)
        if op == "Constant":
            self.consts[node.output[0]] = self.onnx.numpy_helper.to_array(a["value"]) if "value" in a else \
                np.asarray(a.get("value_float", a.get("value_floats")), np.float32)
            return
        if op in ("Identity", "Dropout"):
            if op == "Dropout" and len(ins) > 2 and ins[2] and bool(self.consts.get(ins[2], False)):
                raise self.refuse(node, "training_mode=True: from_onnx imports inference graphs")
            self.aliases[node.output[0]] = ins[0]
            return
        handler = getattr(self, f"_{op.lower()}", None)
        if handler is None:
            raise self.refuse(node)
        handler(node, ins, a)

    def _gemm(self, node: Any, ins: list[str], a: dict) -> None:
        if a.get("transA", 0):
            raise self.refuse(node, "transA=1")
        w = self.const(node, ins[1])
        w = (w.T if a.get("transB", 0) else w) * np.float32(a.get("alpha", 1.0))
        bias = None
        if len(ins) > 2 and ins[2]:
            bias = np.broadcast_to(self.const(node, ins[2]) * np.float32(a.get("beta", 1.0)), (w.shape[1],))
        self.layer(node, linear_from(w, bias), ins[0])

    def _matmul(self, node: Any, ins: list[str], a: dict) -> None:
        w = self.const(node, ins[1])
        if w.ndim != 2 or ins[0] in self.consts:
            raise self.refuse(node, "only data @ a 2-D constant weight")
        self.layer(node, linear_from(w, None), ins[0])

    def _add(self, node: Any, ins: list[str], a: dict) -> None:
        known = [i in self.consts for i in ins]
        if all(known):
            raise self.refuse(node, "both operands are constants")
        if any(known):
            value, data = (ins[0], ins[1]) if known[0] else (ins[1], ins[0])
            self.layer(node, AddConstant(self.const(node, value)), data)
        else:
            self.steps.append(Step(node.output[0], (self.alias(ins[0]), self.alias(ins[1])), op="add"))

    def _relu(self, node: Any, ins: list[str], a: dict) -> None:
        self.layer(node, tnn.ReLU(), ins[0])

    def _sigmoid(self, node: Any, ins: list[str], a: dict) -> None:
        self.layer(node, tnn.Sigmoid(), ins[0])

    def _tanh(self, node: Any, ins: list[str], a: dict) -> None:
        self.layer(node, tnn.Tanh(), ins[0])

    def _softmax(self, node: Any, ins: list[str], a: dict) -> None:
        axis = int(a.get("axis", -1 if self.opset >= 13 else 1))
        if self.opset < 13 and axis not in (1, -1):  # before opset 13 Softmax flattened from `axis` on
            raise self.refuse(node, f"axis={axis} under opset {self.opset}")
        self.layer(node, tnn.Softmax(dim=-1 if self.opset < 13 else axis), ins[0])

    def _gelu(self, node: Any, ins: list[str], a: dict) -> None:
        form = a.get("approximate", "none")
        form = form.decode() if isinstance(form, bytes) else form
        self.layer(node, tnn.GELU(approximate="tanh" if form == "tanh" else "none"), ins[0])

    def _layernormalization(self, node: Any, ins: list[str], a: dict) -> None:
        if int(a.get("axis", -1)) != -1:
            raise self.refuse(node, f"axis={a['axis']}: only the last axis")
        gamma = self.const(node, ins[1])
        layer = tnn.LayerNorm(gamma.shape[-1], eps=float(a.get("epsilon", 1e-5)))
        layer.gamma = tnn.Tensor(gamma)
        if len(ins) > 2 and ins[2]:
            layer.beta = tnn.Tensor(self.const(node, ins[2]))
        self.layer(node, layer, ins[0])

    def _reshape(self, node: Any, ins: list[str], a: dict) -> None:
        shape = [int(d) for d in self.const(node, ins[1]).astype(np.int64)]
        if not shape or shape[0] not in (0, -1) or 0 in shape[1:] or -1 in shape[1:] or a.get("allowzero", 0):
            raise self.refuse(node, f"shape {shape}: the batch must stay first (0 or -1) and the rest be given")
        self.layer(node, tnn.Reshape(*shape[1:]), ins[0])

    def _flatten(self, node: Any, ins: list[str], a: dict) -> None:
        if int(a.get("axis", 1)) != 1:
            raise self.refuse(node, f"axis={a['axis']}: only 1 keeps the batch dimension its own")
        self.layer(node, tnn.Flatten(), ins[0])
