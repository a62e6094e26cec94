"""Does a forward compute each sample alike when its input has other leading dimensions than a batch?

A compiled model also takes one sample (*features) or several leading dimensions (*lead, *features):
the native code computes prod(lead) rows as one batch and the result takes the shape eager gives.
That is eager's result only where the forward treats the leading dimensions as it treats the
batch: `Softmax(dim=1)` normalizes a sample's first axis in a batch, but the rows of a lone sample.
`lead_mismatch` compares the graph traced at (*lead, *features) with the batch graph node by node.
It is conservative: a forward whose differing intermediates cancel out (a transpose(1, 2) undone
by another) is refused too; a batch of the same samples always runs.
"""

from __future__ import annotations

import math

import numpy as np

from .graph import Graph
from .ops import ELEMENTWISE, combined_axes
from .shapes import fmt_shape, normalized_axis

AXIS_ATTRS = frozenset({"dim", "axis", "dim0", "dim1", "newshape"})  # compared through shapes and axes
REGROUPING = frozenset({"reshape", "output"})  # may regroup whole rows: C order keeps each row's values
FLAT = "flat"  # a value whose rows a reshape merged: read only by reshapes, the output, ops by numbers
MISMATCH = "mismatch"  # a value not computed as in a batch


def lead_mismatch(batch: Graph, led: Graph, lead: tuple[int, ...]) -> str | None:
    """None if `led`, traced at (*lead, *features), computes row for row what `batch`, traced at
    (None, *features), computes for a batch of prod(lead) samples; else what differs, naming the node.

    Node by node (both traces run the same forward, so they list the same nodes): the same op and
    operands; a batched value of shape (None, *r) must be (*L, *r) with prod(L) = prod(lead) (a
    reshape may regroup the leading dimensions; one that merges rows into r feeds only reshapes,
    elementwise ops by single numbers and the output: `_rows_kept`); every other value the same
    shape; axes (softmax, reductions, transpose) the same counted from the last; every other
    attribute equal; every constant the same value (a number the forward took from the input's
    shape, `x.shape[1] ** 0.5`, `x.ndim`, is a constant of the trace)."""
    rows = math.prod(lead)
    batch_nodes, led_nodes = batch.nodes(), led.nodes()
    pairs = list(zip(batch_nodes, led_nodes, strict=False))
    if len(batch_nodes) != len(led_nodes) or any(batch.op(b) != led.op(n) for b, n in pairs):
        return "its forward runs other operations for that input"
    twin = {n: b for b, n in pairs}
    parts: dict[str, tuple | str | None] = {}  # each led value's leading dimensions (`_lead_part`)
    for b, n in pairs:
        op = batch.op(b)
        if [twin[a] for a in led.args(n)] != batch.args(b):
            return f"{op} node {b} reads other values"
        if _axes_from_end(batch, b) != _axes_from_end(led, n):
            return (f"{op} node {b} works along other axes of its operand (a positive dim counts from the "
                    f"leading dimensions: use a negative one)")
        if _other_attrs(batch, b) != _other_attrs(led, n):
            return f"{op} node {b} has attributes {_other_attrs(led, n)}, not {_other_attrs(batch, b)}"
        if op == "const" and not _same_value(batch[b]["value"], led[n]["value"]):
            return (f"const node {b} is {_brief(led[n]['value'])} for that input but "
                    f"{_brief(batch[b]['value'])} for a batch: a number taken from the input's shape?")
        part = _lead_part(batch.shape(b), led.shape(n), rows)
        if part == MISMATCH:
            return f"{op} node {b} has shape {led.shape(n)}, where a batch gives {fmt_shape(batch.shape(b))}"
        parts[n] = part
        if op not in REGROUPING and not _rows_kept(led, n, parts):
            return f"{op} node {b} mixes values of shapes {[led.shape(a) for a in led.args(n)]} across samples"
    return None


def _same_value(a: np.ndarray, b: np.ndarray) -> bool:
    """The same dtype, shape and values, NaN where NaN (+0 and -0 differ: a divide tells them apart)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.kind == "f":
        return bool(np.array_equal(np.signbit(a), np.signbit(b)) and np.array_equal(a, b, equal_nan=True))
    return bool(np.array_equal(a, b))


def _brief(value: np.ndarray) -> str:
    value = np.asarray(value)
    return repr(value.item()) if value.size == 1 else f"an array of shape {value.shape}"


def _rows_kept(led: Graph, n: str, parts: dict) -> bool:
    """Does node n of `led` compute its rows as a batch does, given its operands' and its own parts?
    Batched values must share their leading dimensions; rows merged by a reshape (FLAT) may only
    pass through elementwise ops whose other operands are single numbers."""
    args = led.args(n)
    groups = {parts[a] for a in args} | {parts[n]}
    groups.discard(None)
    if FLAT not in groups:
        return len(groups) <= 1
    return led.op(n) in ELEMENTWISE and groups == {FLAT} and \
        all(parts[a] == FLAT or math.prod(led.shape(a)) == 1 for a in args)


def _lead_part(batch_shape: tuple, shape: tuple, rows: int) -> tuple | str | None:
    """For a value of `batch_shape` (None: the batch) traced as `shape`: its leading dimensions L
    (a tuple), FLAT (the same values, rows merged), None (not batched, the same shape) or MISMATCH."""
    if None not in batch_shape:
        return None if tuple(shape) == tuple(batch_shape) else MISMATCH
    if batch_shape[0] is not None or None in batch_shape[1:]:
        return MISMATCH
    per_row = tuple(batch_shape[1:])
    k = len(shape) - len(per_row)
    if k >= 0 and tuple(shape[k:]) == per_row and math.prod(shape[:k]) == rows:
        return tuple(shape[:k])
    return FLAT if math.prod(shape) == rows * math.prod(per_row) else MISMATCH


def _axes_from_end(g: Graph, n: str) -> tuple[int, ...]:
    args = g.args(n)
    if not args:
        return ()
    ndim, attrs = len(g.shape(args[0])), g.attrs(n)
    if g.op(n) == "transpose":
        axes: tuple[int, ...] = (normalized_axis(ndim, attrs["dim0"]), normalized_axis(ndim, attrs["dim1"]))
    elif g.op(n) in ("slice", "concat"):
        axes = (normalized_axis(ndim, attrs["axis"]),)
    else:
        axes = combined_axes(g.op(n), ndim, attrs)
    return tuple(a - ndim for a in axes)


def _other_attrs(g: Graph, n: str) -> dict:
    return {k: v for k, v in g.attrs(n).items() if k not in AXIS_ATTRS}

