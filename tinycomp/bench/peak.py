"""The measured single-core FMA peak (a tiny llvmlite loop of independent vector FMAs), and the
batch-1 floor: how long one core takes just to read a model's weights once.

Independent `<W x float>` accumulators (W = the host's float32 lanes; 16 of them, 12 where the host
has 16 vector registers) hide the FMA latency on both FMA pipes; each iteration does accumulators x
W x 2 FLOPs and nothing else. The best of a few timed runs is the peak this core can sustain right
now (it drops when the shared host is busy). The same loop on every core at once gives the parallel
efficiency: near 1.0 only when no other process holds a core, which is what the all-cores rows of a
benchmark need to mean anything.

At batch 1 every weight is read once per call and used for one multiply-add, so no engine can be
faster than reading them: `measure_weight_stream` times a loop that only loads and adds a buffer of
the weights' size, kept hot in cache by running it back to back.

Above batch 1 the bound is the peak itself, but a GEMM may not run at the peak loop's clock: it
also loads, stores and moves data, draws more power, and a turbo clock drops with power.
`measure_clocks` times a chain of dependent register adds (one cycle each) right after the peak loop
and right after a GEMM: the clock each left the core at. A GEMM at its own clock reaches at most the
loop's GFLOP/s times the ratio of the two clocks.
"""

from __future__ import annotations

import ctypes
import math
import statistics
import threading
import time
from collections.abc import Callable

import llvmlite.binding as llvm
from llvmlite import ir

from ..codegen.target import cpuinfo, host
from ..runtime.buffers import aligned_empty, data_pointer
from ..runtime.engine import JitEngine
from ..runtime.threads import available_cores


def accumulators(registers: int) -> int:
    """Accumulators of the peak loop for a register budget: 16, but with 16 registers (AVX2) 12. The
    loop also holds its two operands: 16 accumulators spilled there, and on the first AVX2 host (AMD
    Zen 3) the loop measured 46-51 GFLOP/s against 103.6 with 8, 10 or 12 accumulators."""
    return min(16, registers - 4)


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


def _fma_loop_ir(width: int, accumulators: int) -> str:
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
    accs = [b.phi(vec) for _ in range(accumulators)]
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


class _FmaLoop:
    """The compiled peak loop: `run(iterations)` on a buffer of each thread's own."""

    def __init__(self) -> None:
        self.width = host().vector_width
        self.accumulators = accumulators(host().vector_registers)
        self.engine = JitEngine(_fma_loop_ir(self.width, self.accumulators), speed_level=0)
        self.fn = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_void_p)(self.engine.address("fma_loop"))
        self.flops_per_iteration = self.accumulators * self.width * 2
        self.buf = self.buffer()

    def buffer(self):
        return (ctypes.c_float * (2 * self.width))(*([1.0] * self.width + [0.999] * self.width))

    def run(self, iterations: int, buf=None) -> None:
        self.fn(iterations, ctypes.addressof(self.buf if buf is None else buf))


def measure_fma_peak(seconds: float = 0.3) -> dict:
    """GFLOP/s of one core running nothing but FMAs (best of several ~20 ms runs)."""
    loop = _FmaLoop()
    iters = 1_000_000
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        loop.run(iters)
        dt = time.perf_counter() - t0
        best = max(best, iters * loop.flops_per_iteration / dt / 1e9)
    cores = available_cores()
    bufs = [loop.buffer() for _ in range(cores)]
    t0 = time.perf_counter()
    workers = [threading.Thread(target=loop.run, args=(iters, b)) for b in bufs[1:]]
    for w in workers:
        w.start()
    loop.run(iters, bufs[0])
    for w in workers:
        w.join()
    all_cores = cores * iters * loop.flops_per_iteration / (time.perf_counter() - t0) / 1e9
    return {"gflops": best, "all_cores_gflops": all_cores, "cores": cores,
            "parallel_efficiency": all_cores / (cores * best), "lanes": loop.width, "accumulators": loop.accumulators,
            "cpu": host().cpu,
            "method": f"llvmlite loop of {loop.accumulators} independent <{loop.width} x float> FMAs, best run"}


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


CHAIN = 100  # dependent adds per loop iteration: `add r, r` (a core may fold `add r, 1` chains away)
CHAIN_ITERATIONS = 2000  # ~200,000 cycles: well under a millisecond, before the clock can move
CALIBRATION_ITERATIONS = 100_000  # ~10 M cycles: the time stamp counter's rate against the wall clock


def clocks_measurable() -> bool:
    """The add chain is x86-64 assembly, timed by the time stamp counter, which must tick at one
    rate whatever the clock (Linux's `constant_tsc` and `nonstop_tsc`)."""
    flags = cpuinfo("flags").split()
    return host().triple.startswith("x86_64") and "constant_tsc" in flags and "nonstop_tsc" in flags


def add_chain() -> tuple[JitEngine, Callable[[int], int]]:
    """(engine, chain(n)): n x CHAIN dependent one-cycle register adds, timed inside the native
    code: chain(n) returns the time stamp counter's ticks over them (`llvm.readcyclecounter`).
    Timed from Python instead, the call's own cost right after a workload (which has evicted what
    the call runs through) read the clock 5-20 % low, and read it lower after a GEMM than after the
    peak loop (2.4-2.5 GHz after the GEMM, 2.2-2.8 after the loop on the Emerald Rapids host,
    where the counter read 2.8-3.0 after both)."""
    llvm.initialize_native_asmparser()  # LLVM parses the inline assembly below
    mod = ir.Module(name="add_chain")
    counter = ir.Function(mod, ir.FunctionType(I64, []), name="llvm.readcyclecounter")
    fn = ir.Function(mod, ir.FunctionType(I64, [I64]), name="add_chain")
    entry, loop, done = (fn.append_basic_block(n) for n in ("entry", "loop", "done"))
    b = ir.IRBuilder(entry)
    start = b.call(counter, [])
    b.branch(loop)
    b.position_at_end(loop)
    i, x = b.phi(I64), b.phi(I64)
    y = b.call(ir.InlineAsm(ir.FunctionType(I64, [I64]), "\n".join(["addq $0, $0"] * CHAIN), "=r,0"), [x])
    nxt = b.add(i, ir.Constant(I64, 1))
    i.add_incoming(ir.Constant(I64, 0), entry)
    i.add_incoming(nxt, loop)
    x.add_incoming(start, entry)  # not a constant: the chain cannot be folded away
    x.add_incoming(y, loop)
    b.cbranch(b.icmp_signed("<", nxt, fn.args[0]), loop, done)
    b.position_at_end(done)
    ticks = b.sub(b.call(counter, []), start)
    b.ret(b.add(ticks, b.and_(y, ir.Constant(I64, 0))))  # the chain's result is used: it stays
    engine = JitEngine(str(mod), speed_level=0)
    return engine, ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_int64)(engine.address("add_chain"))


def _ticks_per_second(chain: Callable[[int], int]) -> float:
    """The time stamp counter's rate: ticks over a ~3 ms chain against the wall clock, the best of a
    few runs (the call's own microseconds only ever lower it)."""
    best = 0.0
    for _ in range(5):
        t0 = time.perf_counter()
        ticks = chain(CALIBRATION_ITERATIONS)
        best = max(best, ticks / (time.perf_counter() - t0))
    return best


def _clock_ghz(chain: Callable[[int], int], ticks_per_second: float) -> float:
    """The clock from one run of the chain. One run, right after the workload: the clock climbs
    back within a millisecond once heavy vector work stops, so a second, longer run to difference
    against would read a later, higher clock (it did on the previous Xeon: 4-5 GHz)."""
    ticks = chain(CHAIN_ITERATIONS)
    return CHAIN_ITERATIONS * CHAIN / max(ticks / ticks_per_second, 1e-9) / 1e9


def _rate_then_clock(call: Callable[[], object], flops: float, seconds: float, chain,
                     ticks_per_second: float) -> tuple[float, float]:
    """Run `call` back to back for `seconds`, then time the add chain: (GFLOP/s, GHz after)."""
    calls, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        call()
        calls += 1
    gflops = calls * flops / (time.perf_counter() - t0) / 1e9
    return gflops, _clock_ghz(chain, ticks_per_second)


def measure_clocks(gemm: Callable[[], object], gemm_flops: float, rounds: int = 5, seconds: float = 0.1) -> dict:
    """Medians over `rounds` of: the peak loop's GFLOP/s and the clock right after it, the same for
    `gemm` (doing `gemm_flops` per call), and FLOP per cycle of each.

    `gemm_clock_ratio` is the GEMM's clock over the loop's: the most of the loop's GFLOP/s a GEMM
    running the core at that clock can reach. It errs high rather than low: the clock only recovers
    once the heavy work stops, so the chain right after reads it at or above the work's own. (On
    the Emerald Rapids Xeon it reads the same after both, 1.00-1.04: no bound below the peak.)
    `flop_per_cycle_limit` is the loop's FLOP per cycle rounded to a power of two: what the core's
    FMA pipes give at most (64 with two 512-bit pipes, 32 with one)."""
    _chain_engine, chain = add_chain()
    ticks_per_second = _ticks_per_second(chain)
    loop = _FmaLoop()
    iterations = 100_000
    runs: dict[str, list[tuple[float, float]]] = {"fma": [], "gemm": []}
    for _ in range(rounds):
        runs["fma"].append(_rate_then_clock(lambda: loop.run(iterations), iterations * loop.flops_per_iteration,
                                            seconds, chain, ticks_per_second))
        runs["gemm"].append(_rate_then_clock(gemm, gemm_flops, seconds, chain, ticks_per_second))
    out: dict = {"rounds": rounds, "seconds": seconds,
                 "method": f"a chain of {CHAIN} dependent register adds right after each workload, "
                           "timed by the time stamp counter inside the native code"}
    for name, samples in runs.items():
        out[f"{name}_gflops"] = statistics.median(g for g, _ in samples)
        out[f"{name}_ghz"] = statistics.median(c for _, c in samples)
        out[f"{name}_flop_per_cycle"] = statistics.median(g / c for g, c in samples)
    out["flop_per_cycle_limit"] = 2 ** round(math.log2(out["fma_flop_per_cycle"]))
    out["gemm_clock_ratio"] = out["gemm_ghz"] / out["fma_ghz"]
    return out
