"""The FMA peak loop (`tinycomp.bench.peak`) keeps every accumulator in a register: a spilled one
puts a store and a reload in its chain, and the "peak" then halves (46-51 against 103.6 GFLOP/s on
the first AVX2 host), which would overstate every GEMM's fraction of it."""

from __future__ import annotations

import re

import llvmlite.binding as llvm
import pytest

from tinycomp.bench.peak import _fma_loop_ir, accumulators, measure_fma_peak
from tinycomp.codegen.target import host

# x86-64 CPUs with 16 vector registers (AVX2) and with 32 (AVX-512): (cpu, lanes, registers)
X86 = [("haswell", 8, 16), ("znver3", 8, 16), ("skylake-avx512", 16, 32)]


def loop_body(cpu: str, width: int, count: int) -> str:
    """The assembly of the peak loop's body with `count` accumulators, compiled for `cpu`."""
    tm = llvm.Target.from_triple("x86_64-unknown-linux-gnu").create_target_machine(cpu=cpu, opt=2)
    asm = tm.emit_assembly(llvm.parse_assembly(_fma_loop_ir(width, count)))
    return asm[asm.index(".LBB0_1:"):asm.index("jl\t.LBB0_1")]


@pytest.mark.skipif(not host().triple.startswith("x86_64"), reason="compiles for x86-64 CPUs")
@pytest.mark.parametrize("cpu, width, registers", X86)
def test_the_peak_loop_keeps_its_accumulators_in_registers(cpu, width, registers):
    body = loop_body(cpu, width, accumulators(registers))
    fmas = re.findall(r"vfmadd\w+", body)
    assert len(fmas) == accumulators(registers) >= 8  # enough chains for two pipes of 4-cycle FMAs
    assert "rsp" not in body, f"the loop spills on {cpu}:\n{body}"


@pytest.mark.skipif(not host().triple.startswith("x86_64"), reason="compiles for x86-64 CPUs")
def test_16_accumulators_spill_with_16_registers():
    """The check above can fail: the loop as it was before (16 accumulators) spills on AVX2."""
    assert "rsp" in loop_body("znver3", 8, 16)


def test_the_measured_peak_reports_its_loop():
    peak = measure_fma_peak(seconds=0.05)
    assert peak["accumulators"] == accumulators(host().vector_registers)
    assert peak["lanes"] == host().vector_width and peak["gflops"] > 0
    assert f"{peak['accumulators']} independent" in peak["method"]
