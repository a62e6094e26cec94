"""Random Sequential models: trace -> passes -> interpret must equal the eager model in eval mode."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.models import eager_eval
from tinycomp.frontend.tracer import trace
from tinycomp.ir.interpret import interpret
from tinycomp.ir.passes import run_pipeline
from tinycomp.nn import GELU, Dropout, Linear, ReLU, Sequential, Sigmoid, Softmax, Tanh, manual_seed

ACTIVATIONS = [ReLU, Sigmoid, Tanh, GELU, Softmax]


@st.composite
def sequential_models(draw):
    """(layers spec, input width): 1-6 Linears of width 1-300, any activations, dropout anywhere."""
    depth = draw(st.integers(1, 6))
    widths = draw(st.lists(st.integers(1, 300), min_size=depth + 1, max_size=depth + 1))
    spec = []
    for i in range(depth):
        spec += draw(st.lists(st.one_of(st.sampled_from(ACTIVATIONS), st.floats(0, 1)), max_size=2))
        spec.append((widths[i], widths[i + 1], draw(st.booleans())))
    spec += draw(st.lists(st.one_of(st.sampled_from(ACTIVATIONS), st.floats(0, 1)), max_size=2))
    return spec, widths[0]


def build(spec):
    layers = []
    for item in spec:
        if isinstance(item, tuple):
            layers.append(Linear(item[0], item[1], bias=item[2]))
        elif isinstance(item, float):
            layers.append(Dropout(item))
        else:
            layers.append(item())
    return Sequential(layers)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sequential_models(), st.integers(0, 4), st.integers(0, 2**16))
def test_trace_passes_interpret_equals_eager(model_spec, batch, seed):
    spec, width = model_spec
    manual_seed(seed)
    model = build(spec)
    x = np.random.default_rng(seed).standard_normal((batch, width)).astype(np.float32)
    g = run_pipeline(trace(model, (None, width)))
    assert "dropout" not in g.op_counts() and "matmul" not in g.op_counts()
    np.testing.assert_allclose(interpret(g, x), eager_eval(model, x), rtol=1e-5, atol=1e-6)
