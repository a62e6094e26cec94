"""Our printer of llvmlite's IR (codegen/ir_text.py) writes exactly what llvmlite's `str()` writes:
for each form of every IRBuilder method, for every bench model and for random programs over the
whole op set."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, assume, given, settings
from llvmlite import ir

from tests.program_fuzz import ProgramModel, programs
from tinycomp.bench.models import MODELS, get_model
from tinycomp.codegen.errors import LoweringError
from tinycomp.codegen.ir_text import function_text, instruction_text, module_text
from tinycomp.codegen.module import lowered_module
from tinycomp.codegen.target import host
from tinycomp.frontend.tracer import trace
from tinycomp.ir.passes import run_pipeline
from tinycomp.nn import Dropout, Linear, ReLU, Sequential

F32, I1, I32, I64 = ir.FloatType(), ir.IntType(1), ir.IntType(32), ir.IntType(64)
V8 = ir.VectorType(F32, 8)
PTR = ir.PointerType()


def _every_builder_form() -> ir.Module:
    """One function using each IRBuilder method our code generator uses, and the forms it does not
    (flags, metadata, attributes, names that need quoting), which must fall back to llvmlite."""
    module = ir.Module("every form")
    fma = ir.Function(module, ir.FunctionType(V8, [V8, V8, V8]), "llvm.fma.v8f32")
    printf = ir.Function(module, ir.FunctionType(I32, [PTR], var_arg=True), "printf")
    helper = ir.Function(module, ir.FunctionType(ir.VoidType(), [PTR, I64]), "helper")
    helper.attributes.add("alwaysinline")
    helper.linkage = "internal"
    hb = ir.IRBuilder(helper.append_basic_block("entry"))
    hb.ret_void()
    fn = ir.Function(module, ir.FunctionType(F32, [PTR, I64, V8]), 'odd "name"\\here')
    p, n, v = fn.args
    p.name, n.name = "p", 'n "quoted"'
    entry, loop, done = (fn.append_basic_block(name) for name in ("entry", "loop body", "done"))
    b = ir.IRBuilder(entry)
    q = b.gep(p, [n], inbounds=True, source_etype=F32, name="q")
    b.gep(p, [ir.Constant(I64, 3), ir.Constant(I32, 1)], source_etype=ir.ArrayType(F32, 4))
    x = b.load(q, typ=F32, name="x")
    b.load(q, typ=V8, align=32)
    b.load(q, typ=F32, align=4.0)  # llvmlite writes any number with %d
    b.store(x, q)
    b.store(v, q, align=4)
    s = b.fadd(x, ir.Constant(F32, 1.5))
    b.fmul(s, s, flags=("fast",))
    b.add(n, ir.Constant(I64, -7), flags=("nsw",))
    b.mul(n, n)
    b.udiv(n, ir.Constant(I64, 3))
    b.and_(n, n)
    b.or_(n, n)
    b.shl(n, ir.Constant(I64, 2))
    b.neg(n)
    b.not_(n)
    b.call(fma, [v, v, v], name="f")
    b.call(fma, [v, v, v], tail=True)
    b.call(fma, [v, v, v], fastmath=("nnan",))
    b.call(helper, [p, n], attrs=("nounwind",))
    b.call(helper, [p, n], arg_attrs={0: ("noalias",)})
    b.call(printf, [p, n])
    b.call(helper, [p, n], cconv="fastcc")
    c = b.icmp_unsigned("<", n, ir.Constant(I64, 10), name="c")
    b.icmp_signed(">=", n, ir.Constant(I64, 0))
    b.fcmp_ordered("<", x, ir.Constant(F32, 0.0))
    b.fcmp_unordered("!=", x, x, flags=("nnan",))
    b.select(c, x, ir.Constant(F32, 2.0))
    b.select(c, x, x, flags=("nnan",))
    b.trunc(n, I32)
    b.sitofp(n, F32)
    b.bitcast(v, ir.VectorType(I32, 8))
    b.insert_element(v, x, ir.Constant(I32, 0))
    b.extract_element(v, ir.Constant(I32, 7))
    b.shuffle_vector(v, v, ir.Constant(ir.VectorType(I32, 4), [0, 9, 2, 15]))
    b.shuffle_vector(v, ir.Constant(V8, ir.Undefined), ir.Constant(ir.VectorType(I32, 8), [0] * 8))
    alloca = b.alloca(F32, size=ir.Constant(I64, 4))
    meta = b.load(alloca, typ=F32)
    meta.set_metadata("nontemporal", module.add_metadata([ir.Constant(I32, 1)]))
    b.cbranch(c, loop, done)
    b.position_at_end(loop)
    i = b.phi(I64, name="i")
    i.add_incoming(ir.Constant(I64, 0), entry)
    i.add_incoming(n, loop)
    b.phi(F32, flags=("fast",)).add_incoming(x, entry)
    b.branch(done)
    b.position_at_end(done)
    b.ret(x)
    return module


def test_every_builder_form_prints_as_llvmlite_prints_it():
    module = _every_builder_form()
    fn = module.get_global('odd "name"\\here')
    for block in fn.blocks:
        for instr in block.instructions:
            assert instruction_text(instr) == str(instr)
    assert function_text(fn) == str(fn)
    assert module_text(module) == str(module)


def _lowered_texts(g) -> tuple[str, str]:
    with lowered_module(g, host().vector_width) as (_, module):
        ours = module_text(module)  # first: llvmlite's str() fills caches that ours must not lean on
        return ours, str(module)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_bench_model_prints_as_llvmlite_prints_it(name):
    bench = get_model(name)
    ours, theirs = _lowered_texts(run_pipeline(trace(bench.build(0), (None, *bench.in_shape))))
    assert ours == theirs


def test_training_dropout_prints_as_llvmlite_prints_it():
    model = Sequential([Linear(20, 30), ReLU(), Dropout(0.3), Linear(30, 5)])
    ours, theirs = _lowered_texts(run_pipeline(trace(model, (None, 20), training=True)))
    assert "k1_dropout" in ours  # the mask is drawn in the module
    assert ours == theirs


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs())
def test_random_programs_print_as_llvmlite_prints_them(program):
    assume(not program.crosses_batch)
    shapes = [(None, *s) for s in program.inputs]
    g = run_pipeline(trace(ProgramModel(program), shapes if len(shapes) > 1 else shapes[0]))
    try:
        ours, theirs = _lowered_texts(g)
    except LoweringError:
        assume(False)
    assert ours == theirs
