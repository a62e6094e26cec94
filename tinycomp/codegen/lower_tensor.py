"""Lowerings of the tensor ops beyond rows of a batch: reductions over sample axes, softmax along any
sample axis, transposes, elementwise ops whose operands broadcast between sample dimensions, and
matmul with leading dimensions on both sides (batched matmul).

Each runs every sample on its own, as `module.py` requires of every kernel (the runtime splits the
batch across cores and row blocks): an op that would combine samples (a reduction over the batch
axis) has no rule and is refused by name. The tracer refuses it first, with the layer's name; these
checks catch graphs built by hand.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from llvmlite import ir

from ..ir.layout import is_batched, is_scalar_const
from ..ir.ops import broadcast_shapes, combined_axes, fmt_shape, map_leaves, normalized_axis, reduced_axes
from ..ir.shapes import sliced
from . import elementwise, gemm, reduce, small_matmul
from .cgutils import I64, PTR, compile_as_glue, element_ptr, for_range, i64, inline_glue, internal_kernel
from .elementwise import kernel_key
from .errors import LoweringError
from .strided import (
    Strides,
    broadcast_strides,
    coalesce,
    contiguous_strides,
    emit_strided,
    nest_loops,
    sample_dims,
    whole,
)

if TYPE_CHECKING:
    from .module import _Emitter


def samples(e: _Emitter, n: str) -> ir.Value:
    """How many samples the kernel of node n runs: the block's rows, or 1 for a batch-free value."""
    return e.rows if is_batched(e.g.shape(n)) else i64(1)


def check_samples_apart(e: _Emitter, n: str) -> None:
    g = e.g
    shape = g.shape(g.args(n)[0])
    if is_batched(shape) and 0 in combined_axes(g.op(n), len(shape), g.attrs(n)):
        raise LoweringError(f"{g.op(n)} {n} runs over the batch axis of {fmt_shape(shape)}: each sample's result "
                            "would depend on the others, and compiled code runs every sample on its own")


def lower_strided(e: _Emitter, n: str, expr: tuple, args: list[str], strides: list[Strides],
                  offsets: list[int] | None = None) -> None:
    """`expr` over graph operands `args` read with `strides`, each from `offsets` floats into its
    samples (a slice's start; 0 if not given); one-element constants become immediates."""
    leaves: list[tuple] = []
    kept: list[tuple[str, Strides, int]] = []
    for a, s, at in zip(args, strides, offsets or [0] * len(args), strict=True):
        if is_scalar_const(e.g, a):
            leaves.append(("const", float(np.asarray(e.g[a]["value"]).reshape(-1)[0])))
        else:
            leaves.append(("in", len(kept)))
            kept.append((a, s, at))
    expr = map_leaves(expr, lambda leaf: leaves[leaf[1]] if leaf[0] == "in" else leaf)
    dims, walked = coalesce(sample_dims(e.g.shape(n)), [s for _, s, _ in kept])
    key = ("strided", kernel_key(expr), dims, tuple(walked), e.width)
    try:
        fn = e.kernel(key, lambda name: emit_strided(e.module, name, expr, dims, walked, e.width))
    except NotImplementedError as exc:
        raise LoweringError(f"{e.g.op(n)} {n}: {exc}") from None
    e.call(fn, samples(e, n), e.pointer(n), *(element_ptr(e.b, e.pointer(a), i64(at)) if at else e.pointer(a)
                                             for a, _, at in kept))


def lower_broadcast(e: _Emitter, n: str, expr: tuple) -> None:
    """An elementwise node whose operands broadcast between sample dimensions ((N, 4, 1, 8) with
    (N, 1, 5, 8)): no row layout fits them all, so every operand is read through its strides."""
    g = e.g
    out = tuple(g.shape(n))
    lower_strided(e, n, expr, g.args(n), [broadcast_strides(tuple(g.shape(a)), out) for a in g.args(n)])


def lower_transpose(e: _Emitter, n: str) -> None:
    """A copy that reads the operand with two of its strides swapped; no code for one that only
    moves axes of size 1 (`scratch.keeps_order`: it shares its operand's buffer)."""
    if n in e.buffers.aliases:
        return
    g = e.g
    (x,) = g.args(n)
    shape = tuple(g.shape(x))
    ndim = len(shape)
    i, j = (int(g.attrs(n)[k]) % ndim for k in ("dim0", "dim1"))
    if is_batched(shape) and 0 in (i, j) and i != j:
        raise LoweringError(f"transpose {n} moves the batch axis of {fmt_shape(shape)}")
    lead = int(is_batched(shape))
    perm = list(range(ndim - lead))
    perm[i - lead], perm[j - lead] = perm[j - lead], perm[i - lead]
    own = whole(sample_dims(shape), bool(lead))
    lower_strided(e, n, ("in", 0), [x], [Strides(own.batch, tuple(own.dims[p] for p in perm))])


def lower_slice(e: _Emitter, n: str) -> None:
    """A copy that reads the operand from its slice's first element, along the axis `step` apart;
    no code for a slice its attentions read in place (`scratch.columns_read_in_place`)."""
    if n in e.buffers.aliases:
        return
    g = e.g
    (x,) = g.args(n)
    shape, attrs = tuple(g.shape(x)), g.attrs(n)
    lead = int(is_batched(shape))
    axis = normalized_axis(len(shape), int(attrs["axis"])) - lead
    if axis < 0:
        raise LoweringError(f"slice {n} runs along the batch axis of {fmt_shape(shape)}")
    own = whole(sample_dims(shape), bool(lead))
    start = sliced(shape[axis + lead], attrs["start"], attrs["stop"], attrs["step"])[0]
    read = tuple(s * int(attrs["step"]) if k == axis else s for k, s in enumerate(own.dims))
    lower_strided(e, n, ("in", 0), [x], [Strides(own.batch, read)], [start * own.dims[axis]])


def lower_concat(e: _Emitter, n: str) -> None:
    """One strided copy per operand into its part of the output: the output's strides, from the
    part's first element."""
    g = e.g
    out_shape = tuple(g.shape(n))
    lead = int(is_batched(out_shape))
    axis = normalized_axis(len(out_shape), int(g.attrs(n)["axis"])) - lead
    write = whole(sample_dims(out_shape), bool(lead))  # every part is written with the whole output's rows
    start = 0
    for x in g.args(n):
        dims = sample_dims(g.shape(x))
        if math.prod(dims) > 0:
            fn = copy_kernel(e, *coalesce(dims, [write, whole(dims, bool(lead))]))
            at = element_ptr(e.b, e.pointer(n), i64(start * write.dims[axis])) if start else e.pointer(n)
            e.call(fn, samples(e, n), at, e.pointer(x))
        start += dims[axis]


def copy_kernel(e: _Emitter, dims: tuple[int, ...], strides: list[Strides]) -> ir.Function:
    """The kernel copying a value read with strides[1] to where strides[0] write it."""
    write, read = strides
    return e.kernel(("copy_part", dims, write, read, e.width),
                    lambda name: emit_strided(e.module, name, ("in", 0), dims, [read], e.width, out=write))


def reduce_groups(dims: tuple[int, ...], axes: set[int]) -> list[tuple[int, bool]]:
    """The sample's dimensions as (size, reduced?) groups: size-1 dimensions dropped, neighbours with
    the same role merged (they are one contiguous run of the other)."""
    groups: list[tuple[int, bool]] = []
    for k, d in enumerate(dims):
        if d == 1:
            continue
        if groups and groups[-1][1] == (k in axes):
            groups[-1] = (groups[-1][0] * d, k in axes)
        else:
            groups.append((d, k in axes))
    return groups


def sample_operand(e: _Emitter, n: str) -> tuple[str, tuple, int]:
    """The one operand of a reduction or softmax n, its shape, and 1 if it is batched (else 0)."""
    check_samples_apart(e, n)
    (x,) = e.g.args(n)
    shape = tuple(e.g.shape(x))
    return x, shape, int(is_batched(shape))


def lower_reduce(e: _Emitter, n: str) -> None:
    g = e.g
    x, shape, lead = sample_operand(e, n)
    if math.prod(sample_dims(shape)) == 0:  # over no elements: NumPy's sum 0, mean NaN; max has no value
        if g.op(n) == "max":
            raise LoweringError(f"max {n} of {fmt_shape(shape)} runs over no elements and has no value "
                                "(NumPy raises there too)")
        lower_strided(e, n, ("const", 0.0 if g.op(n) == "sum" else math.nan), [], [])
        return
    axes = {a - lead for a in reduced_axes(len(shape), g.attrs(n).get("axis"))}
    groups = reduce_groups(sample_dims(shape), axes)
    if not any(r for _, r in groups):  # only size-1 axes: sum, mean and max of one element are that element
        out = sample_dims(g.shape(n))  # the same values in the same order; a sum from +0, as NumPy 2's
        expr = ("in", 0) if g.op(n) == "max" else ("add", ("in", 0), ("const", 0.0))  # (-0 + +0 is +0)
        lower_strided(e, n, expr, [x], [whole(out, bool(lead))])
        return
    key = ("reduce", g.op(n), tuple(groups), e.width)
    fn = e.kernel(key, lambda name: reduce.emit_reduce(e.module, name, g.op(n), groups, e.width))
    e.call(fn, samples(e, n), e.pointer(n), e.pointer(x))


def lower_softmax(e: _Emitter, n: str) -> None:
    """Along the last axis: rows (`elementwise.emit_softmax`); along another: lane-wise down the axis."""
    x, shape, lead = sample_operand(e, n)
    axis = int(e.g.attrs(n).get("dim", -1)) % len(shape) - lead
    dims = sample_dims(shape)
    outer, size, inner = math.prod(dims[:axis]), dims[axis], math.prod(dims[axis + 1:])
    if inner == 1:
        fn = e.kernel(("softmax", size, e.width), lambda name: elementwise.emit_softmax(e.module, name, size, e.width))
        rows = samples(e, n) if outer == 1 else e.b.mul(samples(e, n), i64(outer))
    else:
        fn = e.kernel(("softmax_axis", outer, size, inner, e.width),
                      lambda name: reduce.emit_softmax_axis(e.module, name, outer, size, inner, e.width))
        rows = samples(e, n)
    e.call(fn, rows, e.pointer(n), e.pointer(x))


# ---------------------------------------------------------------- matmul

def _as_matrices(a: tuple, b: tuple) -> tuple[tuple, tuple]:
    """The shapes of a @ b with 1-D operands promoted as NumPy does: a to a row, b to a column."""
    return (1, *a) if len(a) == 1 else tuple(a), (*b, 1) if len(b) == 1 else tuple(b)


def matmul_dims(a: tuple, b: tuple) -> tuple[tuple, int, int, int]:
    """(leading dims of the output, I, K, J) of a @ b: the product of I x K and K x J matrices for every
    index of the (broadcast) leading dims (`_as_matrices`)."""
    a2, b2 = _as_matrices(a, b)
    lead = broadcast_shapes(a2[:-2], b2[:-2])
    return lead, int(a2[-2]) if a2[-2] is not None else -1, int(b2[-2]), int(b2[-1])


def lower_matmul(e: _Emitter, n: str) -> None:
    """x @ W with W a matrix or vector without the batch: one GEMM over all rows. Otherwise (q @ k^T,
    weights @ v, a shared matrix times batched ones): one GEMM of I x K by K x J per index of the
    leading dims, each slice read where it lies (a broadcast operand's slice is reused)."""
    g = e.g
    x, w = g.args(n)
    a, b = tuple(g.shape(x)), tuple(g.shape(w))
    lead, rows, k, j = matmul_dims(a, b)

    def gemm_fn() -> ir.Function:
        return e.kernel(("linear", k, j, False, None, e.width, e.registers), lambda name: inline_glue(
            gemm.emit_linear(e.module, name, K=k, N=j, bias=False, activation=None, width=e.width,
                             registers=e.registers, cache=e.cache, masked=e.masked_tiles)))
    if len(b) <= 2 and not is_batched(b):
        e.call(gemm_fn(), e.row_count(x, k), e.pointer(x), e.pointer(w), ir.Constant(PTR, None), e.pointer(n),
               e.pack_buffer())
        return
    if rows < 0:
        raise LoweringError(f"matmul {n}: {fmt_shape(a)} @ {fmt_shape(b)} multiplies along the batch axis")
    small = rows > 0 and small_matmul.is_small(k, j, e.width, e.registers)
    product = small_matmul.small_matmul(e.module, rows, k, j, e.width, e.registers) if small else gemm_fn()
    a2, b2 = _as_matrices(a, b)
    dims = sample_dims(lead)
    sa = broadcast_strides((*a2[:-2], 1), (*lead, 1))  # one stride unit per leading index, then scaled
    sb = broadcast_strides((*b2[:-2], 1), (*lead, 1))
    slices = [Strides(s.batch * rows * k, tuple(d * rows * k for d in s.dims[:-1])) if i == 0 else
              Strides(s.batch * k * j, tuple(d * k * j for d in s.dims[:-1])) for i, s in enumerate((sa, sb))]
    walked = [Strides(math.prod(dims) * rows * j, tuple(c * rows * j for c in contiguous_strides(dims))), *slices]
    dims, walked = coalesce(dims, walked)
    key = ("bmm", dims, tuple(walked), rows, k, j, e.width, small)
    fn = e.kernel(key, lambda name: emit_batched_matmul(e.module, name, product, dims, walked, rows, small))
    e.call(fn, samples(e, n), e.pointer(n), e.pointer(x), e.pointer(w), e.pack_buffer())


def emit_batched_matmul(module: ir.Module, name: str, product: ir.Function, dims: tuple[int, ...],
                        walked: list[Strides], rows: int, small: bool) -> ir.Function:
    """`void name(i64 M, ptr out, ptr a, ptr b, ptr pack)`: for every sample and leading index, the
    matrix product on the slices at the strides `walked` (output, a, b): `product` is the GEMM of
    `rows` rows, or with `small` the `small_matmul` of (a, b, c)."""
    fn = internal_kernel(module, name, [("M", I64), ("out", PTR), ("a", PTR), ("b", PTR), ("pack", PTR)])
    compile_as_glue(fn)  # loops of addresses around the GEMM calls
    n_rows, out, a, b, pack = fn.args
    builder = ir.IRBuilder(fn.append_basic_block("entry"))

    def call(at: list[ir.Value]) -> None:
        c, x, w = (element_ptr(builder, p, off) for p, off in zip((out, a, b), at, strict=True))
        builder.call(product, [x, w, c] if small else [i64(rows), x, w, ir.Constant(PTR, None), c, pack])

    with for_range(builder, 0, n_rows, name="m") as loop:
        at = [builder.mul(loop.index, i64(s.batch), flags=["nsw"]) for s in walked]
        nest_loops(builder, dims, [s.dims for s in walked], at, call)
    builder.ret_void()
    return fn
