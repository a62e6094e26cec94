"""benchmarks/divide_cost.py runs: a row per instruction the host has, each a positive time."""

from __future__ import annotations

import re

from tests.bench.scripts import load_script
from tinycomp.codegen.target import host


def test_each_instruction_the_host_has_is_timed(capsys):
    load_script("divide_cost").main(["--iterations", "1000"])
    rows = re.findall(r"^(\w+) +on a zmm: ([\d.]+) ns = ([\d.]+) cycles", capsys.readouterr().out, re.M)
    assert [r[0] for r in rows] == ["vdivps"] + (["vrcp14ps"] if "+avx512f" in host().features else [])
    assert all(float(ns) > 0 and float(cycles) > 0 for _, ns, cycles in rows)


def test_the_loop_keeps_every_chain_alive():
    ir = load_script("divide_cost").loop_ir("vdivps")
    assert ir.count("fdiv") == 8 and ir.count("store") == 8
