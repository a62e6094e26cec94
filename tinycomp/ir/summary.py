"""Per-node cost table of a Graph: shapes, parameters, bytes, MACs and FLOPs, with totals."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .graph import Graph
from .ops import op_def


@dataclass(frozen=True)
class Row:
    name: str
    op: str
    shape: tuple[int, ...]
    parameters: int
    param_bytes: int
    activation_bytes: int
    macs: int
    flops: int


@dataclass
class Summary:
    """What `tinycomp.summary(model, input_shape)` returns: one `Row` per graph node (name, op, shape,
    parameters, parameter bytes, activation bytes, MACs, FLOPs) and their totals as properties.
    `str(summary)` is a text table; in a notebook it shows as an HTML table."""

    batch: int | None
    rows: list[Row] = field(default_factory=list)

    def total(self, column: str) -> int:
        """The sum of one `Row` field over all rows, e.g. `total("macs")`."""
        return sum(getattr(r, column) for r in self.rows)

    @property
    def parameters(self) -> int:
        """Parameter count (each shared tensor once)."""
        return self.total("parameters")

    @property
    def param_bytes(self) -> int:
        """Bytes of float32 parameters."""
        return self.total("param_bytes")

    @property
    def activation_bytes(self) -> int:
        """Bytes of every node's float32 output at this batch size."""
        return self.total("activation_bytes")

    @property
    def macs(self) -> int:
        """Multiply-accumulates of the matmuls at this batch size."""
        return self.total("macs")

    @property
    def flops(self) -> int:
        """Floating-point operations at this batch size (2 per MAC, plus the elementwise work)."""
        return self.total("flops")

    def _cells(self) -> tuple[tuple[str, ...], list[tuple[str, ...]], tuple[str, ...]]:
        """(header, one row of text cells per node, the totals row): what both the text and HTML show."""
        head = ("node", "op", "shape", "params", "param bytes", "act bytes", "MACs", "FLOPs")
        body = [(r.name, r.op, "(" + ", ".join(map(str, r.shape)) + ")", *(f"{v:,}" for v in (
            r.parameters, r.param_bytes, r.activation_bytes, r.macs, r.flops))) for r in self.rows]
        foot = ("total", "", "", *(f"{getattr(self, c):,}" for c in (
            "parameters", "param_bytes", "activation_bytes", "macs", "flops")))
        return head, body, foot

    def __str__(self) -> str:
        head, body, foot = self._cells()
        widths = [max(len(row[i]) for row in [head, *body, foot]) for i in range(len(head))]

        def line(row: tuple) -> str:  # text columns left, numbers right
            cells = zip(row, widths, strict=True)
            return "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(cells))
        rule = "-" * len(line(head))
        batch = f" (batch {self.batch})" if self.batch is not None else ""
        return "\n".join([f"summary{batch}", line(head), rule, *map(line, body), rule, line(foot)])

    def _repr_html_(self) -> str:
        """The same table in a notebook, as HTML."""
        from .printer import html_table
        head, body, foot = self._cells()
        caption = f"summary (batch {self.batch})" if self.batch is not None else "summary"
        return html_table(head, [*body, foot], numeric_from=3, caption=caption)


def concrete(shape: tuple, batch: int | None) -> tuple[int, ...]:
    if None in shape and batch is None:
        raise ValueError("the graph has a dynamic batch dimension; pass batch= to summarize it")
    return tuple(int(d) if d is not None else int(batch or 0) for d in shape)


def node_costs(g: Graph, n: str, shapes: dict[str, tuple]) -> tuple[int, int]:
    """(MACs, FLOPs) of node n on concrete `shapes`, by the op registry's rule (`OpDef.cost`)."""
    return op_def(g.op(n)).cost([shapes[a] for a in g.args(n)], shapes[n], g.attrs(n))


def flops_per_row(g: Graph) -> int:
    """FLOPs per batch row of g's batched nodes (what a call costs per sample; the thread policy
    splits a batch across cores by it). Unbatched nodes, computed once per call, do not count."""
    total = 0
    for n in g.nodes():
        if g.shape(n)[:1] == (None,):
            shapes = {m: concrete(g.shape(m), 1) for m in (n, *g.args(n))}
            total += node_costs(g, n, shapes)[1]
    return total


def summarize(g: Graph, batch: int | None = None) -> Summary:
    """One row per node in topological order; `batch` replaces the dynamic batch dimension."""
    shapes = {n: concrete(g.shape(n), batch) for n in g.nodes()}
    summary = Summary(batch)
    for n in g.nodes():
        op = g.op(n)
        size = math.prod(shapes[n])
        itemsize = np.dtype(g[n]["dtype"]).itemsize
        params = size if op == "param" else 0
        # An output node aliases its operand; params and consts are weights, not activations.
        activation = 0 if op in ("param", "const", "output") else size * itemsize
        macs, flops = node_costs(g, n, shapes)
        summary.rows.append(Row(n, op, shapes[n], params, params * itemsize, activation, macs, flops))
    return summary
