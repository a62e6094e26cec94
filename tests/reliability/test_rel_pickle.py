"""Issue 7: pickling. A compiled model pickles as its model and compile options (no machine code)
and runs in a `multiprocessing` spawn worker with the same results, recompiled from the disk cache."""

from __future__ import annotations

import multiprocessing
import pickle

import numpy as np

import tinycomp as tc
from tests.models import CASES


def run_in_worker(blob: bytes, x: np.ndarray) -> tuple[np.ndarray, int, int]:
    fast = pickle.loads(blob)
    y = fast(x).data
    return y, fast.stats.compiles, fast.stats.cache_hits


def test_pickle_round_trip_keeps_options_and_results(tmp_cache):
    c = CASES["residual_net"]
    model = c.build()
    fast = tc.compile(model, threads=1, speed_level=0)
    x = c.sample(7)
    y = fast(x).data
    blob = pickle.dumps(fast)
    assert len(blob) < 20_000  # the model's weights and options, no machine code
    again = pickle.loads(blob)
    assert again.threads == 1 and again.check is False and again.stats.compiles == 1
    assert again.stats.cache_hits == 1  # compiled at once, from the on-disk cache
    np.testing.assert_array_equal(again(x).data, y)
    again.model.head.weight.data[:] = 0  # its own copy of the model, read live as ever
    np.testing.assert_array_equal(fast(x).data, y)


def test_uncompiled_model_pickles_and_compiles_on_first_call(tmp_cache):
    c = CASES["softmax_head"]
    fast = tc.compile(c.build(), check=True)
    again = pickle.loads(pickle.dumps(fast))
    assert again.stats.compiles == 0 and again.check
    x = c.sample(3)
    np.testing.assert_array_equal(again(x).data, fast(x).data)


def test_runs_in_a_spawn_worker_with_the_same_results(tmp_cache):
    c = CASES["reference_mlp"]
    fast = tc.compile(c.build(seed=5))
    xs = [c.sample(b, seed=b) for b in (1, 9, 130)]
    expected = [fast(x).data for x in xs]
    blob = pickle.dumps(fast)
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.starmap(run_in_worker, [(blob, x) for x in xs])
    for (y, compiles, hits), want in zip(results, expected, strict=True):
        np.testing.assert_array_equal(y, want)
        assert compiles == 1 and hits == 1  # the worker recompiled, from the on-disk cache
