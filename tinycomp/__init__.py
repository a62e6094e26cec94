"""tinycomp: compile TinyTorch-style layer models to native code with llvmlite.

    fast = tinycomp.compile(model)   # trace -> passes -> LLVM -> machine code
    y = fast(x)                      # same result as model(x) in eval mode
"""

from __future__ import annotations

from typing import Any

from .compiler import CompiledModel, compile
from .errors import CompileError, ParityError
from .frontend.tracer import trace
from .ir.graph import Graph
from .ir.summary import Summary, summarize

__version__ = "0.1.0"


def summary(model: Any, input_shape: Any = (1, 784)) -> Summary:
    """Per-node shapes, parameters, bytes, MACs and FLOPs of `model` (or a Graph) at a batch size.

    `input_shape` is (batch, features...); the batch size only scales activations, MACs and FLOPs.
    """
    shape = tuple(input_shape)
    batch = shape[0] if shape and shape[0] is not None else 1
    graph = model if isinstance(model, Graph) else trace(model, (None, *shape[1:]))
    return summarize(graph, batch)


__all__ = ["CompileError", "CompiledModel", "Graph", "ParityError", "Summary", "compile", "summary", "trace",
           "__version__"]
