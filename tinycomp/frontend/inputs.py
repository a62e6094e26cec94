"""The inputs of a traced forward(): their shapes as `trace`/`compile` take them, and their names.

A model of one input is traced from one shape, `(None, 784)`; a forward() of several Tensor inputs
(`forward(x, mask)`) from a list of shapes, one per input, each its own `input` node named as
forward() names it.
"""

from __future__ import annotations

import inspect
from typing import Any

from ..checks import is_whole_number


def input_names(model: Any, count: int) -> list[str]:
    """Names of the input nodes: `x` for a model of one input; with several, forward()'s own names for
    them (`x`, `mask`), checked against its signature so that a wrong count is a clear TypeError."""
    if count == 1:
        return ["x"]
    forward = getattr(model, "forward", model)
    try:
        params = list(inspect.signature(forward).parameters.values())
    except (TypeError, ValueError):  # no signature to read (a builtin): number them
        return [f"x{i}" for i in range(count)]
    try:
        inspect.signature(forward).bind(*range(count))
    except TypeError:
        raise TypeError(f"{type(model).__name__}.forward{inspect.signature(forward)} does not take {count} "
                        f"positional inputs") from None
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    names = positional[:count] + [f"x{i}" for i in range(len(positional), count)]  # *args: numbered
    return [n if n not in ("output",) and names.count(n) == 1 else f"input{i}" for i, n in enumerate(names)]


def input_shapes(input_shape: Any) -> list[tuple]:
    """One input shape, `(None, 784)`, or one per input of forward(): `[(None, 64, 128), (None, 64, 64)]`."""
    several = isinstance(input_shape, (tuple, list)) and bool(input_shape) and \
        all(isinstance(s, (tuple, list)) for s in input_shape)
    return [check_input_shape(s) for s in input_shape] if several else [check_input_shape(input_shape)]


def check_input_shape(input_shape: Any) -> tuple:
    if not isinstance(input_shape, (tuple, list)) or not input_shape:
        raise ValueError(f"input_shape must be a non-empty tuple like (None, 784); got {input_shape!r}")
    for i, d in enumerate(input_shape):
        ok = (d is None and i == 0) or (is_whole_number(d) and int(d) >= 0)
        if not ok:
            raise ValueError(
                f"input_shape {tuple(input_shape)!r}: dimension {i} must be a non-negative int"
                + (" or None (the dynamic batch)" if i == 0 else ""))
    return tuple(None if d is None else int(d) for d in input_shape)
