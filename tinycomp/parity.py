"""The parity rule (README, "Numerics and weights"): how close compiled output must be to eager output.

GEMM accumulation order differs from OpenBLAS, so compiled and eager float32 results are not
bit-equal. Both are judged against a float64 reference: the compiled error may be at most twice
the eager float32 error, plus a tiny absolute slack scaled to the output's magnitude. Non-finite
values must match exactly (NaN where eager has NaN, the same infinities) -- except on rows whose
float64 run leaves float32's range: there float32 overflows, and whether a sum ends as +inf, -inf or
NaN depends on its order (OpenBLAS's FMA chain, our partial sums), so no engine can match another.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .ir.graph import Graph
from .ir.interpret import interpret
from .ir.layout import is_batched, row_floats
from .ir.ops import op_def
from .ir.philox import DropoutStream
from .ir.shapes import reduced_axes

ATOL = 1e-6  # times max(1, max |reference|)
F32_MAX = float(np.finfo(np.float32).max)
EPS32 = float(np.finfo(np.float32).eps)
ROUNDING_SLACK = 2.0  # float32 epsilons of an element's rounding magnitude (see `rounding_magnitude`)


@dataclass(frozen=True)
class ParityReport:
    ok: bool
    compiled_error: float  # max |compiled - reference| over finite reference values
    eager_error: float
    tolerance: float
    worst_index: tuple[int, ...] | None
    detail: str

    def __str__(self) -> str:
        return self.detail


def check_parity(compiled: np.ndarray, eager: np.ndarray, reference: np.ndarray, *,
                 max_eager_error: float | None = None, overflow_rows: np.ndarray | None = None,
                 rounding: np.ndarray | None = None, first_row: int = 0) -> ParityReport:
    """Judge compiled against eager by the parity rule, both measured against `reference`.

    With `max_eager_error`, the eager result must itself lie within that (times the output scale) of
    the reference: when the reference comes from the compiled graph, this catches a graph that no
    longer describes the model, which the rule alone would excuse as "eager error". Rows marked in
    `overflow_rows` (see `reference_and_overflow`) are not judged: float32 overflow there depends on
    the order of the sums. `rounding` (per element, from `Reference.rounding`) widens each element's
    allowance by ROUNDING_SLACK float32 epsilons of the magnitudes its sums cancel: under heavy
    cancellation one order's luck on one element is not a bug in another order.

    Every judgement is per sample (row of the first axis), so a batch may be judged in slices of
    rows: `first_row` is the slice's place in the batch, for the indices the report gives.
    """
    def at(index: tuple[int, ...]) -> tuple[int, ...]:
        return (index[0] + first_row, *index[1:]) if index else index

    compiled, eager = np.array(compiled, np.float64), np.array(eager, np.float64)
    reference = np.array(reference, np.float64)
    if compiled.shape != eager.shape:
        return ParityReport(False, np.inf, 0.0, 0.0, None,
                            f"shape differs: compiled {compiled.shape}, eager {eager.shape}")
    if compiled.size == 0:
        return ParityReport(True, 0.0, 0.0, 0.0, None, "empty output")
    if overflow_rows is not None:  # unjudged rows become zeros everywhere: indices stay meaningful
        skip = np.asarray(overflow_rows, dtype=bool)
        compiled[skip], eager[skip], reference[skip] = 0.0, 0.0, 0.0
    # per element: how far float32's rounding may carry it (ROUNDING_SLACK epsilons of its rounding
    # magnitude; NaN estimates, inf * 0 around a saturated activation, add nothing)
    allowance = None if rounding is None else ROUNDING_SLACK * EPS32 * np.nan_to_num(
        np.broadcast_to(rounding, reference.shape), nan=0.0, posinf=np.inf)
    special = ~np.isfinite(eager) | ~np.isfinite(compiled)
    bad = np.argwhere(special & ~_specials_match(compiled, eager, reference, allowance))
    if len(bad):
        where = tuple(int(i) for i in bad[0])
        detail = f"non-finite values differ at {at(where)}: compiled {compiled[where]:g}, eager {eager[where]:g}"
        return ParityReport(False, np.inf, 0.0, 0.0, at(where), detail)
    finite = ~special
    if not finite.any():
        return ParityReport(True, 0.0, 0.0, 0.0, None, "all values non-finite and equal")
    # where the float64 run leaves float32's domain and eager does not ((x * 1e-20).sqrt() at x = -1e-30:
    # float32's product underflows to -0, float64's stays negative, its root NaN), eager is the reference
    ref = np.where(finite, np.where(np.isfinite(reference), reference, eager), 0.0)
    err_c = np.where(finite, np.abs(compiled - ref), 0.0)
    err_e = np.where(finite, np.abs(eager - ref), 0.0)
    # per sample (row of the batch): samples are computed apart, and one sample's large values or
    # large eager error must not excuse another's error
    scale = _row_max(np.abs(ref), 1.0)
    tol = 2 * _row_max(err_e, 0.0) + ATOL * scale
    slack = np.zeros_like(err_c) if allowance is None else np.where(finite, allowance, 0.0)
    excess = err_c - slack - tol
    worst = tuple(int(i) for i in np.unravel_index(int(np.argmax(excess)), excess.shape))
    ok = float(excess.max()) <= 0.0
    # float32's own rounding (cancellation, absorption) moves eager too: only what exceeds it says
    # the graph no longer describes the model
    # where compiled is eager bit for bit it computes what the model does, stale graph or not: only
    # the others can show one (an underflow both runs share is no sign of it)
    eager_excess = np.where(compiled != eager, err_e - slack - max_eager_error * scale, 0.0) \
        if max_eager_error is not None else None
    if eager_excess is not None and float(eager_excess.max()) > 0.0:
        where = tuple(int(i) for i in np.unravel_index(int(np.argmax(eager_excess)), err_e.shape))
        return ParityReport(False, float(err_c.max()), float(err_e.max()), float(tol[where]), at(where),
                            f"the eager model is {err_e.max():.3g} away from the float64 reference of the "
                            f"compiled graph at index {at(where)} (eager {eager[where]:.9g}, compiled "
                            f"{compiled[where]:.9g}): the traced graph no longer describes the model "
                            "(does forward() read globals or take another Python branch?), or eager's float32 "
                            "rounding grew past what a first-order estimate allows (a sum that cancels, then "
                            "exp: the float64 model settles which)")
    row = worst[:1]
    detail = (f"|compiled - float64 reference| = {err_c[worst]:.3g} at index {at(worst)} "
              f"(compiled {compiled[worst]:.9g}, eager {eager[worst]:.9g}, reference {ref[worst]:.9g}); "
              f"eager float32 error in that sample {err_e[row].max():.3g}; allowed {tol[worst]:.3g}"
              + (f" + rounding slack {slack[worst]:.3g} there" if rounding is not None else ""))
    return ParityReport(ok, float(err_c.max()), float(err_e.max()), float(tol[worst]), at(worst), detail)


def _specials_match(compiled: np.ndarray, eager: np.ndarray, reference: np.ndarray,
                    allowance: np.ndarray | None) -> np.ndarray:
    """Where the non-finite values agree: compiled's is eager's; or, on an element float32 cannot
    resolve (its rounding `allowance` infinite or as large as the reference), compiled's NaN is float64's
    (0 / 0: layer norm at eps 0 of a constant row, where eager's mean misses by an ulp and gives +-1),
    or float64 finds a number and either float32 run none (a variance underflowing to 0), or compiled
    finds a number where the others do not (a sum cancelling to exactly 0 before a division, which
    compiled's order leaves at an ulp): which of NaN, +-inf or a number comes out depends on the order.
    A stale graph's compiled value is its own float64 run's, so none of these excuse one.
    Without an estimate, or where it is small, eager's only: a stale graph's exact log(0) = -inf, or
    its +-inf anywhere, is no rounding."""
    same = _same(compiled, eager)
    if allowance is None:
        return same
    with np.errstate(invalid="ignore"):
        unresolved = ~np.isfinite(allowance) | (allowance >= np.abs(reference))
    return same | (unresolved & ((np.isnan(reference) & np.isnan(compiled)) | np.isfinite(reference) |
                                 np.isfinite(compiled)))


def _same(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Equal, NaN counting as equal to NaN."""
    return (a == b) | (np.isnan(a) & np.isnan(b))


def _row_max(values: np.ndarray, floor: float) -> np.ndarray:
    """The largest value of each sample (all axes but the first), at least `floor`, broadcast back."""
    if values.ndim < 2:
        return np.maximum(values, floor)
    rows = values.reshape(len(values), -1).max(axis=1)  # check_parity returned before on an empty output
    return np.broadcast_to(np.maximum(rows, floor).reshape(-1, *[1] * (values.ndim - 1)), values.shape)


class Reference(NamedTuple):
    """The float64 run of a graph: what both float32 engines are judged against."""

    values: np.ndarray  # the graph's output in float64
    overflow_rows: np.ndarray  # per input row: did some value or dot product leave float32's range
    rounding: np.ndarray  # per output element: its rounding magnitude (see `rounding_magnitude`)


def live_floats_per_row(g: Graph) -> int:
    """The most values per sample `reference_and_overflow` holds at once, each dropped after its
    last reader (its rounding estimates as many again): what a slice of rows of it costs."""
    unread = {n: len(g.users(n)) for n in g.nx}
    size = {n: row_floats(g.shape(n)) if is_batched(g.shape(n)) else 0 for n in g.nx}
    live = peak = 0
    for n in g.nodes():
        live += size[n]
        peak = max(peak, live)
        for arg in dict.fromkeys(g.args(n)):
            unread[arg] -= 1
            if not unread[arg]:
                live -= size[arg]
    return peak


def float64_reference(g: Graph, x: np.ndarray, params: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """Run graph g in float64 (inputs and parameters widened): the yardstick for both engines."""
    return reference_and_overflow(g, x, params).values


def reference_and_overflow(g: Graph, x: np.ndarray | Sequence[np.ndarray], params: dict[str, np.ndarray] | None = None,
                           *, streams: dict[str, DropoutStream] | None = None) -> Reference:
    """Run g in float64 and watch every value: which rows overflow float32, and how large the sums are.
    Training-mode dropout nodes draw the masks of `streams` (see `interpret`). `x` is the input, or a
    list of one array per input node of a graph with several (the first carries the batch).

    A row on whose path some value or dot product leaves float32's range overflows in float32, and
    where and with which sign depends on the order of the sums (OpenBLAS's, ours):
    `check_parity(..., overflow_rows=...)` leaves those rows unjudged.
    """
    inputs = [np.asarray(a, np.float64) for a in x] if isinstance(x, (list, tuple)) else [np.asarray(x, np.float64)]
    rows = np.zeros(len(inputs[0]), dtype=bool)
    values: dict[str, np.ndarray] = {}
    rounding: dict[str, np.ndarray] = {}
    unread = {n: len(g.users(n)) for n in g.nx}  # dropped after their last reader: long chains stay small

    def watch(n: str, value: np.ndarray) -> None:
        values[n] = value
        args = g.args(n)
        with np.errstate(all="ignore"):
            rounding[n] = rounding_magnitude(g.op(n), value, [values[a] for a in args],
                                             [rounding[a] for a in args], g.attrs(n))
            big = np.isfinite(value) & (np.abs(value) > F32_MAX)
            partial = _partial_sums_reach(g.op(n), [values[a] for a in args], g.attrs(n))
            if partial is not None:  # a partial sum may overflow in float32 where the whole does not
                big = big | (partial > F32_MAX)
        for arg in dict.fromkeys(args):
            unread[arg] -= 1
            if not unread[arg]:
                del values[arg], rounding[arg]
        if not big.any():
            return
        if g.shape(n)[:1] == (None,) and big.shape[:1] == rows.shape:
            rows[:] |= big.reshape(len(rows), -1).any(axis=1)
        else:  # a batch-independent value (from parameters alone) feeds every row
            rows[:] = True

    with np.errstate(all="ignore"):  # NaN and inf are values here, judged as such: no warnings for them
        out = interpret(g, *inputs, params=params, dtype=np.float64, on_value=watch, streams=streams)
    return Reference(out, rows, np.broadcast_to(rounding[g.output], out.shape))


def _partial_sums_reach(op: str, operands: list[np.ndarray], attrs: dict) -> np.ndarray | None:
    """The largest magnitude a float32 partial sum of op could reach, in any order (the sum of the
    terms' magnitudes, infinities left out), for ops that sum: matmul and linear over K, sum and
    mean over their axes ([FMAX, FMAX, -FMAX, -FMAX] sums to 0, but to inf or NaN on the way).
    None for the others."""
    def magnitude(a: np.ndarray) -> np.ndarray:
        return np.abs(np.where(np.isfinite(a), a, 0.0))

    if op in ("matmul", "linear"):
        return np.matmul(magnitude(operands[0]), magnitude(operands[1]))
    if op in ("sum", "mean"):
        axes = reduced_axes(operands[0].ndim, attrs.get("axis"))
        return magnitude(operands[0]).sum(axis=axes, keepdims=bool(attrs.get("keepdims")))
    return None


def rounding_magnitude(op: str, v: np.ndarray, a: list[np.ndarray], m: list[np.ndarray],
                       attrs: dict) -> np.ndarray:
    """A first-order estimate of a value's float32 rounding error, in units of float32 epsilon: the
    op's rounding rule from the registry (`ir/rounding.py` says how each is estimated). Leaves are
    exact; an op without a rule contributes nothing, so the parity rule stays strict there."""
    rule = op_def(op).rounding
    if rule is None:
        return np.zeros_like(v)
    # A NaN estimate of a number is inf * 0, an unbounded estimate through a slope of 0 (1 / x at x = inf
    # is 0 exactly): none. Kept, a later dot product or sum spread it over the row, which lost all its
    # slack. Of a NaN value (a NaN through a Linear) it is unbounded.
    estimate = rule(v, a, m, attrs)
    with np.errstate(invalid="ignore"):
        return np.where(np.isnan(estimate), np.where(np.isnan(v), np.inf, 0.0), estimate)
