"""The before/after helper every pass test uses (torch.fx style).

It checks the pass's precondition on the input graph, runs the pass on a copy, lints, checks the
postcondition, and requires the interpreter to give the same output before and after. A second run
must report no change, so passes are idempotent.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tinycomp.ir.graph import Graph
from tinycomp.ir.interpret import interpret

Check = Callable[[Graph], bool]


def check_pass(pass_fn: Callable[[Graph], bool], g: Graph, *inputs: np.ndarray, pre: Check, post: Check,
               changes: bool = True, atol: float = 1e-6, seed: int | None = None) -> Graph:
    """Run `pass_fn` on a copy of `g`; return the rewritten graph. `seed` fixes training-dropout masks."""
    g.lint()
    assert pre(g), "precondition does not hold on the input graph"
    rng = (lambda: np.random.default_rng(seed)) if seed is not None else (lambda: None)
    before = interpret(g, *inputs, rng=rng())
    h = g.copy()
    assert pass_fn(h) is changes, f"{pass_fn.__name__} should report changed={changes}"
    h.lint()
    assert post(h), "postcondition does not hold after the pass"
    np.testing.assert_allclose(interpret(h, *inputs, rng=rng()), before, rtol=0, atol=atol)
    assert pass_fn(h) is False, f"{pass_fn.__name__} is not idempotent"
    return h
