"""Hypothesis-generated Sequential models: compiled vs eager (eval) vs float64, at random batch sizes.

Depth 1-6, widths 1-300, any activations (softmax included, also last), dropout anywhere, biases
on or off; batch 0-64. Each example compiles a fresh model, so the cache points at a temp folder.
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import tinycomp as tc
from tests.models import build_sequential, sequential_specs
from tests.program_fuzz import ProgramModel, programs
from tests.reliability.rel_helpers import assert_program_matches_eager
from tests.test_compile_parity import assert_parity, sample, sequential_reference
from tinycomp.nn import Linear, manual_seed


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sequential_specs(softmax_head=True), st.integers(0, 64), st.integers(0, 2**16), st.sampled_from([0.5, 1.0, 3.0]))
def test_random_sequential_matches_eager_and_float64(model_spec, batch, seed, scale):
    spec, width = model_spec
    manual_seed(seed)
    model = build_sequential(spec)
    for layer in model.layers:  # nonzero biases, so a dropped bias add cannot go unnoticed
        if isinstance(layer, Linear) and layer.bias is not None:
            layer.bias.data[:] = np.random.default_rng(seed).uniform(-1, 1, layer.bias.shape)
    fast = tc.compile(model)
    out = assert_parity(model, sample(batch, width, seed=seed, scale=scale), sequential_reference(model), fast=fast)
    assert out.shape == (batch, spec_out(spec, width))
    assert "dropout" not in fast.graph.op_counts()


def spec_out(spec: list, width: int) -> int:
    linears = [item for item in spec if isinstance(item, tuple)]
    return linears[-1][1] if linears else width


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(programs(), st.sampled_from([0, 1, 7, 129]), st.integers(0, 2**16))
def test_random_programs_over_the_whole_op_set(program, batch, seed):
    """Random forward() programs of every Tensor op (tests/program_fuzz.py): refused exactly when an
    op runs across the batch axis, else compiled equals eager and float64 at batch 0, 1, 7 or 129."""
    rng = np.random.default_rng(seed)
    xs = [np.float32(rng.standard_normal((batch, *shape))) for shape in program.inputs]
    event(assert_program_matches_eager(ProgramModel(program), program, xs))
