"""Batched matmul of small matrices: `codegen/small_matmul.py` against the layer GEMM per product, and NumPy.

    PYTHONPATH=. python benchmarks/batched_matmul.py [--rounds 9]

One thread (BLAS pinned with threadpoolctl, `threads=1`), the disk cache off (both code paths are
built in this process), medians of rounds of 20 calls, the three engines taking turns shape by shape.
`gemm` is the same model compiled with SMALL_MAX_VECTORS = 0 (every product through the GEMM
driver, as before the small kernel). The last line times a call of two inputs at batch 1 (the hot
path; before it took the full path, ~35 us) against one of one input.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

os.environ["TINYCOMP_CACHE"] = "0"  # before tinycomp reads it: both variants built here, never reused

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

import tinycomp as tc  # noqa: E402
from tinycomp.codegen import small_matmul  # noqa: E402
from tinycomp.nn import Layer  # noqa: E402

SHAPES = [(4096, 4, 8, 4), (4096, 8, 8, 8), (1024, 16, 16, 16), (512, 64, 16, 64), (256, 64, 64, 64),
          (16, 512, 32, 32), (4096, 1, 64, 64)]


class Product(Layer):
    def forward(self, a, b):
        return a.matmul(b)


class Plus(Layer):
    def forward(self, a, b=None):
        return a + 1.0 if b is None else a + b


def median_us(fn: Callable[[], object], calls: int = 20) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def compiled_with(max_vectors: int, a: np.ndarray, b: np.ndarray) -> tc.CompiledModel:
    """The product compiled (on its first call, made here) with SMALL_MAX_VECTORS = max_vectors."""
    saved, small_matmul.SMALL_MAX_VECTORS = small_matmul.SMALL_MAX_VECTORS, max_vectors
    try:
        fast = tc.compile(Product(), threads=1)
        fast(a, b)
        return fast
    finally:
        small_matmul.SMALL_MAX_VECTORS = saved


def time_shape(B: int, I: int, K: int, J: int, rounds: int, rng: np.random.Generator) -> tuple[float, ...]:
    """Median us of (small kernel, GEMM per product, NumPy) on B products of I x K by K x J."""
    a, b = rng.standard_normal((B, I, K), dtype=np.float32), rng.standard_normal((B, K, J), dtype=np.float32)
    small, gemm = compiled_with(small_matmul.SMALL_MAX_VECTORS, a, b), compiled_with(0, a, b)
    np.testing.assert_allclose(small(a, b).data, gemm(a, b).data, rtol=1e-5, atol=1e-5)
    engines = [lambda: small(a, b), lambda: gemm(a, b), lambda: a @ b]
    times: list[list[float]] = [[], [], []]
    for _ in range(rounds):
        for t, engine in zip(times, engines, strict=True):
            t.append(median_us(engine))
    return tuple(float(np.median(t)) for t in times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    rounds = parser.parse_args().rounds
    rng = np.random.default_rng(0)
    print(f"{'B x (I, K, J)':>22} {'small us':>9} {'gemm us':>9} {'numpy us':>9} {'small/gemm':>10} "
          f"{'small/numpy':>11}")
    for B, I, K, J in SHAPES:
        s, g, n = time_shape(B, I, K, J, rounds, rng)
        print(f"{B:>6} x {(I, K, J)!s:>13} {s:9.1f} {g:9.1f} {n:9.1f} {s / g:10.2f} {s / n:11.2f}")
    x = rng.standard_normal((1, 64), dtype=np.float32)
    one, two = tc.compile(Plus(), threads=1), tc.compile(Plus(), threads=1)
    one(x), two(x, x)
    t1 = float(np.median([median_us(lambda: one(x), 200) for _ in range(rounds)]))
    t2 = float(np.median([median_us(lambda: two(x, x), 200) for _ in range(rounds)]))
    print(f"batch-1 call of a compiled x + 1: {t1:.1f} us; of x + y (two inputs): {t2:.1f} us")


if __name__ == "__main__":
    with threadpool_limits(1):
        main()
