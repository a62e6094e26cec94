"""A persistent worker pool for splitting a batch across cores.

Starting a `ThreadPoolExecutor` task costs about 80 us here; long-lived workers blocked on a
`SimpleQueue` hand off in a few microseconds. Compiled code is called through ctypes, which
releases the GIL, so the workers really run in parallel.
"""

from __future__ import annotations

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


class _Job:
    __slots__ = ("task", "done", "error")

    def __init__(self, task: Task):
        self.task, self.done, self.error = task, threading.Event(), None

    def run(self) -> None:
        try:
            self.task()
        except BaseException as exc:  # handed back to the caller, never lost in the worker
            self.error = exc
        finally:
            self.done.set()


class WorkerPool:
    def __init__(self, workers: int):
        self._queue: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self.workers = workers
        for i in range(workers):
            threading.Thread(target=self._work, name=f"tinycomp-worker-{i}", daemon=True).start()

    def _work(self) -> None:
        while True:
            self._queue.get().run()

    def run(self, tasks: list[Task]) -> None:
        """Run all tasks, the first on the calling thread; re-raise the first failure."""
        jobs = [_Job(t) for t in tasks[1:]]
        for job in jobs:
            self._queue.put(job)
        first = _Job(tasks[0])
        first.run()
        for job in jobs:
            job.done.wait()
        for job in [first, *jobs]:
            if job.error is not None:
                raise job.error


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
