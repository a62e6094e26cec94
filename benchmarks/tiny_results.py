"""Time a compiled lone activation on inputs whose results lie below the normals, against normal ones.

    PYTHONPATH=. python benchmarks/tiny_results.py [--rows 256] [--cols 1024] [--calls 31]

On Intel cores a vector operation that rounds a lane into the subnormals, or reads a subnormal,
takes a microcode assist (FTZ and DAZ stay off: they would change results), so a kernel can run
many times slower on such inputs. For exp, sigmoid, gelu (sigmoid form) and gelu_erf, each as a
one-layer model compiled with `tinycomp.compile` (one thread), this times the call on standard
normal inputs and on inputs filled with one value from the ranges where results or intermediate
values would be subnormal (and the saturated tails around them), and prints the median per call
and its ratio to the normal inputs. Then the transformer block of `tinycomp bench` at
--block-batch with its query and key projections' weights scaled by 1, 3, 6 and 10 (the scores
by the square): wide scores put exp(score - max) in the subnormals, where P @ V would read them
(the fused attention takes them as 0: `AttentionSpec.flush_below`). Last, a compiled
Linear(512, 512) and NumPy's x @ W on --rows rows of N(0, 1) and of N(0, 1) * 1e-39 (subnormal
inputs: every multiply-add reads one; left as it is), and a lone Softmax over rows of logits of
standard deviation 1 to 60 (and along axis 1 of the same logits), with the share of its outputs
that are subnormal (the user's result: kept exact, built without assists since `0d490d2`) and
the rows' worst errors against float64. Run it
with PYTHONPATH at another checkout for the same tables from that code.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from threadpoolctl import threadpool_limits

import tinycomp as tc
from tinycomp.bench.models import get_model
from tinycomp.nn import GELU, Layer, Linear, Sequential, Sigmoid, Softmax


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
    p.add_argument("--block-batch", type=int, default=32, help="batch of the block's table (0: no table)")
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
        if args.block_batch:
            block_table(args.block_batch, args.calls)
        linear_table(args.rows, args.calls)
        softmax_table(args.rows, args.cols, args.calls)


QK_SCALES = (1.0, 3.0, 6.0, 10.0)


def block_table(batch: int, calls: int) -> None:
    bench_model = get_model("block")
    x = bench_model.sample(batch, 0)
    print(f"\nblock, batch {batch}, q and k projection weights times s; us per call")
    print(f"{'s':>5} {'us':>9} {'x s=1':>7}")
    base = None
    for scale in QK_SCALES:
        block = bench_model.build(0)
        for projection in (block.attention.q_proj, block.attention.k_proj):
            projection.weight.data[...] *= np.float32(scale)
        t = median_us(tc.compile(block, threads=1), x, calls)
        base = base or t
        print(f"{scale:5.1f} {t:9.1f} {t / base:7.2f}")



def linear_table(rows: int, calls: int) -> None:
    layer = Linear(512, 512)
    model = tc.compile(Sequential(layer), threads=1)
    w = layer.weight.data
    x = np.random.default_rng(1).standard_normal((rows, 512)).astype(np.float32)
    print(f"\nLinear(512, 512), {rows} rows; us per call")
    print(f"{'input':>16} {'compiled':>9} {'x @ W':>9}")
    for label, inputs in (("N(0,1)", x), ("N(0,1)*1e-39", (x * np.float32(1e-39)).astype(np.float32))):
        print(f"{label:>16} {median_us(model, inputs, calls):9.1f} {median_us(lambda a: a @ w, inputs, calls):9.1f}")



LOGIT_STDS = (1.0, 10.0, 30.0, 60.0)
MASKED = 0.0  # logits of std 1, half of them masked with -1e9 (exp exactly 0)


class SoftmaxAlongAxis1(Layer):
    def forward(self, x):
        return Softmax()(x, dim=1)


def softmax_table(rows: int, cols: int, calls: int) -> None:
    rows_model = tc.compile(Sequential(Softmax()), threads=1)
    axis_model = tc.compile(SoftmaxAlongAxis1(), threads=1)
    print(f"\nSoftmax over {rows} rows of {cols} logits, and along axis 1 of the same logits transposed, "
          f"(1, {cols}, {rows}); us per call")
    print(f"{'std':>12} {'rows':>9} {'axis 1':>9} {'subnormal out':>14} {'worst ulp':>10} {'subnormal':>10}")
    rng = np.random.default_rng(2)
    for std in LOGIT_STDS + (MASKED,):
        logits = (rng.standard_normal((rows, cols)) * (1.0 if std == MASKED else std)).astype(np.float32)
        if std == MASKED:
            logits[rng.random(logits.shape) < 0.5] = np.float32(-1e9)
        out = rows_model(logits).data
        share = float(((out > 0) & (out < np.float32(2.0**-126))).mean())
        label = "1, half -1e9" if std == MASKED else f"{std:.1f}"
        along = np.ascontiguousarray(logits.T)[None]
        normal, subnormal = worst_errors(out, logits)
        print(f"{label:>12} {median_us(rows_model, logits, calls):9.1f} {median_us(axis_model, along, calls):9.1f}"
              f" {share:14.3%} {normal:10.2f} {subnormal:10.2f}")


def worst_errors(out: np.ndarray, logits: np.ndarray) -> tuple[float, float]:
    """The worst error of the normal results in ulp, and of the subnormal ones in units of 2**-149,
    against the float64 softmax of the float32 x - max (the kernel rounds that shift too)."""
    shifted = (logits - logits.max(axis=1, keepdims=True)).astype(np.float64)
    e = np.exp(shifted)
    want = e / e.sum(axis=1, keepdims=True)
    tiny = want < 2.0**-126
    error = np.abs(out.astype(np.float64) - want)
    ulp = np.spacing(want.astype(np.float32)).astype(np.float64)
    return float((error[~tiny] / ulp[~tiny]).max()), float(error[tiny].max() / 2.0**-149) if tiny.any() else 0.0


if __name__ == "__main__":
    main()
