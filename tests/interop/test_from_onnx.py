"""from_onnx against real ONNX Runtime: graphs built with onnx.helper, random weights, batch 0/1/7/129."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install -e '.[onnx]')")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e '.[onnx]')")
from interop_helpers import BATCHES, assert_close_to_framework, check_imported  # noqa: E402
from onnx_graphs import Builder, runtime  # noqa: E402

import tinycomp as tc  # noqa: E402
from tinycomp.interop import GraphModel, from_onnx  # noqa: E402
from tinycomp.nn import Sequential  # noqa: E402


def gemm_mlp() -> tuple[bytes, int]:
    b = Builder(20, seed=1)
    h = b.node("Gemm", ["x", b.const((20, 32)), b.const((32,))])
    h = b.node("Relu", [h])
    h = b.node("Dropout", [h])
    h = b.node("Gemm", [h, b.const((16, 32)), b.const((16,))], transB=1, alpha=0.5, beta=2.0)
    h = b.node("Sigmoid", [h])
    h = b.node("MatMul", [h, b.const((16, 8))])
    h = b.node("Add", [b.const((8,)), h])
    return b.model(b.node("Softmax", [h], axis=-1), 8), 20


def gelu_tanh_reshape(form: str) -> tuple[bytes, int]:
    b = Builder(12, seed=2)
    h = b.node("MatMul", ["x", b.const((12, 24))])
    h = b.node("Add", [h, b.const((24,))])
    h = b.node("Gelu", [h], approximate=form)
    h = b.node("Reshape", [h, b.const(None, np.array([-1, 4, 6], np.int64))])
    h = b.node("Flatten", [h], axis=1)
    h = b.node("Tanh", [b.node("Gemm", [h, b.const((24, 5))])])
    return b.model(b.node("Identity", [h]), 5), 12


def residual() -> tuple[bytes, int]:
    b = Builder(16, seed=3)
    h = b.node("Relu", [b.node("Gemm", ["x", b.const((16, 16)), b.const((16,))])])
    r = b.node("Gemm", [h, b.const((16, 16)), b.const((16,))])
    h = b.node("Add", [h, r])
    return b.model(b.node("Gemm", [h, b.const((16, 4))]), 4), 16


@pytest.mark.parametrize("make", [gemm_mlp, lambda: gelu_tanh_reshape("none"), lambda: gelu_tanh_reshape("tanh"),
                                  residual], ids=["gemm-mlp", "gelu-exact", "gelu-tanh", "residual"])
def test_models_match_onnxruntime(make):
    blob, width = make()
    model = from_onnx(blob)
    check_imported(model, runtime(blob), width, scale=2.0)


def test_chain_is_sequential_and_residual_a_graph_model(tmp_path):
    blob, _ = gemm_mlp()
    path = tmp_path / "mlp.onnx"
    path.write_bytes(blob)
    assert isinstance(from_onnx(path), Sequential)  # a path, bytes or a ModelProto
    assert isinstance(from_onnx(str(path)), Sequential)
    model = from_onnx(onnx.load_from_string(residual()[0]))
    assert isinstance(model, GraphModel)
    # its parameters are its layers' (the base class's empty list before)
    assert [p.shape for p in model.parameters()] == [p.shape for layer in model.layers.values()
                                                      for p in layer.parameters()] != []


def test_exact_gelu_compiles_with_the_erf_kernel():
    blob, width = gelu_tanh_reshape("none")
    fast = tc.compile(from_onnx(blob), input_shape=(None, width))
    assert "activation=gelu_erf" in fast.dump("optimized")


def unsupported_graph(op: str, **attrs) -> bytes:
    b = Builder(4)
    h = b.node("Gemm", ["x", b.const((4, 4))])
    return b.model(b.node(op, [h], **attrs), 4)


@pytest.mark.parametrize("blob, op, detail", [
    (unsupported_graph("Elu"), "Elu", ""),
    (unsupported_graph("Flatten", axis=0), "Flatten", "axis=0"),
    (unsupported_graph("Softmax", axis=1) , None, None),
], ids=["elu", "flatten-axis0", "softmax-ok"])
def test_unsupported_node_is_a_compile_error_naming_it(blob, op, detail):
    if op is None:
        assert isinstance(from_onnx(blob), Sequential)
        return
    with pytest.raises(tc.CompileError, match=rf"node '{op.lower()}_\d+' of type {op}.*{detail}"):
        from_onnx(blob)


def test_matmul_that_contracts_over_the_batch_is_refused():
    # (N, 4) @ (N, 4): the right operand's contracted axis is the batch, a product across samples
    b = Builder(4)
    h = b.node("Relu", ["x"])
    blob = b.model(b.node("MatMul", ["x", h]), 4)
    with pytest.raises(tc.CompileError, match="of type MatMul.*'v1' is 2-D data: its contracted axis is the batch"):
        from_onnx(blob)


def test_not_a_model_is_a_type_error(tmp_path):
    with pytest.raises(TypeError, match="path, bytes or onnx.ModelProto"):
        from_onnx(42)
    wrong = tmp_path / "model.pt"  # another file, or a truncated download: protobuf's DecodeError before
    wrong.write_bytes(b"garbage\x00\x01\x02 not an onnx model")
    with pytest.raises(tc.CompileError, match=r"'.*model.pt' is not an ONNX model \(protobuf could not read it: "):
        from_onnx(wrong)
    with pytest.raises(tc.CompileError, match=r"^28 bytes is not an ONNX model"):
        from_onnx(wrong.read_bytes())
    with pytest.raises(FileNotFoundError):
        from_onnx(tmp_path / "missing.onnx")


def test_a_model_shape_inference_refuses_is_a_compile_error(monkeypatch):
    """onnx 1.15's shape inference raised its own InferenceError on graphs newer releases accept, and
    it came out of from_onnx as it was: now tinycomp's refusal, quoting onnx's reason."""
    b = Builder(4)
    blob = b.model(b.node("Relu", ["x"]), 4)

    def refuses(proto, *args, **kwargs):
        raise onnx.shape_inference.InferenceError("[TypeInferenceError] Inferred elem type differs (1) vs (7)")
    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", refuses)
    with pytest.raises(tc.CompileError, match=r"ONNX's shape inference refused it \(\[TypeInferenceError\] Inferred"):
        from_onnx(blob)


def layer_norm_graph() -> tuple[bytes, int]:
    b = Builder(12, seed=4)
    h = b.node("Gemm", ["x", b.const((12, 24)), b.const((24,))])
    h = b.node("LayerNormalization", [h, b.const((24,)), b.const((24,))], axis=-1, epsilon=1e-4)
    return b.model(b.node("Gemm", [b.node("Relu", [h]), b.const((24, 3))]), 3, opset=17), 12


def test_layer_normalization_matches_onnxruntime_eagerly():
    blob, width = layer_norm_graph()
    model = from_onnx(blob)
    run = runtime(blob)
    for rows in BATCHES:
        x = np.random.default_rng(rows).standard_normal((rows, width)).astype(np.float32) * 2
        assert_close_to_framework(model(x).data, run(x), f"eager, batch {rows}")


def test_layer_normalization_compiles():
    blob, width = layer_norm_graph()
    check_imported(from_onnx(blob), runtime(blob), width)
