"""How close the vendors' single-thread GEMMs come to the FMA peak on this host, beside ours.

    PYTHONPATH=. python benchmarks/vendor_gemm.py [--repeat 30] [--shapes M,K,N;M,K,N...]

The issue's "93 % of the FMA peak" was set on a Zen 4 core with one FMA port. This script asks what
the best available code reaches here: C = A @ B in float32 on one thread, for the reference MLP's
layers at batch 2048 and 8192, the transformer block's at 2,048 rows and two square shapes, by
- `numpy`: NumPy's matmul (OpenBLAS, pinned to one thread with threadpoolctl);
- `torch`: torch.mm (Intel MKL in the CPU wheel), torch.set_num_threads(1), if torch is installed;
- `tinycomp`: a compiled `Linear` without bias, through its raw native call (no Python around it).
Each engine runs in its own process (one framework's threads and allocator never meet another's).
Prints, per shape and engine, the best and the median of `--repeat` calls in GFLOP/s and as a
fraction of the bench's FMA peak (`tinycomp.bench.peak`, measured once per process).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time

import numpy as np

SHAPES = [(2048, 784, 256), (8192, 784, 256), (2048, 256, 128), (2048, 128, 128), (2048, 128, 512), (2048, 512, 128),
          (2048, 1024, 1024), (4096, 2048, 2048)]  # (M, K, N)
ENGINES = ("numpy", "torch", "tinycomp")


def scaled_weight(rng: np.random.Generator, K: int, N: int) -> np.ndarray:
    """A K x N float32 weight of standard deviation 1/sqrt(K): outputs of the inputs' scale."""
    return (rng.standard_normal((K, N), dtype=np.float32) / np.float32(np.sqrt(K))).astype(np.float32)


def _times(call, repeat: int) -> list[float]:
    call()  # warm-up: pages touched, packed buffers allocated, the clock up
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        call()
        out.append(time.perf_counter() - t0)
    return out


def _numpy_call(a: np.ndarray, b: np.ndarray):
    c = np.empty((a.shape[0], b.shape[1]), np.float32)
    return lambda: np.matmul(a, b, out=c)


def _torch_call(a: np.ndarray, b: np.ndarray):
    import torch

    torch.set_num_threads(1)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    tc = torch.empty((a.shape[0], b.shape[1]))
    return lambda: torch.mm(ta, tb, out=tc)


def tinycomp_gemm_call(a: np.ndarray, b: np.ndarray):
    """C = A @ B as a compiled `Linear` without bias, through its bare native call (also
    `gemm_clock.py`'s GEMM)."""
    from tinycomp.bench.runner import compiled_bare_call
    from tinycomp.nn import Linear, Tensor

    lin = Linear(*b.shape, bias=False)
    lin.weight = Tensor(b)
    return compiled_bare_call(lin, a)


def run_engine(engine: str, repeat: int, shapes: list[tuple[int, int, int]]) -> dict:
    """Every shape on one engine, in this process: {"M,K,N": [seconds, ...]}."""
    from threadpoolctl import threadpool_limits

    make = {"numpy": _numpy_call, "torch": _torch_call, "tinycomp": tinycomp_gemm_call}[engine]
    rng = np.random.default_rng(0)
    out = {}
    with threadpool_limits(1):
        for M, K, N in shapes:
            a = rng.standard_normal((M, K), dtype=np.float32)
            out[f"{M},{K},{N}"] = _times(make(a, scaled_weight(rng, K, N)), repeat)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=30)
    p.add_argument("--shapes", default=";".join(",".join(map(str, s)) for s in SHAPES),
                   help="M,K,N triples separated by ';' (default: the shapes above)")
    p.add_argument("--engine", choices=ENGINES, help=argparse.SUPPRESS)  # a child process's one engine
    args = p.parse_args(argv)
    shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes.split(";")]
    if args.engine:
        print(json.dumps(run_engine(args.engine, args.repeat, shapes)))
        return
    from tinycomp.bench.peak import measure_fma_peak

    peak = measure_fma_peak()["gflops"]
    print(f"FMA peak {peak:.1f} GFLOP/s per core (tinycomp.bench.peak); one thread; best / median of {args.repeat}")
    results, skipped = {}, []
    for engine in ENGINES:
        if engine == "torch" and importlib.util.find_spec("torch") is None:
            skipped.append("torch: not installed, skipped (pip install torch)")
            continue
        child = subprocess.run([sys.executable, __file__, "--engine", engine, "--repeat", str(args.repeat),
                                "--shapes", args.shapes], capture_output=True, text=True)
        if child.returncode != 0:
            raise SystemExit(f"{engine} failed:\n{child.stderr}")
        results[engine] = json.loads(child.stdout.strip().splitlines()[-1])
    print(f"{'M x K x N':>18}  " + "  ".join(f"{e:>21}" for e in results))
    for M, K, N in shapes:
        cells = []
        for times in results.values():
            t = times[f"{M},{K},{N}"]
            best, median = 2 * M * K * N / min(t) / 1e9, 2 * M * K * N / float(np.median(t)) / 1e9
            cells.append(f"{best:6.1f} {best / peak:.2f} / {median / peak:.2f}")
        print(f"{f'{M} x {K} x {N}':>18}  " + "  ".join(f"{c:>21}" for c in cells))
    for note in skipped:
        print(note)


if __name__ == "__main__":
    main()
