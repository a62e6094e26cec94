"""One MCJIT execution engine per compiled model.

MCJIT never frees code in a long-lived engine, so each compiled model owns its own engine and the
machine code dies with it. Function addresses are valid only while the `JitEngine` is alive.
"""

from __future__ import annotations

import threading

import llvmlite.binding as llvm

from ..codegen.target import host_target_machine, optimize, parse_module

# llvmlite takes a global lock per binding call anyway; this keeps our multi-step sequences
# (parse -> optimize -> emit) from interleaving between threads compiling different models.
_LLVM_LOCK = threading.RLock()


class JitEngine:
    """Compiles textual LLVM IR (or loads cached object code) into callable machine code."""

    def __init__(self, llvm_ir: str, *, speed_level: int = 0, object_code: bytes | None = None):
        with _LLVM_LOCK:
            tm = host_target_machine()
            self.module = parse_module(llvm_ir, tm)
            if object_code is None:
                optimize(self.module, tm, speed_level)
                self.optimized_ir = str(self.module)
                self.object_code = tm.emit_object(self.module)
            else:
                self.optimized_ir = None  # unknown for cache hits; recomputed lazily on request
                self.object_code = object_code
            self._speed_level = speed_level
            # An empty module runs the cached (or just-emitted) object file: one code path for both.
            shell = llvm.parse_assembly("")
            shell.triple = tm.triple
            shell.data_layout = str(tm.target_data)
            self._engine = llvm.create_mcjit_compiler(shell, host_target_machine())
            self._engine.add_object_file(llvm.ObjectFileRef.from_data(self.object_code))
            self._engine.finalize_object()

    def address(self, name: str) -> int:
        with _LLVM_LOCK:
            addr = self._engine.get_function_address(name)
        if not addr:
            raise LookupError(f"compiled module has no function named {name!r}")
        return addr

    def optimized_llvm(self, llvm_ir: str) -> str:
        if self.optimized_ir is None:
            with _LLVM_LOCK:
                tm = host_target_machine()
                mod = parse_module(llvm_ir, tm)
                optimize(mod, tm, self._speed_level)
                self.optimized_ir = str(mod)
        return self.optimized_ir

    def assembly(self) -> str:
        with _LLVM_LOCK:
            tm = host_target_machine()
            mod = parse_module(self.optimized_ir or str(self.module), tm)
            return tm.emit_assembly(mod)
