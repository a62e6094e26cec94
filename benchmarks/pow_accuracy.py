"""Accuracy of `x ** c`'s float64 value before its rounding to float32 (codegen/vecpow.py).

    PYTHONPATH=. python benchmarks/pow_accuracy.py [--count 4194304] [--exponents 3.7,-1.3,...]

The float32 result is correctly rounded (`vecpow.MAX_ULP`, 0.5 + 2**-20 ulp) while the float64
value it is rounded from errs by less than 2**-44 relative. For each exponent this draws x
log-uniformly over the inputs whose power is a normal float32 (and a quarter more within 3 % of 1),
runs the general power (`vecpow._general_power`: exp(c log x)) in float64 lanes of width 16, and
prints the worst relative error against NumPy's long double power (x86's 64-bit mantissa), for the
AVX-512 table form and for the series form every other target takes (`vecmath.AVX512_FORMS`).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys

import numpy as np
from llvmlite import ir

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "codegen"))
from jit_util import jit, new_module  # noqa: E402

from tinycomp.codegen import vecmath, vecpow  # noqa: E402
from tinycomp.codegen.cgutils import for_range  # noqa: E402

F32, F64, I64 = ir.FloatType(), ir.DoubleType(), ir.IntType(64)
WIDTH = 16
EXPONENTS = (3.7, -1.3, 100.5, 2.2, -7.3, 37.25, 1000.3, 0.3, 1 / 3, 10000.5, 2.0**30 + 0.5)


def power_kernel(c: float, table: bool):
    """(engine, `void k(i64 n, float *x, double *out)`): x ** c in float64 for n a multiple of WIDTH."""
    saved, vecmath.AVX512_FORMS = vecmath.AVX512_FORMS, table
    try:
        module = new_module("pow_accuracy")
        fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [I64, ir.PointerType(F32), ir.PointerType(F64)]), "k")
        n, x, out = fn.args
        b = ir.IRBuilder(fn.append_basic_block())
        with for_range(b, 0, n, step=WIDTH) as loop:
            xs = b.load(b.bitcast(b.gep(x, [loop.index]), ir.PointerType(ir.VectorType(F32, WIDTH))), align=4)
            result = vecpow._general_power(b, b.fpext(xs, ir.VectorType(F64, WIDTH)), c)
            b.store(result, b.bitcast(b.gep(out, [loop.index]), ir.PointerType(ir.VectorType(F64, WIDTH))), align=8)
        b.ret_void()
        engine, addresses = jit(module, "k")
    finally:
        vecmath.AVX512_FORMS = saved
    return engine, ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p)(addresses["k"])


def inputs(c: float, count: int, rng) -> np.ndarray:
    """x log-uniform where |c log x| < 87 (capped at |log x| < 80), and a quarter more near 1."""
    limit = min(87.0 / abs(c), 80.0)
    x = np.concatenate([np.exp(rng.uniform(-limit, limit, count)), 1 + rng.uniform(-0.03, 0.03, count // 4)])
    return x.astype(np.float32)[: (x.size // WIDTH) * WIDTH]


def worst_relative_error(c: float, x: np.ndarray, table: bool) -> float:
    engine, kernel = power_kernel(c, table)
    out = np.empty(x.size, np.float64)
    kernel(x.size, x.ctypes.data, out.ctypes.data)
    del engine
    with np.errstate(over="ignore", under="ignore"):
        ref = np.power(x.astype(np.longdouble), np.longdouble(c))
    normal = (ref >= 2.0**-126) & (ref < 2.0**128)
    return float(np.max(np.abs((out[normal] - ref[normal]) / ref[normal])))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=1 << 22)
    p.add_argument("--exponents", default=",".join(repr(c) for c in EXPONENTS))
    args = p.parse_args(argv)
    rng = np.random.default_rng(1)
    print(f"{'c':>14} {'table':>10} {'series':>10}   (worst relative error, log2)")
    for c in (float(v) for v in args.exponents.split(",")):
        x = inputs(c, args.count, rng)
        worst = [worst_relative_error(c, x, table) for table in (True, False)]
        print(f"{c:>14g} {np.log2(worst[0]):10.1f} {np.log2(worst[1]):10.1f}")


if __name__ == "__main__":
    main()
