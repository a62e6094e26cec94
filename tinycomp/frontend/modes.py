"""`Layer.training`, and running a model in a mode of its own on one thread.

Tracing a model, and check=True's eager run of it, run its layers in the compiled mode whatever
their own flags say. Setting the flags for that run and restoring them after was seen by every
other thread using the model meanwhile: their eager training-mode calls ran without dropout, and a
`model.eval()` they made was undone by the restore. Here the run's mode is kept per thread
(`in_mode`), and `Layer.training` reads it there first; the layers themselves are not touched.
"""

from __future__ import annotations

import contextlib
import inspect
import threading
from collections.abc import Iterable, Iterator
from typing import Any


class _Modes(threading.local):
    by_layer: dict[int, bool] | None = None  # id(layer) -> the mode this thread runs it in


_MODES = _Modes()


class TrainingFlag:
    """`Layer.training`: the layer's own flag (True until set), except on a thread running it
    `in_mode`. Stored in the instance's `__dict__`, where a plain attribute would be."""

    def __get__(self, layer: Any, owner: type | None = None) -> bool:
        if layer is None:
            return True
        modes = _MODES.by_layer
        if modes is not None:
            mode = modes.get(id(layer))
            if mode is not None:
                return mode
        return layer.__dict__.get("training", True)

    def __set__(self, layer: Any, value: bool) -> None:
        layer.__dict__["training"] = value

    def __delete__(self, layer: Any) -> None:
        try:
            del layer.__dict__["training"]
        except KeyError:
            raise AttributeError("training") from None


@contextlib.contextmanager
def in_mode(layers: Iterable[Any], training: bool) -> Iterator[None]:
    """Every layer of `layers` reads `training` as `training` on this thread until the block ends;
    other threads see its own flag. A layer whose class replaced the flag with an attribute of its
    own (`training = False` in the class body) has it set and restored, as before."""
    own: list[Any] = []
    plain: list[Any] = []
    for layer in layers:
        flag = inspect.getattr_static(type(layer), "training", None)
        (own if isinstance(flag, TrainingFlag) else plain).append(layer)
    outer = _MODES.by_layer
    saved: list[tuple[Any, Any]] = []
    try:  # everything set inside: a setter that raises must not leave this thread in the mode
        _MODES.by_layer = {**(outer or {}), **{id(layer): bool(training) for layer in own}}
        for layer in plain:
            saved.append((layer, _own_flag(layer)))
            layer.training = training
        yield
    finally:
        _MODES.by_layer = outer
        for layer, flag in reversed(saved):
            _restore_flag(layer, flag)


_MISSING = object()


def _own_flag(layer: Any) -> Any:
    """What to restore a plain layer's `training` to: its instance attribute (_MISSING: none, the
    class's shows), or, behind a property of the class, the value the property gives."""
    if isinstance(inspect.getattr_static(type(layer), "training", None), property):
        return layer.training
    return vars(layer).get("training", _MISSING)


def _restore_flag(layer: Any, flag: Any) -> None:
    if flag is _MISSING:
        vars(layer).pop("training", None)
    else:
        layer.training = flag
