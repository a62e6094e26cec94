"""How the operands of an elementwise node line up with its output, row by row.

The code generator runs an elementwise node as one loop over rows of `row` floats: the whole batch
row, or else the last dimension. Each operand is then read as a `full` row, one `row` shared by
every batch row, a per-row `col` value, a `scalar`, a one-element `const` folded in as an
immediate, or a row or column that repeats with the row's position inside a sample (`row%P`,
`col%P`). The fusion pass asks the same question before it merges two nodes, so it never builds
a node that no loop can run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .graph import Graph


def row_floats(shape: tuple) -> int:
    """Floats per batch row, or in total for a value without a batch dimension."""
    return math.prod(d for d in shape if d is not None)


def is_batched(shape: tuple) -> bool:
    return bool(shape) and shape[0] is None


def is_scalar_const(g: Graph, n: str) -> bool:
    return g.op(n) == "const" and row_floats(g.shape(n)) == 1 and not is_batched(g.shape(n))


def operand_kind(g: Graph, operand: str, out: tuple, row: int) -> str | None:
    """How an operand broadcasts over rows of width `row` of the output; None if it does not fit."""
    shape = tuple(g.shape(operand))
    if is_scalar_const(g, operand):
        return "const"  # folded into the kernel as an immediate
    if row_floats(shape) == row_floats(out) and is_batched(shape) == is_batched(out):
        return "full"
    if row_floats(shape) == 1 and not is_batched(shape):
        return "scalar"  # one value for the whole call; a batched (N, 1) value is a "col" below
    trailing = shape[next((i for i, d in enumerate(shape) if d != 1), len(shape)):]
    if not is_batched(shape) and row_floats(trailing) == row and trailing == out[len(out) - len(trailing):]:
        return "row"
    if is_batched(shape) and row == row_floats(out) and all(d == 1 for d in shape[1:]):
        return "col"  # one value per sample, rows of a whole sample
    if is_batched(shape) and len(shape) == len(out) > 2 and shape[-1] == 1 and row == out[-1] \
            and tuple(shape[:-1]) == tuple(out[:-1]):
        return "col"  # one value per row of a sample ((N, 3, 1) gating (N, 3, 6)), rows of the last dim
    return periodic_kind(shape, out, row)


def periodic_kind(shape: tuple, out: tuple, row: int) -> str | None:
    """`row%P` or `col%P` for a value without a batch dimension that varies with the position of a
    row inside its sample, with period P: rows of the last dimension, `out` (N, ..., P.., row). A
    (3, 6) table over (N, 3, 6) gives row i of each sample its row i % 3 (`row%3`); a (3, 1) column
    gives it the one value i % 3 (`col%3`). The operand's leading dimensions must be exactly the
    last ones of the sample's (no size-1 dimension broadcast between them), so that row i of the
    kernel reads entry i % P."""
    if is_batched(shape) or not is_batched(out) or len(out) < 3 or out[-1] != row:
        return None
    dims = tuple(shape)
    while dims and dims[0] == 1:
        dims = dims[1:]
    if len(dims) < 2 or dims[-1] not in (1, row):
        return None
    lead, inner = dims[:-1], tuple(out[1:-1])
    if len(lead) > len(inner) or lead != inner[len(inner) - len(lead):]:
        return None
    period = math.prod(lead)
    if period == 1:
        return None
    return f"{'row' if dims[-1] == row and row > 1 else 'col'}%{period}"


def row_candidates(out: tuple) -> list[int]:
    """The row widths a loop over `out` may take, preferred first: a whole batch row, else the last dim."""
    last = out[-1] if out and out[-1] is not None else 1  # (N,): one float per batch row
    return list(dict.fromkeys([row_floats(out), int(last)]))


def elementwise_layout(g: Graph, out: tuple, operands: Sequence[str]) -> tuple[int, list[str]] | None:
    """The row width (a whole batch row, else the last dim) under which every operand fits, with
    each operand's kind; None if there is none."""
    for row in row_candidates(out):
        kinds = [operand_kind(g, a, out, row) for a in operands]
        if None not in kinds:
            return row, kinds  # type: ignore[return-value]
    return None
