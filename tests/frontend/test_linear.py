"""Linear (DESIGN.md §1, issue 2): shapes, init, parameters, figures, bad sizes."""

import math

import numpy as np
import pytest

from tinycomp.nn import INIT_SCALE_FACTOR, Layer, Linear, ReLU, Sequential, Tensor, manual_seed


def f64(t):
    return np.asarray(t.data, dtype=np.float64)


def test_shapes_and_forward_matches_float64():
    layer = Linear(5, 3)
    assert isinstance(layer, Layer)
    assert layer.in_features == 5 and layer.out_features == 3
    assert layer.weight.shape == (5, 3) and layer.weight.dtype == np.float32
    assert layer.bias.shape == (3,) and layer.bias.dtype == np.float32
    np.testing.assert_array_equal(layer.bias.data, np.zeros(3))
    layer.bias = Tensor([0.5, -1.0, 2.0])
    x = np.random.default_rng(1).standard_normal((7, 5)).astype(np.float32)
    y = layer(Tensor(x))
    assert isinstance(y, Tensor) and y.shape == (7, 3) and y.dtype == np.float32
    want = x.astype(np.float64) @ f64(layer.weight) + f64(layer.bias)
    np.testing.assert_allclose(f64(y), want, rtol=1e-5, atol=1e-6)
    # batched (3-D) and 1-D inputs
    assert layer(Tensor(np.ones((2, 4, 5)))).shape == (2, 4, 3)
    np.testing.assert_allclose(f64(layer(Tensor(x[0]))), want[0], rtol=1e-5, atol=1e-6)


def test_bias_false():
    layer = Linear(4, 2, bias=False)
    assert layer.bias is None
    assert layer.parameters() == [layer.weight]
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_allclose(f64(layer(Tensor(x))), x.astype(np.float64) @ f64(layer.weight), rtol=1e-5)
    assert repr(layer) == "Linear(in_features=4, out_features=2, bias=False)"


def test_parameters_are_weight_then_bias():
    layer = Linear(3, 2)
    params = layer.parameters()
    assert len(params) == 2
    assert params[0] is layer.weight and params[1] is layer.bias
    assert all(isinstance(p, Tensor) for p in params)


def test_repr():
    assert repr(Linear(784, 256)) == "Linear(in_features=784, out_features=256, bias=True)"


def test_init_std_is_lecun_on_a_large_layer():
    assert INIT_SCALE_FACTOR == 1.0
    manual_seed(1234)
    layer = Linear(1000, 500)
    w = f64(layer.weight)
    expected_std = math.sqrt(1.0 / 1000)
    assert w.std() == pytest.approx(expected_std, rel=0.02)
    assert abs(w.mean()) < 0.01 * expected_std
    # roughly normal: ~68.3% within one std
    assert np.mean(np.abs(w) < expected_std) == pytest.approx(0.6827, abs=0.01)
    small = f64(Linear(16, 500).weight)
    assert small.std() == pytest.approx(math.sqrt(1.0 / 16), rel=0.05)


def test_parameter_counts_and_memory():
    first = Linear(784, 256)
    assert sum(p.size for p in first.parameters()) == 200_960
    model = Sequential(Linear(784, 256), ReLU(), Linear(256, 128), ReLU(), Linear(128, 10))
    params = model.parameters()
    assert sum(p.size for p in params) == 235_146
    nbytes = sum(p.data.nbytes for p in params)
    assert nbytes == 940_584 == 235_146 * 4
    assert round(nbytes / 1024) == 919


def test_reference_mlp_output_shape():
    model = Sequential(Linear(784, 256), ReLU(), Linear(256, 128), ReLU(), Linear(128, 10))
    assert model(Tensor(np.zeros((32, 784)))).shape == (32, 10)


@pytest.mark.parametrize(
    "sizes",
    [(0, 5), (5, 0), (-1, 5), (5, -3), (2.5, 5), (5, 2.0), ("4", 5), (None, 5), (True, 5)],
)
def test_bad_sizes_raise_value_error(sizes):
    with pytest.raises(ValueError):
        Linear(*sizes)


def test_numpy_integer_sizes_are_accepted():
    layer = Linear(np.int64(3), np.int32(2))
    assert layer.weight.shape == (3, 2)
    assert type(layer.in_features) is int


def test_array_weights_and_an_array_input_give_a_float32_tensor():
    """A bias-free Linear with its weight rebound to an array, called on an array, returned NumPy's
    float64 ndarray (both operands plain arrays)."""
    layer = Linear(3, 2, bias=False)
    layer.weight = np.arange(6.0).reshape(3, 2)
    y = layer(np.ones((4, 3)))
    assert type(y) is Tensor and y.dtype == np.float32
    np.testing.assert_array_equal(y.data, np.full((4, 2), [6.0, 9.0], np.float32))


def test_weight_data_assigned_a_tensor_is_read_compiled_as_eager():
    """TinyTorch once let `t.data = Tensor(...)`; eager ran it, compiled failed inside with
    'Tensor' object has no attribute 'flags'."""
    import tinycomp as tc
    layer = Linear(4, 2)
    fast = tc.compile(layer)
    x = np.ones((3, 4), np.float32)
    fast(x)
    layer.weight.data = Tensor(np.full((4, 2), 2.0))
    for call in (fast, tc.compile(layer)):
        np.testing.assert_allclose(call(x).data, layer(Tensor(x)).data, rtol=1e-6)
        np.testing.assert_allclose(call(x).data, np.broadcast_to(8.0 + layer.bias.data, (3, 2)), rtol=1e-6)
