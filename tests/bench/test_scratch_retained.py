"""benchmarks/scratch_retained.py runs and prints what it measured."""

from __future__ import annotations

import re

from tests.bench.scripts import load_script


def test_it_reports_the_memory_a_large_call_leaves(capsys):
    retained = load_script("scratch_retained").main(["--batch", "64", "--width", "64"])
    out = capsys.readouterr().out
    match = re.search(r"threads 1, one call of 64 rows: RSS (\d+) MB before, (\d+) MB after .*: (-?\d+) MB retained",
                      out)
    assert match, out
    assert f"{retained:.0f}" == match.group(3)
