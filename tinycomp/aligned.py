"""Cache-line-aligned arrays, in a leaf module so Tensor storage and the runtime's buffers share one
allocator.

Generated kernels read weights in place at small batch sizes, a full 64-byte vector per load. From
an address that is not a multiple of 64 each such load touches two cache lines; NumPy's own
allocations are only 16-byte aligned. The reference MLP with its weights 16 bytes off a line, against
on one (`benchmarks/gemm_ab.py WEIGHT_OFFSET 0,16 --model mlp --rows 1,8,32,128,512`, quiet host):
+4 % at batch 1 and 8, +1 % at 32, within 0.5 % from 128.
"""

from __future__ import annotations

from typing import Any

import numpy as np

LINE = 64  # bytes: a cache line and one zmm register


def aligned_empty(shape: tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
    """An uninitialized C-contiguous array whose data starts on a 64-byte boundary."""
    itemsize = np.dtype(dtype).itemsize
    n = int(np.prod(shape, dtype=np.int64))
    raw = np.empty(n * itemsize + LINE, dtype=np.uint8)
    start = (-raw.ctypes.data) % LINE
    return raw[start : start + n * itemsize].view(dtype).reshape(shape)


def aligned_float32(values: np.ndarray) -> np.ndarray:
    """A fresh, line-aligned float32 copy of `values` (cast as `np.array(values, np.float32)` does)."""
    out = aligned_empty(values.shape)
    np.copyto(out, values, casting="unsafe")
    return out


def float32_copy(data: Any) -> np.ndarray:
    """A fresh, line-aligned float32 copy of numeric `data` (a number, nested lists, an array);
    TypeError for strings, objects, ragged lists and other non-numbers."""
    if isinstance(data, (str, bytes)):
        raise TypeError(f"Tensor data must be numeric (a number, list or array); got {type(data).__name__}")
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError) as exc:  # ragged nested lists
        raise TypeError(f"Tensor data must be a rectangular numeric array; got {type(data).__name__}: {exc}") from None
    if arr.dtype.kind not in "biuf":
        raise TypeError(
            f"Tensor data must be numeric (bool, int or float); got {type(data).__name__} "
            f"with dtype {arr.dtype}"
        )
    return aligned_float32(arr)
