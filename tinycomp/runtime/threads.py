"""A persistent worker pool for splitting a batch across cores.

Starting a `ThreadPoolExecutor` task costs about 80 us here; long-lived workers blocked on a
`SimpleQueue` hand off in a few microseconds. Compiled code is called through ctypes, which
releases the GIL, so the workers really run in parallel.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import threading
from collections.abc import Callable

_log = logging.getLogger("tinycomp.threads")

Task = Callable[[], None]


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class _Batch:
    """Tasks that the caller and any woken workers claim one at a time until none are left.

    Claiming instead of assigning means a worker that is slow to wake (or whose core is busy with
    another process) never holds the caller up: the caller simply runs the unclaimed tasks itself,
    so a split call is never much slower than running every task on the calling thread.
    """

    __slots__ = ("tasks", "_next", "_lock", "_left", "_running", "done", "idle", "cancelled", "error")

    def __init__(self, tasks: list[Task]):
        self.tasks = tasks
        self._next = itertools.count()  # next() on a count is atomic under the GIL
        self._lock = threading.Lock()
        self._left = len(tasks)
        self._running = 0
        self.done = threading.Event()  # every task has run
        self.idle = threading.Condition(self._lock)  # notified whenever a task ends
        self.cancelled = False  # set when the caller is interrupted: start no more tasks
        self.error: BaseException | None = None

    def work(self, on_worker: bool = False) -> None:
        """Claim and run tasks until none is left (or the batch is cancelled).

        Claiming a task and counting it as running is one step under the lock, so `stop` never
        sees "nothing running" between a worker's claim and its start. Only workers' tasks are
        counted: the caller is the thread `stop` runs on, and a KeyboardInterrupt can only land
        there, between any two steps of its bookkeeping."""
        n = len(self.tasks)
        while True:
            with self._lock:
                if self.cancelled or (i := next(self._next)) >= n:
                    return
                self._running += on_worker
            try:
                self.tasks[i]()
            except BaseException as exc:  # handed back to the caller, never lost in the worker
                if self.error is None:
                    self.error = exc
            finally:
                with self._lock:
                    self._running -= on_worker
                    self._left -= 1
                    if self._left == 0:
                        self.done.set()
                    self.idle.notify_all()

    def stop(self) -> None:
        """Start no more tasks and return once no worker runs one, whatever interrupts the wait: the
        tasks read and write buffers that the caller frees as soon as `run` returns."""
        while True:
            try:
                with self._lock:
                    self.cancelled = True
                    while self._running:
                        self.idle.wait()
                return
            except BaseException:  # another Ctrl-C: native code cannot be stopped, so keep waiting
                continue


class WorkerPool:
    def __init__(self, workers: int):
        """Up to `workers` helper threads: as many as can be started (under a memory limit a thread's
        stack may not be had; the calls then run on fewer, or on the caller alone)."""
        self._queue: queue.SimpleQueue[_Batch] = queue.SimpleQueue()
        self.workers = 0
        for i in range(workers):
            try:
                threading.Thread(target=self._work, name=f"tinycomp-worker-{i}", daemon=True).start()
            except RuntimeError as exc:  # "can't start new thread"
                _log.warning("tinycomp: started %d of %d worker threads (%s); calls split across fewer threads",
                             self.workers, workers, exc)
                break
            self.workers += 1

    def _work(self) -> None:
        while True:
            self._queue.get().work(on_worker=True)

    def run(self, tasks: list[Task]) -> None:
        """Run all tasks on the calling thread and up to `workers` helpers; re-raise the first failure."""
        if not tasks:
            return
        batch = _Batch(tasks)
        for _ in range(min(self.workers, len(tasks) - 1)):
            self._queue.put(batch)
        try:
            batch.work()
            batch.done.wait()
        except BaseException:  # e.g. KeyboardInterrupt in the wait: not while a worker runs a task
            batch.stop()
            raise
        if batch.error is not None:
            raise batch.error


_pool: WorkerPool | None = None
_pool_lock = threading.Lock()


def shared_pool() -> WorkerPool:
    """The process-wide pool, with one worker per core beyond the caller's own."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = WorkerPool(max(available_cores() - 1, 1))
        return _pool


# Below this much work per call (FLOPs, as the compiler counts them), splitting does not pay.
# Measured here (benchmarks/RESULTS.md): a split costs ~35 us to wake a blocked worker (a VM vCPU
# leaving idle), ~15 us of Python before its chunk reaches native code, and the same again for the
# caller to notice the worker finished: ~100 us per call. With two cores the reference MLP broke even
# at ~30-60 MFLOP (batch 64-128: 0.94x-1.31x on a quiet host) and gained 1.45x at 120 MFLOP
# (batch 256); the deep model 0.82x at 34 MFLOP and 1.45x at 134 MFLOP. 64 MFLOP (~0.65 ms of
# one-thread work at ~95 GFLOP/s) kept every call that could lose on one thread there. The Intel
# Xeon of later sessions runs the GEMMs twice as fast, and its second vCPU is shared (parallel
# efficiency 0.67-0.77 on a pure FMA loop): lnmlp at 32 rows (67 MFLOP, two chunks of 16 rows that
# each stream all 4 MB of weights) ran 0.91-0.95 x one thread, at 64 rows (134 MFLOP) 1.19-1.24 x.
# 100 MFLOP keeps such calls on one thread on both hosts.
PARALLEL_MIN_FLOPS = 100_000_000
# Rows per chunk never drop below this: smaller GEMM calls lose more to tails than a core gains.
MIN_CHUNK_ROWS = 16
ROW_MULTIPLE = 8  # chunks start at a multiple of this many GEMM rows


def samples_for_rows(gemm_rows: int, rows_per_sample: int) -> int:
    """Samples that hold at least `gemm_rows` rows of the kernels' GEMMs: a sample of shape (S, E)
    is S of them (a transformer block's sample of 64 positions is 64 rows, not one)."""
    return max(1, -(-gemm_rows // max(rows_per_sample, 1)))


def parallel_parts(rows: int, flops_per_row: int, threads: int | None, rows_per_sample: int = 1) -> int:
    """How many chunks of the `rows` samples to run at once: `threads` if given, else all cores when
    it pays.

    One chunk per core: with chunks claimed rather than assigned (see `_Batch`), a core that another
    process is using simply takes fewer chunks; more, smaller chunks measured slower on a quiet host.
    """
    cores = threads if threads is not None else available_cores()
    least = samples_for_rows(MIN_CHUNK_ROWS, rows_per_sample)
    if cores <= 1 or rows < 2 * least:
        return 1
    if threads is None and rows * flops_per_row < PARALLEL_MIN_FLOPS:
        return 1
    return min(cores, rows // least)


def one_part_rows(flops_per_row: int, threads: int | None, limit: int, rows_per_sample: int = 1) -> int:
    """The largest batch (at most `limit`) that `parallel_parts` runs as one part on the caller."""
    cores = threads if threads is not None else available_cores()
    if cores <= 1:
        return limit
    rows = 2 * samples_for_rows(MIN_CHUNK_ROWS, rows_per_sample) - 1
    if threads is None:
        rows = max(rows, (PARALLEL_MIN_FLOPS - 1) // max(flops_per_row, 1))
    return min(rows, limit)


def split_rows(rows: int, parts: int, multiple: int = ROW_MULTIPLE) -> list[tuple[int, int]]:
    """Split range(rows) into at most `parts` contiguous chunks, sizes rounded to `multiple`."""
    step = -(-rows // parts)
    step = -(-step // multiple) * multiple
    return [(r, min(r + step, rows)) for r in range(0, rows, step)]


def _forget_pool_after_fork() -> None:
    # A forked child has none of the parent's worker threads: start a fresh pool on demand.
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool_after_fork)
