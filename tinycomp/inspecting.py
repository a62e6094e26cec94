"""What a compiled model shows of its compilation: the optimized graph, the text of every stage, what
fused, and a notebook's view. A mixin of `CompiledModel`, over the artifact its last compile made."""

from __future__ import annotations

import html
from typing import Any

from . import driver
from .driver import Artifact
from .ir.graph import Graph
from .ir.ops import format_expr
from .ir.passes import DEFAULT_PIPELINE, fuse_linear
from .ir.passes import explain as explain_fusions
from .ir.printer import html_table

STAGES = driver.STAGES


class ShowsCompilation:
    """`graph`, `dump(stage)`, `pass_dumps()`, `explain()` and `_repr_html_()` of a compiled model."""

    _artifact: Artifact | None
    _passes: list | None
    model: Any
    stats: Any

    @property
    def graph(self) -> Graph:
        """The optimized graph the native code was generated from (after the first call or input_shape):
        a copy, so that editing it changes neither the dumps nor `explain()` (parameter values stay the
        model's live tensors)."""
        return self._require("graph").optimized.copy()

    def _require(self, what: str) -> Artifact:
        if self._artifact is None:
            raise RuntimeError(f"{what} is not available before the first call: the model compiles on "
                               "its first input, or pass input_shape=(None, features) to compile()")
        return self._artifact

    def dump(self, stage: str = "optimized") -> str:
        """Text of one stage: 'traced', 'optimized', 'llvm' (before and after LLVM passes), 'asm'."""
        driver.check_stage(stage)  # before _require: a wrong name is the first thing to say
        return driver.stage_text(self._require(f"dump({stage!r})"), stage)

    def pass_dumps(self) -> list[tuple[str, str]]:
        """(stage name, graph text) for the traced graph and after every pass, in order."""
        return list(self._require("pass_dumps()").pass_dumps)

    def explain(self) -> str:
        """One line per matmul: what was fused into one `linear` node (bias add, activation) and, where
        something was not, why."""
        fused = fuse_linear in (DEFAULT_PIPELINE if self._passes is None else self._passes)
        return "\n".join(explain_fusions(self._require("explain()").optimized, compiled=not fused))

    def _repr_html_(self) -> str:
        """A notebook's view: input and output shapes, compile time, what fused, each optimized node."""
        name = html.escape(type(self.model).__name__)
        art = self._artifact
        if art is None:
            return (f"<p><b>CompiledModel</b> of {name}: not compiled yet (it compiles on its first call, "
                    "or give compile() input_shape=(None, features))</p>")
        g = art.optimized
        shape = lambda n: "(" + ", ".join("N" if d is None else str(d) for d in g.shape(n)) + ")"  # noqa: E731
        source = "object code from the on-disk cache" if art.cache_hit else "built"
        head = (f"<p><b>CompiledModel</b> of {name}: input {shape(g.inputs[0])} &rarr; output {shape(g.output)}; "
                f"compiled in {art.compile_ms:.1f} ms ({source}, speed_level={art.speed_level}); "
                f"{self.stats.calls:,} calls, {self.stats.compiles} compiles</p>")
        fused = "".join(f"<li>{html.escape(line)}</li>" for line in self.explain().splitlines())
        rows = [(n, g.op(n), ", ".join(f"{k}={v}" for k, v in g.attrs(n).items() if k != "expr")
                 or (format_expr(g[n]["expr"]) if g.op(n) == "elementwise" else ""), shape(n))
                for n in g.nodes() if g.op(n) not in ("param", "const")]
        table = html_table(("node", "op", "attributes", "shape"), rows, caption="optimized graph")
        return f"<div>{head}<p>What fused:</p><ul>{fused}</ul>{table}</div>"
