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
    head = re.fullmatch(r"tiny: whole module ([\d.]+) ms; in (\d+) parts? at once \(what a compile does\) ([\d.]+) ms",
                        out[0])
    assert head, out[0]
    whole = float(head.group(1))
    assert int(head.group(2)) >= 1 and float(head.group(3)) > 0
    costs = [(float(ms), name) for ms, name in (re.fullmatch(r"\s*(-?[\d.]+) ms  (\S+)", line).groups()
                                                for line in out[1:])]
    names = [name for _, name in costs]
    assert "tinycomp_forward" in names and any(n.startswith("tinycomp.gemm.") for n in names), out
    assert [ms for ms, _ in costs] == sorted((ms for ms, _ in costs), reverse=True)
    assert 0 < max(ms for ms, _ in costs) < whole


def test_a_lone_layer_as_bare_call_names_it():
    out = subprocess.run([sys.executable, str(SCRIPT), "softmax:40"], capture_output=True, text=True, timeout=120,
                         check=True).stdout.splitlines()
    assert re.fullmatch(r"softmax:40: whole module [\d.]+ ms; in \d+ parts? at once \(what a compile does\) [\d.]+ ms",
                        out[0]), out[0]
    assert any(re.fullmatch(r"\s*[\d.]+ ms  k\d+_softmax", line) for line in out[1:]), out
