"""Aligned float32 buffers, per-thread scratch reuse, and allocation checks made before allocating."""

from __future__ import annotations

import ctypes
import threading

import numpy as np

from ..aligned import aligned_empty

# Below this many bytes an allocation is not worth a look at /proc/meminfo (the look costs ~20 us).
CHECK_ABOVE = 256 << 20

_F32 = np.dtype(np.float32)


def _interface_pointer(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def _struct_data_offset() -> int | None:
    """Where NumPy's array struct keeps its data pointer (after the object header: byte 16 on
    64-bit CPython), confirmed on a few arrays; None when this build lays it out differently."""
    probes = [np.empty(3, np.float32), np.arange(12.0).reshape(3, 4)[1:, ::2], np.zeros((2, 5), np.uint8)[1]]
    offset = 2 * ctypes.sizeof(ctypes.c_void_p)
    for a in probes:
        if ctypes.c_void_p.from_address(id(a) + offset).value != _interface_pointer(a):
            return None
    return offset


_DATA_OFFSET = _struct_data_offset()


def data_pointer(a: np.ndarray) -> int:
    """Address of a's first element.

    The per-call path needs two of these; `a.ctypes.data` and `__array_interface__` cost ~1 us each,
    reading the field of the array struct ~0.2 us. The field's offset is checked at import.
    """
    if _DATA_OFFSET is None or type(a) is not np.ndarray:
        return _interface_pointer(a)
    return ctypes.c_void_p.from_address(id(a) + _DATA_OFFSET).value or 0


class _InterfacePointer:
    """`.value`: an array's data pointer through `__array_interface__` (where the struct is not read)."""

    __slots__ = ("array",)

    def __init__(self, a: np.ndarray):
        self.array = a

    @property
    def value(self) -> int:
        return _interface_pointer(self.array)


def pointer_view(a: np.ndarray) -> ctypes.c_void_p | _InterfacePointer:
    """Something whose `.value` is a's data pointer as it is now (None or 0 for none): a ctypes view
    of the array struct's field, read again in ~50 ns, so a check can see `a.resize()` move the
    memory of an array that stays the same object, shape, dtype and strides. The caller keeps `a`
    alive while it reads the view."""
    if _DATA_OFFSET is None or type(a) is not np.ndarray:
        return _InterfacePointer(a)
    return ctypes.c_void_p.from_address(id(a) + _DATA_OFFSET)


def is_native_float32(a: np.ndarray) -> bool:
    """Can generated code read `a` as packed float32 values? (the dtype test also rules out byte-swapped)"""
    return a.dtype == _F32 and a.flags.c_contiguous and a.flags.aligned


def as_native_float32(a: np.ndarray) -> np.ndarray:
    """`a` itself if native code can read it (float32, C-contiguous, float-aligned), else an aligned copy.

    `np.ascontiguousarray` keeps an unaligned view (a float32 view at an odd byte offset) as it is;
    the generated code assumes float alignment, so those are copied too.
    """
    if is_native_float32(a):
        return a
    return np.array(a, dtype=np.float32, order="C")  # a fresh array: aligned, native byte order


def available_bytes() -> int | None:
    """Memory the process could still get (MemAvailable + SwapFree), or None if unknown (no file, or
    no MemAvailable line: kernels before 3.14 and some sandboxes lack it, and 0 would refuse
    every large batch)."""
    try:
        with open("/proc/meminfo", "rb") as f:
            fields = dict(line.split(b":", 1) for line in f.read().splitlines() if b":" in line)
        free = int(fields[b"MemAvailable"].split()[0]) * 1024
        return free + (int(fields[b"SwapFree"].split()[0]) * 1024 if b"SwapFree" in fields else 0)
    except (OSError, ValueError, KeyError, IndexError):
        return None


def format_bytes(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def check_allocation(nbytes: int, what: str) -> None:
    """Raise a clear MemoryError before allocating `nbytes` the machine does not have.

    With memory overcommit an oversized `np.empty` may succeed and the process is killed later when
    the pages are touched; checking first keeps a too-large batch a Python exception.
    """
    if nbytes < CHECK_ABOVE:
        return
    avail = available_bytes()
    if avail is not None and nbytes > avail:
        raise MemoryError(
            f"{what} needs {format_bytes(nbytes)} ({nbytes:,} bytes), but only {format_bytes(avail)} "
            f"of memory is available; split the batch into smaller ones")


class _ScratchSlot(threading.local):
    slot: tuple[np.ndarray, int] | None = None  # a class default: reading it is a plain attribute read


SHRINK_ABOVE_FLOATS = 16 << 20  # 64 MB: a thread's scratch above it is given back to a call needing 1/8 of it


class ScratchPool:
    """One scratch buffer per thread, so concurrent callers never share scratch. It grows with the
    batches; past SHRINK_ABOVE_FLOATS it shrinks again for a call that needs less than an eighth of
    it, so that one huge batch does not hold hundreds of MB for the model's life (a huge call after
    a shrink allocates again: its pages cost a few % of its own work)."""

    def __init__(self) -> None:
        self._local = _ScratchSlot()

    def get(self, floats: int) -> np.ndarray:
        return self._slot(floats)[0]

    def lease(self, floats: int) -> tuple[np.ndarray, int]:
        """(this thread's scratch of at least `floats` floats, its address). The caller holds the
        pair until its native call returns: code that runs in between (a gc callback, a signal
        handler, a finalizer) may call the model again on this thread and have the pool replace
        the buffer, which the pair then keeps alive (the address alone pointed into freed memory)."""
        slot = self._local.slot  # the per-call case in one frame: batch-1 calls count every 0.1 us
        if slot is not None and floats <= slot[0].size <= SHRINK_ABOVE_FLOATS:
            return slot
        return self._slot(floats)

    def trim(self) -> None:
        """Give back this thread's scratch if it is above SHRINK_ABOVE_FLOATS: for the worker threads
        of split calls, which may not run another call of this model to shrink it."""
        slot = self._local.slot
        if slot is not None and slot[0].size > SHRINK_ABOVE_FLOATS:
            self._local.slot = None

    def _slot(self, floats: int) -> tuple[np.ndarray, int]:
        slot = self._local.slot
        if slot is not None and slot[0].size > SHRINK_ABOVE_FLOATS and floats * 8 < slot[0].size:
            self._local.slot = slot = None  # a call far smaller than the largest: give the memory back
        if slot is None or slot[0].size < floats:
            # grow geometrically so a slowly rising batch size does not reallocate every call
            size = max(floats, int(slot[0].size * 1.5) if slot is not None else 0, 1)
            self._local.slot = None  # let the old buffer go before allocating the new one
            buf = aligned_empty((size,))
            slot = self._local.slot = (buf, data_pointer(buf))
        return slot
