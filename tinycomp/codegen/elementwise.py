"""Elementwise and softmax kernels over a batch of float32 rows (M runtime, row size R fixed).

Kernel ABI (all buffers float32, row-major, contiguous, `noalias`: `out` must not alias an input):
  emit_elementwise -> `void name(i64 M, ptr out, ptr op0, ptr op1, ...)`
  emit_softmax     -> `void name(i64 M, ptr out, ptr x)`
Each row runs a `width`-lane vector loop over the first R - R % width elements, then one masked
vector step (`llvm.masked.load/store` with a constant mask) for the R % width tail, so every R >= 1
works with the same code and no scalar remainder loop. M = 0 runs nothing.

Expressions are tuples: `("in", i)`, `("const", value)`, `(op, child, ...)` with op an elementwise op
of the registry; each op's vector emitter comes from `vector_ops.VECTOR_OPS` (pow: a constant
exponent, `("pow", child, ("const", c))`). Lowering is table-driven (op -> emitter, operand kind ->
loader); anything without a rule raises NotImplementedError naming it before any IR is emitted.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeAlias

from llvmlite import ir

from ..ir import ops
from ..ir.ops import expr_nodes, map_leaves
from . import vecmath
from .cgutils import F32, I1, I32, I64, PTR, element_ptr, for_range, i64, if_then, index_urem, splat, vector_constant
from .loops import (
    Chunk,
    accumulate_row,
    broadcast_load,
    fold_run,
    for_each_chunk,
    for_each_flat_chunk,
    load_chunk,
    row_chunks,
    store_chunk,
)
from .vector_ops import VECTOR_OPS, emit_op, vector_op

# Operand kinds: M x R, R (per column), M (per row), 1; and `row%P` (P x R: row m reads row m % P)
# and `col%P` (P values: row m reads value m % P), for values that repeat with a row's position
# inside a sample (ir/layout.periodic_kind).
KINDS = ("full", "row", "col", "scalar")


# ---------------------------------------------------------------- checks (fail before emitting)

def check_expr(expr: tuple, n_operands: int) -> None:
    """Raise NotImplementedError for an op without a vector emitter (or a non-constant operand where
    its emitter needs a number), ValueError for a malformed expression: before any IR is emitted."""
    nodes = list(expr_nodes(expr))
    missing = sorted({e[0] for e in nodes} - VECTOR_OPS.keys() - {"in", "const"})
    if missing:
        vector_op(missing[0])  # raises, naming the op
    ops.check_expr(expr, n_operands, every_operand=False)
    for e in nodes:
        for i, what in (VECTOR_OPS[e[0]].constants or {}).items() if e[0] in VECTOR_OPS else ():
            if e[1 + i][0] != "const":
                raise NotImplementedError(f"{e[0]} is compiled for a constant number as {what}; got {e!r}")


def kernel_key(expr: tuple) -> tuple:
    """An expression as a kernel-cache key, its constants spelled exactly: as keys 0.0 == -0.0, but
    x + 0.0 and x + -0.0 differ for x = -0.0, so they must not share a kernel."""
    return map_leaves(expr, lambda leaf: ("const", float(leaf[1]).hex()) if leaf[0] == "const" else leaf)


def kind_period(kind: str) -> tuple[str, int]:
    """(base kind, period) of an operand kind: ("row", 3) for "row%3", ("full", 0) for "full"."""
    base, _, period = kind.partition("%")
    return base, int(period) if period.isdigit() else 0


def _check_kinds(operand_kinds: tuple[str, ...] | list[str]) -> None:
    for kind in operand_kinds:
        base, period = kind_period(kind)
        if kind not in KINDS and not (base in ("row", "col") and period > 1):
            raise NotImplementedError(f"elementwise codegen has no rule for operand kind {kind!r}")


def _check_shape(row_size: int, width: int) -> None:
    if row_size < 1:
        raise ValueError(f"row_size must be >= 1, got {row_size}")
    if width < 1 or width & (width - 1):
        raise ValueError(f"vector width must be a power of two, got {width}")


# ---------------------------------------------------------------- IR helpers

def declare_kernel(module: ir.Module, name: str, n_pointers: int) -> ir.Function:
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [I64] + [PTR] * n_pointers), name)
    fn.args[0].name = "M"
    fn.attributes.add("nounwind")  # no unwind tables (on ARM they would need the EHABI runtime)
    for arg in fn.args[1:]:
        arg.add_attribute("noalias")
    return fn


# ---------------------------------------------------------------- elementwise

def _load_operand(builder, kind: str, ptr: ir.Value, row: ir.Value, row_base: ir.Value,
                  chunk: Chunk, row_size: int) -> ir.Value:
    """Operand lanes for `chunk` of row `row`, by broadcast kind."""
    base, period = kind_period(kind)
    if period:  # row % period of a P x R table (row%P) or of P values (col%P)
        at = index_urem(builder, row, i64(period))
        if base == "row":
            return load_chunk(builder, element_ptr(builder, ptr, builder.add(builder.mul(at, i64(row_size)),
                                                                            chunk.col)), chunk)
        return broadcast_load(builder, element_ptr(builder, ptr, at), chunk.width)
    if kind == "full":
        return load_chunk(builder, element_ptr(builder, ptr, builder.add(row_base, chunk.col)), chunk)
    if kind == "row":
        return load_chunk(builder, element_ptr(builder, ptr, chunk.col), chunk)
    if kind == "col":
        return broadcast_load(builder, element_ptr(builder, ptr, row), chunk.width)
    if kind == "scalar":
        return broadcast_load(builder, ptr, chunk.width)
    raise NotImplementedError(f"elementwise codegen has no rule for operand kind {kind!r}")


def evaluate(builder: ir.IRBuilder, expr: tuple, leaf: Callable[[int], ir.Value],
             width: int) -> ir.Value:
    """Emit `expr` on `width`-lane vectors; `leaf(i)` yields operand i (loaded once per use)."""
    op, args = expr[0], expr[1:]
    if op == "in":
        return leaf(args[0])
    if op == "const":
        return splat(float(args[0]), width)
    constants = VECTOR_OPS[op].constants or {}
    return emit_op(builder, op, *[float(a[1]) if i in constants else evaluate(builder, a, leaf, width)
                                  for i, a in enumerate(args)])


def emit_elementwise(module: ir.Module, name: str, expr: tuple, operand_kinds, row_size: int,
                     width: int) -> ir.Function:
    """Define `void name(i64 M, ptr out, ptr op0, ...)`: out[m, j] = expr(operands at m, j).

    Without "row"/"col" operands (periodic or not) the element position does not matter, so the M x R buffers are
    walked as one flat run of M*R elements: small rows (R = 1, 3, ...) still get full vectors.
    """
    kinds = tuple(operand_kinds)
    _check_kinds(kinds)
    _check_shape(row_size, width)
    check_expr(expr, len(kinds))

    fn = declare_kernel(module, name, 1 + len(kinds))
    n_rows, out, operands = fn.args[0], fn.args[1], fn.args[2:]
    builder = ir.IRBuilder(fn.append_basic_block("entry"))

    def emit_chunk(row: ir.Value | None, row_base: ir.Value, chunk: Chunk) -> None:
        loaded: dict[int, ir.Value] = {}  # a repeated ("in", i) reuses its load

        def leaf(i: int) -> ir.Value:
            if i not in loaded:
                loaded[i] = _load_operand(builder, kinds[i], operands[i], row, row_base, chunk, row_size)
            return loaded[i]

        value = evaluate(builder, expr, leaf, chunk.width)
        store_chunk(builder, value, element_ptr(builder, out, builder.add(row_base, chunk.col)), chunk)

    if set(kinds) <= {"full", "scalar"}:
        total = builder.mul(n_rows, i64(row_size), flags=["nsw"])
        for_each_flat_chunk(builder, total, width, lambda c: emit_chunk(None, i64(0), c))
    else:
        with for_range(builder, 0, n_rows, name="row") as loop:
            row = loop.index
            row_base = builder.mul(row, i64(row_size), flags=["nsw"])
            for_each_chunk(builder, row_size, width, lambda c: emit_chunk(row, row_base, c))
    builder.ret_void()
    return fn


# ---------------------------------------------------------------- softmax

REGISTER_CHUNKS = 4  # rows of up to 4 vectors stay in registers: no store/reload of exp(x - max)
NEG_INF = float("-inf")
Threshold: TypeAlias = float | ir.Value | None  # exp(x - max) is +0 below it: a number, or a vector at run time


def horizontal(builder: ir.IRBuilder, combine, v: ir.Value) -> ir.Value:
    """Fold the lanes of `v` pairwise with `combine`; the result is lane 0 (a scalar float)."""
    width = v.type.count
    half = width // 2
    while half:
        idx = [(i + half) % width for i in range(width)]
        upper = builder.shuffle_vector(v, vector_constant(v.type, ir.Undefined),
                                       vector_constant(ir.VectorType(I32, width), idx))
        v = combine(v, upper)
        half //= 2
    return builder.extract_element(v, ir.Constant(I32, 0))


def max_ignoring_nan(builder: ir.IRBuilder, acc: ir.Value, x: ir.Value) -> ir.Value:
    """max that skips NaN lanes of x (a single vmaxps); NaN rows are caught by the sum instead."""
    return builder.select(builder.fcmp_ordered(">", x, acc), x, acc)


def min_ignoring_nan(builder: ir.IRBuilder, acc: ir.Value, x: ir.Value) -> ir.Value:
    """min that skips NaN lanes of x (a single vminps)."""
    return builder.select(builder.fcmp_ordered("<", x, acc), x, acc)


def scalar_f32(value: float) -> ir.Constant:
    return ir.Constant(F32, value)


def softmax_shift(b: ir.IRBuilder, row_max: ir.Value, const: Callable[[float], ir.Value]) -> tuple[ir.Value, ir.Value]:
    """(all -inf?, what to subtract before exp) for softmax over rows whose max is `row_max` (a scalar or
    one row per lane; `const` makes a constant of that type). An all -inf row is shifted by 0 instead
    of -inf, so every exp is 0 and the sum 0 (see `softmax_divisor`) rather than NaN from -inf - -inf."""
    all_neg_inf = b.fcmp_ordered("==", row_max, const(NEG_INF))
    return all_neg_inf, b.select(all_neg_inf, const(0.0), row_max)


def softmax_divisor(b: ir.IRBuilder, all_neg_inf: ir.Value, total: ir.Value,
                    const: Callable[[float], ir.Value]) -> ir.Value:
    """The sum of exps to divide by: sum + 1 for an all -inf row, which gives zeros (still NaN where a
    NaN hid behind the -inf max)."""
    return b.select(all_neg_inf, b.fadd(total, const(1.0)), total)


class _Row:
    """Per-row softmax steps shared by the in-register and the three-pass variants.

    The row max ignores NaN, so a NaN element instead makes exp(NaN - max) and the sum NaN, which
    then spreads to the whole row. An all -inf row (max == -inf) is shifted by 0 instead of -inf,
    making every exp 0 and the sum 0; dividing by sum + 1 then gives zeros, and still NaN when a
    NaN hid behind the -inf max. Masked-off tail lanes load -inf, whose exp is exactly 0 for every
    shift this leaves (finite, +inf or 0), so they never disturb the sum.

    Results below the normals: e / sum with e = exp(x - max) may be below the normals wherever
    x - max < `lift_below(terms)`. Such e, the sum reading them and the products would each cost a
    microcode assist on Intel cores (`vecmath`, TINY_BELOW): 256 rows of 1024 logits of std 30
    took 1.7-1.8 ms against 0.09 for std 1 (benchmarks/tiny_results.py, its softmax table). A row
    with an x - max `in_lift_window` is careful: its exps below `lift_below` are left out of the
    sum (taken as +0: `zero_below`), and its results there are computed from exps lifted by
    2**LIFT_BITS (`vecmath.exp_lifted`), then scaled and unlifted (`vecmath.scale_lifted`, which
    builds subnormal results from bits). The other lanes get what they get in any row; the sum
    leaving out terms below 1.01 * 2**-126 * terms each moves by less than terms**2 * 2**-125 (it
    is at least 1): under its rounding but at a tie.
    """

    def __init__(self, builder: ir.IRBuilder, module: ir.Module, width: int, flush_below: Threshold = None):
        self.builder, self.module, self.width = builder, module, width
        self.flush_below = flush_below  # exp(x - max) is +0 below it (`vecmath.emit_exp_flushed`)
        # exp(x - max) is +0 below it (None: where exp is 0 anyway); a careful three-pass row sets
        # lift_below there (a vector chosen at run time: `careful_zero_below`)
        self.zero_below: float | ir.Value | None = flush_below

    def reduce_max(self, acc: ir.Value) -> None:
        b = self.builder
        self.row_max = horizontal(b, lambda u, v: max_ignoring_nan(b, u, v), acc)
        self.all_neg_inf, shift = softmax_shift(b, self.row_max, scalar_f32)
        self.shift = splat(shift, self.width, b)

    def exp_shifted(self, x: ir.Value) -> ir.Value:
        shifted = self.builder.fsub(x, self.shift)
        if self.zero_below is None:
            return vecmath.emit_exp_unlifted(self.builder, self.module, shifted)
        return vecmath.emit_exp_flushed(self.builder, self.module, shifted, self.zero_below)

    def reduce_sum(self, acc: ir.Value) -> ir.Value:
        """The vector 1 / divisor from the vector of partial sums."""
        b = self.builder
        total = horizontal(b, lambda u, v: b.fadd(u, v), acc)
        divisor = softmax_divisor(b, self.all_neg_inf, total, scalar_f32)
        return splat(b.fdiv(ir.Constant(F32, 1.0), divisor), self.width, b)


def lift_below(terms: int) -> float:
    """Below this x - max, e = exp(x - max) divided by a sum of at most `terms` exps (each at most 1,
    the max's exactly 1) could fall below the normals: e < 1.01 * 2**-126 * terms. The lifted e,
    at least 2**(LIFT_BITS - 150), stays normal divided by such a sum for any row that fits in memory."""
    assert terms < 2**40
    return vecmath.TINY_BELOW + math.log(terms)


def in_lift_window(b: ir.IRBuilder, shifted: ir.Value, below: float) -> ir.Value:
    """i1 lanes: is x - max (`shifted`) from EXP_ZERO_BELOW up to `below` (`lift_below`), where
    `vecmath.exp_lifted` lifts it? (Further down exp is exactly 0: logits masked with -1e9 or -inf
    need no care.)"""
    w = shifted.type.count
    return b.and_(b.fcmp_ordered(">=", shifted, splat(vecmath.EXP_ZERO_BELOW, w)),
                  b.fcmp_ordered("<", shifted, splat(below, w)))


def no_lanes(width: int) -> ir.Constant:
    """The i1 vector with no lane set (what a scan for `in_lift_window` starts from)."""
    return vector_constant(ir.VectorType(I1, width), ir.Constant(I1, 0))


def careful_zero_below(b: ir.IRBuilder, spread_out: ir.Value, any_lifted: Callable[[], ir.Value],
                       below: float, width: int) -> tuple[ir.Value, ir.Value]:
    """(careful?, zero_below) for a softmax whose first pass found its max and its least x: careful
    (`_Row`) if `spread_out` (least x < max + `below`) and then the scan `any_lifted()` finds an
    x - max `in_lift_window`; zero_below, the splat `below` there, else EXP_ZERO_BELOW."""
    with if_then(b, spread_out, carry=[ir.Constant(I1, 0)]) as spread:
        spread.carry(any_lifted())
    [careful] = spread.results
    return careful, splat(b.select(careful, scalar_f32(below), scalar_f32(vecmath.EXP_ZERO_BELOW)), width, b)


def store_lifted(b: ir.IRBuilder, module: ir.Module, shifted: ir.Value, factor: ir.Value, below: float,
                 store: Callable[[ir.Value], None]) -> None:
    """The last pass of a careful row (`_Row`) on one vector x - max, `shifted`: if it holds one
    `in_lift_window`, `store` its results again, exp(x - max) * factor, without an operation that
    rounds into the subnormals or reads one."""
    with if_then(b, vecmath.any_lane(b, in_lift_window(b, shifted, below))):
        tiny, value = vecmath.exp_lifted(b, module, shifted, below)
        store(vecmath.scale_lifted(b, module, value, factor, tiny))


def _softmax_in_registers(b: ir.IRBuilder, row: _Row, chunks: list[Chunk], x_at, out_at) -> None:
    xs = [load_chunk(b, x_at(c), c, fill=NEG_INF) for c in chunks]
    [ps] = softmax_rows_in_registers(b, row.module, row.width, [xs], row.flush_below)
    for c, p in zip(chunks, ps, strict=True):
        store_chunk(b, p, out_at(c), c)


def softmax_rows_in_registers(b: ir.IRBuilder, module: ir.Module, width: int,
                              rows: list[list[ir.Value]], flush_below: Threshold = None) -> list[list[ir.Value]]:
    """The softmax of each row of vectors in `rows` (lanes past a row's end must hold -inf), the
    same operations in the same order per row as one row alone; emitted stage by stage across the
    rows (every max, then every exp, ...) so that the rows' long dependency chains (horizontal max,
    exp, horizontal sum, divide) are independent neighbours the CPU overlaps. `flush_below`: exp
    of x - max below it is +0 (`_Row`); without it, one test on all the rows' exps picks the
    careful steps (`_Row`) for all of them or none."""
    states = [_Row(b, module, width, flush_below) for _ in rows]
    maxima = []
    for xs in rows:
        acc = xs[0]
        for v in xs[1:]:
            acc = max_ignoring_nan(b, acc, v)
        maxima.append(acc)
    for row, acc in zip(states, maxima, strict=True):
        row.reduce_max(acc)
    if flush_below is not None:
        exps = [[row.exp_shifted(v) for v in xs] for row, xs in zip(states, rows, strict=True)]
        return _normalized(b, states, exps, lambda i, j, factor: b.fmul(exps[i][j], factor))
    below = lift_below(max(len(xs) for xs in rows) * width)
    parts = [[vecmath.exp_parts(b, module, b.fsub(v, row.shift), tiny_below=below) for v in xs]
             for row, xs in zip(states, rows, strict=True)]

    def usual() -> list[ir.Value]:
        exps = [[scaled(None) for _, scaled in ps] for ps in parts]
        return _flat(_normalized(b, states, exps, lambda i, j, factor: b.fmul(exps[i][j], factor)))

    def careful() -> list[ir.Value]:
        lifted = [[(tiny, scaled(tiny)) for tiny, scaled in ps] for ps in parts]
        summands = [[b.select(tiny, splat(0.0, width), value) for tiny, value in ls] for ls in lifted]
        return _flat(_normalized(b, states, summands, lambda i, j, factor: vecmath.scale_lifted(
            b, module, lifted[i][j][1], factor, lifted[i][j][0])))

    flat = iter(vecmath.branch_on_tiny(b, [tiny for ps in parts for tiny, _ in ps], usual, careful))
    return [[next(flat) for _ in xs] for xs in rows]


def _flat(rows: list[list[ir.Value]]) -> list[ir.Value]:
    return [v for vs in rows for v in vs]


def _normalized(b: ir.IRBuilder, states: list[_Row], summands: list[list[ir.Value]],
                result: Callable[[int, int, ir.Value], ir.Value]) -> list[list[ir.Value]]:
    """`result(i, j, factor)` for vector j of row i, factor the vector 1 / the sum of row i's `summands`."""
    totals = []
    for ss in summands:
        total = ss[0]
        for s in ss[1:]:
            total = b.fadd(total, s)
        totals.append(total)
    factors = [row.reduce_sum(total) for row, total in zip(states, totals, strict=True)]
    return [[result(i, j, factor) for j in range(len(ss))] for i, (ss, factor) in enumerate(zip(summands, factors,
                                                                                                  strict=True))]


def _softmax_three_pass(b: ir.IRBuilder, row: _Row, row_size: int, x_at, out_at) -> None:
    """max over x; exp(x - max) stored to out while summing; out *= 1 / sum.

    Without `flush_below` the first pass also takes the least x (tail lanes +inf), and in a careful
    row (`_Row`, `careful_zero_below`) a last pass computes again the vectors that hold an x - max
    `in_lift_window`; it reads x, so out must not be x there."""
    w = row.width
    careful_rows = row.flush_below is None

    def extremes(c: Chunk, *acc: ir.Value) -> list[ir.Value]:
        x = load_chunk(b, x_at(c), c, fill=NEG_INF)
        if not careful_rows:
            return [max_ignoring_nan(b, acc[0], x)]
        least = load_chunk(b, x_at(c), c, fill=float("inf"))  # the same load, but for a row's tail
        return [max_ignoring_nan(b, acc[0], x), min_ignoring_nan(b, acc[1], least)]

    def merge(one: list[ir.Value], other: list[ir.Value]) -> list[ir.Value]:
        least = [min_ignoring_nan(b, one[1], other[1])] if careful_rows else []
        return [max_ignoring_nan(b, one[0], other[0]), *least]

    init = [splat(NEG_INF, w)] + ([splat(float("inf"), w)] if careful_rows else [])
    row_max, *row_min = accumulate_row(b, row_size, w, init, extremes, merge)
    row.reduce_max(row_max)
    below = lift_below(row_size)
    if careful_rows:
        least = horizontal(b, lambda u, v: min_ignoring_nan(b, u, v), row_min[0])
        careful, row.zero_below = careful_zero_below(
            b, b.fcmp_ordered("<", least, b.fadd(row.row_max, scalar_f32(below))),
            lambda: _any_lifted(b, row, row_size, x_at, below), below, w)

    def exp_stored(c: Chunk) -> ir.Value:
        e = row.exp_shifted(load_chunk(b, x_at(c), c, fill=NEG_INF))  # tail lanes: exp(-inf) = 0
        store_chunk(b, e, out_at(c), c)
        return e

    # Summed as a tree (`fold_run`), as layer norm sums: one running sum per lane
    # over a 300,000-wide row erred ~170 ulps and broke the parity rule against NumPy's pairwise sum.
    factor = row.reduce_sum(fold_run(b, row_size, w, splat(0.0, w), exp_stored, b.fadd))
    for_each_chunk(b, row_size, w, lambda c: store_chunk(b, b.fmul(load_chunk(b, out_at(c), c), factor), out_at(c), c))
    if careful_rows:
        with if_then(b, careful):
            for_each_chunk(b, row_size, w, lambda c: _lift_chunk(b, row, x_at, out_at, c, factor, below))


def _any_lifted(b: ir.IRBuilder, row: _Row, row_size: int, x_at, below: float) -> ir.Value:
    """i1: has the row an x - max `in_lift_window`?"""
    w = row.width

    def scan(c: Chunk, seen: ir.Value) -> list[ir.Value]:
        shifted = b.fsub(load_chunk(b, x_at(c), c, fill=NEG_INF), row.shift)
        return [b.or_(seen, in_lift_window(b, shifted, below))]

    [seen] = accumulate_row(b, row_size, w, [no_lanes(w)], scan, lambda one, other: [b.or_(one[0], other[0])])
    return vecmath.any_lane(b, seen)


def _lift_chunk(b: ir.IRBuilder, row: _Row, x_at, out_at, c: Chunk, factor: ir.Value, below: float) -> None:
    """`store_lifted` on chunk c of a careful row."""
    shifted = b.fsub(load_chunk(b, x_at(c), c, fill=NEG_INF), row.shift)
    store_lifted(b, row.module, shifted, factor, below, lambda value: store_chunk(b, value, out_at(c), c))


def emit_softmax(module: ir.Module, name: str, row_size: int, width: int) -> ir.Function:
    """Define `void name(i64 M, ptr out, ptr x)`: softmax along each row of length `row_size`.

    As the eager reference (ir/ops.py softmax): e = exp(x - rowmax), out = e / sum(e), computed
    here as e * (1 / sum). NaN anywhere in a row -> all NaN; +inf in a row -> NaN (inf - inf);
    an all -inf row -> zeros. See `_Row` for how each case comes out.
    """
    _check_shape(row_size, width)
    fn = declare_kernel(module, name, 2)
    n_rows, out, x = fn.args
    builder = ir.IRBuilder(fn.append_basic_block("entry"))
    with for_range(builder, 0, n_rows, name="row") as loop:
        r = loop.index
        base = builder.mul(r, i64(row_size), flags=["nsw"])

        def x_at(c: Chunk) -> ir.Value:
            return element_ptr(builder, x, builder.add(base, c.col))

        def out_at(c: Chunk) -> ir.Value:
            return element_ptr(builder, out, builder.add(base, c.col))

        softmax_row(builder, module, row_size, width, x_at, out_at)
    builder.ret_void()
    return fn


def softmax_row(builder: ir.IRBuilder, module: ir.Module, row_size: int, width: int,
                x_at: Callable[[Chunk], ir.Value], out_at: Callable[[Chunk], ir.Value],
                flush_below: Threshold = None) -> None:
    """Softmax of one row of `row_size` floats, chunk c read at `x_at(c)` and written at `out_at(c)`
    (the same place works: each chunk is read before it is written). Rows of up to REGISTER_CHUNKS
    vectors stay in registers; longer ones take three passes. `_Row` says how NaN and -inf come out
    and what `flush_below` does."""
    row = _Row(builder, module, width, flush_below)
    if -(-row_size // width) <= REGISTER_CHUNKS:  # counted, not listed: a row may be 2**31 floats
        _softmax_in_registers(builder, row, row_chunks(row_size, width), x_at, out_at)
    else:
        _softmax_three_pass(builder, row, row_size, x_at, out_at)
