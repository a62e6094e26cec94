import re
import shutil

import pytest

from tests.models import CATALOGUE, reference_mlp
from tinycomp.frontend.tracer import trace
from tinycomp.ir import printer
from tinycomp.ir.passes import run_pipeline
from tinycomp.ir.printer import GraphvizNotFound, format_graph, render_dot, to_dot
from tinycomp.nn import manual_seed

TRACED_MLP_HEAD = """\
%x = input : f32[N,784]
%0.weight = param : f32[784,256]
%0 = matmul(%x, %0.weight) : f32[N,256]
%0.bias = param : f32[256]
%1 = add(%0, %0.bias) : f32[N,256]
%2 = relu(%1) : f32[N,256]
%3 = dropout(%2) p=0.5 training=False : f32[N,256]"""


def mlp_graphs():
    manual_seed(0)
    g = trace(reference_mlp(), (None, 784))
    return g, run_pipeline(g)


def test_traced_text():
    g, _ = mlp_graphs()
    text = format_graph(g)
    assert text.startswith(TRACED_MLP_HEAD)
    assert text.splitlines()[-1] == "%output = output(%9) : f32[N,10]"
    assert len(text.splitlines()) == len(g)
    assert text == format_graph(mlp_graphs()[0]) == repr(g)  # stable across traces


def test_optimized_text():
    _, o = mlp_graphs()
    lines = [line for line in format_graph(o).splitlines() if "linear" in line]
    pattern = r"%\d+ = linear\(%{x}, %{i}\.weight, %{i}\.bias\){act} : f32\[N,{n}\]"
    for line, (x, i, act, n) in zip(lines, [("x", 0, " activation=relu", 256), (r"\d+", 3, " activation=relu", 128),
                                            (r"\d+", 6, "", 10)], strict=True):
        assert re.fullmatch(pattern.format(x=x, i=i, act=act, n=n), line), line


def test_layers_shown_on_request():
    g, _ = mlp_graphs()
    assert "%3 = dropout(%2) p=0.5 training=False : f32[N,256]  # 2" in format_graph(g, show_layers=True)


def test_scalar_consts_show_their_value():
    case = next(c for c in CATALOGUE if c.name == "scalar_arith")
    text = format_graph(trace(case.build(), (None, 8)))
    assert "= const 0.5 : f32[]" in text and "= const 1 : f32[]" in text


@pytest.mark.parametrize("stage", ["traced", "optimized"])
def test_dot_is_well_formed(stage):
    g = dict(zip(["traced", "optimized"], mlp_graphs(), strict=True))[stage]
    dot = to_dot(g)
    assert dot.startswith('digraph "tinycomp" {') and dot.rstrip().endswith("}")
    assert dot.count("{") == dot.count("}")
    for n in g.nodes():
        assert f'"{n}" [label=' in dot
    assert dot.count("->") == g.nx.number_of_edges()


def test_per_pass_dumps():
    g, _ = mlp_graphs()
    dumps = []
    run_pipeline(g, on_pass=lambda name, h, changed: dumps.append((name, changed, format_graph(h))))
    assert [(name, changed) for name, changed, _ in dumps] == [
        ("fold_dropout", True), ("fuse_linear", True), ("fuse_attention", False), ("fuse_layer_norm", False),
        ("fuse_elementwise", False),
        ("eliminate_dead_code", False)]
    assert "dropout" not in dumps[0][2] and "linear" in dumps[1][2]


def test_render_without_graphviz_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(printer.shutil, "which", lambda _: None)
    with pytest.raises(GraphvizNotFound, match="Graphviz's `dot` program is not on PATH"):
        render_dot(to_dot(mlp_graphs()[1]), tmp_path / "g.svg")


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz is not installed")
def test_render_svg(tmp_path):
    out = render_dot(to_dot(mlp_graphs()[1]), tmp_path / "g.svg")
    assert "<svg" in out.read_text()
