"""Random forward() programs over the whole op set, for the hypothesis fuzzers (issue 15).

A `Program` is a list of steps over values of known sample shapes: its inputs (one or two, each
(batch, *shape)), then one new value per step. A step is an elementwise op (every unary op, `**`, a
scalar, a table that broadcasts between sample dimensions, another value), a reduction over a tuple
of axes with or without keepdims, softmax along an axis, a transpose of two axes, a reshape that
keeps the batch first, a Linear-style matmul, a matrix times batched values, a batched matmul of a
value with its own transpose, a selection of two values (where, maximum, minimum, clip, a
comparison), a slice or an int index along a sample axis, or a concat of two values. Now and then a
reduction, softmax or transpose runs over the batch axis: the program is then marked
`crosses_batch`, the one thing the compiler must refuse. `ProgramModel` runs a program as a Layer
whose tables are its parameters (read live).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from hypothesis import strategies as st

from tinycomp.nn import GELU, Layer, ReLU, Sigmoid, Softmax, Tanh, Tensor, concat, equal, maximum, minimum, where

UNARY = {
    "relu": lambda v: ReLU()(v), "sigmoid": lambda v: Sigmoid()(v), "tanh": lambda v: Tanh()(v),
    "gelu": lambda v: GELU()(v), "neg": lambda v: -v, "abs": lambda v: v.abs(),
    "exp": lambda v: (v * 0.25).exp(), "log": lambda v: (v.abs() + 0.5).log(), "sqrt": lambda v: v.abs().sqrt(),
    "square": lambda v: v ** 2, "cube": lambda v: v ** 3, "rsqrt": lambda v: (v.abs() + 1) ** -0.5,
    "pow1.5": lambda v: v.abs() ** 1.5,
}
SCALAR = {"add": lambda v, c: v + c, "rsub": lambda v, c: c - v, "mul": lambda v, c: v * c,
          "div": lambda v, c: v / c}
BINARY = {"add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
          "div": lambda a, b: a / (b.abs() + 1)}
SELECT = {"where": lambda a, b: where(a > 0, a, b), "maximum": maximum, "minimum": minimum,
          "clip": lambda a, b: a.clip(-0.5, 0.75), "compare": lambda a, b: (a <= b) - equal(a, b) * 0.5}
DIMS = st.sampled_from([1, 2, 3, 4, 5, 7, 9, 16, 17])
MAX_FLOATS = 1500  # per sample, per value: keeps a program's compile and float64 run short


@dataclass
class Step:
    kind: str
    args: tuple[int, ...]
    attrs: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        attrs = ", ".join(f"{k}={v!r}" for k, v in self.attrs.items() if k != "table")
        return f"{self.kind}{self.args}" + (f"[{attrs}]" if attrs else "")


@dataclass
class Program:
    inputs: list[tuple[int, ...]]
    steps: list[Step] = field(default_factory=list)
    tables: list[np.ndarray] = field(default_factory=list)
    shapes: list[tuple[int, ...]] = field(default_factory=list)  # sample shape of every value
    crosses_batch: bool = False

    def __repr__(self) -> str:
        return f"Program(inputs={self.inputs}, steps={self.steps}, crosses_batch={self.crosses_batch})"


class ProgramModel(Layer):
    def __init__(self, program: Program):
        self.program = program
        self.tables = [Tensor(t) for t in program.tables]

    def forward(self, *xs: Tensor) -> Tensor:
        values: list[Any] = list(xs)
        for step in self.program.steps:
            values.append(run_step(step, values, self.tables))
        return values[-1]


def run_step(step: Step, values: list, tables: list[Tensor]) -> Tensor:
    v, a = values[step.args[0]], step.attrs
    kind = step.kind
    if kind in UNARY:
        return UNARY[kind](v)
    if kind == "scalar":
        return SCALAR[a["op"]](v, a["c"])
    if kind == "table":
        return BINARY[a["op"]](v, tables[a["table"]])
    if kind == "binary":
        return BINARY[a["op"]](v, values[step.args[1]])
    if kind == "select":
        return SELECT[a["op"]](v, values[step.args[1]])
    if kind == "slice":
        return v[(slice(None),) * a["axis"] + (a["part"],)]
    if kind == "concat":  # the other value, or a part of it along the axis: parts of two sizes
        other = values[step.args[1]]
        return concat([v, other[(slice(None),) * a["axis"] + (slice(a["cut"]),)]], axis=a["axis"])
    if kind in ("sum", "mean", "max"):
        return getattr(v, kind)(axis=a["axis"], keepdims=a["keepdims"])
    if kind == "softmax":
        return Softmax()(v, dim=a["dim"])
    if kind == "transpose":
        return v.transpose(a["dim0"], a["dim1"])
    if kind == "reshape":
        batch = v.shape[0]  # the batch marker while tracing: reshape keeps it first
        return v.reshape(batch, *a["shape"]) if a["marker"] else v.reshape(-1, *a["shape"])
    if kind == "matmul":
        return v @ tables[a["table"]]
    if kind == "left_matmul":
        return tables[a["table"]] @ v
    if kind == "gram":
        return v @ v.transpose(-2, -1) if a["outer"] else v.transpose(-2, -1) @ v
    raise AssertionError(kind)


def _table(draw, shape: tuple[int, ...]) -> np.ndarray:
    seed = draw(st.integers(0, 2**16))
    fan_in = shape[0] if shape else 1
    return np.float32(np.random.default_rng(seed).standard_normal(shape) / max(1.0, math.sqrt(fan_in)))


def _broadcast_table_shape(draw, shape: tuple[int, ...]) -> tuple[int, ...]:
    """A table shape that broadcasts against (batch, *shape): some dims kept, others 1, maybe fewer."""
    keep = [draw(st.booleans()) for _ in shape]
    out = tuple(d if k else 1 for d, k in zip(shape, keep, strict=True))
    drop = draw(st.integers(0, len(out) - 1)) if out else 0
    return out[drop:]  # () for a sample of one value: a wider table would broadcast against the batch


def _reshape_target(draw, shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """A new sample shape of the same size: dims merged or split."""
    size = math.prod(shape)
    if draw(st.booleans()) or len(shape) >= 3:
        return (size,)
    divisors = [d for d in range(2, size) if size % d == 0]
    if not divisors:
        return None
    d = draw(st.sampled_from(divisors))
    return (d, size // d)


@st.composite
def programs(draw, max_steps: int = 6, batch_axis_rate: float = 0.1) -> Program:
    ndim = draw(st.integers(1, 3))
    first = tuple(draw(DIMS) for _ in range(ndim))
    while math.prod(first) > MAX_FLOATS // 4:
        first = first[1:]
    inputs = [first] + ([first] if draw(st.integers(0, 3)) == 0 else [])  # sometimes forward(x, y)
    p = Program(inputs=inputs, shapes=list(inputs))
    crossing = draw(st.integers(0, 999)) < 1000 * batch_axis_rate
    for _ in range(draw(st.integers(1, max_steps))):
        _add_step(draw, p, crossing and not p.crosses_batch and draw(st.booleans()))
    if not p.steps or p.steps[-1].args == ():
        _add_step(draw, p, False)
    return p


def _add_step(draw, p: Program, across_batch: bool) -> None:
    i = len(p.shapes) - 1 if draw(st.integers(0, 3)) else draw(st.integers(0, len(p.shapes) - 1))
    shape = p.shapes[i]
    nd = len(shape) + 1  # with the batch axis
    kinds = ["unary", "scalar", "table", "binary", "reduce", "softmax", "transpose", "reshape", "matmul",
             "left_matmul", "gram", "select", "slice", "concat"]
    kind = draw(st.sampled_from(kinds))
    if across_batch:
        kind = draw(st.sampled_from(["reduce", "softmax", "transpose"]))
    step: Step | None = None
    out: tuple[int, ...] | None = None
    if kind == "unary":
        step, out = Step(draw(st.sampled_from(sorted(UNARY))), (i,)), shape
    elif kind == "scalar":
        op = draw(st.sampled_from(sorted(SCALAR)))
        c = draw(st.sampled_from([0.5, 2.0, -1.5, 3.0]))
        step, out = Step("scalar", (i,), {"op": op, "c": c}), shape
    elif kind == "table":
        t = _broadcast_table_shape(draw, shape)
        p.tables.append(_table(draw, t))
        step = Step("table", (i,), {"op": draw(st.sampled_from(sorted(BINARY))), "table": len(p.tables) - 1})
        out = tuple(np.broadcast_shapes(shape, t))
    elif kind == "binary":
        same = [j for j, s in enumerate(p.shapes) if s == shape or (len(s) == len(shape) and all(
            a == b or a == 1 for a, b in zip(s, shape, strict=True)))]
        j = draw(st.sampled_from(same))
        step, out = Step("binary", (i, j), {"op": draw(st.sampled_from(sorted(BINARY)))}), shape
    elif kind in ("select", "concat") and (kind == "select" or shape):
        alike = [j for j, s in enumerate(p.shapes) if s == shape]
        j = draw(st.sampled_from(alike))
        if kind == "select":
            step, out = Step("select", (i, j), {"op": draw(st.sampled_from(sorted(SELECT)))}), shape
        else:
            axis = draw(st.integers(1, nd - 1))
            cut = draw(st.integers(1, shape[axis - 1]))
            step = Step("concat", (i, j), {"axis": axis, "cut": cut})
            out = tuple(d + cut if k + 1 == axis else d for k, d in enumerate(shape))
    elif kind == "slice" and shape:
        axis = draw(st.integers(1, nd - 1))
        size = shape[axis - 1]
        if len(shape) > 1 and draw(st.booleans()):  # an int: the axis dropped
            part: Any = draw(st.integers(-size, size - 1))
            out = shape[:axis - 1] + shape[axis:]
        else:
            start = draw(st.integers(0, size - 1))
            part = slice(start, draw(st.integers(start + 1, size)), draw(st.integers(1, 3)))
            out = tuple(len(range(*part.indices(size))) if k + 1 == axis else d for k, d in enumerate(shape))
        step = Step("slice", (i,), {"axis": axis, "part": part})
    elif kind == "reduce":
        keepdims = draw(st.booleans())
        axes = sorted(draw(st.sets(st.integers(1, nd - 1), min_size=1, max_size=nd - 1))) if nd > 1 else []
        if across_batch:
            axes = [0, *axes]
        if not axes:  # a sample of one value has no axis but the batch's
            return _add_step(draw, p, across_batch)
        as_given: Any = axes[0] - nd if len(axes) == 1 and draw(st.booleans()) else tuple(axes)
        step = Step(draw(st.sampled_from(["sum", "mean", "max"])), (i,), {"axis": as_given, "keepdims": keepdims})
        out = tuple(1 if k + 1 in axes else d for k, d in enumerate(shape) if keepdims or k + 1 not in axes)
        p.crosses_batch |= 0 in axes
    elif kind == "softmax" and (across_batch or nd > 1):
        dim = 0 if across_batch else draw(st.integers(1, nd - 1))
        step, out = Step("softmax", (i,), {"dim": dim - nd if draw(st.booleans()) else dim}), shape
        p.crosses_batch |= dim == 0
    elif kind == "transpose" and nd >= 2 + (not across_batch):
        d0 = 0 if across_batch else draw(st.integers(1, nd - 1))
        d1 = draw(st.sampled_from([d for d in range(1, nd) if d != d0]))
        step = Step("transpose", (i,), {"dim0": d0, "dim1": d1 - nd})
        full = [None, *shape]
        full[d0], full[d1] = full[d1], full[d0]
        out = tuple(full[1:]) if d0 else None  # across the batch: refused, never run further
        p.crosses_batch |= d0 == 0
    elif kind == "reshape":
        target = _reshape_target(draw, shape)
        if target is not None:
            step, out = Step("reshape", (i,), {"shape": target, "marker": draw(st.booleans())}), target
    elif kind in ("matmul", "left_matmul") and shape:
        if kind == "matmul":
            t = (shape[-1], draw(DIMS))
            out = (*shape[:-1], t[1]) if len(shape) > 1 else (t[1],)
        elif len(shape) >= 2:
            t = (draw(DIMS), shape[-2])
            out = (*shape[:-2], t[0], shape[-1])
        else:
            t = None
        if t is not None:
            p.tables.append(_table(draw, t))
            step = Step(kind, (i,), {"table": len(p.tables) - 1})
    elif kind == "gram" and len(shape) >= 2:
        outer = draw(st.booleans())
        step = Step("gram", (i,), {"outer": outer})
        out = (*shape[:-2], shape[-2], shape[-2]) if outer else (*shape[:-2], shape[-1], shape[-1])
    if step is None or (out is not None and math.prod(out) > MAX_FLOATS):
        step, out = Step("tanh", (i,)), shape
    p.steps.append(step)
    p.shapes.append(out if out is not None else shape)
