"""`tc.compile(model, training=True)` keeps dropout: after the same `manual_seed` and the same number
of calls, eager and compiled draw the same masks (per layer and call, Philox; issue 15), at any batch
size and thread count. Judged against a float64 NumPy forward whose masks come from the documented
numbering (key from SeedSequence(seed), layer id = construction number since the seed, call count)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import tinycomp as tc
from tinycomp.ir.philox import MASK32, DropoutStream, dropout_mask
from tinycomp.nn import GELU, Dropout, Layer, Linear, ReLU, Sequential, Tensor, manual_seed
from tinycomp.parity import check_parity


def key_of(seed: int) -> tuple[int, int]:
    return tuple(int(w) for w in np.random.SeedSequence(seed).generate_state(2, np.uint32))


def odd_mlp() -> Sequential:
    return Sequential(Linear(13, 31), ReLU(), Dropout(0.5), Linear(31, 17), GELU(), Dropout(0.2), Linear(17, 5))


def forward64(model: Sequential, x: np.ndarray, streams: list[DropoutStream]) -> np.ndarray:
    """The model in float64 NumPy, dropout masks from `streams` (one per Dropout, in order)."""
    h, masks = x.astype(np.float64), iter(streams)
    for layer in model:
        if isinstance(layer, Linear):
            h = h @ layer.weight.data.astype(np.float64) + layer.bias.data.astype(np.float64)
        elif isinstance(layer, ReLU):
            h = np.maximum(h, 0)
        elif isinstance(layer, GELU):
            h = h / (1 + np.exp(-1.702 * h))
        else:
            h = h * dropout_mask(next(masks), h.shape, layer.p)
    return h


def inputs(rows: int, width: int = 13, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, width)).astype(np.float32)


@pytest.mark.parametrize("rows", [0, 1, 7, 129])
def test_eager_compiled_and_float64_agree_call_after_call(rows):
    manual_seed(0)
    model = odd_mlp()  # its two Dropouts are layers 0 and 1 since manual_seed(0)
    fast = tc.compile(model, training=True)
    x = inputs(rows)
    manual_seed(5)  # no layer built since: ids relative to this seed are -2 and -1
    eager = [model(Tensor(x)).data.copy() for _ in range(3)]
    manual_seed(5)
    compiled = [fast(x).data.copy() for _ in range(3)]
    key = key_of(5)
    for call, (e, c) in enumerate(zip(eager, compiled, strict=True)):
        ref = forward64(model, x, [DropoutStream(*key, layer=-2 & MASK32, call=call),
                                   DropoutStream(*key, layer=-1 & MASK32, call=call)])
        assert c.shape == e.shape == (rows, 5)
        report = check_parity(c, e, ref)
        assert report.ok, f"call {call}: {report}"
    if rows:
        assert not np.array_equal(compiled[0], compiled[1])  # each call draws new masks


@pytest.mark.parametrize("threads", [1, 3])
def test_masks_do_not_depend_on_batch_split_or_threads(threads):
    """A model that is only dropout multiplies each element once: eager and compiled are bit-equal,
    however the rows are split (threads=3 splits 1000 rows into chunks; rows run in blocks)."""
    manual_seed(1)
    model = Sequential(Dropout(0.3), Dropout(0.6))
    fast = tc.compile(model, training=True, threads=threads)
    x = inputs(1000, width=7) + 4  # no zeros
    manual_seed(2)
    eager = model(Tensor(x)).data
    manual_seed(2)
    np.testing.assert_array_equal(fast(x).data, eager)
    assert abs(np.mean(eager == 0) - (1 - 0.7 * 0.4)) < 0.01


def test_eager_and_compiled_calls_share_each_layers_call_count():
    """Calls in any mix each take the layers' next masks, as a run of eager calls would."""
    manual_seed(3)
    model = Sequential(Dropout(0.5))
    fast = tc.compile(model, training=True)
    x = inputs(50) + 4
    manual_seed(9)
    eager_only = [model(Tensor(x)).data for _ in range(4)]
    manual_seed(9)
    mixed = [fast(x).data, model(Tensor(x)).data, fast(x).data, model(Tensor(x)).data]
    for a, b in zip(eager_only, mixed, strict=True):
        np.testing.assert_array_equal(a, b)


def test_hot_and_full_path_calls_each_draw_once(monkeypatch):
    """Training-mode calls take the hot path now (they took the full one, 20-30 us of Python): it
    draws the masks only once the call is sure to run there, so calls it hands on (a strided input,
    a batch split across threads) draw once too, and the sequence is eager's."""
    from tinycomp.runtime.call import CompiledCall

    hot_runs = []
    real_hot = CompiledCall.hot

    def counted(self, *args, **kwargs):
        out = real_hot(self, *args, **kwargs)
        hot_runs.append(out is not None)
        return out

    monkeypatch.setattr(CompiledCall, "hot", counted)
    manual_seed(4)
    model = Sequential(Linear(7, 7), Dropout(0.5), Dropout(0.25))
    fast = tc.compile(model, training=True, threads=2)
    x = inputs(3, width=7) + 4
    calls = [x, np.asfortranarray(x), x, inputs(5000, width=7) + 4, x, x.tolist(), x]
    manual_seed(8)
    eager = [model(Tensor(np.asarray(c, np.float32))).data for c in calls]
    manual_seed(8)
    compiled = [fast(c).data for c in calls]
    for i, (e, c) in enumerate(zip(eager, compiled, strict=True)):
        np.testing.assert_allclose(c, e, rtol=2e-6, atol=2e-6, err_msg=f"call {i}")
        assert np.array_equal(c == 0, e == 0), f"call {i}: another mask"
    assert hot_runs.count(True) >= 3 and hot_runs.count(False) >= 2  # both paths took part


class TwiceAndUnused(Layer):
    """One Dropout called twice, and a second one whose result is thrown away (dead code)."""

    def __init__(self):
        self.drop, self.unused = Dropout(0.5), Dropout(0.5)

    def forward(self, x):
        self.unused(x)
        return self.drop(x) + self.drop(x) * 2


def test_a_layer_called_twice_and_a_dropout_left_unused_draw_as_eager():
    manual_seed(4)
    model = TwiceAndUnused()
    fast = tc.compile(model, training=True)
    assert fast(inputs(3)).shape == (3, 13)  # compiled now; the dead dropout is gone from the graph
    assert fast.graph.op_counts()["dropout"] == 2
    x = inputs(40) + 4
    for _ in range(2):
        manual_seed(6)
        eager = [model(Tensor(x)).data for _ in range(2)]
        manual_seed(6)
        compiled = [fast(x).data for _ in range(2)]
        for e, c in zip(eager, compiled, strict=True):
            np.testing.assert_array_equal(c, e)


class AlwaysDrops(Layer):
    """A forward that asks one Dropout for training mode whatever the model's mode; the other follows it."""

    def __init__(self):
        self.fc, self.forced, self.usual = Linear(13, 13), Dropout(0.5), Dropout(0.5)

    def forward(self, x):
        return self.usual(self.forced(self.fc(x), training=True))


@pytest.mark.parametrize("check", [False, True])
def test_dropout_called_with_training_true_draws_its_masks_in_an_inference_model(check):
    manual_seed(5)
    model = AlwaysDrops().eval()
    fast = tc.compile(model, check=check)  # for inference: `usual` is folded away, `forced` draws
    x = inputs(30) + 4
    manual_seed(11)
    eager = [model(Tensor(x)).data for _ in range(3)]
    manual_seed(11)
    compiled = [fast(x).data for _ in range(3)]
    linear64 = x.astype(np.float64) @ model.fc.weight.data.astype(np.float64) + model.fc.bias.data
    for e, c in zip(eager, compiled, strict=True):
        assert (c == 0).mean() > 0.3  # half the values dropped
        np.testing.assert_array_equal(c == 0, e == 0)  # the same mask
        # the kept values judged against float64: the linear's sums need not add in the order of
        # NumPy's BLAS, whose kernel varies with the CPU
        report = check_parity(c, e, np.where(e == 0, 0.0, 2 * linear64))
        assert report.ok, report
    assert not np.array_equal(compiled[0], compiled[1])  # each call its own mask
    assert fast.graph.op_counts()["dropout"] == 1


def test_check_true_in_training_mode_replays_the_call_eagerly():
    manual_seed(0)
    model = odd_mlp()
    fast = tc.compile(model, training=True, check=True)
    x = inputs(33)
    manual_seed(8)
    checked = [fast(x).data for _ in range(2)]
    manual_seed(8)
    eager = [model(Tensor(x)).data for _ in range(2)]  # the replays did not move the call counts
    key = key_of(8)
    for call, (c, e) in enumerate(zip(checked, eager, strict=True)):
        ref = forward64(model, x, [DropoutStream(*key, layer=i & MASK32, call=call) for i in (-2, -1)])
        assert check_parity(c, e, ref).ok
    assert model.training and all(layer.training for layer in model)  # the user's flags stay


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_p_zero_and_one_in_training(p):
    model = Sequential(Dropout(p))
    fast = tc.compile(model, training=True)
    x = np.array([[1.0, -2.0, np.inf, np.nan, -0.0]], np.float32)
    want = x if p == 0 else np.zeros_like(x)  # p = 1: real zeros, inf and nan included (as eager)
    np.testing.assert_array_equal(fast(x).data, want)
    np.testing.assert_array_equal(model(Tensor(x)).data, want)


@pytest.mark.parametrize("p", [-0.5, float("nan"), 1.5])
@pytest.mark.parametrize("check", [False, True])
def test_a_p_set_out_of_range_after_construction_does_what_eager_does(p, check):
    """The constructor refuses such a p, but an attribute set later was taken for p = 1 (zeros) where
    eager passes x through (`not p > 0`); compiled and check=True now follow eager (`dropout_effect`)."""
    model = Sequential(Linear(5, 5), Dropout(0.5))
    model[1].p = p
    x = inputs(3, width=5)
    manual_seed(1)
    want = model(Tensor(x)).data
    identity = not p >= 1
    np.testing.assert_array_equal(want, model[0](Tensor(x)).data if identity else np.zeros_like(want))
    manual_seed(1)
    np.testing.assert_array_equal(tc.compile(model, training=True, check=check)(x).data, want)


def test_several_leading_dimensions_number_elements_as_eager():
    manual_seed(1)
    model = Sequential(Linear(13, 9), Dropout(0.4))
    fast = tc.compile(model, training=True)
    x = np.random.default_rng(2).standard_normal((3, 4, 13)).astype(np.float32)
    manual_seed(3)
    eager = model(Tensor(x)).data
    manual_seed(3)
    out = fast(x).data
    assert out.shape == eager.shape == (3, 4, 9)
    np.testing.assert_array_equal(out == 0, eager == 0)
    np.testing.assert_allclose(out, eager, rtol=1e-5, atol=1e-6)


def test_a_dropout_made_inside_forward_draws_nothing_compiled_can_repeat():
    """A fresh Dropout per call (in training mode, as built) is a new layer every time: refused."""
    class MakesItsOwn(Layer):
        def __init__(self, training_arg):
            self.training_arg = training_arg

        def forward(self, x):
            return Dropout(0.5)(x, training=self.training_arg)

    for training in (True, False):
        with pytest.raises(tc.CompileError, match="Dropout in training mode that is not one of the model's layers"):
            tc.compile(MakesItsOwn(None), training=training, input_shape=(None, 4))
    fast = tc.compile(MakesItsOwn(False), training=True, input_shape=(None, 4))  # told not to drop
    np.testing.assert_array_equal(fast(np.ones((2, 4), np.float32)).data, np.ones((2, 4)))


class DropConnect(Layer):
    """Dropout on a weight (DropConnect): the Dropout's operand is a parameter, not the input."""

    def __init__(self, forced: bool = False):
        self.fc, self.drop, self.forced = Linear(24, 16), Dropout(0.5), forced

    def forward(self, x):
        weight = self.drop(self.fc.weight, training=True) if self.forced else self.drop(self.fc.weight)
        return x.matmul(weight) + self.fc.bias


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("forced", [False, True])
def test_dropout_on_a_parameter_draws_a_mask_every_call(threads, forced):
    """A Dropout whose operand is not the traced input ran eagerly while tracing: one mask drawn at
    compile time, frozen into the graph as a constant, every later call repeating it (and an
    export's entry, with no Dropout to draw, ignoring its offset)."""
    manual_seed(4)
    model = DropConnect(forced)
    model.train(not forced)  # forced: an eval-mode model whose forward asks for dropout anyway
    x = np.random.default_rng(2).standard_normal((3000, 24)).astype(np.float32)
    fast = tc.compile(model, training=not forced, threads=threads, check=True)
    manual_seed(8)
    compiled = [fast(x).data for _ in range(3)]
    manual_seed(8)
    eager = [model(Tensor(x)).data for _ in range(3)]
    for got, want in zip(compiled, eager, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert not np.array_equal(compiled[0], compiled[1])
    assert fast.graph.op_counts().get("dropout") == 1


def test_training_flag_survives_pickling_and_is_checked():
    manual_seed(0)
    model = Sequential(Dropout(0.5))
    fast = pickle.loads(pickle.dumps(tc.compile(model, training=True)))
    assert fast.training is True
    y = fast(np.ones((10, 100), np.float32)).data
    assert 0.3 < np.mean(y == 0) < 0.7  # dropout still applies
    with pytest.raises(TypeError, match="training must be True or False"):
        tc.compile(model, training="yes")


def test_inference_compile_still_folds_dropout():
    manual_seed(0)
    model = odd_mlp()
    fast = tc.compile(model, input_shape=(None, 13))
    assert "dropout" not in fast.graph.op_counts()
    x = inputs(5)
    np.testing.assert_array_equal(fast(x).data, fast(x).data)


def test_a_training_module_from_the_object_cache_draws_the_same_masks():
    manual_seed(0)
    model = odd_mlp()
    x = inputs(20)
    first = tc.compile(model, training=True, input_shape=(None, 13))
    again = tc.compile(model, training=True, input_shape=(None, 13))
    assert again.stats.cache_hits == 1 and not again._artifact.plan.llvm_ir  # loaded, not lowered
    manual_seed(4)
    a = first(x).data
    manual_seed(4)
    np.testing.assert_array_equal(again(x).data, a)
