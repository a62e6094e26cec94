"""The inputs of a traced forward(): their shapes as `trace`/`compile` take them, and their names.

A model of one input is traced from one shape, `(None, 784)`; a forward() of several Tensor inputs
(`forward(x, mask)`) from a list of shapes, one per input, each its own `input` node named as
forward() names it.
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..checks import is_whole_number
from ..ir.shapes import fmt_shape
from .layers import Linear, Sequential
from .structural import InputShape


def first_layer(model: Any) -> Any:
    """The layer a model's input meets first, looking into nested Sequentials and into models that
    name theirs (`first_layer`: an imported GraphModel or Sequential's input check)."""
    first = model
    while True:
        if isinstance(getattr(type(first), "first_layer", None), property) and first.first_layer is not None:
            first = first.first_layer  # before the Sequential rule: an imported one's input check
        elif isinstance(first, Sequential) and first.layers:
            first = first.layers[0]
        else:
            return first


def inferred_input_shape(model: Any) -> tuple | None:
    """(None, width) for a model whose first layer is a Linear, (None, *sizes) for one that starts
    with an InputShape (an imported model), else None (the caller asks for one)."""
    first = first_layer(model)
    if isinstance(first, InputShape):
        return (None, *first.sample_shape)
    return (None, int(np.shape(first.weight)[0])) if isinstance(first, Linear) else None


def _forward_signature(model: Any) -> inspect.Signature | None:
    """forward()'s own signature (the model's, for a plain callable), None where there is none to read."""
    try:
        return inspect.signature(getattr(model, "forward", model))
    except (TypeError, ValueError):
        return None


def input_signature(model: Any) -> inspect.Signature | None:
    """forward()'s signature without `training`, the mode flag a Layer's caller passes (Sequential's
    forward(x, training=None)), never a tensor input; None where there is none to read (a builtin).
    Without annotations: messages print it."""
    sig = _forward_signature(model)
    if sig is None:
        return None
    inputs = [p.replace(annotation=p.empty) for p in sig.parameters.values() if p.name != "training"]
    return sig.replace(parameters=inputs, return_annotation=sig.empty)


def _positional(sig: inspect.Signature) -> list[inspect.Parameter]:
    """The parameters a call may give by position."""
    return [p for p in sig.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def required_inputs(sig: inspect.Signature) -> list[str]:
    """The inputs forward() cannot be called without (no default)."""
    return [p.name for p in _positional(sig) if p.default is p.empty]


def _takes_training(model: Any) -> bool:
    sig = _forward_signature(model)
    return sig is not None and "training" in sig.parameters


def input_names(model: Any, count: int) -> list[str]:
    """Names of the input nodes: `x` for a model of one input; with several, forward()'s own names for
    them (`x`, `mask`), checked against its signature so that a wrong count is a clear TypeError."""
    sig = input_signature(model)
    if count == 1:
        required = required_inputs(sig) if sig is not None else []
        if len(required) > 1:
            missing = required[1:]  # as Python words it for the eager call
            raise TypeError(f"{type(model).__name__}.forward{sig} missing {len(missing)} required positional "
                            f"argument{'s' * (len(missing) > 1)}: {', '.join(map(repr, missing))}: a call passes each "
                            "input (fast(x, mask)), and compile()'s input_shape one shape per input, e.g. "
                            "[(None, 16), (None, 4)]")
        return ["x"]
    if sig is None:  # no signature to read: number them
        return [f"x{i}" for i in range(count)]
    try:
        sig.bind(*range(count))
    except TypeError:
        raise TypeError(f"{type(model).__name__}.forward{sig} does not take {count} positional inputs") from None
    positional = [p.name for p in _positional(sig)]
    names = positional[:count] + [f"x{i}" for i in range(len(positional), count)]  # *args: numbered
    return [n if n not in ("output",) and names.count(n) == 1 else f"input{i}" for i, n in enumerate(names)]


def positional_inputs(model: Any, x: Any, more: tuple, named: dict[str, Any]) -> list[Any]:
    """x, *more and the inputs given by name (`fast(x, mask=m)`), in forward()'s order: a compiled
    model takes its inputs by position. A TypeError names forward()'s signature where they do not
    bind, skip an input before a given one, or are keyword-only."""
    what = f"{type(model).__name__}.forward"
    if "training" in named:
        raise TypeError(f"{what} was given training={named['training']!r}: a compiled model's mode is fixed when it "
                        "is compiled (compile(model, training=True) keeps dropout), not chosen per call")
    sig = input_signature(model)
    if sig is None:
        raise TypeError(f"{what} has no signature to place the inputs given by name ({', '.join(named)}) by; "
                        "pass them by position")
    try:
        bound = sig.bind(x, *more, **named)
    except TypeError as exc:
        raise TypeError(f"{what}{sig}: {exc}") from None
    order = [p.name for p in _positional(sig)]
    given = [n for n in order if n in bound.arguments]
    if given != order[:len(given)]:
        skipped = next(n for n in order if n not in bound.arguments)
        raise TypeError(f"{what}{sig} was given {', '.join(given)} but not {skipped}: a compiled model takes its "
                        "inputs in forward()'s order, with none left out before the last one given")
    others = [n for n in bound.arguments if n not in order]
    if others:
        raise TypeError(f"{what}{sig} was given {', '.join(others)} by keyword only: a compiled model takes "
                        "forward()'s positional inputs")
    return [bound.arguments[n] for n in given]


def given_inputs(model: Any, more: tuple) -> tuple:
    """`more` (the inputs after the first) without its trailing Nones for inputs forward() defaults to
    None: `fast(x, None)` is `fast(x)`, as `model(x, None)` is `model(x)`. A None left over (for an
    input without that default, or before one given) or a Python number is a TypeError naming the
    input: a compiled model traces its inputs as tensors."""
    sig = input_signature(model)
    params = _positional(sig) if sig is not None else []
    n = len(more)
    # a None past the tensor inputs is forward()'s `training` left as it is (Sequential's forward(x, training=None))
    if n == len(params) and more[-1] is None and _takes_training(model):
        n -= 1
    while n and more[n - 1] is None and n < len(params) and params[n].default is None:
        n -= 1
    where = f"{type(model).__name__}.forward{sig if sig is not None else '()'}"
    if any(m is None for m in more[:n]):
        i = next(i for i, m in enumerate(more[:n], 1) if m is None)
        name = params[i].name if i < len(params) else f"input {i + 1}"
        raise TypeError(f"{where} was given None for {name}: a compiled model takes None only for its last inputs, "
                        "and only where forward() defaults them to None (then it is the call without them)")
    number = next((i for i, m in enumerate(more[:n], 1) if isinstance(m, numbers.Number)), None)
    if number is not None:
        name = params[number].name if number < len(params) else f"input {number + 1}"
        raise TypeError(f"{where} was given the number {more[number - 1]} for {name}: a compiled model's inputs are "
                        "arrays with the batch first; a number that configures the model belongs in a layer "
                        "attribute (read live on every call)")
    return more[:n]


def input_shapes(input_shape: Any) -> list[tuple]:
    """One input shape, `(None, 784)`, or one per input of forward(): `[(None, 64, 128), (None, 64, 64)]`,
    as `trace` takes them: sizes >= 0, None (the dynamic batch) first only."""
    return [check_input_shape(s) for s in split_input_shape(input_shape)]


def compile_input_spec(input_shape: Any) -> tuple[tuple[int, ...], tuple[tuple, ...]]:
    """(features of the first input, shapes of the others) of compile()'s `input_shape`, read as
    `input_shapes` reads it, with compile()'s rules: the first shape (batch, features...) with
    positive feature sizes; an input after the first given without the leading None is the same for
    every sample (a shared mask)."""
    first, *others = split_input_shape(input_shape)
    if isinstance(first, (tuple, list)) and first:
        check_input_shape(first, dims=1)  # the batch: None, or a size (-1 or 32.5 is no batch)
    more = []
    for i, s in enumerate(others, 1):
        s = tuple(s)
        dims = s[1:] if s[:1] == (None,) else s
        if not s or any(not is_whole_number(d) or d <= 0 for d in dims):
            raise ValueError(f"input_shape[{i}] must be (None, features...) for an input with the batch, or "
                             f"(features...) for one shared by every sample, with positive sizes; got {s!r}")
        more.append((*s[:1 if s[:1] == (None,) else 0], *(int(d) for d in dims)))
    return feature_shape(first), tuple(more)


def split_input_shape(input_shape: Any) -> list[Any]:
    """The shapes `input_shape` holds, unchecked: itself for one shape, its items when every item is a
    shape (one per input of forward())."""
    several = isinstance(input_shape, (tuple, list)) and bool(input_shape) and \
        all(isinstance(s, (tuple, list)) for s in input_shape)
    return list(input_shape) if several else [input_shape]


def feature_shape(input_shape: Any) -> tuple[int, ...]:
    """The feature sizes of one compiled input shape `(batch, features...)`, each positive."""
    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else ()
    if len(shape) < 2 or any(not is_whole_number(d) or d <= 0 for d in shape[1:]):
        raise ValueError(
            f"input_shape must be (batch, features...) with positive feature sizes, e.g. (None, 784); "
            f"got {input_shape!r}"
        )
    return tuple(int(d) for d in shape[1:])


def check_input_shape(input_shape: Any, dims: int | None = None) -> tuple:
    """`input_shape` with every dimension (or the first `dims`) checked: None (the dynamic batch)
    first only, else sizes >= 0."""
    if not isinstance(input_shape, (tuple, list)) or not input_shape:
        raise ValueError(f"input_shape must be a non-empty tuple like (None, 784); got {input_shape!r}")
    for i, d in enumerate(input_shape[:dims]):
        ok = (d is None and i == 0) or (is_whole_number(d) and int(d) >= 0)
        if not ok:
            raise ValueError(
                f"input_shape {tuple(input_shape)!r}: dimension {i} must be a non-negative int"
                + (" or None (the dynamic batch)" if i == 0 else ""))
    return tuple(None if d is None else int(d) for d in input_shape)


def shapes_text(features: tuple[int, ...], more: tuple[tuple, ...]) -> str:
    """The inputs' shapes, batch first as N: `(N, 5, 8), (5, 5)`."""
    return ", ".join(map(fmt_shape, [(None, *features), *more]))


def dims_text(features: tuple[int, ...]) -> str:
    return ", ".join(map(str, features))


def fits_features(features: tuple[int, ...], shape: tuple[int, ...]) -> bool:
    """Does an input of `shape` run on code compiled for `features` (a batch, one sample, or leading dims)?"""
    nf = len(features)
    return len(shape) >= nf and tuple(shape[len(shape) - nf:]) == features


def check_compilable(arr: Any, others: Sequence[Any], now: str = "") -> None:
    """Inputs a model may compile for: as compile(input_shape=...), positive sizes after the batch
    (`now`: what the model runs at present, for the message)."""
    for a in (arr, *others):
        if 0 in (a.shape[1:] if a.ndim > 1 else a.shape):
            raise ValueError(f"a compiled model's inputs need positive sizes after the batch dimension, "
                             f"(batch, features...); {now}got an input of shape {tuple(a.shape)}")


def check_input_names(model: Any, x: Any) -> None:
    """A DataFrame given to a model fitted on named columns (an imported scikit-learn model's input
    check holds them) must have those columns, in order: it is read by position."""
    if getattr(x, "columns", None) is not None and isinstance(check := first_layer(model), InputShape):
        check.check_names(x)

