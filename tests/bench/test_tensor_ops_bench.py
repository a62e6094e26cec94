"""benchmarks/tensor_ops.py runs: compiled against eager per tensor op (the timings are not judged)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "tensor_ops.py"


def run(*cases: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *cases], capture_output=True, text=True, timeout=120,
                          cwd=SCRIPT.parents[1])


def test_times_the_named_cases():
    out = run("transpose small", "sum last")
    assert out.returncode == 0, out.stderr
    rows = out.stdout.splitlines()[1:]
    assert [r.split("  ")[0] for r in rows] == ["transpose small", "sum last"]
    assert re.search(r"\(256, 16, 64\)\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[\d.]+$", rows[0]), rows[0]  # with numpy copy


def test_an_unknown_case_is_named():
    out = run("transpose everything")
    assert out.returncode != 0 and "unknown case(s) ['transpose everything']" in out.stderr
