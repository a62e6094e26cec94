"""The training-mode dropout kernel: Philox-4x32-10 masks computed in vector registers.

    void name(i64 count, ptr out, ptr x, i64 first, i32 key0, i32 key1, i32 layer, i32 call)

out[e] = x[e] * (word(first + e) >= T ? scale : 0) for e in 0 .. count - 1, where word(i) is the
word of element i in `ir/philox.py`'s numbering (word i % 4 of Philox-4x32-10 at counter
(i // 4, layer, call)), T = keep_threshold(p) and scale = keep_scale(p). `first` is the element's
place in the whole batch (row * row size), so the mask is the same whichever rows a call covers.

Each step computes `width` Philox blocks at once (one per lane: the 32x32->64-bit products are
vector multiplies), which give the mask words of 4 * width consecutive elements; the words are
interleaved into element order with shuffles. Loads and stores are masked, so a call may start and
end anywhere inside a block.
"""

from __future__ import annotations

from llvmlite import ir

from ..ir.philox import PHILOX_M0, PHILOX_M1, PHILOX_W0, PHILOX_W1, ROUNDS, keep_scale, keep_threshold
from .cgutils import (
    F32,
    I32,
    I64,
    PTR,
    for_range,
    i64,
    internal_kernel,
    masked_load,
    masked_store,
    splat_value,
    vector_constant,
    vector_type,
)


def _i32(value: int) -> ir.Constant:
    """A 32-bit constant from its unsigned value (LLVM reads i32 literals as signed)."""
    value &= 0xFFFFFFFF
    return ir.Constant(I32, value - (1 << 32) if value >= 1 << 31 else value)


def _mulhilo(b: ir.IRBuilder, multiplier: int, c: ir.Value, width: int) -> tuple[ir.Value, ir.Value]:
    """(high, low) 32-bit halves of multiplier * c, lane by lane."""
    v64 = ir.VectorType(I64, width)
    product = b.mul(b.zext(c, v64), vector_constant(v64, ir.Constant(I64, multiplier)), flags=["nuw"])
    v32 = ir.VectorType(I32, width)
    return b.trunc(b.lshr(product, vector_constant(v64, ir.Constant(I64, 32))), v32), b.trunc(product, v32)


def emit_philox_rounds(b: ir.IRBuilder, counter: list[ir.Value], round_keys: list[tuple[ir.Value, ir.Value]],
                       width: int) -> list[ir.Value]:
    """Philox-4x32 on `width`-lane vectors of the four counter words; `round_keys` are the splatted
    (key0, key1) of each round (the key schedule is the same for every lane)."""
    c0, c1, c2, c3 = counter
    for k0, k1 in round_keys:
        hi0, lo0 = _mulhilo(b, PHILOX_M0, c0, width)
        hi1, lo1 = _mulhilo(b, PHILOX_M1, c2, width)
        c0, c1, c2, c3 = b.xor(b.xor(hi1, c1), k0), lo1, b.xor(b.xor(hi0, c3), k1), lo0
    return [c0, c1, c2, c3]


def _interleave(b: ir.IRBuilder, words: list[ir.Value], width: int) -> list[ir.Value]:
    """Four <width x i32> vectors of words 0..3 of blocks 0..width-1 -> four vectors of the
    4 * width words in element order (block-major: element 4 * block + word)."""
    def shuffle(u: ir.Value, v: ir.Value, lanes: list[int]) -> ir.Value:
        mask = vector_constant(ir.VectorType(I32, len(lanes)), [ir.Constant(I32, i) for i in lanes])
        return b.shuffle_vector(u, v, mask)

    n = width
    w01 = shuffle(words[0], words[1], [i // 2 + (n if i % 2 else 0) for i in range(2 * n)])
    w23 = shuffle(words[2], words[3], [i // 2 + (n if i % 2 else 0) for i in range(2 * n)])
    # element 4 * blk + w: pairs (w 0, 1) sit at 2 * blk in w01, pairs (w 2, 3) at 2 * blk in w23
    both = shuffle(w01, w23, [(2 * (i // 4) + i % 2) + (2 * n if i % 4 >= 2 else 0) for i in range(4 * n)])
    return [shuffle(both, both, list(range(j * n, (j + 1) * n))) for j in range(4)]


def emit_dropout(module: ir.Module, name: str, p: float, width: int) -> ir.Function:
    """Define the dropout kernel for keep probability 1 - p (0 < p < 1) on `width` lanes."""
    if not 0 < p < 1:
        raise ValueError(f"the dropout kernel needs 0 < p < 1; got p={p}")
    fn = internal_kernel(module, name, [("count", I64), ("out", PTR), ("x", PTR), ("first", I64),
                                        ("key0", I32), ("key1", I32), ("layer", I32), ("call", I32)])
    count, out, x, first, key0, key1, layer, call = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    v32, v64 = ir.VectorType(I32, width), ir.VectorType(I64, width)
    round_keys = []
    k0, k1 = key0, key1
    for r in range(ROUNDS):
        if r:
            k0, k1 = b.add(k0, _i32(PHILOX_W0)), b.add(k1, _i32(PHILOX_W1))
        round_keys.append((splat_value(b, k0, v32), splat_value(b, k1, v32)))
    layer_v, call_v = splat_value(b, layer, v32), splat_value(b, call, v32)
    lanes = vector_constant(v64, [ir.Constant(I64, i) for i in range(width)])
    threshold = vector_constant(v32, _i32(keep_threshold(p)))
    scale = vector_constant(vector_type(width), ir.Constant(F32, float(keep_scale(p))))
    zero = vector_constant(vector_type(width), ir.Constant(F32, 0.0))
    count_v = splat_value(b, count, v64)

    block0 = b.ashr(first, i64(2))
    block_end = b.ashr(b.add(b.add(first, count), i64(3)), i64(2))
    with for_range(b, block0, block_end, step=width, name="blk") as loop:
        blk = loop.index
        blocks = b.add(splat_value(b, blk, v64), lanes)
        counter = [b.trunc(blocks, v32), b.trunc(b.lshr(blocks, vector_constant(v64, ir.Constant(I64, 32))), v32),
                   layer_v, call_v]
        words = _interleave(b, emit_philox_rounds(b, counter, round_keys, width), width)
        base = b.sub(b.mul(blk, i64(4)), first)  # element offset of word 0 of this step's first block
        for j, w in enumerate(words):
            at = b.add(base, i64(j * width))
            where = b.add(splat_value(b, at, v64), lanes)
            valid = b.and_(b.icmp_signed(">=", where, vector_constant(v64, ir.Constant(I64, 0))),
                           b.icmp_signed("<", where, count_v))
            src = b.gep(x, [at], source_etype=F32)  # not inbounds: lanes before element 0 stay masked off
            dst = b.gep(out, [at], source_etype=F32)
            xv = masked_load(b, src, valid)
            keep = b.icmp_unsigned(">=", w, threshold)
            masked_store(b, b.fmul(xv, b.select(keep, scale, zero)), dst, valid)
    b.ret_void()
    return fn
