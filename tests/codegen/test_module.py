"""`lower_graph` on hand-built Graphs: loud failures for ops without a rule, kernels shared between
identical layers, scratch reuse, and the generated entry run natively against the IR interpreter
for every operand layout (full, row, per-row column, scalar, constants, views, copies)."""

from __future__ import annotations

import gc
import re

import numpy as np
import pytest
from llvmlite import ir

from tinycomp.codegen import gemm, module
from tinycomp.codegen.module import (
    ENTRY,
    ROW_BLOCK,
    LoweringError,
    ModulePlan,
    graph_fingerprint,
    lower_graph,
    row_block,
)
from tinycomp.codegen.scratch import plan_buffers, row_block_scratch_bytes
from tinycomp.codegen.target import host
from tinycomp.ir.graph import Graph
from tinycomp.ir.interpret import interpret
from tinycomp.parity import check_parity
from tinycomp.runtime.engine import JitEngine
from tinycomp.runtime.kernel import NativeKernel

WIDTH = host().vector_width
RNG = np.random.default_rng(0)


def values(*shape: int, scale: float = 1.0) -> np.ndarray:
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def param(g: Graph, name: str, value: np.ndarray) -> str:
    return g.add("param", name=name, shape=value.shape, value=value)


def run_native(g: Graph, x: np.ndarray, plan: ModulePlan | None = None) -> np.ndarray:
    """Lower g, JIT it, call the entry on x with the params' bound values; output as a float32 array."""
    g.lint()
    plan = plan or lower_graph(g, WIDTH)
    engine = JitEngine(plan.llvm_ir)
    params = [np.ascontiguousarray(g[p]["value"], np.float32) for p in plan.params]
    kernel = NativeKernel(engine, plan, x.shape[1:], [p.shape for p in params])
    rows = x.shape[0]
    out = np.full((rows, *plan.out_shape[1:]), np.nan, np.float32)
    scratch = np.full(plan.scratch_floats(rows), np.nan, np.float32)  # garbage must not leak into results
    kernel.run(np.ascontiguousarray(x), params, out, scratch)
    return out


def assert_runs_like_interpreter(g: Graph, x: np.ndarray) -> np.ndarray:
    native = run_native(g, x)
    eager = interpret(g, x)
    reference = interpret(g, x.astype(np.float64), dtype=np.float64)
    report = check_parity(native, eager, reference)
    assert report.ok, str(report)
    return native


# ------------------------------------------------------------------ loud failures

def graph_with(op: str, **attrs) -> Graph:
    g = Graph()
    x = g.add("input", name="x", shape=(None, 8))
    w = param(g, "w", values(8, 4))
    y = g.add(op, [x, w] if op == "matmul" else [x], name="culprit", **attrs)
    g.add("output", [y], name="output")
    return g


def test_op_without_a_rule_raises_naming_it(monkeypatch):
    monkeypatch.delitem(module.LOWERINGS, "sum")
    with pytest.raises(LoweringError, match=r"no native code rule for op 'sum' \(node culprit\)"):
        lower_graph(graph_with("sum", axis=1, keepdims=True), WIDTH)


@pytest.mark.parametrize("op, attrs", [
    ("sum", {"axis": 0, "keepdims": True}), ("mean", {"axis": (0, 1), "keepdims": False}),
    ("max", {"axis": None, "keepdims": False}), ("transpose", {"dim0": 0, "dim1": 1}),
    ("softmax", {"dim": 0}),
])
def test_ops_across_the_batch_axis_are_refused_naming_them(op, attrs):
    with pytest.raises(LoweringError, match=rf"{op} culprit (runs over|moves) the batch axis"):
        lower_graph(graph_with(op, **attrs), WIDTH)


def test_matmul_by_a_vector_runs_as_a_one_column_gemm():
    g = Graph()
    x = g.add("input", name="x", shape=(None, 8))
    y = g.add("matmul", [x, param(g, "v", values(8))], name="culprit")
    g.add("output", [y], name="output")
    for rows in (0, 1, 9):
        assert assert_runs_like_interpreter(g, values(rows, 8)).shape == (rows,)


def test_matmul_of_two_batched_operands_runs_a_gemm_per_slice():
    g = Graph()
    x = g.add("input", name="x", shape=(None, 2, 3, 5))
    kt = g.add("transpose", [x], dim0=-2, dim1=-1)
    g.add("output", [g.add("matmul", [x, kt])], name="output")
    assert any(k.endswith("_bmm") for k in lower_graph(g, WIDTH).kernels)
    for rows in (0, 1, 7):
        assert_runs_like_interpreter(g, values(rows, 2, 3, 5))


def test_unfused_matmul_by_a_param_runs_as_a_linear_without_bias():
    native = assert_runs_like_interpreter(graph_with("matmul"), values(13, 8))
    assert native.shape == (13, 4)


def test_lowering_error_is_a_not_implemented_error():
    assert issubclass(LoweringError, NotImplementedError)


def test_softmax_over_a_non_last_axis_runs_down_the_axis():
    g = Graph()
    x = g.add("input", name="x", shape=(None, 3, 5))
    y = g.add("softmax", [x], dim=1)
    g.add("output", [y], name="output")
    for rows in (0, 1, 9):
        assert_runs_like_interpreter(g, values(rows, 3, 5))


def test_several_inputs_come_in_a_table_batched_or_shared():
    g = Graph()
    a = g.add("input", name="a", shape=(None, 3, 4))
    b = g.add("input", name="b", shape=(None, 1, 4))
    c = g.add("input", name="c", shape=(3, 1))  # the same for every sample
    g.add("output", [g.add("mul", [g.add("add", [a, b]), c])], name="output")
    plan = lower_graph(g, WIDTH)
    assert plan.inputs == ["a", "b", "c"] and "ptr %\"inputs\"" in plan.llvm_ir
    kernel = NativeKernel(JitEngine(plan.llvm_ir), plan, (3, 4), [], [(None, 1, 4), (3, 1)])
    shared = values(3, 1)
    for rows in (1, 7, 130):  # 130: two row blocks, the batched inputs moved to each block's rows
        xa, xb = values(rows, 3, 4), values(rows, 1, 4)
        out = np.full((rows, 3, 4), np.nan, np.float32)
        kernel.run(xa, [], out, np.full(plan.scratch_floats(rows), np.nan, np.float32), more_inputs=[xb, shared])
        np.testing.assert_array_equal(out, interpret(g, xa, xb, shared))
    with pytest.raises(ValueError, match="input 1 must be"):
        kernel.run(xa, [], out, np.zeros(plan.scratch_floats(rows), np.float32), more_inputs=[xb[:1], shared])


def test_broadcast_in_runs_goes_through_the_strided_kernel():
    g = Graph()
    x = g.add("input", name="x", shape=(None, 2, 3, 4))
    y = g.add("mul", [x, param(g, "half", values(2, 1, 1))])  # on (N, 2, 3, 4): repeats every 3 rows, in runs
    g.add("output", [y], name="output")
    assert any(k.endswith("_strided") for k in lower_graph(g, WIDTH).kernels)
    for rows in (0, 1, 7):
        assert_runs_like_interpreter(g, values(rows, 2, 3, 4))


# ------------------------------------------------------------------ kernels shared, scratch reused

def mlp_graph(widths: list[int], activation: str | None = "relu") -> Graph:
    g = Graph()
    v = g.add("input", name="x", shape=(None, widths[0]))
    for i, (k, n) in enumerate(zip(widths, widths[1:], strict=False)):
        w, b = param(g, f"{i}.weight", values(k, n, scale=k ** -0.5)), param(g, f"{i}.bias", values(n))
        v = g.add("linear", [v, w, b], bias=True, activation=activation)
    g.add("output", [v], name="output")
    return g


def test_identical_layers_share_one_kernel():
    g = mlp_graph([32, 32, 32, 32, 16])  # three 32x32 relu layers, one 32x16
    plan = lower_graph(g, WIDTH)
    linear_kernels = [k for k in plan.kernels if "linear" in k]
    assert len(linear_kernels) == 2, plan.kernels
    shared = linear_kernels[0]
    defines = re.findall(rf'define (?:internal )?void @"?{re.escape(shared)}"?\(', plan.llvm_ir)
    assert len(defines) == 1  # internal: inlined into its callers (`cgutils.inline_glue`)
    assert plan.llvm_ir.count(f"@{shared}(") + plan.llvm_ir.count(f'@"{shared}"(') == 4  # 1 define + 3 calls
    assert_runs_like_interpreter(g, values(40, 32))


def test_lowering_leaves_no_ir_for_the_cyclic_collector():
    """The module's objects are freed by reference counting as lowering returns (release_module):
    left in reference cycles, collecting them cost the compiles around them milliseconds each."""
    g = mlp_graph([64, 40, 40, 10], "tanh")
    lower_graph(g, WIDTH)  # warm: module-level caches
    gc.collect()
    was_on = gc.isenabled()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        plan = lower_graph(g, WIDTH)
        gc.collect()
        leaked = [o for o in gc.garbage if isinstance(o, (ir.Block, ir.Function, ir.Instruction, ir.Module))]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if was_on:
            gc.enable()
    assert not leaked, f"{len(leaked)} IR objects left in cycles, e.g. {leaked[:3]}"
    assert_runs_like_interpreter(g, values(9, 64))  # the text is intact
    assert "define" in plan.llvm_ir


def test_kernels_differ_where_the_code_must_differ():
    for widths, act in [([32, 32, 32], None), ([32, 32, 32], "tanh")]:
        assert len(lower_graph(mlp_graph(widths, act), WIDTH).kernels) == 1
    g = mlp_graph([32, 32, 32])
    first = g.args(g.args(g.output)[0])[0]
    g.nx.nodes[first]["activation"] = "tanh"  # same shapes, another epilogue: another kernel
    assert len(lower_graph(g, WIDTH).kernels) == 2
    g2 = Graph()
    x = g2.add("input", name="x", shape=(None, 16))
    a = g2.add("mul", [x, g2.add("const", shape=(), value=np.float32(2.0))])
    b = g2.add("mul", [a, g2.add("const", shape=(), value=np.float32(2.0))])
    c = g2.add("mul", [b, g2.add("const", shape=(), value=np.float32(3.0))])
    g2.add("output", [c], name="output")
    plan = lower_graph(g2, WIDTH)
    assert len(plan.kernels) == 2, plan.kernels  # x*2 shared by two nodes, x*3 its own
    assert_runs_like_interpreter(g2, values(5, 16))


def test_constants_that_differ_only_in_the_sign_of_zero_get_their_own_kernels():
    """x + 0.0 and x + -0.0 are equal as Python keys but not as code (for x = -0.0 the first gives
    +0, the second -0; dividing by them tells the two apart)."""
    g = Graph()
    x = g.add("input", name="x", shape=(None, 16))
    plus = g.add("add", [x, g.add("const", shape=(), value=np.float32(0.0))])
    minus = g.add("add", [x, g.add("const", shape=(), value=np.float32(-0.0))])
    one = g.add("const", shape=(), value=np.float32(1.0))
    g.add("output", [g.add("add", [g.add("div", [one, plus]), g.add("div", [one, minus])])], name="output")
    plan = lower_graph(g, WIDTH)
    assert len(plan.kernels) == 4, plan.kernels  # x+0, x-0, 1/v shared by both divisions, the sum
    xs = values(3, 16)
    xs[:, :4] = [-0.0, 0.0, -1.0, np.inf]
    with np.errstate(divide="ignore", invalid="ignore"):  # the interpreter divides by zero too
        native = assert_runs_like_interpreter(g, xs)
    assert np.isnan(native[:, 0]).all() and (native[:, 1] == np.inf).all()  # -inf + inf, inf + inf


@pytest.mark.parametrize("case", ["bias", "weight"])
def test_one_element_constants_read_by_a_gemm_are_passed_by_pointer(case):
    """A one-element constant is an immediate for elementwise kernels, but a GEMM reads its bias and
    weight from memory: a 1-wide bias or a 1x1 weight must still get a pointer."""
    g = Graph()
    if case == "bias":
        x = g.add("input", name="x", shape=(None, 3))
        w = param(g, "w", values(3, 1))
        b = g.add("const", name="b", shape=(1,), value=np.array([0.25], np.float32))
        y = g.add("linear", [x, w, b], bias=True, activation=None)
        doubled = g.add("mul", [y, b])  # also read as an immediate
    else:
        x = g.add("input", name="x", shape=(None, 1))
        b = g.add("const", name="b", shape=(1, 1), value=np.array([[2.0]], np.float32))
        doubled = g.add("matmul", [x, b])
    g.add("output", [doubled], name="output")
    assert lower_graph(g, WIDTH).const_nodes == ["b"]
    assert_runs_like_interpreter(g, values(5, g.shape(x)[1]))


def test_elementwise_chain_needs_scratch_for_two_buffers():
    g = Graph()
    v = g.add("input", name="x", shape=(None, 100))
    ops = ["tanh", "relu", "sigmoid", "neg", "gelu"]
    for i in range(40):
        v = g.add(ops[i % len(ops)], [v])
    g.add("output", [v], name="output")
    plan = lower_graph(g, WIDTH)
    assert plan.scratch_per_row <= 2 * 112 and plan.scratch_fixed == 0
    assert len(plan.kernels) == len(ops)
    assert_runs_like_interpreter(g, values(9, 100, scale=2.0))


# ------------------------------------------------------------------ generated code runs right

@pytest.mark.parametrize("rows", [0, 1, 7, 33, 100, 128, 129, 300])  # one row block, several, a short last one
def test_mlp_graph_runs(rows):
    g = mlp_graph([20, 48, 17, 5])
    assert_runs_like_interpreter(g, values(rows, 20))


def test_operand_layouts_full_row_scalar_const():
    g = Graph()
    x = g.add("input", name="x", shape=(None, 19))
    row = param(g, "row", values(19))
    row2d = param(g, "row2d", values(1, 19))
    scalar = param(g, "scalar", values(1))
    vec = g.add("const", name="vec", shape=(19,), value=values(19))
    three = g.add("const", name="three", shape=(), value=np.float32(3.0))
    v = g.add("add", [x, row])
    v = g.add("mul", [row2d, v])
    v = g.add("sub", [v, scalar])
    v = g.add("div", [v, three])
    v = g.add("sub", [vec, v])
    v = g.add("add", [v, x])
    g.add("output", [v], name="output")
    plan = lower_graph(g, WIDTH)
    assert plan.const_nodes == ["vec"]  # the scalar const is an immediate, not an argument
    assert_runs_like_interpreter(g, values(13, 19))


@pytest.mark.parametrize("sample, table, kind", [
    ((3, 6), (3, 6), "full"),   # a whole sample row: the table is one `row`
    ((3, 6), (3, 1), "col%3"),  # one value per row of a sample
    ((4, 3, 6), (3, 6), "row%3"),
    ((4, 3, 6), (3, 1), "col%3"),
    ((4, 3, 6), (1, 4, 3, 1), "col%12"),
    ((2, 3, 5), (2, 3, 1), "col%6"),
])
def test_tables_that_repeat_inside_each_sample(sample, table, kind):
    """x (N, *sample) + table + bias (last dim): the bias needs rows of the last dimension, so the
    table is read per row of a sample, row i taking entry i % P. Batches above a row block check
    that blocks start on a sample."""
    from tinycomp.ir.layout import operand_kind

    g = Graph()
    x = g.add("input", name="x", shape=(None, *sample))
    t = g.add("const", name="t", shape=table, value=values(*table))
    b = param(g, "b", values(sample[-1]))
    g.add("output", [g.add("add", [g.add("mul", [x, t]), b])], name="output")
    out = (None, *sample)
    if kind != "full":
        assert operand_kind(g, t, out, sample[-1]) == kind
    for rows in (1, 5, 131):
        assert_runs_like_interpreter(g, values(rows, *sample))


def test_a_batched_column_per_row_of_each_sample():
    """(N, 3, 6) * (N, 3, 1), e.g. gating each position by a Linear(6, 1) of it, plus a bias that
    needs rows of the last dim: the gate is one value per kernel row."""
    from tinycomp.ir.layout import operand_kind

    g = Graph()
    x = g.add("input", name="x", shape=(None, 3, 6))
    gate = g.add("sigmoid", [g.add("matmul", [x, param(g, "w", values(6, 1))])])
    b = param(g, "b", values(6))
    g.add("output", [g.add("add", [g.add("mul", [x, gate]), b])], name="output")
    assert operand_kind(g, gate, (None, 3, 6), 6) == "col"
    for rows in (1, 5, 131):
        assert_runs_like_interpreter(g, values(rows, 3, 6))


@pytest.mark.parametrize("table", [(4, 1, 6), (4, 1, 1)])
def test_tables_that_broadcast_between_sample_dims_run(table):
    g = Graph()
    x = g.add("input", name="x", shape=(None, 4, 3, 6))
    t = g.add("const", name="t", shape=table, value=values(*table))
    b = param(g, "b", values(6))
    g.add("output", [g.add("add", [g.add("mul", [x, t], name="culprit"), b])], name="output")
    for rows in (1, 5):
        assert_runs_like_interpreter(g, values(rows, 4, 3, 6))


def test_per_row_column_operand_is_not_treated_as_a_scalar():
    """Regression: a batched (N, 1) value (a Linear to 1 feature, a gate) was lowered as a scalar,
    so every row was scaled by row 0's value."""
    g = Graph()
    x = g.add("input", name="x", shape=(None, 6))
    h = g.add("linear", [x, param(g, "w", values(6, 5))], bias=False, activation=None)
    gate = g.add("linear", [x, param(g, "gw", values(6, 1))], bias=False, activation="sigmoid")
    y = g.add("mul", [h, gate])
    z = g.add("add", [gate, y])
    g.add("output", [z], name="output")
    out = assert_runs_like_interpreter(g, values(7, 6))
    assert out.shape == (7, 5)


def test_views_softmax_and_three_d_values():
    g = Graph()
    x = g.add("input", name="x", shape=(None, 3, 8))
    h = g.add("linear", [x, param(g, "w", values(8, 8)), param(g, "b", values(8))], bias=True, activation="gelu")
    s = g.add("softmax", [h], dim=-1)
    d = g.add("dropout", [s], p=0.3, training=False)  # eval dropout left in: the identity, a view
    r = g.add("reshape", [d], newshape=(-1, 24))
    y = g.add("add", [r, g.add("reshape", [x], newshape=(-1, 24))])
    g.add("output", [g.add("softmax", [y])], name="output")
    assert row_block(g, plan_buffers(g)) == ROW_BLOCK
    for rows in (11, 2 * ROW_BLOCK + 3):  # rows of a block are batch rows, each 3 x 8 here
        assert_runs_like_interpreter(g, values(rows, 3, 8, scale=3.0))


def test_row_blocks_only_where_they_pay():
    """Whole-graph row blocks: multi-layer graphs of batched values whose every W fits L2."""
    mlp = mlp_graph([784, 256, 128, 10])
    assert row_block(mlp, plan_buffers(mlp)) == ROW_BLOCK
    wide = mlp_graph([1024, 1024, 1024])  # 4 MB weights: each block would stream them again
    assert row_block(wide, plan_buffers(wide)) == 0
    one = mlp_graph([20, 48])  # a single kernel
    assert row_block(one, plan_buffers(one)) == 0
    # 8 KB of intermediates a row: a block holds 32 rows, within a quarter of a 1 MB L2
    large = mlp_graph([16, 2048, 16])
    plan = plan_buffers(large)
    rows = row_block(large, plan)
    budget = row_block_scratch_bytes(1 << 20)
    assert 1 <= rows < ROW_BLOCK and rows * 4 * plan.per_row <= budget < (rows + 1) * 4 * plan.per_row
    assert row_block(large, plan, 2 << 20) == 2 * rows  # twice the L2, twice the rows
    for batch in (1, rows + 1, 3 * rows + 2):
        assert_runs_like_interpreter(large, values(batch, 16))
    g = Graph()  # an unbatched computed value would be recomputed per block
    x = g.add("input", name="x", shape=(None, 4))
    s = g.add("mul", [param(g, "p", values(4)), g.add("const", shape=(), value=np.float32(2.0))])
    g.add("output", [g.add("mul", [g.add("relu", [x]), s])], name="output")
    assert row_block(g, plan_buffers(g)) == 0
    for rows in (3, ROW_BLOCK + 5):
        assert_runs_like_interpreter(g, values(rows, 4))


@pytest.mark.parametrize("dead_code", [False, True])
@pytest.mark.parametrize("wrap", ["none", "reshape", "dropout"])
def test_output_that_is_the_input_is_copied(wrap, dead_code):
    """With dead code left in (no eliminate_dead_code pass) the entry runs in row blocks, and each
    block's rows must land in their own rows of the output."""
    g = Graph()
    x = g.add("input", name="x", shape=(None, 4, 5))
    v = {"none": x, "reshape": None, "dropout": None}[wrap]
    if wrap == "reshape":
        v = g.add("reshape", [x], newshape=(-1, 20))
    elif wrap == "dropout":
        v = g.add("dropout", [x], p=0.5, training=False)
    if dead_code:
        g.add("mul", [g.add("relu", [x]), x])  # two computed values no output reads
    g.add("output", [v], name="output")
    xs = values(ROW_BLOCK + 5 if dead_code else 6, 4, 5)
    xs[0, 0, :3] = [np.nan, -0.0, np.inf]
    out = run_native(g, xs)
    np.testing.assert_array_equal(out.reshape(xs.shape), xs)
    assert np.signbit(out.reshape(-1)[1])


def test_pack_buffer_does_not_clobber_a_live_value():
    """Regression (scratch planning): an unbatched value read after a packing GEMM (M > 32)."""
    g = Graph()
    x = g.add("input", name="x", shape=(None, 1))
    s = g.add("mul", [param(g, "p", values(4000)), g.add("const", shape=(), value=np.float32(2.0))])
    lin = g.add("linear", [x, param(g, "w", values(1, 4000))], bias=False, activation=None)
    g.add("output", [g.add("mul", [lin, s])], name="output")
    for rows in (8, 64):
        assert_runs_like_interpreter(g, values(rows, 1))


# ------------------------------------------------------------------ plan metadata and the cache key

def test_plan_round_trips_through_cache_metadata():
    g = mlp_graph([12, 9, 4])
    plan = lower_graph(g, WIDTH)
    again = ModulePlan.from_meta(plan.to_meta(), g, WIDTH)
    assert again.llvm_ir == "" and again.entry == plan.entry == ENTRY
    assert (again.params, again.out_shape, again.kernels) == (plan.params, plan.out_shape, plan.kernels)
    assert again.scratch_floats(37) == plan.scratch_floats(37)


def test_fingerprint_ignores_parameter_values_but_not_structure():
    base = graph_fingerprint(mlp_graph([12, 9, 4]), WIDTH)
    assert graph_fingerprint(mlp_graph([12, 9, 4]), WIDTH) == base  # other random weights, same code
    assert graph_fingerprint(mlp_graph([12, 9, 5]), WIDTH) != base
    assert graph_fingerprint(mlp_graph([12, 9, 4], "tanh"), WIDTH) != base
    assert graph_fingerprint(mlp_graph([12, 9, 4]), 8 if WIDTH == 16 else 16) != base


def test_fingerprint_holds_the_vecmath_form(monkeypatch):
    """vecmath.AVX512_FORMS, switched at run time by tests and benchmarks, changes the key: a compile
    with the portable forms never loads AVX-512-form code from the cache."""
    from tinycomp.codegen import vecmath

    base = graph_fingerprint(mlp_graph([12, 9, 4], "tanh"), WIDTH)
    monkeypatch.setattr(vecmath, "AVX512_FORMS", not vecmath.AVX512_FORMS)
    assert graph_fingerprint(mlp_graph([12, 9, 4], "tanh"), WIDTH) != base


def test_fingerprint_sees_constant_values():
    def graph(c: float) -> Graph:
        g = Graph()
        x = g.add("input", name="x", shape=(None, 4))
        g.add("output", [g.add("mul", [x, g.add("const", name="c", shape=(), value=np.float32(c))])], name="output")
        return g

    assert graph_fingerprint(graph(2.0), WIDTH) != graph_fingerprint(graph(3.0), WIDTH)


def test_only_glue_is_compiled_without_optimization():
    """The entry and the GEMM driver only call kernels: `optnone` (cheap to compile); the per-layer
    wrappers, glue too, are inlined into the entry (`cgutils.inline_glue`); every kernel that does
    the arithmetic keeps the full code generator."""
    text = lower_graph(mlp_graph((784, 256, 128, 10), "relu"), WIDTH).llvm_ir
    attrs = {m.group(1): m.group(2) for m in re.finditer(r'^define [^@]*@"([^"]+)"\(.*\)([^(\n]*)$', text, re.M)}
    glue = {name for name, a in attrs.items() if "optnone" in a}
    assert glue == {"tinycomp_forward", f"tinycomp.gemm.driver.v{WIDTH}"}
    assert all("noinline" in attrs[name] for name in glue)  # optnone requires it
    inlined = {name for name, a in attrs.items() if "alwaysinline" in a}
    assert inlined == {"k0_linear", "k1_linear", "k2_linear"}
    assert all(f'define internal void @"{name}"' in text for name in inlined)
    assert any(name.startswith("tinycomp.gemm.tile") for name in attrs.keys() - glue)


def _run_with_guard(g: Graph, plan: ModulePlan, x: np.ndarray) -> np.ndarray:
    """Run the entry with exactly `plan.scratch_floats(rows)` floats of scratch and a NaN guard after
    them; the guard must come back untouched."""
    engine = JitEngine(plan.llvm_ir)
    params = [np.ascontiguousarray(g[p]["value"], np.float32) for p in plan.params]
    kernel = NativeKernel(engine, plan, x.shape[1:], [p.shape for p in params])
    out = np.full((x.shape[0], *plan.out_shape[1:]), np.nan, np.float32)
    need = plan.scratch_floats(x.shape[0])
    scratch = np.full(need + 64, np.nan, np.float32)
    kernel.run(x, params, out, scratch)
    assert np.isnan(scratch[need:]).all()  # nothing written past the planned scratch
    report = check_parity(out, interpret(g, x), interpret(g, x.astype(np.float64), dtype=np.float64))
    assert report.ok, str(report)
    return out


@pytest.mark.parametrize("rows", [1, ROW_BLOCK, 3 * ROW_BLOCK + 5])
def test_row_blocks_use_one_block_of_scratch(rows):
    """Run in row blocks, the entry's batched buffers hold one block and no GEMM takes its packed path:
    a call needs scratch for min(rows, block) rows and no packing buffer, and writes nothing past it."""
    g = mlp_graph([96, 80, 48, 10])  # 48 -> 10: a narrow layer, whose transposed W stays in scratch
    plan = lower_graph(g, WIDTH)
    assert plan.row_block == ROW_BLOCK
    narrow_wt = 10 * 48 if WIDTH > 10 else 0
    assert plan.scratch_fixed == 0 and plan.scratch_pack == narrow_wt
    wt = narrow_wt if rows >= plan.pack_rows else 0  # (the narrow layer's small batches read W in place)
    assert plan.scratch_floats(rows) == min(rows, ROW_BLOCK) * plan.scratch_per_row + wt
    _run_with_guard(g, plan, values(rows, 96))


def test_row_blocks_keep_the_pack_buffer_of_gemms_on_more_rows():
    """A Linear over (N, 3, 40) multiplies 3 rows per sample: a block of 128 samples is 384 GEMM rows,
    past the in-place path, so that GEMM packs W and its buffer stays in scratch, for the calls that
    reach it: the entry runs with exactly the scratch it plans at one sample fewer and at that many."""
    g = Graph()
    v = g.add("input", name="x", shape=(None, 3, 40))
    for i, (k, n) in enumerate([(40, 64), (64, 8)]):
        w, b = param(g, f"{i}.weight", values(k, n, scale=k ** -0.5)), param(g, f"{i}.bias", values(n))
        v = g.add("linear", [v, w, b], bias=True, activation="relu")
    g.add("output", [v], name="output")
    plan = lower_graph(g, WIDTH)
    assert plan.row_block == ROW_BLOCK and plan.scratch_pack >= 40 * 16 and plan.pack_rows > 1
    for rows in (1, plan.pack_rows - 1, plan.pack_rows, 3 * ROW_BLOCK + 5):
        _run_with_guard(g, plan, values(rows, 3, 40))


def test_calls_too_small_to_pack_need_no_pack_buffer():
    """A W past 1 MB runs without row blocks; its GEMM packs W only on more rows than it reads in
    place (`gemm.direct_max_rows`). The pack buffer lies last in scratch, so a batch-1 call needs
    a few KB, not the packed block: the entry runs with exactly the scratch it plans, just below
    and at the first row count that packs, and writes nothing past it."""
    g = mlp_graph([640, 512, 64])
    plan = lower_graph(g, WIDTH)
    assert plan.row_block == 0 and plan.scratch_pack >= 640 * 2 * WIDTH
    assert plan.pack_rows == gemm.direct_max_rows(640, 512, host().cache_limits, WIDTH) + 1
    assert plan.scratch_floats(plan.pack_rows - 1) < plan.scratch_pack
    assert plan.scratch_floats(plan.pack_rows) == plan.scratch_floats(plan.pack_rows - 1) + plan.scratch_per_row \
        + plan.scratch_pack
    for rows in (1, plan.pack_rows - 1, plan.pack_rows):
        _run_with_guard(g, plan, values(rows, 640))
