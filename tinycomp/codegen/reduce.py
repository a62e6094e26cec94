"""Reductions (sum, mean, max over any sample axes) and softmax along an axis that is not the last.

    emit_reduce        -> void name(i64 M, ptr out, ptr x)   x: M samples of `groups`, out: the kept ones
    emit_softmax_axis  -> void name(i64 M, ptr out, ptr x)   softmax along K of each (outer, K, inner) sample

A sample's dimensions come in coalesced groups (neighbouring axes that are all reduced or all kept are
one group). When the last group is kept, each vector lane reduces its own column (strided loads of
contiguous runs); when it is reduced, the lanes split the contiguous run and are folded pairwise at the
end. Either way every sample is reduced on its own: the batch is never reduced over.

Numerics: sums are blocked. Each loop level of a reduction starts a fresh accumulator and adds its
result into the level above, and each level is summed as a tree (`loops.blocked_fold`): a sum of n
terms goes through O(log n) additions per lane, as NumPy's pairwise sum does on contiguous runs
(over other axes NumPy sums in order; a row shorter than SUM_IN_ORDER_BELOW, in order as NumPy does
too). Accumulators start at +0.0, as NumPy 2's sum does (its
identity: a sum of -0s is +0; a sum of nothing, 0). max propagates NaN as np.max does. mean divides
the sum by the count, as np.mean does. Softmax subtracts each slice's max (NaN-ignoring; a NaN still
spreads through its exp) and an all -inf slice gives zeros, lane by lane, as `elementwise.emit_softmax`
does along rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from llvmlite import ir

from . import vecmath
from .cgutils import F32, element_ptr, for_range, i64, if_then, splat
from .elementwise import (
    NEG_INF,
    careful_zero_below,
    declare_kernel,
    horizontal,
    in_lift_window,
    lift_below,
    max_ignoring_nan,
    min_ignoring_nan,
    no_lanes,
    softmax_divisor,
    softmax_shift,
    store_lifted,
)
from .loops import Chunk, blocked_fold, fold, fold_run, for_each_chunk, load_chunk, store_chunk
from .strided import contiguous_strides, nest_loops

# A row this short is summed left to right from +0, as NumPy sums a contiguous run of fewer than 8
# (its pairwise sum's base case): the same bits as eager. Lanes paired (x0 + x2) + x1 instead, and a
# sum that cancels 1e8 before exp was far from eager's (a helper's [5, 5, 1e8]).
SUM_IN_ORDER_BELOW = 8


def max_keeping_nan(b: ir.IRBuilder, acc: ir.Value, x: ir.Value) -> ir.Value:
    """np.max's rule: NaN if either is NaN, else the larger."""
    larger = b.select(b.fcmp_unordered(">", x, acc), x, acc)  # x when x > acc or x is NaN
    return b.select(b.fcmp_unordered("uno", acc, acc), acc, larger)


class _Reduction:
    """The op's identity, how two partial results combine, and the finishing step (mean divides)."""

    def __init__(self, b: ir.IRBuilder, op: str, count: int):
        if op not in ("sum", "mean", "max"):
            raise NotImplementedError(f"reduction codegen has no rule for op {op!r}")
        self.b, self.op, self.count = b, op, count
        self.fill = NEG_INF if op == "max" else 0.0  # +0: NumPy 2's sum of -0s is +0 (its identity)

    def combine(self, acc: ir.Value, x: ir.Value) -> ir.Value:
        return max_keeping_nan(self.b, acc, x) if self.op == "max" else self.b.fadd(acc, x)

    def identity(self, width: int) -> ir.Value:
        return splat(self.fill, width)

    def finish(self, v: ir.Value) -> ir.Value:
        if self.op != "mean":
            return v
        count = ir.Constant(F32, float(self.count)) if v.type == F32 else splat(float(self.count), v.type.count)
        return self.b.fdiv(v, count)


def emit_reduce(module: ir.Module, name: str, op: str, groups: Sequence[tuple[int, bool]], width: int) -> ir.Function:
    """Define the reduction kernel of one sample layout: `groups` are (size, reduced?) from outer to
    inner, at least one of them reduced (see the module doc)."""
    if not groups or not any(r for _, r in groups) or any(s < 1 for s, _ in groups):
        raise ValueError(f"a reduction needs positive group sizes and a reduced group; got {groups}")
    sizes = [s for s, _ in groups]
    strides = contiguous_strides(sizes)
    kept = [(s, st) for (s, r), st in zip(groups, strides, strict=True) if not r]
    reduced = [(s, st) for (s, r), st in zip(groups, strides, strict=True) if r]
    out_strides = contiguous_strides([s for s, _ in kept])
    fn = declare_kernel(module, name, 2)
    n_rows, out, x = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    red = _Reduction(b, op, math.prod(s for s, _ in reduced))

    def over(levels: list[tuple[int, int]], at: ir.Value, innermost: Callable[[ir.Value], ir.Value],
             w: int) -> ir.Value:
        """Reduce the strided levels around `innermost(offset)`, each level from a fresh accumulator."""
        if not levels:
            return innermost(at)
        (count, stride), rest = levels[0], levels[1:]
        return blocked_fold(b, count, red.identity(w), lambda i: over(
            rest, b.add(at, b.mul(i, i64(stride), flags=["nsw"]), flags=["nsw"]), innermost, w), red.combine)

    def lanes_over_columns(at: list[ir.Value]) -> None:  # the last group is kept: a lane per column
        def chunk_body(c: Chunk) -> None:
            value = over(reduced, b.add(at[0], c.col), lambda off: load_chunk(b, element_ptr(b, x, off), c, red.fill),
                         c.width)
            store_chunk(b, red.finish(value), element_ptr(b, out, b.add(at[1], c.col)), c)
        for_each_chunk(b, kept[-1][0], width, chunk_body)

    def lanes_along_run(at: list[ir.Value]) -> None:  # the last group is reduced: lanes split the run
        run = reduced[-1][0]
        if len(reduced) == 1 and run < SUM_IN_ORDER_BELOW and op != "max":  # a short row: NumPy's order
            total = fold(b, run, ir.Constant(F32, red.fill), lambda i, acc: b.fadd(
                acc, b.load(element_ptr(b, x, b.add(at[0], i)), typ=F32)), "k")
            b.store(red.finish(total), element_ptr(b, out, at[1]))
            return

        def contiguous(off: ir.Value) -> ir.Value:
            return fold_run(b, run, width, red.identity(width), lambda c: load_chunk(
                b, element_ptr(b, x, b.add(off, c.col)), c, red.fill), red.combine)

        total = horizontal(b, red.combine, over(reduced[:-1], at[0], contiguous, width))
        b.store(red.finish(total), element_ptr(b, out, at[1]))

    with for_range(b, 0, n_rows, name="m") as loop:
        m = loop.index
        at = [b.mul(m, i64(math.prod(sizes)), flags=["nsw"]), b.mul(m, i64(math.prod(s for s, _ in kept)))]
        if groups[-1][1]:
            nest_loops(b, [s for s, _ in kept], [[st for _, st in kept], list(out_strides)], at, lanes_along_run)
        else:
            nest_loops(b, [s for s, _ in kept[:-1]], [[st for _, st in kept[:-1]], list(out_strides[:-1])], at,
                       lanes_over_columns)
    b.ret_void()
    return fn


def emit_softmax_axis(module: ir.Module, name: str, outer: int, axis: int, inner: int, width: int) -> ir.Function:
    """Softmax along the middle of each sample viewed as (outer, axis, inner), inner > 1: each lane
    takes one position of `inner` and runs the max (with the least x), exp-and-sum and scale passes
    down the axis; a vector of lanes with results below the normals is careful (`elementwise._Row`,
    `careful_zero_below`), and a last pass computes again its positions that hold an x - max
    `in_lift_window`."""
    if min(outer, axis, inner) < 1:
        raise ValueError(f"softmax layout (outer, axis, inner) must be positive; got {(outer, axis, inner)}")
    fn = declare_kernel(module, name, 2)
    n_rows, out, x = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    below = lift_below(axis)

    def lane_softmax(at: list[ir.Value]) -> None:
        def chunk_body(c: Chunk) -> None:
            def ptr(base: ir.Value, k: ir.Value) -> ir.Value:
                return element_ptr(b, base, b.add(b.add(at[0], c.col), b.mul(k, i64(inner), flags=["nsw"])))

            w = c.width

            def lanes(value: float) -> ir.Value:
                return splat(value, w)

            def shifted(k: ir.Value) -> ir.Value:
                return b.fsub(load_chunk(b, ptr(x, k), c, NEG_INF), shift)

            with for_range(b, 0, axis, name="max", carry=[lanes(NEG_INF), lanes(math.inf)], nonempty=True) as loop:
                k = loop.index
                loop.carry(max_ignoring_nan(b, loop.carried[0], load_chunk(b, ptr(x, k), c, NEG_INF)),
                           min_ignoring_nan(b, loop.carried[1], load_chunk(b, ptr(x, k), c, math.inf)))
            mx, least = loop.results
            all_neg_inf, shift = softmax_shift(b, mx, lanes)
            careful, zero_below = careful_zero_below(
                b, vecmath.any_lane(b, b.fcmp_ordered("<", least, b.fadd(mx, lanes(below)))),
                lambda: vecmath.any_lane(b, fold(b, axis, no_lanes(w), lambda k, acc: b.or_(
                    acc, in_lift_window(b, shifted(k), below)), "scan")),
                below, w)

            def exp_term(k: ir.Value) -> ir.Value:
                e = vecmath.emit_exp_unlifted(b, module, shifted(k), zero_below)
                store_chunk(b, e, ptr(out, k), c)
                return e

            total = blocked_fold(b, axis, lanes(-0.0), exp_term, lambda acc, e: b.fadd(acc, e), "sum")
            divisor = softmax_divisor(b, all_neg_inf, total, lanes)
            scale = b.fdiv(lanes(1.0), divisor)
            with for_range(b, 0, axis, name="scale") as loop:
                k = loop.index
                store_chunk(b, b.fmul(load_chunk(b, ptr(out, k), c), scale), ptr(out, k), c)
            with if_then(b, careful), for_range(b, 0, axis, name="lift") as loop:
                k = loop.index
                store_lifted(b, module, shifted(k), scale, below, lambda value: store_chunk(b, value, ptr(out, k), c))
        for_each_chunk(b, inner, width, chunk_body)

    with for_range(b, 0, n_rows, name="m") as loop:
        m = loop.index
        nest_loops(b, [outer], [[axis * inner]], [b.mul(m, i64(outer * axis * inner), flags=["nsw"])], lane_softmax)
    b.ret_void()
    return fn
