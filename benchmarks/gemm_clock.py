"""The core's clock under a GEMM against under the FMA-peak loop, and FLOP per cycle for both.

    PYTHONPATH=. python benchmarks/gemm_clock.py [--rounds 7] [--seconds 0.2] [--shape 2048,1024,1024]

The bench's "% of the FMA peak" divides by GFLOP/s of a loop of register-only FMAs. A GEMM also
loads, stores and moves data, which draws more power, and a turbo clock drops with power.
`tinycomp.bench.peak.measure_clocks` runs the peak loop and then a compiled `Linear` (no bias) of
`--shape` (M, K, N, through its raw native call) for `--seconds` each, `--rounds` times, and times
a chain of dependent register adds right after each: the clock each left the core at. The bench
does the same with the reference MLP at batch 2048 (`tinycomp bench`'s clock note); this script
takes any shape. Prints the medians: GFLOP/s, GHz after, FLOP per cycle (the FMA pipes' limit, 64
with two 512-bit pipes, read off the loop) and the most of the loop's GFLOP/s a GEMM at its clock
can reach.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from threadpoolctl import threadpool_limits

from tinycomp.bench.peak import clocks_measurable, measure_clocks

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vendor_gemm import scaled_weight, tinycomp_gemm_call  # noqa: E402 - the same GEMM as there


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--seconds", type=float, default=0.2)
    p.add_argument("--shape", default="2048,1024,1024", help="M,K,N of the GEMM")
    args = p.parse_args(argv)
    if not clocks_measurable():
        raise SystemExit("written for an x86-64 host with a constant-rate time stamp counter (the add chain)")
    M, K, N = (int(v) for v in args.shape.split(","))
    rng = np.random.default_rng(0)
    gemm = tinycomp_gemm_call(rng.standard_normal((M, K), dtype=np.float32), scaled_weight(rng, K, N))
    with threadpool_limits(1):
        c = measure_clocks(gemm, 2.0 * M * K * N, args.rounds, args.seconds)
    print(f"one thread, {args.rounds} rounds of {args.seconds} s each, medians ({c['method']})")
    limit = c["flop_per_cycle_limit"]
    for name, label in (("fma", "FMA loop"), ("gemm", f"GEMM {M}x{K}x{N}")):
        per_cycle = c[f"{name}_flop_per_cycle"]
        print(f"{label:>22}: {c[f'{name}_gflops']:6.1f} GFLOP/s at {c[f'{name}_ghz']:.2f} GHz = {per_cycle:5.1f} "
              f"FLOP/cycle ({per_cycle / limit:.2f} of {limit})")
    print(f"at its clock a GEMM reaches at most {c['gemm_clock_ratio']:.2f} of the loop's GFLOP/s")


if __name__ == "__main__":
    main()
