"""A persistent worker pool for splitting a batch across cores.

Starting a `ThreadPoolExecutor` task costs about 80 us here; long-lived workers blocked on a
`SimpleQueue` hand off in a few microseconds. Compiled code is called through ctypes, which
releases the GIL, so the workers really run in parallel.
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
from collections.abc import Callable

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

    __slots__ = ("tasks", "_next", "_lock", "_left", "done", "error")

    def __init__(self, tasks: list[Task]):
        self.tasks = tasks
        self._next = itertools.count()  # next() on a count is atomic under the GIL
        self._lock = threading.Lock()
        self._left = len(tasks)
        self.done = threading.Event()
        self.error: BaseException | None = None

    def work(self) -> None:
        n = len(self.tasks)
        while (i := next(self._next)) < n:
            try:
                self.tasks[i]()
            except BaseException as exc:  # handed back to the caller, never lost in the worker
                if self.error is None:
                    self.error = exc
            with self._lock:
                self._left -= 1
                if self._left == 0:
                    self.done.set()


class WorkerPool:
    def __init__(self, workers: int):
        self._queue: queue.SimpleQueue[_Batch] = queue.SimpleQueue()
        self.workers = workers
        for i in range(workers):
            threading.Thread(target=self._work, name=f"tinycomp-worker-{i}", daemon=True).start()

    def _work(self) -> None:
        while True:
            self._queue.get().work()

    def run(self, tasks: list[Task]) -> None:
        """Run all tasks on the calling thread and up to `workers` helpers; re-raise the first failure."""
        if not tasks:
            return
        batch = _Batch(tasks)
        for _ in range(min(self.workers, len(tasks) - 1)):
            self._queue.put(batch)
        batch.work()
        batch.done.wait()
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


# Below this much work per call, handing rows to another core costs more than it saves
# (a queue hand-off is ~10-20 us here; see benchmarks/RESULTS.md).
PARALLEL_MIN_FLOPS = 4_000_000


def parallel_parts(rows: int, flops_per_row: int, threads: int | None) -> int:
    """How many row chunks to run at once: `threads` if given, else all cores when it pays."""
    cores = threads if threads is not None else available_cores()
    if cores <= 1 or rows < 16:
        return 1
    if threads is None and rows * flops_per_row < PARALLEL_MIN_FLOPS:
        return 1
    return min(cores, rows // 8)


def split_rows(rows: int, parts: int, multiple: int = 8) -> list[tuple[int, int]]:
    """Split range(rows) into at most `parts` contiguous chunks, sizes rounded to `multiple`."""
    step = -(-rows // parts)
    step = -(-step // multiple) * multiple
    return [(r, min(r + step, rows)) for r in range(0, rows, step)]


def _forget_pool_after_fork() -> None:
    # A forked child has none of the parent's worker threads: start a fresh pool on demand.
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool_after_fork)
