"""One MCJIT execution engine per compiled model.

MCJIT never frees code in a long-lived engine, so each compiled model owns its own engine and the
machine code dies with it. Function addresses are valid only while the `JitEngine` is alive.
The engine always runs object code, freshly emitted or read from the on-disk cache: one path.
"""

from __future__ import annotations

import threading

import llvmlite.binding as llvm

from ..codegen.target import host_target_machine, optimize, parse_module

# llvmlite takes a global lock per binding call anyway; this keeps our multi-step sequences
# (parse -> optimize -> emit) from interleaving between threads compiling different models.
_LLVM_LOCK = threading.RLock()


def _optimized_module(llvm_ir: str, speed_level: int) -> tuple[llvm.ModuleRef, llvm.TargetMachine]:
    tm = host_target_machine()
    mod = parse_module(llvm_ir, tm)
    optimize(mod, tm, speed_level)
    return mod, tm


def emit_object(llvm_ir: str, speed_level: int = 0) -> bytes:
    """Optimize textual IR and emit host object code."""
    with _LLVM_LOCK:
        mod, tm = _optimized_module(llvm_ir, speed_level)
        return tm.emit_object(mod)


def optimized_ir(llvm_ir: str, speed_level: int = 0) -> str:
    with _LLVM_LOCK:
        return str(_optimized_module(llvm_ir, speed_level)[0])


def assembly(llvm_ir: str, speed_level: int = 0) -> str:
    with _LLVM_LOCK:
        mod, tm = _optimized_module(llvm_ir, speed_level)
        return tm.emit_assembly(mod)


class JitEngine:
    """Loads object code into its own execution engine and hands out function addresses."""

    def __init__(self, llvm_ir: str | None = None, *, speed_level: int = 0, object_code: bytes | None = None):
        if object_code is None:
            if llvm_ir is None:
                raise ValueError("JitEngine needs LLVM IR text or object code")
            object_code = emit_object(llvm_ir, speed_level)
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
