"""Walking a model's attributes: every Layer, Tensor and numeric array it holds, named by attribute
path (`block.fc1.bias`, `0.weight`, `heads.1.bias`), and the live object back from a path. The
tracer names `param` nodes by these paths; the binding reads them back; compile() walks the model
to warn about Dropout layers left in training mode."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..errors import CompileError
from .layers import Dropout, Layer, Sequential
from .live_reads import is_numeric_array
from .tensor import Tensor


def _children(obj: Any) -> Iterator[tuple[str, Any]]:
    """(path step, value) pairs of a layer's attributes, a list's items or a dict's values.

    A Sequential's layers are named by index (`0.weight`), its other attributes (a subclass's
    `head`, `scale`) by name. A path is dotted text, so a dict key must read back as one step: no
    dots, and no two keys with the same text (1 and "1")."""
    if isinstance(obj, Sequential):
        items: Any = [*enumerate(obj.layers), *((k, v) for k, v in vars(obj).items() if k != "layers")]
    elif isinstance(obj, dict):
        items = obj.items()
        steps = [str(k) for k in obj]
        walked = [k for k, v in obj.items() if _walked(v)]  # keys of what paths must name
        bad = next((k for k in walked if "." in str(k) or steps.count(str(k)) > 1), None)
        if bad is not None:
            raise CompileError(f"a dict in the model has the key {bad!r}, which tinycomp cannot name as a path "
                               f"step (keys {steps}): use keys without dots whose str() differ")
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:  # a plain function or builtin given as the model has no attributes to walk
        items = getattr(obj, "__dict__", {}).items()
    for key, value in items:
        if _walked(value):
            yield str(key), value


def _walked(value: Any) -> bool:
    """What the walk enters, and so names by path: layers, containers, Tensors and numeric arrays."""
    return isinstance(value, (Tensor, Layer, list, tuple, dict)) or is_numeric_array(value)


def walk_model(model: Any) -> tuple[dict[int, str], list[tuple[Layer, str]]]:
    """Map id(Tensor or numeric array) -> first attribute path, and list every Layer with its path
    (cycle-safe). Depth-first in attribute order, as a recursive walk would go, but on an explicit
    stack: a model nested thousands of layers deep must not exhaust Python's recursion limit."""
    tensors: dict[int, str] = {}
    layers: list[tuple[Layer, str]] = []
    seen: set[int] = set()
    stack: list[tuple[Any, str]] = [(model, "")]
    while stack:
        obj, path = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, (Tensor, np.ndarray)):
            tensors[id(obj)] = path
            continue
        if isinstance(obj, Layer):
            _refuse_filled_slots(obj, path)
            layers.append((obj, path))
        steps = [(value, f"{path}.{step}" if path else step) for step, value in _children(obj)]
        stack.extend(reversed(steps))  # the first child on top: visited (and so named) first
    return tensors, layers


def _refuse_filled_slots(layer: Layer, path: str) -> None:
    """A layer attribute kept in `__slots__` is neither walked (its Tensors would be traced as
    constants) nor watched for changes (the compiled model would keep it as traced): refused."""
    filled = [name for klass in type(layer).__mro__ for name in _slots(klass) if hasattr(layer, name)]
    if filled:
        where = f"at '{path}'" if path else "(the top-level model)"
        raise CompileError(f"{type(layer).__name__} {where} keeps {', '.join(map(repr, filled))} in __slots__: "
                           "tinycomp reads a layer's attributes from its __dict__, live and watched for changes, so "
                           "a slot's value would be frozen into the compiled code; make it an ordinary attribute "
                           "(drop it from __slots__)")


def _slots(klass: type) -> tuple[str, ...]:
    """The data slots a class itself declares (`__slots__ = "w"` is one)."""
    slots = vars(klass).get("__slots__", ())
    return tuple(s for s in ((slots,) if isinstance(slots, str) else slots) if s not in ("__dict__", "__weakref__"))


def resolve_path(model: Any, path: str) -> Any:
    """The live object at an attribute path as `walk_model` names it (`0.weight`, `heads.1.bias`)."""
    obj = model
    for step in path.split(".") if path else []:
        if isinstance(obj, Sequential) and step.isdigit():
            obj = obj.layers[int(step)]
        elif isinstance(obj, (list, tuple)):
            obj = obj[int(step)]
        elif isinstance(obj, dict):
            obj = next(v for k, v in obj.items() if str(k) == step)
        else:
            obj = getattr(obj, step)
    return obj


# For each caller of `warn_if_dropout_active`: what it is doing, what its result leaves out, how to keep it
_SAME_MASKS = ("to keep dropout (its masks then match the eager model's after the same tinycomp.nn.manual_seed and "
               "number of calls)")
DROPOUT_TEXTS = {
    "compile": ("compiling", "the compiled model leaves their dropout out (as eval mode does; only a call with "
                "an explicit training=True keeps it)", f"compile(model, training=True) {_SAME_MASKS}"),
    "export": ("exporting", "the exported code leaves their dropout out",
               f"export(model, ..., training=True) {_SAME_MASKS}"),
    "predict": ("scoring", "predict() leaves their dropout out",
                "predict(tc.compile(model, training=True), ...) to keep dropout (with masks from each worker's "
                "own stream)"),
}


def warn_if_dropout_active(model: Any, doing: str = "compile") -> None:
    """One UserWarning when an inference compile (or export, or Dask predict: `doing`) meets Dropout
    layers in training mode: the eager model then drops activations on every call and the two results
    differ, which looks like a compiler bug to whoever compares them."""
    try:
        layers = walk_model(model)[1]
    except CompileError:  # a model tracing will refuse, with its own message: nothing to add here
        return
    active = [(layer, path) for layer, path in layers
              if isinstance(layer, Dropout) and layer._should_apply_dropout(None)]
    if not active:
        return
    names = ", ".join(f"'{path}' {layer!r}" if path else repr(layer) for layer, path in active[:3])
    more = f" and {len(active) - 3} more" if len(active) > 3 else ""
    verb, result, keep = DROPOUT_TEXTS[doing]
    # a model of TinyTorch's plain classes has no eval(): the function sets the flags all the same
    to_eval = "model.eval()" if callable(getattr(model, "eval", None)) else \
        "tinycomp.nn.set_training_mode(model, False)"
    warnings.warn(
        f"{verb} {type(model).__name__} for inference while {len(active)} of its Dropout "
        f"layers ({names}{more}) are in training mode: {result}, while calling the model itself drops "
        f"activations at random (unless its forward passes training=False to them), so the two differ. "
        f"To compare them, call {to_eval} first, or {keep}.",
        UserWarning, stacklevel=3)
