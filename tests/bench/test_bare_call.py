"""benchmarks/bare_call.py runs: a bench model through its compiled call, a lone LayerNorm and a lone
Softmax through their bare native calls, with a code-generation constant set for the compile."""

from __future__ import annotations

import re

import pytest

from tests.bench.scripts import load_script
from tinycomp.codegen import layer_norm


@pytest.fixture
def bare_call(monkeypatch):
    """The script as a module; the cache switch it sets on import is undone after the test."""
    monkeypatch.setenv("TINYCOMP_CACHE", "0")
    return load_script("bare_call")


def test_both_kinds_of_model_are_timed(bare_call, capsys, monkeypatch):
    monkeypatch.setattr(layer_norm, "ROW_GROUP", layer_norm.ROW_GROUP)  # restored after --set
    bare_call.main(["layernorm:40", "--batch", "9", "--rounds", "2", "--seconds", "0.001",
                    "--set", "layer_norm.ROW_GROUP=2"])
    assert layer_norm.ROW_GROUP == 2
    bare_call.main(["block-tiny", "--batch", "2", "--rounds", "2", "--seconds", "0.001"])
    bare_call.main(["softmax:70", "--batch", "3", "--rounds", "2", "--seconds", "0.001"])
    bare_call.main(["linear:40x3", "--batch", "5", "--rounds", "2", "--seconds", "0.001"])
    out = capsys.readouterr().out
    assert re.search(r"softmax:70 batch 3 \(bare native call\): median [\d.]+ us", out), out
    assert re.search(r"linear:40x3 batch 5 \(bare native call\): median [\d.]+ us", out), out
    assert re.search(r"layernorm:40 batch 9 \(bare native call\): median [\d.]+ us", out), out
    assert re.search(r"block-tiny batch 2 \(compiled call\): median [\d.]+ us", out), out


def test_a_set_that_names_no_constant_is_refused(bare_call):
    with pytest.raises(SystemExit, match="MODULE.NAME=VALUE"):
        bare_call.set_constant("layer_norm.NO_SUCH=3")
