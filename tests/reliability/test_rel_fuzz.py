"""Issue 7: fuzzing. Random models and inputs (extreme magnitudes, NaN, inf, tiny and odd widths,
batch sizes 0-5000): compiled equals eager within the parity rule, and nothing crashes.
200 examples in CI; 2,000 under the `slow` marker. Issue 15: random programs over the whole op set
(tests/program_fuzz.py), refused only where an op runs across the batch axis: 80 in CI, 2,000 slow."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import tinycomp as tc
from tests.program_fuzz import ProgramModel, programs
from tests.reliability.rel_helpers import assert_matches_eager, assert_program_matches_eager
from tinycomp.nn import GELU, Dropout, Linear, ReLU, Sequential, Sigmoid, Softmax, Tanh, manual_seed

ACTIVATIONS = [ReLU, Sigmoid, Tanh, GELU, Softmax]
WIDTHS = st.sampled_from([1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 31, 33, 64, 65, 100, 130])
SPECIALS = [np.nan, np.inf, -np.inf, 0.0, -0.0, 3.4e38, -3.4e38, 1e-45, 1e-38, 1e19]


@st.composite
def model_and_input(draw, max_batch: int):
    widths = draw(st.lists(WIDTHS, min_size=2, max_size=4))
    layers = []
    if draw(st.booleans()):
        layers.append(draw(st.sampled_from(ACTIVATIONS))())
    for fan_in, fan_out in zip(widths, widths[1:], strict=False):
        layers.append(Linear(fan_in, fan_out, bias=draw(st.booleans())))
        for _ in range(draw(st.integers(0, 2))):
            kind = draw(st.sampled_from([*ACTIVATIONS, Dropout]))
            layers.append(kind(draw(st.floats(0, 1))) if kind is Dropout else kind())
    seed = draw(st.integers(0, 2**16))
    manual_seed(seed)
    model = Sequential(*[type(layer)(*( (layer.in_features, layer.out_features, layer.bias is not None)
                                       if isinstance(layer, Linear) else
                                       (layer.p,) if isinstance(layer, Dropout) else ())) for layer in layers])
    batch = draw(st.one_of(st.integers(0, 9), st.integers(0, max_batch)))
    rng = np.random.default_rng(seed)
    magnitude = draw(st.sampled_from([1e-30, 1e-3, 1.0, 30.0, 1e4, 1e18]))
    x = (rng.standard_normal((batch, widths[0])) * magnitude).astype(np.float32)
    if batch and draw(st.booleans()):
        n = draw(st.integers(1, 6))
        x.flat[rng.integers(0, x.size, n)] = rng.choice(SPECIALS, n)
    if draw(st.booleans()):
        weight = model.layers[[i for i, layer in enumerate(model.layers) if isinstance(layer, Linear)][0]].weight
        weight.data *= np.float32(draw(st.sampled_from([1e-20, 1.0, 1e10])))
    return model, x


def _check(model_x) -> None:
    model, x = model_x
    fast = tc.compile(model)
    with np.errstate(all="ignore"):
        assert_matches_eager(fast(x).data, model, x)
        assert_matches_eager(fast(x[: len(x) // 2]).data, model, x[: len(x) // 2])  # same kernel, other batch


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(model_and_input(max_batch=600))
def test_fuzz_compiled_equals_eager(model_x):
    _check(model_x)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck))
@given(model_and_input(max_batch=5000))
def test_fuzz_compiled_equals_eager_long(model_x):
    _check(model_x)


@st.composite
def program_and_inputs(draw, max_batch: int):
    """A random program over the whole op set (tests/program_fuzz.py) with inputs of extreme
    magnitudes and special values, as above."""
    program = draw(programs(max_steps=10))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    batch = draw(st.one_of(st.integers(0, 9), st.integers(0, max_batch)))
    magnitude = draw(st.sampled_from([1e-30, 1e-3, 1.0, 30.0, 1e4, 1e18]))
    xs = [np.float32(rng.standard_normal((batch, *shape)) * magnitude) for shape in program.inputs]
    for x in xs:
        if x.size and draw(st.booleans()):
            n = draw(st.integers(1, 6))
            x.flat[rng.integers(0, x.size, n)] = rng.choice(SPECIALS, n)
    return program, xs


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(program_and_inputs(max_batch=300))
def test_fuzz_programs_over_the_whole_op_set(program_xs):
    program, xs = program_xs
    event(assert_program_matches_eager(ProgramModel(program), program, xs))


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck))
@given(program_and_inputs(max_batch=3000))
def test_fuzz_programs_over_the_whole_op_set_long(program_xs):
    program, xs = program_xs
    event(assert_program_matches_eager(ProgramModel(program), program, xs))
