"""Fuse `matmul(x, W)` [+ bias `add`] [+ activation] [+ residual `add`] into one `linear` node.

The residual is a tensor of the output's own shape added last (a transformer block's `x + f(x)`):
the GEMM adds it while the tile is in registers instead of a separate pass over memory.

A fusion only goes through an intermediate with exactly one use, so no value is computed twice and no
weight is copied: every `linear` reads the same param nodes the matmul did. Each candidate records in
its `explain` metadata what was fused and why the chain stopped, for `explain()`.
"""

from __future__ import annotations

from collections.abc import Callable

from ..graph import Graph
from ..ops import FUSIBLE_ACTIVATIONS


def batch_independent(g: Graph, n: str) -> bool:
    """A value without the batch dimension: a param, a const, or computed from them in forward().

    The GEMM reads weights and bias through pointers, so any such value can be one: it is computed
    once per call, before the GEMM runs, and never goes stale.
    """
    return None not in g.shape(n)



def sole_user(g: Graph, n: str, what: str) -> tuple[str | None, str | None]:
    """The single reader of `n`, or None and why fusing through `n` would duplicate work."""
    uses = g.use_count(n)
    if uses != 1:
        return None, f"{what} result has {uses} users"
    return g.users(n)[0], None


def match_add(g: Graph, tail: str, what: str, label: str, fits: Callable[[str], bool],
              unfit: str) -> tuple[str | None, str | None, str]:
    """(add node, other operand, note): the sole reader of `tail` when it adds an operand that
    `fits` (a predicate on it) — a bias or a residual (`label`); `unfit` says why another is not."""
    add, why = sole_user(g, tail, what)
    if add is None:
        return None, None, f"no {label}: {why}"
    if g.op(add) != "add":
        return None, None, f"no {label}: {what} result feeds {g.op(add)}, not a {label} add"
    a, b = g.args(add)
    other = b if a == tail else a
    if other == tail or not fits(other):
        return None, None, f"no {label}: {unfit}"
    return add, other, f"{label} add {add}"


def match_bias(g: Graph, m: str) -> tuple[str | None, str | None, str]:
    """A batch-independent 1-D vector as wide as the output, added to matmul `m`."""
    return match_add(g, m, "matmul", "bias",
                     lambda b: batch_independent(g, b) and tuple(g.shape(b)) == (g.shape(m)[-1],),
                     "bias operand is not a 1-D vector of the output width")


def match_activation(g: Graph, tail: str, what: str) -> tuple[str | None, str]:
    user, why = sole_user(g, tail, what)
    if user is None:
        return None, f"no activation: {why}"
    op = g.op(user)
    if op in FUSIBLE_ACTIVATIONS:
        return user, f"{op} {user}"
    if op == "softmax":
        return None, "no activation: activation softmax is not fusible"
    return None, f"no activation: {what} result feeds {op}" + (", not an activation" if op != "output" else "")


def match_residual(g: Graph, tail: str, what: str) -> tuple[str | None, str | None, str]:
    """A tensor of exactly the output's shape added to `tail`, the end of the fused chain."""
    return match_add(g, tail, what, "residual", lambda r: tuple(g.shape(r)) == tuple(g.shape(tail)),
                     "the other operand is not a tensor of the output's shape")


def fuse_matmul(g: Graph, m: str) -> bool:
    x, w = g.args(m)
    if not batch_independent(g, w) or len(g.shape(w)) != 2:
        g[m]["explain"] = f"not fused: right operand {w} is not a 2-D matrix independent of the batch"
        return False
    add, bias, bias_note = match_bias(g, m)
    act, act_note = match_activation(g, add or m, "bias add" if add else "matmul")
    tail = act or add or m
    res_add, residual, res_note = match_residual(g, tail, g.op(tail) if act else "bias add" if add else "matmul")
    chain = [n for n in (m, add, act, res_add) if n is not None]
    fused = " + ".join([f"matmul {m}"] + [note for note, n in ((bias_note, add), (act_note, act), (res_note, res_add))
                                          if n])
    # what a layer is expected to have and lacks: a residual add is an extra, not missed where absent
    missing = "; ".join(note for note, n in ((bias_note, add), (act_note, act)) if n is None)
    new = g.add("linear", [x, w] + ([bias] if bias else []) + ([residual] if residual else []),
                bias=bias is not None, activation=g.op(act) if act else None, residual=residual is not None,
                layer=g[m].get("layer"), explain=f"fused {fused}" + (f"; {missing}" if missing else ""))
    g.replace_uses(chain[-1], new)
    for n in reversed(chain):
        g.remove(n)
    return True


def fuse_linear(g: Graph) -> bool:
    changed = False
    for m in g.nodes("matmul"):
        changed |= fuse_matmul(g, m)
    return changed
