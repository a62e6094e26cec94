"""runtime/buffers.py: the pointers handed to native code, and per-thread scratch."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import tinycomp as tc
from tinycomp.aligned import LINE, aligned_empty
from tinycomp.nn import Linear, ReLU, Sequential, manual_seed
from tinycomp.runtime import buffers
from tinycomp.runtime.buffers import (
    ScratchPool,
    as_native_float32,
    data_pointer,
    is_native_float32,
)

base = np.arange(64, dtype=np.float32).reshape(8, 8)
raw = np.zeros(64 * 4 + 4, np.uint8)


@pytest.mark.parametrize("array", [
    base, base[3:], base[:, 2:], base[::2], base.T, base[5, 1:],
    raw[4:4 + 64 * 4].view(np.float32),  # unaligned: a float32 view at byte offset 4
    np.float64(1.5) * np.ones(3), np.empty(0, np.float32),
], ids=["whole", "rows", "cols", "strided", "transposed", "row-slice", "unaligned", "float64", "empty"])
def test_data_pointer_is_the_address_of_the_first_element(array):
    assert data_pointer(array) == array.__array_interface__["data"][0] == array.ctypes.data


def test_native_float32_is_float32_c_contiguous_and_aligned():
    assert is_native_float32(base)
    assert not is_native_float32(base.T)
    assert not is_native_float32(base.astype(np.float64))
    assert not is_native_float32(base.astype(">f4"))  # byte-swapped: same kind, not readable
    assert not is_native_float32(raw[1:1 + 16].view(np.float32))


def test_as_native_copies_only_what_native_code_cannot_read():
    assert as_native_float32(base) is base
    for other in (base.T, base.astype(np.float64), base.astype(">f4"), raw[1:1 + 16].view(np.float32)):
        converted = as_native_float32(other)
        assert is_native_float32(converted)
        np.testing.assert_array_equal(converted, other.astype(np.float32))


@pytest.mark.parametrize("shape", [(), (0,), (2, 0, 3), (1,), (7, 3), (1000,), (1, 784)])
def test_aligned_empty_starts_on_a_cache_line(shape):
    a = aligned_empty(shape)
    assert a.shape == shape and a.dtype == np.float32 and a.flags.c_contiguous
    assert data_pointer(a) % LINE == 0


def test_scratch_is_per_thread_and_grows():
    pool = ScratchPool()
    first = pool.lease(100)[1]
    assert pool.lease(50)[1] == first  # reused while big enough
    assert pool.get(10_000).size >= 10_000
    assert pool.lease(10_000)[1] % LINE == 0
    seen = []
    worker = threading.Thread(target=lambda: seen.append(pool.lease(100)[1]))
    worker.start()
    worker.join()
    assert seen[0] != pool.lease(100)[1]  # another thread never shares this thread's scratch


def test_a_huge_scratch_is_given_back_to_a_far_smaller_call(monkeypatch):
    # one huge batch kept +313 MB resident for the model's life (scratch only grew)
    monkeypatch.setattr(buffers, "SHRINK_ABOVE_FLOATS", 1000)
    pool = ScratchPool()
    pool.lease(400)[1]
    assert pool.get(450).size >= 450  # below the limit: kept and grown as before
    big = pool.get(8000)
    assert pool.get(2000) is big  # a quarter of it: kept (no reallocation for moderate swings)
    small = pool.get(100)
    assert small.size < 1000 and small is not big  # an eighth or less: the huge buffer is let go
    pool.get(8000)
    pool.trim()  # a split call's worker: gives a huge buffer back at once
    assert pool.get(1).size == 1


def test_a_split_calls_workers_do_not_keep_a_huge_scratch(monkeypatch):
    monkeypatch.setattr(buffers, "SHRINK_ABOVE_FLOATS", 1000)
    kept = []  # (thread name, what its slot holds after the part's trim), seen on that thread

    def trim(self):
        original_trim(self)
        kept.append((threading.current_thread().name, self._local.slot))

    original_trim = ScratchPool.trim
    monkeypatch.setattr(ScratchPool, "trim", trim)
    manual_seed(0)
    model = Sequential(Linear(300, 256), ReLU(), Linear(256, 4))
    x = np.random.default_rng(0).standard_normal((4096, 300)).astype(np.float32)
    fast = tc.compile(model, input_shape=(None, 300), threads=2)
    want = tc.compile(model, input_shape=(None, 300), threads=1)(x).data
    for _ in range(50):  # the caller runs every part itself when no worker wakes in time (a busy machine)
        np.testing.assert_array_equal(fast(x).data, want)
        if any(name.startswith("tinycomp-worker") for name, _ in kept):
            break
    workers = [slot for name, slot in kept if name.startswith("tinycomp-worker")]
    assert workers and all(slot is None for slot in workers), kept


@pytest.mark.parametrize("meminfo, expected", [
    (b"MemTotal: 100 kB\nMemAvailable: 50 kB\nSwapFree: 10 kB\n", 60 * 1024),
    (b"MemTotal: 100 kB\nMemAvailable: 50 kB\n", 50 * 1024),  # no swap line
    (b"MemTotal: 100 kB\nMemFree: 40 kB\nSwapFree: 10 kB\n", None),  # no MemAvailable (kernels < 3.14)
    (b"", None), (b"MemAvailable: lots\n", None), (b"MemAvailable:\n", None),
])
def test_available_memory_is_unknown_rather_than_zero_without_mem_available(monkeypatch, tmp_path, meminfo, expected):
    import builtins

    from tinycomp.runtime import buffers

    fake = tmp_path / "meminfo"
    fake.write_bytes(meminfo)
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda path, *a, **k: real_open(fake if path == "/proc/meminfo" else path,
                                                                           *a, **k))
    assert buffers.available_bytes() == expected


def test_a_call_made_between_the_scratch_lease_and_the_native_call_frees_nothing_in_use():
    """A gc callback (or a signal handler, a finalizer) calling the model again on this thread just
    after a call took its scratch address made the pool replace the buffer: the outer call then
    wrote into freed memory (a segfault). The lease keeps the buffer alive until the call returns."""
    import gc
    import sys

    import tinycomp as tc
    from tinycomp.nn import Layer

    class Outer(Layer):
        def forward(self, x):
            return (x * x.reshape(-1, 1, x.shape[1])).sum(axis=-1)  # an (S, S) scratch per sample

    fast = tc.compile(Outer(), threads=1)
    small = np.random.default_rng(0).random((1, 3000, 1))  # float64: the Python hot path
    big = np.random.default_rng(1).random((1, 4000, 1)).astype(np.float32)
    want = fast(small).data.copy()
    fired: list[str] = []

    def reenter(phase, info) -> None:
        if fired or phase != "start":
            return
        frame = sys._getframe(1)
        while frame is not None:
            if frame.f_code.co_name in ("hot", "run") and "scratch" in frame.f_locals:
                fired.append(frame.f_code.co_name)
                fast(big)  # another width: a recompile and a larger scratch on this thread
                return
            frame = frame.f_back

    gc.callbacks.append(reenter)
    threshold = gc.get_threshold()
    gc.set_threshold(1)
    try:
        got = fast(small).data
    finally:
        gc.callbacks.remove(reenter)
        gc.set_threshold(*threshold)
    assert fired, "the callback never ran inside the window"
    np.testing.assert_array_equal(got, want)
