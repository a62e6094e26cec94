"""Tiled GEMM with a fused bias + activation epilogue: the code behind every `linear` node.

    void name(i64 M, ptr A, ptr W, ptr B, ptr C, ptr pack)      C = act(A @ W + B)

A is M x K, W is K x N (the Linear layer's (in, out) layout), B has N floats (unused without bias),
C is M x N, all row-major float32. K and N are compile-time constants; M is a runtime value and may
be 0. `pack` is caller-owned scratch of `pack_floats(K, N, width)` floats. The kernel keeps no
state between calls: W is re-packed on every call (weights may change; results are never stale),
so several threads may run it at once on disjoint row ranges, each with its own `pack`.

Two paths, chosen at run time from M:
- small batches (M <= 32) read W in place as one block of all N columns (batch 1 is bound by
  streaming the weights once; packing would read them twice);
- larger batches copy W, one L2-sized block of columns at a time, into contiguous zero-padded
  panels, then sweep every row tile of A over those panels while they are hot in L2.
Rows go through 6-row tiles; the 0..5 leftover rows through a 4-, a 2- and a 1-row kernel as
needed (5 = 4 + 1, ...), so no row is computed twice. The 1-row kernel is as wide as the layer (up
to 16 vectors: long unit-stride runs of W, many independent accumulators) and prefetches W rows
ahead. Panel counts, column counts and the tail masks are run-time values, so both paths share one
copy of the loops and every layer of a module shares the same few kernels (`gemm_kernels`).
"""

from __future__ import annotations

from dataclasses import dataclass

from llvmlite import ir

from .gemm_kernels import TileShape, fgep, kernel_activation, masked_load, masked_store, tile_kernel
from .gemm_kernels import column_masks
from .loops import I1, I64, PTR, for_range, i64, vector_type

# Packed W block budget: half of a 1 MiB L2, leaving room for the A row panels and C.
L2_BLOCK_BYTES = 512 * 1024
DIRECT_MAX_ROWS = 32  # measured: reading W in place beats pack + sweep up to ~32 rows
PREFETCH_ROWS = 4  # W rows the small-row kernels prefetch ahead (measured 4 ~ 8 > 0)


@dataclass(frozen=True)
class GemmPlan:
    K: int
    N: int
    width: int
    main: TileShape  # the full row tiles (packed or direct)
    leftover: tuple[TileShape, ...]  # kernels for 4, 2 and 1 leftover rows, or 1 row at a time
    nc: int  # columns per packed block, a multiple of main.nr
    direct_max_rows: int  # batches up to this size read W in place instead of packing it

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
    nv_main = min(nv, _pow2_at_least(vectors))
    nv1 = min(4 * nv, _pow2_at_least(vectors))
    main = TileShape(6, nv_main, width)
    one = TileShape(1, nv1, width, PREFETCH_ROWS, exact=N % (nv1 * width) == 0)
    if nv_main < nv:  # narrow layers: the few leftover rows go one by one (1 x 1 or 1 x 2)
        leftover: tuple[TileShape, ...] = (one,)
    else:
        leftover = (TileShape(4, nv, width), TileShape(2, 2 * nv, width, PREFETCH_ROWS), one)
    # Equal-sized blocks where possible.
    nr = main.nr
    panels = -(-N // nr)
    per_block = max(1, L2_BLOCK_BYTES // (4 * max(K, 1) * nr))
    n_blocks = -(-panels // per_block)
    nc = -(-panels // n_blocks) * nr
    return GemmPlan(K, N, width, main, leftover, nc, direct_max_rows=DIRECT_MAX_ROWS)


def pack_floats(K: int, N: int, width: int) -> int:
    """Size in floats of the `pack` scratch buffer `emit_linear` needs for this layer."""
    return K * min(plan_gemm(K, N, width).nc, _round_up(N, width))


def emit_linear(
    module: ir.Module, name: str, *, K: int, N: int, bias: bool, activation: str | None, width: int
) -> ir.Function:
    plan = plan_gemm(K, N, width)
    fnty = ir.FunctionType(ir.VoidType(), [I64, PTR, PTR, PTR, PTR, PTR])
    fn = ir.Function(module, fnty, name)
    fn.attributes.add("nounwind")
    for arg, nm in zip(fn.args, ("M", "A", "W", "B", "C", "pack"), strict=True):
        arg.name = nm
        if isinstance(arg.type, ir.PointerType):
            arg.add_attribute("noalias")
    builder = ir.IRBuilder(fn.append_basic_block("entry"))
    _LinearEmitter(builder, plan, fn.args, bias=bias, activation=activation).emit()
    builder.ret_void()
    return fn


class _LinearEmitter:
    """Emits the loops around the tile kernels for one `emit_linear` function."""

    def __init__(self, builder: ir.IRBuilder, plan: GemmPlan, args, *, bias: bool, activation: str | None):
        self.b, self.plan = builder, plan
        self.M, self.A, self.W, self.B, self.C, self.pack = args
        self.bias = self.B if bias else ir.Constant(PTR, None)
        self.relu = i64(int(activation == "relu"))
        self.kernels = {s: tile_kernel(builder.module, s, activation) for s in (plan.main, *plan.leftover)}
        assert kernel_activation(activation)
        self.packed = builder.icmp_signed(">", self.M, i64(plan.direct_max_rows), name="packed")

    def emit(self) -> None:
        """Full row tiles: packed, for each L2-sized block of columns, pack it and run every tile
        over it; direct, one block of all N columns read in place. Then the leftover rows, in
        place over all N (they read W once more; packed it was a large batch anyway)."""
        b, plan = self.b, self.plan
        n_blocks = b.select(self.packed, i64(plan.n_blocks), i64(1))
        block_cols = b.select(self.packed, i64(plan.nc), i64(plan.N))
        mr = plan.main.mr
        m_full = b.sub(self.M, b.urem(self.M, i64(mr)))
        with b.if_then(b.icmp_signed(">", m_full, i64(0))):
            with for_range(b, 0, n_blocks, name="jb") as jb:
                j0 = b.mul(jb, i64(plan.nc))
                cols = b.sub(i64(plan.N), j0)
                cols = b.select(b.icmp_signed("<", cols, block_cols), cols, block_cols)
                with b.if_then(self.packed):
                    self._pack(j0, cols)
                with for_range(b, 0, m_full, mr, name="r") as r0:
                    self._panels(plan.main, r0, j0, cols, may_pack=True)
        self._leftover_rows(m_full)

    def _pack(self, j0, cols) -> None:
        """Copy W[:, j0:j0+cols] into panels of main.nr columns: panel p at pack + p*K*nr holds
        rows k = 0..K-1 of its columns contiguously, so the tile kernel streams it with unit stride
        and no 4K aliasing. The last panel is as wide as its columns rounded up to whole vectors,
        zero-padded."""
        b, plan = self.b, self.plan
        nr, w, nv = plan.main.nr, plan.width, plan.main.nv
        vt = vector_type(w)
        full = b.udiv(cols, i64(nr))
        tail = b.sub(cols, b.mul(full, i64(nr)))
        tail_masks = column_masks(b, tail, nv, w)
        i1v = ir.VectorType(I1, w)
        tail_vec_on = [b.icmp_signed(">", tail, i64(v * w)) for v in range(nv)]
        tail_store = [b.shuffle_vector(b.insert_element(ir.Constant(i1v, ir.Undefined), on, i64(0)),
                                       ir.Constant(i1v, ir.Undefined), ir.Constant(ir.VectorType(ir.IntType(32), w), [0] * w))
                      for on in tail_vec_on]
        tail_ld = b.mul(b.udiv(b.add(tail, i64(w - 1)), i64(w)), i64(w))
        tail_base = fgep(b, self.pack, b.mul(full, i64(plan.K * nr)))
        with for_range(b, 0, plan.K, name="pk") as k:
            src = fgep(b, self.W, b.add(b.mul(k, i64(plan.N)), j0))
            with for_range(b, 0, full, name="pp") as p:
                s = fgep(b, src, b.mul(p, i64(nr)))
                d = fgep(b, self.pack, b.add(b.mul(p, i64(plan.K * nr)), b.mul(k, i64(nr))))
                for v in range(nv):
                    b.store(b.load(fgep(b, s, v * w), typ=vt, align=4), fgep(b, d, v * w), align=4)
            with b.if_then(b.icmp_signed(">", tail, i64(0))):
                s = fgep(b, src, b.mul(full, i64(nr)))
                d = fgep(b, tail_base, b.mul(k, tail_ld))
                for v in range(nv):
                    masked_store(b, masked_load(b, fgep(b, s, v * w), tail_masks[v]), fgep(b, d, v * w),
                                 tail_store[v])

    def _leftover_rows(self, r0) -> None:
        """Rows r0..M (fewer than a tile): 4 and 2 rows through their kernels where the plan has
        them, then the rest one at a time: no row is computed twice."""
        b, plan = self.b, self.plan
        rem = b.sub(self.M, r0)
        j0, cols = i64(0), i64(plan.N)
        for shape in plan.leftover[:-1]:
            step = b.and_(rem, i64(shape.mr))
            with b.if_then(b.icmp_signed("!=", step, i64(0))):
                self._panels(shape, r0, j0, cols, may_pack=False)
            r0 = b.add(r0, step)
        with for_range(b, r0, self.M, name="r1") as r:
            self._panels(plan.leftover[-1], r, j0, cols, may_pack=False)

    def _panels(self, shape: TileShape, r0, j0, cols, *, may_pack: bool) -> None:
        """Call the kernel for `shape` on rows r0..r0+mr, every panel of shape.nr columns of the
        block. Packed panel p sits at pack + p*K*nr, its rows nr apart (the last: its padded
        width); in place, at W + j0 + p*nr with rows N apart."""
        b, plan = self.b, self.plan
        nr, w = shape.nr, plan.width
        a = fgep(b, self.A, b.mul(r0, i64(plan.K)))
        c = fgep(b, self.C, b.add(b.mul(r0, i64(plan.N)), j0))
        bias = fgep(b, self.bias, j0) if isinstance(self.bias, ir.Argument) else self.bias
        w_j0 = fgep(b, self.W, j0)
        n_panels = b.udiv(b.add(cols, i64(nr - 1)), i64(nr))
        with for_range(b, 0, n_panels, name="jp") as p:
            col = b.mul(p, i64(nr))
            left = b.sub(cols, col)
            cols_p = b.select(b.icmp_signed("<", left, i64(nr)), left, i64(nr))
            b_p = fgep(b, w_j0, col)
            ldb = i64(plan.N)
            if may_pack:
                packed_b = fgep(b, self.pack, b.mul(p, i64(plan.K * nr)))
                b_p = b.select(self.packed, packed_b, b_p)
                padded = b.mul(b.udiv(b.add(cols_p, i64(w - 1)), i64(w)), i64(w))
                ldb = b.select(self.packed, padded, ldb)
            bias_p = fgep(b, bias, col) if isinstance(self.bias, ir.Argument) else bias
            b.call(self.kernels[shape], [i64(plan.K), a, i64(plan.K), b_p, ldb, bias_p, fgep(b, c, col),
                                         i64(plan.N), cols_p, self.relu])
