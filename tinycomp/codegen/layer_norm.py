"""The `layer_norm` kernel (made by ir/passes/fuse_layer_norm.py): each row normalized while it is in L1.

    emit_layer_norm -> void name(i64 M, ptr out, ptr x, ptr gamma, ptr beta)   rows of `row_size` floats

Per row, three vector passes over the same row (a row of 512 floats is 2 KB, so passes two and three
read it from L1): the sum of x, the sum of (x - mean)^2, then (x - mean) / sqrt(var + eps) * gamma +
beta. These are the eager ops (`LayerNorm.forward`) in their order with their roundings -- the
variance from the squared differences, not E[x^2] - E[x]^2; the divide per element, not a multiply
by a reciprocal; no fused multiply-add -- so NaN and inf come out as eager's do: a NaN or inf in a
row makes the whole row NaN, and a constant row gives beta (0 / sqrt(eps)). The sums are trees log n
deep, as the `mean` kernel's (`loops.fold_run`): lanes split the row and are folded pairwise at the end.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llvmlite import ir

from . import vecmath
from .cgutils import F32, element_ptr, for_range, i64, splat
from .elementwise import declare_kernel, horizontal
from .loops import Chunk, fold_run, for_each_chunk, load_chunk, store_chunk

if TYPE_CHECKING:
    from .module import _Emitter


def emit_layer_norm(module: ir.Module, name: str, row_size: int, eps: float, width: int) -> ir.Function:
    if row_size < 1 or not eps >= 0:
        raise ValueError(f"layer_norm needs a row of at least 1 float and eps >= 0; got {row_size}, {eps}")
    fn = declare_kernel(module, name, 4)
    n_rows, out, x, gamma, beta = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    zero = splat(-0.0, width)  # the additive identity, as the mean kernel's accumulators

    def row_mean(total: ir.Value) -> ir.Value:
        """The vector of lanes sum / row_size from a vector of partial sums."""
        value = horizontal(b, lambda u, v: b.fadd(u, v), total)
        return splat(b.fdiv(value, ir.Constant(F32, float(row_size))), width, b)

    with for_range(b, 0, n_rows, name="row") as loop:
        base = b.mul(loop.index, i64(row_size), flags=["nsw"])

        def at(ptr: ir.Value, c: Chunk) -> ir.Value:
            return element_ptr(b, ptr, b.add(base, c.col))

        def x_chunk(c: Chunk) -> ir.Value:
            return load_chunk(b, at(x, c), c, fill=-0.0)

        mean = row_mean(fold_run(b, row_size, width, zero, x_chunk, b.fadd))

        def square(c: Chunk) -> ir.Value:
            diff = b.fsub(x_chunk(c), mean)
            sq = b.fmul(diff, diff)
            return sq if c.mask is None else b.select(c.mask, sq, zero)  # the tail's unread lanes add nothing

        variance = row_mean(fold_run(b, row_size, width, zero, square, b.fadd))
        root = vecmath.emit_sqrt(b, module, b.fadd(variance, splat(float(eps), width)))

        def normalize(c: Chunk) -> None:
            scaled = b.fdiv(b.fsub(x_chunk(c), mean), root)
            g = load_chunk(b, element_ptr(b, gamma, c.col), c)
            shift = load_chunk(b, element_ptr(b, beta, c.col), c)
            store_chunk(b, b.fadd(b.fmul(scaled, g), shift), at(out, c), c)

        for_each_chunk(b, row_size, width, normalize)
    b.ret_void()
    return fn


def lower_layer_norm(e: _Emitter, n: str) -> None:
    x, gamma, beta = e.g.args(n)
    row = int(e.g.shape(x)[-1])
    eps = float(e.g.attrs(n)["eps"])
    fn = e.kernel(("layer_norm", row, eps, e.width), lambda name: emit_layer_norm(e.module, name, row, eps, e.width))
    e.call(fn, e.row_count(n, row), e.pointer(n), e.pointer(x), e.pointer(gamma), e.pointer(beta))
