"""What a traced forward() reads of the model's own arrays: live, or refused, never frozen.

While a model is traced, every numeric array it holds (a parameter Tensor's `.data`, a plain NumPy
array attribute of a layer, in lists, tuples and dicts too) is swapped on its holder for a
`TracedArray`: a view of the same memory, put back when the trace ends. Used whole as an operand
of a Tensor op (`x * self.w.data`, `x * self.scale_array`), such a view is the parameter itself: a
`param` node the compiled model reads live on every call. Anything else NumPy would compute from
it at trace time (arithmetic, `float()`, `.item()`, indexing, np.* functions, in-place writes)
would be frozen into the compiled code and go stale when the parameter changes, so it raises a
CompileError naming the layer and the attribute and suggesting the Tensor form.

`Tensor(p)` and `Tensor(p.data)` are copies, so while tracing they stand for p (live);
`np.asarray(p)` of a parameter Tensor is refused (NumPy hands on a plain array we cannot follow).
Only the tracing thread is refused anything: another thread using the model meanwhile gets plain
NumPy results from the views.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Generator, Iterator
from typing import Any

import numpy as np

from ..errors import CompileError
from . import tensor as tensor_module
from .layers import Layer
from .tensor import Tensor


def is_numeric_array(value: Any) -> bool:
    return isinstance(value, np.ndarray) and value.dtype.kind in "biuf"


class TracedArray(np.ndarray):
    """A model array seen through a trace: plain NumPy on other threads, guarded on the tracing one."""

    _reads: LiveReads | None = None
    _source: Any = None  # the model's Tensor or array this is (or is a view or copy of)

    def __array_finalize__(self, obj: Any) -> None:
        self._reads = getattr(obj, "_reads", None)  # views and copies of it are guarded too
        self._source = getattr(obj, "_source", None)

    def _check(self, what: str) -> None:
        reads = self._reads
        if reads is not None and reads.active():
            raise reads.stale_error(self, what)

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        reads = self._reads
        if reads is not None and reads.active():
            if method == "__call__" and not kwargs and any(isinstance(i, Tensor) for i in inputs):
                return NotImplemented  # `array * x`: the Tensor's own op records it, reading this array live
            raise reads.stale_error(self, f"computes np.{ufunc.__name__} on")
        inputs = tuple(_plain(i) for i in inputs)
        if "out" in kwargs:
            kwargs["out"] = tuple(_plain(o) for o in kwargs["out"])
        return getattr(ufunc, method)(*inputs, **kwargs)

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        if func not in _METADATA_FUNCTIONS:
            self._check(f"calls np.{func.__name__} on")
        return super().__array_function__(func, types, args, kwargs)

    def __repr__(self) -> str:
        return repr(self.view(np.ndarray))

    def __str__(self) -> str:
        return str(self.view(np.ndarray))


_METADATA_FUNCTIONS = frozenset({np.shape, np.ndim, np.size})


Nested = Generator[Any, Any, Any]


def run_nested(call: Nested) -> Any:
    """Run a recursive walk written as generators without Python recursion: a generator yields the
    generator of a nested call and is sent that call's return value. A model nested hundreds of
    layers deep takes several frames per level, which would otherwise exhaust the recursion limit."""
    stack, value = [call], None
    while stack:
        try:
            nested = stack[-1].send(value)
        except StopIteration as done:
            stack.pop()
            value = done.value
        else:
            stack.append(nested)
            value = None
    return value


def _plain(x: Any) -> Any:
    return x.view(np.ndarray) if isinstance(x, TracedArray) else x


def _guarded(name: str, what: str) -> Callable[..., Any]:
    base = getattr(np.ndarray, name)

    def method(self: TracedArray, *args: Any, **kwargs: Any) -> Any:
        self._check(what)
        return base(self, *args, **kwargs)
    method.__name__ = name
    return method


for _name, _what in {
    "__float__": "converts to float", "__int__": "converts to int", "__index__": "uses as an index",
    "__complex__": "converts to complex", "__bool__": "tests the truth of", "__iter__": "iterates over",
    "__getitem__": "indexes", "__setitem__": "writes into", "item": "calls .item() on", "tolist": "calls .tolist() on",
    "tobytes": "calls .tobytes() on", "fill": "writes into", "put": "writes into", "sort": "sorts in place",
    "partition": "sorts in place", "byteswap": "byteswaps", "resize": "resizes", "setfield": "writes into",
}.items():
    setattr(TracedArray, _name, _guarded(_name, _what))


class LiveReads:
    """One trace's swapped arrays and the stand-ins it made: which model array each one is."""

    def __init__(self, tracer: Any):
        # the owner (its tensor_paths name what the model holds), held weakly: it holds this object,
        # and the cycle would keep a dropped model's arrays until Python's cycle collector ran
        self._tracer = weakref.ref(tracer)
        self.closed = False
        self.origin: dict[int, Any] = {}  # id(view or stand-in) -> the model's Tensor or array
        self._pinned: list[Any] = []  # keeps those ids unique while the trace runs

    @property
    def tracer(self) -> Any:
        return self._tracer()

    def active(self) -> bool:
        return not self.closed and tensor_module.tracing.tracer is self.tracer

    def close(self) -> None:
        """The trace is over: an array of it kept past the trace (a view a forward stored) is plain
        NumPy from now on, and holds none of the other arrays (they and it referred to each other)."""
        self.closed = True
        self.origin.clear()
        self._pinned.clear()

    def original(self, x: Any) -> Any:
        """The model's Tensor or array that x is (or stands for), or None."""
        if not isinstance(x, (Tensor, np.ndarray)):
            return None
        return x if id(x) in self.tracer.tensor_paths else self.origin.get(id(x))

    def _register(self, stand_in: Any, original: Any) -> None:
        self.origin[id(stand_in)] = original
        self._pinned.append(stand_in)

    def _view(self, array: np.ndarray, original: Any) -> TracedArray:
        view = array.view(TracedArray)
        view._reads, view._source = self, original
        self._register(view, original)
        return view

    # ------------------------------------------------------------ Tensor(p) and np.asarray(p)
    def adopt_copy(self, t: Tensor, data: Any) -> bool:
        """Make `t = Tensor(data)` stand for the parameter data is (a copy of it is just it); False if
        data is no array of the model's."""
        original = self.original(data)
        if original is None:
            if isinstance(data, TracedArray) and data._reads is self:
                raise self.stale_error(data, "makes a Tensor of")
            return False
        source = original.data if isinstance(original, Tensor) else original
        t.data = self._view(tensor_module.to_float32(np.asarray(source)), original)  # a copy, as eager makes
        self._register(t, original)
        return True

    def check_conversion(self, t: Tensor) -> None:
        if self.original(t) is not None:
            raise self.stale_error(t, "converts to a NumPy array (np.asarray / np.array)")

    # ------------------------------------------------------------ errors
    def stale_error(self, x: Any, what: str) -> CompileError:
        original = self.original(x)
        if original is None:  # a view or copy of one (`self.w.data.T`)
            original, what = x._source, f"{what} a view or copy of"
        path = self.tracer.tensor_paths[id(original)]
        owner, attr = self.tracer.owner_of(path)
        owner = "its own" if owner == self.tracer.where() else f"{owner}'s"
        if isinstance(original, Tensor):
            what_it_is = f"{owner} parameter '{attr}'"
            hint = (f"use the Tensor form, which the compiled model reads live on every call: `self.{attr} * 2` "
                    f"rather than `self.{attr}.data * 2`, `x @ self.{attr}` or `Tensor(self.{attr})` rather "
                    "than a NumPy copy; a parameter's value cannot be a Python number in compiled code")
        else:
            what_it_is = f"{owner} NumPy array attribute '{attr}'"
            hint = (f"use it whole as an operand of a Tensor op (`x * self.{attr}`, `Tensor(self.{attr}) * 2`), "
                    "which the compiled model reads live on every call; a value that only configures the model "
                    "(a size, a flag) belongs in a Python number or tuple")
        return CompileError(
            f"{self.tracer.where()} {what} {what_it_is} (path '{path}') while tracing: the compiled model would "
            f"keep this trace's value and go stale when it changes; {hint}")

    # ------------------------------------------------------------ swapping the model's arrays
    @contextlib.contextmanager
    def swapped(self, model: Any) -> Iterator[None]:
        """Hold TracedArray views in place of the model's arrays (and Tensors' data) for the trace."""
        undo: list[tuple[Any, Any, Any, Any]] = []  # (holder, key, original value, what we put there)
        try:
            run_nested(self._swap_in(model, undo, {}, set()))
            yield
        finally:
            for holder, key, old, new in reversed(undo):
                slots = holder if isinstance(holder, (dict, list)) else vars(holder)
                if slots[key] is new:  # unless forward() itself rebound it meanwhile
                    slots[key] = old

    def _swap_in(self, obj: Any, undo: list, rebuilt: dict[int, tuple], seen: set[int]) -> Nested:
        """Swap the arrays held by obj; for a tuple (immutable) return the tuple to hold instead.
        A generator run by `run_nested`: each `yield` is a nested call (see there)."""
        if isinstance(obj, tuple):
            if id(obj) in seen:
                return rebuilt.get(id(obj))
            seen.add(id(obj))
            items = list(obj)
            changed = False
            for i, v in enumerate(obj):
                changed |= yield self._swap_slot(items, i, v, undo, rebuilt, seen, record=False)
            if changed:
                rebuilt[id(obj)] = tuple(items)
            return rebuilt.get(id(obj))
        if id(obj) in seen:
            return None
        seen.add(id(obj))
        if isinstance(obj, Tensor):
            data = vars(obj).get("data")
            if isinstance(data, np.ndarray) and is_numeric_array(data) and id(obj) in self.tracer.tensor_paths:
                self._put(vars(obj), obj, "data", self._view(data, obj), undo)
            return None
        slots = obj if isinstance(obj, (dict, list)) else getattr(obj, "__dict__", {})  # as the tracer's walk
        keys = list(slots) if isinstance(slots, dict) else range(len(slots))
        for key in keys:
            yield self._swap_slot(slots, key, slots[key], undo, rebuilt, seen, record=True, holder=obj)
        return None

    def _swap_slot(self, slots: Any, key: Any, value: Any, undo: list, rebuilt: dict, seen: set[int], *,
                   record: bool, holder: Any = None) -> Nested:
        if is_numeric_array(value) and id(value) in self.tracer.tensor_paths:
            new: Any = self._view(value, value)
        elif isinstance(value, (Layer, Tensor, list, tuple, dict)):
            new = yield self._swap_in(value, undo, rebuilt, seen)
            if new is None:
                return False
        else:
            return False
        if record:
            self._put(slots, holder, key, new, undo)
        else:
            slots[key] = new  # an item of a tuple being rebuilt: its holder records the swap
        return True

    @staticmethod
    def _put(slots: Any, holder: Any, key: Any, new: Any, undo: list) -> None:
        undo.append((holder, key, slots[key], new))
        slots[key] = new
