"""from_onnx on the forms exporters write beside the plain ones: Softmax before opset 13 on 3-D values,
Reshape with 0 and -1, a Gemm bias of shape (1, N), weights behind Identity, Constant nodes of ints;
each against real ONNX Runtime, eager and compiled, or refused with an error naming the node."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install -e '.[onnx]')")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e '.[onnx]')")
from interop_helpers import check_imported  # noqa: E402
from onnx import helper  # noqa: E402
from onnx_graphs import Builder, check_samples, exported_by_torch, runtime  # noqa: E402

import tinycomp as tc  # noqa: E402
from tinycomp.interop import from_onnx  # noqa: E402

SAMPLE = (3, 4)


@pytest.mark.parametrize("axis", [None, 1, 2, -1, -2], ids=["default", "1", "2", "-1", "-2"])
def test_softmax_before_opset_13_normalizes_from_its_axis_on(axis):
    # before opset 13 the default axis is 1: on (N, 3, 4) each sample's 12 values sum to 1
    b = Builder(4, seed=1, sample=SAMPLE)
    h = b.node("Softmax", ["x"]) if axis is None else b.node("Softmax", ["x"], axis=axis)
    check_samples(b.model(h, SAMPLE, opset=11))


def test_softmax_before_opset_13_across_the_batch_is_refused():
    b = Builder(4, sample=SAMPLE)
    blob = b.model(b.node("Softmax", ["x"], axis=0), SAMPLE, opset=11)
    with pytest.raises(tc.CompileError, match=r"node 'softmax_1' of type Softmax \(axis=0 .*across the batch"):
        from_onnx(blob)


@pytest.mark.parametrize("shape, out", [([0, -1], (12,)), ([0, 0, 2, 2], (3, 2, 2)), ([-1, 2, 6], (2, 6)),
                                        ([0, 2, -1], (2, 6))], ids=["0,-1", "0,0,2,2", "-1,2,6", "0,2,-1"])
def test_reshape_with_copied_and_inferred_sizes(shape, out):
    b = Builder(4, seed=2, sample=SAMPLE)
    h = b.node("Reshape", ["x", b.const(None, np.array(shape, np.int64))])
    check_samples(b.model(b.node("Relu", [h]), out))


def test_reshape_that_moves_the_batch_is_refused():
    b = Builder(4, sample=SAMPLE)
    blob = b.model(b.node("Reshape", ["x", b.const(None, np.array([3, -1], np.int64))]), (3, 4))
    with pytest.raises(tc.CompileError, match=r"of type Reshape \(shape \[3, -1\]: the batch must stay first"):
        from_onnx(blob)


def test_layer_normalization_over_axis_1_of_a_matrix_is_the_last_axis():
    b = Builder(10, seed=3)
    h = b.node("LayerNormalization", ["x", b.const((10,)), b.const((10,))], axis=1)
    blob = b.model(h, 10, opset=17)
    check_imported(from_onnx(blob), runtime(blob), 10)


@pytest.mark.parametrize("bias_shape", [(1, 6), (6,), (1,), ()], ids=["1xN", "N", "1", "scalar"])
def test_gemm_bias_broadcast_over_the_batch(bias_shape):
    b = Builder(5, seed=4)
    blob = b.model(b.node("Gemm", ["x", b.const((5, 6)), b.const(bias_shape)], beta=0.5), 6)
    check_imported(from_onnx(blob), runtime(blob), 5)


def test_gemm_with_beta_zero_leaves_c_out():
    """C * 0 is NaN where C holds inf or NaN: ONNX Runtime and ONNX's reference leave C out."""
    b = Builder(5, seed=4)
    blob = b.model(b.node("Gemm", ["x", b.const((5, 3)), b.const(None, np.array([np.inf, 1.0, np.nan], np.float32))],
                          beta=0.0), 3)
    check_imported(from_onnx(blob), runtime(blob), 5)


@pytest.mark.parametrize("op", ["Slice", "Gather"])
def test_a_cut_of_an_axis_of_unknown_size_names_that_axis(op):
    """An input declared (N, ?), as exporters write dynamic axes: a cut of axis 1 was refused as
    cutting "the batch axis of (N, N)"."""
    inits = [onnx.numpy_helper.from_array(np.array(v, np.int64), n)
             for n, v in (("s", [1]), ("e", [3]), ("a", [1]), ("i", 1))]
    node = helper.make_node("Slice", ["x", "s", "e", "a"], ["y"], name="cut") if op == "Slice" else \
        helper.make_node("Gather", ["x", "i"], ["y"], name="cut", axis=1)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", None])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], initializer=inits)
    with pytest.raises(tc.CompileError, match=r"axis 1 of \(N, N\), whose size is not known: only the batch axis "
                                              r"may be"):
        from_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_gemm_bias_that_varies_along_the_batch_is_refused():
    b = Builder(5)
    node = helper.make_node("Gemm", ["x", "w", "c"], ["y"], name="gemm")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 5])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 6])], initializer=[
                                  onnx.numpy_helper.from_array(b.rng.standard_normal((5, 6)).astype(np.float32), "w"),
                                  onnx.numpy_helper.from_array(np.ones((2, 6), np.float32), "c")])
    with pytest.raises(tc.CompileError, match=r"node 'gemm' of type Gemm \(C of shape \(2, 6\): a bias must be"):
        from_onnx(helper.make_model(graph))


def test_weight_shared_through_identity():
    b = Builder(5, seed=5)
    w = b.const((5, 5))
    tied = b.node("Identity", [w])  # how exporters often write a tied weight
    h = b.node("MatMul", [b.node("MatMul", ["x", w]), tied])
    blob = b.model(b.node("Add", [h, b.node("Dropout", [b.const((5,))])]), 5)
    check_imported(from_onnx(blob), runtime(blob), 5)


def test_constant_node_of_ints_gives_a_reshape_its_shape():
    b = Builder(4, seed=6, sample=SAMPLE)
    b.count += 1
    b.nodes.append(helper.make_node("Constant", [], ["shape"], value_ints=[0, 12]))
    check_samples(b.model(b.node("Tanh", [b.node("Reshape", ["x", "shape"])]), (12,)))


def test_constant_of_strings_read_as_data_is_refused_naming_it():
    b = Builder(4)
    b.nodes.append(helper.make_node("Constant", [], ["s"], name="words", value_strings=[b"a"]))
    blob = b.model(b.node("Add", ["x", "s"]), 4)
    with pytest.raises(tc.CompileError, match=r"node 'add_1' of type Add \(input 's' holds strings, not numbers"):
        from_onnx(blob)


def test_matmul_with_the_weight_on_the_left_contracts_over_the_batch_and_is_refused():
    b = Builder(4)
    w = b.const((4, 4))
    blob = b.model(b.node("MatMul", [w, "x"]), 4)
    with pytest.raises(tc.CompileError, match="the right operand 'x' is 2-D data: its contracted axis is the batch"):
        from_onnx(blob)


@pytest.mark.parametrize("opset", [13, 17, 18])
def test_exact_gelu_written_with_erf_imports_as_gelu(opset):
    # below opset 20 torch writes nn.GELU() as x * (erf(x / sqrt 2) + 1) * 0.5; tinycomp has no erf op
    torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install -e '.[torch]')")
    torch.manual_seed(opset)
    module = torch.nn.Sequential(torch.nn.Linear(6, 9), torch.nn.GELU(), torch.nn.Linear(9, 4))
    blob = exported_by_torch(module, (6,), opset)
    assert "Erf" in {n.op_type for n in onnx.load_from_string(blob).graph.node}
    model = from_onnx(blob)
    assert [type(layer).__name__ for layer in model] == ["Linear", "GELU", "Linear"]
    assert model[1].approximate == "none"
    check_imported(model, runtime(blob), 6, scale=2.0)


def test_an_erf_chain_that_is_not_gelu_is_refused():
    b = Builder(4)
    h = b.node("Erf", [b.node("Div", ["x", b.const(None, np.float32(1.4142135))])])
    h = b.node("Mul", ["x", b.node("Add", [h, b.const(None, np.float32(1.0))])])
    blob = b.model(b.node("Mul", [h, b.const(None, np.float32(0.25))]), 4)  # 0.25, not 0.5
    with pytest.raises(tc.CompileError, match="cannot import node .erf_3. of type Erf"):  # the rest imports
        from_onnx(blob)


# ---- old opsets and odd but valid graphs (a hunt found each; each failed before its fix)
def graph_of(nodes, sample, opset, inits=(), sparse=(), in_shape=True) -> bytes:
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", *sample] if in_shape else None)
    g = helper.make_graph(nodes, "g", [x], [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
                          initializer=list(inits), sparse_initializer=list(sparse))
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 3 if opset < 7 else 8
    return proto.SerializeToString()


def test_reshape_with_its_shape_as_an_attribute_before_opset_5():
    check_samples(graph_of([helper.make_node("Reshape", ["x"], ["y"], shape=[0, 12])], SAMPLE, 4), SAMPLE)


def test_nodes_out_of_order_and_sparse_initializers():
    # ONNX Runtime sorts the nodes; a sparse initializer is zeros but at its indices
    sparse = helper.make_sparse_tensor(helper.make_tensor("v", onnx.TensorProto.FLOAT, [2], [5.0, 7.0]),
                                       helper.make_tensor("i", onnx.TensorProto.INT64, [2], [1, 3]), [4])
    nodes = [helper.make_node("Add", ["h", "c"], ["y"]), helper.make_node("Add", ["x", "v"], ["h"]),
             helper.make_node("Constant", [], ["c"], value=onnx.numpy_helper.from_array(np.float32([1, 2, 3, 4])))]
    check_samples(graph_of(nodes, (4,), 13, sparse=[sparse]), (4,))


def test_flatten_axis_minus_one_of_a_matrix_is_axis_one():
    check_samples(graph_of([helper.make_node("Flatten", ["x"], ["y"], axis=-1)], (4,), 13), (4,))


@pytest.mark.parametrize("case, match", [
    ("batch-norm-outputs", r"of type BatchNormalization \(in training mode .*running statistics as outputs"),
    ("batch-norm-spatial", r"of type BatchNormalization \(spatial=0: statistics per position"),
    ("no-input-shape", r"of type Flatten \(Flatten needs the rank of 'x'"),
])
def test_old_forms_that_compute_something_else_are_refused(case, match):
    stats = [onnx.numpy_helper.from_array(np.float32([1, 0.5, 2])[:3], n) for n in ("s", "b", "m", "v")]
    if case == "batch-norm-outputs":  # opset 9 writes a training-mode batch norm as 5 outputs
        blob = graph_of([helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"],
                                          ["y", "m2", "v2", "sm", "sv"])], (3, 4), 9, inits=stats)
    elif case == "batch-norm-spatial":
        blob = graph_of([helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], spatial=0)],
                        (3, 4), 7, inits=stats)
    else:  # an input with no shape: its rank is unknown, not 1
        blob = graph_of([helper.make_node("Flatten", ["x"], ["y"])], (3, 4), 13, in_shape=False)
    with pytest.raises(tc.CompileError, match=match):
        from_onnx(blob)
