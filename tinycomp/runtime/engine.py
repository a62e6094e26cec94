"""One MCJIT execution engine per compiled model.

MCJIT never frees code in a long-lived engine, so each compiled model owns its own engine and the
machine code dies with it. Function addresses are valid only while the `JitEngine` is alive.
The engine always runs object code, freshly emitted or read from the on-disk cache: one path.
"""

from __future__ import annotations

import platform
import struct
import threading

import llvmlite.binding as llvm

from ..codegen.target import host_backend_options, host_target_machine, optimize, parse_module

# llvmlite takes a global lock per binding call anyway; this keeps our multi-step sequences
# (parse -> optimize -> emit) from interleaving between threads compiling different models.
LLVM_LOCK = _LLVM_LOCK = threading.RLock()  # public: exports (tinycomp.export) take it too


def _optimized_module(llvm_ir: str, speed_level: int) -> tuple[llvm.ModuleRef, llvm.TargetMachine]:
    tm = host_target_machine()
    mod = parse_module(llvm_ir, tm)
    optimize(mod, tm, speed_level)
    return mod, tm


def emit_object(llvm_ir: str, speed_level: int = 0) -> bytes:
    """Optimize textual IR and emit host object code."""
    with _LLVM_LOCK:
        mod, tm = _optimized_module(llvm_ir, speed_level)
        with host_backend_options():
            return tm.emit_object(mod)


def optimized_ir(llvm_ir: str, speed_level: int = 0) -> str:
    with _LLVM_LOCK:
        return str(_optimized_module(llvm_ir, speed_level)[0])


def assembly(llvm_ir: str, speed_level: int = 0) -> str:
    with _LLVM_LOCK:
        mod, tm = _optimized_module(llvm_ir, speed_level)
        with host_backend_options():
            return tm.emit_assembly(mod)


_ELF_MACHINES = {"x86_64": 62, "amd64": 62, "aarch64": 183, "arm64": 183}


def check_object_code(blob: bytes) -> None:
    """Refuse object code that is not a well-formed relocatable ELF64 for this machine.

    LLVM's object loader trusts its input and can crash on junk, so bytes from the disk cache are
    looked at first: header, machine, and that every section lies inside the blob. (Object
    formats other than ELF are passed through unchecked.)
    """
    if not blob.startswith(b"\x7fELF"):
        if platform.system() == "Linux":
            raise ValueError("object code is not ELF")
        return
    if len(blob) < 64 or blob[4] != 2 or blob[5] != 1:
        raise ValueError("object code is not a little-endian ELF64 file")
    e_type, e_machine = struct.unpack_from("<HH", blob, 16)
    e_shoff, = struct.unpack_from("<Q", blob, 40)
    e_shentsize, e_shnum = struct.unpack_from("<HH", blob, 58)
    want = _ELF_MACHINES.get(platform.machine().lower())
    if e_type != 1 or (want is not None and e_machine != want):
        raise ValueError(f"object code is ELF type {e_type} for machine {e_machine}, not relocatable for {want}")
    if e_shentsize != 64 or e_shnum == 0 or e_shoff + e_shnum * 64 > len(blob):
        raise ValueError("object code has a section table outside the file")
    for i in range(e_shnum):
        sh_type, = struct.unpack_from("<I", blob, e_shoff + i * 64 + 4)
        sh_offset, sh_size = struct.unpack_from("<QQ", blob, e_shoff + i * 64 + 24)
        if sh_type != 8 and sh_offset + sh_size > len(blob):  # 8: SHT_NOBITS (.bss) has no bytes in the file
            raise ValueError(f"object code section {i} lies outside the file")


class JitEngine:
    """Loads object code into its own execution engine and hands out function addresses."""

    def __init__(self, llvm_ir: str | None = None, *, speed_level: int = 0, object_code: bytes | None = None):
        if object_code is None:
            if llvm_ir is None:
                raise ValueError("JitEngine needs LLVM IR text or object code")
            object_code = emit_object(llvm_ir, speed_level)
        else:
            check_object_code(object_code)
        self.object_code = object_code
        with _LLVM_LOCK:
            tm = host_target_machine()
            shell = llvm.parse_assembly("")
            shell.triple = tm.triple
            shell.data_layout = str(tm.target_data)
            self._engine = llvm.create_mcjit_compiler(shell, tm)  # the engine owns tm from here
            self._engine.add_object_file(llvm.ObjectFileRef.from_data(object_code))
            self._engine.finalize_object()

    def address(self, name: str) -> int:
        with _LLVM_LOCK:
            addr = self._engine.get_function_address(name)
        if not addr:
            raise LookupError(f"compiled module has no function named {name!r}")
        return addr
