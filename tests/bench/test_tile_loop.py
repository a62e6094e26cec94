"""benchmarks/tile_loop.py runs: every variant of the tile's loop compiles, runs and is timed."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.bench.scripts import BENCHMARKS
from tinycomp.codegen.target import host

SCRIPT = BENCHMARKS / "tile_loop.py"


@pytest.mark.skipif(host().vector_width != 16, reason="the loop is written for 16-lane (AVX-512) vectors")
def test_every_variant_runs_and_reports_a_fraction_of_the_peak():
    out = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=300,
                         cwd=SCRIPT.parents[1], env={"PYTHONPATH": str(SCRIPT.parents[1]), "PATH": ""})
    assert out.returncode == 0, out.stderr
    line = r"B in (L1|L2), A (in L1|streaming) *, (plain|masked) +loads: +([\d.]+) GFLOP/s +([\d.]+) of peak"
    rows = re.findall(line, out.stdout)
    assert len({r[:3] for r in rows}) == 8, out.stdout
    assert all(float(g) > 0 and 0 < float(f) < 2 for *_, g, f in rows), out.stdout
