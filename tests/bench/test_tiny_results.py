"""benchmarks/tiny_results.py runs: a row per op and input, each a positive time."""

from __future__ import annotations

import re

from tests.bench.scripts import load_script


def test_every_op_is_timed_on_normal_and_on_each_filled_input(capsys):
    script = load_script("tiny_results")
    script.main(["--rows", "4", "--cols", "64", "--calls", "3"])
    rows = re.findall(r"^ *(\w+) +(\S+) +([\d.]+) +([\d.]+)$", capsys.readouterr().out, re.M)
    expected = [(name, "normal") for name, _, _ in script.CASES]
    assert [(op, value) for op, value, _, _ in rows if value == "normal"] == expected
    assert [(op, float(value)) for op, value, _, _ in rows if value != "normal"] == [
        (name, value) for name, _, values in script.CASES for value in values]
    assert all(float(us) > 0 and float(ratio) > 0 for _, _, us, ratio in rows)
