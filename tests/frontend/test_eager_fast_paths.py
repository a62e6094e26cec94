"""The eager fast paths (issue 16) give what the general per-op path gives, bit for bit, and step
aside wherever that path would do something else: errors, other dtypes, rebound arrays, overrides.

Each case runs the layer twice: as users call it (fast path) and as the general path runs it, by
calling `apply_op` for every operation the layer's forward is defined by."""

from __future__ import annotations

import numpy as np
import pytest

from tinycomp.aligned import ALIGN_MIN_BYTES, LINE
from tinycomp.frontend.tensor import apply_op
from tinycomp.nn import GELU, Dropout, Layer, Linear, ReLU, Sequential, Sigmoid, Tanh, Tensor


def general_linear(layer: Linear, x: Tensor) -> Tensor:
    y = apply_op("matmul", x, layer.weight)
    return apply_op("add", y, layer.bias) if layer.bias is not None else y


def assert_same(got: Tensor, want: Tensor) -> None:
    assert type(got) is Tensor and got.data.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_array_equal(got.data, want.data)  # nan matches nan, same bits otherwise
    assert not got.requires_grad and got.grad is None


RNG = np.random.default_rng(16)
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # nan/inf inputs


@pytest.mark.parametrize("shape", [(1, 6), (5, 6), (6,), (2, 3, 6), (0, 6)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_matmul_then_add(shape, bias):
    layer = Linear(6, 4, bias=bias)
    if bias:
        layer.bias = Tensor(RNG.standard_normal(4))
    x = Tensor(RNG.standard_normal(shape))
    assert_same(layer(x), general_linear(layer, x))


def test_linear_keeps_nan_inf_and_broadcasts_a_bias_as_add_does():
    layer = Linear(3, 2)
    x = Tensor([[np.nan, 1.0, 2.0], [np.inf, -np.inf, 0.0], [1e30, 1e30, 1e30]])
    assert_same(layer(x), general_linear(layer, x))
    layer.bias = Tensor(np.ones((3, 2)))  # a bias of the output's own shape
    assert_same(layer(x), general_linear(layer, x))
    layer.bias = Tensor(np.ones((4, 3, 2)))  # one that widens the output: NumPy refuses in place
    assert layer(x).shape == (4, 3, 2)
    assert_same(layer(x), general_linear(layer, x))


def test_linear_errors_are_the_op_tables():
    layer = Linear(128, 10)
    with pytest.raises(ValueError, match=r"Cannot perform matrix multiplication: \(32, 256\) @ \(128, 10\)"):
        layer(Tensor(np.zeros((32, 256))))
    layer.bias = Tensor(np.zeros(7))
    with pytest.raises(ValueError, match="shape mismatch"):
        layer(Tensor(np.zeros((2, 128))))
    with pytest.raises(ValueError, match="at least 1D"):
        layer(Tensor(3.0))


def test_linear_with_rebound_float64_data_gives_float32_as_before():
    layer = Linear(4, 3)
    layer.weight.data = RNG.standard_normal((4, 3))  # float64, as TinyTorch code assigns
    layer.bias.data = RNG.standard_normal(3)
    x = Tensor(RNG.standard_normal((2, 4)))
    assert_same(layer(x), general_linear(layer, x))
    layer.weight = RNG.standard_normal((4, 3)).astype(np.float32)  # a plain array: general path
    assert_same(layer(x), general_linear(layer, x))


@pytest.mark.parametrize("act", [ReLU, Sigmoid, Tanh, GELU])
def test_activations_match_their_op(act):
    x = Tensor(np.concatenate([RNG.standard_normal(50) * 20, [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e4, -1e4]]))
    layer = act()
    got = layer(x)
    assert_same(got, apply_op(layer.op, x))
    np.testing.assert_array_equal(np.signbit(got.data), np.signbit(apply_op(layer.op, x).data))


def test_activation_of_an_array_still_goes_through_apply_op():
    x = RNG.standard_normal((2, 3)).astype(np.float32)
    assert_same(ReLU()(x), apply_op("relu", Tensor(x)))


def test_sequential_eval_still_honours_an_overridden_call_and_plain_functions():
    calls = []

    class Logged(Layer):
        def __call__(self, x, *args, **kwargs):
            calls.append("call")
            return super().__call__(x, *args, **kwargs)

        def forward(self, x):
            calls.append("forward")
            return x * 2

    model = Sequential(Linear(3, 3), Logged(), lambda t: t + 1, ReLU(), Dropout(0.5)).eval()
    x = Tensor(RNG.standard_normal((2, 3)))
    y = model(x)
    assert calls == ["call", "forward"]
    want = apply_op("relu", apply_op("add", apply_op("mul", general_linear(model[0], x), 2), 1))
    assert_same(y, want)


def test_layer_call_passes_extra_arguments_on():
    class Scaled(Layer):
        def forward(self, x, scale=1.0, *, shift=0.0):
            return x * scale + shift

    layer, x = Scaled(), Tensor([1.0, 2.0])
    np.testing.assert_array_equal(layer(x, 3.0, shift=1.0).data, [4.0, 7.0])
    np.testing.assert_array_equal(layer(x).data, [1.0, 2.0])


def test_tensor_from_arrays_copies_aligned_float32():
    for source in (RNG.standard_normal((3, 5)), np.arange(6, dtype=np.int64).reshape(2, 3),
                   np.asfortranarray(RNG.standard_normal((4, 3)).astype(np.float32)), np.array([True, False]),
                   RNG.standard_normal((40, 30))[::2, ::-1], np.arange(2048, dtype=np.int64).reshape(32, 64).T,
                   np.ones(2048, bool)):
        t = Tensor(source)
        assert type(t.data) is np.ndarray and t.data.dtype == np.float32 and t.data.flags.c_contiguous
        # the float32 size decides: 2,048 bools are 2 KB given, 8 KB stored
        assert t.data.nbytes < ALIGN_MIN_BYTES or t.data.ctypes.data % LINE == 0
        np.testing.assert_array_equal(t.data, source.astype(np.float32))
        assert not np.shares_memory(t.data, source)
    with pytest.raises(TypeError, match="numeric"):
        Tensor(np.array(["a"]))
    # a Tensor holding an ndarray subclass (adopted as it is) copies into a plain array, any size
    for n in (5, 2048):
        held = Tensor._adopt(np.ma.masked_array(np.ones(n, np.float32), mask=np.arange(n) == 1))
        assert type(Tensor(held).data) is np.ndarray


def test_grad_slots_default_per_tensor_and_stay_per_tensor():
    # op results and plain Tensors read the class defaults; setting them touches that tensor only
    a, b = Tensor([1.0, 2.0]), Tensor([3.0, 4.0], requires_grad=True)
    c = a + b
    assert (a.requires_grad, a.grad, b.requires_grad, b.grad, c.requires_grad, c.grad) == (False, None, True, None,
                                                                                           False, None)
    c.grad = Tensor([1.0, 1.0])
    c.requires_grad = True
    assert a.grad is None and not a.requires_grad and (a * 2).grad is None and not Tensor([0.0]).requires_grad


@pytest.mark.parametrize("left, right, words", [
    ((32, 128), (256, 10), "Cannot perform matrix multiplication: (32, 128) @ (256, 10). Inner dimensions must "
                           "match: 128 ≠ 256"),
    ((), (2, 2), "at least 1D"),
    ((2, 3), (), "at least 1D"),
])
def test_matmul_errors_come_from_the_one_shape_rule(left, right, words):
    # `matmul` checks the operand type, the op table's shape rule the shapes: each way of writing it
    # (Tensor @ Tensor, Tensor @ array, array @ Tensor) gives the rule's message, before and after a
    # successful call of the same signature has been remembered
    a, b = np.ones(left, np.float32), np.ones(right, np.float32)
    for op in (lambda: Tensor(a) @ Tensor(b), lambda: Tensor(a).matmul(b), lambda: a @ Tensor(b)):
        for _ in range(2):
            with pytest.raises(ValueError) as info:
                op()
            assert words in str(info.value)
    with pytest.raises(TypeError, match="requires Tensor, got list"):
        Tensor(a) @ [[1.0]]
