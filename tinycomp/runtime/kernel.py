"""The validated native call: arrays in, arrays out, nothing unchecked reaches machine code."""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

import numpy as np

from ..codegen.module import ModulePlan
from .engine import JitEngine


def _check(name: str, a: np.ndarray, shape: tuple[int, ...]) -> None:
    if a.dtype != np.float32 or not a.flags.c_contiguous or not a.flags.aligned or a.shape != shape:
        raise ValueError(
            f"native call: {name} must be an aligned C-contiguous float32 array of shape {shape}; "
            f"got {a.dtype} {a.shape} (contiguous={a.flags.c_contiguous}, aligned={a.flags.aligned})"
        )


class NativeKernel:
    """The entry function of one compiled module, callable on validated NumPy arrays."""

    def __init__(self, engine: JitEngine, plan: ModulePlan, in_row: tuple[int, ...],
                 param_shapes: Sequence[tuple[int, ...]]):
        self.engine, self.plan = engine, plan  # the engine owns the code: keep it alive with us
        self.in_row = tuple(in_row)
        self.out_row = tuple(d for d in plan.out_shape[1:]) if plan.out_shape[:1] == (None,) else None
        self.param_shapes = [tuple(s) for s in param_shapes]
        n_ptrs = 1 + len(plan.params) + len(plan.consts) + 2
        proto = ctypes.CFUNCTYPE(None, ctypes.c_int64, *([ctypes.c_void_p] * n_ptrs))
        self._fn = proto(engine.address(plan.entry))
        self._const_ptrs = [c.ctypes.data for c in plan.consts]

    def run(self, x: np.ndarray, params: Sequence[np.ndarray], out: np.ndarray, scratch: np.ndarray) -> None:
        """Run rows x[0:M] -> out[0:M]. Every pointer is checked against the plan first."""
        rows = x.shape[0]
        _check("input", x, (rows, *self.in_row))
        if len(params) != len(self.param_shapes):
            raise ValueError(f"native call: expected {len(self.param_shapes)} parameters, got {len(params)}")
        for name, p, shape in zip(self.plan.params, params, self.param_shapes, strict=True):
            _check(f"parameter {name}", p, shape)
        _check("output", out, (rows, *self.out_row) if self.out_row is not None else self.plan.out_shape)
        need = self.plan.scratch_floats(rows)
        if scratch.dtype != np.float32 or scratch.size < need or not scratch.flags.c_contiguous \
                or not scratch.flags.aligned:
            raise ValueError(f"native call: scratch needs {need} contiguous float32 values, got {scratch.size}")
        self._fn(rows, x.ctypes.data, *[p.ctypes.data for p in params], *self._const_ptrs,
                 out.ctypes.data, scratch.ctypes.data)
