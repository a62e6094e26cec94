"""Scratch benchmark: the tinycomp GEMM kernel vs np.matmul (BLAS pinned to one thread).

    PYTHONPATH=. python benchmarks/gemm_micro.py [--quick]

Prints GFLOP/s per (K, N, M) and the compile time of the reference MLP's three layers. Ours and
NumPy are timed interleaved, round-robin over all sizes of a layer (one W per layer, as in a model),
and reported as min and median of the rounds: on a shared, noisy machine the two move together.
"""

from __future__ import annotations

import ctypes
import sys
import time

import numpy as np
from llvmlite import ir
from threadpoolctl import threadpool_limits

from tinycomp.codegen.gemm import emit_linear, pack_floats
from tinycomp.codegen.target import CacheLimits, host
from tinycomp.runtime.engine import JitEngine

LINEAR_SIG = ctypes.CFUNCTYPE(None, ctypes.c_int64, *[ctypes.c_void_p] * 5)
MLP = [(784, 256, "relu"), (256, 128, "relu"), (128, 10, None)]
# Narrow heads (N < 16: the dot-product path), the sizes of the narrow-N accuracy fix.
NARROW = [(K, N, "relu") for K in (64, 784) for N in (1, 2, 3)]
# Widths that are not a multiple of 4 vectors: the 8x3 tile (37: the `odd` model's first layer,
# its tanh epilogue timed against NumPy's matmul + bias + tanh) and the 6-row tail panels (100 =
# 4 + 3 vectors, 257 = 16 + 1).
ODD = [(100, 37, "tanh"), (1024, 100, None), (784, 257, None)]


ALIASED_MAX_ROWS = host().aliased_direct_max_rows  # a constant gemm_ab.py may vary


def build(layers, width):
    """The layers as `tc.compile` plans them on this host (its `aliased_direct_max_rows`)."""
    mod = ir.Module(name="bench")
    for i, (K, N, act) in enumerate(layers):
        emit_linear(mod, f"lin{i}", K=K, N=N, bias=True, activation=act, width=width,
                    cache=CacheLimits(ALIASED_MAX_ROWS, host().l2_bytes))
    return str(mod)


def compile_layers(layers, width):
    t0 = time.perf_counter()
    text = build(layers, width)
    t1 = time.perf_counter()
    eng = JitEngine(text)
    t2 = time.perf_counter()
    fns = [LINEAR_SIG(eng.address(f"lin{i}")) for i in range(len(layers))]
    return eng, fns, (t1 - t0, t2 - t1, len(text))


def median_time(f, min_time=0.05, reps=7):
    f()
    n, t = 1, 0.0
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            f()
        t = time.perf_counter() - t0
        if t > min_time / reps:
            break
        n *= 2
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(n):
            f()
        samples.append((time.perf_counter() - t0) / n)
    return float(np.median(samples))


def compare(fns, rounds=15, target_s=2e-4):
    """Time several callables interleaved; (min, median) seconds per call of each."""
    return min_median(compare_samples(fns, rounds, target_s))


def min_median(samples: list[list[float]]) -> list[tuple[float, float]]:
    """(min, median) of each callable's samples."""
    return [(min(s), float(np.median(s))) for s in samples]


def compare_samples(fns, rounds=15, target_s=2e-4) -> list[list[float]]:
    """Time several callables interleaved: each one's seconds per call, round by round (the same
    round of two callables met the shared host in about the same state)."""
    counts = []
    for f in fns:
        n = 1
        while True:
            t0 = time.perf_counter()
            for _ in range(n):
                f()
            if time.perf_counter() - t0 > target_s:
                break
            n *= 2
        counts.append(n)
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(rounds):
        for f, n, out in zip(fns, counts, samples, strict=True):
            t0 = time.perf_counter()
            for _ in range(n):
                f()
            out.append((time.perf_counter() - t0) / n)
    return samples


def bench_layer(fn, K, N, Ms, width, rng, act=None):
    """Rows of (M, ours GF/s, numpy GF/s, ours us, numpy us), medians, ours checked first. NumPy
    times the matmul alone, except for tanh: matmul + bias + tanh, in place."""
    W = rng.standard_normal((K, N), dtype=np.float32)
    B = rng.standard_normal(N, dtype=np.float32)
    P = np.empty(pack_floats(K, N, width), np.float32)
    fns, keep = [], []
    for M in Ms:
        A = rng.standard_normal((M, K), dtype=np.float32)
        C = np.empty((M, N), np.float32)
        out = np.empty((M, N), np.float32)
        keep += [A, C, out]
        ptrs = [a.ctypes.data for a in (A, W, B, C, P)]
        fn(M, *ptrs)
        np.matmul(A, W, out=out)
        if act == "tanh":
            assert np.allclose(C, np.tanh(out + B), atol=1e-3, rtol=1e-3), (K, N, M)

            def theirs(A=A, out=out):
                np.matmul(A, W, out=out)
                np.add(out, B, out=out)
                np.tanh(out, out=out)
        else:
            assert np.allclose(C, out + B, atol=1e-3, rtol=1e-3) or np.allclose(
                C, np.maximum(out + B, 0), atol=1e-3, rtol=1e-3), (K, N, M)

            def theirs(A=A, out=out):
                np.matmul(A, W, out=out)
        fns += [lambda M=M, ptrs=ptrs: fn(M, *ptrs), theirs]
    res = compare(fns)
    rows = []
    for i, M in enumerate(Ms):
        ours, theirs = res[2 * i][1], res[2 * i + 1][1]
        flops = 2.0 * M * K * N
        rows.append((M, flops / ours / 1e9, flops / theirs / 1e9, ours * 1e6, theirs * 1e6))
    return rows


def main() -> None:
    quick = "--quick" in sys.argv
    width = host().vector_width
    _, _, (t_ir, t_jit, size) = compile_layers(MLP, width)
    print(f"MLP 3 layers: IR build {t_ir * 1e3:.1f} ms, JIT {t_jit * 1e3:.1f} ms, {size} chars")
    shapes = MLP + ([] if quick else [(1024, 1024, None), (128, 128, None), *NARROW, *ODD])
    eng, fns, _ = compile_layers(shapes, width)  # keep eng alive: addresses die with it
    rng = np.random.default_rng(0)
    Ms = [1, 2, 4, 8, 32, 128] if quick else [1, 2, 3, 4, 5, 8, 32, 64, 128, 512, 2048]
    print(f"{'K':>5} {'N':>5} {'M':>5} {'ours GF/s':>10} {'numpy GF/s':>10} {'ours us':>9} {'numpy us':>9}")
    with threadpool_limits(1):
        for fn, (K, N, act) in zip(fns, shapes, strict=True):
            for M, g, gn, t, tn in bench_layer(fn, K, N, Ms, width, rng, act):
                print(f"{K:5d} {N:5d} {M:5d} {g:10.1f} {gn:10.1f} {t:9.1f} {tn:9.1f}")


if __name__ == "__main__":
    main()
