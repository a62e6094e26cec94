"""examples/digits.py as a user runs it: trains on scikit-learn's digits, imports, compiles, checks."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sklearn", reason="scikit-learn is not installed (pip install -e '.[sklearn]')")

ROOT = Path(__file__).resolve().parents[2]


def test_digits_example_predicts_the_same_classes(capsys):
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "digits.py")], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    with capsys.disabled():  # the accuracy in the test log
        print("\n" + "\n".join(line for line in out.splitlines() if "accuracy" in line))
    sk = float(re.search(r"MLPClassifier\(64, 32\): test accuracy ([\d.]+)", out).group(1))
    ours = float(re.search(r"compiled test accuracy ([\d.]+)", out).group(1))
    assert sk > 0.9 and ours == sk
    assert "same classes as predict: True" in out
    diff = float(re.search(r"max \|probability difference\| ([\d.e+-]+)", out).group(1))
    assert diff < 1e-5
    assert re.search(r"^\s+450\s+[\d.]+\s+[\d.]+\s+[\d.]+x$", out, re.M)  # the timing table
