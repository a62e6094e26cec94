"""Shapes where compiled once ran much slower than eager or NumPy (the twenty-third session's hunt).

    PYTHONPATH=. python benchmarks/cliffs.py [--rounds 9] [--keys 25000,100000,400000]

One thread (BLAS pinned with threadpoolctl, `threads=1`), the three engines timed in turn in one
process, each for about 10 ms a round; prints medians in us and compiled / NumPy. The cases: layers
of one to four outputs over 65,536 inputs at small batches, a transpose of axes of size 1, and
training-mode dropout at batch 1. Then, with --keys, the cold compile time (cache off) of one query's
fused attention over that many keys, whose code grew with the keys.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

os.environ["TINYCOMP_CACHE"] = "0"  # every compile timed cold

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

import tinycomp as tc  # noqa: E402
from tinycomp.nn import Dropout, Layer, Linear, Tensor, manual_seed, scaled_dot_product_attention  # noqa: E402


class UnitTranspose(Layer):
    def forward(self, x):
        return x.transpose(1, 2) + 1.0


class OneQuery(Layer):
    """One query over every key of the sample, head size 1: (N, S, 3) -> (N, 1, 1)."""

    def forward(self, x):
        return scaled_dot_product_attention(x[:, 0:1, 0:1], x[:, :, 1:2], x[:, :, 2:3])[0]


def attention_compile_seconds(keys: int) -> float:
    start = time.perf_counter()
    fast = tc.compile(OneQuery(), input_shape=(None, keys, 3), threads=1)
    seconds = time.perf_counter() - start
    x = np.random.default_rng(keys).standard_normal((1, keys, 3), dtype=np.float32)
    np.testing.assert_allclose(fast(x).data, OneQuery()(Tensor(x)).data, rtol=1e-4, atol=1e-6)
    return seconds


def _repeats(call: Callable[[], object], seconds: float = 0.01) -> int:
    call()  # warm: the first call of a compiled model compiles it
    start = time.perf_counter()
    call()
    return max(1, min(5000, int(seconds / max(time.perf_counter() - start, 1e-7))))


def time_engines(engines: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median us per call of each engine, the engines in turn every round."""
    reps = {name: _repeats(call) for name, call in engines.items()}
    times: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(rounds):
        for name, call in engines.items():
            start = time.perf_counter()
            for _ in range(reps[name]):
                call()
            times[name].append((time.perf_counter() - start) / reps[name] * 1e6)
    return {name: float(np.median(t)) for name, t in times.items()}


def cases() -> list[tuple[str, Layer, np.ndarray, Callable[[np.ndarray], np.ndarray], dict]]:
    rng = np.random.default_rng(0)
    out = []
    for n_out, rows in ((1, 1), (2, 1), (2, 2), (2, 8), (3, 1), (4, 1)):
        layer = Linear(65536, n_out)
        w, b = layer.weight.data, layer.bias.data
        out.append((f"Linear(65536, {n_out}), batch {rows}", layer,
                    rng.standard_normal((rows, 65536), dtype=np.float32), lambda x, w=w, b=b: x @ w + b, {}))
    out.append(("(64, 1, 1000).transpose(1, 2) + 1", UnitTranspose(),
                rng.standard_normal((64, 1, 1000), dtype=np.float32),
                lambda x: np.ascontiguousarray(x.transpose(0, 2, 1)) + np.float32(1), {}))
    generator = np.random.default_rng(1)
    out.append(("Dropout(0.5) in training, (1, 16)", Dropout(0.5), rng.standard_normal((1, 16), dtype=np.float32),
                lambda x: x * (generator.random(x.shape, dtype=np.float32) >= 0.5) * np.float32(2), {"training": True}))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--keys", default="", help="comma list of key counts for the attention compile table")
    args = parser.parse_args()
    rounds = args.rounds
    manual_seed(0)
    print(f"{'case':>40} {'compiled us':>11} {'eager us':>9} {'NumPy us':>9} {'x NumPy':>8}")
    with threadpool_limits(1):
        for name, model, x, numpy_fn, options in cases():
            t = time_case(model, x, numpy_fn, options, rounds)
            print(f"{name:>40} {t['compiled']:11.1f} {t['eager']:9.1f} {t['numpy']:9.1f} "
                  f"{t['compiled'] / t['numpy']:8.2f}")
    for keys in (int(k) for k in args.keys.split(",") if k):
        print(f"fused attention of one query over {keys:,} keys: cold compile {attention_compile_seconds(keys):.2f} s")


def time_case(model: Layer, x: np.ndarray, numpy_fn: Callable[[np.ndarray], np.ndarray], options: dict,
              rounds: int) -> dict[str, float]:
    fast = tc.compile(model, threads=1, **options)
    if not options:  # (training draws its own masks in each engine)
        np.testing.assert_allclose(fast(x).data, numpy_fn(x), rtol=1e-4, atol=1e-3)
    return time_engines({"compiled": lambda: fast(x), "eager": lambda: model(Tensor(x)),
                         "numpy": lambda: numpy_fn(x)}, rounds)


if __name__ == "__main__":
    main()
