"""benchmarks/tiny_results.py runs: a row per op and input and per q/k scale of the block, each a positive time."""

from __future__ import annotations

import re

from tests.bench.scripts import load_script


def test_every_op_is_timed_on_normal_and_on_each_filled_input(capsys):
    script = load_script("tiny_results")
    script.main(["--rows", "4", "--cols", "64", "--calls", "3", "--block-batch", "1"])
    out = capsys.readouterr().out
    rows = re.findall(r"^ *([a-z_]+) +(\S+) +([\d.]+) +([\d.]+)$", out, re.M)
    expected = [(name, "normal") for name, _, _ in script.CASES]
    assert [(op, value) for op, value, _, _ in rows if value == "normal"] == expected
    assert [(op, float(value)) for op, value, _, _ in rows if value != "normal"] == [
        (name, value) for name, _, values in script.CASES for value in values]
    assert all(float(us) > 0 and float(ratio) > 0 for _, _, us, ratio in rows)
    block = re.findall(r"^ *([\d.]+) +([\d.]+) +([\d.]+)$", out, re.M)
    assert [float(scale) for scale, _, _ in block] == list(script.QK_SCALES)
    assert all(float(us) > 0 for _, us, _ in block) and float(block[0][2]) == 1.0
    linear = re.findall(r"^ *(N\(0,1\)\S*) +([\d.]+) +([\d.]+)$", out, re.M)
    assert [label for label, _, _ in linear] == ["N(0,1)", "N(0,1)*1e-39"]
    assert all(float(a) > 0 and float(b) > 0 for _, a, b in linear)
    softmax = re.findall(r"^ *([\d.]+|1, half -1e9) +([\d.]+) +([\d.]+) +([\d.]+)% +([\d.]+) +([\d.]+)$", out, re.M)
    assert [row[0] for row in softmax] == [f"{std:.1f}" for std in script.LOGIT_STDS] + ["1, half -1e9"]
    assert all(float(us) > 0 and float(along) > 0 and 0 <= float(share) <= 100 and float(ulp) < 8 and float(sub) < 4
               for _, us, along, share, ulp, sub in softmax)
