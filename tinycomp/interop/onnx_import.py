"""`from_onnx`: an ONNX graph of Gemm, MatMul, Add, Relu, Sigmoid, Tanh, Softmax, Gelu,
LayerNormalization, Reshape, Flatten, Dropout, Identity and Constant nodes -> a `tinycomp.nn` model."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import nn as tnn
from ..errors import CompileError
from ..frontend.layers import Layer
from .common import AddConstant, Step, chain_or_graph, layer_key, linear_from, require, unsupported
from .onnx_patterns import fuse_erf_gelu

NODES = ("Gemm", "MatMul", "Add", "Relu", "Sigmoid", "Tanh", "Softmax", "Gelu", "LayerNormalization", "Reshape",
         "Flatten", "Dropout", "Identity", "Constant")


def from_onnx(model: Any) -> Layer:
    """A `tinycomp.nn` model computing what an ONNX model computes (eager output within float32 rounding).

    `model` is a path to a `.onnx` file, its bytes, or an `onnx.ModelProto`, with one float input whose
    first dimension is the batch. Weights (initializers, or `Constant` nodes) are copied as float32.
    Supported nodes: Gemm (transA=0, a bias C that broadcasts over the batch), MatMul and Add with one
    constant operand (or Add of two computed values, a residual), Relu, Sigmoid, Tanh, Softmax (before
    opset 13 over all dimensions from its axis on), Gelu (exact and tanh forms; also the exact form's
    Div/Erf/Add/Mul/Mul chain exporters write below opset 20: `onnx_patterns`), LayerNormalization
    (last axis), Reshape and Flatten that keep the batch first (Reshape's 0 and -1 resolved from ONNX
    shape inference), Dropout (inference: the identity), Identity (of a value or a weight) and
    Constant. Anything else raises `CompileError` naming the node and its op type.
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
    importer = _Importer(onnx, consts, opset, _value_shapes(onnx, proto))
    nodes = fuse_erf_gelu(onnx, list(graph.node), _scalars(onnx, graph, consts), {o.name for o in graph.output})
    for node in nodes:
        importer.add(node)
    model_out = chain_or_graph(importer.layers, importer.steps, inputs[0], importer.alias(graph.output[0].name))
    model_out.eval()
    return model_out


def _scalars(onnx: Any, graph: Any, consts: dict[str, np.ndarray]) -> Callable[[str], float | None]:
    """name -> the number an initializer or a Constant node of one value holds (None otherwise)."""
    known = dict(consts)
    for node in graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Constant" and "value" in attrs:
            known[node.output[0]] = onnx.numpy_helper.to_array(attrs["value"])
        elif node.op_type == "Constant" and "value_float" in attrs:
            known[node.output[0]] = np.float32(attrs["value_float"])

    def scalar(name: str) -> float | None:
        value = known.get(name)
        return None if value is None or np.size(value) != 1 else float(np.asarray(value).reshape(-1)[0])
    return scalar


def _load(onnx: Any, model: Any) -> Any:
    if isinstance(model, (str, os.PathLike)):
        return onnx.load(os.fspath(model))
    if isinstance(model, (bytes, bytearray)):
        return onnx.load_from_string(bytes(model))
    if isinstance(model, onnx.ModelProto):
        return model
    raise TypeError(f"from_onnx expects a path, bytes or onnx.ModelProto; got {type(model).__name__}")


Shape = tuple[int | None, ...]
CONSTANT_KINDS = {"value_float": np.float32, "value_floats": np.float32, "value_int": np.int64, "value_ints": np.int64}


def _value_shapes(onnx: Any, proto: Any) -> dict[str, Shape]:
    """Each value's shape as ONNX shape inference gives it, None for a dimension it leaves symbolic
    (the batch); a value it cannot shape is absent. Nodes whose meaning depends on the input's rank
    (Softmax before opset 13, Reshape with 0 or -1) read it here."""
    graph = onnx.shape_inference.infer_shapes(proto).graph  # not strict: what it cannot infer stays unknown
    shapes = {}
    for info in (*graph.input, *graph.value_info, *graph.output):
        tensor = info.type.tensor_type
        if tensor.HasField("shape"):
            shapes[info.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)
    return shapes


class _Importer:
    """Turns nodes, in the graph's (topological) order, into layers and steps."""

    def __init__(self, onnx: Any, consts: dict[str, np.ndarray], opset: int, shapes: dict[str, Shape]):
        self.onnx, self.consts, self.opset, self.shapes = onnx, consts, opset, shapes
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

    def shape_of(self, node: Any, name: str, why: str) -> Shape:
        """The shape of value `name`, or a refusal saying that `why` needs at least its rank."""
        shape = self.shapes.get(name)
        if shape is None:
            raise self.refuse(node, f"{why} needs the rank of {name!r}, which ONNX shape inference does not give")
        return shape

    def sample_sizes(self, node: Any, name: str, why: str) -> list[int]:
        """The sizes after the batch of value `name`, or a refusal saying that `why` needs them."""
        shape = self.shape_of(node, name, why)
        sizes = [d for d in shape[1:] if d is not None]
        if len(sizes) != len(shape) - 1:
            raise self.refuse(node, f"{why} on a value of shape {shape}: its sizes after the batch must be known")
        return sizes

    def layer(self, node: Any, layer: Layer, source: str) -> None:
        key = layer_key(node.name or node.output[0], self.layers)
        self.layers[key] = layer
        self.steps.append(Step(node.output[0], (self.alias(source),), layer=key))

    def add(self, node: Any) -> None:
        op, ins, a = node.op_type, list(node.input), self.attrs(node)
        if op == "Constant":
            self.consts[node.output[0]] = self._constant(node, a)
            return
        if op in ("Identity", "Dropout"):
            if op == "Dropout" and len(ins) > 2 and ins[2] and bool(self.consts.get(ins[2], False)):
                raise self.refuse(node, "training_mode=True: from_onnx imports inference graphs")
            if ins[0] in self.consts:  # e.g. a weight shared as Identity(W): the node reading it needs the constant
                self.consts[node.output[0]] = self.consts[ins[0]]
            else:
                self.aliases[node.output[0]] = ins[0]
            return
        handler = getattr(self, f"_{op.lower()}", None)
        if handler is None:
            raise self.refuse(node)
        handler(node, ins, a)

    def _constant(self, node: Any, a: dict) -> np.ndarray:
        if "value" in a:
            return self.onnx.numpy_helper.to_array(a["value"])
        kind = next((k for k in CONSTANT_KINDS if k in a), None)
        if kind is None:
            raise self.refuse(node, f"a constant given as {', '.join(a) or 'nothing'}: "
                                    f"only value, {', '.join(CONSTANT_KINDS)}")
        return np.asarray(a[kind], CONSTANT_KINDS[kind])

    def _gemm(self, node: Any, ins: list[str], a: dict) -> None:
        if a.get("transA", 0):
            raise self.refuse(node, "transA=1")
        w = self.const(node, ins[1])
        w = (w.T if a.get("transB", 0) else w) * np.float32(a.get("alpha", 1.0))
        bias = None
        if len(ins) > 2 and ins[2]:
            c = self.const(node, ins[2]) * np.float32(a.get("beta", 1.0))
            # C broadcasts to (batch, out): one value per output, or one in all, is a bias; a C that
            # varies along the batch is not
            if c.size not in (1, w.shape[1]) or (c.ndim == 2 and c.shape[0] != 1):
                n = w.shape[1]
                raise self.refuse(node, f"C of shape {c.shape}: a bias must be (), ({n},) or (1, {n})")
            bias = np.broadcast_to(c.reshape(-1), (w.shape[1],))
        self.layer(node, linear_from(w, bias), ins[0])

    def _matmul(self, node: Any, ins: list[str], a: dict) -> None:
        if ins[0] in self.consts:
            raise self.refuse(node, f"only data @ a 2-D constant weight; the left operand {ins[0]!r} is the constant")
        w = self.const(node, ins[1])
        if w.ndim != 2:
            raise self.refuse(node, f"only data @ a 2-D constant weight; {ins[1]!r} has shape {w.shape}")
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
        if self.opset >= 13:
            self.layer(node, tnn.Softmax(dim=int(a.get("axis", -1))), ins[0])
            return
        # before opset 13 Softmax normalized over all dimensions from `axis` (default 1) on, as one row
        axis = int(a.get("axis", 1))
        shape = () if axis == -1 else self.shape_of(node, ins[0], f"axis={axis} under opset {self.opset}")
        if axis != -1 and not -len(shape) <= axis < len(shape):
            raise self.refuse(node, f"axis={axis} on a value of rank {len(shape)}")
        if axis == -1 or axis % len(shape) == len(shape) - 1:
            self.layer(node, tnn.Softmax(dim=-1), ins[0])
            return
        axis %= len(shape)
        if axis == 0:
            raise self.refuse(node, f"axis=0 under opset {self.opset} normalizes across the batch")
        sample = self.sample_sizes(node, ins[0], f"axis={axis} under opset {self.opset}")
        rows = tnn.Reshape(*sample[:axis - 1], math.prod(sample[axis - 1:]))
        self.layer(node, tnn.Sequential(rows, tnn.Softmax(dim=-1), tnn.Reshape(*sample)), ins[0])

    def _gelu(self, node: Any, ins: list[str], a: dict) -> None:
        form = a.get("approximate", "none")
        form = form.decode() if isinstance(form, bytes) else form
        self.layer(node, tnn.GELU(approximate="tanh" if form == "tanh" else "none"), ins[0])

    def _layernormalization(self, node: Any, ins: list[str], a: dict) -> None:
        axis = int(a.get("axis", -1))
        rank = len(self.shapes.get(ins[0], ())) or None
        if axis != -1 and (rank is None or axis % rank != rank - 1):
            raise self.refuse(node, f"axis={axis} on a value of rank {rank or 'unknown'}: only the last axis")
        gamma = self.const(node, ins[1])
        layer = tnn.LayerNorm(gamma.shape[-1], eps=float(a.get("epsilon", 1e-5)))
        layer.gamma = tnn.Tensor(gamma)
        if len(ins) > 2 and ins[2]:
            layer.beta = tnn.Tensor(self.const(node, ins[2]))
        self.layer(node, layer, ins[0])

    def _reshape(self, node: Any, ins: list[str], a: dict) -> None:
        shape = [int(d) for d in self.const(node, ins[1]).astype(np.int64)]
        batch_first = bool(shape) and (shape[0] == 0 or (shape[0] == -1 and -1 not in shape[1:]))
        if not batch_first or (a.get("allowzero", 0) and 0 in shape):
            raise self.refuse(node, f"shape {shape}: the batch must stay first (0 or -1)")
        sample = shape[1:]
        if 0 in sample or -1 in sample:  # 0 copies the input's size there; -1 takes what is left
            source = self.sample_sizes(node, ins[0], f"shape {shape}")
            if 0 in sample[len(source):]:
                raise self.refuse(node, f"shape {shape} copies a size (0) a value of sizes {source} does not have")
            sample = [source[i] if d == 0 else d for i, d in enumerate(sample)]
            if -1 in sample:
                given = math.prod(d for d in sample if d != -1)
                whole = math.prod(source)
                if given == 0 or whole % given:
                    raise self.refuse(node, f"shape {shape} does not fit a value of sizes {source} after the batch")
                sample[sample.index(-1)] = whole // given
        self.layer(node, tnn.Reshape(*sample), ins[0])

    def _flatten(self, node: Any, ins: list[str], a: dict) -> None:
        if int(a.get("axis", 1)) != 1:
            raise self.refuse(node, f"axis={a['axis']}: only 1 keeps the batch dimension its own")
        self.layer(node, tnn.Flatten(), ins[0])
