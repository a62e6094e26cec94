"""Tensor (DESIGN.md §1, issue 2): float32 copies, arithmetic, matmul and its errors, shape ops."""

import re

import numpy as np
import pytest

from tinycomp.aligned import ALIGN_MIN_BYTES, LINE
from tinycomp.nn import Linear, Tensor

MISMATCH = (
    "Cannot perform matrix multiplication: (32, 128) @ (256, 10). Inner dimensions must match: 128 ≠ 256"
)


def f64(t):
    return np.asarray(t.data, dtype=np.float64)


# ---------------------------------------------------------------- creation


@pytest.mark.parametrize(
    "source",
    [
        [[1, 2, 3], [4, 5, 6]],
        [[1.5, -2.25], [3.0, 4.125]],
        np.array([[0.1, 0.2], [0.3, 0.4]], dtype=np.float64),
        np.array([[1, -2], [3, 4]], dtype=np.int64),
        np.array([[1, 2], [3, 4]], dtype=np.int32),
        np.array([True, False, True]),
        np.array([1.0, 2.0], dtype=np.float32),
        7,
        2.5,
    ],
)
def test_creation_is_a_float32_copy(source):
    t = Tensor(source)
    expected = np.asarray(source, dtype=np.float64)
    assert isinstance(t.data, np.ndarray)
    assert t.data.dtype == np.float32
    assert t.dtype == np.float32
    assert t.shape == expected.shape
    np.testing.assert_allclose(f64(t), expected, rtol=1e-7)
    if isinstance(source, np.ndarray):
        assert not np.shares_memory(t.data, source)
    assert t.data.flags.c_contiguous and t.data.flags.writeable


def test_mutating_the_source_does_not_change_the_tensor():
    src = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)
    t = Tensor(src)
    src[0, 0] = 100.0
    assert t.data[0, 0] == 1.0

    lst = [1, 2, 3]
    t2 = Tensor(lst)
    lst[0] = 99
    assert t2.data[0] == 1.0

    t3 = Tensor(t2)
    t2.data[1] = -5.0
    assert t3.data[1] == 2.0


@pytest.mark.parametrize("shape", [(), (0,), (3, 0), (1,), (5, 7), (1023,), (1024,), (784, 256), (2, 3, 4), (8, 16, 9)])
@pytest.mark.parametrize("source", [np.asarray, list, Tensor])
def test_storage_is_a_c_contiguous_copy_on_a_cache_line_from_4_kb(shape, source):
    src = np.random.default_rng(0).standard_normal(shape)
    given = source(src) if source is not list else src.tolist()
    t = Tensor(given)
    assert t.shape == shape and t.data.dtype == np.float32 and t.data.flags.c_contiguous
    if t.data.nbytes >= ALIGN_MIN_BYTES:  # below that a split line costs kernels nothing measurable
        assert t.data.ctypes.data % LINE == 0
    assert not np.shares_memory(t.data, given.data if isinstance(given, Tensor) else src)
    np.testing.assert_array_equal(t.data, src.astype(np.float32))


def test_float64_values_are_rounded_to_float32():
    t = Tensor(np.array([0.1], dtype=np.float64))
    assert t.data[0] == np.float32(0.1)


def test_properties():
    t = Tensor(np.zeros((2, 3, 4)))
    assert t.shape == (2, 3, 4)
    assert t.size == 24
    assert t.ndim == 3
    assert t.dtype == np.float32
    assert t.requires_grad is False
    assert t.grad is None
    assert Tensor([1.0], requires_grad=True).requires_grad is True
    assert t.numpy() is t.data


def test_repr_is_readable():
    r = repr(Tensor([[1.0, 2.0], [3.0, 4.0]]))
    assert r.startswith("Tensor(")
    assert "shape=(2, 2)" in r
    for v in ("1.", "2.", "3.", "4."):
        assert v in r
    assert "requires_grad=True" in repr(Tensor([1.0], requires_grad=True))
    big = repr(Tensor(np.arange(10_000.0)))
    assert len(big) < 200 and "shape=(10000,)" in big


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "data, type_name",
    [("hello", "str"), (b"bytes", "bytes"), (object(), "object"), ({"a": 1}, "dict"), (None, "NoneType")],
)
def test_non_numeric_data_raises_type_error_naming_the_type(data, type_name):
    with pytest.raises(TypeError, match=type_name):
        Tensor(data)


def test_list_of_strings_raises_type_error():
    with pytest.raises(TypeError, match="list"):
        Tensor(["a", "b"])


def test_ragged_list_raises_type_error():
    with pytest.raises(TypeError):
        Tensor([[1, 2], [3]])


@pytest.mark.parametrize("data", [np.full((2, 3), 1 + 5j), np.ones((2, 3), object), np.zeros((2, 3), "M8[s]")],
                         ids=["complex", "object", "datetime"])
def test_an_ndarray_operand_is_checked_as_tensor_data(data):
    """x + array and a model called on an array refuse what Tensor(array) refuses (no silent
    dropping of an imaginary part)."""
    with pytest.raises(TypeError, match=re.escape(str(data.dtype))):
        Tensor(np.ones((2, 3))) + data
    with pytest.raises(TypeError, match=re.escape(str(data.dtype))):
        Linear(3, 2)(data)


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
def test_an_ndarray_subclass_operand_is_read_as_tensor_reads_it():
    masked = np.ma.masked_array(np.arange(6.0).reshape(2, 3), mask=np.eye(2, 3, dtype=bool))
    layer = Linear(3, 2)
    np.testing.assert_array_equal(layer(masked).data, layer(Tensor(masked)).data)
    matrix = np.matrix(np.arange(6.0).reshape(2, 3))
    got = Tensor(np.ones((2, 3))) * matrix  # elementwise, as for Tensor(matrix), not matrix's product
    np.testing.assert_array_equal(got.data, np.asarray(matrix, np.float32))
    assert type(got.data) is np.ndarray


def test_np_array_of_a_tensor_is_a_copy_as_for_an_ndarray():
    t = Tensor(A)
    for copied in (np.array(t), np.array(t, copy=True), np.array(t, dtype=np.float64)):
        assert not np.shares_memory(copied, t.data)
        copied[...] = -1
    np.testing.assert_array_equal(f64(t), A.astype(np.float32))
    assert np.shares_memory(np.asarray(t), t.data)  # asarray does not copy, as for an ndarray
    with pytest.raises(ValueError, match="copy=False"):
        np.asarray(t, dtype=np.float64, copy=False)


# ---------------------------------------------------------------- arithmetic

A = np.array([[1.0, -2.0, 3.5], [0.25, 4.0, -6.0]])
V = np.array([2.0, -0.5, 4.0])


@pytest.mark.parametrize(
    "op, ref",
    [
        (lambda a, b: a + b, lambda a, b: a + b),
        (lambda a, b: a - b, lambda a, b: a - b),
        (lambda a, b: a * b, lambda a, b: a * b),
        (lambda a, b: a / b, lambda a, b: a / b),
    ],
    ids=["add", "sub", "mul", "div"],
)
def test_binary_ops_with_scalars_tensors_and_broadcasting(op, ref):
    t, v = Tensor(A), Tensor(V)
    cases = [
        (op(t, 3.0), ref(A, 3.0)),
        (op(3.0, t), ref(3.0, A)),
        (op(t, 2), ref(A, 2)),
        (op(2, t), ref(2, A)),
        (op(t, t), ref(A, A)),
        (op(t, v), ref(A, V)),  # (n,) broadcast over (m, n)
        (op(v, t), ref(V, A)),
        (op(A, t), ref(A, A)),  # ndarray on the left
        (op(V, t), ref(V, A)),
        (op(t, V), ref(A, V)),
        (op(np.float64(1.5), t), ref(1.5, A)),
    ]
    for got, want in cases:
        assert isinstance(got, Tensor)
        assert got.dtype == np.float32
        assert got.shape == want.shape
        np.testing.assert_allclose(f64(got), want, rtol=1e-6)


def test_neg():
    np.testing.assert_array_equal(f64(-Tensor(A)), -A)


def test_broadcast_mismatch_raises():
    with pytest.raises(ValueError, match="shape mismatch"):
        Tensor(np.zeros((2, 3))) + Tensor(np.zeros(4))


def test_unsupported_operand_raises_type_error():
    with pytest.raises(TypeError):
        Tensor([1.0]) + "x"


# ---------------------------------------------------------------- matmul

rng = np.random.default_rng(0)


@pytest.mark.parametrize(
    "sa, sb",
    [
        ((3, 4), (4, 5)),  # 2-D
        ((4,), (4, 5)),  # 1-D left
        ((3, 4), (4,)),  # 1-D right
        ((4,), (4,)),  # 1-D both: a scalar
        ((2, 3, 4), (4, 5)),  # batched left
        ((2, 3, 4), (2, 4, 5)),  # batched both
        ((3, 4), (2, 4, 5)),  # batched right
        ((2, 1, 3, 4), (5, 4, 2)),  # broadcast batch dims
    ],
)
def test_matmul_matches_float64(sa, sb):
    a = rng.standard_normal(sa)
    b = rng.standard_normal(sb)
    want = np.matmul(a.astype(np.float32).astype(np.float64), b.astype(np.float32).astype(np.float64))
    for got in (Tensor(a).matmul(Tensor(b)), Tensor(a) @ Tensor(b)):
        assert isinstance(got, Tensor)
        assert got.dtype == np.float32
        assert got.shape == want.shape
        np.testing.assert_allclose(f64(got), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("other", [[[1.0]], 3.0, None, "ab"])
def test_matmul_non_tensor_operand_raises_type_error(other):
    t = Tensor(np.ones((3, 4)))
    with pytest.raises(TypeError, match=f"requires Tensor.*{type(other).__name__}"):
        t.matmul(other)
    with pytest.raises(TypeError):
        t @ other
    with pytest.raises(TypeError):
        other @ t


def test_matmul_zero_d_operand_raises_value_error():
    with pytest.raises(ValueError):
        Tensor(2.0) @ Tensor(np.ones((2, 2)))
    with pytest.raises(ValueError):
        Tensor(np.ones((2, 2))).matmul(Tensor(3.0))


def test_matmul_mismatch_message():
    with pytest.raises(ValueError) as info:
        Tensor(np.ones((32, 128))) @ Tensor(np.ones((256, 10)))
    msg = str(info.value)
    assert MISMATCH in msg
    assert "shape mismatch" in msg


def test_matmul_mismatch_1d():
    with pytest.raises(ValueError, match="Inner dimensions must match: 3 ≠ 4"):
        Tensor(np.ones(3)) @ Tensor(np.ones(4))


# ---------------------------------------------------------------- shape ops

X = np.arange(24, dtype=np.float64).reshape(2, 3, 4) - 11.5


@pytest.mark.parametrize(
    "args, shape",
    [((6, 4), (6, 4)), ((-1, 4), (6, 4)), ((2, -1), (2, 12)), ((-1,), (24,)), (((4, -1),), (4, 6)),
     (([3, 8],), (3, 8)), ((2, 3, 2, 2), (2, 3, 2, 2))],
)
def test_reshape(args, shape):
    t = Tensor(X)
    r = t.reshape(*args)
    assert r.shape == shape
    np.testing.assert_array_equal(f64(r), X.reshape(shape))


@pytest.mark.parametrize("args", [(5, 5), (-1, 5), (-1, -1), (7,), (-2, 12)])
def test_reshape_error(args):
    with pytest.raises(ValueError):
        Tensor(X).reshape(*args)


def test_reshape_rejects_non_integer_sizes():
    with pytest.raises(TypeError):
        Tensor(X).reshape(2.5, -1)


def test_transpose_default_swaps_last_two():
    r = Tensor(X).transpose()
    assert r.shape == (2, 4, 3)
    np.testing.assert_array_equal(f64(r), np.swapaxes(X, -2, -1))
    m = X[0]
    np.testing.assert_array_equal(f64(Tensor(m).transpose()), m.T)


def test_transpose_explicit():
    r = Tensor(X).transpose(0, 2)
    assert r.shape == (4, 3, 2)
    np.testing.assert_array_equal(f64(r), np.swapaxes(X, 0, 2))
    np.testing.assert_array_equal(f64(Tensor(X).transpose(0, 1)), np.swapaxes(X, 0, 1))


@pytest.mark.parametrize("view", [lambda t: t.reshape(-1), lambda t: t.transpose(), lambda t: t.transpose(0, 1),
                                  lambda t: t.reshape(2, 12)], ids=["reshape", "transpose", "transpose01", "reshape2"])
def test_a_reshape_or_transpose_is_its_own_array(view):
    # as TinyTorch's ops: writing into a result leaves its operand (a layer's weight, say) as it was
    t = Tensor(X)
    r = view(t)
    assert not np.shares_memory(r.data, t.data) and r.data.flags.c_contiguous
    r.data[...] = 7
    np.testing.assert_array_equal(t.data, X)


def test_numpy_bools_are_numbers_as_python_bools_are():
    t = Tensor(np.array([1.0, 2.0]))
    for flag in (np.True_, np.False_, True, np.bool_(1)):
        np.testing.assert_array_equal((t + flag).data, np.array([1.0, 2.0], np.float32) + float(flag))
        np.testing.assert_array_equal((flag * t).data, float(flag) * np.array([1.0, 2.0], np.float32))


@pytest.mark.parametrize("name", ["sum", "mean", "max"])
@pytest.mark.parametrize("axis", [None, 0, 1, 2, -1])
@pytest.mark.parametrize("keepdims", [False, True])
def test_reductions(name, axis, keepdims):
    got = getattr(Tensor(X), name)(axis=axis, keepdims=keepdims)
    want = getattr(np, name)(X, axis=axis, keepdims=keepdims)
    assert isinstance(got, Tensor)
    assert got.dtype == np.float32
    assert got.shape == np.shape(want)
    np.testing.assert_allclose(f64(got), want, rtol=1e-6, atol=1e-6)


def test_reduction_defaults():
    t = Tensor(X)
    assert t.sum().shape == ()
    assert float(t.sum().data) == pytest.approx(X.sum())
    assert float(t.mean().data) == pytest.approx(X.mean())
    assert float(t.max().data) == X.max()


def test_getitem():
    t = Tensor(X)
    for key in (0, (1, 2), (slice(None), 1), (Ellipsis, -1), (0, slice(1, 3), slice(None, None, 2))):
        got = t[key]
        assert isinstance(got, Tensor)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(f64(got), X[key])
    assert float(t[1, 2, 3].data) == X[1, 2, 3]


def test_a_torch_tensor_of_a_dtype_numpy_lacks_is_read_as_float32():
    """bfloat16 was refused as "not a rectangular array"; every bfloat16 value is a float32."""
    torch = pytest.importorskip("torch", reason="torch is optional (pip install torch==2.13.0)")
    t = torch.tensor([[1.5, -2.25], [3e38, 1e-40]], dtype=torch.bfloat16)
    want = t.float().numpy()
    assert np.array_equal(Tensor(t).data, want) and Tensor(t).data.dtype == np.float32


def test_data_numpy_cannot_read_is_named_as_such():
    class Opaque:
        def __array__(self, dtype=None, copy=None):
            raise TypeError("no buffer for you")

    with pytest.raises(TypeError, match="numbers NumPy can read; got Opaque: no buffer for you"):
        Tensor(Opaque())

