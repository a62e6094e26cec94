"""The GEMM epilogue, shared by the tiled kernels and the narrow ones: + bias, then the activation.

Two parts every GEMM path uses the same way:
- `load_bias`: the bias lanes of a mask, -0.0 in the others and everywhere when the bias pointer is
  null (adding -0.0 changes no value, -0 included), without touching memory outside the lanes or
  naming an unmapped page;
- `activation_step`: ReLU and "no activation" share one run-time-flag select (flag bit 0), so
  layers with either share their kernels; a costly activation (sigmoid, tanh, gelu) is one internal
  function per module (`activation_function`).
The main row tiles apply both to their accumulators before storing them (`store_tile`); the
kernels of the few leftover rows store the raw tile, which `epilogue_function` then finishes in place.
"""

from __future__ import annotations

from collections.abc import Callable

from llvmlite import ir

from .cgutils import (
    F32,
    I32,
    I64,
    PTR,
    column_masks,
    define_once,
    element_ptr,
    for_range,
    i64,
    if_then,
    internal_kernel,
    masked_load,
    masked_store,
    splat,
    splat_value,
    vector_constant,
    vector_type,
    zeros,
)
from .vector_ops import emit_op

# Vectors per call of a costly activation in the epilogues. Measured with
# benchmarks/gemm_ab.py (`ACT_VECTORS 1,2,4,8 --layer 1024x1024:gelu --rows 256`): the layer took
# 5,194 / 5,185 / 5,102 / 5,235 us (min), 303 / 295 / 212 / 345 us more than without an activation
# (8: the chains no longer fit the registers); the odd model (tanh) at 256 / 2048 rows 0.98 / 0.96
# with 4 against 1.
ACT_VECTORS = 4


def kernel_activation(activation: str | None) -> str:
    """The epilogue family of an activation: ReLU and none share the run-time-flag epilogue."""
    return "lin" if activation in (None, "relu") else activation


def activation_function(module: ir.Module, activation: str, width: int) -> ir.Function:
    """`act(<W x float>)` as one internal noinline function per kernel module.

    Expensive activations are emitted once, for runs of ACT_VECTORS vectors, and called from the
    epilogue's loop instead of being inlined into it: that keeps IR size and compile time flat.
    LLVM splits the wide vector into ACT_VECTORS registers whose dependency chains then overlap.
    """
    def build(name: str) -> ir.Function:
        vt = vector_type(width)
        fn = ir.Function(module, ir.FunctionType(vt, [vt]), name)
        fn.linkage = "internal"
        fn.attributes.add("nounwind")
        fn.attributes.add("noinline")
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        b.ret(emit_op(b, activation, fn.args[0]))
        return fn
    return define_once(module, f"tinycomp.gemm.{activation}.v{width}", build)


def activation_step(b: ir.IRBuilder, kind: str, flags: ir.Value, width: int) -> Callable[[ir.Value], ir.Value]:
    """The activation of epilogue family `kind` on a `<width x float>`.

    "lin": relu(x) = x if x > 0 or x is NaN else +0; with floor -inf instead of +0 the same select
    is the identity (-inf stays -inf, NaN stays NaN), so flag bit 0 picks ReLU at run time."""
    if kind == "lin":
        is_relu = b.icmp_signed("!=", b.and_(flags, i64(1)), i64(0))
        floor = b.select(is_relu, ir.Constant(F32, 0.0), ir.Constant(F32, float("-inf")))
        floor_v = splat_value(b, floor, vector_type(width))
        return lambda x: b.select(b.fcmp_unordered(">", x, floor_v), x, floor_v)
    fn_act = activation_function(b.module, kind, width)
    return lambda x: b.call(fn_act, [x])


def has_bias(b: ir.IRBuilder, bias: ir.Value) -> ir.Value:
    """Whether the bias pointer is not null (null: no bias, see `load_bias`)."""
    return b.icmp_unsigned("!=", bias, ir.Constant(PTR, None))


def load_bias(b: ir.IRBuilder, ptr: ir.Value, mask: ir.Value | None, present: ir.Value, width: int) -> ir.Value:
    """The bias vector at `ptr` for the lanes of `mask` (None: all), -0.0 elsewhere or when `present`
    (from `has_bias`) is false: nothing outside the lanes is read, and without a bias no load is
    made at all.

    A branch, not a load with every lane off: such a load reads nothing, but the core still checks
    the page it names, and the null bias's page is not mapped: a microcode assist on every tile.
    `x @ W` ran 1.33 x as long as `x @ W + b` (benchmarks/RESULTS.md, "GEMMs without a bias")."""
    with if_then(b, present, carry=[splat(-0.0, width)], name="bias") as branch:
        branch.carry(masked_load(b, ptr, mask, width=width, fill=-0.0))
    return branch.results[0]


EPILOGUE_ARGS = (("rows", I64), ("c", PTR), ("ldc", I64), ("bias", PTR), ("cols", I64), ("flags", I64),
                 ("res", PTR))


def family_suffix(kind: str, residual: bool) -> str:
    """A kernel name's epilogue part: the family (`kernel_activation`) and the residual add."""
    return kind + (".res" if residual else "")


def epilogue_function(module: ir.Module, activation: str | None, width: int, residual: bool = False) -> ir.Function:
    """`void epi(i64 rows, ptr c, i64 ldc, ptr bias, i64 cols, i64 flags, ptr res)`:
    C[r, 0:cols] = act(C[r, 0:cols] + bias[0:cols]) (+ R[r, 0:cols] with `residual`, R laid out
    as C at `res`; unread without) for r < rows, in place. `bias` may be null (no bias: -0.0 is
    added, which changes no value, -0 included). Flag bit 0 picks ReLU over the identity in the
    shared plain epilogue; bit 1 reads C as zeros (K == 0: no kernel ran). One per activation
    family, residual or not, and module."""
    kind = kernel_activation(activation)
    return define_once(module, f"tinycomp.gemm.epi.{family_suffix(kind, residual)}.v{width}",
                       lambda name: _emit_epilogue(module, name, kind, width, residual))


def _emit_epilogue(module: ir.Module, name: str, kind: str, width: int, residual: bool) -> ir.Function:
    fn = internal_kernel(module, name, EPILOGUE_ARGS)
    rows, c, ldc, bias, cols, flags, res = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    vt = vector_type(width)
    bias_on = has_bias(b, bias)
    n_vec = b.udiv(b.add(cols, i64(width - 1)), i64(width))
    c_is_zero = b.icmp_signed("!=", b.and_(flags, i64(2)), i64(0))

    def tile_pass(*, with_bias: bool, act=None, add_residual: bool = False) -> None:
        """Each vector of the tile, column by column: [+ bias] [act] [+ residual]."""
        with for_range(b, 0, n_vec, name="v") as vloop:
            col = b.mul(vloop.index, i64(width))
            [mask] = column_masks(b, b.sub(cols, col), 1, width)
            bvec = load_bias(b, element_ptr(b, bias, col), mask, bias_on, width) if with_bias else None
            # the row pointers are carried, not recomputed: the backend runs without loop strength
            # reduction (`target.HOST_LSR`)
            start = [element_ptr(b, c, col)] + ([element_ptr(b, res, col)] if add_residual else [])
            with for_range(b, 0, rows, name="r", carry=start) as rloop:
                p, *q = rloop.carried
                x = masked_load(b, p, mask)
                if bvec is not None:
                    x = b.fadd(b.select(c_is_zero, zeros(vt), x), bvec)
                x = act(x) if act else x
                if add_residual:
                    x = plus_residual(b, x, q[0], mask)
                masked_store(b, x, p, mask)
                rloop.carry(*[element_ptr(b, ptr, ldc) for ptr in (p, *q)])

    if kind == "lin":
        tile_pass(with_bias=True, act=activation_step(b, kind, flags, width), add_residual=residual)
        b.ret_void()
        return fn
    # Costly activations: add the bias, then apply act to runs of ACT_VECTORS vectors at once, so
    # their long dependency chains (exp, a division) overlap instead of one call per vector. A tile
    # as wide as C (cols == ldc) is one contiguous run of rows * cols floats, so the masked-off
    # lanes of each row's last vector are not computed (100x37 tanh); a column panel is one run per row.
    tile_pass(with_bias=True)
    act = activation_step(b, kind, flags, width * ACT_VECTORS)
    with b.if_else(b.icmp_signed("==", cols, ldc)) as (whole, part):
        with whole:
            act_in_place(b, act, c, b.mul(rows, cols), width)
        with part:
            with for_range(b, 0, rows, name="r") as r:
                act_in_place(b, act, element_ptr(b, c, b.mul(r.index, ldc)), cols, width)
    if residual:
        tile_pass(with_bias=False, add_residual=True)
    b.ret_void()
    return fn


def act_in_place(b: ir.IRBuilder, act, start: ir.Value, n: ir.Value, width: int, res: ir.Value | None = None) -> None:
    """x = act(x) (+ the float at the same place in `res`) for the n floats x at `start` (a run of
    one row or of whole rows), in runs of ACT_VECTORS vectors of `width` (`act` takes a run), the
    last one masked."""
    wide = width * ACT_VECTORS
    with for_range(b, 0, b.udiv(b.add(n, i64(wide - 1)), i64(wide)), name="q") as q:
        off = b.mul(q.index, i64(wide))
        [mask] = column_masks(b, b.sub(n, off), 1, wide)
        p = element_ptr(b, start, off)
        x = act(masked_load(b, p, mask))
        if res is not None:
            x = plus_residual(b, x, element_ptr(b, res, off), mask)
        masked_store(b, x, p, mask)


FINISH_ARGS = (("n", I64), ("c", PTR), ("res", PTR))


def finish_function(module: ir.Module, kind: str, width: int, residual: bool = False) -> ir.Function:
    """`void finish(i64 n, ptr c, ptr res)`: c[i] = act(c[i]) (+ res[i] with `residual`; unread
    without) for i < n, in runs of ACT_VECTORS vectors, `kind` a costly activation's epilogue family
    (`kernel_activation`). For the tiles of a layer narrower than a vector, whose rows (bias added)
    lie back to back in C (`gemm_driver._Driver._finish_tiles`)."""
    def build(name: str) -> ir.Function:
        fn = internal_kernel(module, name, FINISH_ARGS)
        n, c, res = fn.args
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        act_in_place(b, activation_step(b, kind, i64(0), width * ACT_VECTORS), c, n, width, res if residual else None)
        b.ret_void()
        return fn
    return define_once(module, f"tinycomp.gemm.finish.{family_suffix(kind, residual)}.v{width}", build)


def store_tile(b: ir.IRBuilder, tile: list[list[ir.Value]], c_rows: list[ir.Value], masks: list[ir.Value] | None,
               bias: ir.Value, flags: ir.Value, kind: str | None, width: int,
               res_rows: list[ir.Value] | None = None) -> None:
    """Store a tile kernel's accumulators: `tile` holds rows of vectors of `width` lanes, row i
    stored at `c_rows[i]` under `masks` (None: whole vectors). With `kind` None, the raw sums (for
    `epilogue_function` to finish); with an epilogue family (`kernel_activation`), act(tile + bias)
    straight from the registers. `bias` may be null (-0.0 is added: no value changes, -0 included);
    "lin" selects ReLU or the identity by flag bit 0 at run time; a costly activation is applied to
    the tile's vectors, row after row, in runs of ACT_VECTORS (a shorter last run padded with zeros,
    whose results are not stored). With `res_rows` (row i of the residual, laid out as C) it is added last.

    The main row tiles finish in registers (`tile_kernel`): the separate pass over a stored tile
    made each tile of a layer whose C does not fit L2 wait for its lines. The transformer block at
    batch 32 took 8.75-8.78 ms finished in registers against 9.19-9.40 ms with the pass (one
    thread, in-process medians, processes alternated, a one-off script not in the repo; the mlp at
    2048 rows 0.98x); the bigger tile body costs the reference MLP ~2 ms of code generation."""
    nv = len(tile[0])
    out_rows = tile
    if kind is not None:
        present = has_bias(b, bias)
        bias_v = [load_bias(b, b.gep(bias, [i64(v * width)], source_etype=F32), masks[v] if masks else None, present,
                            width)
                  for v in range(nv)]
        act = activation_step(b, kind, flags, width * (1 if kind == "lin" else ACT_VECTORS))
        # the tile's vectors in runs across its rows: a tile one vector wide (N <= 16) padded each row
        # to a run of ACT_VECTORS, 4 x the work (Linear(4, 1) + tanh ran 8 x slower than eager)
        done = _finish_vectors(b, [b.fadd(x, bv) for row in tile for x, bv in zip(row, bias_v, strict=True)],
                               act, kind, width)
        out_rows = [done[i * nv:(i + 1) * nv] for i in range(len(tile))]
    for i, (row, c) in enumerate(zip(out_rows, c_rows, strict=True)):
        for v, x in enumerate(row):
            mask = masks[v] if masks else None
            if res_rows is not None:
                x = plus_residual(b, x, element_ptr(b, res_rows[i], v * width), mask)
            masked_store(b, x, element_ptr(b, c, v * width), mask)


def _finish_vectors(b: ir.IRBuilder, vectors: list[ir.Value], act, kind: str, width: int) -> list[ir.Value]:
    """act over vectors: per vector for "lin", else in runs of ACT_VECTORS vectors (a shorter last
    run padded with zeros, whose lanes are dropped)."""
    if kind == "lin":
        return [act(x) for x in vectors]
    lanes = list(range(width * ACT_VECTORS))
    out = []
    for v0 in range(0, len(vectors), ACT_VECTORS):
        run = vectors[v0:v0 + ACT_VECTORS]
        y = act(concat_vectors(b, run + [zeros(vector_type(width))] * (ACT_VECTORS - len(run))))
        out += [b.shuffle_vector(y, y, vector_constant(ir.VectorType(I32, width), lanes[k * width:(k + 1) * width]))
                for k in range(len(run))]
    return out


def plus_residual(b: ir.IRBuilder, x: ir.Value, at: ir.Value, mask: ir.Value | None) -> ir.Value:
    """x + the residual's lanes of `mask` at `at` (all lanes when `mask` is None): every GEMM path
    adds R last, after the activation, as eager's `act(x @ W + b) + r` does."""
    return b.fadd(x, masked_load(b, at, mask, width=x.type.count))


def concat_vectors(b: ir.IRBuilder, vectors: list[ir.Value]) -> ir.Value:
    """One vector of the lanes of `vectors` (a power-of-two count of equal vectors), in order."""
    while len(vectors) > 1:
        n = vectors[0].type.count
        both = vector_constant(ir.VectorType(I32, 2 * n), list(range(2 * n)))
        vectors = [b.shuffle_vector(x, y, both) for x, y in zip(vectors[::2], vectors[1::2], strict=True)]
    return vectors[0]
