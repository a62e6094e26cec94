"""Loop helpers for the llvmlite IR builder, after numba's `cgutils.for_range`."""

from __future__ import annotations

import gc
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from llvmlite import ir

I64 = ir.IntType(64)
I32 = ir.IntType(32)
I1 = ir.IntType(1)
F32 = ir.FloatType()
LINE_FLOATS = 16  # floats per 64-byte cache line
PTR = ir.PointerType()


def i64(v: int) -> ir.Constant:
    return ir.Constant(I64, v)


def as_i64(value: int | ir.Value) -> ir.Value:
    return i64(value) if isinstance(value, int) else value


@contextmanager
def for_range(
    builder: ir.IRBuilder,
    start: int | ir.Value,
    stop: int | ir.Value,
    step: int = 1,
    name: str = "i",
) -> Iterator[ir.Value]:
    """`for i in range(start, stop, step)` (step > 0); the body is emitted inside the `with`.

    The loop is bottom-tested behind a guard so an empty range runs zero times. On exit the builder
    sits in the block after the loop.
    """
    start, stop = as_i64(start), as_i64(stop)
    pre = builder.block
    body = builder.append_basic_block(f"{name}.body")
    after = builder.append_basic_block(f"{name}.end")
    builder.cbranch(builder.icmp_signed("<", start, stop), body, after)

    builder.position_at_end(body)
    index = builder.phi(I64, name=name)
    index.add_incoming(start, pre)
    yield index
    nxt = builder.add(index, i64(step), name=f"{name}.next", flags=["nsw"])
    index.add_incoming(nxt, builder.block)
    builder.cbranch(builder.icmp_signed("<", nxt, stop), body, after)
    builder.position_at_end(after)


def element_ptr(builder: ir.IRBuilder, base: ir.Value, index: ir.Value | int) -> ir.Value:
    """Address of float element `index` of the buffer at `base` (GEP, never int arithmetic)."""
    return builder.gep(base, [as_i64(index)], source_etype=F32, inbounds=True)


def vector_type(width: int) -> ir.VectorType:
    return ir.VectorType(F32, width)


def declare_vector_intrinsic(module: ir.Module, name: str, width: int, arity: int) -> ir.Function:
    """Declare e.g. `llvm.fma.v16f32`; `Module.declare_intrinsic` cannot do vector types."""
    full = f"llvm.{name}.v{width}f32"
    if full in module.globals:
        return module.globals[full]
    vt = vector_type(width)
    return ir.Function(module, ir.FunctionType(vt, [vt] * arity), full)


_ZERO_REFS = frozenset({"0", "0x0", "0.0", "false", "null"})
_vector_constants: dict[tuple[str, str], ir.Constant] = {}


def vector_constant(vt: ir.VectorType, value: object) -> ir.Constant:
    """The constant vector `ir.Constant(vt, value)` (`value`: one element for every lane, None for
    zeros, `ir.Undefined`, or a list), printed as `zeroinitializer`, `undef` or `splat (T v)` when
    it is one.

    llvmlite spells every vector constant out lane by lane (`<float 0x0, ... 16 times>`), even a
    null one; LLVM parses the short forms into the very same constant, and printing and parsing the
    long ones was a real share of compile time. Constants are immutable, so each is built (and its
    text formatted) once per process and shared by every module."""
    key = (str(vt), repr(value))  # repr: -0.0 and 0.0 are different constants
    const = _vector_constants.get(key)
    if const is None:
        if len(_vector_constants) > 1024:  # splats of user constants: keep the table bounded
            _vector_constants.clear()
        const = _vector_constants[key] = _short_form(ir.Constant(vt, value))
    return const


def _short_form(full: ir.Constant) -> ir.Constant:
    refs = {c.get_reference() for c in full.constant}
    if len(refs) != 1:
        return full
    ref = refs.pop().strip()  # llvmlite pads some float spellings with spaces
    text = ref if ref == "undef" else "zeroinitializer" if ref in _ZERO_REFS else f"splat ({full.type.element} {ref})"
    return _ShortVectorConstant(full.type, full.constant, text)


class _ShortVectorConstant(ir.Constant):
    """A splat vector constant that prints its short form (see `vector_constant`)."""

    def __init__(self, typ: ir.VectorType, constant: object, text: str):
        super().__init__(typ, constant)
        self.text = text

    def _get_reference(self) -> str:
        return self.text


def zeros(vt: ir.VectorType) -> ir.Constant:
    return vector_constant(vt, None)


def splat_value(builder: ir.IRBuilder, value: ir.Value, vt: ir.VectorType) -> ir.Value:
    """`vt` with `value` in every lane: insertelement + shufflevector, one broadcast instruction."""
    undef = vector_constant(vt, ir.Undefined)
    one = builder.insert_element(undef, value, ir.Constant(I32, 0))
    return builder.shuffle_vector(one, undef, zeros(ir.VectorType(I32, vt.count)))


def splat(value: float | ir.Value, width: int, builder: ir.IRBuilder | None = None) -> ir.Value:
    """A vector of `width` float copies: a constant for a Python float, else a broadcast."""
    vt = vector_type(width)
    if not isinstance(value, ir.Value):
        return vector_constant(vt, ir.Constant(F32, float(value)))
    assert builder is not None
    return splat_value(builder, value, vt)


@contextmanager
def paused_gc() -> Iterator[None]:
    """Building IR allocates many small objects and no cycles: collections only cost time there
    (measured: the first reference-MLP IR build took 38 ms with the collector on, 7 ms off).
    Release the module (`release_module`) before the pause ends, or the first collection after it
    walks every IR object."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def release_module(module: ir.Module) -> None:
    """Break the reference cycles of an llvmlite module once its text is out, so reference counting
    frees it at once. Blocks, functions and arguments point at their parents, and phis at values
    defined after them; left to the cyclic collector, the reference MLP's module made the
    collections during 10 compiles cost 40-67 ms, against 0.6 ms released. Instructions keep their
    parent: nothing in a block points back at them any more. The module is unusable afterwards."""
    for value in list(module.globals.values()):
        if isinstance(value, ir.Function):
            for block in value.blocks:
                for instr in block.instructions:  # phis lead a block
                    if not isinstance(instr, ir.PhiInstr):
                        break
                    instr.incomings = []
                block.instructions, block.terminator = [], None
            value.blocks, value.args, value.return_value = [], (), None
    module.globals.clear()


def masked_intrinsic(module: ir.Module, op: str, width: int) -> ir.Function:
    """`llvm.masked.load/store` for <width x float>: masked-off lanes touch no memory.

    Declared in the (ptr, i32 align, mask, ...) form, which LLVM 22 still accepts and upgrades, so
    the same IR also works with older llvmlite releases.
    """
    name = f"llvm.masked.{op}.v{width}f32.p0"
    if name in module.globals:
        return module.globals[name]
    vt, mask = vector_type(width), ir.VectorType(I1, width)
    if op == "load":
        fnty = ir.FunctionType(vt, [PTR, I32, mask, vt])
    else:
        fnty = ir.FunctionType(ir.VoidType(), [vt, PTR, I32, mask])
    return ir.Function(module, fnty, name)


def compile_as_glue(fn: ir.Function) -> None:
    """Mark a function that only computes a few addresses and calls kernels `optnone` (with the
    `noinline` it requires): LLVM then skips its optimizations and selects instructions with the
    fast selector where it can (not for functions with more arguments than registers, nor for
    direct calls under the JIT's large code model: those blocks take the slower selector). It runs
    once per call or per tile, next to kernels that run for microseconds, while compiling it like
    a kernel costs real time (measured: the GEMM driver took a third of a module's compile time;
    the entry and the per-layer wrappers of the reference MLP ~5 ms of its ~60 ms emit)."""
    fn.attributes.add("noinline")
    fn.attributes.add("optnone")


def internal_kernel(module: ir.Module, name: str, args: Sequence[tuple[str, ir.Type]]) -> ir.Function:
    """A module-private `void name(args...)`: named arguments, pointers `noalias`, `nounwind`."""
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [t for _, t in args]), name)
    fn.linkage = "internal"
    fn.attributes.add("nounwind")
    for arg, (arg_name, _) in zip(fn.args, args, strict=True):
        arg.name = arg_name
        if isinstance(arg.type, ir.PointerType):
            arg.add_attribute("noalias")
    return fn


def stream_in_kernel(module: ir.Module) -> ir.Function:
    """`i32 stream_in(ptr a, i64 n)`: read the n floats at a, one 32-bit word per cache line, as one
    sequential stream (the hardware prefetcher follows it at full speed), so the code that runs next
    finds them in cache. The words are OR-ed into the result so the loads are not dead code; the
    caller ignores it."""
    name = "tinycomp.stream_in"
    if name in module.globals:
        return module.globals[name]
    fn = ir.Function(module, ir.FunctionType(I32, [PTR, I64]), name)
    fn.linkage = "internal"
    fn.attributes.add("nounwind")
    a, n = fn.args
    a.name, n.name = "a", "n"
    entry, loop, done = (fn.append_basic_block(x) for x in ("entry", "line", "done"))
    b = ir.IRBuilder(entry)
    b.cbranch(b.icmp_signed(">", n, i64(0)), loop, done)
    b.position_at_end(loop)
    i, acc = b.phi(I64, name="i"), b.phi(I32, name="acc")
    word = b.load(b.gep(a, [i], source_etype=I32, inbounds=True), typ=I32)
    acc_next = b.or_(acc, word)
    i_next = b.add(i, i64(LINE_FLOATS), flags=["nuw", "nsw"])
    b.cbranch(b.icmp_signed("<", i_next, n), loop, done)
    i.add_incoming(i64(0), entry)
    i.add_incoming(i_next, loop)
    acc.add_incoming(ir.Constant(I32, 0), entry)
    acc.add_incoming(acc_next, loop)
    b.position_at_end(done)
    result = b.phi(I32)
    result.add_incoming(ir.Constant(I32, 0), entry)
    result.add_incoming(acc_next, loop)
    b.ret(result)
    return fn
