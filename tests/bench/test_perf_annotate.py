"""benchmarks/perf_annotate.py places sampled addresses of JIT code on the function's instructions
and its loops, from jit_profile.py's map and object files."""

from __future__ import annotations

import pytest

from tests.bench.scripts import load_script

perf_annotate = load_script("perf_annotate")


@pytest.mark.skipif(perf_annotate.disassembler() is None, reason="no objdump or llvm-objdump on this machine")
def test_samples_land_on_their_instructions_and_loops(tmp_path, capsys):
    load_script("jit_profile").main(["tiny", "4", "0.01", "--map", str(tmp_path / "jit.map"),
                                     "--objects", str(tmp_path / "objects")])
    names = [line.split(maxsplit=2)[2] for line in (tmp_path / "jit.map").read_text().splitlines()]
    name = next(n for n in names if n.startswith("tinycomp.gemm.tile"))  # a k-loop in every tile kernel
    start, size = perf_annotate.function_span(name, str(tmp_path / "jit.map"))
    instructions = perf_annotate.disassemble(name, str(tmp_path / "objects"))
    first, last = perf_annotate.loops(instructions, name)[0]
    in_loop = next(o for o, _ in instructions if first < o <= last)
    # three samples in the loop, one on the function's first instruction, one in another function
    ips = [start + in_loop] * 3 + [start, start + size]
    (tmp_path / "ips.txt").write_text("".join(f"{ip:x}\n" for ip in ips))
    perf_annotate.main([name, str(tmp_path / "ips.txt"), str(tmp_path / "jit.map"), str(tmp_path / "objects")])
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{name}: 4 of 5 samples (80.0 %)"
    counted = {int(line.split(":")[0].split()[-1], 16): int(line.split()[0]) for line in out[1:] if "%  " in line}
    assert counted[in_loop] == 3 and counted[0] == 1 and sum(counted.values()) == 4
    assert f"loop {first:x}-{last:x}: 75.0 % of the function's samples" in out
