"""Per-node cost table of a Graph: shapes, parameters, bytes, MACs and FLOPs, with totals."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .graph import Graph
from .ops import ELEMENTWISE, expr_flops, op_def

REDUCTIONS = frozenset({"sum", "mean", "max", "softmax"})  # cost scales with the input, not the output


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
    batch: int | None
    rows: list[Row] = field(default_factory=list)

    def total(self, column: str) -> int:
        return sum(getattr(r, column) for r in self.rows)

    @property
    def parameters(self) -> int:
        return self.total("parameters")

    @property
    def param_bytes(self) -> int:
        return self.total("param_bytes")

    @property
    def activation_bytes(self) -> int:
        return self.total("activation_bytes")

    @property
    def macs(self) -> int:
        return self.total("macs")

    @property
    def flops(self) -> int:
        return self.total("flops")

    def __str__(self) -> str:
        head = ("node", "op", "shape", "params", "param bytes", "act bytes", "MACs", "FLOPs")
        body = [(r.name, r.op, "(" + ", ".join(map(str, r.shape)) + ")", *(f"{v:,}" for v in (
            r.parameters, r.param_bytes, r.activation_bytes, r.macs, r.flops))) for r in self.rows]
        foot = ("total", "", "", *(f"{getattr(self, c):,}" for c in (
            "parameters", "param_bytes", "activation_bytes", "macs", "flops")))
        widths = [max(len(row[i]) for row in [head, *body, foot]) for i in range(len(head))]

        def line(row: tuple) -> str:  # text columns left, numbers right
            cells = zip(row, widths, strict=True)
            return "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(cells))
        rule = "-" * len(line(head))
        batch = f" (batch {self.batch})" if self.batch is not None else ""
        return "\n".join([f"summary{batch}", line(head), rule, *map(line, body), rule, line(foot)])


def concrete(shape: tuple, batch: int | None) -> tuple[int, ...]:
    if None in shape and batch is None:
        raise ValueError("the graph has a dynamic batch dimension; pass batch= to summarize it")
    return tuple(int(d) if d is not None else int(batch or 0) for d in shape)


def node_costs(g: Graph, n: str, shapes: dict[str, tuple]) -> tuple[int, int]:
    """(MACs, FLOPs): 2 FLOPs per MAC for matmul/linear plus the table's per-element FLOPs."""
    op, out = g.op(n), math.prod(shapes[n])
    if op in ("matmul", "linear"):
        x, w = g.args(n)[:2]
        w_shape = shapes[w]
        macs = out * (w_shape[-2] if len(w_shape) > 1 else w_shape[0])
        flops = 2 * macs
        if op == "linear":
            act = g[n].get("activation")
            flops += out * (int(bool(g[n].get("bias"))) + (op_def(act).flops if act else 0))
        return macs, flops
    if op in REDUCTIONS:
        return 0, math.prod(shapes[g.args(n)[0]]) * op_def(op).flops
    if op in ELEMENTWISE or op == "dropout":
        return 0, out * op_def(op).flops
    if op == "elementwise":
        return 0, out * expr_flops(g[n]["expr"])
    return 0, 0


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
