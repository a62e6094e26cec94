"""The bare native call of a compiled model (one thread; no Python around it): median and min µs.
Models whose input is not 2-D (the block's (N, seq, embed)) have no bare call
(`runner.bare_native_call`): they are timed through the compiled call, ~1 µs of Python more.

    PYTHONPATH=. python benchmarks/bare_call.py block --batch 32
    PYTHONPATH=. python benchmarks/bare_call.py layernorm:512 --batch 256
    PYTHONPATH=. python benchmarks/bare_call.py layernorm:128 --batch 512 --set layer_norm.ROW_GROUP=2
    PYTHONPATH=. python benchmarks/bare_call.py softmax:1024 --batch 256

MODEL is a bench model (`tinycomp.bench.models`), or `layernorm:WIDTH` or `softmax:WIDTH`, a lone
LayerNorm or Softmax over rows of WIDTH standard-normal floats, or `linear:KxN`, a lone Linear(K, N).
For an A/B of two revisions, run it alternately with PYTHONPATH set to each checkout: every process
compiles its own (the disk cache is off here). `--set MODULE.NAME=VALUE` sets a constant of
`tinycomp.codegen.MODULE` before the compile (an int or float, as it is).
"""

from __future__ import annotations

import argparse
import importlib
import os
import time

os.environ["TINYCOMP_CACHE"] = "0"

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

import tinycomp  # noqa: E402
from tinycomp import nn  # noqa: E402
from tinycomp.bench.models import get_model  # noqa: E402
from tinycomp.bench.runner import compiled_bare_call  # noqa: E402


def model_and_input(name: str, batch: int):
    lone = {"layernorm": nn.LayerNorm, "softmax": lambda width: nn.Softmax()}
    kind, _, width = name.partition(":")
    if kind == "linear" and width:  # linear:KxN
        k, n = (int(d) for d in width.split("x"))
        nn.manual_seed(0)
        x = np.random.default_rng(0).standard_normal((batch, k)).astype(np.float32)
        return nn.Sequential(nn.Linear(k, n)), x
    if kind in lone and width:
        x = np.random.default_rng(0).standard_normal((batch, int(width))).astype(np.float32)
        return nn.Sequential(lone[kind](int(width))), x
    bm = get_model(name)
    return bm.build(), bm.sample(batch)


def generated_ir(name: str) -> str:
    """The LLVM IR tinycomp generates for `name` (as `model_and_input` takes it), before LLVM
    optimizes it: compiled for any batch, one thread (the disk cache must be off: a module loaded
    from it has no IR)."""
    layers, x = model_and_input(name, 1)
    compiled = tinycomp.compile(layers, threads=1, input_shape=(None, *x.shape[1:]))
    return compiled.dump("llvm").split("; ==== after LLVM optimization")[0]


def set_constant(assignment: str) -> None:
    """`MODULE.NAME=VALUE`: tinycomp.codegen.MODULE.NAME set to VALUE, cast to the type it has."""
    target, _, value = assignment.partition("=")
    module_name, _, name = target.partition(".")
    module = importlib.import_module(f"tinycomp.codegen.{module_name}")
    if not value or not hasattr(module, name):
        raise SystemExit(f"--set wants MODULE.NAME=VALUE naming a constant of tinycomp.codegen; got {assignment!r}")
    setattr(module, name, type(getattr(module, name))(value))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=31)
    p.add_argument("--seconds", type=float, default=0.05, help="time per round")
    p.add_argument("--set", action="append", default=[], metavar="MODULE.NAME=VALUE")
    args = p.parse_args(argv)
    for assignment in args.set:
        set_constant(assignment)
    model, x = model_and_input(args.model, args.batch)
    with threadpool_limits(1):
        if x.ndim == 2:
            call = compiled_bare_call(model, x)
        else:
            fast = tinycomp.compile(model, input_shape=(None, *x.shape[1:]), threads=1)

            def call() -> None:
                fast(x)
        t0 = time.perf_counter()
        call()
        reps = max(1, int(args.seconds / max(time.perf_counter() - t0, 1e-7)))
        times = []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            for _ in range(reps):
                call()
            times.append((time.perf_counter() - t0) / reps)
    how = "bare native call" if x.ndim == 2 else "compiled call"
    print(f"{args.model} batch {args.batch} ({how}): median {np.median(times) * 1e6:.1f} us, "
          f"min {min(times) * 1e6:.1f} us")


if __name__ == "__main__":
    main()
