"""Training-mode dropout nodes lowered into a module (codegen/module.py): each node reads its stream
from the entry's `draws` table and numbers elements from the batch row the table names, so calls on
row ranges (threads, row blocks) give the masks of one call on the whole batch."""

from __future__ import annotations

import numpy as np
import pytest

from tests.codegen.test_module import WIDTH, param, values
from tinycomp.codegen.module import ROW_BLOCK, lower_graph, row_block
from tinycomp.codegen.scratch import plan_buffers
from tinycomp.ir.graph import Graph
from tinycomp.ir.interpret import interpret
from tinycomp.ir.philox import DropoutStream
from tinycomp.runtime.engine import JitEngine
from tinycomp.runtime.kernel import NativeKernel

KEY = (0x0BADF00D, 0x5EED)


def dropout_graph(unbatched: bool) -> tuple[Graph, list[str]]:
    """x (N, 7) -> dropout p=0.4 -> * w (or * dropout(w) p=0.5) -> + dropout p=1 (zeros) -> out."""
    g = Graph()
    x = g.add("input", name="x", shape=(None, 7))
    w = param(g, "w", values(7))
    d1 = g.add("dropout", [x], name="d1", p=0.4, training=True)
    scale = g.add("dropout", [w], name="d0", p=0.5, training=True) if unbatched else w
    m = g.add("mul", [d1, scale], name="m")
    zeros = g.add("dropout", [m], name="d2", p=1.0, training=True)
    y = g.add("add", [m, zeros], name="y")
    g.add("output", [y], name="output")
    return g, ["d1", "d0"] if unbatched else ["d1"]


def run(g: Graph, x: np.ndarray, streams: dict[str, DropoutStream], first_row: int = 0) -> np.ndarray:
    plan = lower_graph(g, WIDTH)
    kernel = NativeKernel(JitEngine(plan.llvm_ir), plan, x.shape[1:], [g.shape(p) for p in plan.params])
    params = [np.ascontiguousarray(g[p]["value"], np.float32) for p in plan.params]
    out = np.full((len(x), *plan.out_shape[1:]), np.nan, np.float32)
    scratch = np.full(plan.scratch_floats(len(x)), np.nan, np.float32)
    draws = kernel.draws_table(KEY, first_row, [(streams[n].layer, streams[n].call) for n in plan.dropouts])
    kernel.run(np.ascontiguousarray(x), params, out, scratch, draws)
    return out


@pytest.mark.parametrize("unbatched", [False, True])
@pytest.mark.parametrize("rows", [1, 7, 300])
def test_masks_match_the_interpreter_and_row_ranges_the_whole(unbatched, rows):
    g, nodes = dropout_graph(unbatched)
    streams = {n: DropoutStream(*KEY, layer=i + 5, call=9) for i, n in enumerate(nodes)}
    plan = lower_graph(g, WIDTH)
    assert plan.dropouts == nodes  # the p=1 node draws nothing
    x = values(rows, 7) + 3.0  # no zeros: a zero in the output means dropped
    native = run(g, x, streams)
    np.testing.assert_array_equal(native, interpret(g, x, streams=streams))  # one multiply each: exact
    cut = rows // 3
    parts = np.concatenate([run(g, x[:cut], streams, 0), run(g, x[cut:], streams, cut)])
    np.testing.assert_array_equal(parts, native)
    if rows > 100 and not unbatched:
        assert abs(np.mean(native == 0) - 0.4) < 0.05


def test_the_300_row_case_above_runs_in_row_blocks():
    g, _ = dropout_graph(unbatched=False)
    assert row_block(g, plan_buffers(g)) == ROW_BLOCK < 300


def test_a_module_with_dropout_refuses_a_call_without_its_draws_table():
    g, _ = dropout_graph(unbatched=False)
    plan = lower_graph(g, WIDTH)
    kernel = NativeKernel(JitEngine(plan.llvm_ir), plan, (7,), [(7,)])
    x, out = np.ones((2, 7), np.float32), np.empty((2, 7), np.float32)
    with pytest.raises(ValueError, match="draws"):
        kernel.run(x, [np.ones(7, np.float32)], out, np.empty(plan.scratch_floats(2), np.float32))
    with pytest.raises(ValueError, match="expected 1 dropout streams, got 2"):
        kernel.draws_table(KEY, 0, [(1, 2), (3, 4)])
