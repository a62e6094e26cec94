"""Activations against float64 formulas written here (DESIGN.md §1, §4; issue 2)."""

import re
import warnings

import numpy as np
import pytest

from tinycomp.nn import GELU, Layer, ReLU, Sigmoid, Softmax, Tanh, Tensor


def sigmoid64(x):
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


def softmax64(x, axis=-1):
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


REFS = {
    ReLU: lambda x: np.maximum(x, 0.0),
    Sigmoid: sigmoid64,
    Tanh: np.tanh,
    GELU: lambda x: x * sigmoid64(1.702 * x),
}

X = np.linspace(-8.0, 8.0, 401).astype(np.float32).reshape(401)
X2 = np.random.default_rng(0).standard_normal((16, 33)).astype(np.float32) * 3


def f64(t):
    return np.asarray(t.data, dtype=np.float64)


@pytest.mark.parametrize("cls", list(REFS), ids=lambda c: c.__name__)
@pytest.mark.parametrize("x", [X, X2, np.float32(0.5) * np.ones((2, 3, 4), np.float32)], ids=["1d", "2d", "3d"])
def test_elementwise_activation_matches_float64(cls, x):
    got = cls()(Tensor(x))
    assert isinstance(got, Tensor)
    assert got.dtype == np.float32
    assert got.shape == x.shape
    np.testing.assert_allclose(f64(got), REFS[cls](x.astype(np.float64)), rtol=2e-6, atol=1e-7)


def test_forward_and_call_agree():
    for cls in REFS:
        layer = cls()
        np.testing.assert_array_equal(layer.forward(Tensor(X2)).data, layer(Tensor(X2)).data)


def test_gelu_is_x_times_sigmoid_1702x():
    x = np.array([-5.0, -1.0, -0.1, 0.0, 0.1, 1.0, 5.0], np.float32)
    want = x.astype(np.float64) / (1.0 + np.exp(-1.702 * x.astype(np.float64)))
    np.testing.assert_allclose(f64(GELU()(Tensor(x))), want, rtol=2e-6, atol=1e-8)


def test_sigmoid_saturates_without_overflow_warning():
    x = Tensor([-1000.0, -100.0, 0.0, 100.0, 1000.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = Sigmoid()(x)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        y2 = Sigmoid()(x)
    for out in (y, y2):
        assert np.all(np.isfinite(out.data))
        np.testing.assert_allclose(f64(out), sigmoid64([-1000.0, -100.0, 0.0, 100.0, 1000.0]), atol=1e-30)
        assert out.data[0] == 0.0 and out.data[-1] == 1.0 and out.data[2] == 0.5


def test_saturating_activations_under_strict_errstate():
    """Underflow to 0 is the right answer, so it must not raise even with all='raise'."""
    x = Tensor([-1000.0, 1000.0, -1e4, 1e4])
    with np.errstate(all="raise"):
        s = Sigmoid()(x)
        g = GELU()(x)
        t = Tanh()(x)
        sm = Softmax()(Tensor([[1e4, -1e4, 0.0]]))
    np.testing.assert_array_equal(s.data, [0.0, 1.0, 0.0, 1.0])
    np.testing.assert_array_equal(g.data, [0.0, 1000.0, 0.0, 1e4])
    np.testing.assert_array_equal(t.data, [-1.0, 1.0, -1.0, 1.0])
    np.testing.assert_array_equal(sm.data, [[1.0, 0.0, 0.0]])


def test_softmax_matches_float64_and_rows_sum_to_one():
    got = Softmax()(Tensor(X2))
    assert got.dtype == np.float32 and got.shape == X2.shape
    np.testing.assert_allclose(f64(got), softmax64(X2), rtol=2e-6, atol=1e-8)
    np.testing.assert_allclose(f64(got).sum(axis=-1), 1.0, rtol=1e-6)


def test_softmax_dim_argument():
    x = X2[:4, :5]
    np.testing.assert_allclose(f64(Softmax().forward(Tensor(x), dim=0)), softmax64(x, axis=0), rtol=2e-6)
    np.testing.assert_allclose(f64(Softmax()(Tensor(x), dim=-1)), softmax64(x, axis=-1), rtol=2e-6)


@pytest.mark.parametrize("dim", ["a", 1.5, None, True])
def test_softmax_dim_must_be_an_int(dim):
    with pytest.raises(TypeError, match=f"Softmax dim must be an int.*got {re.escape(repr(dim))}"):
        Softmax(dim=dim)
    with pytest.raises(TypeError, match="Softmax dim must be an int"):
        Softmax()(Tensor(X2[:2, :3]), dim=dim if dim is not None else "b")
    assert Softmax(dim=np.int64(0)).dim == 0


def test_softmax_extreme_rows():
    x = np.array(
        [
            [1e4, -1e4, 0.0, 1e4],  # huge logits: no overflow, no NaN
            [-1e4, -1e4 + 1.0, -1e4 + 2.0, -1e4],  # huge negative logits: shift keeps them meaningful
            [3.0, 3.0, 3.0, 3.0],  # equal values: uniform
            [-np.inf, -np.inf, -np.inf, -np.inf],  # all -inf: zeros, not NaN
            [-np.inf, 0.0, -np.inf, 0.0],  # some -inf: they get 0
        ],
        dtype=np.float32,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = f64(Softmax()(Tensor(x)))
    assert not np.any(np.isnan(y))
    np.testing.assert_allclose(y[0], [0.5, 0.0, 0.0, 0.5], atol=1e-7)
    np.testing.assert_allclose(y[1], softmax64([0.0, 1.0, 2.0, 0.0]), rtol=2e-6)
    np.testing.assert_allclose(y[2], [0.25] * 4, rtol=1e-7)
    np.testing.assert_array_equal(y[3], [0.0] * 4)
    np.testing.assert_allclose(y[4], [0.0, 0.5, 0.0, 0.5], rtol=1e-7)


def test_relu_of_nan_is_nan():
    y = ReLU()(Tensor([np.nan, -1.0, 2.0, -np.inf, np.inf]))
    assert np.isnan(y.data[0])
    np.testing.assert_array_equal(y.data[1:], [0.0, 2.0, 0.0, np.inf])


@pytest.mark.parametrize("cls", [ReLU, Sigmoid, Tanh, GELU, Softmax])
def test_activations_are_parameter_free_layers(cls):
    layer = cls()
    assert isinstance(layer, Layer)
    assert layer.parameters() == []
    assert layer.training is True
    layer.eval()
    assert layer.training is False


@pytest.mark.parametrize("cls", [ReLU, Sigmoid, Tanh, GELU, Softmax])
def test_activations_do_not_modify_their_input(cls):
    x = Tensor(X2)
    before = x.data.copy()
    cls()(x)
    np.testing.assert_array_equal(x.data, before)
