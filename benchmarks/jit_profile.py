"""Run a compiled bench model in a loop with its JIT code named for `perf`.

    perf record -F 4999 -o perf.data python benchmarks/jit_profile.py block 32 8
    perf report -i perf.data --sort sym --stdio

With `--map FILE --objects DIR`, benchmarks/perf_annotate.py spreads one function's samples over
its instructions.

Compiles the model (`tinycomp.bench.models`, one thread), writes `/tmp/perf-PID.map` (the
format perf reads for code it finds no file for: "address size name" per line) with every
function of the module's object code, internal kernels included, then calls the model on a
batch of BATCH for SECONDS (BLAS pinned to one thread) and prints the time per call. Without
such a map perf shows the JIT code as bare addresses.

The addresses come from the object files the engine loaded: each function's offset in its
section (the ELF symbol table), plus where that section landed, found from one function of the
section the engine can name (`JitEngine.address`: the non-internal ones).
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import time

from threadpoolctl import threadpool_limits

import tinycomp as tc
from tinycomp.bench.models import get_model
from tinycomp.runtime.engine import JitEngine

SHT_SYMTAB, STT_FUNC, SYM_SIZE, SECTION_SIZE = 2, 2, 24, 64


def elf_functions(blob: bytes) -> list[tuple[str, int, int, int]]:
    """(name, section index, offset in that section, size) of every sized function symbol of a
    64-bit little-endian ELF object."""
    e_shoff, = struct.unpack_from("<Q", blob, 0x28)
    e_shnum, = struct.unpack_from("<H", blob, 0x3C)
    sections = [struct.unpack_from("<IIQQQQIIQQ", blob, e_shoff + i * SECTION_SIZE) for i in range(e_shnum)]
    out = []
    for sh in sections:
        if sh[1] != SHT_SYMTAB:
            continue
        strtab_at = sections[sh[6]][4]  # sh_link: the symbol names' string table
        for j in range(sh[5] // SYM_SIZE):
            name_at, info, _, shndx, value, size = struct.unpack_from("<IBBHQQ", blob, sh[4] + j * SYM_SIZE)
            if info & 0xF == STT_FUNC and size:
                start = strtab_at + name_at
                out.append((blob[start:blob.index(b"\0", start)].decode(), shndx, value, size))
    return out


def perf_map_lines(engine: JitEngine) -> list[str]:
    """"address size name" (hex) for every function of the engine's objects whose section holds
    a function the engine can give the address of."""
    lines = []
    for blob in engine.objects:
        functions = elf_functions(blob)
        base: dict[int, int] = {}
        for name, shndx, value, _ in functions:
            if shndx not in base:
                try:
                    base[shndx] = engine.address(name) - value
                except LookupError:  # internal: the engine does not name it
                    pass
        lines += [f"{base[shndx] + value:x} {size:x} {name}" for name, shndx, value, size in functions
                  if shndx in base]
    return lines


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="a tinycomp bench model: block, lnmlp, mlp, ...")
    p.add_argument("batch", type=int)
    p.add_argument("seconds", type=float)
    p.add_argument("--map", default=None, help="where to write the map (default /tmp/perf-PID.map)")
    p.add_argument("--objects", default=None, help="a folder to write the engine's object files to, "
                   "for benchmarks/perf_annotate.py")
    args = p.parse_args(argv)
    bm = get_model(args.model)
    fast = tc.compile(bm.build(), threads=1)
    x = bm.sample(args.batch)
    fast(x)
    engine = fast._require("perf map").engine
    lines = perf_map_lines(engine)
    if args.objects:
        os.makedirs(args.objects, exist_ok=True)
        for i, blob in enumerate(engine.objects):
            with open(os.path.join(args.objects, f"obj{i}.o"), "wb") as f:
                f.write(blob)
    where = args.map or f"/tmp/perf-{os.getpid()}.map"
    with open(where, "w", encoding="ascii") as f:
        f.write("\n".join(lines) + "\n")
    print(f"{len(lines)} functions named in {where}", file=sys.stderr)
    calls, t0 = 0, time.perf_counter()
    with threadpool_limits(1):  # OpenBLAS's idle workers would spin in the profile
        while time.perf_counter() - t0 < args.seconds:
            fast(x)
            calls += 1
    print(f"{args.model} batch {args.batch}: {(time.perf_counter() - t0) / max(calls, 1) * 1e6:.0f} us per call "
          f"({calls} calls)", file=sys.stderr)


if __name__ == "__main__":
    main()
