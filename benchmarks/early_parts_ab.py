"""Cold compiles with parts cut while the module is built (`runtime.engine.PartPipeline`) against
the schedule before it, paired in one process.

    python benchmarks/early_parts_ab.py [model ...] [--rounds N] [--lines 500,250,1000]

A model is a bench model (`tinycomp.bench.models`, default mlp, block and lnmlp) or `deep:N`, N
TransformerBlock(64, 4)s in a Sequential as in `deep_compile.py`. Each round compiles it twice with
the disk cache off, each after `gc.collect()`: once with `engine.EARLY_PART_LINES` so large that no
part is cut before the module is built (the old schedule: the whole module split and printed after
it), once as the code stands, in alternating order; the first round is not counted. On these shared
hosts the time of one compile moves by a third within minutes, so the figure to read is the median
of each round's ratio (pipelined / old), not of the times. `--lines` compares values of
EARLY_PART_LINES instead, each against the first.
"""

from __future__ import annotations

import argparse
import gc
import os
import time

os.environ["TINYCOMP_CACHE"] = "0"

import numpy as np  # noqa: E402 - the cache switch above must come first

import tinycomp as tc  # noqa: E402
from tinycomp.bench.models import get_model  # noqa: E402
from tinycomp.nn import Sequential, TransformerBlock  # noqa: E402
from tinycomp.runtime import engine  # noqa: E402

# EARLY_PART_LINES that no module reaches: nothing is cut before it is built (tests/bench checks it)
NEVER = 10**9


def model_of(name: str) -> tuple[object, tuple]:
    """(model, input_shape) of a bench model's name or `deep:N`."""
    if name.startswith("deep:"):
        return Sequential(*[TransformerBlock(64, 4) for _ in range(int(name[5:]))]).eval(), (None, 16, 64)
    bench = get_model(name)
    return bench.build(0), (None, *bench.in_shape)


def compile_ms(model, input_shape: tuple, early_lines: int) -> float:
    engine.EARLY_PART_LINES = early_lines
    gc.collect()
    start = time.perf_counter()
    compiled = tc.compile(model, input_shape=input_shape)
    elapsed = (time.perf_counter() - start) * 1e3
    del compiled
    return elapsed


def paired(name: str, rounds: int, values: list[int] | None = None) -> list[tuple[int, float, float]]:
    """(EARLY_PART_LINES, median ms, median of its ratio per round to the first value's) for each of
    `values` (default: the old schedule, NEVER, then the code's own), each round in another order."""
    model, input_shape = model_of(name)
    current = engine.EARLY_PART_LINES
    values = values or [NEVER, current]
    times: dict[int, list[float]] = {v: [] for v in values}
    try:
        for r in range(rounds + 1):
            for lines in (values if r % 2 else values[::-1]):
                ms = compile_ms(model, input_shape, lines)
                if r:
                    times[lines].append(ms)
    finally:
        engine.EARLY_PART_LINES = current
    base = np.array(times[values[0]])
    return [(v, float(np.median(times[v])), float(np.median(np.array(times[v]) / base))) for v in values]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="*", default=["mlp", "block", "lnmlp"])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--lines", default=None,
                    help="EARLY_PART_LINES values to compare instead, the first the baseline (e.g. 500,250,1000)")
    args = ap.parse_args()
    values = [int(v) for v in args.lines.split(",")] if args.lines else None
    for name in args.models:
        results = paired(name, args.rounds, values)
        if values is None:
            (_, old, _), (_, new, ratio) = results
            print(f"{name}: old schedule {old:.1f} ms, parts cut while building {new:.1f} ms, "
                  f"paired ratio {ratio:.3f} ({args.rounds} rounds)")
        else:
            print(f"{name}: " + ", ".join(f"EARLY_PART_LINES {v}: {ms:.1f} ms, {ratio:.3f}" for v, ms, ratio in results)
                  + f" (paired ratios to {values[0]}, {args.rounds} rounds)")


if __name__ == "__main__":
    main()
