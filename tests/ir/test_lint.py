"""`Graph.lint()` refuses every broken graph it is meant to catch (torch.fx's lint, run after each pass).

Each test starts from a valid graph, breaks one invariant by editing `g.nx` directly (as a buggy
pass would: `Graph.add` itself refuses most of these) and expects `LintError` naming the problem.
"""

from __future__ import annotations

import numpy as np
import pytest

from tinycomp.frontend.tracer import trace
from tinycomp.ir.graph import Graph, LintError
from tinycomp.ir.passes import run_pipeline
from tinycomp.nn import Linear, ReLU, Sequential, Tensor, manual_seed


def small_graph() -> Graph:
    """x (N, 4) -> relu(x @ W + b) -> output, written as separate nodes."""
    g = Graph()
    x = g.add("input", name="x", shape=(None, 4))
    w = g.add("param", name="w", shape=(4, 3), value=Tensor(np.ones((4, 3))))
    b = g.add("param", name="b", shape=(3,), value=Tensor(np.zeros(3)))
    y = g.add("matmul", [x, w], name="mm")
    z = g.add("add", [y, b], name="plus")
    r = g.add("relu", [z], name="act")
    g.add("output", [r], name="output")
    return g


def fused_graph() -> Graph:
    """x (N, 4), c (4,) -> one `elementwise` node relu(add($0, $1)) -> output."""
    g = Graph()
    x = g.add("input", name="x", shape=(None, 4))
    c = g.add("param", name="c", shape=(4,), value=Tensor(np.ones(4)))
    f = g.add("elementwise", [x, c], name="fused", expr=("relu", ("add", ("in", 0), ("in", 1))))
    g.add("output", [f], name="output")
    return g


def test_valid_graphs_pass():
    small_graph().lint()
    fused_graph().lint()
    manual_seed(0)
    traced = trace(Sequential(Linear(5, 4), ReLU(), Linear(4, 2)), (None, 5))
    traced.lint()
    run_pipeline(traced).lint()


def test_cycle():
    g = small_graph()
    g.nx.add_edge("act", "mm", arg=2)  # act feeds back into the matmul that produced it
    with pytest.raises(LintError, match="cycle"):
        g.lint()


def test_two_outputs():
    g = small_graph()
    g.nx.add_node("output2", op="output", shape=(None, 3), dtype="float32")
    g.nx.add_edge("plus", "output2", arg=0)
    with pytest.raises(LintError, match="exactly one output node; found 2"):
        g.lint()


def test_no_output():
    g = small_graph()
    g.nx.remove_node("output")
    with pytest.raises(LintError, match="found 0"):
        g.lint()


def test_output_that_is_read():
    g = small_graph()
    g.nx.add_node("late", op="neg", shape=(None, 3), dtype="float32")
    g.nx.add_edge("output", "late", arg=0)
    with pytest.raises(LintError, match="output node output is read"):
        g.lint()


def test_wrong_operand_count():
    g = small_graph()
    g.nx.add_edge("x", "act", arg=1)  # relu with two operands
    with pytest.raises(LintError, match=r"act \(relu\) has 2 operands, needs 1"):
        g.lint()


def test_operand_positions_with_a_gap():
    g = small_graph()
    g.nx.remove_edge("mm", "plus")
    g.nx.add_edge("mm", "plus", arg=2)  # positions 1 and 2, no 0
    with pytest.raises(LintError, match="operand positions"):
        g.lint()


def test_linear_operands_disagree_with_bias_flag():
    g = Graph()
    x = g.add("input", name="x", shape=(None, 4))
    w = g.add("param", name="w", shape=(4, 3))
    lin = g.add("linear", [x, w], name="lin", bias=False, activation=None)
    g.add("output", [lin], name="output")
    g.lint()
    g[lin]["bias"] = True
    with pytest.raises(LintError, match="bias=True"):
        g.lint()


def test_wrong_shape():
    g = small_graph()
    g["act"]["shape"] = (None, 4)  # relu of an (N, 3) value
    with pytest.raises(LintError, match=r"act \(relu\) has shape \(None, 4\), its rule gives \(None, 3\)"):
        g.lint()


def test_operand_shapes_the_rule_refuses():
    g = small_graph()
    g["w"]["shape"] = (5, 3)  # x (N, 4) @ w (5, 3): the matmul rule itself raises
    with pytest.raises(LintError, match=r"mm \(matmul\).*Inner dimensions must match"):
        g.lint()


def test_missing_core_attribute():
    g = small_graph()
    del g["plus"]["dtype"]
    with pytest.raises(LintError, match=r"plus lacks \['dtype'\]"):
        g.lint()


def test_a_node_without_attributes_or_an_edge_without_its_position():
    """A user pass adding a bare node (g.nx.add_node) or dropping an edge's `arg` met a KeyError before
    the check: run_pipeline could not say which pass broke the graph."""
    g = small_graph()
    g.nx.add_node("junk")
    with pytest.raises(LintError, match=r"node junk lacks \['dtype', 'op', 'shape'\]"):
        g.lint()
    g = small_graph()
    del g.nx.edges["x", "mm", 0]["arg"]
    with pytest.raises(LintError, match="the edge x -> mm lacks 'arg', its operand position"):
        g.lint()

    def bare(graph: Graph) -> bool:
        graph.nx.add_node("junk")
        return True
    with pytest.raises(LintError, match="after pass bare: node junk lacks"):
        run_pipeline(small_graph(), [bare])


def test_unknown_op():
    g = small_graph()
    g["act"]["op"] = "frobnicate"
    with pytest.raises(LintError, match="unknown op 'frobnicate'"):
        g.lint()


@pytest.mark.parametrize("expr, message", [
    (("bogus", ("in", 7)), "'bogus'.*not an elementwise op"),
    (("relu", ("in", 7)), r"\('in', 7\) is not one of \$0..\$1"),
    (("relu", ("in", 0), ("in", 1)), "relu takes 1 operand"),
    (("add", ("in", 0)), "add takes 2 operand"),
    (("add", ("in", 0), ("const", "two")), "a constant holds one number"),
    (("add", ("in", 0), ("const", True)), "a constant holds one number"),
    (("add", ("in", 0), ("in", 1.0)), r"\('in', 1.0\) is not one of"),
    (("relu", ("in", 0)), r"operand\(s\) \$1 of the node are never read"),
    (("add", ("in", 0), ["in", 1]), r"must be a tuple"),
    ((), "must be a tuple"),
    (None, "must be a tuple"),
    (("softmax", ("in", 0)), "'softmax'.*not an elementwise op"),  # an op of the table, not elementwise
    (("matmul", ("in", 0), ("in", 1)), "'matmul'.*not an elementwise op"),
])
def test_bad_fused_expression(expr, message):
    g = fused_graph()
    g["fused"]["expr"] = expr
    with pytest.raises(LintError, match=message):
        g.lint()


def test_deep_fused_expression_lints_without_recursion():
    """A chain of thousands of fused ops is a deep tuple tree: lint walks it with a stack."""
    expr: tuple = ("in", 0)
    for i in range(20000):
        expr = ("neg", expr) if i % 2 else ("add", expr, ("in", 1))
    g = fused_graph()
    g["fused"]["expr"] = expr
    g.lint()
    g["fused"]["expr"] = ("neg", expr, ("in", 1))
    with pytest.raises(LintError, match="neg takes 1 operand"):
        g.lint()
