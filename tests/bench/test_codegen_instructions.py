"""benchmarks/codegen_instructions.py: the instructions LLVM executes to emit a model's code, a count
that the host's speed does not move."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.bench.scripts import load_script

codegen_instructions = load_script("codegen_instructions")


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed (.ci/run installs it)")
def test_the_count_of_a_module_is_the_same_every_time(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYCOMP_CACHE", "1")  # the script turns it off for its own compile only
    path = str(tmp_path / "module.json")
    codegen_instructions.save_module("softmax:40", path)
    assert os.environ["TINYCOMP_CACHE"] == "1"
    first = codegen_instructions.count(path)
    assert first > 1_000_000  # a module's code generation, not an empty collection
    assert codegen_instructions.count(path) == first
