"""The core's clock under a GEMM against under the FMA-peak loop, and FLOP per cycle for both.

    PYTHONPATH=. python benchmarks/gemm_clock.py [--rounds 7] [--seconds 0.2] [--shape 2048,1024,1024]

The bench's "% of the FMA peak" divides by GFLOP/s of a loop of register-only FMAs. A GEMM also
loads, stores and moves data, which draws more power, and a turbo clock drops with power: per cycle
the GEMM may then be closer to the hardware's limit than the ratio of GFLOP/s says. Each round runs
the peak loop (`tinycomp.bench.peak`) for `--seconds`, timing it, and right after it times a chain
of 100 dependent register adds (one cycle each): the clock the core was left at. Then the same for
a compiled `Linear` (no bias) of `--shape` (M, K, N) through its raw native call. Prints the medians
over the rounds: GHz after each, GFLOP/s of each, and FLOP per cycle (the hardware's limit on a
core with two 512-bit FMA pipes: 64).
"""

from __future__ import annotations

import argparse
import ctypes
import time

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir
from threadpoolctl import threadpool_limits

import tinycomp
from tinycomp.bench.peak import ACCUMULATORS, _fma_loop_ir
from tinycomp.bench.runner import bare_native_call
from tinycomp.codegen.target import host
from tinycomp.nn import Linear, Tensor
from tinycomp.runtime.engine import JitEngine

CHAIN = 100  # dependent adds per loop iteration: `add r, r` (not `add r, 1`, which a core may fold away)
CHAIN_ITERS = 2000  # ~200,000 cycles: well under a millisecond, before the clock can move


def chain_function():
    """`i64 chain(i64 n)`: n x CHAIN dependent one-cycle adds."""
    llvm.initialize_native_asmparser()  # the inline assembly below is parsed by LLVM's x86 parser
    i64 = ir.IntType(64)
    mod = ir.Module(name="chain")
    fn = ir.Function(mod, ir.FunctionType(i64, [i64]), "chain")
    entry, loop, done = (fn.append_basic_block(n) for n in ("entry", "loop", "done"))
    b = ir.IRBuilder(entry)
    b.branch(loop)
    b.position_at_end(loop)
    i, x = b.phi(i64), b.phi(i64)
    adds = ir.InlineAsm(ir.FunctionType(i64, [i64]), "\n".join(["addq $0, $0"] * CHAIN), "=r,0")
    y = b.call(adds, [x])
    nxt = b.add(i, ir.Constant(i64, 1))
    i.add_incoming(ir.Constant(i64, 0), entry)
    i.add_incoming(nxt, loop)
    x.add_incoming(ir.Constant(i64, 1), entry)
    x.add_incoming(y, loop)
    b.cbranch(b.icmp_signed("<", nxt, fn.args[0]), loop, done)
    b.position_at_end(done)
    b.ret(y)
    engine = JitEngine(str(mod), speed_level=0)
    return engine, ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_int64)(engine.address("chain"))


def clock_ghz(chain) -> float:
    t0 = time.perf_counter()
    chain(CHAIN_ITERS)
    return CHAIN_ITERS * CHAIN / (time.perf_counter() - t0) / 1e9


def gflops_for(call, flops: float, seconds: float) -> float:
    """Run `call` back to back for `seconds`; its GFLOP/s."""
    calls, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        call()
        calls += 1
    return calls * flops / (time.perf_counter() - t0) / 1e9


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--seconds", type=float, default=0.2)
    p.add_argument("--shape", default="2048,1024,1024", help="M,K,N of the GEMM")
    args = p.parse_args(argv)
    if host().vector_width != 16 or not host().triple.startswith("x86_64"):
        raise SystemExit("written for an x86-64 host with AVX-512 (the chain is x86 assembly; 64 FLOP/cycle)")
    M, K, N = (int(v) for v in args.shape.split(","))
    _chain_engine, chain = chain_function()
    fma_engine = JitEngine(_fma_loop_ir(16), speed_level=0)
    fma = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_void_p)(fma_engine.address("fma_loop"))
    buf = (ctypes.c_float * 32)(*([1.0] * 16 + [0.999] * 16))
    fma_iters = 100_000
    rng = np.random.default_rng(0)
    a = rng.standard_normal((M, K), dtype=np.float32)
    lin = Linear(K, N, bias=False)
    lin.weight = Tensor(rng.standard_normal((K, N), dtype=np.float32) / np.sqrt(K))
    fast = tinycomp.compile(lin, input_shape=(None, K), threads=1)
    fast(a)
    fast(a)  # the second call leaves the parameter table for reuse
    gemm = bare_native_call(fast, a)
    assert gemm is not None
    rows: dict[str, list[tuple[float, float]]] = {"FMA loop": [], f"GEMM {M}x{K}x{N}": []}
    with threadpool_limits(1):
        for _ in range(args.rounds):
            g = gflops_for(lambda: fma(fma_iters, ctypes.addressof(buf)), fma_iters * ACCUMULATORS * 32, args.seconds)
            rows["FMA loop"].append((g, clock_ghz(chain)))
            g = gflops_for(gemm, 2.0 * M * K * N, args.seconds)
            rows[f"GEMM {M}x{K}x{N}"].append((g, clock_ghz(chain)))
    print(f"one thread, {args.rounds} rounds of {args.seconds} s each, medians (GHz: a chain of dependent adds "
          "timed right after)")
    for name, samples in rows.items():
        g, ghz = (float(np.median([s[i] for s in samples])) for i in (0, 1))
        per_cycle = float(np.median([s[0] / s[1] for s in samples]))
        print(f"{name:>22}: {g:6.1f} GFLOP/s at {ghz:.2f} GHz = {per_cycle:5.1f} FLOP/cycle "
              f"({per_cycle / 64:.2f} of 64)")


if __name__ == "__main__":
    main()
