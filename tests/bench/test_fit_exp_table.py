"""benchmarks/fit_exp_table.py derives the constants the table form of exp holds."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np

from tinycomp.codegen import vecmath

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "fit_exp_table.py"


def test_the_fit_gives_the_kernels_coefficients_and_error():
    out = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120,
                         cwd=SCRIPT.parents[1])
    assert out.returncode == 0, out.stderr
    comment, assignment = out.stdout.splitlines()
    fitted = ast.literal_eval(assignment.removeprefix("EXP_TABLE_POLY = "))
    assert fitted == tuple(float(np.float32(c)) for c in vecmath.EXP_TABLE_POLY)
    error_ulp = float(comment.split("float32 coefficients: ")[1].rstrip(")"))
    assert error_ulp < 0.03  # the figure vecmath quotes (0.027 ulp of 1)
