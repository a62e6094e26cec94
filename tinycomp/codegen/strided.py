"""Elementwise kernels over strided operands: broadcasting between sample dimensions and transposes.

    void name(i64 M, ptr out, ptr op0, ptr op1, ...)     out[m, i...] = expr(op_k[m * b_k + sum i_j s_kj])

The output is contiguous, M samples of `dims`; operand k is read at batch stride b_k (0: shared by
every sample) and stride s_kj along output dimension j (0: broadcast). `layout` turns operand shapes
into these strides and merges dimensions the strides let run as one, so (N, 4, 64, 64) + (N, 1, 64, 64)
becomes two loops, the inner one 4096 long. The innermost loop runs `width`-lane vectors with one
masked tail when every operand's stride there is 0 or 1. An operand with another stride there (a
transpose) is read in square tiles turned in registers where it is contiguous along another output
dimension (`transpose_tiles.py`), and one element at a time otherwise (operands transposed along
different dimensions, or vectors of one lane).

This is the general path: `elementwise.py`'s kernels serve the common layouts (full rows, one row or
column broadcast) faster, and the lowering tries them first.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from llvmlite import ir

from .cgutils import element_ptr, for_range, i64
from .elementwise import check_expr, declare_kernel, evaluate
from .loops import Chunk, broadcast_load, for_each_chunk, load_chunk, step_offsets, store_chunk
from .transpose_tiles import emit_tiled, tile_buffer, tile_dim, tile_side


@dataclass(frozen=True)
class Strides:
    """How one operand is read: floats between samples, and per output dimension."""

    batch: int
    dims: tuple[int, ...]


def contiguous_strides(shape: Sequence[int]) -> tuple[int, ...]:
    out, step = [], 1
    for d in reversed(shape):
        out.append(step)
        step *= d
    return tuple(reversed(out))


def whole(dims: Sequence[int], batched: bool) -> Strides:
    """How a value of sample `dims` laid out contiguously is read: samples one after another."""
    return Strides(math.prod(dims) if batched else 0, contiguous_strides(dims))


def sample_dims(shape: tuple) -> tuple[int, ...]:
    """The dimensions of one sample: the shape without its leading batch dimension."""
    return tuple(shape[1:]) if shape[:1] == (None,) else tuple(shape)


def broadcast_strides(operand: tuple, out: tuple) -> Strides:
    """Strides that read `operand` broadcast (NumPy rules) to the shape `out` (both may be batched)."""
    batched = operand[:1] == (None,)
    own = sample_dims(operand)
    dims = sample_dims(out)
    own_strides = contiguous_strides(own)
    strides = []
    for j in range(len(dims)):
        k = j - (len(dims) - len(own))
        strides.append(own_strides[k] if k >= 0 and own[k] == dims[j] and own[k] != 1 else 0)
    return Strides(math.prod(own) if batched else 0, tuple(strides))


def coalesce(dims: Sequence[int], operands: Sequence[Strides]) -> tuple[tuple[int, ...], list[Strides]]:
    """Drop size-1 dimensions and merge neighbours that every operand (and the contiguous output)
    walks as one run: fewer, longer loops. An all-size-1 sample keeps one dimension of size 1."""
    keep = [j for j, d in enumerate(dims) if d != 1] or [len(dims)]
    sizes = [dims[j] if j < len(dims) else 1 for j in keep]
    cols = [[op.dims[j] if j < len(dims) else 0 for j in keep] for op in operands]
    i = len(sizes) - 2
    while i >= 0:
        if all(c[i] == c[i + 1] * sizes[i + 1] for c in cols):
            sizes[i:i + 2] = [sizes[i] * sizes[i + 1]]
            for c in cols:
                c[i:i + 2] = [c[i + 1]]
        i -= 1
    return tuple(sizes), [Strides(op.batch, tuple(c)) for op, c in zip(operands, cols, strict=True)]


def emit_strided(module: ir.Module, name: str, expr: tuple, dims: tuple[int, ...], operands: Sequence[Strides],
                 width: int, out: Strides | None = None) -> ir.Function:
    """Define the kernel for `expr` over operands read with `operands`' strides (see the module doc),
    written contiguously, or with the strides `out` (a part of a concat's output)."""
    check_expr(expr, len(operands))
    written = [*operands, *([out] if out else [])]
    if not dims or any(d < 1 for d in dims) or any(len(op.dims) != len(dims) for op in written):
        raise ValueError(f"strided kernel needs positive dims and one stride per dim; got {dims}, {written}")
    fn = declare_kernel(module, name, 1 + len(operands))
    n_rows, out_ptr, ptrs = fn.args[0], fn.args[1], list(fn.args[2:])
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    walked = [out or Strides(math.prod(dims), contiguous_strides(dims)), *operands]  # the output first
    vector = all(op.dims[-1] in (0, 1) for op in operands) and walked[0].dims[-1] == 1
    tiled = None if vector or out else tile_dim(dims, operands, width)
    side = tile_side(dims, tiled, width) if tiled is not None else width
    tile = tile_buffer(b, operands, side) if tiled is not None else None

    def innermost(at: list[ir.Value]) -> None:
        _inner_loop(b, expr, dims[-1], width if vector else 1, (out_ptr, walked[0].dims[-1], at[0]),
                    [(p, op.dims[-1], x) for p, op, x in zip(ptrs, operands, at[1:], strict=True)])

    with for_range(b, 0, n_rows, name="m") as loop:
        m = loop.index
        at = [b.mul(m, i64(op.batch), flags=["nsw"]) for op in walked]
        if tiled is None:
            nest_loops(b, dims[:-1], [op.dims for op in walked], at, innermost)
        else:
            emit_tiled(b, expr, dims, walked, tiled, side, [out_ptr, *ptrs], at, tile)
    b.ret_void()
    return fn


def nest_loops(b: ir.IRBuilder, sizes: Sequence[int], strides: Sequence[Sequence[int]], at: list[ir.Value],
               body: Callable[[list[ir.Value]], None], level: int = 0) -> None:
    """Nested loops over `sizes`, carrying one offset per strided array (`at` + index * stride at
    each level); `body(offsets)` runs innermost."""
    if level == len(sizes):
        body(at)
        return
    with for_range(b, 0, sizes[level], name=f"d{level}") as loop:
        nest_loops(b, sizes, strides, step_offsets(b, at, strides, level, loop.index), body, level + 1)


def _inner_loop(b: ir.IRBuilder, expr: tuple, inner: int, width: int, out: tuple[ir.Value, int, ir.Value],
                operands: list[tuple[ir.Value, int, ir.Value]]) -> None:
    """The innermost dimension in chunks of `width` (stride 0 or 1 everywhere, the output's 1) or of 1
    (any stride). `out` and each operand: (pointer, stride along the dimension, offset)."""
    out_ptr, out_stride, out_at = out

    def chunk_body(chunk: Chunk) -> None:
        loaded: dict[int, ir.Value] = {}

        def leaf(i: int) -> ir.Value:
            if i not in loaded:
                ptr, stride, base = operands[i]
                if stride == 0:
                    loaded[i] = broadcast_load(b, element_ptr(b, ptr, base), chunk.width)
                else:
                    col = chunk.col if stride == 1 else b.mul(chunk.col, i64(stride), flags=["nsw"])
                    loaded[i] = load_chunk(b, element_ptr(b, ptr, b.add(base, col)), chunk)
            return loaded[i]

        col = chunk.col if out_stride == 1 else b.mul(chunk.col, i64(out_stride), flags=["nsw"])
        store_chunk(b, evaluate(b, expr, leaf, chunk.width), element_ptr(b, out_ptr, b.add(out_at, col)), chunk)

    for_each_chunk(b, inner, width, chunk_body)
