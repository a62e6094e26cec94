"""`Graph`: the IR, a dataflow DAG held in a `networkx.MultiDiGraph`.

Nodes are named by strings (`x`, `0.weight`, `%3` style counters) and carry `op`, `shape` (a tuple,
`None` for the batch dimension), `dtype`, the op's own attributes, and a few metadata keys (see
`META_KEYS`). Each edge carries `arg`, the operand position, so `add(a, a)` is two parallel edges.
"""

from __future__ import annotations

from typing import Any

import networkx as nx

from .ops import LEAVES, check_expr, op_def

CORE_KEYS = frozenset({"op", "shape", "dtype"})
# Node data that is not an op attribute: bound values, the model path a node came from, and
# what fuse_linear did (or why it did not) for `explain()`.
META_KEYS = frozenset({"value", "path", "layer", "explain"})


class LintError(AssertionError):
    """The graph breaks an IR invariant; always a compiler bug, never a user error."""


class Graph:
    """The IR of one model: a dataflow DAG over named nodes, held in `self.nx` (a `networkx.MultiDiGraph`).

    Every node has `op` (a name from the op table, `tinycomp.ir.ops.OPS`), `shape` (a tuple, `None`
    for the batch dimension) and `dtype`, plus its op's attributes; every edge has `arg`, the operand
    position. `tinycomp.trace(model, input_shape)` and `CompiledModel.graph` return one; print it with
    `tinycomp.ir.printer.format_graph`, draw it with `to_dot`, evaluate it with `tinycomp.ir.interpret`.
    Passes edit it in place through `add`, `replace_uses` and `remove`, then `lint()` checks it.
    """

    def __init__(self) -> None:
        self.nx: nx.MultiDiGraph = nx.MultiDiGraph()
        self._counter = 0

    # ------------------------------------------------------------ building
    def add(self, op: str, args: tuple[str, ...] | list[str] = (), *, name: str | None = None,
            shape: tuple | None = None, dtype: str = "float32", **attrs: Any) -> str:
        """Add a node; its shape comes from the op table's rule unless it is a leaf."""
        opdef = op_def(op)
        if opdef.arity >= 0 and len(args) != opdef.arity:
            raise LintError(f"{op} takes {opdef.arity} operands, got {len(args)}")
        if op not in LEAVES:
            op_attrs = {k: v for k, v in attrs.items() if k not in META_KEYS}
            shape = opdef.shape(*[self.shape(a) for a in args], **op_attrs)
        elif shape is None:
            raise LintError(f"a {op} node needs an explicit shape")
        name = name if name is not None else self._fresh()
        if name in self.nx:
            raise LintError(f"node name {name!r} is already taken")
        self.nx.add_node(name, op=op, shape=tuple(shape), dtype=dtype, **attrs)
        for i, a in enumerate(args):
            self.nx.add_edge(a, name, arg=i)
        return name

    def _fresh(self) -> str:
        while f"%{self._counter}" in self.nx:
            self._counter += 1
        self._counter += 1
        return f"%{self._counter - 1}"

    def remove(self, n: str) -> None:
        """Delete node `n`; LintError if another node still reads it."""
        if self.users(n):
            raise LintError(f"cannot remove {n}: still used by {self.users(n)}")
        self.nx.remove_node(n)

    def replace_uses(self, old: str, new: str) -> None:
        """Every use of `old` becomes a use of `new`, in the same operand position."""
        for _, user, key, data in list(self.nx.out_edges(old, keys=True, data=True)):
            self.nx.remove_edge(old, user, key)
            self.nx.add_edge(new, user, **data)

    def copy(self) -> Graph:
        """An independent copy (node attribute dicts copied; bound values such as parameters shared)."""
        g = Graph()
        g.nx = self.nx.copy()  # node attribute dicts are new; bound values stay shared (live)
        g._counter = self._counter
        return g

    # ------------------------------------------------------------ reading
    def __getitem__(self, n: str) -> dict[str, Any]:
        return self.nx.nodes[n]

    def __contains__(self, n: str) -> bool:
        return n in self.nx

    def __len__(self) -> int:
        return self.nx.number_of_nodes()

    def op(self, n: str) -> str:
        """The op name of node `n` (`"matmul"`, `"relu"`, ...)."""
        return self.nx.nodes[n]["op"]

    def shape(self, n: str) -> tuple:
        """The output shape of node `n`; `None` stands for the dynamic batch dimension."""
        return self.nx.nodes[n]["shape"]

    def attrs(self, n: str) -> dict[str, Any]:
        """The op's own attributes (no op/shape/dtype, no metadata)."""
        return {k: v for k, v in self.nx.nodes[n].items() if k not in CORE_KEYS | META_KEYS}

    def args(self, n: str) -> list[str]:
        """The operands of node `n`, in operand order (a node read twice appears twice)."""
        edges = sorted(self.nx.in_edges(n, data="arg"), key=lambda e: e[2])
        return [src for src, _, _ in edges]

    def users(self, n: str) -> list[str]:
        """Distinct nodes that read `n`, in graph order."""
        return list(dict.fromkeys(dst for _, dst in self.nx.out_edges(n)))

    def use_count(self, n: str) -> int:
        """How many operand slots read `n` (`add(a, a)` counts twice)."""
        return self.nx.out_degree(n)

    def nodes(self, op: str | None = None) -> list[str]:
        """Nodes in a stable topological order (insertion order breaks ties), optionally one op."""
        order = {n: i for i, n in enumerate(self.nx.nodes)}
        topo = nx.lexicographical_topological_sort(self.nx, key=order.__getitem__)
        return [n for n in topo if op is None or self.op(n) == op]

    @property
    def inputs(self) -> list[str]:
        """The `input` nodes, in graph order (one per Tensor argument of `forward`)."""
        return self.nodes("input")

    @property
    def params(self) -> list[str]:
        """The `param` nodes: the model's tensors, each bound to its attribute path and read live."""
        return self.nodes("param")

    @property
    def output(self) -> str:
        """The one `output` node (LintError if there is not exactly one)."""
        outs = [n for n, op in self.nx.nodes(data="op") if op == "output"]
        if len(outs) != 1:
            raise LintError(f"a graph has exactly one output node; found {len(outs)}")
        return outs[0]

    def op_counts(self) -> dict[str, int]:
        """How many nodes of each op the graph holds, e.g. `{"linear": 3, "input": 1, ...}`."""
        counts: dict[str, int] = {}
        for _, op in self.nx.nodes(data="op"):
            counts[op] = counts.get(op, 0) + 1
        return counts

    # ------------------------------------------------------------ invariants
    def lint(self) -> None:
        """Check every IR invariant; raise LintError naming the first broken one."""
        if not nx.is_directed_acyclic_graph(self.nx):
            raise LintError(f"graph has a cycle: {nx.find_cycle(self.nx)}")
        self.output  # noqa: B018 - raises unless exactly one output
        for n in self.nx.nodes:
            self._lint_node(n)

    def _lint_node(self, n: str) -> None:
        data = self.nx.nodes[n]
        missing = CORE_KEYS - data.keys()
        if missing:
            raise LintError(f"node {n} lacks {sorted(missing)}")
        try:
            opdef = op_def(data["op"])
        except KeyError as exc:
            raise LintError(f"node {n}: {exc.args[0]}") from None
        positions = sorted(a for _, _, a in self.nx.in_edges(n, data="arg"))
        if positions != list(range(len(positions))):
            raise LintError(f"node {n} ({data['op']}) has operand positions {positions}")
        if opdef.arity >= 0 and len(positions) != opdef.arity:
            raise LintError(f"node {n} ({data['op']}) has {len(positions)} operands, needs {opdef.arity}")
        if data["op"] == "linear" and len(positions) != 2 + bool(data.get("bias")):
            raise LintError(f"linear node {n} has {len(positions)} operands but bias={data.get('bias')}")
        if data["op"] == "elementwise":
            try:
                check_expr(data.get("expr"), len(positions))
            except ValueError as exc:
                raise LintError(f"elementwise node {n} has a bad expression: {exc}") from None
        if data["op"] in LEAVES:
            return
        if data["op"] == "output" and self.nx.out_degree(n):
            raise LintError(f"output node {n} is read by {self.users(n)}; the output ends the graph")
        try:
            expected = opdef.shape(*[self.shape(a) for a in self.args(n)], **self.attrs(n))
        except (ValueError, TypeError) as exc:
            raise LintError(f"node {n} ({data['op']}): its operands break the shape rule: {exc}") from None
        if tuple(expected) != tuple(data["shape"]):
            raise LintError(f"node {n} ({data['op']}) has shape {data['shape']}, its rule gives {expected}")

    def __repr__(self) -> str:
        from .printer import format_graph  # the printer lives beside the graph; import on demand
        return format_graph(self)

    def _repr_svg_(self) -> str | None:
        """A notebook shows the graph as a picture when Graphviz's `dot` is installed, else as text."""
        from .printer import svg_or_none, to_dot
        return svg_or_none(to_dot(self))
