"""Score a Parquet data set on a Dask cluster with the compiled reference MLP, then with plain NumPy.

    python examples/dask_scoring.py                        # 2,000,000 rows; LocalCluster, 2 workers x 1 thread
    python examples/dask_scoring.py --rows 20000 --workers 1
    python examples/dask_scoring.py --scheduler tcp://10.0.0.5:8786 --data-dir /shared/scoring   # a running cluster

1. The workers write the data set: --rows rows of 784 random float32 features (columns f0..f783,
   seeded per file) in Parquet files of --rows-per-file rows.
2. Parquet -> score -> Parquet, timed end to end: `tinycomp.dask.predict(model, df, columns=...)`
   with the reference MLP, then the same pipeline with the MLP written in NumPy
   (`np.maximum(x @ W1 + b1, 0) ...`), same cluster, same data; BLAS runs on the threads
   tinycomp.dask pinned it to in each worker process (the worker's share of its host's cores).
3. Scoring alone: --memory-rows rows held in the workers' memory, scored by both (median of --repeat).
4. Checks the two engines' predictions against a float64 reference (tinycomp's parity rule).
Prints rows/s for each; --json FILE writes the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator

import numpy as np

import tinycomp.dask as tcd
from tinycomp.bench.models import get_model, numpy_function
from tinycomp.parity import check_parity

FEATURES = [f"f{i}" for i in range(784)]
OUTPUTS = [f"y{i}" for i in range(10)]


def file_rows(seed: int, index: int, rows: int) -> np.ndarray:
    """The rows of data file `index`: the same numbers wherever they are made."""
    return np.random.default_rng([seed, index]).standard_normal((rows, 784), dtype=np.float32)


def make_part(index: int, sizes: list[int], seed: int):
    import pandas as pd

    return pd.DataFrame(file_rows(seed, index, sizes[index]), columns=FEATURES)


def numpy_frame(frame, weights, columns: list[str], names: list[str]):
    """One partition through the MLP written in NumPy: the baseline."""
    import pandas as pd

    x = np.ascontiguousarray(frame[columns].to_numpy(dtype=np.float32))
    y = numpy_function(get_model("mlp"), weights)(x)
    return pd.DataFrame(y, index=frame.index, columns=names)


def memory_block(empty: np.ndarray, seed: int, block_id: tuple = (0, 0)) -> np.ndarray:
    return file_rows(seed, block_id[0], len(empty))


def numpy_block(x: np.ndarray, weights) -> np.ndarray:
    return numpy_function(get_model("mlp"), weights)(x)


@contextlib.contextmanager
def connect(args: argparse.Namespace) -> Iterator:
    from distributed import Client, LocalCluster

    if args.scheduler:
        with Client(args.scheduler) as client:
            yield client
        return
    with LocalCluster(n_workers=args.workers, threads_per_worker=args.threads_per_worker, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        yield client


def write_dataset(path: str, rows: int, rows_per_file: int, seed: int) -> int:
    import dask.dataframe as dd

    sizes = [min(rows_per_file, rows - start) for start in range(0, rows, rows_per_file)]
    meta = make_part(0, [0], seed)
    # random floats neither compress nor dictionary-encode: plain pages are the smallest and fastest to read
    dd.from_map(make_part, range(len(sizes)), sizes=sizes, seed=seed, meta=meta, enforce_metadata=False).to_parquet(
        path, compression=None, write_index=False, use_dictionary=False, write_statistics=False)
    return len(sizes)


def score_parquet(engine: str, model, weights, data: str, out: str) -> float:
    """Seconds to read the data set, score it with `engine` and write the predictions."""
    import dask
    import dask.dataframe as dd
    import pandas as pd

    df = dd.read_parquet(data)
    if engine == "compiled":
        pred = tcd.predict(model, df, columns=FEATURES, output_columns=OUTPUTS)
    else:
        meta = pd.DataFrame({n: np.empty(0, np.float32) for n in OUTPUTS})
        w = dask.delayed(weights, traverse=False)  # one key: each worker fetches the weights once, as for tinycomp
        pred = df.map_partitions(numpy_frame, w, FEATURES, OUTPUTS, meta=meta)
    start = time.perf_counter()
    pred.to_parquet(out, write_index=False)
    return time.perf_counter() - start


def score_in_memory(engine: str, client, model, weights, x) -> float:
    """Seconds to score the rows already held by the workers, results kept there."""
    import dask
    from distributed import wait

    if engine == "compiled":
        y = tcd.predict(model, x)
    else:
        y = x.map_blocks(numpy_block, dask.delayed(weights, traverse=False), chunks=(x.chunks[0], (10,)),
                         dtype=np.float32)
    start = time.perf_counter()
    held = client.persist(y)
    wait(held)
    seconds = time.perf_counter() - start
    del held
    return seconds


def check_outputs(args: argparse.Namespace, weights, data: str, outs: dict[str, str]) -> str:
    """Both engines' predictions of the first file against a float64 reference of the same rows."""
    import dask.dataframe as dd

    x = dd.read_parquet(data).partitions[0][FEATURES].compute().to_numpy(np.float32)
    ys = {e: dd.read_parquet(p).partitions[0].compute().to_numpy(np.float32) for e, p in outs.items()}
    reference = numpy_function(get_model("mlp"), weights, np.float64)(x.astype(np.float64))
    lines = []
    for engine, y in ys.items():
        eager = ys.get("numpy", numpy_function(get_model("mlp"), weights)(x))
        report = check_parity(y, eager, reference)
        if not report.ok:
            raise SystemExit(f"{engine} predictions differ from the float64 reference: {report}")
        lines.append(f"{engine}: {len(y):,} rows within the parity rule")
    return "; ".join(lines)


def run(args: argparse.Namespace) -> dict:
    import dask.array as da

    bm = get_model("mlp")
    model = bm.build(seed=args.seed)
    weights = tuple(bm.weights(model))
    root = args.data_dir or tempfile.mkdtemp(prefix="tinycomp-dask-")
    data = os.path.join(root, "features.parquet")
    outs = {e: os.path.join(root, f"predictions-{e}.parquet") for e in args.engines}
    result: dict = {"rows": args.rows, "rows_per_file": args.rows_per_file, "engines": args.engines}
    try:
        with connect(args) as client:
            info = client.scheduler_info(n_workers=-1)["workers"]
            result["workers"] = len(info)
            result["threads"] = sum(w["nthreads"] for w in info.values())
            print(f"cluster: {result['workers']} workers, {result['threads']} threads in all "
                  f"({'scheduler ' + args.scheduler if args.scheduler else 'LocalCluster, worker processes'}); "
                  f"this host has {os.cpu_count()} cores")
            size = f"{args.rows:,} rows x 784 float32 ({args.rows * 784 * 4 / 1e9:.2f} GB)"
            if args.reuse and os.path.isdir(data):
                import pyarrow.dataset

                found = pyarrow.dataset.dataset(data, format="parquet").count_rows()
                if found != args.rows:
                    raise SystemExit(f"--reuse: {data} holds {found:,} rows, not --rows {args.rows:,}")
                print(f"data: {size} reused from {data}")
            else:
                start = time.perf_counter()
                files = write_dataset(data, args.rows, args.rows_per_file, args.seed)
                result["write_s"] = time.perf_counter() - start
                print(f"data: {size} in {files} Parquet files, written in {result['write_s']:.1f} s")
            mem_rows = min(args.memory_rows, args.rows)
            chunk = min(args.rows_per_file, mem_rows)
            x = da.map_blocks(memory_block, da.empty((mem_rows, 784), chunks=(chunk, 784), dtype=np.float32),
                              args.seed + 1, dtype=np.float32)
            x = client.persist(x)
            for engine in args.engines:  # warm up: each worker compiles (or loads) the model, imports what it needs
                score_in_memory(engine, client, model, weights, x)
            for engine in args.engines:
                seconds = score_parquet(engine, model, weights, data, outs[engine])
                result[f"parquet_{engine}_rows_per_s"] = args.rows / seconds
                print(f"Parquet -> {engine:>8} -> Parquet: {args.rows / seconds:>12,.0f} rows/s ({seconds:.2f} s)")
            times: dict[str, list[float]] = {e: [] for e in args.engines}
            for _ in range(args.repeat):  # engines alternate, so a slow moment of a shared host hits both
                for engine in args.engines:
                    times[engine].append(score_in_memory(engine, client, model, weights, x))
            for engine in args.engines:
                seconds = statistics.median(times[engine])
                result[f"memory_{engine}_rows_per_s"] = mem_rows / seconds
                print(f"in memory ({mem_rows:,} rows), {engine:>8}: {mem_rows / seconds:>12,.0f} rows/s "
                      f"(median of {args.repeat}: {seconds * 1e3:.1f} ms)")
            if set(args.engines) == {"compiled", "numpy"}:
                for where in ("parquet", "memory"):
                    ratio = result[f"{where}_compiled_rows_per_s"] / result[f"{where}_numpy_rows_per_s"]
                    result[f"{where}_compiled_over_numpy"] = ratio
                    print(f"compiled / NumPy, {where}: {ratio:.2f} x the rows/s")
            result["check"] = check_outputs(args, weights, data, outs)
            print(f"check: {result['check']}")
            result["worker_stats"] = stats = list(client.run(tcd.worker_stats).values())
            models = [m for w in stats for m in w["models"]]
            rows, seconds = sum(m["rows"] for m in models), sum(m["seconds"] for m in models)
            print(f"compiled model on the workers: {sum(m['compiles'] for m in models)} compile(s) in "
                  f"{len(stats)} worker processes ({sum(m['cache_hits'] for m in models)} from the disk cache), "
                  f"threads per chunk {sorted({m['threads'] for m in models})}, BLAS threads (NumPy ran with these) "
                  f"{sorted({w['blas_threads'] for w in stats}, key=str)}; {rows:,} rows in {seconds:.2f} s of calls")
    finally:
        if not args.keep and not args.data_dir:
            shutil.rmtree(root, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=2_000_000, help="rows in the data set (default 2,000,000)")
    p.add_argument("--rows-per-file", type=int, default=50_000, help="rows per Parquet file and partition")
    p.add_argument("--memory-rows", type=int, default=200_000, help="rows held in memory for the scoring-only run")
    p.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes (default 2)")
    p.add_argument("--threads-per-worker", type=int, default=1)
    p.add_argument("--scheduler", help="address of a running cluster's scheduler (then no LocalCluster)")
    p.add_argument("--data-dir", help="folder for the data and predictions, readable by every worker (kept)")
    p.add_argument("--keep", action="store_true", help="keep the temporary data folder")
    p.add_argument("--reuse", action="store_true", help="use the data set already in --data-dir instead of writing it")
    p.add_argument("--engines", default="compiled,numpy", help="comma-separated: compiled, numpy")
    p.add_argument("--repeat", type=int, default=3, help="scoring-only runs per engine (median)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the figures to this file")
    args = p.parse_args(argv)
    args.engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if not args.engines or set(args.engines) - {"compiled", "numpy"}:
        p.error(f"--engines takes compiled and/or numpy; got {args.engines}")
    if min(args.rows, args.rows_per_file, args.memory_rows, args.workers, args.threads_per_worker, args.repeat) < 1:
        p.error("--rows, --rows-per-file, --memory-rows, --workers, --threads-per-worker and --repeat must be >= 1")
    result = run(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
