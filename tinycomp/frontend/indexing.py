"""Basic indexing (`x[:, 1:5]`, `x[..., 0]`, `x[:, None]`) as ops of the table, so it can be traced.

A key of ints, slices with a positive step, `...` and `None` (and one list of positions that is an
increasing, evenly spaced run, `x[:, [-1]]`, without ints beside it: then NumPy's result is that
slice's) is a `slice` op per axis it cuts (an int is a slice of one, its axis then dropped) and,
where the shape changes otherwise, one `reshape`
(`Tensor._index`). Eager tensors index with NumPy directly (the same values); this plan serves
traced tensors and a traced model's own parameters, whose slices must follow later changes to them.
"""

from __future__ import annotations

import operator
from typing import Any

from ..ir.shapes import fmt_shape, sliced

Cut = tuple[int, int, int, int]  # (axis, start, stop, step), start and stop within the axis


class AdvancedIndex(Exception):
    """The key holds something other than ints, slices, ... and None (an array, a mask, a Tensor)."""


def _as_int(k: Any) -> int | None:
    if isinstance(k, bool):
        return None
    try:
        return operator.index(k)
    except TypeError:
        return None


def _shown(k: slice) -> str:
    """A slice as written: `1:`, `::2`."""
    text = "".join(("" if v is None else str(v)) + sep for v, sep in ((k.start, ":"), (k.stop, "")))
    return text + ("" if k.step is None else f":{k.step}")


def key_text(key: Any) -> str:
    """An index as written between the brackets: `:, 1:5`, `..., 0`."""
    parts = key if isinstance(key, tuple) else (key,)
    return ", ".join(_shown(k) if isinstance(k, slice) else "..." if k is Ellipsis else repr(k) for k in parts)


def _positions(k: Any) -> list[int] | None:
    """The ints of a list (or 1-D integer array) index, or None for any other index."""
    if isinstance(k, list) or (hasattr(k, "ndim") and getattr(k, "ndim", None) == 1 and
                               getattr(getattr(k, "dtype", None), "kind", "") in "iu"):
        ints = [_as_int(v) for v in k]
        return [v for v in ints if v is not None] if ints and None not in ints else None
    return None


def _run_of(positions: list[int], size: int, axis: int) -> tuple[int, int, int]:
    """(start, stop, step) of positions that are an increasing, evenly spaced run; IndexError for a
    position out of range, AdvancedIndex for any other list (a gather tinycomp has no op for)."""
    for p in positions:
        if not -size <= p < size:
            raise IndexError(f"index {p} is out of bounds for axis {axis} with size {size}")
    at = [p % size for p in positions]
    step = at[1] - at[0] if len(at) > 1 else 1
    if step < 1 or any(b - a != step for a, b in zip(at, at[1:], strict=False)):
        raise AdvancedIndex(f"positions {positions}, which are not an increasing, evenly spaced run")
    return at[0], at[-1] + 1, step


def _expand(key: Any, ndim: int) -> tuple:
    """The key with its `...` (or the missing trailing axes) spelled out as full slices."""
    key = key if isinstance(key, tuple) else (key,)
    if sum(k is Ellipsis for k in key) > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    used = sum(k is not None and k is not Ellipsis for k in key)
    if used > ndim:
        raise IndexError(f"too many indices for tensor: tensor is {ndim}-dimensional, but {used} were indexed")
    fill = (slice(None),) * (ndim - used)
    at = next((i for i, k in enumerate(key) if k is Ellipsis), None)  # by identity: `in` would compare arrays
    return key + fill if at is None else key[:at] + fill + key[at + 1:]


def index_plan(shape: tuple, key: Any) -> tuple[list[Cut], tuple]:
    """The cuts a basic-index `key` makes on a value of `shape` (None: the batch) and the result's
    shape; AdvancedIndex for other keys, IndexError as NumPy raises it, ValueError for what cannot
    be compiled (cutting the batch, a negative step)."""
    cuts: list[Cut] = []
    out: list[int | None] = []
    axis = 0
    parts = _expand(key, len(shape))
    lists = sum(_positions(k) is not None for k in parts)
    if lists > 1:  # NumPy broadcasts such lists together
        raise AdvancedIndex("several lists of positions")
    if lists and any(_as_int(k) is not None for k in parts):  # with a list an int is advanced too: NumPy
        raise AdvancedIndex("a list of positions beside an int")  # may move their axes to the front
    for k in parts:
        if k is None:
            out.append(1)
            continue
        size, i, positions = shape[axis], _as_int(k), _positions(k)
        if isinstance(k, slice):
            if any(b is not None and _as_int(b) is None for b in (k.start, k.stop, k.step)):
                raise AdvancedIndex(f"a slice bound that is not an int ({_shown(k)})")
            if size is None:
                if k != slice(None) and k.indices(2 ** 62) != (0, 2 ** 62, 1):
                    raise _unknown_size(axis, shape, f"{_shown(k)} cuts", f"{_shown(k)} cuts")
                out.append(None)
            else:
                taken = sliced(size, k.start, k.stop, k.step)
                if taken.step < 1:
                    raise ValueError(f"a slice with step {taken.step}: only positive steps are in the op table")
                if taken != range(size):
                    cuts.append((axis, taken.start, taken.stop, taken.step))
                out.append(len(taken))
        elif positions is not None:  # x[:, [-1]], x[:, [0, 2, 4]]: an evenly spaced run is a slice
            if size is None:
                raise _unknown_size(axis, shape, f"positions {positions} pick samples of",
                                    f"positions {positions} pick from")
            start, stop, step = _run_of(positions, size, axis)
            cuts.append((axis, start, stop, step))
            out.append(len(sliced(size, start, stop, step)))
        elif i is not None:
            if size is None:
                raise _unknown_size(axis, shape, f"index {i} picks one sample of", f"index {i} picks from")
            if not -size <= i < size:
                raise IndexError(f"index {i} is out of bounds for axis {axis} with size {size}")
            cuts.append((axis, i % size, i % size + 1, 1))
        else:
            raise AdvancedIndex(f"an index of type {'list' if isinstance(k, list) else type(k).__name__}")
        axis += 1
    if None in shape and out.index(None) != 0:
        raise ValueError(f"a new axis before the batch axis of {fmt_shape(shape)}: the batch stays first")
    return cuts, tuple(out)


def _unknown_size(axis: int, shape: tuple, of_batch: str, of_other: str) -> ValueError:
    """The refusal of a cut of an axis of unknown size: the batch (axis 0), or, in an imported graph
    whose input declares a size after the batch as unknown, that axis (printed N too)."""
    if axis == 0:
        return ValueError(f"{of_batch} the batch axis of {fmt_shape(shape)}; compiled code keeps each batch whole")
    return ValueError(f"{of_other} axis {axis} of {fmt_shape(shape)}, whose size is not known: only the batch axis "
                      "may be (declare the input's sizes after the batch)")
