"""The per-call hot path (`CompiledModel._hot_call`): taken for the common call, bit-identical to the
full path, and never stale: every change the full path notices between two calls sends the next
call back to it."""

from __future__ import annotations

import numpy as np
import pytest

from tests.models import REFERENCE_MLP_IN, eager_eval
from tinycomp import nn as tc_nn
from tinycomp.compiler import CompiledModel
from tinycomp.nn import Layer, Linear, ReLU, Sequential, Tensor, manual_seed
from tinycomp.runtime.threads import one_part_rows, parallel_parts


@pytest.fixture(autouse=True)
def no_disk_cache(monkeypatch):
    monkeypatch.setenv("TINYCOMP_CACHE", "0")


class CountingModel(CompiledModel):
    """Counts the calls that took the full path."""

    full_calls = 0

    def _call(self, x):
        self.full_calls += 1
        return super()._call(x)


def compiled(model, **options) -> CountingModel:
    return CountingModel(model, input_shape=(None, REFERENCE_MLP_IN), **options)


def batch(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, REFERENCE_MLP_IN)).astype(np.float32)


def assert_eager(fast, model, x):
    np.testing.assert_allclose(fast(x).data, eager_eval(model, x), rtol=2e-4, atol=2e-5)


def test_second_call_takes_the_hot_path_with_the_same_bits(mlp):
    fast = compiled(mlp, threads=1)
    x = batch(8)
    first = fast(x).data  # the full path (it offers the parameter table to the hot path)
    assert fast.full_calls == 1
    for rows in (8, 1, 3, 200):
        y = fast(x[:rows] if rows <= 8 else batch(rows)).data
        assert y.dtype == np.float32 and y.shape == (rows, 10) and y.flags.owndata
    assert fast.full_calls == 1
    assert np.array_equal(fast(x).data, first)
    assert fast.stats.calls == 6


@pytest.mark.parametrize("make", [lambda x: x.astype(np.float64), lambda x: (x > 0).astype(np.int32), Tensor],
                         ids=["float64", "int32", "Tensor"])
def test_other_number_types_and_tensors_take_the_hot_path_cast_like_tensor(mlp, make):
    fast = compiled(mlp, threads=1)
    x = batch(8)
    fast(x)
    value = make(x)
    y = fast(value).data
    assert fast.full_calls == 1
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, eager_eval(mlp, np.asarray(getattr(value, "data", value), np.float32)),
                               rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("make", [
    lambda x: np.asfortranarray(np.repeat(x, 2, axis=0))[::2],  # strided
    lambda x: x[0],  # one sample
    lambda x: x.reshape(2, 4, REFERENCE_MLP_IN),  # leading dimensions
    lambda x: x.tolist(),  # a list
    lambda x: np.empty((0, REFERENCE_MLP_IN), np.float32),  # no rows
], ids=["strided", "one-sample", "lead-dims", "list", "empty"])
def test_other_inputs_take_the_full_path_and_agree_with_eager(mlp, make):
    fast = compiled(mlp, threads=1)
    x = batch(8)
    fast(x)
    fast(x)
    before = fast.full_calls
    value = make(x)
    y = fast(value).data
    assert fast.full_calls == before + 1
    ref = eager_eval(mlp, np.asarray(value, np.float32))
    np.testing.assert_allclose(y, ref, rtol=2e-4, atol=2e-5)


class SampleOf2D(Layer):
    def __init__(self):
        self.fc = Linear(4, 6)

    def forward(self, x):
        return self.fc(x)


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
@pytest.mark.parametrize("make", [np.asmatrix, np.ma.masked_array, lambda a: a.view(np.recarray)],
                         ids=["matrix", "masked", "recarray"])
def test_ndarray_subclasses_are_read_as_their_data(make):
    """A float32 np.matrix sample of a (None, 3, 4) model stayed 2-D through reshape and was refused as
    a bad native buffer (the masked array and recarray cases passed before: guards)."""
    model = SampleOf2D()
    fast = CompiledModel(model, input_shape=(None, 3, 4), threads=1)
    sample = np.random.default_rng(2).standard_normal((3, 4)).astype(np.float32)
    want = eager_eval(model, sample[None])[0]
    for value in (make(sample), make(np.ascontiguousarray(sample.astype(np.float64)))):
        np.testing.assert_allclose(fast(value).data, want, rtol=2e-5, atol=2e-6)


def test_big_batches_that_split_across_threads_take_the_full_path(mlp):
    fast = compiled(mlp, threads=2)
    x = batch(64)  # threads=2: 64 rows split in two
    fast(x)
    fast(x)
    assert fast.full_calls == 2
    assert_eager(fast, mlp, x)


def test_check_mode_always_takes_the_full_path(mlp):
    fast = compiled(mlp, check=True)
    x = batch(4)
    for _ in range(3):
        fast(x)
    assert fast.full_calls == 3


def _edit_in_place(m):
    m.layers[0].weight.data[:5] *= -2.0


def _rebind_data(m):
    m.layers[3].weight.data = m.layers[3].weight.data * 0.5


def _rebind_data_float64(m):
    m.layers[3].bias.data = np.arange(128, dtype=np.float64)


def _rebind_tensor(m):
    m.layers[6].weight = Tensor(m.layers[6].weight.data[::-1].copy())


def _rebind_through_dict(m):  # no __setattr__: only the identity check can see it
    vars(m.layers[6])["bias"] = Tensor(np.full(10, 7.0))


def _append_layer(m):
    m.layers.append(ReLU())


def _replace_layer(m):
    m.layers[2] = Linear(256, 256)


def _train_mode(m):
    m.train()


@pytest.mark.parametrize("change", [_edit_in_place, _rebind_data, _rebind_data_float64, _rebind_tensor,
                                    _rebind_through_dict, _append_layer, _replace_layer, _train_mode])
def test_every_change_between_hot_calls_is_seen(mlp, change):
    fast = compiled(mlp, threads=1)
    x = batch(5)
    fast(x)
    fast(x)
    change(mlp)
    assert_eager(fast, mlp, x)
    assert_eager(fast, mlp, x)  # and the call after it, once the hot path has the new state


def test_a_call_converts_each_parameter_at_most_once(monkeypatch):
    """The slow path validated every parameter once per slot it had not seen: float64 weights were
    converted P x P times on every call (391 ms a call for 400 of them), and the first call after a
    compile or a rebinding of all weights did as much work."""
    import tinycomp.binding as binding
    converted = []

    def counting(data):
        converted.append(data)
        return convert(data)
    convert = binding.as_native_float32
    monkeypatch.setattr(binding, "as_native_float32", counting)
    manual_seed(0)
    model = Sequential(*[Linear(4, 4) for _ in range(20)])
    model.eval()
    fast = CountingModel(model, input_shape=(None, 4), threads=1)
    x = batch(2)[:, :4].copy()
    fast(x)
    assert len(converted) == 40  # the first call: each of the 40 parameters once
    for p in model.parameters():
        p.data = p.data.astype(np.float64)
    for _ in range(2):
        converted.clear()
        assert_eager(fast, model, x)
        assert len(converted) == 40  # float64 arrays: converted on every call, each once


def test_float64_parameter_is_converted_on_every_call_never_remembered(mlp):
    fast = compiled(mlp, threads=1)
    x = batch(3)
    _rebind_data_float64(mlp)
    fast(x)
    mlp.layers[3].bias.data += 1.0  # in place, on the float64 array the model holds
    assert_eager(fast, mlp, x)
    assert fast.full_calls == 2


def test_in_place_resize_of_a_remembered_parameter_is_caught(mlp):
    # an array of the bias's own, as a user assigning `.data` would (a Tensor of 4 KB or more is a
    # line-aligned view, which NumPy cannot resize; this 10-float bias is not, but may become one)
    mlp.layers[6].bias.data = mlp.layers[6].bias.data.copy()
    fast = compiled(mlp, threads=1)
    x = batch(2)
    fast(x)
    fast(x)
    w = mlp.layers[6].bias.data
    w.resize((12,), refcheck=False)  # our remembered pointer may now dangle: the shape check sees it
    mlp.layers[6].bias.data = w[:10].copy()
    assert_eager(fast, mlp, x)


def test_shared_sub_model_in_two_compiled_models():
    manual_seed(1)
    inner = Sequential(Linear(REFERENCE_MLP_IN, 32), ReLU())
    a, b = compiled(Sequential(inner, Linear(32, 3))), compiled(Sequential(inner, Linear(32, 5)))
    x = batch(4)
    for _ in range(2):
        a(x), b(x)
    inner.layers[0].bias.data[:] = 1.0
    assert_eager(a, a.model, x)
    assert_eager(b, b.model, x)


@pytest.mark.parametrize("threads", [None, 1, 2, 4])
@pytest.mark.parametrize("flops_per_row", [1, 470_016, 10_000_000, 200_000_000])
@pytest.mark.parametrize("rows_per_sample", [1, 5, 64])
def test_hot_rows_are_exactly_the_batches_that_run_as_one_part(threads, flops_per_row, rows_per_sample):
    limit = 5_000
    hot = one_part_rows(flops_per_row, threads, limit, rows_per_sample)
    for rows in range(1, limit + 1):
        assert (parallel_parts(rows, flops_per_row, threads, rows_per_sample) == 1) == (rows <= hot), rows


class Gated(tc_nn.Layer):
    """Two inputs: a batched gate and a scale shared by every sample."""

    def __init__(self):
        self.lin = Linear(6, 4)

    def forward(self, x, gate, scale):
        return self.lin(x) * gate + scale


class CountingMany(CompiledModel):
    full_calls = 0

    def _call(self, x, *more):
        self.full_calls += 1
        return super()._call(x, *more)


def test_several_inputs_take_the_hot_path_with_the_full_paths_bits():
    """A model of several inputs took the full path on every call: ~35 us of Python at batch 1,
    against ~2 us for one input."""
    manual_seed(3)
    model = Gated()
    fast = CountingMany(model, input_shape=[(None, 6), (None, 4), (4,)], threads=1)
    rng = np.random.default_rng(4)
    x, gate, scale = (rng.standard_normal(s).astype(np.float32) for s in ((5, 6), (5, 4), (4,)))
    first = fast(x, gate, scale).data
    assert fast.full_calls == 1
    np.testing.assert_array_equal(fast(x, gate, scale).data, first)
    np.testing.assert_array_equal(fast(Tensor(x), gate.astype(np.float64), (scale > 0) * 1).data,
                                  CountingMany(model, input_shape=[(None, 6), (None, 4), (4,)], threads=1)(
                                      x, gate.astype(np.float64), (scale > 0) * 1).data)
    gate[2] = 7.0  # read at each call: nothing of an input is remembered
    eager = model(Tensor(x), Tensor(gate), Tensor(scale)).data
    np.testing.assert_allclose(fast(x, gate, scale).data, eager, rtol=1e-6, atol=1e-6)
    assert fast.full_calls == 1
    # what the hot path does not take goes the full way, which checks and names it
    np.testing.assert_array_equal(fast(x, np.asfortranarray(np.tile(gate, (1, 1))), scale).data,
                                  fast(x, gate, scale).data)
    assert fast.full_calls == 1 + 1  # a Fortran-order array is not C-contiguous unless it is one row or column
    with pytest.raises(ValueError, match=r"input 'gate' must have shape \(batch, 4\); got shape \(5, 3\)"):
        fast(x, gate[:, :3], scale)
    with pytest.raises(ValueError, match=r"input 'gate' has 4 rows, input 'x' 5"):
        fast(x, gate[:4], scale)
