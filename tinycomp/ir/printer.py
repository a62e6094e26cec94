"""Readable dumps of a Graph: one line per node in text, Graphviz DOT (and SVG), HTML tables."""

from __future__ import annotations

import html
import pathlib
import shutil
import subprocess
from collections.abc import Sequence

import numpy as np

from .graph import Graph
from .ops import format_expr

DTYPES = {"float32": "f32", "float64": "f64", "int32": "i32", "int64": "i64"}


def ref(n: str) -> str:
    return n if n.startswith("%") else f"%{n}"


def type_str(g: Graph, n: str) -> str:
    dims = ",".join("N" if d is None else str(d) for d in g.shape(n))
    return f"{DTYPES.get(g[n]['dtype'], g[n]['dtype'])}[{dims}]"


def attr_str(g: Graph, n: str) -> str:
    """Op attributes as `k=v`; linear's `bias` is omitted (its operand list shows it) and so is None;
    its `residual` shows only where there is one (the last operand)."""
    attrs = g.attrs(n)
    if g.op(n) == "linear":
        attrs.pop("bias", None)
        if not attrs.get("residual"):
            attrs.pop("residual", None)
    if g.op(n) == "elementwise":
        attrs["expr"] = format_expr(attrs["expr"])
    return " ".join(f"{k}={v}" for k, v in attrs.items() if v is not None)


def const_str(g: Graph, n: str) -> str:
    value = g[n].get("value")
    if value is None:
        return ""
    arr = np.asarray(value)
    return f" {arr.item():g}" if arr.size == 1 else ""


def node_line(g: Graph, n: str, show_layers: bool = False) -> str:
    op = g.op(n)
    if op in ("input", "param"):
        body = op
    elif op == "const":
        body = "const" + const_str(g, n)
    else:
        body = f"{op}({', '.join(ref(a) for a in g.args(n))})"
        extra = attr_str(g, n)
        body += f" {extra}" if extra else ""
    line = f"{ref(n)} = {body} : {type_str(g, n)}"
    layer = g[n].get("layer")
    return f"{line}  # {layer}" if show_layers and layer else line


def format_graph(g: Graph, *, show_layers: bool = False) -> str:
    """Stable text form, topological order, e.g. `%3 = linear(%x, %0.weight, %0.bias) activation=relu : f32[N,256]`.

    `show_layers` appends the model path each node came from as a comment.
    """
    return "\n".join(node_line(g, n, show_layers) for n in g.nodes())


# ---------------------------------------------------------------- Graphviz

STYLE = {"input": 'shape=ellipse, style=filled, fillcolor="#d0e8ff"',
         "param": 'shape=note, style=filled, fillcolor="#eeeeee"',
         "const": 'shape=note, style=filled, fillcolor="#eeeeee"',
         "output": 'shape=ellipse, style=filled, fillcolor="#d0ffd0"'}


def escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"')


def quote(s: str) -> str:
    return f'"{escape(s)}"'


def to_dot(g: Graph, name: str = "tinycomp") -> str:
    """Valid Graphviz DOT: one box per node labelled like its text line, edges labelled by operand."""
    lines = [f"digraph {quote(name)} {{", "  rankdir=TB;", '  node [shape=box, fontname="monospace"];']
    order = {n: i for i, n in enumerate(g.nodes())}
    for n in order:
        op = g.op(n)
        extra = attr_str(g, n) if op not in ("input", "param", "const") else const_str(g, n).strip()
        label = "\\n".join(escape(s) for s in (f"{ref(n)} = {op}", extra, type_str(g, n)) if s)
        style = f", {STYLE[op]}" if op in STYLE else ""
        lines.append(f'  {quote(n)} [label="{label}"{style}];')
    for src, dst, arg in sorted(g.nx.edges(data="arg"), key=lambda e: (order[e[1]], e[2])):
        label = f" [label={arg}]" if len(g.args(dst)) > 1 else ""
        lines.append(f"  {quote(src)} -> {quote(dst)}{label};")
    lines.append("}")
    return "\n".join(lines) + "\n"


class GraphvizNotFound(RuntimeError):
    """Graphviz's `dot` program is not installed; DOT text can still be written and rendered elsewhere."""


def render_dot(dot: str, path: str | pathlib.Path, *, timeout: float = 60) -> pathlib.Path:
    """Render DOT text to `path`; the format comes from its suffix (.svg, .png, .pdf)."""
    path = pathlib.Path(path)
    fmt = path.suffix.lstrip(".").lower() or "svg"
    exe = shutil.which("dot")
    if exe is None:
        raise GraphvizNotFound(
            f"cannot render {path}: Graphviz's `dot` program is not on PATH. Install Graphviz "
            "(e.g. `apt install graphviz`), or save the text of to_dot() as a .dot file and render it elsewhere."
        )
    done = subprocess.run([exe, f"-T{fmt}", "-o", str(path)], input=dot, text=True,
                          capture_output=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"Graphviz dot failed rendering {path} ({fmt}): {done.stderr.strip()}")
    return path


def svg_or_none(dot: str, *, timeout: float = 30) -> str | None:
    """DOT text rendered to SVG text by Graphviz, or None when `dot` is not installed or fails (a
    notebook then shows the graph's text instead)."""
    exe = shutil.which("dot")
    if exe is None:
        return None
    try:
        done = subprocess.run([exe, "-Tsvg"], input=dot, text=True, capture_output=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 and "<svg" in done.stdout else None


def html_table(header: Sequence[str], rows: Sequence[Sequence[object]], *, numeric_from: int = 0,
               caption: str = "") -> str:
    """An HTML table (cells escaped); columns from `numeric_from` on are right-aligned numbers."""
    def row(cells: Sequence[object], tag: str) -> str:
        return "<tr>" + "".join(
            f'<{tag} style="text-align:{"right" if numeric_from and i >= numeric_from else "left"}">'
            f"{html.escape(str(c))}</{tag}>" for i, c in enumerate(cells)) + "</tr>"
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead>{row(header, 'th')}</thead><tbody>{''.join(row(r, 'td') for r in rows)}</tbody></table>"
