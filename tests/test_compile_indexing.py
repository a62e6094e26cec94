"""Basic indexing and concat in a compiled forward: slices (any positive step), ints, ..., None, of
inputs and of parameters, and their parts joined again, against eager NumPy and float64, at batch 0,
1, 7 and 129; what cannot be compiled is refused naming the key or the shapes."""

from __future__ import annotations

import numpy as np
import pytest

import tinycomp as tc
from tests.test_compile_tensor_ops import Fn, check_every_batch, inputs
from tinycomp.errors import CompileError
from tinycomp.nn import Layer, Linear, Tensor, concat, stack

TABLE = np.random.default_rng(9).standard_normal((5, 13)).astype(np.float32)
T64 = TABLE.astype(np.float64)

CASES = {  # (forward of x (N, 3, 13) and a (5, 13) table, the same in NumPy on float64 x)
    "columns": (lambda x, t: x[:, :, 2:9], lambda x: x[:, :, 2:9]),
    "stepped": (lambda x, t: x[..., 1::3] * 2, lambda x: x[..., 1::3] * 2),
    "middle-axis": (lambda x, t: x[:, 1:], lambda x: x[:, 1:]),
    "int-drops-axis": (lambda x, t: x[:, 0] - x[:, 2], lambda x: x[:, 0] - x[:, 2]),
    "last-element": (lambda x, t: x[..., -1], lambda x: x[..., -1]),
    "new-axis": (lambda x, t: x[:, None, 1, ::2], lambda x: x[:, None, 1, ::2]),
    "table-row": (lambda x, t: x + t[2], lambda x: x + T64[2]),
    "table-block": (lambda x, t: x[:, 1:3, :4] @ t[1:5, 3:7], lambda x: x[:, 1:3, :4] @ T64[1:5, 3:7]),
    "empty-sum": (lambda x, t: x[:, :, 5:5].sum(axis=-1) + x[:, :, 0], lambda x: x[:, :, 0]),
    "empty-mean": (lambda x, t: x[:, 1:1].exp().mean(axis=1) + x[:, 0], lambda x: np.full_like(x[:, 0], np.nan)),
    "whole": (lambda x, t: x[:, :, :] + x[...], lambda x: 2 * x),
    "list-runs": (lambda x, t: x[:, [-1]] + x[:, :, [0, 4, 8]].sum(axis=-1, keepdims=True),
                  lambda x: x[:, [-1]] + x[:, :, [0, 4, 8]].sum(axis=-1, keepdims=True)),
}


CONCATS = {  # (forward, NumPy): parts joined along each axis after the batch
    "last-axis": (lambda x, t: concat([x[..., 5:], x.exp(), x[..., :5] * 2], axis=-1),
                  lambda x: np.concatenate([x[..., 5:], np.exp(x), x[..., :5] * 2], axis=-1)),
    "middle-axis": (lambda x, t: concat([x, -x[:, 1:]], axis=1), lambda x: np.concatenate([x, -x[:, 1:]], axis=1)),
    "columns-of-one": (lambda x, t: concat([x[..., i:i + 1] for i in (3, 0, 12)], axis=2),
                       lambda x: x[..., [3, 0, 12]]),
    "with-empty-and-table": (lambda x, t: concat([x[:, :, :0], x + concat([t, t], 0)[4:7]], axis=-1),
                             lambda x: x + np.concatenate([T64, T64])[4:7]),
    "one-part": (lambda x, t: concat([x * 3], axis=-2), lambda x: x * 3),
    "stack-middle": (lambda x, t: stack([x[:, 0], x[:, 2].exp()], axis=1).sum(axis=1, keepdims=True),
                     lambda x: np.stack([x[:, 0], np.exp(x[:, 2])], axis=1).sum(axis=1, keepdims=True)),
    "stack-last": (lambda x, t: stack([x, -x, x * 2], axis=-1).reshape(-1, 3, 39),
                   lambda x: np.stack([x, -x, x * 2], axis=-1).reshape(-1, 3, 39)),
}


@pytest.mark.parametrize("name", CONCATS)
def test_concat_parity(name):
    fn, ref = CONCATS[name]
    fast = check_every_batch(Fn(fn, TABLE), (3, 13), ref)
    assert fast.graph.nodes("concat"), "a concat node was compiled"


@pytest.mark.parametrize("parts, axis, error, match", [
    ([(None, 3), (None, 3)], 0, CompileError, r"a concat along the batch axis of \(N, 3\)"),
    ([(None, 3), (None, 2, 3)], 1, ValueError, r"shapes \(N, 3\), \(N, 2, 3\) differ elsewhere than along that axis"),
    ([(None, 3), (None, 4)], 0, ValueError, r"shapes \(N, 3\), \(N, 4\) differ elsewhere"),
    ([(None, 2, 3), (None, 3, 3)], -1, ValueError, r"differ elsewhere than along that axis"),
])
def test_concat_that_cannot_be_compiled_is_named(parts, axis, error, match):
    class Join(Layer):
        def forward(self, *xs):
            return concat(list(xs), axis=axis)

    with pytest.raises(error, match=match):
        tc.compile(Join(), input_shape=parts)


def test_stack_refuses_what_numpy_refuses():
    x = Tensor(np.ones((2, 3)))
    with pytest.raises(ValueError, match="stack axis 3 is out of range for 2-D tensors"):
        stack([x, x], axis=3)
    with pytest.raises(TypeError, match="stack\\(\\) takes a non-empty list"):
        stack([])
    want = np.stack([np.ones((2, 3)), np.full((2, 3), 2.0)], -1)
    np.testing.assert_array_equal(stack([x, x * 2], axis=-1).data, want)


def test_concat_takes_a_list_of_operands():
    x = Tensor(np.ones((2, 3)))
    with pytest.raises(TypeError, match="concat\\(\\) takes a non-empty list or tuple of tensors; got Tensor"):
        concat(x)
    with pytest.raises(TypeError, match=r"concat\(\) takes Tensors, NumPy arrays or numbers; got str as tensors\[1\]"):
        concat([x, "x"])
    joined = concat([x, np.zeros((1, 3))]).data
    np.testing.assert_array_equal(joined, np.concatenate([np.ones((2, 3)), np.zeros((1, 3))]))


@pytest.mark.filterwarnings("ignore:Mean of empty slice:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
@pytest.mark.parametrize("name", CASES)
def test_indexing_parity(name):
    fn, ref = CASES[name]
    fast = check_every_batch(Fn(fn, TABLE), (3, 13), ref)
    if name != "whole":
        assert fast.graph.nodes("slice"), "a slice node was compiled"


def test_an_empty_index_result_is_checked_and_referenced():
    """x[:, 3:3, None] traces to a reshape (-1, 0, 1), whose -1 NumPy cannot infer beside a 0: the
    float64 reference (check=True) raised a raw ValueError where eager and compiled ran."""
    model = Fn(lambda x: x[:, 3:3, None].sum(axis=(1, 2)) + x[:, 0])
    fast = tc.compile(model, check=True)
    x = inputs(2, (13,), 4)
    np.testing.assert_array_equal(fast(x).data, x[:, 0])


def test_slices_of_a_parameter_follow_later_changes():
    class FirstHalf(Layer):
        def __init__(self):
            self.fc = Linear(6, 8)

        def forward(self, x):
            return x @ self.fc.weight[:, :4] + self.fc.weight[0, 4:]

    model = FirstHalf()
    fast = tc.compile(model)
    x = inputs(3, (6,), 2)
    model.fc.weight.data *= -3.0  # after compiling
    np.testing.assert_allclose(fast(x).data, model(Tensor(x)).data, rtol=1e-5, atol=1e-6)


def test_leading_dimensions_follow_the_slice_axis():
    """A compiled model also takes one sample, or more leading dimensions: a slice counted from the
    end stays right; one counted from the front would slice another axis there and is refused."""
    from_end = tc.compile(Fn(lambda x: x[..., 1:4]), input_shape=(None, 6))
    one = inputs(1, (6,), 3)[0]
    np.testing.assert_array_equal(from_end(one).data, one[1:4])
    np.testing.assert_array_equal(from_end(np.stack([[one] * 2])).data, np.stack([[one] * 2])[..., 1:4])
    from_front = tc.compile(Fn(lambda x: x[:, 1:4]), input_shape=(None, 6))
    with pytest.raises(ValueError, match="slice node"):
        from_front(np.zeros((2, 3, 6), np.float32))


@pytest.mark.parametrize("forward, match", [
    (lambda x: x[0], r"indexes \[0\]: index 0 picks one sample of the batch axis"),
    (lambda x: x[1:], r"indexes \[1:\]: 1: cuts the batch axis of \(N, 6\)"),
    (lambda x: x[:, ::-1], r"indexes \[:, ::-1\]: a slice with step -1"),
    (lambda x: x[:, [2, 0]], r"indexes \[:, \[2, 0\]\] with positions \[2, 0\], which are not an increasing"),
    (lambda x: x[:, [True, False] * 3], r"with an index of type list"),
    # NumPy moves the axes of an int and a list apart to the front: (2, N) here, not (N, 2)
    (lambda x: x.reshape(-1, 1, 2, 3)[:, 0, :, [0, 1]], r"a list of positions beside an int"),
    (lambda x: x[:, 1.5:], r"a slice bound that is not an int"),
    (lambda x: x[None], r"a new axis before the batch axis"),
    (lambda x: x[:, 6], r"index 6 is out of bounds for axis 1 with size 6"),
    (lambda x: x[:, :, 0], r"too many indices for tensor: tensor is 2-dimensional, but 3 were indexed"),
    (lambda x: x[:, 2:2].max(axis=-1), r"max %\d+ of \(N, 0\) runs over no elements"),
    (lambda x: x[:, 2:2] @ Tensor(np.ones((0, 3))), r"a product over an axis of size 0"),
])
def test_what_cannot_be_compiled_is_named(forward, match):
    with pytest.raises((CompileError, IndexError), match=match):
        tc.compile(Fn(forward), input_shape=(None, 6))
