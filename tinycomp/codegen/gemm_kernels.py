"""Register-blocked GEMM microkernels: an `mr x (nv * width)` tile of C kept in vector registers.

A microkernel computes, for one tile,

    C[0:mr, 0:cols] = act(A[0:mr, 0:K] @ B[0:K, 0:cols] + bias[0:cols])

where B row k starts at `b + k * ldb`. The same kernel serves packed panels (`ldb` = panel width)
and the weight matrix read in place (`ldb` = N), so the batch-1 path and the packed path share code.
The accumulators are SSA values carried through phis: kernels are compiled at speed level 0, where
no mem2reg or unrolling would rescue loads and stores of an alloca'd tile.
"""

from __future__ import annotations

from dataclasses import dataclass

from llvmlite import ir

from . import vecmath
from .loops import F32, I1, I32, I64, PTR, as_i64, declare_vector_intrinsic, i64, splat, vector_type


@dataclass(frozen=True)
class TileShape:
    """`mr` rows by `nv` vectors of `width` lanes; only `last_lanes` lanes of the last vector are
    real columns (the rest are past the end of N and must never be stored)."""

    mr: int
    nv: int
    width: int
    last_lanes: int

    @property
    def cols(self) -> int:
        return (self.nv - 1) * self.width + self.last_lanes

    @property
    def masked(self) -> bool:
        return self.last_lanes < self.width

    def lanes(self, v: int) -> int:
        """Real lanes in vector `v` of a tile row."""
        return self.last_lanes if v == self.nv - 1 else self.width

    def suffix(self) -> str:
        tail = f"t{self.last_lanes}" if self.masked else ""
        return f"{self.mr}x{self.nv}{tail}"


def lane_mask(width: int, lanes: int) -> ir.Constant:
    return ir.Constant(ir.VectorType(I1, width), [ir.Constant(I1, int(i < lanes)) for i in range(width)])


def _masked_intrinsic(module: ir.Module, op: str, width: int) -> ir.Function:
    # The pre-LLVM-22 form (with an explicit i32 alignment) is still accepted and auto-upgraded,
    # so the same IR works on older llvmlite releases too.
    name = f"llvm.masked.{op}.v{width}f32.p0"
    if name in module.globals:
        return module.globals[name]
    vt, mask = vector_type(width), ir.VectorType(I1, width)
    if op == "load":
        fnty = ir.FunctionType(vt, [PTR, I32, mask, vt])
    else:
        fnty = ir.FunctionType(ir.VoidType(), [vt, PTR, I32, mask])
    return ir.Function(module, fnty, name)


def load_vector(builder: ir.IRBuilder, ptr: ir.Value, width: int, lanes: int) -> ir.Value:
    """Load `lanes` floats (zero-filling the rest) without touching memory past them."""
    if lanes == width:
        return builder.load(ptr, typ=vector_type(width), align=4)
    fn = _masked_intrinsic(builder.module, "load", width)
    zero = ir.Constant(vector_type(width), None)
    return builder.call(fn, [ptr, ir.Constant(I32, 4), lane_mask(width, lanes), zero])


def store_vector(builder: ir.IRBuilder, value: ir.Value, ptr: ir.Value, lanes: int) -> None:
    width = value.type.count
    if lanes == width:
        builder.store(value, ptr, align=4)
        return
    fn = _masked_intrinsic(builder.module, "store", width)
    builder.call(fn, [value, ptr, ir.Constant(I32, 4), lane_mask(width, lanes)])


def fgep(builder: ir.IRBuilder, base: ir.Value, index: int | ir.Value) -> ir.Value:
    return builder.gep(base, [as_i64(index)], source_etype=F32, inbounds=True)


def activation_function(module: ir.Module, activation: str, width: int) -> ir.Function:
    """`act(<W x float>)` as one internal function per kernel module.

    Expensive activations are emitted once and called from every tile store instead of being
    inlined into each of the dozens of (tile row, vector) slots: that keeps IR size and compile time
    flat. The call costs a few spills per tile, nothing next to the K-long FMA loop. ReLU is a
    single select, so it is always inlined.
    """
    name = f"tinycomp.gemm.{activation}.v{width}"
    if name in module.globals:
        return module.globals[name]
    vt = vector_type(width)
    fn = ir.Function(module, ir.FunctionType(vt, [vt]), name)
    fn.linkage = "internal"
    fn.attributes.add("nounwind")
    if activation == "relu":
        fn.attributes.add("alwaysinline")
    else:
        fn.attributes.add("noinline")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    b.ret(vecmath.apply_activation(b, module, activation, fn.args[0]))
    return fn


def tile_kernel(module: ir.Module, shape: TileShape, *, bias: bool, activation: str | None) -> ir.Function:
    """The kernel for one tile shape and epilogue, emitted once per module and shared by every
    layer that needs it (K, lda, ldb and ldc are arguments): fewer functions, faster compiles.

    `void tile(i64 rows, i64 K, ptr a, i64 lda, ptr b, i64 ldb, ptr bias, ptr c, i64 ldc)` with
    a, bias and c at the tile origin. `rows` (1..mr) is how many rows are real: rows past it are
    clamped to the last real row, so they recompute and re-store that row's bit-identical values
    instead of touching memory outside the caller's range. One kernel thus serves every leftover
    row count with no per-count variants and no branches in the epilogue.
    """
    name = f"tinycomp.gemm.tile{shape.suffix()}.{activation or 'id'}{'.bias' if bias else ''}"
    if name in module.globals:
        return module.globals[name]
    fnty = ir.FunctionType(ir.VoidType(), [I64, I64, PTR, I64, PTR, I64, PTR, PTR, I64])
    fn = ir.Function(module, fnty, name)
    fn.linkage = "internal"
    fn.attributes.add("nounwind")
    names = ("rows", "K", "a", "lda", "b", "ldb", "bias", "c", "ldc")
    for arg, nm in zip(fn.args, names, strict=True):
        arg.name = nm
        if isinstance(arg.type, ir.PointerType):
            arg.add_attribute("noalias")
    rows, K, a, lda, b, ldb, bias_ptr, c, ldc = fn.args
    builder = ir.IRBuilder(fn.append_basic_block("entry"))
    last = builder.sub(rows, i64(1))
    row_index = [builder.select(builder.icmp_signed("<", i64(i), rows), i64(i), last) if i else i64(0)
                 for i in range(shape.mr)]
    a_rows = [fgep(builder, a, builder.mul(r, lda)) for r in row_index]
    c_rows = [fgep(builder, c, builder.mul(r, ldc)) for r in row_index]
    acc = _k_loop(builder, shape, K, a_rows, b, ldb)
    act = activation_function(module, activation, shape.width) if activation else None
    _store_tile(builder, shape, bias_ptr if bias else None, act, c_rows, acc)
    builder.ret_void()
    return fn


def _rank1_update(builder, shape: TileShape, a_rows, b_row, k, acc):
    """acc += A[:, k] (outer) B[k, :]: nv vector loads, mr broadcasts, mr * nv FMAs."""
    fma = declare_vector_intrinsic(builder.module, "fma", shape.width, 3)
    w = shape.width
    bvec = [load_vector(builder, fgep(builder, b_row, v * w), w, shape.lanes(v)) for v in range(shape.nv)]
    out = []
    for i, row in enumerate(a_rows):
        a_ik = splat(builder.load(fgep(builder, row, k), typ=F32), w, builder)
        out.append([builder.call(fma, [a_ik, bvec[v], acc[i][v]]) for v in range(shape.nv)])
    return out


def _k_loop(builder, shape: TileShape, K, a_rows, b, ldb):
    """for k in 0..K: acc += rank-1 update, the tile carried in phis (K == 0 leaves it zero).

    The loop is not unrolled: measured as fast as 2x/4x unrolling and half the IR.
    The B row pointer advances by `ldb` each step instead of being recomputed from k.
    """
    zero = ir.Constant(vector_type(shape.width), None)
    init = [[zero] * shape.nv for _ in range(shape.mr)]
    entry = builder.block
    body = builder.append_basic_block("k.body")
    after = builder.append_basic_block("k.end")
    builder.cbranch(builder.icmp_signed(">", K, i64(0)), body, after)

    builder.position_at_end(body)
    k = builder.phi(I64, name="k")
    b_row = builder.phi(PTR, name="b.row")
    phis = [[builder.phi(zero.type) for _ in range(shape.nv)] for _ in range(shape.mr)]
    acc = _rank1_update(builder, shape, a_rows, b_row, k, phis)
    k_next = builder.add(k, i64(1), flags=["nuw", "nsw"])
    b_next = builder.gep(b_row, [ldb], source_etype=F32, inbounds=True)
    builder.cbranch(builder.icmp_signed("<", k_next, K), body, after)

    builder.position_at_end(after)
    k.add_incoming(i64(0), entry)
    k.add_incoming(k_next, body)
    b_row.add_incoming(b, entry)
    b_row.add_incoming(b_next, body)
    result = []
    for i in range(shape.mr):
        row = []
        for v in range(shape.nv):
            phis[i][v].add_incoming(init[i][v], entry)
            phis[i][v].add_incoming(acc[i][v], body)
            out = builder.phi(zero.type)
            out.add_incoming(init[i][v], entry)
            out.add_incoming(acc[i][v], body)
            row.append(out)
        result.append(row)
    return result


def _store_tile(builder, shape: TileShape, bias, act, c_rows, acc) -> None:
    """The fused epilogue: + bias, activation in registers, then (masked) stores."""
    w = shape.width
    for v in range(shape.nv):
        bvec = load_vector(builder, fgep(builder, bias, v * w), w, shape.lanes(v)) if bias is not None else None
        for i, c_row in enumerate(c_rows):
            x = acc[i][v]
            if bvec is not None:
                x = builder.fadd(x, bvec)
            if act is not None:
                x = builder.call(act, [x])
            store_vector(builder, x, fgep(builder, c_row, v * w), shape.lanes(v))
