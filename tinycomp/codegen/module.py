"""Lower an optimized Graph to one LLVM module with a single entry function.

The entry is `void tinycomp_forward(i64 M, ptr x, ptr out, ptr scratch, ptr args)`, `args` an array of
one pointer per parameter, then one per constant, in `ModulePlan.params` / `const_nodes` order.
A graph with training-mode dropout (`ModulePlan.dropouts`) takes one more argument, `ptr draws`: an
i64 array [key0, key1, first row, then (layer id, call number) per dropout node], the Philox
stream of each mask (ir/philox.py) and the batch row that row 0 of this call is. A graph with
several inputs (`ModulePlan.inputs`) takes one more, last, `ptr inputs`: a pointer per input after
the first (`x`), a batched one at the call's row 0, one without the batch dimension as it is.
Every op we lower works row by row, so the runtime may split the batch into row ranges and run the
entry on each range in parallel, each range with its own scratch buffer.

Codegen is an interpreter over the graph that emits one kernel call per node (autodidax style): the
`LOWERINGS` table maps each op to its emitter, and an op without a rule fails loudly.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from llvmlite import ir

from ..ir.graph import Graph
from ..ir.layout import elementwise_layout, is_batched, is_scalar_const, row_floats
from ..ir.ops import ELEMENTWISE, linear_extras, map_leaves
from ..ir.passes.fold_dropout import draws_mask, is_identity_dropout
from ..ir.shapes import fmt_shape
from . import attention, elementwise, entry_parts, gemm, layer_norm, lower_tensor, philox
from .cgutils import (
    I32,
    I64,
    PTR,
    FinishedListener,
    compile_as_glue,
    element_ptr,
    finished_functions_to,
    for_range,
    hears_finished,
    i64,
    index_min,
    inline_glue,
    paused_gc,
    release_module,
    report_finished,
)
from .elementwise import kernel_key
from .errors import LoweringError
from .fingerprint import codegen_source_hash, graph_fingerprint  # noqa: F401 - part of this module's API
from .ir_text import module_text
from .scratch import NO_CODE, ROW_BLOCK, BufferPlan, Extent, plan_buffers, row_block  # noqa: F401 - ROW_BLOCK: API
from .target import Target, with_width

ENTRY = "tinycomp_forward"


@dataclass
class ModulePlan:
    """Everything the runtime needs to call the generated code."""

    llvm_ir: str
    entry: str
    params: list[str]  # param node names, in argument order
    const_nodes: list[str]  # const node names passed by pointer, in argument order
    consts: list[np.ndarray]  # their values
    out_shape: tuple  # None marks the batch dimension
    scratch_per_row: int  # floats of scratch per batch row
    scratch_fixed: int  # floats of scratch independent of the batch size
    kernels: list[str]
    buffers: BufferPlan | None = field(default=None, repr=False)  # where each value lives (lowering only)
    dropouts: list[str] = field(default_factory=list)  # training dropout nodes, in `draws` order
    row_block: int = 0  # rows the entry runs at a time (`row_block`), 0: all at once
    inputs: list[str] = field(default_factory=list)  # input nodes: the first is `x`, the others in `inputs`
    scratch_pack: int = 0  # floats of the GEMMs' and attention's work buffer, after the fixed ones
    pack_rows: int = 0  # the fewest rows of a call on which a kernel writes that buffer (`_pack_need`)

    @property
    def scratch(self) -> Extent:
        """What the scratch of a call spans: batched buffers hold one row block at most; the pack
        buffer only calls of `pack_rows` rows or more need."""
        return Extent(self.scratch_per_row, self.scratch_fixed, self.row_block, self.scratch_pack, self.pack_rows)

    def scratch_floats(self, rows: int) -> int:
        """Scratch a call on `rows` rows needs (`scratch`)."""
        return self.scratch.floats(rows)

    def to_meta(self) -> dict:
        """What a cache entry must remember to run its object code without lowering again."""
        return {"entry": self.entry, "params": self.params, "const_nodes": self.const_nodes,
                "out_shape": list(self.out_shape), "scratch_per_row": self.scratch_per_row,
                "scratch_fixed": self.scratch_fixed, "kernels": self.kernels, "dropouts": self.dropouts,
                "row_block": self.row_block, "inputs": self.inputs, "scratch_pack": self.scratch_pack,
                "pack_rows": self.pack_rows}

    @classmethod
    def from_meta(cls, meta: dict, g: Graph, width: int) -> ModulePlan:
        """The plan of a cached module, recomputed from g (no LLVM work) and checked against the
        entry's header: a header is never trusted for memory safety (output shape, scratch sizes,
        the parameter table). ValueError if they differ. `llvm_ir` stays empty until someone asks
        to see it; the kernel names (only ever printed) are the header's."""
        plan = plan_frame(g, width)
        kernels = meta.get("kernels") if isinstance(meta, dict) else None
        if not isinstance(kernels, list) or not all(isinstance(k, str) for k in kernels):
            raise ValueError("cache header has no list of kernel names")
        for name, value in plan.to_meta().items():
            if name != "kernels" and meta.get(name) != value:
                raise ValueError(f"cache header says {name}={meta.get(name)!r}; the graph gives {value!r}")
        plan.kernels = list(kernels)
        return plan


def _const_arrays(g: Graph, names: list[str]) -> list[np.ndarray]:
    return [np.ascontiguousarray(np.asarray(g[c]["value"], dtype=np.float32)) for c in names]


def _folded_everywhere(g: Graph, n: str) -> bool:
    """A one-element constant that every reader, all elementwise, folds in as an immediate: it needs
    no pointer. A GEMM reading one (a 1-wide bias, a 1x1 weight) takes it by pointer."""
    return is_scalar_const(g, n) and all(LOWERINGS.get(g.op(u)) is lower_elementwise for u in g.users(n))


class _Emitter:
    """One lowering: the module, the entry's builder, and where every node's value lives."""

    def __init__(self, g: Graph, target: Target, plan: ModulePlan):
        assert plan.buffers is not None
        self.g, self.width, self.buffers = g, target.vector_width, plan.buffers
        self.registers = target.vector_registers
        self.cache = target.cache_limits
        # the tiles some GEMM of the module compiles masked, which its others then share (`gemm.masked_tiles`)
        self.masked_tiles = gemm.masked_tiles([(k, j) for _, _, _, k, j in _gemms(g)], self.width, self.registers,
                                              self.cache)
        self.module = ir.Module(name="tinycomp")
        self.module.triple = target.triple  # kernels that differ by target read it (`target.for_triple`)
        self.params, self.consts, self.dropouts = plan.params, plan.const_nodes, plan.dropouts
        # Parameters and constants come in one array of pointers: a ctypes call costs ~0.1 us per
        # argument, and that array only changes when a parameter is rebound, not on every call.
        names = ("M", "x", "out", "scratch", "args") + (("draws",) if self.dropouts else ()) \
            + (("inputs",) if len(plan.inputs) > 1 else ())
        self.fn = ir.Function(self.module, ir.FunctionType(ir.VoidType(), [I64] + [PTR] * (len(names) - 1)), ENTRY)
        for a, arg_name in zip(self.fn.args, names, strict=True):
            a.name = arg_name
        for a in self.fn.args[1:4]:
            a.add_attribute("noalias")
        self.fn.attributes.add("nounwind")  # no unwind tables (on ARM they would need the EHABI runtime)
        self.inputs = plan.inputs
        self.frame: ir.Value | None = None  # the entry's arguments for its parts (`entry_parts`)
        self.enter(self.fn, lambda _: (list(self.fn.args), self.fn.args[0], None))
        self._kernels: dict[tuple, ir.Function] = {}

    def enter(self, fn: ir.Function, arguments: Callable[[ir.IRBuilder], tuple[list, ir.Value, Any]]) -> None:
        """Emit into `fn` (the entry, or a part of it) from its first block on. `arguments(builder)`
        gives, emitting at the first block, the entry's arguments as `fn` has them (the rows to run
        first), the batched scratch buffers' rows and the row block's first row (None: no blocks)."""
        # the first block reads the arguments and the table slots the function reads
        # (`entry_parts.ArgumentPointers`), then goes on
        first = ir.IRBuilder(fn.append_basic_block("args"))
        self.args, self.scratch_rows, self.r0 = arguments(first)  # r0: None without row blocks
        first.branch(start := fn.append_basic_block("entry"))
        self.fn, self.b = fn, ir.IRBuilder(start)
        self.rows = self.args[0]  # rows of the current row block (all M without blocking)
        self.out, self.scratch = self.args[2:4]
        self.ptr = entry_parts.ArgumentPointers(fn, self.args, self.inputs, self.params + self.consts, len(self.params),
                                     inputs_arg=len(self.args) - 1 if len(self.inputs) > 1 else None)

    def pointer(self, n: str) -> ir.Value:
        """Where node n's value lives: an argument, `out`, or its slice of scratch."""
        n = self.buffers.alias_root(n)
        if n in self.ptr or n == self.buffers.output_root:
            return self.block_rows(self.ptr[n] if n in self.ptr else self.out, self.g.shape(n))
        offset, batched = self.buffers.offsets[n]
        return self._scratch_at(offset, batched)

    def block_rows(self, base: ir.Value, shape: tuple) -> ir.Value:
        """`base`, a value of `shape` in an argument or `out`, moved to the current row block."""
        if self.r0 is None or not is_batched(shape):
            return base
        return element_ptr(self.b, base, self.b.mul(self.r0, i64(row_floats(shape))))

    def _scratch_at(self, offset: int, batched: bool) -> ir.Value:
        # Batched buffers sit at M*offset; fixed ones after all batched rows, at M*per_row + offset.
        if batched:
            index = self.b.mul(self.scratch_rows, i64(offset))
        else:
            index = self.b.add(self.b.mul(self.scratch_rows, i64(self.buffers.per_row)), i64(offset))
        return element_ptr(self.b, self.scratch, index)

    def pack_buffer(self) -> ir.Value:
        return self._scratch_at(self.buffers.pack_offset, batched=False)

    def row_count(self, n: str, row: int) -> ir.Value:
        """Rows of width `row` in node n's value: M times the inner dimensions (1 if unbatched)."""
        inner = row_floats(self.g.shape(n)) // row
        base = self.rows if is_batched(self.g.shape(n)) else i64(1)
        return base if inner == 1 else self.b.mul(base, i64(inner))

    def kernel(self, key: tuple, make: Callable[[str], ir.Function]) -> ir.Function:
        """One function per distinct kernel: layers of the same shape share their code."""
        if key not in self._kernels:
            self._kernels[key] = make(f"k{len(self._kernels)}_{key[0]}")
        return self._kernels[key]

    def call(self, fn: ir.Function, *args: ir.Value) -> None:
        self.b.call(fn, list(args))


# ------------------------------------------------------------------------- lowerings per op

def lower_linear(e: _Emitter, n: str) -> None:
    g = e.g
    attrs = g.attrs(n)
    x, w, *rest = g.args(n)
    b, r = linear_extras(rest, bias=bool(attrs.get("bias")), residual=bool(attrs.get("residual")))
    if len(g.shape(w)) != 2 or None in g.shape(w):
        raise LoweringError(f"{g.op(n)} {n}: the right operand {w} must be a 2-D matrix without a batch "
                            f"dimension; it has shape {fmt_shape(g.shape(w))}")
    k, nout = g.shape(w)
    key = ("linear", k, nout, b is not None, attrs.get("activation"), r is not None, e.width, e.registers)
    fn = e.kernel(key, lambda name: inline_glue(gemm.emit_linear(
        e.module, name, K=k, N=nout, bias=b is not None, activation=attrs.get("activation"), width=e.width,
        registers=e.registers, residual=r is not None, cache=e.cache, masked=e.masked_tiles)))
    bias_ptr = ir.Constant(PTR, None) if b is None else e.pointer(b)
    e.call(fn, e.row_count(x, k), e.pointer(x), e.pointer(w), bias_ptr, e.pointer(n), e.pack_buffer(),
           *([] if r is None else [e.pointer(r)]))


def lower_elementwise(e: _Emitter, n: str) -> None:
    """One vector loop for a single elementwise op or a fused chain (an `elementwise` node); operands
    that broadcast between sample dimensions go through the strided kernel instead."""
    g = e.g
    base = g.attrs(n)["expr"] if g.op(n) == "elementwise" else (g.op(n), *[("in", i) for i in range(len(g.args(n)))])
    layout = elementwise_layout(g, tuple(g.shape(n)), g.args(n))
    if layout is None:
        lower_tensor.lower_broadcast(e, n, base)
        return
    row, all_kinds = layout
    kinds: list[str] = []
    ptrs: list[ir.Value] = []
    leaves: list[tuple] = []  # per graph operand: an immediate, or the kernel's pointer operand
    for a, kind in zip(g.args(n), all_kinds, strict=True):
        if kind == "const":
            leaves.append(("const", float(np.asarray(g[a]["value"]).reshape(-1)[0])))
            continue
        leaves.append(("in", len(kinds)))
        kinds.append(kind)
        ptrs.append(e.pointer(a))
    expr = map_leaves(base, lambda leaf: leaves[leaf[1]] if leaf[0] == "in" else leaf)
    key = ("ew", kernel_key(expr), tuple(kinds), row, e.width)
    try:
        fn = e.kernel(key, lambda name: elementwise.emit_elementwise(e.module, name, expr, kinds, row, e.width))
    except NotImplementedError as exc:  # e.g. a pow whose exponent is not a constant number
        raise LoweringError(f"{g.op(n)} {n}: {exc}") from None
    e.call(fn, e.row_count(n, row), e.pointer(n), *ptrs)


def lower_view(e: _Emitter, n: str) -> None:
    """reshape is a view: its buffer is its operand's (see scratch.plan_buffers)."""


def lower_dropout(e: _Emitter, n: str) -> None:
    """Training mode: the Philox mask of this node's stream (codegen/philox.py); p = 1: zeros. An
    eval-mode dropout is its operand's buffer (scratch.is_pass_through)."""
    g = e.g
    if is_identity_dropout(g, n):
        return
    row = row_floats(g.shape(n))
    if not draws_mask(g, n):  # p = 1: real zeros, as eager (x * 0 would keep inf and nan as nan)
        expr = ("const", 0.0)
        fn = e.kernel(("ew", kernel_key(expr), (), row, e.width),
                      lambda name: elementwise.emit_elementwise(e.module, name, expr, [], row, e.width))
        e.call(fn, e.row_count(n, row), e.pointer(n))
        return
    p = float(g.attrs(n)["p"])
    fn = e.kernel(("dropout", p, e.width), lambda name: philox.emit_dropout(e.module, name, p, e.width))
    b, draws = e.b, e.args[5]

    def word(i: int) -> ir.Value:
        return b.load(b.gep(draws, [i64(i)], source_etype=I64, inbounds=True), typ=I64)

    slot = 3 + 2 * e.dropouts.index(n)
    key0, key1, layer, call = (b.trunc(word(i), I32) for i in (0, 1, slot, slot + 1))
    if is_batched(g.shape(n)):  # element numbers count from row 0 of the whole batch
        first_row = word(2) if e.r0 is None else b.add(word(2), e.r0)
        count, first = b.mul(e.rows, i64(row)), b.mul(first_row, i64(row))
    else:
        count, first = i64(row), i64(0)
    e.call(fn, count, e.pointer(n), e.pointer(g.args(n)[0]), first, key0, key1, layer, call)


def copy_to_output(e: _Emitter, src: str) -> None:
    """The output is a leaf (the input or a parameter itself): copy it into `out`."""
    row = row_floats(e.g.shape(src))
    expr = ("mul", ("in", 0), ("const", 1.0))  # x * 1 is exact, NaN and -0 included
    fn = e.kernel(("ew", kernel_key(expr), ("full",), row, e.width),
                  lambda name: elementwise.emit_elementwise(e.module, name, expr, ["full"], row, e.width))
    e.call(fn, e.row_count(src, row), e.block_rows(e.out, e.g.shape(src)), e.pointer(src))


LOWERINGS: dict[str, Callable[[_Emitter, str], None]] = {
    "linear": lower_linear,
    "attention": attention.lower_attention,
    "layer_norm": layer_norm.lower_layer_norm,
    "matmul": lower_tensor.lower_matmul,  # by a matrix without the batch: a linear without bias
    "softmax": lower_tensor.lower_softmax,
    "sum": lower_tensor.lower_reduce,
    "mean": lower_tensor.lower_reduce,
    "max": lower_tensor.lower_reduce,
    "transpose": lower_tensor.lower_transpose,
    "slice": lower_tensor.lower_slice,
    "concat": lower_tensor.lower_concat,
    "reshape": lower_view,
    "dropout": lower_dropout,
    "elementwise": lower_elementwise,
    **{op: lower_elementwise for op in ELEMENTWISE},
}
LEAF_OPS = NO_CODE  # no code of their own: arguments, and where the result goes (scratch.NO_CODE)
# Ops of the registry with no native code yet, and why: compiling a graph that holds one is a
# CompileError naming the reason (tests/ir/test_registry.py: every op is lowered or listed here).
REFUSED: dict[str, str] = {}


def _as_target(target: Target | int) -> Target:
    return with_width(target) if isinstance(target, int) else target


def lower_graph(g: Graph, target: Target | int) -> ModulePlan:
    """Emit the module for graph g (one input, one output) for `target` (an int: the host with
    vectors of that many lanes); its text is `plan.llvm_ir`."""
    with lowered_module(g, target) as (plan, module):
        plan.llvm_ir = module_text(module)
        return plan


@contextlib.contextmanager
def lowered_module(g: Graph, target: Target | int,
                   finished: FinishedListener | None = None) -> Iterator[tuple[ModulePlan, ir.Module]]:
    """g's plan (`llvm_ir` left empty) and its llvmlite module, for a caller that prints the module
    in parts (`runtime.engine.PartPipeline`); the module is unusable after the block. `finished`, if
    given, hears the names of the module's functions as each is finished while it is built
    (`cgutils.finished_functions_to`)."""
    with paused_gc():
        plan, module = _emit_module(g, _as_target(target), finished)
        try:
            yield plan, module
        finally:
            release_module(module)


def plan_frame(g: Graph, target: Target | int) -> ModulePlan:
    """Everything of g's plan but the code itself: the entry's parameter and constant tables, its
    output shape and scratch sizes. Cheap (no LLVM work): a cached module's header is checked
    against it (`from_meta`)."""
    target = _as_target(target)
    if not g.inputs:
        raise LoweringError("the graph has no input node")
    for n in g.nodes():
        if g.op(n) not in LOWERINGS and g.op(n) not in LEAF_OPS:
            why = REFUSED.get(g.op(n), "the code generator has no lowering registered for it")
            raise LoweringError(f"no native code rule for op {g.op(n)!r} (node {n}): {why}; "
                                f"compiled ops: {sorted(LOWERINGS)}")
    buffers = plan_buffers(g)
    block = row_block(g, buffers, target.l2_bytes)  # (the values' rows alone: the pack buffer lies after them)
    pack_floats, pack_rows = _pack_need(g, target, block)  # GEMMs on one block's rows may never pack W
    buffers = buffers.with_pack(pack_floats)
    consts = [n for n in g.nodes("const") if not _folded_everywhere(g, n)]
    return ModulePlan(llvm_ir="", entry=ENTRY, params=g.params, const_nodes=consts, consts=_const_arrays(g, consts),
                      out_shape=tuple(g.shape(g.output)), scratch_per_row=buffers.per_row,
                      scratch_fixed=buffers.fixed, kernels=[], buffers=buffers,
                      dropouts=[n for n in g.nodes("dropout") if draws_mask(g, n)], row_block=block,
                      inputs=g.inputs, scratch_pack=buffers.pack, pack_rows=pack_rows)


def _emit_module(g: Graph, target: Target, finished: FinishedListener | None = None) -> tuple[ModulePlan, ir.Module]:
    plan = plan_frame(g, target)
    e = _Emitter(g, target, plan)
    compile_as_glue(e.fn)  # it only computes buffer addresses and calls the kernels
    with finished_functions_to(e.module, finished):
        if plan.row_block:
            _row_blocks(e, plan.row_block)
        else:
            _emit_nodes(e)
    e.b.ret_void()
    plan.kernels = [f.name for f in e._kernels.values()]
    return plan, e.module


def _elements(shape: tuple) -> int:
    """Elements per sample (all of them for a value without the batch; a batch axis elsewhere, which
    the op's own lowering refuses by name, counts as 1 here)."""
    return math.prod(d for d in shape if d is not None)


def _work_nodes(g: Graph) -> list[str]:
    """The nodes that emit code, in order."""
    work = []
    for n in g.nodes():
        if g.op(n) in LEAF_OPS or _elements(g.shape(n)) == 0:  # an empty value (a slice of nothing): no work
            continue
        factors = g.args(n)[:2]
        if g.op(n) in ("matmul", "linear", "attention") and any(_elements(g.shape(a)) == 0 for a in factors):
            shapes = " and ".join(fmt_shape(g.shape(a)) for a in factors)
            raise LoweringError(f"{g.op(n)} {n} multiplies {shapes}: a product over an axis of size 0 (an empty "
                                "slice?), which compiled code does not run")
        work.append(n)
    return work


def _emit_nodes(e: _Emitter) -> None:
    work = _work_nodes(e.g)
    if len(work) <= entry_parts.PART_NODES:
        for n in work:
            _lower(e, n)
    else:
        entry_parts.emit_in_parts(e, ENTRY, work, _lower)
    if e.buffers.output_root in e.ptr:
        copy_to_output(e, e.buffers.output_root)


def _lower(e: _Emitter, n: str) -> None:
    LOWERINGS[e.g.op(n)](e, n)
    if hears_finished(e.module):  # between nodes every function is finished but the entry's (and its part's)
        done = [f.name for f in e.module.functions if f.blocks and f is not e.fn and f.name != ENTRY]
        report_finished(e.module, done)


def _row_blocks(e: _Emitter, block: int) -> None:
    """for r0 in range(0, M, block): run every node on rows r0..min(r0 + block, M)."""
    b, M = e.b, e.rows
    e.scratch_rows = index_min(b, M, i64(block))
    with for_range(b, 0, M, block, name="rb") as blocks:
        r0 = blocks.index
        left = b.sub(M, r0)
        e.rows = b.select(b.icmp_signed("<", left, i64(block)), left, i64(block))
        e.r0 = r0
        _emit_nodes(e)
    e.rows, e.r0 = M, None


def _gemms(g: Graph) -> Iterator[tuple[tuple, tuple, int, int, int]]:
    """(a's shape, b's shape, rows, k, j) of each product of g (`linear`, `matmul`: a @ b, rows x k by
    k x j a slice, `lower_tensor.matmul_dims`)."""
    for n in g.nodes():
        if g.op(n) in ("linear", "matmul"):
            a, b = (tuple(g.shape(v)) for v in g.args(n)[:2])
            _, rows, k, j = lower_tensor.matmul_dims(a, b)
            yield a, b, rows, k, j


def _pack_need(g: Graph, target: Target, block: int = 0) -> tuple[int, int]:
    """(floats, rows): the largest `pack` buffer a GEMM or attention kernel of g writes, and the
    fewest rows of an entry call on which one does (`ModulePlan.pack_rows`). The reference MLP's
    GEMMs read W in place up to `gemm.direct_max_rows` rows: a batch-1 call then needs 1.5 KB of
    scratch, not the 400 KB of a packed block. When the entry runs in row blocks of `block` rows, a
    GEMM none of whose calls reaches its `gemm.pack_min_rows` never packs."""
    width, registers = target.vector_width, target.vector_registers
    needs = [(attention.attention_spec(g, n, width, registers).work_floats, 0)  # its transposed keys and score rows
             for n in g.nodes("attention")]
    for a, b, rows, k, j in _gemms(g):
        floats = gemm.pack_floats(k, j, width, registers)
        least = gemm.pack_min_rows(k, j, width, registers, target.cache_limits)
        if not floats or least is None:
            continue
        if len(b) <= 2 and not is_batched(b) and is_batched(a):  # one GEMM over every row of a (`lower_linear`)
            per_sample = row_floats(a) // max(k, 1)
            most = block * per_sample if block else None
            if per_sample and (most is None or most >= least):
                needs.append((floats, -(-least // per_sample)))
        elif rows >= least:  # the same rows on every call: one GEMM, or one per slice (`lower_tensor.lower_matmul`)
            needs.append((floats, 0))
    if not needs:
        return 0, 0
    return max(f for f, _ in needs), min(r for _, r in needs)
