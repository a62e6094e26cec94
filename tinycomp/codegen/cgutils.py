"""IR-building helpers for the llvmlite builder, after numba's `cgutils`.

The types and constants every kernel uses; `for_range` loops (and `if_then` branches) whose SSA
values are carried through phis for the caller; `define_once` for the functions a module holds one
of; one masked vector load/store pair; and the few function-level attributes and module-lifetime
helpers codegen needs. Kernels are compiled at speed level 0, where no mem2reg would rescue a
value kept in an alloca: carried values are how a loop keeps an accumulator in registers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

from llvmlite import ir

from ..ir.graph import paused_gc as paused_gc  # re-exported: lowering pauses as graph building does
from .target import for_triple

I64 = ir.IntType(64)
I32 = ir.IntType(32)
I1 = ir.IntType(1)
F32 = ir.FloatType()
PTR = ir.PointerType()
ALIGN = 4  # buffers are only guaranteed float-aligned


def i64(v: int) -> ir.Constant:
    return ir.Constant(I64, v)


def as_i64(value: int | ir.Value) -> ir.Value:
    return i64(value) if isinstance(value, int) else value


def element_ptr(builder: ir.IRBuilder, base: ir.Value, index: ir.Value | int) -> ir.Value:
    """Address of float element `index` of the buffer at `base` (GEP, never int arithmetic)."""
    return builder.gep(base, [as_i64(index)], source_etype=F32, inbounds=True)


def fma_name(module: ir.Module) -> str:
    """The multiply-add intrinsic for the module's target: `fma` (one rounding, in hardware or
    libm), or `fmuladd` where `llvm.fma` would call a libm the target does not have (WebAssembly)."""
    return "fma" if for_triple(module.triple).fused_multiply_add else "fmuladd"


def index_min(builder: ir.IRBuilder, x: ir.Value, y: ir.Value) -> ir.Value:
    """The smaller of two signed integers (a count left against a block's size, ...)."""
    return builder.select(builder.icmp_signed("<", x, y), x, y)


def index_udiv(builder: ir.IRBuilder, x: ir.Value, y: ir.Value) -> ir.Value:
    """x // y of two non-negative i64 sizes or counts (`_index_arithmetic`)."""
    return _index_arithmetic(builder, builder.udiv, x, y)


def index_urem(builder: ir.IRBuilder, x: ir.Value, y: ir.Value) -> ir.Value:
    """x % y of two non-negative i64 sizes or counts (`_index_arithmetic`)."""
    return _index_arithmetic(builder, builder.urem, x, y)


def _index_arithmetic(builder: ir.IRBuilder, op: Callable[[ir.Value, ir.Value], ir.Value], x: ir.Value,
                      y: ir.Value) -> ir.Value:
    """op(x, y) in 64 bits, or on a 32-bit target in 32 bits: there a 64-bit division or remainder
    is a call into the compiler's runtime library (`__udivdi3`, `__aeabi_uldivmod`; for a remainder
    by a constant too, by 7 say), which exported objects must not need. Every size fits 32 bits
    there (the exported entry refuses batches whose buffers would not fit the address space)."""
    if for_triple(builder.module.triple).pointer_bits == 64:
        return op(x, y)
    return builder.zext(op(builder.trunc(x, I32), builder.trunc(y, I32)), I64)


def vector_type(width: int) -> ir.VectorType:
    return ir.VectorType(F32, width)


# ---------------------------------------------------------------- loops and branches with carried values

class Loop:
    """What the body of a `for_range` sees: the index and the carried values of this iteration;
    it hands the next iteration's values to `carry`. After the loop, `results` holds the final
    carried values (the initial ones when the loop ran zero times)."""

    def __init__(self, index: ir.Value, carried: list[ir.Value]):
        self.index, self.carried = index, carried
        self.next: list[ir.Value] | None = None
        self.results: list[ir.Value] = []

    def carry(self, *values: ir.Value) -> None:
        if len(values) != len(self.carried):
            raise ValueError(f"the loop carries {len(self.carried)} values; got {len(values)}")
        self.next = list(values)


@contextmanager
def for_range(builder: ir.IRBuilder, start: int | ir.Value, stop: int | ir.Value, step: int = 1, *,
              name: str = "i", carry: Sequence[ir.Value] = (), nonempty: bool = False) -> Iterator[Loop]:
    """`for i in range(start, stop, step)` (step > 0), the body emitted inside the `with`, values in
    `carry` threaded through the iterations (the body must call `loop.carry(...)` when there are any).

    The loop is bottom-tested behind a guard so an empty range runs zero times; `nonempty` drops
    the guard where the caller knows start < stop. On exit the builder sits in the block after the
    loop and `loop.results` are the carried values there.
    """
    start, stop = as_i64(start), as_i64(stop)
    pre = builder.block
    body = builder.append_basic_block(f"{name}.body")
    after = builder.append_basic_block(f"{name}.end")
    if nonempty:
        builder.branch(body)
    else:
        builder.cbranch(builder.icmp_signed("<", start, stop), body, after)

    builder.position_at_end(body)
    index = builder.phi(I64, name=name)
    index.add_incoming(start, pre)
    phis = [builder.phi(v.type, name=f"{name}.acc") for v in carry]
    for phi, v in zip(phis, carry, strict=True):
        phi.add_incoming(v, pre)
    loop = Loop(index, list(phis))
    yield loop
    if carry and loop.next is None:
        raise ValueError("a loop with carried values must call loop.carry(...) in its body")
    nxt = builder.add(index, i64(step), name=f"{name}.next", flags=["nsw"])
    end = builder.block
    index.add_incoming(nxt, end)
    for phi, v in zip(phis, loop.next or [], strict=True):
        phi.add_incoming(v, end)
    builder.cbranch(builder.icmp_signed("<", nxt, stop), body, after)
    builder.position_at_end(after)
    loop.results = (list(loop.next or []) if nonempty
                    else merge_incoming(builder, [(carry, pre), (loop.next or [], end)]))


class Branch:
    """What the body of an `if_then` sees: the values before it (`carried`); it hands its own to
    `carry`. After the branch, `results` holds the body's values if it ran, else the ones before."""

    def __init__(self, carried: list[ir.Value]):
        self.carried, self.next, self.results = carried, list(carried), list(carried)

    def carry(self, *values: ir.Value) -> None:
        if len(values) != len(self.carried):
            raise ValueError(f"the branch carries {len(self.carried)} values; got {len(values)}")
        self.next = list(values)


@contextmanager
def if_then(builder: ir.IRBuilder, pred: ir.Value, *, carry: Sequence[ir.Value] = (),
            name: str = "if") -> Iterator[Branch]:
    """`if pred:` with values that the body may replace (`branch.carry`), merged after it."""
    pre = builder.block
    then = builder.append_basic_block(f"{name}.then")
    after = builder.append_basic_block(f"{name}.end")
    builder.cbranch(pred, then, after)
    builder.position_at_end(then)
    branch = Branch(list(carry))
    yield branch
    end = builder.block
    builder.branch(after)
    builder.position_at_end(after)
    branch.results = merge_incoming(builder, [(list(carry), pre), (branch.next, end)])


def merge_incoming(builder: ir.IRBuilder, incoming: Sequence[tuple[Sequence[ir.Value], ir.Block]]) -> list[ir.Value]:
    """One phi per value, from each (values, block) pair, in a block those blocks branch to."""
    merged = []
    for i in range(len(incoming[0][0])):
        phi = builder.phi(incoming[0][0][i].type)
        for values, block in incoming:
            phi.add_incoming(values[i], block)
        merged.append(phi)
    return merged


# ---------------------------------------------------------------- functions a module holds one of

def define_once(module: ir.Module, name: str, build: Callable[[str], ir.Function]) -> ir.Function:
    """The module's global `name`, made by `build(name)` the first time it is asked for: kernels
    and declarations shared by every layer of a module exist once in it."""
    if name in module.globals:
        return module.globals[name]
    fn = build(name)
    report_finished(module, [name])
    return fn


# Who hears of the functions a module being built has finished: (that module, the listener). Set by
# `runtime.engine.PartPipeline` through `codegen.module.lowered_module`, so that a finished kernel
# can compile on another core while the rest of the module is still being built.
FinishedListener = Callable[[ir.Module, list[str]], None]
_LISTENER: ContextVar[tuple[ir.Module, FinishedListener] | None] = ContextVar("tinycomp_finished", default=None)


@contextmanager
def finished_functions_to(module: ir.Module, listener: FinishedListener | None) -> Iterator[None]:
    """Within the block, tell `listener` the names of `module`'s functions as each is finished: no
    later code adds to or changes them (`define_once` as it returns; the module's emitter at every
    node for the rest)."""
    token = _LISTENER.set((module, listener) if listener is not None else None)
    try:
        yield
    finally:
        _LISTENER.reset(token)


def hears_finished(module: ir.Module) -> bool:
    """Whether someone listens for `module`'s finished functions (`finished_functions_to`)."""
    heard = _LISTENER.get()
    return heard is not None and heard[0] is module


def report_finished(module: ir.Module, names: list[str]) -> None:
    """Tell the listener of `module`, if any, that the functions `names` are finished."""
    heard = _LISTENER.get()
    if heard is not None and heard[0] is module and names:
        heard[1](module, names)


def internal_kernel(module: ir.Module, name: str, args: Sequence[tuple[str, ir.Type]],
                    returns: ir.Type | None = None) -> ir.Function:
    """A module-private `void name(args...)` (or returning `returns`): named arguments, pointers
    `noalias`, `nounwind`."""
    fn = ir.Function(module, ir.FunctionType(returns or ir.VoidType(), [t for _, t in args]), name)
    fn.linkage = "internal"
    fn.attributes.add("nounwind")
    for arg, (arg_name, _) in zip(fn.args, args, strict=True):
        arg.name = arg_name
        if isinstance(arg.type, ir.PointerType):
            arg.add_attribute("noalias")
    return fn


def declare_vector_intrinsic(module: ir.Module, name: str, width: int, arity: int,
                             element: ir.Type = F32) -> ir.Function:
    """Declare e.g. `llvm.fma.v16f32` (`element` F64: `llvm.fma.v16f64`); `Module.declare_intrinsic`
    cannot do vector types.

    In a module lowered for a target without fused multiply-add and without libm (WebAssembly:
    `module.triple` names it), `fma` is `llvm.fmuladd`, the same operation rounded twice."""
    name = fma_name(module) if name == "fma" else name
    vt = ir.VectorType(element, width)
    suffix = "f64" if isinstance(element, ir.DoubleType) else "f32"
    return define_once(module, f"llvm.{name}.v{width}{suffix}",
                       lambda full: ir.Function(module, ir.FunctionType(vt, [vt] * arity), full))


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


def inline_glue(fn: ir.Function) -> ir.Function:
    """Make a glue function (`compile_as_glue`) that only its module calls part of its callers:
    internal and `alwaysinline`, which LLVM's level-0 pipeline still honours, so the code generator
    never sees it as a function of its own (each function costs ~0.35 ms of fixed backend work: the
    reference MLP's three per-layer wrappers took 2.5-3.5 ms of its ~37 ms emit; 1-1.5 ms net of
    the inliner's own time)."""
    fn.attributes.discard("noinline")
    fn.attributes.discard("optnone")
    fn.attributes.add("alwaysinline")
    fn.linkage = "internal"
    return fn


# ---------------------------------------------------------------- vector constants

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


def lanes_below(width: int, valid: int) -> ir.Constant:
    """The constant mask of lanes 0..valid-1."""
    return vector_constant(ir.VectorType(I1, width), [ir.Constant(I1, i < valid) for i in range(width)])


def splat_value(builder: ir.IRBuilder, value: ir.Value, vt: ir.VectorType) -> ir.Value:
    """`vt` with `value` in every lane: insertelement + shufflevector, one broadcast instruction."""
    undef = vector_constant(vt, ir.Undefined)
    one = builder.insert_element(undef, value, ir.Constant(I32, 0))
    return builder.shuffle_vector(one, undef, zeros(ir.VectorType(I32, vt.count)))


def column_masks(builder: ir.IRBuilder, cols: ir.Value, nv: int, width: int) -> list[ir.Value]:
    """Lane masks of the `nv` vectors of a row holding `cols` (a run-time i64) real columns."""
    iv = ir.VectorType(I32, width)
    lanes = splat_value(builder, builder.trunc(cols, I32), iv)
    return [builder.icmp_signed("<", vector_constant(iv, [v * width + i for i in range(width)]), lanes)
            for v in range(nv)]


def splat(value: float | ir.Value, width: int, builder: ir.IRBuilder | None = None) -> ir.Value:
    """A vector of `width` float copies: a constant for a Python float, else a broadcast."""
    vt = vector_type(width)
    if not isinstance(value, ir.Value):
        return vector_constant(vt, ir.Constant(F32, float(value)))
    assert builder is not None
    return splat_value(builder, value, vt)


# ---------------------------------------------------------------- the masked load/store pair

def _masked_intrinsic(module: ir.Module, op: str, width: int) -> ir.Function:
    """`llvm.masked.load/store` for <width x float>: masked-off lanes touch no memory. Declared in
    the (ptr, i32 align, mask, ...) form, which LLVM 22 still accepts and upgrades, so the same IR
    also works with older llvmlite releases."""
    vt, mask = vector_type(width), ir.VectorType(I1, width)
    if op == "load":
        fnty = ir.FunctionType(vt, [PTR, I32, mask, vt])
    else:
        fnty = ir.FunctionType(ir.VoidType(), [vt, PTR, I32, mask])
    return define_once(module, f"llvm.masked.{op}.v{width}f32.p0", lambda name: ir.Function(module, fnty, name))


def masked_load(builder: ir.IRBuilder, ptr: ir.Value, mask: ir.Value | None, *, width: int | None = None,
                fill: float | ir.Value = 0.0) -> ir.Value:
    """Load a vector at `ptr`: the lanes of `mask`, `fill` in the others, touching no memory outside
    them; a plain load when `mask` is None (then `width` gives the vector's size)."""
    if mask is None:
        assert width is not None
        return builder.load(ptr, typ=vector_type(width), align=ALIGN)
    width = mask.type.count
    fill_v = fill if isinstance(fill, ir.Value) else vector_constant(vector_type(width), ir.Constant(F32, fill))
    fn = _masked_intrinsic(builder.module, "load", width)
    return builder.call(fn, [ptr, ir.Constant(I32, ALIGN), mask, fill_v])


def masked_store(builder: ir.IRBuilder, value: ir.Value, ptr: ir.Value, mask: ir.Value | None) -> None:
    """Store the lanes of `mask` of `value` at `ptr` (all of them when `mask` is None)."""
    if mask is None:
        builder.store(value, ptr, align=ALIGN)
        return
    fn = _masked_intrinsic(builder.module, "store", value.type.count)
    builder.call(fn, [value, ptr, ir.Constant(I32, ALIGN), mask])


# ---------------------------------------------------------------- building many modules

# `paused_gc` (imported above) pauses the collector around lowering as around graph building.


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
