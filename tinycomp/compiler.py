"""`compile(model)`: trace -> passes -> codegen -> runtime, behind a Tensor-in, Tensor-out callable."""

from __future__ import annotations

import ctypes
import functools
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .binding import LiveParams, StructureGuard, eval_mode
from .checks import is_whole_number
from .codegen.module import LoweringError, ModulePlan, graph_fingerprint, lower_graph
from .codegen.target import host
from .errors import CompileError, ParityError
from .frontend.layers import Layer, model_lock
from .frontend.tensor import Tensor, to_float32
from .frontend.tracer import trace
from .ir.graph import Graph
from .ir.passes import DEFAULT_PIPELINE, fuse_linear, run_pipeline
from .ir.passes import explain as explain_fusions
from .ir.printer import format_graph
from .logs import channel, log
from .parity import check_parity, reference_and_overflow
from .runtime import cache
from .runtime.buffers import CHECK_ABOVE, ScratchPool, as_native_float32, check_allocation, data_pointer
from .runtime.engine import JitEngine, assembly, optimized_ir
from .runtime.kernel import NativeKernel
from .runtime.threads import one_part_rows, parallel_parts, shared_pool, split_rows

STAGES = ("traced", "optimized", "llvm", "asm")
SPEED_LEVELS = (0, 1, 2, 3)  # LLVM's new-pass-manager levels (`codegen.target.optimize`)
_F32 = np.dtype(np.float32)
# check=True: eager float32 must be this close (relative to the output scale) to the float64 run of the
# compiled graph; float32 rounding is ~1e-6 here, a graph that diverged from the model is far beyond.
CHECK_EAGER_SLACK = 1e-3


@dataclass
class CompileStats:
    compiles: int = 0
    compile_ms: float = 0.0  # of the most recent compile
    calls: int = 0
    cache_hits: int = 0


@dataclass
class _Artifact:
    """One compilation: everything derived from the model's structure and input features."""

    features: tuple[int, ...]
    traced: Graph
    optimized: Graph
    pass_dumps: list[tuple[str, str]]
    plan: ModulePlan
    engine: JitEngine
    kernel: NativeKernel
    params: LiveParams
    flops_per_row: int
    guard: StructureGuard
    out_row: tuple[int, ...] = field(default=())
    hot_rows: int = 0  # batches up to this size may take CompiledModel._hot_call (0: none)
    lead_shapes: dict = field(default_factory=dict)  # leading dims of the input -> eager output shape

    @functools.cached_property
    def ndim(self) -> int:
        return 1 + len(self.features)

    @functools.cached_property  # read on every call: computed once
    def bytes_per_row(self) -> int:
        """Memory a call needs per batch row: output, scratch, and a converted copy of the input."""
        return 4 * (math.prod(self.out_row) + self.plan.scratch_per_row + math.prod(self.features))


def _feature_shape(input_shape: Any) -> tuple[int, ...]:
    shape = tuple(input_shape)
    if len(shape) < 2 or any(not is_whole_number(d) or d <= 0 for d in shape[1:]):
        raise ValueError(
            f"input_shape must be (batch, features...) with positive feature sizes, e.g. (None, 784); "
            f"got {input_shape!r}"
        )
    return tuple(int(d) for d in shape[1:])


def _checked_speed_level(level: Any) -> int:
    if is_whole_number(level) and level in SPEED_LEVELS:
        return int(level)
    raise ValueError(f"speed_level must be one of {', '.join(map(str, SPEED_LEVELS))} (LLVM's pipeline levels); "
                     f"got {level!r}")


def as_input_array(x: Any) -> np.ndarray:
    """The input as an ndarray of a number dtype, not yet converted or copied (the caller checks sizes first)."""
    if isinstance(x, Tensor):
        arr = x.data
        if not isinstance(arr, np.ndarray):  # someone assigned a list to .data
            arr = to_float32(arr)
    elif isinstance(x, np.ndarray):
        arr = x
    else:
        try:
            arr = to_float32(x)  # raises TypeError for strings, objects, ragged lists
        except TypeError as exc:
            raise TypeError(f"compiled model input must be a Tensor, a NumPy array or a (nested) list of numbers; "
                            f"{exc}") from None
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"compiled model input must hold numbers (bool, int or float, cast to float32 as Tensor "
                        f"does); got an array of dtype {arr.dtype}")
    if arr.ndim == 0:
        raise ValueError(f"compiled model input must be a batch (batch, features...), or one sample; "
                         f"got a 0-D value {arr!r}")
    return arr


class CompiledModel:
    """A model compiled to native code for inference. Call it like the model: `fast(x)` -> Tensor.

    - Always an inference model: dropout is folded away as in eval mode. `model.train()` (or
      `.eval()`) after compiling changes nothing here; compile(training=True) is not supported.
    - Parameters are read live by attribute path on every call: in-place edits and rebinding a
      parameter to a Tensor or array of the same shape show in the next call.
    - Structural changes (a parameter rebound to another shape, a layer appended to a `Sequential`,
      a sub-layer or non-Tensor attribute replaced, tied weights untied) are noticed at the next call,
      which recompiles (`stats.compiles` goes up). NumPy arrays that are not parameters are traced as
      constants: rebinding one recompiles, editing one in place is not seen. Changing a layer's
      class or its class's `forward` after compiling is not seen either: compile again.
    - Input: a Tensor, array or list of numbers of shape (batch, *features) or one sample (*features);
      any number dtype is cast to float32 as `Tensor` does; any strides, alignment or read-only flag.
      Bad input raises TypeError/ValueError naming what was expected and what was given; a batch too
      large for memory raises MemoryError before anything is allocated.
    - Thread-safe: any number of threads may call one compiled model at once.
    - Picklable: pickles the model and compile options (not machine code); unpickling recompiles,
      from the on-disk cache when it holds the code.
    """

    def __init__(self, model: Layer, *, input_shape: Any = None, threads: int | None = None,
                 check: bool = False, passes: list | None = None, speed_level: int = 0):
        if not callable(model):
            raise TypeError(f"compile() expects a Layer (or callable model); got {type(model).__name__}")
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be None (all cores where it pays) or an int >= 1; got {threads!r}")
        self.model, self.threads, self.check = model, threads, check
        self._passes, self._speed_level = passes, _checked_speed_level(speed_level)
        self.stats = CompileStats()
        self._artifact: _Artifact | None = None
        self._lock = threading.Lock()
        self._scratch = ScratchPool()
        if input_shape is not None:
            features = _feature_shape(input_shape)
            with model_lock(model):  # compiling walks the model: as on every other path
                self._compile(features)

    # ---------------------------------------------------------------- pickling: model + options, no code
    def __getstate__(self) -> dict:
        art = self._artifact
        return {"model": self.model, "threads": self.threads, "check": self.check, "passes": self._passes,
                "speed_level": self._speed_level,
                "input_shape": (None, *art.features) if art is not None else None}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["model"], input_shape=state["input_shape"], threads=state["threads"],  # type: ignore[misc]
                      check=state["check"], passes=state["passes"], speed_level=state["speed_level"])

    # ---------------------------------------------------------------- compiling
    def _compile(self, features: tuple[int, ...]) -> _Artifact:
        start = time.perf_counter()
        traced = trace(self.model, (None, *features))
        dumps: list[tuple[str, str]] = [("traced", format_graph(traced))]
        log("graph", "traced graph of %s:\n%s", type(self.model).__name__, dumps[0][1])

        def after_pass(name: str, g: Graph, changed: bool) -> None:
            dumps.append((name, format_graph(g)))
            log("passes", "after %s (%s):\n%s", name, "changed" if changed else "no change", dumps[-1][1])

        optimized = run_pipeline(traced, self._passes, on_pass=after_pass)
        plan, engine, key = self._codegen(optimized)
        shapes = [tuple(optimized.shape(p)) for p in plan.params]
        kernel = NativeKernel(engine, plan, features, shapes)
        guard = StructureGuard(self.model)
        artifact = _Artifact(
            features=features, traced=traced, optimized=optimized, pass_dumps=dumps, plan=plan,
            engine=engine, kernel=kernel,
            params=LiveParams(self.model, [optimized[p]["path"] for p in plan.params], shapes, kernel.pack),
            flops_per_row=_flops_per_row(optimized), guard=guard,
            out_row=tuple(plan.out_shape[1:]),
        )
        # the hot path runs on the calling thread and checks no memory: batches _call would too
        artifact.hot_rows = one_part_rows(artifact.flops_per_row, self.threads,
                                          (CHECK_ABOVE - 1) // artifact.bytes_per_row)
        self._artifact = artifact
        self.stats.compiles += 1
        self.stats.compile_ms = (time.perf_counter() - start) * 1e3
        log("compile", "compiled %s for input (N, %s) in %.1f ms (cache key %s, %s)", type(self.model).__name__,
            ", ".join(map(str, features)), self.stats.compile_ms, key[:16],
            "cache hit" if self.stats.cache_hits and not plan.llvm_ir else "built")
        if channel("llvm"):
            log("llvm", "LLVM IR:\n%s", self._llvm_ir(artifact))
        if channel("asm"):
            log("asm", "assembly:\n%s", assembly(self._llvm_ir(artifact), self._speed_level))
        return artifact

    def _codegen(self, g: Graph) -> tuple[ModulePlan, JitEngine, str]:
        """Lower and JIT-compile g, or load its object code from the on-disk cache."""
        width = host().vector_width
        key = cache.cache_key(graph_fingerprint(g, width), {"speed_level": self._speed_level})
        hit = cache.load(key)
        if hit is not None:
            meta, object_code = hit
            try:
                plan, engine = ModulePlan.from_meta(meta, g, width), JitEngine(object_code=object_code)
                engine.address(plan.entry)
            except Exception as exc:  # an authentic entry that does not fit this graph: rebuild, never trust it
                log("compile", "cache entry %s unusable (%s); rebuilding", key[:16], exc)
            else:
                self.stats.cache_hits += 1
                return plan, engine, key
        try:
            plan = lower_graph(g, width)
        except LoweringError as exc:
            raise CompileError(str(exc)) from exc
        engine = JitEngine(plan.llvm_ir, speed_level=self._speed_level)
        cache.store(key, plan.to_meta(), engine.object_code)
        return plan, engine, key

    def _llvm_ir(self, art: _Artifact) -> str:
        if not art.plan.llvm_ir:  # loaded from the cache: lower again to show the IR
            art.plan.llvm_ir = lower_graph(art.optimized, host().vector_width).llvm_ir
        return art.plan.llvm_ir

    def _ensure_compiled(self, features: tuple[int, ...]) -> _Artifact:
        art = self._artifact
        if art is not None:
            return art if art.guard.unchanged() else self._recompile(art, "the structure of the model changed")
        with model_lock(self.model), self._lock:  # two threads making the first call compile once
            return self._artifact or self._compile(features)

    def _recompile(self, art: _Artifact, why: str) -> _Artifact:
        # the model's lock first, as tracing takes it: one order everywhere, so no two threads wait on each other
        with model_lock(self.model), self._lock:  # several threads noticing one change recompile once
            if self._artifact is not art:
                return self._artifact  # type: ignore[return-value]
            log("compile", "%s since %s was compiled: recompiling", why, type(self.model).__name__)
            return self._compile(art.features)

    # ---------------------------------------------------------------- calling
    def __call__(self, x: Any) -> Tensor:
        art = self._artifact
        if art is not None and not self.check:  # check=True compares with eager: always _call
            y = self._hot_call(art, x)
            if y is not None:
                return y
        return self._call(x)

    def _hot_call(self, art: _Artifact, x: Any) -> Tensor | None:
        """The common call in ~4 us of Python: a C-contiguous batch of numbers (cast to float32) of the
        compiled feature shape, small enough for one thread and no memory check, with the model's
        structure and parameter arrays as last time. Anything else returns None and takes `_call`,
        which handles (and names) every other case; both run the same native code on the same checks."""
        arr = x.data if type(x) is Tensor else x
        if type(arr) is not np.ndarray or arr.shape[1:] != art.features:
            return None
        rows = arr.shape[0]
        if not (0 < rows <= art.hot_rows and arr.ndim == art.ndim):
            return None
        if arr.dtype is not _F32:  # e.g. float64 from np.random: cast as Tensor does (hot_rows allows the copy)
            if arr.dtype.kind not in "biuf":
                return None
            arr = np.ascontiguousarray(arr, _F32)
        flags = arr.flags
        if not (flags.c_contiguous and flags.aligned):
            return None
        guard = art.guard
        if not guard.same():
            return None
        hot = art.params.hot_table(guard.held)  # held until the call returns: it keeps the weights alive
        if hot is None:
            return None
        out = np.empty((rows, *art.out_row), _F32)
        scratch = self._scratch.pointer(art.plan.scratch_floats(rows))
        art.kernel.call(rows, data_pointer(arr), data_pointer(out), scratch, ctypes.addressof(hot[3]))
        self.stats.calls += 1
        return Tensor._adopt(out)

    def _call(self, x: Any) -> Tensor:
        arr = as_input_array(x)
        art = self._ensure_compiled(arr.shape[1:] if arr.ndim > 1 else arr.shape)
        held = art.guard.held  # as checked just now: the parameter table is offered to the hot path with it
        rows, out_shape = self._rows(art, arr)
        params = art.params.table()
        if params is None:  # a parameter was given another shape: the code must be generated again
            art = self._recompile(art, "a parameter changed shape")
            held = art.guard.held
            rows, out_shape = self._rows(art, arr)
            art.params.arrays(strict=True)  # names the parameter if it still does not fit
            params = art.params.table()
            assert params is not None
        if rows * art.bytes_per_row >= CHECK_ABOVE:  # /proc/meminfo only for big batches: batch 1 is hot
            need = rows * art.bytes_per_row + 4 * art.plan.scratch_fixed
            check_allocation(need, f"a batch of {rows:,} rows (output {(rows, *art.out_row)}, scratch and input copy)")
        try:
            x32 = as_native_float32(arr)
            out = np.empty((rows, *art.out_row), np.float32)  # kernels need float, not line, alignment
        except MemoryError:
            raise MemoryError(f"cannot allocate the output {(rows, *art.out_row)} float32 "
                              f"({4 * rows * math.prod(art.out_row):,} bytes) for a batch of {rows:,} rows; "
                              "split the batch into smaller ones") from None
        if rows:
            table, used = params  # `used` keeps every array the table points into alive during the call
            self._run(art, x32 if x32.ndim == len(art.features) + 1 else x32.reshape(rows, *art.features),
                      ctypes.addressof(table), out)
            art.params.remember(held, table, used)
        self.stats.calls += 1
        y = out.reshape(out_shape)
        if self.check:
            self._check_parity(art, x32, y)
        return Tensor._wrap(y)

    def _rows(self, art: _Artifact, arr: np.ndarray) -> tuple[int, tuple[int, ...]]:
        """(rows, output shape) of a (batch, *features) input, one sample, or several leading dimensions."""
        features = art.features
        nf = len(features)
        if arr.ndim == nf + 1 and arr.shape[1:] == features:
            return arr.shape[0], (arr.shape[0], *art.out_row)
        if arr.ndim >= nf and arr.shape[arr.ndim - nf:] == features:
            lead = arr.shape[: arr.ndim - nf]
            return math.prod(lead), self._eager_out_shape(art, lead)
        expected = "(batch, " + ", ".join(map(str, features)) + ")"
        what = "rank" if arr.ndim < nf else "feature shape"
        raise ValueError(
            f"compiled model expects input of shape {expected} (or {tuple(features)} for one sample); "
            f"got shape {arr.shape} (wrong {what})"
        )

    def _eager_out_shape(self, art: _Artifact, lead: tuple[int, ...]) -> tuple[int, ...]:
        """The output shape eager gives an input of shape (*lead, *features), lead not one batch dimension.

        Rows are computed the same either way; only the shape can differ (a reshape(-1, ...) in the
        model flattens leading dimensions), so it is traced once per leading shape and remembered."""
        known = art.lead_shapes.get(lead)
        if known is not None:
            return known
        rows_out = math.prod(lead) * math.prod(art.out_row)
        try:
            g = trace(self.model, (*lead, *art.features))
            shape = tuple(g.shape(g.args(g.nodes("output")[0])[0]))
        except Exception as exc:
            raise ValueError(f"this model cannot take an input of shape {(*lead, *art.features)} ({exc}); "
                             f"pass a batch of shape (batch, {', '.join(map(str, art.features))})") from None
        if math.prod(shape) != rows_out:
            raise ValueError(f"for an input of shape {(*lead, *art.features)} this model returns shape {shape}, "
                             f"not {math.prod(lead)} rows of {art.out_row}; "
                             f"pass a batch of shape (batch, {', '.join(map(str, art.features))})")
        if len(art.lead_shapes) < 64:  # bounded: a stream of odd shapes must not grow memory
            art.lead_shapes[lead] = shape
        return shape

    def _run(self, art: _Artifact, x: np.ndarray, table_ptr: int, out: np.ndarray) -> None:
        kernel, rows = art.kernel, x.shape[0]
        kernel.check_io(x, out)
        x_ptr, out_ptr = data_pointer(x), data_pointer(out)
        parts = parallel_parts(rows, art.flops_per_row, self.threads)
        if parts <= 1:
            kernel.call(rows, x_ptr, out_ptr, self._scratch.pointer(art.plan.scratch_floats(rows)), table_ptr)
            return

        def chunk(lo: int, hi: int) -> None:  # rows lo..hi, each thread with its own scratch
            kernel.call(hi - lo, x_ptr + lo * kernel.in_bytes, out_ptr + lo * kernel.out_bytes,
                        self._scratch.pointer(art.plan.scratch_floats(hi - lo)), table_ptr)

        shared_pool().run([functools.partial(chunk, lo, hi) for lo, hi in split_rows(rows, parts)])

    def _check_parity(self, art: _Artifact, arr: np.ndarray, compiled: np.ndarray) -> None:
        if compiled.size == 0:
            return
        with eval_mode(self.model):
            eager = np.asarray(self.model(Tensor(arr)).data)
        params64 = {p: np.asarray(v, np.float64)
                    for p, v in zip(art.plan.params, art.params.arrays(strict=True) or [], strict=True)}
        rows = arr.reshape(-1, *art.features)
        # the traced graph, not the fused one: overflow inside a linear's pre-activation must show
        ref = reference_and_overflow(art.traced, rows, params64)
        report = check_parity(compiled.reshape(len(rows), -1), eager.reshape(len(rows), -1),
                              ref.values.reshape(len(rows), -1), max_eager_error=CHECK_EAGER_SLACK,
                              overflow_rows=ref.overflow_rows, rounding=ref.rounding.reshape(len(rows), -1))
        if not report.ok:
            raise ParityError(f"compiled output differs from the eager model: {report}")

    # ---------------------------------------------------------------- inspecting
    @property
    def graph(self) -> Graph:
        return self._require("graph").optimized

    def _require(self, what: str) -> _Artifact:
        if self._artifact is None:
            raise RuntimeError(f"{what} is not available before the first call: the model compiles on "
                               "its first input, or pass input_shape=(None, features) to compile()")
        return self._artifact

    def dump(self, stage: str = "optimized") -> str:
        """Text of one stage: 'traced', 'optimized', 'llvm' (before and after LLVM passes), 'asm'."""
        if stage not in STAGES:
            raise ValueError(f"unknown dump stage {stage!r}; stages are {', '.join(STAGES)}")
        art = self._require(f"dump({stage!r})")
        if stage == "traced":
            return format_graph(art.traced)
        if stage == "optimized":
            return format_graph(art.optimized)
        text = self._llvm_ir(art)
        if stage == "llvm":
            return ("; ==== generated LLVM IR (before LLVM optimization) ====\n" + text
                    + f"\n; ==== after LLVM optimization (speed_level={self._speed_level}) ====\n"
                    + optimized_ir(text, self._speed_level))
        return assembly(text, self._speed_level)

    def pass_dumps(self) -> list[tuple[str, str]]:
        """(stage name, graph text) for the traced graph and after every pass, in order."""
        return list(self._require("pass_dumps()").pass_dumps)

    def explain(self) -> str:
        fused = fuse_linear in (DEFAULT_PIPELINE if self._passes is None else self._passes)
        return "\n".join(explain_fusions(self._require("explain()").optimized, compiled=not fused))

    def __repr__(self) -> str:
        state = f"features={self._artifact.features}" if self._artifact else "not compiled yet"
        return f"CompiledModel({type(self.model).__name__}, {state}, calls={self.stats.calls})"


def _flops_per_row(g: Graph) -> int:
    total = 0
    for n in g.nodes():
        shape = g.shape(n)
        if not shape or shape[0] is not None:
            continue
        if g.op(n) in ("linear", "matmul"):
            total += 2 * g.shape(g.args(n)[1])[0] * math.prod(shape[1:])
        else:
            total += math.prod(shape[1:])
    return total


def compile(model: Layer, *, input_shape: Any = None, training: bool = False, threads: int | None = None,
            check: bool = False, passes: list | None = None, speed_level: int = 0) -> CompiledModel:
    """Compile `model` for inference. Without `input_shape` it compiles on the first call."""
    if training:
        raise NotImplementedError(
            "training-mode dropout is not compiled yet: tinycomp.compile builds inference models "
            "(eval-mode dropout is folded away); call compile(model) without training=True"
        )
    return CompiledModel(model, input_shape=input_shape, threads=threads, check=check, passes=passes,
                         speed_level=speed_level)
