"""Cache-line-aligned arrays, in a leaf module so Tensor storage (from `ALIGN_MIN_BYTES`) and the
runtime's buffers share one allocator.

Generated kernels read weights in place at small batch sizes, a full 64-byte vector per load. From
an address that is not a multiple of 64 each such load touches two cache lines; NumPy's own
allocations are only 16-byte aligned. The reference MLP with its weights 16 bytes off a line, against
on one (`benchmarks/gemm_ab.py WEIGHT_OFFSET 0,16 --model mlp --rows 1,8,32,128,512`, quiet host):
+4 % at batch 1 and 8, +1 % at 32, within 0.5 % from 128. On the Intel Xeon of the later sessions
the same offset costs +37 % at batch 1 and +22 % at 8.

Tensor storage below `ALIGN_MIN_BYTES` is a plain NumPy copy: there the vector loads split over two
lines are a few per call, lost in the noise, while the alignment itself (address, oversized buffer,
offset view) costs four times the copy: 1.1 µs of every eager `Tensor(x)` at batch 1. Measured on
the Xeon (`benchmarks/gemm_ab.py WEIGHT_OFFSET 0,16,48 --model M --rows 1,8,32 --offset-below
4096`: only the weights and biases under 4 KB moved 16 or 48 bytes off a line): the reference MLP
(its three biases), `deep` (sixteen 512-byte biases), `odd` (a 37x10 weight) and `tiny` (all of
it) within the noise, ±5 % at most, as much as two runs of the same placement differ.
"""

from __future__ import annotations

import ctypes
import math
from typing import Any

import numpy as np

LINE = 64  # bytes: a cache line and one zmm register
ALIGN_MIN_BYTES = 4096  # float32 copies from this size start on a line; smaller ones need not
_FLOAT32 = np.dtype(np.float32)


def aligned_empty(shape: tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
    """An uninitialized C-contiguous array whose data starts on a 64-byte boundary.

    Every `Tensor(...)` of `ALIGN_MIN_BYTES` or more allocates through here, as do the runtime's
    buffers per call, so it is written for speed: math.prod, not np.prod (~30x slower on a tuple),
    and the address taken through ctypes' buffer view (a quarter of the cost of `.ctypes.data` or
    the array interface). NumPy's buffers are at least 16-byte aligned, so for float32 the offset is
    a whole number of elements and no byte-view is needed."""
    n = math.prod(shape)
    if dtype is np.float32:
        raw = np.empty(n + LINE // 4, np.float32)
        gap = (-_address(raw)) % LINE
        if gap % 4 == 0:  # always with NumPy's allocator; a custom one might do otherwise
            # a view at a byte offset, in the final shape in one step (a fifth cheaper than slice + reshape)
            return np.ndarray(shape, _FLOAT32, raw, gap)
    itemsize = np.dtype(dtype).itemsize
    raw = np.empty(n * itemsize + LINE, dtype=np.uint8)
    start = (-_address(raw)) % LINE
    return raw[start : start + n * itemsize].view(dtype).reshape(shape)


def _address(raw: np.ndarray) -> int:
    """The address of a fresh (writable, contiguous) array's first byte."""
    return ctypes.addressof(ctypes.c_char.from_buffer(raw))  # type: ignore[arg-type]  # ndarray exports a buffer


def aligned_float32(values: np.ndarray) -> np.ndarray:
    """A fresh C-contiguous float32 copy of `values` (cast as `np.array(values, np.float32)` does),
    starting on a line if it holds `ALIGN_MIN_BYTES` or more."""
    if values.size * 4 < ALIGN_MIN_BYTES:
        return values.astype(_FLOAT32, order="C", subok=False)  # always a copy, a plain ndarray
    out = aligned_empty(values.shape)
    if values.dtype is _FLOAT32:
        out[...] = values  # cheaper than copyto's keyword parsing, same copy
    else:
        np.copyto(out, values, casting="unsafe")
    return out


_NUMPY_FLOATS = ("torch.float16", "torch.float32", "torch.float64")


def float32_copy(data: Any) -> np.ndarray:
    """A fresh float32 copy of numeric `data` (a number, nested lists, an array), line-aligned as
    `aligned_float32` says; TypeError for strings, objects, ragged lists and other non-numbers."""
    if isinstance(data, (str, bytes)):
        raise TypeError(f"Tensor data must be numeric (a number, list or array); got {type(data).__name__}")
    if type(data).__module__.startswith("torch") and callable(getattr(data, "detach", None)):
        data = data.detach().cpu()  # one that requires grad refuses np.asarray; the values are what is read
        if data.is_floating_point() and str(data.dtype) not in _NUMPY_FLOATS:
            data = data.float()  # bfloat16, float8: NumPy has no such dtype; every value is a float32
    try:
        arr = np.asarray(data)
    except ValueError as exc:  # ragged nested lists
        raise TypeError(f"Tensor data must be a rectangular numeric array; got {type(data).__name__}: {exc}") from None
    except TypeError as exc:
        raise TypeError(f"Tensor data must be numbers NumPy can read; got {type(data).__name__}: {exc}") from None
    if arr.dtype.kind not in "biuf":
        raise TypeError(
            f"Tensor data must be numeric (bool, int or float); got {type(data).__name__} "
            f"with dtype {arr.dtype}"
        )
    return aligned_float32(arr)
