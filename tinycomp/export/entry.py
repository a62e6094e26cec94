"""The exported entry points, as LLVM IR linked next to the lowered model.

    int <name>_forward(const float *x, float *y, int64_t batch, void *scratch)
    int <name>_forward(const float *x, const float *x1, ..., float *y, int64_t batch, void *scratch)
                                                          (a forward() of several inputs: one pointer each)
    int <name>_forward(..., void *scratch, uint64_t seed, uint64_t offset)   (training=True: dropout draws)
    int <name>_bind_weights(const void *weights)          (weights="external" only)

`<name>_forward` checks its arguments, builds the pointer table the lowered entry
(`codegen.module.ENTRY`) takes, one pointer per parameter and constant, from the weights (a
read-only global in the object, or the bound `.bin` image), and calls it. Nothing else is exported:
no heap, no threads, no Python, no libc.

The weights are one little-endian float32 blob, every array starting on a 64-byte boundary in
the pointer table's order. External weights are a `.bin` file: a 64-byte header (`HEADER`), then
the blob. `<name>_bind_weights` checks the header (magic, format, float count and the layout
fingerprint, so a file written for another model or layout is refused) before using it.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from llvmlite import ir

from ..codegen.cgutils import I32, I64, PTR, compile_as_glue, i64
from ..codegen.scratch import Extent
from ..codegen.target import Target

ALIGN_FLOATS = 16  # every array on a 64-byte line
MAGIC = b"TCWEIGHT"
FORMAT = 1
HEADER_BYTES = 64  # magic, format (u32), header size (u32), float count (u64), fingerprint (u64), zeros
OK, ERR_ARGS, ERR_WEIGHTS = 0, -1, -2
I8 = ir.IntType(8)


@dataclass(frozen=True)
class WeightsLayout:
    """Where each array of the entry's pointer table sits in the weights blob."""

    shapes: tuple[tuple[int, ...], ...]
    offsets: tuple[int, ...]  # in floats
    floats: int

    @classmethod
    def of(cls, shapes: Sequence[tuple[int, ...]]) -> WeightsLayout:
        offsets, end = [], 0
        for shape in shapes:
            offsets.append(end)
            size = int(np.prod(shape, dtype=np.int64))
            end += -(-size // ALIGN_FLOATS) * ALIGN_FLOATS
        return cls(tuple(tuple(s) for s in shapes), tuple(offsets), end)

    @property
    def fingerprint(self) -> int:
        """64 bits naming the layout (not the values): a `.bin` binds only to an object of its layout."""
        digest = hashlib.sha256(repr((FORMAT, self.shapes, self.offsets)).encode()).digest()
        return int.from_bytes(digest[:8], "little")

    def blob(self, arrays: Sequence[np.ndarray]) -> bytes:
        out = np.zeros(self.floats, dtype="<f4")
        for array, offset, shape in zip(arrays, self.offsets, self.shapes, strict=True):
            flat = np.asarray(array, dtype="<f4").reshape(-1)
            if flat.size != int(np.prod(shape, dtype=np.int64)):
                raise ValueError(f"weights of shape {np.shape(array)} do not fit the layout's {shape}")
            out[offset:offset + flat.size] = flat
        return out.tobytes()

    def header(self) -> bytes:
        head = MAGIC + struct.pack("<IIQQ", FORMAT, HEADER_BYTES, self.floats, self.fingerprint)
        return head + bytes(HEADER_BYTES - len(head))


def max_batch(target: Target, row_floats: int, fixed_floats: int) -> int:
    """The largest batch whose buffers (`row_floats` per row at most, plus fixed scratch) have byte
    offsets that fit a signed pointer-sized integer: the lowered code indexes them so, and on a
    32-bit target the GEMM divides row counts in 32 bits (`codegen.cgutils.index_udiv`)."""
    limit = (1 << (target.pointer_bits - 1)) - 1 - 4 * fixed_floats
    return max(0, limit // (4 * max(row_floats, 1)))


def entry_module(target: Target, entry: str, layout: WeightsLayout, *, name: str, blob: bytes | None,
                 batch_limit: int, extents: Sequence[Extent], more_inputs: int = 0,
                 dropouts: Sequence[tuple[int, int, int]] = (), training: bool = False) -> str:
    """IR of `<name>_forward` (and `<name>_bind_weights` when `blob` is None: external weights);
    `extents`: what x, the inputs after it, y and scratch span (a scratch of no bytes may be NULL);
    `more_inputs`: how many inputs the model takes after x (the lowered entry's `inputs` table);
    `dropouts`: per training dropout node (layer id, the layer's calls per forward, which call);
    `training`: the entry takes the stream position (seed, offset), even where no dropout draws."""
    module = ir.Module(name=f"{name}.export")
    module.triple = target.triple
    lowered_args = [I64, PTR, PTR, PTR, PTR] + ([PTR] if dropouts else []) + ([PTR] if more_inputs else [])
    lowered = ir.Function(module, ir.FunctionType(ir.VoidType(), lowered_args), entry)
    weights = ir.GlobalVariable(module, ir.ArrayType(I8, len(blob)) if blob is not None else PTR, f"{name}.weights")
    weights.linkage, weights.align = "internal", 64
    if blob is not None:
        weights.global_constant = True  # read-only data: flash on a microcontroller
        weights.initializer = ir.Constant(ir.ArrayType(I8, len(blob)), bytearray(blob))
    else:
        weights.initializer = ir.Constant(PTR, None)
        _bind_weights(module, weights, layout, name)
    _forward(module, lowered, weights, layout, name=name, embedded=blob is not None, batch_limit=batch_limit,
             extents=extents, more_inputs=more_inputs, dropouts=dropouts, training=training)
    return str(module)


def _exported(module: ir.Module, name: str, args: list[ir.Type], arg_names: tuple[str, ...]) -> ir.Function:
    fn = ir.Function(module, ir.FunctionType(I32, args), name)
    fn.attributes.add("nounwind")
    compile_as_glue(fn)  # a few checks and one call
    for arg, arg_name in zip(fn.args, arg_names, strict=True):
        arg.name = arg_name
    return fn


def _misaligned(b: ir.IRBuilder, *ptrs: ir.Value) -> ir.Value:
    """Any of the pointers not 4-byte aligned (Cortex-M faults on unaligned float loads)."""
    bits = [b.ptrtoint(p, I64) for p in ptrs]
    low = bits[0]
    for other in bits[1:]:
        low = b.or_(low, other)
    return b.icmp_unsigned("!=", b.and_(low, i64(3)), i64(0))


def _overlapping(b: ir.IRBuilder, read: Sequence[tuple[ir.Value, Extent]], written: Sequence[tuple[ir.Value, Extent]],
                 batch: ir.Value) -> ir.Value:
    """Whether a written buffer (y, scratch) shares a byte with a buffer read (the inputs, bound
    weights) or with another written one. The kernels take every pointer as noalias: a GEMM writing
    y over x would read its own output, one writing over the bound weights would change them for good.
    A span of no bytes at this batch (a scratch smaller calls need no pack buffer in) shares none."""
    def span(ptr: ir.Value, extent: Extent) -> tuple[ir.Value, ir.Value]:
        start = b.ptrtoint(ptr, I64)
        return start, b.add(start, extent.emit_bytes(b, batch))
    hit: ir.Value = ir.Constant(ir.IntType(1), 0)
    for i, (w, w_extent) in enumerate(written):
        for other, o_extent in (*read, *written[:i]):
            if not (w_extent.empty or o_extent.empty):
                (ws, we), (os_, oe) = span(w, w_extent), span(other, o_extent)
                shared = b.and_(b.icmp_unsigned("<", ws, oe), b.icmp_unsigned("<", os_, we))
                hit = b.or_(hit, b.and_(shared, b.and_(b.icmp_unsigned("<", ws, we), b.icmp_unsigned("<", os_, oe))))
    return hit


def _return_if(b: ir.IRBuilder, cond: ir.Value, code: int) -> None:
    with b.if_then(cond, likely=False):
        b.ret(ir.Constant(I32, code))


def _forward(module: ir.Module, lowered: ir.Function, weights: ir.GlobalVariable, layout: WeightsLayout, *,
             name: str, embedded: bool, batch_limit: int, extents: Sequence[Extent], more_inputs: int,
             dropouts: Sequence[tuple[int, int, int]], training: bool) -> None:
    names = ("x", *(f"x{i}" for i in range(1, 1 + more_inputs)), "y", "batch", "scratch")
    stream = ("seed", "offset") if training else ()  # the documented signature, masks drawn or not
    fn = _exported(module, f"{name}_forward", [PTR] * (1 + more_inputs) + [PTR, I64, PTR] + [I64] * len(stream),
                   names + stream)
    x, *others, y, batch, scratch = fn.args[:len(names)]
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    null = ir.Constant(PTR, None)
    _return_if(b, b.icmp_unsigned(">", batch, i64(batch_limit)), ERR_ARGS)  # negative batches too
    base: ir.Value = weights
    read = list(zip((x, *others), extents[:-2], strict=True))  # the inputs; y and scratch are written
    if not embedded:  # checked at any batch: a program's empty first call learns it bound nothing
        base = b.load(weights, typ=PTR, name="bound")
        _return_if(b, b.icmp_unsigned("==", base, null), ERR_WEIGHTS)
        read.append((base, Extent(per_row=0, fixed=layout.floats)))
    with b.if_then(b.icmp_signed("==", batch, i64(0))):  # an empty batch reads no buffer: they may be NULL
        b.ret(ir.Constant(I32, OK))
    bad = b.icmp_unsigned("==", y, null)
    for ptr in (x, *others):
        bad = b.or_(bad, b.icmp_unsigned("==", ptr, null))
    if not extents[-1].empty:  # a scratch of no bytes (at this batch) may be NULL
        needed = b.icmp_signed(">", extents[-1].emit_bytes(b, batch), i64(0))
        bad = b.or_(bad, b.and_(needed, b.icmp_unsigned("==", scratch, null)))
    bad = b.or_(bad, _overlapping(b, read, [(y, extents[-2]), (scratch, extents[-1])], batch))
    _return_if(b, b.or_(bad, _misaligned(b, x, *others, y, scratch)), ERR_ARGS)
    table: ir.Value = null
    if layout.offsets:
        table = b.alloca(ir.ArrayType(PTR, len(layout.offsets)), name="table")
        for i, offset in enumerate(layout.offsets):
            slot = b.gep(table, [ir.Constant(I32, 0), ir.Constant(I32, i)], inbounds=True)
            b.store(b.gep(base, [i64(4 * offset)], source_etype=I8, inbounds=True), slot)
    extra: list[ir.Value] = []
    if dropouts:
        extra.append(_draws_table(b, dropouts, *fn.args[len(names):]))
    if others:  # the lowered entry takes the inputs after x in a table of pointers
        inputs = b.alloca(ir.ArrayType(PTR, len(others)), name="inputs")
        for i, ptr in enumerate(others):
            b.store(ptr, b.gep(inputs, [ir.Constant(I32, 0), ir.Constant(I32, i)], inbounds=True))
        extra.append(inputs)
    b.call(lowered, [batch, x, y, scratch, table, *extra])
    b.ret(ir.Constant(I32, OK))


def _draws_table(b: ir.IRBuilder, dropouts: Sequence[tuple[int, int, int]], seed: ir.Value,
                 offset: ir.Value) -> ir.Value:
    """The lowered entry's `draws` table (`codegen.module`): the key's two words from `seed`, first row
    0, then per node its layer id and call number `offset * calls + k`, in 32 bits as Philox takes them."""
    table = b.alloca(ir.ArrayType(I64, 3 + 2 * len(dropouts)), name="draws")
    low = i64(0xFFFFFFFF)
    words = [b.and_(seed, low), b.lshr(seed, i64(32)), i64(0)]
    for layer, calls, k in dropouts:
        words += [i64(layer), b.and_(b.add(b.mul(offset, i64(calls)), i64(k)), low)]
    for i, word in enumerate(words):
        b.store(word, b.gep(table, [ir.Constant(I32, 0), ir.Constant(I32, i)], inbounds=True))
    return table


def _bind_weights(module: ir.Module, bound: ir.GlobalVariable, layout: WeightsLayout, name: str) -> None:
    """`int <name>_bind_weights(const void *w)`: 0 and w's floats bound if w holds this layout's
    header, else ERR_WEIGHTS with the binding unchanged."""
    fn = _exported(module, f"{name}_bind_weights", [PTR], ("w",))
    (w,) = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    _return_if(b, b.icmp_unsigned("==", w, ir.Constant(PTR, None)), ERR_WEIGHTS)
    _return_if(b, _misaligned(b, w), ERR_WEIGHTS)
    expected = struct.unpack("<4q", layout.header()[:32])  # signed: i64 constants
    for i, word in enumerate(expected):
        value = b.load(b.gep(w, [i64(8 * i)], source_etype=I8, inbounds=True), typ=I64, align=4)
        _return_if(b, b.icmp_unsigned("!=", value, i64(word)), ERR_WEIGHTS)
    b.store(b.gep(w, [i64(HEADER_BYTES)], source_etype=I8, inbounds=True), bound)
    b.ret(ir.Constant(I32, OK))
