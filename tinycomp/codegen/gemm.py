"""Tiled GEMM with a fused bias + activation epilogue: the code behind every `linear` node.

    void name(i64 M, ptr A, ptr W, ptr B, ptr C, ptr pack)      C = act(A @ W + B)

A is M x K, W is K x N (the Linear layer's (in, out) layout), B has N floats (unused without bias),
C is M x N, all row-major float32. K and N are compile-time constants; M is a runtime value and may
be 0. `pack` is caller-owned scratch of `pack_floats(K, N, width)` floats. The kernel keeps no
state between calls: W is re-packed on every call (weights may change; results are never stale),
so several threads may run it at once on disjoint row ranges, each with its own `pack`.

Two paths, chosen at run time from M:
- batches up to DIRECT_MAX_ROWS read W in place (batch 1 is bound by streaming the weights once;
  packing would read them twice), in blocks of columns of at most DIRECT_BLOCK_BYTES of W, each
  swept by every full row tile while it is hot in L2;
- larger batches copy W, one L2-sized block of columns at a time, into contiguous zero-padded
  panels, then sweep every row tile of A over those panels while they are hot in L2.
Rows go through 6-row tiles of 4 vectors (8-row tiles for layers of exactly 3 vectors); the last
panel of a layer whose vectors are not a multiple of the tile's goes through a 6-row tile of just
its vectors (7 = 4 + 3, 17 = 4 x 4 + 1), so the full tiles never compute a wholly masked-off
vector. The 0..7 leftover rows of a small batch go through a 4-, a 2- and a 1-row kernel as needed
(5 = 4 + 1, ...); in a larger one, through one more full tile over the batch's last rows, which
recomputes a few finished rows (`_Driver.emit`). The 1-row kernel is as wide as the layer (up
to 16 vectors: long unit-stride runs of W, many independent accumulators) and prefetches W rows
ahead. Panel counts, column counts and the tail masks are run-time values, so both paths share one
copy of the loops and every layer of a module shares the same few kernels (`gemm_kernels`).
"""

from __future__ import annotations

from dataclasses import dataclass

from llvmlite import ir

from .gemm_kernels import (
    TileShape,
    column_masks,
    epilogue_function,
    masked_load,
    masked_store,
    prefetch_for_read,
    tile_kernel,
)
from .gemm_narrow import NarrowShape, narrow_kernel, narrow_pack_kernel, narrow_small_kernel
from .loops import (
    F32,
    I1,
    I32,
    I64,
    PTR,
    compile_as_glue,
    element_ptr,
    for_range,
    i64,
    internal_kernel,
    paused_gc,
    splat_value,
    vector_type,
)

L2_BYTES = 1 << 20  # per core on this machine (AMD Zen 4); the plans below are tuned for it
# Packed W block budget: half of L2, leaving room for the A row panels and C.
L2_BLOCK_BYTES = L2_BYTES // 2
DIRECT_MAX_ROWS = 128  # measured: reading W in place beats pack + sweep up to ~128 rows (784x256, 1024x1024)
# In-place W block budget: all row tiles sweep one block of columns before the next, so a block is
# read from L3 once per call, not once per tile. A quarter of L2: in a model the other layers'
# weights and the activations share L2 (784x256 in a whole MLP at 32 / 64 / 128 rows: 148 / 284 /
# 569 us with 64-column blocks against 158 / 306 / 615 us with all 256 columns, one block).
DIRECT_BLOCK_BYTES = 256 * 1024
# Layers of exactly 3 vectors (N in 33..48): an 8 x 3 tile (24 accumulators + 3 B + 1 broadcast of
# the 32 registers; 100x37 at 256 rows: 8 x 3 ~2-3% faster than 6 x 3, both ~25% faster than the
# 6 x 4 tile whose fourth vector was all masked-off lanes).
MAIN3_ROWS = 8
PREFETCH_ROWS = 4  # W rows the small-row kernels prefetch ahead (measured 4 ~ 8 > 0)
# Leftover rows through one overlapping full tile (_Driver.emit) on the packed path, and on the
# direct path from this many rows when W does not fit L2. Measured with benchmarks/gemm_ab.py
# (`OVERLAP_MIN_ROWS 100000,64 --layer 1024x1024`), min time with / without: 1024x1024 at 70 / 100 /
# 128 / 256 / 512 rows 0.99 / 0.94 / 0.99 / 0.96 / 0.99, at 14 / 32 rows (threshold 12) 1.10 / 1.04;
# W in L2 (`L2_BYTES 1048576,0`, which applies it there too): 784x256 at 64 / 128 rows 1.03 / 1.03,
# the reference MLP's 128-row blocks at batch 128 / 512 1.04 / 1.02.
OVERLAP_MIN_ROWS = 64
# Rows of W the pack kernel prefetches ahead: W's rows are N floats apart (4 KB for 1024 columns), a
# stride the hardware prefetchers do not follow. Measured with benchmarks/gemm_ab.py
# (`PACK_PREFETCH_ROWS 0,4,8`), min time against none: one 1024x1024 layer at 256 / 512 rows 1.00 /
# 0.99 with 4, 0.995 / 0.99 with 8; the wide model at batch 256 0.98 with 8.
PACK_PREFETCH_ROWS = 8


@dataclass(frozen=True)
class GemmPlan:
    K: int
    N: int
    width: int
    main: TileShape  # the full row tiles (packed or direct)
    leftover: tuple[TileShape, ...]  # kernels for 4, 2 and 1 leftover rows, or 1 row at a time
    nc: int  # columns per packed block, a multiple of main.nr
    direct_max_rows: int  # batches up to this size read W in place instead of packing it
    direct_nc: int  # columns per block when W is read in place (a multiple of main.nr)
    overlap_min_rows: int  # from this many rows, leftover rows go through one overlapping full tile
    # (OVERLAP_MIN_ROWS when W is larger than L2, else the packed path's smallest batch)
    tail: TileShape | None = None  # the last, narrower panel of the full row tiles, if any

    @property
    def n_blocks(self) -> int:
        return -(-self.N // self.nc)


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def _pow2_at_least(x: int) -> int:
    p = 1
    while p < x:
        p *= 2
    return p


def plan_gemm(K: int, N: int, width: int) -> GemmPlan:
    vectors = -(-N // width)
    # 6 x 4 zmm accumulators + 4 B vectors + 1 broadcast fit the 32 AVX-512 registers; with 16
    # registers (AVX2, SSE) 6 x 2 is the largest tile that does not spill. The leftover kernels
    # keep about as many accumulators with fewer rows: 4 x nv, 2 x 2nv, 1 x 4nv (the one-row kernel
    # narrowed to the layer, in powers of two so layers share it: a 10-column head gets 1 x 1).
    nv = 4 if width >= 16 else 2
    nv_main = min(nv, vectors)
    nv1 = min(4 * nv, _pow2_at_least(vectors))
    main = TileShape(MAIN3_ROWS if nv_main == 3 else 6, nv_main, width)
    # The last panel of a layer whose vectors are not a multiple of the main tile's goes through a
    # 6-row tile just as wide (7 vectors = 4 + 3, 17 = 4 x 4 + 1) instead of computing whole
    # masked-off vectors; a layer of 3 vectors is one 8 x 3 panel. The tail's rows are the main
    # tile's (one row loop); the driver picks it for a panel of at most tail.nr columns, which only
    # the last panel of the last block can be. The leftover rows keep the power-of-two kernels.
    rest = vectors % nv_main
    tail = TileShape(main.mr, rest, width) if vectors > nv_main and rest else None
    one = TileShape(1, nv1, width, PREFETCH_ROWS, exact=N % (nv1 * width) == 0)
    if _pow2_at_least(vectors) < nv:  # narrow layers: the few leftover rows go one by one (1 x 1 or 1 x 2)
        leftover: tuple[TileShape, ...] = (one,)
    else:
        leftover = (TileShape(4, nv, width), TileShape(2, 2 * nv, width, PREFETCH_ROWS), one)
    # Equal-sized blocks where possible.
    nr = main.nr
    panels = -(-N // nr)
    nc = _block_cols(panels, nr, K, L2_BLOCK_BYTES)
    return GemmPlan(K, N, width, main, leftover, nc, direct_max_rows=DIRECT_MAX_ROWS,
                    direct_nc=_block_cols(panels, nr, K, DIRECT_BLOCK_BYTES),
                    overlap_min_rows=OVERLAP_MIN_ROWS if 4 * K * N > L2_BYTES else DIRECT_MAX_ROWS + 1,
                    tail=tail)


def _block_cols(panels: int, nr: int, K: int, budget: int) -> int:
    """Columns per block: whole panels of K x nr floats, as many as fit `budget` bytes (at least
    one), spread evenly over the blocks."""
    per_block = max(1, budget // (4 * max(K, 1) * nr))
    n_blocks = -(-panels // per_block)
    return -(-panels // n_blocks) * nr


def plan_narrow(K: int, N: int, width: int) -> NarrowShape | None:
    """The dot-product plan for layers narrower than one vector, None for the others.

    Short sums (K < 2 * width; one output column: K < width) keep the tiled path: its sequential
    sum over k is the order OpenBLAS uses there (measured bit-identical to NumPy for N = 2..10,
    K < 32), and a sum that short gains little from K-vectorization, while matching the eager
    result exactly keeps the parity rule robust on small outputs.

    About 24 accumulators with 32 registers (AVX-512), 12 with 16, leaving room for the A and Wt
    vectors: a block takes as many rows as fit (up to 4: each Wt vector is loaded once per block,
    and Wt may not fit in L1), with 2 accumulators per output where they fit."""
    if not 1 <= N < width or K < (width if N == 1 else 2 * width):
        return None
    budget = 24 if width >= 16 else 12
    rows, unroll = next(((r, u) for r in (4, 2, 1) for u in (2, 1) if r * N * u <= budget), (1, 1))
    return NarrowShape(N, width, rows, unroll, tail=K % (width * unroll) != 0)


def narrow_small_rows(N: int, width: int) -> int:
    """Batches below this many rows take the in-place kernel. Measured costs: transposing W about a
    cycle per weight, the in-place kernel about 2 cycles per row and k, the dot products N/width
    cycles per row and k; so the transpose pays off from N / (2 - N/width) rows on. Measured
    crossovers (ctypes calls, both kernels timed): N = 10 at M = 8 (128 x 10: 1.20 vs 1.19 us;
    784 x 10: 4.38 vs 4.01), N = 6 at 4, N = 2 and 3 at 2."""
    return -(-N * width // (2 * width - N)) if N > 1 else 0


def pack_floats(K: int, N: int, width: int) -> int:
    """Size in floats of the `pack` scratch buffer `emit_linear` needs for this layer."""
    if plan_narrow(K, N, width) is not None:
        return 0 if N == 1 else N * _round_up(K, width)  # Wt; one output column is W itself
    return K * min(plan_gemm(K, N, width).nc, _round_up(N, width))


def emit_linear(
    module: ir.Module, name: str, *, K: int, N: int, bias: bool, activation: str | None, width: int
) -> ir.Function:
    with paused_gc():  # also paused around whole-module lowering; here for direct callers (tests)
        return _emit_linear(module, name, K=K, N=N, bias=bias, activation=activation, width=width)


def _emit_linear(module: ir.Module, name: str, *, K: int, N: int, bias: bool, activation: str | None,
                 width: int) -> ir.Function:
    """The layer's function is one call to the module's shared driver with the plan's constants
    and kernels: the loops exist once per module, not once per layer."""
    fnty = ir.FunctionType(ir.VoidType(), [I64, PTR, PTR, PTR, PTR, PTR])
    fn = ir.Function(module, fnty, name)
    fn.attributes.add("nounwind")
    compile_as_glue(fn)  # one call to the driver, or to the narrow kernels
    for arg, nm in zip(fn.args, ("M", "A", "W", "B", "C", "pack"), strict=True):
        arg.name = nm
        if isinstance(arg.type, ir.PointerType):
            arg.add_attribute("noalias")
    M, A, W, B, C, pack = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    narrow = plan_narrow(K, N, width)
    if narrow is not None:
        _emit_narrow(b, narrow, fn.args, K=K, bias=bias, activation=activation)
        return fn
    plan = plan_gemm(K, N, width)
    mod = module
    leftover = {s.mr: tile_kernel(mod, s) for s in plan.leftover}
    nr = {s.mr: i64(s.nr) for s in plan.leftover}
    # Layers of one to three vectors of columns are never packed: a block would be their whole W,
    # read in place (100x37 at 256 / 2048 rows: packing into 3-vector panels measured no faster).
    pack_fn = pack_kernel(mod, plan.main) if plan.main.nv == (4 if width >= 16 else 2) else _null(PACK_TY)
    config = [i64(K), i64(N), i64(int(activation == "relu")), i64(plan.nc), i64(plan.direct_nc),
              i64(plan.direct_max_rows), i64(plan.overlap_min_rows),
              tile_kernel(mod, plan.main), i64(plan.main.mr), i64(plan.main.nr), pack_fn,
              tile_kernel(mod, plan.tail) if plan.tail else _null(TILE_TY), i64(plan.tail.nr if plan.tail else 0),
              leftover.get(4, _null(TILE_TY)), nr.get(4, i64(0)),
              leftover.get(2, _null(TILE_TY)), nr.get(2, i64(0)),
              leftover[1], nr[1],
              epilogue_function(mod, activation, width)]
    cfg = ir.GlobalVariable(module, CONFIG_TY, f"{name}.config")
    cfg.linkage, cfg.global_constant = "internal", True
    cfg.initializer = ir.Constant(CONFIG_TY, config)
    # The driver takes two pointers: LLVM's fast instruction selector, which compiles the glue,
    # gives up on functions with more arguments than registers (and falls back to the slow one).
    call = b.alloca(CALL_TY, name="call")
    for i, value in enumerate((M, A, W, B if bias else ir.Constant(PTR, None), C, pack)):
        b.store(value, b.gep(call, [ir.Constant(I32, 0), ir.Constant(I32, i)]))
    b.call(_driver(module, width), [call, cfg])
    b.ret_void()
    return fn


def _emit_narrow(b: ir.IRBuilder, shape: NarrowShape, args, *, K: int, bias: bool, activation: str | None) -> None:
    """Narrow layers: W transposed into `pack` on every call (never stale; with one column W is
    already its own transpose), then the dot-product kernel over all rows."""
    M, A, W, B, C, pack = args
    ldw = _round_up(K, shape.width)  # Wt rows start on vector boundaries
    B = B if bias else ir.Constant(PTR, None)
    relu = i64(int(activation == "relu"))
    small = narrow_small_rows(shape.N, shape.width)
    if shape.N == 1:  # W is its own transpose
        b.call(narrow_kernel(b.module, shape, activation), [M, i64(K), A, W, i64(ldw), B, C, relu])
    else:
        with b.if_else(b.icmp_signed("<", M, i64(small))) as (then, otherwise):
            with then:
                b.call(narrow_small_kernel(b.module, shape.N, shape.width, activation), [M, i64(K), A, W, B, C, relu])
            with otherwise:
                b.call(narrow_pack_kernel(b.module, shape.N), [i64(K), W, i64(ldw), pack])
                b.call(narrow_kernel(b.module, shape, activation), [M, i64(K), A, pack, i64(ldw), B, C, relu])
    b.ret_void()


TILE_TY = ir.FunctionType(ir.VoidType(), [I64, PTR, I64, PTR, I64, PTR, I64, I64])
PACK_TY = ir.FunctionType(ir.VoidType(), [I64, I64, PTR, I64, PTR])
EPI_TY = ir.FunctionType(ir.VoidType(), [I64, PTR, I64, PTR, I64, I64])
CALL_ARGS = (("M", I64), ("A", PTR), ("W", PTR), ("B", PTR), ("C", PTR), ("pack", PTR))
CONFIG_ARGS = (("K", I64), ("N", I64), ("relu", I64), ("nc", I64), ("direct_nc", I64), ("direct_max", I64),
               ("overlap_min", I64),
               ("main", ir.PointerType(TILE_TY)), ("main_rows", I64), ("main_nr", I64),
               ("pack_fn", ir.PointerType(PACK_TY)), ("tail", ir.PointerType(TILE_TY)), ("tail_nr", I64),
               ("k4", ir.PointerType(TILE_TY)), ("nr4", I64), ("k2", ir.PointerType(TILE_TY)), ("nr2", I64),
               ("k1", ir.PointerType(TILE_TY)), ("nr1", I64), ("epi", ir.PointerType(EPI_TY)))
CALL_TY = ir.LiteralStructType([t for _, t in CALL_ARGS])
CONFIG_TY = ir.LiteralStructType([t for _, t in CONFIG_ARGS])


def _null(fnty: ir.FunctionType) -> ir.Constant:
    return ir.Constant(ir.PointerType(fnty), None)


def _driver(module: ir.Module, width: int) -> ir.Function:
    name = f"tinycomp.gemm.driver.v{width}"
    if name in module.globals:
        return module.globals[name]
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [PTR, PTR]), name)
    fn.linkage = "internal"
    fn.attributes.add("nounwind")
    compile_as_glue(fn)  # it only loops over tiles and calls kernels
    call, cfg = fn.args
    call.name, cfg.name = "call", "config"
    builder = ir.IRBuilder(fn.append_basic_block("entry"))
    args = {}
    for struct, ty, fields in ((call, CALL_TY, CALL_ARGS), (cfg, CONFIG_TY, CONFIG_ARGS)):
        for i, (nm, t) in enumerate(fields):
            at = builder.gep(struct, [ir.Constant(I32, 0), ir.Constant(I32, i)], source_etype=ty)
            args[nm] = builder.load(at, typ=t, name=nm)
    _Driver(builder, args, width).emit()
    builder.ret_void()
    return fn


class _Driver:
    """Emits the loops around the tile kernels; every size and kernel is a run-time argument."""

    def __init__(self, builder: ir.IRBuilder, args: dict, width: int):
        self.b, self.a, self.width = builder, args, width
        b = builder
        has_pack = b.icmp_unsigned("!=", args["pack_fn"], _null(PACK_TY))
        self.packed = b.and_(b.icmp_signed(">", args["M"], args["direct_max"]), has_pack, name="packed")
        self.has_bias = b.icmp_unsigned("!=", args["B"], ir.Constant(PTR, None))
        # Kernels need K >= 1; with K == 0 the epilogue alone writes act(bias).
        self.has_k = b.icmp_signed(">", args["K"], i64(0))
        self.epi_flags = b.or_(args["relu"], b.select(self.has_k, i64(0), i64(2)))

    def emit(self) -> None:
        """Full row tiles: for each L2-sized block of columns, pack it (packed path) or read it in
        place (direct path), and run every tile over it. Then the leftover rows (fewer than a tile).

        From `overlap_min` rows on, the leftover rows go through one more full tile per block, over
        the last rows of the batch, while the block is hot: it recomputes up to five finished rows
        (the same kernel on the same data: bit-identical, and the epilogue applied again to the raw
        sums gives the same values). Below that, they go through the leftover kernels, in place
        over all N, which read W once more: without the overlapping tile, a 1024x1024 layer took
        5,147 us at 256 rows against 4,963 at 258 (benchmarks/gemm_ab.py)."""
        b, a = self.b, self.a
        N, M = a["N"], a["M"]
        block_cols = b.select(self.packed, a["nc"], a["direct_nc"])
        n_blocks = b.udiv(b.add(N, b.sub(block_cols, i64(1))), block_cols)
        main_rows = a["main_rows"]
        n_tiles = b.udiv(M, main_rows)
        m_full = b.mul(n_tiles, main_rows)
        overlap = b.and_(b.icmp_signed(">", M, m_full), b.icmp_signed(">=", M, a["overlap_min"]), name="overlap")
        with b.if_then(b.icmp_signed(">", m_full, i64(0))):
            with for_range(b, 0, n_blocks, name="jb") as jb:
                j0 = b.mul(jb, block_cols)
                cols = b.sub(N, j0)
                cols = b.select(b.icmp_signed("<", cols, block_cols), cols, block_cols)
                with b.if_then(self.packed):
                    b.call(a["pack_fn"], [a["K"], N, element_ptr(b, a["W"], j0), cols, a["pack"]])
                last = b.select(overlap, b.add(n_tiles, i64(1)), n_tiles)
                with for_range(b, 0, last, name="r") as t:
                    r0 = b.select(b.icmp_signed("<", t, n_tiles), b.mul(t, main_rows), b.sub(M, main_rows))
                    self._panels(a["main"], main_rows, a["main_nr"], r0, j0, cols, may_pack=True)
        self._leftover_rows(b.select(overlap, M, m_full))

    def _leftover_rows(self, r0) -> None:
        """Rows r0..M (fewer than a tile): 4 and 2 rows through their kernels where the plan has
        them, then the rest one at a time."""
        b, a = self.b, self.a
        for rows, kern, nr in ((4, a["k4"], a["nr4"]), (2, a["k2"], a["nr2"])):
            step = b.and_(b.sub(a["M"], r0), i64(rows))
            step = b.select(b.icmp_unsigned("!=", kern, _null(TILE_TY)), step, i64(0))
            with b.if_then(b.icmp_signed("!=", step, i64(0))):
                self._panels(kern, i64(rows), nr, r0, i64(0), a["N"], may_pack=False)
            r0 = b.add(r0, step)
        with for_range(b, r0, a["M"], name="r1") as r:
            self._panels(a["k1"], i64(1), a["nr1"], r, i64(0), a["N"], may_pack=False)

    def _panels(self, kern, rows, nr, r0, j0, cols, *, may_pack: bool) -> None:
        """Call `kern` on rows r0..r0+rows (an i64 value), every panel of nr columns of the block,
        then the epilogue on the tile; for the full row tiles, a panel of at most `tail_nr` columns
        (the layer's last) goes to the tail kernel. Packed panel p sits at pack + p*K*nr, its rows
        nr apart (the last: its padded width); in place, at W + j0 + p*nr with rows N apart."""
        b, a, w = self.b, self.a, self.width
        K, N = a["K"], a["N"]
        A = element_ptr(b, a["A"], b.mul(r0, K))
        c = element_ptr(b, a["C"], b.add(b.mul(r0, N), j0))
        w_j0 = element_ptr(b, a["W"], j0)
        n_panels = b.udiv(b.add(cols, b.sub(nr, i64(1))), nr)
        with for_range(b, 0, n_panels, name="jp") as p:
            col = b.mul(p, nr)
            left = b.sub(cols, col)
            cols_p = b.select(b.icmp_signed("<", left, nr), left, nr)
            b_p = element_ptr(b, w_j0, col)
            ldb = N
            if may_pack:
                packed_b = element_ptr(b, a["pack"], b.mul(p, b.mul(K, nr)))
                b_p = b.select(self.packed, packed_b, b_p)
                padded = b.mul(b.udiv(b.add(cols_p, i64(w - 1)), i64(w)), i64(w))
                ldb = b.select(self.packed, padded, ldb)
            # No GEP on a null bias: the epilogue tells "no bias" by the null pointer.
            bias_p = b.select(self.has_bias, b.gep(a["B"], [b.add(j0, col)], source_etype=F32),
                              ir.Constant(PTR, None))
            c_p = element_ptr(b, c, col)
            if may_pack:  # the full row tiles: the last panel may take the narrower tail kernel
                use_tail = b.and_(b.icmp_unsigned("!=", a["tail"], _null(TILE_TY)),
                                  b.icmp_signed("<=", cols_p, a["tail_nr"]))
                kern = b.select(use_tail, a["tail"], kern)
            with b.if_then(self.has_k):
                b.call(kern, [K, A, K, b_p, ldb, c_p, N, cols_p])
            b.call(a["epi"], [rows, c_p, N, bias_p, cols_p, self.epi_flags])


def pack_kernel(module: ir.Module, shape: TileShape) -> ir.Function:
    """`void pack(i64 K, i64 ldw, ptr w, i64 cols, ptr pack)`: copy the K x cols block at `w`
    (rows `ldw` apart) into panels of `shape.nr` columns: panel p at pack + p*K*nr holds rows
    k = 0..K-1 of its columns contiguously, so the tile kernel streams it with unit stride and no
    4K aliasing. The last panel is as wide as its columns rounded up to whole vectors,
    zero-padded. It prefetches PACK_PREFETCH_ROWS rows of W ahead. One function per panel width,
    shared by every layer of the module."""
    name = f"tinycomp.gemm.pack{shape.nv}x{shape.width}"
    if name in module.globals:
        return module.globals[name]
    fn = internal_kernel(module, name, (("K", I64), ("ldw", I64), ("w", PTR), ("cols", I64), ("pack", PTR)))
    K, ldw, w_ptr, cols, pack = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    nr, w, nv = shape.nr, shape.width, shape.nv
    vt = vector_type(w)
    full = b.udiv(cols, i64(nr))
    tail = b.sub(cols, b.mul(full, i64(nr)))
    tail_masks = column_masks(b, tail, nv, w)
    i1v = ir.VectorType(I1, w)
    tail_store = [splat_value(b, b.icmp_signed(">", tail, i64(v * w)), i1v) for v in range(nv)]
    tail_ld = b.mul(b.udiv(b.add(tail, i64(w - 1)), i64(w)), i64(w))
    panel_size = b.mul(K, i64(nr))
    tail_base = element_ptr(b, pack, b.mul(full, panel_size))
    with for_range(b, 0, K, name="pk") as k:
        src = element_ptr(b, w_ptr, b.mul(k, ldw))
        with for_range(b, 0, full, name="pp") as p:
            s = element_ptr(b, src, b.mul(p, i64(nr)))
            d = element_ptr(b, pack, b.add(b.mul(p, panel_size), b.mul(k, i64(nr))))
            # rows a page apart: see the constant; past W's last row this prefetches, harmlessly, beyond it
            prefetch_for_read(b, b.gep(s, [b.mul(ldw, i64(PACK_PREFETCH_ROWS))], source_etype=F32), nv, w)
            for v in range(nv):
                b.store(b.load(element_ptr(b, s, v * w), typ=vt, align=4), element_ptr(b, d, v * w), align=4)
        with b.if_then(b.icmp_signed(">", tail, i64(0))):
            s = element_ptr(b, src, b.mul(full, i64(nr)))
            d = element_ptr(b, tail_base, b.mul(k, tail_ld))
            for v in range(nv):
                value = masked_load(b, element_ptr(b, s, v * w), tail_masks[v])
                masked_store(b, value, element_ptr(b, d, v * w), tail_store[v])
    b.ret_void()
    return fn
