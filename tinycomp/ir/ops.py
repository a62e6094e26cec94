"""The one op table: every op's shape rule and NumPy reference, defined once.

Eager tensors (`frontend.tensor.apply_op`), the tracer and the IR interpreter all read this table,
so an op means the same thing everywhere. Shapes may hold `None` for the dynamic batch dimension.
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

Shape = tuple  # tuple[int | None, ...]; None marks the dynamic batch dimension
F32 = np.float32


@dataclass(frozen=True)
class OpDef:
    name: str
    arity: int  # number of operands (-1: any)
    shape: Callable[..., Shape]  # shape(*operand_shapes, **attrs) -> output shape; raises ValueError
    ref: Callable[..., np.ndarray] | None  # ref(*operand_arrays, **attrs) -> float32 array
    flops: int = 1  # FLOPs per output element (matmul/linear count their own)


# ---------------------------------------------------------------- shape rules

def dim_text(d: int | None) -> str:
    return "N" if d is None else str(d)


def fmt_shape(shape: Sequence) -> str:
    return "(" + ", ".join(dim_text(d) for d in shape) + (",)" if len(shape) == 1 else ")")


def broadcast_shapes(a: Shape, b: Shape) -> Shape:
    out = []
    for i in range(1, max(len(a), len(b)) + 1):
        x = a[-i] if i <= len(a) else 1
        y = b[-i] if i <= len(b) else 1
        if x == y or y == 1:
            out.append(x)
        elif x == 1:
            out.append(y)
        else:
            raise ValueError(
                f"shape mismatch: cannot broadcast {fmt_shape(a)} with {fmt_shape(b)} "
                f"(dimension {x if x is not None else 'N'} against {y if y is not None else 'N'})"
            )
    return tuple(reversed(out))


def matmul_shape(a: Shape, b: Shape) -> Shape:
    """NumPy's matmul shape rule (1-D operands promoted, leading dims broadcast). The messages carry
    TinyTorch's wording (`at least 1D`, `Inner dimensions don't match: 2 vs 3`) and DESIGN §1's."""
    if len(a) == 0 or len(b) == 0:
        raise ValueError(
            f"Matrix multiplication requires at least 1D tensors: got shapes {fmt_shape(a)} @ {fmt_shape(b)}; "
            "matmul needs operands with at least 1 dimension (use * for scalar multiplication)"
        )
    a2 = (1, *a) if len(a) == 1 else tuple(a)
    b2 = (*b, 1) if len(b) == 1 else tuple(b)
    if a2[-1] != b2[-2]:
        k, j = (dim_text(d) for d in (a2[-1], b2[-2]))
        raise ValueError(
            f"Cannot perform matrix multiplication: {fmt_shape(a)} @ {fmt_shape(b)}. "
            f"Inner dimensions must match: {k} ≠ {j} (shape mismatch; Inner dimensions don't match: "
            f"{k} vs {j}: the left operand's last dimension must equal the right operand's "
            f"{'only' if len(b) == 1 else 'second-to-last'} dimension)"
        )
    batch = broadcast_shapes(a2[:-2], b2[:-2])
    out = (*batch, a2[-2], b2[-1])
    if len(a) == 1:
        out = out[:-2] + out[-1:]
    if len(b) == 1:
        out = out[:-1]
    return out


def same_shape(x: Shape, **_: object) -> Shape:
    return tuple(x)


def reshape_shape(x: Shape, *, newshape: Sequence[int]) -> Shape:
    newshape = tuple(int(d) for d in newshape)
    if sum(d == -1 for d in newshape) > 1 or any(d < -1 for d in newshape):
        raise ValueError(f"reshape takes at most one -1 and no other negative size; got {newshape}")
    if x and x[0] is None:  # dynamic batch: it must stay the leading dimension
        if not newshape or newshape[0] != -1 or -1 in newshape[1:]:
            raise ValueError(
                f"cannot reshape {fmt_shape(x)} to {newshape}: the batch dimension N must stay "
                "first, written as -1 (e.g. x.reshape(-1, 784))"
            )
        rest = reshape_shape(tuple(x[1:]), newshape=(math.prod(x[1:]),))[0]
        if math.prod(newshape[1:]) != rest:
            raise ValueError(
                f"cannot reshape {fmt_shape(x)} to {(-1, *newshape[1:])}: Element count mismatch: {rest} "
                f"elements vs {math.prod(newshape[1:])} elements per sample (each row has {rest} elements)"
            )
        return (None, *newshape[1:])
    size = math.prod(x)
    known = math.prod(d for d in newshape if d != -1)
    if -1 in newshape:
        if known == 0 or size % known:
            raise ValueError(
                f"cannot reshape tensor of shape {fmt_shape(x)} ({size} elements) to {newshape}: "
                f"Cannot infer -1 dimension: {size} elements is not divisible by the known sizes' product {known}"
            )
        newshape = tuple(size // known if d == -1 else d for d in newshape)
    if math.prod(newshape) != size:
        raise ValueError(
            f"cannot reshape tensor of shape {fmt_shape(x)} to {newshape}: Element count mismatch: "
            f"{size} elements vs {math.prod(newshape)} elements (reshape keeps every element; -1 infers one size)"
        )
    return newshape


def _axis(ndim: int, axis: int) -> int:
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of range for a tensor with {ndim} dimensions")
    return axis % ndim


def transpose_shape(x: Shape, *, dim0: int, dim1: int) -> Shape:
    out = list(x)
    i, j = _axis(len(x), dim0), _axis(len(x), dim1)
    out[i], out[j] = out[j], out[i]
    return tuple(out)


def reduced_axes(ndim: int, axis: int | Sequence[int] | None) -> tuple[int, ...]:
    """The axes a reduction runs over, non-negative and sorted (`axis=None`: all of them)."""
    if axis is None:
        return tuple(range(ndim))
    given = (axis,) if isinstance(axis, int) else tuple(axis)
    axes = tuple(_axis(ndim, a) for a in given)
    if len(set(axes)) != len(axes):
        raise ValueError(f"duplicate value in axis={given} (axes {axes} of a {ndim}-D tensor)")
    return tuple(sorted(axes))


def reduce_shape(x: Shape, *, axis: int | Sequence[int] | None, keepdims: bool) -> Shape:
    axes = reduced_axes(len(x), axis)
    return tuple(1 if i in axes else d for i, d in enumerate(x) if keepdims or i not in axes)


def combined_axes(op: str, ndim: int, attrs: dict) -> tuple[int, ...]:
    """The axes along which op combines values of different positions (a reduction's axes, softmax's
    dim); () for every other op."""
    if op in REDUCTIONS:
        return reduced_axes(ndim, attrs.get("axis"))
    if op == "softmax":
        return (_axis(ndim, attrs.get("dim", -1)),)
    return ()


def softmax_shape(x: Shape, *, dim: int = -1) -> Shape:
    _axis(len(x), dim)
    return tuple(x)


def linear_shape(x: Shape, w: Shape, b: Shape | None = None, **_: object) -> Shape:
    out = matmul_shape(x, w)
    return out if b is None else broadcast_shapes(out, b)


def leaf_shape(*, shape: Shape, **_: object) -> Shape:
    return tuple(shape)


# ---------------------------------------------------------------- NumPy references

def sigmoid(x: np.ndarray) -> np.ndarray:
    """Overflow-safe logistic: exp is only ever taken of a non-positive number."""
    with np.errstate(under="ignore"):  # exp(-1000) -> 0 is the right answer, not an error
        e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


def gelu(x: np.ndarray) -> np.ndarray:
    return x * sigmoid(np.asarray(1.702, x.dtype) * x)


def softmax(x: np.ndarray, dim: int = -1) -> np.ndarray:
    """Row-max-subtracted softmax; a slice that is all -inf gives zeros (not NaN)."""
    m = np.max(x, axis=dim, keepdims=True) if x.size else x
    all_neg_inf = np.isneginf(m)
    with np.errstate(invalid="ignore", under="ignore"):
        e = np.exp(x - np.where(all_neg_inf, 0, m))
        s = np.sum(e, axis=dim, keepdims=True)
        out = e / np.where(all_neg_inf, 1, s)
    return out.astype(x.dtype, copy=False)


def dropout_mask(rng: np.random.Generator, shape: Shape, p: float) -> np.ndarray:
    """Inverted dropout: 0 where dropped, 1/(1-p) where kept."""
    if p >= 1:
        return np.zeros(shape, F32)
    return ((rng.random(shape) >= p) / F32(1 - p)).astype(F32)


def dropout(x: np.ndarray, *, p: float, training: bool, rng: np.random.Generator | None = None):
    if not training or p == 0:
        return x
    return x * dropout_mask(rng or np.random.default_rng(), x.shape, p)


def linear(x, w, b=None, *, bias: bool = True, activation: str | None = None) -> np.ndarray:
    y = np.matmul(x, w)
    if b is not None:
        y = y + b
    return ACTIVATIONS[activation](y) if activation else y


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, F32(0))


def _with_dtype(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    """Keep float32 in float32 (NumPy would promote a float32 array with a Python float scalar)."""
    def ref(*args: np.ndarray, **attrs: object) -> np.ndarray:
        out = fn(*args, **attrs)
        return np.asarray(out, dtype=np.result_type(*args))
    return ref


def power(x: np.ndarray, exponent: np.ndarray) -> np.ndarray:
    """x ** exponent as NumPy's float32 `power` computes it: C99 `pow`, except that a scalar exponent
    of 0.5 is `sqrt` (so (-0) ** 0.5 = -0 and (-inf) ** 0.5 = nan). Spelled out here so that every
    engine (eager, float64 reference, compiled) follows one rule, whatever NumPy version runs."""
    if np.ndim(exponent) == 0 and float(exponent) == 0.5:
        return np.sqrt(x)
    return np.power(x, exponent)


ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "relu": relu, "sigmoid": sigmoid, "tanh": np.tanh, "gelu": gelu,
}

UNARY = frozenset({"neg", "relu", "sigmoid", "tanh", "gelu", "exp", "log", "sqrt", "abs"})
BINARY = frozenset({"add", "sub", "mul", "div", "pow"})
ELEMENTWISE = UNARY | BINARY
FUSIBLE_ACTIVATIONS = frozenset(ACTIVATIONS)
LEAVES = frozenset({"input", "param", "const"})
REDUCTIONS = frozenset({"sum", "mean", "max"})


# ---------------------------------------------------------------- fused elementwise expressions
# A fused chain is one `elementwise` node whose `expr` attribute is a tuple tree: `("in", i)` is
# operand i, `("const", v)` a number, `(op, child, ...)` an ELEMENTWISE op of the table.

Expr = tuple


_BRIEF = reprlib.Repr()
_BRIEF.maxlevel, _BRIEF.maxtuple = 3, 4


def check_expr(expr: object, n_operands: int) -> None:
    """Raise ValueError unless `expr` is a well-formed expression over `n_operands` operands: every
    leaf `("in", i)` with 0 <= i < n_operands or `("const", number)`, every inner node an
    elementwise op of the table with its number of children, and every operand read somewhere.
    Walked with a stack, not recursion: a long fused chain is a deep tree."""
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
    if unread:
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


def _op(name, arity, shape, ref, flops=1) -> OpDef:
    return OpDef(name, arity, shape, ref, flops)


OPS: dict[str, OpDef] = {
    op.name: op
    for op in [
        _op("input", 0, leaf_shape, None, 0),
        _op("param", 0, leaf_shape, None, 0),
        _op("const", 0, leaf_shape, None, 0),
        _op("matmul", 2, matmul_shape, np.matmul, 0),
        _op("add", 2, broadcast_shapes, _with_dtype(np.add)),
        _op("sub", 2, broadcast_shapes, _with_dtype(np.subtract)),
        _op("mul", 2, broadcast_shapes, _with_dtype(np.multiply)),
        _op("div", 2, broadcast_shapes, _with_dtype(np.divide)),
        _op("pow", 2, broadcast_shapes, _with_dtype(power), 4),
        _op("neg", 1, same_shape, np.negative),
        _op("exp", 1, same_shape, np.exp, 4),
        _op("log", 1, same_shape, np.log, 4),
        _op("sqrt", 1, same_shape, np.sqrt),
        _op("abs", 1, same_shape, np.abs),
        _op("relu", 1, same_shape, relu),
        _op("sigmoid", 1, same_shape, sigmoid, 4),
        _op("tanh", 1, same_shape, np.tanh, 4),
        _op("gelu", 1, same_shape, gelu, 6),
        _op("softmax", 1, softmax_shape, softmax, 5),
        _op("dropout", 1, same_shape, dropout, 1),
        _op("reshape", 1, reshape_shape, lambda x, *, newshape: x.reshape(newshape), 0),
        _op("transpose", 1, transpose_shape, lambda x, *, dim0, dim1: np.swapaxes(x, dim0, dim1), 0),
        _op("sum", 1, reduce_shape, np.sum),
        _op("mean", 1, reduce_shape, np.mean),
        _op("max", 1, reduce_shape, np.max),
        _op("linear", -1, linear_shape, linear, 0),
        _op("elementwise", -1, expr_shape, eval_expr, 0),  # flops: see expr_flops
        _op("output", 1, same_shape, lambda x: x, 0),
    ]
}


def op_def(name: str) -> OpDef:
    try:
        return OPS[name]
    except KeyError:
        raise KeyError(f"unknown op {name!r}; the op table has {sorted(OPS)}") from None
