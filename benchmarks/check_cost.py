"""What `compile(model, check=True)` costs per call on the reference MLP, one thread, in one process.

check=True runs the eager model and a float64 run of the graph beside every compiled call; the
README and `tinycomp.compile`'s docstring quote the figures this prints.

    python benchmarks/check_cost.py [--batch 1,32,512] [--rounds 3]
"""

from __future__ import annotations

import argparse

from same_process import best_us  # the same alternating best-of timing as the engines' comparison
from threadpoolctl import threadpool_limits

import tinycomp as tc
from tinycomp.bench.models import MODELS
from tinycomp.checks import positive_ints, positive_number


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=positive_ints, default=[1, 32, 512], help="comma list of batch sizes")
    p.add_argument("--rounds", type=positive_number(int), default=3, help="turns per batch size")
    args = p.parse_args()
    threadpool_limits(1)
    model = MODELS["mlp"].build(0).eval()
    engines = {"compiled": tc.compile(model, input_shape=(None, 784), threads=1),
               "check=True": tc.compile(model, input_shape=(None, 784), threads=1, check=True)}
    print("batch  compiled us  check=True us  check / compiled")
    for batch in args.batch:
        x = MODELS["mlp"].sample(batch)
        for fn in engines.values():
            fn(x)
        t = best_us(engines, x, args.rounds)
        print(f"{batch:5d}  {t['compiled']:11.1f}  {t['check=True']:13.1f}  {t['check=True'] / t['compiled']:16.0f}")


if __name__ == "__main__":
    main()
