"""Remove dropout that is the identity: eval mode (`training=False`), or p = 0 (`dropout_effect`)."""

from __future__ import annotations

from ..graph import Graph
from ..philox import dropout_effect


def _effect(g: Graph, n: str) -> str:
    attrs = g.attrs(n)
    return dropout_effect(bool(attrs.get("training", False)), attrs.get("p", 0.0))


def is_identity_dropout(g: Graph, n: str) -> bool:
    return _effect(g, n) == "identity"


def draws_mask(g: Graph, n: str) -> bool:
    """A training-mode dropout that draws a random mask (0 < p < 1; p >= 1 gives zeros)."""
    if g.op(n) != "dropout":  # asked of every node by the interpreter: no attrs() dict for the rest
        return False
    return _effect(g, n) == "mask"


def fold_dropout(g: Graph) -> bool:
    """Every use of an identity dropout reads its operand instead; training dropout stays."""
    changed = False
    for n in g.nodes("dropout"):
        if is_identity_dropout(g, n):
            g.replace_uses(n, g.args(n)[0])
            g.remove(n)
            changed = True
    return changed
