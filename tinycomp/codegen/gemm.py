"""Tiled GEMM with a fused bias + activation epilogue: the code behind every `linear` node.

    void name(i64 M, ptr A, ptr W, ptr B, ptr C, ptr pack)      C = act(A @ W + B)

A is M x K, W is K x N (the Linear layer's (in, out) layout), B has N floats (unused without bias),
C is M x N, all row-major float32. K and N are compile-time constants; M is a runtime value and may
be 0. `pack` is caller-owned scratch of `pack_floats(K, N, width)` floats. The kernel keeps no
state between calls: W is re-packed on every call (weights may change; results are never stale),
so several threads may run it at once on disjoint row ranges, each with its own `pack`.

Two paths, chosen at run time from M:
- small batches read W in place (batch 1 is bound by streaming the weights once; packing would
  read them twice);
- larger batches copy W, one L2-sized block of columns at a time, into contiguous zero-padded
  panels, then sweep every row tile of A over those panels while they are hot in L2.
Both paths run the same register-tile microkernels (`gemm_kernels`).
"""

from __future__ import annotations

from dataclasses import dataclass

from llvmlite import ir

from .gemm_kernels import TileShape, fgep, load_vector, tile_kernel
from .loops import I64, PTR, for_range, i64

# Packed W block budget: half of a 1 MiB L2, leaving room for the A row panels and C.
L2_BLOCK_BYTES = 512 * 1024
DIRECT_MAX_ROWS = 32  # measured: reading W in place beats pack + sweep up to ~32 rows


@dataclass(frozen=True)
class Block:
    """A run of columns cut into panels: `full` panels of `nv` vectors, then an optional narrower
    tail panel of `tail_nv` vectors whose last vector holds `tail_lanes` real columns."""

    nv: int
    width: int
    full: int
    tail_nv: int
    tail_lanes: int

    @classmethod
    def split(cls, cols: int, nv: int, width: int) -> Block:
        full, rest = divmod(cols, nv * width)
        tail_nv = -(-rest // width)
        return cls(nv, width, full, tail_nv, rest - (tail_nv - 1) * width if rest else 0)

    @property
    def nr(self) -> int:
        return self.nv * self.width

    def shapes(self, mr: int) -> list[tuple[bool, TileShape]]:
        """(is tail, tile shape) of the run of full panels and of the tail panel, if present."""
        out = [(False, TileShape(mr, self.nv, self.width, self.width))] if self.full else []
        if self.tail_nv:
            out.append((True, TileShape(mr, self.tail_nv, self.width, self.tail_lanes)))
        return out


@dataclass(frozen=True)
class GemmPlan:
    K: int
    N: int
    width: int
    mr: int  # rows per register tile
    nv: int  # vectors per panel of the multi-row tiles
    nv1: int  # vectors per panel of the single-row (weight-streaming) kernel
    nc: int  # columns per packed block, a multiple of nv * width
    direct_max_rows: int  # batches up to this size read W in place instead of packing it


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def plan_gemm(K: int, N: int, width: int) -> GemmPlan:
    vectors = -(-N // width)
    # 6 x 4 zmm accumulators + 4 B vectors + 1 broadcast fit the 32 AVX-512 registers; with 16
    # registers (AVX2, SSE) 6 x 2 is the largest tile that does not spill. Narrow layers get
    # taller tiles so there are still enough independent FMA chains.
    nv = min(4 if width >= 16 else 2, vectors)
    mr = 6 if nv >= 4 or width < 16 else 8
    # One row reads each weight once: a wide panel gives long unit-stride runs and many
    # independent accumulators (batch 1 is bound by streaming W, not by FMAs).
    nv1 = min(8 if width >= 16 else 4, vectors)
    # Equal-sized blocks where possible: each distinct block width is another copy of the loops.
    nr = nv * width
    panels = -(-N // nr)
    per_block = max(1, L2_BLOCK_BYTES // (4 * max(K, 1) * nr))
    n_blocks = -(-panels // per_block)
    nc = -(-panels // n_blocks) * nr
    return GemmPlan(K, N, width, mr, nv, nv1, nc, direct_max_rows=DIRECT_MAX_ROWS)


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
    gen = _LinearEmitter(builder, plan, fn.args, bias=bias, activation=activation)
    gen.column_blocks()
    builder.ret_void()
    return fn


class _LinearEmitter:
    """Emits the loops around the tile kernels for one `emit_linear` function."""

    def __init__(self, builder: ir.IRBuilder, plan: GemmPlan, args, *, bias: bool, activation: str | None):
        self.b, self.plan = builder, plan
        self.M, self.A, self.W, self.B, self.C, self.pack = args
        self.bias, self.activation = bias, activation
        # Up to mr rows make a single row tile: each weight is read once, so packing would only
        # add a second pass over W. The choice is a runtime value so both paths share one copy
        # of the loops (each copy costs compile time).
        self.packed = builder.icmp_signed(">", self.M, i64(plan.direct_max_rows), name="packed")

    def column_blocks(self) -> None:
        """For each L2-sized block of columns: pack it (large M), then run every row tile over it."""
        b, plan = self.b, self.plan
        n_full, rest = divmod(plan.N, plan.nc)
        if n_full:
            with for_range(b, 0, n_full, name="jb") as jb:
                self._block(b.mul(jb, i64(plan.nc)), plan.nc)
        if rest:
            self._block(i64(n_full * plan.nc), rest)

    def _block(self, j0, cols: int) -> None:
        with self.b.if_then(self.packed):
            self._pack(j0, Block.split(cols, self.plan.nv, self.plan.width))
        self.sweep_rows(j0, cols)

    def _pack(self, j0, block: Block) -> None:
        """Copy W[:, j0:j0+cols] into panels: panel p holds rows k = 0..K-1 of its columns
        contiguously, so the tile kernel streams it with unit stride and no 4K aliasing. The
        tail panel is zero-padded to whole vectors."""
        b, plan, w = self.b, self.plan, self.plan.width
        with for_range(b, 0, plan.K, name="pk") as k:
            src = fgep(b, self.W, b.add(b.mul(k, i64(plan.N)), j0))
            if block.full:
                with for_range(b, 0, block.full, name="pp") as p:
                    s = fgep(b, src, b.mul(p, i64(block.nr)))
                    d = fgep(b, self.pack, b.add(b.mul(p, i64(plan.K * block.nr)), b.mul(k, i64(block.nr))))
                    for v in range(block.nv):
                        b.store(load_vector(b, fgep(b, s, v * w), w, w), fgep(b, d, v * w), align=4)
            if block.tail_nv:
                tail_ld = block.tail_nv * w
                s = fgep(b, src, block.full * block.nr)
                d = fgep(b, self.pack, b.add(i64(block.full * plan.K * block.nr), b.mul(k, i64(tail_ld))))
                for v in range(block.tail_nv):
                    lanes = block.tail_lanes if v == block.tail_nv - 1 else w
                    b.store(load_vector(b, fgep(b, s, v * w), w, lanes), fgep(b, d, v * w), align=4)

    def sweep_rows(self, j0, cols: int) -> None:
        """All rows of A against columns j0..j0+cols: full mr-row tiles in a loop, then the
        leftover rows, a single row through the weight-streaming kernel, more through one
        row-clamped tile."""
        b, plan = self.b, self.plan
        m_full = b.sub(self.M, b.urem(self.M, i64(plan.mr)))
        with for_range(b, 0, m_full, plan.mr, name="r") as r0:
            self._tile_panels(r0, i64(plan.mr), j0, cols)
        rem = b.sub(self.M, m_full)
        with b.if_else(b.icmp_signed("==", rem, i64(1))) as (single, several):
            with single:
                self._row_panels(m_full, j0, cols)
            with several:
                with b.if_then(b.icmp_signed(">", rem, i64(1))):
                    self._tile_panels(m_full, rem, j0, cols)

    def _tile_panels(self, r0, rows, j0, cols: int) -> None:
        """Packed: panel p at pack + p*K*nr, its rows nr (the tail: its padded width) apart.
        Direct: panel p at W + j0 + p*nr, its rows N apart."""
        b, plan = self.b, self.plan
        block = Block.split(cols, plan.nv, plan.width)
        w_j0 = fgep(b, self.W, j0)
        b_base = b.select(self.packed, self.pack, w_j0)
        step = b.select(self.packed, i64(plan.K * block.nr), i64(block.nr))
        ldbs = [b.select(self.packed, i64(ld), i64(plan.N)) for ld in (block.nr, block.tail_nv * plan.width)]
        self._run_panels(plan.mr, rows, r0, j0, block, b_base, step, ldbs)

    def _row_panels(self, r0, j0, cols: int) -> None:
        """One row straight from W (no packing: the row reads each weight once anyway)."""
        plan = self.plan
        block = Block.split(cols, plan.nv1, plan.width)
        w_j0 = fgep(self.b, self.W, j0)
        self._run_panels(1, i64(1), r0, j0, block, w_j0, i64(block.nr), (i64(plan.N), i64(plan.N)))

    def _run_panels(self, mr, rows, r0, j0, block: Block, b_base, panel_step, ldbs) -> None:
        """Call the tile kernel on every panel of `block` for rows r0..r0+rows."""
        b, plan = self.b, self.plan
        a = fgep(b, self.A, b.mul(r0, i64(plan.K)))
        c = fgep(b, self.C, b.add(b.mul(r0, i64(plan.N)), j0))
        bias = fgep(b, self.B, j0) if self.bias else ir.Constant(PTR, None)
        for is_tail, shape in block.shapes(mr):
            kernel = tile_kernel(b.module, shape, bias=self.bias, activation=self.activation)
            ldb = ldbs[is_tail]

            def call(panel, kernel=kernel, ldb=ldb):
                col = b.mul(panel, i64(block.nr))
                bias_p = fgep(b, bias, col) if self.bias else bias
                b_p = fgep(b, b_base, b.mul(panel, panel_step))
                b.call(kernel, [rows, i64(plan.K), a, i64(plan.K), b_p, ldb, bias_p, fgep(b, c, col),
                                i64(plan.N)])

            if is_tail:
                call(i64(block.full))
            else:
                with for_range(b, 0, block.full, name="jp") as p:
                    call(p)
