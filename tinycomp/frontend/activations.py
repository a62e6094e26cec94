"""Parameter-free activation layers (TinyTorch module 02); formulas live in `ir/ops.py`."""

from __future__ import annotations

from .layers import Layer
from .tensor import Tensor, apply_op


class _Activation(Layer):
    op = ""

    def forward(self, x: Tensor) -> Tensor:
        """The activation applied to every element of x."""
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
    """GELU in TinyTorch's sigmoid approximation, x * sigmoid(1.702 x), elementwise. No parameters."""
    op = "gelu"


class Softmax(Layer):
    """exp(x - max) / sum along `dim` (`forward(x, dim=-1)`), with the max subtracted first so that
    large inputs do not overflow; a slice that is all -inf gives zeros. No parameters."""

    def forward(self, x: Tensor, dim: int = -1) -> Tensor:
        """Softmax of x along `dim` (the last axis by default); each slice sums to 1."""
        return apply_op("softmax", x, dim=dim)
