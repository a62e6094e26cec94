"""Exhaustive accuracy of the vector math kernels: every float32 input, against float64.

    PYTHONPATH=. python benchmarks/vecmath_ulp.py [--functions exp,sigmoid,tanh,gelu] [--stride 1] [--polynomial]

For each function, runs the width-16 kernel (tests/codegen/test_vecmath.py's map kernel; every
width computes the same lanes) over all 2**32 bit patterns (or every --stride-th one) and compares
with the float64 reference of the same formula (test_vecmath.reference). On an AVX-512 host
sigmoid, tanh and gelu take exp's table form, sigmoid and gelu their quotient from vrcp14ps and exp
its scaling from vscalefps (`vecmath.AVX512_FORMS`); --polynomial checks the portable forms every
other target takes.
Reports the worst error in ulp where the reference is a normal float32, the worst error in units
of 2**-149 where it is subnormal, and how many non-finite or signed-zero
results differ from the reference rounded to float32. Takes 3-5 minutes per function on one core;
the worst cases it found are quoted in `tinycomp/codegen/vector_ops.py`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "codegen"))
from jit_util import emit_map_kernel, jit, new_module, run_map  # noqa: E402
from test_vecmath import emitter, reference  # noqa: E402

from tinycomp.codegen import vecmath  # noqa: E402

FUNCS = ("exp", "sigmoid", "tanh", "gelu")

CHUNK = 1 << 22
TINY = 2.0**-149


def errors(got: np.ndarray, ref: np.ndarray) -> tuple[float, float, int, np.ndarray]:
    """(worst ulp over normal results, worst error / 2**-149 over subnormal ones, special
    mismatches, per-element ulp error for the normal results (nan elsewhere))."""
    with np.errstate(over="ignore"):
        ref32 = ref.astype(np.float32)
    finite = np.isfinite(ref32)
    special_bad = (~finite & ~((got == ref32) | (np.isnan(got) & np.isnan(ref32)))).sum()
    zero = finite & (ref32 == 0)
    special_bad += (zero & ((got != 0) | (np.signbit(got) != np.signbit(ref32)))).sum()
    normal = finite & (np.abs(ref) >= 2.0**-126)
    _, exponent = np.frexp(np.abs(ref[normal]))
    with np.errstate(invalid="ignore"):
        ulp = np.abs(got[normal].astype(np.float64) - ref[normal]) / np.ldexp(1.0, exponent - 24)
        sub = finite & ~normal & ~zero
        sub_err = np.abs(got[sub].astype(np.float64) - ref[sub]) / TINY
    per = np.full(ref.shape, np.nan)
    per[normal] = ulp
    return (float(np.nanmax(ulp, initial=0.0)), float(np.nanmax(sub_err, initial=0.0)),
            int(special_bad), per)


def scan(address: int, name: str, stride: int) -> None:
    worst = (0.0, None)
    worst_sub, bad, count, t0 = 0.0, 0, 0, time.perf_counter()
    for start in range(0, 1 << 32, CHUNK * stride):
        bits = np.arange(start, min(1 << 32, start + CHUNK * stride), stride, dtype=np.uint64)
        x = bits.astype(np.uint32).view(np.float32)
        got = run_map(address, x, 16)
        with np.errstate(invalid="ignore"):  # signalling NaN inputs warn when widened to float64
            ref = reference(name, x)
        ulp, sub, nbad, per = errors(got, ref)
        count += x.size
        bad += nbad
        worst_sub = max(worst_sub, sub)
        if ulp > worst[0]:
            worst = (ulp, float(x[int(np.nanargmax(per))]))
    print(f"{name:8s} {count:>13,d} inputs: max {worst[0]:.4f} ulp (x = {worst[1]!r}) where the result is "
          f"normal; max {worst_sub:.3f} x 2**-149 where subnormal; {bad} special-value mismatches "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--functions", default="exp,sigmoid,tanh,gelu")
    p.add_argument("--stride", type=int, default=1, help="test every stride-th bit pattern")
    p.add_argument("--polynomial", action="store_true", help="force the polynomial form of exp's reduction")
    args = p.parse_args()
    names = args.functions.split(",")
    unknown = set(names) - set(FUNCS)
    if unknown or args.stride < 1:
        raise SystemExit(f"--functions takes {', '.join(FUNCS)}; --stride >= 1 (got {args.functions}, {args.stride})")
    vecmath.AVX512_FORMS = not args.polynomial
    module = new_module("vecmath_ulp")
    for name in names:
        emit_map_kernel(module, name, 16, emitter(name))
    engine, addresses = jit(module, *names)
    for name in names:
        scan(addresses[name], name, args.stride)
    del engine


if __name__ == "__main__":
    main()
