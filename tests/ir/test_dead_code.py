import numpy as np

from tests.ir.passcheck import check_pass
from tinycomp.frontend.tracer import trace
from tinycomp.ir.graph import Graph
from tinycomp.ir.passes import eliminate_dead_code
from tinycomp.nn import Layer, Linear, ReLU, manual_seed


class DeadBranch(Layer):
    """Computes a value it never uses; DCE must drop it and its params."""

    def __init__(self):
        self.used = Linear(4, 3)
        self.unused = Linear(4, 5)
        self.act = ReLU()

    def forward(self, x):
        self.act(self.unused(x))
        return self.used(x)


def test_dead_branch_and_its_params_go():
    manual_seed(0)
    g = trace(DeadBranch(), (None, 4))
    h = check_pass(eliminate_dead_code, g, np.ones((2, 4), np.float32),
                   pre=lambda g: "unused.weight" in g and g.op_counts()["relu"] == 1,
                   post=lambda g: "unused.weight" not in g and "unused.bias" not in g and "relu" not in g.op_counts())
    assert h.params == ["used.weight", "used.bias"]


def test_unused_input_is_kept():
    g = Graph()
    g.add("input", name="x", shape=(None, 3))
    c = g.add("const", shape=(), value=np.float32(2))
    g.add("output", [c], name="output")
    h = check_pass(eliminate_dead_code, g, np.ones((2, 3), np.float32), pre=lambda g: True,
                   post=lambda g: g.inputs == ["x"], changes=False)
    assert len(h) == 3


def test_nothing_dead():
    manual_seed(0)
    g = trace(Linear(2, 2), (None, 2))
    check_pass(eliminate_dead_code, g, np.ones((1, 2), np.float32), pre=lambda g: True,
               post=lambda g: len(g) == len(trace(Linear(2, 2), (None, 2))), changes=False)
