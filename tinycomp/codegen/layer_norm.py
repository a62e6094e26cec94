"""The `layer_norm` kernel (made by ir/passes/fuse_layer_norm.py): each row normalized while it is in L1.

    emit_layer_norm -> void name(i64 M, ptr out, ptr x, ptr gamma, ptr beta)   rows of `row_size` floats

Per row, three vector passes over the same row (a row of 512 floats is 2 KB, so passes two and three
read it from L1): the sum of x; the sums of d = x - mean and of d^2, in one pass; then
(x - center) / sqrt(var + eps) * gamma + beta, with center = mean + mean(d) and var = mean(d^2) -
mean(d)^2 (the corrected two-pass algorithm: a constant row's center is x itself and its variance
0 whatever rounding its sum met, so it gives beta, and nan with eps 0, as the formula does; a plain
mean missed x by an ulp in a third of such rows and gave -1.5e-4 or, with eps 0, -1). Otherwise as
the eager ops (`LayerNorm.forward`) round, but for that center: the variance from the
differences, not E[x^2] - E[x]^2 (inf where the squares overflow, as eager's); no multiply-add
fused into the formula; the quotient as the divide gives it -- so NaN and inf come out as eager's
do: a NaN or inf in a row makes the whole row NaN, a row whose squares overflow gives beta. The two
sums of pass two cost LayerNorm(512) over 256 rows 27.3-27.8 -> 28.4-31.1 us (benchmarks/RESULTS.md,
twentieth session). With the AVX-512 forms (`vecmath.has_avx512_forms`) the quotient is
`corrected_quotient`, whose two FMAs only reproduce the divide; elsewhere it is the divide. The sums
are trees log n deep, as softmax's (`loops.fold_run`): lanes split the row and are folded pairwise
at the end (the `sum` and `mean` kernels add in NumPy's own order instead: `reduce.run_sum`).

Rows go ROW_GROUP at a time, stage by stage (every row's mean, then every variance, then the
quotients): one row is a chain of two horizontal sums, a square root and a divide (about 150
cycles of latency), and emitted row after row the core overlapped little of it. With the corrected
quotient, LayerNorm(128) over 512 rows took 10.5 us against 17.5 (Intel Xeon; benchmarks/RESULTS.md,
tenth session). Groups of 1 / 2 / 4 / 8 rows took 18.2-19.3 / 14.7-15.2 / 13.3-13.5 / 13.0-13.3 us
(benchmarks/bare_call.py layernorm:128 --batch 512 --set layer_norm.ROW_GROUP=G).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from llvmlite import ir

from . import vecmath
from .cgutils import F32, I32, define_once, element_ptr, for_range, i64, splat, splat_value, vector_constant
from .elementwise import declare_kernel, horizontal
from .loops import Chunk, fold_run, for_each_chunk, load_chunk, store_chunk

if TYPE_CHECKING:
    from .module import _Emitter

ROW_GROUP = 4


def emit_layer_norm(module: ir.Module, name: str, row_size: int, eps: float, width: int) -> ir.Function:
    if row_size < 1 or not eps >= 0:
        raise ValueError(f"layer_norm needs a row of at least 1 float and eps >= 0; got {row_size}, {eps}")
    fn = declare_kernel(module, name, 4)
    n_rows, out, x, gamma, beta = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    rows = _Rows(b, module, row_size, eps, width, out, x, gamma, beta)
    grouped = b.mul(b.sdiv(n_rows, i64(ROW_GROUP)), i64(ROW_GROUP))
    with for_range(b, 0, grouped, ROW_GROUP, name="rows") as group:
        rows.normalize([b.add(group.index, i64(r)) for r in range(ROW_GROUP)])
    with for_range(b, grouped, n_rows, name="row") as one:
        rows.normalize([one.index])
    b.ret_void()
    return fn


class _Rows:
    """The code normalizing a group of rows, stage by stage across the group."""

    def __init__(self, b: ir.IRBuilder, module: ir.Module, row_size: int, eps: float, width: int,
                 out: ir.Value, x: ir.Value, gamma: ir.Value, beta: ir.Value):
        self.b, self.module, self.row_size, self.eps, self.width = b, module, row_size, eps, width
        self.out, self.x, self.gamma, self.beta = out, x, gamma, beta
        self.zero = splat(-0.0, width)  # the additive identity, as the mean kernel's accumulators

    def row_mean(self, terms) -> ir.Value:
        """The scalar sum / row_size of the vectors `terms(chunk)` over a row."""
        b = self.b
        total = horizontal(b, b.fadd, fold_run(b, self.row_size, self.width, self.zero, terms, b.fadd))
        return b.fdiv(total, ir.Constant(F32, float(self.row_size)))

    def row_means(self, terms) -> tuple[ir.Value, ir.Value]:
        """The two scalar means of `terms(chunk)`, a pair of vectors, over a row in one pass: each
        pair joined into one vector of twice the width (two registers), folded as `row_mean` folds."""
        b, w = self.b, self.width
        halves = [vector_constant(ir.VectorType(I32, w), list(range(h * w, (h + 1) * w))) for h in (0, 1)]
        joined = vector_constant(ir.VectorType(I32, 2 * w), list(range(2 * w)))
        total = fold_run(b, self.row_size, w, splat(-0.0, 2 * w), lambda c: b.shuffle_vector(*terms(c), joined),
                         b.fadd)
        n = ir.Constant(F32, float(self.row_size))
        sums = [horizontal(b, b.fadd, b.shuffle_vector(total, total, half)) for half in halves]
        return b.fdiv(sums[0], n), b.fdiv(sums[1], n)

    def normalize(self, rows: list[ir.Value]) -> None:
        b, w = self.b, self.width
        bases = [b.mul(r, i64(self.row_size), flags=["nsw"]) for r in rows]

        def x_at(base: ir.Value):
            return lambda c: load_chunk(b, element_ptr(b, self.x, b.add(base, c.col)), c, fill=-0.0)

        means = [splat(self.row_mean(x_at(base)), w, b) for base in bases]

        def differences(base: ir.Value, mean: ir.Value):
            def terms(c: Chunk) -> tuple[ir.Value, ir.Value]:
                diff = b.fsub(x_at(base)(c), mean)
                pair = diff, b.fmul(diff, diff)
                # the tail's unread lanes add nothing
                return pair if c.mask is None else tuple(b.select(c.mask, v, self.zero) for v in pair)  # type: ignore
            return terms

        # The mean corrected by the mean of the differences (the corrected two-pass algorithm): in a
        # constant row the differences are all x - mean, a few units of x's last place and exact, so
        # the correction makes the center x itself and the variance 0, whatever rounding the sum met
        # (a plain mean is x only where the sum's order happens to round back to it: -1.5e-4 for
        # 5.402531 * 5 with eps 1e-5, where eager, whose NumPy sum rounded otherwise, gave beta).
        sqrt = define_once(self.module, "llvm.sqrt.f32", lambda name: ir.Function(
            self.module, ir.FunctionType(F32, [F32]), name))
        corrections, roots = [], []
        for base, mean in zip(bases, means, strict=True):
            c, mean_square = self.row_means(differences(base, mean))
            corrections.append(c)
            variance = b.fsub(mean_square, b.fmul(c, c))
            variance = b.select(b.fcmp_ordered("<", variance, ir.Constant(F32, 0.0)), ir.Constant(F32, 0.0), variance)
            # d^2 overflowed (|d| past 1.8e19): the variance is inf, as eager's, not inf - c^2 = nan
            infinite = b.fcmp_ordered("==", mean_square, ir.Constant(F32, math.inf))
            variance = b.select(infinite, mean_square, variance)
            roots.append(_plain_nan(b, b.call(sqrt, [b.fadd(variance, ir.Constant(F32, self.eps))])))
        means = [splat(_plain_nan(b, b.fadd(b.extract_element(mean, i64(0)), c)), w, b)
                 for mean, c in zip(means, corrections, strict=True)]

        quotients = self.corrected_quotients if vecmath.has_avx512_forms(self.module, means[0]) else self.divided
        for base, mean, root in zip(bases, means, roots, strict=True):
            quotient = quotients(root)

            def chunk(c: Chunk, base=base, mean=mean, quotient=quotient) -> None:
                scaled = quotient(b.fsub(x_at(base)(c), mean))
                g = load_chunk(b, element_ptr(b, self.gamma, c.col), c)
                shift = load_chunk(b, element_ptr(b, self.beta, c.col), c)
                store_chunk(b, b.fadd(b.fmul(scaled, g), shift), element_ptr(b, self.out, b.add(base, c.col)), c)
            for_each_chunk(b, self.row_size, w, chunk)

    def divided(self, root: ir.Value):
        """d -> d / root by the divide."""
        root_vector = splat(root, self.width, self.b)
        return lambda d: self.b.fdiv(d, root_vector)

    def corrected_quotients(self, root: ir.Value):
        """d -> d / root by `corrected_quotient`, the reciprocal of root divided once, here; a root
        of 0, inf or nan (a constant row with eps 0, an overflowed variance, a nan) takes d * (1 /
        root), exactly the divide."""
        b, w = self.b, self.width
        root_vector, inverse = splat(root, w, b), splat(b.fdiv(ir.Constant(F32, 1.0), root), w, b)
        regular = b.and_(b.fcmp_ordered(">", root, ir.Constant(F32, 0.0)),
                         b.fcmp_ordered("<", root, ir.Constant(F32, math.inf)))
        # a lane mask, not one i1: with a scalar condition LLVM branched around the correction in
        # every vector (measured 5-8 % slower); a mask is one blend
        lanes = splat_value(b, regular, ir.VectorType(ir.IntType(1), w))
        return lambda d: corrected_quotient(b, self.module, d, root_vector, inverse, lanes)


def _plain_nan(b: ir.IRBuilder, value: ir.Value) -> ir.Value:
    """value, or NumPy's NaN (0x7fc00000) where it is any NaN. A row's mean and root are NaN for a row
    holding NaN or opposite infinities, with a sign bit that depends on which NaN each sum met first:
    on the order LLVM gave the group's rows' scalar sums, which differs between a group of ROW_GROUP
    rows and a leftover row, so a row's NaN bits depended on its place in the batch and the threads."""
    return b.select(b.fcmp_unordered("uno", value, value), ir.Constant(F32, math.nan), value)


def corrected_quotient(b: ir.IRBuilder, module: ir.Module, d: ir.Value, root: ir.Value, inverse: ir.Value,
                       regular: ir.Value | None = None) -> ir.Value:
    """d / root for a finite nonzero root, from inverse = 1 / root rounded: q0 = d * inverse (within
    1.5 ulp), then q0 + (d - q0 root) * inverse with the residual from one FMA. That sum is within
    2**-46 of the quotient before its one rounding, so it rounds as the divide does but for
    quotients that close to a midpoint between floats (none showed in 4M; tests/codegen/
    test_layer_norm.py). Where |d| < 2**-100 the residual itself underflows and rounds: there the
    result is within one unit in the last place. Only with a fused FMA: a multiply and an add
    would leave the residual inexact. A divide per vector occupied the divider ~9 cycles (vdivps on
    a zmm, Intel Xeon; benchmarks/divide_cost.py), more than the rest of the row's work. The last
    FMA is taken negated, -(-r * inverse - q0), so that d = -0 gives -0 as the divide does (-0 + +0 would
    round to +0). Where `regular` (lane mask) is false, q0 itself: for a root of 0, inf or nan that is
    exactly the divide, where the correction would make nan."""
    q0 = b.fmul(d, inverse)
    residual = vecmath.fma(b, module, b.fneg(q0), root, d)
    corrected = b.fneg(vecmath.fma(b, module, b.fneg(residual), inverse, b.fneg(q0)))
    return corrected if regular is None else b.select(regular, corrected, q0)


def lower_layer_norm(e: _Emitter, n: str) -> None:
    x, gamma, beta = e.g.args(n)
    row = int(e.g.shape(x)[-1])
    eps = float(e.g.attrs(n)["eps"])
    fn = e.kernel(("layer_norm", row, eps, e.width), lambda name: emit_layer_norm(e.module, name, row, eps, e.width))
    e.call(fn, e.row_count(n, row), e.pointer(n), e.pointer(x), e.pointer(gamma), e.pointer(beta))
