"""Layers for the nodes of imported graphs that are single Tensor operations with something fixed
about them: an operand that is a constant of the graph, an axis permutation, a reduction's axes.
Each `forward` is plain Tensor code, so eager runs it and `tinycomp.compile` traces it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..frontend.layers import Layer
from ..frontend.tensor import Tensor, as_tensor

BINARY = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
    "pow": lambda a, b: a ** b,
    "matmul": lambda a, b: a @ b,
}
UNARY = {
    "neg": lambda a: -a,
    "exp": lambda a: a.exp(),
    "log": lambda a: a.log(),
    "sqrt": lambda a: a.sqrt(),
    "abs": lambda a: a.abs(),
}


class ConstantOperand(Layer):
    """x <op> value, or value <op> x when `constant_first`: `op` one of `BINARY`. A constant of one
    element and at most one dimension is kept as a number (it changes no shape: the kernel takes it
    as an immediate, as it does the numbers written in a forward); any other is a parameter,
    `value`. pow takes a number only."""

    def __init__(self, op: str, value: Any, constant_first: bool = False):
        if op not in BINARY:
            raise ValueError(f"ConstantOperand op must be one of {', '.join(BINARY)}; got {op!r}")
        array = np.asarray(value, np.float32)
        self.op, self.constant_first = op, bool(constant_first)
        self.value: Tensor | float = float(array.reshape(-1)[0]) if array.size == 1 and array.ndim <= 1 \
            else Tensor(array)
        if op == "pow" and (constant_first or isinstance(self.value, Tensor)):
            raise ValueError(f"ConstantOperand pow takes x ** (a number); got value of shape {array.shape}"
                             + (" as the base" if constant_first else ""))

    def forward(self, x: Tensor) -> Tensor:
        """x <op> value (value <op> x if the constant comes first)."""
        fn, x = BINARY[self.op], as_tensor(x)
        return fn(self.value, x) if self.constant_first else fn(x, self.value)

    def parameters(self) -> list[Tensor]:
        """`[value]` when it is a tensor; a number is not a parameter."""
        return [self.value] if isinstance(self.value, Tensor) else []

    def __repr__(self) -> str:
        value = f"shape={self.value.shape}" if isinstance(self.value, Tensor) else f"{self.value:g}"
        return f"ConstantOperand({self.op}, {value}" + (", first)" if self.constant_first else ")")


class Permute(Layer):
    """x with its axes in the order `perm` (NumPy's `transpose(x, perm)`), as axis swaps."""

    def __init__(self, perm: Sequence[int]):
        self.perm = tuple(int(p) for p in perm)
        if sorted(self.perm) != list(range(len(self.perm))):
            raise ValueError(f"Permute needs a permutation of 0..{len(self.perm) - 1}; got {list(self.perm)}")

    def forward(self, x: Tensor) -> Tensor:
        """x with axis i of the result axis perm[i] of x."""
        x = as_tensor(x)
        if x.ndim != len(self.perm):
            raise ValueError(f"Permute{list(self.perm)} takes a {len(self.perm)}-D value; got shape {x.shape}")
        order = list(range(len(self.perm)))  # which axis of x stands at each place
        for i, want in enumerate(self.perm):
            j = order.index(want)
            if j != i:
                x = x.transpose(i, j)
                order[i], order[j] = order[j], order[i]
        return x

    def __repr__(self) -> str:
        return f"Permute{list(self.perm)}"


class Reduce(Layer):
    """sum, mean or max of x over `axes` (None: every axis), keeping them as size 1 if `keepdims`."""

    def __init__(self, kind: str, axes: Sequence[int] | None, keepdims: bool):
        if kind not in ("sum", "mean", "max"):
            raise ValueError(f"Reduce kind must be sum, mean or max; got {kind!r}")
        self.kind, self.keepdims = kind, bool(keepdims)
        self.axes = None if axes is None else tuple(int(a) for a in axes)

    def forward(self, x: Tensor) -> Tensor:
        """The reduction of x over the axes."""
        return getattr(as_tensor(x), self.kind)(axis=self.axes, keepdims=self.keepdims)

    def __repr__(self) -> str:
        return f"Reduce({self.kind}, axes={self.axes}, keepdims={self.keepdims})"
