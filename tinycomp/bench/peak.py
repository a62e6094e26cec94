"""The measured single-core FMA peak (a tiny llvmlite loop of independent vector FMAs), and the
batch-1 floor: how long one core takes just to read a model's weights once.

16 independent `<W x float>` accumulators (W = the host's float32 lanes) hide the FMA latency on
both FMA pipes; each iteration does 16 x W x 2 FLOPs and nothing else. The best of a few timed runs
is the peak this core can sustain right now (it drops when the shared host is busy). The same loop
on every core at once gives the parallel efficiency: near 1.0 only when no other process holds a
core, which is what the all-cores rows of a benchmark need to mean anything.

At batch 1 every weight is read once per call and used for one multiply-add, so no engine can be
faster than reading them: `measure_weight_stream` times a loop that only loads and adds a buffer of
the weights' size, kept hot in cache by running it back to back.

Above batch 1 the bound is the peak itself, but a GEMM does not run at the peak loop's clock: it
also loads, stores and moves data, draws more power, and a turbo clock drops with power.
`measure_clocks` times a chain of dependent register adds (one cycle each) right after the peak loop
and right after a GEMM: the clock each left the core at. A GEMM doing the hardware's full FMAs per
cycle at its own clock reaches (its clock / the loop's) of the peak, and no more.
"""

from __future__ import annotations

import ctypes
import statistics
import threading
import time
from collections.abc import Callable

import llvmlite.binding as llvm
from llvmlite import ir

from ..codegen.target import host
from ..runtime.buffers import aligned_empty, data_pointer
from ..runtime.engine import JitEngine
from ..runtime.threads import available_cores

ACCUMULATORS = 16


F32, I64 = ir.FloatType(), ir.IntType(64)


def _loop_function(name: str, width: int, ints: int, blocks: tuple[str, ...]):
    """A module holding `void name(i64 x ints, ptr buf)`: (module, function, its blocks, vector type)."""
    mod = ir.Module(name=name)
    fn = ir.Function(mod, ir.FunctionType(ir.VoidType(), [I64] * ints + [ir.PointerType()]), name=name)
    return mod, fn, [fn.append_basic_block(block) for block in blocks], ir.VectorType(F32, width)


def _store_total(b: ir.IRBuilder, parts: list, buf: ir.Value, align: int) -> None:
    """Store the sum of the accumulators to buf (the loop's work is used: it cannot be dropped)."""
    total = parts[0]
    for v in parts[1:]:
        total = b.fadd(total, v)
    b.store(total, buf, align=align)
    b.ret_void()


def _fma_loop_ir(width: int) -> str:
    mod, fn, (entry, loop, done), vec = _loop_function("fma_loop", width, 1, ("entry", "loop", "done"))
    f32, i64 = F32, I64
    fma = ir.Function(mod, ir.FunctionType(vec, [vec, vec, vec]), name=f"llvm.fma.v{width}f32")
    n, buf = fn.args
    b = ir.IRBuilder(entry)
    a = b.load(buf, typ=vec, align=4)  # the ctypes buffer is only 4-byte aligned
    m = b.load(b.gep(buf, [ir.Constant(i64, width)], source_etype=f32), typ=vec, align=4)
    b.branch(loop)
    b.position_at_end(loop)
    i = b.phi(i64)
    accs = [b.phi(vec) for _ in range(ACCUMULATORS)]
    new = [b.call(fma, [acc, m, a]) for acc in accs]
    i_next = b.add(i, ir.Constant(i64, 1))
    b.cbranch(b.icmp_signed("<", i_next, n), loop, done)
    i.add_incoming(ir.Constant(i64, 0), entry)
    i.add_incoming(i_next, loop)
    for acc, nxt in zip(accs, new, strict=True):
        acc.add_incoming(a, entry)
        acc.add_incoming(nxt, loop)
    b.position_at_end(done)
    _store_total(b, new, buf, align=4)
    return str(mod)


def _fma_loop() -> tuple[JitEngine, Callable[[int], None], int]:
    """(engine, run(iterations), FLOPs per iteration) of the peak loop on a buffer of its own."""
    width = host().vector_width
    engine = JitEngine(_fma_loop_ir(width), speed_level=0)
    fn = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_void_p)(engine.address("fma_loop"))
    buf = (ctypes.c_float * (2 * width))(*([1.0] * width + [0.999] * width))

    def run(iterations: int) -> None:
        fn(iterations, ctypes.addressof(buf))

    run.keep = buf  # type: ignore[attr-defined]  # the buffer lives as long as the callable
    return engine, run, ACCUMULATORS * width * 2


def measure_fma_peak(seconds: float = 0.3) -> dict:
    """GFLOP/s of one core running nothing but FMAs (best of several ~20 ms runs)."""
    width = host().vector_width
    engine = JitEngine(_fma_loop_ir(width), speed_level=0)
    fn = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_void_p)(engine.address("fma_loop"))
    buf = (ctypes.c_float * (2 * width))(*([1.0] * width + [0.999] * width))
    iters = 1_000_000
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        fn(iters, ctypes.addressof(buf))
        dt = time.perf_counter() - t0
        best = max(best, iters * ACCUMULATORS * width * 2 / dt / 1e9)
    cores = available_cores()
    bufs = [(ctypes.c_float * (2 * width))(*([1.0] * width + [0.999] * width)) for _ in range(cores)]
    t0 = time.perf_counter()
    workers = [threading.Thread(target=fn, args=(iters, ctypes.addressof(b))) for b in bufs[1:]]
    for w in workers:
        w.start()
    fn(iters, ctypes.addressof(bufs[0]))
    for w in workers:
        w.join()
    all_cores = cores * iters * ACCUMULATORS * width * 2 / (time.perf_counter() - t0) / 1e9
    return {"gflops": best, "all_cores_gflops": all_cores, "cores": cores,
            "parallel_efficiency": all_cores / (cores * best), "lanes": width, "accumulators": ACCUMULATORS,
            "cpu": host().cpu,
            "method": f"llvmlite loop of {ACCUMULATORS} independent <{width} x float> FMAs, best run"}


STREAM_ACCUMULATORS = 4


def _stream_loop_ir(width: int) -> str:
    """`stream(reps, n, buf)`: reps times, add up the n floats at buf (n a multiple of 4 x width)."""
    blocks = ("entry", "rep", "loop", "rep_end", "done")
    mod, fn, (entry, rep, loop, rep_end, done), vec = _loop_function("stream", width, 2, blocks)
    f32, i64 = F32, I64
    reps, n, buf = fn.args
    b = ir.IRBuilder(entry)
    zero = ir.Constant(vec, None)
    b.branch(rep)
    b.position_at_end(rep)
    r = b.phi(i64)
    carried = [b.phi(vec) for _ in range(STREAM_ACCUMULATORS)]
    b.branch(loop)
    b.position_at_end(loop)
    i = b.phi(i64)
    accs = [b.phi(vec) for _ in range(STREAM_ACCUMULATORS)]
    new = []
    for j, acc in enumerate(accs):
        at = b.gep(buf, [b.add(i, ir.Constant(i64, j * width))], source_etype=f32)
        new.append(b.fadd(acc, b.load(at, typ=vec, align=64)))
    i_next = b.add(i, ir.Constant(i64, STREAM_ACCUMULATORS * width))
    b.cbranch(b.icmp_signed("<", i_next, n), loop, rep_end)
    b.position_at_end(rep_end)
    r_next = b.add(r, ir.Constant(i64, 1))
    b.cbranch(b.icmp_signed("<", r_next, reps), rep, done)
    r.add_incoming(ir.Constant(i64, 0), entry)
    r.add_incoming(r_next, rep_end)
    i.add_incoming(ir.Constant(i64, 0), rep)
    i.add_incoming(i_next, loop)
    for c, acc, nxt in zip(carried, accs, new, strict=True):
        c.add_incoming(zero, entry)
        c.add_incoming(nxt, rep_end)
        acc.add_incoming(c, rep)
        acc.add_incoming(nxt, loop)
    b.position_at_end(done)
    _store_total(b, new, buf, align=64)
    return str(mod)


def measure_weight_stream(nbytes: int, seconds: float = 0.2) -> dict:
    """Microseconds one core needs to read `nbytes` once (best of runs of 200 back-to-back passes)."""
    width = host().vector_width
    engine = JitEngine(_stream_loop_ir(width), speed_level=0)
    fn = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p)(engine.address("stream"))
    step = STREAM_ACCUMULATORS * width
    n = max(step, -(-nbytes // 4 // step) * step)
    buf = aligned_empty((n,))
    buf[:] = 1.0
    reps, best = 200, float("inf")
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        fn(reps, n, data_pointer(buf))
        best = min(best, (time.perf_counter() - t0) / reps)
    return {"bytes": 4 * n, "us": best * 1e6, "gbps": 4 * n / best / 1e9,
            "method": f"llvmlite loop of {STREAM_ACCUMULATORS} <{width} x float> loads + adds over the buffer, "
                      f"{reps} passes back to back, best run"}


FLOP_PER_CYCLE = 64  # two 512-bit FMA pipes: 2 x 16 lanes x 2 FLOPs
CHAIN = 100  # dependent adds per loop iteration: `add r, r` (a core may fold `add r, 1` chains away)
CHAIN_ITERATIONS = 2000  # ~200,000 cycles: well under a millisecond, before the clock can move


def clocks_measurable() -> bool:
    """The add chain is x86-64 assembly; FLOP per cycle below assumes two 512-bit FMA pipes."""
    return host().triple.startswith("x86_64") and host().vector_width == 16


def add_chain() -> tuple[JitEngine, Callable[[int], int]]:
    """(engine, chain(n)): n x CHAIN dependent one-cycle register adds."""
    llvm.initialize_native_asmparser()  # LLVM parses the inline assembly below
    mod = ir.Module(name="add_chain")
    fn = ir.Function(mod, ir.FunctionType(I64, [I64]), name="add_chain")
    entry, loop, done = (fn.append_basic_block(n) for n in ("entry", "loop", "done"))
    b = ir.IRBuilder(entry)
    b.branch(loop)
    b.position_at_end(loop)
    i, x = b.phi(I64), b.phi(I64)
    y = b.call(ir.InlineAsm(ir.FunctionType(I64, [I64]), "\n".join(["addq $0, $0"] * CHAIN), "=r,0"), [x])
    nxt = b.add(i, ir.Constant(I64, 1))
    i.add_incoming(ir.Constant(I64, 0), entry)
    i.add_incoming(nxt, loop)
    x.add_incoming(ir.Constant(I64, 1), entry)
    x.add_incoming(y, loop)
    b.cbranch(b.icmp_signed("<", nxt, fn.args[0]), loop, done)
    b.position_at_end(done)
    b.ret(y)
    engine = JitEngine(str(mod), speed_level=0)
    return engine, ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_int64)(engine.address("add_chain"))


def _rate_then_clock(call: Callable[[], object], flops: float, seconds: float, chain) -> tuple[float, float]:
    """Run `call` back to back for `seconds`, then time the add chain: (GFLOP/s, GHz after)."""
    calls, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        call()
        calls += 1
    gflops = calls * flops / (time.perf_counter() - t0) / 1e9
    t0 = time.perf_counter()
    chain(CHAIN_ITERATIONS)
    return gflops, CHAIN_ITERATIONS * CHAIN / (time.perf_counter() - t0) / 1e9


def measure_clocks(gemm: Callable[[], object], gemm_flops: float, rounds: int = 5, seconds: float = 0.1) -> dict:
    """Medians over `rounds` of: the peak loop's GFLOP/s and the clock right after it, the same for
    `gemm` (doing `gemm_flops` per call), FLOP per cycle of each (the hardware's limit:
    FLOP_PER_CYCLE), and `gemm_bound`, the fraction of the loop's GFLOP/s a GEMM at its clock can
    reach."""
    _chain_engine, chain = add_chain()
    _fma_engine, fma, per_iteration = _fma_loop()
    iterations = 100_000
    runs: dict[str, list[tuple[float, float]]] = {"fma": [], "gemm": []}
    for _ in range(rounds):
        runs["fma"].append(_rate_then_clock(lambda: fma(iterations), iterations * per_iteration, seconds, chain))
        runs["gemm"].append(_rate_then_clock(gemm, gemm_flops, seconds, chain))
    out: dict = {"rounds": rounds, "seconds": seconds,
                 "method": f"a chain of {CHAIN} dependent register adds timed right after each workload"}
    for name, samples in runs.items():
        out[f"{name}_gflops"] = statistics.median(g for g, _ in samples)
        out[f"{name}_ghz"] = statistics.median(c for _, c in samples)
        out[f"{name}_flop_per_cycle"] = statistics.median(g / c for g, c in samples)
    # The most of the peak a GEMM at its clock can reach. The loop's own clock is taken from its rate
    # (it cannot beat 64 FLOP per cycle), the GEMM's from the chain after it (the clock only recovers
    # once the heavy work stops): both err towards a higher bound, never a lower one.
    out["gemm_bound"] = out["gemm_ghz"] * FLOP_PER_CYCLE / out["fma_gflops"]
    return out
