"""tinycomp, NumPy and ONNX Runtime on the reference MLP in one process, one thread, alternating.

`tinycomp bench` runs every engine in its own process, as issue 5 asks. On a shared host whose
speed moves by up to ~30 % within seconds and between processes, that makes single ratios noisy.
Here the three engines take turns in one process and the best of several `timeit` repeats is
kept, so they meet the host in the same state: a check on the bench's ratios, not a replacement.

    python benchmarks/same_process.py [--batch 1,8,32,128] [--rounds 3]
"""

from __future__ import annotations

import argparse
import timeit

import numpy as np
from threadpoolctl import threadpool_limits

import tinycomp as tc
from tinycomp.bench.models import MODELS, numpy_function, onnx_model_bytes
from tinycomp.checks import positive_ints, positive_number


def best_us(engines: dict, x: np.ndarray, rounds: int) -> dict[str, float]:
    """Per engine, the best per-call time over `rounds` turns of 3 timeit repeats, engines alternating."""
    number = max(10, 3000 // len(x))
    best = dict.fromkeys(engines, float("inf"))
    for _ in range(rounds):
        for e, fn in engines.items():
            best[e] = min(best[e], min(timeit.repeat(lambda fn=fn: fn(x), number=number, repeat=3)) / number * 1e6)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=positive_ints, default=[1, 8, 32, 128], help="comma list of batch sizes")
    p.add_argument("--rounds", type=positive_number(int), default=3, help="turns per batch size")
    args = p.parse_args()
    threadpool_limits(1)
    bm = MODELS["mlp"]
    model = bm.build(0)
    weights = bm.weights(model)
    engines = {"tinycomp": (lambda f: lambda x: f(x).data)(tc.compile(model, input_shape=(None, 784), threads=1)),
               "numpy": numpy_function(bm, weights, np.float32)}
    try:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(onnx_model_bytes(bm, weights), opts, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        engines["onnxruntime"] = lambda x: sess.run(None, {name: x})[0]
    except ImportError:
        print("onnxruntime not installed: its column is left out")
    print("batch  " + "  ".join(f"{e:>12s} us" for e in engines) + "  tinycomp / NumPy  tinycomp / ORT")
    for batch in args.batch:
        x = bm.sample(batch)
        for fn in engines.values():
            fn(x)
        t = best_us(engines, x, args.rounds)
        ort_ratio = f"{t['tinycomp'] / t['onnxruntime']:.2f}" if "onnxruntime" in t else "-"
        print(f"{batch:5d}  " + "  ".join(f"{v:15.1f}" for v in t.values())
              + f"  {t['tinycomp'] / t['numpy']:16.2f}  {ort_ratio:>14s}")


if __name__ == "__main__":
    main()
