"""Register-blocked GEMM microkernels: an `mr x (nv * width)` tile of C kept in vector registers.

A microkernel computes, for one tile,

    C[0:mr, 0:cols] = act(A[0:mr, 0:K] @ B[0:K, 0:cols] + bias[0:cols])

where B row k starts at `b + k * ldb`. The same kernel serves packed panels (`ldb` = panel width)
and the weight matrix read in place (`ldb` = N), so the small-batch paths and the packed path share
code. The accumulators are values carried through the k-loop (`cgutils.for_range`): kernels are
compiled at speed level 0, where no mem2reg or unrolling would rescue loads and stores of an
alloca'd tile. The bias and activation are added by the shared epilogue (`gemm_epilogue.py`),
in registers before the tile is stored or in place after it.

Everything but the register tile itself is a run-time argument, so one kernel per (mr, nv) serves
every layer of a module: `K`, the strides, `cols` (1..nv*width real columns; lane masks built from
it keep loads and stores inside the row, and vectors wholly past it load nothing), `bias` (null for
none) and `flags` (bit 0: ReLU, for the plain and ReLU epilogues). Only the costly activations
(sigmoid, tanh, gelu) get finishing kernels of their own. Fewer distinct kernels is the main lever
on compile time.
"""

from __future__ import annotations

from dataclasses import dataclass

from llvmlite import ir

from .cgutils import (
    F32,
    I32,
    I64,
    PTR,
    column_masks,
    declare_vector_intrinsic,
    define_once,
    element_ptr,
    for_range,
    i64,
    if_then,
    index_min,
    internal_kernel,
    masked_load,
    merge_incoming,
    splat_value,
    vector_type,
    zeros,
)
from .gemm_epilogue import family_suffix, store_tile


@dataclass(frozen=True)
class TileShape:
    """`mr` rows by `nv` vectors of `width` lanes (`prefetch`: rows of B to prefetch ahead, 0 = off).

    Unless `exact`, loads of B and stores of C are masked to the run-time `cols`: a masked load
    cannot fold into the FMA, which costs the memory-bound one-row kernel ~8%, so a kernel is
    `exact` where the layer allows it (`gemm._exact_where_whole`): also less code to compile."""

    mr: int
    nv: int
    width: int
    prefetch: int = 0
    exact: bool = False  # every call has cols == nv * width: plain loads and stores, no masks
    chunk: int = 0  # sum K in chunks of this many rows of B (`_k_chunks`); 0: one sum in registers
    next_a: bool = False  # prefetch the next row tile's A where flag NEXT_A says so (`_k_run`)

    @property
    def nr(self) -> int:
        return self.nv * self.width

    def suffix(self) -> str:
        return (f"{self.mr}x{self.nv}" + (f"p{self.prefetch}" if self.prefetch else "") + ("x" if self.exact else "")
                + (f"c{self.chunk}" if self.chunk else "") + ("n" if self.next_a else ""))


# A's rows of a tile are addressed from every third row's pointer, the group's head: row 3g + j at
# head g plus j * lda floats, an x86 index register scaled by 4 or 8 (element_ptr with the multiply
# in the loop's own block, where instruction selection folds it). With one pointer per row, indexed
# by k, LLVM rebuilt the rows' addresses every step as a chain of adds (a lea and five adds a step
# in the 6 x 2 tile); the heads take one add a step each.
ROW_GROUP = 3


@dataclass(frozen=True)
class ARows:
    """The `mr` rows of A a tile reads: the group heads (`ROW_GROUP`) and A's row stride in floats."""

    heads: tuple[ir.Value, ...]
    lda: ir.Value

    @staticmethod
    def of(builder: ir.IRBuilder, a: ir.Value, lda: ir.Value, mr: int) -> ARows:
        return ARows(tuple(element_ptr(builder, a, builder.mul(lda, i64(g))) if g else a
                           for g in range(0, mr, ROW_GROUP)), lda)

    def row(self, builder: ir.IRBuilder, i: int) -> ir.Value:
        """Row i's pointer, emitted where it is used."""
        head, j = self.heads[i // ROW_GROUP], i % ROW_GROUP
        return element_ptr(builder, head, builder.mul(self.lda, i64(j))) if j else head

    def advanced(self, builder: ir.IRBuilder, by: ir.Value | int) -> ARows:
        return ARows(tuple(element_ptr(builder, h, by) for h in self.heads), self.lda)


def prefetch_for_read(builder: ir.IRBuilder, ptr: ir.Value, vectors: int, width: int) -> None:
    """Prefetch the `vectors` vectors of `width` floats from `ptr` for reading, into every cache level
    (`llvm.prefetch`, locality 3; one per vector, a cache line for 16 floats). The addresses may lie
    past the buffer's end (prefetches never fault), so their GEPs are not `inbounds`.

    With 8 lanes two vectors share a line where the row starts on one, but a weight matrix's rows
    need not: one prefetch per line instead (AMD Zen 3, `benchmarks/bare_call.py mlp --batch B` at
    128 / 512 / 2048 rows, the two revisions alternated four rounds) ran a median 1.15 x as long as
    one per vector (RESULTS.md, twenty-eighth session)."""
    module = builder.module
    fn = define_once(module, "llvm.prefetch.p0", lambda name: ir.Function(
        module, ir.FunctionType(ir.VoidType(), [PTR, I32, I32, I32]), name))
    for v in range(vectors):
        at = builder.gep(ptr, [i64(v * width)], source_etype=F32)
        builder.call(fn, [at, ir.Constant(I32, 0), ir.Constant(I32, 3), ir.Constant(I32, 1)])


def splat_f32(builder: ir.IRBuilder, value: ir.Value, width: int) -> ir.Value:
    return splat_value(builder, value, vector_type(width))


# The tile kernels' arguments: where A, B and C are, the columns, and the epilogue's bias and flags.
TILE_ARGS = (("K", I64), ("a", PTR), ("lda", I64), ("b", PTR), ("ldb", I64), ("c", PTR), ("ldc", I64), ("cols", I64),
             ("bias", PTR), ("flags", I64), ("res", PTR))


def tile_kernel(module: ir.Module, shape: TileShape, kind: str | None = None, residual: bool = False,
                accumulate: bool = False, plain_b: bool = False) -> ir.Function:
    """The kernel for one tile shape and epilogue, emitted once per module and shared by every layer.

    `void tile(i64 K, ptr a, i64 lda, ptr b, ldb, ptr c, i64 ldc, i64 cols, ptr bias, i64 flags,
    ptr res)` with a, c and res at the tile origin; all `mr` rows are real, `cols` in
    1..nv*width, K >= 1. With `kind` None it stores the raw A @ B tile (`bias`, `flags` and `res`
    unused), for `gemm_epilogue.epilogue_function` to finish. For the K-chunked in-place path
    (`gemm_driver._emit_chunked`) a raw kernel may add the tile to C where flag ACCUMULATE is set
    (`accumulate`), and read B with plain loads where flag WHOLE_B is, as the finishing kernels do
    (`plain_b`); only the layers that take that path get such kernels (compile time). With an epilogue family
    (`kernel_activation`), it stores act(A @ B + bias), + R where `residual` (R laid out as C at
    `res`), from registers (`gemm_epilogue.store_tile`). The driver gives the
    main row tiles, which do nearly all the work, the finishing kernels and the leftover rows the
    raw ones: each finishing kernel costs compile time (the kernels get the full code generator),
    so only the few that pay have one.
    """
    if kind is None:
        suffix = shape.suffix() + (".acc" if accumulate else "") + (".w" if plain_b else "")
    else:
        suffix, accumulate, plain_b = f"{shape.suffix()}.{family_suffix(kind, residual)}", False, True
    return define_once(module, f"tinycomp.gemm.tile{suffix}", lambda name: _emit_tile(
        module, name, shape, kind, residual and kind is not None, accumulate, plain_b))


def _emit_tile(module: ir.Module, name: str, shape: TileShape, kind: str | None, residual: bool,
               accumulate: bool, plain_b: bool) -> ir.Function:
    fn = internal_kernel(module, name, TILE_ARGS)
    K, a, lda, b, ldb, c, ldc, cols, bias, flags, res = fn.args
    builder = ir.IRBuilder(fn.append_basic_block("entry"))
    masks = None if shape.exact else column_masks(builder, cols, shape.nv, shape.width)

    def rows_of(base: ir.Value, ld: ir.Value) -> list[ir.Value]:
        """Where each of the tile's rows starts in a matrix at `base` with rows `ld` floats apart."""
        return [element_ptr(builder, base, builder.mul(i64(i), ld)) if i else base for i in range(shape.mr)]

    # the finishing kernels (the full row tiles) and `plain_b` ones read B in whole vectors where flag WHOLE_B says so
    whole_b = builder.icmp_signed("!=", builder.and_(flags, i64(WHOLE_B)), i64(0)) if plain_b and masks else None
    # where flag NEXT_A asks for it, a copy of the plain loop prefetches the next row tile's A
    next_a = None
    if shape.next_a and plain_b:
        next_a = (builder.icmp_signed("!=", builder.and_(flags, i64(NEXT_A)), i64(0)),
                  element_ptr(builder, a, builder.mul(lda, i64(shape.mr))))
    acc = _k_loop(builder, shape, K, ARows.of(builder, a, lda, shape.mr), b, ldb, masks, whole_b, next_a)
    c_rows = rows_of(c, ldc)
    if accumulate:
        add = builder.icmp_signed("!=", builder.and_(flags, i64(ACCUMULATE)), i64(0))
        acc = _plus_c(builder, acc, c_rows, masks, add)
    store_tile(builder, acc, c_rows, masks, bias, flags, kind, shape.width, rows_of(res, ldc) if residual else None)
    builder.ret_void()
    return fn


# Flag bit of the finishing tile kernels (besides the epilogue's bit 0, ReLU): every vector of B's
# rows may be read whole (`_k_loop`).
WHOLE_B = 16
# Flag bit of the accumulating raw tile kernels: add the tile to what C holds (the K-chunks before).
ACCUMULATE = 32
# Flag bit of the kernels with `TileShape.next_a`: prefetch the next row tile's A (`_k_run`), which
# lies right after the tile's own: the driver sets it only where A's rows are K floats apart.
NEXT_A = 64


def _plus_c(builder, tile: list[list[ir.Value]], c_rows: list[ir.Value], masks, add: ir.Value) -> list[list[ir.Value]]:
    """The tile plus C's values under it where `add` (an i1) is true, the tile itself otherwise: C
    is only read when it is added."""
    w = tile[0][0].type.count
    flat = [x for row in tile for x in row]
    with if_then(builder, add, carry=flat, name="acc") as branch:
        branch.carry(*[builder.fadd(masked_load(builder, element_ptr(builder, c_rows[i], v * w),
                                                masks[v] if masks else None, width=w), x)
                       for i, row in enumerate(tile) for v, x in enumerate(row)])
    merged = branch.results
    nv = len(tile[0])
    return [merged[i * nv:(i + 1) * nv] for i in range(len(tile))]


def _k_loop(builder, shape: TileShape, K, a_rows, b, ldb, masks, whole_b=None, next_a=None):
    """for k in 0..K (K >= 1): acc += A[:, k] (outer) B[k, :], the B row pointer and the tile
    carried through the loop (in chunks of `shape.chunk` rows of B where it is set: `_k_chunks`).
    Returns the tile as mr lists of nv vectors.

    Where `whole_b` (an i1) is true at run time, B's rows may be read in whole vectors (a packed
    panel, zero-padded; a panel of W in place as wide as the tile), and a second copy of the loop
    reads them with plain loads: on Intel cores a masked load also takes a slot on the two ports
    the FMAs issue to. 24 FMAs and 4 masked loads a step ran at 0.86 x the speed of the same loop
    with plain loads (one-off loop on a Sapphire Rapids-class Xeon); a 1024x1024 layer at 512 rows
    went from 7,270 to 5,960 us (RESULTS.md). Zen 4 runs masked loads on its load ports.

    The loop is not unrolled (measured as fast as 2x/4x unrolling, half the IR). The B row pointer
    advances by `ldb` each step. With `shape.prefetch`, each step also prefetches the B row that
    many rows ahead: when B is W read in place with rows a page apart, the hardware prefetchers
    do not follow the stream; on the Intel Xeon the full row tiles gained 5-15 % by it on panels
    that stream from L2 (`gemm.MAIN_PREFETCH_ROWS`). With `next_a` (an i1 and where the next
    row tile's A starts), where the i1 is true another copy of the plain loop also prefetches
    that tile's A (`_k_run`): the other copies keep the register its address takes (with the old
    per-row prefetch as one loop with a zero distance when not asked for, lnmlp at 256 rows ran
    1-2 % slower). Without `masks` (an exact tile) there is no masked copy: B is always read whole.
    """
    ahead = builder.mul(ldb, i64(shape.prefetch)) if shape.prefetch else None

    def loop(masks, a_next=None) -> list[ir.Value]:  # K >= 1: the driver never calls a kernel with K == 0
        if shape.chunk:
            return _k_chunks(builder, shape, K, a_rows, b, ldb, (ahead, a_next), masks)
        return _k_run(builder, shape, K, a_rows, b, ldb, (ahead, a_next), masks)[3]

    def plain() -> list[ir.Value]:  # B's rows read in whole vectors
        if next_a is None:
            return loop(None)
        inner = []
        with builder.if_else(next_a[0]) as (fetching, not_fetching):
            for branch, a_next in ((fetching, next_a[1]), (not_fetching, None)):
                with branch:
                    inner.append((loop(None, a_next), builder.block))
        return merge_incoming(builder, inner)

    if masks is None:
        acc = plain()
    elif whole_b is None:
        acc = loop(masks)
    else:
        ends = []
        with builder.if_else(whole_b) as (whole, masked):
            with whole:
                ends.append((plain(), builder.block))
            with masked:
                ends.append((loop(masks), builder.block))
        acc = merge_incoming(builder, ends)
    return [acc[i * shape.nv:(i + 1) * shape.nv] for i in range(shape.mr)]


def _k_run(builder, shape: TileShape, steps, a_rows: ARows, b, ldb, aheads, masks) -> tuple[
        ir.Value, ir.Value | None, ARows, list[ir.Value]]:
    """(the B row pointer after, the A prefetch pointer after or None, A's rows after, the mr * nv
    accumulators) of `steps` >= 1 steps from zero accumulators, B's row k at b + k * ldb, A's
    element k of row i at a_rows.row(i) + k, prefetching B `ahead` floats on and A from `a_next` on
    (`aheads`: either may be None).

    A's prefetch is for the next row tile, whose rows follow this tile's in memory (mr * K floats
    from `a_next`, where the driver asks for it: the first pass over A, `gemm_driver._panels`). One
    prefetch a step walks them mr floats a step, so the last line is asked for by the tile's last
    step. When the batch streams in from L3, the next tile's rows would otherwise each wait out its
    latency: the hardware prefetchers restart at every 4 KB page. On the Emerald Rapids Xeon
    (`benchmarks/bare_call.py`, processes alternated twice with the code before, which read each
    row block of a large batch in one sequential pass first instead), the reference MLP at batch
    2048 took 5,707 / 5,738 us at best against 5,941 / 5,952, at 8192 23.0 / 23.1 ms (medians)
    against 24.8 / 25.1; in one process against no prefetch, batch 512 and wide at 2048 0.99 x,
    lnmlp, the transformer block and wide at 256 1.00 +- 0.01. (That prefetch took one a step for
    each of the six rows, element k of each; the walk's one a step measured the same,
    `benchmarks/gemm_ab.py` on the reference MLP at batch 512 / 2048 / 8192: 0.99 / 1.00 / 1.00.)
    """
    ahead, a_next = aheads
    w, nv = shape.width, shape.nv
    fma = declare_vector_intrinsic(builder.module, "fma", w, 3)
    tile = [zeros(vector_type(w))] * (shape.mr * nv)
    walk = [] if a_next is None else [a_next]
    heads = len(a_rows.heads)
    with for_range(builder, 0, steps, name="k", carry=[b, *walk, *a_rows.heads, *tile], nonempty=True) as loop:
        b_row, *acc = loop.carried
        if walk:
            a_at, *acc = acc
            prefetch_for_read(builder, a_at, 1, w)
            walk = [builder.gep(a_at, [i64(shape.mr)], source_etype=F32)]
        rows, acc = ARows(tuple(acc[:heads]), a_rows.lda), acc[heads:]
        if ahead is not None:
            prefetch_for_read(builder, builder.gep(b_row, [ahead], source_etype=F32), nv, w)
        bvec = [masked_load(builder, element_ptr(builder, b_row, v * w), masks[v] if masks else None, width=w)
                for v in range(nv)]
        new = []
        for i in range(shape.mr):
            a_ik = splat_f32(builder, builder.load(rows.row(builder, i), typ=F32), w)
            new += [builder.call(fma, [a_ik, bvec[v], acc[i * nv + v]]) for v in range(nv)]
        loop.carry(builder.gep(b_row, [ldb], source_etype=F32, inbounds=True), *walk,
                   *rows.advanced(builder, 1).heads, *new)
    b_after, *acc = loop.results
    a_after = acc.pop(0) if walk else None
    return b_after, a_after, ARows(tuple(acc[:heads]), a_rows.lda), acc[heads:]


# Layers summing more than LONG_SUM_K products per output take tiles that sum in chunks of K_CHUNK:
# one sequential sum over K in a register grows an error of up to ~K ulps, where NumPy's BLAS sums
# in blocks of a few hundred. Whole-K sums failed the parity rule (twice NumPy's error) in 3 of 180
# cases at K = 1536 and 2048, in most from K = 4096 on, up to 10x NumPy's error at K = 32768
# (tests/codegen/test_gemm.py::test_long_sums_keep_to_the_parity_rule); none of 600 failed from
# K = 900 to 4096 with this threshold (one-off sweeps, RESULTS.md). Shorter sums keep the one loop:
# the chunked loop cost the block and lnmlp ~2 % even as one chunk (its running sums spill around
# the inner loop on every tile).
LONG_SUM_K = 1024
K_CHUNK = 512


def k_chunk(K: int) -> int:
    """The chunk a layer summing K products per output sums in (`TileShape.chunk`; 0: one loop)."""
    return K_CHUNK if K > LONG_SUM_K else 0


def _k_chunks(builder, shape: TileShape, K, a_rows: ARows, b, ldb, aheads, masks) -> list[ir.Value]:
    """The accumulators as the sum, in order, of `_k_run` over each chunk of `shape.chunk` rows of
    B; A's row group heads, the B row pointer, A's prefetch pointer (if any) and the running sums
    carried from chunk to chunk."""
    heads, sums = len(a_rows.heads), [zeros(vector_type(shape.width))] * (shape.mr * shape.nv)
    ahead, a_next = aheads
    walk = [] if a_next is None else [a_next]
    with for_range(builder, 0, K, shape.chunk, name="kc", carry=[b, *walk, *a_rows.heads, *sums],
                   nonempty=True) as chunk:
        b_row, *rest = chunk.carried
        a_at = rest.pop(0) if walk else None
        rows, sums = ARows(tuple(rest[:heads]), a_rows.lda), rest[heads:]
        left = builder.sub(K, chunk.index)
        steps = index_min(builder, left, i64(shape.chunk))
        b_row, a_at, rows, acc = _k_run(builder, shape, steps, rows, b_row, ldb, (ahead, a_at), masks)
        chunk.carry(b_row, *([a_at] if walk else []), *rows.heads,
                    *[builder.fadd(s, a) for s, a in zip(sums, acc, strict=True)])
    return chunk.results[1 + len(walk) + heads:]
