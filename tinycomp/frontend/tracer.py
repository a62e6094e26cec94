"""Symbolic tracing in the style of torch.fx: run `forward()` on a `SymbolicTensor`, record a Graph.

Every Tensor op goes through `apply_op`, which hands calls on symbolic tensors to `Tracer.record`, so
the graph holds exactly the ops the eager model would run. Concrete Tensors owned by the model become
`param` nodes bound to the live Tensor and named by attribute path (`block.fc1.bias`); other
constants become `const` nodes. While tracing, each sub-layer's `forward` is wrapped (on the
instance, restored afterwards) so nodes and errors can name the layer they came from.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..errors import CompileError
from ..ir.graph import Graph, paused_gc
from ..ir.ops import OPS, REDUCTIONS, UFUNCS, combined_axes
from ..ir.shapes import BatchLayoutError, fmt_shape
from . import tensor as tensor_module
from .inputs import input_names, input_shapes
from .layers import Layer, Sequential, model_lock
from .live_reads import LiveReads, TracedArray
from .modes import in_mode
from .tensor import Tensor, apply_op
from .walk import resolve_path, walk_model

# ---------------------------------------------------------------- the symbolic tensor

def _refusing(what: str) -> Any:
    """A special method that raises the owner's CompileError for `what` the traced code did."""
    def refuse(self: Any, *_: Any) -> Any:
        raise self._refuse(what)
    return refuse


class BatchSize:
    """The batch dimension in a traced tensor's `.shape`: `N`, unknown while tracing, because the
    compiled code runs for every batch size. Using its value (comparing it, computing with it,
    passing it as a size) raises a CompileError, instead of quietly baking in the branch a
    placeholder would take (`if x.shape[0] == 1:` with None is always false)."""

    def __init__(self, tracer: Tracer):
        self._tracer = weakref.ref(tracer)  # the tracer holds this object: no cycle (Tracer.close)

    def _refuse(self, what: str) -> CompileError:
        tracer = self._tracer()
        where = tracer.where() if tracer is not None else "forward()"
        return CompileError(
            f"{where} {what} the batch size N, which is not known while tracing (compiled "
            "code runs for every batch size): branch on feature sizes only, and write -1 for N in reshape")

    def __eq__(self, other: object) -> bool:
        if isinstance(other, BatchSize):
            return True  # `x.shape == y.shape` of two traced values
        raise self._refuse("compares")

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    # a set or dict lookup compares by hash first: `n in {1}` or a cache keyed by the batch size
    # would miss every time, one branch baked in, without ever calling __eq__
    __hash__ = _refusing("looks up (a set member or dict key)")  # type: ignore[assignment]

    __lt__ = __le__ = __gt__ = __ge__ = _refusing("compares")
    __index__ = _refusing("uses as a size")
    __int__ = _refusing("converts to int")
    __float__ = _refusing("converts to float")
    __bool__ = _refusing("tests the truth of")
    __round__ = __trunc__ = __floor__ = __ceil__ = _refusing("rounds")
    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = _refusing("computes with")
    __truediv__ = __rtruediv__ = __floordiv__ = __rfloordiv__ = __mod__ = __rmod__ = __add__
    __divmod__ = __rdivmod__ = __pow__ = __rpow__ = __neg__ = __pos__ = __abs__ = __invert__ = __add__
    __and__ = __rand__ = __or__ = __ror__ = __xor__ = __rxor__ = __lshift__ = __rlshift__ = __add__
    __rshift__ = __rrshift__ = __matmul__ = __rmatmul__ = __add__

    def __repr__(self) -> str:
        return "N"


class SymbolicTensor(Tensor):
    """A Tensor that stands for a graph node; it has a shape but no data."""

    def __init__(self, tracer: Tracer, node: str, shape: tuple):
        self._tracer = tracer
        self.node = node
        self._shape = tuple(shape)
        self.requires_grad = False
        self.grad = None

    def _refuse(self, what: str) -> CompileError:
        return CompileError(
            f"{self.where()} {what} of a traced tensor; a compiled forward() may only use "
            "Tensor operations (its values are not known while tracing)"
        )

    def where(self) -> str:
        """The layer whose forward() the trace is in, for messages."""
        return self._tracer.where()

    def __reduce__(self) -> Any:
        # pickle would say "it's not the same object as tinycomp.frontend.tracer.Tensor" (the class's name)
        raise TypeError(f"a traced tensor (node {self.node!r}) cannot be pickled: a forward() kept it on the model "
                        "while it was traced (`self.last = y`); run the model eagerly once, or delete that attribute, "
                        "first")

    def __copy__(self) -> SymbolicTensor:
        return self  # a placeholder holds no values to copy: a copied model's answers as the original's

    def __deepcopy__(self, memo: dict) -> SymbolicTensor:
        return self

    @property
    def data(self) -> np.ndarray:  # type: ignore[override]
        raise self._refuse("reads .data")

    @property
    def shape(self) -> tuple:  # type: ignore[override]
        """The shape with `BatchSize` for the batch dimension (the graph's shapes hold None)."""
        return tuple(self._tracer.batch if d is None else d for d in self._shape)

    @property
    def ndim(self) -> int:
        return len(self._shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float32)

    @property
    def size(self) -> int:
        if None in self._shape:
            raise self._refuse("reads .size (it depends on the batch size)")
        return math.prod(self._shape)

    def numpy(self) -> np.ndarray:
        raise self._refuse("calls .numpy()")

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        raise self._refuse("converts to a NumPy array")

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        name = UFUNCS.get(ufunc)  # the registry's: `ndarray + symbolic` arrives here
        if name is None or method != "__call__" or kwargs:
            raise self._refuse(f"calls np.{ufunc.__name__}, an op the op table lacks, with the value")
        return apply_op(name, *inputs)

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        raise self._refuse(f"calls np.{func.__name__}, an op the op table lacks, with the value")

    __bool__ = _refusing("converts to bool (e.g. `if tensor:`) the value")
    __float__ = _refusing("converts to float the value")
    __int__ = _refusing("converts to int the value")
    __index__ = _refusing("uses as an index the value")
    __len__ = _refusing("takes len()")

    def __getitem__(self, key: Any) -> Tensor:
        return self._index(key, self._tracer)

    def __iter__(self) -> Iterator[Tensor]:
        raise self._refuse("iterates over the rows")

    def reshape(self, *shape: Any) -> Tensor:
        """`x.reshape(batch_size, seq, heads, d)` with `batch_size, seq, dim = x.shape`: the batch
        size read off a traced shape keeps the batch dimension where it is, first (as -1 would)."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        marks = [i for i, d in enumerate(shape) if isinstance(d, BatchSize)]
        if marks and (marks != [0] or self._shape[:1] != (None,)):
            where = "for an unbatched value" if self._shape[:1] != (None,) else f"at position {marks[-1]}"
            raise self._tracer.batch._refuse(f"reshapes to {fmt_shape(shape)} with, {where},")
        sizes = list(shape[1:] if marks else shape)
        if marks and sizes.count(-1) == 1:  # x.reshape(x.shape[0], -1): the -1 is what each sample has left
            rest, known = math.prod(self._shape[1:]), math.prod(int(d) for d in sizes if d != -1)
            if known <= 0 or rest % known:
                raise ValueError(f"cannot reshape {fmt_shape(self._shape)} to {fmt_shape(shape)}: each sample's "
                                 f"{rest} elements do not make whole groups of {known}")
            sizes[sizes.index(-1)] = rest // known
        return super().reshape(*([-1] if marks else []), *sizes)

    def transpose(self, dim0: int | None = None, dim1: int | None = None) -> Tensor:
        if dim0 is None and dim1 is None and self.ndim < 2:
            return self  # eager copies here; a symbolic value is immutable, so itself will do
        return super().transpose(dim0, dim1)

    def __repr__(self) -> str:
        dims = ", ".join("N" if d is None else str(d) for d in self._shape)
        return f"Tensor(traced: node {self.node!r}, shape=({dims}))"  # what the user has: a Tensor


# ---------------------------------------------------------------- the tracer

def _describe(layer: Any, path: str) -> str:
    name = type(layer).__name__
    return f"{name} at '{path}'" if path else f"{name} (the top-level model)"


# Python's own messages name a type by its __name__ ("unsupported operand type(s) for **: 'int' and
# 'SymbolicTensor'", "'SymbolicTensor' object has no attribute 'T'"): to the user it is a Tensor, as
# eager's messages say.
SymbolicTensor.__name__ = SymbolicTensor.__qualname__ = "Tensor"


class Tracer:
    def __init__(self, model: Any, training: bool):
        self.model = model
        self.training = bool(training)
        self.graph = Graph()
        self.tensor_paths, self.layers = walk_model(model)
        self.param_nodes: dict[int, str] = {}  # id(Tensor or array) -> node: one used twice is one node
        self.scalar_nodes: dict[bytes, str] = {}  # float32 bits of a Python/NumPy number -> its const node
        self.live = LiveReads(self)  # the model's arrays as the traced forward() sees them
        self.stack: list[tuple[Any, str]] = [(model, "")]
        self.batch = BatchSize(self)

    def where(self) -> str:
        return _describe(*self.stack[-1])

    def close(self) -> None:
        """The trace is over: its swapped-in arrays let go of each other (`LiveReads.close`). With the
        weak back-references of LiveReads and BatchSize, nothing of the trace then refers to itself in a
        cycle, which kept a dropped model's weights alive until Python's cycle collector ran (5 dead
        64 MB models at once in a compile loop). A traced tensor a forward kept on the model still
        answers as during the trace (its shape, or the error saying what it is)."""
        self.live.close()

    # ------------------------------------------------------------ recording
    def record(self, name: str, operands: tuple, attrs: dict[str, Any]) -> SymbolicTensor:
        if name not in OPS:
            raise CompileError(f"{self.where()} calls op {name!r}, which the op table lacks")
        if OPS[name].made_by is not None:
            raise CompileError(f"{self.where()} calls op {name!r}, which only {OPS[name].made_by} makes")
        args = [self.operand(x, name) for x in operands]
        try:
            node = self.graph.add(name, args, layer=self.stack[-1][1], **attrs)
        except BatchLayoutError as exc:  # runs eagerly at some batch sizes, but cannot be compiled
            raise CompileError(f"{exc} (in {self.where()}); compiled code serves every batch size") from None
        except ValueError as exc:  # the eager shape message, plus where in the model it happened
            error = ValueError(f"{exc} (in {self.where()})")
            error._tinycomp_noted = True  # type: ignore[attr-defined]  # the message names the layer already
            raise error from None
        shape = self.graph.shape(node)
        self.check_batch_stays_apart(name, args, attrs)
        if None in shape[1:]:  # e.g. (N, 1) + (N,) broadcasts to (N, N), (N, 1) + (3, 1, 1) to (3, N, 1)
            raise CompileError(f"{self.where()}: {name} gives shape {fmt_shape(shape)}, where the batch "
                               "dimension N is not the leading axis alone; compiled code runs each sample "
                               "on its own (reshape operands so that N stays first)")
        return SymbolicTensor(self, node, shape)

    def check_batch_stays_apart(self, name: str, args: list[str], attrs: dict[str, Any]) -> None:
        """Refuse an op that combines values along the batch dimension (a sum over axis 0, a softmax
        over dim 0): each sample's result would depend on the others in its batch."""
        shape = self.graph.shape(args[0]) if args else ()
        if shape[:1] == (None,) and 0 in combined_axes(name, len(shape), attrs):
            what = f"axis={attrs.get('axis')!r}" if name in REDUCTIONS else f"dim={attrs.get('dim', -1)!r}"
            raise CompileError(
                f"{self.where()}: {name}({what}) of a {fmt_shape(shape)} value runs over the batch dimension N "
                "(axis 0), which would make each sample's result depend on the other samples of its batch; "
                "compiled code runs every sample on its own: reduce over the feature axes (e.g. axis=-1)")

    def owns_any(self, operands: tuple) -> bool:
        """Is any operand the model's own Tensor or array (or a stand-in for one): read live?"""
        return any(self.live.original(x) is not None for x in operands)

    def owner_of(self, path: str) -> tuple[str, str]:
        """(the layer holding the value at `path`, described; how that layer's code names it: `w`,
        `arrays[1]`, `table['scale']`)."""
        layer, at = max(((lay, p) for lay, p in self.layers if not p or path.startswith(p + ".")),
                        key=lambda lp: len(lp[1]))
        obj, name = layer, ""
        for step in (path[len(at) + 1:] if at else path).split("."):
            if isinstance(obj, dict):
                key = next(k for k in obj if str(k) == step)
                name, obj = f"{name}[{key!r}]", obj[key]
            elif isinstance(obj, (list, tuple)) or (isinstance(obj, Sequential) and step.isdigit()):
                name, obj = f"{name}[{step}]", resolve_path(obj, step)
            else:
                name, obj = f"{name}.{step}" if name else step, getattr(obj, step)
        return _describe(layer, at), name

    def operand(self, x: Any, op: str) -> str:
        if isinstance(x, SymbolicTensor):
            if x._tracer is not self:
                raise CompileError(f"{self.where()} mixes a tensor from another trace into {op}")
            return x.node
        original = self.live.original(x)
        if original is not None:
            return self.param(original)
        if isinstance(x, TracedArray) and x._reads is self.live:
            raise self.live.stale_error(x, f"passes to {op}")  # a view or copy of a model array
        if isinstance(x, (numbers.Real, np.bool_)):  # a bool too: eager's Tensor takes True as 1.0
            value = np.array(x, dtype=np.float32)
            key = value.tobytes()  # the float32 bits: 0.0 and -0.0 stay two constants
            if key not in self.scalar_nodes:  # one node per number: `x * 0.999` in a loop adds no node per step
                self.scalar_nodes[key] = self.graph.add("const", shape=(), value=value, layer=self.stack[-1][1])
            return self.scalar_nodes[key]
        if isinstance(x, (Tensor, np.ndarray)):
            value = np.array(x, dtype=np.float32)  # a snapshot: not owned by the model, so not live
            return self.graph.add("const", shape=value.shape, value=value, layer=self.stack[-1][1])
        raise CompileError(f"{self.where()} passes a {type(x).__name__} to op {op!r}; expected a Tensor or number")

    def param(self, t: Tensor | np.ndarray) -> str:
        """The param node of one of the model's Tensors or arrays (its node `value`, read live)."""
        if id(t) not in self.param_nodes:
            path = self.tensor_paths[id(t)]
            # a weight named like the input or the output node (`x`, `output`) gets a prefix
            name = path if path not in self.graph and path != "output" else f"param:{path}"
            self.param_nodes[id(t)] = self.graph.add(
                "param", name=name, shape=t.shape, path=path, value=t, layer=self.stack[-1][1])
        return self.param_nodes[id(t)]

    # ------------------------------------------------------------ patching layers for the trace
    def wrap_forward(self, layer: Layer, path: str) -> Any:
        inner = layer.forward

        def forward(*args: Any, **kwargs: Any) -> Any:
            self.stack.append((layer, path))
            try:
                return inner(*args, **kwargs)
            except Exception as exc:
                self.note_layer(exc)
                raise
            finally:
                self.stack.pop()
        return forward

    def note_layer(self, exc: Exception) -> None:
        """Tell where a user's own exception came from, once (the innermost layer), keeping its type."""
        if not isinstance(exc, CompileError) and not getattr(exc, "_tinycomp_noted", False) \
                and hasattr(exc, "add_note"):  # add_note is Python 3.11+
            exc.add_note(f"while tracing {self.where()}")
            exc._tinycomp_noted = True  # type: ignore[attr-defined]

    @contextlib.contextmanager
    def patched(self) -> Iterator[None]:
        """Layers see `training` and report their path; the user's model is restored afterwards
        (`trace` holds the model's lock throughout)."""
        with PATCHING.one():
            yield from self._patched()

    def _patched(self) -> Iterator[None]:
        missing = object()
        stack = contextlib.ExitStack()
        saved = [(layer, vars(layer).get("forward", missing)) for layer, _ in self.layers]
        outer, tensor_module.tracing.tracer = tensor_module.tracing.tracer, self
        try:
            stack.enter_context(self.live.swapped(self.model))
            stack.enter_context(in_mode([layer for layer, _ in self.layers], self.training))  # this thread's only
            for layer, path in self.layers:
                if path:  # the root's frame is the bottom of the stack already
                    setattr(layer, "forward", self.wrap_forward(layer, path))  # noqa: B010 - per instance
            yield
        finally:
            stack.close()
            tensor_module.tracing.tracer = outer
            for layer, forward in saved:
                if forward is missing:
                    vars(layer).pop("forward", None)
                else:
                    setattr(layer, "forward", forward)  # noqa: B010 - per instance

    def run(self, input_shapes: list[tuple]) -> Graph:
        """Trace forward() on one symbolic tensor per input shape (one `input` node each)."""
        names = input_names(self.model, len(input_shapes))
        xs = [SymbolicTensor(self, self.graph.add("input", name=name, shape=shape, layer=""), shape)
              for name, shape in zip(names, input_shapes, strict=True)]
        with self.patched():
            try:
                out = self.model(*xs)
            except RecursionError as exc:
                raise CompileError(
                    f"tracing {type(self.model).__name__} went past Python's recursion limit "
                    f"({sys.getrecursionlimit()}): the trace runs forward() with one more Python frame per "
                    "nested layer than eager does, so a model nested nearly as deep as eager allows cannot "
                    "be traced; raise the limit with sys.setrecursionlimit() before compiling") from exc
        if not isinstance(out, SymbolicTensor) or out._tracer is not self:
            got = "a Tensor that does not depend on the input" if isinstance(out, Tensor) else type(out).__name__
            raise CompileError(f"{self.where()}: forward() must return a Tensor computed from its input; got {got}")
        if any(shape[:1] == (None,) for shape in input_shapes) and out._shape[:1] != (None,):
            # the compiled code writes one output row per sample
            raise CompileError(f"{self.where()}: forward() must return one row per sample, the batch dimension N "
                               f"first; it returns a value of shape {fmt_shape(out._shape)} for inputs "
                               f"{', '.join(map(fmt_shape, input_shapes))}")
        self.graph.add("output", [out.node], name="output", layer="")
        self.graph.lint()
        return self.graph


class Patching:
    """The traces that have a model patched (arrays swapped, forwards wrapped) right now. A fork waits
    until none but the forking thread's own has (`hold`, then `release` on both sides): a child forked
    mid-trace would keep the patches for good, their undoing thread gone. The wait is bounded
    (HOLD_SECONDS): a trace may wait for the forking thread itself (its forward() waiting for a
    result the forker makes, or forking too), and a fork must never hang for it."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._count = 0
        self._mine = threading.local()

    @contextlib.contextmanager
    def one(self) -> Iterator[None]:
        with self._cond:
            self._count += 1
            self._mine.count = getattr(self._mine, "count", 0) + 1
        try:
            yield
        finally:
            with self._cond:
                self._count -= 1
                self._mine.count -= 1
                self._cond.notify_all()

    def hold(self) -> None:
        self._cond.acquire()  # no trace starts or ends while held; wait() lets them end meanwhile
        deadline = time.monotonic() + HOLD_SECONDS
        while self._count > getattr(self._mine, "count", 0):
            left = deadline - time.monotonic()
            if left <= 0 or not self._cond.wait(left):
                break

    def release(self) -> None:
        self._cond.release()


HOLD_SECONDS = 2.0  # traces take milliseconds
PATCHING = Patching()


def trace(model: Any, input_shape: Any, *, training: bool = False) -> Graph:
    """Record `model`'s forward pass as a Graph; `None` in `input_shape` is the dynamic batch size.
    A forward() of several Tensor inputs takes a list of shapes, one per input (one `input` node each).

    Layers see `training` (eval by default) during the trace only; the model's own flags are kept.
    """
    if not callable(model):
        raise TypeError(f"trace() needs a Layer or callable model; got {type(model).__name__}")
    shapes = input_shapes(input_shape)
    with model_lock(model), paused_gc():  # the walk and the patched run see (and leave) no other thread's changes
        graph, known = _trace_once(model, training, shapes)
        if _arrays_added(model, known):
            # a forward that builds layers on its first run (`if self.head is None: self.head = Linear(...)`):
            # traced before the walk could see them, their weights became constants, not live reads
            graph, _ = _trace_once(model, training, shapes)
        return graph


def _trace_once(model: Any, training: bool, shapes: list[tuple]) -> tuple[Graph, dict[int, str]]:
    """The graph of one run of forward() and the model's arrays the trace read live (id -> path)."""
    tracer = Tracer(model, training)
    try:
        return tracer.run(shapes), tracer.tensor_paths
    finally:
        tracer.close()


def _arrays_added(model: Any, known: dict[int, str]) -> bool:
    """Whether the model holds a Tensor or array now that it did not hold before the trace (the
    traced values a forward keeps on the model aside)."""
    now, _ = walk_model(model)
    return any(not isinstance(resolve_path(model, path), SymbolicTensor) for i, path in now.items() if i not in known)
