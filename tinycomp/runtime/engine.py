"""One MCJIT execution engine per compiled model.

MCJIT never frees code in a long-lived engine, so each compiled model owns its own engine and the
machine code dies with it. Function addresses are valid only while the `JitEngine` is alive.
The engine always runs object code, freshly emitted or read from the on-disk cache: one path.
A large module is emitted as several object files at once, one per core (`emit_objects`).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import platform
import struct
import sys
import threading
import time
from collections.abc import Iterator, Sequence

import llvmlite.binding as llvm
from llvmlite import ir
from llvmlite.binding import ffi

from ..codegen.ir_text import module_text
from ..codegen.split import MIN_PART_LINES, PRINT_SHARE, EarlyParts, Printer, split_ir_module, split_module
from ..codegen.target import (
    closed_on_error,
    emit_target_machine,
    host_backend_options,
    host_target_machine,
    optimize,
    parse_module,
)
from .threads import available_cores

_log = logging.getLogger("tinycomp.compile")

# llvmlite takes a global lock per binding call anyway; this keeps our multi-step sequences
# (parse -> optimize -> emit) from interleaving between threads compiling different models.
LLVM_LOCK = _LLVM_LOCK = threading.RLock()  # public: exports (tinycomp.export) take it too


def hold_llvm_for_fork() -> None:
    """A fork waits for the compile in progress and for any call into llvmlite (a dropped engine
    disposes of itself under llvmlite's own lock, ours not held): a child forked while another
    thread held either lock had it held for good (no such thread there) and LLVM's state half
    changed, and every compile in it hung. The forking thread holds both across the fork, ours
    first as every compile takes them, and lets go on both sides (`release_llvm_after_fork`);
    compiler.py registers the fork hooks, after a wait for traces in progress."""
    _LLVM_LOCK.acquire()
    try:
        _wait_for_parts(time.monotonic() + PARTS_WAIT_SECONDS)
    finally:  # whatever happens, the fork goes on: both locks held, as release_llvm_after_fork expects
        _FFI_LOCK.acquire()


def _wait_for_parts(deadline: float) -> None:
    """A signal handler forking on the compiling thread itself re-enters the lock at once while that
    compile's part threads still emit code (without llvmlite's lock): the child would have lost
    them. Wait for them first (they take llvmlite's lock, so before it), until `deadline`. A part
    whose start() the handler interrupted is not running yet, and join() refuses it ("cannot join
    thread before it is started", which left the fork without llvmlite's lock and a child that
    hung): it is waited for until it runs."""
    for part in [t for t in threading.enumerate() if t.name.startswith(PART_THREAD)]:
        while True:
            try:
                part.join(max(0.0, deadline - time.monotonic()))
                break
            except RuntimeError:
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.0005)


def release_llvm_after_fork() -> None:
    _FFI_LOCK.release()
    _LLVM_LOCK.release()


PART_THREAD = "tinycomp-codegen-"  # the name of `PartPipeline`'s threads, then their slot
PARTS_WAIT_SECONDS = 30.0
# llvmlite's RLock around every call into LLVM (0.50's layout; a fresh lock, held by no one, elsewhere)
_FFI_LOCK = getattr(getattr(ffi.lib, "_lock", None), "_lock", None) or threading.RLock()


def _optimized_module(llvm_ir: str, speed_level: int, context: llvm.ContextRef | None = None,
                      part: int = 0) -> tuple[llvm.ModuleRef, llvm.TargetMachine]:
    tm = emit_target_machine(part)
    mod = parse_module(llvm_ir, tm, context)
    with closed_on_error(mod):
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


def emit_objects(source: str | ir.Module, speed_level: int = 0, jobs: int | None = None) -> list[bytes]:
    """Host object code for a module, its text or llvmlite's module before printing: one object per
    part of `split_module` / `split_ir_module`, the parts compiled on `jobs` threads at once (default
    `codegen_jobs()`); the module whole where it stays one part (what this saves, measured with
    `benchmarks/compile_timeline.py`: benchmarks/RESULTS.md, seventeenth session)."""
    with PartPipeline(speed_level, jobs) as pipeline:
        return pipeline.objects(source)


class _Refused(Exception):
    """LLVM did not take a part's text (a bug of the split)."""


GIL_SWITCH_SECONDS = 0.0002  # the interpreter's thread switch interval while parts compile (5 ms by default)
EARLY_PART_LINES = MIN_PART_LINES  # the least a part cut while the module is built holds


class PartPipeline:
    """Object code for a module in parts, each parsed, optimized and emitted by LLVM on a thread of
    its own as soon as it is printed (`emit_objects`).

    Given to `codegen.module.lowered_module` as the listener of finished functions (`finished`), it
    also cuts parts off the module while it is still being built, whenever a thread is idle, so that
    the other cores compile kernels while this thread builds the rest; `objects` then splits what is
    left, lightening the parts for threads still busy (`codegen.split.EarlyParts`).

    Up to jobs - 1 threads take the parts printed, largest first; once every part is printed this
    thread takes them too. Building and printing are Python and hold the GIL, LLVM lets go of it; a
    part's thread needs the GIL back between LLVM's calls (a dozen a part), so while parts compile
    the interpreter switches threads every GIL_SWITCH_SECONDS, not every 5 ms. LLVM_LOCK is held
    from the first part printed to the last compiled: the parts emit without llvmlite's lock."""

    def __init__(self, speed_level: int = 0, jobs: int | None = None):
        jobs = codegen_jobs() if jobs is None else jobs
        self.jobs = jobs if _EMIT_UNLOCKED is not None else 1  # no way past llvmlite's lock: whole
        self.speed_level = speed_level
        self._early: EarlyParts | None = None
        # by part: its text (or, printed by the thread that takes it, its printer) until a thread takes it
        self._texts: list[str | Printer | None] = []
        self._lines: list[int] = []
        self._out: list[bytes | BaseException | None] = []
        self._contexts: list[llvm.ContextRef] = []  # one per part: LLVM compiles separate contexts at once
        self._queue: list[int] = []  # parts printed that no thread has taken
        self._started: dict[int, float] = {}  # part: when a thread took it
        self._idle = list(range(self.jobs - 1, 0, -1))  # the slots (target machines) of threads not running
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._failed = False  # a part raised (not refused): no thread takes another
        # From the first part queued: LLVM_LOCK, LLVM's options, the switch interval, then each part's
        # context, all let go of in reverse order whatever happens (a second Ctrl-C included)
        self._held = contextlib.ExitStack()

    def __enter__(self) -> PartPipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            _join_all(self._threads)  # before their contexts go
        finally:
            self._held.close()

    def finished(self, module: ir.Module, names: list[str]) -> None:
        """Hear that `names` of `module` are finished (`cgutils.finished_functions_to`); cut them off
        as a part if a thread is idle and they are enough for one."""
        if self.jobs < 2:
            return
        if self._early is None:
            self._early = EarlyParts(module)
        self._early.finished(names)
        with self._lock:
            if not self._idle or self._queue:
                return  # cut later, and more, when a thread can take it at once
        cut = self._early.cut(EARLY_PART_LINES)
        if cut is not None:
            self._queue_part(cut[0](), cut[1])

    def objects(self, source: str | ir.Module) -> list[bytes]:
        """The object code of `source`, once built: whatever parts cut before it was finished did not
        define, in parts; the module whole if LLVM refuses a part (said through logging). Every thread
        is done when this returns or raises: the caller frees the module they print from."""
        in_parts = False
        try:
            rest = self._rest(source)
            if rest is not None and len(rest) == 1 and not self._texts:  # one part: the module whole, here
                return [emit_object(rest[0](), self.speed_level)]
            if rest is not None:
                with self._lock:
                    busy = not self._idle  # then a thread still compiling an early part prints its next itself
                for printer in rest[1:]:
                    self._queue_part(*((printer, 0) if busy else _printed(printer)))
                self._queue_part(*_printed(rest[0]))  # the first, with the entry, last (`split._balance`)
                in_parts = True
                self._work(0)
        finally:
            _join_all(self._threads)
        objects = self._results() if in_parts else None
        if objects is not None:
            return objects
        return [emit_object(source if isinstance(source, str) else module_text(source), self.speed_level)]

    def _rest(self, source: str | ir.Module) -> list[Printer] | None:
        if isinstance(source, str):
            return [functools.partial(str, text) for text in split_module(source, self.jobs)]
        if self._early is None:
            return split_ir_module(source, self.jobs)
        return self._early.rest(self.jobs, PRINT_SHARE, self._busy_lines())  # its functions read as finished

    def _busy_lines(self) -> list[float]:
        """What each thread still has to compile of the parts cut before, in lines of IR: of a part
        taken, what LLVM has not done at the rate it compiled the parts before (`_LLVM_RATE`); in a
        process's first compile, PRINT_SHARE of this thread's rate of printing its functions."""
        assert self._early is not None
        lines, seconds = self._early.printing
        rate = _LLVM_RATE[0] or (PRINT_SHARE * lines / seconds if seconds > 0 else 0.0)  # lines a second
        now = time.perf_counter()
        with self._lock:
            left = [max(0.0, self._lines[i] - rate * (now - t)) for i, t in self._started.items()
                    if self._out[i] is None]
            left += [self._lines[i] for i in self._queue]
        return sorted(left, reverse=True)

    def _queue_part(self, text: str | Printer, lines: int) -> None:
        """Queue a part, its text or its printer (printed by the thread that takes it: the module is
        built by then) and lines (by which threads take the largest first); start a thread for it if
        one is idle."""
        if not self._contexts:
            self._held.enter_context(_LLVM_LOCK)
            self._held.enter_context(host_backend_options())
            self._held.enter_context(_switching_often())
        self._contexts.append(llvm.create_context())
        self._held.callback(self._contexts[-1].close)
        with self._lock:
            part = len(self._texts)
            self._texts.append(text)
            self._lines.append(lines)
            self._out.append(None)
            self._queue.append(part)
            slot = self._idle.pop() if self._idle else None
        if slot is None:
            return
        worker = threading.Thread(target=self._work, args=(slot,), name=f"{PART_THREAD}{slot}")
        self._threads.append(worker)  # first: an interrupt inside start() may leave it running
        try:
            worker.start()
        except RuntimeError:  # no thread to be had (a memory limit): this thread compiles the part
            self._threads.remove(worker)
            with self._lock:
                self._idle.append(slot)

    def _work(self, slot: int) -> None:
        """Compile the parts queued, largest first, until none is left (slot 0: this thread)."""
        while True:
            with self._lock:
                if not self._queue or self._failed:
                    if slot:
                        self._idle.append(slot)
                    return
                part = max(self._queue, key=self._lines.__getitem__)
                self._queue.remove(part)
                self._started[part] = time.perf_counter()
                text, self._texts[part] = self._texts[part], None
            assert text is not None
            try:
                text = text if isinstance(text, str) else text()
                self._out[part] = _compile_part(text, self.speed_level, self._contexts[part], slot)
                _measured_rate(text.count("\n"), time.perf_counter() - self._started[part])
            except BaseException as exc:  # handed to the caller's thread (`_results`)
                self._out[part] = exc
                self._failed |= not isinstance(exc, _Refused)  # an interrupt: no more parts

    def _results(self) -> list[bytes] | None:
        out = self._out
        for result in out:  # an interrupt or another error first: it is not cured by emitting whole
            if isinstance(result, BaseException) and not isinstance(result, _Refused):
                raise result
        if any(r is None for r in out):  # a part's thread never finished here: this process was forked from it
            _log.warning("a part of the module's code generation did not finish in this process (forked while it "
                         "compiled on another thread); emitting the module whole")
            return None
        refused = [r for r in out if isinstance(r, _Refused)]
        if refused:
            _log.warning("could not cut the module into parts for code generation (%s); emitting it whole", refused[0])
            return None
        return [r for r in out if isinstance(r, bytes)]


# Lines of IR a second LLVM parsed, optimized and emitted in this process's last parts (an average
# over them, the latest weighing half): how `PartPipeline` tells how long a busy thread will be.
_LLVM_RATE: list[float] = [0.0]


def _measured_rate(lines: int, seconds: float) -> None:
    if lines >= MIN_PART_LINES and seconds > 0:
        rate = lines / seconds
        _LLVM_RATE[0] = rate if not _LLVM_RATE[0] else (_LLVM_RATE[0] + rate) / 2


def _printed(printer: Printer) -> tuple[str, int]:
    """A part's text and lines."""
    text = printer()
    return text, text.count("\n")


@contextlib.contextmanager
def _switching_often() -> Iterator[None]:
    before = sys.getswitchinterval()
    sys.setswitchinterval(GIL_SWITCH_SECONDS)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def _compile_part(text: str, speed_level: int, context: llvm.ContextRef, part: int) -> bytes:
    try:
        mod, tm = _optimized_module(text, speed_level, context, part)
    except RuntimeError as exc:
        reason = _llvm_reason(str(exc))
    else:
        try:
            return _emit_without_lock(mod, tm)
        finally:
            mod.close()
    raise _Refused(reason)  # outside the handler: LLVM's error and its frames are gone by now


def _llvm_reason(message: str) -> str:
    """The line of an LLVM error message that says what is wrong: the parser's "error:" line (not the
    caret under the text), else the first (the verifier's reason, before the instruction)."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    return next((line for line in lines if "error:" in line), lines[0] if lines else "no reason given")


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
    emitted from `llvm_ir`, a module's text or llvmlite's module (`emit_objects`), or `objects` read
    from the disk cache, which are checked first. The objects of one module call each other by name;
    MCJIT links them on loading."""

    def __init__(self, llvm_ir: str | ir.Module | None = None, *, speed_level: int = 0,
                 objects: Sequence[bytes] | None = None):
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
