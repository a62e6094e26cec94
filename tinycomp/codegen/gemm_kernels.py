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

# Unroll the k loop this many times: enough to hide the loop overhead without blowing up IR size.
K_UNROLL = 4


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


def activation_function(module: ir.Module, prefix: str, activation: str, width: int) -> ir.Function:
    """`act(<W x float>)` as one internal function per kernel module.

    Expensive activations are emitted once and called from every tile store instead of being
    inlined into each of the dozens of (tile row, vector) slots: that keeps IR size and compile time
    flat. The call costs a few spills per tile, nothing next to the K-long FMA loop. ReLU is a
    single select, so it is always inlined.
    """
    name = f"{prefix}.{activation}"
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


class MicrokernelEmitter:
    """Emits (once each) the tile kernels one Linear layer needs; K and N are baked in."""

    def __init__(self, module: ir.Module, prefix: str, *, K: int, N: int, bias: bool,
                 activation: str | None, width: int):
        self.module, self.prefix = module, prefix
        self.K, self.N, self.bias, self.width = K, N, bias, width
        self.act = activation_function(module, prefix, activation, width) if activation else None
        self.fma = declare_vector_intrinsic(module, "fma", width, 3)
        self._kernels: dict[TileShape, ir.Function] = {}

    def get(self, shape: TileShape) -> ir.Function:
        """`void kernel(ptr a, ptr b, i64 ldb, ptr bias, ptr c)`, a, bias and c at the tile origin."""
        if shape not in self._kernels:
            self._kernels[shape] = self._emit(shape)
        return self._kernels[shape]

    def _emit(self, shape: TileShape) -> ir.Function:
        fnty = ir.FunctionType(ir.VoidType(), [PTR, PTR, I64, PTR, PTR])
        fn = ir.Function(self.module, fnty, f"{self.prefix}.tile{shape.suffix()}")
        fn.linkage = "internal"
        fn.attributes.add("nounwind")
        for arg, nm in zip(fn.args, ("a", "b", "ldb", "bias", "c")):
            arg.name = nm
            if isinstance(arg.type, ir.PointerType):
                arg.add_attribute("noalias")
        a, b, ldb, bias, c = fn.args
        builder = ir.IRBuilder(fn.append_basic_block("entry"))
        rows = [fgep(builder, a, i * self.K) for i in range(shape.mr)]
        zero = ir.Constant(vector_type(self.width), None)
        acc = [[zero] * shape.nv for _ in range(shape.mr)]
        acc = self._k_loop(builder, shape, rows, b, ldb, acc)
        self._store_tile(builder, shape, bias, c, acc)
        builder.ret_void()
        return fn

    def _rank1_update(self, builder, shape, rows, b, ldb, k, acc):
        """acc += A[:, k] (outer) B[k, :]: nv vector loads, mr broadcasts, mr * nv FMAs."""
        b_row = builder.gep(b, [builder.mul(k, ldb)], source_etype=F32, inbounds=True)
        bvec = [
            load_vector(builder, fgep(builder, b_row, v * self.width), self.width,
                        shape.last_lanes if v == shape.nv - 1 else self.width)
            for v in range(shape.nv)
        ]
        out = []
        for i, row in enumerate(rows):
            a_ik = splat(builder.load(fgep(builder, row, k), typ=F32), self.width, builder)
            out.append([builder.call(self.fma, [a_ik, bvec[v], acc[i][v]]) for v in range(shape.nv)])
        return out

    def _k_loop(self, builder, shape, rows, b, ldb, acc):
        """Run k over 0..K: an unrolled loop for the bulk, straight-line code for K % K_UNROLL."""
        main = self.K - self.K % K_UNROLL
        if main:
            pre = builder.block
            body = builder.append_basic_block("k.body")
            after = builder.append_basic_block("k.end")
            builder.branch(body)
            builder.position_at_end(body)
            k = builder.phi(I64, name="k")
            k.add_incoming(i64(0), pre)
            phis = [[builder.phi(acc[i][v].type) for v in range(shape.nv)] for i in range(shape.mr)]
            for i in range(shape.mr):
                for v in range(shape.nv):
                    phis[i][v].add_incoming(acc[i][v], pre)
            cur = phis
            for u in range(K_UNROLL):
                ku = builder.add(k, i64(u), flags=["nuw", "nsw"]) if u else k
                cur = self._rank1_update(builder, shape, rows, b, ldb, ku, cur)
            k_next = builder.add(k, i64(K_UNROLL), flags=["nuw", "nsw"])
            k.add_incoming(k_next, builder.block)
            for i in range(shape.mr):
                for v in range(shape.nv):
                    phis[i][v].add_incoming(cur[i][v], builder.block)
            builder.cbranch(builder.icmp_signed("<", k_next, i64(main)), body, after)
            builder.position_at_end(after)
            acc = cur
        for k in range(main, self.K):
            acc = self._rank1_update(builder, shape, rows, b, ldb, i64(k), acc)
        return acc

    def _store_tile(self, builder, shape, bias, c, acc):
        """The fused epilogue: + bias, activation in registers, then (masked) stores."""
        for v in range(shape.nv):
            lanes = shape.last_lanes if v == shape.nv - 1 else self.width
            bvec = load_vector(builder, fgep(builder, bias, v * self.width), self.width, lanes) \
                if self.bias else None
            for i in range(shape.mr):
                x = acc[i][v]
                if bvec is not None:
                    x = builder.fadd(x, bvec)
                if self.act is not None:
                    x = builder.call(self.act, [x])
                store_vector(builder, x, fgep(builder, c, i * self.N + v * self.width), lanes)
