"""Hypothesis-generated Sequential models: compiled vs eager (eval) vs float64, at random batch sizes.

Depth 1-6, widths 1-300, any activations (softmax included, also last), dropout anywhere, biases
on or off; batch 0-64. Each example compiles a fresh model, so the cache points at a temp folder.
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

import tinycomp as tc
from tests.models import build_sequential, sequential_specs
from tests.program_fuzz import ProgramModel, programs
from tests.reliability.rel_helpers import assert_program_matches_eager
from tests.test_compile_parity import assert_parity, sample, sequential_reference
from tinycomp.nn import Linear, Tensor, manual_seed
from tinycomp.parity import check_parity, reference_and_overflow


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


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(programs(batch_axis_rate=0.0), st.sampled_from([(), (1,), (2, 3)]), st.integers(0, 2**16))
def test_random_programs_on_one_sample_or_leading_dimensions(program, lead, seed):
    """A compiled program called with one sample or with leading dimensions (ir/leading.py): the
    rows it computes as a batch, in eager's shape, within the parity rule of eager on the same input;
    or a ValueError saying why eager computes something else there (or cannot run it)."""
    assume(len(program.inputs) == 1)
    model, shape = ProgramModel(program), program.inputs[0]
    fast = tc.compile(model, input_shape=(None, *shape))
    x = np.float32(np.random.default_rng(seed).standard_normal((*lead, *shape)))
    try:
        out = fast(x).data
    except ValueError as exc:
        assert "does not compute each sample as it does in a batch" in str(exc) or \
            "this model cannot take an input of shape" in str(exc), f"{exc}\n{program}"
        event("refused")
        return
    rows = x.reshape(-1, *shape)
    np.testing.assert_array_equal(out.reshape(-1), fast(rows).data.reshape(-1))
    with np.errstate(all="ignore"):
        eager = model(Tensor(x)).data
        reference, overflow, rounding = reference_and_overflow(fast.graph, rows.astype(np.float64))
    assert out.shape == eager.shape, (out.shape, eager.shape, program)
    n = len(rows)
    report = check_parity(out.reshape(n, -1), eager.reshape(n, -1), reference.reshape(n, -1),
                          overflow_rows=overflow, rounding=rounding.reshape(n, -1))
    assert report.ok, f"{report.detail}\n{program}"
    event("eager's result")
