"""`plan_buffers`: every intermediate gets scratch that no other live value uses, dead buffers are
reused (a long chain needs ~2 buffers, not N), views share their operand's buffer, the output is
written straight into `out`, and the GEMM pack buffer never overlaps a live value."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tinycomp.codegen.scratch import ALIGN, plan_buffers, row_floats
from tinycomp.ir.graph import Graph
from tinycomp.ir.ops import UNARY as UNARY_OPS

UNARY = sorted(UNARY_OPS)  # any one-operand elementwise op of the registry: the plan sees only shapes


def round_up(n: int) -> int:
    return -(-max(n, 1) // ALIGN) * ALIGN


def chain(length: int, width: int = 100) -> Graph:
    g = Graph()
    v = g.add("input", name="x", shape=(None, width))
    for i in range(length):
        v = g.add(UNARY[i % len(UNARY)], [v])
    g.add("output", [v], name="output")
    return g


def lifetimes(g: Graph) -> dict[str, tuple[int, float]]:
    """(defined at, last read at) per node, computed here independently: a view's readers count as
    readers of its operand; a value nobody reads stays live to the end."""
    order = g.nodes()
    root = {}
    for n in order:
        root[n] = root[g.args(n)[0]] if g.op(n) in ("reshape", "dropout") else n
    last: dict[str, float] = {}
    for i, n in enumerate(order):
        for a in g.args(n):
            last[root[a]] = i
    return {n: (i, last.get(n, math.inf)) for i, n in enumerate(order)}


def assert_no_live_overlap(g: Graph, plan, pack_floats: int = 0) -> None:
    life = lifetimes(g)
    assert plan.pack_offset >= plan.fixed and plan.pack >= pack_floats
    blocks = [(n, off, batched, round_up(row_floats(g.shape(n)))) for n, (off, batched) in plan.offsets.items()]
    for n, off, batched, size in blocks:
        assert off % ALIGN == 0, (n, off)
        assert off + size <= (plan.per_row if batched else plan.fixed), (n, off, size)
        if pack_floats and not batched:  # the pack buffer is used by every linear: live all along
            assert off + size <= plan.pack_offset or plan.pack_offset + pack_floats <= off, (n, plan.pack_offset)
    for i, (a, off_a, bat_a, size_a) in enumerate(blocks):
        for b, off_b, bat_b, size_b in blocks[i + 1:]:
            (da, ea), (db, eb) = life[a], life[b]
            if bat_a == bat_b and da <= eb and db <= ea:
                assert off_a + size_a <= off_b or off_b + size_b <= off_a, f"{a} and {b} overlap while both live"


def test_long_chain_needs_two_buffers_not_n():
    for length in (2, 5, 50):
        g = chain(length)
        plan = plan_buffers(g)
        assert plan.per_row <= 2 * round_up(100), (length, plan.per_row)
        assert plan.fixed == 0
        assert_no_live_overlap(g, plan)
    assert plan_buffers(chain(50)).per_row == plan_buffers(chain(3)).per_row


def test_output_writes_straight_into_out():
    g = chain(4)
    plan = plan_buffers(g)
    last = g.args(g.output)[0]
    assert plan.output_root == last and last not in plan.offsets
    assert not {"x", "output"} & plan.offsets.keys()
    assert plan_buffers(chain(1)).per_row == 0  # x -> relu -> out needs no scratch at all


def test_value_read_later_keeps_its_buffer():
    """relu(fc(x)) + x style: the first intermediate must survive the two after it."""
    g = Graph()
    x = g.add("input", name="x", shape=(None, 32))
    a = g.add("tanh", [x])
    b = g.add("relu", [a])
    c = g.add("neg", [b])
    d = g.add("add", [c, a])
    e = g.add("sigmoid", [d])
    g.add("output", [e], name="output")
    plan = plan_buffers(g)
    assert len({plan.offsets[n][0] for n in (a, b, c)}) == 3  # a, b, c all live at once
    assert_no_live_overlap(g, plan)


def test_views_share_their_operands_buffer():
    g = Graph()
    x = g.add("input", name="x", shape=(None, 6, 4))
    a = g.add("relu", [x])
    r = g.add("reshape", [a], newshape=(-1, 24))
    d = g.add("dropout", [r], p=0.5, training=False)
    b = g.add("tanh", [d])
    g.add("output", [b], name="output")
    plan = plan_buffers(g)
    assert plan.alias_root(d) == plan.alias_root(r) == a
    assert r not in plan.offsets and d not in plan.offsets
    assert plan.per_row == round_up(24)
    assert_no_live_overlap(g, plan)


def test_output_through_a_view_is_written_into_out():
    g = Graph()
    x = g.add("input", name="x", shape=(None, 6, 4))
    a = g.add("relu", [x])
    r = g.add("reshape", [a], newshape=(-1, 24))
    g.add("output", [r], name="output")
    plan = plan_buffers(g)
    assert plan.output_root == a and plan.offsets == {}


def test_unbatched_values_live_in_the_fixed_part():
    g = Graph()
    x = g.add("input", name="x", shape=(None, 20))
    p = g.add("param", name="p", shape=(20,))
    s = g.add("tanh", [p])
    y = g.add("mul", [x, s])
    z = g.add("relu", [y])
    g.add("output", [z], name="output")
    plan = plan_buffers(g, pack_floats=100)
    assert plan.offsets[s] == (plan.offsets[s][0], False)
    assert plan.offsets[y][1] is True
    assert plan.per_row == round_up(20) and plan.fixed == round_up(20)
    assert plan.pack_offset == plan.fixed and plan.pack == round_up(100)  # last: small calls need no room for it
    assert_no_live_overlap(g, plan, pack_floats=100)


def test_pack_buffer_never_reuses_a_block_that_is_still_live():
    """Regression: the pack buffer was taken last, from blocks freed at any step, so it could land on
    an unbatched value that was still live while a linear ran (and clobbered it for M > 32)."""
    g = Graph()
    x = g.add("input", name="x", shape=(None, 1))
    p = g.add("param", name="p", shape=(4000,))
    w = g.add("param", name="w", shape=(1, 4000))
    s = g.add("tanh", [p])  # unbatched, read after the linear
    lin = g.add("linear", [x, w], bias=False, activation=None)
    y = g.add("mul", [lin, s])
    g.add("output", [y], name="output")
    plan = plan_buffers(g, pack_floats=4000)
    assert_no_live_overlap(g, plan, pack_floats=4000)


@st.composite
def random_graphs(draw):
    """Random DAGs of batched and unbatched elementwise values, views and dead values."""
    width = draw(st.integers(1, 40))
    g = Graph()
    batched = [g.add("input", name="x", shape=(None, width))]
    fixed = [g.add("param", name="p", shape=(width,))]
    for _ in range(draw(st.integers(1, 25))):
        kind = draw(st.sampled_from(["unary", "binary", "view", "fixed", "mixed"]))
        if kind == "unary":
            batched.append(g.add(draw(st.sampled_from(UNARY)), [draw(st.sampled_from(batched))]))
        elif kind == "binary":
            a, b = draw(st.sampled_from(batched)), draw(st.sampled_from(batched))
            batched.append(g.add(draw(st.sampled_from(["add", "sub", "mul"])), [a, b]))
        elif kind == "view":
            batched.append(g.add("reshape", [draw(st.sampled_from(batched))], newshape=(-1, width)))
        elif kind == "fixed":
            fixed.append(g.add(draw(st.sampled_from(UNARY)), [draw(st.sampled_from(fixed))]))
        else:
            batched.append(g.add("add", [draw(st.sampled_from(batched)), draw(st.sampled_from(fixed))]))
    g.add("output", [batched[-1]], name="output")
    return g, draw(st.sampled_from([0, 16, 50, 3000]))


@settings(max_examples=150, deadline=None)
@given(random_graphs())
def test_no_two_live_values_share_scratch(graph_and_pack):
    g, pack = graph_and_pack
    g.lint()
    plan = plan_buffers(g, pack_floats=pack)
    assert_no_live_overlap(g, plan, pack_floats=pack)
    computed = [n for n in g.nodes() if g.op(n) not in ("input", "param", "const", "output", "reshape")]
    assert set(plan.offsets) == set(computed) - {plan.output_root}


def test_offsets_are_aligned_to_64_bytes():
    g = Graph()
    v = g.add("input", name="x", shape=(None, 3))
    kept = [g.add("relu", [v]) for _ in range(5)]  # five values of 3 floats, all live together
    out = kept[0]
    for k in kept[1:]:
        out = g.add("add", [out, k])
    g.add("output", [out], name="output")
    plan = plan_buffers(g)
    assert all(off % ALIGN == 0 for off, _ in plan.offsets.values())
    offsets = sorted(plan.offsets[k][0] for k in kept)  # all five are live until the adds read them
    assert np.diff(offsets).min() >= ALIGN
    assert_no_live_overlap(g, plan)
