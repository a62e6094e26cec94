"""Issue 15: every Tensor op compiles. Each case is a small model written with the op; the compiled
output is checked against the eager model and a float64 formula written here (not the op table's),
at batch 0, 1, 7 and 129 with odd feature widths, one kernel serving every batch size."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

import tinycomp as tc
from tests.test_compile_parity import assert_parity
from tinycomp.nn import Layer, Tensor

BATCHES = (0, 1, 7, 129)
F64 = np.float64


class Fn(Layer):
    """A model whose forward is one expression over its input (and an optional table)."""

    def __init__(self, fn: Callable, table: np.ndarray | None = None):
        self.fn = fn
        self.table = None if table is None else Tensor(table)

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x, self.table) if self.table is not None else self.fn(x)


def inputs(batch: int, features: tuple[int, ...], seed: int, positive: bool = False) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((batch, *features)) * 2
    return np.float32(np.abs(x) + 0.1 if positive else x)


def check_every_batch(model: Layer, features: tuple[int, ...], reference: Callable, positive: bool = False,
                      seed: int = 0) -> tc.CompiledModel:
    fast = tc.compile(model)
    for batch in BATCHES:
        x = inputs(batch, features, seed + batch, positive)
        assert_parity(model, x, reference, fast=fast)
    assert fast.stats.compiles == 1
    return fast


# ---------------------------------------------------------------- elementwise math

UNARY_CASES = {
    "exp": (lambda x: (x * 0.5).exp(), lambda x: np.exp(x * 0.5), False),
    "log": (lambda x: x.log(), np.log, True),
    "sqrt": (lambda x: x.sqrt() + 1, lambda x: np.sqrt(x) + 1, True),
    "abs": (lambda x: abs(x) - x.abs() * 2, lambda x: -np.abs(x), False),
    "pow2": (lambda x: x ** 2, lambda x: x ** 2, False),
    "pow3": (lambda x: (x * 0.5) ** 3, lambda x: (x * 0.5) ** 3, False),
    "pow-1.5": (lambda x: x ** -1.5, lambda x: x ** -1.5, True),
    "pow0.5": (lambda x: x ** 0.5, np.sqrt, True),
    "pow1/3": (lambda x: x ** (1 / 3), lambda x: x ** F64(np.float32(1 / 3)), True),
    "chain": (lambda x: ((x.abs() + 1).log() ** 2).sqrt().exp(), lambda x: np.exp(np.log(np.abs(x) + 1)), False),
}


@pytest.mark.parametrize("name", UNARY_CASES)
def test_elementwise_math_parity(name):
    fn, ref, positive = UNARY_CASES[name]
    check_every_batch(Fn(fn), (3, 13), ref, positive)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_elementwise_math_special_values_match_eager():
    model = Fn(lambda x: x.log() + x.sqrt() + x.abs() + x ** -1 + x ** 1.5 + (x * 1e-3).exp())
    x = np.array([[0.0, -0.0, -1.0, np.inf, -np.inf, np.nan, 1e-45, 3e38, 1.0]], np.float32)
    got = tc.compile(model)(x).data
    want = model(Tensor(x)).data
    np.testing.assert_array_equal(got, want)
