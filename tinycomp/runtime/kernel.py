"""The validated native call: arrays in, arrays out, nothing unchecked reaches machine code.

Two doors into the same entry function:
- `run(x, params, out, scratch)` checks every array (tests and one-off calls use it);
- `call(rows, x_ptr, out_ptr, scratch_ptr, args)` is the per-call hot path of a compiled model,
  whose caller has already checked x and out (`check_io`); `args` is the pointer table `pack` made
  from parameter pointers that `LiveParams` validated (it checks each array the first time it sees it).
A module with training-mode dropout takes one more pointer, `draws` (see `draws_table`).
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

import numpy as np

from ..codegen.module import ModulePlan
from .buffers import data_pointer, is_native_float32
from .engine import JitEngine


def _check(name: str, a: np.ndarray, shape: tuple[int, ...]) -> None:
    if not is_native_float32(a) or a.shape != shape:
        raise ValueError(
            f"native call: {name} must be an aligned C-contiguous float32 array of shape {shape}; "
            f"got {a.dtype} {a.shape} (contiguous={a.flags.c_contiguous}, aligned={a.flags.aligned})"
        )


class NativeKernel:
    """The entry function of one compiled module."""

    def __init__(self, engine: JitEngine, plan: ModulePlan, in_row: tuple[int, ...],
                 param_shapes: Sequence[tuple[int, ...]]):
        self.engine, self.plan = engine, plan  # the engine owns the code: keep it alive with us
        self.in_row = tuple(in_row)
        self.out_row = tuple(plan.out_shape[1:]) if plan.out_shape[:1] == (None,) else None
        self.param_shapes = [tuple(s) for s in param_shapes]
        self.draws = len(plan.dropouts)  # training-mode dropout nodes: the entry takes a `draws` table
        proto = ctypes.CFUNCTYPE(None, ctypes.c_int64, *([ctypes.c_void_p] * (5 if self.draws else 4)))
        self._fn = proto(engine.address(plan.entry))  # ctypes releases the GIL around the call
        self._const_ptrs = [data_pointer(c) for c in plan.consts]
        self._table = ctypes.c_void_p * (len(plan.params) + len(plan.consts))
        self.in_bytes = 4 * int(np.prod(self.in_row, dtype=np.int64))
        self.out_bytes = 4 * int(np.prod(self.out_row or (), dtype=np.int64))

    def check_io(self, x: np.ndarray, out: np.ndarray) -> None:
        rows = x.shape[0]
        _check("input", x, (rows, *self.in_row))
        _check("output", out, (rows, *self.out_row) if self.out_row is not None else self.plan.out_shape)

    def draws_table(self, key: tuple[int, int], first_row: int, streams: Sequence[tuple[int, int]]) -> np.ndarray:
        """The `draws` argument: the generator key, the batch row of this call's row 0, and (layer id,
        call number) per dropout node of the plan (keep it alive while calling)."""
        if len(streams) != self.draws:
            raise ValueError(f"native call: expected {self.draws} dropout streams, got {len(streams)}")
        flat = [int(key[0]), int(key[1]), int(first_row), *(int(w) for s in streams for w in s)]
        return np.array(flat, np.int64)

    def run(self, x: np.ndarray, params: Sequence[np.ndarray], out: np.ndarray, scratch: np.ndarray,
            draws: np.ndarray | None = None) -> None:
        """Run rows x[0:M] -> out[0:M], checking every array against the plan first."""
        self.check_io(x, out)
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
        self.call(rows, data_pointer(x), data_pointer(out), data_pointer(scratch), ctypes.addressof(table),
                  draws.ctypes.data if self.draws and draws is not None else 0)

    def pack(self, param_ptrs: Sequence[int]) -> ctypes.Array:
        """The entry's pointer table: parameters, then our constants (keep it alive while calling)."""
        return self._table(*param_ptrs, *self._const_ptrs)

    def call(self, rows: int, x_ptr: int, out_ptr: int, scratch_ptr: int, table_ptr: int, draws_ptr: int = 0) -> None:
        """The raw call. Callers guarantee: x/out hold `rows` rows, the table's parameters match,
        scratch is big enough, and a module with dropout nodes gets its `draws` table."""
        if self.draws:
            if not draws_ptr:
                raise ValueError("native call: this module draws dropout masks and needs its `draws` table")
            self._fn(rows, x_ptr, out_ptr, scratch_ptr, table_ptr, draws_ptr)
        else:
            self._fn(rows, x_ptr, out_ptr, scratch_ptr, table_ptr)
