"""The native hot call (runtime/native_guard.py): armed after a call, it runs the common batch-1
call in one native step, gives the same bits as the other paths, and steps aside for every input it
cannot take and after every change of what the compiled code depends on, however it is made."""

from __future__ import annotations

import contextlib
import gc
import threading

import numpy as np
import pytest

from tests.models import REFERENCE_MLP_IN, eager_eval
from tests.reliability.rel_helpers import peak_traced
from tests.runtime.test_hot_path import assert_eager, batch, no_disk_cache  # noqa: F401  # an autouse fixture
from tinycomp.compiler import CompiledModel
from tinycomp.nn import Layer, Linear, ReLU, Sequential, Tensor
from tinycomp.runtime import native_guard
from tinycomp.runtime.call import CompiledCall

pytestmark = pytest.mark.skipif(not native_guard.AVAILABLE,
                                reason="this interpreter or NumPy lays objects out otherwise: no native hot call")


class Counting(CompiledModel):
    """Counts calls the native hot call did not finish (they reach the Python paths)."""

    python_calls = 0

    def __call__(self, x):
        native = self._native
        out = native(x.data if type(x) is Tensor else x) if native is not None else None
        if out is not None:
            self.stats.calls += 1
            return Tensor._adopt(out)
        self.python_calls += 1
        return super().__call__(x)


@pytest.fixture
def fast(mlp):
    f = Counting(mlp, input_shape=(None, REFERENCE_MLP_IN), threads=1)
    f(batch(1))  # the first call (Python) arms the native hot call
    assert f._native is not None
    return f


def test_armed_call_runs_natively_with_the_same_bits(fast, mlp):
    x = batch(4)
    python = CompiledModel(mlp, input_shape=(None, REFERENCE_MLP_IN), threads=1, check=True)(x).data  # never native
    fast(x)  # check=True ran the eager model in eval mode, setting and restoring flags: re-arm
    calls = fast.python_calls
    for rows in (1, 4, 2):
        assert np.array_equal(fast(x[:rows]).data, python[:rows])
    assert fast.python_calls == calls  # all three natively
    assert fast(Tensor(x)).data.tobytes() == python.tobytes()
    # batches past the helper's stack scratch (native_guard.STACK_SCRATCH) take the thread's pool
    big = batch(native_guard.STACK_SCRATCH // 1000, seed=7)
    assert len(big) > fast._native._stack_rows
    want = CompiledModel(mlp, input_shape=(None, REFERENCE_MLP_IN), threads=1, check=True)(big).data
    fast(big)  # re-arm after check=True's eval mode
    calls = fast.python_calls
    assert np.array_equal(fast(big).data, want) and fast.python_calls == calls


def test_a_large_batch_leases_the_scratch_of_one_row_block():
    """The native call leased scratch for every row, not the row block a call holds at once: 50,000
    rows reserved 220 MB for a plan that uses 0.5 MB, and under an address-space limit failed with
    NumPy's bare MemoryError where 200,000 rows (the full path) ran."""
    model = Sequential(Linear(64, 1024), ReLU(), Linear(1024, 128), ReLU(), Linear(128, 10))
    model.eval()
    fast = Counting(model, input_shape=(None, 64), threads=1)
    fast(batch(2)[:, :64].copy())
    plan = fast._artifact.plan
    assert fast._native is not None and 0 < plan.row_block < 50_000
    x = np.random.default_rng(3).standard_normal((50_000, 64)).astype(np.float32)
    y, peak = peak_traced(lambda: fast(x).data)
    assert fast.python_calls == 1  # the first call: this one was native
    assert peak < y.nbytes + 4 * plan.scratch_floats(50_000) + (1 << 20), f"{peak / 2**20:.0f} MB at once"
    np.testing.assert_array_equal(y, CompiledModel(model, input_shape=(None, 64), threads=1)._call(x).data)


def test_calls_too_small_to_pack_run_on_the_helpers_stack():
    """A W past 1 MB runs without row blocks and packs W on large batches: its plan's pack buffer
    (hundreds of KB) is needed only from `pack_rows` rows on, so a batch-1 call still fits the
    helper's stack. The helper refuses a scratch one float short, either side of `pack_rows`."""
    model = Sequential(Linear(640, 512), ReLU(), Linear(512, 10))
    model.eval()
    fast = Counting(model, input_shape=(None, 640), threads=1)
    x = np.random.default_rng(4).standard_normal((400, 640)).astype(np.float32)
    fast(x[:1])
    plan, native = fast._artifact.plan, fast._native
    assert native is not None and plan.row_block == 0 and 4 * plan.scratch_pack > native_guard.STACK_SCRATCH
    assert 1 <= native._stack_rows < plan.pack_rows <= native.hot_rows
    want = eager_eval(model, x)
    for rows in (1, native._stack_rows + 1, plan.pack_rows - 1, plan.pack_rows, len(x)):
        need = plan.scratch_floats(rows)
        out = np.full((rows, 10), 7.0, np.float32)
        if rows > native._stack_rows:
            assert native._fn(x[:rows], out, np.zeros(need - 1, np.float32)) == native_guard.INPUT_NOT_NATIVE
            assert (out == 7.0).all()
        np.testing.assert_allclose(fast(x[:rows]).data, want[:rows], rtol=2e-4, atol=2e-5)
    assert fast.python_calls == 1  # only the first


@pytest.mark.parametrize("make", [
    lambda x: x.astype(np.float64),                               # converted on the Python hot path
    lambda x: np.asfortranarray(np.repeat(x, 2, axis=0))[::2],   # strided
    lambda x: x.astype(">f4"),                                    # byte-swapped float32
    lambda x: np.frombuffer(b"\0" + x.tobytes(), np.float32, offset=1).reshape(x.shape),  # unaligned
    lambda x: x[0],                                               # one sample, 1-D
    lambda x: x.reshape(2, 2, REFERENCE_MLP_IN),                  # leading dimensions
    lambda x: x.tolist(),
])
def test_inputs_it_cannot_take_go_to_the_python_paths_and_agree_with_eager(fast, mlp, make):
    x = batch(4, seed=3)
    calls = fast.python_calls
    got = fast(make(x)).data
    assert fast.python_calls == calls + 1
    want = eager_eval(mlp, np.asarray(make(x), np.float32).reshape(-1, REFERENCE_MLP_IN))
    np.testing.assert_allclose(got.reshape(want.shape), want, rtol=2e-4, atol=2e-5)


def test_wrong_feature_size_and_zero_rows_are_refused_as_before(fast):
    with pytest.raises(ValueError, match="expects input of shape"):
        fast(np.zeros((1, REFERENCE_MLP_IN + 1), np.float32))
    assert fast(np.zeros((0, REFERENCE_MLP_IN), np.float32)).shape == (0, 10)
    with pytest.raises(ValueError, match="0-D"):
        fast(np.float32(1.0))


def test_the_builtin_runs_nothing_on_arguments_it_was_not_made_for(fast):
    """The helper is a Python builtin reading its arguments as arrays; whatever it is called with, it
    returns INPUT_NOT_NATIVE without writing unless every argument is what the Python side passes:
    an output or scratch of another type (a list, bytes and an int had it read them as arrays), a
    scratch too small for the rows, None (its stack) for more rows than the stack holds."""
    native = fast._native
    x, fn = batch(2), native._fn
    out = np.full((2, 10), 7.0, np.float32)
    assert fn(x, out, None) == 0 and not (out == 7.0).all()
    big = batch(native._stack_rows + 1, seed=5)
    big_out = np.full((len(big), 10), 7.0, np.float32)
    need = native._scratch.floats(len(big))
    out[:] = 7.0
    for args in ((x, out), (x, out, None, ()), (x, np.full((3, 10), 7.0, np.float32), None), (),
                 (x.tolist(), out, None), (x, [0.0] * 20, None), (x, b"abc" * 40, None), (x, out, 0),
                 (x, out.astype(np.float64), None), (x, np.full((2, 11), 7.0, np.float32), None),
                 (x, out, [0.0] * 1000), (big, big_out, None), (big, big_out, np.zeros(need - 1, np.float32)),
                 (big, big_out, np.zeros((need, 1), np.float32)), (x[:0], out[:0], None)):
        assert fn(*args) == native_guard.INPUT_NOT_NATIVE, args
    assert (out == 7.0).all() and (big_out == 7.0).all()
    assert fn(big, big_out, np.zeros(need, np.float32)) == 0 and not (big_out == 7.0).any()


def test_the_builtin_keeps_what_it_points_into(mlp):
    """Its method definition lived only in `helper()`'s cache: clearing it (or reloading the module,
    as an autoreloading notebook does) and then calling an armed model crashed the process; a builtin
    kept after its model was deleted read freed tables and code."""
    fast = CompiledModel(mlp, input_shape=(None, REFERENCE_MLP_IN), threads=1)
    x = batch(1, seed=9)
    want = fast(x).data
    native_guard.helper.cache_clear()
    gc.collect()
    junk = [bytes(range(i % 200, i % 200 + 40)) for i in range(100_000)]  # reuse freed blocks
    assert np.array_equal(fast(x).data, want) and fast._native is not None
    fn = fast._native._fn
    del fast, junk
    gc.collect()
    junk = [bytes(range(i % 200, i % 200 + 40)) for i in range(100_000)]
    out = np.empty((1, 10), np.float32)
    assert len(junk) == 100_000  # held while the builtin runs
    assert fn(x, out, None) == 0 and np.array_equal(out, want)


def _setattr_same_shape(m):
    m.layers[6].weight = Tensor(m.layers[6].weight.data * 2)


def _object_setattr(m):
    object.__setattr__(m.layers[6], "bias", Tensor(np.full(10, 3.0)))


def _vars_of_tensor(m):  # rebinding a Tensor's array without its __setattr__
    vars(m.layers[3].bias)["data"] = np.full(128, 0.5, np.float32)


def _array_shape_in_place(m):
    w = m.layers[6].weight
    w.data = w.data.copy()
    w.data.shape = (64, 20)  # same array object, another shape: not the compiled (128, 10)


def _array_dtype_in_place(m):
    b = m.layers[6].bias
    b.data = np.zeros(20, np.float16)
    b.data.dtype = np.float32  # the same bytes read as 10 float32 zeros


def _array_strides_in_place(m):
    w = m.layers[6].weight
    w.data = w.data.copy()
    with pytest.warns(DeprecationWarning) if np.lib.NumpyVersion(np.__version__) >= "2.4.0" else _nothing():
        w.data.strides = (4, 4 * 10)  # the same buffer read with columns and rows swapped (still (128, 10))


def _nothing():
    return contextlib.nullcontext()


def _list_item_same_length(m):
    m.layers[1] = Sequential(ReLU())  # same list length, another object


def _list_replaced(m):
    m.layers = list(m.layers)  # same items, another list


def _train_flags(m):
    m.train()


@pytest.mark.parametrize("change", [_setattr_same_shape, _object_setattr, _vars_of_tensor, _array_shape_in_place,
                                    _array_dtype_in_place, _array_strides_in_place, _list_item_same_length,
                                    _list_replaced, _train_flags])
def test_every_change_sends_the_next_call_to_python_and_the_one_after_is_native_again(fast, mlp, change):
    x = batch(3, seed=5)
    change(mlp)
    if change is _array_shape_in_place:  # refused by the full path, never run natively
        with pytest.raises(ValueError, match="shape"):
            fast(x)
        return
    want = eager_eval(mlp, x)  # eval_mode sets and restores flags: itself a change the guard sees
    calls = fast.python_calls
    # the full path checks the model again and re-arms; a strided parameter is converted on every
    # call instead, never remembered, so it keeps to the Python paths
    rearms = change is not _array_strides_in_place
    for second in (False, True):
        np.testing.assert_allclose(fast(x).data, want, rtol=2e-4, atol=2e-5)
        assert fast.python_calls == calls + 1 + (second and not rearms), second


def test_in_place_edits_are_read_live_natively(fast, mlp):
    x = batch(2)
    mlp.layers[0].weight.data[:3] *= -1
    mlp.layers[6].bias.data += 1
    want = eager_eval(mlp, x)
    fast(x)  # re-armed after eval_mode's flags
    calls = fast.python_calls
    mlp.layers[0].weight.data[3:6] *= -1
    mlp.layers[6].bias.data += 1
    got = fast(x).data
    assert fast.python_calls == calls
    assert not np.allclose(got, want)
    np.testing.assert_allclose(got, eager_eval(mlp, x), rtol=2e-4, atol=2e-5)


def test_threads_share_one_armed_call(fast, mlp):
    xs = [batch(1 + i % 3, seed=i) for i in range(8)]
    want = [eager_eval(mlp, x) for x in xs]
    errors = []

    def work(i):
        for _ in range(50):
            got = fast(xs[i]).data
            if not np.allclose(got, want[i], rtol=2e-4, atol=2e-5):
                errors.append(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_unavailable_layouts_leave_the_python_paths(monkeypatch, mlp):
    monkeypatch.setattr(native_guard, "AVAILABLE", False)
    f = CompiledModel(mlp, input_shape=(None, REFERENCE_MLP_IN), threads=1)
    x = batch(2)
    f(x)
    assert f._native is None
    assert_eager(f, mlp, x)


def test_a_recompile_disarms_until_the_new_code_ran(mlp):
    f = CompiledModel(mlp, threads=1)  # follows the input width
    f(batch(1))
    assert f._native is not None
    mlp.layers.append(Linear(10, 4))
    assert f(batch(1)).shape == (1, 4)
    assert f._native is not None and f._native.armed_for is f._artifact


class ScaledShift(Layer):
    """forward(x, y, shift): three inputs, one of them compiled without the batch."""

    def __init__(self):
        self.fc = Linear(8, 5)

    def forward(self, x, y, shift):
        return self.fc(x) * y + shift


@pytest.fixture
def python_calls(monkeypatch):
    """How many calls reached the Python paths (the hot path's or the full one)."""
    count = [0]

    def counted(real):
        def spy(*args, **kwargs):
            count[0] += 1
            return real(*args, **kwargs)
        return spy

    monkeypatch.setattr(CompiledCall, "hot", counted(CompiledCall.hot))
    monkeypatch.setattr(CompiledModel, "_call", counted(CompiledModel._call))
    return count


def _three_inputs(rows, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((rows, 8), dtype=np.float32), rng.standard_normal((rows, 5), dtype=np.float32),
            rng.standard_normal(5, dtype=np.float32))


def _eager_three(model, x, y, shift):
    w, b = (np.asarray(t.data, np.float64) for t in (model.fc.weight, model.fc.bias))
    return (x @ w + b) * y + shift


def test_several_inputs_run_natively_with_the_same_bits_as_the_python_paths(python_calls):
    model = ScaledShift()
    fast = CompiledModel(model, input_shape=[(None, 8), (None, 5), (5,)], threads=1)
    fast(*_three_inputs(1))  # the first call (Python) arms the native hot call
    assert fast._native is not None and fast._native.n_more == 2
    for rows in (1, 3, 2):
        inputs = _three_inputs(rows, seed=rows)
        python = CompiledModel(model, input_shape=[(None, 8), (None, 5), (5,)], threads=1, check=True)(*inputs).data
        fast(*inputs)  # check=True ran eager in eval mode, setting and restoring flags: re-arm
        calls = python_calls[0]
        got = fast(*inputs).data
        assert python_calls[0] == calls  # natively
        assert got.tobytes() == python.tobytes()
        np.testing.assert_allclose(got, _eager_three(model, *inputs), rtol=2e-5, atol=2e-5)
        assert fast(*(Tensor(a) for a in inputs)).data.tobytes() == python.tobytes()
        assert python_calls[0] == calls


@pytest.mark.parametrize("make", [
    lambda x, y, s: (x, y.astype(np.float64), s),                      # converted on the Python hot path
    lambda x, y, s: (x, np.asfortranarray(np.repeat(y, 2, axis=0))[::2], s),   # strided
    lambda x, y, s: (x, y, s.astype(">f4")),                           # byte-swapped float32
    lambda x, y, s: (x, np.frombuffer(b"\0" + y.tobytes(), np.float32, offset=1).reshape(y.shape), s),  # unaligned
    lambda x, y, s: (x, y.tolist(), s),
    lambda x, y, s: (x, y, s.tolist()),
    lambda x, y, s: (x, np.broadcast_to(y[:1], y.shape), s),           # a zero stride
    lambda x, y, s: (x, y.view(np.ndarray), np.ma.masked_array(s)),    # an ndarray subclass
])
def test_other_inputs_it_cannot_take_go_to_the_python_paths_and_agree_with_eager(python_calls, make):
    model = ScaledShift()
    fast = CompiledModel(model, input_shape=[(None, 8), (None, 5), (5,)], threads=1)
    fast(*_three_inputs(3))
    assert fast._native is not None
    inputs = make(*_three_inputs(3, seed=4))
    calls = python_calls[0]
    got = fast(*inputs).data
    assert python_calls[0] > calls
    np.testing.assert_allclose(got, _eager_three(model, *(np.asarray(a, np.float32) for a in inputs)),
                               rtol=2e-5, atol=2e-5)


def test_other_inputs_of_another_shape_are_refused_as_before():
    fast = CompiledModel(ScaledShift(), input_shape=[(None, 8), (None, 5), (5,)], threads=1)
    x, y, s = _three_inputs(2)
    fast(x, y, s)
    assert fast._native is not None
    for bad in ((x, y[:, :4], s), (x, y, s[:4]), (x, y[:1], s), (x, y, np.tile(s, (2, 1)))):
        with pytest.raises(ValueError, match="input"):
            fast(*bad)
    with pytest.raises(TypeError):
        fast(x, y)
    np.testing.assert_allclose(fast(x, y, s).data, _eager_three(fast.model, x, y, s), rtol=2e-5, atol=2e-5)


def test_a_change_of_the_model_reaches_a_several_input_call(python_calls):
    model = ScaledShift()
    fast = CompiledModel(model, input_shape=[(None, 8), (None, 5), (5,)], threads=1)
    inputs = _three_inputs(2)
    fast(*inputs)
    model.fc.bias = Tensor(np.full(5, 2.0, np.float32))
    calls = python_calls[0]
    np.testing.assert_allclose(fast(*inputs).data, _eager_three(model, *inputs), rtol=2e-5, atol=2e-5)
    assert python_calls[0] == calls + 2  # the hot path saw the change, the full path re-armed
    fast(*inputs)
    assert python_calls[0] == calls + 2


class Blocks(list):
    pass


class Named(dict):
    pass


class Chain(Layer):
    def __init__(self, holder):
        self.layers = holder

    def forward(self, x):
        for layer in (self.layers.values() if isinstance(self.layers, dict) else self.layers):
            x = layer(x)
        return x


@pytest.mark.parametrize("holder, native", [
    (lambda a, b: Blocks([a, b]), True), (lambda a, b: Named(a=a, b=b), True),
    (lambda a, b: __import__("collections").OrderedDict(a=a, b=b), False),  # move_to_end keeps its version tag
], ids=["list subclass", "dict subclass", "OrderedDict"])
def test_containers_of_layers_are_watched_natively_unless_they_reorder_unseen(holder, native):
    model = Chain(holder(Linear(4, 4), Linear(4, 4)))
    fast = CompiledModel(model, input_shape=(None, 4), threads=1)
    x = np.random.default_rng(3).standard_normal((2, 4)).astype(np.float32)
    fast(x)
    assert (fast._native is not None) is native
    if isinstance(model.layers, dict):
        model.layers["a"] = model.layers.pop("a")  # reordered: a new version tag, or the Python paths
    else:
        model.layers.reverse()
    np.testing.assert_allclose(fast(x).data, eager_eval(model, x), rtol=2e-5, atol=2e-6)
