"""Issue 13: what a traced forward() reads of the model's own arrays is read live by the compiled
model, or refused with a CompileError naming the layer and the attribute; never frozen. A weight
whose dtype, shape or strides change in place is seen at the next call, never read as garbage."""

from __future__ import annotations

import operator
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import tinycomp as tc
from tests.reliability.rel_helpers import assert_matches_eager
from tinycomp.errors import CompileError
from tinycomp.frontend.tracer import trace
from tinycomp.nn import Layer, Linear, Sequential, Tensor, manual_seed

X = np.linspace(-1.5, 2.0, 3 * 4, dtype=np.float32).reshape(3, 4)


class Reads(Layer):
    """A layer whose forward() reads its parameter `w`, scalar parameter `s` and plain NumPy array
    attributes (`a`, and in a list, a tuple and a dict) in the way `how` names."""

    def __init__(self, how):
        rng = np.random.default_rng(3)
        self.how = how
        self.w = Tensor(rng.standard_normal((4, 4)))
        self.s = Tensor(np.float32(1.5))
        self.a = np.linspace(0.5, 2.0, 4, dtype=np.float32)
        self.arrays = [np.ones(4, np.float32), np.full(4, 2.0, np.float32)]
        self.pair = (np.full(4, 0.25), "a tuple item that is not an array")
        self.table = {"scale": np.full(4, 3.0, np.float32)}
        self.mask, self.counts = np.array([True, False, True, False]), np.arange(4)  # cast as eager casts them

    def forward(self, x):
        return FORWARDS[self.how](self, x)


LIVE = {
    "x @ Tensor(self.w)": lambda m, x: x @ Tensor(m.w),
    "x @ Tensor(self.w.data)": lambda m, x: x @ Tensor(m.w.data),
    "x @ Tensor(self.w.numpy())": lambda m, x: x @ Tensor(m.w.numpy()),
    "Tensor(self.w) * 2 twice": lambda m, x: x @ (Tensor(m.w) * 2) + x @ Tensor(m.w),
    "x @ self.w.data": lambda m, x: x @ m.w.data,
    "x * self.s.data": lambda m, x: x * m.s.data,
    "self.s.numpy() * x": lambda m, x: m.s.numpy() * x,
    "x * self.a": lambda m, x: x * m.a,
    "self.a * x": lambda m, x: m.a * x,
    "Tensor(self.a) * 2 + x": lambda m, x: Tensor(m.a) * 2 + x,
    "array in a list": lambda m, x: x * m.arrays[1] + m.arrays[0],
    "array in a tuple": lambda m, x: x - m.pair[0],
    "array in a dict": lambda m, x: x / m.table["scale"],
    "bool and int arrays": lambda m, x: x * m.mask + m.counts,
}

REFUSED = {  # forward -> what the message says the forward did
    "Tensor(self.w.data * 2)": (lambda m, x: x @ Tensor(m.w.data * 2), "computes np.multiply on"),
    "self.w.numpy()[0]": (lambda m, x: x * m.w.numpy()[0], "indexes"),
    "np.asarray(self.w)": (lambda m, x: x @ Tensor(np.asarray(m.w)), r"converts to a NumPy array"),
    "np.array(self.w) * 2": (lambda m, x: x @ (np.array(m.w) * 2), r"converts to a NumPy array"),
    "float(self.s.data)": (lambda m, x: x * float(m.s.data), "converts to float"),
    "self.s.data.item()": (lambda m, x: x * m.s.data.item(), r"calls \.item\(\) on"),
    "self.a * 2": (lambda m, x: x * (m.a * 2), "computes np.multiply on"),
    "np.dot(self.w.data, self.a)": (lambda m, x: x * np.dot(m.w.data, m.a), "calls np.dot on"),
    "self.w.data.T": (lambda m, x: x @ Tensor(m.w.data.T), "makes a Tensor of a view or copy of its own parameter 'w'"),
    "self.w.data.T as operand": (lambda m, x: x * m.w.data.T[0:1].reshape(4), "indexes"),
    "x @ self.a.reshape(4, 1)": (lambda m, x: x @ m.a.reshape(4, 1),
                                 "passes to matmul a view or copy of its own NumPy array attribute 'a'"),
    "Tensor(self.w).data * 2": (lambda m, x: x @ Tensor(Tensor(m.w).data * 2), "computes np.multiply on"),
    "self.w.data[:] = 0": (lambda m, x: m.w.data.__setitem__(slice(None), 0) or x, "writes into"),
    "self.arrays[1].sum()": (lambda m, x: x * m.arrays[1].sum(), "computes np.add on"),
    "if self.s.data > 1": (lambda m, x: x * 2 if m.s.data > 1 else x, "computes np.greater on"),
}
FORWARDS = {**LIVE, **{k: f for k, (f, _) in REFUSED.items()}}


def edit_in_place(m):
    m.w.data *= -1.5
    m.s.data *= 3
    m.a *= 4
    for arr in (*m.arrays, m.pair[0], m.table["scale"]):
        arr += 0.5
    m.mask[1] = True
    m.counts *= 3


def rebind_same_shapes(m):
    m.w = Tensor(np.eye(4) * 3)
    m.s = Tensor(np.float32(-2.0))
    m.a = np.full(4, -1.0, np.float32)
    m.arrays[1] = np.arange(4, dtype=np.float32)
    m.table["scale"] = np.full(4, 0.5, np.float32)
    m.counts = np.arange(4) - 5
    if m.how == "array in a tuple":  # a new tuple: a container, so the structure changed
        m.pair = (np.full(4, -3.0), m.pair[1])


@pytest.mark.parametrize("how", LIVE)
@pytest.mark.parametrize("change", [edit_in_place, rebind_same_shapes])
def test_read_live(how, change):
    m = Reads(how)
    fast = tc.compile(m, input_shape=(None, 4))
    before = assert_matches_eager(fast(X).data, m, X)
    change(m)
    for rows in (1, 3, 300):  # the per-call fast path (small batches) and the general one
        x = np.resize(X, (rows, 4))
        after = assert_matches_eager(fast(x).data, m, x)
    assert not np.allclose(after[:3], before), "the change does not show in the eager model either"
    tuple_rebound = how == "array in a tuple" and change is rebind_same_shapes
    assert fast.stats.compiles == 1 + tuple_rebound  # read live, not recompiled


@pytest.mark.parametrize("how", REFUSED)
def test_stale_read_is_refused(how):
    m = Reads(how)
    before = m.w.data.copy()
    _, did = REFUSED[how]
    with pytest.raises(CompileError, match=did) as err:
        tc.compile(m, input_shape=(None, 4))
    message = str(err.value)
    assert "Reads (the top-level model)" in message and "its own" in message
    assert any(f"'{attr}'" in message for attr in ("w", "s", "a", "arrays.1")), message
    assert "reads live" in message and "Tensor" in message  # suggests the Tensor form
    np.testing.assert_array_equal(m.w.data, before)  # nothing was written into the model


class Scale(Layer):
    def __init__(self):
        self.s = Tensor(np.full(4, 2.0))

    def forward(self, x):
        return x * float(self.s.data[0])


def test_refusal_names_the_layer_and_the_attribute_in_a_nested_model():
    manual_seed(0)
    model = Sequential(Linear(4, 4), Scale())
    with pytest.raises(CompileError, match=r"Scale at '1' indexes its own parameter 's' \(path '1.s'\)"):
        tc.compile(model, input_shape=(None, 4))

    class Reader(Layer):
        def __init__(self):
            self.inner = Linear(4, 4)

        def forward(self, x):
            return x @ Tensor(self.inner.weight.data * 2)

    with pytest.raises(CompileError, match=r"Reader \(the top-level model\) computes np.multiply on Linear at "
                                           r"'inner''s parameter 'weight' \(path 'inner.weight'\)"):
        tc.compile(Reader(), input_shape=(None, 4))


def test_the_model_holds_its_own_arrays_again_after_a_trace():
    m = Reads("array in a tuple")
    def held():
        return [m.w, m.w.data, m.s.data, m.a, m.arrays, *m.arrays, m.pair, *m.pair, m.table, m.table["scale"]]
    before = held()
    trace(m, (None, 4))
    assert all(map(operator.is_, held(), before))
    assert all(type(a) is np.ndarray for a in (m.w.data, m.a, *m.arrays, m.pair[0]))


def test_printing_and_shapes_while_tracing_are_not_refused(capsys):
    class Looks(Layer):
        def __init__(self):
            self.w = Tensor(np.eye(4))
            self.a = np.ones(4, np.float32)

        def forward(self, x):
            print(self.w, self.w.data, self.a, np.shape(self.a), len(self.w.data))
            return x @ self.w.reshape(self.w.data.shape[0], 4) * self.a

    model = Looks()
    fast = tc.compile(model, input_shape=(None, 4))
    assert "Tensor(data=" in capsys.readouterr().out
    model.a[:] = 3
    assert_matches_eager(fast(X).data, model, X)


def test_another_thread_using_the_model_while_it_is_traced_is_not_refused():
    """Only the tracing thread is refused anything: another one computing with the same arrays
    meanwhile gets plain NumPy results (here while forward() itself waits for it)."""
    seen = {}

    class Waits(Layer):
        def __init__(self):
            self.w = Tensor(np.full((4, 4), 0.5))

        def forward(self, x):
            with ThreadPoolExecutor(1) as pool:
                seen["other"] = pool.submit(lambda: self.w.data * 2 + np.asarray(self.w)).result()
            seen["tracing"] = threading.current_thread()
            return x @ self.w

    model = Waits()
    tc.compile(model, input_shape=(None, 4))
    assert type(seen["other"]) is np.ndarray and np.all(seen["other"] == 1.5)


# ---------------------------------------------------------------- weights changed in place

@pytest.mark.parametrize("rows", [1, 300], ids=["fast-path", "general-path"])
def test_weight_dtype_changed_in_place_is_seen(rows):
    manual_seed(0)
    model = Sequential(Linear(4, 3))
    fast = tc.compile(model, input_shape=(None, 4))
    x = np.resize(X, (rows, 4))
    fast(x), fast(x)  # the fast path now holds the weight's pointer
    w = model[0].weight
    w.data[:] = np.arange(12, dtype=np.float32).reshape(4, 3) * 1e-7  # int32 bits of these: ~0.8e9
    w.data.dtype = np.int32  # the same memory, now read as int32 by the eager model
    want = model(Tensor(x)).data
    got = fast(x).data
    np.testing.assert_allclose(got, want, rtol=1e-6)  # float32 rounding of ~1e9-sized sums, not garbage
    w.data.dtype = np.float32
    assert_matches_eager(fast(x).data, model, x)


@pytest.mark.parametrize("rows", [1, 300], ids=["fast-path", "general-path"])
def test_weight_strides_changed_in_place_are_seen(rows):
    manual_seed(0)
    model = Sequential(Linear(4, 4))
    fast = tc.compile(model, input_shape=(None, 4))
    x = np.resize(X, (rows, 4))
    fast(x), fast(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # NumPy 2.4 deprecates setting strides
        model[0].weight.data.strides = (4, 16)  # the same memory, transposed
    assert_matches_eager(fast(x).data, model, x)


def test_weight_shape_changed_in_place_is_a_clear_error_or_recompiles():
    manual_seed(0)
    model = Sequential(Linear(4, 4))
    fast = tc.compile(model, input_shape=(None, 4))
    fast(X), fast(X)
    w = model[0].weight.data
    w.shape = (2, 8)  # no longer a (4, 4) matrix: the model itself cannot run
    with pytest.raises(ValueError, match=r"\(N, 4\) @ \(2, 8\)"):
        fast(X)
    w.shape = (4, 4)
    assert_matches_eager(fast(X).data, model, X)
    array_model = Reads("x * self.a")
    fast = tc.compile(array_model, input_shape=(None, 4))
    fast(X)
    array_model.a.shape = (1, 4)  # still broadcasts: recompiled for the new shape
    assert_matches_eager(fast(X).data, array_model, X)
    assert fast.stats.compiles == 2


def test_a_layer_attribute_kept_in_slots_is_refused_by_name():
    """A Tensor or sub-layer in a Layer's __slots__ was traced as a constant and never watched: in-place
    edits, rebinding, even a shape that breaks the model were ignored (eager raised)."""
    from tinycomp.nn import Layer, Linear

    class Slotted(Layer):
        __slots__ = ("w", "inner")

        def __init__(self):
            self.w = Tensor(np.ones((4, 3), np.float32))
            self.inner = Linear(3, 2)

        def forward(self, x):
            return self.inner(x @ self.w)

    with pytest.raises(tc.CompileError, match=r"^Slotted \(the top-level model\) keeps 'w', 'inner' in __slots__: "
                                              r"tinycomp reads a layer's attributes from its __dict__"):
        tc.compile(Slotted())(np.ones((2, 4), np.float32))


class LazyHead(Layer):
    """Builds its head on the first forward() (a lazy layer) and caches a scale there too: before
    the trace's walk of the model could see either."""

    def __init__(self):
        self.body, self.head, self.scale = Linear(4, 6), None, None

    def forward(self, x):
        if self.head is None:
            self.head = Linear(x.shape[1] + 2, 3)
            self.scale = Tensor(np.full(3, 0.5, np.float32))
        return self.head(self.body(x)) * self.scale


def test_layers_a_forward_builds_on_its_first_run_are_read_live():
    """Their weights were traced as constants while the compiled model took them for live reads:
    an edit to them never showed (27.4 away from eager). The trace runs again, seeing them."""
    manual_seed(5)
    model = LazyHead()
    fast = tc.compile(model)
    assert_matches_eager(fast(X).data, model, X)
    model.head.weight.data[:] = 5.0
    model.scale.data[:] = 10.0
    assert_matches_eager(fast(X).data, model, X)
    model.head.weight = Tensor(np.full((6, 3), -1.0, np.float32))
    assert_matches_eager(fast(X).data, model, X)
    assert fast.stats.compiles == 1
    assert fast.graph.nodes("const") == []
