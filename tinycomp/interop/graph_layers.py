"""Layers for the nodes of imported graphs: single Tensor operations with something fixed about them
(an operand that is a constant of the graph, the constants of a `Where` or a `Clip`, an index, an
axis permutation, a reduction's axes, the axis of a `Concat`), and the layers models bring that
`tinycomp.nn` has no class for (SiLU, LeakyReLU, LogSoftmax, batch norm in inference as
`ChannelAffine`). Each `forward` is plain Tensor code, so eager runs it and `tinycomp.compile`
traces it. The rules both importers apply before making one are in `graph_rules`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..frontend.activations import ReLU, Sigmoid, Softmax
from ..frontend.functions import concat, equal, maximum, minimum, not_equal, stack, where
from ..frontend.indexing import key_text
from ..frontend.layers import Layer
from ..frontend.tensor import Tensor, as_tensor

BINARY = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
    "pow": lambda a, b: a ** b,
    "matmul": lambda a, b: a @ b,
    "maximum": maximum,
    "minimum": minimum,
    "greater": lambda a, b: a > b,
    "greater_equal": lambda a, b: a >= b,
    "less": lambda a, b: a < b,
    "less_equal": lambda a, b: a <= b,
    "equal": equal,
    "not_equal": not_equal,
}
UNARY = {
    "neg": lambda a: -a,
    "exp": lambda a: a.exp(),
    "log": lambda a: a.log(),
    "sqrt": lambda a: a.sqrt(),
    "abs": lambda a: a.abs(),
    "logical_not": lambda a: equal(a, 0.0),  # of a mask (0s and 1s, as comparisons give)
}


def shown(value: Tensor | float | None, absent: str) -> str:
    """How a layer's repr shows a fixed operand: its shape if a tensor, the number, or `absent`."""
    return absent if value is None else f"shape={value.shape}" if isinstance(value, Tensor) else f"{value:g}"


def tensors_of(*values: Any) -> list[Tensor]:
    """The values that are tensors: a layer's parameters among its fixed operands."""
    return [v for v in values if isinstance(v, Tensor)]


def number_of(value: Any) -> float | None:
    """The number a constant of one element and at most one dimension is (it changes no shape: a
    (1, 1, 1) one broadcasts the data's rank up), else None."""
    return float(np.asarray(value).reshape(-1)[0]) if np.size(value) == 1 and np.ndim(value) <= 1 else None


def fixed_operand(value: Any, *, number_ok: bool = True) -> Tensor | float:
    """A constant operand as a layer keeps it: a number where `number_of` gives one (the kernel takes
    it as an immediate, as it does the numbers written in a forward), else a float32 Tensor, a
    parameter of the layer."""
    array = np.asarray(value, np.float32)
    number = number_of(array) if number_ok else None
    return Tensor(array) if number is None else number


class ConstantOperand(Layer):
    """x <op> value, or value <op> x when `constant_first`: `op` one of `BINARY`. A constant of one
    element and at most one dimension is kept as a number (it changes no shape: the kernel takes it
    as an immediate, as it does the numbers written in a forward), except for matmul; any other is
    a parameter, `value`. pow takes a number only."""

    def __init__(self, op: str, value: Any, constant_first: bool = False):
        if op not in BINARY:
            raise ValueError(f"ConstantOperand op must be one of {', '.join(BINARY)}; got {op!r}")
        self.op, self.constant_first = op, bool(constant_first)
        self.value = fixed_operand(value, number_ok=op != "matmul")  # x @ (a 1-element vector) is not x * c
        if op == "pow" and (constant_first or isinstance(self.value, Tensor)):
            raise ValueError("only x ** (a number) is supported; here " + (
                "the base is a constant and the exponent the computed tensor" if constant_first else
                f"the exponent is a constant of shape {np.shape(value)}, not one number"))

    def forward(self, x: Tensor) -> Tensor:
        """x <op> value (value <op> x if the constant comes first)."""
        fn, x = BINARY[self.op], as_tensor(x)
        return fn(self.value, x) if self.constant_first else fn(x, self.value)

    def parameters(self) -> list[Tensor]:
        """`[value]` when it is a tensor; a number is not a parameter."""
        return tensors_of(self.value)

    def __repr__(self) -> str:
        return f"ConstantOperand({self.op}, {shown(self.value, '')}" + (", first)" if self.constant_first else ")")


class Where(Layer):
    """`tinycomp.nn.where(cond, x, y)` with some operands fixed: each of cond, x and y is a constant (a
    number, or an array kept as a parameter; a bool mask becomes 0s and 1s) or None, which forward
    fills with its data inputs in that order. `masked_fill(t, mask, v)` is `Where(mask, v, None)`."""

    def __init__(self, cond: Any = None, x: Any = None, y: Any = None):
        self.cond, self.x, self.y = (None if v is None else fixed_operand(v) for v in (cond, x, y))

    @property
    def takes(self) -> int:
        """How many data inputs forward takes: one per operand not fixed."""
        return sum(v is None for v in (self.cond, self.x, self.y))

    def forward(self, *data: Tensor) -> Tensor:
        """where(cond, x, y), the operands left None taken from `data` in order."""
        if len(data) != self.takes:
            raise ValueError(f"{self!r} takes {self.takes} data input(s); got {len(data)}")
        given = iter(data)
        return where(*(as_tensor(next(given)) if v is None else v for v in (self.cond, self.x, self.y)))

    def parameters(self) -> list[Tensor]:
        """The operands held as tensors."""
        return tensors_of(self.cond, self.x, self.y)

    def __repr__(self) -> str:
        return "Where({})".format(", ".join(shown(v, "data") for v in (self.cond, self.x, self.y)))


class Clip(Layer):
    """x limited to [low, high] (`Tensor.clip`; None: no bound there), as ONNX Clip, torch.clamp,
    ReLU6 and Hardtanh; NaN stays NaN. A bound is a number or an array kept as a parameter."""

    def __init__(self, low: Any = None, high: Any = None):
        if low is None and high is None:
            raise ValueError("Clip needs a low or a high bound; got neither")
        self.low, self.high = (None if v is None else fixed_operand(v) for v in (low, high))

    def forward(self, x: Tensor) -> Tensor:
        """x clipped."""
        return as_tensor(x).clip(self.low, self.high)

    def parameters(self) -> list[Tensor]:
        """The bounds held as tensors."""
        return tensors_of(self.low, self.high)

    def __repr__(self) -> str:
        return f"Clip({shown(self.low, 'none')}, {shown(self.high, 'none')})"


class Index(Layer):
    """x[key] for a basic index: ints, slices, ... and None, or one evenly spaced list of positions
    (`Tensor` indexing, which a traced forward records as slice ops). Slices, splits and gathers of
    imported graphs."""

    def __init__(self, key: Any):
        self.key = key if isinstance(key, tuple) else (key,)

    def forward(self, x: Tensor) -> Tensor:
        """x[key]."""
        return as_tensor(x)[self.key]

    def __repr__(self) -> str:
        return f"Index[{key_text(self.key)}]"


class Concat(Layer):
    """Its data inputs joined along `axis` (`tinycomp.nn.concat`: torch.cat, ONNX Concat), or along a new
    axis there with `new_axis` (`tinycomp.nn.stack`: torch.stack)."""

    def __init__(self, axis: int, new_axis: bool = False):
        self.axis, self.new_axis = int(axis), bool(new_axis)

    def forward(self, *data: Tensor) -> Tensor:
        """The inputs joined along the axis."""
        return (stack if self.new_axis else concat)([as_tensor(x) for x in data], axis=self.axis)

    def __repr__(self) -> str:
        return f"Concat(axis={self.axis}" + (", new_axis)" if self.new_axis else ")")


class Attention(Layer):
    """softmax(q @ k^T * scale, masked) @ v: torch's F.scaled_dot_product_attention without dropout, in
    the ops tinycomp fuses back into one attention kernel. `scale` None: 1 / sqrt(q's last size).
    `causal`: a query sees the keys up to its own position (torch's tril, top-left aligned). A mask
    `selects` (a bool mask: keep where true, -inf elsewhere) or is added (a float mask); it is `mask`
    (a constant, kept as a parameter) or, when `mask_given`, forward's fourth input."""

    def __init__(self, scale: float | None = None, causal: bool = False, mask: Any = None, selects: bool = True,
                 mask_given: bool = False):
        self.scale, self.causal, self.selects, self.mask_given = scale, bool(causal), bool(selects), bool(mask_given)
        self.mask = None if mask is None else Tensor(np.asarray(mask, np.float32))

    def forward(self, q: Tensor, k: Tensor, v: Tensor, *mask: Tensor) -> Tensor:
        """The attention of q over k and v."""
        q, k, v = as_tensor(q), as_tensor(k), as_tensor(v)
        scale = self.scale if self.scale is not None else 1.0 / math.sqrt(q.shape[-1])
        scores = q @ k.transpose(-2, -1) * scale
        if self.causal:
            scores = where(np.tril(np.ones((q.shape[-2], k.shape[-2]), dtype=bool)), scores, -math.inf)
        given = mask[0] if self.mask_given else self.mask
        if given is not None:
            scores = where(given, scores, -math.inf) if self.selects else scores + given
        return Softmax()(scores) @ v

    def parameters(self) -> list[Tensor]:
        """The mask, when it is a constant."""
        return tensors_of(self.mask)

    def __repr__(self) -> str:
        mask = ""
        if self.mask_given or self.mask is not None:
            mask = ("mask input" if self.mask_given else "mask " + shown(self.mask, "")) + \
                (" selects" if self.selects else " added")
        parts = [f"scale={self.scale:g}" if self.scale is not None else "", "causal" if self.causal else "", mask]
        return "Attention({})".format(", ".join(p for p in parts if p))


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


class SiLU(Layer):
    """x * sigmoid(x) (torch's SiLU, "swish"), as exporters write it."""

    def forward(self, x: Tensor) -> Tensor:
        """x times its sigmoid."""
        x = as_tensor(x)
        return x * Sigmoid()(x)

    def __repr__(self) -> str:
        return "SiLU()"


class Exp(Layer):
    """e ** x elementwise (scikit-learn's Poisson MLPRegressor's output activation)."""

    def forward(self, x: Tensor) -> Tensor:
        """e to the power of each element."""
        return as_tensor(x).exp()

    def __repr__(self) -> str:
        return "Exp()"


class LeakyReLU(Layer):
    """x where x > 0, else slope * x, written relu(x) - slope * relu(-x): each branch is that value
    exactly (0 - slope * -x is one rounding of slope * x), with the infinities and NaN as x * slope
    gives them."""

    def __init__(self, slope: float = 0.01):
        self.slope = float(slope)

    def forward(self, x: Tensor) -> Tensor:
        """Leaky ReLU of x."""
        x = as_tensor(x)
        return ReLU()(x) - self.slope * ReLU()(-x)

    def __repr__(self) -> str:
        return f"LeakyReLU({self.slope:g})"


class LogSoftmax(Layer):
    """log(softmax(x)) along `dim`, as torch computes it: (x - max) - log(sum(exp(x - max)))."""

    def __init__(self, dim: int = -1):
        self.dim = int(dim)

    def forward(self, x: Tensor) -> Tensor:
        """The log of x's softmax along dim."""
        shifted = as_tensor(x) - as_tensor(x).max(axis=self.dim, keepdims=True)
        return shifted - shifted.exp().sum(axis=self.dim, keepdims=True).log()

    def __repr__(self) -> str:
        return f"LogSoftmax(dim={self.dim})"


class ChannelAffine(Layer):
    """x * scale + shift with one scale and shift per channel (axis 1): batch normalization in
    inference, its statistics folded in (as torch and ONNX Runtime run it)."""

    def __init__(self, scale: Any, shift: Any):
        self.scale, self.shift = Tensor(np.asarray(scale).reshape(-1)), Tensor(np.asarray(shift).reshape(-1))

    @classmethod
    def from_statistics(cls, mean: Any, var: Any, eps: float, weight: Any = None, bias: Any = None) -> ChannelAffine:
        """The layer for (x - mean) / sqrt(var + eps) * weight + bias, its constants in float64 first."""
        mean, var = np.asarray(mean, np.float64), np.asarray(var, np.float64)
        scale = (1.0 if weight is None else np.asarray(weight, np.float64)) / np.sqrt(var + eps)
        shift = (0.0 if bias is None else np.asarray(bias, np.float64)) - mean * scale
        return cls(np.broadcast_to(scale, mean.shape), np.broadcast_to(shift, mean.shape))

    def forward(self, x: Tensor) -> Tensor:
        """x scaled and shifted per channel."""
        x = as_tensor(x)
        if x.ndim < 2 or x.shape[1] != self.scale.shape[0]:
            raise ValueError(f"ChannelAffine of {self.scale.shape[0]} channels takes (N, {self.scale.shape[0]}, ...); "
                             f"got shape {x.shape}")
        column = (self.scale.shape[0], *[1] * (x.ndim - 2))  # along axis 1, broadcast over the rest
        # as_tensor: a scale or shift rebound to an array is read live, as any parameter
        return x * as_tensor(self.scale).reshape(column) + as_tensor(self.shift).reshape(column)

    def parameters(self) -> list[Tensor]:
        """`[scale, shift]`."""
        return [self.scale, self.shift]

    def __repr__(self) -> str:
        return f"ChannelAffine({self.scale.shape[0]})"
