"""`from_onnx`: an ONNX graph -> a `tinycomp.nn` model, node by node (`onnx_nodes`), with the nodes
that compute only constants and sizes folded at import (`onnx_fold`)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import CompileError
from ..frontend.layers import Layer
from ..frontend.tensor import Tensor
from .common import NodeImporter, Step, chain_or_graph, layer_key, pinned, require, unsupported
from .graph_layers import BINARY, UNARY, number_of
from .onnx_fold import FoldError, Pair, fold_pair
from .onnx_nodes import HANDLERS
from .onnx_patterns import fuse_erf_gelu

EXAMPLE_BATCH = 2  # rows of the example input the importer runs each step on, for shapes
NODES = (*HANDLERS, "Dropout", "Identity", "and any node of constants and sizes only (folded at import)")


def from_onnx(model: Any) -> Layer:
    """A `tinycomp.nn` model computing what an ONNX model computes (eager output within float32 rounding).

    `model` is a path to a `.onnx` file, its bytes, or an `onnx.ModelProto`, with one float input whose
    first dimension is the batch (symbolic, or a fixed size the graph's reshapes then name for it).
    Weights (initializers, `Constant` nodes) are copied as float32. Nodes that compute only constants
    and sizes (Shape, Gather, Concat, Cast, ... on constants or on the input's shape: what exporters
    write for `x.view(x.size(0), -1)`) are run at import by ONNX's reference implementation; the sizes
    may hold the batch size only as the batch. Data nodes: Gemm (transA=0, a bias C that broadcasts over
    the batch), MatMul (with a constant on either side, or of two values whose contracted axes are not
    the batch: batched products, attention), Add, Sub, Mul, Div (a value and a constant, or two values),
    Pow (by a constant number), Neg, Exp, Log, Sqrt, Abs, Reciprocal, Relu, LeakyRelu, Sigmoid, Tanh,
    Softmax and LogSoftmax (before opset 13 over all dimensions from their axis on; never over the
    batch), Gelu (exact and tanh forms; also the exact form's erf chains exporters write below opset 20:
    `onnx_patterns`), LayerNormalization (last axis), BatchNormalization (inference),
    ReduceSum/ReduceMean/ReduceMax (not over the batch), Transpose, Reshape, Flatten, Squeeze and
    Unsqueeze that keep the batch first (Reshape's 0 and -1 resolved from ONNX shape inference), Slice,
    Split, Gather (one position, or an evenly spaced run) and Concat of values along an axis after the
    batch, Where, the comparisons (Greater, Less, Equal, ..., IsNaN, IsInf) and Not/And/Or/Xor of the
    masks they give, Max/Min of one or two, Clip to constant bounds, Cast to float or bool, Dropout
    (inference: the identity), Identity. Anything else raises `CompileError` naming the node and its op
    type.
    Needs the `onnx` package (`pip install -e '.[onnx]'`).
    """
    onnx = require("onnx", "from_onnx", "onnx", "the onnx package")
    proto = _load(onnx, model)
    graph = proto.graph
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 13)
    consts = {init.name: onnx.numpy_helper.to_array(init) for init in graph.initializer}
    consts |= {sparse.values.name: _dense(onnx, sparse) for sparse in graph.sparse_initializer}
    inputs = [i.name for i in graph.input if i.name not in consts]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise CompileError(f"from_onnx takes a graph with one input and one output; this one has inputs {inputs} "
                           f"and outputs {[o.name for o in graph.output]}")
    shapes = _value_shapes(onnx, proto)
    importer = _Importer(onnx, consts, opset, shapes)
    importer.start(inputs[0])
    ordered = _topological(list(graph.node), {*consts, *inputs})
    nodes = fuse_erf_gelu(onnx, ordered, _scalars(onnx, graph, consts), {o.name for o in graph.output})
    for node in nodes:
        importer.add(node)
    output = importer.alias(graph.output[0].name)
    if output not in importer.produced:
        raise CompileError(f"the graph's output {graph.output[0].name!r} is computed from constants and sizes only, "
                           "not from the input: a tinycomp model returns data")
    model_out = pinned(chain_or_graph(importer.layers, importer.steps, inputs[0], output), importer.sample)
    model_out.eval()
    return model_out


def _topological(nodes: list, known: set[str]) -> list:
    """`nodes` in an order where each comes after the nodes making its inputs (the ONNX standard asks
    for that order; ONNX Runtime sorts graphs that do not keep it, so tinycomp does too)."""
    done, ordered, pending = set(known), [], list(nodes)
    while pending:
        ready = [n for n in pending if all(not name or name in done for name in n.input)]
        if not ready:
            missing = sorted({name for n in pending for name in n.input if name and name not in done})
            raise CompileError(f"the graph reads values no node makes, or its nodes form a cycle: {missing[:5]}")
        for n in ready:
            ordered.append(n)
            done.update(name for name in n.output if name)
        taken = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in taken]
    return ordered


def _dense(onnx: Any, sparse: Any) -> np.ndarray:
    """A sparse initializer (values at linear or coordinate indices, zeros elsewhere) as an array."""
    values = onnx.numpy_helper.to_array(sparse.values)
    indices = onnx.numpy_helper.to_array(sparse.indices)
    dense = np.zeros(tuple(sparse.dims), values.dtype)
    if indices.ndim == 1:
        dense.reshape(-1)[indices] = values
    else:
        dense[tuple(indices.T)] = values
    return dense


def _scalars(onnx: Any, graph: Any, consts: dict[str, np.ndarray]) -> Callable[[str], float | None]:
    """name -> the number an initializer or a Constant node of one value holds (None otherwise)."""
    known: dict[str, np.ndarray | np.float32] = dict(consts)
    for node in graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Constant" and "value" in attrs:
            known[node.output[0]] = onnx.numpy_helper.to_array(attrs["value"])
        elif node.op_type == "Constant" and "value_float" in attrs:
            known[node.output[0]] = np.float32(attrs["value_float"])

    def scalar(name: str) -> float | None:
        value = known.get(name)
        return None if value is None else number_of(value)
    return scalar


def _load(onnx: Any, model: Any) -> Any:
    try:
        if isinstance(model, (str, os.PathLike)):
            return onnx.load(os.fspath(model))
        if isinstance(model, (bytes, bytearray)):
            return onnx.load_from_string(bytes(model))
    except OSError:
        raise
    except Exception as exc:  # protobuf's DecodeError: another file, or a truncated download
        what = repr(os.fspath(model)) if isinstance(model, (str, os.PathLike)) else f"{len(model)} bytes"
        raise CompileError(f"{what} is not an ONNX model (protobuf could not read it: {type(exc).__name__}: "
                           f"{exc})") from exc
    if isinstance(model, onnx.ModelProto):
        return model
    raise TypeError(f"from_onnx expects a path, bytes or onnx.ModelProto; got {type(model).__name__}")


Shape = tuple[int | None, ...]


def _value_shapes(onnx: Any, proto: Any) -> dict[str, Shape]:
    """Each value's shape as ONNX shape inference gives it, None for a dimension it leaves symbolic
    (the batch); a value it cannot shape is absent. Nodes whose meaning depends on the input's rank
    (Softmax before opset 13, Reshape with 0 or -1) read it here."""
    try:  # not strict: what it cannot infer stays unknown
        graph = onnx.shape_inference.infer_shapes(proto).graph
    except Exception as exc:  # onnx's InferenceError on a graph it finds inconsistent (older onnx: more of them)
        raise CompileError(f"cannot import this ONNX model: ONNX's shape inference refused it ({exc})") from None
    shapes = {}
    for info in (*graph.input, *graph.value_info, *graph.output):
        tensor = info.type.tensor_type
        if tensor.HasField("shape"):
            shapes[info.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)
    return shapes


class _Importer(NodeImporter):
    """Turns nodes, in the graph's (topological) order, into layers and steps; folds the nodes that
    compute only constants and sizes (`onnx_fold`)."""

    def __init__(self, onnx: Any, consts: dict[str, np.ndarray], opset: int, shapes: dict[str, Shape]):
        self.onnx, self.consts, self.opset, self.shapes = onnx, consts, opset, shapes
        self.pairs: dict[str, Pair] = {}  # sizes computed from the batch size: the value at each of BATCHES
        self.layers: dict[str, Layer] = {}
        self.steps: list[Step] = []
        self.aliases: dict[str, str] = {}  # Identity/Dropout/Cast outputs -> the value they pass on
        self.fixed_batch: int | None = None  # the input's batch size if the graph fixes it
        self.sample: tuple[int, ...] | None = None  # the sizes after it, where the graph declares them all
        self.produced: set[str] = set()  # the data values made so far: the input and the steps' outputs
        # each data value at an example input of batch EXAMPLE_BATCH: the shapes ONNX shape inference
        # leaves unknown (after a Reshape to computed sizes, say) are read from it
        self.examples: dict[str, np.ndarray] = {}

    def start(self, input_name: str) -> None:
        shape = self.shapes.get(input_name)  # None: an input with no shape, whose rank is not known either
        self.fixed_batch = shape[0] if shape else None
        self.produced.add(input_name)
        sizes = [d for d in (shape or ())[1:] if isinstance(d, int)]
        if shape and len(sizes) == len(shape) - 1:
            self.examples[input_name] = np.zeros((EXAMPLE_BATCH, *sizes), np.float32)
            self.sample = tuple(sizes)  # the static shape the graph declares, which its nodes may read

    def add_step(self, step: Step) -> None:
        """Append `step` and run it on the example values of its inputs (where they are all known)."""
        self.steps.append(step)
        self.produced.add(step.output)
        if all(name in self.examples for name in step.inputs):
            args = [Tensor(self.examples[name]) for name in step.inputs]
            fn = self.layers[step.layer] if step.layer is not None else \
                (BINARY if len(args) == 2 else UNARY)[step.op or ""]
            try:
                with np.errstate(all="ignore"):  # zeros through log or a division: only the shape is read
                    self.examples[step.output] = np.asarray(fn(*args).data)
            except (ValueError, TypeError) as exc:  # operands whose shapes do not fit: ONNX Runtime refuses too
                raise CompileError(f"cannot import the node making {step.output!r}: on an example input of "
                                   f"{EXAMPLE_BATCH} rows it fails ({type(exc).__name__}: {exc})") from exc

    def alias(self, name: str) -> str:
        while name in self.aliases:
            name = self.aliases[name]
        return name

    def attrs(self, node: Any) -> dict[str, Any]:
        return {a.name: self.onnx.helper.get_attribute_value(a) for a in node.attribute}

    def refuse(self, node: Any, detail: str = "") -> CompileError:
        return unsupported("node", node.name or node.output[0], node.op_type, NODES, detail)

    def is_const(self, name: str) -> bool:
        return name in self.consts

    def const(self, node: Any, name: str, dtype: Any = np.float32) -> np.ndarray:
        """Constant `name` as float32 (or `dtype`: int64 for positions and sizes, which float32 would
        round), or a refusal saying why `node` cannot have it."""
        if name in self.pairs:
            raise self.refuse(node, f"input {name!r} is computed from the batch size; here it must be a constant")
        if name not in self.consts:
            raise self.refuse(node, f"input {name!r} must be a constant (an initializer)")
        value = np.asarray(self.consts[name])
        if value.dtype.kind not in "fiub":
            what = "strings" if value.dtype.kind in "USO" else f"{value.dtype} values"
            raise self.refuse(node, f"input {name!r} holds {what}, not numbers")
        return value.astype(dtype)

    def known_shape(self, name: str) -> Shape | None:
        """The shape of value `name` as ONNX shape inference gives it, or from the example run where
        inference leaves it unknown or partly unknown; None if neither knows it."""
        shape = self.shapes.get(name)
        example = self.examples.get(self.alias(name))
        if example is not None and (shape is None or None in shape[1:]):
            shape = (None, *example.shape[1:])
        return shape

    def set_value(self, name: str, value: np.ndarray | Pair) -> None:
        """Record a folded value: a constant, or sizes computed from the batch size."""
        if isinstance(value, Pair):
            self.pairs[name] = value
        else:
            self.consts[name] = value

    def shape_of(self, node: Any, name: str, why: str) -> Shape:
        """The shape of value `name`, or a refusal saying that `why` needs at least its rank."""
        shape = self.known_shape(name)
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

    def layer(self, node: Any, layer: Layer, *sources: str, output: int = 0) -> None:
        """`layer` makes the node's output (the `output`-th) from `sources`."""
        key = layer_key(node.name or node.output[output], self.layers)
        self.layers[key] = layer
        self.add_step(Step(node.output[output], tuple(self.alias(s) for s in sources), layer=key))

    def add(self, node: Any) -> None:
        op, ins, a = node.op_type, list(node.input), self.attrs(node)
        if op == "Dropout" and len(ins) > 2 and ins[2] and bool(self.consts.get(ins[2], False)):
            raise self.refuse(node, "training_mode=True: from_onnx imports inference graphs")
        if node.domain not in ("", "ai.onnx"):
            raise self.refuse(node, f"an op of domain {node.domain!r}; only the standard ONNX ops")
        if all(not name or name in self.consts or name in self.pairs for name in ins):
            self._fold(node, ins)
            return
        unmade = [name for name in ins if name and name not in self.consts and name not in self.pairs and
                  self.alias(name) not in self.produced]
        if unmade:  # e.g. LayerNormalization's Mean output: tinycomp computes a node's first output only
            raise self.refuse(node, f"input {unmade[0]!r} is an output tinycomp does not compute (a node's second "
                                    "or later output)")
        sized = [name for name in (ins[:1] if op == "Reshape" else ins) if name in self.pairs]
        if sized:  # sizes that change with the batch can only be a Reshape's target
            raise self.refuse(node, f"input {sized[0]!r} is computed from the batch size; only a Reshape's "
                                    "shape may be")
        if op in ("Identity", "Dropout"):
            self.aliases[node.output[0]] = ins[0]
        elif op in HANDLERS:
            HANDLERS[op](self, node, ins, a)
        else:
            raise self.refuse(node)

    def _fold(self, node: Any, ins: list[str]) -> None:
        """A node of constants and sizes only: its outputs computed now (`onnx_fold`)."""
        try:
            outputs = fold_pair(self.onnx, node, self.opset, [self.consts.get(n, self.pairs.get(n)) if n else None
                                                              for n in ins])
        except FoldError as exc:
            raise self.refuse(node, str(exc)) from exc
        for name, value in zip([n for n in node.output if n], outputs, strict=True):
            self.set_value(name, value)
