"""Split a module's LLVM IR into parts that LLVM can turn into machine code at the same time.

Code generation is most of a cold compile (the reference MLP: ~35 of ~65 ms) and LLVM does it one
function after another. Separate modules in separate LLVM contexts can be compiled on separate
threads (LLVM's own parallel LTO code generation splits a module the same way), so the runtime
emits one object file per part, one part per core (`runtime.engine.emit_objects`).

A part holds whole function definitions: the module's header and every declaration go into each
part, its global variables and the exported entry into the first. A function that another part
calls loses its `internal` linkage there and is declared where it is called; an `alwaysinline`
helper is copied into every part that calls it, so it is still inlined. Parts are balanced by
their lines of IR (about one instruction each). Anything this reading of llvmlite's printed IR
does not expect (metadata, attribute groups, other linkages) leaves the module whole: splitting
is an optimization, never a requirement.
"""

from __future__ import annotations

import dataclasses
import re

_TOP_LEVEL = re.compile(r"\n(?=define |declare |@)")  # a newline first: scanning for it is fast
_SYMBOL = re.compile(r'@"([^"]+)"')
_DEFINE = re.compile(r'define (internal )?[^@]*@"([^"]+)"')

MIN_PART_LINES = 500  # a part costs LLVM ~1.2 ms of fixed work: smaller modules stay whole


@dataclasses.dataclass
class _Function:
    name: str
    text: str
    internal: bool
    inline: bool  # internal and alwaysinline: copied into each part that calls it
    calls: set[str]  # the symbols its body names

    @property
    def lines(self) -> int:
        return self.text.count("\n")

    def declaration(self) -> str:
        return re.sub(r"^define (internal )?", "declare ", self.text.split("\n", 1)[0]) + "\n"

    def exported(self) -> str:
        return self.text.replace("define internal ", "define ", 1) if self.internal else self.text


def split_module(llvm_ir: str, parts: int) -> list[str]:
    """llvm_ir as at most `parts` modules that together define what it defines (one: unchanged)."""
    if parts < 2:
        return [llvm_ir]
    starts = [m.start() for m in _TOP_LEVEL.finditer("\n" + llvm_ir)]  # where each line starting one begins
    if not starts:
        return [llvm_ir]
    head = llvm_ir[:starts[0]]
    pieces = [llvm_ir[a:b].rstrip("\n") + "\n" for a, b in zip(starts, [*starts[1:], len(llvm_ir)], strict=True)]
    if re.search(r"(?m)^(!|attributes |\$)", pieces[-1]) or "!" in head:
        return [llvm_ir]
    declares = [p for p in pieces if p.startswith("declare ")]
    variables = {m.group(1): p for p in pieces if p.startswith("@") and (m := _SYMBOL.match(p))}
    functions = {}
    for p in pieces:
        if p.startswith("define "):
            fn = _read_function(p)
            if fn is None:
                return [llvm_ir]
            functions[fn.name] = fn
    if len(variables) + len(declares) + len(functions) != len(pieces):
        return [llvm_ir]
    assignment = _balance(functions, variables, parts)
    if assignment is None:
        return [llvm_ir]
    return _write_parts(head, declares, variables, functions, assignment) or [llvm_ir]


def _read_function(text: str) -> _Function | None:
    m = _DEFINE.match(text)
    prototype = text.split("\n", 1)[0]
    if m is None or (m.group(1) is None and re.match(r"define (private|linkonce|weak|available)", prototype)):
        return None
    name, internal = m.group(2), m.group(1) is not None
    calls = set(_SYMBOL.findall(text)) - {name}
    # Only an internal helper may be copied: two exported definitions of one name would not link.
    return _Function(name, text, internal, inline=internal and " alwaysinline" in prototype, calls=calls)


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


def _balance(functions: dict[str, _Function], variables: dict[str, str], parts: int) -> list[set[str]] | None:
    """Which functions (not counting copied inline helpers) each part defines, or None when the module
    should stay whole. The first part takes the exported functions and every function that names a
    global variable (the variables live there); the rest go, largest first, to the lightest part."""
    units = [n for n, f in functions.items() if not f.inline]
    cost = {n: sum(functions[m].lines for m in {n} | _inlined_closure(functions[n].calls, functions)) for n in units}
    pinned = {n for n in units if not functions[n].internal or functions[n].calls & variables.keys()}
    parts = min(parts, sum(cost.values()) // MIN_PART_LINES, len(units) - len(pinned) + (1 if pinned else 0))
    if parts < 2:
        return None
    assignment: list[set[str]] = [set(pinned)] + [set() for _ in range(parts - 1)]
    loads = [sum(cost[n] for n in pinned)] + [0] * (parts - 1)
    for n in sorted(set(units) - pinned, key=lambda n: (-cost[n], n)):
        i = loads.index(min(loads))
        assignment[i].add(n)
        loads[i] += cost[n]
    if any(not a for a in assignment):
        return None
    return assignment


def _write_parts(head: str, declares: list[str], variables: dict[str, str], functions: dict[str, _Function],
                 assignment: list[set[str]]) -> list[str] | None:
    defined_in: dict[str, int] = {n: i for i, names in enumerate(assignment) for n in names}
    variable_calls = set().union(*(_SYMBOL.findall(v) for v in variables.values())) - variables.keys()
    members = []
    for i, names in enumerate(assignment):
        roots = names | (variable_calls if i == 0 else set())
        members.append(names | _inlined_closure(set().union(roots, *(functions[n].calls for n in names)), functions))
    needed = [set().union(*(functions[n].calls for n in m)) | (variable_calls if i == 0 else set())
              for i, m in enumerate(members)]
    if any(needed[i] & variables.keys() for i in range(1, len(members))):
        return None  # a global variable named outside the first part: keep the module whole
    exported = {n for i, need in enumerate(needed) for n in need if n in defined_in and defined_in[n] != i}
    texts = []
    for i, m in enumerate(members):
        elsewhere = sorted(n for n in needed[i] if n in defined_in and n not in m)
        body = [functions[n].exported() if n in exported else functions[n].text
                for n in functions if n in m]
        texts.append(head + "".join(declares) + "".join(functions[n].declaration() for n in elsewhere)
                     + ("".join(variables.values()) if i == 0 else "") + "".join(body))
    return texts
