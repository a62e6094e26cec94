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

from .gemm_kernels import MicrokernelEmitter, TileShape, fgep, load_vector
from .loops import I64, PTR, for_range, i64

# Packed W block budget: half of a 1 MiB L2, leaving room for the A row panels and C.
L2_BLOCK_BYTES = 512 * 1024


@dataclass(frozen=True)
class Block:
    """A run of columns: `full` panels of the plan's full width, then an optional narrower tail
    panel of `tail_nv` vectors whose last vector holds `tail_lanes` real columns."""

    full: int
    tail_nv: int
    tail_lanes: int


@dataclass(frozen=True)
class GemmPlan:
    K: int
    N: int
    width: int
    mr: int  # rows per register tile
    nv: int  # vectors per full panel
    nc: int  # columns per packed block, a multiple of the panel width
    direct_max_rows: int  # batches up to this size skip packing

    @property
    def nr(self) -> int:
        return self.nv * self.width

    def block(self, cols: int) -> Block:
        full, rest = divmod(cols, self.nr)
        if rest == 0:
            return Block(full, 0, 0)
        tail_nv = -(-rest // self.width)
        return Block(full, tail_nv, rest - (tail_nv - 1) * self.width)


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def plan_gemm(K: int, N: int, width: int) -> GemmPlan:
    # 6 x 4 zmm accumulators + 4 B vectors + 1 broadcast fit the 32 AVX-512 registers; with 16
    # registers (AVX2, SSE) 6 x 2 is the largest tile that does not spill.
    nv = min(4 if width >= 16 else 2, -(-N // width))
    mr = {4: 6, 3: 8, 2: 8, 1: 8}[nv] if width >= 16 else 6
    nr = nv * width
    nc = max(nr, (L2_BLOCK_BYTES // (4 * K)) // nr * nr)
    nc = min(nc, _round_up(N, nr))
    return GemmPlan(K, N, width, mr, nv, nc, direct_max_rows=mr)


def pack_floats(K: int, N: int, width: int) -> int:
    """Size in floats of the `pack` scratch buffer `emit_linear` needs for this layer."""
    plan = plan_gemm(K, N, width)
    return K * min(plan.nc, _round_up(N, width))


def emit_linear(
    module: ir.Module, name: str, *, K: int, N: int, bias: bool, activation: str | None, width: int
) -> ir.Function:
    plan = plan_gemm(K, N, width)
    fnty = ir.FunctionType(ir.VoidType(), [I64, PTR, PTR, PTR, PTR, PTR])
    fn = ir.Function(module, fnty, name)
    fn.attributes.add("nounwind")
    for arg, nm in zip(fn.args, ("M", "A", "W", "B", "C", "pack")):
        arg.name = nm
        if isinstance(arg.type, ir.PointerType):
            arg.add_attribute("noalias")
    kernels = MicrokernelEmitter(module, name, K=K, N=N, bias=bias, activation=activation,
                                 width=width)
    builder = ir.IRBuilder(fn.append_basic_block("entry"))
    M, A, W, B, C, pack = fn.args
    gen = _LinearEmitter(builder, plan, kernels, M, A, B if bias else None, C)
    small = builder.icmp_signed("<=", M, i64(plan.direct_max_rows))
    with builder.if_else(small) as (direct, packed):
        with direct:
            gen.sweep_rows(i64(0), W, plan.block(N), panel_step=plan.nr, ldb_full=N, ldb_tail=N)
        with packed:
            gen.packed_blocks(W, pack)
    builder.ret_void()
    return fn


class _LinearEmitter:
    """Emits the loops around the microkernels for one `emit_linear` function."""

    def __init__(self, builder, plan: GemmPlan, kernels: MicrokernelEmitter, M, A, B, C):
        self.b, self.plan, self.kernels = builder, plan, kernels
        self.M, self.A, self.B, self.C = M, A, B, C

    def packed_blocks(self, W, pack) -> None:
        """For each L2-sized block of columns: pack it, then run every row tile over it."""
        plan, b = self.plan, self.b
        n_full, rest = divmod(plan.N, plan.nc)
        full = plan.block(plan.nc)
        if n_full:
            with for_range(b, 0, n_full, name="jb") as jb:
                self._packed_block(W, pack, b.mul(jb, i64(plan.nc)), full)
        if rest:
            self._packed_block(W, pack, i64(n_full * plan.nc), plan.block(rest))

    def _packed_block(self, W, pack, j0, block: Block) -> None:
        plan = self.plan
        self._pack(W, pack, j0, block)
        tail_ld = block.tail_nv * plan.width
        self.sweep_rows(j0, pack, block, panel_step=plan.K * plan.nr, ldb_full=plan.nr,
                        ldb_tail=tail_ld, b_at_j0=False)

    def _pack(self, W, pack, j0, block: Block) -> None:
        """Copy W[:, j0:j0+cols] into panels: panel p holds rows k = 0..K-1 of its columns
        contiguously, so the microkernel streams it with unit stride and no 4K aliasing. The
        tail panel is zero-padded to whole vectors."""
        b, plan, w = self.b, self.plan, self.plan.width
        with for_range(b, 0, plan.K, name="pk") as k:
            src = fgep(b, W, b.add(b.mul(k, i64(plan.N)), j0))
            if block.full:
                with for_range(b, 0, block.full, name="pp") as p:
                    s = fgep(b, src, b.mul(p, i64(plan.nr)))
                    d = fgep(b, pack, b.add(b.mul(p, i64(plan.K * plan.nr)), b.mul(k, i64(plan.nr))))
                    for v in range(plan.nv):
                        vec = load_vector(b, fgep(b, s, v * w), w, w)
                        b.store(vec, fgep(b, d, v * w), align=4)
            if block.tail_nv:
                tail_ld = block.tail_nv * w
                s = fgep(b, src, block.full * plan.nr)
                d = fgep(b, pack, b.add(i64(block.full * plan.K * plan.nr), b.mul(k, i64(tail_ld))))
                for v in range(block.tail_nv):
                    lanes = block.tail_lanes if v == block.tail_nv - 1 else w
                    b.store(load_vector(b, fgep(b, s, v * w), w, lanes), fgep(b, d, v * w), align=4)

    def sweep_rows(self, j0, b_base, block: Block, *, panel_step: int, ldb_full: int,
                   ldb_tail: int, b_at_j0: bool = True) -> None:
        """Every row tile of A against the panels of one block: full mr-row tiles in a loop, then
        one switch-selected kernel family for the M % mr leftover rows."""
        b, plan = self.b, self.plan
        if b_at_j0:
            b_base = fgep(b, b_base, j0)
        args = (j0, b_base, block, panel_step, ldb_full, ldb_tail)
        m_full = b.mul(b.udiv(self.M, i64(plan.mr)), i64(plan.mr))
        with for_range(b, 0, m_full, plan.mr, name="r") as r0:
            self._panels(plan.mr, r0, *args)
        if plan.mr == 1:
            return
        rem = b.sub(self.M, m_full)
        after = b.append_basic_block("rows.end")
        switch = b.switch(rem, after)
        for mr in range(1, plan.mr):
            case = b.append_basic_block(f"rows.{mr}")
            switch.add_case(i64(mr), case)
            b.position_at_end(case)
            self._panels(mr, m_full, *args)
            b.branch(after)
        b.position_at_end(after)

    def _panels(self, mr, r0, j0, b_base, block: Block, panel_step, ldb_full, ldb_tail) -> None:
        b, plan = self.b, self.plan
        a = fgep(b, self.A, b.mul(r0, i64(plan.K)))
        c = fgep(b, self.C, b.add(b.mul(r0, i64(plan.N)), j0))
        bias = fgep(b, self.B, j0) if self.B is not None else ir.Constant(PTR, None)

        def call(shape: TileShape, panel, ldb: int) -> None:
            col = b.mul(panel, i64(plan.nr))
            bias_p = fgep(b, bias, col) if self.B is not None else bias
            b_p = fgep(b, b_base, b.mul(panel, i64(panel_step)))
            b.call(self.kernels.get(shape), [a, b_p, i64(ldb), bias_p, fgep(b, c, col)])

        if block.full:
            with for_range(b, 0, block.full, name="jp") as p:
                call(TileShape(mr, plan.nv, plan.width, plan.width), p, ldb_full)
        if block.tail_nv:
            shape = TileShape(mr, block.tail_nv, plan.width, block.tail_lanes)
            call(shape, i64(block.full), ldb_tail)
