"""Subgraphs exporters write for one layer, found and replaced by that layer's node before import.

Below opset 20 ONNX has no Gelu node, so both torch exporters write the exact GELU as
x * (erf(x / sqrt 2) + 1) * 0.5 — Div (or Mul by 1 / sqrt 2), Erf, Add 1, and the two Muls by x and
by 0.5 in either order (or a Div by 2), or BERT's x * 0.5 * (1 + erf(x / sqrt 2)) with x * 0.5 its
own Mul — and tinycomp has no erf op of its own to import Erf with.
`fuse_erf_gelu` replaces each such chain by one `Gelu` node (approximate "none").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

SQRT2 = math.sqrt(2.0)


def fuse_erf_gelu(onnx: Any, nodes: list, scalar: Callable[[str], float | None], outputs: set[str]) -> list:
    """`nodes` with every x * (erf(x / sqrt 2) + 1) * 0.5 chain replaced by Gelu(x). `scalar(name)`
    is the value of a constant holding one number, else None; `outputs` are the graph's outputs
    (an intermediate value of the chain read elsewhere keeps the chain as it is)."""
    readers: dict[str, list] = {}
    producers = {name: node for node in nodes for name in node.output}
    for node in nodes:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    drop: set[int] = set()
    replace: dict[int, Any] = {}
    for erf in (n for n in nodes if n.op_type == "Erf"):
        chain = _erf_gelu_chain(erf, producers, readers, scalar, outputs)
        if chain is not None:
            x, members = chain
            last = members[-1]
            drop.update(id(n) for n in members[:-1])
            replace[id(last)] = onnx.helper.make_node("Gelu", [x], [last.output[0]], name=last.name or last.output[0],
                                                      approximate="none")
    return [replace.get(id(n), n) for n in nodes if id(n) not in drop]


def _erf_gelu_chain(erf: Any, producers: dict, readers: dict, scalar: Callable[[str], float | None],
                    outputs: set[str]) -> tuple[str, list] | None:
    """(x, the chain's nodes in order) if `erf` is the middle of an exact-GELU chain, else None."""
    def only_reader(node: Any) -> Any:
        out = node.output[0]
        found = readers.get(out, [])
        return found[0] if len(found) == 1 and out not in outputs else None

    def other(node: Any, name: str) -> str | None:  # the other operand of a binary node reading `name`
        ins = list(node.input)
        return ins[1] if len(ins) == 2 and ins[0] == name else ins[0] if len(ins) == 2 and ins[1] == name else None

    scaled = producers.get(erf.input[0])
    if scaled is None or only_reader(scaled) is not erf or len(scaled.input) != 2:
        return None
    x, c = scaled.input
    if not ((scaled.op_type == "Div" and _near(scalar(c), SQRT2)) or
            (scaled.op_type == "Mul" and (_near(scalar(c), 1 / SQRT2) or _near(scalar(x), 1 / SQRT2)))):
        return None
    if scaled.op_type == "Mul" and _near(scalar(x), 1 / SQRT2):
        x = c
    plus_one = only_reader(erf)
    if plus_one is None or plus_one.op_type != "Add" or not _near(scalar(other(plus_one, erf.output[0]) or ""), 1.0):
        return None
    first = only_reader(plus_one)
    if first is None or first.op_type != "Mul":
        return None
    by = other(first, plus_one.output[0])
    head = [scaled, erf, plus_one]
    if by == x or _near(scalar(by or ""), 0.5):  # (x * E) then * 0.5 or / 2; or (0.5 * E) then * x
        second = only_reader(first)
        rest = other(second, first.output[0]) if second is not None else None
        done = second is not None and ((by == x and _halves(second, rest, scalar)) or
                                       (by != x and second.op_type == "Mul" and rest == x))
        return (x, [*head, first, second]) if done else None
    half_x = producers.get(by or "")  # E * (x * 0.5), the BERT form: x * 0.5 * (1 + erf(x / sqrt 2))
    if half_x is None or only_reader(half_x) is not first or len(half_x.input) != 2 or x not in half_x.input:
        return None
    if not _halves(half_x, other(half_x, x), scalar):
        return None
    return x, [*head, half_x, first]


def _halves(node: Any, operand: str | None, scalar: Callable[[str], float | None]) -> bool:
    """Is `node` a Mul by 0.5 or a Div by 2, `operand` its constant?"""
    if node is None or operand is None:
        return False
    if node.op_type == "Mul":
        return _near(scalar(operand), 0.5)
    return node.op_type == "Div" and list(node.input)[1] == operand and _near(scalar(operand), 2.0)


def _near(value: float | None, want: float) -> bool:
    return value is not None and bool(np.isclose(value, want, rtol=1e-6, atol=0.0))
