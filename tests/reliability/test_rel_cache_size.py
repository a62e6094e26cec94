"""The object cache stays bounded: least recently used entries go past TINYCOMP_CACHE_MAX_MB,
temporary files a killed writer left go after an hour, and nothing else in the folder is touched
(runtime/cache_sweep.py)."""

from __future__ import annotations

import itertools
import logging
import os
import time

import numpy as np
import pytest

import tinycomp as tc
from tinycomp.nn import Linear, Sequential, Tensor, manual_seed
from tinycomp.runtime import cache_sweep

KEY = "ab" * 32


def entry(folder, i: int, size: int, age: float):
    path = folder / f"{i:064x}.o"
    path.write_bytes(b"x" * size)
    os.utime(path, (time.time() - age, time.time() - age))
    return path


def test_the_least_recently_used_entries_go_down_to_80_percent_of_the_limit(tmp_path):
    paths = [entry(tmp_path, i, 1000, age=100 - i) for i in range(10)]  # entry 0 the oldest
    cache_sweep.touch(paths[1])  # just used: kept although written second
    assert cache_sweep.sweep(tmp_path, limit=6000) == 6  # 10,000 bytes -> at most 4,800
    assert [p.exists() for p in paths] == [False, True, False, False, False, False, False, True, True, True]
    assert cache_sweep.sweep(tmp_path, limit=6000) == 0  # under the limit: nothing more


def test_only_stale_temporary_files_and_entries_are_removed(tmp_path):
    stale = tmp_path / f".{KEY[:16]}.q8x1.tmp"
    fresh = tmp_path / f".{KEY[:16]}.z9y2.tmp"
    for path, age in ((stale, 7200), (fresh, 60)):
        path.write_bytes(b"partial")
        os.utime(path, (time.time() - age, time.time() - age))
    old = entry(tmp_path, 1, 5000, age=1e6)
    others = [tmp_path / "notes.txt", tmp_path / f"{KEY}.o.bak", tmp_path / ".hidden.tmp"]
    for path in others:
        path.write_bytes(b"y" * 5000)
        os.utime(path, (0, 0))
    (tmp_path / f"{2:064x}.o").mkdir()  # a folder named like an entry
    (tmp_path / f"{3:064x}.o").symlink_to(others[0])  # a link named like an entry: never followed
    assert cache_sweep.sweep(tmp_path, limit=100) == 2
    assert not stale.exists() and not old.exists() and fresh.exists()
    assert all(p.exists() for p in others) and (tmp_path / f"{2:064x}.o").is_dir()
    assert (tmp_path / f"{3:064x}.o").is_symlink()


def test_compiles_keep_the_cache_under_its_limit(tmp_cache, monkeypatch):
    """Not only at the sweeps every SWEEP_EVERY stores: between them the folder grew to 4 x its limit."""
    monkeypatch.setenv("TINYCOMP_CACHE_MAX_MB", "0.2")
    sizes = []
    for width in range(2, 40):  # 38 structures: 38 entries of ~10-25 KB, over 0.2 MB in all
        manual_seed(width)
        tc.compile(Sequential(Linear(width, 3)), input_shape=(None, width))(np.ones((2, width), np.float32))
        sizes.append(sum(p.stat().st_size for p in tmp_cache.glob("*.o")))
    assert max(sizes) <= 0.2 * (1 << 20) and len(list(tmp_cache.glob("*.o"))) >= 5
    assert sizes[-1] < sum(sizes) / len(sizes) * 3  # bounded, not growing with every compile


def test_an_entry_larger_than_the_limit_is_not_stored(tmp_cache, monkeypatch):
    """It would never be read in (a read refuses entries over the limit): writing it only evicted others."""
    monkeypatch.setenv("TINYCOMP_CACHE_MAX_MB", "0.001")
    manual_seed(2)
    tc.compile(Sequential(Linear(5, 3)), input_shape=(None, 5))(np.ones((2, 5), np.float32))
    assert not list(tmp_cache.glob("*.o"))


@pytest.mark.parametrize("value", ["lots", "-5", "0", "inf", "1e400", "1e303", "nan", "1e-9"])
def test_a_bad_size_limit_is_named_once_and_the_default_used(monkeypatch, caplog, value):
    """Named once per process: a long run sweeps every 32 stores, and each sweep warned again."""
    monkeypatch.setenv("TINYCOMP_CACHE_MAX_MB", value)
    monkeypatch.setattr(cache_sweep, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="tinycomp.cache"):
        for _ in range(3):
            assert cache_sweep.max_bytes() == int(cache_sweep.DEFAULT_MAX_MB * (1 << 20))
    assert caplog.text.count(f"TINYCOMP_CACHE_MAX_MB={value!r} is not a finite number of MB of at least one "
                             "byte") == 1


@pytest.mark.parametrize("value", ["inf", "1e303"])
def test_an_infinite_size_limit_never_fails_a_compile(monkeypatch, tmp_cache, value):
    """`inf` once made the sweep after a store raise OverflowError out of the user's compile; so did
    1e303, a finite number of MB whose bytes are not."""
    monkeypatch.setenv("TINYCOMP_CACHE_MAX_MB", value)
    monkeypatch.setattr(cache_sweep, "_stores", itertools.count())  # this store sweeps, as a process's first
    manual_seed(1)
    model = Sequential(Linear(5, 3))
    x = np.ones((2, 5), np.float32)
    np.testing.assert_allclose(tc.compile(model, input_shape=(None, 5))(x).data, model(Tensor(x)).data, rtol=1e-6)
    assert list(tmp_cache.glob("*.o"))
