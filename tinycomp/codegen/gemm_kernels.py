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

from . import vecmath
from .loops import F32, I1, I32, I64, PTR, as_i64, declare_vector_intrinsic, for_range, i64, vector_type


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


def _prefetch_intrinsic(module: ir.Module) -> ir.Function:
    name = "llvm.prefetch.p0"
    if name in module.globals:
        return module.globals[name]
    return ir.Function(module, ir.FunctionType(ir.VoidType(), [PTR, I32, I32, I32]), name)


def masked_load(builder: ir.IRBuilder, ptr: ir.Value, mask: ir.Value) -> ir.Value:
    """Load the lanes of `mask` (zero elsewhere) without touching memory outside them."""
    width = mask.type.count
    fn = _masked_intrinsic(builder.module, "load", width)
    return builder.call(fn, [ptr, ir.Constant(I32, 4), mask, ir.Constant(vector_type(width), None)])


def masked_store(builder: ir.IRBuilder, value: ir.Value, ptr: ir.Value, mask: ir.Value) -> None:
    fn = _masked_intrinsic(builder.module, "store", value.type.count)
    builder.call(fn, [value, ptr, ir.Constant(I32, 4), mask])


def load_vector(builder: ir.IRBuilder, ptr: ir.Value, width: int, lanes: int) -> ir.Value:
    """Load `lanes` floats (zero-filling the rest) without touching memory past them."""
    if lanes == width:
        return builder.load(ptr, typ=vector_type(width), align=4)
    return masked_load(builder, ptr, lane_mask(width, lanes))


def store_vector(builder: ir.IRBuilder, value: ir.Value, ptr: ir.Value, lanes: int) -> None:
    width = value.type.count
    if lanes == width:
        builder.store(value, ptr, align=4)
        return
    masked_store(builder, value, ptr, lane_mask(width, lanes))


def fgep(builder: ir.IRBuilder, base: ir.Value, index: int | ir.Value) -> ir.Value:
    return builder.gep(base, [as_i64(index)], source_etype=F32, inbounds=True)


def column_masks(builder: ir.IRBuilder, cols: ir.Value, nv: int, width: int) -> list[ir.Value]:
    """Lane masks of the `nv` vectors of a row holding `cols` (a run-time i64) real columns."""
    iv = ir.VectorType(I32, width)
    lanes = splat_i32(builder, builder.trunc(cols, I32), width)
    return [builder.icmp_signed("<", ir.Constant(iv, [v * width + i for i in range(width)]), lanes)
            for v in range(nv)]


def _splat(builder: ir.IRBuilder, value: ir.Value, vt: ir.VectorType) -> ir.Value:
    """insertelement + shufflevector with zeroinitializer operands: the same code as an undef
    splat, a fraction of the IR text (printing and parsing IR is a real share of compile time)."""
    zero = ir.Constant(vt, None)
    one = builder.insert_element(zero, value, ir.Constant(I32, 0))
    return builder.shuffle_vector(one, zero, ir.Constant(ir.VectorType(I32, vt.count), None))


def splat_i32(builder: ir.IRBuilder, value: ir.Value, width: int) -> ir.Value:
    return _splat(builder, value, ir.VectorType(I32, width))


def splat_f32(builder: ir.IRBuilder, value: ir.Value, width: int) -> ir.Value:
    return _splat(builder, value, vector_type(width))


def activation_function(module: ir.Module, activation: str, width: int) -> ir.Function:
    """`act(<W x float>)` as one internal noinline function per kernel module.

    Expensive activations are emitted once and called from every tile store instead of being
    inlined into each of the dozens of (tile row, vector) slots: that keeps IR size and compile time
    flat. The call costs a few spills per tile, nothing next to the K-long FMA loop.
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
    b.ret(vecmath.apply_activation(b, module, activation, fn.args[0]))
    return fn


def kernel_activation(activation: str | None) -> str:
    """The epilogue family of an activation: ReLU and none share the run-time-flag epilogue."""
    return "lin" if activation in (None, "relu") else activation


TILE_ARGS = ("K", "a", "lda", "b", "ldb", "c", "ldc", "cols")


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
    fnty = ir.FunctionType(ir.VoidType(), [I64, PTR, I64, PTR, I64, PTR, I64, I64])
    fn = ir.Function(module, fnty, name)
    fn.linkage = "internal"
    fn.attributes.add("nounwind")
    for arg, nm in zip(fn.args, TILE_ARGS, strict=True):
        arg.name = nm
        if isinstance(arg.type, ir.PointerType):
            arg.add_attribute("noalias")
    K, a, lda, b, ldb, c, ldc, cols = fn.args
    builder = ir.IRBuilder(fn.append_basic_block("entry"))
    if shape.exact:
        masks = [ir.Constant(ir.VectorType(I1, shape.width), [ir.Constant(I1, 1)] * shape.width)] * shape.nv
    else:
        masks = column_masks(builder, cols, shape.nv, shape.width)
    a_rows = [fgep(builder, a, builder.mul(i64(i), lda)) if i else a for i in range(shape.mr)]
    acc = _k_loop(builder, shape, K, a_rows, b, ldb, masks)
    w = shape.width
    for i in range(shape.mr):
        c_row = fgep(builder, c, builder.mul(i64(i), ldc)) if i else c
        for v in range(shape.nv):
            dst = fgep(builder, c_row, v * w)
            if shape.exact:
                builder.store(acc[i][v], dst, align=4)
            else:
                masked_store(builder, acc[i][v], dst, masks[v])
    builder.ret_void()
    return fn


EPILOGUE_ARGS = ("rows", "c", "ldc", "bias", "cols", "flags")


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
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [I64, PTR, I64, PTR, I64, I64]), name)
    fn.linkage = "internal"
    fn.attributes.add("nounwind")
    for arg, nm in zip(fn.args, EPILOGUE_ARGS, strict=True):
        arg.name = nm
        if isinstance(arg.type, ir.PointerType):
            arg.add_attribute("noalias")
    rows, c, ldc, bias, cols, flags = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    vt = vector_type(width)
    if kind == "lin":
        # relu(x) = x if x > 0 or x is NaN else +0; with floor -inf instead of +0 the same select
        # is the identity (-inf stays -inf, NaN stays NaN), so one epilogue serves both.
        is_relu = b.icmp_signed("!=", b.and_(flags, i64(1)), i64(0))
        floor = b.select(is_relu, ir.Constant(F32, 0.0), ir.Constant(F32, float("-inf")))
        floor_v = splat_f32(b, floor, width)

        def act(x):
            return b.select(b.fcmp_unordered(">", x, floor_v), x, floor_v)
    else:
        fn_act = activation_function(module, kind, width)

        def act(x):
            return b.call(fn_act, [x])

    has_bias = b.icmp_unsigned("!=", bias, ir.Constant(PTR, None))
    i1v = ir.VectorType(I1, width)
    bias_on = b.shuffle_vector(b.insert_element(ir.Constant(i1v, ir.Undefined), has_bias, ir.Constant(I32, 0)),
                               ir.Constant(i1v, ir.Undefined), ir.Constant(ir.VectorType(I32, width), [0] * width))
    neg_zero = ir.Constant(vt, [ir.Constant(F32, -0.0)] * width)
    iota = ir.Constant(ir.VectorType(I32, width), list(range(width)))
    n_vec = b.udiv(b.add(cols, i64(width - 1)), i64(width))
    load_fn = _masked_intrinsic(module, "load", width)
    c_is_zero = b.icmp_signed("!=", b.and_(flags, i64(2)), i64(0))
    with for_range(b, 0, n_vec, name="v") as v:
        col = b.mul(v, i64(width))
        mask = b.icmp_signed("<", iota, splat_i32(b, b.trunc(b.sub(cols, col), I32), width))
        bvec = b.call(load_fn, [fgep(b, bias, col), ir.Constant(I32, 4), b.and_(mask, bias_on), neg_zero])
        with for_range(b, 0, rows, name="r") as r:
            p = fgep(b, c, b.add(b.mul(r, ldc), col))
            x = b.select(c_is_zero, ir.Constant(vt, None), masked_load(b, p, mask))
            masked_store(b, act(b.fadd(x, bvec)), p, mask)
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
    zero = ir.Constant(vt, None)
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
        pf = _prefetch_intrinsic(builder.module)
        far = builder.gep(b_row, [ahead], source_etype=F32)
        for v in range(shape.nv):
            builder.call(pf, [builder.gep(far, [i64(v * w)], source_etype=F32), ir.Constant(I32, 0),
                              ir.Constant(I32, 3), ir.Constant(I32, 1)])
    if shape.exact:
        bvec = [builder.load(fgep(builder, b_row, v * w), typ=vt, align=4) for v in range(shape.nv)]
    else:
        bvec = [masked_load(builder, fgep(builder, b_row, v * w), masks[v]) for v in range(shape.nv)]
    acc = []
    for i, row in enumerate(a_rows):
        a_ik = splat_f32(builder, builder.load(fgep(builder, row, k), typ=F32), w)
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


# ------------------------------------------------------------------ narrow layers: dot products

@dataclass(frozen=True)
class NarrowShape:
    """A narrow layer (N < width outputs) computed as K-vectorized dot products.

    Each output C[m, n] is the dot product of row m of A with row n of Wt (W transposed, packed per
    call): `unroll` independent `<width x float>` accumulators per output over K, then a pairwise
    tree over their lanes. Rows go `rows` at a time (their outputs, contiguous in C, leave the tree
    as whole vectors: one epilogue and one store per `width` outputs); the last block of a batch
    recomputes its last row in place of the missing ones."""

    N: int
    width: int
    rows: int
    unroll: int
    tail: bool = True  # K may leave a partial step of unroll * width columns (else: no code for it)

    def suffix(self) -> str:
        return f"{self.N}r{self.rows}u{self.unroll}v{self.width}" + ("t" if self.tail else "")


def hsum_slots(builder: ir.IRBuilder, slots: list[ir.Value], width: int) -> ir.Value:
    """A `<width x float>` whose lane j is the sum of the lanes of `slots[j]` (len(slots) <= width),
    every sum a pairwise tree (lane t + lane t + width/2, ...), the other lanes +0.

    The slots are reduced together, so the shuffles move many partial sums at once: two vectors with
    groups of g lanes per slot become one with groups of g/2 (a two-source shuffle of the low halves
    of every group, one of the high halves, one add; an odd vector out pairs with zeros), down to
    one lane per slot. Every value stays `<width x float>` (no narrower vector types in the IR)."""
    vt = vector_type(width)
    zero = ir.Constant(vt, None)

    def shuffle(x, y, idx):
        return builder.shuffle_vector(x, y, ir.Constant(ir.VectorType(I32, len(idx)), idx))

    items: list[tuple[ir.Value, list[int | None]]] = [(s, [j]) for j, s in enumerate(slots)]
    g = width
    while g > 1:
        h, nxt = g // 2, []
        for i in range(0, len(items), 2):
            x, gx = items[i]
            y, gy = items[i + 1] if i + 1 < len(items) else (zero, [None] * len(gx))
            lo: list[int] = []
            hi: list[int] = []
            groups: list[int | None] = []
            for q in range(len(gx)):
                for half, out in ((0, lo), (h, hi)):
                    out += [q * g + half + t for t in range(h)] + [width + q * g + half + t for t in range(h)]
                groups += [gx[q], gy[q]]
            nxt.append((builder.fadd(shuffle(x, y, lo), shuffle(x, y, hi)), groups))
        items, g = nxt, h
    x, groups = items[0]
    return shuffle(x, zero, [groups.index(j) if j < len(slots) else width for j in range(width)])


def narrow_pack_kernel(module: ir.Module, N: int) -> ir.Function:
    """`void pack(i64 K, ptr W, i64 ldw, ptr Wt)`: Wt[n * ldw + k] = W[k * N + n] (W transposed,
    rows ldw apart). Only the K real columns are written: the dot kernel masks its K tail.
    Scalar copies, N per row of W (measured faster than masked gathers of W's columns on Zen 4)."""
    name = f"tinycomp.gemm.narrowpack{N}"
    if name in module.globals:
        return module.globals[name]
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [I64, PTR, I64, PTR]), name)
    fn.linkage = "internal"
    fn.attributes.add("nounwind")
    for arg, nm in zip(fn.args, ("K", "W", "ldw", "Wt"), strict=True):
        arg.name = nm
        if isinstance(arg.type, ir.PointerType):
            arg.add_attribute("noalias")
    K, W, ldw, Wt = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    dst = [fgep(b, Wt, b.mul(ldw, i64(n))) for n in range(N)]
    with for_range(b, 0, K, name="k") as k:
        src = fgep(b, W, b.mul(k, i64(N)))
        for n in range(N):
            b.store(b.load(fgep(b, src, n), typ=F32), fgep(b, dst[n], k))
    b.ret_void()
    return fn


NARROW_ARGS = ("M", "K", "A", "Wt", "ldw", "bias", "C", "flags")


def narrow_kernel(module: ir.Module, shape: NarrowShape, activation: str | None) -> ir.Function:
    """`void narrow(i64 M, i64 K, ptr A, ptr Wt, i64 ldw, ptr bias, ptr C, i64 flags)`:
    C = act(A @ Wt^T + bias) for an N-column layer, Wt holding W transposed (row n at Wt + n*ldw,
    K floats; nothing past K is read). `bias` may be null; flag bit 0 picks ReLU in the plain
    epilogue. K and M are run-time values (either may be 0), so layers of the same width and
    activation family share the kernel."""
    kind = kernel_activation(activation)
    name = f"tinycomp.gemm.narrow{shape.suffix()}.{kind}"
    if name in module.globals:
        return module.globals[name]
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [I64, I64, PTR, PTR, I64, PTR, PTR, I64]), name)
    fn.linkage = "internal"
    fn.attributes.add("nounwind")
    for arg, nm in zip(fn.args, NARROW_ARGS, strict=True):
        arg.name = nm
        if isinstance(arg.type, ir.PointerType):
            arg.add_attribute("noalias")
    M, K, A, Wt, ldw, bias, C, flags = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    N, w = shape.N, shape.width
    act, bias1 = _narrow_epilogue(b, kind, flags, bias, N, w)
    wt_rows = [fgep(b, Wt, b.mul(ldw, i64(n))) if n else Wt for n in range(N)]

    R = shape.rows
    last = b.sub(M, i64(1))
    with for_range(b, 0, M, R, name="rb") as r0:
        # Rows r0..r0+R; past M (the last block of a batch that is not a multiple of R) the
        # block recomputes row M-1 and stores nothing for it: one copy of the code for any M.
        a_rows = [A]
        for r in range(1, R):
            row = b.add(r0, i64(r))
            row = b.select(b.icmp_signed("<", row, M), row, last)
            a_rows.append(fgep(b, A, b.mul(row, K)))
        a_rows[0] = fgep(b, A, b.mul(r0, K))
        acc = _narrow_dot(b, shape, R, shape.unroll, K, a_rows, wt_rows)
        # The block's R*N outputs are contiguous in C: they leave the tree `width` at a time as
        # whole vectors, each with one bias add, activation and (masked) store.
        slots = [acc[r][n] for r in range(R) for n in range(N)]
        c = fgep(b, C, b.mul(r0, i64(N)))
        valid = b.mul(b.sub(M, r0), i64(N))  # outputs left in C from this block's start
        for j0 in range(0, len(slots), w):
            lanes = min(w, len(slots) - j0)
            bias_v = bias1 if j0 == 0 and lanes <= N else b.shuffle_vector(bias1, bias1, ir.Constant(
                ir.VectorType(I32, w), [(j0 + j) % N if j < lanes else N for j in range(w)]))
            out = act(b.fadd(hsum_slots(b, slots[j0:j0 + lanes], w), bias_v))
            left = b.sub(valid, i64(j0))
            left = b.select(b.icmp_signed("<", left, i64(lanes)), left, i64(lanes))
            masked_store(b, out, fgep(b, c, j0), column_masks(b, left, 1, w)[0])
    b.ret_void()
    return fn


def _narrow_epilogue(b: ir.IRBuilder, kind: str, flags, bias, N: int, w: int):
    """The activation as a function of a `<w x float>` and the bias of one row (-0.0, which changes
    no value, where absent or past N)."""
    if kind == "lin":
        is_relu = b.icmp_signed("!=", b.and_(flags, i64(1)), i64(0))
        floor = splat_f32(b, b.select(is_relu, ir.Constant(F32, 0.0), ir.Constant(F32, float("-inf"))), w)

        def act(x):
            return b.select(b.fcmp_unordered(">", x, floor), x, floor)
    else:
        fn_act = activation_function(b.module, kind, w)

        def act(x):
            return b.call(fn_act, [x])

    has_bias = b.icmp_unsigned("!=", bias, ir.Constant(PTR, None))
    bias_mask = b.and_(column_masks(b, i64(N), 1, w)[0], _splat_i1(b, has_bias, w))
    neg_zero = ir.Constant(vector_type(w), [ir.Constant(F32, -0.0)] * w)
    bias1 = b.call(_masked_intrinsic(b.module, "load", w), [bias, ir.Constant(I32, 4), bias_mask, neg_zero])
    return act, bias1


SMALL_UNROLL = 8  # accumulators over K (k mod 8) of the in-place small-batch narrow kernel


def narrow_small_kernel(module: ir.Module, N: int, width: int, activation: str | None) -> ir.Function:
    """`void small(i64 M, i64 K, ptr A, ptr W, ptr bias, ptr C, i64 flags)`: the narrow layer for
    small batches, W read in place (no transpose: for a few rows copying W costs more than the
    product). Row by row, C[m, :] = sum over k of A[m, k] * W[k, :] as one masked `<width x float>`
    (N lanes), accumulated in SMALL_UNROLL independent partial sums over k mod SMALL_UNROLL (short
    sequential sums and no FMA latency chain), summed pairwise at the end."""
    kind = kernel_activation(activation)
    name = f"tinycomp.gemm.narrowsmall{N}v{width}.{kind}"
    if name in module.globals:
        return module.globals[name]
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [I64, I64, PTR, PTR, PTR, PTR, I64]), name)
    fn.linkage = "internal"
    fn.attributes.add("nounwind")
    for arg, nm in zip(fn.args, ("M", "K", "A", "W", "bias", "C", "flags"), strict=True):
        arg.name = nm
        if isinstance(arg.type, ir.PointerType):
            arg.add_attribute("noalias")
    M, K, A, W, bias, C, flags = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    w, U = width, SMALL_UNROLL
    vt = vector_type(w)
    zero = ir.Constant(vt, None)
    act, bias1 = _narrow_epilogue(b, kind, flags, bias, N, w)
    mask = column_masks(b, i64(N), 1, w)[0]
    fma = declare_vector_intrinsic(module, "fma", w, 3)
    steps = b.udiv(K, i64(U))
    k_tail = b.mul(steps, i64(U))

    def term(a_row, k, acc):
        a = splat_f32(b, b.load(fgep(b, a_row, k), typ=F32), w)
        return b.call(fma, [a, masked_load(b, fgep(b, W, b.mul(k, i64(N))), mask), acc])

    with for_range(b, 0, M, name="r") as r:
        a_row = fgep(b, A, b.mul(r, K))
        pre = b.block
        loop, mid, tail, done = (b.append_basic_block(f"ns.{x}") for x in ("loop", "mid", "tail", "done"))
        b.cbranch(b.icmp_signed(">", steps, i64(0)), loop, mid)
        b.position_at_end(loop)
        it = b.phi(I64)
        phis = [b.phi(vt) for _ in range(U)]
        k0 = b.mul(it, i64(U))
        nxt = [term(a_row, b.add(k0, i64(u)), phis[u]) for u in range(U)]
        it_next = b.add(it, i64(1), flags=["nuw", "nsw"])
        b.cbranch(b.icmp_signed("<", it_next, steps), loop, mid)
        it.add_incoming(i64(0), pre)
        it.add_incoming(it_next, loop)
        for p, v in zip(phis, nxt, strict=True):
            p.add_incoming(zero, pre)
            p.add_incoming(v, loop)
        # The last K % U columns, one at a time into the first partial sum.
        b.position_at_end(mid)
        accs = []
        for v in nxt:
            p = b.phi(vt)
            p.add_incoming(zero, pre)
            p.add_incoming(v, loop)
            accs.append(p)
        b.cbranch(b.icmp_signed("<", k_tail, K), tail, done)
        b.position_at_end(tail)
        kt = b.phi(I64)
        acc_t = b.phi(vt)
        acc_t_next = term(a_row, kt, acc_t)
        kt_next = b.add(kt, i64(1), flags=["nuw", "nsw"])
        b.cbranch(b.icmp_signed("<", kt_next, K), tail, done)
        kt.add_incoming(k_tail, mid)
        kt.add_incoming(kt_next, tail)
        acc_t.add_incoming(accs[0], mid)
        acc_t.add_incoming(acc_t_next, tail)
        b.position_at_end(done)
        first = b.phi(vt)
        first.add_incoming(accs[0], mid)
        first.add_incoming(acc_t_next, tail)
        parts = [first, *accs[1:]]
        while len(parts) > 1:
            parts = [b.fadd(parts[i], parts[i + 1]) for i in range(0, len(parts), 2)]
        out = act(b.fadd(parts[0], bias1))
        masked_store(b, out, fgep(b, C, b.mul(r, i64(N))), mask)
    b.ret_void()
    return fn


def _splat_i1(builder: ir.IRBuilder, value: ir.Value, width: int) -> ir.Value:
    i1v = ir.VectorType(I1, width)
    one = builder.insert_element(ir.Constant(i1v, ir.Undefined), value, ir.Constant(I32, 0))
    zeros = ir.Constant(ir.VectorType(I32, width), [0] * width)
    return builder.shuffle_vector(one, ir.Constant(i1v, ir.Undefined), zeros)


def _narrow_dot(b, shape: NarrowShape, rows: int, unroll: int, K, a_rows, wt_rows):
    """acc[r][n] = A[r, 0:K] . Wt[n, 0:K] for a block of rows, each as `unroll` vector accumulators
    over interleaved K chunks (chunk c into accumulator c % unroll), summed pairwise at the end.
    Full steps of unroll*width columns run in a loop with plain loads; the last partial step once
    with masked loads of A and Wt (masked-off lanes are 0 * 0), so no memory past K is touched."""
    w, N = shape.width, shape.N
    vt = vector_type(w)
    zero = ir.Constant(vt, None)
    fma = declare_vector_intrinsic(b.module, "fma", w, 3)
    step = w * unroll
    steps = b.udiv(K, i64(step))
    k_tail = b.mul(steps, i64(step))
    rem = b.sub(K, k_tail)

    def body(k0, accs, masks):
        out = [[[None] * N for _ in range(rows)] for _ in range(unroll)]
        for u in range(unroll):
            k = b.add(k0, i64(u * w))
            if masks is None:
                wv = [b.load(fgep(b, wt_rows[n], k), typ=vt, align=4) for n in range(N)]
                av = [b.load(fgep(b, a_rows[r], k), typ=vt, align=4) for r in range(rows)]
            else:
                wv = [masked_load(b, fgep(b, wt_rows[n], k), masks[u]) for n in range(N)]
                av = [masked_load(b, fgep(b, a_rows[r], k), masks[u]) for r in range(rows)]
            for r in range(rows):
                for n in range(N):
                    out[u][r][n] = b.call(fma, [av[r], wv[n], accs[u][r][n]])
        return out

    def phis_from(pairs):
        res = [[[None] * N for _ in range(rows)] for _ in range(unroll)]
        for u in range(unroll):
            for r in range(rows):
                for n in range(N):
                    p = b.phi(vt)
                    for vals, blk in pairs:
                        p.add_incoming(vals if vals is zero else vals[u][r][n], blk)
                    res[u][r][n] = p
        return res

    pre = b.block
    loop = b.append_basic_block("nd.loop")
    tail_chk = b.append_basic_block("nd.tailchk")
    tail = b.append_basic_block("nd.tail") if shape.tail else None
    done = b.append_basic_block("nd.done")
    b.cbranch(b.icmp_signed(">", steps, i64(0)), loop, tail_chk)

    b.position_at_end(loop)
    it = b.phi(I64, name="it")
    acc_loop = [[[b.phi(vt) for _ in range(N)] for _ in range(rows)] for _ in range(unroll)]
    acc_next = body(b.mul(it, i64(step)), acc_loop, None)
    it_next = b.add(it, i64(1), flags=["nuw", "nsw"])
    loop_end = b.block
    b.cbranch(b.icmp_signed("<", it_next, steps), loop, tail_chk)
    it.add_incoming(i64(0), pre)
    it.add_incoming(it_next, loop_end)
    for u in range(unroll):
        for r in range(rows):
            for n in range(N):
                acc_loop[u][r][n].add_incoming(zero, pre)
                acc_loop[u][r][n].add_incoming(acc_next[u][r][n], loop_end)

    if shape.tail:
        b.position_at_end(tail_chk)
        acc_mid = phis_from([(zero, pre), (acc_next, loop_end)])
        b.cbranch(b.icmp_signed(">", rem, i64(0)), tail, done)

        b.position_at_end(tail)
        acc_tail = body(k_tail, acc_mid, column_masks(b, rem, unroll, w))
        tail_end = b.block
        b.branch(done)

        b.position_at_end(done)
        acc = phis_from([(acc_mid, tail_chk), (acc_tail, tail_end)])
    else:  # K is a multiple of the step: the loop is all
        b.position_at_end(tail_chk)
        acc = phis_from([(zero, pre), (acc_next, loop_end)])
        b.branch(done)
        b.position_at_end(done)
    result = [[None] * N for _ in range(rows)]
    for r in range(rows):
        for n in range(N):
            parts = [acc[u][r][n] for u in range(unroll)]
            while len(parts) > 1:
                parts = [b.fadd(parts[i], parts[i + 1]) if i + 1 < len(parts) else parts[i]
                         for i in range(0, len(parts), 2)]
            result[r][n] = parts[0]
    return result
