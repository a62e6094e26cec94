"""The reference MLP exported for every target: sizes, and a batch-1 call under each emulator.

    PYTHONPATH=. python benchmarks/export_emulators.py [--reps-scale 1.0]

Exports the reference MLP (README) for host, aarch64-linux-gnu, thumbv7em-none-eabihf and wasm32,
runs each through its harness (tests/export/runners.py: cc, qemu-aarch64, qemu-system-arm on
mps2-an386, Node), checks batch 1 and 7 against eager, then times REPEAT batch-1 calls inside the
harness (clock(); on the Cortex-M, semihosting's centisecond clock; in Node, hrtime). Prints object,
weights and scratch bytes, and us per call with its ratio to the host's: a sanity figure for the
emulators (qemu translates the target's code; it says nothing about real boards).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import tinycomp as tc  # noqa: E402
from tests.export.runners import TARGETS, missing_tools, run_export  # noqa: E402
from tinycomp.cli import reference_mlp  # noqa: E402
from tinycomp.nn import Tensor  # noqa: E402
from tinycomp.parity import check_parity, float64_reference  # noqa: E402

# batch-1 calls per run, so that each harness times about a second (Cortex-M: its clock ticks 10 ms)
REPEAT = {"host": 20000, "aarch64-linux-gnu": 2000, "thumbv7em-none-eabihf": 200, "wasm32": 10000}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps-scale", type=float, default=1.0, help="multiply every REPEAT by this")
    args = parser.parse_args()
    os.environ.setdefault("TINYCOMP_CACHE", "0")
    model = reference_mlp()
    model.eval()
    x = np.random.default_rng(0).standard_normal((7, 784)).astype(np.float32)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for target in TARGETS:
            if missing_tools(target):
                print(f"{target}: skipped, {', '.join(missing_tools(target))} not installed")
                continue
            folder = Path(tmp) / target
            result = tc.export(model, folder, input_shape=(None, 784), target=target)
            got = run_export(target, folder, x, [1, 7], repeat=max(1, int(REPEAT[target] * args.reps_scale)))
            graph = tc.trace(model, (None, 784))
            for batch in (1, 7):
                report = check_parity(got[batch], model(Tensor(x[:batch])).data, float64_reference(graph, x[:batch]))
                assert report.ok, f"{target} batch {batch}: {report}"
            rows.append((target, result.object_bytes, result.weights_bytes, result.scratch_bytes(1),
                         got["us_per_call"]))
    host_us = next((r[4] for r in rows if r[0] == "host"), None)
    print(f"{'target':<24}{'object B':>10}{'weights B':>11}{'scratch B':>10}{'us/call':>11}{'x host':>9}")
    for target, obj, weights, scratch, us in rows:
        ratio = f"{us / host_us:>9.1f}" if host_us else ""
        print(f"{target:<24}{obj:>10,}{weights:>11,}{scratch:>10,}{us:>11.1f}{ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
