"""benchmarks/lnmlp_parts.py runs: the four parts, each a compiled model of what its name says."""

from __future__ import annotations

import re

import numpy as np

from tests.bench.scripts import load_script
from tinycomp.nn import GELU, LayerNorm, Linear, Tensor


def test_the_parts_are_built_and_timed(monkeypatch, capsys):
    monkeypatch.setenv("TINYCOMP_CACHE", "0")
    parts = load_script("lnmlp_parts")
    kinds = {name: [type(layer) for layer in parts.build(*flags).layers] for name, flags in parts.PARTS.items()}
    assert kinds["linear"] == [Linear] * 4 and kinds["lnmlp"] == [LayerNorm, Linear, GELU] * 4
    assert kinds["+gelu"] == [Linear, GELU] * 4 and kinds["+layer norm"] == [LayerNorm, Linear] * 4
    model = parts.build(True, True)
    x = np.random.default_rng(1).standard_normal((3, parts.WIDTH)).astype(np.float32)
    assert np.isfinite(model(Tensor(x)).data).all()
    parts.main(["--batch", "2", "--rounds", "1"])
    out = capsys.readouterr().out
    for name in parts.PARTS:
        assert re.search(rf"^{re.escape(name)} +min +[\d.]+ us +median +[\d.]+ us +[\d.]+ GFLOP/s", out, re.M), out
