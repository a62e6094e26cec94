"""The model zoo shared by IR and compiled-parity tests: one builder per model shape, with its input width.

`CATALOGUE` lists every model as a `ModelCase`; `case.build()` makes a fresh model (seeded, so weights
are reproducible) and `case.sample(batch)` a float32 input for it. The builders can also be imported
one by one (`reference_mlp()`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

from tinycomp.binding import eval_mode
from tinycomp.nn import (
    GELU,
    Dropout,
    Layer,
    Linear,
    ReLU,
    Sequential,
    Sigmoid,
    Softmax,
    Tanh,
    Tensor,
    manual_seed,
)

REFERENCE_MLP_IN = 784


def reference_mlp() -> Sequential:
    """DESIGN.md's reference MLP: 784 -> 256 -> 128 -> 10 with ReLU and dropout."""
    return Sequential(Linear(784, 256), ReLU(), Dropout(0.5),
                      Linear(256, 128), ReLU(), Dropout(0.3),
                      Linear(128, 10))


class ResidualBlock(Layer):
    """relu(fc2(relu(fc1(x))) + x)."""

    def __init__(self, width: int):
        self.fc1 = Linear(width, width)
        self.fc2 = Linear(width, width)
        self.relu = ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.fc2(self.relu(self.fc1(x))) + x)


class ResidualNet(Layer):
    """A residual block under attribute `block` (params `block.fc1.weight`, ...) and a `head`."""

    def __init__(self, width: int = 16, out: int = 4):
        self.block = ResidualBlock(width)
        self.head = Linear(width, out)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.block(x))


class SharedLinear(Layer):
    """One Linear applied twice: one param node per tensor, two uses."""

    def __init__(self, width: int = 12):
        self.fc = Linear(width, width)
        self.act = Tanh()

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.act(self.fc(x)))


class ScalarArith(Layer):
    """`x * 0.5 + 1` around a Linear: Python scalars become const nodes."""

    def __init__(self, width: int = 8):
        self.fc = Linear(width, 5)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x * 0.5 + 1)


class ListDictLayer(Layer):
    """Sub-layers in a list (`heads.0.weight`) and a dict (`branches.left.weight`)."""

    def __init__(self, width: int = 10):
        self.heads = [Linear(width, 6), Linear(6, 6)]
        self.branches = {"left": Linear(6, 3), "right": Linear(6, 3)}
        self.act = Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        h = self.act(self.heads[1](self.heads[0](x)))
        return self.branches["left"](h) - self.branches["right"](h)


def residual_net() -> Layer:
    return ResidualNet(16, 4)


def shared_linear() -> Layer:
    return SharedLinear(12)


def scalar_arith() -> Layer:
    return ScalarArith(8)


def softmax_head() -> Sequential:
    return Sequential(Linear(20, 32), GELU(), Linear(32, 7), Softmax())


def no_bias() -> Sequential:
    return Sequential(Linear(9, 11, bias=False), ReLU(), Linear(11, 3, bias=False))


def activation_first() -> Sequential:
    """An activation applied to the raw input, before any Linear."""
    return Sequential(Tanh(), Linear(6, 4), Sigmoid())


def list_dict_layer() -> Layer:
    return ListDictLayer(10)


@dataclass(frozen=True)
class ModelCase:
    name: str
    builder: Callable[[], Layer]
    in_features: int

    def build(self, seed: int = 0) -> Layer:
        manual_seed(seed)
        return self.builder()

    def sample(self, batch: int = 4, seed: int = 1) -> np.ndarray:
        return np.random.default_rng(seed).standard_normal((batch, self.in_features)).astype(np.float32)


CATALOGUE: list[ModelCase] = [
    ModelCase("reference_mlp", reference_mlp, REFERENCE_MLP_IN),
    ModelCase("residual_net", residual_net, 16),
    ModelCase("shared_linear", shared_linear, 12),
    ModelCase("scalar_arith", scalar_arith, 8),
    ModelCase("softmax_head", softmax_head, 20),
    ModelCase("no_bias", no_bias, 9),
    ModelCase("activation_first", activation_first, 6),
    ModelCase("list_dict_layer", list_dict_layer, 10),
]
CASES = {c.name: c for c in CATALOGUE}


def eager_eval(model: Layer, x: np.ndarray) -> np.ndarray:
    """The eager model's output in eval mode; the model's training flags are restored afterwards."""
    with eval_mode(model):
        return model(Tensor(x)).data


# ------------------------------------------------------------------ random Sequential models

ACTIVATIONS = [ReLU, Sigmoid, Tanh, GELU, Softmax]
_extras = st.lists(st.one_of(st.sampled_from(ACTIVATIONS), st.floats(0, 1)), max_size=2)


@st.composite
def sequential_specs(draw, softmax_head: bool = False):
    """(layer spec, input width): 1-6 Linears of width 1-300 as (in, out, bias), activations
    anywhere, floats for dropout p's; `softmax_head` makes a final Softmax frequent."""
    depth = draw(st.integers(1, 6))
    widths = draw(st.lists(st.integers(1, 300), min_size=depth + 1, max_size=depth + 1))
    spec: list = []
    for i in range(depth):
        spec += draw(_extras)
        spec.append((widths[i], widths[i + 1], draw(st.booleans())))
    spec += draw(_extras)
    if softmax_head and draw(st.booleans()):
        spec.append(Softmax)
    return spec, widths[0]


def build_sequential(spec: list) -> Sequential:
    layers = []
    for item in spec:
        if isinstance(item, tuple):
            layers.append(Linear(item[0], item[1], bias=item[2]))
        elif isinstance(item, float):
            layers.append(Dropout(item))
        else:
            layers.append(item())
    return Sequential(layers)
