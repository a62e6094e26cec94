"""Issue 7: leaks. Dropped compiled models free their engine and code (no reference cycles);
compiling many models and calling one many times keeps RSS flat."""

from __future__ import annotations

import copy
import gc
import pickle
import weakref

import numpy as np
import pytest

import tinycomp as tc
from tests.models import CASES
from tests.reliability.rel_helpers import rss_bytes
from tinycomp.nn import Layer, Linear, ReLU, Sequential, manual_seed

MB = 1 << 20



def _model(i: int):
    manual_seed(i)
    return Sequential(Linear(32, 48), ReLU(), Linear(48, 10))


def test_dropped_compiled_model_frees_engine_without_gc():
    model = _model(0)
    fast = tc.compile(model, input_shape=(None, 32))
    fast(np.ones((3, 32), np.float32))
    fast(np.ones((100, 32), np.float32))
    refs = [weakref.ref(fast), weakref.ref(fast._artifact), weakref.ref(fast._artifact.engine),
            weakref.ref(fast._artifact.call.kernel)]
    engine_ref = weakref.ref(fast._artifact.engine._engine)  # llvmlite's ExecutionEngine
    gc.disable()
    try:
        del fast
        assert all(r() is None for r in refs), "a reference cycle keeps the compiled model alive"
        assert engine_ref() is None
    finally:
        gc.enable()
    assert model.layers[0].weight.shape == (32, 48)  # the user's model is untouched


class KeepsAView(Linear):
    """A forward that stores its weight's array: the trace's view of it outlives the trace."""

    def forward(self, x):
        self.seen = self.weight.data
        return super().forward(x)


@pytest.mark.parametrize("use", ["trace", "compile and call", "a view kept"])
def test_a_dropped_model_is_freed_without_gc(use):
    """The trace's own objects referred to each other (its LiveReads and the arrays it swapped in),
    and held the model: a loop compiling 64 MB models kept 5 dead ones alive at once."""
    model = Sequential(KeepsAView(8, 8) if use == "a view kept" else Linear(8, 8), ReLU())
    model.eval()
    ref = weakref.ref(model.layers[0].weight)
    gc.disable()
    try:
        if use == "trace":
            kept = tc.trace(model, (None, 8))
        else:
            kept = tc.compile(model)
            kept(np.ones((2, 8), np.float32))
        del model, kept
        assert ref() is None, "a reference cycle keeps the dropped model alive"
    finally:
        gc.enable()


def test_an_array_a_forward_kept_is_plain_numpy_after_the_trace():
    model = KeepsAView(8, 8)
    tc.trace(model, (None, 8))
    np.testing.assert_array_equal(model.seen * 2, model.weight.data * 2)  # no "while tracing" error
    assert float(model.seen[0, 0]) == float(model.weight.data[0, 0])


def test_recompiling_frees_the_old_engine():
    model = _model(1)
    fast = tc.compile(model)
    fast(np.ones((2, 32), np.float32))
    old = weakref.ref(fast._artifact.engine)
    model.layers.append(ReLU())
    fast(np.ones((2, 32), np.float32))
    gc.collect()
    assert old() is None and fast.stats.compiles == 2


def _compile_and_drop(n: int, start: int = 0) -> None:
    x = np.ones((4, 32), np.float32)
    for i in range(start, start + n):
        fast = tc.compile(_model(i))
        fast(x)
        del fast


def _leak_compiles(n: int, bound_mb: float) -> float:
    _compile_and_drop(20)  # warm up: allocator pools, llvmlite's own one-time state
    gc.collect()
    before = rss_bytes()
    _compile_and_drop(n, start=1000)
    gc.collect()
    grown = (rss_bytes() - before) / MB
    print(f"compile+drop {n} models: RSS grew {grown:.2f} MB")
    assert grown <= bound_mb, f"compiling and dropping {n} models grew RSS by {grown:.1f} MB"
    return grown


def _leak_calls(n: int, bound_mb: float) -> float:
    fast = tc.compile(CASES["reference_mlp"].build())
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((b, 784)).astype(np.float32) for b in (1, 3, 32, 1, 64, 0)]
    for x in inputs * 50:  # warm up: scratch sized for the largest batch
        fast(x)
    gc.collect()
    before = rss_bytes()
    for i in range(n):
        fast(inputs[i % len(inputs)])
    gc.collect()
    grown = (rss_bytes() - before) / MB
    print(f"{n} calls: RSS grew {grown:.2f} MB")
    assert grown <= bound_mb, f"{n} calls grew RSS by {grown:.2f} MB"
    return grown


def test_compile_and_drop_100_models(tmp_cache):
    _leak_compiles(100, bound_mb=10)


def test_20000_calls(tmp_cache):
    _leak_calls(20_000, bound_mb=1)


@pytest.mark.slow
def test_compile_and_drop_500_models(tmp_cache):
    _leak_compiles(500, bound_mb=50)


@pytest.mark.slow
def test_compile_and_drop_500_models_without_cache(monkeypatch):
    monkeypatch.setenv("TINYCOMP_CACHE", "0")
    _leak_compiles(500, bound_mb=50)


@pytest.mark.slow
def test_100000_calls(tmp_cache):
    _leak_calls(100_000, bound_mb=5)


def test_a_traced_tensor_kept_on_the_model_still_answers_after_the_trace():
    """A forward keeping a traced value (attention weights to plot): after the trace its shape read
    'Tracer has no attribute batch' and .data an IndexError, once the trace let go of itself."""
    class Keeps(Layer):
        def __init__(self):
            self.fc = Linear(4, 3)

        def forward(self, x):
            self.last = self.fc(x)
            return self.last
    model = Keeps()
    tc.trace(model, (None, 4))
    assert str(model.last.shape) == "(N, 3)"
    with pytest.raises(tc.CompileError, match="reads .data of a traced tensor"):
        model.last.data  # noqa: B018
    # pickle said "it's not the same object as tinycomp.frontend.tracer.Tensor"; a copy copies the rest
    with pytest.raises(TypeError, match=r"a traced tensor \(node '%\d+'\) cannot be pickled: a forward\(\) kept it"):
        pickle.dumps({"kept": model.last})
    twin = copy.deepcopy(model)
    assert twin.fc is not model.fc and str(twin.last.shape) == "(N, 3)"
