"""benchmarks/early_parts_ab.py: cold compiles with and without parts cut while the module is built."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import tinycomp as tc
from tests.models import REFERENCE_MLP_IN, reference_mlp
from tinycomp.runtime import engine

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "early_parts_ab.py"


def test_it_times_both_schedules():
    out = subprocess.run([sys.executable, str(SCRIPT), "deep:2", "mlp", "--rounds", "2"], capture_output=True,
                         text=True, timeout=300, check=True).stdout.splitlines()
    assert len(out) == 2
    for name, line in zip(["deep:2", "mlp"], out, strict=True):
        assert re.fullmatch(rf"{name}: old schedule [\d.]+ ms, parts cut while building [\d.]+ ms, "
                            r"paired ratio [\d.]+ \(2 rounds\)", line), line
    out = subprocess.run([sys.executable, str(SCRIPT), "mlp", "--rounds", "2", "--lines", "500,250"],
                         capture_output=True, text=True, timeout=300, check=True).stdout.splitlines()
    assert re.fullmatch(r"mlp: EARLY_PART_LINES 500: [\d.]+ ms, 1.000, EARLY_PART_LINES 250: [\d.]+ ms, [\d.]+ "
                        r"\(paired ratios to 500, 2 rounds\)", out[0]), out


def test_the_old_schedule_it_stands_for_cuts_nothing_before_the_module_is_built(monkeypatch):
    """The script's old schedule is EARLY_PART_LINES = 10**9: no part is queued with functions cut
    before the module was built, while as the code stands some are."""
    cut_before: list[bool] = []
    real = engine.PartPipeline._queue_part

    def recording(self, *args):
        cut_before.append(self._early is not None and bool(self._early.taken))
        return real(self, *args)

    monkeypatch.setattr(engine.PartPipeline, "_queue_part", recording)
    monkeypatch.setenv("TINYCOMP_CACHE", "0")
    monkeypatch.setenv("TINYCOMP_CODEGEN_JOBS", "2")
    for lines, cuts in ((10**9, False), (engine.EARLY_PART_LINES, True)):
        monkeypatch.setattr(engine, "EARLY_PART_LINES", lines)
        cut_before.clear()
        tc.compile(reference_mlp(), input_shape=(None, REFERENCE_MLP_IN))
        assert cut_before and any(cut_before) == cuts
