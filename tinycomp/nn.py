"""The user-facing layer API: `from tinycomp.nn import Tensor, Linear, ReLU, ...`."""

from .frontend.activations import GELU, ReLU, Sigmoid, Softmax, Tanh
from .frontend.functions import concat, equal, maximum, minimum, not_equal, stack, where
from .frontend.layers import (
    INIT_SCALE_FACTOR,
    Dropout,
    Layer,
    Linear,
    Sequential,
    manual_seed,
    set_training_mode,
)
from .frontend.streams import dropout_key
from .frontend.structural import Flatten, Identity, InputShape, Reshape
from .frontend.tensor import Tensor
from .frontend.transformer import MLP, LayerNorm, MultiHeadAttention, TransformerBlock, scaled_dot_product_attention

__all__ = [
    "GELU", "INIT_SCALE_FACTOR", "MLP", "Dropout", "Flatten", "Identity", "InputShape", "Layer", "LayerNorm", "Linear",
    "MultiHeadAttention", "ReLU", "Reshape", "Sequential", "Sigmoid", "Softmax", "Tanh", "Tensor", "TransformerBlock",
    "concat", "dropout_key", "equal", "manual_seed", "maximum", "minimum", "not_equal", "scaled_dot_product_attention",
    "set_training_mode", "stack", "where",
]
