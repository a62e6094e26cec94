"""Shared checks of imported models: eager vs the source framework, compiled vs eager by the parity
rule against a float64 reference of the traced graph."""

from __future__ import annotations

import numpy as np

import tinycomp as tc
from tinycomp.parity import check_parity, float64_reference

BATCHES = (0, 1, 7, 129)


def assert_close_to_framework(got: np.ndarray, want: np.ndarray, what: str, rtol: float = 2e-5) -> None:
    """Within float32 rounding of the framework's own float32 result: relative to the output's scale."""
    assert got.shape == want.shape, f"{what}: shape {got.shape} vs {want.shape}"
    scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
    err = float(np.max(np.abs(got - want))) if want.size else 0.0
    assert err <= rtol * scale, f"{what}: max |difference| {err:.3g} (scale {scale:.3g})"


def check_imported(model, framework, width: int, seed: int = 0, scale: float = 1.0, rtol: float = 2e-5) -> None:
    """For every batch size: eager and compiled match `framework(x)` (the source library's own output),
    and compiled matches eager by the parity rule against the float64 run of the graph."""
    fast = tc.compile(model, input_shape=(None, width))
    rng = np.random.default_rng(seed)
    for rows in BATCHES:
        x = (rng.standard_normal((rows, width)) * scale).astype(np.float32)
        want = np.asarray(framework(x), np.float32)
        eager = model(x).data
        compiled = fast(x).data
        assert_close_to_framework(eager, want, f"eager, batch {rows}", rtol)
        assert_close_to_framework(compiled, want, f"compiled, batch {rows}", rtol)
        if rows:
            report = check_parity(compiled, eager, float64_reference(fast.graph, x))
            assert report.ok, f"batch {rows}: {report}"
    assert fast.stats.compiles == 1
