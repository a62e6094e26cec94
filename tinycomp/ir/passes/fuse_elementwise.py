"""Fuse chains of elementwise ops into one `elementwise` node, so a chain runs as one loop.

`relu(x * 0.5 + h)` is three nodes, three passes over memory and two temporary buffers; fused it
is one node whose `expr` attribute is the whole tree, `relu(add(mul($0, 0.5), $1))`, lowered to one
vector loop. A producer folds into its user only when the user is its sole reader and both have the
same shape, so nothing is computed twice and no value is recomputed per broadcast element, and
only when the fused node's operands still share one row layout (`ir/layout.py`), so the code
generator can run it as one loop.
"""

from __future__ import annotations

from ..graph import Graph
from ..layout import elementwise_layout
from ..ops import ELEMENTWISE, Expr, map_leaves

FUSIBLE = ELEMENTWISE | {"elementwise"}


def as_expr(g: Graph, n: str) -> Expr:
    """n's computation as an expression over its own operands."""
    if g.op(n) == "elementwise":
        return g[n]["expr"]
    return (g.op(n), *[("in", i) for i in range(len(g.args(n)))])


def merge(g: Graph, producer: str, user: str) -> str:
    """Replace `user` by one elementwise node computing it with `producer` inlined."""
    args: list[str] = []

    def slot(node: str) -> Expr:  # an operand of the fused node; a node read twice is one operand
        if node not in args:
            args.append(node)
        return ("in", args.index(node))

    p_args = g.args(producer)
    inlined = map_leaves(as_expr(g, producer), lambda e: slot(p_args[e[1]]) if e[0] == "in" else e)
    u_args = g.args(user)

    def leaf(e: Expr) -> Expr:
        if e[0] == "const":
            return e
        return inlined if u_args[e[1]] == producer else slot(u_args[e[1]])

    expr = map_leaves(as_expr(g, user), leaf)
    fused = g.add("elementwise", args, expr=expr, layer=g[user].get("layer"))
    g.replace_uses(user, fused)
    g.remove(user)
    g.remove(producer)
    return fused


def fusible_user(g: Graph, n: str) -> str | None:
    if g.op(n) not in FUSIBLE:
        return None
    if g.use_count(n) != 1:
        return None
    (user,) = g.users(n)
    if g.op(user) not in FUSIBLE or g.shape(user) != g.shape(n) or reads(g, user, n) != 1:
        return None  # read twice, even by one expression: inlining would compute it twice
    operands = list(dict.fromkeys([*g.args(n), *(a for a in g.args(user) if a != n)]))
    if elementwise_layout(g, tuple(g.shape(user)), operands) is None:
        return None  # the operands need different row widths: one loop could not run them both
    return user


def reads(g: Graph, user: str, n: str) -> int:
    """How many leaves of user's expression read node n."""
    args, count = g.args(user), [0]

    def leaf(e: Expr) -> Expr:
        count[0] += e[0] == "in" and args[e[1]] == n
        return e

    map_leaves(as_expr(g, user), leaf)
    return count[0]


def fuse_elementwise(g: Graph) -> bool:
    changed = False
    progress = True
    while progress:  # each merge makes a new node that may fuse again
        progress = False
        for n in g.nodes():
            user = fusible_user(g, n)
            if user is not None:
                merge(g, n, user)
                changed = progress = True
                break
    return changed
