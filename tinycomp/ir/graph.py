"""`Graph`: the IR, a dataflow DAG held in a `networkx.MultiDiGraph`.

Nodes are named by strings (`x`, `0.weight`, `%3` style counters) and carry `op`, `shape` (a tuple,
`None` for the batch dimension), `dtype`, the op's own attributes, and a few metadata keys (see
`META_KEYS`). Each edge carries `arg`, the operand position, so `add(a, a)` is two parallel edges.

The readers below go to the MultiDiGraph's own adjacency dicts (`_node`, `_pred`, `_succ`, which
networkx's algorithms use too) rather than its view objects: a 10,000-op chain is 20,000 nodes,
read several times by every pass, and the views cost microseconds per call.
"""

from __future__ import annotations

import heapq
from typing import Any

import networkx as nx
import numpy as np

from .collector import paused_gc as paused_gc  # re-exported: building a graph pauses the collector
from .ops import LEAVES, check_expr, op_def

CORE_KEYS = frozenset({"op", "shape", "dtype"})
# Node data that is not an op attribute: bound values, the model path a node came from, and
# what fuse_linear did (or why it did not) for `explain()`.
META_KEYS = frozenset({"value", "path", "layer", "explain"})
_NOT_ATTRS = CORE_KEYS | META_KEYS


class _DAG(nx.MultiDiGraph):
    """A MultiDiGraph that does not keep its edge and degree views: networkx caches them on the
    graph, and they refer back to it. That cycle kept every dropped IR graph (whose params hold the
    model's weight Tensors) alive until Python's cycle collector ran, and with it the weights of a
    model the user had dropped. The views are made anew on each use instead (what they cost is why
    the readers below use the adjacency dicts)."""


for _view in ("edges", "out_edges", "in_edges", "degree", "in_degree", "out_degree"):
    setattr(_DAG, _view, property(getattr(nx.MultiDiGraph, _view).func, doc=getattr(nx.MultiDiGraph, _view).__doc__))


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
        self.nx: nx.MultiDiGraph = _DAG()
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
        nodes, succ, pred = self.nx._node, self.nx._succ, self.nx._pred
        if name in nodes:
            raise LintError(f"node name {name!r} is already taken")
        missing = [a for a in args if a not in nodes]
        if missing:
            raise LintError(f"operand(s) {missing} of the new {op} node are not in the graph")
        # what add_node and add_edge do (parallel edges keyed 0, 1, ...), without their per-call checks
        nodes[name] = {"op": op, "shape": tuple(shape), "dtype": dtype, **attrs}
        succ[name], pred[name] = {}, {}
        for i, a in enumerate(args):
            keyed = pred[name].get(a)
            if keyed is None:
                keyed = pred[name][a] = succ[a][name] = {}
            keyed[len(keyed)] = {"arg": i}
        self.nx.__networkx_cache__.clear()
        return name

    def _fresh(self) -> str:
        while f"%{self._counter}" in self.nx._node:
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
        """A graph of its own: node and edge attribute dicts are new; bound values stay shared (live).
        What `MultiDiGraph.copy` makes, built on the adjacency dicts (3x faster on big graphs)."""
        g = Graph()
        src, dst = self.nx, g.nx
        dst.graph.update(src.graph)
        succ, pred = dst._succ, dst._pred
        for n, data in src._node.items():
            dst._node[n] = data.copy()
            succ[n], pred[n] = {}, {}
        for u, users in src._succ.items():
            for v, keyed in users.items():
                succ[u][v] = pred[v][u] = {key: data.copy() for key, data in keyed.items()}
        g._counter = self._counter
        return g

    # ------------------------------------------------------------ reading
    def __getitem__(self, n: str) -> dict[str, Any]:
        return self.nx._node[n]

    def __contains__(self, n: str) -> bool:
        return n in self.nx

    def __len__(self) -> int:
        return self.nx.number_of_nodes()

    def op(self, n: str) -> str:
        """The op name of node `n` (`"matmul"`, `"relu"`, ...)."""
        return self.nx._node[n]["op"]

    def shape(self, n: str) -> tuple:
        """The output shape of node `n`; `None` stands for the dynamic batch dimension."""
        return self.nx._node[n]["shape"]

    def attrs(self, n: str) -> dict[str, Any]:
        """The op's own attributes (no op/shape/dtype, no metadata)."""
        return {k: v for k, v in self.nx._node[n].items() if k not in _NOT_ATTRS}

    def _positions(self, n: str) -> list[tuple[int, str]]:
        """(operand position, node) of n's in-edges, sorted by position."""
        return sorted((data["arg"], src) for src, keyed in self.nx._pred[n].items() for data in keyed.values())

    def args(self, n: str) -> list[str]:
        """The operands of node `n`, in operand order (a node read twice appears twice)."""
        return [src for _, src in self._positions(n)]

    def users(self, n: str) -> list[str]:
        """Distinct nodes that read `n`, in graph order."""
        return list(self.nx._succ[n])

    def use_count(self, n: str) -> int:
        """How many operand slots read `n` (`add(a, a)` counts twice)."""
        return sum(map(len, self.nx._succ[n].values()))

    def nodes(self, op: str | None = None) -> list[str]:
        """Nodes in a stable topological order (insertion order breaks ties), optionally one op.

        Kahn's algorithm with a heap of insertion indices (what networkx's lexicographical sort
        does, on the adjacency dicts directly). Raises networkx.NetworkXUnfeasible on a cycle."""
        node_data, pred, succ = self.nx._node, self.nx._pred, self.nx._succ
        if op is not None:
            found = [n for n, data in node_data.items() if data["op"] == op]
            if len(found) < 2:  # no order to find (passes often look for an op the graph lacks)
                return found
        names = list(node_data)
        index = {n: i for i, n in enumerate(names)}
        waiting = {n: len(pred[n]) for n in names}  # distinct producers not yet placed
        heap = [i for i, n in enumerate(names) if not waiting[n]]  # ascending: already a heap
        order = []
        while heap:
            n = names[heapq.heappop(heap)]
            order.append(n)
            for user in succ[n]:
                waiting[user] -= 1
                if not waiting[user]:
                    heapq.heappush(heap, index[user])
        if len(order) != len(names):
            raise nx.NetworkXUnfeasible("the graph contains a cycle: it has no topological order")
        return order if op is None else [n for n in order if node_data[n]["op"] == op]

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
        outs = [n for n, data in self.nx._node.items() if data["op"] == "output"]
        if len(outs) != 1:
            raise LintError(f"a graph has exactly one output node; found {len(outs)}")
        return outs[0]

    def op_counts(self) -> dict[str, int]:
        """How many nodes of each op the graph holds, e.g. `{"linear": 3, "input": 1, ...}`."""
        counts: dict[str, int] = {}
        for data in self.nx._node.values():
            counts[data["op"]] = counts.get(data["op"], 0) + 1
        return counts

    # ------------------------------------------------------------ invariants
    def lint(self) -> None:
        """Check every IR invariant; raise LintError naming the first broken one."""
        for n, data in self.nx._node.items():  # first: every other check reads these keys
            missing = CORE_KEYS - data.keys()
            if missing:
                raise LintError(f"node {n} lacks {sorted(missing)}")
        for src, dst, data in self.nx.edges(data=True):
            if "arg" not in data:
                raise LintError(f"the edge {src} -> {dst} lacks 'arg', its operand position")
        try:
            self.nodes()
        except nx.NetworkXUnfeasible:
            raise LintError(f"graph has a cycle: {nx.find_cycle(self.nx)}") from None
        self.output  # noqa: B018 - raises unless exactly one output
        for n in self.nx.nodes:
            self._lint_node(n)

    @staticmethod
    def _lint_const(n: str, data: dict) -> None:
        """A const's value is numbers of exactly its node's shape: code is generated from the shape and
        reads the value's memory (a pass that left a smaller value made it read past it)."""
        value = data.get("value")
        try:
            array = np.asarray(value)
        except Exception:  # noqa: BLE001 - whatever it is, it is no array of numbers
            array = None
        if array is None or array.dtype.kind not in "biuf" or array.shape != tuple(data["shape"]):
            what = f"shape {array.shape}, dtype {array.dtype}" if array is not None else type(value).__name__
            raise LintError(f"const node {n} holds a value of {what} where its shape is {tuple(data['shape'])}: a "
                            "const must hold numbers of exactly its shape")

    def _lint_node(self, n: str) -> None:
        data = self.nx._node[n]
        try:
            opdef = op_def(data["op"])
        except KeyError as exc:
            raise LintError(f"node {n}: {exc.args[0]}") from None
        edges = self._positions(n)
        positions = [a for a, _ in edges]
        if positions != list(range(len(positions))):
            raise LintError(f"node {n} ({data['op']}) has operand positions {positions}")
        if opdef.arity >= 0 and len(positions) != opdef.arity:
            raise LintError(f"node {n} ({data['op']}) has {len(positions)} operands, needs {opdef.arity}")
        if data["op"] == "linear" and len(positions) != 2 + bool(data.get("bias")) + bool(data.get("residual")):
            raise LintError(f"linear node {n} has {len(positions)} operands but bias={data.get('bias')}, "
                            f"residual={bool(data.get('residual'))}")
        if data["op"] == "elementwise":
            try:
                check_expr(data.get("expr"), len(positions))
            except ValueError as exc:
                raise LintError(f"elementwise node {n} has a bad expression: {exc}") from None
        if data["op"] == "const":
            self._lint_const(n, data)
        if data["op"] in LEAVES:
            return
        if data["op"] == "output" and self.nx._succ[n]:
            raise LintError(f"output node {n} is read by {self.users(n)}; the output ends the graph")
        try:
            expected = opdef.shape(*[self.shape(a) for _, a in edges], **self.attrs(n))
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
