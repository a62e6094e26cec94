"""One computation's model: frozen once, when the computation is first submitted or run.

`ModelRef` holds the live model from `predict()` until the computation that uses it is submitted
(distributed pickles the task graph in the caller's thread: `ModelRef.__reduce__` freezes it then)
or starts on a local scheduler (its first task, `take_snapshot`, freezes it). From then on it holds
only the `Snapshot`, so every chunk of the result, and every chunk Dask recomputes after losing a
worker, uses the same weights: edits made before the computation starts are scored, edits made
while it runs are not, and a result never mixes the two.

A `Snapshot` splits the model into its structure (the model pickled with each parameter array
replaced by a reference: classes, shapes, constants and compile options) and the parameter arrays.
Workers key their compiled models by the structure, so new weights are copied into an existing
compiled model instead of compiling again.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import threading
from typing import Any

import cloudpickle  # a dependency of dask: pickles models whose classes live in __main__ by value
import numpy as np

from .. import trace
from ..errors import CompileError

_PARAM = "tinycomp-param"  # the tag of a parameter reference in a pickled structure


class Snapshot:
    """The model's structure (bytes) and a copy of its parameter arrays, taken at one moment."""

    def __init__(self, structure: bytes, weights: tuple[np.ndarray, ...], features: tuple[int, ...],
                 shares: dict[str, int]):
        self.structure, self.weights, self.features = structure, weights, features
        self.shares = shares  # worker address -> Dask threads on its host (see worker.thread_share)
        digest = hashlib.sha256(structure)
        digest.update(repr(features).encode())
        self.key = digest.hexdigest()  # what the compiled code depends on: workers compile once per key
        for w in weights:
            digest.update(w.data)  # C-contiguous copies (persistent_id): hashed in place
        self.token = digest.hexdigest()  # structure and weights: equal tokens need no copy on a worker

    @classmethod
    def take(cls, model: Any, options: dict, features: tuple[int, ...], shares: dict[str, int],
             out_row: tuple[int, ...] | None = None) -> Snapshot:
        """Copy the model now; `out_row`: the output row shape the result's chunks were laid out for."""
        # The parameters are what the compiled code reads: the tensors the tracer binds to `param` nodes.
        try:
            graph = trace(model, (None, *features))
        except Exception as exc:  # it traced at predict(): the model changed so that rows of `features` no longer fit
            # the class of the error, not its own: a subclass may not take one message (its
            # constructor's TypeError hid the model's error); an IndexError or the model's own
            # error class came out bare, not saying the model had changed
            raise (CompileError if isinstance(exc, CompileError) else ValueError)(
                f"the model changed between predict() and the computation and no longer takes rows of shape "
                f"{features}: {type(exc).__name__}: {exc}; call predict() again after changing the model's "
                "layers") from exc
        now = tuple(graph.shape(graph.output))
        if out_row is not None and now[1:] != out_row:
            raise ValueError(f"the model's output rows changed from {out_row} to {now[1:]} between predict() and "
                             f"the computation; call predict() again after changing the model's layers")
        params = {id(a): a for a in map(_array_of, (graph[p]["value"] for p in graph.params))
                  if isinstance(a, np.ndarray)}
        buf = io.BytesIO()
        pickler = _StructurePickler(buf, params)
        try:
            pickler.dump((model, options))
        except Exception as exc:  # pickle names a type ("cannot pickle '_thread.lock' object"), not where it is
            raise TypeError(f"tinycomp.dask copies the model for the workers by pickling it, and "
                            f"{_unpicklable(model, params)} cannot be pickled: {exc}") from exc
        return cls(buf.getvalue(), tuple(pickler.weights), features, shares)

    def thaw(self) -> tuple[Any, dict, list[np.ndarray]]:
        """(a new model, the compile options, the model's own parameter arrays in `weights` order)."""
        unpickler = _StructureUnpickler(io.BytesIO(self.structure), self.weights)
        model, options = unpickler.load()
        arrays = unpickler.arrays
        if any(a is None for a in arrays):
            raise pickle.UnpicklingError("a tinycomp model snapshot does not reference all of its parameters")
        return model, options, arrays  # type: ignore[return-value]


def _unpicklable(model: Any, params: dict[int, np.ndarray], depth: int = 4) -> str:
    """Where in `model` the value that does not pickle is held, as `Class.attribute.attribute`,
    found by pickling its attributes one by one (a few levels down, plain values before objects and
    containers, nothing visited twice: a back-reference to the model fails to pickle too, and led
    the search round the cycle); the class alone if none is."""
    def fails(value: Any) -> bool:
        try:
            _StructurePickler(io.BytesIO(), params).dump(value)
        except Exception:
            return True
        return False

    def composite(value: Any) -> bool:
        return isinstance(value, (dict, list, tuple)) or hasattr(value, "__dict__")

    path, obj, seen = type(model).__name__, model, {id(model)}
    for _ in range(depth):
        if isinstance(obj, dict):
            items, step = list(obj.items()), "[{!r}]"
        elif isinstance(obj, (list, tuple)):
            items, step = list(enumerate(obj)), "[{}]"
        elif hasattr(obj, "__dict__"):
            items, step = list(vars(obj).items()), ".{}"
        else:
            break
        items = sorted((item for item in items if id(item[1]) not in seen), key=lambda item: composite(item[1]))
        culprit = next(((key, value) for key, value in items if fails(value)), None)
        if culprit is None:
            break
        path, obj = path + step.format(culprit[0]), culprit[1]
        seen.add(id(obj))
    return path


def _array_of(value: Any) -> Any:
    """The array a `param` node reads: a Tensor's data (a parameter rebound to an array: itself)."""
    return value if isinstance(value, np.ndarray) else getattr(value, "data", None)


class _StructurePickler(cloudpickle.Pickler):
    """Pickles a model with each parameter array written as a reference (index, shape, dtype)."""

    def __init__(self, file: io.BytesIO, params: dict[int, np.ndarray]):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.params = params
        self.index: dict[int, int] = {}  # id(array) -> position in weights (tied arrays: one entry)
        self.weights: list[np.ndarray] = []

    def persistent_id(self, obj: Any) -> Any:
        if type(obj) is not np.ndarray or id(obj) not in self.params:
            return None
        i = self.index.get(id(obj))
        if i is None:
            i = self.index[id(obj)] = len(self.weights)
            self.weights.append(np.array(obj, order="C", copy=True))  # the snapshot: later edits are not seen
        return (_PARAM, i, obj.shape, obj.dtype.str)


class _StructureUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, weights: tuple[np.ndarray, ...]):
        super().__init__(file)
        self.weights = weights
        self.arrays: list[np.ndarray | None] = [None] * len(weights)

    def persistent_load(self, pid: Any) -> np.ndarray:
        tag, i, shape, dtype = pid
        if tag != _PARAM or not 0 <= i < len(self.weights):
            raise pickle.UnpicklingError(f"unknown parameter reference {pid!r} in a tinycomp model snapshot")
        array = self.arrays[i]
        if array is None:  # its first reference; tied parameters share one array
            array = self.arrays[i] = np.array(self.weights[i], dtype=np.dtype(dtype), order="C", copy=True)
        return array


class ModelRef:
    """The live model of one `predict()` result until its computation starts; then its Snapshot."""

    def __init__(self, name: str, model: Any, options: dict, features: tuple[int, ...], shares: dict[str, int],
                 out_row: tuple[int, ...]):
        self.name = name
        self._live: tuple | None = (model, options, features, shares, out_row)
        self._frozen: Snapshot | None = None
        self._lock = threading.Lock()

    def freeze(self) -> Snapshot:
        """The snapshot, taken on the first call (the computation's start), the same one afterwards."""
        with self._lock:
            if self._frozen is None:
                assert self._live is not None
                self._frozen = Snapshot.take(*self._live)
                self._live = None  # nothing reads the live model after this: do not keep it alive
            return self._frozen

    def __reduce__(self) -> tuple:
        # distributed pickles the graph when it is submitted, in the caller's thread: freeze then,
        # so a scheduler or worker never receives (or later pickles) the live model. A model that
        # cannot be frozen (its output rows changed since predict()) pickles to its error, which
        # the snapshot task raises where it runs: raised here, distributed would hand the user a
        # serialization TypeError with the error two causes down.
        try:
            return (_unwrap, (self.freeze(),))
        except Exception as exc:  # every error reaches the user, as the task's own
            return (Refused, (_portable(exc),))

    def __dask_tokenize__(self) -> tuple:
        return ("tinycomp.dask.ModelRef", self.name)  # never pickled to make a token (that would freeze it)

    def __repr__(self) -> str:
        return f"ModelRef({self.name}, {'frozen' if self._frozen is not None else 'live'})"


def _unwrap(snapshot: Snapshot) -> Snapshot:
    return snapshot


class Refused:
    """What a ModelRef that could not be frozen at submission pickles to: the error, to raise."""

    def __init__(self, error: BaseException):
        self.error = error


def _portable(exc: BaseException) -> BaseException:
    """The error as one every process can unpickle: itself where its class is Python's or tinycomp's
    and it pickles whole (an OSError keeps its file name), else its nearest such base class with a
    message naming it (a model's own error class may not exist on a worker, nor take one message:
    rebuilt from its text, it raised its constructor's TypeError; a KeyError's text came back quoted
    twice)."""
    kind = type(exc)
    if _portable_class(kind):
        try:
            if type(pickle.loads(pickle.dumps(exc))) is kind:
                return exc
        except Exception:  # it does not pickle whole: the base class below does
            pass
    base = next(b for b in kind.__mro__ if _portable_class(b) and b is not kind)
    text = exc.args[0] if isinstance(exc, KeyError) and len(exc.args) == 1 else exc  # a KeyError's str() quotes
    return base(f"{kind.__module__}.{kind.__qualname__}: {text}")


def _portable_class(kind: type) -> bool:
    return kind.__module__ == "builtins" or kind.__module__.split(".")[0] == "tinycomp"


def take_snapshot(ref: ModelRef | Snapshot | Refused) -> Snapshot:
    """The graph's snapshot task: on a local scheduler it receives the live ref; through distributed,
    the snapshot the submission froze, or the error freezing raised there."""
    if isinstance(ref, Refused):
        raise ref.error
    return ref.freeze() if isinstance(ref, ModelRef) else ref
