import numpy as np
import pytest

from tests.ir.passcheck import check_pass
from tests.models import CASES, reference_mlp, shared_linear, softmax_head
from tinycomp.frontend.tracer import trace
from tinycomp.ir.passes import explain, fold_dropout, fuse_linear, run_pipeline
from tinycomp.nn import Layer, ReLU, Tensor, manual_seed


def activations(g):
    return [g[n]["activation"] for n in g.nodes("linear")]


def traced(model, width, *, fold=True):
    g = trace(model, (None, width))
    if fold:
        fold_dropout(g)
    return g


def sample(width, batch=3):
    return np.random.default_rng(0).standard_normal((batch, width)).astype(np.float32)


class Custom(Layer):
    """A forward written by hand: `body(x, w, b)` over one weight and an optional bias."""

    def __init__(self, body, w_shape=(5, 4), b_shape=(4,)):
        rng = np.random.default_rng(1)
        self.w = Tensor(rng.standard_normal(w_shape))
        self.b = Tensor(rng.standard_normal(b_shape))
        self.body = body

    def forward(self, x):
        return self.body(x, self.w, self.b)


def test_reference_mlp_becomes_three_linears():
    manual_seed(0)
    g = traced(reference_mlp(), 784)
    h = check_pass(fuse_linear, g, CASES["reference_mlp"].sample(4),
                   pre=lambda g: g.op_counts()["matmul"] == 3,
                   post=lambda g: set(g.op_counts()) == {"input", "param", "linear", "output"})
    assert activations(h) == ["relu", "relu", None]
    assert [h[n]["bias"] for n in h.nodes("linear")] == [True, True, True]


def test_shared_weight_is_not_duplicated():
    manual_seed(0)
    g = traced(shared_linear(), 12)
    h = check_pass(fuse_linear, g, sample(12), pre=lambda g: len(g.params) == 2,
                   post=lambda g: len(g.params) == 2 and len(g.nodes("linear")) == 2)
    assert h.use_count("fc.weight") == 2 and h.use_count("fc.bias") == 2
    assert activations(h) == ["tanh", None]


def test_softmax_is_not_fused():
    manual_seed(0)
    g = traced(softmax_head(), 20)
    h = check_pass(fuse_linear, g, sample(20), pre=lambda g: "softmax" in g.op_counts(),
                   post=lambda g: activations(g) == ["gelu", None] and "softmax" in g.op_counts())
    assert any("activation softmax is not fusible" in line for line in explain(h))


def test_matmul_with_two_users_fuses_no_further():
    g = traced(Custom(lambda x, w, b: (lambda y: y + y)(x @ w)), 5)
    h = check_pass(fuse_linear, g, sample(5), pre=lambda g: True,
                   post=lambda g: activations(g) == [None] and "add" in g.op_counts())
    assert [h[n]["bias"] for n in h.nodes("linear")] == [False]
    assert "matmul result has 2 users" in explain(h)[0]


def test_bias_first_and_activation():
    g = traced(Custom(lambda x, w, b: ReLU()(b + x @ w)), 5)
    h = check_pass(fuse_linear, g, sample(5), pre=lambda g: True,
                   post=lambda g: set(g.op_counts()) == {"input", "param", "linear", "output"})
    assert activations(h) == ["relu"]


@pytest.mark.parametrize("b_shape, body", [
    ((1, 4), lambda x, w, b: x @ w + b),  # 2-D: adding it may broadcast, so it is not a bias vector
    ((), lambda x, w, b: x @ w + b),  # a scalar
])
def test_bias_of_wrong_shape_is_not_fused(b_shape, body):
    g = traced(Custom(body, b_shape=b_shape), 5)
    h = check_pass(fuse_linear, g, sample(5), pre=lambda g: True,
                   post=lambda g: [g[n]["bias"] for n in g.nodes("linear")] == [False] and "add" in g.op_counts())
    assert "bias operand is not a 1-D vector of the output width" in explain(h)[0]


def test_bias_computed_from_a_param_is_recorded_live_and_fuses():
    g = traced(Custom(lambda x, w, b: x @ w + b * 2), 5)  # b * 2 is a mul node: it follows b's updates
    h = check_pass(fuse_linear, g, sample(5), pre=lambda g: "mul" in g.op_counts(),
                   post=lambda g: [g[n]["bias"] for n in g.nodes("linear")] == [True])
    (lin,) = h.nodes("linear")
    assert h.op(h.args(lin)[2]) == "mul" and h.op_counts()["const"] == 1


def test_computed_right_operand_stays_matmul():
    g = traced(Custom(lambda x, w, b: x.reshape(-1, 1, 5) @ x.reshape(-1, 5, 1)), 5)  # one product per sample
    h = check_pass(fuse_linear, g, sample(5), pre=lambda g: True, post=lambda g: "matmul" in g.op_counts(),
                   changes=False)
    assert "is not a 2-D matrix independent of the batch" in explain(h)[0]


def test_explain_on_traced_graph_runs_the_pipeline():
    manual_seed(0)
    g = trace(reference_mlp(), (None, 784))
    lines = explain(g)
    assert len(lines) == 3 and g.op_counts()["matmul"] == 3  # the traced graph itself is not changed
    assert "fused matmul %0 + bias add %1 + relu %2" in lines[0]
    assert lines == explain(run_pipeline(g))


def square(body):
    """A Custom layer with a 5 x 5 weight: its output can be added to its input."""
    return Custom(body, w_shape=(5, 5), b_shape=(5,))


def residuals(g):
    return [g[n]["residual"] for n in g.nodes("linear")]


def test_residual_add_fuses_after_the_activation():
    g = traced(square(lambda x, w, b: x + ReLU()(x @ w + b)), 5)
    h = check_pass(fuse_linear, g, sample(5), pre=lambda g: g.op_counts()["add"] == 2,
                   post=lambda g: set(g.op_counts()) == {"input", "param", "linear", "output"})
    (lin,) = h.nodes("linear")
    assert residuals(h) == [True] and activations(h) == ["relu"] and h.args(lin)[-1] == "x"
    assert " + relu %" in explain(h)[0] and "+ residual add %" in explain(h)[0]


def test_residual_add_without_bias_or_activation():
    g = traced(square(lambda x, w, b: x @ w + x), 5)
    h = check_pass(fuse_linear, g, sample(5), pre=lambda g: True,
                   post=lambda g: residuals(g) == [True] and [g[n]["bias"] for n in g.nodes("linear")] == [False])
    assert "fused matmul %0 + residual add %1; no bias" in explain(h)[0]


@pytest.mark.parametrize("body", [
    lambda x, w, b: x @ w + b + b.reshape(1, 5),  # broadcasts: not a tensor of the output's shape
    lambda x, w, b: (lambda y: y + y)(x @ w + b),  # the output added to itself
    lambda x, w, b: (lambda y: (y + x) * y)(x @ w + b),  # the output has a second user
])
def test_adds_that_are_not_residuals_stay(body):
    g = traced(square(body), 5)
    h = check_pass(fuse_linear, g, sample(5), pre=lambda g: True,
                   post=lambda g: residuals(g) == [False] and "add" in g.op_counts())
    assert "residual" not in explain(h)[0]
