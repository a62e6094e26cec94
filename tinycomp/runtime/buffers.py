"""Aligned float32 buffers, per-thread scratch reuse, and allocation checks made before allocating."""

from __future__ import annotations

import threading

import numpy as np

LINE = 64  # bytes: a cache line and one zmm register
# Below this many bytes an allocation is not worth a look at /proc/meminfo (the look costs ~20 us).
CHECK_ABOVE = 256 << 20


def aligned_empty(shape: tuple[int, ...], dtype: type = np.float32) -> np.ndarray:
    """An uninitialized C-contiguous array whose data starts on a 64-byte boundary."""
    itemsize = np.dtype(dtype).itemsize
    n = int(np.prod(shape, dtype=np.int64))
    raw = np.empty(n * itemsize + LINE, dtype=np.uint8)
    start = (-raw.ctypes.data) % LINE
    return raw[start : start + n * itemsize].view(dtype).reshape(shape)


def as_native_float32(a: np.ndarray) -> np.ndarray:
    """`a` itself if native code can read it (float32, C-contiguous, float-aligned), else an aligned copy.

    `np.ascontiguousarray` keeps an unaligned view (a float32 view at an odd byte offset) as it is;
    the generated code assumes float alignment, so those are copied too.
    """
    if a.dtype == np.float32 and a.flags.c_contiguous and a.flags.aligned and a.dtype.isnative:
        return a
    return np.array(a, dtype=np.float32, order="C")  # a fresh array: aligned, native byte order


def available_bytes() -> int | None:
    """Memory the process could still get (MemAvailable + SwapFree), or None if unknown."""
    try:
        with open("/proc/meminfo", "rb") as f:
            fields = dict(line.split(b":", 1) for line in f.read().splitlines() if b":" in line)
        return sum(int(fields[k].split()[0]) * 1024 for k in (b"MemAvailable", b"SwapFree") if k in fields)
    except (OSError, ValueError, KeyError):
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


class ScratchPool:
    """One growing scratch buffer per thread, so concurrent callers never share scratch."""

    def __init__(self) -> None:
        self._local = threading.local()

    def get(self, floats: int) -> np.ndarray:
        buf = getattr(self._local, "buf", None)
        if buf is None or buf.size < floats:
            # grow geometrically so a slowly rising batch size does not reallocate every call
            size = max(floats, int(buf.size * 1.5) if buf is not None else 0, 1)
            self._local.buf = None  # let the old buffer go before allocating the new one
            buf = self._local.buf = aligned_empty((size,))
        return buf
