"""Reductions (sum, mean, max over any sample axes) and softmax along an axis that is not the last.

    emit_reduce        -> void name(i64 M, ptr out, ptr x)   x: M samples of `groups`, out: the kept ones
    emit_softmax_axis  -> void name(i64 M, ptr out, ptr x)   softmax along K of each (outer, K, inner) sample

A sample's dimensions come in coalesced groups (neighbouring axes that are all reduced or all kept are
one group). When the last group is kept, each vector lane reduces its own column (strided loads of
contiguous runs), up to COLUMN_CHAINS vectors of columns side by side; when it is reduced, a sum
adds each contiguous run as NumPy does (`run_sum`) and max splits it across the lanes, folded
pairwise at the end. Either way every sample is reduced on its own (the batch is never reduced
over), and where a sample's outputs are too few chains of adds, SAMPLE_CHAINS samples go side by side.

Numerics: sums add in NumPy's order, so that a compiled sum or mean has eager's bits (`np.sum` on a
C-contiguous array; numpy/_core/src/umath/loops_utils.h.src). A reduced run that is contiguous
(the last group) is NumPy's pairwise sum (`run_sum`); the reduced levels outside it add their
terms into one accumulator from +0.0 (NumPy 2's identity: a sum of -0s is +0; a sum of nothing, 0)
in index order, as NumPy's iterator visits them. max propagates NaN as np.max does. mean divides
the sum by the count, as np.mean does (in float64 where float32 cannot hold the count). Softmax
subtracts each slice's max (NaN-ignoring; a NaN still spreads through its exp) and an all -inf
slice gives zeros, lane by lane, as `elementwise.emit_softmax` does along rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from llvmlite import ir

from . import vecmath
from .cgutils import (
    F32,
    I32,
    PTR,
    define_once,
    element_ptr,
    for_range,
    i64,
    if_then,
    internal_kernel,
    splat,
    vector_constant,
)
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
from .loops import Chunk, blocked_fold, fold, fold_run, for_each_chunk, for_each_chunk_group, load_chunk, store_chunk
from .strided import contiguous_strides, nest_loops
from .target import for_triple

# NumPy's pairwise sum: a run of fewer than 8 left to right; one of at most PAIRWISE_BLOCK in 8
# accumulators (element i into i % 8), folded ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7)), and
# its last n % 8 left to right; a longer run split after n // 2 rounded down to a multiple of 8. The
# lanes' own order before had [5, 5, 1e8] sum to 1e8 + 16 against eager's 1e8 + 8, which exp turned
# into 8.9e6 against 2,981 (a helper's parity failure); any other order can do the same.
PAIRWISE_ACCUMULATORS = 8
PAIRWISE_BLOCK = 128
# A run up to this long is summed where it is needed, its blocks' accumulators side by side in one
# loop: each block is one chain of adds, and a loop (or a call) per block ran them one after another,
# 4.7 x the old tree's time over runs of 4,096; a call per short run cost 3-6 x (LLVM's level-0
# pipeline inlines nothing), and straight-line blocks 12-17 x the code on the Cortex-M. Longer runs
# call the functions of their halves (`pairwise_sum`).
INLINE_RUN = 1024
# Column vectors summed side by side, in one loop down the reduced axes: each is one chain of adds (in
# NumPy's order), and a chain per loop left the core idle between adds.
COLUMN_CHAINS = 4
# Samples summed side by side where one output's adds are one chain (in NumPy's order) and a sample
# has too few of them to keep the core busy: runs of a few elements added down a long outer axis
# (64 x (300, 2, 5) over (1, 3): 1.6 x the old tree's time), or a narrow column down one ((64, 1000, 3)
# over 1: 1.75 x).
SAMPLE_CHAINS = 4


def run_sum(module: ir.Module, b: ir.IRBuilder, x: ir.Value, n: int) -> ir.Value:
    """NumPy's pairwise sum of x[0], ..., x[n - 1], bit for bit: emitted here up to INLINE_RUN,
    else a call of `pairwise_sum`."""
    if n <= INLINE_RUN:
        return _blocks_sum(b, x, n)
    return b.call(pairwise_sum(module, n), [x])


def pairwise_sum(module: ir.Module, n: int) -> ir.Function:
    """`float pairwise_sum.n(ptr x)` for a run longer than INLINE_RUN: its halves' sums (`run_sum`)
    added; one function per run length."""
    return define_once(module, f"pairwise_sum.{n}", lambda name: _emit_pairwise_sum(module, name, n))


def _split(n: int) -> int:
    """Where NumPy's pairwise sum splits a run of n > PAIRWISE_BLOCK."""
    return n // 2 - n // 2 % PAIRWISE_ACCUMULATORS


def _emit_pairwise_sum(module: ir.Module, name: str, n: int) -> ir.Function:
    fn = internal_kernel(module, name, [("x", PTR)], returns=F32)
    (x,) = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    half = _split(n)
    b.ret(b.fadd(run_sum(module, b, x, half), run_sum(module, b, element_ptr(b, x, i64(half)), n - half)))
    return fn


def _blocks_sum(b: ir.IRBuilder, x: ir.Value, n: int) -> ir.Value:
    """The pairwise sum of a run of n <= INLINE_RUN: its blocks' 8 accumulators side by side in one
    loop (the longer blocks' last steps after it), then each block's total and their tree."""
    ways = PAIRWISE_ACCUMULATORS

    def element(i: int) -> ir.Value:
        return b.load(element_ptr(b, x, i64(i)), typ=F32)

    def block(at: ir.Value) -> ir.Value:
        return load_chunk(b, element_ptr(b, x, at), Chunk(i64(0), ways))

    if n < ways:  # from -0.0, as NumPy's base case: it keeps a run of -0s -0
        total: ir.Value = ir.Constant(F32, -0.0)
        for i in range(n):
            total = b.fadd(total, element(i))
        return total
    blocks: list[tuple[int, int]] = []  # (first, length) of each block, in order

    def find_blocks(first: int, length: int) -> None:
        if length <= PAIRWISE_BLOCK:
            blocks.append((first, length))
        else:
            find_blocks(first, _split(length))
            find_blocks(first + _split(length), length - _split(length))

    find_blocks(0, n)
    steps = [length // ways for _, length in blocks]
    accs = [block(i64(first)) for first, _ in blocks]
    if min(steps) > 1:
        with for_range(b, 1, min(steps), name="pw", carry=accs, nonempty=True) as loop:
            at = b.mul(loop.index, i64(ways), flags=["nsw"])
            loop.carry(*(b.fadd(acc, block(b.add(at, i64(first), flags=["nsw"])))
                         for acc, (first, _) in zip(loop.carried, blocks, strict=True)))
        accs = list(loop.results)
    for step in range(min(steps), max(steps)):
        for k, (first, _) in enumerate(blocks):
            if step < steps[k]:
                accs[k] = b.fadd(accs[k], block(i64(first + step * ways)))
    totals = {first: _block_total(b, acc, [element(i) for i in range(first + length - length % ways, first + length)])
              for acc, (first, length) in zip(accs, blocks, strict=True)}

    def combined(first: int, length: int) -> ir.Value:
        if length <= PAIRWISE_BLOCK:
            return totals[first]
        half = _split(length)
        return b.fadd(combined(first, half), combined(first + half, length - half))

    return combined(0, n)


def _block_total(b: ir.IRBuilder, accs: ir.Value, rest: list[ir.Value]) -> ir.Value:
    """A block's accumulators folded (r0 + r1), (r2 + r3), ... then the pairs of those; then `rest`
    (its last elements) added left to right."""
    while accs.type.count > 1:
        half = accs.type.count // 2
        lanes = ir.VectorType(I32, half)
        evens, odds = (b.shuffle_vector(accs, accs, vector_constant(lanes, list(range(k, 2 * half, 2))))
                       for k in (0, 1))
        accs = b.fadd(evens, odds)
    total = b.extract_element(accs, ir.Constant(I32, 0))
    for value in rest:
        total = b.fadd(total, value)
    return total


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
        """mean: the sum over the count, as np.mean divides: in float64, rounded to float32 (the same
        as float32's divide where float32 holds the count; past 2**24 it may not: a row of 16,777,217
        came out an ulp off eager). A target without float64 hardware (the Cortex-M4F: an export
        links no soft-float library) divides by the count's nearest float32, within an ulp of eager;
        a sample of 2**24 floats is 64 MB, past any such board's memory anyway."""
        if self.op != "mean":
            return v
        lanes = v.type.count if isinstance(v.type, ir.VectorType) else 0
        if float(np.float32(self.count)) == self.count or not for_triple(self.b.module.triple).float64_hardware:
            return self.b.fdiv(v, splat(float(self.count), lanes) if lanes else ir.Constant(F32, float(self.count)))
        wide = ir.VectorType(ir.DoubleType(), lanes) if lanes else ir.DoubleType()
        count = vector_constant(wide, ir.Constant(ir.DoubleType(), float(self.count))) if lanes else \
            ir.Constant(wide, float(self.count))
        return self.b.fptrunc(self.b.fdiv(self.b.fpext(v, wide), count), v.type)


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

    def step(at: ir.Value, i: ir.Value, stride: int) -> ir.Value:
        return b.add(at, b.mul(i, i64(stride), flags=["nsw"]), flags=["nsw"])

    def over(levels: list[tuple[int, int]], at: ir.Value, innermost: Callable[[ir.Value], ir.Value],
             w: int) -> ir.Value:
        """The max over the strided levels around `innermost(offset)`, each level a tree from a fresh
        accumulator: any order gives max's value, and a tree's branches run side by side."""
        if not levels:
            return innermost(at)
        (count, stride), rest = levels[0], levels[1:]
        return blocked_fold(b, count, red.identity(w), lambda i: over(rest, step(at, i, stride), innermost, w),
                            red.combine)

    def in_order(levels: list[tuple[int, int]], at: ir.Value, terms: Callable[[ir.Value], list[ir.Value]],
                 accs: list[ir.Value]) -> list[ir.Value]:
        """`accs` plus terms(offset) of every offset of the strided levels, one after another in index
        order: NumPy's order for the levels outside a contiguous run."""
        if not levels:
            return [red.combine(acc, term) for acc, term in zip(accs, terms(at), strict=True)]
        (count, stride), rest = levels[0], levels[1:]
        with for_range(b, 0, count, name="r", carry=accs, nonempty=True) as loop:
            loop.carry(*in_order(rest, step(at, loop.index, stride), terms, list(loop.carried)))
        return list(loop.results)

    in_size, out_size = math.prod(sizes), math.prod(s for s, _ in kept)

    def sample(at: ir.Value, k: int, size: int) -> ir.Value:
        """Offset `at` moved k samples of `size` on (samples side by side are consecutive)."""
        return b.add(at, i64(k * size), flags=["nsw"]) if k else at

    def lanes_over_columns(at: list[ir.Value], together: int) -> None:  # the last group is kept: a lane per column
        def columns(chunks: list[Chunk]) -> None:
            def loader(c: Chunk, k: int) -> Callable[[ir.Value], ir.Value]:
                return lambda off: load_chunk(b, element_ptr(b, x, b.add(sample(off, k, in_size), c.col)), c, red.fill)

            lanes = [(c, k) for k in range(together) for c in chunks]
            if op == "max":
                values = [over(reduced, at[0], loader(c, k), c.width) for c, k in lanes]
            else:
                values = in_order(reduced, at[0], lambda off: [loader(c, k)(off) for c, k in lanes],
                                  [red.identity(c.width) for c, _ in lanes])
            for (c, k), value in zip(lanes, values, strict=True):
                store_chunk(b, red.finish(value), element_ptr(b, out, b.add(sample(at[1], k, out_size), c.col)), c)
        for_each_chunk_group(b, kept[-1][0], width, COLUMN_CHAINS, columns)

    def lanes_along_run(at: list[ir.Value], together: int) -> None:  # the last group is reduced: a contiguous run
        run = reduced[-1][0]
        if op == "max":  # lanes split the run, folded pairwise at the end
            def contiguous(off: ir.Value) -> ir.Value:
                return fold_run(b, run, width, red.identity(width), lambda c: load_chunk(
                    b, element_ptr(b, x, b.add(off, c.col)), c, red.fill), red.combine)

            totals = [horizontal(b, red.combine, over(reduced[:-1], at[0], contiguous, width))]
        else:  # NumPy's pairwise sum of each run, the runs added in order
            totals = in_order(reduced[:-1], at[0], lambda off: [
                run_sum(module, b, element_ptr(b, x, sample(off, k, in_size)), run) for k in range(together)],
                [ir.Constant(F32, red.fill)] * together)
        for k, total in enumerate(totals):
            b.store(red.finish(total), element_ptr(b, out, sample(at[1], k, out_size)))

    if groups[-1][1]:
        levels, body = kept, lanes_along_run
        # a sum's outer levels add each run in order: one chain per output; short runs leave it the work
        together = SAMPLE_CHAINS if op != "max" and len(reduced) > 1 and reduced[-1][0] <= PAIRWISE_BLOCK else 1
    else:
        levels, body = kept[:-1], lanes_over_columns
        together = 1 if op == "max" else max(1, min(SAMPLE_CHAINS, COLUMN_CHAINS // -(-kept[-1][0] // width)))

    def samples(start: ir.Value | int, stop: ir.Value, step: int) -> None:
        """Samples start, start + step, ... below stop, `step` of them side by side."""
        with for_range(b, start, stop, step=step, name=f"m{step}") as loop:
            at = [b.mul(loop.index, i64(in_size), flags=["nsw"]), b.mul(loop.index, i64(out_size), flags=["nsw"])]
            nest_loops(b, [s for s, _ in levels], [[st for _, st in levels], list(out_strides[:len(levels)])], at,
                       lambda offsets: body(offsets, step))

    whole = b.and_(n_rows, i64(-together)) if together > 1 else n_rows
    samples(0, whole, together)
    if together > 1:
        samples(whole, n_rows, 1)
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
