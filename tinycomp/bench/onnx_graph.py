"""The last step of every bench model's ONNX form: nodes and initializers into a checked, serialized
model with input `x` and output `y` (opset 17; batch dimension named N)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def serialized_model(name: str, nodes: list, initializers: list, in_dims: Sequence[Any],
                     out_dims: Sequence[Any]) -> bytes:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(nodes, f"tinycomp_{name}",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *in_dims])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", *out_dims])],
                              initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tinycomp.bench")
    model.ir_version = min(model.ir_version, 9)  # readable by older onnxruntime releases too
    onnx.checker.check_model(model)
    return model.SerializeToString()
