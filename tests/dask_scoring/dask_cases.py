"""Helpers shared by the Dask tests; the workers import this module to build their chunks."""

from __future__ import annotations

import time

import numpy as np

import tinycomp as tc


def chunk_rows(seed: int, index: int, rows: int, features: int) -> np.ndarray:
    """The rows of chunk `index`: the same numbers wherever they are made."""
    return np.random.default_rng([seed, index]).standard_normal((rows, features), dtype=np.float32)


def slow_block(seed: int, rows: int, features: int, delay: float, block_id: tuple = (0, 0)) -> np.ndarray:
    """A chunk that takes `delay` seconds to load: keeps a computation running long enough to act on it."""
    time.sleep(delay)
    return chunk_rows(seed, block_id[0], rows, features)


def slow_array(seed: int, chunks: int, rows: int, features: int, delay: float):
    import dask.array as da

    return da.map_blocks(slow_block, seed, rows, features, delay, dtype=np.float32,
                         chunks=((rows,) * chunks, (features,)), meta=np.empty((0, 0), np.float32))


def all_rows(seed: int, chunks: int, rows: int, features: int) -> np.ndarray:
    return np.concatenate([chunk_rows(seed, i, rows, features) for i in range(chunks)])


def in_process(model, x: np.ndarray, chunk_rows: tuple[int, ...] | None = None) -> np.ndarray:
    """The model compiled here and run on one thread (as every Dask chunk runs in these tests), on the
    same chunks of rows as Dask runs: the kernels may round a row differently in another batch size
    (a 1-row batch takes its own tile), so "the same rows" means the same calls."""
    fast = tc.compile(model, threads=1)
    bounds = np.cumsum((0, *(chunk_rows or (len(x),))))
    return np.concatenate([fast(x[a:b]).data for a, b in zip(bounds[:-1], bounds[1:], strict=True)])
