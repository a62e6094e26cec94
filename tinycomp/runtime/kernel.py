"""The validated native call: arrays in, arrays out, nothing unchecked reaches machine code.

Two doors into the same entry function:
- `run(x, params, out, scratch)` checks every array (tests and one-off calls use it);
- `call(rows, x_ptr, out_ptr, scratch_ptr, args)` is the per-call hot path of a compiled model,
  whose caller has already checked x and out (`check_io`); `args` is the pointer table `pack` made
  from parameter pointers that `LiveParams` validated (it checks each array the first time it sees it).
A module with training-mode dropout takes one more pointer, `draws` (see `draws_table`), and one
with several inputs a last one, `inputs` (see `inputs_table`).
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Sequence

import numpy as np

from ..codegen.module import ModulePlan
from .buffers import data_pointer, is_native_float32
from .engine import JitEngine


def with_rows(shape: Sequence[int | None], rows: int) -> tuple[int, ...]:
    """An input's compiled shape (None: the batch) for a call on `rows` rows."""
    return tuple(rows if d is None else d for d in shape)


def _check(name: str, a: np.ndarray, shape: tuple[int, ...]) -> None:
    if not is_native_float32(a) or a.shape != shape:
        raise ValueError(
            f"native call: {name} must be an aligned C-contiguous float32 array of shape {shape}; "
            f"got {a.dtype} {a.shape} (contiguous={a.flags.c_contiguous}, aligned={a.flags.aligned})"
        )


class NativeKernel:
    """The entry function of one compiled module."""

    def __init__(self, engine: JitEngine, plan: ModulePlan, in_row: tuple[int, ...],
                 param_shapes: Sequence[tuple[int, ...]], more_inputs: Sequence[tuple] = ()):
        self.engine, self.plan = engine, plan  # the engine owns the code: keep it alive with us
        self.in_row = tuple(in_row)
        self.out_row = tuple(plan.out_shape[1:]) if plan.out_shape[:1] == (None,) else None
        self.param_shapes = [tuple(s) for s in param_shapes]
        self.draws = len(plan.dropouts)  # training-mode dropout nodes: the entry takes a `draws` table
        # inputs after the first: their shapes (None: the batch dimension); the entry takes them in a table
        self.more_inputs = [tuple(s) for s in more_inputs]
        if len(self.more_inputs) != max(len(plan.inputs) - 1, 0):
            raise ValueError(f"native call: the module takes {len(plan.inputs)} inputs; "
                             f"got shapes for {1 + len(self.more_inputs)}")
        self._inputs_table = ctypes.c_void_p * len(self.more_inputs)
        # bytes per batch row of each input after the first (0: compiled without the batch, never moved)
        self.more_row_bytes = [4 * math.prod(s[1:]) if s[:1] == (None,) else 0 for s in self.more_inputs]
        n_args = 4 + bool(self.draws) + bool(self.more_inputs)
        proto = ctypes.CFUNCTYPE(None, ctypes.c_int64, *([ctypes.c_void_p] * n_args))
        self._fn = proto(engine.address(plan.entry))  # ctypes releases the GIL around the call
        self._const_ptrs = [data_pointer(c) for c in plan.consts]
        self._table = ctypes.c_void_p * (len(plan.params) + len(plan.consts))
        self.in_bytes = 4 * int(np.prod(self.in_row, dtype=np.int64))
        self.out_bytes = 4 * int(np.prod(self.out_row or (), dtype=np.int64))

    def check_io(self, x: np.ndarray, out: np.ndarray) -> None:
        rows = x.shape[0]
        _check("input", x, (rows, *self.in_row))
        _check("output", out, (rows, *self.out_row) if self.out_row is not None else self.plan.out_shape)

    def check_more_inputs(self, arrays: Sequence[np.ndarray], rows: int) -> None:
        """The inputs after the first: native float32, `rows` rows if batched, else their exact shape."""
        if len(arrays) != len(self.more_inputs):
            raise ValueError(f"native call: expected {len(self.more_inputs)} more inputs, got {len(arrays)}")
        for i, (a, shape) in enumerate(zip(arrays, self.more_inputs, strict=True)):
            _check(f"input {i + 1}", a, with_rows(shape, rows))

    def inputs_table(self, arrays: Sequence[np.ndarray], first_row: int) -> ctypes.Array | None:
        """The `inputs` argument: a pointer per input after the first, a batched one moved to
        `first_row` (keep the arrays and the table alive while calling)."""
        if not self.more_inputs:
            return None
        return self._inputs_table(*[data_pointer(a) + first_row * row_bytes
                                    for a, row_bytes in zip(arrays, self.more_row_bytes, strict=True)])

    def draws_table(self, key: tuple[int, int], first_row: int, streams: Sequence[tuple[int, int]]) -> np.ndarray:
        """The `draws` argument: the generator key, the batch row of this call's row 0, and (layer id,
        call number) per dropout node of the plan (keep it alive while calling)."""
        if len(streams) != self.draws:
            raise ValueError(f"native call: expected {self.draws} dropout streams, got {len(streams)}")
        flat = [int(key[0]), int(key[1]), int(first_row), *(int(w) for s in streams for w in s)]
        return np.array(flat, np.int64)

    def run(self, x: np.ndarray, params: Sequence[np.ndarray], out: np.ndarray, scratch: np.ndarray,
            draws: np.ndarray | None = None, more_inputs: Sequence[np.ndarray] = ()) -> None:
        """Run rows x[0:M] -> out[0:M], checking every array against the plan first."""
        self.check_io(x, out)
        self.check_more_inputs(more_inputs, x.shape[0])
        if len(params) != len(self.param_shapes):
            raise ValueError(f"native call: expected {len(self.param_shapes)} parameters, got {len(params)}")
        for name, p, shape in zip(self.plan.params, params, self.param_shapes, strict=True):
            _check(f"parameter {name}", p, shape)
        rows = x.shape[0]
        need = self.plan.scratch_floats(rows)
        if not is_native_float32(scratch) or scratch.ndim != 1 or scratch.size < need:
            raise ValueError(f"native call: scratch needs {need} contiguous float32 values, got {scratch.size}")
        if self.draws and (draws is None or draws.dtype != np.int64 or draws.shape != (3 + 2 * self.draws,)):
            raise ValueError(f"native call: this module draws dropout masks and needs its `draws` table "
                             f"(int64, {3 + 2 * self.draws} values; see draws_table)")
        table = self.pack([data_pointer(p) for p in params])
        inputs = self.inputs_table(more_inputs, 0)
        self.call(rows, data_pointer(x), data_pointer(out), data_pointer(scratch), ctypes.addressof(table),
                  draws.ctypes.data if self.draws and draws is not None else 0,
                  ctypes.addressof(inputs) if inputs is not None else 0)

    def pack(self, param_ptrs: Sequence[int]) -> ctypes.Array:
        """The entry's pointer table: parameters, then our constants (keep it alive while calling)."""
        return self._table(*param_ptrs, *self._const_ptrs)

    def call(self, rows: int, x_ptr: int, out_ptr: int, scratch_ptr: int, table_ptr: int, draws_ptr: int = 0,
             inputs_ptr: int = 0) -> None:
        """The raw call. Callers guarantee: x/out hold `rows` rows, the table's parameters match,
        scratch is big enough, a module with dropout nodes gets its `draws` table, and one with
        several inputs its `inputs` table (`inputs_table`, of arrays `check_more_inputs` passed)."""
        if not (self.draws or self.more_inputs):  # the common entry: no list to build per call
            self._fn(rows, x_ptr, out_ptr, scratch_ptr, table_ptr)
            return
        extra = []
        if self.draws:
            if not draws_ptr:
                raise ValueError("native call: this module draws dropout masks and needs its `draws` table")
            extra.append(draws_ptr)
        if self.more_inputs:
            if not inputs_ptr:
                raise ValueError("native call: this module takes several inputs and needs its `inputs` table")
            extra.append(inputs_ptr)
        self._fn(rows, x_ptr, out_ptr, scratch_ptr, table_ptr, *extra)
