"""Dropout (DESIGN.md §1, issue 2) and its TinyTorch helper methods."""

import numpy as np
import pytest

from tinycomp.nn import Dropout, Layer, Linear, Tensor, manual_seed


@pytest.mark.parametrize("p", [-0.1, 1.5, -1e-9, 1.0000001, float("nan"), float("inf")])
def test_p_outside_unit_interval_raises_value_error_naming_p(p):
    with pytest.raises(ValueError, match="p"):
        Dropout(p)
    with pytest.raises(ValueError) as info:
        Dropout(p)
    assert "p" in str(info.value) and str(p) in str(info.value)


@pytest.mark.parametrize("p", [0, 0.0, 0.5, 1, 1.0])
def test_valid_p(p):
    d = Dropout(p)
    assert d.p == p
    assert isinstance(d, Layer)
    assert d.parameters() == []


def test_default_p():
    assert Dropout().p == 0.5


def test_eval_returns_the_input_object_itself():
    x = Tensor(np.ones((4, 5)))
    d = Dropout(0.5)
    d.eval()
    assert d.training is False
    assert d(x) is x
    assert d.forward(x) is x
    assert Dropout(0.5).forward(x, training=False) is x


def test_a_plain_array_works_as_in_the_other_layers():
    x = np.ones((4, 5), np.float32)
    assert Dropout(0.5).eval()(x) is x
    manual_seed(0)
    y = Dropout(0.5)(x)  # training: a Tensor, kept values scaled by 1 / (1 - p)
    assert isinstance(y, Tensor) and set(np.unique(y.data)) <= {0.0, 2.0}
    assert np.array_equal(Dropout(1.0)(x).data, np.zeros((4, 5), np.float32))


def test_p_zero_is_identity_in_training():
    x = Tensor(np.arange(12.0).reshape(3, 4))
    d = Dropout(0.0)
    assert d.training is True
    y = d(x, training=True)
    np.testing.assert_array_equal(y.data, x.data)


def test_p_one_gives_zeros():
    x = Tensor([[1.0, -2.0, 3.0], [np.inf, -np.inf, np.nan]])
    y = Dropout(1.0)(x, training=True)
    assert isinstance(y, Tensor) and y.shape == x.shape and y.dtype == np.float32
    np.testing.assert_array_equal(y.data, np.zeros((2, 3)))


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.9])
def test_keep_rate_and_scaling(p):
    manual_seed(2024)
    x64 = np.random.default_rng(5).uniform(0.5, 2.0, 100_000)  # no zeros, so zeros mean dropped
    x = Tensor(x64)
    y = Dropout(p)(x, training=True)
    assert y.shape == x.shape and y.dtype == np.float32
    kept = y.data != 0
    assert abs(kept.mean() - (1 - p)) <= 0.02
    want = x.data.astype(np.float64)[kept] / (1.0 - p)
    np.testing.assert_allclose(y.data[kept].astype(np.float64), want, rtol=1e-6)
    # expectation is preserved (inverted dropout)
    assert y.data.astype(np.float64).mean() == pytest.approx(x.data.astype(np.float64).mean(), rel=0.03)


def test_dropout_does_not_modify_input():
    x = Tensor(np.ones(1000))
    Dropout(0.5)(x, training=True)
    np.testing.assert_array_equal(x.data, np.ones(1000))


def test_manual_seed_makes_masks_and_weights_reproducible():
    x = Tensor(np.ones((64, 64)))

    def run(seed):
        manual_seed(seed)
        w = Linear(32, 16).weight.data.copy()
        y = Dropout(0.5)(x, training=True).data.copy()
        m = Dropout(0.3)._generate_dropout_mask((10, 10)).data.copy()
        return w, y, m

    a, b, c = run(7), run(7), run(8)
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)
    for u, v in zip(a, c, strict=True):
        assert not np.array_equal(u, v)
    # consecutive calls under one seed draw fresh masks
    manual_seed(7)
    d = Dropout(0.5)
    assert not np.array_equal(d(x, training=True).data, d(x, training=True).data)


def test_should_apply_dropout_as_tinytorch():
    d = Dropout(0.5)
    assert d._should_apply_dropout(training=True) is True
    assert d._should_apply_dropout(training=False) is False
    assert Dropout(0.0)._should_apply_dropout(training=True) is False
    full = Dropout(1.0)
    assert full._should_apply_dropout(training=True) is True
    assert full._should_apply_dropout(training=False) is False


@pytest.mark.parametrize("p", [0.5, 0.3])
def test_generate_dropout_mask_as_tinytorch(p):
    """TinyTorch's own tests read `mask.shape` and `mask.data`, so the mask is a Tensor."""
    manual_seed(42)
    mask = Dropout(p)._generate_dropout_mask((2000,))
    assert isinstance(mask, Tensor)
    assert mask.shape == (2000,)
    values = set(np.unique(mask.data).tolist())
    assert values <= {0.0, float(np.float32(1.0 / (1.0 - p)))}
    nonzero = mask.data[mask.data != 0.0].astype(np.float64)
    np.testing.assert_allclose(nonzero, 1.0 / (1.0 - p), rtol=1e-6)
    assert abs(np.count_nonzero(mask.data) / 2000 - (1 - p)) < 0.05
    assert Dropout(0.5)._generate_dropout_mask((3, 4)).shape == (3, 4)


def test_forward_training_argument_overrides_self_training():
    x = Tensor(np.ones(10_000))
    d = Dropout(0.5)
    d.eval()
    y = d.forward(x, training=True)
    assert y is not x
    assert 0.45 < np.mean(y.data == 0) < 0.55
    d.train()
    assert d.training is True
    assert d(x, training=False) is x
    assert d.forward(x, training=None) is not x  # None means self.training (True)


# ---------------------------------------------------------------- the counter-based generator (issue 15)

def test_each_mask_is_the_layers_next_call_and_a_reseed_starts_over():
    d = Dropout(0.5)
    manual_seed(11)
    first = [d._generate_dropout_mask((40, 40)).data for _ in range(3)]
    assert not np.array_equal(first[0], first[1]) and not np.array_equal(first[1], first[2])
    manual_seed(11)  # no layer built between the seeds: d keeps its id, its call count restarts
    again = [d(Tensor(np.ones((40, 40))), training=True).data for _ in range(3)]
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)


def test_two_layers_and_a_copy_draw_different_masks():
    import copy

    manual_seed(12)
    a, b = Dropout(0.5), Dropout(0.5)
    c = copy.deepcopy(a)  # a new layer: same p, an id of its own
    masks = [layer._generate_dropout_mask((64, 64)).data for layer in (a, b, c)]
    assert not np.array_equal(masks[0], masks[1]) and not np.array_equal(masks[0], masks[2])


@pytest.mark.parametrize("copy_of", ["deepcopy", "pickle"])
def test_a_copy_is_numbered_when_made_so_a_reseed_replays_it(copy_of):
    """A copied or unpickled layer takes its id when it is made, as a built one does: seeding
    before and after its first call gives the same masks (numbered at its first draw, it took the
    id of that moment, and the second seed renumbered it)."""
    import copy
    import pickle

    layer = Dropout(0.5)
    made = copy.deepcopy(layer) if copy_of == "deepcopy" else pickle.loads(pickle.dumps(layer))
    x = Tensor(np.ones((40, 40), np.float32))
    manual_seed(13)
    first = made(x, training=True).data
    manual_seed(13)
    np.testing.assert_array_equal(made(x, training=True).data, first)


class Reversed(Layer):
    """Two Dropouts built in the other order than forward() calls them."""

    def __init__(self):
        self.second, self.first = Dropout(0.3), Dropout(0.5)

    def forward(self, x):
        return self.second(self.first(x))


def test_a_model_unpickled_after_a_seed_numbers_its_layers_in_build_order():
    """Unpickled after manual_seed, a model's Dropouts take the ids they had when built after that
    seed, whatever order forward() calls them in."""
    import pickle

    x = Tensor(np.ones((8, 8), np.float32))
    manual_seed(14)
    built = Reversed()
    want = built(x).data
    blob = pickle.dumps(built)
    manual_seed(14)
    np.testing.assert_array_equal(pickle.loads(blob)(x).data, want)


def test_draws_from_many_threads_take_each_call_once():
    """Concurrent calls each take a distinct call number: the masks are those of a serial run."""
    import threading

    d = Dropout(0.5)
    manual_seed(13)
    got: list[bytes] = []
    lock = threading.Lock()

    def work():
        for _ in range(25):
            mask = d._generate_dropout_mask((16, 16)).data.tobytes()
            with lock:
                got.append(mask)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    manual_seed(13)
    serial = {d._generate_dropout_mask((16, 16)).data.tobytes() for _ in range(150)}
    assert len(serial) == 150 and set(got) == serial
