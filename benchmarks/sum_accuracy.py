"""How far compiled sums stray from float64, against how far eager NumPy's do, on wide rows.

    PYTHONPATH=. python benchmarks/sum_accuracy.py [n ...]     # default n = 100 1000 20000 100000 1000000

For a row sum, a column mean over (n, 16) samples and a softmax over n, with inputs N(0, 1) plus an
offset of 0, 10 or 1000 (softmax: unshifted), 2 rows and 3 seeds each, prints the largest compiled
error over the largest eager error, both measured against the float64 result. Run it from two
checkouts (PYTHONPATH) to compare two ways of summing; `tests/codegen/test_loops.py` keeps the
worst case as a test.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import numpy as np

os.environ["TINYCOMP_CACHE"] = "0"

import tinycomp as tc  # noqa: E402 - the cache switch above must come first
from tinycomp.nn import Layer, Softmax, Tensor  # noqa: E402


class Fn(Layer):
    def __init__(self, fn: Callable):
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)


def softmax64(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# name: (forward, float64 reference, sample shape for n, offset applied)
CASES: dict[str, tuple[Callable, Callable, Callable[[int], tuple[int, ...]], bool]] = {
    "row sum": (lambda x: x.sum(axis=-1), lambda x: x.sum(axis=-1), lambda n: (n,), True),
    "column mean": (lambda x: x.mean(axis=1), lambda x: x.mean(axis=1), lambda n: (n, 16), True),
    "softmax": (lambda x: Softmax()(x), softmax64, lambda n: (n,), False),
}
OFFSETS = (0.0, 10.0, 1000.0)


def error_ratio(name: str, n: int, offset: float) -> tuple[float, float]:
    """(largest compiled error / largest eager error, largest compiled error) over 3 seeds."""
    forward, reference, shape, offset_applies = CASES[name]
    model = Fn(forward)
    fast = tc.compile(model, input_shape=(None, *shape(n)))
    compiled_errors, eager_errors = [], []
    for seed in range(3):
        x = np.random.default_rng(seed).standard_normal((2, *shape(n))) + (offset if offset_applies else 0.0)
        x = x.astype(np.float32)
        want = reference(x.astype(np.float64))
        compiled_errors.append(np.abs(fast(x).data - want).max())
        eager_errors.append(np.abs(model(Tensor(x)).data - want).max())
    return max(compiled_errors) / max(max(eager_errors), 1e-30), max(compiled_errors)


def main(sizes: list[int]) -> None:
    for name in CASES:
        for n in sizes:
            for offset in OFFSETS:
                ratio, err = error_ratio(name, n, offset)
                print(f"{name:12s} n={n:8d} offset={offset:6g}  compiled / eager error {ratio:5.2f}  "
                      f"(compiled {err:.3g})", flush=True)


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [100, 1000, 20_000, 100_000, 1_000_000])
