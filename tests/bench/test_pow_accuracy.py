"""benchmarks/pow_accuracy.py runs: a row per exponent, each form's float64 value within 2**-44."""

from __future__ import annotations

import re

import numpy as np
import pytest

from tests.bench.scripts import load_script
from tinycomp.codegen import vecmath


@pytest.mark.skipif(np.finfo(np.longdouble).nmant < 63, reason="needs x86's 64-bit long double as the reference")
def test_each_exponent_is_measured_in_both_forms(capsys):
    load_script("pow_accuracy").main(["--count", "4096", "--exponents", "3.7,-1.3"])
    rows = re.findall(r"^ +(-?[\d.]+) +(-[\d.]+) +(-[\d.]+)$", capsys.readouterr().out, re.M)
    assert [float(c) for c, _, _ in rows] == [3.7, -1.3]
    assert all(float(table) < -44 and float(series) < -44 for _, table, series in rows)
    assert vecmath.AVX512_FORMS  # restored
