"""One function per ONNX op that reads data (the ones that compute only constants and sizes are
folded: `onnx_fold`): each turns its node into a tinycomp layer or a graph step, or refuses it with
a `CompileError` saying why. `HANDLERS` maps op types to them; `onnx_import` calls them with its
`_Importer` as `imp`."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import nn as tnn
from .common import Step, linear_from
from .graph_layers import ChannelAffine, ConstantOperand, LeakyReLU, LogSoftmax
from .graph_rules import (
    BATCH,
    axis_key,
    check_matmul,
    check_ranks,
    clipping,
    indexing,
    joining,
    permutation,
    reduction,
    reshape_sample,
    selection,
    with_constant,
)
from .onnx_fold import batch_form, shape_pair


def gemm(imp: Any, node: Any, ins: list[str], a: dict) -> None:
    if a.get("transA", 0):
        raise imp.refuse(node, "transA=1")
    w = imp.const(node, ins[1])
    w = (w.T if a.get("transB", 0) else w) * np.float32(a.get("alpha", 1.0))
    bias = None
    # beta = 0 leaves C out (ONNX Runtime and ONNX's reference do; 0 * an inf or NaN in C would be NaN)
    if len(ins) > 2 and ins[2] and float(a.get("beta", 1.0)) != 0.0:
        c = imp.const(node, ins[2]) * np.float32(a.get("beta", 1.0))
        # C broadcasts to (batch, out): one value per output, or one in all, is a bias; a C that
        # varies along the batch is not
        if c.size not in (1, w.shape[1]) or (c.ndim == 2 and c.shape[0] != 1):
            n = w.shape[1]
            raise imp.refuse(node, f"C of shape {c.shape}: a bias must be (), ({n},) or (1, {n})")
        bias = np.broadcast_to(c.reshape(-1), (w.shape[1],))
    imp.layer(node, linear_from(w, bias), ins[0])


def matmul(imp: Any, node: Any, ins: list[str], a: dict) -> None:
    left, right = (imp.is_const(name) for name in ins)
    if right and not left and imp.const(node, ins[1]).ndim == 2:
        imp.layer(node, linear_from(imp.const(node, ins[1]), None), ins[0])  # data @ W: a Linear
        return
    ranks = [None if known else len(imp.shape_of(node, name, "MatMul")) for name, known in zip(ins, (left, right),
                                                                                                 strict=True)]
    imp.check(node, check_matmul, *ranks, ins)
    binary(imp, node, ins, "matmul")


def binary(imp: Any, node: Any, ins: list[str], op: str) -> None:
    """x <op> y for two data values (a graph step), or one of them and a constant (`with_constant`)."""
    known = [imp.is_const(name) for name in ins]
    if not any(known):
        if op == "pow":
            raise imp.refuse(node, "the exponent is computed data; tinycomp raises to constant powers only")
        if op != "matmul":
            imp.check(node, check_ranks, *(len(imp.shape_of(node, name, op)) for name in ins))
        imp.add_step(Step(node.output[0], (imp.alias(ins[0]), imp.alias(ins[1])), op=op))
        return
    value = imp.const(node, ins[0] if known[0] else ins[1])
    data = ins[1] if known[0] else ins[0]
    imp.layer(node, imp.check(node, with_constant, op, value, known[0], len(imp.shape_of(node, data, op))), data)


def binary_op(op: str) -> Callable[[Any, Any, list[str], dict], None]:
    def handler(imp: Any, node: Any, ins: list[str], a: dict) -> None:
        binary(imp, node, ins, op)
    return handler


def unary(op: str) -> Callable[[Any, Any, list[str], dict], None]:
    def handler(imp: Any, node: Any, ins: list[str], a: dict) -> None:
        imp.add_step(Step(node.output[0], (imp.alias(ins[0]),), op=op))
    return handler


def layer_of(make: Callable[[], Any]) -> Callable[[Any, Any, list[str], dict], None]:
    def handler(imp: Any, node: Any, ins: list[str], a: dict) -> None:
        imp.layer(node, make(), ins[0])
    return handler


def extremum(op: str) -> Callable[[Any, Any, list[str], dict], None]:
    """Max or Min of one value (itself) or two (a binary op; more are refused, not chained)."""
    def handler(imp: Any, node: Any, ins: list[str], a: dict) -> None:
        if len(ins) == 1:
            imp.aliases[node.output[0]] = ins[0]
        elif len(ins) == 2:
            binary(imp, node, ins, op)
        else:
            raise imp.refuse(node, f"{len(ins)} inputs; tinycomp imports {node.op_type} of one or two")
    return handler


def where(imp: Any, node: Any, ins: list[str], a: dict) -> None:
    """Where(cond, x, y): a `Where` holding the constant operands (a folded mask, -inf) and taking the others."""
    fixed = [imp.const(node, name) if imp.is_const(name) else None for name in ins]
    data = [name for name, value in zip(ins, fixed, strict=True) if value is None]
    ranks = [len(imp.shape_of(node, name, "Where")) for name in data]
    imp.layer(node, imp.check(node, selection, fixed, ranks), *data)


def clip(imp: Any, node: Any, ins: list[str], a: dict) -> None:
    """Clip: its bounds are inputs from opset 11, attributes before; both must be constants."""
    if imp.opset < 11:
        bounds = [a.get("min"), a.get("max")]
    else:
        given = [*ins[1:3], "", ""][:2]
        if any(name and not imp.is_const(name) for name in given):
            raise imp.refuse(node, "a bound computed from the data; tinycomp clips to constant bounds (use Max/Min)")
        bounds = [imp.const(node, name) if name else None for name in given]
        if any(b is not None and b.size != 1 for b in bounds):
            shapes = [None if b is None else b.shape for b in bounds]
            raise imp.refuse(node, f"bounds of shapes {shapes}; ONNX's Clip takes scalars (Max/Min broadcast tensors)")
    rank = len(imp.shape_of(node, ins[0], "Clip"))
    if all(b is None for b in bounds):
        imp.aliases[node.output[0]] = ins[0]  # no bound: the identity
        return
    imp.layer(node, imp.check(node, clipping, *bounds, rank), ins[0])


# Along the batch a Slice must take everything: a start of 0, or at or below -FIRST (exporters write
# -2**63), to an end at or beyond TO_END (exporters write INT32_MAX or INT64_MAX), step 1
FIRST, TO_END = 2 ** 62, 2 ** 31 - 1


def slice_(imp: Any, node: Any, ins: list[str], a: dict) -> None:
    """Slice: starts, ends, axes and steps constants (inputs from opset 10, attributes before); the
    batch axis only whole."""
    if imp.opset < 10:
        starts, ends, axes, steps = a.get("starts", []), a.get("ends", []), a.get("axes"), None
    else:
        given = [imp.const(node, name, np.int64) if name else None for name in [*ins[1:5], "", ""][:4]]
        starts, ends, axes, steps = given
    shape = imp.shape_of(node, ins[0], "Slice")
    rank = len(shape)
    axes = range(len(starts)) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise imp.refuse(node, f"starts, ends, axes and steps of lengths {len(starts)}, {len(ends)}, {len(axes)}, "
                               f"{len(steps)}: they must be equal")
    key = [slice(None)] * rank
    for axis, start, end, step in zip(axes, starts, ends, steps, strict=True):
        axis, start, end, step = axis_of(imp, node, int(axis), rank), int(start), int(end), int(step)
        if axis == 0:
            if (start == 0 or start <= -FIRST) and end >= TO_END and step == 1:
                continue  # the whole batch
            raise imp.refuse(node, f"starts {start}, ends {end}, steps {step} along the batch axis: it stays whole")
        key[axis] = slice(start, end, step)
    imp.layer(node, imp.check(node, indexing, tuple(key), shape), ins[0])


def split(imp: Any, node: Any, ins: list[str], a: dict) -> None:
    """Split along a sample axis: one slice per output, sizes from `split` (an input from opset 13, an
    attribute before), else `num_outputs` parts (the last smaller, opset 18) or equal ones."""
    shape = imp.shape_of(node, ins[0], "Split")
    axis = axis_of(imp, node, int(a.get("axis", 0)), len(shape))
    if axis == 0 or shape[axis] is None:
        raise imp.refuse(node, f"axis {axis} of a value of shape {shape}: only along a known axis after the batch")
    size, parts = int(shape[axis]), len(node.output)
    given = imp.const(node, ins[1], np.int64) if len(ins) > 1 and ins[1] else a.get("split")
    if given is not None:
        sizes = [int(d) for d in np.asarray(given).reshape(-1)]
    elif "num_outputs" in a:
        step = -(-size // parts)
        sizes = [min(step, size - i * step) for i in range(parts)]
    elif size % parts == 0:
        sizes = [size // parts] * parts
    else:
        raise imp.refuse(node, f"{size} along axis {axis} does not split into {parts} equal parts")
    if len(sizes) != parts or sum(sizes) != size or min(sizes) < 0:
        raise imp.refuse(node, f"split sizes {sizes} for {parts} outputs of {size} along axis {axis}")
    start = 0
    for i, d in enumerate(sizes):
        key = axis_key(len(shape), axis, slice(start, start + d))
        imp.layer(node, imp.check(node, indexing, key, shape), ins[0], output=i)
        start += d


def concat(imp: Any, node: Any, ins: list[str], a: dict) -> None:
    """Concat of data values along an axis after the batch (a constant has no batch to join with)."""
    if any(imp.is_const(name) for name in ins):
        raise imp.refuse(node, "a constant among the inputs: it has no batch axis to join the data's along")
    ranks = [len(imp.shape_of(node, name, "Concat")) for name in ins]
    imp.layer(node, imp.check(node, joining, int(a.get("axis", 0)), ranks), *ins)


def gather(imp: Any, node: Any, ins: list[str], a: dict) -> None:
    """Gather of constant positions along a sample axis: one (x[:, 0] as torch exports it), or an evenly
    spaced run of them (x[:, [-1]]), as indexing takes them."""
    indices = imp.const(node, ins[1], np.int64)
    shape = imp.shape_of(node, ins[0], "Gather")
    if indices.ndim > 1:
        raise imp.refuse(node, f"indices of shape {indices.shape}: tinycomp gathers one position or a list of them")
    axis = axis_of(imp, node, int(a.get("axis", 0)), len(shape))
    part = int(indices) if indices.ndim == 0 else [int(i) for i in indices]
    imp.layer(node, imp.check(node, indexing, axis_key(len(shape), axis, part), shape), ins[0])


def axis_of(imp: Any, node: Any, axis: int, rank: int) -> int:
    """`axis` of a value of `rank` dims counted from 0, or a refusal where there is no such axis."""
    if not -rank <= axis < rank:
        raise imp.refuse(node, f"axis {axis} of a value of rank {rank}")
    return axis % rank


def is_nan(imp: Any, node: Any, ins: list[str], a: dict) -> None:
    """IsNaN: x != x, the one value unequal to itself (torch's export guards a masked softmax so)."""
    imp.add_step(Step(node.output[0], (imp.alias(ins[0]), imp.alias(ins[0])), op="not_equal"))


def is_inf(imp: Any, node: Any, ins: list[str], a: dict) -> None:
    """IsInf: |x| == inf, or x == +inf / -inf alone as detect_positive / detect_negative say."""
    positive, negative = int(a.get("detect_positive", 1)), int(a.get("detect_negative", 1))
    if positive and negative:
        imp.add_step(Step(f"{node.output[0]}#abs", (imp.alias(ins[0]),), op="abs"))
        imp.layer(node, ConstantOperand("equal", math.inf), f"{node.output[0]}#abs")
    elif positive or negative:
        imp.layer(node, ConstantOperand("equal", math.inf if positive else -math.inf), ins[0])
    else:
        raise imp.refuse(node, "detect_positive=0 and detect_negative=0: it detects nothing")


def reciprocal(imp: Any, node: Any, ins: list[str], a: dict) -> None:
    imp.layer(node, ConstantOperand("div", 1.0, constant_first=True), ins[0])


def cast(imp: Any, node: Any, ins: list[str], a: dict) -> None:
    to = int(a.get("to", 0))
    if to == imp.onnx.TensorProto.BOOL:  # data as a mask: nonzero
        imp.layer(node, ConstantOperand("not_equal", 0.0), ins[0])
        return
    if to != imp.onnx.TensorProto.FLOAT:
        name = imp.onnx.TensorProto.DataType.Name(to) if to in imp.onnx.TensorProto.DataType.values() else str(to)
        raise imp.refuse(node, f"a cast of data to {name}; tinycomp computes in float32 (FLOAT) only")
    imp.aliases[node.output[0]] = ins[0]  # the graph's data is float32 already


def softmax(imp: Any, node: Any, ins: list[str], a: dict) -> None:
    """Softmax or LogSoftmax (same axis rules)."""
    make = (lambda dim: tnn.Softmax(dim=dim)) if node.op_type == "Softmax" else LogSoftmax
    if imp.opset >= 13:
        axis = int(a.get("axis", -1))
        if axis % len(imp.shape_of(node, ins[0], node.op_type)) == 0:
            raise imp.refuse(node, f"axis={axis} normalizes across the batch")
        imp.layer(node, make(axis), ins[0])
        return
    # before opset 13 Softmax normalized over all dimensions from `axis` (default 1) on, as one row
    axis = int(a.get("axis", 1))
    shape = () if axis == -1 else imp.shape_of(node, ins[0], f"axis={axis} under opset {imp.opset}")
    if axis != -1 and not -len(shape) <= axis < len(shape):
        raise imp.refuse(node, f"axis={axis} on a value of rank {len(shape)}")
    if axis == -1 or axis % len(shape) == len(shape) - 1:
        imp.layer(node, make(-1), ins[0])
        return
    axis %= len(shape)
    if axis == 0:
        raise imp.refuse(node, f"axis=0 under opset {imp.opset} normalizes across the batch")
    sample = imp.sample_sizes(node, ins[0], f"axis={axis} under opset {imp.opset}")
    rows = tnn.Reshape(*sample[:axis - 1], math.prod(sample[axis - 1:]))
    imp.layer(node, tnn.Sequential(rows, make(-1), tnn.Reshape(*sample)), ins[0])


def gelu(imp: Any, node: Any, ins: list[str], a: dict) -> None:
    form = a.get("approximate", "none")
    form = form.decode() if isinstance(form, bytes) else form
    imp.layer(node, tnn.GELU(approximate="tanh" if form == "tanh" else "none"), ins[0])


def layer_normalization(imp: Any, node: Any, ins: list[str], a: dict) -> None:
    axis = int(a.get("axis", -1))
    rank = len(imp.shapes.get(ins[0], ())) or None
    if axis != -1 and (rank is None or axis % rank != rank - 1):
        raise imp.refuse(node, f"axis={axis} on a value of rank {rank or 'unknown'}: only the last axis")
    shape = imp.shape_of(node, ins[0], "LayerNormalization")  # only its last size is read: the others may vary
    if len(shape) < 2:
        raise imp.refuse(node, f"a value of shape {shape}: its last axis is the batch")
    width = shape[-1]
    if width is None:
        raise imp.refuse(node, f"a value of shape {shape}: the size of its last axis must be known")
    layer = tnn.LayerNorm(width, eps=float(a.get("epsilon", 1e-5)))
    for name, attr in zip(ins[1:3], ("gamma", "beta"), strict=False):
        if name:  # Scale and B broadcast along the last axis: one value per position, or one in all
            value = imp.const(node, name)
            if value.size not in (1, width) or (value.size == width and value.shape[-1] != width):
                raise imp.refuse(node, f"{attr} of shape {value.shape} on rows of {width}: one value per position "
                                       "of the last axis, or one value")
            setattr(layer, attr, tnn.Tensor(np.broadcast_to(value.reshape(-1), (width,))))
    imp.layer(node, layer, ins[0])


def batch_normalization(imp: Any, node: Any, ins: list[str], a: dict) -> None:
    if a.get("training_mode", 0) or len([o for o in node.output if o]) > 1:  # below opset 14: the outputs say
        raise imp.refuse(node, "in training mode (training_mode=1, or the running statistics as outputs): it "
                               "normalizes by the batch's own statistics")
    if not a.get("spatial", 1):
        raise imp.refuse(node, "spatial=0: statistics per position, not per channel")
    scale, bias, mean, var = (imp.const(node, name) for name in ins[1:5])
    imp.layer(node, ChannelAffine.from_statistics(mean, var, float(a.get("epsilon", 1e-5)), scale, bias), ins[0])


def leaky_relu(imp: Any, node: Any, ins: list[str], a: dict) -> None:
    imp.layer(node, LeakyReLU(float(a.get("alpha", 0.01))), ins[0])


def reshape(imp: Any, node: Any, ins: list[str], a: dict) -> None:
    # before opset 5 the target is an attribute
    shape = target_shape(imp, node, ins[1]) if len(ins) > 1 else [int(d) for d in a.get("shape", ())]
    # the input's own batch size, computed from its shape, or written as a number in a graph that
    # fixes it (exporters fold x.size(0) then): the batch
    if shape and imp.fixed_batch and shape[0] == imp.fixed_batch:
        shape[0] = BATCH
    if a.get("allowzero", 0) and 0 in shape:
        raise imp.refuse(node, f"shape {shape} with allowzero=1: a size of 0, so no batch dimension")
    source = imp.known_shape(ins[0])
    known = None if source is None or None in source[1:] else [int(d) for d in source[1:] if d is not None]
    imp.layer(node, tnn.Reshape(*imp.check(node, reshape_sample, shape, known)), ins[0])


def target_shape(imp: Any, node: Any, name: str) -> list[Any]:
    """A Reshape's target: constant sizes, `BATCH` where the graph computed the input's batch size."""
    if name in imp.pairs:
        form = batch_form(imp.pairs[name])
        if form is None:
            pair = imp.pairs[name]
            at = ", ".join(f"{x} / {y}" for x, y in zip(pair.first.reshape(-1).tolist(),
                                                         pair.second.reshape(-1).tolist(), strict=False))
            raise imp.refuse(node, f"its shape changes with the batch size other than as the batch (at two batch "
                                   f"sizes: {at}): a reshape that merges or splits the batch")
        return form
    return [int(d) for d in imp.const(node, name).astype(np.int64).reshape(-1)]


def flatten(imp: Any, node: Any, ins: list[str], a: dict) -> None:
    axis = int(a.get("axis", 1))
    if axis != 1 and (axis >= 0 or axis % len(imp.shape_of(node, ins[0], "Flatten")) != 1):
        raise imp.refuse(node, f"axis={axis}: only 1 keeps the batch dimension its own")
    # (N, ...) -> (N, the product of the rest): (N,) becomes (N, 1), which tnn.Flatten leaves as it is
    imp.layer(node, tnn.Reshape(math.prod(imp.sample_sizes(node, ins[0], "Flatten"))), ins[0])


def squeeze_or_unsqueeze(imp: Any, node: Any, ins: list[str], a: dict) -> None:
    """Both only add or drop sizes of 1: a Reshape to the result's sample sizes, the batch kept first."""
    axes = a.get("axes") if len(ins) < 2 or not ins[1] else imp.const(node, ins[1]).astype(np.int64).tolist()
    sizes = [None, *imp.sample_sizes(node, ins[0], node.op_type)]  # the input's, the batch first
    unsqueeze = node.op_type == "Unsqueeze"
    rank = len(sizes) + (len(axes) if unsqueeze and axes else 0)  # the rank the axes count in
    axes = None if axes is None else sorted(int(x) % rank for x in axes)
    if not axes or 0 in axes or (not unsqueeze and any(sizes[x] != 1 for x in axes)):
        raise imp.refuse(node, f"axes {axes}: the batch (axis 0) must stay where it is, " + (
            "so no axis goes in before it" if unsqueeze else
            "and only sizes of 1 go (a Squeeze without axes drops every size of 1)"))
    if unsqueeze:
        for x in axes:  # in increasing order: each insertion at its final place
            sizes.insert(x, 1)
    else:
        sizes = [d for i, d in enumerate(sizes) if i not in axes]
    imp.layer(node, tnn.Reshape(*sizes[1:]), ins[0])


def transpose(imp: Any, node: Any, ins: list[str], a: dict) -> None:
    rank = len(imp.shape_of(node, ins[0], "Transpose"))
    imp.layer(node, imp.check(node, permutation, [int(p) for p in a.get("perm", range(rank - 1, -1, -1))]), ins[0])


def reduce(kind: str) -> Callable[[Any, Any, list[str], dict], None]:
    def handler(imp: Any, node: Any, ins: list[str], a: dict) -> None:
        axes = imp.const(node, ins[1]).astype(np.int64).tolist() if len(ins) > 1 and ins[1] else a.get("axes")
        if not axes and a.get("noop_with_empty_axes", 0):
            imp.aliases[node.output[0]] = ins[0]
            return
        rank = len(imp.shape_of(node, ins[0], node.op_type))
        imp.layer(node, imp.check(node, reduction, kind, axes, bool(a.get("keepdims", 1)), rank), ins[0])
    return handler


def shape(imp: Any, node: Any, ins: list[str], a: dict) -> None:
    """Shape of a data value: its sizes from ONNX shape inference, the batch as a size pair (`onnx_fold`)."""
    try:
        value = shape_pair(imp.shape_of(node, ins[0], "Shape"), int(a.get("start", 0)), a.get("end"))
    except ValueError as exc:
        raise imp.refuse(node, str(exc)) from exc
    imp.set_value(node.output[0], value)


HANDLERS: dict[str, Callable[[Any, Any, list[str], dict], None]] = {
    "Gemm": gemm, "MatMul": matmul,
    "Add": binary_op("add"), "Sub": binary_op("sub"), "Mul": binary_op("mul"), "Div": binary_op("div"),
    "Pow": binary_op("pow"), "Greater": binary_op("greater"), "GreaterOrEqual": binary_op("greater_equal"),
    "Less": binary_op("less"), "LessOrEqual": binary_op("less_equal"), "Equal": binary_op("equal"),
    # the logic of masks, which comparisons give as 0s and 1s
    "Not": unary("logical_not"), "And": binary_op("minimum"), "Or": binary_op("maximum"),
    "Xor": binary_op("not_equal"),
    "Max": extremum("maximum"), "Min": extremum("minimum"), "Where": where, "Clip": clip,
    "Neg": unary("neg"), "Exp": unary("exp"), "Log": unary("log"), "Sqrt": unary("sqrt"), "Abs": unary("abs"),
    "Reciprocal": reciprocal, "IsNaN": is_nan, "IsInf": is_inf,
    "Relu": layer_of(tnn.ReLU), "Sigmoid": layer_of(tnn.Sigmoid), "Tanh": layer_of(tnn.Tanh),
    "Softmax": softmax, "LogSoftmax": softmax, "Gelu": gelu, "LayerNormalization": layer_normalization,
    "BatchNormalization": batch_normalization, "LeakyRelu": leaky_relu,
    "Reshape": reshape, "Flatten": flatten, "Squeeze": squeeze_or_unsqueeze, "Unsqueeze": squeeze_or_unsqueeze,
    "Transpose": transpose, "Cast": cast, "Shape": shape, "Slice": slice_, "Split": split, "Gather": gather,
    "Concat": concat,
    "ReduceSum": reduce("sum"), "ReduceMean": reduce("mean"), "ReduceMax": reduce("max"),
}
