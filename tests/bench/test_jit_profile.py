"""benchmarks/jit_profile.py names the JIT code for perf: every function, internal ones included,
at the address the engine loaded it to."""

from __future__ import annotations

import ctypes

import numpy as np

import tinycomp as tc
from tests.bench.scripts import load_script
from tinycomp.bench.models import get_model


def test_the_map_names_every_function_where_the_engine_put_it():
    jit_profile = load_script("jit_profile")
    bm = get_model("mlp")
    fast = tc.compile(bm.build(), threads=1)
    fast(bm.sample(3))
    engine = fast._require("test").engine
    entries = [line.split() for line in jit_profile.perf_map_lines(engine)]
    where = {name: (int(addr, 16), int(size, 16)) for addr, size, name in entries}
    # the entry, which the engine names, sits where the engine says; internal kernels are named too
    assert where["tinycomp_forward"][0] == engine.address("tinycomp_forward")
    assert any(name.startswith("tinycomp.gemm.tile") for name in where), sorted(where)
    # functions do not overlap, and their bytes are loaded code (an x86 function starts with no 0-fill)
    spans = sorted(where.values())
    assert all(a + s <= b for (a, s), (b, _) in zip(spans, spans[1:], strict=False))
    for addr, size in spans:
        assert np.frombuffer(ctypes.string_at(addr, min(size, 16)), np.uint8).any()


def test_the_script_writes_the_map_and_times_the_model(tmp_path, capsys):
    jit_profile = load_script("jit_profile")
    target = tmp_path / "perf.map"
    jit_profile.main(["tiny", "4", "0.05", "--map", str(target)])
    lines = target.read_text().split("\n")
    assert any(line.endswith(" tinycomp_forward") for line in lines)
    assert "us per call" in capsys.readouterr().err
