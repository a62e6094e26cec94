"""Graph passes: each is `def name(g: Graph) -> bool` (did it change anything), run in one list."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..graph import Graph, LintError
from .dead_code import eliminate_dead_code
from .fold_dropout import fold_dropout
from .fuse_attention import fuse_attention
from .fuse_elementwise import fuse_elementwise
from .fuse_layer_norm import fuse_layer_norm
from .fuse_linear import fuse_linear

Pass = Callable[[Graph], bool]
DEFAULT_PIPELINE: list[Pass] = [fold_dropout, fuse_linear, fuse_attention, fuse_layer_norm, fuse_elementwise,
                                 eliminate_dead_code]


def run_pipeline(g: Graph, passes: Sequence[Pass] | None = None, *,
                 on_pass: Callable[[str, Graph, bool], None] | None = None) -> Graph:
    """Run `passes` (default: DEFAULT_PIPELINE) on a copy of `g`; the input graph is left as it was.

    `on_pass(name, graph, changed)` sees the graph right after each pass (it keeps changing
    afterwards, so format or copy it there) — that is how per-pass dumps are made.
    """
    g = g.copy()
    for p in DEFAULT_PIPELINE if passes is None else passes:
        changed = p(g)
        try:
            # a pass of ours that changed nothing left a linted graph as it was; a user's pass may
            # change the graph and still return False (a forgotten `return True`): lint it anyway
            if changed or passes is not None:
                g.lint()
        except LintError as exc:  # name the culprit: a lint failure is a bug in that pass
            raise LintError(f"after pass {p.__name__}: {exc}") from exc
        if on_pass is not None:
            on_pass(p.__name__, g, changed)
    return g


EXPLAINED = ("matmul", "linear", "attention", "layer_norm")  # the nodes explain() has a line for


def explain(g: Graph, *, compiled: bool = False) -> list[str]:
    """One line per fusion candidate (every matmul): what fuse_linear fused and, where not, why;
    and per attention or layer_norm node what fuse_attention or fuse_layer_norm fused into it.

    On an optimized graph this reads what fuse_linear recorded; on a graph it has not run on yet
    (e.g. a traced one) it explains what the default pipeline would do, unless `compiled` says the
    graph is what a compile ran (its passes left fuse_linear out): then that is what it says.
    """
    candidates = [n for n in g.nodes() if g.op(n) in EXPLAINED]
    if any("explain" not in g[n] for n in candidates):
        if compiled:
            return [f"{g.op(n)} {n}: not fused (this compile's passes did not include fuse_linear)"
                    for n in candidates]
        g = run_pipeline(g)
        candidates = [n for n in g.nodes() if g.op(n) in EXPLAINED]
    lines = []
    for n in candidates:
        layer = g[n].get("layer")
        where = f" in layer '{layer}'" if layer else ""
        lines.append(f"{g.op(n)} {n}{where}: {g[n].get('explain', 'built as linear before fusion ran')}")
    return lines


__all__ = ["DEFAULT_PIPELINE", "eliminate_dead_code", "explain", "fold_dropout", "fuse_attention", "fuse_elementwise",
           "fuse_layer_norm", "fuse_linear", "run_pipeline"]
