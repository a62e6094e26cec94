"""The op registry: every op defined once, with one rule per concern.

Each `OpDef` says what kind of op it is, its shape rule (`ir/shapes.py`), its NumPy reference
(`ir/refs.py`), its FLOPs per element, its rounding rule for the parity check (`ir/rounding.py`),
whether `fuse_linear` may fold it into a linear as the activation, and the NumPy ufunc that means
the same. Every stage reads this table (autodidax's rule tables keyed by op, tinygrad's op groups):
eager tensors (`frontend.tensor.apply_op`), the tracer, `Graph.add`/`lint`, the interpreter, the
passes, `summary`, the parity rule and the code generator, which registers a lowering per op and a
vector emitter per elementwise op (`codegen/module.py` LOWERINGS, `codegen/vector_ops.py`). The op
groups below (UNARY, LEAVES, ...) are derived from it. tests/ir/test_registry.py walks it.

Adding an elementwise op is one entry here, its `Tensor` method, and its vector emitter if new.
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import refs, rounding
from .refs import gelu, gelu_erf, keep_dtype, power, relu, sigmoid, softmax  # noqa: F401 - also re-exported
from .rounding import RoundingRule, derivative
from .shapes import (  # noqa: F401 - fmt_shape, dim_text: re-exported for the modules that print shapes
    Shape,
    attention_dims,
    attention_shape,
    broadcast_all,
    broadcast_shapes,
    concat_shape,
    dim_text,
    fmt_shape,
    layer_norm_shape,
    leaf_shape,
    linear_shape,
    matmul_shape,
    normalized_axis,
    reduce_shape,
    reduced_axes,
    reshape_shape,
    same_shape,
    slice_shape,
    softmax_shape,
    transpose_shape,
)

KINDS = {
    "leaf": "a value from outside: the input, a parameter, a constant",
    "elementwise": "each output element from the elements at its position (NumPy broadcasting)",
    "view": "the operand's values passed on or rearranged, no arithmetic",
    "reduction": "combines the elements along some axes into one",
    "normalization": "each slice along one axis from the whole slice (softmax, layer_norm)",
    "contraction": "a sum of products over a shared axis (matmul)",
    "fused": "several ops made one by a pass",
}


@dataclass(frozen=True)
class Example:
    """Operands and attributes to run an op on (the registry test and docs): per operand a shape
    (None: the batch dimension) or a number (a scalar operand, as in `x ** 2.0`)."""

    operands: tuple
    attrs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class OpDef:
    name: str
    kind: str  # a key of KINDS
    arity: int  # number of operands (-1: any)
    shape: Callable[..., Shape]  # shape(*operand_shapes, **attrs) -> output shape; raises ValueError
    ref: Callable[..., np.ndarray] | None  # ref(*operand_arrays, **attrs) -> array of the operands' dtype
    flops: int = 1  # per element of the output (reductions, normalizations: of the input;
    # contractions: 2 per multiply-add, counted by `cost`)
    rounding: RoundingRule | None = None  # float32 rounding estimate for the parity rule; None: exact/unknown
    activation: bool = False  # fuse_linear may fold it into a linear as its `activation`
    aliases: bool = False  # its value is its first operand's memory as it is (reshape, eval dropout, output)
    # The NumPy ufunc that an operator with an ndarray on the left reaches (`array + x` calls np.add):
    # the tracer records it as this op. Only ops whose Tensor operators eager code reflects.
    ufunc: Any = None
    made_by: str | None = None  # what creates its nodes (the tracer, a pass); user code never calls it
    example: Example | None = None  # None: one (N, 5) operand per input, (5,) for a second

    def cost(self, operands: list[Shape], out: Shape, attrs: dict) -> tuple[int, int]:
        """(MACs, FLOPs) of one node on concrete shapes: the one FLOP count (`summary`, the thread
        policy through `summary.flops_per_row`, the bench)."""
        size = math.prod(out)
        if self.name == "attention":
            return attention_cost(operands, attrs)
        if self.kind == "contraction":
            macs = size * (operands[0][-1] if operands[0] else 1)
            flops = 2 * macs
            if self.name == "linear":
                act = attrs.get("activation")
                flops += size * (int(bool(attrs.get("bias"))) + int(bool(attrs.get("residual")))
                                 + (op_def(act).flops if act else 0))
            return macs, flops
        if self.kind in ("reduction", "normalization"):
            return 0, math.prod(operands[0]) * self.flops
        if self.kind == "fused":
            return 0, size * expr_flops(attrs["expr"])
        if self.name == "dropout" and not attrs.get("training"):
            return 0, 0  # the identity at inference (fold_dropout removes it)
        return 0, size * self.flops


# ---------------------------------------------------------------- fused elementwise expressions
# A fused chain is one `elementwise` node whose `expr` attribute is a tuple tree: `("in", i)` is
# operand i, `("const", v)` a number, `(op, child, ...)` an ELEMENTWISE op of the table.

Expr = tuple

_BRIEF = reprlib.Repr()
_BRIEF.maxlevel, _BRIEF.maxtuple = 3, 4


def expr_nodes(expr: object):
    """Every node of an expression tree that is a non-empty tuple, parents first (a stack, not
    recursion: a long fused chain is a deep tree); malformed children are skipped, not checked."""
    stack = [expr]
    while stack:
        e = stack.pop()
        if isinstance(e, tuple) and e and isinstance(e[0], str):
            yield e
            if e[0] not in ("in", "const"):
                stack.extend(reversed(e[1:]))


def check_expr(expr: object, n_operands: int, *, every_operand: bool = True) -> None:
    """Raise ValueError unless `expr` is a well-formed expression over `n_operands` operands: every
    leaf `("in", i)` with 0 <= i < n_operands or `("const", number)`, every inner node an
    elementwise op of the table with its number of children, and (`every_operand`) every operand
    read somewhere. Walked with a stack, not recursion: a long fused chain is a deep tree."""
    brief = _BRIEF.repr  # a message about one node of a deep tree stays short
    read: set[int] = set()
    stack = [expr]
    while stack:
        e = stack.pop()
        if not isinstance(e, tuple) or not e or not isinstance(e[0], str):
            raise ValueError(f"an expression node must be a tuple (op, ...); got {brief(e)}")
        head, args = e[0], e[1:]
        if head == "in":
            if len(args) != 1 or type(args[0]) is not int or not 0 <= args[0] < n_operands:
                raise ValueError(f"operand reference {brief(e)} is not one of $0..${n_operands - 1}")
            read.add(args[0])
        elif head == "const":
            if len(args) != 1 or isinstance(args[0], bool) or not isinstance(args[0], (int, float)):
                raise ValueError(f"a constant holds one number; got {brief(e)}")
        elif head in ELEMENTWISE:
            if len(args) != OPS[head].arity:
                raise ValueError(f"{head} takes {OPS[head].arity} operand(s); {brief(e)} has {len(args)}")
            stack.extend(args)
        else:
            raise ValueError(f"{head!r} in {brief(e)} is not an elementwise op of the table ({sorted(ELEMENTWISE)})")
    unread = sorted(set(range(n_operands)) - read)
    if unread and every_operand:
        raise ValueError(f"operand(s) {', '.join(f'${i}' for i in unread)} of the node are never read")


def expr_shape(*shapes: Shape, expr: Expr) -> Shape:
    out: Shape = ()
    for s in shapes:
        out = broadcast_shapes(out, s)
    return out


def eval_expr(*operands: np.ndarray, expr: Expr) -> np.ndarray:
    """The NumPy reference of a fused expression: the table's own refs, op by op."""
    head = expr[0]
    if head == "in":
        return operands[expr[1]]
    if head == "const":
        return np.asarray(expr[1], dtype=np.float32)  # 0-d: promotes like an array, float64 stays float64
    ref = OPS[head].ref
    assert ref is not None, f"{head} is not an elementwise op"
    return np.asarray(ref(*[eval_expr(*operands, expr=c) for c in expr[1:]]))


def map_leaves(expr: Expr, leaf: Callable[[Expr], Expr]) -> Expr:
    """The expression with every `in`/`const` leaf replaced by `leaf(it)`."""
    if expr[0] in ("in", "const"):
        return leaf(expr)
    return (expr[0], *[map_leaves(c, leaf) for c in expr[1:]])


def expr_flops(expr: Expr) -> int:
    if expr[0] in ("in", "const"):
        return 0
    return OPS[expr[0]].flops + sum(expr_flops(c) for c in expr[1:])


def format_expr(expr: Expr) -> str:
    """`relu(add($0, $1))`: $i is operand i."""
    if expr[0] == "in":
        return f"${expr[1]}"
    if expr[0] == "const":
        return f"{expr[1]:g}"
    return f"{expr[0]}({', '.join(format_expr(c) for c in expr[1:])})"


def linear_extras(rest: Sequence[Any], *, bias: bool, residual: bool) -> tuple[Any, Any]:
    """(bias, residual) of a `linear` node's operands after x and W, each None where absent: the
    bias comes first (where `bias`), the residual last (where `residual`)."""
    return (rest[0] if bias and rest else None), (rest[-1] if residual else None)


def linear(x, w, *rest, bias: bool = True, activation: str | None = None, residual: bool = False) -> np.ndarray:
    """act(x @ w + b) + r, b and r the operands fuse_linear found (`linear_extras`)."""
    b, r = linear_extras(rest, bias=bias, residual=residual)
    y = np.matmul(x, w)
    if b is not None:
        y = y + b
    y = ACTIVATIONS[activation](y) if activation else y
    return y if r is None else y + r


def attention_cost(operands: list[Shape], attrs: dict) -> tuple[int, int]:
    """(MACs, FLOPs) of an attention node: q k^T and the weights times v (2 per multiply-add), then
    per score the scale, the mask term (1 op added as is, 3 from a 0/1 mask) and the softmax."""
    lead, sq, sk, d, dv, h = attention_dims(operands[0], operands[1], operands[2], attrs["heads"])
    scores = math.prod(lead) * h * sq * sk
    macs = scores * (d + dv)
    mask_ops = 0 if len(operands) < 4 else 1 if attrs.get("mask_value") is None else 3  # a fill: 1 select
    return macs, 2 * macs + scores * (1 + mask_ops + OPS["softmax"].flops)


def _elementwise(name, arity, ref, flops=1, rounding_rule=None, **more) -> OpDef:
    shape = broadcast_shapes if arity == 2 else same_shape
    return OpDef(name, "elementwise", arity, shape, ref, flops, rounding_rule, **more)


def _reduction(name, ref) -> OpDef:
    return OpDef(name, "reduction", 1, reduce_shape, ref, 1, rounding.reduction(name),
                 example=Example(((None, 2, 5),), {"axis": -1, "keepdims": False}))


# 1.0 where the comparison holds, 0.0 elsewhere; the ones Tensor's < <= > >= reach carry their ufunc
# (`array < x` calls np.less); equal and not_equal have no operator (Tensor keeps Python's ==).
COMPARISONS = [("greater", np.greater, np.greater), ("greater_equal", np.greater_equal, np.greater_equal),
               ("less", np.less, np.less), ("less_equal", np.less_equal, np.less_equal),
               ("equal", np.equal, None), ("not_equal", np.not_equal, None)]

OPS: dict[str, OpDef] = {
    op.name: op
    for op in [
        OpDef("input", "leaf", 0, leaf_shape, None, 0, made_by="tracer"),
        OpDef("param", "leaf", 0, leaf_shape, None, 0, made_by="tracer"),
        OpDef("const", "leaf", 0, leaf_shape, None, 0, made_by="tracer"),
        OpDef("matmul", "contraction", 2, matmul_shape, np.matmul, 0, rounding.matmul, ufunc=np.matmul,
              example=Example(((None, 5), (5, 3)))),
        _elementwise("add", 2, keep_dtype(np.add), 1, rounding.add_sub, ufunc=np.add),
        _elementwise("sub", 2, keep_dtype(np.subtract), 1, rounding.add_sub, ufunc=np.subtract),
        _elementwise("mul", 2, keep_dtype(np.multiply), 1, rounding.mul, ufunc=np.multiply),
        _elementwise("div", 2, keep_dtype(np.divide), 1, rounding.div, ufunc=np.true_divide),
        _elementwise("pow", 2, keep_dtype(power), 4, rounding.power,
                     example=Example(((None, 5), 3.0))),
        _elementwise("maximum", 2, keep_dtype(np.maximum), 1, rounding.extremum),
        _elementwise("minimum", 2, keep_dtype(np.minimum), 1, rounding.extremum),
        *(_elementwise(name, 2, refs.comparison(ufunc), 1, rounding.comparison, ufunc=operator_ufunc)
          for name, ufunc, operator_ufunc in COMPARISONS),
        OpDef("where", "elementwise", 3, broadcast_all, keep_dtype(refs.where), 1, rounding.where,
              example=Example(((None, 5), (5,), 0.0))),
        _elementwise("neg", 1, np.negative, 1, rounding.passes_through, ufunc=np.negative),
        _elementwise("exp", 1, np.exp, 4, derivative(lambda v, x: np.abs(v))),
        _elementwise("log", 1, np.log, 4, derivative(lambda v, x: 1 / np.abs(x))),
        _elementwise("sqrt", 1, np.sqrt, 1, derivative(lambda v, x: 0.5 / np.abs(v))),
        _elementwise("abs", 1, np.abs, 1, rounding.passes_through),
        _elementwise("relu", 1, relu, 1, derivative(lambda v, x: (x > 0).astype(v.dtype)), activation=True),
        _elementwise("sigmoid", 1, sigmoid, 4, derivative(lambda v, x: v * (1 - v)), activation=True),
        _elementwise("tanh", 1, np.tanh, 4, derivative(lambda v, x: 1 - v * v), activation=True),
        _elementwise("gelu", 1, gelu, 6, derivative(rounding.gelu_slope), activation=True),
        _elementwise("gelu_erf", 1, gelu_erf, 30, rounding.gelu_erf, activation=True),
        OpDef("softmax", "normalization", 1, softmax_shape, softmax, 5, rounding.softmax,
              example=Example(((None, 5),), {"dim": -1})),
        OpDef("layer_norm", "normalization", 3, layer_norm_shape, refs.layer_norm, 7, rounding.layer_norm,
              made_by="fuse_layer_norm", example=Example(((None, 5), (5,), (5,)), {"eps": 1e-5})),
        OpDef("dropout", "view", 1, same_shape, refs.dropout, 1, rounding.dropout, aliases=True,
              example=Example(((None, 5),), {"p": 0.5, "training": False})),
        OpDef("reshape", "view", 1, reshape_shape, refs.reshape, 0, rounding.reshape,
              aliases=True, example=Example(((None, 6),), {"newshape": (-1, 2, 3)})),
        OpDef("transpose", "view", 1, transpose_shape, lambda x, *, dim0, dim1: np.swapaxes(x, dim0, dim1), 0,
              rounding.transpose, example=Example(((None, 2, 3),), {"dim0": -2, "dim1": -1})),
        OpDef("slice", "view", 1, slice_shape, refs.slice_axis, 0, rounding.slice_axis,
              example=Example(((None, 7),), {"axis": -1, "start": 1, "stop": 6, "step": 2})),
        OpDef("concat", "view", -1, concat_shape, keep_dtype(refs.concat), 0, rounding.concat,
              # one operand: the example's others are parameters, and a parameter has no batch axis to join
              example=Example(((None, 2, 3),), {"axis": -1})),
        _reduction("sum", np.sum),
        _reduction("mean", np.mean),
        _reduction("max", np.max),
        OpDef("linear", "contraction", -1, linear_shape, linear, 0, made_by="fuse_linear",
              example=Example(((None, 5), (5, 3), (3,)), {"bias": True, "activation": "relu"})),
        OpDef("elementwise", "fused", -1, expr_shape, eval_expr, 0, made_by="fuse_elementwise",
              example=Example(((None, 5), (5,)), {"expr": ("relu", ("add", ("in", 0), ("in", 1)))})),
        OpDef("attention", "fused", -1, attention_shape, refs.attention, 0, rounding.attention,
              made_by="fuse_attention",
              example=Example(((None, 3, 8), (5, 8), (5, 6)), {"heads": 2, "scale": 0.5})),
        OpDef("output", "view", 1, same_shape, lambda x: x, 0, rounding.passes_through, aliases=True,
              made_by="tracer"),
    ]
}


def op_def(name: str) -> OpDef:
    try:
        return OPS[name]
    except KeyError:
        raise KeyError(f"unknown op {name!r}; the op table has {sorted(OPS)}") from None


def example(op: OpDef) -> Example:
    """The op's example, or the default for its arity: one (N, 5) operand, a (5,) second one."""
    return op.example or Example(((None, 5), (5,))[: max(op.arity, 1)])


def _group(test: Callable[[OpDef], bool]) -> frozenset[str]:
    return frozenset(name for name, op in OPS.items() if test(op))


ELEMENTWISE = _group(lambda op: op.kind == "elementwise")
UNARY = _group(lambda op: op.kind == "elementwise" and op.arity == 1)
BINARY = _group(lambda op: op.kind == "elementwise" and op.arity == 2)
LEAVES = _group(lambda op: op.kind == "leaf")
ALIASING = _group(lambda op: op.aliases)
REDUCTIONS = _group(lambda op: op.kind == "reduction")
FUSIBLE_ACTIVATIONS = _group(lambda op: op.activation)
ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    name: op.ref for name, op in OPS.items() if op.activation and op.ref is not None}
UFUNCS: dict[Any, str] = {op.ufunc: name for name, op in OPS.items() if op.ufunc is not None}


def combined_axes(op: str, ndim: int, attrs: dict) -> tuple[int, ...]:
    """The axes along which op combines values of different positions (a reduction's axes, a
    normalization's dim); () for every other op."""
    kind = op_def(op).kind
    if kind == "reduction":
        return reduced_axes(ndim, attrs.get("axis"))
    if kind == "normalization":
        return (normalized_axis(ndim, attrs.get("dim", -1)),)
    return ()


