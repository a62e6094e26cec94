"""Dead-code elimination: drop nodes whose value nothing reads."""

from __future__ import annotations

from ..graph import Graph

# The output is the root of liveness; inputs are the graph's signature even when unused.
KEEP = frozenset({"output", "input"})


def eliminate_dead_code(g: Graph) -> bool:
    """Remove unused nodes, users before their operands, so whole dead chains go in one sweep."""
    changed = False
    for n in reversed(g.nodes()):
        if g.op(n) not in KEEP and not g.users(n):
            g.remove(n)
            changed = True
    return changed
