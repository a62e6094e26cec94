"""`compile(model)`: a Tensor-in, Tensor-out callable over the compile driver and the runtime call path.

`CompiledModel` decides when to compile (on the first call, again when the model's structure
changed) and hands each call to the artifact `driver.build` made: `runtime.call.CompiledCall` runs
it, `binding.LiveParams` supplies the live parameters. The stages behind it: driver.py.
"""

from __future__ import annotations

import contextlib
import functools
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from . import driver
from .binding import native_watch
from .checks import is_whole_number
from .compile_lock import CompileLock
from .driver import Artifact
from .errors import CompileError
from .frontend import streams
from .frontend.inputs import (
    check_compilable,
    check_input_names,
    compile_input_spec,
    dims_text,
    fits_features,
    given_inputs,
    input_names,
    positional_inputs,
    shapes_text,
)
from .frontend.layers import Layer, model_lock
from .frontend.tensor import Tensor
from .frontend.tracer import SymbolicTensor
from .frontend.walk import warn_if_dropout_active
from .inspecting import ShowsCompilation
from .logs import log
from .runtime import native_guard
from .runtime.buffers import ScratchPool, as_native_float32
from .runtime.call import as_input_array
from .runtime.native_guard import NativeHotCall

# Compiles one call may run when its parameters no longer fit the code: one for a layer resized in
# place, more while another thread keeps editing the model (each compile then found it changed).
RECOMPILES_PER_CALL = 3
_new_tensor = Tensor.__new__


@dataclass
class CompileStats:
    compiles: int = 0
    compile_ms: float = 0.0  # of the most recent compile
    calls: int = 0
    cache_hits: int = 0


class CompiledModel(ShowsCompilation):
    """A model compiled to native code. Call it like the model: `fast(x)` -> Tensor.

    - An inference model by default: dropout is folded away as in eval mode. With `training=True`
      every layer runs in training mode and each Dropout draws its masks from the generator of
      `tinycomp.nn.manual_seed`, per layer and call, exactly as the eager layer does: after the same
      seed and the same number of calls, eager and compiled outputs match (README, "Training-mode
      dropout"). `model.train()` (or `.eval()`) after compiling changes nothing here.
    - Parameters are read live by attribute path on every call: in-place edits and rebinding a
      parameter to a Tensor or array of the same shape show in the next call.
    - Structural changes (a parameter rebound to another shape, a layer appended to a `Sequential`,
      a sub-layer or non-Tensor attribute replaced, tied weights untied) are noticed at the next call,
      which recompiles (`stats.compiles` goes up). A layer's plain NumPy arrays are read live like
      parameters; what a trace could only freeze is refused (README: "What is read live").
      A layer given another class (`layer.__class__ = Other`), or a class attribute or method of a
      layer's class rebound (`Scale.factor = 3.0`, `Sigmoid.forward = ...`), recompiles too.
    - Input: a Tensor, array or list of numbers of shape (batch, *features) or one sample (*features);
      any number dtype is cast to float32 as `Tensor` does; any strides, alignment or read-only flag.
      Bad input raises TypeError/ValueError naming what was expected and what was given; a batch too
      large for memory raises MemoryError before anything is allocated.
    - Thread-safe: any number of threads may call one compiled model at once.
    - Picklable: pickles the model and compile options (not machine code); unpickling recompiles,
      from the on-disk cache when it holds the code.
    """

    def __init__(self, model: Layer, *, input_shape: Any = None, threads: int | None = None,
                 check: bool = False, passes: list | None = None, speed_level: int = 0, training: bool = False):
        if not callable(model) or isinstance(model, (type, CompiledModel)):
            what = f"the class {model.__name__}: pass an instance, e.g. {model.__name__}(...)" \
                if isinstance(model, type) else \
                "a CompiledModel: compile its model (fast.model), or call it" if isinstance(model, CompiledModel) else \
                type(model).__name__
            raise TypeError(f"compile() expects a Layer (or callable model); got {what}")
        if threads is not None and (not is_whole_number(threads) or threads < 1):
            raise ValueError(f"threads must be None (all cores where it pays) or an int >= 1; got {threads!r}")
        for name, flag in (("training", training), ("check", check)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be True or False; got {flag!r}")
        self._model, self.check, self.training = model, check, training
        self.threads = None if threads is None else int(threads)
        self._passes, self._speed_level = driver.checked_passes(passes), driver.checked_speed_level(speed_level)
        self._pinned = input_shape is not None  # else a call of another input width recompiles for it
        self.stats = CompileStats()
        self._artifact: Artifact | None = None
        self._native: NativeHotCall | None = None  # the one-step batch-1 call, once a call armed it
        self._compile_lock = CompileLock()
        self._scratch = ScratchPool()
        if input_shape is not None:
            features, more = compile_input_spec(input_shape)
            with model_lock(model):  # compiling walks the model: as on every other path
                self._compile(features, more)

    @property
    def model(self) -> Layer:
        """The model this compiles (and reads live: its weights, its layers)."""
        return self._model

    @model.setter
    def model(self, other: Any) -> None:
        # the code, its guard and its live parameters all follow the model given to compile()
        raise AttributeError(f"a compiled model follows the model it was given ({type(self._model).__name__}); "
                             f"to run another, compile it: tc.compile(model)")

    # ---------------------------------------------------------------- pickling: model + options, no code
    def __getstate__(self) -> dict:
        art = self._artifact
        return {"model": self.model, "threads": self.threads, "check": self.check, "passes": self._passes,
                "speed_level": self._speed_level, "pinned": self._pinned, "training": self.training,
                "input_shape": _input_shape(art) if art is not None else None}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["model"], input_shape=state["input_shape"], threads=state["threads"],  # type: ignore[misc]
                      check=state["check"], passes=state["passes"], speed_level=state["speed_level"],
                      training=state.get("training", False))
        self._pinned = state.get("pinned", state["input_shape"] is not None)

    # ---------------------------------------------------------------- compiling
    def _compile(self, features: tuple[int, ...], more: tuple[tuple, ...] = ()) -> Artifact:
        try:
            art = driver.build(self.model, features, passes=self._passes, speed_level=self._speed_level,
                               threads=self.threads, scratch=self._scratch, training=self.training,
                               more_inputs=more)
        except (CompileError, ValueError) as exc:  # ValueError: the trace's shape rules (broadcasting)
            if self._pinned or not more:
                raise
            # the inputs after x were guessed to carry the batch: a mask shared by every sample does not
            hint = (f"(without input_shape every input is taken to carry the batch first, here "
                    f"{shapes_text(features, more)}; an input shared by every sample, e.g. a (seq, seq) mask, needs "
                    "compile(model, input_shape=[(None, ...), (seq, seq)]))")
            if type(exc) not in (CompileError, ValueError):  # the user's own exception: kept, with a note
                add_note = getattr(exc, "add_note", None)  # Python 3.11+
                if add_note is not None:
                    add_note(hint)
                raise
            raise type(exc)(f"{exc}\n{hint}") from exc
        self._artifact = art
        self._native = None  # armed again by the first call that runs the new code
        self.stats.compiles += 1
        self.stats.cache_hits += art.cache_hit
        self.stats.compile_ms = art.compile_ms
        return art

    def _ensure_compiled(self, arr: Any, others: Sequence[Any] = ()) -> Artifact:
        """The artifact to run `arr` (and the `others` of a forward of several inputs) with: compiled on
        the first call, again after the model's structure changed, and, unless compile() was given
        input_shape, for a new input width (every other input then carries the batch too)."""
        features = arr.shape[1:] if arr.ndim > 1 else arr.shape
        more = tuple((None, *a.shape[1:]) for a in others)
        art = self._artifact
        if art is None:
            check_compilable(arr, others)
            with self._compile_lock.held(self.model):  # two threads making the first call compile once
                art = self._artifact
                if art is None:
                    return self._compile(features, more)
            # another thread's first call compiled meanwhile, maybe for another width: checked below
        if len(others) != len(art.more_inputs) and self._pinned:  # unpinned, forward(x, mask=None) follows below
            names = art.plan.inputs
            raise TypeError(f"this compiled model takes {len(names)} input(s) ({', '.join(names)}), as compile() "
                            f"was given input_shape={_input_shape(art)}; got {1 + len(others)}")
        follow = not self._pinned and (not fits_features(art.features, arr.shape) or more != art.more_inputs)
        if not art.guard.unchanged():
            return self._recompile(art, "the structure of the model changed", features if follow else art.features,
                                   arr.shape, more if follow else art.more_inputs)
        if follow:
            check_compilable(arr, others, f"it runs inputs of {_input_shape(art)}; ")
            return self._recompile(art, f"the input shape changed from {_input_shape(art)} to "
                                        f"{tuple(arr.shape)}" + "".join(f", {a.shape}" for a in others),
                                   features, arr.shape, more)
        return art

    def _recompile(self, art: Artifact, why: str, features: tuple[int, ...], given: tuple = (),
                   more: tuple[tuple, ...] | None = None) -> Artifact:
        more = art.more_inputs if more is None else more
        # the model's lock first, as tracing takes it: one order everywhere, so no two threads wait on each other
        with self._compile_lock.held(self.model):  # several threads noticing one change recompile once
            current = self._artifact
            if current is not art and current is not None and (current.features, current.more_inputs) == (features,
                                                                                                            more):
                return current
            log("compile", "%s since %s was compiled: recompiling", why, type(self.model).__name__)
            try:
                return self._compile(features, more)
            except CompileError as exc:
                raise CompileError(self._no_longer_fits(art, features, more, given, exc)) from exc
            except ValueError as exc:
                raise ValueError(self._no_longer_fits(art, features, more, given, exc)) from exc

    def _no_longer_fits(self, art: Artifact, features: tuple[int, ...], more: tuple[tuple, ...], given: tuple,
                        exc: Exception) -> str:
        """Why recompiling failed, naming the width compiled for and the input's."""
        if more != art.more_inputs:  # other inputs than before (one more, a mask of another shape)
            return (f"compiled model takes {1 + len(art.more_inputs)} input(s) of shapes "
                    f"{shapes_text(art.features, art.more_inputs)} (N: the batch) as compiled before; this call passes "
                    f"{1 + len(more)} of shapes {shapes_text(features, more)}, and the model cannot be compiled for "
                    f"those: {exc}")
        if features == art.features and self._pinned:
            return (f"the model changed since it was compiled and no longer takes input_shape=(None, "
                    f"{dims_text(features)}), which was given to compile(): {exc}; the input has shape {tuple(given)}: "
                    "compile again with the input shape the model takes now (or without input_shape)")
        if features == art.features:  # the input is as before: the model itself no longer runs on it
            return (f"the model changed since it was compiled and can no longer be compiled for its input of shape "
                    f"{tuple(given)}: {exc}")
        return (f"compiled model expects input of shape (batch, {dims_text(art.features)}) as compiled before; "
                f"the input has shape {tuple(given)}, and the model cannot take that either: {exc}")

    def _rows(self, art: Artifact, arr: Any, others: Sequence[Any]) -> tuple[int, tuple]:
        try:
            if art.more_inputs or others:  # several inputs: each (batch, *its features), one batch size
                rows = art.call.several_rows([arr, *others])
                return rows, (rows, *art.call.out_row)
            return art.call.rows(arr, functools.partial(driver.eager_out_shape, self.model, art))
        except ValueError as exc:
            if not self._pinned:
                raise
            raise ValueError(f"{exc}; compile() was given input_shape={_input_shape(art)}: compile "
                             "without it to follow the input's shape") from None

    # ---------------------------------------------------------------- calling
    def __call__(self, x: Any, *more: Any, **named: Any) -> Tensor:
        """`fast(x)`, or `fast(x, mask)` / `fast(x, mask=mask)` for a forward() of several Tensor inputs."""
        if named:
            x, *rest = positional_inputs(self.model, x, more, named)
            more = tuple(rest)
        if more:
            if any(m is None or isinstance(m, numbers.Number) for m in more):  # `fast(x, None)`: without it
                more = given_inputs(self.model, more)
            more = tuple([m.data if type(m) is Tensor else m for m in more])  # the arrays, for every path
        a = x.data if type(x) is Tensor else x
        native = self._native  # armed for inference code only (`_arm`)
        if native is not None and not self.check:  # check=True compares with eager on every call
            out = native(a, more)
            if out is not None:
                self.stats.calls += 1
                y = _new_tensor(Tensor)  # Tensor._adopt inlined: a batch-1 call counts every 0.1 us
                y.data, y.requires_grad, y.grad = out, False, None
                return y
        art = self._artifact
        if art is not None and not self.check and len(more) == len(art.more_inputs):  # check=True: always _call
            out = art.call.hot(a, art, more, art.draws)
            if out is not None:
                self.stats.calls += 1
                self._arm(art)
                return Tensor._adopt(out)
        return self._call(x, *more)

    def _arm(self, art: Artifact) -> None:
        """Offer the native hot call (runtime/native_guard.py) for what the last call found: the
        model as compiled and its parameter arrays unchanged. Re-armed after anything it watches
        moved, once a call on the Python paths has checked the model again."""
        native = self._native
        if self.check or art.draws is not None or art.call.kernel.draws or \
                len(art.more_inputs) > native_guard.MAX_MORE_INPUTS or not native_guard.AVAILABLE or \
                (native is not None and native.armed_for is art and not native.stale):
            return  # check=True and training-mode calls (they draw masks) always take _call
        hot = art.params.hot_table(art.guard.held) if art.guard.same() else None
        if hot is None:
            return
        watch = native_watch(art.guard, hot)
        if watch is None:
            return
        words, keep = watch
        call = art.call
        armed = NativeHotCall(
            art.engine.address(art.plan.entry), hot[-1], call.features, call.out_row, call.hot_rows, call.scratch,
            art.plan.scratch, words, keep, armed_for=art, more_inputs=art.call.kernel.more_inputs)
        # The words' values were just read (the call compares against them): checked again now, so
        # that a thread rebinding a weight since the check above cannot arm the old table with the
        # new values. A change after this second check moves a word, and the call falls back.
        if art.guard.same() and art.params.hot_table(art.guard.held) is hot:
            self._native = armed

    def _call(self, x: Any, *more: Any) -> Tensor:
        """Every call the hot path does not take: any input shape or type, first calls, recompiles,
        several inputs."""
        for t in (x, *more):
            if isinstance(t, SymbolicTensor):  # its .data would say "reads .data", which the user's code never did
                raise CompileError(f"{t.where()} calls a compiled model ({type(self.model).__name__}) on a traced "
                                   "tensor: inside a forward() being compiled, call the model itself (fast.model), "
                                   "which the trace then follows")
        check_input_names(self.model, x)  # a DataFrame is read by position: its columns must be the fitted ones
        arrays = []
        for i, t in enumerate((x, *more)):
            try:
                arrays.append(as_input_array(t.data if isinstance(t, Tensor) else t))
            except (TypeError, ValueError) as exc:
                if not more:
                    raise
                name = _input_name(self.model, 1 + len(more), i)  # which of several is wrong
                raise type(exc)(str(exc).replace("compiled model input", f"compiled model input {name}", 1)) \
                    from None
        arr, *others = arrays
        art = self._ensure_compiled(arr, others)
        held = art.guard.held  # as checked just now: the parameter table is offered to the hot path with it
        rows, out_shape = self._rows(art, arr, others)
        params = art.params.table()
        compiles, misfit = 0, ""
        while params is None:  # a parameter was given another shape, or another thread is editing the model
            if compiles == RECOMPILES_PER_CALL:
                raise RuntimeError(f"{type(self.model).__name__} changed again while each of {compiles} compiles "
                                   "for this call ran: another thread is editing its layers (or its forward() "
                                   f"changes them each time it runs); call it again once the edits are done{misfit}")
            art = self._recompile(art, "a parameter changed shape", art.features, arr.shape)
            compiles += 1
            held = art.guard.held
            rows, out_shape = self._rows(art, arr, others)
            params = art.params.table()
            if params is None and art.guard.unchanged():
                # Just compiled from the model as it stands, yet a parameter does not fit: another thread
                # changed it since, even if the guard saw the same objects (layers swapped back and forth)
                try:
                    art.params.arrays(strict=True)
                except ValueError as exc:
                    misfit = f" (the last: {str(exc).split(';')[0]})"  # not its advice: this call compiles again
        x32, out = art.call.buffers(arr, rows)
        more32 = [as_native_float32(a) for a in others]
        table, used = params  # `used` keeps every array the table points into alive during the call
        # check=True in training mode replays the call's draws eagerly: no other call may draw meanwhile
        with streams.lock() if self.check and art.draws else contextlib.nullcontext():
            # every call takes its layers' next masks, an empty batch too: as an eager call would
            draws = art.draws.draw() if art.draws else None
            if rows:
                art.call.run(x32, table, out, draws[0] if draws else None, more32)
                art.params.remember(held, table, used)
                self._arm(art)
            self.stats.calls += 1
            y = out.reshape(out_shape)
            if self.check:
                driver.check_against_eager(self.model, art, x32, y, draws, more32)
        return Tensor._wrap(y)

    def __repr__(self) -> str:
        state = f"features={self._artifact.features}" if self._artifact else "not compiled yet"
        return f"CompiledModel({type(self.model).__name__}, {state}, calls={self.stats.calls})"


def _input_name(model: Any, count: int, i: int) -> str:
    """Input i of `count` as forward() names it, quoted ('mask'), or by position where it cannot say."""
    try:
        return repr(input_names(model, count)[i])
    except TypeError:
        return f"{i + 1} of {count}"


def _input_shape(art: Artifact) -> Any:
    """The input_shape the artifact was compiled for, as compile() takes it."""
    first = (None, *art.features)
    return [first, *art.more_inputs] if art.more_inputs else first


def compile(model: Layer, *, input_shape: Any = None, training: bool = False, threads: int | None = None,
            check: bool = False, passes: list | None = None, speed_level: int = 0) -> CompiledModel:
    """Compile `model` to native code (for inference unless `training=True`); call the result like the model.

    The model's `forward()` is traced into a graph (`tinycomp.trace`), the passes fold eval-mode dropout
    away and fuse each matmul + bias + activation into one `linear` node, and the graph is lowered to
    LLVM IR and JIT-compiled for this CPU. The result returns the eval-mode output of the eager model
    (within float32 rounding: README, "Numerics and weights") for every batch size, with one kernel.

    Args:
        model: a `tinycomp.nn.Layer` (a `Sequential`, or your own subclass) whose `forward` uses
            `Tensor` operations. Its parameters are read live on every call: in-place edits and
            rebinding a weight to a Tensor or array of the same shape show in the next call.
        input_shape: `(None, features...)`, e.g. `(None, 784)`; `None` is the batch dimension. Given,
            the model compiles now and only takes inputs of these features (others raise ValueError
            naming both shapes). Left out, it compiles on the first call, from that input's shape,
            and compiles again when a later call brings inputs of another width.
        training: False (the default) compiles an inference model: dropout is left out, as in eval
            mode, and a model whose Dropout layers are in training mode (every new model is, until
            `model.eval()`) gets one UserWarning, since `model(x)` then applies dropout and differs
            from the compiled result. True compiles every layer in training mode: each Dropout
            draws its masks exactly as the eager layer does (per layer and call, from the generator
            of `tinycomp.nn.manual_seed`), so after the same seed and number of calls both match
            (README, "Training-mode dropout").
        threads: native threads for large batches. None (the default) splits a batch over all cores
            where that pays (from 100 MFLOP of work in a call); 1 keeps every call on the calling thread.
        check: also run the eager model on every call and raise `tinycomp.ParityError` when the two
            differ beyond the parity rule. For debugging: it costs the eager model plus a float64 run
            of the graph per call: on the reference MLP 3.2 ms at batch 1 (about 250x the compiled
            call), 45x at batch 32 and 19x at batch 512 (`python benchmarks/check_cost.py`).
        passes: the graph passes to run, in order (default `tinycomp.ir.passes.DEFAULT_PIPELINE`:
            fold_dropout, fuse_linear, fuse_attention, fuse_layer_norm, fuse_elementwise, eliminate_dead_code);
            each is `def name(g: Graph) -> bool`. `passes=[]` compiles the traced graph as it is.
        speed_level: LLVM's optimization pipeline level, 0-3. The kernels are vectorized by hand,
            so 0 (the default) runs as fast as 3 and compiles about 4x faster.

    Returns:
        A `CompiledModel`: `fast(x)` takes a Tensor, NumPy array or nested list of shape
        `(batch, features...)` (or one sample) and returns a Tensor. `fast.dump(stage)` shows the
        "traced", "optimized", "llvm" and "asm" stages, `fast.explain()` what fused, `fast.stats` the
        compile count and time.

    Example:
        >>> import numpy as np, tinycomp as tc
        >>> from tinycomp.nn import Sequential, Linear, ReLU, Dropout
        >>> model = Sequential(Linear(784, 256), ReLU(), Dropout(0.5), Linear(256, 10))
        >>> model.eval()  # eval mode: dropout off, as in the compiled model  # doctest: +ELLIPSIS
        Sequential(...)
        >>> fast = tc.compile(model, input_shape=(None, 784))
        >>> x = np.random.rand(32, 784).astype(np.float32)
        >>> fast(x).shape
        (32, 10)
        >>> bool(np.allclose(fast(x).data, model(x).data, atol=1e-4))
        True
    """
    if not training and callable(model):  # CompiledModel names what is not a model
        warn_if_dropout_active(model)
    return CompiledModel(model, input_shape=input_shape, threads=threads, check=check, passes=passes,
                         speed_level=speed_level, training=training)
