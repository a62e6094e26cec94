"""Time a compiled lone activation on inputs whose results lie below the normals, against normal ones.

    PYTHONPATH=. python benchmarks/tiny_results.py [--rows 256] [--cols 1024] [--calls 31]

On Intel cores a vector operation that rounds a lane into the subnormals, or reads a subnormal,
takes a microcode assist (FTZ and DAZ stay off: they would change results), so a kernel can run
many times slower on such inputs. For exp, sigmoid, gelu (sigmoid form) and gelu_erf, each as a
one-layer model compiled with `tinycomp.compile` (one thread), this times the call on standard
normal inputs and on inputs filled with one value from the ranges where results or intermediate
values would be subnormal (and the saturated tails around them), and prints the median per call
and its ratio to the normal inputs. Run it with PYTHONPATH at another checkout for the same
table from that code (`vecmath._unless_tiny` and `_unlift` are what keeps the ratios near 1).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from threadpoolctl import threadpool_limits

import tinycomp as tc
from tinycomp.nn import GELU, Layer, Sequential, Sigmoid


class Exp(Layer):
    def forward(self, x):
        return x.exp()


# (name, layer, filled values): the values put results, quotients or erfc in the subnormals
CASES = (
    ("exp", Exp, (-95.0, -120.0)),
    ("sigmoid", Sigmoid, (-60.0, -95.0, -105.0, -120.0, 95.0)),
    ("gelu", GELU, (-30.0, -52.0, -60.0, -70.0, 60.0)),
    ("gelu_erf", lambda: GELU(approximate="none"), (-13.5, -20.0, 13.5)),
)


def median_us(fn, x: np.ndarray, calls: int) -> float:
    fn(x)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - start)
    return 1e6 * float(np.median(times))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=256)
    p.add_argument("--cols", type=int, default=1024)
    p.add_argument("--calls", type=int, default=31)
    args = p.parse_args(argv)
    normal = np.random.default_rng(0).standard_normal((args.rows, args.cols)).astype(np.float32)
    print(f"{args.rows} x {args.cols} floats, median of {args.calls} calls, one thread; us per call")
    print(f"{'op':>9} {'input':>9} {'us':>9} {'x normal':>9}")
    with threadpool_limits(1):
        for name, make, values in CASES:
            model = tc.compile(Sequential(make()), threads=1)
            base = median_us(model, normal, args.calls)
            print(f"{name:>9} {'normal':>9} {base:9.1f} {1.0:9.2f}")
            for value in values:
                t = median_us(model, np.full_like(normal, value), args.calls)
                print(f"{name:>9} {value:9.1f} {t:9.1f} {t / base:9.2f}")


if __name__ == "__main__":
    main()
