"""Where a cold compile of a bench model goes, stage by stage, and when each part of its module
compiles on which thread.

    python benchmarks/compile_timeline.py [model] [--compiles N] [--print-share S]

Compiles the model (`tinycomp.bench.models`, default mlp) N times (default 12) with the disk cache
off, each after `gc.collect()` as the bench's cold cell does, and prints the median of compiles 3 to
N in all and per stage: tracing and passes, building the IR (which now prints and hands over the
parts cut while it is built), reading it into parts, printing and compiling the parts (the rest),
and the engine in all (with loading). Then one compile's timeline: when each
part starts and ends compiling (ms from the compile's start), on which thread ("main" or the
codegen thread's number), and its lines of IR. `--print-share` runs with another
`codegen.split.PRINT_SHARE`. A stage the code does not have is left out, so the total also times
older code.
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import threading
import time
from collections import defaultdict

os.environ["TINYCOMP_CACHE"] = "0"

import numpy as np  # noqa: E402 - the cache switch above must come first

import tinycomp as tc  # noqa: E402
from tinycomp import driver  # noqa: E402
from tinycomp.bench.models import get_model  # noqa: E402
from tinycomp.codegen import module as codegen_module  # noqa: E402
from tinycomp.codegen import split  # noqa: E402
from tinycomp.runtime import engine  # noqa: E402

# Older code compiled every part after the build (`_emit_in_parts`); since the twenty-seventh session
# parts are cut and compiled while the IR is built (`PartPipeline`), and only the rest after it.
STAGES = [(driver, "optimized_graph", "tracing and passes"),
          (codegen_module, "_emit_module", "building the IR (and cutting parts meanwhile)"),
          (split, "_read_ir", "reading it into parts"), (engine, "_emit_in_parts", "printing and compiling the parts"),
          (getattr(engine, "PartPipeline", None), "objects", "printing and compiling the rest"),
          (engine.JitEngine, "__init__", "the engine in all")]  # since PartPipeline: loading the objects


def timed(owner, name: str, key: str, times: dict[str, list[float]]) -> None:
    """Record each call of owner.name under `key` (nothing if the code has no such stage)."""
    real = getattr(owner, name, None)
    if real is None:
        return

    @functools.wraps(real)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            times[key].append((time.perf_counter() - start) * 1e3)
    setattr(owner, name, wrapper)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?", default="mlp")
    ap.add_argument("--compiles", type=int, default=12)
    ap.add_argument("--print-share", type=float, default=None)
    args = ap.parse_args()
    if args.print_share is not None and hasattr(engine, "split_ir_module"):
        engine.split_ir_module = functools.partial(split.split_ir_module, print_share=args.print_share)
        engine.PRINT_SHARE = args.print_share  # the rest of a module parts were cut from (`PartPipeline`)
    times: dict[str, list[float]] = defaultdict(list)
    for owner, name, key in STAGES:
        timed(owner, name, key, times)
    events: list[tuple[str, str, float, int]] = []
    real_part = getattr(engine, "_compile_part", None)
    if real_part is not None:
        def compile_part(text, *rest):
            who = threading.current_thread()
            who = "main" if who is threading.main_thread() else who.name.rsplit("-", 1)[-1]
            events.append((who, "starts", time.perf_counter(), text.count("\n")))
            try:
                return real_part(text, *rest)
            finally:
                events.append((who, "ends", time.perf_counter(), 0))
        engine._compile_part = compile_part

    bench = get_model(args.model)
    model = bench.build(0)
    totals, timeline = [], []
    for _ in range(args.compiles):
        gc.collect()
        events.clear()
        start = time.perf_counter()
        compiled = tc.compile(model, input_shape=(None, *bench.in_shape))
        totals.append((time.perf_counter() - start) * 1e3)
        timeline = [(who, what, (t - start) * 1e3, lines) for who, what, t, lines in events]
        del compiled
    skip = min(2, args.compiles - 1)
    share = f", PRINT_SHARE {args.print_share}" if args.print_share is not None else ""
    print(f"{args.model}: cold compile, median of compiles {skip + 1}-{args.compiles}: "
          f"{np.median(totals[skip:]):.1f} ms{share}")
    for _, _, key in STAGES:
        if times[key]:
            print(f"  {key}: {np.median(times[key][skip:]):.1f} ms")
    if timeline:
        print("  the last compile's parts: " + "; ".join(
            f"{who} {what} at {t:.1f}" + (f" ({lines} lines)" if lines else "") for who, what, t, lines in timeline))


if __name__ == "__main__":
    main()
