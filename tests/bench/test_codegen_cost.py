"""benchmarks/codegen_cost.py: what each function of a model costs the code generator."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "codegen_cost.py"


def test_ranks_every_kernel_of_a_model():
    out = subprocess.run([sys.executable, str(SCRIPT), "tiny"], capture_output=True, text=True, timeout=120,
                         check=True).stdout.splitlines()
    whole = float(re.fullmatch(r"tiny: whole module ([\d.]+) ms", out[0]).group(1))
    costs = [(float(ms), name) for ms, name in (re.fullmatch(r"\s*(-?[\d.]+) ms  (\S+)", line).groups()
                                                for line in out[1:])]
    names = [name for _, name in costs]
    assert "tinycomp_forward" in names and any(n.startswith("tinycomp.gemm.") for n in names), out
    assert [ms for ms, _ in costs] == sorted((ms for ms, _ in costs), reverse=True)
    assert 0 < max(ms for ms, _ in costs) < whole
