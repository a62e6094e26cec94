"""Constant folding for `from_onnx`: the nodes of an ONNX graph that compute no data, only constants
and sizes, run at import time by ONNX's own reference implementation (`onnx.reference`).

Exporters write a reshape's target as arithmetic on the input's shape: torch's
`x.view(x.size(0), -1)` becomes Shape -> Gather -> Unsqueeze -> Concat -> Reshape. Every size is
known to ONNX shape inference except the batch. So each such value is computed twice, with the
batch standing at two different sizes (`BATCHES`): an element the same in both runs is a fixed
size; one that is the batch in both runs is the batch (`BATCH` in `batch_form`); any other that
differs (e.g. batch × 64) depends on the batch in a way no tinycomp layer can take, and the node
that reads it is refused by the importer. Values with no batch in them are plain constants.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .graph_rules import BATCH, BATCHES

MAX_FOLDED = 1 << 22  # elements: a batch-sized constant larger than this is data, not a size
NOT_FOLDED = ("RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Bernoulli", "Multinomial")

SELECTING = {  # op -> the positions of its inputs whose elements it only moves (the rest say how)
    "Gather": (0,), "Slice": (0,), "Unsqueeze": (0,), "Squeeze": (0,), "Reshape": (0,), "Flatten": (0,),
    "Transpose": (0,), "Expand": (0,), "Tile": (0,), "Identity": (0,), "Concat": None,  # None: all
}
ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Mod", "Pow", "Neg", "Abs", "Cast", "Equal", "Less", "Greater",
               "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Not", "Max", "Min", "Sqrt", "Floor", "Ceil",
               "Round", "Sign", "Where", "Clip", "Reciprocal", "Exp", "Log", "Relu"}


@dataclass(frozen=True)
class Pair:
    """A value computed from the batch size: its value at each of BATCHES, and which elements depend
    on the batch (`tainted`). An element that does not is a fixed number; one that does stays
    batch-dependent even where both runs agree (batch == 1 is False at 97 and 101 alike)."""

    first: np.ndarray
    second: np.ndarray
    tainted: np.ndarray  # bool, the shape of `first`

    def at(self, k: int) -> np.ndarray:
        return self.first if k == 0 else self.second


class FoldError(ValueError):
    """A node whose inputs are known but which cannot be run at import time (the message says why)."""


def run_node(onnx: Any, node: Any, opset: int, inputs: list[np.ndarray | None]) -> list[np.ndarray]:
    """`node`'s outputs on `inputs` (None for an omitted optional input), as ONNX's reference runs it
    under `opset`."""
    from onnx.reference import ReferenceEvaluator

    if node.op_type in NOT_FOLDED:
        raise FoldError(f"{node.op_type} draws random values; a model imports with fixed constants only")
    helper = onnx.helper
    names = [name for name, value in zip(node.input, inputs, strict=True) if name and value is not None]
    graph = helper.make_graph(
        [node], "fold", [helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None) for n in names],
        [helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None) for n in node.output if n])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    feeds = {n: v for n, v in zip(node.input, inputs, strict=True) if n and v is not None}
    try:
        return [np.asarray(v) for v in ReferenceEvaluator(model).run(None, feeds)]
    except Exception as exc:  # the reference's own message says what was wrong with the inputs
        raise FoldError(f"running it on its constant inputs failed ({type(exc).__name__}: {exc})") from exc


def shape_pair(shape: tuple[int | None, ...], start: int = 0, end: int | None = None) -> Pair | np.ndarray:
    """ONNX `Shape` (with its start and end) of a value of `shape`, the batch first: a Pair if the
    batch is among the sizes taken, else one constant. ValueError if a size it takes is unknown."""
    taken = list(range(len(shape)))[slice(start, end)]
    if any(shape[i] is None for i in taken if i):
        raise ValueError(f"its sizes after the batch must be known; ONNX shape inference gives {shape}")
    if 0 not in taken:
        return np.array([shape[i] for i in taken], np.int64)
    first, second = (np.array([b if i == 0 else shape[i] for i in taken], np.int64) for b in BATCHES)
    return Pair(first, second, np.array([i == 0 for i in taken]))


def fold_pair(onnx: Any, node: Any, opset: int, inputs: list[Any]) -> list[np.ndarray | Pair]:
    """Outputs of `node` whose inputs are constants or Pairs: run once if none is a Pair, else at each
    batch size, each output then a constant where no element depends on the batch (`taint`)."""
    if not any(isinstance(v, Pair) for v in inputs):
        return list(run_node(onnx, node, opset, inputs))
    runs = [run_node(onnx, node, opset, [v.at(k) if isinstance(v, Pair) else v for v in inputs])
            for k in range(len(BATCHES))]
    outputs: list[np.ndarray | Pair] = []
    for i, (first, second) in enumerate(zip(*runs, strict=True)):
        if max(first.size, second.size) > MAX_FOLDED:
            raise FoldError(f"it makes a value of shape {first.shape} at batch size {BATCHES[0]}: data that "
                            "grows with the batch, not a size")
        tainted = taint(onnx, node, opset, inputs, first, i) if first.shape == second.shape \
            else np.ones(first.shape, bool)
        outputs.append(Pair(first, second, tainted) if tainted.any() else first)
    return outputs


def taint(onnx: Any, node: Any, opset: int, inputs: list[Any], out: np.ndarray, index: int) -> np.ndarray:
    """Which elements of output `index` of `node` depend on the batch, from which of its inputs' do:
    an elementwise op's element on the elements it reads, a selecting op's (Gather, Concat, ...)
    on the elements it moves (the op run on the inputs' taint masks), any other's on all of them."""
    masks = [v.tainted if isinstance(v, Pair) else None for v in inputs]
    if node.op_type in ELEMENTWISE:
        result = np.zeros(out.shape, bool)
        for mask in masks:
            if mask is not None:
                result |= np.broadcast_to(mask, out.shape)
        return result
    moved = SELECTING.get(node.op_type, ())
    positions = range(len(inputs)) if moved is None else moved
    if node.op_type in SELECTING and all(m is None for k, m in enumerate(masks) if k not in positions):
        marked = [(v.first if isinstance(v, Pair) else v) if k not in positions  # how: as it is (not tainted)
                  else np.zeros(np.shape(v), bool) if masks[k] is None else masks[k] for k, v in enumerate(inputs)]
        try:
            result = run_node(onnx, node, opset, marked)[index]
            if result.shape == out.shape and result.dtype == bool:
                return result
        except FoldError:
            pass  # the op does not take booleans there: every element then
    return np.ones(out.shape, bool)


def batch_form(value: Pair) -> list[int | str] | None:
    """A 1-D Pair of sizes as a list of ints with `BATCH` where the element is the batch; None if an
    element depends on the batch otherwise (batch × 64, batch == 1, say) or the value is not a 1-D
    int vector."""
    first, second = value.first, value.second
    if first.ndim != 1 or first.shape != second.shape or first.dtype.kind not in "iu":
        return None
    form: list[int | str] = []
    for a, b, tainted in zip(first.tolist(), second.tolist(), value.tainted.tolist(), strict=True):
        if not tainted:
            form.append(int(a))
        elif (a, b) == BATCHES:
            form.append(BATCH)
        else:
            return None
    return form
