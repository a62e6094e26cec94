"""The op registry (`ir/ops.py`) is what every stage reads: this test walks it.

Every op must be run eagerly, traced, interpreted, printed and compiled -- each on the operands of
its registry example -- or be explicitly refused with a reason: ops the tracer or a pass makes
(`OpDef.made_by`) are never called by user code, and ops the code generator has no kernel for are
listed in `codegen.module.REFUSED` with why. A new op that is missing a stage fails here by name.
Compiled results are judged by the parity rule against the eager op and the float64 interpreter.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import tinycomp as tc
from tinycomp import driver
from tinycomp.codegen.module import LEAF_OPS, LOWERINGS, REFUSED
from tinycomp.codegen.vector_ops import VECTOR_OPS
from tinycomp.errors import CompileError
from tinycomp.frontend.tensor import Tensor, apply_op
from tinycomp.ir.graph import Graph
from tinycomp.ir.interpret import interpret
from tinycomp.ir.ops import ACTIVATIONS, ELEMENTWISE, KINDS, OPS, UFUNCS, example
from tinycomp.ir.passes import DEFAULT_PIPELINE, run_pipeline
from tinycomp.ir.printer import format_graph, to_dot
from tinycomp.nn import Layer, LayerNorm
from tinycomp.parity import check_parity
from tinycomp.runtime.kernel import NativeKernel

CALLED = sorted(n for n, op in OPS.items() if op.made_by is None)  # what user code runs
MADE = sorted(n for n, op in OPS.items() if op.made_by is not None)
BATCH = 7


def values(shape, rng) -> np.ndarray:
    """Magnitudes 0.5..2 of either sign: no operand near zero (div), log and sqrt see negatives too."""
    return (rng.uniform(0.5, 2.0, shape) * rng.choice([-1.0, 1.0], shape)).astype(np.float32)


def concrete(shape, batch: int = BATCH) -> tuple[int, ...]:
    return tuple(batch if d is None else d for d in shape)


class OneOp(Layer):
    """forward(x) = op(x, *the example's other operands): parameters for shapes, numbers as they are."""

    def __init__(self, name: str, rng):
        self.name, self.ex = name, example(OPS[name])
        self.operands = [Tensor(values(s, rng)) if isinstance(s, tuple) else s for s in self.ex.operands[1:]]

    def forward(self, x):
        return apply_op(self.name, x, *self.operands, **self.ex.attrs)


def model_and_input(name: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    model = OneOp(name, rng)
    first = model.ex.operands[0]
    assert first[0] is None, f"{name}: the example's first operand is the batched input"
    return model, values(concrete(first), rng)


def assert_same(got: np.ndarray, want: np.ndarray) -> None:
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7, equal_nan=True)


def test_registry_entries_are_consistent():
    for name, op in OPS.items():
        assert op.name == name and op.kind in KINDS, name
        assert op.ref is not None or op.kind == "leaf", f"{name} has no NumPy reference"
        if op.kind == "elementwise":
            assert op.arity in (1, 2, 3), name
            assert name in VECTOR_OPS, f"elementwise op {name} has no vector emitter in codegen/vector_ops.py"
    assert set(ACTIVATIONS) <= ELEMENTWISE
    assert all(OPS[op].ufunc is ufunc for ufunc, op in UFUNCS.items())
    # what codegen registers is about ops of the registry, nothing stale
    assert set(LOWERINGS) | set(REFUSED) | set(VECTOR_OPS) | set(LEAF_OPS) <= set(OPS)
    assert not set(LOWERINGS) & set(REFUSED)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # log and sqrt of the negative examples
@pytest.mark.parametrize("name", CALLED)
def test_eager_run_follows_the_shape_rule(name):
    model, x = model_and_input(name)
    y = model(Tensor(x))
    shapes = [concrete(s) if isinstance(s, tuple) else () for s in model.ex.operands]
    assert y.shape == OPS[name].shape(*shapes, **model.ex.attrs)
    assert y.dtype == np.float32


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # log and sqrt of the negative examples
@pytest.mark.parametrize("name", CALLED)
def test_traced_interpreted_and_printed(name):
    model, x = model_and_input(name)
    g = tc.trace(model, (None, *x.shape[1:]))
    g.lint()
    [node] = g.nodes(name)
    assert g.shape(node) == OPS[name].shape(*[g.shape(a) for a in g.args(node)], **g.attrs(node))
    assert_same(interpret(g, x), model(Tensor(x)).data)
    line = next(line for line in format_graph(g).splitlines() if f"= {name}(" in line)
    assert line.startswith(f"%{node}" if not node.startswith("%") else node)
    assert f"= {name}" in to_dot(g)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("passes", [[], None], ids=["each-op-alone", "default-passes"])
@pytest.mark.parametrize("name", CALLED)
def test_compiled_or_refused_with_its_reason(name, passes):
    model, x = model_and_input(name)
    if name in REFUSED:
        with pytest.raises(CompileError, match=REFUSED[name]):
            tc.compile(model, input_shape=(None, *x.shape[1:]), passes=passes)
        return
    fast = tc.compile(model, input_shape=(None, *x.shape[1:]), passes=passes)
    if passes == []:
        assert name in fast.graph.op_counts(), "compiled on its own, the op itself was lowered"
    for rows in (BATCH, 1, 0):
        got, eager = fast(x[:rows]).data, model(Tensor(x[:rows])).data
        assert got.shape == eager.shape
        if rows:
            reference = interpret(fast.graph, x[:rows].astype(np.float64), dtype=np.float64)
            report = check_parity(got, eager, reference)
            assert report.ok, f"{name}: {report}"


class CallsOp(Layer):
    """forward(x) = op `name` called directly on x, as no user code should for made ops."""

    def __init__(self, name: str):
        self.name = name

    def forward(self, x):
        return apply_op(self.name, x)


class MakesAll(Layer):
    """y = tanh(relu(x @ w + b) * 2 + 1), then one-head self-attention over y's 3 values, then a
    LayerNorm: its traced graph holds input, param, const and output; the default passes make a
    linear, a fused elementwise, an attention and a layer_norm node of it."""

    def __init__(self):
        rng = np.random.default_rng(2)
        self.w, self.b = Tensor(values((5, 3), rng)), Tensor(values((3,), rng))
        self.norm = LayerNorm(3)

    def forward(self, x):
        y = apply_op("relu", x @ self.w + self.b)
        t = apply_op("tanh", y * 2.0 + 1.0).reshape(-1, 3, 1)
        weights = apply_op("softmax", t.matmul(t.transpose(-2, -1)) * 0.5, dim=-1)
        return self.norm(weights.matmul(t).reshape(-1, 3))


@pytest.mark.parametrize("name", MADE)
def test_ops_made_by_the_tracer_or_a_pass_are_made_there_and_refused_to_user_code(name):
    maker = OPS[name].made_by
    with pytest.raises(CompileError, match=f"only {maker} makes"):
        tc.trace(CallsOp(name), (None, 5))
    traced = tc.trace(MakesAll(), (None, 5))
    if maker == "tracer":
        assert name in traced.op_counts()
    else:
        assert maker in [p.__name__ for p in DEFAULT_PIPELINE]
        assert name not in traced.op_counts() and name in run_pipeline(traced).op_counts()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("name", [n for n in MADE if OPS[n].example is not None])
def test_pass_made_ops_interpreted_printed_and_lowered(name):
    """linear and fused elementwise nodes, built as their passes build them, on their examples."""
    ex, rng = example(OPS[name]), np.random.default_rng(1)
    g = Graph()
    args = [g.add("input", name="x", shape=ex.operands[0])]
    params = [values(s, rng) for s in ex.operands[1:]]
    for i, p in enumerate(params):
        args.append(g.add("param", name=f"p{i}", shape=p.shape, value=Tensor(p)))
    node = g.add(name, args, **ex.attrs)
    g.add("output", [node], name="output")
    g.lint()
    x = values(concrete(ex.operands[0]), rng)
    want = OPS[name].ref(x, *params, **ex.attrs)
    assert_same(interpret(g, x), want)
    assert f"= {name}(" in format_graph(g)
    plan, engine, _, _ = driver.codegen(g, speed_level=0)
    kernel = NativeKernel(engine, plan, x.shape[1:], [p.shape for p in params])
    out = np.empty((BATCH, *plan.out_shape[1:]), np.float32)
    scratch = np.empty(plan.scratch_floats(BATCH) + 1, np.float32)
    kernel.run(x, params, out, scratch)
    report = check_parity(out, want, interpret(g, x.astype(np.float64), dtype=np.float64))
    assert report.ok, report


def test_summary_counts_every_op_by_its_rule():
    """The one FLOP count: per-element FLOPs of the registry, 2 per multiply-add."""
    for name in CALLED:
        model, x = model_and_input(name)
        s = tc.summary(model, input_shape=(BATCH, *x.shape[1:]))
        [row] = [r for r in s.rows if r.op == name]
        op = OPS[name]
        if op.kind == "contraction":
            assert row.flops == 2 * row.macs == 2 * math.prod(row.shape) * x.shape[-1]
        elif op.kind in ("reduction", "normalization"):
            assert row.flops == op.flops * x.size
        elif name == "dropout":  # eval mode here: the identity, folded away
            assert row.flops == 0
        else:
            assert row.flops == op.flops * math.prod(row.shape)
