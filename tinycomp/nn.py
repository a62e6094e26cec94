"""The user-facing layer API: `from tinycomp.nn import Tensor, Linear, ReLU, ...`."""

from .frontend.activations import GELU, ReLU, Sigmoid, Softmax, Tanh
from .frontend.layers import (
    INIT_SCALE_FACTOR,
    Dropout,
    Layer,
    Linear,
    Sequential,
    manual_seed,
    set_training_mode,
)
from .frontend.tensor import Tensor

__all__ = [
    "GELU", "INIT_SCALE_FACTOR", "Dropout", "Layer", "Linear", "ReLU", "Sequential", "Sigmoid",
    "Softmax", "Tanh", "Tensor", "manual_seed", "set_training_mode",
]
