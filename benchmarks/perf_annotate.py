"""One JIT function's perf samples per instruction, and the share inside each of its loops.

    perf record -e cpu-clock -F 9999 -o perf.data \\
        python benchmarks/jit_profile.py block 32 8 --map /tmp/jit.map --objects /tmp/jit-objects
    perf script -i perf.data -F ip > /tmp/ips.txt
    python benchmarks/perf_annotate.py tinycomp.gemm.tile6x4p8.lin /tmp/ips.txt /tmp/jit.map /tmp/jit-objects

perf cannot annotate JIT code: it has no file to read the bytes from. jit_profile.py writes where
each function landed (the map) and the object files the engine loaded; this script disassembles the
function from its object (objdump or llvm-objdump), places every sampled address on its instruction,
and prints each instruction's samples, then each loop (a backward jump and its target) with the
share of the function's samples between them.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from jit_profile import elf_functions  # noqa: E402

DISASSEMBLERS = ("objdump", "llvm-objdump", "llvm-objdump-19")
INSTRUCTION = re.compile(r"^\s*([0-9a-f]+):\s+(.*\S)\s*$")


def disassembler() -> str | None:
    return next((tool for tool in DISASSEMBLERS if shutil.which(tool)), None)


def disassemble(name: str, objects: str) -> list[tuple[int, str]]:
    """(offset from the function's start, instruction text) of `name`, from the object file of the
    folder that defines it."""
    tool = disassembler()
    if tool is None:
        raise SystemExit(f"perf_annotate needs one of {', '.join(DISASSEMBLERS)}")
    for path in sorted(os.listdir(objects)):
        full = os.path.join(objects, path)
        with open(full, "rb") as f:
            start = next((value for fn, _, value, _ in elf_functions(f.read()) if fn == name), None)
        if start is None:
            continue
        flag = "--disassemble=" if tool == "objdump" else "--disassemble-symbols="
        text = subprocess.run([tool, "-d", "--no-show-raw-insn", flag + name, full], capture_output=True,
                              text=True, check=True).stdout
        return [(int(m.group(1), 16) - start, m.group(2)) for m in map(INSTRUCTION.match, text.splitlines()) if m]
    raise SystemExit(f"no object in {objects} defines {name}")


def function_span(name: str, map_path: str) -> tuple[int, int]:
    with open(map_path, encoding="ascii") as f:
        for line in f:
            address, size, fn = line.split(maxsplit=2)
            if fn.strip() == name:
                return int(address, 16), int(size, 16)
    raise SystemExit(f"{name} is not in {map_path}")


def samples_by_offset(ips_path: str, start: int, size: int) -> tuple[collections.Counter, int]:
    """Samples per offset inside the function, and all samples of the file."""
    counts: collections.Counter = collections.Counter()
    total = 0
    with open(ips_path, encoding="ascii") as f:
        for line in f:
            parts = line.split()
            if not parts:
                continue
            total += 1
            ip = int(parts[0], 16)
            if start <= ip < start + size:
                counts[ip - start] += 1
    return counts, total


def loops(instructions: list[tuple[int, str]], name: str) -> list[tuple[int, int]]:
    """(first, last offset) of every backward jump's range within the function."""
    target = re.compile(rf"<{re.escape(name)}\+0x([0-9a-f]+)>")
    out = []
    for offset, text in instructions:
        m = target.search(text)
        if text.startswith("j") and m and int(m.group(1), 16) <= offset:
            out.append((int(m.group(1), 16), offset))
    return out


def annotate(name: str, instructions: list[tuple[int, str]], counts: collections.Counter, total: int) -> list[str]:
    inside = sum(counts.values())
    lines = [f"{name}: {inside} of {total} samples ({100 * inside / max(total, 1):.1f} %)"]
    lines += [f"{counts[o]:7d} {100 * counts[o] / max(inside, 1):5.1f} %  {o:5x}: {text}" for o, text in instructions]
    for first, last in loops(instructions, name):
        share = sum(c for o, c in counts.items() if first <= o <= last)
        lines.append(f"loop {first:x}-{last:x}: {100 * share / max(inside, 1):.1f} % of the function's samples")
    return lines


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("function")
    p.add_argument("ips", help="`perf script -F ip` output")
    p.add_argument("map", help="jit_profile.py --map")
    p.add_argument("objects", help="jit_profile.py --objects")
    args = p.parse_args(argv)
    start, size = function_span(args.function, args.map)
    counts, total = samples_by_offset(args.ips, start, size)
    print("\n".join(annotate(args.function, disassemble(args.function, args.objects), counts, total)))


if __name__ == "__main__":
    main()
