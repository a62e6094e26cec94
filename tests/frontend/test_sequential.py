"""Sequential, Layer, train/eval and set_training_mode (DESIGN.md §1, issue 2)."""

import numpy as np
import pytest

from tinycomp.nn import Dropout, Layer, Linear, ReLU, Sequential, Tanh, Tensor, set_training_mode

MISMATCH = (
    "Cannot perform matrix multiplication: (32, 128) @ (256, 10). Inner dimensions must match: 128 ≠ 256"
)


def f64(t):
    return np.asarray(t.data, dtype=np.float64)


class Scale(Layer):
    """A custom Layer whose forward does not accept `training`."""

    def __init__(self, k):
        self.k = k

    def forward(self, x):
        return x * self.k


class Recorder(Layer):
    """Records the `training` value it receives."""

    def __init__(self):
        self.seen = []

    def forward(self, x, training=None):
        self.seen.append(training)
        return x


class Block(Layer):
    """A custom Layer holding layers in an attribute, a list and a dict."""

    def __init__(self):
        self.inner = Dropout(0.5)
        self.stack = [Dropout(0.2), Sequential(Dropout(0.1), ReLU())]
        self.table = {"a": Dropout(0.3), "b": {"deep": Dropout(0.4)}}

    def forward(self, x):
        return self.inner(x)

    def all_layers(self):
        return [self.inner, *self.stack, *self.stack[1].layers, self.table["a"], self.table["b"]["deep"]]


def test_base_layer_contract():
    layer = Layer()
    with pytest.raises(NotImplementedError):
        layer.forward(Tensor([1.0]))
    with pytest.raises(NotImplementedError):
        layer(Tensor([1.0]))
    assert layer.parameters() == []
    assert Layer.training is True
    assert layer.train() is layer and layer.training is True
    assert layer.eval() is layer and layer.training is False
    layer.train(False)
    assert layer.training is False


def test_varargs_and_list_construction():
    a, b, c = Linear(4, 3), ReLU(), Linear(3, 2)
    for model in (Sequential(a, b, c), Sequential([a, b, c]), Sequential((a, b, c))):
        assert isinstance(model, Layer)
        assert isinstance(model.layers, list)
        assert model.layers == [a, b, c]
    assert len(Sequential()) == 0


def test_chaining_matches_float64():
    l1, l2 = Linear(6, 5), Linear(5, 3)
    l1.bias = Tensor(np.linspace(-1, 1, 5))
    l2.bias = Tensor([0.1, 0.2, 0.3])
    model = Sequential(l1, ReLU(), l2, Tanh())
    x = np.random.default_rng(3).standard_normal((8, 6)).astype(np.float32)
    h = np.maximum(x.astype(np.float64) @ f64(l1.weight) + f64(l1.bias), 0.0)
    want = np.tanh(h @ f64(l2.weight) + f64(l2.bias))
    got = model(Tensor(x))
    assert isinstance(got, Tensor) and got.shape == (8, 3)
    np.testing.assert_allclose(f64(got), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(model.forward(Tensor(x)).data, got.data)


def test_parameters_collected_in_order_without_duplicates():
    shared = Linear(4, 4)
    other = Linear(4, 2, bias=False)
    model = Sequential(shared, ReLU(), shared, other)
    params = model.parameters()
    assert [id(p) for p in params] == [id(shared.weight), id(shared.bias), id(other.weight)]
    nested = Sequential(model, shared, Sequential(other))
    assert [id(p) for p in nested.parameters()] == [id(p) for p in params]


def test_training_passed_to_layers_that_accept_it_only():
    rec = Recorder()
    inner_rec = Recorder()
    model = Sequential(Scale(2.0), rec, ReLU(), Sequential(inner_rec), lambda x: x)
    x = Tensor(np.ones((2, 3)))
    np.testing.assert_array_equal(model(x, training=True).data, 2 * np.ones((2, 3)))
    model(x, training=False)
    model(x)
    assert rec.seen == [True, False, None]
    assert inner_rec.seen == [True, False, None]


def test_training_argument_controls_dropout():
    x = Tensor(np.ones(10_000))
    model = Sequential(Dropout(0.5))
    model.eval()
    y = model(x, training=True)
    assert 0.45 < np.mean(y.data == 0) < 0.55
    model.train()
    assert model(x, training=False) is x
    assert model(x) is not x  # training mode by default
    model.eval()
    assert model(x) is x


def test_train_eval_reach_nested_layers():
    block = Block()
    model = Sequential(Linear(3, 3), block, Dropout(0.5))
    everything = [model, *model.layers, *block.all_layers()]
    assert model.eval() is model
    assert all(layer.training is False for layer in everything)
    assert model.train() is model
    assert all(layer.training is True for layer in everything)
    model.train(False)
    assert all(layer.training is False for layer in everything)
    set_training_mode(model, True)
    assert all(layer.training is True for layer in everything)
    x = Tensor(np.ones((4, 3)))
    model.eval()
    assert block(x) is x


def test_set_training_mode_is_cycle_safe():
    a, b = Block(), Block()
    everything = [a, b, *a.all_layers(), *b.all_layers()]
    a.partner, b.partner = b, a
    a.me = a
    a.stack.append(a.stack)  # a list that contains itself
    a.table["self"] = a.table
    set_training_mode(a, False)
    assert all(layer.training is False for layer in everything)
    a.train()
    assert b.training is True and b.table["b"]["deep"].training is True


def test_train_does_not_leak_to_other_instances_or_class():
    d1, d2 = Dropout(0.5), Dropout(0.5)
    Sequential(d1).eval()
    assert d1.training is False
    assert d2.training is True
    assert Dropout.training is True and Layer.training is True


def test_len_indexing_iteration():
    layers = [Linear(4, 3), ReLU(), Linear(3, 2)]
    model = Sequential(*layers)
    assert len(model) == 3
    assert model[0] is layers[0] and model[-1] is layers[2]
    assert list(model) == layers
    assert [layer for layer in model] == layers
    with pytest.raises(IndexError):
        model[3]


def test_mismatched_chain_raises():
    model = Sequential(Linear(784, 128), Linear(256, 10))
    with pytest.raises(ValueError) as info:
        model(Tensor(np.zeros((32, 784))))
    assert MISMATCH in str(info.value)
    assert "shape mismatch" in str(info.value)


def test_a_layer_class_made_per_model_goes_with_its_model():
    # Sequential(x, training=...) asks each layer's class once whether forward takes `training`;
    # that answer held every class (and what its closures hold) for the process's life
    import gc
    import weakref

    def make():
        class Scale(Layer):
            def forward(self, x):
                return x * 2.0
        return Sequential(Linear(3, 3), Scale())

    model = make()
    model(Tensor(np.ones((2, 3))), training=False)
    kind = weakref.ref(type(model.layers[1]))
    del model
    gc.collect()
    assert kind() is None


def test_training_goes_to_forward_as_in_tinytorchs_sequential():
    """TinyTorch's layers define __call__(self, x) and forward(self, x, training=...): Sequential passed
    `training` to __call__, a TypeError; it goes to forward, as TinyTorch's Sequential passes it."""
    class Doubling(Layer):
        def forward(self, x, training=True):
            return x * 2.0 if training else x

        def __call__(self, x):
            return self.forward(x)
    model = Sequential(Doubling())
    x = Tensor(np.ones((1, 3)))
    np.testing.assert_array_equal(model.forward(x, training=False).data, x.data)
    np.testing.assert_array_equal(model.forward(x, training=True).data, 2 * x.data)
