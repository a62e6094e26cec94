"""What printing a bench model's LLVM module costs: our printer (`codegen.ir_text.module_text`)
against llvmlite's `str(module)`.

    python benchmarks/print_cost.py [model ...] [--rounds N]

For each model (`tinycomp.bench.models`, default mlp and block) builds its module afresh before
every print (llvmlite keeps an instruction's text once printed, so a second print of one module
times nothing), alternates the two printers N times (default 15), each with the garbage collector
off as during a compile, checks that both wrote the same text, and prints the medians in ms.
"""

from __future__ import annotations

import argparse
import gc
import os
import time

os.environ["TINYCOMP_CACHE"] = "0"

import numpy as np  # noqa: E402 - the cache switch above must come first

from tinycomp.bench.models import get_model  # noqa: E402
from tinycomp.codegen.ir_text import module_text  # noqa: E402
from tinycomp.codegen.module import lowered_module  # noqa: E402
from tinycomp.codegen.target import host  # noqa: E402
from tinycomp.frontend.tracer import trace  # noqa: E402
from tinycomp.ir.passes import run_pipeline  # noqa: E402

PRINTERS = {"ir_text": module_text, "llvmlite": str}


def print_once(g, printer) -> tuple[float, str, int]:
    """(ms, text, instructions) of one print of g's freshly built module."""
    with lowered_module(g, host().vector_width) as (_, module):
        instructions = sum(len(b.instructions) for f in module.functions for b in f.blocks)
        gc.collect()
        gc.disable()
        try:
            start = time.perf_counter()
            text = printer(module)
            return (time.perf_counter() - start) * 1e3, text, instructions
        finally:
            gc.enable()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="*", default=["mlp", "block"])
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    for name in args.models:
        bench = get_model(name)
        g = run_pipeline(trace(bench.build(0), (None, *bench.in_shape)))
        times: dict[str, list[float]] = {p: [] for p in PRINTERS}
        for _ in range(args.rounds):
            texts = []
            for key, printer in PRINTERS.items():
                ms, text, instructions = print_once(g, printer)
                times[key].append(ms)
                texts.append(text)
            if texts[0] != texts[1]:
                raise SystemExit(f"{name}: ir_text and llvmlite printed different text")
        ours, theirs = (float(np.median(times[p])) for p in PRINTERS)
        print(f"{name}: {instructions} instructions; ir_text {ours:.1f} ms, llvmlite {theirs:.1f} ms "
              f"({ours / theirs:.2f} x), the same text")


if __name__ == "__main__":
    main()
