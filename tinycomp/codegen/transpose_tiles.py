"""The strided kernels whose operands cross the output's rows (a transpose), one square tile at a time.

A transposed operand is contiguous along some output dimension d and strided along the output's
last one, so reading it along an output row takes one cache line per element and one element per
instruction. Here the output is walked in `width` x `width` tiles over (d, last): each transposed
operand's tile is read as `width` vectors along d (contiguous), turned in registers by
`transpose_square` (log2(width) rounds of two-input shuffles) and kept in a tile on the stack; the
tile's rows are then computed as vectors, the other operands read as the row kernels read them
(stride 1 along the row, or 0: one value broadcast). Tiles at the end of d and of the last dimension
load and store under masks, so every size runs the same code and no lane touches memory outside
the arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from llvmlite import ir

from .cgutils import I32, element_ptr, for_range, i64, vector_constant, vector_type
from .elementwise import evaluate
from .loops import Chunk, broadcast_load, for_each_chunk, load_chunk, step_offsets, store_chunk

if TYPE_CHECKING:
    from .strided import Strides


def tile_dim(dims: tuple[int, ...], operands: Sequence[Strides], width: int) -> int | None:
    """The output dimension d (not the last) along which every operand read with a stride other than
    0 or 1 along the last dimension is contiguous: the tiles' other side. None where the tiles do not
    apply (no such dimension, or vectors of one lane or of a width that is not a power of two)."""
    crossing = [op for op in operands if op.dims[-1] not in (0, 1)]
    if width < 2 or width & (width - 1) or not crossing:
        return None
    return next((d for d in range(len(dims) - 1) if all(op.dims[d] == 1 for op in crossing)), None)


def tile_side(dims: tuple[int, ...], d: int, width: int) -> int:
    """The tiles' side: `width`, or the least power of two (at least 2) that holds the shorter of the
    two tiled dimensions where that one is shorter than a vector -- (64, 8) tiles 8 x 8, not 16 x 16
    half empty."""
    short = min(dims[d], dims[-1])
    return width if short >= width else max(2, 1 << (short - 1).bit_length())


def transpose_square(b: ir.IRBuilder, rows: Sequence[ir.Value]) -> list[ir.Value]:
    """The transpose of the n x n matrix whose rows are the n-lane vectors `rows` (n a power of two).

    Round h = n/2, n/4, ..., 1 swaps the off-diagonal h x h blocks of every 2h x 2h block: row i (in
    the upper half of its block) takes lanes j with j mod 2h >= h from row i + h's lane j - h, and row
    i + h takes lanes j mod 2h < h from row i's lane j + h. After the last round every element has
    moved from (i, j) to (j, i). One shuffle per row and round."""
    n = len(rows)
    out = list(rows)
    h = n // 2
    while h:
        upper = _shuffle_mask([j if j % (2 * h) < h else n + j - h for j in range(n)])
        lower = _shuffle_mask([j + h if j % (2 * h) < h else n + j for j in range(n)])
        for i in (i for i in range(n) if i % (2 * h) < h):
            top, bottom = out[i], out[i + h]
            out[i], out[i + h] = b.shuffle_vector(top, bottom, upper), b.shuffle_vector(top, bottom, lower)
        h //= 2
    return out


def _shuffle_mask(lanes: list[int]) -> ir.Constant:
    return vector_constant(ir.VectorType(I32, len(lanes)), [ir.Constant(I32, j) for j in lanes])


def emit_tiled(b: ir.IRBuilder, expr: tuple, dims: tuple[int, ...], walked: Sequence[Strides], d: int, width: int,
               arrays: Sequence[ir.Value], at: list[ir.Value], tile: ir.Value) -> None:
    """One sample of a strided kernel in tiles over (d, last): `walked` and `arrays` are the output's
    strides and pointer first, then each operand's; `at` their offsets at the sample; `tile` the
    stack buffer of `tile_buffer`: `width` vectors per transposed operand."""
    last = len(dims) - 1
    out_row = walked[0].dims[d]  # floats between the output rows of a tile
    strides = [s.dims for s in walked]

    def walk(level: int, at: list[ir.Value], rows: Chunk | None) -> None:
        if level == last:
            assert rows is not None  # d < last
            for_each_chunk(b, dims[last], width, lambda cols: one_tile(at, rows, cols))
        elif level == d:
            for_each_chunk(b, dims[d], width, lambda r: walk(level + 1, step_offsets(b, at, strides, level, r.col), r))
        else:
            with for_range(b, 0, dims[level], name=f"d{level}") as loop:
                walk(level + 1, step_offsets(b, at, strides, level, loop.index), rows)

    def one_tile(at: list[ir.Value], rows: Chunk, cols: Chunk) -> None:
        """The tile of rows `rows` (along d) and columns `cols`: transposed operands into `tile`, then
        the rows, each a vector over the columns."""
        n_rows = width if rows.mask is None else dims[d] % width
        n_cols = width if cols.mask is None else dims[last] % width
        zero = vector_constant(vector_type(width), None)
        turned: dict[int, int] = {}
        for k, (s, ptr, base) in enumerate(zip(walked[1:], arrays[1:], at[1:], strict=True)):
            if s.dims[-1] in (0, 1):
                continue
            columns = [load_chunk(b, element_ptr(b, ptr, b.add(base, b.mul(b.add(cols.col, i64(j)), i64(s.dims[-1])))),
                                  rows) if j < n_cols else zero for j in range(width)]
            turned[k] = len(turned) * width  # the vector of `tile` where its turned tile starts
            for i, row in enumerate(transpose_square(b, columns)[:n_rows]):
                b.store(row, b.gep(tile, [i64(0), i64(turned[k] + i)], inbounds=True))

        with for_range(b, 0, n_rows, name="trow", nonempty=True) as loop:
            i = loop.index

            def leaf(k: int) -> ir.Value:
                s, ptr, base = walked[1 + k], arrays[1 + k], at[1 + k]
                if k in turned:
                    return b.load(b.gep(tile, [i64(0), b.add(i, i64(turned[k]), flags=["nsw"])], inbounds=True))
                row = b.add(base, b.mul(i, i64(s.dims[d]), flags=["nsw"]), flags=["nsw"])
                if s.dims[-1] == 0:
                    return broadcast_load(b, element_ptr(b, ptr, row), width)
                return load_chunk(b, element_ptr(b, ptr, b.add(row, cols.col)), cols)

            out_at = b.add(at[0], b.add(b.mul(i, i64(out_row), flags=["nsw"]), cols.col), flags=["nsw"])
            store_chunk(b, evaluate(b, expr, leaf, width), element_ptr(b, arrays[0], out_at), cols)

    walk(0, at, None)


def tile_buffer(b: ir.IRBuilder, operands: Sequence[Strides], width: int) -> ir.Value:
    """Stack room for one turned tile per transposed operand (allocated once, in the entry block)."""
    count = sum(op.dims[-1] not in (0, 1) for op in operands)
    return b.alloca(ir.ArrayType(vector_type(width), width * count), name="tile")

