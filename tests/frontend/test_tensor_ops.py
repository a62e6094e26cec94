"""Tensor ops of issue 15 (eager, TinyTorch modules 01-03 behaviours): reductions over tuples of axes,
transpose of any two axes, matmul with broadcast leading dimensions, exp/log/sqrt/abs/`**`, and the
error wording TinyTorch's own tests look for. Our tests of the same behaviours, against float64 NumPy."""

import numpy as np
import pytest

from tinycomp.nn import Layer, Linear, Tensor

RNG = np.random.default_rng(15)
X4 = RNG.standard_normal((2, 3, 4, 5))
SPECIALS = np.array([0.0, -0.0, 1.0, -1.0, 2.5, -2.5, 1e-30, 1e30, 1e-45, np.inf, -np.inf, np.nan], np.float32)


def f64(t):
    return np.asarray(t.data, dtype=np.float64)


def x32(a):
    """What a Tensor holds for `a`, widened back to float64: the exact input of both computations."""
    return np.asarray(np.float32(a), np.float64)


# ---------------------------------------------------------------- reductions

@pytest.mark.parametrize("name", ["sum", "mean", "max"])
@pytest.mark.parametrize("axis", [(1, 2), (0, 3), (-1, -3), (0, 1, 2, 3), (2,), [1, 3], ()])
@pytest.mark.parametrize("keepdims", [False, True])
def test_reduction_over_a_tuple_of_axes(name, axis, keepdims):
    got = getattr(Tensor(X4), name)(axis=axis, keepdims=keepdims)
    want = getattr(np, name)(x32(X4), axis=tuple(axis), keepdims=keepdims)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(f64(got), want, rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("axis, match", [((1, 1), "duplicate"), ((0, 4), "out of range"), (5, "out of range")])
def test_reduction_axis_errors(axis, match):
    with pytest.raises(ValueError, match=match):
        Tensor(X4).sum(axis=axis)


def test_reduction_axis_must_be_integers():
    with pytest.raises(TypeError, match="axis"):
        Tensor(X4).mean(axis=1.5)


# ---------------------------------------------------------------- transpose and matmul

@pytest.mark.parametrize("dims", [(0, 3), (1, 2), (-1, -2), (0, -1), (2, 2)])
def test_transpose_any_two_axes(dims):
    got = Tensor(X4).transpose(*dims)
    np.testing.assert_array_equal(f64(got), np.swapaxes(x32(X4), *dims))


@pytest.mark.parametrize("sa, sb", [((2, 1, 3, 4), (5, 4, 2)), ((3, 4), (2, 4, 5)), ((7, 2, 3), (7, 3, 6)),
                                    ((4,), (2, 4, 3)), ((2, 3, 4), (4,)), ((1, 3, 4), (6, 1, 4, 2))])
def test_matmul_broadcasts_leading_dimensions(sa, sb):
    a, b = RNG.standard_normal(sa), RNG.standard_normal(sb)
    got = Tensor(a) @ Tensor(b)
    want = np.matmul(x32(a), x32(b))
    assert got.shape == want.shape
    np.testing.assert_allclose(f64(got), want, rtol=1e-5, atol=1e-5)


def test_matmul_leading_dimensions_that_do_not_broadcast():
    with pytest.raises(ValueError, match="shape mismatch"):
        Tensor(np.ones((2, 3, 4))) @ Tensor(np.ones((3, 4, 5)))


def test_validate_matmul_shapes_accepts_compatible_operands():
    assert Tensor(np.ones((2, 2)))._validate_matmul_shapes(Tensor(np.ones((2, 3)))) is None
    assert Tensor(np.ones((1, 3)))._validate_matmul_shapes(Tensor(np.ones((3, 1)))) is None


@pytest.mark.parametrize("other", [[[1, 2], [3, 4]], "text", None, 2.0])
def test_validate_matmul_shapes_names_the_non_tensor_type(other):
    with pytest.raises(TypeError) as info:
        Tensor(np.ones((2, 2)))._validate_matmul_shapes(other)
    assert "requires Tensor" in str(info.value) and type(other).__name__ in str(info.value)


def test_validate_matmul_shapes_zero_d():
    with pytest.raises(ValueError, match="at least 1D"):
        Tensor(5.0)._validate_matmul_shapes(Tensor(np.ones((2, 2))))
    with pytest.raises(ValueError, match="at least 1D"):
        Tensor(np.ones((2, 2))) @ Tensor(5.0)


def test_matmul_mismatch_carries_both_wordings():
    with pytest.raises(ValueError) as small:
        Tensor([[1, 2]])._validate_matmul_shapes(Tensor([[1], [2], [3]]))
    assert "Inner dimensions don't match: 2 vs 3" in str(small.value)
    with pytest.raises(ValueError) as big:
        Tensor(np.ones((32, 128))).matmul(Tensor(np.ones((256, 10))))
    msg = str(big.value)
    for words in ("Cannot perform matrix multiplication: (32, 128) @ (256, 10). Inner dimensions must match: "
                  "128 ≠ 256", "shape mismatch", "Inner dimensions don't match: 128 vs 256"):
        assert words in msg


def test_matmul_takes_a_weight_rebound_to_an_array():
    layer = Linear(4, 3)
    w = RNG.standard_normal((4, 3)).astype(np.float32)
    layer.weight = w  # an ndarray, as a user may assign
    x = RNG.standard_normal((5, 4))
    np.testing.assert_allclose(f64(layer(Tensor(x))), x32(x) @ np.float64(w), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(f64(w @ Tensor(np.ones((3, 2)))), np.float64(w) @ np.ones((3, 2)), rtol=1e-6)


def test_reshape_element_count_message():
    with pytest.raises(ValueError) as info:
        Tensor([1, 2, 3, 4, 5, 6]).reshape(2, 2)
    assert "Element count mismatch: 6 elements vs 4 elements" in str(info.value)


# ---------------------------------------------------------------- elementwise math

@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # log(-1), sqrt(-1): NumPy warns, as eagerly
@pytest.mark.parametrize("name, ref", [("exp", np.exp), ("log", np.log), ("sqrt", np.sqrt), ("abs", np.abs)])
def test_unary_math_matches_float64(name, ref):
    data = np.concatenate([SPECIALS, np.float32(RNG.uniform(-20, 20, 64))])
    got = getattr(Tensor(data), name)()
    with np.errstate(all="ignore"):
        want = ref(x32(data))
    assert got.dtype == np.float32
    np.testing.assert_allclose(f64(got), want.astype(np.float32), rtol=3e-7, atol=0)
    assert np.array_equal(np.isnan(f64(got)), np.isnan(want))


def test_abs_builtin():
    np.testing.assert_array_equal(f64(abs(Tensor([-1.5, 2.0, -0.0]))), [1.5, 2.0, 0.0])


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("exponent", [2, 3, -1, -2, 0.5, -0.5, 1.5, 0, 1, 2.0])
def test_pow_by_a_number(exponent):
    data = np.concatenate([SPECIALS, np.float32(RNG.uniform(0.1, 5, 32))])
    got = Tensor(data) ** exponent
    with np.errstate(all="ignore"):
        want = np.power(x32(data), float(exponent))
    assert got.dtype == np.float32 and got.shape == data.shape
    finite = np.isfinite(want) & (np.abs(want) < 3e38)
    np.testing.assert_allclose(f64(got)[finite], want[finite], rtol=3e-7, atol=1e-44)


def test_pow_of_ones_is_what_tinytorch_expects():
    np.testing.assert_array_equal(f64(Tensor(np.ones(3)) ** 2), np.ones(3))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_half_power_is_sqrt_as_numpy_computes_it():
    got = f64(Tensor([-0.0, -np.inf, 4.0]) ** 0.5)
    assert np.signbit(got[0]) and got[0] == 0 and np.isnan(got[1]) and got[2] == 2.0


@pytest.mark.parametrize("exponent", [Tensor(2.0), "2", None, True])
def test_pow_exponent_must_be_a_number(exponent):
    with pytest.raises(TypeError, match="exponent"):
        Tensor([1.0, 2.0]) ** exponent


def test_tinytorch_tensor_names_numel_view_contiguous_masked_fill_memory_footprint():
    """TinyTorch's module-01 Tensor has them (its unit tests call numel(); module 12 masks with
    masked_fill): they raised AttributeError here."""
    t = Tensor(np.arange(6.0).reshape(2, 3))
    assert t.numel() == 6 and t.memory_footprint() == 24
    np.testing.assert_array_equal(t.view(3, 2).data, t.reshape(3, 2).data)
    assert t.transpose().contiguous().shape == (3, 2)
    mask = np.array([[True, False, False], [False, False, True]])
    np.testing.assert_array_equal(t.masked_fill(mask, -np.inf).data, np.where(mask, -np.inf, t.data))


def test_list_operands_and_a_list_of_0d_tensors_as_tinytorch_takes_them():
    t = Tensor([[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_array_equal((t + [1, 2]).data, [[2, 4], [4, 6]])
    np.testing.assert_array_equal(([1, 2] * t).data, [[1, 4], [3, 8]])
    np.testing.assert_array_equal((t - (1, 2)).data, [[0, 0], [2, 2]])
    losses = [Tensor(3.0), Tensor(1.5)]
    np.testing.assert_array_equal(Tensor(losses).data, [3.0, 1.5])
    np.testing.assert_array_equal(Tensor([[Tensor(1.0), 2.0]]).data, [[1.0, 2.0]])


def test_the_tinytorch_names_compile():
    import tinycomp as tc

    class Masked(Layer):
        def forward(self, x):
            scores = x.view(-1, 4, 3).transpose(1, 2).contiguous()
            return scores.masked_fill(np.triu(np.ones((3, 4)), 1) > 0, -1e9) + [1.0, 2.0, 3.0, 4.0]

    model = Masked()
    x = np.random.default_rng(0).standard_normal((5, 12)).astype(np.float32)
    np.testing.assert_array_equal(tc.compile(model)(x).data, model(Tensor(x)).data)
