"""Fuse chains of elementwise ops into one `elementwise` node, so a chain runs as one loop.

`relu(x * 0.5 + h)` is three nodes, three passes over memory and two temporary buffers; fused it
is one node whose `expr` attribute is the whole tree, `relu(add(mul($0, 0.5), $1))`, lowered to one
vector loop. A producer folds into its user only when the user is its sole reader and both have the
same shape, so nothing is computed twice and no value is recomputed per broadcast element, and
only when the fused node's operands still share one row layout (`ir/layout.py`), so the code
generator can run it as one loop. A fused expression holds at most MAX_FUSED_OPS ops: a longer
chain is split into several fused nodes (one kernel each), not refused.

One sweep in topological order decides every fold (a node's own group is complete when the sweep
reaches it, since its producers come first), keeping per group its operands and, per candidate row
width, how many of them do not fit: linear in the graph, so a 10,000-op chain fuses in one pass.
"""

from __future__ import annotations

import numpy as np

from ..graph import Graph
from ..layout import is_scalar_const, operand_kind, row_candidates
from ..ops import ELEMENTWISE, Expr, expr_nodes, map_leaves

FUSIBLE = ELEMENTWISE | {"elementwise"}
# Ops in one fused expression. Bounds a kernel's size (and the depth of every walk over its
# expression); a longer chain costs one more pass over memory per MAX_FUSED_OPS ops.
MAX_FUSED_OPS = 64


def as_expr(g: Graph, n: str) -> Expr:
    """n's computation as an expression over its own operands."""
    if g.op(n) == "elementwise":
        return g[n]["expr"]
    return (g.op(n), *[("in", i) for i in range(len(g.args(n)))])


def op_count(g: Graph, n: str) -> int:
    if g.op(n) != "elementwise":
        return 1
    return sum(e[0] not in ("in", "const") for e in expr_nodes(g[n]["expr"]))


def reads(g: Graph, user: str, n: str) -> int:
    """How many leaves of user's expression read node n."""
    args = g.args(user)
    return sum(e[0] == "in" and args[e[1]] == n for e in expr_nodes(as_expr(g, user)))


def sole_fusible_user(g: Graph, n: str) -> str | None:
    """n's one reader, if n may fold into it: elementwise both, same shape, read once."""
    if g.op(n) not in FUSIBLE or g.use_count(n) != 1:
        return None
    (user,) = g.users(n)
    if g.op(user) not in FUSIBLE or g.shape(user) != g.shape(n):
        return None
    if g.op(user) == "elementwise" and reads(g, user, n) != 1:
        return None  # read twice, even by one expression: inlining would compute it twice
    return user


class _Group:
    """A node with the producers folded into it so far: its size, operands and, per candidate row
    width of its shape, how many operands do not fit that width."""

    def __init__(self, f: _Folding, n: str):
        self.size = op_count(f.g, n)
        self.operands = dict.fromkeys(a for a in f.g.args(n) if f.number(a, n) is None)
        self.misfits = [0] * len(f.rows(n))
        for a in self.operands:
            self.misfits = f.add(self.misfits, n, a, +1)


class _Folding:
    """What the sweep asks of the graph, each answer computed once."""

    def __init__(self, g: Graph):
        self.g = g
        self._rows: dict[tuple, list[int]] = {}
        self._fit: dict[tuple[str, tuple], list[bool]] = {}
        self._numbers = {n: (float(np.asarray(d["value"]).reshape(-1)[0]), len(d["shape"]))
                         for n, d in g.nx.nodes(data=True) if d["op"] == "const" and is_scalar_const(g, n)}

    def number(self, a: str, user: str) -> float | None:
        """The value of operand `a` if the fused expression holds it as a number: a one-element
        constant (it fits every row layout) with no more dimensions than its user's value (so it
        cannot change its shape)."""
        known = self._numbers.get(a)
        return known[0] if known is not None and known[1] <= len(self.g.shape(user)) else None

    def rows(self, n: str) -> list[int]:
        shape = tuple(self.g.shape(n))
        if shape not in self._rows:
            self._rows[shape] = row_candidates(shape)
        return self._rows[shape]

    def add(self, misfits: list[int], n: str, operand: str, sign: int) -> list[int]:
        """`misfits` of a group shaped like n after adding (+1) or removing (-1) `operand`."""
        shape = self.g.shape(n)
        if self.g.shape(operand) == shape:
            return misfits  # a `full` operand: it fits every row width
        key = (operand, shape)
        if key not in self._fit:
            self._fit[key] = [operand_kind(self.g, operand, shape, row) is not None for row in self.rows(n)]
        return [m + sign * (not fit) for m, fit in zip(misfits, self._fit[key], strict=True)]


def plan_folds(f: _Folding, order: list[str]) -> dict[str, str]:
    """producer -> the user it folds into, for every fold the rules allow, greedily in graph order."""
    groups: dict[str, _Group] = {}
    into: dict[str, str] = {}
    for n in order:
        user = sole_fusible_user(f.g, n)
        if user is None:
            continue
        grp = groups.get(n) or _Group(f, n)
        ugrp = groups.get(user) or groups.setdefault(user, _Group(f, user))
        if grp.size + ugrp.size > MAX_FUSED_OPS:
            continue  # split here: the user starts a fused node of its own
        misfits = f.add(ugrp.misfits, user, n, -1)
        new = [a for a in grp.operands if a not in ugrp.operands]
        for a in new:
            misfits = f.add(misfits, user, a, +1)
        if min(misfits) > 0:
            continue  # the operands need different row widths: one loop could not run them all
        del ugrp.operands[n]
        ugrp.operands.update(dict.fromkeys(new))
        ugrp.misfits, ugrp.size = misfits, ugrp.size + grp.size
        into[n] = user
    return into


def fused_expr(f: _Folding, root: str, into: dict[str, str]) -> tuple[Expr, list[str]]:
    """root's expression with every producer folded into it inlined, one-element constants as
    numbers, and its operands in order."""
    g = f.g
    args: list[str] = []
    slots: dict[str, int] = {}

    def operand(n: str, a: str) -> Expr:
        if into.get(a) == n:
            return inline(a)
        number = f.number(a, n)
        if number is not None:
            return ("const", number)
        if a not in slots:  # a node read twice is one operand
            slots[a] = len(args)
            args.append(a)
        return ("in", slots[a])

    def inline(n: str) -> Expr:  # depth at most MAX_FUSED_OPS
        n_args = g.args(n)
        if g.op(n) != "elementwise":
            return (g.op(n), *[operand(n, a) for a in n_args])
        return map_leaves(g[n]["expr"], lambda e: e if e[0] == "const" else operand(n, n_args[e[1]]))

    return inline(root), args


def fuse_elementwise(g: Graph) -> bool:
    f = _Folding(g)
    order = g.nodes()
    into = plan_folds(f, order)
    roots: dict[str, list[str]] = {}  # each fused node's root -> the producers folded into it
    root_of: dict[str, str] = {}
    for n in reversed(order):  # users before producers: a user's root is known first
        if n in into:
            root_of[n] = root_of.get(into[n], into[n])
            roots.setdefault(root_of[n], []).append(n)
    for root, members in roots.items():
        expr, args = fused_expr(f, root, into)
        fused = g.add("elementwise", args, expr=expr, layer=g[root].get("layer"))
        g.replace_uses(root, fused)
        g.remove(root)
        for n in members:  # in reverse graph order: users before their producers
            g.remove(n)
    return bool(into)
