"""The compile pipeline: trace -> passes -> lower -> JIT (or the object cache) -> a runnable artifact.

`build` turns a model and its input features into an `Artifact`: the traced and optimized graphs
with the text of every stage, the native entry behind a `runtime.call.CompiledCall`, and the
binding to the live model (structure guard, live parameters). `CompiledModel` (compiler.py) is the
front that decides when to build and calls the artifact; the dumps and the `check=True` comparison
with the eager model live here too, beside what they read.
"""

from __future__ import annotations

import contextlib
import ctypes
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from llvmlite import ir

from .binding import DropoutDraws, LiveParams, StructureGuard, layers_in_mode
from .checks import is_whole_number
from .codegen.cgutils import FinishedListener
from .codegen.fingerprint import graph_fingerprint
from .codegen.module import LoweringError, ModulePlan, lower_graph, lowered_module
from .codegen.target import Target, host
from .errors import CompileError, ParityError
from .frontend.inputs import feature_shape  # noqa: F401 - export reads the compiled input shape here
from .frontend.tensor import Tensor
from .frontend.tracer import trace
from .ir.graph import Graph, paused_gc
from .ir.leading import lead_mismatch
from .ir.passes import run_pipeline
from .ir.philox import DropoutStream
from .ir.printer import format_graph
from .ir.summary import flops_per_row
from .logs import channel, log
from .parity import check_parity, live_floats_per_row, reference_and_overflow
from .runtime import cache
from .runtime.buffers import ScratchPool
from .runtime.call import CompiledCall
from .runtime.engine import JitEngine, PartPipeline, assembly, optimized_ir
from .runtime.kernel import NativeKernel

STAGES = ("traced", "optimized", "llvm", "asm")
SPEED_LEVELS = (0, 1, 2, 3)  # LLVM's new-pass-manager levels (`codegen.target.optimize`)
# check=True: eager float32 must be this close (relative to the output scale) to the float64 run of the
# compiled graph; float32 rounding is ~1e-6 here, a graph that diverged from the model is far beyond.
CHECK_EAGER_SLACK = 1e-3
# check=True runs the graph in float64 and judges the result this many bytes of intermediates at a
# time, about (values and their rounding estimates: 16 bytes a float): the whole batch at once took
# ~32 x its float32 input (a 0.75 GB batch would have outgrown a 24 GB host past its MemoryError check)
CHECK_CHUNK_BYTES = 64 << 20


class PassDumps(Sequence):
    """(stage, graph text) for the traced graph and after each pass, formatted when first read (a
    10,000-op chain traces to 20,000 nodes no one may ever print). The traced graph is kept anyway;
    a pass that changed the graph leaves a copy (passes keep changing it: cheaper than its text);
    one that changed nothing repeats the text before it."""

    def __init__(self, traced: Graph):
        self._items: list[tuple[str, Graph | str | None]] = [("traced", traced)]

    def after_pass(self, name: str, g: Graph, changed: bool) -> None:
        self._items.append((name, g.copy() if changed else None))
        if channel("passes"):
            log("passes", "after %s (%s):\n%s", name, "changed" if changed else "no change", self[-1][1])

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(len(self))[i]]
        i = range(len(self))[i]
        at = next(j for j in range(i, -1, -1) if self._items[j][1] is not None)
        stage, held = self._items[at]
        if isinstance(held, Graph):  # formatted once, then only the text is kept
            held = format_graph(held)
            self._items[at] = (stage, held)
        return self._items[i][0], held


@dataclass
class Artifact:
    """One compilation: everything derived from the model's structure and input features."""

    features: tuple[int, ...]
    traced: Graph
    optimized: Graph
    pass_dumps: PassDumps
    plan: ModulePlan
    engine: JitEngine  # owns the machine code: it lives as long as the artifact
    call: CompiledCall
    params: LiveParams
    guard: StructureGuard
    speed_level: int
    cache_hit: bool
    compile_ms: float
    lead_shapes: dict = field(default_factory=dict)  # leading dims of the input -> eager output shape
    training: bool = False  # compiled with the layers in training mode
    draws: DropoutDraws | None = None  # where each call's dropout masks come from, if it draws any
    more_inputs: tuple[tuple, ...] = ()  # forward(x, mask, ...): the shapes of the inputs after x (None: batch)

    def hot_table(self) -> tuple[Any, ctypes.Array] | None:
        """(the binding's hot table, which keeps the weights alive; the pointer table it holds) while
        the model's structure and parameter arrays are unchanged (the hot path's checks), else None."""
        guard = self.guard
        hot = self.params.hot_table(guard.held) if guard.same() else None
        return None if hot is None else (hot, hot[-1])  # the binding keeps its pointer table last


def checked_passes(passes: Any) -> list | None:
    """`passes` as compile() takes it: None (the default pipeline) or a list of `Graph -> bool` passes."""
    if passes is None or (isinstance(passes, (list, tuple)) and all(callable(p) for p in passes)):
        return passes if passes is None else list(passes)
    raise TypeError("passes must be a list of graph passes (functions `def name(g: Graph) -> bool`, e.g. "
                    f"tinycomp.ir.passes.fuse_linear), or None for the default pipeline; got {passes!r}")


def checked_speed_level(level: Any) -> int:
    if is_whole_number(level) and level in SPEED_LEVELS:
        return int(level)
    raise ValueError(f"speed_level must be one of {', '.join(map(str, SPEED_LEVELS))} (LLVM's pipeline levels); "
                     f"got {level!r}")


def build(model: Any, features: tuple[int, ...], *, passes: list | None, speed_level: int,
          threads: int | None, scratch: ScratchPool, training: bool = False,
          more_inputs: tuple[tuple, ...] = ()) -> Artifact:
    """Compile `model` for inputs (N, *features), its layers in training mode if `training`; the
    caller holds the model's lock. A forward() of several inputs takes the shapes of the others in
    `more_inputs`."""
    start = time.perf_counter()
    traced, optimized, dumps = optimized_graph(model, features, passes=passes, training=training,
                                               more_inputs=more_inputs)
    # The model as traced, its forward's own writes included (a call counter, a list it appends to:
    # taken before the trace, those would recompile every call), taken before the code generation:
    # a model another thread edits during it (tens of ms) is found changed at the next call and
    # compiled again. Only an edit during the trace itself can still be taken for what was traced.
    guard = StructureGuard(model)
    plan, engine, key, hit = codegen(optimized, speed_level)
    shapes = [tuple(optimized.shape(p)) for p in plan.params]
    kernel = NativeKernel(engine, plan, features, shapes, more_inputs)
    artifact = Artifact(
        features=features, traced=traced, optimized=optimized, pass_dumps=dumps, plan=plan, engine=engine,
        call=CompiledCall(kernel, features, flops_per_row(optimized), threads, scratch),
        params=LiveParams(model, [optimized[p]["path"] for p in plan.params], shapes, kernel.pack),
        guard=guard, speed_level=speed_level, cache_hit=hit,
        compile_ms=(time.perf_counter() - start) * 1e3,
        training=training, more_inputs=more_inputs,
        # a forward may call a dropout with training=True whatever the mode: its masks are drawn too
        draws=DropoutDraws(model, traced, plan.dropouts) if training or plan.dropouts else None,
    )
    objects = len(engine.objects)
    log("compile", "compiled %s for input (N, %s) in %.1f ms (cache key %s, %s, %d object file%s)",
        type(model).__name__, ", ".join(map(str, features)), artifact.compile_ms, key[:16],
        "cache hit" if hit else "built", objects, "" if objects == 1 else "s")
    if channel("llvm"):
        log("llvm", "LLVM IR:\n%s", llvm_ir(artifact))
    if channel("asm"):
        log("asm", "assembly:\n%s", assembly(llvm_ir(artifact), speed_level))
    return artifact


def optimized_graph(model: Any, features: tuple[int, ...], *, passes: list | None, training: bool = False,
                    more_inputs: tuple[tuple, ...] = ()) -> tuple[Graph, Graph, PassDumps]:
    """(traced graph, graph after the passes, the text of every stage) for inputs (N, *features)
    (and `more_inputs`, the shapes of a forward's other inputs): what `build` compiles and
    `tinycomp.export` exports. The caller holds the model's lock."""
    with paused_gc():  # the passes too: graphs are many small objects and no cycles
        traced = trace(model, [(None, *features), *more_inputs] if more_inputs else (None, *features),
                       training=training)
        dumps = PassDumps(traced)
        if channel("graph"):
            log("graph", "traced graph of %s:\n%s", type(model).__name__, dumps[0][1])
        optimized = run_pipeline(traced, passes, on_pass=dumps.after_pass)
        _check_interface(traced, optimized)
        return traced, optimized, dumps


def _check_interface(traced: Graph, optimized: Graph) -> None:
    """The passes must keep the inputs and the output as traced: the native entry is called with
    buffers of those shapes, so a pass that changed them would have it read or write past them."""
    for role, nodes in (("inputs", lambda g: g.inputs), ("output", lambda g: g.nodes("output"))):
        before, after = ([(n, g.shape(n)) for n in nodes(g)] for g in (traced, optimized))
        if before != after:
            raise CompileError(f"the passes changed the graph's {role} from {before} to {after}; a pass must keep "
                               "what the model takes and returns")


def lower(g: Graph, target: Target | int) -> ModulePlan:
    """The module for g (`codegen.module.lower_graph`); what it cannot compile is a CompileError."""
    with _compile_errors():
        return lower_graph(g, target)


@contextlib.contextmanager
def lowered(g: Graph, target: Target | int,
            finished: FinishedListener | None = None) -> Iterator[tuple[ModulePlan, ir.Module]]:
    """`lower`, llvmlite's module not yet printed (`codegen.module.lowered_module`)."""
    with _compile_errors(), lowered_module(g, target, finished) as plan_and_module:
        yield plan_and_module


@contextlib.contextmanager
def _compile_errors() -> Iterator[None]:
    try:
        yield
    except LoweringError as exc:
        raise CompileError(str(exc)) from exc


def codegen(g: Graph, speed_level: int) -> tuple[ModulePlan, JitEngine, str, bool]:
    """Lower and JIT-compile g, or load its object code from the on-disk cache: (plan, engine, cache
    key, whether the cache had it)."""
    width = host().vector_width
    fingerprint = graph_fingerprint(g, width)
    if fingerprint is None:
        cache.refuse("tinycomp's code generator has no source or bytecode files to fingerprint (it was "
                     "loaded some other way), so cache keys could not tell its versions apart")
        key, hit = "(not cached)", None
    else:
        key = cache.cache_key(fingerprint, {"speed_level": speed_level})
        hit = cache.load(key)
    if hit is not None:
        meta, objects = hit
        try:
            plan, engine = ModulePlan.from_meta(meta, g, width), JitEngine(objects=objects)
            engine.address(plan.entry)
        except Exception as exc:  # an authentic entry that does not fit this graph: rebuild, never trust it
            log("compile", "cache entry %s unusable (%s); rebuilding", key[:16], exc)
        else:
            return plan, engine, key, True
    # printed in parts, each compiled as soon as printed, the first while the rest is still being built
    with PartPipeline(speed_level) as pipeline, lowered(g, width, pipeline.finished) as (plan, module):
        objects = pipeline.objects(module)
    engine = JitEngine(objects=objects)
    if fingerprint is not None:
        cache.store(key, plan.to_meta(), engine.objects)
    return plan, engine, key, False


def llvm_ir(art: Artifact) -> str:
    if not art.plan.llvm_ir:  # printed in parts at compile time, or loaded from the cache: lower again to show it
        art.plan.llvm_ir = lower_graph(art.optimized, host().vector_width).llvm_ir
    return art.plan.llvm_ir


def check_stage(stage: str) -> None:
    if stage not in STAGES:
        raise ValueError(f"unknown dump stage {stage!r}; stages are {', '.join(STAGES)}")


def stage_text(art: Artifact, stage: str) -> str:
    """Text of one stage: 'traced', 'optimized', 'llvm' (before and after LLVM passes), 'asm'."""
    check_stage(stage)
    if stage == "traced":
        return format_graph(art.traced)
    if stage == "optimized":
        return format_graph(art.optimized)
    text = llvm_ir(art)
    if stage == "llvm":
        return ("; ==== generated LLVM IR (before LLVM optimization) ====\n" + text
                + f"\n; ==== after LLVM optimization (speed_level={art.speed_level}) ====\n"
                + optimized_ir(text, art.speed_level))
    return assembly(text, art.speed_level)


def eager_out_shape(model: Any, art: Artifact, lead: tuple[int, ...]) -> tuple[int, ...]:
    """The output shape eager gives an input of shape (*lead, *features), lead not one batch dimension.

    The native code computes prod(lead) rows as a batch. That is eager's result only where the
    forward treats the leading dimensions as a batch (`ir.leading.lead_mismatch`: no positive dim
    reaching into them, say); then only the shape can differ (a reshape(-1, ...) in the model
    flattens leading dimensions). Traced once per leading shape and remembered."""
    known = art.lead_shapes.get(lead)
    if known is not None:
        return known
    given, batch = (*lead, *art.features), f"pass a batch of shape (batch, {', '.join(map(str, art.features))})"
    try:
        g = trace(model, given, training=art.training)
        shape = tuple(g.shape(g.args(g.nodes("output")[0])[0]))
    except Exception as exc:
        raise ValueError(f"this model cannot take an input of shape {given} ({exc}); {batch}") from None
    why = lead_mismatch(art.traced, g, lead)
    if why is not None:
        one = ", e.g. x[None] for one sample" if not lead else ""
        raise ValueError(f"for an input of shape {given} this model's forward does not compute each sample as it "
                         f"does in a batch ({why}), so the compiled code would not give eager's result; {batch}{one}")
    if len(art.lead_shapes) < 64:  # bounded: a stream of odd shapes must not grow memory
        art.lead_shapes[lead] = shape
    return shape


def check_against_eager(model: Any, art: Artifact, arr: np.ndarray, compiled: np.ndarray,
                        draws: tuple[list[DropoutStream], list[DropoutStream]] | None = None,
                        more: Sequence[np.ndarray] = ()) -> None:
    """check=True: raise ParityError unless `compiled` (the output for input `arr`) passes the
    parity rule against the eager model in eval mode, both judged by the traced graph in float64.
    A training-mode call (`draws`: what `DropoutDraws.draw` gave it) is replayed in training mode
    with the same masks; the caller holds the dropout streams' lock from the draw until now."""
    if compiled.size == 0:
        return
    with layers_in_mode(model, art.training):
        if art.draws is not None and draws is not None:
            art.draws.rewind(draws[1])  # the eager run draws this call's masks again
        eager = np.asarray(model(Tensor(arr), *map(Tensor, more)).data)
    params64 = {p: np.asarray(v, np.float64)
                for p, v in zip(art.plan.params, art.params.arrays(strict=True) or [], strict=True)}
    rows = arr.reshape(-1, *art.features)
    n = len(rows)
    compiled, eager = compiled.reshape(n, -1), eager.reshape(n, -1)
    streams = dict(zip(art.plan.dropouts, draws[0], strict=True)) if draws else None
    batched = [art.traced.shape(i)[:1] == (None,) for i in art.traced.inputs]
    step = _check_slice_rows(art, rows, compiled, streams)
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        # the traced graph, not the fused one: overflow inside a linear's pre-activation must show
        ref = reference_and_overflow(art.traced, [a[lo:hi] if b else a for a, b in
                                                  zip([rows, *more], batched, strict=True)], params64, streams=streams)
        report = check_parity(compiled[lo:hi], eager[lo:hi], ref.values.reshape(hi - lo, -1),
                              max_eager_error=CHECK_EAGER_SLACK, overflow_rows=ref.overflow_rows,
                              rounding=ref.rounding.reshape(hi - lo, -1), first_row=lo)
        if not report.ok:
            raise ParityError(f"compiled output differs from the eager model: {report}")


def _check_slice_rows(art: Artifact, rows: np.ndarray, compiled: np.ndarray, streams: dict | None) -> int:
    """Rows check=True runs and judges at a time: every sample is computed and judged on its own,
    so slices of about CHECK_CHUNK_BYTES of float64 values and estimates of the traced graph (not
    the fused one: its attention scores are there); a training-mode call's masks are numbered from
    the batch's first element, so its whole batch at once."""
    if streams:
        return len(rows)
    per_row = 16 * (live_floats_per_row(art.traced) + (rows.size + compiled.size) // len(rows))
    return max(1, CHECK_CHUNK_BYTES // per_row)
