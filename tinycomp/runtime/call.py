"""The per-call path of a compiled model: input array in, output array out.

`as_input_array` checks what the caller passed; `CompiledCall` turns an input of any leading shape
into rows, sizes and allocates the output (refusing a batch the machine cannot hold before anything
is allocated), converts the input once, and runs the native entry on the calling thread or split in
row chunks across the worker pool. `CompiledCall.hot` is the same call in ~4 us of Python for the
common case. Arrays and pointers only: the model, its Tensors and its parameters stay with the
caller, which hands in the parameter pointer table (see `binding.LiveParams`).
"""

from __future__ import annotations

import ctypes
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from ..aligned import float32_copy
from ..ir.philox import DropoutStream
from .buffers import CHECK_ABOVE, ScratchPool, as_native_float32, check_allocation, data_pointer, is_native_float32
from .kernel import NativeKernel, with_rows
from .threads import ROW_MULTIPLE, one_part_rows, parallel_parts, samples_for_rows, shared_pool, split_rows

_F32 = np.dtype(np.float32)


def as_input_array(x: Any) -> np.ndarray:
    """The input (an ndarray or nested lists of numbers) as an ndarray of a number dtype, not yet
    converted or copied: the caller checks sizes first."""
    if type(x) is np.ndarray:
        arr = x
    elif isinstance(x, np.ndarray):  # np.matrix stays 2-D through reshape, a masked array keeps its mask: their data
        arr = np.asarray(x)
    else:
        try:
            arr = float32_copy(x)  # raises TypeError for strings, objects, ragged lists
        except TypeError as exc:
            raise TypeError(f"compiled model input must be a Tensor, a NumPy array or a (nested) list of numbers; "
                            f"{exc}") from None
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"compiled model input must hold numbers (bool, int or float, cast to float32 as Tensor "
                        f"does); got an array of dtype {arr.dtype}")
    if arr.ndim == 0:
        raise ValueError(f"compiled model input must be a batch (batch, features...), or one sample; "
                         f"got a 0-D value {arr!r}")
    return arr


def _hot_float32(arr: np.ndarray) -> np.ndarray | None:
    """`arr` as the native float32 the hot path hands to native code (numbers cast as Tensor casts
    them; the hot batch sizes allow the copy), or None for what the full path must handle."""
    if arr.dtype is not _F32:  # e.g. float64 from np.random
        if arr.dtype.kind not in "biuf":
            return None
        arr = np.ascontiguousarray(arr, _F32)
    flags = arr.flags
    return arr if flags.c_contiguous and flags.aligned else None


class Draws(Protocol):
    def draw(self) -> tuple[Sequence[DropoutStream], Any]:
        """(each dropout node's stream for this call, ...), advancing every layer's call count."""


class HotTables(Protocol):
    def hot_table(self) -> tuple[Any, ctypes.Array] | None:
        """(what keeps the weights alive, the last call's pointer table) if the model and its
        parameters are unchanged, else None. The caller holds the pair until the native call returns."""


class CompiledCall:
    """The native entry of one compilation with everything a call needs to run it safely."""

    def __init__(self, kernel: NativeKernel, features: tuple[int, ...], flops_per_row: int,
                 threads: int | None, scratch: ScratchPool):
        self.kernel, self.plan, self.features = kernel, kernel.plan, tuple(features)
        self.flops_per_row, self.threads, self.scratch = flops_per_row, threads, scratch
        self.out_row = tuple(kernel.plan.out_shape[1:])
        self.ndim = 1 + len(self.features)
        # memory a call needs per batch row: output, scratch, and a converted copy of the input
        # other inputs' copies
        self.more_floats_per_row = sum(kernel.more_row_bytes) // 4
        self.bytes_per_row = 4 * (math.prod(self.out_row) + self.plan.scratch_per_row + math.prod(self.features)
                                  + self.more_floats_per_row)
        # the hot path runs on the calling thread and checks no memory: batches `run` would too
        # GEMM rows per sample: a (S, E) sample is S rows of its kernels, which the thread policy counts
        self.rows_per_sample = math.prod(self.features[:-1])
        self.chunk_multiple = samples_for_rows(ROW_MULTIPLE, self.rows_per_sample)  # samples per chunk step
        self.hot_rows = one_part_rows(flops_per_row, threads, (CHECK_ABOVE - 1) // self.bytes_per_row,
                                      self.rows_per_sample)

    def hot(self, arr: Any, tables: HotTables, more: Sequence[Any] = (),
            draws: Draws | None = None) -> np.ndarray | None:
        """The common call: C-contiguous arrays of numbers (cast to float32) of the compiled shapes
        (`more`: the inputs after the first, as many as compiled), a batch small enough for one
        thread and no memory check, with the model's structure and parameter arrays as last time.
        A training-mode module draws its masks from `draws`, once the call is sure to run here.
        Anything else returns None and takes the full path, which handles (and names) every other
        case; both run the same native code on the same checks."""
        if type(arr) is not np.ndarray or arr.shape[1:] != self.features:
            return None
        rows = arr.shape[0]
        if not (0 < rows <= self.hot_rows and arr.ndim == self.ndim):
            return None
        arr = _hot_float32(arr)
        if arr is None:
            return None
        inputs = None
        if more:
            more = [_hot_float32(a) if type(a) is np.ndarray and a.shape == with_rows(shape, rows) else None
                    for a, shape in zip(more, self.kernel.more_inputs, strict=True)]  # the caller passes as many
            if any(a is None for a in more):
                return None
            inputs = self.kernel.inputs_table(more, 0)  # held until the call returns, with `more`
        hot = tables.hot_table()  # held until the call returns: it keeps the weights alive
        if hot is None:
            return None
        # every check passed: the layers' next masks are this call's (drawn once; the full path draws its own)
        held = None if draws is None else self._draws_table(draws.draw()[0], 0)  # held until the call returns
        out = np.empty((rows, *self.out_row), _F32)
        scratch = self.scratch.lease(self.plan.scratch_floats(rows))  # held until the call returns
        self.kernel.call(rows, data_pointer(arr), data_pointer(out), scratch[1], ctypes.addressof(hot[1]),
                         0 if held is None else held.ctypes.data, 0 if inputs is None else ctypes.addressof(inputs))
        return out

    def rows(self, arr: np.ndarray, out_shape_for: Callable[[tuple[int, ...]], tuple[int, ...]]) -> tuple[int, tuple]:
        """(rows, output shape) of a (batch, *features) input, one sample, or several leading
        dimensions (whose output shape `out_shape_for(leading dims)` gives)."""
        features = self.features
        nf = len(features)
        if arr.ndim == nf + 1 and arr.shape[1:] == features:
            return arr.shape[0], (arr.shape[0], *self.out_row)
        if arr.ndim >= nf and arr.shape[arr.ndim - nf:] == features:
            lead = arr.shape[: arr.ndim - nf]
            return math.prod(lead), out_shape_for(lead)
        expected = "(batch, " + ", ".join(map(str, features)) + ")"
        what = "rank" if arr.ndim < nf else "feature shape"
        raise ValueError(
            f"compiled model expects input of shape {expected} (or {tuple(features)} for one sample); "
            f"got shape {arr.shape} (wrong {what})"
        )

    def several_rows(self, arrays: Sequence[np.ndarray]) -> int:
        """The batch size of a call with several inputs, every one checked like the first: a batched
        input is (batch, *its features) with the batch of the others, an input compiled without the
        batch dimension has exactly its shape."""
        names, shapes = self.plan.inputs, [(None, *self.features), *self.kernel.more_inputs]
        if len(arrays) != len(shapes):
            raise TypeError(f"this compiled model takes {len(shapes)} inputs ({', '.join(names)}); got {len(arrays)}")
        rows = None
        for name, a, shape in zip(names, arrays, shapes, strict=True):
            want = str(tuple("batch" if d is None else d for d in shape)).replace("'", "")
            fits = a.ndim == len(shape) and all(d is None or d == g for d, g in zip(shape, a.shape, strict=True))
            if not fits:
                raise ValueError(f"compiled model input {name!r} must have shape {want}; got shape {a.shape}")
            if shape[:1] == (None,):
                if rows is not None and a.shape[0] != rows:
                    hint = ""
                    if a.shape[0] == 1:  # one array for every sample, as eager broadcasts it: say how to compile that
                        given = [(None, *self.features)] + [tuple(b.shape) if b is a else s for b, s in
                                                            zip(arrays[1:], self.kernel.more_inputs, strict=True)]
                        hint = (f"; to give {name!r} as one array for every sample, compile with "
                                f"input_shape={given}")
                    raise ValueError(f"compiled model inputs must have the same batch size: input {name!r} has "
                                     f"{a.shape[0]} rows, input {names[0]!r} {rows} (every input {want} carries "
                                     f"the batch first{hint})")
                rows = a.shape[0] if rows is None else rows
        assert rows is not None  # the first input always carries the batch
        return rows

    def buffers(self, arr: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray]:
        """(the input as native float32, an output of `rows` rows to fill): a batch too large for
        memory is a MemoryError before either is allocated."""
        if rows * self.bytes_per_row >= CHECK_ABOVE:  # /proc/meminfo only for big batches: batch 1 is hot
            check_allocation(self._bytes_needed(arr, rows),
                             f"a batch of {rows:,} rows (output {(rows, *self.out_row)}, scratch and input copy)")
        try:
            x32 = as_native_float32(arr)
            out = np.empty((rows, *self.out_row), np.float32)  # kernels need float, not line, alignment
        except MemoryError:
            raise MemoryError(f"cannot allocate the output {(rows, *self.out_row)} float32 "
                              f"({4 * rows * math.prod(self.out_row):,} bytes) for a batch of {rows:,} rows; "
                              "split the batch into smaller ones") from None
        return x32, out

    def _bytes_needed(self, arr: np.ndarray, rows: int) -> int:
        """What a call on `rows` rows allocates: the output, the input's float32 copy if it needs one,
        the other inputs' (at most), and each thread's scratch, which holds one row block of its
        part (`ModulePlan.scratch_floats`). `bytes_per_row` counts scratch for every row: deep or
        attention models were refused batches needing a tenth of the memory it named."""
        floats = rows * (math.prod(self.out_row) + self.more_floats_per_row)
        if not is_native_float32(arr):
            floats += rows * math.prod(self.features)
        parts = max(1, min(rows, parallel_parts(rows, self.flops_per_row, self.threads, self.rows_per_sample)))
        return 4 * (floats + parts * self.plan.scratch_floats(-(-rows // parts)))

    def run(self, x32: np.ndarray, table: ctypes.Array, out: np.ndarray,
            draws: Sequence[DropoutStream] | None = None, more: Sequence[np.ndarray] = ()) -> None:
        """out = the model on the rows of x32 (from `buffers`), split across threads where it pays;
        `table` is the entry's parameter pointer table, whose arrays the caller keeps alive until
        this returns. A module with training-mode dropout takes the stream of each dropout node's
        mask in `draws`; every row chunk numbers its elements from its place in the whole batch. A
        module with several inputs takes the others, native float32 (`several_rows` checked them), in
        `more`."""
        x = x32 if x32.ndim == self.ndim else x32.reshape(-1, *self.features)
        kernel, rows = self.kernel, x.shape[0]
        if not rows:
            return
        kernel.check_io(x, out)
        kernel.check_more_inputs(more, rows)
        x_ptr, out_ptr, table_ptr = data_pointer(x), data_pointer(out), ctypes.addressof(table)
        parts = parallel_parts(rows, self.flops_per_row, self.threads, self.rows_per_sample)
        if parts <= 1:
            held, inputs = self._draws_table(draws, 0), kernel.inputs_table(more, 0)  # held until the call returns
            scratch = self.scratch.lease(self.plan.scratch_floats(rows))  # held too
            kernel.call(rows, x_ptr, out_ptr, scratch[1], table_ptr,
                        0 if held is None else held.ctypes.data, 0 if inputs is None else ctypes.addressof(inputs))
            return

        def chunk(lo: int, hi: int) -> None:  # rows lo..hi, each thread with its own scratch
            held, inputs = self._draws_table(draws, lo), kernel.inputs_table(more, lo)
            scratch = self.scratch.lease(self.plan.scratch_floats(hi - lo))
            kernel.call(hi - lo, x_ptr + lo * kernel.in_bytes, out_ptr + lo * kernel.out_bytes, scratch[1], table_ptr,
                        0 if held is None else held.ctypes.data, 0 if inputs is None else ctypes.addressof(inputs))
            self.scratch.trim()  # a huge part's scratch is not kept on a thread that may not call again

        chunks = split_rows(rows, parts, self.chunk_multiple)
        shared_pool().run([functools.partial(chunk, lo, hi) for lo, hi in chunks])

    def _draws_table(self, draws: Sequence[DropoutStream] | None, first_row: int) -> np.ndarray | None:
        if not self.kernel.draws:
            return None
        if not draws:
            raise ValueError("this compiled module draws dropout masks: run() needs the stream of each dropout node")
        return self.kernel.draws_table((draws[0].key0, draws[0].key1), first_row, [(s.layer, s.call) for s in draws])
