"""Fuse `LayerNorm.forward` into one `layer_norm` node.

`LayerNorm` traces to mean(x) -> sub -> mul(d, d) -> mean -> add eps -> sqrt -> div -> mul gamma ->
add beta, the means over the last axis with keepdims (ONNX exporters write the square as pow(d, 2),
the same correctly rounded product). Run as traced, the row goes through memory six times (two
reductions and fused elementwise passes); the `layer_norm` node normalizes each row in one kernel
while it is in L1 (codegen/layer_norm.py), with the same operations in the same order.

The rewrite only goes through when it is that computation exactly: both means over the last axis
only, keeping it; the sub reads x and its mean in that order; the square is `mul(d, d)` or
`pow(d, 2)` and d is read by nothing else than it and the div; eps is a one-element constant; gamma
and beta each hold one value per position of the last axis (shape (W,)), so they broadcast along it
and nothing else; every intermediate is read once. mul and add are commutative in IEEE arithmetic,
so gamma and beta (and eps) may be on either side.
"""

from __future__ import annotations

from ..graph import Graph
from ..shapes import reduced_axes
from .fuse_attention import number, remove_unused, sole_user


def last_axis_mean(g: Graph, n: str) -> bool:
    shape = g.shape(n)
    attrs = g.attrs(n)
    return g.op(n) == "mean" and bool(attrs.get("keepdims")) and \
        reduced_axes(len(shape), attrs.get("axis")) == (len(shape) - 1,)


def other_operand(g: Graph, n: str, known: str) -> str | None:
    """The operand of binary node n that is not `known` (None if n does not read it once)."""
    a, b = g.args(n)
    if (a == known) == (b == known):
        return None
    return b if a == known else a


def is_square_of(g: Graph, n: str, d: str) -> bool:
    """Is n d * d, or d ** 2 (the same correctly rounded product: ONNX exporters write Pow)?"""
    if g.op(n) == "mul":
        return g.args(n) == [d, d]
    return g.op(n) == "pow" and g.args(n)[0] == d and number(g, g.args(n)[1], n) == 2.0


def match(g: Graph, mean: str) -> tuple[str, str, str, float, str, list[str]] | None:
    """(x, gamma, beta, eps, the node the chain ends in, its nodes in order) of the layer norm whose
    first mean is `mean`, or None if the chain from it is not exactly one."""
    x = g.args(mean)[0]
    shape = tuple(g.shape(x))
    if not shape or shape[-1] is None or not last_axis_mean(g, mean):
        return None
    diff = sole_user(g, mean, "sub")
    if diff is None or g.args(diff) != [x, mean] or tuple(g.shape(diff)) != shape:
        return None
    users = g.users(diff)
    square = next((u for u in users if is_square_of(g, u, diff)), None)
    quotient = next((u for u in users if g.op(u) == "div" and g.args(u)[0] == diff), None)
    if square is None or quotient is None or len(users) != 2 or \
            g.use_count(diff) != (3 if g.op(square) == "mul" else 2):
        return None
    variance = sole_user(g, square, "mean")
    if variance is None or not last_axis_mean(g, variance):
        return None
    shifted = sole_user(g, variance, "add")
    if shifted is None:
        return None
    eps_node = other_operand(g, shifted, variance)
    eps = None if eps_node is None else number(g, eps_node, shifted)
    root = sole_user(g, shifted, "sqrt")
    if eps is None or not eps >= 0 or root is None or sole_user(g, root, "div") != quotient or \
            g.args(quotient) != [diff, root]:
        return None
    times = sole_user(g, quotient, "mul")
    plus = None if times is None else sole_user(g, times, "add")
    if times is None or plus is None:
        return None
    gamma, beta = other_operand(g, times, quotient), other_operand(g, plus, times)
    if gamma is None or beta is None or tuple(g.shape(plus)) != shape or \
            tuple(g.shape(gamma)) != shape[-1:] or tuple(g.shape(beta)) != shape[-1:]:
        return None
    chain = [mean, diff, square, variance, shifted, root, quotient, times, plus]
    return x, gamma, beta, eps, plus, chain


def fuse_layer_norm(g: Graph) -> bool:
    changed = False
    for mean in g.nodes("mean"):
        if mean not in g:
            continue
        found = match(g, mean)
        if found is None:
            continue
        x, gamma, beta, eps, end, chain = found
        node = g.add("layer_norm", [x, gamma, beta], eps=eps, layer=g[mean].get("layer"))
        g[node]["explain"] = "fused " + " + ".join(f"{g.op(n)} {n}" for n in chain)
        g.replace_uses(end, node)
        remove_unused(g, [end])
        changed = True
    return changed
