"""Parameter-free activation layers (TinyTorch module 02); formulas live in `ir/ops.py`."""

from __future__ import annotations

import math
from typing import Any

from ..checks import is_whole_number
from ..ir.ops import op_def
from .layers import Layer
from .tensor import Tensor, apply_op, tracing, wrap_result


class _Activation(Layer):
    op = ""
    _ref: Any = None  # the op's NumPy reference, looked up once per class

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        ref = op_def(cls.op).ref if cls.op else None
        if ref is not None:
            cls._ref = staticmethod(ref)

    def forward(self, x: Tensor) -> Tensor:
        """The activation applied to every element of x."""
        if type(x) is Tensor and tracing.tracer is None:
            return wrap_result(self._ref(x.data))  # apply_op's eager result, minus its dispatch
        return apply_op(self.op, x)


class ReLU(_Activation):
    """max(x, 0) elementwise, as `np.maximum(x, 0)`: NaN stays NaN. No parameters."""
    op = "relu"


class Sigmoid(_Activation):
    """1 / (1 + exp(-x)) elementwise, in its overflow-safe form (exp only of -|x|). No parameters."""
    op = "sigmoid"


class Tanh(_Activation):
    """Hyperbolic tangent elementwise, as `np.tanh`: ±1 for large |x|, NaN stays NaN. No parameters."""
    op = "tanh"


class GELU(_Activation):
    """GELU elementwise, in one of three forms (no parameters):

    - `approximate="sigmoid"` (the default, TinyTorch's): x * sigmoid(1.702 x);
    - `approximate="none"`: the exact x * (1 + erf(x / sqrt 2)) / 2, as torch's `GELU()` and ONNX's
      `Gelu`; compiled with tinycomp's own erf kernel (README, "Numerics and weights");
    - `approximate="tanh"`: x * (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) / 2, as torch's
      `GELU(approximate="tanh")`.
    """

    FORMS = ("sigmoid", "none", "tanh")

    def __init__(self, approximate: str = "sigmoid"):
        if approximate not in self.FORMS:
            raise ValueError(f"GELU approximate must be one of {', '.join(map(repr, self.FORMS))}; got {approximate!r}")
        self.approximate = approximate
        self.op = {"sigmoid": "gelu", "none": "gelu_erf", "tanh": ""}[approximate]

    def forward(self, x: Tensor) -> Tensor:
        """GELU of every element of x, in this layer's form."""
        if self.approximate != "tanh":
            return apply_op(self.op, x)
        inner = (x + x * x * x * 0.044715) * math.sqrt(2 / math.pi)
        return x * 0.5 * (apply_op("tanh", inner) + 1.0)

    def __repr__(self) -> str:
        return "GELU()" if self.approximate == "sigmoid" else f"GELU(approximate={self.approximate!r})"


class Softmax(Layer):
    """exp(x - max) / sum along `dim` (`Softmax(dim=-1)`, or `forward(x, dim=...)`), with the max
    subtracted first so that large inputs do not overflow; a slice that is all -inf gives zeros.
    No parameters."""

    def __init__(self, dim: int = -1):
        self.dim = _softmax_dim(dim)

    def forward(self, x: Tensor, dim: int | None = None) -> Tensor:
        """Softmax of x along `dim` (None: the layer's own, the last axis by default); slices sum to 1."""
        return apply_op("softmax", x, dim=self.dim if dim is None else _softmax_dim(dim))

    def __repr__(self) -> str:
        return "Softmax()" if self.dim == -1 else f"Softmax(dim={self.dim})"


def _softmax_dim(dim: Any) -> int:
    if not is_whole_number(dim):
        raise TypeError(f"Softmax dim must be an int (a negative one counts from the last axis); got {dim!r}")
    return int(dim)
