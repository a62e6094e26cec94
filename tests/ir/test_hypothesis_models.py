"""Random Sequential models: trace -> passes -> interpret must equal the eager model in eval mode."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.models import build_sequential, eager_eval, sequential_specs
from tinycomp.frontend.tracer import trace
from tinycomp.ir.interpret import interpret
from tinycomp.ir.passes import run_pipeline
from tinycomp.nn import manual_seed


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sequential_specs(), st.integers(0, 4), st.integers(0, 2**16))
def test_trace_passes_interpret_equals_eager(model_spec, batch, seed):
    spec, width = model_spec
    manual_seed(seed)
    model = build_sequential(spec)
    x = np.random.default_rng(seed).standard_normal((batch, width)).astype(np.float32)
    g = run_pipeline(trace(model, (None, width)))
    assert "dropout" not in g.op_counts() and "matmul" not in g.op_counts()
    np.testing.assert_allclose(interpret(g, x), eager_eval(model, x), rtol=1e-5, atol=1e-6)
