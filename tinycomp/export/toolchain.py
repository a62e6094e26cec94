"""Object code for a target, and the system tools that link it: `cc` for the host's shared library,
`wasm-ld` for a WebAssembly module."""

from __future__ import annotations

import shutil
import struct
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..codegen.target import Target, object_target_machine, optimize, parse_module
from ..runtime.engine import LLVM_LOCK

# Debian and Ubuntu name lld's WebAssembly linker after its LLVM version (lld-19: wasm-ld-19).
WASM_LD = ("wasm-ld", *(f"wasm-ld-{v}" for v in range(22, 14, -1)))
HOST_CC = ("cc", "gcc", "clang")


class ToolMissing(RuntimeError):
    """A system tool an export needs is not installed."""


def find_tool(names: Sequence[str], purpose: str, install: str) -> str:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    raise ToolMissing(f"{purpose} needs one of {', '.join(names)} on PATH; none was found ({install})")


def emit_object(target: Target, llvm_irs: Sequence[str], exported: Iterable[str], speed_level: int = 0) -> bytes:
    """Link the IR modules into one, make every definition but `exported` internal (two exported
    models link into one program without clashes, and LLVM may drop what nothing calls), optimize
    and emit a relocatable object for `target`."""
    keep = set(exported)
    with LLVM_LOCK:
        tm = object_target_machine(target)
        mod = parse_module(llvm_irs[0], tm)
        for text in llvm_irs[1:]:
            mod.link_in(parse_module(text, tm))
        for value in (*mod.functions, *mod.global_variables):
            if not value.is_declaration and value.name not in keep:
                value.linkage = "internal"
        mod.verify()
        optimize(mod, tm, speed_level)
        return bytes(tm.emit_object(mod))


def _run(cmd: list[str], what: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({' '.join(cmd)}):\n{done.stderr.strip() or done.stdout.strip()}")


def link_shared_library(obj: Path, out: Path) -> None:
    """lib<name>.so from the (position-independent) host object, with the system C compiler's linker."""
    cc = find_tool(HOST_CC, "the host shared library", "install a C compiler, e.g. apt-get install gcc")
    _run([cc, "-shared", "-o", str(out), str(obj)], "linking the shared library")


def link_wasm(obj: Path, out: Path, exported: Iterable[str]) -> None:
    """A .wasm module exporting `exported`, its memory (`memory`) and `__heap_base`, where the
    memory free for the caller's buffers starts. No entry point, no imports."""
    ld = find_tool(WASM_LD, "a wasm32 export", "apt-get install lld-19")
    _run([ld, "--no-entry", *[f"--export={name}" for name in exported], "--export=__heap_base",
          "-o", str(out), str(obj)], "linking the WebAssembly module")


# Symbols an exported object may leave to the program it is linked into: nothing from libc but
# memcpy/memset. (WebAssembly objects are not read here: wasm-ld refuses their undefined symbols.)
ALLOWED_UNDEFINED = frozenset({"memcpy", "memset"})


def undefined_symbols(obj: bytes) -> set[str] | None:
    """The undefined symbols of a little-endian ELF relocatable object (32 or 64 bits), or None for
    another format (WebAssembly objects: wasm-ld refuses undefined symbols when it links them)."""
    if not obj.startswith(b"\x7fELF") or obj[5] != 1:
        return None
    wide = obj[4] == 2
    shoff = struct.unpack_from("<Q" if wide else "<I", obj, 40 if wide else 32)[0]
    shentsize, shnum = struct.unpack_from("<HH", obj, 58 if wide else 46)

    def section(i: int) -> tuple[int, int, int, int]:  # type, offset, size, link
        at = shoff + i * shentsize
        if wide:
            sh_type, = struct.unpack_from("<I", obj, at + 4)
            offset, size = struct.unpack_from("<QQ", obj, at + 24)
            link, = struct.unpack_from("<I", obj, at + 40)
        else:
            sh_type, = struct.unpack_from("<I", obj, at + 4)
            offset, size, link = struct.unpack_from("<III", obj, at + 16)
        return sh_type, offset, size, link

    names: set[str] = set()
    for i in range(shnum):
        sh_type, offset, size, link = section(i)
        if sh_type != 2:  # SHT_SYMTAB
            continue
        strtab = section(link)[1]
        entry = 24 if wide else 16
        for at in range(offset + entry, offset + size, entry):  # entry 0 is the null symbol
            name_at, = struct.unpack_from("<I", obj, at)
            shndx, = struct.unpack_from("<H", obj, at + (6 if wide else 14))
            if shndx == 0 and name_at:
                names.add(obj[strtab + name_at: obj.index(b"\0", strtab + name_at)].decode())
    return names
