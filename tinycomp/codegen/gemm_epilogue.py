"""The GEMM epilogue, shared by the tiled kernels and the narrow ones: + bias, then the activation.

Two parts every GEMM path uses the same way:
- `load_bias`: the bias lanes of a mask, -0.0 in the others and everywhere when the bias pointer is
  null (adding -0.0 changes no value, -0 included), without touching memory outside the lanes;
- `activation_step`: ReLU and "no activation" share one run-time-flag select (flag bit 0), so
  layers with either share their kernels; a costly activation (sigmoid, tanh, gelu) is one internal
  function per module (`activation_function`).
`store_tile` applies both to a tile kernel's accumulators and stores them: every tile kernel ends
in it, with the activation a run-time function pointer, so layers of every activation share the
kernels.
"""

from __future__ import annotations

from collections.abc import Callable

from llvmlite import ir

from .cgutils import (
    F32,
    I1,
    I32,
    PTR,
    define_once,
    element_ptr,
    i64,
    masked_load,
    masked_store,
    splat_value,
    vector_constant,
    vector_type,
    zeros,
)
from .vector_ops import emit_op

# Vectors per call of a costly activation in the epilogue (`store_tile`). Measured with
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


def bias_lanes(b: ir.IRBuilder, bias: ir.Value, width: int) -> ir.Value:
    """All lanes when `bias` is not null, none when it is (see `load_bias`)."""
    has_bias = b.icmp_unsigned("!=", bias, ir.Constant(PTR, None))
    return splat_value(b, has_bias, ir.VectorType(I1, width))


def load_bias(b: ir.IRBuilder, ptr: ir.Value, mask: ir.Value, on: ir.Value) -> ir.Value:
    """The bias vector at `ptr` for the lanes of `mask`, -0.0 elsewhere or when `on` (from
    `bias_lanes`) says there is no bias: nothing outside the lanes, and nothing at all from a
    null pointer, is read."""
    return masked_load(b, ptr, b.and_(mask, on), fill=-0.0)


def store_tile(b: ir.IRBuilder, tile: list[list[ir.Value]], c_rows: list[ir.Value], masks: list[ir.Value] | None,
               bias: ir.Value, flags: ir.Value, kind: str, width: int) -> None:
    """C = act(tile + bias), stored row by row from registers: `tile` is the kernel's accumulators
    (rows of vectors of `width` lanes), row i stored at `c_rows[i]` under `masks` (None: whole
    vectors). `bias` may be null (-0.0 is added: no value changes, -0 included). `kind` is the
    epilogue family (`kernel_activation`): "lin" selects ReLU or the identity by flag bit 0 at
    run time; a costly activation is applied to each row in runs of ACT_VECTORS vectors (a
    shorter last run padded with zeros, whose results are not stored).

    In registers, right after the k-loop: a separate pass over the stored tile made every tile of
    a layer whose C does not fit L2 wait for its lines."""
    nv = len(tile[0])
    on = bias_lanes(b, bias, width)
    bias_v = [masked_load(b, b.gep(bias, [i64(v * width)], source_etype=F32), b.and_(masks[v], on) if masks else on,
                          fill=-0.0) for v in range(nv)]
    act = activation_step(b, kind, flags, width * (1 if kind == "lin" else ACT_VECTORS))
    lanes = list(range(width * ACT_VECTORS))
    for row, c in zip(tile, c_rows, strict=True):
        row = [b.fadd(x, bv) for x, bv in zip(row, bias_v, strict=True)]
        if kind == "lin":
            out = [act(x) for x in row]
        else:
            out = []
            for v0 in range(0, nv, ACT_VECTORS):
                run = row[v0:v0 + ACT_VECTORS]
                y = act(concat_vectors(b, run + [zeros(vector_type(width))] * (ACT_VECTORS - len(run))))
                part = [vector_constant(ir.VectorType(I32, width), lanes[i * width:(i + 1) * width])
                        for i in range(len(run))]
                out += [b.shuffle_vector(y, y, p) for p in part]
        for v, x in enumerate(out):
            masked_store(b, x, element_ptr(b, c, v * width), masks[v] if masks else None)


def concat_vectors(b: ir.IRBuilder, vectors: list[ir.Value]) -> ir.Value:
    """One vector of the lanes of `vectors` (a power-of-two count of equal vectors), in order."""
    while len(vectors) > 1:
        n = vectors[0].type.count
        both = vector_constant(ir.VectorType(I32, 2 * n), list(range(2 * n)))
        vectors = [b.shuffle_vector(x, y, both) for x, y in zip(vectors[::2], vectors[1::2], strict=True)]
    return vectors[0]
