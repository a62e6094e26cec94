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
"""

from __future__ import annotations

import ctypes
import threading
import time

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
