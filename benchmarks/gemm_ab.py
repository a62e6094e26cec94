"""A/B of one code-generation choice: the same layer or model built once per value, timed interleaved.

    PYTHONPATH=. python benchmarks/gemm_ab.py OVERLAP_MIN_ROWS 100000,64 --layer 1024x1024 --rows 64,128,256
    PYTHONPATH=. python benchmarks/gemm_ab.py PACK_PREFETCH_ROWS 0,8 --model wide --rows 256
    PYTHONPATH=. python benchmarks/gemm_ab.py ACT_VECTORS 1,4 --layer 1024x1024:gelu --rows 256
    PYTHONPATH=. python benchmarks/gemm_ab.py WEIGHT_OFFSET 0,16 --model mlp --rows 8,32,128
    PYTHONPATH=. python benchmarks/gemm_ab.py WEIGHT_OFFSET 0,16,48 --model odd --rows 1,8,32 --offset-below 4096
    PYTHONPATH=. python benchmarks/gemm_ab.py HOST_LSR 1,0 --model mlp --rows 1,8,128

NAME is a constant of tinycomp.codegen.gemm, gemm_kernels, module or target, or (--layer only)
gemm_micro's ALIASED_MAX_ROWS (the host limit a layer is built with: 0 builds it as a host without
one; a model takes the host Target's), set before each build; or
WEIGHT_OFFSET, which places the model's weights (with --offset-below, only those smaller than that
many bytes) that many bytes past a cache line. A layer is timed
through its kernel (`emit_linear`), a model through raw calls of its entry (no Python around them),
one thread. Every value's callable runs in turn, round after round (`gemm_micro.compare_samples`): on a
shared host whose speed moves within seconds, the variants then meet it in the same state. Prints
min / median µs per value and their ratios to the first value's (min, median, and the median of
each round's ratio).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys

os.environ["TINYCOMP_CACHE"] = "0"  # every value is compiled, never loaded from the disk cache

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gemm_micro  # noqa: E402
from gemm_micro import compare_samples, compile_layers, min_median  # noqa: E402

import tinycomp  # noqa: E402
from tinycomp.aligned import aligned_empty  # noqa: E402
from tinycomp.bench.models import MODELS  # noqa: E402
from tinycomp.codegen import (  # noqa: E402
    gemm,
    gemm_driver,
    gemm_epilogue,
    gemm_kernels,
    module,
    scratch,
    small_matmul,
    target,
)
from tinycomp.codegen.target import host  # noqa: E402
from tinycomp.nn import Linear, Tensor  # noqa: E402
from tinycomp.runtime.buffers import data_pointer  # noqa: E402

OWNERS = (gemm, gemm_driver, gemm_epilogue, gemm_kernels, module, scratch, small_matmul, target, gemm_micro)


def set_constant(name: str, value: int) -> None:
    """Set `name` in every module of OWNERS that has it: a module that imported it from another holds
    its own binding (module.ROW_BLOCK is scratch's, re-exported), and setting only the first module's
    left the code reading the other unchanged (an A/B of identical builds)."""
    owners = [m for m in OWNERS if hasattr(m, name)]
    if not owners:
        raise SystemExit(f"no constant {name} in {', '.join(m.__name__ for m in OWNERS)}")
    for owner in owners:
        setattr(owner, name, type(getattr(owner, name))(value))


def layer_calls(spec: str, rows: int, values: list[int], name: str, keep: list) -> list:
    shape, _, act = spec.partition(":")
    K, N = (int(v) for v in shape.split("x"))
    width = host().vector_width
    rng = np.random.default_rng(0)
    A, W = rng.standard_normal((rows, K), dtype=np.float32), rng.standard_normal((K, N), dtype=np.float32)
    B, C = np.zeros(N, np.float32), np.empty((rows, N), np.float32)
    calls = []
    for v in values:
        set_constant(name, v)
        # the pack buffer's size depends on the plan, and so on the value (block sizes)
        P = np.empty(max(1, gemm.pack_floats(K, N, width)), np.float32)
        ptrs = [a.ctypes.data for a in (A, W, B, C, P)]
        engine, (fn,), _ = compile_layers([(K, N, act or None)], width)
        keep += [engine, A, W, B, C, P]
        calls.append(lambda fn=fn, ptrs=ptrs: fn(rows, *ptrs))
    return calls


def place_weights(model, offset: int, below: int | None = None) -> None:
    """Give every Linear's weight and bias (with `below`: those of fewer bytes) a copy starting
    `offset` bytes past a cache line."""
    for layer in model.layers:
        if isinstance(layer, Linear):
            for attr in ("weight", "bias"):
                data = getattr(layer, attr).data
                if below is not None and data.nbytes >= below:
                    continue
                moved = aligned_empty((data.size + offset // 4 + 1,))[offset // 4: offset // 4 + data.size]
                moved = moved.reshape(data.shape)
                moved[...] = data
                setattr(layer, attr, Tensor._adopt(moved))


def model_calls(model_name: str, rows: int, values: list[int], name: str, keep: list,
                offset_below: int | None = None) -> list:
    bm = MODELS[model_name]
    x = bm.sample(rows, 0)
    calls = []
    for v in values:
        model = bm.build(0)
        if name == "WEIGHT_OFFSET":
            place_weights(model, v, offset_below)
        else:
            set_constant(name, v)
        fast = tinycomp.compile(model, input_shape=(rows, *bm.in_shape), threads=1)
        fast(x)
        y = fast(x)  # the second call leaves the parameter pointer table for reuse
        art = fast._artifact
        table = art.params.hot_table(art.guard.held)[-1]  # the pointer table comes last
        out = np.empty(np.shape(y.numpy()), np.float32)
        scratch = aligned_empty((art.plan.scratch_floats(rows) + 16,))
        args = (rows, data_pointer(x), data_pointer(out), data_pointer(scratch), ctypes.addressof(table))
        keep += [model, fast, table, out, scratch, x]
        calls.append(lambda k=art.call.kernel, args=args: k.call(*args))
    return calls


def paired_ratio(times: list[float], baseline: list[float]) -> float:
    """The median over rounds of each round's time over the baseline's in that round: on a host
    whose speed moves from second to second, steadier than the ratio of the two medians."""
    return float(np.median([t / b for t, b in zip(times, baseline, strict=True)]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("name", help="constant to vary, or WEIGHT_OFFSET (--model only)")
    p.add_argument("values", help="comma list of integer values; ratios are to the first")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--layer", help="KxN or KxN:activation, e.g. 1024x1024:gelu")
    what.add_argument("--model", choices=sorted(MODELS))
    p.add_argument("--rows", default="32,128", help="comma list of batch sizes")
    p.add_argument("--rounds", type=int, default=21)
    p.add_argument("--offset-below", type=int, metavar="BYTES",
                   help="WEIGHT_OFFSET moves only the weights and biases of fewer bytes than this")
    args = p.parse_args()
    values = [int(v) for v in args.values.split(",")]
    if args.name == "WEIGHT_OFFSET" and not args.model:
        p.error("WEIGHT_OFFSET moves a model's weights: give --model")
    keep: list = []
    with threadpool_limits(1):
        for rows in (int(r) for r in args.rows.split(",")):
            calls = (model_calls(args.model, rows, values, args.name, keep, args.offset_below) if args.model
                     else layer_calls(args.layer, rows, values, args.name, keep))
            samples = compare_samples(calls, rounds=args.rounds)
            res = min_median(samples)
            pairs = zip(values, res, strict=True)
            times = "  ".join(f"{v}: {lo * 1e6:.1f} / {med * 1e6:.1f}" for v, (lo, med) in pairs)
            ratios = "  ".join(f"{lo / res[0][0]:.3f} / {med / res[0][1]:.3f} / {paired_ratio(s, samples[0]):.3f}"
                               for (lo, med), s in zip(res[1:], samples[1:], strict=True))
            print(f"{args.layer or args.model} rows={rows}  {args.name} min / median us  {times}  "
                  f"ratio to {values[0]}: {ratios} (min / median / median of each round's)", flush=True)


if __name__ == "__main__":
    main()
