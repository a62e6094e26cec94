"""The reference evaluator: run any Graph (traced or optimized) with the op table's NumPy refs."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .graph import Graph
from .ops import op_def
from .passes.fold_dropout import draws_mask
from .philox import DropoutStream


def check_input(g: Graph, name: str, x: Any, dtype: Any = np.float32) -> np.ndarray:
    arr = np.asarray(x, dtype=dtype)  # a frontend Tensor converts through __array__
    want = g.shape(name)
    fits = arr.ndim == len(want) and all(w is None or w == d for w, d in zip(want, arr.shape, strict=False))
    if not fits:
        dims = ", ".join("N" if d is None else str(d) for d in want)
        raise ValueError(f"input {name!r} expects shape ({dims}); got {arr.shape}")
    return arr


def leaf_value(g: Graph, n: str, params: Mapping[str, Any], dtype: Any = np.float32) -> np.ndarray:
    if n in params:
        return np.asarray(params[n], dtype=dtype)
    if "value" not in g[n]:
        raise ValueError(f"{g.op(n)} node {n!r} has no bound value and none was given in params")
    return np.asarray(g[n]["value"], dtype=dtype)  # read now, so a live Tensor shows its update


def interpret(g: Graph, *inputs: Any, params: Mapping[str, Any] | None = None,
              rng: np.random.Generator | None = None, dtype: Any = np.float32,
              on_value: Callable[[str, np.ndarray], None] | None = None,
              streams: Mapping[str, DropoutStream] | None = None) -> np.ndarray:
    """Evaluate `g` on `inputs` (one per input node, in order); `params` overrides bound values by name.

    A training-mode dropout node draws the mask of `streams[node]` (what a compiled call or the eager
    layer drew); a node without one draws a random stream from `rng` (a fresh generator if not
    given), so two runs with equally seeded generators draw the same masks. `dtype=np.float64`
    gives the float64 reference that the parity rule judges compiled and eager float32 results by.
    `on_value(node, value)` sees every node's value in order, leaves included, e.g. to watch
    intermediates.
    """
    names = g.inputs
    if len(inputs) != len(names):
        raise ValueError(f"the graph takes {len(names)} input(s) {names}; got {len(inputs)}")
    env: dict[str, np.ndarray] = {n: check_input(g, n, x, dtype) for n, x in zip(names, inputs, strict=True)}
    batches = {len(env[n]) for n in names if g.shape(n)[:1] == (None,)}
    if len(batches) > 1:
        raise ValueError(f"the inputs {names} of the graph have different batch sizes {sorted(batches)}")
    params = params or {}
    streams = dict(streams or {})
    out = g.output
    unread = {n: len(g.users(n)) for n in g.nx}  # a value is dropped once its last reader ran
    for n in g.nodes():
        op = g.op(n)
        args = g.args(n)
        if op in ("param", "const"):
            env[n] = leaf_value(g, n, params, dtype)
        elif op != "input":
            env[n] = evaluate(g, n, [env[a] for a in args], streams, rng, dtype)
        if on_value is not None:
            on_value(n, env[n])
        for a in dict.fromkeys(args):  # a long chain holds one value at a time, not all of them
            unread[a] -= 1
            if not unread[a] and a != out:
                del env[a]
    return env[out]


def evaluate(g: Graph, n: str, operands: list[np.ndarray], streams: dict[str, DropoutStream],
             rng: np.random.Generator | None, dtype: Any) -> np.ndarray:
    """Node n's value from its operands' values, by the op table's NumPy reference."""
    op, attrs = g.op(n), g.attrs(n)
    if draws_mask(g, n):
        if n not in streams:
            rng = rng if rng is not None else np.random.default_rng()
            streams[n] = DropoutStream(*(int(w) for w in rng.integers(0, 2**32, 4)))
        attrs["stream"] = streams[n]
    ref = op_def(op).ref
    if ref is None:
        raise ValueError(f"op {op!r} has no NumPy reference to interpret node {n!r}")
    return np.asarray(ref(*operands, **attrs), dtype=dtype)
