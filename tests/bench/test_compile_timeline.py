"""benchmarks/compile_timeline.py: where a cold compile goes, and when each part compiles."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "compile_timeline.py"


def test_times_every_stage_and_each_part_of_a_split_module():
    out = subprocess.run([sys.executable, str(SCRIPT), "mlp", "--compiles", "3", "--print-share", "0.5"],
                         capture_output=True, text=True, timeout=300, check=True,
                         env={**os.environ, "TINYCOMP_CODEGEN_JOBS": "2"}).stdout.splitlines()
    total = re.fullmatch(r"mlp: cold compile, median of compiles 3-3: ([\d.]+) ms, PRINT_SHARE 0.5", out[0])
    assert total, out[0]
    stages = dict(re.fullmatch(r"  (.+): ([\d.]+) ms", line).groups() for line in out[1:-1])
    assert list(stages) == ["tracing and passes", "building the IR", "reading it into parts",
                            "printing and compiling the parts", "the engine in all"]
    assert 0 < float(stages["printing and compiling the parts"]) <= float(stages["the engine in all"]) \
        < float(total.group(1))
    parts = re.findall(r"(main|\d+) (starts|ends) at [\d.]+", out[-1])
    assert sorted(parts) == [("1", "ends"), ("1", "starts"), ("main", "ends"), ("main", "starts")], out[-1]
