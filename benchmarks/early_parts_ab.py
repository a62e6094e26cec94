"""Cold compiles with parts cut while the module is built (`runtime.engine.PartPipeline`) against
the schedule before it, paired in one process.

    python benchmarks/early_parts_ab.py [model ...] [--rounds N]

A model is a bench model (`tinycomp.bench.models`, default mlp, block and lnmlp) or `deep:N`, N
TransformerBlock(64, 4)s in a Sequential as in `deep_compile.py`. Each round compiles it twice with
the disk cache off, each after `gc.collect()`: once with `engine.EARLY_PART_LINES` so large that no
part is cut before the module is built (the old schedule: the whole module split and printed after
it), once as the code stands, in alternating order; the first round is not counted. On these shared
hosts the time of one compile moves by a third within minutes, so the figure to read is the median
of each round's ratio (pipelined / old), not of the times.
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


def paired(name: str, rounds: int) -> tuple[float, float, float]:
    """(median ms of the old schedule, of the pipelined one, median of their ratio per round)."""
    model, input_shape = model_of(name)
    current = engine.EARLY_PART_LINES
    times: dict[int, list[float]] = {NEVER: [], current: []}
    try:
        for r in range(rounds + 1):
            for lines in ((NEVER, current) if r % 2 else (current, NEVER)):
                ms = compile_ms(model, input_shape, lines)
                if r:
                    times[lines].append(ms)
    finally:
        engine.EARLY_PART_LINES = current
    old, new = np.array(times[NEVER]), np.array(times[current])
    return float(np.median(old)), float(np.median(new)), float(np.median(new / old))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="*", default=["mlp", "block", "lnmlp"])
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    for name in args.models:
        old, new, ratio = paired(name, args.rounds)
        print(f"{name}: old schedule {old:.1f} ms, parts cut while building {new:.1f} ms, "
              f"paired ratio {ratio:.3f} ({args.rounds} rounds)")


if __name__ == "__main__":
    main()
