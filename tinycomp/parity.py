"""The parity rule (DESIGN §4): how close compiled output must be to eager output.

GEMM accumulation order differs from OpenBLAS, so compiled and eager float32 results are not
bit-equal. Both are judged against a float64 reference: the compiled error may be at most twice
the eager float32 error, plus a tiny absolute slack scaled to the output's magnitude. Non-finite
values must match exactly (NaN where eager has NaN, the same infinities) -- except on rows whose
float64 run leaves float32's range: there float32 overflows, and whether a sum ends as +inf, -inf or
NaN depends on its order (OpenBLAS's FMA chain, our partial sums), so no engine can match another.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .ir.graph import Graph
from .ir.interpret import interpret

ATOL = 1e-6  # times max(1, max |reference|)
F32_MAX = float(np.finfo(np.float32).max)


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
                 max_eager_error: float | None = None, overflow_rows: np.ndarray | None = None) -> ParityReport:
    """Judge compiled against eager by the parity rule, both measured against `reference`.

    With `max_eager_error`, the eager result must itself lie within that (times the output scale) of
    the reference: when the reference comes from the compiled graph, this catches a graph that no
    longer describes the model, which the rule alone would excuse as "eager error". Rows marked in
    `overflow_rows` (see `reference_and_overflow`) are not judged: float32 overflow there depends on
    the order of the sums.
    """
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
    finite = np.isfinite(eager)
    same_special = np.array_equal(compiled[~finite], eager[~finite], equal_nan=True)
    if not same_special or not np.isfinite(compiled[finite]).all():
        bad = np.argwhere((~finite & ~((compiled == eager) | (np.isnan(compiled) & np.isnan(eager))))
                          | (finite & ~np.isfinite(compiled)))
        where = tuple(int(i) for i in bad[0]) if len(bad) else None
        detail = f"non-finite values differ at {where}: compiled {compiled[where]:g}, eager {eager[where]:g}"
        return ParityReport(False, np.inf, 0.0, 0.0, where, detail)
    if not finite.any():
        return ParityReport(True, 0.0, 0.0, 0.0, None, "all values non-finite and equal")
    ref = np.where(finite, reference, 0.0)
    err_c = np.where(finite, np.abs(compiled - ref), 0.0)
    err_e = np.where(finite, np.abs(eager - ref), 0.0)
    scale = max(1.0, float(np.abs(ref).max()))
    tol = 2 * float(err_e.max()) + ATOL * scale
    worst = tuple(int(i) for i in np.unravel_index(int(np.argmax(err_c)), err_c.shape))
    ok = float(err_c.max()) <= tol
    if max_eager_error is not None and float(err_e.max()) > max_eager_error * scale:
        where = tuple(int(i) for i in np.unravel_index(int(np.argmax(err_e)), err_e.shape))
        return ParityReport(False, float(err_c.max()), float(err_e.max()), tol, where,
                            f"the eager model is {err_e.max():.3g} away from the float64 reference of the "
                            f"compiled graph at index {where} (eager {eager[where]:.9g}, compiled "
                            f"{compiled[where]:.9g}): the traced graph no longer describes the model "
                            "(does forward() read globals or take another Python branch?)")
    detail = (f"max |compiled - float64 reference| = {err_c.max():.3g} at index {worst} "
              f"(compiled {compiled[worst]:.9g}, eager {eager[worst]:.9g}, reference {ref[worst]:.9g}); "
              f"eager float32 error {err_e.max():.3g}; allowed {tol:.3g}")
    return ParityReport(ok, float(err_c.max()), float(err_e.max()), tol, worst, detail)


def float64_reference(g: Graph, x: np.ndarray, params: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """Run graph g in float64 (inputs and parameters widened): the yardstick for both engines."""
    return reference_and_overflow(g, x, params)[0]


def reference_and_overflow(g: Graph, x: np.ndarray,
                           params: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(float64 reference, overflow_rows): rows of x on whose path some value left float32's range.

    In float32 such a row overflows somewhere, and where and with which sign depends on the order of
    the sums (OpenBLAS's, ours): `check_parity(..., overflow_rows=...)` leaves those rows unjudged.
    """
    rows = np.zeros(len(x), dtype=bool)
    values: dict[str, np.ndarray] = {}

    def watch(n: str, value: np.ndarray) -> None:
        values[n] = value
        with np.errstate(invalid="ignore", over="ignore"):
            big = np.isfinite(value) & (np.abs(value) > F32_MAX)
            if g.op(n) in ("matmul", "linear"):  # a partial sum may overflow in float32 too
                a, w = (np.abs(np.where(np.isfinite(v), v, 0.0)) for v in (values[m] for m in g.args(n)[:2]))
                big = big | (np.matmul(a, w) > F32_MAX)
        if not big.any():
            return
        if g.shape(n)[:1] == (None,) and big.shape[:1] == rows.shape:
            rows[:] |= big.reshape(len(rows), -1).any(axis=1)
        else:  # a batch-independent value (from parameters alone) feeds every row
            rows[:] = True

    out = interpret(g, np.asarray(x, np.float64), params=params, dtype=np.float64, on_value=watch)
    return out, rows
