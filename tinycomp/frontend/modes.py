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
    _MODES.by_layer = {**(outer or {}), **{id(layer): bool(training) for layer in own}}
    missing = object()
    saved = [(layer, vars(layer).get("training", missing)) for layer in plain]
    for layer in plain:
        layer.training = training
    try:
        yield
    finally:
        _MODES.by_layer = outer
        for layer, flag in saved:
            if flag is missing:
                vars(layer).pop("training", None)
            else:
                layer.training = flag
