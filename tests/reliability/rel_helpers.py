"""Shared helpers for the reliability tests (issue 7): eager references and exact non-finite checks."""

from __future__ import annotations

import resource

import numpy as np
import pytest

from tests.models import eager_eval
from tinycomp.frontend.tracer import trace
from tinycomp.ir.interpret import interpret
from tinycomp.parity import check_parity


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    """Point the on-disk object cache at a fresh folder for one test."""
    folder = tmp_path / "tinycomp-cache"
    monkeypatch.setenv("TINYCOMP_CACHE_DIR", str(folder))
    monkeypatch.delenv("TINYCOMP_CACHE", raising=False)
    return folder


def rss_bytes() -> int:
    """Resident set size now, from /proc/self/statm (pages)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def float64_reference(model, x: np.ndarray) -> np.ndarray:
    """The traced (eval-mode) model evaluated in float64: the parity rule's reference."""
    g = trace(model, (None, *x.shape[1:]))
    return interpret(g, np.asarray(x, np.float64), dtype=np.float64)


def assert_matches_eager(compiled: np.ndarray, model, x) -> np.ndarray:
    """Compiled equals eager within the parity rule; NaN positions and inf signs exactly. Returns eager."""
    x = np.asarray(x, np.float32)
    eager = eager_eval(model, x)
    assert compiled.shape == eager.shape
    np.testing.assert_array_equal(np.isnan(compiled), np.isnan(eager), err_msg="NaN positions differ")
    inf = np.isinf(eager)
    np.testing.assert_array_equal(np.isinf(compiled), inf, err_msg="inf positions differ")
    np.testing.assert_array_equal(compiled[inf], eager[inf], err_msg="inf signs differ")
    if x.shape[0]:
        report = check_parity(compiled, eager, float64_reference(model, x).reshape(eager.shape))
        assert report.ok, report.detail
    return eager
