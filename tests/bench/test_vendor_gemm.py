"""benchmarks/vendor_gemm.py runs: every installed engine is timed on every shape, each in its own
process, and reported as a fraction of the FMA peak."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

from tests.bench.scripts import BENCHMARKS, load_script

SCRIPT = BENCHMARKS / "vendor_gemm.py"


def test_every_installed_engine_is_timed_on_every_shape():
    shapes = "64,32,16;30,70,50"
    env = {**os.environ, "PYTHONPATH": str(SCRIPT.parents[1])}
    out = subprocess.run([sys.executable, str(SCRIPT), "--repeat", "3", "--shapes", shapes], capture_output=True,
                         text=True, timeout=300, cwd=SCRIPT.parents[1], env=env)
    assert out.returncode == 0, out.stderr
    header = next(line for line in out.stdout.splitlines() if line.strip().startswith("M x K x N")).split()
    engines = ["numpy", "tinycomp"] + (["torch"] if importlib.util.find_spec("torch") else [])
    assert sorted(header[header.index("N") + 1:]) == sorted(engines), out.stdout
    for shape in ("64 x 32 x 16", "30 x 70 x 50"):
        row = next(line for line in out.stdout.splitlines() if line.strip().startswith(shape))
        cells = re.findall(r"([\d.]+) ([\d.]+) / ([\d.]+)", row)
        assert len(cells) == len(engines), row
        # fractions print with two decimals: a loaded host may round a small shape's median to 0.00
        assert all(float(g) > 0 and 0 <= float(med) <= float(best) < 2 for g, best, med in cells), row


def test_a_child_reports_one_time_per_call_for_each_shape():
    times = load_script("vendor_gemm").run_engine("tinycomp", 4, [(9, 5, 7)])
    assert list(times) == ["9,5,7"] and len(times["9,5,7"]) == 4 and all(t > 0 for t in times["9,5,7"])
