"""What runs where the chunks are scored: one compiled model per model structure per process.

A Dask worker process compiles a structure once (from its on-disk cache when the code is there) and
keeps it for every later chunk and computation; a computation with other weights for the same
structure copies them into the compiled model's own parameter arrays, which it does only while no
chunk with other weights is running in that process. Each chunk runs with `threads=` the worker's
share of its host's cores, so Dask's threads and tinycomp's never oversubscribe them.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import dask
import numpy as np
from dask.system import CPU_COUNT

from .. import compile as compile_model
from .snapshot import Snapshot

logger = logging.getLogger("tinycomp.dask")
MAX_MODELS = 16  # compiled structures kept per process (least recently used dropped first)


class WorkerModel:
    """A model compiled in this process, and the weights it holds now (those of `token`)."""

    def __init__(self, snapshot: Snapshot, threads: int):
        model, options, self.arrays = snapshot.thaw()  # the model reads these arrays live
        if not options.get("training") and callable(getattr(model, "eval", None)):
            model.eval()  # a copy, scored for inference: predict() warned of active dropout in the caller
        self.fast = compile_model(model, input_shape=(None, *snapshot.features), threads=threads, **options)
        self.threads, self.token = threads, snapshot.token
        self.weight_loads, self.calls, self.rows, self.seconds = 1, 0, 0, 0.0
        self._running = 0  # calls in flight, all on the weights of `token`
        self._cond = threading.Condition()
        logger.info("compiled model %s for %d thread(s) in %.1f ms (%s)", snapshot.key[:16], threads,
                    self.fast.stats.compile_ms, "disk cache" if self.fast.stats.cache_hits else "built")

    @contextlib.contextmanager
    def weights_of(self, snapshot: Snapshot) -> Iterator[None]:
        """Hold the snapshot's weights in the model while the caller runs it. Calls on one snapshot
        run at once; a call on another waits until those end, then copies its weights in."""
        with self._cond:
            while self.token != snapshot.token and self._running:
                self._cond.wait()
            if self.token != snapshot.token:
                for dst, src in zip(self.arrays, snapshot.weights, strict=True):
                    np.copyto(dst, src)
                self.token = snapshot.token
                self.weight_loads += 1
            self._running += 1
        try:
            yield
        finally:
            with self._cond:
                self._running -= 1
                if not self._running:
                    self._cond.notify_all()

    def run(self, x: np.ndarray, batch_rows: int | None) -> np.ndarray:
        start = time.perf_counter()
        if batch_rows is None or len(x) <= batch_rows:
            y = self.fast(x).data  # the chunk as it is: no copy when it is C-contiguous float32
        else:
            y = np.concatenate([self.fast(x[i:i + batch_rows]).data for i in range(0, len(x), batch_rows)])
        with self._cond:
            self.calls += 1
            self.rows += len(x)
            self.seconds += time.perf_counter() - start
        return y


_models: OrderedDict[tuple[str, int], WorkerModel] = OrderedDict()
_models_lock = threading.Lock()
_last_thawed: str | None = None  # the structure whose class state this process holds (see worker_model)
_blas_threads: int | None = None  # what this process pinned BLAS to (0: could not)


def worker_model(snapshot: Snapshot, threads: int) -> WorkerModel:
    """This process's compiled model for the snapshot's structure: compiled on first use only."""
    global _last_thawed
    key = (snapshot.key, threads)
    with _models_lock:  # compiling under it: two threads wanting one model compile it once
        wm = _models.get(key)
        if wm is None:
            wm = _models[key] = WorkerModel(snapshot, threads)
            while len(_models) > MAX_MODELS:
                _models.popitem(last=False)
        else:
            _models.move_to_end(key)
            if _last_thawed != snapshot.key:
                # A class pickled by value (defined in __main__) is one object in this process, which
                # unpickling another structure set to that structure's state (cloudpickle updates it in
                # place): `Net.gain` changed and changed back, the first model's guard saw the second's
                # value and compiled it. Unpickling this structure again sets its state back.
                snapshot.thaw()
        _last_thawed = snapshot.key
        return wm


def current_worker() -> Any:
    """The distributed Worker running this task, or None on a local scheduler."""
    distributed = sys.modules.get("distributed")
    if distributed is None:  # never imported here: this cannot be a worker
        return None
    try:
        return distributed.get_worker()
    except ValueError:
        return None


def thread_share(shares: dict[str, int]) -> int:
    """Threads one chunk may use: this host's cores over the Dask threads that run chunks on it.

    `shares` maps each worker's address to the Dask threads on its host, as the scheduler listed
    them when predict() was called. A worker not listed (one that joined later) takes 1 thread,
    which can never oversubscribe. A local scheduler runs `num_workers` tasks at once."""
    worker = current_worker()
    if worker is None:
        pool = dask.config.get("num_workers", None) or CPU_COUNT
        return max(1, CPU_COUNT // pool)
    host_threads = shares.get(worker.address)
    return max(1, CPU_COUNT // host_threads) if host_threads else 1


def pin_blas(threads: int) -> None:
    """Limit BLAS to the thread share, once, in a worker process Dask started for itself (a nanny's
    child); never in a process that also runs the caller's code (LocalCluster(processes=False)).
    The compiled code does not call BLAS; eager runs (check=True) and other NumPy tasks do."""
    global _blas_threads
    if _blas_threads is not None or current_worker() is None or multiprocessing.parent_process() is None:
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        logger.warning("threadpoolctl is not installed: BLAS threads in worker %d are not pinned", os.getpid())
        _blas_threads = 0
        return
    threadpool_limits(limits=threads)
    _blas_threads = threads


def score_block(block: np.ndarray, snapshot: Snapshot, batch_rows: int | None) -> np.ndarray:
    """One chunk of rows through the compiled model (a task of `predict` on a dask array)."""
    threads = thread_share(snapshot.shares)
    pin_blas(threads)
    if block.shape[1:] != snapshot.features:  # a chunk other than its array's declared shape (map_blocks)
        raise ValueError(f"predict() was built for rows of shape {snapshot.features}; a chunk of {len(block):,} rows "
                         f"has rows of shape {block.shape[1:]}: chunks of a dask array must hold the rows the array's "
                         "shape declares")
    wm = worker_model(snapshot, threads)  # compiled only for a chunk it can run
    with wm.weights_of(snapshot):
        return wm.run(block, batch_rows)


def score_frame(frame: Any, snapshot: Snapshot, columns: list, names: list[str], batch_rows: int | None) -> Any:
    """One partition's feature columns through the compiled model, as a frame of output columns."""
    import pandas as pd

    x = np.ascontiguousarray(frame[columns].to_numpy(dtype=np.float32))  # columns to rows: the one copy
    y = score_block(x, snapshot, batch_rows)
    # the width from the names, not -1: NumPy cannot infer it for an empty partition (0 rows)
    return pd.DataFrame(y.reshape(len(x), len(names)), index=frame.index, columns=names)


def worker_stats(dask_worker: Any = None) -> dict[str, Any]:
    """What this process holds and ran: `client.run(tinycomp.dask.worker_stats)` asks every worker
    (client.run passes `dask_worker`; inside a task the worker is found)."""
    worker = dask_worker if dask_worker is not None else current_worker()
    with _models_lock:
        models = [{"structure": key, "threads": threads, "compiles": wm.fast.stats.compiles,
                   "cache_hits": wm.fast.stats.cache_hits, "compile_ms": round(wm.fast.stats.compile_ms, 2),
                   "weight_loads": wm.weight_loads, "calls": wm.calls, "rows": wm.rows,
                   "seconds": round(wm.seconds, 4)}
                  for (key, threads), wm in _models.items()]
    return {"pid": os.getpid(), "address": getattr(worker, "address", None), "cpu_count": CPU_COUNT,
            "blas_threads": _blas_threads, "models": models}
