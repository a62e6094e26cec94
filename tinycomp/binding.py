"""How a compiled model stays bound to the live model object it was compiled from.

`StructureGuard` notices (cheaply, on every call) that the layer tree changed, so the model is
recompiled instead of running stale code; `LiveParams` reads the parameters live on every call;
`DropoutDraws` draws a training-mode call's dropout masks from the model's own Dropout layers;
`layers_in_mode` runs the eager model for `check=True` in the mode it was compiled for without
touching its own training flags (`eval_mode`: in eval mode).
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import operator
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from .errors import CompileError
from .frontend import streams
from .frontend.layers import Dropout, Layer, Sequential, model_lock, reachable
from .frontend.live_reads import is_numeric_array
from .frontend.modes import in_mode
from .frontend.tensor import Tensor
from .frontend.walk import resolve_path
from .ir.graph import Graph
from .ir.passes.fold_dropout import draws_mask
from .ir.philox import MASK32, DropoutStream
from .runtime import native_guard
from .runtime.buffers import as_native_float32, data_pointer, pointer_view


def eval_mode(model: Layer) -> contextlib.AbstractContextManager[None]:
    """Run the eager model in eval mode, then restore every layer's own training flag."""
    return layers_in_mode(model, training=False)


@contextlib.contextmanager
def layers_in_mode(model: Layer, training: bool) -> Iterator[None]:
    """Run the eager model with every layer in mode `training` on this thread (`modes.in_mode`:
    other threads see the layers' own flags; one thread at a time, as for a layer whose class set
    a flag of its own, set and restored)."""
    with model_lock(model), in_mode([obj for obj in reachable(model) if isinstance(obj, Layer)], training):
        yield


_TENSOR = "tensor"  # a structure signature records that a Tensor sits here, not which one


class StructureGuard:
    """Notices, cheaply on every call, that the layer tree changed since it was traced.

    The fast check (`same`) compares the lengths of every container the tracer could walk (each
    Layer's attribute dict, lists, tuples, dicts), read through live views, and the objects they
    hold by identity, in C-level passes: ~1 us for the reference MLP. Any difference (a weight
    rebound, `model.train()`) falls through to the slow check, which ignores which Tensor a slot
    holds (parameters are read live by path) and the `training` flags, but sees a replaced or added
    sub-layer, a grown `Sequential`, a rebound constant or attribute, and a change in which slots
    share one Tensor (tied weights).

    The layers' classes (and their bases) are watched too: the trace reads a class-level `eps = 1e-5`
    or `forward` as it reads an instance's, so rebinding one (`Scale.factor = 3.0`, `Sigmoid.forward =
    ...`) recompiles. There every value counts by identity, a Tensor too: a class attribute is traced
    as a constant, not read live.
    """

    def __init__(self, model: Any):
        self.model = model  # its lock guards the slow check: tracing and check=True change what it reads
        objs = list(reachable(model))
        self.classes = layer_classes(objs)
        # each layer's class as traced: `layer.__class__ = Other` changes neither its dict nor its identity
        self.layers = [o for o in objs if isinstance(o, Layer)]
        self.types = tuple(map(type, self.layers))
        self.dicts = tuple(map(vars, self.layers))  # `layer.__dict__ = {...}` leaves the views above on the old one
        # live views (dict values, lists, tuples) of every container the tracer could walk, then of
        # the layers' class dicts (`class_views_from` on)
        self.views: list[Any] = [v for v in map(_container_view, objs) if v is not None]
        self.class_views_from = len(self.views)
        self.views += [vars(cls).values() for cls in self.classes]
        # the mutable ones themselves (attribute dicts, dicts, lists), for the native hot call's watch
        self.containers: list[Any] = [vars(o) if isinstance(o, Layer) else o for o in objs
                                      if isinstance(o, (Layer, dict, list))]
        self.lengths: tuple[int, ...] = ()
        self.held: tuple = ()
        self._refresh_fast()
        self.slow = self.slow_signature()
        self._pinned_slow = self.held  # the slow signature records ids: keep those objects alive

    def _refresh_fast(self) -> None:
        # The fast check compares objects by identity with `held`, which keeps them alive, so an
        # object freed and replaced by a new one at the same address is never taken for the old one.
        self.lengths = tuple(map(len, self.views))
        self.held = tuple(itertools.chain.from_iterable(self.views))

    def same(self) -> bool:
        """Every container still has its length and holds the very objects it held (~0.6 us)."""
        return (tuple(map(len, self.views)) == self.lengths
                and all(map(operator.is_, itertools.chain.from_iterable(self.views), self.held))
                and self._same_classes_and_dicts())

    def _same_classes_and_dicts(self) -> bool:
        """Each layer still of its class and holding its dict: neither `layer.__class__ = Other` nor
        `layer.__dict__ = {...}` changes what the views above see."""
        return (all(map(operator.is_, map(type, self.layers), self.types))
                and all(map(operator.is_, map(vars, self.layers), self.dicts)))

    def slow_signature(self) -> tuple:
        tensors: dict[int, int] = {}
        sig: list[Any] = []
        for i, view in enumerate(self.views):
            items = view.mapping.items() if isinstance(view, type({}.values())) else enumerate(view)
            entry: list[tuple] = []
            if i >= self.class_views_from:  # a class: every value by identity (none is read live)
                sig.append(tuple(sorted((str(key), id(value)) for key, value in items if key not in LAZY_CLASS_KEYS)))
                continue
            for key, value in items:
                if key == "training" and isinstance(value, bool):
                    continue
                if isinstance(value, Tensor) or is_numeric_array(value):  # both read live, by path
                    entry.append((key, _TENSOR, tensors.setdefault(id(value), len(tensors))))
                else:
                    entry.append((key, id(value)))
            sig.append(tuple(entry))  # in order: a forward() iterating a dict follows its order
        return tuple(sig)

    def unchanged(self) -> bool:
        """True if the model still has the structure it was compiled with (refreshing the fast check)."""
        if self.same():
            return True
        with model_lock(self.model):  # not while another thread traces the model or checks a call
            if self.slow_signature() != self.slow or not self._same_classes_and_dicts():
                return False
            self._refresh_fast()  # only weights or flags moved: make the next call fast again
            return True


def native_watch(guard: StructureGuard, hot: HotTable) -> tuple[list[int], tuple] | None:
    """What the native hot call must find unchanged to reuse `hot` (LiveParams.hot_table's tuple,
    just checked together with `guard`): every container the guard watches, the layers' class
    dicts, and each parameter slot's Tensor attributes and array layout. Returns (the words'
    addresses, what keeps the objects they lie in alive), or None where an object's __dict__ pointer
    cannot be watched on this interpreter (the Python paths then serve every call)."""
    words: list[int] = []
    for c in guard.containers:
        if isinstance(c, OrderedDict):  # move_to_end reorders it without a new version tag
            return None
        words += native_guard.dict_words(c) if isinstance(c, dict) else native_guard.list_words(c)
    for cls in guard.classes:  # a class dict is read only through a proxy: its version word is the dict's
        words += native_guard.dict_words(native_guard.class_dict(cls))
    for layer in guard.layers:  # `layer.__dict__ = {...}`, `layer.__class__ = Other`
        pointer = native_guard.dict_pointer_words(layer)
        if pointer is None:
            return None
        words += pointer + native_guard.type_words(layer)
    tensor_dicts = []
    for slot, array in zip(hot[1], hot[2], strict=True):
        if type(slot) is Tensor:  # `t.data = ...` rebinds the array: the Tensor's own dict changes
            pointer = native_guard.dict_pointer_words(slot)  # `t.__dict__ = {...}` swaps that dict
            if pointer is None:
                return None
            tensor_dicts.append(vars(slot))
            words += pointer + native_guard.dict_words(tensor_dicts[-1])
        words += native_guard.array_words(array)
    return words, (guard.containers, guard.classes, guard.layers, guard.held, hot, tensor_dicts)


# Keys CPython adds to a class dict when they are first read (`cls.__annotations__`, 3.10 on;
# `__slotnames__`, which copyreg caches there the first time pickle or deepcopy meets the class): no
# change of what the class computes
LAZY_CLASS_KEYS = frozenset({"__annotations__", "__slotnames__"})


def layer_classes(objs: Iterable[Any]) -> list[type]:
    """The classes of the Layers among objs and their bases but `object`, each once, in order."""
    classes: dict[type, None] = {}
    for obj in objs:
        if isinstance(obj, Layer):
            classes.update(dict.fromkeys(type(obj).__mro__[:-1]))
    return list(classes)


def _container_view(obj: Any) -> Iterable[Any] | None:
    """A live view of what obj holds: a Layer's attribute values, a dict's values, a list or tuple."""
    if isinstance(obj, dict):
        return obj.values()
    if isinstance(obj, (list, tuple)):
        return obj
    if isinstance(obj, Layer):
        return vars(obj).values()
    return None


# (the guard's held tuple, the parameter slots, the array in each, the arrays' layouts then, views of
# their data pointers and those pointers then, their pointer table: last, where callers take it): see
# LiveParams.hot_table
HotTable = tuple[tuple, list[Any], list[np.ndarray], list[tuple], tuple[list[Any], list[Any]], ctypes.Array]


class LiveParams:
    """The model's parameters, read live on every call, each array validated once.

    The structure guard makes sure the layers holding the parameters are the ones traced, so each
    parameter is one attribute (or item) read off its owner. An array object seen before is reused
    with its pointer; a new one (rebinding, a new Tensor) is checked and remembered. Arrays native
    code cannot read directly (float64, strided) are converted on every call, never remembered, so
    an in-place edit of them still shows.

    The entry takes the parameter pointers as one table (`NativeKernel.pack`). While every slot
    holds the Tensor and array of the last call, `hot_table` hands that table out again after a
    few C-level identity checks (~0.3 us for six parameters).
    """

    def __init__(self, model: Any, paths: list[str], shapes: list[tuple[int, ...]],
                 pack: Callable[[list[int]], ctypes.Array]):
        self.paths, self.shapes, self.pack = paths, shapes, pack
        self.owners = []
        for path in paths:
            parent, _, step = path.rpartition(".")
            self.owners.append((resolve_path(model, parent), step))
        # every owner a plain attribute holder: the slots are read with one map(getattr, ...)
        self._plain = all(type(owner) not in _CONTAINERS for owner, _ in self.owners)
        self._objs, self._steps = [o for o, _ in self.owners], [s for _, s in self.owners]
        # (array, pointer, layout, view of its pointer) of each slot as last validated
        self._seen: list[tuple[Any, int, tuple, Any]] = [(None, 0, (), None)] * len(paths)
        self._hot: HotTable | None = None  # see hot_table

    def current(self) -> list[Any]:
        """What each parameter slot holds right now."""
        if self._plain:
            return list(map(getattr, self._objs, self._steps))
        return [getattr(o, s) if type(o) not in _CONTAINERS else resolve_path(o, s) for o, s in self.owners]

    def arrays(self, strict: bool = False, values: list[Any] | None = None) -> list[np.ndarray] | None:
        """The float32 arrays of `values` (what the slots hold: `current()` by default); None if one
        changed shape (ValueError instead when `strict`)."""
        out = []
        for value, path, shape in zip(self.current() if values is None else values, self.paths, self.shapes,
                                      strict=True):
            # np.asarray: `t.data = Tensor(...)` runs eagerly (TinyTorch once allowed it), so it is read too
            data = np.asarray(value.data if isinstance(value, Tensor) else value)
            if data.shape != shape:
                if strict:
                    raise ValueError(f"parameter {path!r} now has shape {data.shape}, but the model was compiled "
                                     f"with {shape}; compile the model again after changing layer sizes")
                return None
            if data.dtype.kind not in "biuf":
                raise TypeError(f"parameter {path!r} must hold numbers; got dtype {data.dtype}")
            out.append(as_native_float32(data))
        return out

    def hot_table(self, held: tuple) -> HotTable | None:
        """The last call's pointer table with the arrays it points into, or None (the caller then
        takes `table`). The caller holds the returned tuple until its native call returns: another
        thread may rebind a parameter meanwhile, and the tuple keeps the arrays read alive.

        Valid while the structure guard has not refreshed since (`held` is the guard's tuple of held
        objects, the same object until it refreshes): its identity check then already found every
        slot holding the same Tensor or array, so only each array and its layout are checked here.
        """
        hot = self._hot
        if hot is None or hot[0] is not held:
            return None
        now = list(map(_DATA, hot[1]))
        if not all(map(operator.is_, now, hot[2])) or list(map(_LAYOUT, now)) != hot[3] or \
                list(map(_VALUE, hot[4][0])) != hot[4][1]:
            return None  # another array, or this one's dtype, shape, strides or memory changed in place
        return hot

    def remember(self, held: tuple, table: ctypes.Array, used: list[np.ndarray]) -> None:
        """Offer a table just used to `hot_table` (the caller checked the guard, then called `table`),
        if every slot still holds a Tensor whose array is the one the table points into: a thread
        that rebound a parameter during the call has a newer table, and this one is stale."""
        slots = [v if type(v) is Tensor else _ArraySlot(v) for v in self.current()]
        if all(map(operator.is_, map(_DATA, slots), used)):
            views = list(map(pointer_view, used))
            self._hot = (held, slots, used, list(map(_LAYOUT, used)), (views, list(map(_VALUE, views))), table)

    def table(self) -> tuple[ctypes.Array, list[np.ndarray]] | None:
        """(pointer table, the array behind each pointer), or None if a shape changed. The caller
        holds the arrays until its native call returns (some are converted copies made for this
        call; the others the model could drop meanwhile)."""
        ptrs: list[int] = []
        used: list[np.ndarray] = []
        seen = self._seen
        now = self.current()
        arrays: list[np.ndarray] | None = None
        for i, value in enumerate(now):
            data = value.data if isinstance(value, Tensor) else value
            known, ptr, layout, view = seen[i]
            # validated when first seen, not changed in place since (a.resize() moves the memory of the same array)
            if data is known and _LAYOUT(data) == layout and (view.value or 0) == ptr:
                ptrs.append(ptr)
                used.append(data)
                continue
            if arrays is None:  # the slow path, once a call: it names any problem and converts what it must
                arrays = self.arrays(values=now)
                if arrays is None:
                    return None
            array = arrays[i]
            if array is data:  # natively readable as it stands: remember it
                seen[i] = (data, data_pointer(data), _LAYOUT(data), pointer_view(data))
            ptrs.append(data_pointer(array))
            used.append(array)
        return self.pack(ptrs), used


_DATA = operator.attrgetter("data")
_VALUE = operator.attrgetter("value")
# What an array can change in place (`a.shape = `, `a.dtype = np.int32`, `a.strides = `) while
# staying the same object: the native code must not read it as the float32 array it was.
_LAYOUT = operator.attrgetter("shape", "dtype", "strides")


class _ArraySlot:
    """A parameter slot holding a NumPy array itself, read like a Tensor's `.data` by the hot path."""

    __slots__ = ("data",)

    def __init__(self, data: Any):
        self.data = data
_CONTAINERS = (list, tuple, dict, Sequential)


class DropoutDraws:
    """The dropout masks of a compiled training-mode call, drawn as the eager model would draw them.

    Each training dropout node of the plan belongs to one Dropout layer of the model (the tracer
    refuses any other) and is that layer's k-th call in forward() (a layer used twice has two
    nodes). A call takes every layer's next calls at once, in the model's order, from the same
    per-layer counters eager calls advance (`frontend/streams.py`), so eager and compiled calls,
    in any mix, each get the masks of the layers' next calls. The layers are held here; the
    structure guard recompiles when one is replaced.
    """

    def __init__(self, model: Any, traced: Graph, nodes: list[str]):
        self.layers: list[Dropout] = []
        self.slots: list[tuple[int, int]] = []  # per plan node: (index in self.layers, k-th call of it)
        self.calls: list[int] = []  # per layer: its calls in one forward
        where = {}
        for n in [n for n in traced.nodes("dropout") if draws_mask(traced, n)]:  # the order eager draws in
            layer = resolve_path(model, traced[n]["layer"])
            if not isinstance(layer, Dropout):
                raise CompileError(f"dropout node {n} does not come from a Dropout layer (it was recorded in "
                                   f"{type(layer).__name__} at '{traced[n]['layer']}'); training-mode masks are "
                                   "drawn per Dropout layer")
            i = next((j for j, known in enumerate(self.layers) if known is layer), len(self.layers))
            if i == len(self.layers):
                self.layers.append(layer)
                self.calls.append(0)
            where[n] = (i, self.calls[i])
            self.calls[i] += 1
        self.slots = [where[n] for n in nodes]

    def draw(self) -> tuple[list[DropoutStream], list[DropoutStream]]:
        """(each plan node's stream, each layer's first stream), advancing every layer's call count."""
        with streams.lock():
            firsts = [streams.draw(layer, k) for layer, k in zip(self.layers, self.calls, strict=True)]
        nodes = [firsts[i]._replace(call=(firsts[i].call + k) & MASK32) for i, k in self.slots]
        return nodes, firsts

    def rewind(self, firsts: list[DropoutStream]) -> None:
        """Set every layer's call count back to before `draw` (to replay the call eagerly)."""
        for layer, first in zip(self.layers, firsts, strict=True):
            streams.rewind(layer, first.call)
