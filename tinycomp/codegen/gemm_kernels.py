"""Register-blocked GEMM microkernels: an `mr x (nv * width)` tile of C kept in vector registers.

A microkernel computes, for one tile,

    C[0:mr, 0:cols] = act(A[0:mr, 0:K] @ B[0:K, 0:cols] + bias[0:cols])

where B row k starts at `b + k * ldb`. The same kernel serves packed panels (`ldb` = panel width)
and the weight matrix read in place (`ldb` = N), so the small-batch paths and the packed path share
code. The accumulators are SSA values carried through phis: kernels are compiled at speed level 0,
where no mem2reg or unrolling would rescue loads and stores of an alloca'd tile.

Everything but the register tile itself is a run-time argument, so one kernel per (mr, nv) serves
every layer of a module: `K`, the strides, `cols` (1..nv*width real columns; lane masks built from
it keep loads and stores inside the row, and vectors wholly past it load nothing), `bias` (null for
none) and `relu` (0/1, for the plain and ReLU epilogues). Only the costly activations (sigmoid,
tanh, gelu) get kernels of their own. Fewer distinct kernels is the main lever on compile time.
"""

from __future__ import annotations

from dataclasses import dataclass

from llvmlite import ir

from .loops import (
    F32,
    I1,
    I32,
    I64,
    PTR,
    declare_vector_intrinsic,
    element_ptr,
    for_range,
    i64,
    internal_kernel,
    masked_intrinsic,
    splat_value,
    vector_constant,
    vector_type,
    zeros,
)
from .vector_ops import emit_op


@dataclass(frozen=True)
class TileShape:
    """`mr` rows by `nv` vectors of `width` lanes (`prefetch`: rows of B to prefetch ahead, 0 = off).

    Unless `exact`, loads of B and stores of C are masked to the run-time `cols`: a masked load
    cannot fold into the FMA, which costs the memory-bound one-row kernel ~8%, so that kernel is
    `exact` where the layer allows it."""

    mr: int
    nv: int
    width: int
    prefetch: int = 0
    exact: bool = False  # every call has cols == nv * width: plain loads and stores, no masks

    @property
    def nr(self) -> int:
        return self.nv * self.width

    def suffix(self) -> str:
        return f"{self.mr}x{self.nv}" + (f"p{self.prefetch}" if self.prefetch else "") + ("x" if self.exact else "")


def lane_mask(width: int, lanes: int) -> ir.Constant:
    return vector_constant(ir.VectorType(I1, width), [ir.Constant(I1, int(i < lanes)) for i in range(width)])


def prefetch_for_read(builder: ir.IRBuilder, ptr: ir.Value, vectors: int, width: int) -> None:
    """Prefetch the `vectors` vectors of `width` floats from `ptr` for reading, into every cache level
    (`llvm.prefetch`, locality 3; one per vector, a cache line for 16 floats). The addresses may lie
    past the buffer's end (prefetches never fault), so their GEPs are not `inbounds`."""
    name = "llvm.prefetch.p0"
    fn = builder.module.globals.get(name) or ir.Function(
        builder.module, ir.FunctionType(ir.VoidType(), [PTR, I32, I32, I32]), name)
    for v in range(vectors):
        at = builder.gep(ptr, [i64(v * width)], source_etype=F32)
        builder.call(fn, [at, ir.Constant(I32, 0), ir.Constant(I32, 3), ir.Constant(I32, 1)])


def masked_load(builder: ir.IRBuilder, ptr: ir.Value, mask: ir.Value) -> ir.Value:
    """Load the lanes of `mask` (zero elsewhere) without touching memory outside them."""
    width = mask.type.count
    fn = masked_intrinsic(builder.module, "load", width)
    return builder.call(fn, [ptr, ir.Constant(I32, 4), mask, zeros(vector_type(width))])


def masked_store(builder: ir.IRBuilder, value: ir.Value, ptr: ir.Value, mask: ir.Value) -> None:
    fn = masked_intrinsic(builder.module, "store", value.type.count)
    builder.call(fn, [value, ptr, ir.Constant(I32, 4), mask])


def column_masks(builder: ir.IRBuilder, cols: ir.Value, nv: int, width: int) -> list[ir.Value]:
    """Lane masks of the `nv` vectors of a row holding `cols` (a run-time i64) real columns."""
    iv = ir.VectorType(I32, width)
    lanes = splat_i32(builder, builder.trunc(cols, I32), width)
    return [builder.icmp_signed("<", vector_constant(iv, [v * width + i for i in range(width)]), lanes)
            for v in range(nv)]


def splat_i32(builder: ir.IRBuilder, value: ir.Value, width: int) -> ir.Value:
    return splat_value(builder, value, ir.VectorType(I32, width))


def splat_f32(builder: ir.IRBuilder, value: ir.Value, width: int) -> ir.Value:
    return splat_value(builder, value, vector_type(width))


def activation_function(module: ir.Module, activation: str, width: int) -> ir.Function:
    """`act(<W x float>)` as one internal noinline function per kernel module.

    Expensive activations are emitted once, for runs of ACT_VECTORS vectors, and called from the
    epilogue's loop instead of being inlined into it: that keeps IR size and compile time flat.
    LLVM splits the wide vector into ACT_VECTORS registers whose dependency chains then overlap.
    """
    name = f"tinycomp.gemm.{activation}.v{width}"
    if name in module.globals:
        return module.globals[name]
    vt = vector_type(width)
    fn = ir.Function(module, ir.FunctionType(vt, [vt]), name)
    fn.linkage = "internal"
    fn.attributes.add("nounwind")
    fn.attributes.add("noinline")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    b.ret(emit_op(b, activation, fn.args[0]))
    return fn


# Vectors per call of a costly activation in the epilogue (`epilogue_function`). Measured with
# benchmarks/gemm_ab.py (`ACT_VECTORS 1,2,4,8 --layer 1024x1024:gelu --rows 256`): the layer took
# 5,194 / 5,185 / 5,102 / 5,235 us (min), 303 / 295 / 212 / 345 us more than without an activation
# (8: the chains no longer fit the registers); the odd model (tanh) at 256 / 2048 rows 0.98 / 0.96
# with 4 against 1.
ACT_VECTORS = 4


def kernel_activation(activation: str | None) -> str:
    """The epilogue family of an activation: ReLU and none share the run-time-flag epilogue."""
    return "lin" if activation in (None, "relu") else activation


TILE_ARGS = (("K", I64), ("a", PTR), ("lda", I64), ("b", PTR), ("ldb", I64), ("c", PTR), ("ldc", I64), ("cols", I64))


def tile_kernel(module: ir.Module, shape: TileShape) -> ir.Function:
    """The kernel for one tile shape, emitted once per module and shared by every layer.

    `void tile(i64 K, ptr a, i64 lda, ptr b, i64 ldb, ptr c, i64 ldc, i64 cols)` with a and c at
    the tile origin; all `mr` rows are real, `cols` in 1..nv*width. It stores the raw A @ B tile;
    `epilogue_function` then adds the bias and applies the activation while the tile is in L1.
    Keeping the epilogue out of the kernels keeps them small (they get the full code generator,
    so their size is most of the compile time) and shared across activations.
    """
    name = f"tinycomp.gemm.tile{shape.suffix()}"
    if name in module.globals:
        return module.globals[name]
    fn = internal_kernel(module, name, TILE_ARGS)
    K, a, lda, b, ldb, c, ldc, cols = fn.args
    builder = ir.IRBuilder(fn.append_basic_block("entry"))
    if shape.exact:
        masks = [vector_constant(ir.VectorType(I1, shape.width), ir.Constant(I1, 1))] * shape.nv
    else:
        masks = column_masks(builder, cols, shape.nv, shape.width)
    a_rows = [element_ptr(builder, a, builder.mul(i64(i), lda)) if i else a for i in range(shape.mr)]
    acc = _k_loop(builder, shape, K, a_rows, b, ldb, masks)
    w = shape.width
    for i in range(shape.mr):
        c_row = element_ptr(builder, c, builder.mul(i64(i), ldc)) if i else c
        for v in range(shape.nv):
            dst = element_ptr(builder, c_row, v * w)
            if shape.exact:
                builder.store(acc[i][v], dst, align=4)
            else:
                masked_store(builder, acc[i][v], dst, masks[v])
    builder.ret_void()
    return fn


EPILOGUE_ARGS = (("rows", I64), ("c", PTR), ("ldc", I64), ("bias", PTR), ("cols", I64), ("flags", I64))


def epilogue_function(module: ir.Module, activation: str | None, width: int) -> ir.Function:
    """`void epi(i64 rows, ptr c, i64 ldc, ptr bias, i64 cols, i64 flags)`:
    C[r, 0:cols] = act(C[r, 0:cols] + bias[0:cols]) for r < rows, in place. `bias` may be null
    (no bias: -0.0 is added, which changes no value, -0 included). Flag bit 0 picks ReLU over the
    identity in the shared plain epilogue; bit 1 reads C as zeros (K == 0: no kernel ran).
    One per activation family and module."""
    kind = kernel_activation(activation)
    name = f"tinycomp.gemm.epi.{kind}.v{width}"
    if name in module.globals:
        return module.globals[name]
    fn = internal_kernel(module, name, EPILOGUE_ARGS)
    rows, c, ldc, bias, cols, flags = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    vt = vector_type(width)
    has_bias = b.icmp_unsigned("!=", bias, ir.Constant(PTR, None))
    i1v = ir.VectorType(I1, width)
    bias_on = splat_value(b, has_bias, i1v)
    neg_zero = vector_constant(vt, ir.Constant(F32, -0.0))
    iota = vector_constant(ir.VectorType(I32, width), list(range(width)))
    n_vec = b.udiv(b.add(cols, i64(width - 1)), i64(width))
    load_fn = masked_intrinsic(module, "load", width)
    c_is_zero = b.icmp_signed("!=", b.and_(flags, i64(2)), i64(0))

    def bias_pass(act=None) -> None:
        with for_range(b, 0, n_vec, name="v") as v:
            col = b.mul(v, i64(width))
            mask = b.icmp_signed("<", iota, splat_i32(b, b.trunc(b.sub(cols, col), I32), width))
            bvec = b.call(load_fn, [element_ptr(b, bias, col), ir.Constant(I32, 4), b.and_(mask, bias_on), neg_zero])
            with for_range(b, 0, rows, name="r") as r:
                p = element_ptr(b, c, b.add(b.mul(r, ldc), col))
                x = b.fadd(b.select(c_is_zero, zeros(vt), masked_load(b, p, mask)), bvec)
                masked_store(b, act(x) if act else x, p, mask)

    if kind == "lin":
        # relu(x) = x if x > 0 or x is NaN else +0; with floor -inf instead of +0 the same select
        # is the identity (-inf stays -inf, NaN stays NaN), so one epilogue serves both.
        is_relu = b.icmp_signed("!=", b.and_(flags, i64(1)), i64(0))
        floor = b.select(is_relu, ir.Constant(F32, 0.0), ir.Constant(F32, float("-inf")))
        floor_v = splat_f32(b, floor, width)
        bias_pass(lambda x: b.select(b.fcmp_unordered(">", x, floor_v), x, floor_v))
        b.ret_void()
        return fn
    # Costly activations: add the bias, then apply act to runs of ACT_VECTORS vectors at once, so
    # their long dependency chains (exp, a division) overlap instead of one call per vector. A tile
    # as wide as C (cols == ldc) is one contiguous run of rows * cols floats, so the masked-off
    # lanes of each row's last vector are not computed (100x37 tanh); a column panel is one run per row.
    bias_pass()
    wide = width * ACT_VECTORS
    fn_act = activation_function(module, kind, wide)
    wide_iota = vector_constant(ir.VectorType(I32, wide), list(range(wide)))

    def act_run(start, n) -> None:
        """act over the n floats at start (a run of one row or of whole rows)."""
        with for_range(b, 0, b.udiv(b.add(n, i64(wide - 1)), i64(wide)), name="q") as q:
            off = b.mul(q, i64(wide))
            mask = b.icmp_signed("<", wide_iota, splat_i32(b, b.trunc(b.sub(n, off), I32), wide))
            p = element_ptr(b, start, off)
            masked_store(b, b.call(fn_act, [masked_load(b, p, mask)]), p, mask)

    with b.if_else(b.icmp_signed("==", cols, ldc)) as (whole, part):
        with whole:
            act_run(c, b.mul(rows, cols))
        with part:
            with for_range(b, 0, rows, name="r") as r:
                act_run(element_ptr(b, c, b.mul(r, ldc)), cols)
    b.ret_void()
    return fn


def _k_loop(builder, shape: TileShape, K, a_rows, b, ldb, masks):
    """for k in 0..K (K >= 1): acc += A[:, k] (outer) B[k, :], the tile carried in phis.

    The loop is not unrolled (measured as fast as 2x/4x unrolling, half the IR). The B row pointer
    advances by `ldb` each step. With `shape.prefetch`, each step also prefetches the B row that
    many rows ahead: when B is W read in place with rows a page apart, the hardware prefetchers
    do not follow the stream.
    """
    w = shape.width
    vt = vector_type(w)
    zero = zeros(vt)
    fma = declare_vector_intrinsic(builder.module, "fma", w, 3)
    ahead = builder.mul(ldb, i64(shape.prefetch)) if shape.prefetch else None
    entry = builder.block
    body = builder.append_basic_block("k.body")
    after = builder.append_basic_block("k.end")
    builder.branch(body)  # K >= 1: the driver never calls a kernel with K == 0

    builder.position_at_end(body)
    k = builder.phi(I64, name="k")
    b_row = builder.phi(PTR, name="b.row")
    phis = [[builder.phi(vt) for _ in range(shape.nv)] for _ in range(shape.mr)]
    if ahead is not None:
        prefetch_for_read(builder, builder.gep(b_row, [ahead], source_etype=F32), shape.nv, w)
    if shape.exact:
        bvec = [builder.load(element_ptr(builder, b_row, v * w), typ=vt, align=4) for v in range(shape.nv)]
    else:
        bvec = [masked_load(builder, element_ptr(builder, b_row, v * w), masks[v]) for v in range(shape.nv)]
    acc = []
    for i, row in enumerate(a_rows):
        a_ik = splat_f32(builder, builder.load(element_ptr(builder, row, k), typ=F32), w)
        acc.append([builder.call(fma, [a_ik, bvec[v], phis[i][v]]) for v in range(shape.nv)])
    k_next = builder.add(k, i64(1), flags=["nuw", "nsw"])
    b_next = builder.gep(b_row, [ldb], source_etype=F32, inbounds=True)
    builder.cbranch(builder.icmp_signed("<", k_next, K), body, after)

    builder.position_at_end(after)
    k.add_incoming(i64(0), entry)
    k.add_incoming(k_next, body)
    b_row.add_incoming(b, entry)
    b_row.add_incoming(b_next, body)
    for i in range(shape.mr):
        for v in range(shape.nv):
            phis[i][v].add_incoming(zero, entry)
            phis[i][v].add_incoming(acc[i][v], body)
    return acc
