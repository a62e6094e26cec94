"""How much memory one large batch leaves resident once the calls are small again (the per-thread
scratch of `runtime/buffers.ScratchPool`), for a model whose scratch grows with the batch.

    PYTHONPATH=. python benchmarks/scratch_retained.py --threads 1
    PYTHONPATH=. python benchmarks/scratch_retained.py --threads 2

Compiles 784-2048-2048-10 (its 2048 x 2048 weight passes the L2 share, so no row blocks: scratch
per row), makes 100 batch-1 calls, reads RSS from /proc/self/status, makes one call of `--batch`
rows, frees its input and output, makes 1,000 batch-1 calls and reads RSS again.
"""

from __future__ import annotations

import argparse
import gc

import numpy as np

import tinycomp as tc
from tinycomp.nn import Linear, ReLU, Sequential, manual_seed


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS"))


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=20000)
    parser.add_argument("--width", type=int, default=2048)
    args = parser.parse_args(argv)
    manual_seed(0)
    model = Sequential(Linear(784, args.width), ReLU(), Linear(args.width, args.width), ReLU(), Linear(args.width, 10))
    fast = tc.compile(model, input_shape=(None, 784), threads=args.threads)
    one = np.ones((1, 784), np.float32)
    for _ in range(100):
        fast(one)
    gc.collect()
    before = rss_mb()
    big = np.ones((args.batch, 784), np.float32)
    fast(big)
    del big
    for _ in range(1000):
        fast(one)
    gc.collect()
    retained = rss_mb() - before
    print(f"threads {args.threads}, one call of {args.batch} rows: RSS {before:.0f} MB before, "
          f"{before + retained:.0f} MB after 1,000 batch-1 calls: {retained:.0f} MB retained")
    return retained


if __name__ == "__main__":
    main()
