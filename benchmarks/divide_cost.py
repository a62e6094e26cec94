"""What a vector divide costs against the reciprocal estimate: ns per instruction, throughput-bound.

    PYTHONPATH=. python benchmarks/divide_cost.py [--iterations 2000000]

A JIT loop keeps CHAINS independent <16 x float> values in registers and replaces each by a
quotient every iteration (`fdiv`, vdivps), or by its reciprocal estimate (`vrcp14ps`, AVX-512
hosts only): with that many chains the loop is bound by how often the core can issue the
instruction, not by its latency. Prints the best of 5 runs, in ns and in cycles at --ghz.
"""

from __future__ import annotations

import argparse
import ctypes
import time

from tinycomp.codegen.target import host
from tinycomp.runtime.engine import JitEngine

CHAINS = 8
VECTOR = "<16 x float>"
RCP14 = "llvm.x86.avx512.rcp14.ps.512"


def loop_ir(op: str) -> str:
    """`void f(i64 iterations, ptr out)`: CHAINS values each replaced by `op` of itself per iteration."""
    splat = "<" + ", ".join(["float 1.5"] * 16) + ">"
    three = "<" + ", ".join(["float 3.0"] * 16) + ">"
    lines = ["define void @f(i64 %iterations, ptr %out) {", "entry:", "  br label %loop", "loop:",
             "  %i = phi i64 [0, %entry], [%i1, %loop]"]
    lines += [f"  %a{c} = phi {VECTOR} [{splat}, %entry], [%b{c}, %loop]" for c in range(CHAINS)]
    for c in range(CHAINS):
        lines.append(f"  %b{c} = fdiv {VECTOR} {three}, %a{c}" if op == "vdivps" else
                     f"  %b{c} = call {VECTOR} @{RCP14}({VECTOR} %a{c}, {VECTOR} zeroinitializer, i16 -1)")
    lines += ["  %i1 = add i64 %i, 1", "  %more = icmp ult i64 %i1, %iterations",
              "  br i1 %more, label %loop, label %done", "done:"]
    for c in range(CHAINS):  # stored, so the loop is not dead code
        lines += [f"  %p{c} = getelementptr {VECTOR}, ptr %out, i64 {c}", f"  store {VECTOR} %b{c}, ptr %p{c}, align 4"]
    lines += ["  ret void", "}", f"declare {VECTOR} @{RCP14}({VECTOR}, {VECTOR}, i16)"]
    return "\n".join(lines)


def ns_per_instruction(op: str, iterations: int) -> float:
    engine = JitEngine(loop_ir(op))
    fn = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_void_p)(engine.address("f"))
    out = (ctypes.c_float * (16 * CHAINS))()
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        fn(iterations, ctypes.addressof(out))
        best = min(best, time.perf_counter() - t0)
    return best / (iterations * CHAINS) * 1e9


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=2_000_000)
    p.add_argument("--ghz", type=float, default=3.5, help="clock to express the times in cycles at")
    args = p.parse_args(argv)
    ops = ["vdivps"] + (["vrcp14ps"] if "+avx512f" in host().features else [])
    for op in ops:
        ns = ns_per_instruction(op, args.iterations)
        print(f"{op:9s} on a zmm: {ns:.2f} ns = {ns * args.ghz:.1f} cycles at {args.ghz} GHz")


if __name__ == "__main__":
    main()
