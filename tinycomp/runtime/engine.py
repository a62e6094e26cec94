"""One MCJIT execution engine per compiled model.

MCJIT never frees code in a long-lived engine, so each compiled model owns its own engine and the
machine code dies with it. Function addresses are valid only while the `JitEngine` is alive.
The engine always runs object code, freshly emitted or read from the on-disk cache: one path.
A large module is emitted as several object files at once, one per core (`emit_objects`).
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import struct
import threading
from collections.abc import Sequence

import llvmlite.binding as llvm
from llvmlite.binding import ffi

from ..codegen.split import split_module
from ..codegen.target import host_backend_options, host_target_machine, optimize, parse_module
from .threads import available_cores

_log = logging.getLogger("tinycomp.compile")

# llvmlite takes a global lock per binding call anyway; this keeps our multi-step sequences
# (parse -> optimize -> emit) from interleaving between threads compiling different models.
LLVM_LOCK = _LLVM_LOCK = threading.RLock()  # public: exports (tinycomp.export) take it too


def _optimized_module(llvm_ir: str, speed_level: int,
                      context: llvm.ContextRef | None = None) -> tuple[llvm.ModuleRef, llvm.TargetMachine]:
    tm = host_target_machine()
    mod = parse_module(llvm_ir, tm, context)
    optimize(mod, tm, speed_level)
    return mod, tm


def emit_object(llvm_ir: str, speed_level: int = 0) -> bytes:
    """Optimize textual IR and emit host object code."""
    with _LLVM_LOCK:
        mod, tm = _optimized_module(llvm_ir, speed_level)
        with host_backend_options():
            return tm.emit_object(mod)


def codegen_jobs() -> int:
    """How many object files a large module is emitted as at once: TINYCOMP_CODEGEN_JOBS, else the
    cores this process may run on."""
    value = os.environ.get("TINYCOMP_CODEGEN_JOBS", "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"TINYCOMP_CODEGEN_JOBS must be a whole number >= 1; it is {value!r}")
        return int(value)
    return available_cores()


def emit_objects(llvm_ir: str, speed_level: int = 0, jobs: int | None = None) -> list[bytes]:
    """Host object code for llvm_ir: one object per part of `split_module`, the parts emitted on
    `jobs` threads at once (default `codegen_jobs()`); the module whole where it stays one part.
    The reference MLP's code generation takes ~26 ms in two parts against ~43 ms whole on this
    host's two cores."""
    jobs = codegen_jobs() if jobs is None else jobs
    parts = split_module(llvm_ir, jobs if _EMIT_UNLOCKED is not None else 1)  # no way past llvmlite's lock: whole
    if len(parts) > 1:
        with _LLVM_LOCK:
            # One context per part: LLVM compiles modules of separate contexts on separate threads.
            contexts = [llvm.create_context() for _ in parts]
            prepared = _prepare_parts(parts, speed_level, contexts)
            try:
                if prepared:
                    with host_backend_options():
                        return _emit_at_once(prepared)
            finally:
                for mod, _ in prepared:  # before their contexts go
                    mod.close()
                for ctx in contexts:
                    ctx.close()
    return [emit_object(llvm_ir, speed_level)]


def _prepare_parts(parts: list[str], speed_level: int,
                   contexts: list[llvm.ContextRef]) -> list[tuple[llvm.ModuleRef, llvm.TargetMachine]]:
    """Each part parsed and optimized in its context; none when LLVM refuses one (a bug of
    split_module, said through logging: the whole module still compiles)."""
    prepared: list[tuple[llvm.ModuleRef, llvm.TargetMachine]] = []
    try:
        for text, ctx in zip(parts, contexts, strict=True):
            prepared.append(_optimized_module(text, speed_level, ctx))
    except RuntimeError as exc:
        _log.warning("could not cut the module into parts for code generation (%s); emitting it whole",
                     str(exc).strip().splitlines()[-1])
        for mod, _ in prepared:
            mod.close()
        return []
    return prepared


def _emit_at_once(prepared: list[tuple[llvm.ModuleRef, llvm.TargetMachine]]) -> list[bytes]:
    """Each module's object code, the first on this thread and the others on one thread each."""
    out: list[bytes | BaseException | None] = [None] * len(prepared)

    def emit(i: int) -> None:
        try:
            out[i] = _emit_without_lock(*prepared[i])
        except BaseException as exc:  # handed to the caller's thread below
            out[i] = exc

    workers = [threading.Thread(target=emit, args=(i,), name=f"tinycomp-codegen-{i}") for i in range(1, len(prepared))]
    for w in workers:
        w.start()
    emit(0)
    _join_all(workers)
    for result in out:
        if isinstance(result, BaseException):
            raise result
    return [r for r in out if isinstance(r, bytes)]


def _join_all(workers: list[threading.Thread]) -> None:
    """Wait for every worker even through Ctrl-C (raised after): the caller frees the modules they
    are compiling as soon as this returns."""
    interrupted: KeyboardInterrupt | None = None
    for w in workers:
        while w.is_alive():
            try:
                w.join()
            except KeyboardInterrupt as exc:
                interrupted = exc
    if interrupted is not None:
        raise interrupted


# llvmlite wraps every call into LLVM in one process-wide lock; its object emission (what
# `TargetMachine.emit_object` calls) is taken here without it, so that modules of separate contexts
# compile on separate cores. The caller holds _LLVM_LOCK, so no other tinycomp thread touches LLVM
# meanwhile, and the modules, contexts and target machines belong to that call alone.
_EMIT_UNLOCKED = getattr(ffi.lib.LLVMPY_TargetMachineEmitToMemory, "_cfn", None)


def _emit_without_lock(mod: llvm.ModuleRef, tm: llvm.TargetMachine) -> bytes:
    assert _EMIT_UNLOCKED is not None  # without it nothing is split (emit_objects)
    with ffi.OutputString() as err:
        buffer = _EMIT_UNLOCKED(tm, mod, 1, err)
        if not buffer:
            raise RuntimeError(f"LLVM could not emit object code: {err}")
    try:
        return ctypes.string_at(ffi.lib.LLVMPY_GetBufferStart(buffer), ffi.lib.LLVMPY_GetBufferSize(buffer))
    finally:
        ffi.lib.LLVMPY_DisposeMemoryBuffer(buffer)


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
    """Loads object code into its own execution engine and hands out function addresses: code
    emitted from `llvm_ir` (`emit_objects`) or `objects` read from the disk cache, which are checked
    first. The objects of one module call each other by name; MCJIT links them on loading."""

    def __init__(self, llvm_ir: str | None = None, *, speed_level: int = 0, objects: Sequence[bytes] | None = None):
        if objects is None:
            if llvm_ir is None:
                raise ValueError("JitEngine needs LLVM IR text or object code")
            objects = emit_objects(llvm_ir, speed_level)
        else:
            if not objects:
                raise ValueError("JitEngine needs at least one object file")
            for blob in objects:
                check_object_code(blob)
        self.objects = list(objects)
        with _LLVM_LOCK:
            tm = host_target_machine()
            shell = llvm.parse_assembly("")
            shell.triple = tm.triple
            shell.data_layout = str(tm.target_data)
            self._engine = llvm.create_mcjit_compiler(shell, tm)  # the engine owns tm from here
            for blob in self.objects:
                self._engine.add_object_file(llvm.ObjectFileRef.from_data(blob))
            self._engine.finalize_object()

    def address(self, name: str) -> int:
        with _LLVM_LOCK:
            addr = self._engine.get_function_address(name)
        if not addr:
            raise LookupError(f"compiled module has no function named {name!r}")
        return addr
