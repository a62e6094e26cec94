"""A/B of the vector math kernels: this tree's `tinycomp/codegen/vecmath.py` against another
revision's, compiled into one engine and timed interleaved in one process.

    PYTHONPATH=. python benchmarks/vecmath_ab.py [--baseline bfd7f69] [--n 16384] [--rounds 31]
    PYTHONPATH=. python benchmarks/vecmath_ab.py --layer 1024x1024 --rows 256   # fused Linear + act

Each function is a map kernel (`out[i:i+W] = f(x[i:i+W])`, as in tests/codegen/test_vecmath.py)
over n floats that stay in L2, at W = 16 (one zmm: the elementwise kernels) and W = 64 (the GEMM
epilogue's runs of ACT_VECTORS vectors). Baseline and current kernels of one function and width
take turns round after round (`gemm_micro.compare`), so on a shared host both meet it in the same
state. Prints median and min ns per element and the median ratio new / baseline. `bfd7f69` is the
last commit before the 2-ulp sigmoid and gelu. With --layer, each activation is timed where a model
meets it: a Linear(K, N) kernel with the activation fused into its GEMM epilogue, built once with
the baseline's emitter and once with this tree's, over --rows rows (one thread).
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import os
import subprocess
import sys
import tempfile

import numpy as np
from threadpoolctl import threadpool_limits

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests", "codegen"))
from gemm_micro import LINEAR_SIG, build, compare  # noqa: E402
from jit_util import c_function, emit_map_kernel, jit, new_module  # noqa: E402

from tinycomp.codegen import vecmath, vector_ops  # noqa: E402
from tinycomp.codegen.gemm import pack_floats  # noqa: E402
from tinycomp.codegen.target import host  # noqa: E402
from tinycomp.runtime.engine import JitEngine  # noqa: E402

FUNCS = ("exp", "sigmoid", "tanh", "gelu")


def baseline_vecmath(revision: str):
    """vecmath.py as of `revision`, imported as a sibling module so its relative imports resolve."""
    source = subprocess.run(["git", "-C", HERE, "show", f"{revision}:tinycomp/codegen/vecmath.py"],
                            check=True, capture_output=True, text=True).stdout
    # the builder helpers it imports moved from loops.py to cgutils.py after that revision
    source = source.replace("from .loops import", "from .cgutils import")
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(source)
    try:
        spec = importlib.util.spec_from_file_location("tinycomp.codegen._vecmath_baseline", f.name)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        os.unlink(f.name)
    return mod


def emitter(vm, name: str):
    return getattr(vm, f"emit_{name}")


def time_kernels(variants: dict, n: int, rounds: int) -> None:
    module = new_module("vecmath_ab")
    names = []
    for name in FUNCS:
        for width in (16, 64):
            for tag, vm in variants.items():
                emit_map_kernel(module, f"{tag}_{name}_{width}", width, emitter(vm, name))
                names.append(f"{tag}_{name}_{width}")
    engine, addresses = jit(module, *names)
    x = (np.random.default_rng(0).standard_normal(n) * 4).astype(np.float32)
    out = np.empty_like(x)
    xp, op = ctypes.c_void_p(x.ctypes.data), ctypes.c_void_p(out.ctypes.data)
    print(f"n={n}, {rounds} rounds; ns per element")
    print(" ".join(f"{h:>9s}" for h in ("function", "W", "base med", "new med", "base min", "new min", "new/base")))
    for name in FUNCS:
        for width in (16, 64):
            fns = [c_function(addresses[f"{tag}_{name}_{width}"], 2) for tag in variants]
            calls = [(lambda f=f: f(n, op, xp)) for f in fns]
            (bmin, bmed), (nmin, nmed) = compare(calls, rounds=rounds)
            ns = 1e9 / n
            print(f"{name:>9s} {width:>9d} {bmed * ns:9.3f} {nmed * ns:9.3f} {bmin * ns:9.3f} {nmin * ns:9.3f} "
                  f"{nmed / bmed:9.3f}")
    del engine


def time_layers(variants: dict, shape: str, rows: int, rounds: int) -> None:
    """Linear(K, N) + activation with each variant's emitter in the GEMM epilogue."""
    K, N = (int(v) for v in shape.split("x"))
    width = host().vector_width
    rng = np.random.default_rng(0)
    A, W = rng.standard_normal((rows, K), dtype=np.float32), rng.standard_normal((K, N), dtype=np.float32)
    B, C = np.zeros(N, np.float32), np.empty((rows, N), np.float32)
    P = np.empty(max(1, pack_floats(K, N, width)), np.float32)
    ptrs = [a.ctypes.data for a in (A, W, B, C, P)]
    current = dict(vector_ops.VECTOR_OPS)
    print(f"Linear({K}, {N}) + activation, {rows} rows, {rounds} rounds; us per call")
    print(f"{'activation':>10s} {'base med':>9s} {'new med':>9s} {'base min':>9s} {'new min':>9s} {'new/base':>9s}")
    for name in ("sigmoid", "tanh", "gelu", None):
        engines, calls = [], []
        for vm in variants.values():
            if name is not None:  # the epilogue reads vector_ops.VECTOR_OPS when it is emitted
                emit = emitter(vm, name)
                vector_ops.VECTOR_OPS[name] = vector_ops.VectorOp(lambda b, x, emit=emit: emit(b, b.module, x),
                                                                  current[name].max_ulp)
            engine = JitEngine(build([(K, N, name)], width))
            vector_ops.VECTOR_OPS.update(current)
            fn = LINEAR_SIG(engine.address("lin0"))
            engines.append(engine)
            calls.append(lambda fn=fn: fn(rows, *ptrs))
        (bmin, bmed), (nmin, nmed) = compare(calls, rounds=rounds)
        print(f"{name or 'none':>10s} {bmed * 1e6:9.1f} {nmed * 1e6:9.1f} {bmin * 1e6:9.1f} {nmin * 1e6:9.1f} "
              f"{nmed / bmed:9.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", default="bfd7f69", help="git revision of the baseline vecmath.py")
    p.add_argument("--n", type=int, default=16384, help="floats per call (a multiple of 64)")
    p.add_argument("--rounds", type=int, default=31)
    p.add_argument("--layer", help="KxN: time Linear(K, N) + each activation instead of bare kernels")
    p.add_argument("--rows", type=int, default=256, help="rows of the --layer input")
    args = p.parse_args()
    if args.n <= 0 or args.n % 64:
        raise SystemExit(f"--n must be a positive multiple of 64, got {args.n}")
    variants = {"base": baseline_vecmath(args.baseline), "new": vecmath}
    print(f"baseline {args.baseline}")
    if args.layer:
        with threadpool_limits(1):
            time_layers(variants, args.layer, args.rows, args.rounds)
    else:
        time_kernels(variants, args.n, args.rounds)


if __name__ == "__main__":
    main()
