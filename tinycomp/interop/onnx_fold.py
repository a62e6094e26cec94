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

from typing import Any

import numpy as np

from .graph_layers import BATCH, BATCHES

MAX_FOLDED = 1 << 22  # elements: a batch-sized constant larger than this is data, not a size
NOT_FOLDED = ("RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Bernoulli", "Multinomial")

Pair = tuple[np.ndarray, np.ndarray]  # a value at each of BATCHES


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
    return tuple(np.array([b if i == 0 else shape[i] for i in taken], np.int64) for b in BATCHES)  # type: ignore


def fold_pair(onnx: Any, node: Any, opset: int, inputs: list[Any]) -> list[np.ndarray | Pair]:
    """Outputs of `node` whose inputs are constants or Pairs: run once if none is a Pair, else at each
    batch size, each output then a constant where both runs agree and a Pair where they differ."""
    if not any(isinstance(v, tuple) for v in inputs):
        return list(run_node(onnx, node, opset, inputs))
    runs = [run_node(onnx, node, opset, [v[k] if isinstance(v, tuple) else v for v in inputs])
            for k in range(len(BATCHES))]
    outputs: list[np.ndarray | Pair] = []
    for first, second in zip(*runs, strict=True):
        if max(first.size, second.size) > MAX_FOLDED:
            raise FoldError(f"it makes a value of shape {first.shape} at batch size {BATCHES[0]}: data that "
                            "grows with the batch, not a size")
        same = first.shape == second.shape and bool(np.array_equal(first, second, equal_nan=first.dtype.kind == "f"))
        outputs.append(first if same else (first, second))
    return outputs


def batch_form(value: Pair) -> list[int | str] | None:
    """A 1-D Pair of sizes as a list of ints with `BATCH` where the element is the batch; None if an
    element changes with the batch otherwise (batch × 64, say) or the value is not a 1-D int vector."""
    first, second = value
    if first.ndim != 1 or first.shape != second.shape or first.dtype.kind not in "iu":
        return None
    form: list[int | str] = []
    for a, b in zip(first.tolist(), second.tolist(), strict=True):
        if a == b:
            form.append(int(a))
        elif (a, b) == BATCHES:
            form.append(BATCH)
        else:
            return None
    return form
