"""How a graph, a compiled model and a summary show in a notebook: SVG (or text), HTML tables."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import tinycomp as tc
from tinycomp.nn import Dropout, Linear, ReLU, Sequential, Softmax, manual_seed


@pytest.fixture
def model():
    manual_seed(0)
    return Sequential(Linear(8, 6), ReLU(), Dropout(0.1), Linear(6, 3), Softmax()).eval()


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
def test_graph_is_an_svg_picture_when_graphviz_is_installed(model):
    svg = tc.trace(model, (None, 8))._repr_svg_()
    assert svg is not None and "<svg" in svg and "matmul" in svg and "dropout" in svg


def test_graph_is_text_without_graphviz(model, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no `dot` on it
    g = tc.trace(model, (None, 8))
    assert g._repr_svg_() is None  # a notebook then shows text/plain: the graph's listing
    assert "%x = input : f32[N,8]" in repr(g)


def test_compiled_model_html_says_shapes_time_and_what_fused(model):
    fast = tc.compile(model)
    assert "not compiled yet" in fast._repr_html_()
    fast(np.zeros((2, 8), np.float32))
    html = fast._repr_html_()
    assert "input (N, 8) &rarr; output (N, 3)" in html
    assert f"compiled in {fast.stats.compile_ms:.1f} ms" in html
    assert "fused matmul %0 + bias add %1 + relu %2" in html
    assert "<td style=\"text-align:left\">linear</td>" in html and "softmax" in html
    assert "dropout" not in html  # folded away


def test_summary_html_is_a_table_with_the_totals(model):
    s = tc.summary(model, input_shape=(32, 8))
    html = s._repr_html_()
    assert html.startswith("<table>") and "summary (batch 32)" in html
    assert html.count("<tr>") == len(s.rows) + 2  # header, one per node, totals
    assert f">{s.parameters:,}<" in html and f">{s.macs:,}<" in html
    assert s.parameters == 8 * 6 + 6 + 6 * 3 + 3
