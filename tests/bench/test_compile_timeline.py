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
    assert list(stages) == ["tracing and passes", "building the IR (and cutting parts meanwhile)",
                            "reading it into parts", "printing and compiling the rest", "the engine in all"]
    assert all(float(ms) > 0 for ms in stages.values())
    assert float(stages["building the IR (and cutting parts meanwhile)"]) \
        + float(stages["printing and compiling the rest"]) < float(total.group(1))
    events = re.findall(r"(main|\d+) (starts|ends) at [\d.]+", out[-1])
    threads = {who for who, _ in events}
    assert all(events.count((who, "starts")) == events.count((who, "ends")) for who in threads), out[-1]
    # parts on a thread of their own besides this one's (which may have left every part to it)
    assert threads - {"main"} and len(events) >= 4, out[-1]
