"""Worst ulp error of our vector exp, sigmoid, tanh and both GELUs, exported to each target and run there.

    PYTHONPATH=. python benchmarks/export_ulp.py [--targets host,wasm32] [--points 1048576]

Exports `tests/export/test_export_accuracy.Functions` (every function of one (N, 64) input, stacked)
for each target, runs it through its harness (tests/export/runners.py: cc, qemu-aarch64,
qemu-system-arm, node) on `--points` inputs over the functions' interesting ranges (uniform over
[-14.3, 4] and [-60, 20], and the test's sweep; CHUNK_ROWS rows a run), and prints the largest error against float64 in
float32 ulps of the reference, where the reference is a normal float32 (the bounds' domain).
WebAssembly has no fused multiply-add: its column shows what `vecmath.two_product` keeps.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import tinycomp as tc  # noqa: E402
from tests.export.runners import TARGETS, build, missing_tools, run_export  # noqa: E402
from tests.export.test_export_accuracy import FUNCTIONS, WIDTH, Functions, _inputs, _reference, _ulps  # noqa: E402

CHUNK_ROWS = 1024  # rows per run: the Cortex-M board's 4 MB hold a run's input, output and scratch


def sweep(points: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    x = np.concatenate([_inputs().ravel(), rng.uniform(-14.3, 4, points // 2), rng.uniform(-60, 20, points // 2)])
    x = x.astype(np.float32)
    return x[: len(x) // WIDTH * WIDTH].reshape(-1, WIDTH)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--points", type=int, default=1 << 20)
    args = parser.parse_args()
    x = sweep(args.points)
    print(f"{x.size:,} points; worst ulp against float64")
    print(f"{'target':>24} " + " ".join(f"{name:>9}" for name in FUNCTIONS))
    for target in args.targets.split(","):
        if missing_tools(target):
            print(f"{target:>24} skipped: needs {', '.join(missing_tools(target))}")
            continue
        with tempfile.TemporaryDirectory() as folder:
            tc.export(Functions(), Path(folder), input_shape=(None, WIDTH), target=target)
            command = build(target, Path(folder))
            got = np.concatenate([run_export(target, Path(folder), part, [len(part)], command=command)[len(part)]
                                  for part in np.array_split(x, -(-len(x) // CHUNK_ROWS))])
            got = got.reshape(len(x), len(FUNCTIONS), WIDTH)
        worst = [_ulps(got[:, i], _reference(name, x)).max() for i, name in enumerate(FUNCTIONS)]
        print(f"{target:>24} " + " ".join(f"{u:9.2f}" for u in worst))


if __name__ == "__main__":
    main()
