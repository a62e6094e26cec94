"""The worker pool behind split calls (`runtime/threads.py`): every task's failure reaches the caller,
and the caller never returns, not even on Ctrl-C, while a task still runs on a worker (tasks are
native calls on buffers the caller frees once it returns)."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from tinycomp.runtime.threads import WorkerPool


def test_every_task_runs_once_across_caller_and_workers():
    pool = WorkerPool(2)
    ran: list[int] = []
    pool.run([lambda i=i: ran.append(i) for i in range(50)])
    assert sorted(ran) == list(range(50))


def test_threads_that_cannot_start_leave_fewer_workers_and_calls_still_run(monkeypatch, caplog):
    """Under an address-space limit a thread's stack may not be had: Thread.start raised 'can't start
    new thread' out of the first split call. The pool keeps the workers it got (here one of three)."""
    real_start, started = threading.Thread.start, []

    def start(self):
        if started:
            raise RuntimeError("can't start new thread")
        started.append(self)
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    with caplog.at_level("WARNING", logger="tinycomp.threads"):
        pool = WorkerPool(3)
    assert pool.workers == 1
    assert "started 1 of 3 worker threads (can't start new thread)" in caplog.text
    ran: list[int] = []
    pool.run([lambda i=i: ran.append(i) for i in range(20)])
    assert sorted(ran) == list(range(20))


def test_a_failing_task_is_raised_in_the_caller_and_the_pool_still_works():
    pool = WorkerPool(1)

    def boom() -> None:
        raise RuntimeError("chunk failed")

    with pytest.raises(RuntimeError, match="chunk failed"):
        pool.run([boom, lambda: None, boom])
    ran: list[int] = []
    pool.run([lambda: ran.append(1), lambda: ran.append(2)])
    assert sorted(ran) == [1, 2]


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals go to the main thread")
def test_ctrl_c_while_a_worker_runs_returns_only_after_its_task_ended():
    pool = WorkerPool(1)
    started, interrupted, ended = threading.Event(), threading.Event(), threading.Event()
    caller = threading.get_ident()

    def on_sigint(signum, frame):  # Python runs this on the caller once it gets the GIL back, maybe much later
        interrupted.set()
        raise KeyboardInterrupt

    def task() -> None:
        if threading.get_ident() != caller:  # the worker's chunk: a long native call
            started.set()
            # Still running when the caller sees Ctrl-C, however late a loaded machine lets it run
            # the handler: ending a fixed time after the signal was sent let run() return normally.
            interrupted.wait(30)
            time.sleep(0.3)
            ended.set()
        else:  # the caller's chunk: done once the worker has taken the other one
            assert started.wait(30)

    def interrupt() -> None:
        started.wait(30)
        time.sleep(0.1)  # the caller has finished its own task and waits for the worker's
        signal.pthread_kill(caller, signal.SIGINT)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        threading.Thread(target=interrupt).start()
        with pytest.raises(KeyboardInterrupt):
            pool.run([task, task])  # the caller runs one task at once and then waits for the worker's
    finally:
        signal.signal(signal.SIGINT, previous)
    assert interrupted.is_set()
    assert ended.is_set(), "run() returned while the worker's task was still running"
    ran: list[int] = []
    pool.run([lambda: ran.append(1), lambda: ran.append(2)])  # and the pool still works
    assert sorted(ran) == [1, 2]
