"""from_onnx on general graphs: elementwise math, reductions, transposes and batched products, the
size arithmetic exporters write for reshapes (folded at import), and whole layers torch exports
decomposed (attention, LayerNorm below opset 17, tanh GELU); each against ONNX Runtime, eager and
compiled, or refused with an error naming the node and why."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install -e '.[onnx]')")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e '.[onnx]')")
from interop_helpers import assert_close_to_framework  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402
from onnx_graphs import Builder, check_samples, exported_by_torch, runtime  # noqa: E402

import tinycomp as tc  # noqa: E402
from tinycomp.interop import GraphModel, from_onnx  # noqa: E402
from tinycomp.parity import check_parity, float64_reference  # noqa: E402

SAMPLE = (3, 4)


def scalar(b: Builder, value: float) -> str:
    return b.const(None, np.float32(value))


def with_constant(op: str, constant_first: bool, shape) -> bytes:
    b = Builder(4, seed=len(op), sample=SAMPLE)
    c = b.const(shape) if shape is not None else scalar(b, 3.0 if op == "Pow" else 1.7)
    if op in ("Div", "Pow") and constant_first is False and shape is not None:
        c = b.node("Abs", [c])  # folded: a divisor away from 0
    inputs = [c, "x"] if constant_first else ["x", c]
    return b.model(b.node(op, inputs), SAMPLE)


@pytest.mark.parametrize("op, first, shape", [
    ("Sub", False, None), ("Sub", True, (4,)), ("Mul", True, (3, 1)), ("Div", False, (4,)), ("Div", True, None),
    ("Pow", False, None), ("Add", True, (1, 3, 4)),
], ids=["x-c", "c-x", "c*x", "x/c", "c/x", "x**3", "c+x"])
def test_elementwise_with_a_constant(op, first, shape):
    check_samples(with_constant(op, first, shape))


def test_unary_ops_and_ops_of_two_values():
    b = Builder(4, seed=3, sample=SAMPLE)
    pos = b.node("Add", [b.node("Abs", ["x"]), scalar(b, 0.5)])
    h = b.node("Sub", [b.node("Log", [pos]), b.node("Sqrt", [pos])])
    h = b.node("Mul", [h, b.node("Reciprocal", [pos])])
    h = b.node("Div", [h, b.node("Exp", [b.node("Neg", [pos])])])
    check_samples(b.model(b.node("Add", [h, "x"]), SAMPLE))


@pytest.mark.parametrize("op, opset, axes, keepdims, out", [
    ("ReduceMean", 13, [-1], 1, (3, 1)), ("ReduceMean", 18, [2], 0, (3,)), ("ReduceSum", 13, [1], 1, (1, 4)),
    ("ReduceMax", 13, [1, 2], 0, ()), ("ReduceSum", 18, [], 1, SAMPLE),
], ids=["mean-attr", "mean-input", "sum", "max-two-axes", "sum-noop"])
def test_reductions(op, opset, axes, keepdims, out):
    b = Builder(4, seed=4, sample=SAMPLE)
    attrs = {"keepdims": keepdims}
    if not axes:
        attrs["noop_with_empty_axes"] = 1
    axes_as_input = opset >= 18 or op == "ReduceSum"
    inputs = ["x", b.const(None, np.array(axes, np.int64))] if axes_as_input and axes else ["x"]
    if not axes_as_input:
        attrs["axes"] = axes
    h = b.node(op, inputs, **attrs)
    check_samples(b.model(b.node("Tanh", [h]), out, opset=opset))


def test_reduction_over_the_batch_is_refused():
    b = Builder(4, sample=SAMPLE)
    blob = b.model(b.node("ReduceMean", ["x"], axes=[0, 2], keepdims=1), (1, 3, 1)[1:], opset=13)
    with pytest.raises(tc.CompileError, match=r"of type ReduceMean \(axes \[0, 2\]: a reduction over the batch"):
        from_onnx(blob)


def test_transposes_and_batched_products():
    # (N, 3, 4) @ (N, 4, 3), a constant (2, 3) @ (N, 3, 4), and a constant (4, 5) taken as a Linear
    b = Builder(4, seed=5, sample=SAMPLE)
    h = b.node("MatMul", ["x", b.node("Transpose", ["x"], perm=[0, 2, 1])])
    h = b.node("MatMul", [b.const((2, 3)), b.node("Sigmoid", [h])])
    h = b.node("MatMul", [h, b.const((1, 3, 5))])
    check_samples(b.model(h, (2, 5)))


def test_transpose_that_moves_the_batch_is_refused():
    b = Builder(4, sample=SAMPLE)
    blob = b.model(b.node("Transpose", ["x"], perm=[1, 0, 2]), (4,))
    with pytest.raises(tc.CompileError, match=r"of type Transpose \(perm \[1, 0, 2\] moves the batch"):
        from_onnx(blob)


@pytest.mark.parametrize("opset", [11, 13])
def test_squeeze_and_unsqueeze_keep_the_batch(opset):
    b = Builder(4, seed=6, sample=SAMPLE)
    if opset < 13:
        h = b.node("Unsqueeze", ["x"], axes=[2])
        h = b.node("Squeeze", [b.node("Relu", [h])], axes=[2])
    else:
        h = b.node("Unsqueeze", ["x", b.const(None, np.array([-1], np.int64))])
        h = b.node("Squeeze", [b.node("Relu", [h]), b.const(None, np.array([3], np.int64))])
    check_samples(b.model(h, SAMPLE, opset=opset))


def test_unsqueeze_before_the_batch_is_refused():
    b = Builder(4, sample=SAMPLE)
    blob = b.model(b.node("Unsqueeze", ["x", b.const(None, np.array([0], np.int64))]), (1, 3, 4)[1:])
    with pytest.raises(tc.CompileError, match=r"of type Unsqueeze \(axes \[0\]: the batch .axis 0. must stay where it "
                                              r"is, so no axis goes in before it\)"):
        from_onnx(blob)


def test_size_arithmetic_on_the_input_shape_is_folded():
    # the TorchScript exporter's x.view(x.size(0), -1): Shape -> Gather -> Unsqueeze -> Concat; and a
    # Cast to float of the data, which is float already
    b = Builder(4, seed=7, sample=SAMPLE)
    size0 = b.node("Gather", [b.node("Shape", ["x"]), b.const(None, np.array(0, np.int64))], axis=0)
    target = b.node("Concat", [b.node("Unsqueeze", [size0, b.const(None, np.array([0], np.int64))]),
                               b.const(None, np.array([-1], np.int64))], axis=0)
    h = b.node("Reshape", [b.node("Cast", ["x"], to=TensorProto.FLOAT), target])
    blob = b.model(b.node("Relu", [h]), (12,))
    assert [type(layer).__name__ for layer in from_onnx(blob)] == ["Reshape", "ReLU"]
    check_samples(blob)


def test_constants_of_constants_are_folded():
    b = Builder(4, seed=8, sample=SAMPLE)
    c = b.node("Add", [b.const((4,)), b.node("ConstantOfShape", [b.const(None, np.array([4], np.int64))],
                                             value=helper.make_tensor("v", TensorProto.FLOAT, [1], [2.0]))])
    check_samples(b.model(b.node("Mul", ["x", c]), SAMPLE))


def test_reshape_that_merges_the_batch_is_refused():
    # Shape(x)[0] * 3 as the first size: (N, 3, 4) -> (3N, 4)
    b = Builder(4, sample=SAMPLE)
    rows = b.node("Mul", [b.node("Slice", [b.node("Shape", ["x"]), b.const(None, np.array([0], np.int64)),
                                           b.const(None, np.array([1], np.int64))]),
                          b.const(None, np.array([3], np.int64))])
    target = b.node("Concat", [rows, b.const(None, np.array([4], np.int64))], axis=0)
    blob = b.model(b.node("Reshape", ["x", target]), (4,))
    with pytest.raises(tc.CompileError, match=r"other than as the batch \(at two batch sizes: 291 / 303, 4 / 4\)"):
        from_onnx(blob)


@pytest.mark.parametrize("case, match", [
    ("pow-of-data", r"of type Pow \(the exponent is computed data"),
    ("cast-to-int", r"of type Cast \(a cast of data to INT64"),
    ("random", r"of type RandomNormal \(RandomNormal draws random values"),
    ("batch-sized-constant", r"of type Add \(input '\w+' is computed from the batch size"),
    ("erf", r"node 'erf_1' of type Erf; supported: Gemm"),
    ("max-of-three", r"of type Max \(3 inputs; tinycomp imports Max of one or two"),
    ("clip-to-data", r"of type Clip \(a bound computed from the data"),
    ("clip-to-tensor", r"of type Clip \(bounds of shapes \[\(4,\), None\]; ONNX's Clip takes scalars"),
    ("mask-to-int", r"of type Cast \(a cast of data to INT64"),
])
def test_what_cannot_be_imported_is_named(case, match):
    b = Builder(4, sample=SAMPLE)
    if case == "pow-of-data":
        h = b.node("Pow", ["x", b.node("Relu", ["x"])])
    elif case == "cast-to-int":
        h = b.node("Cast", ["x"], to=TensorProto.INT64)
    elif case == "random":
        h = b.node("Add", ["x", b.node("RandomNormal", [], shape=[4])])
    elif case == "batch-sized-constant":
        h = b.node("Add", ["x", b.node("ConstantOfShape", [b.node("Shape", ["x"])])])
    elif case == "max-of-three":
        h = b.node("Max", ["x", b.node("Neg", ["x"]), b.node("Exp", ["x"])])
    elif case == "clip-to-data":
        h = b.node("Clip", ["x", b.node("Neg", ["x"])])
    elif case == "clip-to-tensor":
        h = b.node("Clip", ["x", b.const((4,))])
    elif case == "mask-to-int":
        h = b.node("Cast", [b.node("Greater", ["x", scalar(b, 0.0)])], to=TensorProto.INT64)
    else:
        h = b.node("Erf", ["x"])
    with pytest.raises(tc.CompileError, match=match):
        from_onnx(b.model(h, SAMPLE))


def test_where_max_min_and_clip():
    b = Builder(4, seed=6, sample=SAMPLE)
    keep = b.const(SAMPLE, np.random.default_rng(6).random(SAMPLE) < 0.5)  # a bool initializer
    h = b.node("Where", [b.node("Not", [keep]), scalar(b, -np.inf), "x"])  # the condition folded at import
    h = b.node("Softmax", [h], axis=-1)
    h = b.node("Max", [h, b.node("Neg", ["x"])])
    h = b.node("Min", [b.const((4,)), h])
    h = b.node("Clip", [h, scalar(b, -0.5), scalar(b, 0.7)])
    h = b.node("Clip", [h, "", scalar(b, 0.6)])
    h = b.node("Where", [b.node("Equal", [b.const((3, 1)), scalar(b, 0.0)]), "x", h])  # two data operands
    check_samples(b.model(b.node("Add", [h, b.node("Max", ["x"])]), SAMPLE))


def test_masks_computed_from_data():
    """Comparisons of data, the logic of masks, a cast to bool and back: a mask made from the data."""
    b = Builder(4, seed=11, sample=SAMPLE)
    positive = b.node("Greater", ["x", scalar(b, 0.0)])
    small = b.node("LessOrEqual", [b.node("Abs", ["x"]), b.const((4,))])
    keep = b.node("Or", [b.node("And", [positive, small]), b.node("Not", [b.node("Less", [scalar(b, -1.0), "x"])])])
    keep = b.node("Xor", [keep, b.node("Equal", ["x", b.node("Neg", ["x"])])])
    nonzero = b.node("Cast", [b.node("Cast", [b.node("GreaterOrEqual", ["x", scalar(b, 0.5)])], to=TensorProto.BOOL)],
                     to=TensorProto.FLOAT)
    h = b.node("Add", [b.node("Where", [keep, "x", b.node("Exp", ["x"])]), nonzero])
    check_samples(b.model(h, SAMPLE))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # log of negatives, 1 / 0: the NaN and inf tested
@pytest.mark.parametrize("positive, negative", [(1, 1), (1, 0), (0, 1)])
def test_is_nan_and_is_inf_on_special_values(positive, negative):
    b = Builder(4, sample=(6,))
    log = b.node("Log", ["x"])
    clean = b.node("Where", [b.node("IsNaN", [log]), scalar(b, 0.0), log])
    inf = b.node("IsInf", [b.node("Div", [scalar(b, 1.0), "x"])], detect_positive=positive, detect_negative=negative)
    blob = b.model(b.node("Add", [clean, b.node("Cast", [inf], to=TensorProto.FLOAT)]), (6,))
    x = np.array([[0.0, -0.0, -1.0, 2.0, np.inf, np.nan], [1e-45, -3.0, 0.5, -np.inf, 7.0, 0.0]], np.float32)
    model, want = from_onnx(blob), runtime(blob)(x)
    fast = tc.compile(model, input_shape=(None, 6))
    np.testing.assert_array_equal(model(x).data, want)
    np.testing.assert_array_equal(fast(x).data, want)


@pytest.mark.parametrize("opset", [6, 11])
def test_clip_bounds_as_attributes_and_as_inputs(opset):
    b = Builder(4, seed=7, sample=SAMPLE)
    if opset < 11:
        h = b.node("Clip", ["x"], min=-0.25, max=1.5)
    else:
        h = b.node("Clip", ["x", scalar(b, -0.25), scalar(b, 1.5)])
    check_samples(b.model(b.node("Clip", [h]) if opset >= 11 else h, SAMPLE, opset=opset))


def ints(b: Builder, values) -> str:
    return b.const(None, np.array(values, np.int64))


@pytest.mark.parametrize("opset", [9, 11, 13, 18])
def test_slice_split_and_gather(opset):
    """Slice (attributes before opset 10; inputs with axes, steps and INT64_MAX ends after), Split (an
    attribute, an input, num_outputs at 18) and Gather of one position."""
    b = Builder(4, seed=8, sample=(3, 8))
    if opset < 10:
        cut = b.node("Slice", ["x"], starts=[0, 1], ends=[2 ** 62, 7], axes=[0, 2])
    else:
        cut = b.node("Slice", ["x", ints(b, [1, 0]), ints(b, [7, 2 ** 63 - 1]), ints(b, [2, 0]), ints(b, [2, 1])])
    parts = [f"part{i}" for i in range(2)]
    sizes = {"split": [5, 3]} if opset < 13 else {"num_outputs": 2} if opset >= 18 else {}
    extra = [ints(b, [3, 5])] if 13 <= opset < 18 else []
    b.nodes.append(helper.make_node("Split", ["x", *extra], parts, axis=-1, **sizes))
    last = b.node("Gather", [parts[1], ints(b, -1)], axis=2)
    runs = b.node("Gather", [b.node("Gather", [cut, ints(b, [-1])], axis=1), ints(b, [0, 2])], axis=-1)  # (N, 1, 2)
    last = b.node("Add", [last, b.node("ReduceSum", [runs], axes=[2], keepdims=0) if opset < 13 else
                          b.node("ReduceSum", [runs, ints(b, [2])], keepdims=0)])
    summed = b.node("ReduceSum", [cut], axes=[2], keepdims=1) if opset < 13 else \
        b.node("ReduceSum", [cut, ints(b, [2])], keepdims=1)
    column = b.node("Unsqueeze", [last], axes=[2]) if opset < 13 else b.node("Unsqueeze", [last, ints(b, [2])])
    most = b.node("ReduceMax", [parts[0]], axes=[2], keepdims=1) if opset < 18 else \
        b.node("ReduceMax", [parts[0], ints(b, [2])], keepdims=1)
    h = b.node("Add", [b.node("Add", [summed, column]), most])
    check_samples(b.model(h, (3, 1), opset=opset), (3, 8))


@pytest.mark.parametrize("case, match", [
    ("batch-cut", r"of type Slice \(starts 1, ends 9223372036854775807, steps 1 along the batch axis"),
    ("backwards", r"of type Slice \(a slice with step -1: only positive steps"),
    ("gather-list", r"of type Gather \(\[:, \[2, 0\]\] .*positions \[2, 0\], which are not an increasing"),
    ("gather-matrix", r"of type Gather \(indices of shape \(1, 2\): tinycomp gathers one position or a list"),
    ("slice-lengths", r"of type Slice \(starts, ends, axes and steps of lengths 2, 1, 2, 2: they must be equal"),
    ("slice-axis", r"of type Slice \(axis 5 of a value of rank 3"),
    ("split-axis", r"of type Split \(axis -4 of a value of rank 3"),
    ("gather-batch", r"of type Gather \(index 1 picks one sample of the batch axis of \(N, 3, 4\)"),
    ("split-batch", r"of type Split \(axis 0 of a value of shape"),
])
def test_cuts_that_cannot_be_imported(case, match):
    b = Builder(4, sample=SAMPLE)
    if case == "batch-cut":
        h = b.node("Slice", ["x", ints(b, [1]), ints(b, [2 ** 63 - 1]), ints(b, [0])])
    elif case == "backwards":
        h = b.node("Slice", ["x", ints(b, [-1]), ints(b, [-2 ** 63]), ints(b, [1]), ints(b, [-1])])
    elif case == "gather-list":
        h = b.node("Gather", ["x", ints(b, [2, 0])], axis=1)
    elif case == "gather-matrix":
        h = b.node("Gather", ["x", ints(b, [[0, 1]])], axis=1)
    elif case == "slice-lengths":
        h = b.node("Slice", ["x", ints(b, [0, 1]), ints(b, [2]), ints(b, [1, 2]), ints(b, [1, 1])])
    elif case == "slice-axis":
        h = b.node("Slice", ["x", ints(b, [0]), ints(b, [2]), ints(b, [5])])
    elif case == "split-axis":
        b.nodes.append(helper.make_node("Split", ["x"], ["h", "rest"], axis=-4, num_outputs=2))
        h = "h"
    elif case == "gather-batch":
        h = b.node("Gather", ["x", ints(b, 1)], axis=0)
    else:
        b.nodes.append(helper.make_node("Split", ["x"], ["h", "rest"], axis=0, num_outputs=2))
        h = "h"
    with pytest.raises(tc.CompileError, match=match):
        from_onnx(b.model(h, SAMPLE, opset=18))


def test_concat_of_computed_values():
    b = Builder(4, seed=9, sample=SAMPLE)
    h = b.node("Concat", [b.node("Exp", ["x"]), "x", b.node("Neg", ["x"])], axis=-1)
    h = b.node("Concat", [h, h], axis=1)
    check_samples(b.model(b.node("ReduceSum", [h, ints(b, [1])], keepdims=0), (12,), opset=18))


@pytest.mark.parametrize("inputs, axis, match", [
    (["x", "c"], 1, r"of type Concat \(a constant among the inputs"),
    (["x", "x"], 0, r"of type Concat \(axis 0 of 3-D values: they are joined along an axis after the batch"),
])
def test_concat_that_cannot_be_imported(inputs, axis, match):
    b = Builder(4, sample=SAMPLE)
    names = [b.const((1, 3, 4)) if name == "c" else name for name in inputs]
    with pytest.raises(tc.CompileError, match=match):
        from_onnx(b.model(b.node("Concat", names, axis=axis), SAMPLE))


def torch_modules():
    torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install -e '.[torch]')")
    nn = torch.nn

    class Rows(nn.Module):
        def forward(self, x):
            return torch.relu(x.reshape(-1, x.shape[-1]))  # (N, 3, 4) -> (3N, 4): rows of all samples

    from torch_models import FlattenThenLinear, StudentBlock

    return torch, StudentBlock, FlattenThenLinear, Rows


@pytest.mark.parametrize("opset", [14, 17])
def test_transformer_block_exported_by_torch(opset):
    # opset 14 writes LayerNorm as ReduceMean/Sub/Pow/.../Add and both write GELU's tanh form as
    # Mul/Add/Tanh: tinycomp's passes fuse the layer norm and the attention back into one node each
    torch, Block, _, _ = torch_modules()
    torch.manual_seed(opset)
    blob = exported_by_torch(Block(), (5, 16), opset)
    kinds = {n.op_type for n in onnx.load_from_string(blob).graph.node}
    assert {"Shape", "Gather", "Concat", "Transpose"} <= kinds and ("ReduceMean" in kinds) == (opset < 17)
    assert isinstance(from_onnx(blob), GraphModel)
    check_samples(blob, (5, 16), scale=1.0)
    fast = tc.compile(from_onnx(blob), input_shape=(None, 5, 16))
    ops = {fast.graph.op(n) for n in fast.graph.nodes()}
    assert {"attention", "layer_norm"} <= ops and not {"transpose", "softmax", "mean"} & ops


def test_causal_block_exported_by_torch():
    """masked_fill of a buffer cut to the input's length: Slice, Equal and Where, the mask folded."""
    torch, Block, _, _ = torch_modules()
    torch.manual_seed(3)
    blob = exported_by_torch(Block(causal=True), (5, 16), 17)
    assert {"Where", "Equal", "Slice"} <= {n.op_type for n in onnx.load_from_string(blob).graph.node}
    check_samples(blob, (5, 16), scale=1.0)


@pytest.mark.parametrize("last", [False, True], ids=["all-positions", "last-position"])
def test_nanogpt_attention_exported_by_torch(last):
    """Split (or Slice) of one projection, masked_fill of a buffer cut to the input, the last position
    read out with Gather."""
    torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install -e '.[torch]')")
    from torch_models import NanoGPTAttention

    torch.manual_seed(8)
    blob = exported_by_torch(NanoGPTAttention(last=last), (5, 16), 17)
    kinds = {n.op_type for n in onnx.load_from_string(blob).graph.node}
    assert {"Where", "Split" if "Split" in kinds else "Slice"} <= kinds and ("Gather" in kinds or not last)
    check_samples(blob, (5, 16), scale=1.0)


@pytest.mark.parametrize("mode", ["causal", "bool-mask"])
def test_scaled_dot_product_attention_exported_by_torch(mode):
    """torch writes F.scaled_dot_product_attention out in ONNX ops (q and k each scaled by a root of
    the scale, a causal mask built from the sizes): it imports and matches ONNX Runtime. The causal
    form compiles to the fused kernel (q and k scaled before it); with a bool mask torch also
    replaces the softmax's NaNs by zeros (IsNaN), which the kernel does not do for a NaN score."""
    torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install -e '.[torch]')")
    from torch_models import FlashAttention

    torch.manual_seed(14)
    blob = exported_by_torch(FlashAttention(mode=mode), (5, 16), 17)
    check_samples(blob, (5, 16), scale=1.0)
    ops = tc.compile(from_onnx(blob), input_shape=(None, 5, 16)).graph.op_counts()
    assert ops.get("attention") == (1 if mode == "causal" else None) and ("softmax" in ops) == (mode != "causal")


def test_lets_build_gpt_block_exported_by_torch():
    torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install -e '.[torch]')")
    from torch_models import KarpathyBlock

    torch.manual_seed(10)
    blob = exported_by_torch(KarpathyBlock(), (5, 16), 17)
    assert {"Concat", "Where"} <= {n.op_type for n in onnx.load_from_string(blob).graph.node}
    check_samples(blob, (5, 16), scale=1.0)
    assert tc.compile(from_onnx(blob), input_shape=(None, 5, 16)).graph.op_counts().get("attention") == 4


def test_view_of_size_0_exported_with_a_dynamic_batch():
    torch, _, Flat, _ = torch_modules()
    check_samples(exported_by_torch(Flat(), SAMPLE, 17))


def test_view_of_size_0_exported_with_a_fixed_batch():
    # with a fixed batch of 3 torch folds x.size(0) into Reshape [3, -1]: the graph's batch. ONNX
    # Runtime runs batch 3 only; other batches are checked against the torch module itself
    torch, _, Flat, _ = torch_modules()
    module = Flat()
    blob = exported_by_torch(module, SAMPLE, 17, batch=3)
    model, run = from_onnx(blob), runtime(blob)
    fast = tc.compile(model, input_shape=(None, *SAMPLE))
    for rows in (3, 1, 8):
        x = np.random.default_rng(rows).standard_normal((rows, *SAMPLE)).astype(np.float32)
        eager, compiled = model(x).data, fast(x).data
        with torch.no_grad():
            want = run(x) if rows == 3 else module(torch.from_numpy(x)).numpy()
        assert_close_to_framework(eager, want, f"eager, batch {rows}")
        report = check_parity(compiled, eager, float64_reference(fast.graph, x))
        assert report.ok, f"batch {rows}: {report}"


def test_reshape_of_all_rows_exported_by_torch_is_refused():
    torch, _, _, Rows = torch_modules()
    blob = exported_by_torch(Rows(), SAMPLE, 17)
    with pytest.raises(tc.CompileError, match=r"of type Reshape \(shape \[-1, 4\] on a value of sizes \[3, 4\] after "
                                              r"the batch: the -1 would merge samples"):
        from_onnx(blob)


# ---- found by a bug hunt: each failed before its fix
@pytest.mark.parametrize("op, k", [("Equal", 1), ("Mod", 4)])
def test_a_number_computed_from_the_batch_size_is_refused_even_where_the_runs_agree(op, k):
    # float(batch == 1) and batch % 4 are the same at batch 97 and 101: they were folded to constants
    # (so batch 1 gave x + 0 where ONNX Runtime gives x + 1)
    b = Builder(3)
    size = b.node("Slice", [b.node("Shape", ["x"]), b.const(None, np.array([0], np.int64)),
                            b.const(None, np.array([1], np.int64))])
    number = b.node("Cast", [b.node(op, [size, b.const(None, np.array([k], np.int64))])], to=TensorProto.FLOAT)
    with pytest.raises(tc.CompileError, match=r"of type Add \(input '\w+' is computed from the batch size"):
        from_onnx(b.model(b.node("Add", ["x", number]), 3, opset=13))


def test_an_output_that_is_not_data_is_refused():
    b = Builder(3)
    blob = b.model(b.node("Cast", [b.node("Shape", ["x"])], to=TensorProto.FLOAT), 2)
    with pytest.raises(tc.CompileError, match="output 'y' is computed from constants and sizes only"):
        from_onnx(blob)


def test_a_second_output_tinycomp_does_not_compute_is_refused():
    b = Builder(4, sample=SAMPLE)
    b.count += 1
    b.nodes.append(helper.make_node("LayerNormalization", ["x", b.const((4,))], ["normed", "mean"], axis=-1))
    blob = b.model(b.node("Add", ["normed", "mean"]), SAMPLE, opset=17)
    with pytest.raises(tc.CompileError, match=r"of type Add \(input 'mean' is an output tinycomp does not compute"):
        from_onnx(blob)


@pytest.mark.parametrize("scale_shape", [(), (1,), (4,), (1, 4)])
def test_layer_normalization_scales_that_broadcast(scale_shape):
    b = Builder(4, seed=9, sample=SAMPLE)
    check_samples(b.model(b.node("LayerNormalization", ["x", b.const(scale_shape), b.const(scale_shape)], axis=-1),
                          SAMPLE, opset=17))


def torch_exports():
    torch, _, _, _ = torch_modules()
    nn = torch.nn

    class ReshapeLinear(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 6)

        def forward(self, x):
            return self.fc(x.reshape(x.shape[0], 4, 6)).flatten(1)

    class Heads(nn.Module):
        def __init__(self):
            super().__init__()
            self.q = nn.Linear(8, 8)

        def forward(self, x):
            n = x.size(0)
            q = self.q(x).view(n, -1, 2, 4).transpose(1, 2)
            return ((q @ q.transpose(-1, -2) / 2.0).softmax(-1) @ q).transpose(1, 2).reshape(n, -1, 8)

    class BertGelu(nn.Module):
        def __init__(self, form: int):
            super().__init__()
            self.form = form

        def forward(self, x):
            e = torch.erf(x / 2.0 ** 0.5)
            return (x * 0.5 * (1.0 + e), 0.5 * x * (1.0 + e), x * (1.0 + e) / 2)[self.form]

    return torch, ReshapeLinear, Heads, BertGelu


@pytest.mark.parametrize("opset", [11, 13, 17])
@pytest.mark.parametrize("which", ["reshape-linear", "heads"])
def test_shapes_onnx_inference_loses_after_a_computed_reshape_are_taken_from_the_import(which, opset):
    # at these opsets shape inference gives no shape (or no rank) after a Reshape to computed sizes
    torch, ReshapeLinear, Heads, _ = torch_exports()
    torch.manual_seed(opset)
    module, sample = (ReshapeLinear(), (24,)) if which == "reshape-linear" else (Heads(), (3, 8))
    check_samples(exported_by_torch(module, sample, opset), sample)


@pytest.mark.parametrize("form", [0, 1, 2], ids=["x*0.5*(1+erf)", "0.5*x*(1+erf)", "x*(1+erf)/2"])
def test_exact_gelu_as_bert_writes_it_imports_as_gelu(form):
    torch, _, _, BertGelu = torch_exports()
    blob = exported_by_torch(BertGelu(form), (6,), 17)
    assert "Erf" in {n.op_type for n in onnx.load_from_string(blob).graph.node}
    model = from_onnx(blob)
    assert [type(layer).__name__ for layer in model] == ["GELU"] and model[0].approximate == "none"
    check_samples(blob, (6,))


def test_leaky_relu_log_softmax_and_batch_normalization():
    b = Builder(4, seed=10, sample=SAMPLE)
    mean, var = b.const((3,)), b.node("Add", [b.node("Abs", [b.const((3,))]), scalar(b, 0.5)])
    h = b.node("BatchNormalization", ["x", b.const((3,)), b.const((3,)), mean, var], epsilon=1e-3)
    h = b.node("LogSoftmax", [b.node("LeakyRelu", [h], alpha=0.3)], axis=1)
    check_samples(b.model(h, SAMPLE, opset=15))


def test_log_softmax_before_opset_13_normalizes_from_its_axis_on():
    b = Builder(4, seed=11, sample=SAMPLE)
    check_samples(b.model(b.node("LogSoftmax", ["x"], axis=1), SAMPLE, opset=11))


# ---- found by a fuzzer of imported graphs: each failed before its fix
def test_flatten_of_a_1d_value_gives_one_column():
    # (N, 5) -> ReduceSum keepdims=0 -> (N,) -> Flatten -> (N, 1) -> Gemm: tnn.Flatten left (N,) as it was
    b = Builder(5, seed=12)
    h = b.node("Flatten", [b.node("ReduceSum", ["x", b.const(None, np.array([1], np.int64))], keepdims=0)], axis=1)
    check_samples(b.model(b.node("Gemm", [h, b.const((1, 2))]), 2, opset=17), (5,))


@pytest.mark.parametrize("last", ["Unsqueeze", "Squeeze"])
def test_squeeze_and_unsqueeze_after_a_reshape_to_computed_sizes(last):
    # shape inference leaves the Reshape's sizes unknown; the importer knows them
    b = Builder(4, seed=13, sample=SAMPLE)
    size0 = b.node("Gather", [b.node("Shape", ["x"]), b.const(None, np.array(0, np.int64))], axis=0)
    target = b.node("Concat", [b.node("Unsqueeze", [size0, b.const(None, np.array([0], np.int64))]),
                               b.const(None, np.array([1, -1], np.int64))], axis=0)
    h = b.node("Reshape", ["x", target])  # (N, 1, 12)
    axes = b.const(None, np.array([1], np.int64))
    out = b.node(last, [h, axes])
    check_samples(b.model(out, (1, 1, 12) if last == "Unsqueeze" else (12,), opset=17))


@pytest.mark.parametrize("case, match", [
    ("layer-norm-of-1d", r"of type LayerNormalization \(a value of shape \(None,\): its last axis is the batch"),
    ("constant-along-batch", r"of type Add \(the constant of shape \(3, 4\) varies along the batch axis"),
    ("matmul-constant-along-batch", r"of type MatMul \(the constant of shape \(2, 4, 4\) varies along the batch"),
    ("ranks-differ", r"of type Add \(two computed values of ranks 1 and 2"),
    ("gelu-constant-of-rank-3", r"node '\w+' of type Erf"),  # not fused: the (1, 1, 1) constant broadcasts
    ("softmax-over-batch", r"of type Softmax \(axis=0 normalizes across the batch"),
])
def test_graphs_whose_values_would_mix_samples_are_refused(case, match):
    b = Builder(4, sample=SAMPLE)
    if case == "layer-norm-of-1d":
        flat = b.node("ReduceSum", ["x", b.const(None, np.array([1, 2], np.int64))], keepdims=0)
        h = b.node("LayerNormalization", [flat, b.const(None, np.float32(1.0))])
    elif case == "constant-along-batch":
        h = b.node("Add", [b.node("ReduceSum", ["x", b.const(None, np.array([1], np.int64))], keepdims=0),
                           b.const((3, 4))])
    elif case == "softmax-over-batch":
        h = b.node("Softmax", ["x"], axis=0)
    elif case == "matmul-constant-along-batch":
        h = b.node("MatMul", ["x", b.const((2, 4, 4))])
    elif case == "ranks-differ":
        flat = b.node("ReduceSum", ["x", b.const(None, np.array([1, 2], np.int64))], keepdims=0)  # (N,)
        h = b.node("Add", [flat, b.node("Reshape", [flat, b.const(None, np.array([0, 1], np.int64))])])  # + (N, 1)
    else:
        erf = b.node("Erf", [b.node("Div", ["x", b.const(None, np.float32(2 ** 0.5))])])
        h = b.node("Mul", [b.node("Mul", ["x", b.node("Add", [erf, b.const(None, np.float32(1.0))])]),
                           b.const(None, np.full((1, 1, 1), 0.5, np.float32))])
    with pytest.raises(tc.CompileError, match=match):
        from_onnx(b.model(h, SAMPLE, opset=18))


def test_a_node_whose_operands_do_not_fit_is_a_compile_error():
    # (N, 3, 4) @ (N, 3, 4): ONNX Runtime refuses the graph; the import says which value fails
    b = Builder(4, sample=SAMPLE)
    blob = b.model(b.node("MatMul", ["x", "x"]), (3, 4))
    with pytest.raises(tc.CompileError, match=r"node making 'v1': on an example input of 2 rows it fails"):
        from_onnx(blob)


def test_the_graphs_static_input_shape_is_kept():
    """A mean written as ReduceSum / 3 over a declared (N, 3, 4) input: ONNX Runtime refuses another
    length, and so does the imported model, eager and compiled (it would divide by 3 regardless)."""
    b = Builder(4, seed=12, sample=SAMPLE)
    blob = b.model(b.node("Div", [b.node("ReduceSum", ["x", b.const(None, np.array([1], np.int64))], keepdims=0),
                                  scalar(b, 3.0)]), (4,))
    model = from_onnx(blob)
    assert model.input_check.sample_shape == SAMPLE
    check_samples(blob)
    longer = np.zeros((2, SAMPLE[0] + 1, *SAMPLE[1:]), np.float32)
    with pytest.raises(Exception, match="dimensions"):
        runtime(blob)(longer)
    for call in (model, tc.compile(model)):
        with pytest.raises(ValueError, match=r"inputs of shape \(N, 3, 4\)"):
            call(longer)


@pytest.mark.parametrize("opset", [13, 17])
def test_layer_norm_over_tokens_of_a_dynamic_sequence(opset):
    """From opset 17 torch writes one LayerNormalization node; with a dynamic sequence axis it was refused
    ("its sizes after the batch must be known"), though it reads only the last, known size."""
    torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install -e '.[torch]')")
    torch.manual_seed(opset)
    module = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16))
    blob = exported_by_torch(module, (5, 8), opset, dynamic_axis=1)
    model = from_onnx(blob)
    for seq in (3, 7):
        x = np.random.default_rng(seq).standard_normal((2, seq, 8)).astype(np.float32)
        want = runtime(blob)(x)
        assert_close_to_framework(model(x).data, want, f"eager, seq {seq}", 1e-5)
        assert_close_to_framework(tc.compile(model)(x).data, want, f"compiled, seq {seq}", 1e-5)
