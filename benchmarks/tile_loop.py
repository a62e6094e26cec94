"""What the GEMM's 6 x 4 register tile can reach on this core, by where its operands come from.

    PYTHONPATH=. python benchmarks/tile_loop.py

One llvmlite loop per variant, with the main tile's instructions per step: 4 vector loads of a B
row, 6 broadcasts of A and 24 FMAs into 24 accumulators (`gemm_kernels._k_run` without the tile
kernel's call, masks set-up and epilogue). Variants:
- B rows from a 32 KB block (L1) or a 256 KB one (L2), with plain or masked loads (all lanes on:
  the instruction is what differs);
- A's six rows fixed in L1, or streaming through 40 tiles as the row tiles of a batch do.
Prints the best of 30 runs in GFLOP/s and as a fraction of the bench's FMA peak (`tinycomp.bench.peak`).
"""

from __future__ import annotations

import ctypes
import time

import numpy as np
from llvmlite import ir

from tinycomp.bench.peak import measure_fma_peak
from tinycomp.codegen.cgutils import splat_value
from tinycomp.runtime.engine import JitEngine

F32 = ir.FloatType()
V = ir.VectorType(F32, 16)
I32, I64 = ir.IntType(32), ir.IntType(64)
ROWS, VECTORS = 6, 4
STEPS = 200_000
B_ROWS = {"L1": 128, "L2": 1024}  # rows of 64 floats: 32 KB and 256 KB
A_LD = 256  # floats between A's rows (a K = 256 block; with 128 the in-L1 case read 0.44 of the peak here)


def c64(v: int) -> ir.Constant:
    return ir.Constant(I64, v)


def build(b_block: str, masked: bool, a_stream: bool) -> str:
    m = ir.Module()
    fma = ir.Function(m, ir.FunctionType(V, [V, V, V]), "llvm.fma.v16f32")
    mload = ir.Function(m, ir.FunctionType(V, [ir.PointerType(V), I32, ir.VectorType(ir.IntType(1), 16), V]),
                        "llvm.masked.load.v16f32.p0")
    fn = ir.Function(m, ir.FunctionType(ir.VoidType(), [I64, ir.PointerType(F32), ir.PointerType(F32),
                                                         ir.PointerType(F32)]), "loop")
    n, a, b, out = fn.args
    entry, body, done = (fn.append_basic_block(x) for x in ("entry", "body", "done"))
    bl = ir.IRBuilder(entry)
    # a run-time mask with every lane on, so that the masked loads stay masked loads
    lanes = ir.VectorType(I64, 16)
    mask = bl.icmp_signed("<", ir.Constant(lanes, list(range(16))), splat_value(bl, n, lanes))
    bl.branch(body)
    bl.position_at_end(body)
    i = bl.phi(I64)
    acc = [bl.phi(V) for _ in range(ROWS * VECTORS)]
    i.add_incoming(c64(0), entry)
    for x in acc:
        x.add_incoming(ir.Constant(V, [0.0] * 16), entry)
    b_row = bl.gep(b, [bl.mul(bl.and_(i, c64(B_ROWS[b_block] - 1)), c64(64))])
    b_at = [bl.bitcast(bl.gep(b_row, [c64(16 * v)]), ir.PointerType(V)) for v in range(VECTORS)]
    bv = [bl.call(mload, [p, ir.Constant(I32, 4), mask, ir.Constant(V, [0.0] * 16)]) if masked
          else bl.load(p, align=4) for p in b_at]
    k = bl.and_(i, c64(A_LD - 1))
    tile = bl.urem(bl.lshr(i, c64(8)), c64(40)) if a_stream else c64(0)
    new = []
    for r in range(ROWS):
        s = bl.load(bl.gep(a, [bl.add(bl.mul(tile, c64(ROWS * A_LD)), bl.add(c64(r * A_LD), k))]))
        sv = splat_value(bl, s, V)
        new += [bl.call(fma, [sv, bv[v], acc[r * VECTORS + v]]) for v in range(VECTORS)]
    nxt = bl.add(i, c64(1))
    i.add_incoming(nxt, body)
    for x, y in zip(acc, new, strict=True):
        x.add_incoming(y, body)
    bl.cbranch(bl.icmp_signed("<", nxt, n), body, done)
    bl.position_at_end(done)
    total = new[0]
    for y in new[1:]:
        total = bl.fadd(total, y)
    bl.store(total, bl.bitcast(out, ir.PointerType(V)), align=4)
    bl.ret_void()
    return str(m)


def gflops(llvm_ir: str) -> float:
    engine = JitEngine(llvm_ir, speed_level=0)
    run = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)(
        engine.address("loop"))
    a = np.full(40 * ROWS * A_LD, 1e-3, np.float32)
    b = np.full(64 * max(B_ROWS.values()), 1e-3, np.float32)
    out = np.zeros(16, np.float32)
    _timed(run, a, b, out)  # warm-up: the first AVX-512 loop of a process may run at a lower clock
    best = min(_timed(run, a, b, out) for _ in range(30))
    return 2 * 16 * ROWS * VECTORS * STEPS / best / 1e9


def _timed(run, a, b, out) -> float:
    t0 = time.perf_counter()
    run(STEPS, a.ctypes.data, b.ctypes.data, out.ctypes.data)
    return time.perf_counter() - t0


def main() -> None:
    peak = measure_fma_peak()["gflops"]
    print(f"FMA peak {peak:.1f} GFLOP/s (tinycomp.bench.peak)")
    for b_block in B_ROWS:
        for a_stream in (False, True):
            for masked in (False, True):
                g = gflops(build(b_block, masked, a_stream))
                print(f"B in {b_block}, A {'streaming' if a_stream else 'in L1':9}, "
                      f"{'masked' if masked else 'plain':6} loads: {g:6.1f} GFLOP/s  {g / peak:.2f} of peak")


if __name__ == "__main__":
    main()
