"""Parameter-free activation layers (TinyTorch module 02); formulas live in `ir/ops.py`."""

from __future__ import annotations

from .layers import Layer
from .tensor import Tensor, apply_op


class _Activation(Layer):
    op = ""

    def forward(self, x: Tensor) -> Tensor:
        return apply_op(self.op, x)


class ReLU(_Activation):
    """max(x, 0); NaN stays NaN."""
    op = "relu"


class Sigmoid(_Activation):
    """1 / (1 + exp(-x)) in its overflow-safe form."""
    op = "sigmoid"


class Tanh(_Activation):
    op = "tanh"


class GELU(_Activation):
    """The sigmoid approximation x * sigmoid(1.702 x)."""
    op = "gelu"


class Softmax(Layer):
    """exp(x - max) / sum along `dim`; a slice that is all -inf gives zeros."""

    def forward(self, x: Tensor, dim: int = -1) -> Tensor:
        return apply_op("softmax", x, dim=dim)
