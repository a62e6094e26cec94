"""ONNX graphs for the importer's tests, built with onnx.helper, and ONNX Runtime to run them.
Import after `pytest.importorskip("onnx")` and `("onnxruntime")`."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from interop_helpers import assert_close_to_framework
from onnx import TensorProto, helper, numpy_helper

import tinycomp as tc
from tinycomp.interop import from_onnx
from tinycomp.parity import check_parity, float64_reference


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


def check_samples(blob: bytes, sample: tuple[int, ...] = (3, 4), batches=(1, 2, 7), scale: float = 2.0) -> None:
    """Eager and compiled against ONNX Runtime on (rows, *sample) inputs; compiled against eager by the
    parity rule."""
    model, run = from_onnx(blob), runtime(blob)
    fast = tc.compile(model, input_shape=(None, *sample))
    for rows in batches:
        x = np.random.default_rng(rows).standard_normal((rows, *sample)).astype(np.float32) * scale
        eager, compiled = model(x).data, fast(x).data
        assert_close_to_framework(eager, run(x), f"eager, batch {rows}")
        assert_close_to_framework(compiled, run(x), f"compiled, batch {rows}")
        report = check_parity(compiled, eager, float64_reference(fast.graph, x))
        assert report.ok, f"batch {rows}: {report}"


def exported_by_torch(module, sample: tuple[int, ...], opset: int, batch: int | None = None,
                      dynamic_axis: int | None = None) -> bytes:
    """`module` as torch's TorchScript-based exporter writes it at `opset`, traced on (2, *sample):
    a symbolic batch, or the fixed `batch` if one is given (torch then folds x.size(0) to it);
    `dynamic_axis` symbolic too (a sequence axis: S)."""
    torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install -e '.[torch]')")
    buffer = io.BytesIO()
    axes = {0: "N", **({dynamic_axis: "S"} if dynamic_axis else {})}
    dynamic = None if batch else {"x": axes, "y": axes}
    with warnings.catch_warnings():  # the exporter's deprecation notice
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.zeros(batch or 2, *sample),), buffer, dynamo=False,
                          opset_version=opset, input_names=["x"], output_names=["y"], dynamic_axes=dynamic)
    return buffer.getvalue()
