"""One benchmark worker: `python -m tinycomp.bench.runner '<json spec>'`, one engine per process.

The spec (built by `tinycomp.bench.main`) names a mode (`serve`, `compile` or `peak`). Results go
to stdout as JSON lines (one per finished point, so the parent can show progress); anything else a
library prints goes to stderr. A `serve` process times the points the parent asks for on stdin.
Every engine's output is checked with `check_parity` against the eager model and a float64 NumPy
reference before the engine is timed; a mismatch is reported as a `parity_error` line and the
process exits with status 3.

`TINYCOMP_BENCH_FAULT=engine[,engine]` makes those engines return a deliberately wrong result
(one element off), so tests can see the parity check fail loudly.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ..frontend.tensor import Tensor
from ..parity import check_parity
from ..runtime.threads import available_cores
from .models import AnyModel, get_model, numpy_function, onnx_model_bytes, torch_module

PARITY_EXIT = 3
Engine = Callable[[np.ndarray], np.ndarray]

# name -> (what it is, threads: "1" = one thread everywhere, "all" = every core)
ENGINES: dict[str, tuple[str, str]] = {
    "numpy": ("NumPy functional, OpenBLAS sgemm", "1"),
    "eager": ("tinycomp eager model(Tensor(x))", "1"),
    "compiled": ("tinycomp.compile(threads=1)", "1"),
    "compiled-all": ("tinycomp.compile(threads=None)", "all"),
    "onnxruntime": ("ONNX Runtime CPU, 1 intra-op thread", "1"),
    "torch": ("torch eager, no_grad", "1"),
    "torch.compile": ("torch.compile(model)", "1"),
    "numpy-all": ("NumPy functional, OpenBLAS on every core", "all"),
    "onnxruntime-all": ("ONNX Runtime CPU, every core", "all"),
}


def _emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def engine_threads(name: str) -> int:
    return 1 if ENGINES[name][1] == "1" else available_cores()


def unavailable_reason(name: str) -> str | None:
    """Why an engine cannot run here (a missing optional package), or None."""
    import importlib.util

    needs = {"onnxruntime": ["onnx", "onnxruntime"], "onnxruntime-all": ["onnx", "onnxruntime"],
             "torch": ["torch"], "torch.compile": ["torch"]}.get(name, [])
    missing = [m for m in needs if importlib.util.find_spec(m) is None]
    if missing:
        return f"not installed: {', '.join(missing)} (pip install {' '.join(missing)})"
    return None


# ---------------------------------------------------------------- engines
def make_engine(name: str, bm: AnyModel, model: Any, weights: Any, info: dict) -> Engine:
    """A callable float32 array -> float32 array for one engine (compiling / exporting first)."""
    if name in ("numpy", "numpy-all"):
        return numpy_function(bm, weights)
    if name == "eager":
        return lambda x: model(Tensor(x)).data
    if name in ("compiled", "compiled-all"):
        import tinycomp

        fast = tinycomp.compile(model, input_shape=(None, *bm.in_shape), threads=1 if name == "compiled" else None)
        info["compile_ms"] = fast.stats.compile_ms
        info["cache_hit"] = bool(fast.stats.cache_hits)
        from ..ir.summary import flops_per_row  # the count the thread policy is given

        info["flops_per_row"] = flops_per_row(fast.graph)

        def call(x: np.ndarray) -> np.ndarray:
            return fast(x).data

        call.compiled = fast  # type: ignore[attr-defined]  # for `bare_native_call`
        return call
    if name in ("onnxruntime", "onnxruntime-all"):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1 if name == "onnxruntime" else available_cores()
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        t0 = time.perf_counter()
        sess = ort.InferenceSession(onnx_model_bytes(bm, weights), opts, providers=["CPUExecutionProvider"])
        info["compile_ms"] = (time.perf_counter() - t0) * 1e3
        info["version"] = ort.__version__
        run = sess.run
        return lambda x: run(["y"], {"x": x})[0]
    if name in ("torch", "torch.compile"):
        import torch

        torch.set_num_threads(1)
        info["version"] = torch.__version__
        mod = torch_module(bm, weights)
        if name == "torch.compile":
            mod = torch.compile(mod)

        def call(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return mod(torch.from_numpy(x)).numpy()

        if name == "torch.compile":
            t0 = time.perf_counter()
            call(bm.sample(2))
            info["compile_ms"] = (time.perf_counter() - t0) * 1e3
        return call
    raise ValueError(f"unknown engine {name!r}; engines are {', '.join(ENGINES)}")


def _faulty(engine: Engine) -> Engine:
    def wrong(x: np.ndarray) -> np.ndarray:
        y = np.array(engine(x), dtype=np.float32, copy=True)
        if y.size:
            y.flat[0] += 0.5 * (1.0 + abs(float(y.flat[0])))
        return y
    return wrong


def fault_engines() -> set[str]:
    return {e.strip() for e in os.environ.get("TINYCOMP_BENCH_FAULT", "").split(",") if e.strip()}


# ---------------------------------------------------------------- timing
@contextlib.contextmanager
def blas_threads(n: int | None) -> Iterator[None]:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    if n is None:
        yield
        return
    with threadpool_limits(limits=n):
        yield


def time_calls(fn: Engine, x: np.ndarray, repeat: int, budget_s: float,
               partner: Callable[[], None] | None = None) -> tuple[list[float], list[float]]:
    """Per-call wall times in seconds, after warming up; at most `repeat`, at least 5. With a
    `partner` (the bare native call), it runs right after each call of fn, timed too, so the two
    meet the host in the same state: (fn's times, the partner's)."""
    def step() -> None:
        fn(x)
        if partner is not None:
            partner()

    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    warm = max(2, min(50, int(0.05 / max(first, 1e-7))))
    for _ in range(warm):
        step()
    t0 = time.perf_counter()
    step()
    est = time.perf_counter() - t0
    n = max(5, min(repeat, int(budget_s / max(est, 1e-7))))
    samples: list[float] = []
    partner_samples: list[float] = []
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            fn(x)
            t1 = time.perf_counter()
            samples.append(t1 - t0)
            if partner is not None:
                partner()
                partner_samples.append(time.perf_counter() - t1)
    finally:
        if gc_was:
            gc.enable()
    return samples, partner_samples


def bare_native_call(fast: Any, x: np.ndarray) -> Callable[[], None] | None:
    """The compiled model's native entry on `x` with every pointer prepared once: what a call costs
    without any Python around it. None if the last call left no reusable parameter table."""
    from ..aligned import aligned_empty
    from ..runtime.buffers import data_pointer

    art = fast._artifact
    hot = art.hot_table() if art is not None else None
    if hot is None or x.ndim != 2:
        return None
    rows = x.shape[0]
    out = np.empty((rows, *art.call.out_row), np.float32)
    scratch = aligned_empty((art.plan.scratch_floats(rows) + 16,))
    args = (rows, data_pointer(x), data_pointer(out), data_pointer(scratch), ctypes.addressof(hot[1]))
    kernel_call = art.call.kernel.call

    def bare() -> None:
        kernel_call(*args)

    bare.keep = (hot, out, scratch, x)  # type: ignore[attr-defined]  # the pointers' arrays stay alive
    return bare


def compiled_bare_call(model: Any, x: np.ndarray) -> Callable[[], None]:
    """`model` compiled for one thread and x's rows, called twice (the second call leaves the
    parameter table for reuse), then its native entry on x with nothing around it
    (`bare_native_call`; the callable keeps the compiled model alive)."""
    import tinycomp

    fast = tinycomp.compile(model, input_shape=(None, *x.shape[1:]), threads=1)
    fast(x)
    fast(x)
    bare = bare_native_call(fast, x)
    if bare is None:
        raise RuntimeError("the compiled model left no reusable parameter table after two calls")
    bare.keep += (fast,)  # type: ignore[attr-defined]
    return bare


CLOCK_BATCH = 2048  # the reference MLP's batch for `measure_mlp_clocks`: GEMM-bound, as the large batches


def measure_mlp_clocks(rounds: int = 5) -> dict | None:
    """The core's clock under the compiled reference MLP (one thread, batch CLOCK_BATCH, its bare
    native call) against under the FMA-peak loop (`peak.measure_clocks`, `rounds` rounds); None
    where the add chain cannot run (not an x86-64 host)."""
    from threadpoolctl import threadpool_limits

    from .models import MODELS
    from .peak import clocks_measurable, measure_clocks

    if not clocks_measurable():
        return None
    bm = MODELS["mlp"]
    bare = compiled_bare_call(bm.build(0), bm.sample(CLOCK_BATCH, 0))
    with threadpool_limits(1):
        return {"model": "mlp", "batch": CLOCK_BATCH,
                **measure_clocks(bare, bm.flops_per_sample * CLOCK_BATCH, rounds=rounds)}


def serve_points(spec: dict) -> int:
    """Build the engine for every model of the plan and parity-check it at every batch, then time
    points as the parent asks, one JSON command per stdin line, until stdin closes.

    Each round the parent starts one such process per engine and asks each in turn for the same
    point, so all engines meet the shared host in the same state (its speed moves by up to ~30 %
    within seconds here); timing one engine's whole sweep at a time let a slow phase land on one
    engine's slot round after round."""
    name = spec["engine"]
    faults = fault_engines()
    threads = engine_threads(name)
    blas = 1 if ENGINES[name][1] == "1" else None
    with blas_threads(blas):
        blas_info: Any
        try:
            from threadpoolctl import threadpool_info
            blas_info = [{"api": i.get("internal_api"), "threads": i.get("num_threads")} for i in threadpool_info()]
        except ImportError:
            blas_info = "threadpoolctl not installed: BLAS threads not pinned"
        _emit({"type": "engine", "engine": name, "threads": threads, "blas": blas_info})
        points: dict[tuple[str, int], tuple[Engine, np.ndarray, dict, Callable[[], None] | None]] = {}
        for item in spec["plan"]:
            model_name = item["model"]
            bm = get_model(model_name)
            model = bm.build(spec.get("seed", 0))
            weights = bm.weights(model)
            reference = numpy_function(bm, weights, np.float64)
            info: dict = {}
            engine = make_engine(name, bm, model, weights, info)
            if name in faults:
                engine = _faulty(engine)
            for batch in item["batches"]:
                x = bm.sample(batch, spec.get("seed", 0))
                out = np.asarray(engine(x))
                eager = model(Tensor(x)).data
                report = check_parity(out.reshape(eager.shape) if out.size == eager.size else out, eager,
                                      reference(x.astype(np.float64)))
                if not report.ok:
                    _emit({"type": "parity_error", "engine": name, "model": model_name, "batch": batch,
                           "detail": str(report)})
                    return PARITY_EXIT
                point_info = {**info, "parity": str(report)}
                bare = None
                if name.startswith("compiled"):
                    from ..runtime.threads import parallel_parts

                    point_info["chunks"] = parallel_parts(batch, info["flops_per_row"],
                                                          1 if name == "compiled" else None,
                                                          math.prod(bm.in_shape[:-1]))
                    if name == "compiled" and batch == 1:  # Python per call: this call minus the bare one
                        bare = bare_native_call(engine.compiled, x)  # type: ignore[attr-defined]
                points[(model_name, batch)] = (engine, x, point_info, bare)
        _emit({"type": "ready", "engine": name})
        for line in sys.stdin:
            ask = json.loads(line)
            engine, x, point_info, bare = points[(ask["model"], ask["batch"])]
            samples, bare_samples = time_calls(engine, x, ask.get("repeat", 200), ask.get("budget_s", 1.0), bare)
            extra = {"bare_samples": bare_samples} if bare_samples else {}
            _emit({"type": "point", "engine": name, "model": ask["model"], "batch": ask["batch"],
                   "threads": threads, "samples": samples, **extra, **point_info})
    return 0


def run_compile_times(spec: dict) -> int:
    """Compile each model: the first compile in this process, then the median of `repeat` more.

    Each compile starts with the collector's debt paid (`gc.collect()` first): the objects of the
    imports otherwise make Python's first full collection land in whichever compile comes first
    (9-20 ms of walking the heap, measured with gc.callbacks), which times the process's imports,
    not the compile."""
    import gc

    import tinycomp

    for model_name in spec["models"]:
        bm = get_model(model_name)
        model = bm.build(spec.get("seed", 0))
        times = []
        hits = []
        for _ in range(1 + spec.get("repeat", 5)):
            gc.collect()
            t0 = time.perf_counter()
            fast = tinycomp.compile(model, input_shape=(None, *bm.in_shape))
            times.append((time.perf_counter() - t0) * 1e3)
            hits.append(bool(fast.stats.cache_hits))
            del fast
        _emit({"type": "compile", "model": model_name, "phase": spec["phase"], "first_ms": times[0],
               "median_ms": float(np.median(times[1:])) if len(times) > 1 else times[0],
               "cache_hits": hits})
    return 0


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m tinycomp.bench.runner '<json spec>' (started by tinycomp bench)", file=sys.stderr)
        return 2
    spec = json.loads(argv[0])
    mode = spec.get("mode", "run")
    if mode == "serve":
        return serve_points(spec)
    if mode == "compile":
        return run_compile_times(spec)
    if mode == "peak":
        from .models import MODELS
        from .peak import measure_fma_peak, measure_weight_stream

        peak = measure_fma_peak(spec.get("seconds", 0.3))  # first: on a core nothing else has just heated
        stream = measure_weight_stream(MODELS["mlp"].weight_bytes) if spec.get("stream") else None
        clocks = measure_mlp_clocks(spec["clocks"]) if spec.get("clocks") else None
        _emit({"type": "peak", **peak, "mlp_weight_stream": stream, "clocks": clocks})
        return 0
    print(f"unknown runner mode {mode!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
