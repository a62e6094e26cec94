"""`compile(model)`: a Tensor-in, Tensor-out callable over the compile driver and the runtime call path.

`CompiledModel` decides when to compile (on the first call, again when the model's structure
changed) and hands each call to the artifact `driver.build` made: `runtime.call.CompiledCall` runs
it, `binding.LiveParams` supplies the live parameters. The stages behind it: driver.py.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from typing import Any

from . import driver
from .driver import Artifact
from .frontend.layers import Layer, model_lock
from .frontend.tensor import Tensor
from .ir.graph import Graph
from .ir.passes import DEFAULT_PIPELINE, fuse_linear
from .ir.passes import explain as explain_fusions
from .logs import log
from .runtime.buffers import ScratchPool
from .runtime.call import as_input_array

STAGES = driver.STAGES


@dataclass
class CompileStats:
    compiles: int = 0
    compile_ms: float = 0.0  # of the most recent compile
    calls: int = 0
    cache_hits: int = 0


class CompiledModel:
    """A model compiled to native code for inference. Call it like the model: `fast(x)` -> Tensor.

    - Always an inference model: dropout is folded away as in eval mode. `model.train()` (or
      `.eval()`) after compiling changes nothing here; compile(training=True) is not supported.
    - Parameters are read live by attribute path on every call: in-place edits and rebinding a
      parameter to a Tensor or array of the same shape show in the next call.
    - Structural changes (a parameter rebound to another shape, a layer appended to a `Sequential`,
      a sub-layer or non-Tensor attribute replaced, tied weights untied) are noticed at the next call,
      which recompiles (`stats.compiles` goes up). A layer's plain NumPy arrays are read live like
      parameters; what a trace could only freeze is refused (README: "What is read live").
      Changing a layer's class or its class's `forward` after compiling is not seen: compile again.
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
        self._passes, self._speed_level = passes, driver.checked_speed_level(speed_level)
        self.stats = CompileStats()
        self._artifact: Artifact | None = None
        self._lock = threading.Lock()
        self._scratch = ScratchPool()
        if input_shape is not None:
            features = driver.feature_shape(input_shape)
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
    def _compile(self, features: tuple[int, ...]) -> Artifact:
        art = driver.build(self.model, features, passes=self._passes, speed_level=self._speed_level,
                           threads=self.threads, scratch=self._scratch)
        self._artifact = art
        self.stats.compiles += 1
        self.stats.cache_hits += art.cache_hit
        self.stats.compile_ms = art.compile_ms
        return art

    def _ensure_compiled(self, features: tuple[int, ...]) -> Artifact:
        art = self._artifact
        if art is not None:
            return art if art.guard.unchanged() else self._recompile(art, "the structure of the model changed")
        with model_lock(self.model), self._lock:  # two threads making the first call compile once
            return self._artifact or self._compile(features)

    def _recompile(self, art: Artifact, why: str) -> Artifact:
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
            out = art.call.hot(x.data if type(x) is Tensor else x, art)
            if out is not None:
                self.stats.calls += 1
                return Tensor._adopt(out)
        return self._call(x)

    def _call(self, x: Any) -> Tensor:
        """Every call the hot path does not take: any input shape or type, first calls, recompiles."""
        arr = as_input_array(x.data if isinstance(x, Tensor) else x)
        art = self._ensure_compiled(arr.shape[1:] if arr.ndim > 1 else arr.shape)
        held = art.guard.held  # as checked just now: the parameter table is offered to the hot path with it
        rows, out_shape = art.call.rows(arr, functools.partial(driver.eager_out_shape, self.model, art))
        params = art.params.table()
        if params is None:  # a parameter was given another shape: the code must be generated again
            art = self._recompile(art, "a parameter changed shape")
            held = art.guard.held
            rows, out_shape = art.call.rows(arr, functools.partial(driver.eager_out_shape, self.model, art))
            art.params.arrays(strict=True)  # names the parameter if it still does not fit
            params = art.params.table()
            assert params is not None
        x32, out = art.call.buffers(arr, rows)
        table, used = params  # `used` keeps every array the table points into alive during the call
        if rows:
            art.call.run(x32, table, out)
            art.params.remember(held, table, used)
        self.stats.calls += 1
        y = out.reshape(out_shape)
        if self.check:
            driver.check_against_eager(self.model, art, x32, y)
        return Tensor._wrap(y)

    # ---------------------------------------------------------------- inspecting
    @property
    def graph(self) -> Graph:
        return self._require("graph").optimized

    def _require(self, what: str) -> Artifact:
        if self._artifact is None:
            raise RuntimeError(f"{what} is not available before the first call: the model compiles on "
                               "its first input, or pass input_shape=(None, features) to compile()")
        return self._artifact

    def dump(self, stage: str = "optimized") -> str:
        """Text of one stage: 'traced', 'optimized', 'llvm' (before and after LLVM passes), 'asm'."""
        if stage not in STAGES:
            raise ValueError(f"unknown dump stage {stage!r}; stages are {', '.join(STAGES)}")
        return driver.stage_text(self._require(f"dump({stage!r})"), stage)

    def pass_dumps(self) -> list[tuple[str, str]]:
        """(stage name, graph text) for the traced graph and after every pass, in order."""
        return list(self._require("pass_dumps()").pass_dumps)

    def explain(self) -> str:
        fused = fuse_linear in (DEFAULT_PIPELINE if self._passes is None else self._passes)
        return "\n".join(explain_fusions(self._require("explain()").optimized, compiled=not fused))

    def __repr__(self) -> str:
        state = f"features={self._artifact.features}" if self._artifact else "not compiled yet"
        return f"CompiledModel({type(self.model).__name__}, {state}, calls={self.stats.calls})"


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
