"""The fused attention kernel: per sample, head and block of query rows, scores, softmax and P @ V.

    void name(i64 M, ptr out, ptr q, ptr k, ptr v, ptr mask, ptr work)

q, k and v are read where the projections wrote them, rows of `*_row` floats (head h in columns
h*D..h*D+D), samples `*_batch` floats apart (0: shared by every sample); `out` is written
(M, Sq, H*Dv). Per sample and head the kernel first copies K's head transposed into `work`
(D rows of Sk keys, so a score row block is a register-blocked outer product, as in the GEMM
microkernels), then per block of ROWS query rows (the last block overlapping the one before):

1. scores: ROWS x (up to `vectors` vectors of keys: the GEMM's tile, 4 with 32 registers, 2 with
   16) accumulated over D with vector FMAs, then scaled (times or divided by `scale`) and, with a
   mask, the term added exactly as eager rounds it:
   fl(fl(1 - m) * mask_value), or m itself (or, from a masked_fill, `mask_fill` selected where m is
   nonzero, or zero); stored to a ROWS x Sk scratch block in `work`;
2. softmax along each row (the same operations, NaN and -inf handling as the softmax kernel, but
   exp(score - max) is +0 below `AttentionSpec.flush_below`, so that no probability is subnormal): when
   every key fits one register tile (Sk <= 64 with 16 lanes) right on the tile before it is stored,
   the block's rows stage by stage together (`elementwise.softmax_rows_in_registers`) so their long
   dependency chains overlap; otherwise row by row in place on the stored block
   (`elementwise.softmax_row`);
3. out rows = P @ V_h, ROWS x (up to `vectors` vectors of Dv) accumulated over the keys.

So the whole (N, H, Sq, Sk) score tensor never exists: one row block of it lives in L1. Every
sample runs on its own, so the runtime splits the batch across threads as for any kernel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llvmlite import ir

from ..ir.graph import Graph
from ..ir.shapes import attention_dims
from . import vecmath
from .cgutils import (
    F32,
    I64,
    PTR,
    declare_vector_intrinsic,
    element_ptr,
    for_range,
    i64,
    internal_kernel,
    lanes_below,
    masked_load,
    masked_store,
    splat,
    vector_constant,
    zeros,
)
from .elementwise import NEG_INF, softmax_row, softmax_rows_in_registers
from .gemm import tile_vectors
from .loops import Chunk, broadcast_load
from .lower_tensor import samples
from .scratch import columns_read_in_place
from .strided import broadcast_strides

if TYPE_CHECKING:
    from .module import _Emitter

ROWS = 6  # query rows per block: with `gemm.tile_vectors` vectors per row, the GEMM's register tile


@dataclass(frozen=True)
class AttentionSpec:
    """Everything static about one attention node's kernel (also its kernel-cache key)."""

    heads: int
    sq: int
    sk: int
    d: int
    dv: int
    q_row: int
    k_row: int
    v_row: int
    q_batch: int
    k_batch: int
    v_batch: int
    mask: tuple[int, int, int, int] | None  # floats between samples, heads, query rows, keys (0: broadcast)
    scale: float
    divide: bool
    mask_value: float | None
    width: int
    vectors: int  # vectors of keys (or of value columns) per row of a register tile
    mask_fill: float | None = None  # instead of a term: this number where the mask is nonzero (or zero)
    fill_at_zero: bool = False

    @property
    def padded_sk(self) -> int:
        """Floats per row of the transposed K and of the score block: Sk rounded up to whole vectors."""
        return -(-self.sk // self.width) * self.width

    @property
    def work_floats(self) -> int:
        return (self.d + ROWS) * self.padded_sk

    @property
    def flush_below(self) -> float:
        """Where exp(score - row max) is taken as +0 (`softmax_rows_in_registers`): below
        2**-100 Sk. A row's sum of exps is at most Sk (each at most 1), so every probability left
        is at least 2**-100, and P @ V's products and sums stay normal for any |v| above 2**-26:
        on Intel cores every FMA that rounds into the subnormals or reads one takes a microcode
        assist (the block with scores 36 x wider ran 2.95 x as long: benchmarks/tiny_results.py,
        its block table). A flushed probability is
        below 2**-100 Sk where the largest is at least 1 / Sk: P @ V changes by less than
        2**-100 Sk**2 max|v|, and only heads whose |v| stays below FLUSH_V_BELOW flush
        (`_flush_threshold`). Past FLUSH_SEQ_CAP keys the threshold stops growing with Sk (the
        change would pass the parity rule's 1e-6 from about 2**20 keys: a fuzzer's 0 for 1.2e-6 at
        1.2 million); the probabilities left may then be subnormal, at an assist each."""
        return math.log(2.0**-100 * min(max(self.sk, 1), FLUSH_SEQ_CAP))


def emit_attention(module: ir.Module, name: str, spec: AttentionSpec) -> ir.Function:
    fn = internal_kernel(module, name, [("M", I64), ("out", PTR), ("q", PTR), ("k", PTR), ("v", PTR),
                                        ("mask", PTR), ("work", PTR)])
    n_rows, out, q, k, v, mask, work = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    kt = work
    scores = element_ptr(b, work, spec.d * spec.padded_sk)
    out_row = spec.heads * spec.dv
    with for_range(b, 0, n_rows, name="n") as sample:
        n = sample.index

        def at(base: ir.Value, batch: int) -> ir.Value:
            return element_ptr(b, base, b.mul(n, i64(batch))) if batch else base

        qn, kn, vn = at(q, spec.q_batch), at(k, spec.k_batch), at(v, spec.v_batch)
        on = at(out, spec.sq * out_row)
        mn = at(mask, spec.mask[0]) if spec.mask else mask
        with for_range(b, 0, spec.heads, name="h") as head:
            h = head.index
            qh = element_ptr(b, qn, b.mul(h, i64(spec.d)))
            kh = element_ptr(b, kn, b.mul(h, i64(spec.d)))
            vh = element_ptr(b, vn, b.mul(h, i64(spec.dv)))
            oh = element_ptr(b, on, b.mul(h, i64(spec.dv)))
            mh = element_ptr(b, mn, b.mul(h, i64(spec.mask[1]))) if spec.mask else mn
            _transpose_keys(b, spec, kh, kt)
            block = _Block(b, module, spec, qh, kt, vh, oh, mh, scores, _flush_threshold(b, module, spec, vh))
            # One block shape only (each is a lot of code to compile): the last block overlaps the one
            # before it, recomputing a few rows bit for bit, instead of a second, shorter variant.
            rows = min(ROWS, spec.sq)
            with for_range(b, 0, spec.sq, ROWS, name="r0") as blocks:
                last = i64(spec.sq - rows)
                block.emit(b.select(b.icmp_signed(">", blocks.index, last), last, blocks.index), rows)
    b.ret_void()
    return fn


TERMS_PER_SUM = 32  # `_Block.tile` sums runs of this many terms from zero, then adds them up
FLUSH_V_BELOW = 2.0**40  # V of a head whose probabilities are flushed is smaller than this (`_flush_threshold`)
FLUSH_SEQ_CAP = 1 << 15  # keys past which the flush threshold stays (`AttentionSpec.flush_below`)


def _flush_threshold(b: ir.IRBuilder, module: ir.Module, spec: AttentionSpec, vh: ir.Value) -> ir.Value:
    """Where this head's exp(score - max) is taken as +0, as a vector: `spec.flush_below`, unless
    the head's V holds a value of magnitude FLUSH_V_BELOW or more (an infinity included). A flushed
    probability is below 2**-100 min(Sk, FLUSH_SEQ_CAP), so with |v| < 2**40 P @ V moves by less
    than Sk min(Sk, 2**15) 2**-60: under 2**-36 for Sk up to 4096, 2**-20 (the parity rule's
    absolute slack) up to 2**25 keys. A larger v could make a
    tiny probability count (e**-80 * 3e38 = 5e3: a fuzzer's case), and an infinite one gives
    0 * inf = NaN where eager's tiny probability gives +-inf; such a head keeps every exp eager keeps
    (EXP_ZERO_BELOW, its subnormals at the assists they cost). One pass over V per sample and head:
    a compare and an or per vector, against the 2 Sq Sk (D + Dv) FLOPs of the head."""
    w = spec.width
    mask_type = ir.VectorType(ir.IntType(1), w)
    chunks = _groups(spec.dv, w, 1)
    with for_range(b, 0, spec.sk, name="vkey", carry=[zeros(mask_type)], nonempty=True) as key:
        row = element_ptr(b, vh, b.mul(key.index, i64(spec.v_row)))
        found = key.carried[0]
        for c0, _, lanes in chunks:
            v = masked_load(b, element_ptr(b, row, c0), _tail_mask(w, lanes), width=w)
            found = b.or_(found, b.fcmp_ordered(">=", vecmath.emit_abs(b, module, v), splat(FLUSH_V_BELOW, w)))
        key.carry(found)
    large = vecmath.any_lane(b, key.results[0])
    return splat(b.select(large, ir.Constant(F32, vecmath.EXP_ZERO_BELOW), ir.Constant(F32, spec.flush_below)),
                 w, b)


def _tail_mask(width: int, lanes: int) -> ir.Value | None:
    return None if lanes == width else lanes_below(width, lanes)


def _transpose_keys(b: ir.IRBuilder, spec: AttentionSpec, kh: ir.Value, kt: ir.Value) -> None:
    """kt[d, key] = K_h[key, d]: the head's keys as D rows of padded_sk floats. Whole width x width
    squares go through registers (`transpose_square`: loads, shuffles, stores); the keys and dims
    left over one element at a time."""
    w = spec.width
    keys, dims = spec.sk - spec.sk % w, spec.d - spec.d % w
    if keys and dims:
        with for_range(b, 0, keys, w, name="kblk", nonempty=True) as kb, \
                for_range(b, 0, dims, w, name="dblk", nonempty=True) as db:
            src = element_ptr(b, kh, b.add(b.mul(kb.index, i64(spec.k_row)), db.index))
            rows = [masked_load(b, element_ptr(b, src, i * spec.k_row), None, width=w) for i in range(w)]
            dst = element_ptr(b, kt, b.add(b.mul(db.index, i64(spec.padded_sk)), kb.index))
            for j, column in enumerate(transpose_square(b, rows)):
                masked_store(b, column, element_ptr(b, dst, j * spec.padded_sk), None)
    for key_range, dim_range in (((0, keys), (dims, spec.d)), ((keys, spec.sk), (0, spec.d))):
        if key_range[0] < key_range[1] and dim_range[0] < dim_range[1]:
            with for_range(b, *key_range, name="key", nonempty=True) as key, \
                    for_range(b, *dim_range, name="kd", nonempty=True) as dim:
                value = b.load(element_ptr(b, kh, b.add(b.mul(key.index, i64(spec.k_row)), dim.index)), typ=F32)
                b.store(value, element_ptr(b, kt, b.add(b.mul(dim.index, i64(spec.padded_sk)), key.index)))


def transpose_square(b: ir.IRBuilder, rows: list[ir.Value]) -> list[ir.Value]:
    """The columns of the square whose rows are `rows` (width vectors of width lanes): log2(width)
    stages, each swapping the off-diagonal s x s blocks of rows i and i + s with two shuffles."""
    w = len(rows)
    rows = list(rows)
    mask_type = ir.VectorType(ir.IntType(32), w)
    s = w // 2
    while s:
        low = vector_constant(mask_type, [j if not j & s else w + j - s for j in range(w)])
        high = vector_constant(mask_type, [j + s if not j & s else w + j for j in range(w)])
        for i in range(w):
            if not i & s:
                a, c = rows[i], rows[i + s]
                rows[i], rows[i + s] = b.shuffle_vector(a, c, low), b.shuffle_vector(a, c, high)
        s //= 2
    return rows


def _groups(size: int, width: int, per_tile: int) -> list[tuple[int, int, int]]:
    """(first column, vectors, lanes of the last vector) of the register tiles across `size` columns,
    `per_tile` vectors each."""
    step = per_tile * width
    out = []
    for c0 in range(0, size, step):
        cols = min(step, size - c0)
        vectors = -(-cols // width)
        out.append((c0, vectors, cols - (vectors - 1) * width))
    return out


class _Block:
    """The code of one block of `rows` query rows (rows static: full blocks, then the remainder)."""

    def __init__(self, b: ir.IRBuilder, module: ir.Module, spec: AttentionSpec, qh: ir.Value, kt: ir.Value,
                 vh: ir.Value, oh: ir.Value, mh: ir.Value, scores: ir.Value, flush_below: ir.Value):
        self.b, self.module, self.spec, self.flush_below = b, module, spec, flush_below
        self.qh, self.kt, self.vh, self.oh, self.mh, self.scores = qh, kt, vh, oh, mh, scores
        self.fma = declare_vector_intrinsic(module, "fma", spec.width, 3)

    def mask_of(self, lanes: int) -> ir.Value | None:
        return _tail_mask(self.spec.width, lanes)

    def emit(self, r0: ir.Value, rows: int) -> None:
        b, w, spec = self.b, self.spec.width, self.spec
        groups = _groups(spec.sk, w, spec.vectors)
        if len(groups) == 1:  # every key in one register tile: softmax the scores right there
            self.score_tile(r0, rows, *groups[0], softmax=True)
        elif groups:  # (no keys: no scores, and P @ V is zeros)
            # the whole tiles in one loop (unrolled, the code grew with the keys: a minute of code
            # generation for a million), the last, partial one after it
            whole = [g for g in groups if g[1:] == (spec.vectors, w)]
            step = spec.vectors * w
            if len(whole) > 1:
                with for_range(b, 0, len(whole) * step, step, name="tile", nonempty=True) as tile:
                    self.score_tile(r0, rows, tile.index, spec.vectors, w)
                groups = groups[len(whole):]
            for c0, vectors, lanes in groups:
                self.score_tile(r0, rows, c0, vectors, lanes)
            with for_range(b, 0, rows, name="row", nonempty=True) as r:
                row = element_ptr(b, self.scores, b.mul(r.index, i64(spec.padded_sk)))

                def in_row(c: Chunk) -> ir.Value:
                    return element_ptr(b, row, c.col)

                softmax_row(b, self.module, spec.sk, w, in_row, in_row, self.flush_below)  # in place
        for c0, vectors, lanes in _groups(spec.dv, w, spec.vectors):
            self.value_tile(r0, rows, c0, vectors, lanes)

    def tile(self, count: int, scalars: list[ir.Value], vectors_at: ir.Value, stride: int, vectors: int,
             last: ir.Value | None) -> list[list[ir.Value]]:
        """acc[r][j] = sum over i < count of scalars[r][i] * (vector j of the row at vectors_at + i*stride):
        the accumulators and the row pointer carried through the loop, as in the GEMM microkernels.
        Over more than TERMS_PER_SUM terms, each run of that many is summed from zero and then added
        to the total: P @ V's terms (weights >= 0 times values often of one sign) add their rounding
        errors up rather than at random, so one chain over 1,000 keys was 3-12 x eager's (BLAS's
        blocked) error and failed the parity rule (a hunt's case: uniform weights over V = 123)."""
        b, w = self.b, self.spec.width
        init = [zeros(ir.VectorType(F32, w))] * (len(scalars) * vectors)
        if count == 0:
            return [init[r * vectors:(r + 1) * vectors] for r in range(len(scalars))]
        if count <= TERMS_PER_SUM:
            acc = self.partial_sums(0, count, scalars, vectors_at, stride, vectors, last, init)
        else:
            with for_range(b, 0, count, TERMS_PER_SUM, name="run", carry=init, nonempty=True) as run:
                end = b.select(b.icmp_signed("<", i64(count - TERMS_PER_SUM), run.index), i64(count),
                               b.add(run.index, i64(TERMS_PER_SUM)))
                at = element_ptr(b, vectors_at, b.mul(run.index, i64(stride)))
                part = self.partial_sums(run.index, end, scalars, at, stride, vectors, last, init)
                run.carry(*(b.fadd(total, p) for total, p in zip(run.carried, part, strict=True)))
            acc = run.results
        return [acc[r * vectors:(r + 1) * vectors] for r in range(len(scalars))]

    def partial_sums(self, start: ir.Value | int, stop: ir.Value | int, scalars: list[ir.Value],
                     vectors_at: ir.Value, stride: int, vectors: int, last: ir.Value | None,
                     init: list[ir.Value]) -> list[ir.Value]:
        """The terms start <= i < stop of `tile`'s sums, from `init`, one FMA chain per accumulator."""
        b, w = self.b, self.spec.width
        with for_range(b, start, stop, name="t", carry=[vectors_at, *init], nonempty=True) as loop:
            at, *acc = loop.carried
            loaded = [masked_load(b, element_ptr(b, at, j * w), last if j == vectors - 1 else None, width=w)
                      for j in range(vectors)]
            new = []
            for r, row in enumerate(scalars):
                s = broadcast_load(b, element_ptr(b, row, loop.index), w)
                new += [b.call(self.fma, [s, loaded[j], acc[r * vectors + j]]) for j in range(vectors)]
            loop.carry(element_ptr(b, at, stride), *new)
        return list(loop.results[1:])

    def score_tile(self, r0: ir.Value, rows: int, c0: int | ir.Value, vectors: int, lanes: int,
                   softmax: bool = False) -> None:
        """Scores of `rows` rows x `vectors` vectors of keys from c0 (a run-time value in the loop
        over whole tiles), scaled and masked, stored to the scratch block; with `softmax` (the tile
        holds every key) their softmax instead, taken in registers: the rows in flight together, no
        store and reload of the scores in between."""
        b, spec, w = self.b, self.spec, self.spec.width
        c0 = i64(c0) if isinstance(c0, int) else c0
        last = self.mask_of(lanes)
        queries = [element_ptr(b, self.qh, b.mul(b.add(r0, i64(r)), i64(spec.q_row))) for r in range(rows)]
        acc = self.tile(spec.d, queries, element_ptr(b, self.kt, c0), spec.padded_sk, vectors, last)
        scale = splat(spec.scale, w)
        tile: list[list[ir.Value]] = []
        for r in range(rows):
            tile.append([])
            for j in range(vectors):
                s = b.fdiv(acc[r][j], scale) if spec.divide else b.fmul(acc[r][j], scale)
                if spec.mask:
                    s = self.masked(s, b.add(r0, i64(r)), b.add(c0, i64(j * w)), lanes if j == vectors - 1 else w)
                tile[-1].append(s)
        if softmax:
            if last is not None:  # keys past Sk: -inf, as softmax_row loads them
                for row in tile:
                    row[-1] = b.select(last, row[-1], splat(NEG_INF, w))
            tile = softmax_rows_in_registers(b, self.module, w, tile, self.flush_below)
        for r, row in enumerate(tile):
            for j, s in enumerate(row):
                masked_store(b, s, element_ptr(b, self.scores, b.add(c0, i64(r * spec.padded_sk + j * w))),
                             last if j == vectors - 1 else None)

    def masked(self, s: ir.Value, row: ir.Value, col: ir.Value, lanes: int) -> ir.Value:
        """Scores s at (row, col..col+width) masked as eager does: + fl(fl(1 - m) * mask_value), + m, or
        mask_fill where m != 0 (where m == 0 with fill_at_zero; a NaN m is nonzero, as in `where`);
        `lanes` of them real keys."""
        b, spec, w = self.b, self.spec, self.spec.width
        m = self.mask_at(row, col, lanes)
        if spec.mask_fill is None:
            return b.fadd(s, m if spec.mask_value is None else
                          b.fmul(b.fsub(splat(1.0, w), m), splat(spec.mask_value, w)))
        nonzero = b.fcmp_unordered("!=", m, splat(0.0, w))
        fill = splat(spec.mask_fill, w)
        return b.select(nonzero, s, fill) if spec.fill_at_zero else b.select(nonzero, fill, s)

    def mask_at(self, row: ir.Value, col: ir.Value, lanes: int) -> ir.Value:
        """The mask's values at (row, col..col+width), `lanes` of them real keys."""
        b, spec, w = self.b, self.spec, self.spec.width
        _, _, row_stride, key_stride = spec.mask  # type: ignore[misc]
        at = element_ptr(b, self.mh, b.add(b.mul(row, i64(row_stride)), b.mul(col, i64(key_stride))))
        if key_stride:  # lanes past Sk read nothing: their scores are never stored
            m = masked_load(b, at, self.mask_of(lanes), width=w)
        else:
            m = broadcast_load(b, at, w)
        return m

    def value_tile(self, r0: ir.Value, rows: int, c0: int, vectors: int, lanes: int) -> None:
        b, spec, w = self.b, self.spec, self.spec.width
        last = self.mask_of(lanes)
        weights = [element_ptr(b, self.scores, r * spec.padded_sk) for r in range(rows)]
        acc = self.tile(spec.sk, weights, element_ptr(b, self.vh, c0), spec.v_row, vectors, last)
        out_row = spec.heads * spec.dv
        for r in range(rows):
            at = element_ptr(b, self.oh, b.add(b.mul(b.add(r0, i64(r)), i64(out_row)), i64(c0)))
            for j in range(vectors):
                masked_store(b, acc[r][j], element_ptr(b, at, j * w), last if j == vectors - 1 else None)


# ---------------------------------------------------------------- lowering an `attention` node

def attention_spec(g: Graph, n: str, width: int, registers: int) -> AttentionSpec:
    """The kernel's static layout for node n: operand strides from their shapes, the mask's broadcast."""
    q, k, v, *mask = g.args(n)
    attrs = g.attrs(n)
    lead, sq, sk, d, dv, heads = attention_dims(g.shape(q), g.shape(k), g.shape(v), attrs["heads"])

    def rows_and_batch(x: str) -> tuple[int, int]:
        """Floats between x's rows and between its samples where the kernel reads it: a slice of
        whole columns is read inside its operand's rows (`lower_attention` adds the first column)."""
        if columns_read_in_place(g, x) is not None:
            x = g.args(x)[0]
        shape = g.shape(x)
        return shape[-1], (shape[-2] * shape[-1] if len(shape) == 3 else 0)

    (q_row, q_batch), (k_row, k_batch), (v_row, v_batch) = map(rows_and_batch, (q, k, v))
    mask_strides = None
    if mask:
        st = broadcast_strides(tuple(g.shape(mask[0])), (*lead, heads, sq, sk))
        mask_strides = (st.batch, st.dims[0], st.dims[1], st.dims[2])
    mv, fill = attrs.get("mask_value"), attrs.get("mask_fill")
    return AttentionSpec(heads, sq, sk, d, dv, q_row, k_row, v_row, q_batch, k_batch, v_batch,
                         mask_strides, float(attrs.get("scale", 1.0)), bool(attrs.get("divide", False)),
                         None if mv is None else float(mv), width, tile_vectors(width, registers),
                         None if fill is None else float(fill), attrs.get("fill_at", "nonzero") == "zero")


def lower_attention(e: _Emitter, n: str) -> None:
    spec = attention_spec(e.g, n, e.width, e.registers)
    fn = e.kernel(("attention", spec), lambda name: emit_attention(e.module, name, spec))
    q, k, v, *mask = e.g.args(n)
    mask_ptr = e.pointer(mask[0]) if mask else ir.Constant(PTR, None)

    def operand(x: str) -> ir.Value:
        column = columns_read_in_place(e.g, x)
        return e.pointer(x) if column is None else element_ptr(e.b, e.pointer(x), column)

    e.call(fn, samples(e, n), e.pointer(n), operand(q), operand(k), operand(v), mask_ptr, e.pack_buffer())
