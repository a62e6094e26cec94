"""Targets shape the generated code: vector width, register budget, fused multiply-add, index width."""

from __future__ import annotations

import re

import pytest

from tinycomp.codegen.gemm import direct_max_rows, plan_gemm, plan_narrow, tile_vectors
from tinycomp.codegen.module import lower_graph
from tinycomp.codegen.target import (
    CROSS_TARGETS,
    TARGET_NAMES,
    CacheLimits,
    _l2_bytes,
    aliased_direct_max_rows,
    cpuinfo,
    host,
    host_target_machine,
    parse_module,
    target_named,
    with_width,
)
from tinycomp.frontend.tracer import trace
from tinycomp.ir.passes import run_pipeline
from tinycomp.nn import GELU, Linear, ReLU, Sequential, Softmax, Tanh, manual_seed
from tinycomp.runtime.engine import assembly, emit_object


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


# A loop whose address is an index times a stride: LLVM's loop strength reduction turns the
# multiply into a pointer carried by the loop.
STRIDED_SUM = """
define float @strided_sum(ptr %a, i64 %n) {
entry:
  br label %loop
loop:
  %i = phi i64 [0, %entry], [%i.next, %loop]
  %s = phi float [0.0, %entry], [%s.next, %loop]
  %k = mul i64 %i, 10
  %p = getelementptr inbounds float, ptr %a, i64 %k
  %x = load float, ptr %p
  %s.next = fadd float %s, %x
  %i.next = add nsw i64 %i, 1
  %c = icmp slt i64 %i.next, %n
  br i1 %c, label %loop, label %exit
exit:
  ret float %s.next
}
"""


def _plain_llvmlite_assembly(text: str) -> str:
    """What another llvmlite user of the process (numba, say) gets: LLVM's own settings."""
    tm = host_target_machine()
    return tm.emit_assembly(parse_module(text, tm))


def test_host_backend_options_apply_to_our_emits_only():
    """Our host emits run without loop strength reduction (`target.HOST_LSR`); the option is
    process-wide in LLVM, so it must be back to LLVM's default for everyone else afterwards."""
    before = _plain_llvmlite_assembly(STRIDED_SUM)
    ours = assembly(STRIDED_SUM)
    emit_object(STRIDED_SUM)
    after = _plain_llvmlite_assembly(STRIDED_SUM)
    assert after == before
    assert ours != before  # the option took effect in our emit

    def loop_body(asm: str) -> str:
        return asm.split(".LBB0_", 1)[1].split("jl", 1)[0]  # first loop label to its back edge

    # with LSR the loop steps a pointer by 40 bytes; without, the index is scaled in the loop
    assert "$40" in loop_body(before)
    assert "$40" not in loop_body(ours)


def test_a_w_with_rows_4_kb_apart_is_packed_early_where_it_was_measured_slow_in_place():
    """Intel cores, and AMD cores with less than 1 MB of L2 (Zen 3), read a 1024 x 1024 W in place
    only up to their measured limit, then pack it; Zen 4's 1 MB L2 read it in place up to the usual
    128 rows. The host's Target follows its own vendor and L2."""
    limits = {(v, l2): aliased_direct_max_rows(v, l2) for v in ("GenuineIntel", "AuthenticAMD")
              for l2 in (512 << 10, 1 << 20, 2 << 20)}
    assert all(limits[("GenuineIntel", l2)] == 40 for l2 in (512 << 10, 1 << 20, 2 << 20))
    assert limits[("AuthenticAMD", 512 << 10)] == 16
    assert limits[("AuthenticAMD", 1 << 20)] == limits[("AuthenticAMD", 2 << 20)] == 0
    for (vendor, l2), limit in limits.items():  # the GEMM's in-place bound for such a W, 512x1024 too
        for k, n in ((1024, 1024), (512, 1024)):
            assert direct_max_rows(k, n, CacheLimits(limit, l2), 8) == (limit or 128), (vendor, l2, k, n)
    assert host().aliased_direct_max_rows == aliased_direct_max_rows(cpuinfo("vendor_id"), _l2_bytes())
    assert host().cache_limits == CacheLimits(host().aliased_direct_max_rows, host().l2_bytes)
