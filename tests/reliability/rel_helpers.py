"""Shared helpers for the reliability tests (issue 7): eager references and exact non-finite checks."""

from __future__ import annotations

import resource

import numpy as np

from tests.models import eager_eval
from tinycomp.frontend.tracer import trace
from tinycomp.parity import Reference, check_parity, reference_and_overflow


def rss_bytes() -> int:
    """Resident set size now, from /proc/self/statm (pages)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


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
