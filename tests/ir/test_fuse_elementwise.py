"""fuse_elementwise: chains of elementwise ops become one `elementwise` node with an expression."""

import numpy as np

import tinycomp as tc
from tests.ir.passcheck import check_pass
from tinycomp.frontend.tracer import trace
from tinycomp.ir.ops import format_expr
from tinycomp.ir.passes import fuse_elementwise, fuse_linear, run_pipeline
from tinycomp.nn import GELU, Layer, Linear, ReLU, Sigmoid, Tanh, Tensor, manual_seed
from tinycomp.parity import check_parity, float64_reference


class Body(Layer):
    """forward(x) = body(x, v) with a (width,) vector parameter v."""

    def __init__(self, body, width=6):
        self.v = Tensor(np.random.default_rng(2).standard_normal(width))
        self.body = body

    def forward(self, x):
        return self.body(x, self.v)


def sample(width=6, batch=5):
    return np.random.default_rng(0).standard_normal((batch, width)).astype(np.float32)


def elementwise_nodes(g):
    return g.nodes("elementwise")


def test_a_chain_becomes_one_node_with_its_expression():
    g = trace(Body(lambda x, v: Tanh()(ReLU()(x * 0.5 + v) - x)), (None, 6))
    h = check_pass(fuse_elementwise, g, sample(), pre=lambda g: g.op_counts()["mul"] == 1,
                   post=lambda g: len(elementwise_nodes(g)) == 1 and "relu" not in g.op_counts())
    (n,) = elementwise_nodes(h)
    assert format_expr(h[n]["expr"]) == "tanh(sub(relu(add(mul($0, 0.5), $1)), $0))"  # one-element constants inline
    assert h.args(n) == ["x", "v"]


def test_a_value_with_two_readers_is_not_recomputed():
    def body(x, v):
        h = x + v
        return ReLU()(h) * Sigmoid()(h)

    g = trace(Body(body), (None, 6))
    h = check_pass(fuse_elementwise, g, sample(), pre=lambda g: True,
                   post=lambda g: g.op_counts().get("add") == 1)
    # `add` is read twice, so it stays a node of its own; relu and sigmoid fold into the mul
    (n,) = elementwise_nodes(h)
    assert format_expr(h[n]["expr"]) == "mul(relu($0), sigmoid($0))"


def test_a_broadcast_intermediate_is_not_fused_into_its_user():
    g = trace(Body(lambda x, v: x + GELU()(v * 2.0)), (None, 6))  # gelu(v*2) is (6,), x is (N, 6)
    h = check_pass(fuse_elementwise, g, sample(), pre=lambda g: True,
                   post=lambda g: [g.shape(n) for n in elementwise_nodes(g)] == [(6,)])
    assert h.op_counts().get("add") == 1  # the (N, 6) add reads the (6,) chain instead of redoing it per row


def test_nothing_to_fuse_reports_no_change():
    manual_seed(0)
    g = run_pipeline(trace(Linear(6, 3), (None, 6)), [fuse_linear])
    check_pass(fuse_elementwise, g, sample(), pre=lambda g: True, post=lambda g: True, changes=False)


class Residual(Layer):
    def __init__(self):
        self.fc = Linear(6, 6)

    def forward(self, x):
        return Tanh()((self.fc(x) + x) * 0.5 - x * x)


def test_fused_chain_compiles_to_one_kernel_and_matches_eager():
    manual_seed(5)
    model = Residual()
    fast = tc.compile(model, input_shape=(None, 6))
    assert fast.graph.op_counts().get("elementwise") == 1
    assert sum(name.endswith("_ew") for name in fast._require("kernels").plan.kernels) == 1
    for rows in (0, 1, 7, 300):
        x = sample(batch=rows) * 3
        report = check_parity(fast(x).data, model(Tensor(x)).data, float64_reference(fast.graph, x))
        assert report.ok, str(report)


class PosBias(Layer):
    """x of shape (N, 3, 6) + a (3, 6) table + a (6,) bias: the two operands need rows of different
    widths (a whole sample, one feature row), so one loop cannot run them both."""

    def __init__(self):
        rng = np.random.default_rng(0)
        self.pos = Tensor(rng.standard_normal((3, 6)))
        self.b = Tensor(rng.standard_normal(6))

    def forward(self, x):
        return ReLU()(x + self.pos + self.b)


def test_no_fusion_that_the_code_generator_could_not_run_as_one_loop():
    from tinycomp.ir.layout import elementwise_layout

    g = run_pipeline(trace(PosBias(), (None, 3, 6)))
    for n in g.nodes():
        if g.op(n) == "elementwise":
            assert elementwise_layout(g, tuple(g.shape(n)), g.args(n)) is not None, g
    model = PosBias()
    x = np.random.default_rng(1).standard_normal((4, 3, 6)).astype(np.float32)
    report = check_parity(tc.compile(model)(x).data, model(Tensor(x)).data,
                          float64_reference(trace(model, (None, 3, 6)), x))
    assert report.ok, str(report)
