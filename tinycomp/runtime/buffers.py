"""Aligned float32 buffers and per-thread scratch reuse."""

from __future__ import annotations

import threading

import numpy as np

LINE = 64  # bytes: a cache line and one zmm register


def aligned_empty(shape: tuple[int, ...], dtype: type = np.float32) -> np.ndarray:
    """An uninitialized C-contiguous array whose data starts on a 64-byte boundary."""
    itemsize = np.dtype(dtype).itemsize
    n = int(np.prod(shape, dtype=np.int64))
    raw = np.empty(n * itemsize + LINE, dtype=np.uint8)
    start = (-raw.ctypes.data) % LINE
    return raw[start : start + n * itemsize].view(dtype).reshape(shape)


class ScratchPool:
    """One growing scratch buffer per thread, so concurrent callers never share scratch."""

    def __init__(self) -> None:
        self._local = threading.local()

    def get(self, floats: int) -> np.ndarray:
        buf = getattr(self._local, "buf", None)
        if buf is None or buf.size < floats:
            # grow geometrically so a slowly rising batch size does not reallocate every call
            size = max(floats, int(buf.size * 1.5) if buf is not None else 0, 1)
            buf = self._local.buf = aligned_empty((size,))
        return buf
