"""Shared helpers for the reliability tests (issue 7): eager references and exact non-finite checks."""

from __future__ import annotations

import os
import resource
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import numpy as np

from tests.models import eager_eval
from tinycomp.frontend.tracer import trace
from tinycomp.parity import Reference, check_parity, reference_and_overflow

T = TypeVar("T")


def peak_traced(fn: Callable[[], T]) -> tuple[T, int]:
    """(fn(), the most bytes Python's allocators held at once while it ran, as tracemalloc sees them)."""
    tracemalloc.start()
    try:
        return fn(), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def rss_bytes() -> int:
    """Resident set size now, from /proc/self/statm (pages)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


@contextmanager
def fifo_released_after(fifo: Path, seconds: float) -> Iterator[threading.Event]:
    """Runs the block; if it is still running after `seconds`, keeps opening `fifo` for writing and
    closing it, so a reader stuck in open() on it (waiting for a writer) reads end-of-file and goes
    on. The event says whether that was needed: code that blocks on a FIFO fails the test instead of
    hanging it."""
    done, released = threading.Event(), threading.Event()

    def release() -> None:
        if done.wait(seconds):
            return
        released.set()
        while not done.is_set():
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:  # no reader in open() yet (ENXIO), or no longer a FIFO
                pass
            done.wait(0.05)

    thread = threading.Thread(target=release, daemon=True)
    thread.start()
    try:
        yield released
    finally:
        done.set()
        thread.join()


def float64_reference(model, x: np.ndarray) -> Reference:
    """The traced (eval-mode) model run in float64: values, overflow rows, rounding magnitudes."""
    return reference_and_overflow(trace(model, (None, *x.shape[1:])), np.asarray(x, np.float64))


def assert_matches_eager(compiled: np.ndarray, model, x) -> np.ndarray:
    """Compiled equals eager within the parity rule; NaN positions and inf signs exactly, except on
    rows where float32 overflows (the sign or NaN of an overflowing sum depends on its order).
    Returns eager."""
    x = np.asarray(x, np.float32)
    eager = eager_eval(model, x)
    assert compiled.shape == eager.shape
    if not x.shape[0]:
        np.testing.assert_array_equal(compiled, eager)
        return eager
    reference, overflow, rounding = float64_reference(model, x)
    judged = ~overflow.reshape(-1, *([1] * (eager.ndim - 1)))
    np.testing.assert_array_equal(np.isnan(compiled) & judged, np.isnan(eager) & judged,
                                  err_msg="NaN positions differ")
    inf = np.isinf(eager) & judged
    np.testing.assert_array_equal(np.isinf(compiled) & judged, inf, err_msg="inf positions differ")
    np.testing.assert_array_equal(compiled[inf], eager[inf], err_msg="inf signs differ")
    report = check_parity(compiled, eager, reference.reshape(eager.shape), overflow_rows=overflow,
                          rounding=rounding.reshape(eager.shape))
    assert report.ok, report.detail
    return eager


def assert_program_matches_eager(model, program, xs: list[np.ndarray]) -> str:
    """Compile a random program (tests/program_fuzz.py) and run it on `xs`: refused with a CompileError
    exactly when it combines values across the batch axis, else compiled equals eager within the
    parity rule (NaN positions and infinities exactly, off overflowing rows) against the float64 run
    of its traced graph. Returns what happened, for hypothesis' statistics."""
    import tinycomp as tc
    from tinycomp.nn import Tensor

    try:
        out = tc.compile(model)(*xs).data
    except tc.CompileError as exc:
        assert program.crosses_batch, f"refused a program that keeps samples apart: {exc}\n{program}"
        assert "batch" in str(exc), str(exc)
        return "refused: an op across the batch axis"
    assert not program.crosses_batch, f"compiled an op across the batch axis\n{program}"
    with np.errstate(all="ignore"):
        eager = model(*map(Tensor, xs)).data
        g = trace(model, [(None, *x.shape[1:]) for x in xs] if len(xs) > 1 else (None, *xs[0].shape[1:]))
        reference, overflow, rounding = reference_and_overflow(g, [x.astype(np.float64) for x in xs])
    assert out.shape == eager.shape, (out.shape, eager.shape, program)
    if not out.size:
        return "compiled (empty batch)"
    judged = ~overflow.reshape(-1, *([1] * (eager.ndim - 1)))
    np.testing.assert_array_equal(np.isnan(out) & judged, np.isnan(eager) & judged, err_msg=f"NaN positions {program}")
    inf = np.isinf(eager) & judged
    np.testing.assert_array_equal(out[inf], eager[inf], err_msg=f"infinities {program}")
    report = check_parity(out, eager, reference.reshape(eager.shape), overflow_rows=overflow,
                          rounding=rounding.reshape(eager.shape))
    assert report.ok, f"{report.detail}\n{program}"
    return "compiled"
