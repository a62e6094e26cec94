"""Issue 7: concurrency. One compiled model called from 8 threads gives exactly the serial results;
threads compiling different models at once are safe."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import tinycomp as tc
from tests.models import CASES, CATALOGUE
from tests.reliability import rel_helpers
from tests.reliability.rel_helpers import assert_matches_eager

BATCHES = [0, 1, 2, 3, 7, 8, 17, 33, 64, 100, 257]

tmp_cache = rel_helpers.tmp_cache  # the fixture: a fresh TINYCOMP_CACHE_DIR per test


def run_threads(fn, n: int) -> list:
    barrier = threading.Barrier(n)
    results: list = [None] * n
    errors: list = []

    def body(i: int) -> None:
        barrier.wait()
        try:
            results[i] = fn(i)
        except BaseException as exc:  # reported below, never lost in a thread
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


@pytest.mark.parametrize("threads", [None, 1, 2])
def test_one_model_eight_threads_bitwise_equal_to_serial(threads, calls=500):
    c = CASES["reference_mlp"]
    model = c.build()
    fast = tc.compile(model, threads=threads)
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((b, c.in_features)).astype(np.float32) for b in BATCHES]
    serial = [fast(x).data.copy() for x in inputs]  # same batches, so the same row split

    def worker(i: int) -> int:
        order = np.random.default_rng(i).integers(0, len(inputs), calls)
        for k in order:
            y = fast(inputs[k]).data
            if not np.array_equal(y, serial[k]):
                raise AssertionError(f"thread {i}: batch {len(inputs[k])} differs from the serial result")
        return len(order)

    assert sum(run_threads(worker, 8)) == 8 * calls
    assert fast.stats.compiles == 1


def test_first_call_from_many_threads_compiles_once():
    c = CASES["softmax_head"]
    model = c.build()
    fast = tc.compile(model)  # compiles on the first call
    x = c.sample(5)
    outs = run_threads(lambda i: fast(x).data.copy(), 8)
    assert fast.stats.compiles == 1
    for y in outs:
        np.testing.assert_array_equal(y, outs[0])


def test_threads_compiling_different_models_at_once(tmp_cache):
    def worker(i: int) -> None:
        c = CATALOGUE[i % len(CATALOGUE)]
        model = c.build(seed=i)
        fast = tc.compile(model)
        for b in (1, 5, 40):
            x = c.sample(b, seed=i)
            assert_matches_eager(fast(x).data, model, x)

    run_threads(worker, 8)
    run_threads(worker, 8)  # again, now with every entry in the cache


def test_calls_race_with_a_structural_change():
    """While threads call, the model grows a layer: every result is the old or the new model's."""
    from tinycomp.nn import Linear, ReLU, Sequential

    model = Sequential(Linear(8, 8), ReLU())
    fast = tc.compile(model)
    x = np.random.default_rng(1).standard_normal((20, 8)).astype(np.float32)
    old = fast(x).data.copy()
    grown = Linear(8, 3)
    start = threading.Event()

    def worker(i: int) -> set:
        shapes = set()
        for n in range(200):
            if i == 0 and n == 50:
                model.layers.append(grown)
                start.set()
            y = fast(x).data
            if y.shape == old.shape:
                assert np.array_equal(y, old) or start.is_set()
            shapes.add(y.shape)
        return shapes

    seen = set().union(*run_threads(worker, 4))
    assert (20, 3) in seen
    assert fast(x).shape == (20, 3)
    with ThreadPoolExecutor(2) as pool:
        assert all(r.shape == (20, 3) for r in pool.map(fast, [x] * 10))
