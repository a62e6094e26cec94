"""The entry's arguments as each of its functions reads them, and large entries in parts.

An entry of more than PART_NODES nodes runs them in internal functions it calls in turn, each
`part(rows, frame)`: LLVM's code generation of one function grows faster than its length (one
entry for 150 TransformerBlocks took 2.4 s), and the parts compile on several cores (`split.py`,
which copies the GEMM configs the parts read into each). Every function of the entry loads the
parameter, constant and input pointers it reads once, in its first block (`ArgumentPointers`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llvmlite import ir

from .cgutils import I32, I64, PTR, compile_as_glue, i64

# Nodes of work per function of the entry; a graph with more runs them in parts.
PART_NODES = 64

MAX_VALUE_NAME = 120  # LLVM cuts local names at 1,024 characters, so two long ones could collide


def _value_name(tag: str, i: int, node: str) -> str:
    """`tag.node` for the IR dump, or for a node name too long to stay unique in LLVM (a parameter
    path many layers deep) its start and end around the slot number i."""
    name = f"{tag}.{node}".replace("%", "")
    if len(name) <= MAX_VALUE_NAME:
        return name
    return f"{name[:MAX_VALUE_NAME // 2]}..{i}..{name[-MAX_VALUE_NAME // 2:]}"


class ArgumentPointers:
    """The pointers a function of the entry reads off its arguments: the first input (`x`), the
    other inputs (a table), the parameters and constants (a table). Each table slot is loaded on
    first use, in the function's first block, so it is live throughout and loaded once."""

    def __init__(self, fn: ir.Function, args: list[ir.Value], inputs: list[str], tabled: list[str], params: int,
                 inputs_arg: int | None):
        self.fn, self.args = fn, args  # args: the entry's arguments as this function has them
        self.loaded: dict[str, ir.Value] = {inputs[0]: args[1]}
        self.slots: dict[str, tuple[int, int, str]] = {}  # node: (argument, slot, name tag)
        if inputs_arg is not None:
            self.slots.update({n: (inputs_arg, i, "in") for i, n in enumerate(inputs[1:])})
        self.slots.update({n: (4, i, "p" if i < params else "c") for i, n in enumerate(tabled)})
        self._b = ir.IRBuilder()

    def __contains__(self, n: str) -> bool:
        return n in self.loaded or n in self.slots

    def __getitem__(self, n: str) -> ir.Value:
        if n not in self.loaded:
            arg, i, tag = self.slots[n]
            self._b.position_before(self.fn.entry_basic_block.terminator)
            slot = self._b.gep(self.args[arg], [i64(i)], source_etype=PTR, inbounds=True)
            self.loaded[n] = self._b.load(slot, typ=PTR, name=_value_name(tag, i, n))
        return self.loaded[n]


def emit_in_parts(e: Any, entry: str, work: list[str], lower: Callable[[Any, str], None]) -> None:
    """`lower(e, n)` for every node of `work`, PART_NODES of them in each function `entry.partI`;
    `e` is the module's emitter (`module._Emitter`), positioned in the entry."""
    for i in range(0, len(work), PART_NODES):
        _emit_part(e, f"{entry}.part{i // PART_NODES}", work[i:i + PART_NODES], lower)


def _emit_part(e: Any, name: str, nodes: list[str], lower: Callable[[Any, str], None]) -> None:
    """`nodes` in a function of their own, `part(rows, frame)`: `frame` holds the entry's other
    arguments, then the row block's first row and its scratch rows. Two arguments, not nine: a
    glue function with more arguments than registers takes LLVM's slow instruction selector
    (`compile_as_glue`), which made parts slower to compile than the one entry they replace."""
    frame_type = _frame_type(e)
    if e.frame is None:  # once, in the entry's first block: the arguments do not change
        first = ir.IRBuilder()
        first.position_before(e.fn.entry_basic_block.terminator)
        e.frame = first.alloca(frame_type, name="frame")
        for i, value in enumerate(e.args[1:]):
            first.store(value, first.gep(e.frame, [ir.Constant(I32, 0), ir.Constant(I32, i)]))
    n_args = len(e.args) - 1
    r0 = e.r0 if e.r0 is not None else i64(0)
    for i, value in enumerate((r0, e.scratch_rows)):  # this block's
        e.b.store(value, e.b.gep(e.frame, [ir.Constant(I32, 0), ir.Constant(I32, n_args + i)]))
    part = ir.Function(e.module, ir.FunctionType(ir.VoidType(), [I64, PTR]), name)
    part.linkage = "internal"
    part.attributes.add("nounwind")
    compile_as_glue(part)
    part.args[0].name, part.args[1].name = "M", "frame"
    e.call(part, e.rows, e.frame)
    blocked = e.r0 is not None
    names = [a.name for a in e.fn.args[1:]]

    def arguments(b: ir.IRBuilder) -> tuple[list, ir.Value, Any]:
        words = [b.load(b.gep(part.args[1], [ir.Constant(I32, 0), ir.Constant(I32, i)], source_etype=frame_type),
                        typ=frame_type.elements[i], name=name)
                 for i, name in enumerate([*names, "r0", "scratch_rows"])]
        return [part.args[0], *words[:n_args]], words[-1], words[-2] if blocked else None

    caller = (e.fn, e.b, e.args, e.rows, e.scratch_rows, e.r0, e.out, e.scratch, e.ptr)
    e.enter(part, arguments)
    for n in nodes:
        lower(e, n)
    e.b.ret_void()
    e.fn, e.b, e.args, e.rows, e.scratch_rows, e.r0, e.out, e.scratch, e.ptr = caller


def _frame_type(e: Any) -> ir.LiteralStructType:
    """The entry's arguments after the rows, then a row block's first row and scratch rows."""
    return ir.LiteralStructType([a.type for a in e.fn.args[1:]] + [I64, I64])
