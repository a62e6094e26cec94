"""frontend/walk.py: every Layer and Tensor of a model named by its first attribute path, at any depth."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from tinycomp.frontend.walk import resolve_path, walk_model
from tinycomp.nn import Layer, Linear, ReLU, Sequential, manual_seed


class Shared(Layer):
    """One Linear reachable by two paths, and a list and a dict of layers."""

    def __init__(self):
        self.first = Linear(3, 4)
        self.again = [ReLU(), self.first]
        self.table = {"head": Linear(4, 2)}

    def forward(self, x):
        return self.table["head"](self.again[0](self.first(x)))


def test_paths_are_first_in_attribute_order_and_read_back():
    manual_seed(0)
    model = Sequential(Shared(), Linear(2, 2))
    tensors, layers = walk_model(model)
    inner = model.layers[0]
    assert [p for _, p in layers] == ["", "0", "0.first", "0.again.0", "0.table.head", "1"]
    assert tensors[id(inner.first.weight)] == "0.first.weight"  # not 0.again.1.weight, met later
    assert tensors[id(inner.table["head"].bias)] == "0.table.head.bias"
    for obj_id, path in tensors.items():
        assert id(resolve_path(model, path)) == obj_id


def test_a_model_nested_deeper_than_the_recursion_limit_is_walked():
    depth = sys.getrecursionlimit() + 500
    model = Linear(2, 2)
    for _ in range(depth):
        model = Sequential(model)
    tensors, layers = walk_model(model)
    assert len(layers) == depth + 1
    deepest = ".".join(["0"] * depth)
    assert layers[-1][1] == deepest and tensors[id(resolve_path(model, deepest).weight)] == deepest + ".weight"
    assert isinstance(resolve_path(model, deepest + ".weight").data, np.ndarray)


def nested_linear(depth: int, seed: int) -> tuple[Layer, np.ndarray, np.ndarray, np.ndarray]:
    """Linear(3, 2) inside `depth` Sequentials: (model, x, eager output, float64 reference)."""
    from tinycomp.nn import Tensor

    manual_seed(0)
    model = Linear(3, 2)
    for _ in range(depth):
        model = Sequential(model)
    x = np.random.default_rng(seed).standard_normal((4, 3)).astype(np.float32)
    inner = resolve_path(model, ".".join(["0"] * depth))
    reference = x.astype(np.float64) @ inner.weight.data.astype(np.float64) + inner.bias.data
    return model, x, model(Tensor(x)).data, reference


def test_a_model_nested_250_deep_compiles_and_matches_eager():
    """Swapping in the trace's guarded arrays (live_reads) took four Python frames per level; it now
    runs on an explicit stack, so the trace's own frames (two per level) are the limit."""
    import tinycomp as tc

    model, x, eager, reference = nested_linear(250, seed=0)
    np.testing.assert_allclose(tc.compile(model)(x).data, eager, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(eager, reference, rtol=1e-5, atol=1e-6)


def test_a_model_too_deep_to_trace_is_a_clear_error_and_a_higher_limit_compiles_it():
    """700 levels run eagerly under the default recursion limit, but the trace's extra frame per
    level does not fit: a CompileError says so and how to raise the limit. Raised, the model compiles
    although its deepest parameter paths are 1,400 characters long (LLVM cuts local value names at
    1,024, which once made the weight's and the bias's names collide)."""
    import tinycomp as tc
    from tinycomp.errors import CompileError

    model, x, eager, reference = nested_linear(700, seed=1)
    with pytest.raises(CompileError, match=r"recursion limit \(\d+\).*sys.setrecursionlimit"):
        tc.compile(model)(x)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(4000)
    try:
        got = tc.compile(model)(x).data
    finally:
        sys.setrecursionlimit(limit)
    np.testing.assert_allclose(got, eager, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(eager, reference, rtol=1e-5, atol=1e-6)
