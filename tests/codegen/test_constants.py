"""Vector constants print in their short forms and parse into the same constants as spelled out."""

from __future__ import annotations

import llvmlite.binding as llvm
import pytest
from llvmlite import ir

from tinycomp.codegen.cgutils import F32, I1, I32, vector_constant, vector_type, zeros

VT = vector_type(16)
CASES = [
    (VT, None, "zeroinitializer"),
    (VT, 0.0, "zeroinitializer"),
    (VT, -0.0, "splat (float 0x8000000000000000)"),  # not zero: -0.0 has its sign bit set
    (VT, 1.5, "splat (float 0x3ff8000000000000)"),
    (VT, ir.Constant(F32, float("-inf")), "splat (float 0xfff0000000000000)"),
    (ir.VectorType(I1, 16), ir.Constant(I1, 1), "splat (i1 1)"),
    (ir.VectorType(I1, 16), ir.Undefined, "undef"),
    (ir.VectorType(I32, 16), [0] * 16, "zeroinitializer"),
]


def _spelled_out(vt: ir.VectorType, value: object) -> str:
    return ir.Constant(vt, value).get_reference()  # llvmlite's own lane-by-lane form


def _parsed(vt: ir.VectorType, ref: str) -> str:
    """The constant as LLVM reads it back, printed by LLVM."""
    mod = llvm.parse_assembly(f"define {vt} @f() {{\n  ret {vt} {ref}\n}}\n")
    mod.verify()
    return str(mod.get_function("f"))


@pytest.mark.parametrize(("vt", "value", "short"), CASES)
def test_splats_print_short_and_parse_to_the_same_constant(vt, value, short):
    const = vector_constant(vt, value)
    assert const.get_reference() == short
    assert str(const) == f"{vt} {short}"
    assert _parsed(vt, short) == _parsed(vt, _spelled_out(vt, value))


def test_a_vector_of_different_lanes_is_spelled_out():
    idx = list(range(16))
    const = vector_constant(ir.VectorType(I32, 16), idx)
    assert const.get_reference() == _spelled_out(ir.VectorType(I32, 16), idx)


def test_zero_and_negative_zero_are_different_constants():
    assert vector_constant(VT, -0.0) is not vector_constant(VT, 0.0)
    assert zeros(VT) is zeros(VT)  # built once, shared


def test_the_generated_module_spells_out_no_splat():
    """The reference MLP's IR holds no lane-by-lane zero vector any more (it held ~200)."""
    from tinycomp.codegen.module import lower_graph
    from tinycomp.frontend.tracer import trace
    from tinycomp.ir.passes import run_pipeline
    from tinycomp.nn import Dropout, Linear, ReLU, Sequential

    model = Sequential(Linear(784, 256), ReLU(), Dropout(0.5), Linear(256, 128), ReLU(), Linear(128, 10))
    text = lower_graph(run_pipeline(trace(model, (None, 784))), 16).llvm_ir
    assert "float 0x0, float 0x0" not in text and "i32 0, i32 0, i32 0" not in text
    assert "undef, i1 undef" not in text
    assert "zeroinitializer" in text
