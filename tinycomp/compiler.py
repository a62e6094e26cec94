"""`compile(model)`: trace -> passes -> codegen -> runtime, behind a Tensor-in, Tensor-out callable."""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .codegen.module import LoweringError, ModulePlan, graph_fingerprint, lower_graph
from .codegen.target import host
from .errors import CompileError, ParityError
from .frontend.layers import Layer
from .frontend.tensor import Tensor, to_float32
from .frontend.tracer import resolve_path, trace
from .ir.graph import Graph
from .ir.interpret import interpret
from .ir.passes import run_pipeline
from .ir.printer import format_graph
from .logs import channel, log
from .parity import check_parity
from .runtime import cache
from .runtime.buffers import ScratchPool, aligned_empty
from .runtime.engine import JitEngine, assembly, optimized_ir
from .runtime.kernel import NativeKernel
from .runtime.threads import parallel_parts, shared_pool, split_rows

STAGES = ("traced", "optimized", "llvm", "asm")


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
    param_paths: list[str]
    param_shapes: list[tuple[int, ...]]
    flops_per_row: int
    out_row: tuple[int, ...] = field(default=())


def _feature_shape(input_shape: Any) -> tuple[int, ...]:
    shape = tuple(input_shape)
    if len(shape) < 2 or any(not isinstance(d, int) or d <= 0 for d in shape[1:]):
        raise ValueError(
            f"input_shape must be (batch, features...) with positive feature sizes, e.g. (None, 784); "
            f"got {input_shape!r}"
        )
    return shape[1:]


def as_input_array(x: Any) -> np.ndarray:
    """The float32 C-contiguous array a Tensor would hold, copying only when needed."""
    if isinstance(x, Tensor):
        arr = x.data
    elif isinstance(x, np.ndarray) and x.dtype.kind in "biuf":
        arr = x
    else:
        arr = to_float32(x)  # raises TypeError for strings, objects, ragged lists
    if arr.ndim == 0:
        raise ValueError(f"compiled model input must have at least 1 dimension; got a 0-D value {arr!r}")
    return np.ascontiguousarray(arr, dtype=np.float32)


@contextlib.contextmanager
def eval_mode(model: Layer) -> Iterator[None]:
    """Run the eager model in eval mode, then restore every layer's own training flag."""
    from .frontend.layers import _children  # the same walk set_training_mode uses

    saved: dict[int, tuple[Any, Any]] = {}
    stack: list[Any] = [model]
    while stack:
        obj = stack.pop()
        if id(obj) in saved:
            continue
        saved[id(obj)] = (obj, obj.__dict__.get("training", _UNSET) if isinstance(obj, Layer) else _UNSET)
        if isinstance(obj, Layer):
            obj.training = False
        stack.extend(_children(obj))
    try:
        yield
    finally:
        for obj, flag in saved.values():
            if isinstance(obj, Layer):
                if flag is _UNSET:
                    obj.__dict__.pop("training", None)
                else:
                    obj.training = flag


_UNSET = object()


class CompiledModel:
    """A model compiled to native code for inference. Call it like the model."""

    def __init__(self, model: Layer, *, input_shape: Any = None, threads: int | None = None,
                 check: bool = False, passes: list | None = None, speed_level: int = 0):
        if not callable(model):
            raise TypeError(f"compile() expects a Layer (or callable model); got {type(model).__name__}")
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be None (all cores where it pays) or an int >= 1; got {threads!r}")
        self.model, self.threads, self.check = model, threads, check
        self._passes, self._speed_level = passes, speed_level
        self.stats = CompileStats()
        self._artifact: _Artifact | None = None
        self._lock = threading.Lock()
        self._scratch = ScratchPool()
        if input_shape is not None:
            self._compile(_feature_shape(input_shape))

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
        artifact = _Artifact(
            features=features, traced=traced, optimized=optimized, pass_dumps=dumps, plan=plan,
            engine=engine, kernel=kernel, param_paths=[optimized[p]["path"] for p in plan.params],
            param_shapes=shapes, flops_per_row=_flops_per_row(optimized),
            out_row=tuple(plan.out_shape[1:]),
        )
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
            self.stats.cache_hits += 1
            return ModulePlan.from_meta(meta, g), JitEngine(object_code=object_code), key
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
            return art
        with self._lock:  # two threads making the first call compile once
            return self._artifact or self._compile(features)

    # ---------------------------------------------------------------- calling
    def __call__(self, x: Any) -> Tensor:
        arr = as_input_array(x)
        art = self._ensure_compiled(arr.shape[1:] if arr.ndim > 1 else arr.shape)
        rows, lead = self._rows(arr, art.features)
        params = self._read_params(art)
        out = aligned_empty((rows, *art.out_row))
        if rows:
            self._run(art, arr.reshape(rows, *art.features), params, out)
        self.stats.calls += 1
        y = out.reshape(*lead, *art.out_row)
        if self.check:
            self._check_parity(art, arr, y)
        return Tensor._wrap(y)

    @staticmethod
    def _rows(arr: np.ndarray, features: tuple[int, ...]) -> tuple[int, tuple[int, ...]]:
        nf = len(features)
        if arr.shape[arr.ndim - nf:] != features or arr.ndim < nf:
            expected = "(batch, " + ", ".join(map(str, features)) + ")"
            raise ValueError(
                f"compiled model expects input of shape {expected} (or {tuple(features)} for one sample); "
                f"got shape {arr.shape}"
            )
        lead = arr.shape[: arr.ndim - nf]
        return math.prod(lead), lead

    def _read_params(self, art: _Artifact) -> list[np.ndarray]:
        """Read every parameter live, so in-place edits and rebinding show in this very call."""
        out = []
        for path, shape in zip(art.param_paths, art.param_shapes, strict=True):
            value = resolve_path(self.model, path)
            data = value.data if isinstance(value, Tensor) else np.asarray(value)
            if data.shape != shape:
                raise ValueError(
                    f"parameter {path!r} now has shape {data.shape}, but the model was compiled with "
                    f"{shape}; compile the model again after changing layer sizes"
                )
            out.append(np.ascontiguousarray(data, dtype=np.float32))
        return out

    def _run(self, art: _Artifact, x: np.ndarray, params: list[np.ndarray], out: np.ndarray) -> None:
        rows = x.shape[0]
        parts = parallel_parts(rows, art.flops_per_row, self.threads)
        if parts <= 1:
            art.kernel.run(x, params, out, self._scratch.get(art.plan.scratch_floats(rows)))
            return

        def chunk(lo: int, hi: int) -> None:
            art.kernel.run(x[lo:hi], params, out[lo:hi], self._scratch.get(art.plan.scratch_floats(hi - lo)))

        shared_pool().run([lambda lo=lo, hi=hi: chunk(lo, hi) for lo, hi in split_rows(rows, parts)])

    def _check_parity(self, art: _Artifact, arr: np.ndarray, compiled: np.ndarray) -> None:
        with eval_mode(self.model):
            eager = np.asarray(self.model(Tensor(arr)).data)
        params64 = {p: np.asarray(v, np.float64) for p, v in zip(art.plan.params, self._read_params(art), strict=True)}
        rows = arr.reshape(-1, *art.features).astype(np.float64)
        reference = interpret(art.optimized, rows, params=params64).reshape(compiled.shape)
        report = check_parity(compiled, eager.reshape(compiled.shape), reference)
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
        from .ir.passes import explain as explain_fusions

        return "\n".join(explain_fusions(self._require("explain()").traced))

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
