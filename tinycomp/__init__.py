"""tinycomp: compile TinyTorch-style layer models to native code with llvmlite.

    model.eval()                     # dropout off: what the compiled model computes
    fast = tinycomp.compile(model)   # trace -> passes -> LLVM -> machine code
    y = fast(x)                      # same result as model(x) in eval mode

`help(tinycomp.compile)` documents every option; the layers are in `tinycomp.nn`.
"""

from __future__ import annotations

from typing import Any

from .compiler import CompiledModel, compile
from .errors import CompileError, ParityError
from .export import ExportResult, export
from .frontend.inputs import first_layer, inferred_input_shape, input_shapes
from .frontend.tensor import Tensor
from .frontend.tracer import trace
from .ir.graph import Graph
from .ir.summary import Summary, summarize

__version__ = "0.1.0"


def summary(model: Any, input_shape: Any = None) -> Summary:
    """Per-node shapes, parameters, bytes, MACs and FLOPs of `model` (or a Graph) at a batch size.

    Args:
        model: a `tinycomp.nn` model (traced in eval mode) or a `Graph` (e.g. `fast.graph`).
        input_shape: (batch, features...); the batch size only scales activations, MACs and FLOPs.
            A forward() of several inputs takes one such shape per input, in a list; an input after the
            first whose first size is neither None nor the batch is shared by every sample. Default:
            batch 1 and the width of the model's first Linear (a Graph: its own shapes).

    Returns:
        A `Summary`: `print()` it for a table, read totals from `.parameters`, `.param_bytes`,
        `.activation_bytes`, `.macs`, `.flops`; a notebook shows it as an HTML table.

    Example:
        >>> s = summary(model, input_shape=(32, 784))   # the reference MLP  # doctest: +SKIP
        >>> s.parameters, s.macs                                             # doctest: +SKIP
        (235146, 7512064)
    """
    if isinstance(model, CompiledModel):  # what it was compiled from
        model = model.model
    if input_shape is None and isinstance(model, Graph):
        return summarize(model, 1)
    if input_shape is None:
        inferred = inferred_input_shape(model)
        if inferred is None:
            raise ValueError(f"summary needs input_shape=(batch, features...) for this {type(model).__name__}: its "
                             f"first layer is {type(first_layer(model)).__name__}, not a Linear whose width it takes")
        input_shape = (1, *inferred[1:])
    shapes = input_shapes(input_shape)  # a forward() of several inputs: one (batch, features...) per input
    shape = shapes[0]
    batch = shape[0] if shape and shape[0] is not None else 1
    # as compile() takes them: an input after the first is batched where its first size is None or the
    # batch, else one array shared by every sample (a (seq, seq) mask)
    traced = [(None, *s[1:]) if i == 0 or s[:1] in ((None,), shape[:1]) else s for i, s in enumerate(shapes)]
    graph = model if isinstance(model, Graph) else trace(model, traced if len(traced) > 1 else traced[0])
    return summarize(graph, batch)


__all__ = ["CompileError", "CompiledModel", "ExportResult", "Graph", "ParityError", "Summary", "Tensor", "compile",
           "export", "summary", "trace", "__version__"]
