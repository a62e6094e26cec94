"""Weights in transparent huge pages against plain ones: one compiled model, both placements in turn.

    PYTHONPATH=. python benchmarks/hugepage_weights.py mlp --batch 1,32,64,128
    PYTHONPATH=. python benchmarks/hugepage_weights.py linear:784x256 --batch 32,128

MODEL as `bare_call.py` takes it. Every Linear weight of 256 KB or more is copied into a 2 MB-aligned
anonymous mapping advised MADV_HUGEPAGE (Linux's THP in `madvise` mode backs it with 2 MB pages
where it can), and the compiled model (one thread, BLAS pinned to one) runs with the plain arrays
and those copies swapped in, alternately, ROUNDS times. Prints the median time of each, the median
of each round's ratio and how much memory the process holds in huge pages. A measurement of the
in-place GEMM path's TLB misses (RESULTS.md, thirtieth session); nothing in tinycomp allocates
weights this way.
"""

from __future__ import annotations

import argparse
import mmap
import os
import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bare_call import model_and_input  # noqa: E402

import tinycomp  # noqa: E402
from tinycomp.nn import Linear  # noqa: E402

HUGE_PAGE = 2 << 20
MIN_BYTES = 256 * 1024


def huge_page_copy(a: np.ndarray, keep: list) -> np.ndarray:
    """`a` copied into a 2 MB-aligned mapping advised for huge pages (`keep` holds the mapping)."""
    size = (-(-a.nbytes // HUGE_PAGE) + 1) * HUGE_PAGE  # one page more: room to align
    m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    m.madvise(mmap.MADV_HUGEPAGE)
    keep.append(m)
    raw = np.frombuffer(m, dtype=np.uint8)
    start = (-raw.ctypes.data) % HUGE_PAGE
    out = raw[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def huge_pages_held() -> str:
    """This process's anonymous memory in huge pages, as Linux counts it (whether THP granted any)."""
    try:
        with open("/proc/self/smaps_rollup", encoding="ascii") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("AnonHugePages")), "?")
    except OSError:
        return "?"


def linear_weights(model) -> list:
    """The weight Tensors of the model's Linear layers, walking its attributes and lists."""
    found, seen, stack = [], set(), [model]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, Linear):
            found.append(obj.weight)
        elif isinstance(obj, (list, tuple)):
            stack.extend(obj)
        elif hasattr(obj, "__dict__"):
            stack.extend(vars(obj).values())
    return found


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--batch", default="32", help="comma-separated batch sizes")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--calls", type=int, default=10, help="calls timed together in a round")
    args = p.parse_args(argv)
    keep: list = []
    for batch in (int(b) for b in args.batch.split(",")):
        model, x = model_and_input(args.model, batch)
        fast = tinycomp.compile(model, threads=1)
        tensors = linear_weights(model)
        plain = [t.data for t in tensors]
        huge = [huge_page_copy(a, keep) if a.nbytes >= MIN_BYTES else a for a in plain]
        times: dict[str, list[float]] = {"plain": [], "huge": []}
        with threadpool_limits(1):
            for _ in range(args.rounds):
                for name, arrays in (("plain", plain), ("huge", huge)):
                    for t, a in zip(tensors, arrays, strict=True):
                        t.data = a
                    fast(x)  # the new arrays checked and armed once, outside the timing
                    start = time.perf_counter()
                    for _ in range(args.calls):
                        fast(x)
                    times[name].append((time.perf_counter() - start) / args.calls * 1e6)
        ratio = float(np.median(np.array(times["huge"]) / np.array(times["plain"])))
        print(f"{args.model} batch {batch}: plain {np.median(times['plain']):.1f} us, huge pages "
              f"{np.median(times['huge']):.1f} us, median of each round's ratio {ratio:.3f} "
              f"(huge pages held: {huge_pages_held()})")


if __name__ == "__main__":
    main()
