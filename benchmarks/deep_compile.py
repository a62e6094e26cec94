"""Cold compile time of a deep model: N TransformerBlock(64, 4)s in a Sequential, cache off.

    PYTHONPATH=. python benchmarks/deep_compile.py [--blocks 25,100,200] [--repeat 3]

Each compile runs in a fresh process (no code or LLVM state carried over), input (None, 16, 64);
prints the median wall time of the compile and the time per block. LLVM's code generation of one
function grows faster than its length: entries of more than `codegen.entry_parts.PART_NODES` nodes run
them in parts, which this shows as time per block staying flat.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

CHILD = """
import os, time
os.environ["TINYCOMP_CACHE"] = "0"
import tinycomp as tc
from tinycomp.nn import Sequential, TransformerBlock
model = Sequential(*[TransformerBlock(64, 4) for _ in range({n})]).eval()
start = time.perf_counter()
tc.compile(model, input_shape=(None, 16, 64))
print(time.perf_counter() - start)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", default="25,100,200")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    print(f"{'blocks':>6} {'compile s':>10} {'ms / block':>10}")
    for n in (int(b) for b in args.blocks.split(",")):
        times = [float(subprocess.run([sys.executable, "-c", CHILD.format(n=n)], capture_output=True, text=True,
                                      check=True, env=env).stdout) for _ in range(args.repeat)]
        median = statistics.median(times)
        print(f"{n:>6} {median:10.2f} {1000 * median / n:10.1f}")


if __name__ == "__main__":
    main()
