"""fuse_attention: which graphs become one `attention` node, which stay as they are, and the same
output before and after (tests/ir/passcheck.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.ir.passcheck import check_pass
from tests.transformer_ref import causal_mask
from tinycomp.frontend.tensor import apply_op
from tinycomp.frontend.tracer import trace
from tinycomp.frontend.transformer import scaled_dot_product_attention
from tinycomp.ir.passes import fuse_attention, fuse_linear, run_pipeline
from tinycomp.nn import Layer, Linear, MultiHeadAttention, Tensor, manual_seed

SEQ, EMBED, HEADS = 5, 12, 3


def x_of(batch: int = 3, seq: int = SEQ, width: int = EMBED, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, seq, width)).astype(np.float32)


def linear_graph(model, shapes):
    g = trace(model, shapes)
    fuse_linear(g)
    return g


def fused(g) -> bool:
    ops = g.op_counts()
    return ops.get("attention") == 1 and not {"softmax", "transpose", "matmul"} & set(ops)


def untouched(g) -> bool:
    return "attention" not in g.op_counts() and "softmax" in g.op_counts()


@pytest.fixture(scope="module")
def mha():
    manual_seed(0)
    return MultiHeadAttention(EMBED, HEADS)


def test_multi_head_attention_becomes_one_node_reading_the_projections(mha):
    g = linear_graph(mha, (None, SEQ, EMBED))
    h = check_pass(fuse_attention, g, x_of(), pre=lambda g: g.op_counts()["transpose"] == 5, post=fused)
    [node] = h.nodes("attention")
    assert h.attrs(node) == {"heads": HEADS, "scale": float(np.float32(1 / math.sqrt(EMBED // HEADS)))}
    assert [h.op(a) for a in h.args(node)] == ["linear"] * 3  # read where the projections wrote them
    assert [h[u]["layer"] for u in h.users(node)] == ["out_proj"]


@pytest.mark.parametrize("mask_shape", [(None, SEQ, SEQ), (SEQ, SEQ), (None, HEADS, SEQ, SEQ)])
def test_a_mask_is_read_by_the_node_and_its_term_folded(mha, mask_shape):
    g = linear_graph(mha, [(None, SEQ, EMBED), mask_shape])
    mask = causal_mask(3, SEQ)
    mask[1, 2, :] = 0  # a row with every key blocked
    mask = {2: mask[0], 3: mask, 4: np.repeat(mask[:, None], HEADS, axis=1)}[len(mask_shape)]
    h = check_pass(fuse_attention, g, x_of(), mask, pre=untouched, post=fused)
    [node] = h.nodes("attention")
    assert h.attrs(node)["mask_value"] == float(np.float32(-1e9))
    operand = h.args(node)[3]
    assert operand == "mask" or (h.op(operand) == "reshape" and h.args(operand) == ["mask"])


class HandWritten(Layer):
    """Attention written out by hand: one head over (N, S, D), `/ sqrt(D)`, an additive bias."""

    def __init__(self, divide=True, bias=True, width=4):
        self.q, self.k, self.v = Linear(width, width), Linear(width, width), Linear(width, 6)
        self.bias = Tensor(np.random.default_rng(3).standard_normal((SEQ, SEQ))) if bias else None
        self.divide = divide

    def forward(self, x):
        q, k, v = self.q(x), self.k(x), self.v(x)
        scores = q.matmul(k.transpose(-2, -1))
        scores = scores / math.sqrt(4) if self.divide else 0.5 * scores
        if self.bias is not None:
            scores = self.bias + scores
        return apply_op("softmax", scores, dim=-1).matmul(v)


@pytest.mark.parametrize("divide", [True, False])
def test_hand_written_one_head_attention_with_a_bias(divide):
    manual_seed(1)
    g = linear_graph(HandWritten(divide=divide), (None, SEQ, 4))
    h = check_pass(fuse_attention, g, x_of(width=4), pre=untouched, post=fused)
    [node] = h.nodes("attention")
    assert h.attrs(node) == {"heads": 1, "scale": 2.0 if divide else 0.5, **({"divide": True} if divide else {})}
    assert h.args(node)[3] == "bias"  # added as it is
    assert h.shape(node) == (None, SEQ, 6)


class Spelled(Layer):
    """Heads split and merged with other, equivalent transposes; keys and values from a second input."""

    def __init__(self, split_k_like_q=False):
        self.split_k_like_q = split_k_like_q

    def forward(self, x, memory):
        n, s = x.shape[0], x.shape[1]
        q = x.reshape(-1, s, 2, 3).transpose(1, 2)  # (N, 2, S, 3)
        if self.split_k_like_q:
            kt = memory.reshape(-1, 7, 2, 3).transpose(1, 2).transpose(2, 3)
        else:
            kt = memory.reshape(-1, 7, 2, 3).transpose(1, 3).transpose(1, 2)  # (N, 3, 2, 7) -> (N, 2, 3, 7)
        v = memory.reshape(-1, 7, 2, 3).transpose(2, 1)
        w = apply_op("softmax", q.matmul(kt) * 0.25, dim=3)
        return w.matmul(v).transpose(1, 2).reshape(n, s, 6)


@pytest.mark.parametrize("split_k_like_q", [True, False])
def test_other_spellings_of_the_same_views_and_cross_attention(split_k_like_q):
    g = trace(Spelled(split_k_like_q), [(None, SEQ, 6), (None, 7, 6)])
    h = check_pass(fuse_attention, g, x_of(width=6), x_of(seq=7, width=6, seed=1), pre=untouched, post=fused)
    [node] = h.nodes("attention")
    assert h.args(node) == ["x", "memory", "memory"] and h.shape(node) == (None, SEQ, 6)


class Prescaled(Layer):
    """torch's ONNX export of scaled_dot_product_attention: q and k^T each multiplied by a constant
    (the scale's root) before their product, no scale after it. `where` moves k's multiply before
    its transpose, or puts one on v; `per_column` multiplies q by a tensor of one value per head
    column instead, which the node does not compute."""

    def __init__(self, where="q and k^T", per_column=False):
        self.where, self.c = where, Tensor(np.full(3, 0.6)) if per_column else 0.6

    def forward(self, x, memory):
        n, s = x.shape[0], x.shape[1]
        q = x.reshape(-1, s, 2, 3).transpose(1, 2) * self.c
        k = memory.reshape(-1, 7, 2, 3).transpose(1, 2)
        kt = (k * 0.6).transpose(2, 3) if self.where == "k before its transpose" else k.transpose(2, 3) * 0.6
        v = memory.reshape(-1, 7, 2, 3).transpose(1, 2)
        if self.where == "v too":
            v = 1.5 * v
        w = apply_op("softmax", q.matmul(kt), dim=-1)
        return w.matmul(v).transpose(1, 2).reshape(n, s, 6)


@pytest.mark.parametrize("where", ["q and k^T", "k before its transpose", "v too"])
def test_operands_scaled_among_their_views_are_scaled_before_them(where):
    g = trace(Prescaled(where), [(None, SEQ, 6), (None, 7, 6)])
    h = check_pass(fuse_attention, g, x_of(width=6), x_of(seq=7, width=6, seed=1), pre=untouched, post=fused)
    [node] = h.nodes("attention")
    q, k, v = h.args(node)
    assert (h.op(q), h.args(q)[0], h.op(k), h.args(k)[0]) == ("mul", "x", "mul", "memory")
    assert (h.op(v), h.args(v)[0]) == ("mul", "memory") if where == "v too" else v == "memory"
    assert h.shape(q) == (None, SEQ, 6) and h.shape(k) == (None, 7, 6) and h.attrs(node).get("scale", 1.0) == 1.0


def test_q_scaled_by_a_tensor_of_several_values_is_left_alone():
    g = trace(Prescaled(per_column=True), [(None, SEQ, 6), (None, 7, 6)])
    check_pass(fuse_attention, g, x_of(width=6), x_of(seq=7, width=6, seed=1), pre=untouched, post=untouched,
               changes=False)


class FourAxisConstant(Layer):
    """Per-head views of 4-D inputs, q times a (1, 1, 1, 1) constant: multiplying the (N, S, H*D)
    value by it instead would add an axis, so the graph is left as it is (a hunt's case: that
    multiply broadcast to (1, N, S, W) and the compile failed)."""

    def forward(self, x, memory):
        q = x.transpose(1, 2) * Tensor(np.full((1, 1, 1, 1), 0.6, np.float32))
        w = apply_op("softmax", q.matmul(memory.transpose(1, 2).transpose(2, 3)), dim=-1)
        return w.matmul(memory.transpose(1, 2)).transpose(1, 2).reshape(-1, SEQ, 6)


def test_a_constant_that_would_add_an_axis_is_left_alone():
    g = trace(FourAxisConstant(), [(None, SEQ, 2, 3), (None, 7, 2, 3)])
    x, memory = x_of(width=6).reshape(3, SEQ, 2, 3), x_of(seq=7, width=6, seed=1).reshape(3, 7, 2, 3)
    check_pass(fuse_attention, g, x, memory, pre=untouched, post=untouched, changes=False)


class Variant(Layer):
    """MultiHeadAttention's math with one thing changed that the node does not compute."""

    def __init__(self, change):
        manual_seed(2)
        self.mha, self.change = MultiHeadAttention(EMBED, HEADS), change
        self.scale = Tensor(np.full(SEQ, 0.5))

    def forward(self, x):
        m, n = self.mha, x.shape[0]
        q, k, v = (p(x).reshape(n, SEQ, HEADS, 4).transpose(1, 2) for p in (m.q_proj, m.k_proj, m.v_proj))
        if self.change == "heads interleaved":  # head h takes columns h, h+3, h+6, h+9: not a contiguous block
            q = m.q_proj(x).reshape(n, SEQ, 4, HEADS).transpose(1, 3).transpose(2, 3)
        scores = q.matmul(k.transpose(-2, -1))
        scores = scores * self.scale if self.change == "scale by a tensor" else scores * 0.5
        weights = apply_op("softmax", scores, dim=-2 if self.change == "softmax over queries" else -1)
        out = weights.matmul(v)
        if self.change == "heads not merged":
            return out
        out = out.transpose(1, 2).reshape(n, SEQ, EMBED)
        if self.change == "weights read twice":  # (N, S, 12) + (N, S, 1): the weights are needed themselves
            return out + weights.sum(axis=(1, 3)).reshape(n, SEQ, 1)
        return out


@pytest.mark.parametrize("change", ["heads interleaved", "scale by a tensor", "softmax over queries",
                                    "heads not merged", "weights read twice"])
def test_what_the_node_does_not_compute_is_left_alone(change):
    g = linear_graph(Variant(change), (None, SEQ, EMBED))
    check_pass(fuse_attention, g, x_of(), pre=untouched, post=untouched, changes=False)


def test_an_empty_sequence_is_left_alone(mha):
    """Zero queries and keys: nothing to fuse (the pass's view checks number the elements, and
    there are none); before, NumPy's reshape error escaped from the pass. (No outputs to compare:
    a reshape to (-1, 0, ...) has no batch size NumPy could infer, so the graph cannot run.)"""
    g = linear_graph(mha, (None, 0, EMBED))
    assert untouched(g) and fuse_attention(g) is False and untouched(g)
    g.lint()


def test_a_mask_computed_before_the_term_stays_a_node_the_kernel_reads():
    class Doubled(Layer):
        def forward(self, x, mask):
            h = x.reshape(-1, SEQ, HEADS, 4).transpose(1, 2)
            out, _ = scaled_dot_product_attention(h, h, h, (2 - mask) * 0.5)  # (1 - (2 - m)/2): not (1 - m) c
            return out.transpose(1, 2).reshape(-1, SEQ, EMBED)

    g = trace(Doubled(), [(None, SEQ, EMBED), (SEQ, SEQ)])
    h = check_pass(fuse_attention, g, x_of(), causal_mask(1, SEQ)[0], pre=untouched, post=fused)
    [node] = h.nodes("attention")
    assert h.attrs(node)["mask_value"] == float(np.float32(-1e9))  # the outer (1 - m') * c is folded...
    assert h.op(h.args(node)[3]) == "mul"  # ...with m' = (2 - mask) * 0.5 computed before it


def test_default_pipeline_leaves_four_linears_and_the_node(mha):
    g = run_pipeline(trace(mha, (None, SEQ, EMBED)))
    assert g.op_counts() == {"input": 1, "param": 8, "linear": 4, "attention": 1, "output": 1}
    assert g.shape(g.output) == (None, SEQ, EMBED)


def test_the_pass_sorts_the_graph_a_fixed_number_of_times_however_deep_the_model(monkeypatch):
    """It sorted the whole graph twice per attention fused, to count transposes for explain(): 20.7 s
    for 400 blocks (3.9 s of a 150-block model's 8.9 s first call)."""
    from tinycomp.ir.graph import Graph
    from tinycomp.nn import Sequential, TransformerBlock
    sorts = []
    real = Graph.nodes

    def counting(self, op=None):
        sorts.append(op)
        return real(self, op)
    monkeypatch.setattr(Graph, "nodes", counting)
    counts = []
    for depth in (2, 12):
        g = trace(Sequential(*[TransformerBlock(16, 2) for _ in range(depth)]), (None, 5, 16))
        sorts.clear()
        assert fuse_attention(g) and g.op_counts()["attention"] == depth
        counts.append(len(sorts))
    assert counts[0] == counts[1]
    assert "transposes not copied" in next(d["explain"] for _, d in g.nx.nodes(data=True) if d["op"] == "attention")
