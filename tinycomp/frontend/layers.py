"""`Layer`, `Linear`, `Dropout`, `Sequential` (TinyTorch module 03 semantics)."""

from __future__ import annotations

import inspect
import math
import numbers
import os
import threading
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from ..checks import is_whole_number, positive_int
from ..errors import CompileError
from ..ir.philox import dropout_effect, dropout_mask
from . import streams
from .modes import TrainingFlag
from .tensor import Tensor, apply_op, as_tensor, tracing, wrap_result

_model_locks: weakref.WeakKeyDictionary[Any, threading.RLock] = weakref.WeakKeyDictionary()
# re-entrant: a signal handler or gc callback calling a model may land inside the guarded lookup
_model_locks_guard = threading.RLock()
_UNWEAKREFABLE_LOCK = threading.RLock()  # for the rare model object that takes no weak reference


def model_lock(model: Any) -> threading.RLock:
    """The lock of one model object, held while tinycomp temporarily changes its instances (tracing
    patches each layer's `forward` and `training`; the parity check of `check=True` turns `training`
    off) and while it reads the model's structure on the slow path, so that no thread sees another's
    temporary state, or saves it and later "restores" it. One per model, not one for the process:
    a forward() that hands work to a thread calling another compiled model must not wait on it.
    Re-entrant on one thread."""
    with _model_locks_guard:
        try:
            lock = _model_locks.get(model)
            if lock is None:
                lock = _model_locks[model] = threading.RLock()
            return lock
        except TypeError:
            return _UNWEAKREFABLE_LOCK


def _fresh_model_locks_after_fork() -> None:
    # A lock held by a thread that did not survive the fork would block the child for ever.
    global _model_locks, _model_locks_guard
    _model_locks, _model_locks_guard = weakref.WeakKeyDictionary(), threading.RLock()


os.register_at_fork(after_in_child=_fresh_model_locks_after_fork)

INIT_SCALE_FACTOR = 1.0  # LeCun init: weights ~ N(0, INIT_SCALE_FACTOR / in_features)
_rng = np.random.default_rng()
_FLOAT32 = np.dtype(np.float32)


def _fresh_rng_after_fork() -> None:
    # The generator's own lock, held by a thread that did not survive the fork (a layer being built
    # draws its weights under it), would block the child's first Linear() for ever: the same
    # stream, under a new lock. Reading the state takes no lock.
    global _rng
    bits = type(_rng.bit_generator)()
    bits.state = _rng.bit_generator.state
    _rng = np.random.Generator(bits)


os.register_at_fork(after_in_child=_fresh_rng_after_fork)


def manual_seed(seed: int) -> None:
    """Reseed weight init and the dropout generator, for reproducible runs: after `manual_seed(s)`
    the n-th call of a Dropout layer draws the same mask eagerly and compiled (frontend/streams.py)."""
    global _rng
    if not is_whole_number(seed) or seed < 0:  # NumPy's own message named neither the call nor the rule
        raise ValueError(f"manual_seed expects a whole number >= 0; got {seed!r}")
    _rng = np.random.default_rng(seed)
    streams.reseed(seed)


def rng() -> np.random.Generator:
    return _rng


def _children(obj: Any) -> Iterator[Any]:
    """Values held by a layer's attributes, list/tuple items and dict values."""
    # a plain function or builtin given as the model has no attributes
    values = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else \
        getattr(obj, "__dict__", {}).values()
    for v in values:
        if isinstance(v, (Layer, list, tuple, dict)):
            yield v


def reachable(model: Any) -> Iterator[Any]:
    """`model` and every Layer, list, tuple and dict reachable from it, each once (cycle-safe)."""
    seen: set[int] = set()
    stack = [model]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        yield obj
        stack.extend(_children(obj))


def set_training_mode(model: Any, training: bool) -> None:
    """Set `training` on every Layer reachable through attributes, lists and dicts (cycle-safe)."""
    for obj in reachable(model):
        if isinstance(obj, Layer):
            obj.training = bool(training)


class Layer:
    """Base class of every layer and model: `forward` computes, `__call__` calls it, `parameters()`
    lists trainable tensors. Subclass it and write `forward` with `Tensor` operations; the model then
    runs eagerly (NumPy) and compiles with `tinycomp.compile`. A new layer is in training mode
    (`training = True`): call `eval()` before comparing it with a compiled model."""

    training = TrainingFlag()  # a plain bool per layer, but a trace or check on another thread leaves it be

    def forward(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        """The layer's computation on a Tensor; subclasses must implement it."""
        raise NotImplementedError(f"{type(self).__name__} must implement forward()")

    def __call__(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        if args or kwargs:
            return self.forward(x, *args, **kwargs)
        return self.forward(x)  # passing empty *args, **kwargs on costs more than the rest of a batch-1 ReLU

    def parameters(self) -> list[Tensor]:
        """The layer's trainable tensors (none in the base class)."""
        return []

    def train(self, mode: bool = True) -> Layer:
        """Set `training` on this layer and every layer it holds (dropout active when True); returns self."""
        set_training_mode(self, mode)
        return self

    def eval(self) -> Layer:
        """Inference mode (`train(False)`): dropout is the identity, as in the compiled model; returns self."""
        return self.train(False)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Linear(Layer):
    """`y = x @ W + b` with W of shape (in_features, out_features).

    `weight` is drawn as `standard_normal * sqrt(INIT_SCALE_FACTOR / in_features)` from the generator
    `manual_seed` reseeds; `bias` starts at zeros (`bias=False`: no bias). Both may be edited in place
    or rebound to a Tensor or NumPy array of the same shape; compiled models read them live.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        self.in_features = positive_int("Linear", "in_features", in_features)
        self.out_features = positive_int("Linear", "out_features", out_features)
        scale = math.sqrt(INIT_SCALE_FACTOR / self.in_features)
        self.weight = Tensor(_rng.standard_normal((self.in_features, self.out_features)) * scale)
        self.bias = Tensor(np.zeros(self.out_features)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        """`x @ weight + bias` for x of shape (..., in_features): a Tensor, or an array or list as a
        compiled model takes; the weight and bias may be rebound to arrays, as compiled models allow."""
        w, b = self.weight, self.bias
        if type(x) is Tensor and type(w) is Tensor and (b is None or type(b) is Tensor) and tracing.tracer is None:
            # The eager case in one step (per-op dispatch was most of a batch-1 call): NumPy's matmul
            # and broadcasting rules are the op table's, so whatever NumPy accepts here the general
            # path below accepts too, with the same values; the float32 product is a fresh array, so
            # the bias goes into it in place. What NumPy refuses, and a product of another dtype
            # (rebound float64 data: the general path rounds it to float32 before the add), take
            # the general path.
            try:
                y = x.data @ w.data
                if y.dtype is _FLOAT32:
                    if b is not None:
                        y += b.data
                    return wrap_result(y)
            except (ValueError, TypeError):
                pass
        if not isinstance(x, (Tensor, np.ndarray)) or not isinstance(w, Tensor):
            x = as_tensor(x)  # a list, as compiled models take; or beside an array weight, so y is a Tensor
        y = x @ self.weight
        return y + self.bias if self.bias is not None else y

    def parameters(self) -> list[Tensor]:
        """`[weight, bias]`, or `[weight]` without a bias."""
        return [self.weight] if self.bias is None else [self.weight, self.bias]

    def __repr__(self) -> str:
        return (f"Linear(in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None})")


class Dropout(Layer):
    """Inverted dropout: in training, zero each element with probability p and scale the rest by
    exactly float32(1/(1-p)). Each mask is drawn from the counter-based generator of `manual_seed`
    for this layer's next call, so `tinycomp.compile(model, training=True)` draws the same ones.

    In eval mode (`model.eval()`) it returns its input unchanged, and that is what an inference
    compile (`tinycomp.compile(model)`) computes: it folds dropout away.
    """

    def __init__(self, p: float = 0.5):
        if isinstance(p, bool) or not isinstance(p, numbers.Real):
            raise TypeError(f"Dropout probability p must be a number; got {type(p).__name__}")
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"Dropout probability p must be in [0, 1]; got p={p}")
        self.p: float = float(p)
        streams.register(self)

    def __setstate__(self, state: dict) -> None:
        """A copy (pickle, deepcopy) is a new layer, numbered when it is made, as one built is: then
        `manual_seed(s)` before and after its first call gives it the same id, and a model unpickled
        after a seed numbers its layers in the order they were built, not the order forward() calls
        them (registered at its first draw, it took the id of that moment)."""
        self.__dict__.update(state)
        streams.register(self)

    def _should_apply_dropout(self, training: bool | None) -> bool:
        training = self.training if training is None else training
        return dropout_effect(bool(training), self.p) != "identity"

    def _generate_dropout_mask(self, shape: tuple[int, ...]) -> Tensor:
        """The mask of this layer's next call (each call draws a new one)."""
        # A Tensor, as in TinyTorch: its tests read `mask.data` (on an ndarray that is a memoryview)
        return Tensor._wrap(dropout_mask(streams.draw(self), tuple(shape), self.p))

    def forward(self, x: Tensor, training: bool | None = None) -> Tensor:
        """x with dropout applied when `training` (None: `self.training`) and 0 < p; x itself otherwise."""
        if training is None and not self.training and type(x) is Tensor and x._tracer is None:
            return x  # the eval-mode call of every inference run, without the general path's steps
        training = self.training if training is None else bool(training)
        # the trace on this thread, also for a parameter or constant operand (dropout on a weight):
        # run eagerly there, its mask was drawn once and frozen into the graph
        tracer = getattr(x, "_tracer", None) or tracing.tracer
        if tracer is not None:  # tracing records the node; passes decide what it becomes
            if dropout_effect(training, self.p) == "mask" and tracer.stack[-1][0] is not self:
                raise CompileError(
                    f"{tracer.where()} calls a Dropout in training mode that is not one of the model's layers "
                    "(made inside forward()?); masks are drawn per layer and call, so keep the Dropout as an "
                    "attribute of the model")
            return apply_op("dropout", x, p=self.p, training=training)
        if not self._should_apply_dropout(training):
            return x
        if dropout_effect(True, self.p) == "zeros":
            return Tensor._wrap(np.zeros(x.shape, np.float32))
        return x * self._generate_dropout_mask(x.shape)

    def __repr__(self) -> str:
        return f"Dropout(p={self.p})"


_LAYER_CALL = Layer.__call__
# weak: a class defined per model (a factory's) goes with its last model
_ACCEPTS_TRAINING: weakref.WeakKeyDictionary[type, bool] = weakref.WeakKeyDictionary()


def _accepts_training(cls: type) -> bool:
    """Does `cls.forward` take a `training` argument? Asked once per class."""
    if cls not in _ACCEPTS_TRAINING:
        try:  # plain callables (functions, lambdas) in a Sequential have no `forward`
            params = inspect.signature(cls.forward).parameters  # type: ignore[attr-defined]
            _ACCEPTS_TRAINING[cls] = "training" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
        except (AttributeError, TypeError, ValueError):
            _ACCEPTS_TRAINING[cls] = False
    return _ACCEPTS_TRAINING[cls]


def parameters_of(layers: Iterable[Any]) -> list[Tensor]:
    """The parameters of `layers` in order, each shared tensor once (a container's `parameters()`)."""
    seen: set[int] = set()
    out = []
    for layer in layers:
        for p in layer.parameters() if hasattr(layer, "parameters") else []:
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


class Sequential(Layer):
    """Layers applied in order: `Sequential(Linear(784, 256), ReLU(), Linear(256, 10))` or from one list.

    The layers live in the list `.layers` (indexing, `len` and iteration work on it; a slice is a new
    Sequential); `training` is passed to the layers whose forward accepts it.
    """

    def __init__(self, *layers: Any):
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        for i, layer in enumerate(layers):
            if not callable(layer):
                raise TypeError(f"Sequential item {i} must be a Layer; got {type(layer).__name__}")
        self.layers = list(layers)

    def forward(self, x: Any, training: bool | None = None) -> Any:
        """Each layer's output feeds the next; `training` (when given) goes to layers that take it."""
        if training is None:
            for layer in self.layers:
                # A Layer's __call__ only calls forward: skip that frame (a fifth of a batch-1 ReLU)
                x = layer.forward(x) if type(layer).__call__ is _LAYER_CALL else layer(x)
            return x
        for layer in self.layers:
            if _accepts_training(type(layer)):  # to forward, as TinyTorch's Sequential: its layers' own
                x = layer.forward(x, training=training)  # __call__(self, x) takes no `training`
            else:
                x = layer(x)
        return x

    def parameters(self) -> list[Tensor]:
        """Every layer's parameters in order, each shared tensor once."""
        return parameters_of(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, i: int | slice) -> Any:
        return Sequential(self.layers[i]) if isinstance(i, slice) else self.layers[i]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.layers)

    def __repr__(self) -> str:
        inner = "".join(f"\n  ({i}): {layer!r}" for i, layer in enumerate(self.layers))
        return f"Sequential({inner}\n)" if self.layers else "Sequential()"
