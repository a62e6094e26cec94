"""Split a module's LLVM IR into parts that LLVM can turn into machine code at the same time.

Code generation is most of a cold compile (the reference MLP: ~35 of ~65 ms) and LLVM does it one
function after another. Separate modules in separate LLVM contexts can be compiled on separate
threads (LLVM's own parallel LTO code generation splits a module the same way), so the runtime
emits one object file per part, one part per core (`runtime.engine.emit_objects`).

A part holds whole function definitions: the module's header and every declaration go into each
part, its global variables and the exported entry into the first. A function that another part
calls loses its `internal` linkage there and is declared where it is called; an `alwaysinline`
helper is copied into every part that calls it, so it is still inlined. Parts are balanced by
their lines of IR (about one instruction each). Anything this reading does not expect (metadata,
attribute groups, other linkages) leaves the module whole: splitting is an optimization, never a
requirement.

A module is read either as printed text (`split_module`) or as llvmlite's `ir.Module` before it is
printed (`split_ir_module`). Printing is Python (`ir_text`, ~4 µs a line): the second form prints
each part only when it is asked for, so that one part can compile on another core while this thread
prints the next (`runtime.engine`). Both read the same module into the same parts.

`EarlyParts` cuts parts off a module still being built, from the functions its builder reports
finished (`cgutils.finished_functions_to`), so that they compile while the rest is built; once it
is, the rest is split as above (`runtime.engine.PartPipeline`).
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable

from llvmlite import ir

from .ir_text import function_text, module_head, module_text

_TOP_LEVEL = re.compile(r"\n(?=define |declare |@)")  # a newline first: scanning for it is fast
_SYMBOL = re.compile(r'@"([^"]+)"')
_DEFINE = re.compile(r'define (internal )?[^@]*@"([^"]+)"')

MIN_PART_LINES = 500  # a part costs LLVM ~1.2 ms of fixed work: smaller modules stay whole
# Printing a line of IR (`ir_text`) costs about this share of what parsing, optimizing and emitting
# it costs LLVM (the reference MLP: 8.8 ms against ~60 ms of CPU time). The thread that prints every
# part compiles the first, so the first part is made that much lighter.
PRINT_SHARE = 0.15

Printer = Callable[[], str]


@dataclasses.dataclass
class _Function:
    name: str
    printer: Printer  # its definition's text, printed on first use
    internal: bool
    inline: bool  # internal and alwaysinline: copied into each part that calls it
    calls: set[str]  # the symbols its body names
    lines: int
    _text: str | None = None

    @property
    def text(self) -> str:
        if self._text is None:
            self._text = self.printer()
        return self._text

    def declaration(self) -> str:
        return _declared(self.text.split("\n", 1)[0] + "\n")

    def exported(self) -> str:
        return self.text.replace("define internal ", "define ", 1) if self.internal else self.text


@dataclasses.dataclass
class _Reading:
    """A module in the pieces a part is written from."""
    head: str  # the header lines and type declarations
    declares: list[str]
    variables: dict[str, str]  # name: the global variable's text
    functions: dict[str, _Function]  # the definitions, in module order


def split_module(llvm_ir: str, parts: int) -> list[str]:
    """llvm_ir as at most `parts` modules that together define what it defines (one: unchanged)."""
    reading = _read_text(llvm_ir) if parts >= 2 else None
    printers = _split(reading, parts, print_share=0.0) if reading else None
    return [p() for p in printers] if printers else [llvm_ir]


def split_ir_module(module: ir.Module, parts: int, print_share: float = PRINT_SHARE) -> list[Printer]:
    """`module` as at most `parts` modules like `split_module`'s, each printed when its printer is
    called; the first part made lighter by `print_share` of the whole, the share of the work its
    thread spends printing every part. One part: the whole module's text."""
    reading = _read_ir(module) if parts >= 2 else None
    return (_split(reading, parts, print_share) if reading else None) or [lambda: module_text(module)]


def _split(reading: _Reading, parts: int, print_share: float, cut: EarlyParts | None = None,
           busy: list[float] | None = None) -> list[Printer] | None:
    """The printers of reading's parts; with `cut`, of those defining what its parts do not (at least
    one part, then)."""
    copyable = _copyable_constants(reading)
    placed = {n: v for n, v in reading.variables.items() if n not in copyable}  # live in the first part only
    taken = cut.taken if cut is not None else {}
    left = {n: f for n, f in reading.functions.items() if n not in taken}
    assignment = _balance(left, placed, parts, print_share, busy or [])
    if assignment is None and cut is not None:  # one part, of what no part cut before defines
        assignment = [{n for n, f in left.items() if not f.inline}]
    return None if assignment is None else _write_parts(reading, assignment, copyable, cut)


class EarlyParts:
    """Parts cut off a module while it is still being built (`runtime.engine.PartPipeline`), so that
    they compile on other cores meanwhile. The builder reports each function as it is finished
    (`finished`); `cut` makes a part of those ready, `rest` parts of the module once it is built, as
    `split_ir_module` would of what the parts cut before do not define.

    A part cut early holds its functions exported, since code built later may call any of them, and
    declares what they call; an internal `alwaysinline` helper is copied into it as into any part.
    A copyable constant (`_copyable_constants`) is copied into each part that names it; a function
    naming another global variable, or calling an inline helper not finished yet, waits for the rest
    (the variables live in its first part)."""

    def __init__(self, module: ir.Module):
        self.module = module
        self.ready: dict[str, _Function] = {}  # finished, read, in no part yet (inline helpers stay here)
        self.taken: dict[str, _Function] = {}  # defined in a part cut already
        self.called: set[str] = set()  # what those parts call: defined elsewhere, exported there
        self._constants: dict[str, str] = {}  # the text of each constant a part may copy (`_copyable`)
        self.printing = [0, 0.0]  # lines of the functions printed as they were finished, and seconds

    def finished(self, names: list[str]) -> None:
        """Read the functions `names`, finished: printed now, once (a part needs the text anyway), and
        read from their text as `split_module` reads a printed module (faster than walking every
        operand for the symbols they name, `_named_symbols`)."""
        for name in names:
            fn = self.module.globals.get(name)
            if name not in self.ready and name not in self.taken and isinstance(fn, ir.Function) and fn.blocks \
                    and fn.linkage in ("", "internal"):
                start = time.perf_counter()
                read = _read_function(_printed(fn))
                self.printing[1] += time.perf_counter() - start
                if read is not None:
                    self.ready[name] = read
                    self.printing[0] += read.lines

    def cut(self, min_lines: int) -> tuple[Printer, int] | None:
        """A part defining the finished functions that can be placed now and its lines of IR, if they
        come to `min_lines` with their inline helpers."""
        units = [n for n, f in self.ready.items() if f.internal and not f.inline]
        closures = [c for c in map(self._placeable, units) if c is not None]
        members = set().union(*closures)
        lines = sum(self.ready[n].lines for n in members)
        if not closures or lines < min_lines:
            return None
        named = set().union(*(self.ready[n].calls for n in members)) - members
        constants = sorted(n for n in named if n in self._constants)
        named |= set().union(*(_SYMBOL.findall(self._constants[n]) for n in constants)) - members - set(constants)
        elsewhere = sorted(n for n in named if isinstance(f := self.module.globals.get(n), ir.Function) and f.blocks)
        self.called |= set(elsewhere)
        head = "\n".join(module_head(self.module)) + "\n"
        declares = [_line(f) for f in self.module.functions if not f.blocks]
        heads = [_declaration(self.module.globals[n]) for n in elsewhere] + [self._constants[n] for n in constants]
        bodies = []
        for name in [n for n in self.ready if n in members]:  # in the order they were finished
            fn = self.ready[name]
            if not fn.inline:
                self.taken[name] = self.ready.pop(name)
            bodies.append(fn if fn.inline else _Exported(fn))
        return (lambda: head + "".join(declares) + "".join(heads) + "".join(f.text for f in bodies)), lines

    def _placeable(self, name: str) -> set[str] | None:
        """`name` and the inline helpers it pulls in, or None if one of them names a global variable
        that is not a constant a part may copy, or calls an inline helper not finished yet."""
        members = {name} | _inlined_closure(self.ready[name].calls, self.ready)
        for callee in set().union(*(self.ready[m].calls for m in members)):
            value = self.module.globals.get(callee)
            if isinstance(value, ir.GlobalVariable) and not self._copyable(value):
                return None
            if isinstance(value, ir.Function) and "alwaysinline" in value.attributes and callee not in self.ready:
                return None
        return members

    def _copyable(self, variable: ir.GlobalVariable) -> bool:
        """Whether parts may each hold a copy of `variable` (`_copyable_constants`' rule): its text is
        kept in `_constants` if so. The GEMM configs a part of the entry reads are such constants."""
        if variable.name not in self._constants:
            text = _line(variable)
            def plain_function(n: str) -> bool:
                return isinstance(f := self.module.globals.get(n), ir.Function) and "alwaysinline" not in f.attributes

            if not _copyable_text(variable.name, text, plain_function):
                return False
            self._constants[variable.name] = text
        return True

    def rest(self, parts: int, print_share: float, busy: list[float]) -> list[Printer] | None:
        """At most `parts` parts defining what the parts cut before do not, once the module is built;
        None if it cannot be read so (`split_ir_module`: then only the whole module will do). The
        parts after the first go to threads busy for `busy` lines of IR still, and are lighter by it."""
        reading = _read_ir(self.module, known={**self.ready, **self.taken})
        return None if reading is None else _split(reading, parts, print_share, self, busy)


@dataclasses.dataclass
class _Exported:
    function: _Function

    @property
    def text(self) -> str:
        return self.function.exported()


def _declaration(fn: ir.Function) -> str:
    """A declaration of fn, defined in another part, from its prototype alone (fn may be unfinished)."""
    prototype: list[str] = []
    fn.descr_prototype(prototype)
    return _declared(prototype[0])


def _declared(prototype: str) -> str:
    """A definition's prototype line as the declaration a part that only calls it holds."""
    return re.sub(r"^define (internal )?", "declare ", prototype)


_INTERNAL_CONSTANT = re.compile(r'@"[^"]+" = (internal|private) (unnamed_addr )?constant ')


def _copyable_constants(reading: _Reading) -> set[str]:
    """The internal constants a part may hold a copy of (the GEMM drivers' configs, which the entry's
    glue reads): nothing takes their address to compare it, and the functions they name are defined
    once, in some part, and declared where a copy names them. Not one naming an alwaysinline helper
    (it has no symbol of its own) or another variable."""
    functions = reading.functions
    return {n for n, text in reading.variables.items()
            if _copyable_text(n, text, lambda m: m in functions and not functions[m].inline)}


def _copyable_text(name: str, text: str, plain_function: Callable[[str], bool]) -> bool:
    """Whether the global `name` printed as `text` is a constant a part may copy
    (`_copyable_constants`): internal, naming only functions that `plain_function` says are not
    alwaysinline helpers."""
    return bool(_INTERNAL_CONSTANT.match(text)) and all(map(plain_function, set(_SYMBOL.findall(text)) - {name}))


def _read_text(llvm_ir: str) -> _Reading | None:
    starts = [m.start() for m in _TOP_LEVEL.finditer("\n" + llvm_ir)]  # where each line starting one begins
    if not starts:
        return None
    head = llvm_ir[:starts[0]]
    pieces = [llvm_ir[a:b].rstrip("\n") + "\n" for a, b in zip(starts, [*starts[1:], len(llvm_ir)], strict=True)]
    if re.search(r"(?m)^(!|attributes |\$)", pieces[-1]) or "!" in head:
        return None
    declares = [p for p in pieces if p.startswith("declare ")]
    variables = {m.group(1): p for p in pieces if p.startswith("@") and (m := _SYMBOL.match(p))}
    functions = {}
    for p in pieces:
        if p.startswith("define "):
            fn = _read_function(p)
            if fn is None:
                return None
            functions[fn.name] = fn
    if len(variables) + len(declares) + len(functions) != len(pieces):
        return None
    return _Reading(head, declares, variables, functions)


def _read_function(text: str) -> _Function | None:
    m = _DEFINE.match(text)
    prototype = text.split("\n", 1)[0]
    if m is None or (m.group(1) is None and re.match(r"define (private|linkonce|weak|available)", prototype)):
        return None
    name, internal = m.group(2), m.group(1) is not None
    calls = set(_SYMBOL.findall(text)) - {name}
    # Only an internal helper may be copied: two exported definitions of one name would not link.
    return _Function(name, lambda: text, internal, inline=internal and " alwaysinline" in prototype, calls=calls,
                     lines=text.count("\n"))


def _read_ir(module: ir.Module, known: dict[str, _Function] | None = None) -> _Reading | None:
    """module in pieces; `known`: functions read already (`EarlyParts`), not read again."""
    known = known or {}
    if module.metadata or module.namedmetadata:
        return None
    head = "\n".join(module_head(module)) + "\n"
    declares, variables, functions = [], {}, {}
    for value in module.globals.values():
        if isinstance(value, ir.Function) and value.is_declaration:
            declares.append(_line(value))
        elif isinstance(value, ir.Function):
            if value.linkage not in ("", "internal"):
                return None
            functions[value.name] = known.get(value.name) or _function_of(value)
        elif isinstance(value, ir.GlobalVariable):
            variables[value.name] = _line(value)
        else:
            return None
    return _Reading(head, declares, variables, functions)


def _line(value: ir.GlobalValue) -> str:
    """A declaration's or a variable's text as a piece of the printed module: one line, ending in one."""
    return str(value).rstrip("\n") + "\n"


def _function_of(fn: ir.Function) -> _Function:
    internal = fn.linkage == "internal"
    lines = sum(len(block.instructions) + 1 for block in fn.blocks) + 3  # with prototype, braces, labels
    return _Function(fn.name, lambda: _printed(fn), internal, inline=internal and "alwaysinline" in fn.attributes,
                     calls=_named_symbols(fn) - {fn.name}, lines=lines)


def _printed(fn: ir.Function) -> str:
    text = function_text(fn)
    time.sleep(0)  # lets go of the GIL: a thread compiling a part printed before may be waiting for it
    return text


def _named_symbols(fn: ir.Function) -> set[str]:
    """The global names fn's body uses, as its text would show them. A constant that may hold one in
    its text (an aggregate or a constant expression) is read from its text; llvmlite has no use lists."""
    names: set[str] = set()
    for block in fn.blocks:
        for instr in block.instructions:
            values = [v for v, _ in instr.incomings] if isinstance(instr, ir.PhiInstr) else instr.operands
            for v in values:
                if isinstance(v, ir.GlobalValue):
                    names.add(v.name)
                elif isinstance(v, ir.BlockAddress):
                    names.add(v.function.name)
                elif isinstance(v, ir.Constant) and isinstance(v.constant, (str, list, tuple, bytearray)):
                    names.update(_SYMBOL.findall(str(v)))
    return names


def _inlined_closure(names: set[str], functions: dict[str, _Function]) -> set[str]:
    """The alwaysinline functions that code naming `names` pulls in, directly or through each other."""
    found: set[str] = set()
    todo = [n for n in names if n in functions and functions[n].inline]
    while todo:
        n = todo.pop()
        if n not in found:
            found.add(n)
            todo += [c for c in functions[n].calls if c in functions and functions[c].inline]
    return found


def _balance(functions: dict[str, _Function], variables: dict[str, str], parts: int,
             print_share: float, busy: list[float] | None = None) -> list[set[str]] | None:
    """Which functions (not counting copied inline helpers) each part defines, or None when the module
    should stay whole. The first part takes the exported functions and every function that names a
    global variable (the variables live there), and carries `print_share` of the whole; the rest go,
    largest first, to the part they leave lightest, a part after the first paying its own printing,
    and part i + 1 starting from `busy[i]` lines (its thread's work on parts cut before)."""
    units = [n for n, f in functions.items() if not f.inline]
    closure = {n: {n} | _inlined_closure(functions[n].calls, functions) for n in units}
    cost = {n: sum(functions[m].lines for m in closure[n]) for n in units}
    # a function naming a variable (`variables`: those not copied into the parts that name them),
    # itself or through a helper inlined into it (`_write_parts` would refuse it anywhere else, and
    # with it the whole split)
    pinned = {n for n in units if not functions[n].internal
              or any(functions[m].calls & variables.keys() for m in closure[n])}
    parts = min(parts, sum(cost.values()) // MIN_PART_LINES, len(units) - len(pinned) + (1 if pinned else 0))
    if parts < 2:
        return None
    assignment: list[set[str]] = [set(pinned)] + [set() for _ in range(parts - 1)]
    busy = [*(busy or []), *[0.0] * parts][:parts - 1]
    loads = [sum(cost[n] for n in pinned) + print_share * sum(cost.values()), *busy]
    weight = [1.0] + [1.0 + print_share] * (parts - 1)
    for n in sorted(set(units) - pinned, key=lambda n: (-cost[n], n)):
        i = min(range(parts), key=lambda i: loads[i] + weight[i] * cost[n])
        assignment[i].add(n)
        loads[i] += weight[i] * cost[n]
    if any(not a for a in assignment):
        return None
    return assignment


def _write_parts(reading: _Reading, assignment: list[set[str]], copyable: set[str],
                 cut: EarlyParts | None = None) -> list[Printer] | None:
    functions, variables = reading.functions, reading.variables
    # a function defined in a part cut before the module was built: declared wherever it is called
    defined_in: dict[str, int] = dict.fromkeys(cut.taken if cut else (), -1)
    defined_in |= {n: i for i, names in enumerate(assignment) for n in names}
    variable_calls = set().union(*(_SYMBOL.findall(v) for v in variables.values())) - variables.keys()
    members = []
    for i, names in enumerate(assignment):
        roots = names | (variable_calls if i == 0 else set())
        members.append(names | _inlined_closure(set().union(roots, *(functions[n].calls for n in names)), functions))
    needed = [set().union(*(functions[n].calls for n in m)) | (variable_calls if i == 0 else set())
              for i, m in enumerate(members)]
    copies: list[set[str]] = [set()] + [needed[i] & copyable for i in range(1, len(members))]
    for i, names in enumerate(copies):  # a copy names its functions where it is
        needed[i] |= set().union(*(_SYMBOL.findall(variables[n]) for n in names)) - {*names}
    if any((needed[i] & variables.keys()) - copies[i] for i in range(1, len(members))):
        return None  # a global variable named outside the first part: keep the module whole
    exported = {n for i, need in enumerate(needed) for n in need if n in defined_in and defined_in[n] != i}
    exported |= cut.called if cut else set()  # what the parts cut before call

    def printer(i: int) -> Printer:
        def text() -> str:
            m = members[i]
            elsewhere = sorted(n for n in needed[i] if n in defined_in and n not in m)
            body = [functions[n].exported() if n in exported else functions[n].text for n in functions if n in m]
            held = variables.values() if i == 0 else [variables[n] for n in variables if n in copies[i]]
            return (reading.head + "".join(reading.declares) + "".join(functions[n].declaration() for n in elsewhere)
                    + "".join(held) + "".join(body))
        return text

    return [printer(i) for i in range(len(members))]
