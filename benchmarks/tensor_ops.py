"""The tensor ops beyond the bench models, compiled against eager `tinycomp.nn`, one op per model.

    PYTHONPATH=. python benchmarks/tensor_ops.py [case ...]      # every case, or the ones named

One thread (BLAS pinned with threadpoolctl, `threads=1`), medians of 9 rounds of 5 calls, in one
process: compiled and eager take turns case by case. Eager is NumPy underneath; where it returns a
transposed view instead of copying (NumPy's elementwise ops keep their operand's memory order),
`numpy copy` times the contiguous result a compiled model returns, `np.ascontiguousarray` of it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import numpy as np
from threadpoolctl import threadpool_limits

import tinycomp as tc
from tinycomp.nn import GELU, Layer, LayerNorm, Linear, Sequential, Softmax, Tanh, Tensor

MATRIX = Tensor(np.random.default_rng(1).standard_normal((64, 64)).astype(np.float32))
BIAS = Tensor(np.zeros(64, np.float32))


class Fn(Layer):
    def __init__(self, fn: Callable):
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)


# name: (model, input shape, NumPy producing the same contiguous array, or None)
CASES: dict[str, tuple[Layer, tuple[int, ...], Callable | None]] = {
    "sum last": (Fn(lambda x: x.sum(axis=-1)), (256, 1024), None),
    "sum middle": (Fn(lambda x: x.sum(axis=1)), (64, 128, 64), None),
    "sum planes": (Fn(lambda x: x.sum(axis=(1, 2))), (64, 32, 128), None),
    "sum long columns": (Fn(lambda x: x.sum(axis=1)), (64, 1000, 16), None),
    "sum narrow columns": (Fn(lambda x: x.sum(axis=1)), (64, 1000, 3), None),
    "sum short runs": (Fn(lambda x: x.sum(axis=(1, 3))), (64, 300, 2, 5), None),
    "sum odd runs": (Fn(lambda x: x.sum(axis=(2, 4))), (256, 5, 7, 9, 11), None),
    "max last": (Fn(lambda x: x.max(axis=-1)), (256, 1024), None),
    "softmax last": (Fn(lambda x: Softmax()(x)), (256, 1024), None),
    "softmax middle": (Fn(lambda x: Softmax()(x, dim=1)), (64, 128, 64), None),
    "layer norm": (LayerNorm(1024), (256, 1024), None),
    "layer norm 512": (LayerNorm(512), (256, 512), None),
    "wide row sum": (Fn(lambda x: x.sum(axis=-1)), (8, 100_000), None),
    "wide softmax": (Fn(lambda x: Softmax()(x)), (8, 100_000), None),
    "centre rows": (Fn(lambda x: x - x.mean(axis=-1, keepdims=True)), (256, 1024), None),
    "exp tanh chain": (Fn(lambda x: (x * 0.1).exp() * Tanh()(x) + x), (256, 4096), None),
    "pow 1.5": (Fn(lambda x: x.abs() ** 1.5), (256, 4096), None),
    "pow 3.7": (Fn(lambda x: x.abs() ** 3.7), (256, 4096), None),
    "pow -0.3": (Fn(lambda x: x.abs() ** -0.3), (256, 4096), None),
    "transpose last two": (Fn(lambda x: x.transpose(1, 2) + 1.0), (64, 256, 256),
                           lambda x: np.ascontiguousarray(x.transpose(0, 2, 1)) + np.float32(1)),
    "transpose small": (Fn(lambda x: x.transpose(1, 2) * 2.0), (256, 16, 64),
                        lambda x: np.ascontiguousarray(x.transpose(0, 2, 1)) * np.float32(2)),
    "transpose apart": (Fn(lambda x: x.transpose(1, 3) * 2.0), (16, 8, 64, 64),
                        lambda x: np.ascontiguousarray(x.transpose(0, 3, 2, 1)) * np.float32(2)),
    "gram x @ x^T": (Fn(lambda x: x @ x.transpose(1, 2)), (32, 64, 64), None),
    "batched x @ W": (Fn(lambda x: x @ MATRIX), (32, 256, 64), None),
    "batched x @ W + b": (Fn(lambda x: x @ MATRIX + BIAS), (32, 256, 64), None),  # the bias alone differs
    "linear 3-D + gelu": (Sequential(Linear(512, 512), GELU()), (32, 64, 512), None),
}


def median_us(call: Callable[[], object]) -> float:
    call()
    times = []
    for _ in range(9):
        start = time.perf_counter()
        for _ in range(5):
            call()
        times.append((time.perf_counter() - start) / 5)
    return float(np.median(times)) * 1e6


def time_case(name: str) -> str:
    """One row of the table: compiled, eager, their ratio and (for transposes) NumPy's copy."""
    model, shape, numpy_copy = CASES[name]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    fast = tc.compile(model, threads=1)
    compiled, eager = median_us(lambda: fast(x)), median_us(lambda: model(Tensor(x)))
    copy = f"{median_us(lambda: numpy_copy(x)):14.1f}" if numpy_copy else ""
    return f"{name:20s} {str(shape):18s} {compiled:12.1f} {eager:10.1f} {compiled / eager:6.2f} {copy}"


def main(names: list[str]) -> None:
    unknown = sorted(set(names) - CASES.keys())
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}; cases: {sorted(CASES)}")
    print(f"{'case':20s} {'input':18s} {'compiled µs':>12s} {'eager µs':>10s} {'ratio':>6s} {'numpy copy µs':>14s}")
    with threadpool_limits(1):
        for name in names or list(CASES):
            print(time_case(name), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
