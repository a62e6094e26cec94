"""The text of an llvmlite module or function, byte for byte what `str()` prints, in 0.6 of the time.

A cold compile prints every instruction once, and `codegen.split` prints the first part to compile
on the critical path. llvmlite's printer takes ~7 µs an instruction, through nested `str.format`
calls and a method per operand. The instructions our code generator emits take a few forms; each
is written here with one f-string. An instruction with anything else (metadata, flags, call
attributes or a calling convention, a class not listed) is printed by llvmlite itself, so the text
is always llvmlite's. (That is llvmlite's text of a module printed once it is built, as ours always
is: llvmlite keeps an instruction's text from its first print, and some edits after it, such as a
phi's new incoming value, do not clear that.) tests/codegen/test_ir_text.py compares the two for
every builder form, every bench model and random programs over the whole op set;
`benchmarks/print_cost.py` times them.
"""

from __future__ import annotations

from collections.abc import Callable

from llvmlite import ir
from llvmlite.ir import instructions as llvm


def _ref(v: ir.Value) -> str:
    return v.get_reference()


def _typed(v: ir.Value) -> str:
    return f"{v.type} {v.get_reference()}"


def _operation(i: llvm.Instruction) -> str:
    return f"{i.opname} {i.type} {', '.join(map(_ref, i.operands))}"


def _typed_operands(i: llvm.Instruction) -> str:  # vector element ops, branches
    return f"{i.opname} {', '.join(map(_typed, i.operands))}"


def _call(i: llvm.CallInstr) -> str | None:
    callee = i.operands[0]
    if i.arg_attributes or i.attributes or i.fastmath or i.cconv or not isinstance(callee, ir.Function):
        return None
    fnty = callee.function_type
    if fnty.var_arg:
        return None
    tail = f"{i.tail} " if i.tail else ""
    return f"{tail}call {fnty.return_type} {callee.get_reference()}({', '.join(map(_typed, i.operands[1:]))})"


def _gep(i: llvm.GEPInstr) -> str:
    op = "getelementptr inbounds" if i.inbounds else "getelementptr"
    return f"{op} {i.source_etype}, {_typed(i.pointer)}, {', '.join(map(_typed, i.indices))}"


def _phi(i: llvm.PhiInstr) -> str:
    incoming = ", ".join([f"[{v.get_reference()}, {b.get_reference()}]" for v, b in i.incomings])
    return f"phi  {i.type} {incoming}"  # two spaces: llvmlite's place for the (here absent) flags


def _compare(i: llvm.CompareInstr) -> str:
    lhs, rhs = i.operands
    return f"{i.opname} {i.op} {_typed(lhs)}, {rhs.get_reference()}"


def _select(i: llvm.SelectInstr) -> str:
    return f"select  {', '.join(map(_typed, i.operands))}"  # two spaces, as in `_phi`


def _cast(i: llvm.CastInstr) -> str:
    return f"{i.opname} {_typed(i.operands[0])} to {i.type}"


def _align(i: llvm.LoadInstr | llvm.StoreInstr) -> str:
    return "" if i.align is None else ", align %d" % i.align  # noqa: UP031 - llvmlite's %d: any number, not only an int


def _load(i: llvm.LoadInstr) -> str:
    return f"load {i.type}, {_typed(i.operands[0])}{_align(i)}"


def _store(i: llvm.StoreInstr) -> str:
    value, ptr = i.operands
    return f"store {_typed(value)}, {_typed(ptr)}{_align(i)}"


# By exact class: a subclass may print itself differently.
_WRITERS: dict[type, Callable] = {
    llvm.Instruction: _operation, llvm.CallInstr: _call, llvm.GEPInstr: _gep, llvm.PhiInstr: _phi,
    llvm.ICMPInstr: _compare, llvm.FCMPInstr: _compare, llvm.SelectInstr: _select, llvm.CastInstr: _cast,
    llvm.LoadInstr: _load, llvm.StoreInstr: _store, llvm.ShuffleVector: _typed_operands,
    llvm.InsertElement: _typed_operands, llvm.ExtractElement: _typed_operands, llvm.Branch: _typed_operands,
    llvm.ConditionalBranch: _typed_operands,
}


def instruction_text(i: llvm.Instruction) -> str:
    """`str(i)`."""
    write = _WRITERS.get(type(i))
    body = write(i) if write is not None and not i.metadata and not i.flags else None
    if body is None:
        return str(i)
    # llvmlite strips what its formats leave at the end (the place for absent metadata)
    return (body if isinstance(i.type, ir.VoidType) else f"{i.get_reference()} = {body}").rstrip()


def function_text(fn: ir.Function) -> str:
    """`str(fn)`."""
    if not fn.blocks:
        return str(fn)
    buf: list[str] = []
    fn.descr_prototype(buf)
    buf.append("{\n")
    for block in fn.blocks:
        buf.append(f"{block._format_name()}:\n")
        buf += [f"  {instruction_text(i)}\n" for i in block.instructions]
    buf.append("}\n")
    return "".join(buf)


def module_head(module: ir.Module) -> list[str]:
    """The lines llvmlite's `Module.__repr__` writes before the first global: the header and the
    type declarations."""
    return [f'; ModuleID = "{module.name}"', f'target triple = "{module.triple}"',
            f'target datalayout = "{module.data_layout}"', "",
            *(t.get_declaration() for t in module.get_identified_types().values())]


def module_text(module: ir.Module) -> str:
    """`str(module)`: llvmlite's `Module.__repr__` with our function printer."""
    return "\n".join([*module_head(module),
                      *(function_text(v) if isinstance(v, ir.Function) else str(v) for v in module.globals.values()),
                      *module._get_metadata_lines()])
