"""benchmarks/print_cost.py: our IR printer against llvmlite's, on the same freshly built modules."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "print_cost.py"


def test_times_both_printers_and_finds_the_same_text():
    out = subprocess.run([sys.executable, str(SCRIPT), "tiny", "block-tiny", "--rounds", "2"],
                         capture_output=True, text=True, timeout=300, check=True).stdout.splitlines()
    assert len(out) == 2
    for name, line in zip(["tiny", "block-tiny"], out, strict=True):
        m = re.fullmatch(rf"{name}: (\d+) instructions; ir_text ([\d.]+) ms, llvmlite ([\d.]+) ms "
                         r"\(([\d.]+) x\), the same text", line)
        assert m, line
        assert int(m.group(1)) > 0 and float(m.group(2)) > 0 and float(m.group(3)) > 0
