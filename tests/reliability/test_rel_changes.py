"""Issue 7: the model changes after compiling. Weight edits show live; structural changes are
noticed at the next call and recompiled; never stale numbers."""

from __future__ import annotations

import gc
import timeit
import weakref
from collections import OrderedDict

import numpy as np
import pytest

import tinycomp as tc
from tests.models import CASES, eager_eval
from tests.reliability.rel_helpers import assert_matches_eager
from tinycomp.binding import StructureGuard
from tinycomp.nn import GELU, Dropout, Layer, Linear, ReLU, Sequential, Sigmoid, Tanh, Tensor, manual_seed


def small_mlp():
    manual_seed(3)
    return Sequential(Linear(6, 8), ReLU(), Dropout(0.5), Linear(8, 4))


X = np.random.default_rng(0).standard_normal((5, 6)).astype(np.float32)


def check(fast, model, x=X):
    return assert_matches_eager(fast(x).data, model, x)


def test_in_place_weight_edit_is_seen_without_recompiling():
    model = small_mlp()
    fast = tc.compile(model)
    check(fast, model)
    model.layers[0].weight.data *= -2.0
    model.layers[3].bias.data[:] = 5.0
    check(fast, model)
    model.layers[0].weight.data[0, 0] = np.nan
    check(fast, model)
    assert fast.stats.compiles == 1


@pytest.mark.parametrize("new", [lambda w: Tensor(w * 3), lambda w: w * 3, lambda w: (w * 3).astype(np.float64),
                                 lambda w: np.asfortranarray(w * 3)],
                         ids=["Tensor", "float32-array", "float64-array", "fortran-array"])
def test_same_shape_rebinding_is_seen_without_recompiling(new):
    """DESIGN §1: a new Tensor or array of the same shape shows in the next call (arrays are read as
    parameters, though the eager Linear itself only takes Tensors)."""
    model = small_mlp()
    fast = tc.compile(model)
    before = fast(X).data.copy()
    model.layers[0].weight = new(model.layers[0].weight.data)
    after = fast(X).data.copy()
    assert not np.allclose(before, after)
    value = model.layers[0].weight
    model.layers[0].weight = value if isinstance(value, Tensor) else Tensor(value)
    np.testing.assert_array_equal(fast(X).data, after)
    check(fast, model)
    assert fast.stats.compiles == 1


def test_rebinding_to_a_different_shape_recompiles():
    model = small_mlp()
    fast = tc.compile(model)
    check(fast, model)
    model.layers[3] = Linear(8, 7)  # replaced sub-layer with another output width
    y = check(fast, model)
    assert y.shape == (5, 7) and fast.stats.compiles == 2
    model.layers[3].weight = Tensor(np.ones((8, 2), np.float32))  # rebinding a weight: (8, 7) -> (8, 2)
    model.layers[3].bias = Tensor(np.zeros(2, np.float32))
    assert check(fast, model).shape == (5, 2) and fast.stats.compiles == 3


def test_in_place_resize_of_parameter_data_recompiles():
    model = small_mlp()
    fast = tc.compile(model)
    check(fast, model)
    model.layers[3].weight.data = np.ones((8, 3), np.float32)
    model.layers[3].bias.data = np.zeros(3, np.float32)
    assert check(fast, model).shape == (5, 3)
    assert fast.stats.compiles == 2


def test_inconsistent_shapes_are_a_clear_error_not_stale_numbers():
    model = small_mlp()
    fast = tc.compile(model)
    fast(X)
    model.layers[0].weight = Tensor(np.ones((6, 9), np.float32))  # next layer still expects 8
    with pytest.raises(ValueError, match="shape mismatch"):
        fast(X)
    model.layers[0].weight = Tensor(np.ones((6, 8), np.float32))
    check(fast, model)


def test_appending_and_removing_layers_recompiles():
    model = small_mlp()
    fast = tc.compile(model)
    check(fast, model)
    model.layers.append(Sigmoid())
    assert (check(fast, model) > 0).all() and fast.stats.compiles == 2
    model.layers.append(Linear(4, 2))
    assert check(fast, model).shape == (5, 2) and fast.stats.compiles == 3
    del model.layers[-2:]
    check(fast, model)
    model.layers.insert(1, Tanh())
    check(fast, model)
    assert fast.stats.compiles == 5


@pytest.mark.parametrize("swap", [
    lambda m: setattr(m.block, "relu", Tanh()),
    lambda m: setattr(m.block, "fc2", Linear(16, 16)),
    lambda m: setattr(m, "head", Linear(16, 4, bias=False)),
    lambda m: setattr(m.head, "bias", None),
    lambda m: setattr(m, "block", CASES["residual_net"].builder().block),
], ids=["activation", "linear", "head-no-bias", "bias-None", "whole-block"])
def test_replacing_a_sub_layer_recompiles(swap):
    c = CASES["residual_net"]
    model = c.build()
    model.head.bias.data[:] = 0.5  # nonzero, so dropping the bias changes the numbers
    fast = tc.compile(model)
    x = c.sample(6)
    before = fast(x).data.copy()
    swap(model)
    after = assert_matches_eager(fast(x).data, model, x)
    assert not np.array_equal(before, after)
    assert fast.stats.compiles == 2


def test_list_and_dict_children_are_watched():
    c = CASES["list_dict_layer"]
    model = c.build()
    fast = tc.compile(model)
    x = c.sample(3)
    fast(x)
    model.heads[1] = Linear(6, 6)
    assert_matches_eager(fast(x).data, model, x)
    model.branches["left"] = Linear(6, 3)
    assert_matches_eager(fast(x).data, model, x)
    assert fast.stats.compiles == 3


class DictChain(Layer):
    """Applies the layers of a dict in the dict's order."""

    def __init__(self, kind):
        self.blocks = kind(a=Linear(4, 4), b=Linear(4, 4))
        self.act = ReLU()

    def forward(self, x):
        for layer in self.blocks.values():
            x = self.act(layer(x))
        return x


def _reinsert_first(blocks):
    blocks["a"] = blocks.pop("a")


def _move_first_to_end(blocks):
    blocks.move_to_end("a")


@pytest.mark.parametrize("native", [True, False], ids=["native step", "python paths"])
@pytest.mark.parametrize("kind, reorder", [(dict, _reinsert_first), (OrderedDict, _reinsert_first),
                                           (OrderedDict, _move_first_to_end)])
def test_reordering_a_dict_of_layers_recompiles(kind, reorder, native, monkeypatch):
    """The structure's signature sorted a dict's entries by key, and OrderedDict.move_to_end leaves the
    dict's version tag: the old order's results came back, stale."""
    from tinycomp.runtime import native_guard

    if not native:
        monkeypatch.setattr(native_guard, "AVAILABLE", False)
    model = DictChain(kind)
    fast = tc.compile(model)
    x = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)
    before = fast(x).data
    fast(x)  # armed the hot paths
    reorder(model.blocks)
    assert not np.allclose(eager_eval(model, x), before)
    for _ in range(2):
        assert_matches_eager(fast(x).data, model, x)
    assert fast.stats.compiles == 2


class Scaled(Layer):
    def __init__(self):
        self.fc = Linear(4, 4)
        self.scale = 0.5

    def forward(self, x):
        return self.fc(x) * self.scale


def test_rebinding_a_traced_constant_recompiles():
    model = Scaled()
    fast = tc.compile(model)
    x = X[:, :4]
    fast(x)
    model.scale = 3.0
    assert_matches_eager(fast(x).data, model, x)
    assert fast.stats.compiles == 2


def scaled_class():
    """A fresh Layer class with a class-level number and forward (each test patches its own)."""
    class ClassScaled(Layer):
        factor = 2.0

        def __init__(self):
            manual_seed(4)
            self.fc = Linear(4, 3)

        def forward(self, x):
            return self.fc(x) * self.factor

    return ClassScaled


@pytest.mark.parametrize("batch", [1, 5], ids=["native hot call", "python path"])
def test_rebinding_a_class_attribute_or_method_recompiles(batch):
    """The trace reads a class-level number or forward as it reads an instance's: rebinding one on
    the class is seen at the next call, on the batch-1 native step too (one call arms it)."""
    cls = scaled_class()
    model = cls()
    fast = tc.compile(model)
    x = X[:batch, :4]
    for _ in range(2):
        assert_matches_eager(fast(x).data, model, x)
    cls.factor = 3.0
    assert_matches_eager(fast(x).data, model, x)
    assert fast.stats.compiles == 2
    fast(x)
    cls.forward = lambda self, x: ReLU()(self.fc(x)) - self.factor
    assert_matches_eager(fast(x).data, model, x)
    assert fast.stats.compiles == 3


def test_rebinding_a_method_of_a_library_layer_class_recompiles(monkeypatch):
    """A library layer's class is watched like the user's (`Sigmoid.forward` patched for a test)."""
    model = Sequential(Linear(6, 3), Sigmoid())
    fast = tc.compile(model)
    check(fast, model)
    monkeypatch.setattr(Sigmoid, "forward", lambda self, x: x * 5)
    check(fast, model)
    assert fast.stats.compiles == 2


def test_reading_a_class_annotations_does_not_recompile():
    """CPython adds `__annotations__` to a class dict when it is first read: no change of the model."""
    cls = scaled_class()
    model = cls()
    fast = tc.compile(model)
    fast(X[:1, :4])
    assert cls.__annotations__ == {}
    assert_matches_eager(fast(X[:1, :4]).data, model, X[:1, :4])
    assert fast.stats.compiles == 1


class Tied(Layer):
    def __init__(self):
        self.a = Linear(5, 5)
        self.b = Linear(5, 5)
        self.b.weight = self.a.weight  # tied: one parameter node read through `a.weight`

    def forward(self, x):
        return self.b(GELU()(self.a(x)))


def test_untying_shared_weights_recompiles():
    model = Tied()
    fast = tc.compile(model)
    x = X[:, :5]
    fast(x)
    model.b.weight = Tensor(np.eye(5, dtype=np.float32))  # same shape, but no longer the same tensor
    assert_matches_eager(fast(x).data, model, x)
    assert fast.stats.compiles == 2


def test_train_mode_after_compiling_stays_an_inference_model():
    model = small_mlp()
    fast = tc.compile(model)
    eval_out = fast(X).data.copy()
    model.train()
    for _ in range(3):
        np.testing.assert_array_equal(fast(X).data, eval_out)  # dropout stays folded away
    assert model.training and model.layers[2].training  # the user's flags are left alone
    model.eval()
    np.testing.assert_array_equal(fast(X).data, eval_out)
    assert fast.stats.compiles == 1


def test_check_mode_sees_changes_too():
    model = small_mlp()
    fast = tc.compile(model, check=True)
    fast(X)
    model.layers.append(Linear(4, 2))
    assert fast(X).shape == (5, 2)
    model.layers[0].weight.data[:] = 0.25
    np.testing.assert_allclose(fast(X).data, eager_eval(model, X), rtol=1e-5, atol=1e-6)


def test_structure_check_is_cheap():
    """The per-call structure check on the reference MLP stays a few microseconds."""
    model = CASES["reference_mlp"].build()
    fast = tc.compile(model)
    fast(CASES["reference_mlp"].sample(1))
    guard = fast._artifact.guard
    per_call = min(timeit.repeat(guard.unchanged, number=2000, repeat=7)) / 2000
    assert per_call < 20e-6, f"structure check takes {per_call * 1e6:.1f} us per call"


def test_guard_pins_what_it_compares_so_a_freed_id_cannot_come_back():
    """Signatures compare ids; if a replaced layer were freed, a new layer could reuse its id and
    look unchanged. The guard holds every object whose id it recorded."""
    model = Sequential(Linear(4, 4), ReLU())
    guard = StructureGuard(model)
    old = weakref.ref(model.layers[1])
    model.layers[1] = Tanh()
    gc.collect()
    assert old() is not None
    assert not guard.unchanged()


@pytest.mark.parametrize("native", [True, False], ids=["native step", "python paths"])
@pytest.mark.parametrize("width", [64, 1024])
def test_a_weight_whose_memory_moves_in_place_is_read_where_it_now_is(width, native, monkeypatch):
    """`w.resize(...)` twice reallocates w's memory while w stays the same object, shape, dtype and
    strides: the cached pointer then read freed memory (a segfault at 4096 x 4096, garbage at 64)."""
    from tinycomp.runtime import native_guard

    if not native:
        monkeypatch.setattr(native_guard, "AVAILABLE", False)
    model = Sequential(Linear(width, width))
    model.eval()
    fast = tc.compile(model)
    x = np.random.default_rng(0).standard_normal((3, width)).astype(np.float32)
    model[0].weight.data = np.random.default_rng(1).standard_normal((width, width)).astype(np.float32)
    for _ in range(3):  # the first call validates the array; later ones take the remembered pointer
        fast(x)
    w = model[0].weight.data
    before = w.ctypes.data
    w.resize((64 * width, width), refcheck=False)  # far larger: realloc moves the data
    w.resize((width, width), refcheck=False)  # back: the same object, shape, dtype and strides
    assert w.ctypes.data != before
    w[:] = 0.5
    for _ in range(2):
        assert_matches_eager(fast(x).data, model, x)


class _Doubled(Linear):
    def forward(self, x):
        return super().forward(x) * 2


class _Plain(Linear):
    pass


@pytest.mark.parametrize("native", [True, False], ids=["native step", "python paths"])
def test_a_layer_given_another_class_recompiles_and_pickling_does_not(native, monkeypatch):
    """`layer.__class__ = Other` changes neither the layer's dict nor its identity: the compiled model
    kept the old class's forward. Pickling a model (copyreg caches __slotnames__ in each class dict)
    made the next call recompile although nothing had changed."""
    import copy
    import pickle

    from tinycomp.runtime import native_guard

    if not native:
        monkeypatch.setattr(native_guard, "AVAILABLE", False)
    model = Sequential(_Plain(4, 4), ReLU(), Linear(4, 3))
    model.eval()
    fast = tc.compile(model)
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    for _ in range(3):
        fast(x)
    pickle.dumps(model)
    copy.deepcopy(fast)
    assert_matches_eager(fast(x).data, model, x)
    assert fast.stats.compiles == 1
    model[0].__class__ = _Doubled
    for _ in range(2):
        assert_matches_eager(fast(x).data, model, x)
    assert fast.stats.compiles == 2


@pytest.mark.parametrize("native", [True, False], ids=["native step", "python paths"])
def test_a_layer_or_tensor_given_a_new_dict_is_read_from_it(native, monkeypatch):
    """`obj.__dict__ = {...}` swaps the dict an object holds without touching the old one, whose
    version tag and contents the guards watched: the compiled model kept the old weights (5.1 off)."""
    from tinycomp.runtime import native_guard

    if not native:
        monkeypatch.setattr(native_guard, "AVAILABLE", False)
    model = Sequential(Linear(8, 3))
    model.eval()
    fast = tc.compile(model)
    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    for batch in (1, 4):
        for _ in range(3):
            fast(x[:batch])
        layer = model[0]
        layer.__dict__ = {**vars(layer), "weight": Tensor(np.random.default_rng(batch).standard_normal((8, 3)))}
        assert_matches_eager(fast(x[:batch]).data, model, x[:batch])
        for _ in range(2):
            fast(x[:batch])
        layer.weight.__dict__ = {"data": np.full((8, 3), 0.25 * batch, np.float32)}
        assert_matches_eager(fast(x[:batch]).data, model, x[:batch])
