"""Tiled GEMM with a fused bias + activation epilogue: the code behind every `linear` node.

    void name(i64 M, ptr A, ptr W, ptr B, ptr C, ptr pack)      C = act(A @ W + B)

A is M x K, W is K x N (the Linear layer's (in, out) layout), B has N floats (unused without bias),
C is M x N, all row-major float32. K and N are compile-time constants; M is a runtime value and may
be 0. `pack` is caller-owned scratch of `pack_floats(K, N, width)` floats. The kernel keeps no
state between calls: W is re-packed on every call (weights may change; results are never stale),
so several threads may run it at once on disjoint row ranges, each with its own `pack`.

Two paths, chosen at run time from M:
- batches up to DIRECT_MAX_ROWS (`direct_max_rows`: fewer for some W on some hosts) read W in
  place (batch 1 is bound by streaming the weights once; packing would read them twice), in
  blocks of columns of at most DIRECT_BLOCK_BYTES of W, each swept by every full row tile while it
  is hot in L2 (on a host with `Target.aliased_direct_max_rows`, a W larger than L2 with rows a
  multiple of 4 KB apart, or 2 KB on a core with less L2, in blocks of K-chunks: `GemmPlan.direct_kc`);
- larger batches copy W, one L2-sized block of columns at a time, into contiguous zero-padded
  panels, then sweep every row tile of A over those panels while they are hot in L2.
Rows go through 6-row tiles of 4 vectors (8-row tiles for layers of exactly 3 vectors); the last
panel of a layer whose vectors are not a multiple of the tile's goes through a 6-row tile of just
its vectors (7 = 4 + 3, 17 = 4 x 4 + 1), so the full tiles never compute a wholly masked-off
vector. The 0..7 leftover rows of a small batch go through a 4-, a 2- and a 1-row kernel as needed
(5 = 4 + 1, ...); in a larger one, through one more full tile over the batch's last rows, which
recomputes a few finished rows (`gemm_driver._Driver._emit_whole`). The 1-row kernel is as wide
as the layer (up to 16 vectors: long unit-stride runs of W, many independent accumulators) and
prefetches W rows ahead. Panel counts, column counts and the tail masks are run-time values, so
both paths share one copy of the loops and every layer of a module shares the same few kernels
(`gemm_kernels`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from llvmlite import ir

from .cgutils import I32, I64, PTR, compile_as_glue, i64, paused_gc
from .gemm_driver import CALL_TY, CONFIG_TY, FINISH_TY, PACK_TY, TILE_TY, driver_function, null_fn, pack_kernel
from .gemm_epilogue import epilogue_function, finish_function, kernel_activation
from .gemm_kernels import TileShape, k_chunk, tile_kernel
from .gemm_narrow import IN_PLACE_MAX_N, NarrowShape, narrow_kernel, narrow_pack_kernel, narrow_small_kernel
from .target import NO_LIMITS, TUNED_L2_BYTES, CacheLimits, default_registers

# Per core on AMD Zen 4, where the plans below were tuned (the Intel Xeon of later sessions has 2 MB:
# its differences are the host Target's, `aliased_direct_max_rows` and `l2_bytes`)
L2_BYTES = TUNED_L2_BYTES
# Packed W block budget: half of L2, leaving room for the A row panels and C.
L2_BLOCK_BYTES = L2_BYTES // 2
# A core with less L2 (Zen 3: 512 KB, 8-way, 64 KB of addresses a way) also loses a W larger than
# its L2 with rows this many bytes apart to a few cache sets (`_aliased`; 0: only the 4 KB rule). On
# Zen 3 (`benchmarks/gemm_ab.py SMALL_L2_ALIASED_STRIDE 0,2048,0,2048 --layer KxN --rows 8,32,64,128`,
# median of each round's ratio to 0, thirtieth session): 512x512 with gelu 0.94-0.95 / 0.96 / 0.80-0.81
# / 0.85-0.86, 256x1024 0.99-1.00 / 0.60-0.62 / 0.61 / 0.45, 1024x512 0.90-0.96 / 0.85 / 0.73-0.74 / 0.68-0.69,
# 512x1536 0.95-0.97 / 0.91-0.92 / 0.74-0.75 / 0.67, 2048x512 0.88-0.90 / 0.71 / 0.52-0.53 / 0.53-0.54; lnmlp
# (`--model lnmlp --rows 1,8,...,256`) 1.00 at 1 row, 0.81-0.85 at 8 to 32, 0.87-0.89 at 64, 0.78-0.79
# at 128, 1.00 at 256. Rows 1 KB apart (1024) helped layers alone too (784x256 0.73 at 128 rows) but
# slowed the reference MLP at 8 and 32 rows (1.07-1.15).
SMALL_L2_ALIASED_STRIDE = 2048
DIRECT_MAX_ROWS = 128  # measured: reading W in place beats pack + sweep up to ~128 rows (784x256, 1024x1024)
STREAMED_MAX_ROWS = 32  # the same for a W whose panels outgrow L2 (`_panels_outgrow_l2`)
# In-place W block budget: all row tiles sweep one block of columns before the next, so a block is
# read from L3 once per call, not once per tile. A quarter of L2: in a model the other layers'
# weights and the activations share L2 (784x256 in a whole MLP at 32 / 64 / 128 rows: 148 / 284 /
# 569 us with 64-column blocks against 158 / 306 / 615 us with all 256 columns, one block).
DIRECT_BLOCK_BYTES = 256 * 1024
# Layers of exactly 3 vectors (N in 33..48): an 8 x 3 tile (24 accumulators + 3 B + 1 broadcast of
# the 32 registers; 100x37 at 256 rows: 8 x 3 ~2-3% faster than 6 x 3, both ~25% faster than the
# 6 x 4 tile whose fourth vector was all masked-off lanes).
MAIN3_ROWS = 8
# W rows the leftover (4-, 2- and 1-row) kernels prefetch ahead. Without a prefetch the 4-row kernel
# read W in place on the hardware prefetchers alone, and on AMD Zen 3 the reference MLP at batch 4
# took longer than at batch 6 (one full tile). There (`benchmarks/gemm_ab.py FOUR_ROW_PREFETCH
# 0,4,8,0,4,8 --model mlp --rows 4,5,6,10,11`, a constant of the 4-row kernel alone then; median of
# each round's ratio to 0, thirtieth session) 8 rows ahead took 0.76-0.78 of the time at 4 rows,
# 0.78-0.81 at 5, 0.83-0.87 at 10 and 0.89-0.97 at 11 (4 ahead: 0.79-0.84, 0.81-0.96, 0.90-0.91,
# 0.95-0.98); at 6 rows (no 4-row kernel) 0.92-1.03; lnmlp at 4 rows 0.71-0.72 (8) and 0.82-0.83
# (4); lnmlp at 100 rows and the transformer block at 8 and 32 samples 0.98-1.02. The 2- and 1-row
# kernels, 4 rows ahead before (`gemm_ab.py PREFETCH_ROWS 4,8,4,8 --model mlp --rows 1,2,3,8`, then
# `--model lnmlp --rows 1,2,8`): 8 ahead 1.00-1.01 at 1 row, 0.91-0.96 at 2, 0.89-0.91 at 3, 0.99-1.00
# at 8; lnmlp 0.93-0.95 / 0.84-0.87 / 0.89-0.91. 16 ahead against 8 was mixed (the MLP at 1 row
# 1.02-1.10, lnmlp at 2 rows 0.81-0.88). (Earlier hosts measured 4 ~ 8 > 0 for the 2- and 1-row
# kernels, and a prefetching 4-row kernel within 2 % on AVX-512.)
PREFETCH_ROWS = 8
# Leftover rows through one overlapping full tile (_Driver._emit_whole) on the packed path, and on the
# direct path from this many rows when W does not fit L2. Measured with benchmarks/gemm_ab.py
# (`OVERLAP_MIN_ROWS 100000,64 --layer 1024x1024`), min time with / without: 1024x1024 at 70 / 100 /
# 128 / 256 / 512 rows 0.99 / 0.94 / 0.99 / 0.96 / 0.99, at 14 / 32 rows (threshold 12) 1.10 / 1.04;
# W in L2 (`L2_BYTES 1048576,0`, which applies it there too): 784x256 at 64 / 128 rows 1.03 / 1.03,
# the reference MLP's 128-row blocks at batch 128 / 512 1.04 / 1.02.
OVERLAP_MIN_ROWS = 64
# The full row tiles prefetch B this many rows ahead (`TileShape.prefetch`), packed panel or W in
# place. On the Intel Xeon (benchmarks/gemm_ab.py MAIN_PREFETCH_ROWS 0,4,8,16, min time against 0):
# lnmlp at 64 / 256 / 1024 rows 0.93 / 0.94 / 0.93, the reference MLP at 128 / 2048 0.94 / 0.95,
# 1024x1024 at 512 rows 0.85 with 8; 4 and 16 gained less; the transformer block (K = 128, its
# panels in L1) 1.00-1.05, within the noise. Not measured on Zen 4.
MAIN_PREFETCH_ROWS = 8
# The full row tiles prefetch the next row tile's A in their first pass over it (`TileShape.next_a`).
MAIN_PREFETCH_NEXT_A = True
# Row tiles whose every panel is whole are `exact` (`_exact_where_whole`): LLVM's code generation
# of the reference MLP, lnmlp and the transformer block took 10 / 7 / 8 % fewer instructions
# (benchmarks/codegen_instructions.py: 299.8 -> 269.7, 408.2 -> 379.5, 938.7 -> 863.7 M); their run
# times, alternated in one process (benchmarks/gemm_ab.py EXACT_TILES 0,1), moved within the
# host's noise (0.98-1.05 x either way).
EXACT_TILES = True
# Full row tiles per call of `finish` on a layer narrower than a vector with a costly activation
# (`gemm_driver._Driver._finish_tiles`): a power of two. Measured with benchmarks/gemm_ab.py
# (`FINISH_TILES 0,4,8,16,32 --rows 512,65536`), min time against 0 (each tile's vectors to the
# activation): 4x1:tanh 0.48 / 0.43 / 0.44 / 0.42 and 0.40 / 0.35 / 0.36 / 0.34, 12x4:sigmoid
# 0.68 / 0.64 / 0.65 / 0.65 and 0.64 / 0.59 / 0.61 / 0.61, 10x15:gelu (15 of 16 lanes used) 0.94-0.97.
FINISH_TILES = 16
assert FINISH_TILES & (FINISH_TILES - 1) == 0, "the driver groups tiles with a mask"


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
    direct_kc: int = 0  # the direct path sums in K-chunks of this many rows of W (0: all K at once)

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


def _has_32_registers(width: int, registers: int | None) -> bool:
    """Does the register budget (None: an x86 host's for `width`, `target.default_registers`) hold
    32 vectors? The GEMM plans size their accumulators for 32 or for 16."""
    return (registers or default_registers(width)) >= 32


def tile_vectors(width: int, registers: int | None = None) -> int:
    """Vectors per row of the main tile: 6 x 4 accumulators + 4 B vectors + 1 broadcast fit 32
    registers (AVX-512, NEON, the Cortex-M FPU's 32 singles); with 16 (AVX2, SSE, WebAssembly on
    x86-64) 6 x 2 is the largest tile that does not spill."""
    return 4 if _has_32_registers(width, registers) else 2


def _aliased(K: int, N: int, l2_bytes: int) -> bool:
    """Is W larger than L2 with its rows a multiple of 4 KB apart (every row of a column block in
    the same few cache sets)? On a core with less L2 than L2_BYTES, also a W larger than that L2
    with rows a multiple of SMALL_L2_ALIASED_STRIDE bytes apart.

    "L2" is Zen 4's 1 MB (L2_BYTES), also on a host with more (`Target.l2_bytes`): a W as large as
    the Intel Xeon's 2 MB L2 shares it with A, C and the other layers. There
    (`benchmarks/gemm_ab.py ALIASED_MAX_ROWS 40,0 --layer 512x1024 --rows 8,32,64`, min time without
    the host limit against with it) 512x1024 (2 MB) runs 1.18 / 1.37 / 1.44 x slower read in place
    in one piece; 384x1024 (1.5 MB) 0.98 / 1.03 at 8 / 32 rows."""
    size, stride = 4 * K * N, 4 * N
    if stride % 4096 == 0 and size > L2_BYTES:
        return True
    small_l2 = bool(SMALL_L2_ALIASED_STRIDE) and l2_bytes < L2_BYTES
    return small_l2 and stride % SMALL_L2_ALIASED_STRIDE == 0 and size > l2_bytes


def _host_limited(K: int, N: int, cache: CacheLimits) -> bool:
    """Does the host limit an aliased W's in-place rows, and is this layer's W one?"""
    return bool(cache.aliased_max_rows) and _aliased(K, N, cache.l2_bytes)


def _panels_outgrow_l2(K: int, N: int, nr: int) -> bool:
    """Is W larger than L2 and read in place in panels (K rows of nr floats, 4N bytes apart) too large
    to stay in it while every row tile sweeps them: over 1.5 x DIRECT_BLOCK_BYTES, or over it with
    rows a multiple of 2 KB apart (their lines then share a few cache sets)? The one-panel block
    `_block_cols` allows them then misses its budget, and every tile re-reads the panel from L3.
    Measured on the Intel Xeon (`benchmarks/gemm_ab.py DIRECT_MAX_ROWS 128,32 --layer KxN --rows
    48,64,128`, packed time over in place): 3000x3000 0.73 / 0.70 at 64 / 128 rows, 2000x2000
    0.88 / 0.82, 1536x1536 0.45 / 0.39, 2048x512 0.37 / 0.32, 4096x128 0.64 / 0.53; left in place,
    1280x1280 1.03 / 0.92, 1100x256 1.10 / 1.05, 2500x100 1.14 / 1.05, 2048x64 1.18 / 1.07."""
    panel = 4 * K * nr
    return 4 * K * N > L2_BYTES and (2 * panel > 3 * DIRECT_BLOCK_BYTES or
                                     (panel > DIRECT_BLOCK_BYTES and (4 * N) % 2048 == 0))


def direct_max_rows(K: int, N: int, cache: CacheLimits = NO_LIMITS, width: int = 16,
                    registers: int | None = None) -> int:
    """The most rows for which the layer reads W in place: `cache.aliased_max_rows` for an
    aliased W (`_aliased` on `cache.l2_bytes`; the host's limit, 0 for none: with one, the in-place
    path sums such a layer in K-chunks, `GemmPlan.direct_kc`), else STREAMED_MAX_ROWS where its panels outgrow L2
    (`_panels_outgrow_l2`), else DIRECT_MAX_ROWS."""
    if _host_limited(K, N, cache):  # its K-chunked in-place path has the host's own measured limit
        return min(cache.aliased_max_rows, DIRECT_MAX_ROWS)
    if _panels_outgrow_l2(K, N, min(tile_vectors(width, registers), -(-N // width)) * width):
        return STREAMED_MAX_ROWS
    return DIRECT_MAX_ROWS


def plan_gemm(K: int, N: int, width: int, registers: int | None = None, cache: CacheLimits = NO_LIMITS,
              masked: frozenset[TileShape] = frozenset()) -> GemmPlan:
    vectors = -(-N // width)
    # The leftover kernels keep about as many accumulators as the main tile with fewer rows:
    # 4 x nv, 2 x 2nv, 1 x 4nv (the one-row kernel narrowed to the layer, in powers of two so
    # layers share it: a 10-column head gets 1 x 1).
    nv = tile_vectors(width, registers)
    nv_main = min(nv, vectors)
    nv1 = min(4 * nv, _pow2_at_least(vectors))
    rest = vectors % nv_main
    has_tail = vectors > nv_main and rest > 0
    # With a host limit for an aliased W (`direct_max_rows`), the in-place path runs in K-chunks
    # (`gemm_driver._emit_chunked`): in blocks as wide as the one-row kernel (with AVX-512 each row
    # then spans 16 lines, and a block's rows fall in 16 x as many cache sets as a 64-column
    # panel's), DIRECT_BLOCK_BYTES of them a chunk.
    in_chunks = _host_limited(K, N, cache) and N % (nv1 * width) == 0 and not has_tail
    direct_kc = max(1, DIRECT_BLOCK_BYTES // (4 * nv1 * width)) if in_chunks else 0
    # Every kernel of the layer sums in the same chunks, on every path: a row's result never
    # depends on the batch around it (its size picks the path; threads split it). The in-place
    # K-chunks add each chunk's sum to C in the order `_k_chunks` adds them in registers.
    chunk = direct_kc if direct_kc and K > direct_kc else k_chunk(K)
    main = TileShape(MAIN3_ROWS if nv_main == 3 else 6, nv_main, width, MAIN_PREFETCH_ROWS, chunk=chunk,
                     next_a=MAIN_PREFETCH_NEXT_A)
    # The last panel of a layer whose vectors are not a multiple of the main tile's goes through a
    # 6-row tile just as wide (7 vectors = 4 + 3, 17 = 4 x 4 + 1) instead of computing whole
    # masked-off vectors; a layer of 3 vectors is one 8 x 3 panel. The tail's rows are the main
    # tile's (one row loop); the driver picks it for a panel of at most tail.nr columns, which only
    # the last panel of the last block can be. The leftover rows keep the power-of-two kernels.
    tail = TileShape(main.mr, rest, width, chunk=chunk) if has_tail else None
    one = TileShape(1, nv1, width, PREFETCH_ROWS, exact=N % (nv1 * width) == 0, chunk=chunk)
    if _pow2_at_least(vectors) < nv:  # narrow layers: the few leftover rows go one by one (1 x 1 or 1 x 2)
        leftover: tuple[TileShape, ...] = (one,)
    else:
        leftover = (TileShape(4, nv, width, PREFETCH_ROWS, chunk=chunk),
                    TileShape(2, 2 * nv, width, PREFETCH_ROWS, chunk=chunk), one)
    # Equal-sized blocks where possible.
    nr = main.nr
    panels = -(-N // nr)
    nc = _block_cols(panels, nr, K, L2_BLOCK_BYTES)
    direct_max = direct_max_rows(K, N, cache, width, registers)
    direct_nc = one.nr if in_chunks else _block_cols(panels, nr, K, DIRECT_BLOCK_BYTES)
    # A tile whose every panel is whole (the layer's columns and each block's in whole tiles) is
    # `exact`: no lane masks, and the main tile has no masked copy of its k-loop (EXACT_TILES),
    # unless the module compiles that tile masked for another layer (`masked`, `masked_tiles`).
    main = _exact_where_whole(main, masked, N, nc, direct_nc)
    leftover = tuple(_exact_where_whole(s, masked, direct_nc if in_chunks else N) for s in leftover)
    return GemmPlan(K, N, width, main, leftover, nc, direct_max_rows=direct_max, direct_nc=direct_nc,
                    overlap_min_rows=OVERLAP_MIN_ROWS if 4 * K * N > L2_BYTES else direct_max + 1,
                    tail=tail, direct_kc=direct_kc)


def _exact_where_whole(shape: TileShape, masked: frozenset[TileShape], *spans: int) -> TileShape:
    """`shape` made `exact` where every span of columns its panels cover is whole tiles of it, and
    the module does not compile it masked anyway (in `masked`): a masked kernel serves whole panels too."""
    whole = EXACT_TILES and shape not in masked and all(n % shape.nr == 0 for n in spans)
    return replace(shape, exact=True) if whole else shape


def masked_tiles(sizes: Iterable[tuple[int, int]], width: int, registers: int | None = None,
                 cache: CacheLimits = NO_LIMITS) -> frozenset[TileShape]:
    """The tile shapes that the GEMMs of K x N in `sizes` (a module's) compile with lane masks: the
    module's other GEMMs then take those kernels for whole panels too (`plan_gemm`'s `masked`),
    rather than compiling an exact copy of each. Without this, an AVX2 host's reference MLP compiled
    the 6 x 2 main tile and two leftover tiles twice (its 10-column head is a GEMM there), and the
    exact kernels cost 35 % more instructions a compile than none (callgrind of whole compiles under
    valgrind's Haswell: RESULTS.md, twenty-sixth session)."""
    shapes: set[TileShape] = set()
    for K, N in sizes:
        if N >= 1 and plan_narrow(K, N, width, registers) is None:  # no columns: no code
            plan = plan_gemm(K, N, width, registers, cache)
            shapes.update(s for s in (plan.main, plan.tail, *plan.leftover) if s is not None and not s.exact)
    return frozenset(shapes)


def _block_cols(panels: int, nr: int, K: int, budget: int) -> int:
    """Columns per block: whole panels of K x nr floats, as many as fit `budget` bytes (at least
    one), spread evenly over the blocks."""
    per_block = max(1, budget // (4 * max(K, 1) * nr))
    n_blocks = -(-panels // per_block)
    return -(-panels // n_blocks) * nr


def plan_narrow(K: int, N: int, width: int, registers: int | None = None) -> NarrowShape | None:
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
    budget = 24 if _has_32_registers(width, registers) else 12
    rows, unroll = next(((r, u) for r in (4, 2, 1) for u in (2, 1) if r * N * u <= budget), (1, 1))
    return NarrowShape(N, width, rows, unroll, tail=K % (width * unroll) != 0,
                       in_place=2 <= N <= IN_PLACE_MAX_N)


# Batches below this many rows of a layer of 2 to IN_PLACE_MAX_N outputs read W in place (two to
# four shuffles a vector of W); from it on W is transposed first, once a call: at 4,096 rows of 64 x 3
# the shuffles made the layer 1.4 x slower than the transpose (one-off script; 1 row of 65536 x 3:
# 10.5 us in place, 42 with the old in-place kernel, 3 of 16 lanes).
IN_PLACE_ROWS = 32


def narrow_small_rows(N: int, width: int) -> int:
    """Batches below this many rows take the in-place kernel. Measured costs: transposing W about a
    cycle per weight, the in-place kernel about 2 cycles per row and k, the dot products N/width
    cycles per row and k; so the transpose pays off from N / (2 - N/width) rows on. Measured
    crossovers (ctypes calls, both kernels timed): N = 10 at M = 8 (128 x 10: 1.20 vs 1.19 us;
    784 x 10: 4.38 vs 4.01), N = 6 at 4, N = 2 and 3 at 2."""
    return -(-N * width // (2 * width - N)) if N > 1 else 0


def pack_floats(K: int, N: int, width: int, registers: int | None = None) -> int:
    """Size in floats of the `pack` scratch buffer `emit_linear` needs for this layer on calls of
    `pack_min_rows` rows or more (0 if it never packs)."""
    narrow = plan_narrow(K, N, width, registers)
    if narrow is not None:  # Wt; W of one column is its own
        return 0 if N == 1 else N * _round_up(K, width)
    plan = plan_gemm(K, N, width, registers)
    return K * min(plan.nc, _round_up(N, width)) if _packs(plan, width, registers) else 0


def pack_min_rows(K: int, N: int, width: int, registers: int | None = None,
                  cache: CacheLimits = NO_LIMITS) -> int | None:
    """The fewest rows M on which `emit_linear`'s function writes its `pack` buffer, None if it
    never does: a call on fewer rows may pass a pointer past the end of its scratch
    (`ModulePlan.scratch_floats`). Narrow layers transpose W from `_emit_narrow`'s threshold on;
    the others pack it on the tiled path (M > direct_max_rows), if their main tile packs at all."""
    narrow = plan_narrow(K, N, width, registers)
    if narrow is not None:
        if N == 1:  # W is its own transpose
            return None
        return IN_PLACE_ROWS if narrow.in_place else narrow_small_rows(N, width)
    plan = plan_gemm(K, N, width, registers, cache)
    return plan.direct_max_rows + 1 if _packs(plan, width, registers) else None


def _packs(plan: GemmPlan, width: int, registers: int | None) -> bool:
    """Does the layer's tiled path pack W? Layers of one to three vectors of columns are never
    packed: a block would be their whole W, read in place (100x37 at 256 / 2048 rows: packing into
    3-vector panels measured no faster)."""
    return plan.main.nv == tile_vectors(width, registers)


def emit_linear(
    module: ir.Module, name: str, *, K: int, N: int, bias: bool, activation: str | None, width: int,
    registers: int | None = None, residual: bool = False, cache: CacheLimits = NO_LIMITS,
    masked: frozenset[TileShape] = frozenset(),
) -> ir.Function:
    with paused_gc():  # also paused around whole-module lowering; here for direct callers (tests)
        return _emit_linear(module, name, K=K, N=N, bias=bias, activation=activation, width=width,
                            registers=registers, residual=residual, cache=cache,
                            masked=masked)


def _emit_linear(module: ir.Module, name: str, *, K: int, N: int, bias: bool, activation: str | None,
                 width: int, registers: int | None, residual: bool, cache: CacheLimits,
                 masked: frozenset[TileShape]) -> ir.Function:
    """The layer's function is one call to the module's shared driver with the plan's constants
    and kernels: the loops exist once per module, not once per layer. With `residual` it takes
    one more pointer, R (M x N, not C's memory), and stores act(A @ W + B) + R."""
    names = ("M", "A", "W", "B", "C", "pack") + (("R",) if residual else ())
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [I64] + [PTR] * (len(names) - 1)), name)
    fn.attributes.add("nounwind")
    compile_as_glue(fn)  # one call to the driver, or to the narrow kernels
    for arg, nm in zip(fn.args, names, strict=True):
        arg.name = nm
        if isinstance(arg.type, ir.PointerType):
            arg.add_attribute("noalias")
    M, A, W, B, C, pack = fn.args[:6]
    R = fn.args[6] if residual else ir.Constant(PTR, None)
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    narrow = plan_narrow(K, N, width, registers)
    if narrow is not None:
        _emit_narrow(b, narrow, (M, A, W, B, C, pack, R), K=K, bias=bias, activation=activation, residual=residual)
        return fn
    plan = plan_gemm(K, N, width, registers, cache, masked)
    mod = module
    kind = kernel_activation(activation)
    # a K-chunked layer's raw kernels add each chunk to C (`gemm_driver._emit_chunked`)
    leftover = {s.mr: tile_kernel(mod, s, accumulate=plan.direct_kc > 0) for s in plan.leftover}
    nr = {s.mr: i64(s.nr) for s in plan.leftover}
    pack_fn = pack_kernel(mod, plan.main) if _packs(plan, width, registers) else null_fn(PACK_TY)
    no_tile = null_fn(TILE_TY)
    # A costly activation on a layer narrower than a vector: the full row tiles store x + bias and
    # `finish` applies it to FINISH_TILES of them at once (`gemm_driver._Driver._finish_tiles`)
    finish_tiles = FINISH_TILES if kind != "lin" and N < width and not plan.direct_kc else 0
    tiles_kind, tiles_residual = ("lin", False) if finish_tiles else (kind, residual)
    config = [i64(K), i64(N), i64(int(activation == "relu")), i64(plan.nc), i64(plan.direct_nc),
              i64(plan.direct_max_rows), i64(plan.overlap_min_rows), i64(plan.direct_kc),
              tile_kernel(mod, replace(plan.main, next_a=False), accumulate=True, plain_b=True)
              if plan.direct_kc else no_tile,
              tile_kernel(mod, plan.main, tiles_kind, tiles_residual), i64(plan.main.mr), i64(plan.main.nr), pack_fn,
              tile_kernel(mod, plan.tail, tiles_kind, tiles_residual) if plan.tail else no_tile,
              i64(plan.tail.nr if plan.tail else 0),
              leftover.get(4, no_tile), nr.get(4, i64(0)),
              leftover.get(2, no_tile), nr.get(2, i64(0)),
              leftover[1], nr[1], epilogue_function(mod, activation, width, residual),
              finish_function(mod, kind, width, residual) if finish_tiles else null_fn(FINISH_TY),
              i64(finish_tiles)]
    cfg = ir.GlobalVariable(module, CONFIG_TY, f"{name}.config")
    cfg.linkage, cfg.global_constant = "internal", True
    cfg.initializer = ir.Constant(CONFIG_TY, config)
    # The driver takes two pointers: LLVM's fast instruction selector, which compiles the glue,
    # gives up on functions with more arguments than registers (and falls back to the slow one).
    call = b.alloca(CALL_TY, name="call")
    for i, value in enumerate((M, A, W, B if bias else ir.Constant(PTR, None), C, pack, R)):
        b.store(value, b.gep(call, [ir.Constant(I32, 0), ir.Constant(I32, i)]))
    b.call(driver_function(module, width, chunked=plan.direct_kc > 0), [call, cfg])
    b.ret_void()
    return fn


def _emit_narrow(b: ir.IRBuilder, shape: NarrowShape, args, *, K: int, bias: bool, activation: str | None,
                 residual: bool) -> None:
    """Narrow layers: W transposed into `pack` on every call (never stale; with one column W is
    already its own transpose), then the dot-product kernel over all rows. A small batch reads W
    in place instead: the dot kernel itself for up to IN_PLACE_MAX_N columns (the same sums), the
    in-place kernel for more."""
    M, A, W, B, C, pack, R = args
    ldw = _round_up(K, shape.width)  # Wt rows start on vector boundaries
    B = B if bias else ir.Constant(PTR, None)
    relu = i64(int(activation == "relu"))
    if shape.N == 1:  # W is its own transpose
        b.call(narrow_kernel(b.module, shape, activation, residual), [M, i64(K), A, W, i64(ldw), B, C, relu, R])
    else:
        packed = replace(shape, in_place=False)
        small = IN_PLACE_ROWS if shape.in_place else narrow_small_rows(shape.N, shape.width)
        with b.if_else(b.icmp_signed("<", M, i64(small))) as (then, otherwise):
            with then:
                if shape.in_place:
                    b.call(narrow_kernel(b.module, shape, activation, residual),
                           [M, i64(K), A, W, i64(ldw), B, C, relu, R])
                else:
                    b.call(narrow_small_kernel(b.module, shape, activation, residual),
                           [M, i64(K), A, W, B, C, relu, R])
            with otherwise:
                b.call(narrow_pack_kernel(b.module, shape.N), [i64(K), W, i64(ldw), pack])
                b.call(narrow_kernel(b.module, packed, activation, residual),
                       [M, i64(K), A, pack, i64(ldw), B, C, relu, R])
    b.ret_void()
