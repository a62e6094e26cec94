"""Splitting a module for parallel code generation (codegen/split.py, runtime.engine.emit_objects):
every part parses on its own, the parts define each function once (inline helpers in each part that
calls them), and a model emitted in parts computes exactly what it computes emitted whole. llvmlite's
module, split before it is printed, gives the parts its printed text gives, each printed only when
the engine asks for it."""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from llvmlite import ir

import tinycomp as tc
from tests.models import REFERENCE_MLP_IN, reference_mlp
from tests.reliability.rel_helpers import assert_matches_eager
from tinycomp.bench.models import get_model
from tinycomp.codegen import split
from tinycomp.codegen.cgutils import F32, I64, PTR, element_ptr, for_range
from tinycomp.codegen.module import lower_graph, lowered_module
from tinycomp.codegen.split import split_ir_module, split_module
from tinycomp.codegen.target import host, host_target_machine, parse_module
from tinycomp.frontend.tracer import trace
from tinycomp.ir.passes import run_pipeline
from tinycomp.runtime import engine as engine_module
from tinycomp.runtime.engine import JitEngine, codegen_jobs, emit_objects

DEFINED = re.compile(r'(?m)^define (internal )?[^@]*@"([^"]+)"')


def definitions(text: str) -> dict[str, bool]:
    """{function name: whether it is internal} of a module's text."""
    return {m.group(2): m.group(1) is not None for m in DEFINED.finditer(text)}


def reference_mlp_graph():
    return run_pipeline(trace(reference_mlp(), (None, REFERENCE_MLP_IN)))


def reference_mlp_ir() -> str:
    return lower_graph(reference_mlp_graph(), host().vector_width).llvm_ir


def test_reference_mlp_splits_into_parts_that_each_parse_and_define_each_function_once():
    text = reference_mlp_ir()
    parts = split_module(text, 2)
    assert len(parts) == 2
    tm = host_target_machine()
    for part in parts:
        parse_module(part, tm)  # verifies: every symbol a part names is defined or declared in it
    whole = definitions(text)
    defined = [definitions(p) for p in parts]
    assert set().union(*defined) == set(whole)
    for name in whole:
        owners = [i for i, d in enumerate(defined) if name in d]
        assert len(owners) == 1, f"{name} defined in parts {owners}"  # the MLP's glue is inlined into the entry
    assert "tinycomp_forward" in defined[0]
    lines = [p.count("\n") for p in parts]
    assert max(lines) < 0.7 * sum(lines), f"unbalanced parts: {lines} lines"
    for name, internal in defined[1].items():  # what part 0 calls in part 1 is exported, the rest stays internal
        assert internal == (f'@"{name}"' not in parts[0]), name


def test_small_modules_and_one_job_stay_whole():
    text = reference_mlp_ir()
    assert split_module(text, 1) == [text]
    small = lower_graph(run_pipeline(trace(tc.nn.Linear(4, 3), (None, 4))), host().vector_width).llvm_ir
    assert split_module(small, 8) == [small]


def test_a_module_with_metadata_stays_whole():
    text = reference_mlp_ir() + '\n!0 = !{ i32 1 }\n'
    assert split_module(text, 2) == [text]


@pytest.mark.parametrize("jobs", ["2", "3"])
def test_a_model_emitted_in_parts_equals_the_model_emitted_whole(monkeypatch, jobs):
    monkeypatch.setenv("TINYCOMP_CACHE", "0")
    model, x = reference_mlp(), np.random.default_rng(5).standard_normal((37, REFERENCE_MLP_IN)).astype(np.float32)
    monkeypatch.setenv("TINYCOMP_CODEGEN_JOBS", "1")
    whole = tc.compile(model, threads=1, input_shape=(None, REFERENCE_MLP_IN))
    monkeypatch.setenv("TINYCOMP_CODEGEN_JOBS", jobs)
    parts = tc.compile(model, threads=1, input_shape=(None, REFERENCE_MLP_IN))
    assert len(whole._artifact.engine.objects) == 1
    # how many: as the threads kept up with the build (`PartPipeline`), never one
    assert len(parts._artifact.engine.objects) > 1
    got = parts(x).data
    np.testing.assert_array_equal(got, whole(x).data)  # the same instructions, only in other objects
    assert_matches_eager(got, model, x)


def test_kept_target_machines_emit_the_same_objects_as_new_ones(monkeypatch):
    """Each part's target machine is kept from compile to compile (`emit_target_machine`): one per
    part, the same one again, and what it emits is byte for byte what a new machine emits."""
    from tinycomp.codegen import target

    monkeypatch.setenv("TINYCOMP_CODEGEN_JOBS", "2")
    llvm_ir = reference_mlp_ir()
    target._EMIT_MACHINES.clear()
    new = emit_objects(llvm_ir)
    machines = [target.emit_target_machine(i) for i in range(2)]
    assert machines[0] is not machines[1] and machines == [target.emit_target_machine(i) for i in range(2)]
    assert len(new) == 2 and emit_objects(llvm_ir) == new
    assert [target.emit_target_machine(i) for i in range(2)] == machines
    if hasattr(os, "fork"):  # a child makes its own (the parent's may be half used), and emits the same
        read, write = os.pipe()
        try:
            pid = os.fork()
            if pid == 0:
                fresh = target.emit_target_machine(0) not in machines
                os.write(write, b"1" if fresh and emit_objects(llvm_ir) == new else b"0")
                os._exit(0)
            os.waitpid(pid, 0)
            assert os.read(read, 1) == b"1"
        finally:
            os.close(read)
            os.close(write)


def test_a_model_in_parts_round_trips_through_the_disk_cache(tmp_cache, monkeypatch):
    monkeypatch.setenv("TINYCOMP_CODEGEN_JOBS", "2")
    model, x = reference_mlp(), np.random.default_rng(6).standard_normal((9, REFERENCE_MLP_IN)).astype(np.float32)
    first = tc.compile(model, threads=1, input_shape=(None, REFERENCE_MLP_IN))
    again = tc.compile(model, threads=1, input_shape=(None, REFERENCE_MLP_IN))
    assert again.stats.cache_hits == 1
    assert again._artifact.engine.objects == first._artifact.engine.objects and len(first._artifact.engine.objects) > 1
    np.testing.assert_array_equal(again(x).data, first(x).data)
    assert_matches_eager(again(x).data, model, x)


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_codegen_jobs_must_be_a_whole_number(monkeypatch, value):
    monkeypatch.setenv("TINYCOMP_CODEGEN_JOBS", value)
    with pytest.raises(ValueError, match=re.escape(repr(value))):
        codegen_jobs()


# ---------------------------------------------------------------- a module made for the split

def _kernel(module: ir.Module, name: str, helper: ir.Function, offset) -> ir.Function:
    """void name(i64 n, ptr x, ptr out): out[i] = helper(x[i]) + offset(builder)."""
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [I64, PTR, PTR]), name)
    fn.linkage = "internal"
    fn.attributes.add("noinline")
    n, x, out = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    add = offset(b)
    with for_range(b, 0, n) as loop:
        v = b.call(helper, [b.load(element_ptr(b, x, loop.index), typ=F32)])
        b.store(b.fadd(v, add), element_ptr(b, out, loop.index))
    b.ret_void()
    return fn


def _split_test_module(with_table: bool, table_through_helper: bool = False, constant: bool = True) -> str:
    """`entry(n, x, a, b)`: a = 2x + 1 + 10 by kernel `ka`, b = 2x + 1 + 20 by `kb`, both through the
    alwaysinline `helper`; with_table: ka reads its 10 from a global variable, a constant unless not
    `constant` (through an alwaysinline function of its own with `table_through_helper`)."""
    module = ir.Module(name="split")
    _split_test_module_in(module, with_table, table_through_helper, constant)
    return str(module)


def _split_test_module_in(module: ir.Module, with_table: bool, table_through_helper: bool = False,
                          constant: bool = True) -> None:
    helper = ir.Function(module, ir.FunctionType(F32, [F32]), "helper")
    helper.linkage = "internal"
    helper.attributes.add("alwaysinline")
    hb = ir.IRBuilder(helper.append_basic_block("entry"))
    hb.ret(hb.fadd(hb.fmul(helper.args[0], ir.Constant(F32, 2.0)), ir.Constant(F32, 1.0)))
    ten = lambda b: ir.Constant(F32, 10.0)  # noqa: E731
    if with_table:
        table = ir.GlobalVariable(module, F32, "table")
        table.linkage, table.global_constant, table.initializer = "internal", constant, ir.Constant(F32, 10.0)
        ten = lambda b: b.load(table, typ=F32)  # noqa: E731
        if table_through_helper:
            reader = ir.Function(module, ir.FunctionType(F32, []), "read_table")
            reader.linkage = "internal"
            reader.attributes.add("alwaysinline")
            rb = ir.IRBuilder(reader.append_basic_block("entry"))
            rb.ret(rb.load(table, typ=F32))
            ten = lambda b: b.call(reader, [])  # noqa: E731
    ka = _kernel(module, "ka", helper, ten)
    kb = _kernel(module, "kb", helper, lambda b: ir.Constant(F32, 20.0))
    entry = ir.Function(module, ir.FunctionType(ir.VoidType(), [I64, PTR, PTR, PTR]), "entry")
    b = ir.IRBuilder(entry.append_basic_block("entry"))
    n, x, a, out_b = entry.args
    b.call(ka, [n, x, a])
    b.call(kb, [n, x, out_b])
    b.ret_void()


def _run(objects: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    engine = JitEngine(objects=objects)
    x = np.arange(7, dtype=np.float32)
    a, b = np.zeros_like(x), np.zeros_like(x)
    proto = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)
    proto(engine.address("entry"))(len(x), x.ctypes.data, a.ctypes.data, b.ctypes.data)
    np.testing.assert_array_equal(a, 2 * x + 1 + 10)
    np.testing.assert_array_equal(b, 2 * x + 1 + 20)
    return a, b


def test_inline_helpers_are_copied_into_each_part_and_called_kernels_exported(monkeypatch):
    monkeypatch.setattr(split, "MIN_PART_LINES", 1)
    text = _split_test_module(with_table=False)
    parts = split_module(text, 2)
    defined = [definitions(p) for p in parts]
    assert "entry" in defined[0] and sum("ka" in d for d in defined) == sum("kb" in d for d in defined) == 1
    assert all(d.get("helper") is True for d in defined if "ka" in d or "kb" in d)  # a private copy each
    moved = [k for k in ("ka", "kb") if k in defined[1]]
    assert moved and all(defined[1][k] is False for k in moved)  # part 0 calls them: no longer internal
    assert all(f'declare void @"{k}"' in parts[0] for k in moved)
    monkeypatch.setattr(engine_module, "split_module", lambda ir_text, jobs: split_module(ir_text, 2))
    objects = emit_objects(text)
    assert len(objects) == 2
    _run(objects)


@pytest.mark.parametrize("through_helper", [False, True], ids=["directly", "through an inlined helper"])
def test_a_global_variable_keeps_the_functions_that_name_it_with_it(monkeypatch, through_helper):
    """A variable lives in the first part, and so does every function naming it, itself or through a
    helper inlined into it (placed elsewhere, such a function was refused there, and with it the
    whole split: one thread compiled the module)."""
    monkeypatch.setattr(split, "MIN_PART_LINES", 1)
    parts = split_module(_split_test_module(with_table=True, table_through_helper=through_helper, constant=False), 2)
    assert len(parts) == 2
    assert "ka" in definitions(parts[0]) and '@"table" =' in parts[0] and '@"table"' not in parts[1]
    assert "kb" in definitions(parts[1])
    _run([engine_module.emit_object(p) for p in parts])


@pytest.mark.parametrize("through_helper", [False, True], ids=["directly", "through an inlined helper"])
def test_an_internal_constant_is_copied_into_each_part_that_names_it(monkeypatch, through_helper):
    """The entry's parts read the GEMM drivers' configs (internal constants) through the layers'
    glue: each part that names one holds a copy, so the functions naming it go anywhere."""
    monkeypatch.setattr(split, "MIN_PART_LINES", 1)
    parts = split_module(_split_test_module(with_table=True, table_through_helper=through_helper), 2)
    assert len(parts) == 2
    holder = next(p for p in parts if "ka" in definitions(p))
    assert '@"table" = internal constant' in holder
    assert sum('@"table" =' in p for p in parts) == 1 + (holder is not parts[0])
    _run([engine_module.emit_object(p) for p in parts])


def test_a_part_llvm_refuses_leaves_the_module_whole(monkeypatch, caplog):
    """split_module is an optimization: should a part not parse (a bug), the compile emits the whole
    module and says so through logging, instead of failing."""
    text = reference_mlp_ir()
    good = split_module(text, 2)
    monkeypatch.setattr(engine_module, "split_module", lambda ir_text, jobs: [good[0], good[1] + "\nnot llvm ir\n"])
    with caplog.at_level("WARNING", logger="tinycomp.compile"):
        objects = emit_objects(text)
    assert len(objects) == 1
    assert "emitting it whole" in caplog.text
    assert JitEngine(objects=objects).address("tinycomp_forward")


def test_a_part_thread_that_cannot_start_compiles_on_the_callers_thread(monkeypatch):
    """Under an address-space limit a part's thread may not start: 'can't start new thread' failed
    the compile (and a thread that did start could abort the process on LLVM's bad_alloc). The part
    compiles on the calling thread instead, into the same object code."""
    text = reference_mlp_ir()
    monkeypatch.setattr(engine_module, "split_module", lambda ir_text, jobs: split_module(ir_text, 2))
    threaded = emit_objects(text, jobs=2)

    def no_thread(self):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", no_thread)
    assert emit_objects(text, jobs=2) == threaded and len(threaded) == 2


@pytest.mark.parametrize("header", ["", '; ModuleID = "m"\n'])
def test_text_without_a_header_or_functions_is_read_right(monkeypatch, header):
    """The first line may already define a function (hand-written IR, no ModuleID); text without any
    function stays whole."""
    monkeypatch.setattr(split, "MIN_PART_LINES", 1)
    text = header + _split_test_module(with_table=False).split("\n", 3)[3].lstrip("\n")
    assert text.startswith(header + "define") or text.startswith(header + "declare")
    parts = split_module(text, 2)
    assert len(parts) == 2 and sum(p.count('define void @"entry"') for p in parts) == 1
    _run(emit_objects(text, jobs=2))
    assert split_module("", 2) == [""] and split_module('; ModuleID = "m"\n', 2) == ['; ModuleID = "m"\n']


# ---------------------------------------------------------------- llvmlite's module, split unprinted

@pytest.mark.parametrize("name", ["mlp", "block", "lnmlp", "wide"])
@pytest.mark.parametrize("jobs", [2, 3])
def test_the_unprinted_module_splits_into_the_parts_of_its_text(name, jobs):
    """Costs, calls, linkage and the header read from llvmlite's objects are what the text shows."""
    bench = get_model(name)
    g = run_pipeline(trace(bench.build(0), (None, *bench.in_shape)))
    with lowered_module(g, host().vector_width) as (_, module):
        text = str(module)
        printed = [p() for p in split_ir_module(module, jobs, print_share=0.0)]
    assert printed == split_module(text, jobs)
    assert len(printed) > 1


def test_parts_are_printed_only_when_asked_for(monkeypatch):
    monkeypatch.setattr(split, "MIN_PART_LINES", 1)
    printed: list[str] = []
    real = split._printed
    monkeypatch.setattr(split, "_printed", lambda fn: printed.append(fn.name) or real(fn))
    module = ir.Module(name="m")
    _split_test_module_in(module, with_table=False)
    even = split_ir_module(module, 2, print_share=0.0)
    assert printed == []
    assert 'define void @"entry"' in even[0]() and printed
    printed.clear()
    text = even[1]()
    assert set(printed) <= set(definitions(text)) | {"helper"}


def test_a_block_address_names_its_function_as_in_the_text(monkeypatch):
    """llvmlite's BlockAddress is neither a global nor a constant: it still names its function."""
    monkeypatch.setattr(split, "MIN_PART_LINES", 1)
    module = ir.Module(name="m")
    _split_test_module_in(module, with_table=False)
    target = module.get_global("kb")
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [PTR]), "addresses")
    fn.linkage = "internal"
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    b.store(ir.BlockAddress(target, target.blocks[-1]), fn.args[0])
    b.ret_void()
    assert "kb" in split._named_symbols(fn)
    for jobs in (2, 3):
        assert [p() for p in split_ir_module(module, jobs, print_share=0.0)] == split_module(str(module), jobs)


def test_the_first_part_is_lighter_by_the_printing_its_thread_does():
    """The thread that prints every part compiles the first: with printing as dear as compiling, the
    entry's part keeps one of four equal kernels, against two when printing costs nothing."""
    def fn(name: str, lines: int, internal: bool = True) -> split._Function:
        return split._Function(name, lambda: "", internal, inline=False, calls=set(), lines=lines)

    functions = {f.name: f for f in [fn("entry", 100, internal=False), *(fn(f"k{i}", 1000) for i in range(4))]}
    even = split._balance(functions, {}, 2, print_share=0.0)
    heavy = split._balance(functions, {}, 2, print_share=1.0)
    assert even is not None and heavy is not None
    assert [len(a - {"entry"}) for a in even] == [2, 2]
    assert [len(a - {"entry"}) for a in heavy] == [1, 3] and "entry" in heavy[0]


def test_a_part_llvm_refuses_of_the_unprinted_module_leaves_it_whole(monkeypatch, caplog):
    def broken(module, jobs):
        parts = real(module, jobs)
        return [parts[0], lambda: parts[1]() + "\nnot llvm ir\n"]

    real = engine_module.split_ir_module
    monkeypatch.setattr(engine_module, "split_ir_module", broken)
    with lowered_module(reference_mlp_graph(), host().vector_width) as (_, module), \
            caplog.at_level("WARNING", logger="tinycomp.compile"):
        objects = emit_objects(module, jobs=2)
    assert len(objects) == 1 and "emitting it whole" in caplog.text
    assert JitEngine(objects=objects).address("tinycomp_forward")


def test_an_error_while_printing_reaches_the_caller_after_the_other_parts_finish(monkeypatch):
    """The parts already handed to threads are waited for (their modules and contexts are freed only
    then); the error itself is raised, not taken for a refused part."""
    def failing(module, jobs):
        parts = real(module, jobs)
        return [lambda: (_ for _ in ()).throw(KeyError("printer")), *parts[1:]]

    real = engine_module.split_ir_module
    monkeypatch.setattr(engine_module, "split_ir_module", failing)
    before = threading.active_count()
    with lowered_module(reference_mlp_graph(), host().vector_width) as (_, module), \
            pytest.raises(KeyError, match="printer"):
        emit_objects(module, jobs=2)
    assert threading.active_count() == before


_VERIFIER_REFUSES = '\ndefine void @"self_ref"() {\nentry:\n  %x = add i32 %x, 1\n  ret void\n}\n'  # parses


def test_a_part_the_verifier_refuses_leaves_the_module_whole_and_frees_it_in_time():
    """LLVM's module of a refused part is freed before its context: freed later (when a traceback
    that held it was collected) it crashed the process. Run apart, so that a crash fails the test."""
    script = f"""
import gc, logging
from tests.codegen.test_split import reference_mlp_ir
from tinycomp.runtime import engine
real = engine.split_module
engine.split_module = lambda text, jobs: (lambda parts: [parts[0], parts[1] + {_VERIFIER_REFUSES!r}])(real(text, jobs))
logging.basicConfig(level=logging.WARNING)
objects = engine.emit_objects(reference_mlp_ir(), jobs=2)
gc.collect()
assert len(objects) == 1 and engine.JitEngine(objects=objects).address("tinycomp_forward")
print("whole and alive")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr[-2000:]
    assert "whole and alive" in done.stdout
    # the verifier's reason is quoted, not the instruction after it
    assert "Only PHI nodes may reference their own value!); emitting it whole" in done.stderr


def test_an_error_on_one_part_is_raised_even_when_another_part_is_refused(monkeypatch):
    """A refused part makes the compile emit the module whole; an interrupt or another error on
    another part is not cured by that, so it reaches the caller."""
    real_compile = engine_module._compile_part

    def compile_part(text, speed_level, context, part):
        if 'define void @"tinycomp_forward"' in text:
            raise KeyboardInterrupt  # Ctrl-C while the first part compiles (on whichever thread took it)
        return real_compile(text, speed_level, context, part)

    def split_badly(text, jobs):
        parts = real_split(text, jobs)
        return [parts[0], parts[1] + "\nnot llvm ir\n"]

    real_split = engine_module.split_module
    monkeypatch.setattr(engine_module, "split_module", split_badly)
    monkeypatch.setattr(engine_module, "_compile_part", compile_part)
    before = threading.active_count()
    with pytest.raises(KeyboardInterrupt):
        emit_objects(reference_mlp_ir(), jobs=2)
    assert threading.active_count() == before
