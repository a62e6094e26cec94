"""ONNX graphs for the importer's tests, built with onnx.helper, and ONNX Runtime to run them.
Import after `pytest.importorskip("onnx")` and `("onnxruntime")`."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


class Builder:
    """A graph under construction: random float32 initializers, nodes, one input x of shape
    (N, *sample) (sample (width,) by default) and one output y."""

    def __init__(self, width: int, seed: int = 0, sample: tuple[int, ...] | None = None):
        self.width, self.rng = width, np.random.default_rng(seed)
        self.sample = sample or (width,)
        self.nodes, self.inits, self.count = [], [], 0

    def const(self, shape, value=None) -> str:
        self.count += 1
        name = f"c{self.count}"
        data = self.rng.standard_normal(shape).astype(np.float32) * 0.5 if value is None else np.asarray(value)
        self.inits.append(numpy_helper.from_array(data, name))
        return name

    def node(self, op: str, inputs: list[str], **attrs) -> str:
        self.count += 1
        out = f"v{self.count}"
        self.nodes.append(helper.make_node(op, inputs, [out], name=f"{op.lower()}_{self.count}", **attrs))
        return out

    def model(self, out: str, out_sample: int | tuple[int, ...], opset: int = 20) -> bytes:
        """The graph returning `out` as y of shape (N, *out_sample), checked by onnx.checker."""
        out_sample = (out_sample,) if isinstance(out_sample, int) else out_sample
        self.nodes.append(helper.make_node("Identity", [out], ["y"]))
        graph = helper.make_graph(self.nodes, "test", [helper.make_tensor_value_info(
            "x", TensorProto.FLOAT, ["N", *self.sample])], [helper.make_tensor_value_info(
                "y", TensorProto.FLOAT, ["N", *out_sample])], initializer=self.inits)
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        proto.ir_version = min(proto.ir_version, 9)
        onnx.checker.check_model(proto)
        return proto.SerializeToString()


def runtime(blob: bytes):
    """x -> ONNX Runtime's output of the graph, one thread."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(blob, options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"x": x})[0]
