"""Targets shape the generated code: vector width, register budget, fused multiply-add, index width."""

from __future__ import annotations

import re

import pytest

from tinycomp.codegen.gemm import plan_gemm, plan_narrow, tile_vectors
from tinycomp.codegen.module import lower_graph
from tinycomp.codegen.target import CROSS_TARGETS, TARGET_NAMES, host, target_named, with_width
from tinycomp.frontend.tracer import trace
from tinycomp.ir.passes import run_pipeline
from tinycomp.nn import GELU, Linear, ReLU, Sequential, Softmax, Tanh, manual_seed


def model_ir(target_name: str) -> str:
    manual_seed(0)
    model = Sequential(Linear(40, 70), ReLU(), Linear(70, 17), Tanh(), Linear(17, 3), GELU(), Linear(3, 5), Softmax())
    return lower_graph(run_pipeline(trace(model, (None, 40)), None), target_named(target_name)).llvm_ir


def test_tile_follows_the_register_budget():
    assert tile_vectors(4, registers=32) == 4 and tile_vectors(4, registers=16) == 2
    assert tile_vectors(16) == 4 and tile_vectors(8) == 2  # an x86 host's budget by its width
    assert plan_gemm(784, 256, 4, registers=32).main.nv == 4
    assert plan_gemm(784, 256, 4, registers=16).main.nv == 2
    assert plan_narrow(64, 3, 4, registers=32).rows * 3 * plan_narrow(64, 3, 4, registers=32).unroll <= 24
    assert plan_narrow(64, 3, 4, registers=16).rows * 3 * plan_narrow(64, 3, 4, registers=16).unroll <= 12


@pytest.mark.parametrize("name", list(CROSS_TARGETS))
def test_cross_targets_use_their_own_vectors(name):
    """No AVX-512 assumption leaks into code for another target: its vectors, its tiles."""
    t = CROSS_TARGETS[name]
    text = model_ir(name)
    widths = {int(w) for w in re.findall(r"<(\d+) x float>", text)}
    assert widths and max(widths) <= 4 * t.vector_width  # ACT_VECTORS-wide activation runs at most
    assert f"v{t.vector_width}f32" in text
    assert f"tinycomp.gemm.tile6x{tile_vectors(t.vector_width, t.vector_registers)}" in text
    assert f'target triple = "{t.triple}"' in text


def test_wasm_multiply_adds_are_not_fused_and_others_are():
    """WebAssembly has no FMA: `llvm.fma` there would call libm's fmaf, which exports must not need."""
    wasm, arm = model_ir("wasm32"), model_ir("aarch64-linux-gnu")
    assert "llvm.fma." not in wasm and "llvm.fmuladd.v4f32" in wasm
    assert "llvm.fma.v4f32" in arm and "llvm.fmuladd." not in arm


@pytest.mark.parametrize("name", ["thumbv7em-none-eabihf", "wasm32"])
def test_32_bit_targets_divide_sizes_in_32_bits(name):
    """A 64-bit division by a run-time value is a call to __udivdi3 on 32-bit ARM: none is emitted."""
    text = model_ir(name)
    assert not re.search(r"udiv i64 [^,]+, %", text)
    assert re.search(r"udiv i32 ", text)
    assert re.search(r"udiv i64 [^,]+, %", model_ir("aarch64-linux-gnu"))


def test_target_names():
    assert TARGET_NAMES == ("host", "aarch64-linux-gnu", "thumbv7em-none-eabihf", "wasm32")
    assert target_named("host") is host()
    assert with_width(host().vector_width) is host()
    assert with_width(8).vector_registers == 16 and with_width(16).vector_registers == 32
    with pytest.raises(ValueError, match="unknown target 'x86'; targets are host, aarch64-linux-gnu"):
        target_named("x86")
