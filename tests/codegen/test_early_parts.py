"""Parts cut off a module while it is still being built (codegen/split.EarlyParts, driven by
runtime.engine.PartPipeline): a function reported finished never changes afterwards, parts cut at
any moment parse, link and compute the bits of the module emitted whole, and anything that goes
wrong (LLVM refusing a part, a module the split cannot read, an error in the middle of the build)
ends in the whole module or the error, with every thread joined and the process as it was."""

from __future__ import annotations

import ctypes
import sys
import threading

import numpy as np
import pytest
from llvmlite import ir

import tinycomp as tc
from tests.models import CATALOGUE, REFERENCE_MLP_IN, reference_mlp
from tests.reliability.rel_helpers import assert_matches_eager
from tinycomp.bench.models import get_model
from tinycomp.codegen import entry_parts, split
from tinycomp.codegen import module as codegen_module
from tinycomp.codegen.cgutils import F32, I64, PTR, element_ptr, for_range
from tinycomp.codegen.ir_text import function_text
from tinycomp.codegen.module import lowered_module
from tinycomp.codegen.target import host
from tinycomp.errors import CompileError
from tinycomp.frontend.tracer import trace
from tinycomp.ir.passes import run_pipeline
from tinycomp.runtime import engine
from tinycomp.runtime.engine import JitEngine, emit_objects


@pytest.fixture(autouse=True)
def no_disk_cache(monkeypatch):
    monkeypatch.setenv("TINYCOMP_CACHE", "0")  # every compile here builds its module


def _graph(name: str):
    bench = get_model(name)
    return run_pipeline(trace(bench.build(0), (None, *bench.in_shape)))


@pytest.mark.parametrize("name,part_nodes", [("mlp", 64), ("block", 64), ("lnmlp", 64), ("wide", 64), ("block", 3)])
def test_a_function_reported_finished_never_changes_afterwards(monkeypatch, name, part_nodes):
    """What a part cut early holds is what the module finally holds: each function's text when it
    is reported equals its text once the module is built (with the entry in parts of `part_nodes`
    nodes, whose finished parts are reported too). Every function is reported but the entry and its
    last part, finished with it."""
    monkeypatch.setattr(entry_parts, "PART_NODES", part_nodes)
    seen: dict[str, str] = {}

    def listener(module: ir.Module, names: list[str]) -> None:
        for n in names:
            text = function_text(module.globals[n])
            assert seen.setdefault(n, text) == text, f"{n} changed after it was reported finished"

    with lowered_module(_graph(name), host().vector_width, listener) as (_, module):
        final = {f.name: function_text(f) for f in module.functions}  # declarations (`define_once`'s) too
    unreported = {n for n, text in final.items() if text.startswith("define")} - set(seen) - {codegen_module.ENTRY}
    assert len(unreported) <= 1 and all(n.startswith(f"{codegen_module.ENTRY}.part") for n in unreported)  # the last
    for n, text in seen.items():
        assert final[n] == text, f"{n} changed after it was reported finished"
    if part_nodes < 64:
        assert any(".part" in n for n in seen)


@pytest.mark.parametrize("name", ["mlp", "block", "lnmlp"])
def test_a_finished_function_read_from_its_text_is_what_walking_it_reads(name):
    """`EarlyParts.finished` reads a function from its text (as `split_module` does), not by walking
    its operands (`split._function_of`): the same linkage, inlining, symbols named and lines."""
    read: list[tuple[split._Function, split._Function]] = []

    def listener(module: ir.Module, names: list[str]) -> None:
        for n in names:
            fn = module.globals[n]
            if fn.blocks:
                text = split._read_function(function_text(fn))
                assert text is not None
                read.append((text, split._function_of(fn)))

    with lowered_module(_graph(name), host().vector_width, listener):
        pass
    assert read
    for by_text, by_walk in read:
        assert (by_text.name, by_text.internal, by_text.inline, by_text.calls, by_text.lines) == \
            (by_walk.name, by_walk.internal, by_walk.inline, by_walk.calls, by_walk.lines), by_walk.name


def _cut_at_every_chance(monkeypatch) -> None:
    """Cut a part whenever a finished function can be placed: threads always idle, no least size."""
    monkeypatch.setenv("TINYCOMP_CODEGEN_JOBS", "64")
    monkeypatch.setattr(engine, "EARLY_PART_LINES", 1)


@pytest.mark.parametrize("case", CATALOGUE, ids=lambda c: c.name)
def test_parts_cut_at_every_chance_give_the_bits_of_the_module_emitted_whole(monkeypatch, case):
    x = case.sample(5)
    monkeypatch.setenv("TINYCOMP_CODEGEN_JOBS", "1")
    want = tc.compile(case.build(), threads=1)(x).data
    _cut_at_every_chance(monkeypatch)
    taken: list[int] = []
    real_rest = split.EarlyParts.rest
    monkeypatch.setattr(split.EarlyParts, "rest", lambda self, *a: taken.append(len(self.taken)) or real_rest(self, *a))
    switch = sys.getswitchinterval()
    fast = tc.compile(case.build(), threads=1)
    got = fast(x).data
    assert got.tobytes() == want.tobytes()  # the same instructions, only in other objects
    assert_matches_eager(got, case.build(), x)
    assert sys.getswitchinterval() == switch
    if taken:  # a model of one kernel or none has nothing to cut before its entry
        assert taken[0] >= 1 and len(fast._artifact.engine.objects) >= 2


def test_entry_parts_finished_while_building_are_cut_too(monkeypatch):
    """A TransformerBlock entry in parts of 3 nodes: the parts finished before the entry compile
    early, and the model still gives its bits."""
    bench = get_model("block")
    x = bench.sample(2, seed=1)
    monkeypatch.setattr(entry_parts, "PART_NODES", 3)
    monkeypatch.setenv("TINYCOMP_CODEGEN_JOBS", "1")
    want = tc.compile(bench.build(0), threads=1)(x).data
    _cut_at_every_chance(monkeypatch)
    cut: list[set[str]] = []
    real_cut = split.EarlyParts.cut

    def recording_cut(self, min_lines):
        before = set(self.taken)
        made = real_cut(self, min_lines)
        cut.append(set(self.taken) - before)
        return made

    monkeypatch.setattr(split.EarlyParts, "cut", recording_cut)
    got = tc.compile(bench.build(0), threads=1)(x).data
    assert got.tobytes() == want.tobytes()
    assert any(n.startswith(f"{codegen_module.ENTRY}.part") for names in cut for n in names)


def test_a_part_llvm_refuses_leaves_the_module_whole(monkeypatch, caplog):
    _cut_at_every_chance(monkeypatch)
    real_cut = split.EarlyParts.cut

    def broken_cut(self, min_lines):
        made = real_cut(self, min_lines)
        return None if made is None else ((lambda: made[0]() + "\nnot llvm ir\n"), made[1])

    monkeypatch.setattr(split.EarlyParts, "cut", broken_cut)
    model = reference_mlp()
    x = np.random.default_rng(3).standard_normal((7, REFERENCE_MLP_IN)).astype(np.float32)
    with caplog.at_level("WARNING", logger="tinycomp.compile"):
        fast = tc.compile(model, threads=1, input_shape=(None, REFERENCE_MLP_IN))
    assert "emitting it whole" in caplog.text
    assert len(fast._artifact.engine.objects) == 1
    assert_matches_eager(fast(x).data, model, x)


def test_a_module_the_split_cannot_read_once_built_is_emitted_whole(monkeypatch):
    """Metadata added after parts were cut leaves the rest unreadable (`split._read_ir`): the
    module is emitted whole and the early parts' code is not used."""
    _cut_at_every_chance(monkeypatch)
    real_emit = codegen_module._emit_module

    def with_metadata(*args):
        plan, module = real_emit(*args)
        module.add_named_metadata("tinycomp.test", [module.add_metadata([ir.Constant(ir.IntType(32), 1)])])
        return plan, module

    monkeypatch.setattr(codegen_module, "_emit_module", with_metadata)
    model = reference_mlp()
    x = np.random.default_rng(4).standard_normal((5, REFERENCE_MLP_IN)).astype(np.float32)
    fast = tc.compile(model, threads=1, input_shape=(None, REFERENCE_MLP_IN))
    assert len(fast._artifact.engine.objects) == 1
    assert_matches_eager(fast(x).data, model, x)


def _lock_is_free() -> bool:
    """Whether another thread can take LLVM_LOCK now (an RLock: this thread would always get it)."""
    got: list[bool] = []

    def take() -> None:
        got.append(engine.LLVM_LOCK.acquire(blocking=False))
        if got[0]:
            engine.LLVM_LOCK.release()

    t = threading.Thread(target=take)
    t.start()
    t.join()
    return got[0]


def test_an_error_in_the_middle_of_the_build_joins_the_parts_and_restores_the_process(monkeypatch):
    _cut_at_every_chance(monkeypatch)
    real_lower = codegen_module._lower
    lowered: list[str] = []

    def failing_lower(e, n):
        real_lower(e, n)
        lowered.append(n)
        if len(lowered) == 2:  # the first layer's kernels are queued by now
            raise codegen_module.LoweringError("stop here")

    monkeypatch.setattr(codegen_module, "_lower", failing_lower)
    queued: list[int] = []
    real_queue = engine.PartPipeline._queue_part
    monkeypatch.setattr(engine.PartPipeline, "_queue_part", lambda self, *a: queued.append(1) or real_queue(self, *a))
    before, switch = threading.active_count(), sys.getswitchinterval()
    with pytest.raises(CompileError, match="stop here"):
        tc.compile(reference_mlp(), threads=1, input_shape=(None, REFERENCE_MLP_IN))
    assert queued, "no part was cut before the error: the test tests nothing"
    assert threading.active_count() == before
    assert sys.getswitchinterval() == switch
    assert _lock_is_free()


def test_a_busy_thread_gets_less_of_the_rest():
    """`_balance` starts part i + 1 from `busy[i]` lines: a thread still compiling an early part
    is given one of four equal kernels, against two when it is idle."""
    def fn(name: str, lines: int, internal: bool = True) -> split._Function:
        return split._Function(name, lambda: "", internal, inline=False, calls=set(), lines=lines)

    functions = {f.name: f for f in [fn("entry", 100, internal=False), *(fn(f"k{i}", 1000) for i in range(4))]}
    idle = split._balance(functions, {}, 2, print_share=0.0, busy=[0.0])
    busy = split._balance(functions, {}, 2, print_share=0.0, busy=[2500.0])
    assert idle is not None and busy is not None
    assert [len(a - {"entry"}) for a in idle] == [2, 2]
    assert [len(a - {"entry"}) for a in busy] == [3, 1] and "entry" in busy[0]


# ------------------------------------------- a function cut early that calls one finished later

def _module_calling_later() -> ir.Module:
    """`entry(n, x, out)`: out = 3 * (x + 1). `ka` (scales by 3) calls `kb` (adds 1), and is
    finished first; `kb` is defined but reported only once the module is built."""
    module = ir.Module(name="later")
    kernel_type = ir.FunctionType(ir.VoidType(), [I64, PTR, PTR])
    kb = ir.Function(module, kernel_type, "kb")
    ka = ir.Function(module, kernel_type, "ka")
    for fn in (ka, kb):
        fn.linkage = "internal"
        fn.attributes.add("noinline")
    ops = {kb: lambda b, v: b.fadd(v, ir.Constant(F32, 1.0)), ka: lambda b, v: b.fmul(v, ir.Constant(F32, 3.0))}
    for fn, op in ops.items():
        n, x, out = fn.args
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        if fn is ka:
            b.call(kb, [n, x, out])
            x = out
        with for_range(b, 0, n) as loop:
            b.store(op(b, b.load(element_ptr(b, x, loop.index), typ=F32)), element_ptr(b, out, loop.index))
        b.ret_void()
    entry = ir.Function(module, kernel_type, "entry")
    b = ir.IRBuilder(entry.append_basic_block("entry"))
    b.call(ka, list(entry.args))
    b.ret_void()
    return module


def test_a_part_cut_early_declares_what_is_finished_later_and_the_rest_exports_it():
    module = _module_calling_later()
    early = split.EarlyParts(module)
    early.finished(["ka"])
    made = early.cut(1)
    assert made is not None
    first = made[0]()
    assert 'declare void @"kb"' in first and 'define void @"ka"' in first
    rest = early.rest(2, 0.0, [0.0])
    assert rest is not None and len(rest) == 1
    last = rest[0]()
    assert 'define void @"kb"' in last and 'declare void @"ka"' in last and '@"ka"(' in last
    objects = [blob for text in (first, last) for blob in emit_objects(text, jobs=1)]
    x = np.arange(6, dtype=np.float32)
    out = np.zeros_like(x)
    proto = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p)
    jit = JitEngine(objects=objects)  # alive while its code runs
    proto(jit.address("entry"))(len(x), x.ctypes.data, out.ctypes.data)
    np.testing.assert_array_equal(out, 3 * (x + 1))


def test_a_function_naming_a_global_variable_waits_for_the_rest():
    module = _module_calling_later()
    table = ir.GlobalVariable(module, F32, "table")
    table.linkage, table.initializer = "internal", ir.Constant(F32, 1.0)
    reader = ir.Function(module, ir.FunctionType(F32, []), "reader")
    reader.linkage = "internal"
    b = ir.IRBuilder(reader.append_basic_block("entry"))
    b.ret(b.load(table, typ=F32))
    early = split.EarlyParts(module)
    early.finished(["reader"])
    assert early.cut(1) is None and not early.taken


def test_a_thread_busy_when_the_module_is_built_prints_its_next_part_itself(monkeypatch):
    """Once the module is built, the parts meant for a thread still compiling an early part are
    queued unprinted: whichever thread takes one prints it, after this one has printed its own part
    and started compiling it; the model still gives its bits."""
    monkeypatch.setenv("TINYCOMP_CODEGEN_JOBS", "1")
    model = reference_mlp()
    x = np.random.default_rng(8).standard_normal((6, REFERENCE_MLP_IN)).astype(np.float32)
    want = tc.compile(model, threads=1, input_shape=(None, REFERENCE_MLP_IN))(x).data
    monkeypatch.setenv("TINYCOMP_CODEGEN_JOBS", "2")
    real_compile, real_rest = engine._compile_part, split.EarlyParts.rest
    events: list[str] = []
    built = threading.Event()  # the module is built and its remaining parts handed out

    def slow_first(text, *args):
        events.append("compile the entry's part" if f'define void @"{codegen_module.ENTRY}"' in text else "compile")
        if events.count("compile") == 1:  # the early part: its thread stays busy until the module is built
            built.wait(30)  # (a fixed sleep lost that race on a loaded host)
        return real_compile(text, *args)

    def recorded_rest(self, *args):
        printers = real_rest(self, *args)
        built.set()
        return printers and [printers[0], *(lambda p=p: events.append("print another") or p() for p in printers[1:])]

    monkeypatch.setattr(engine, "_compile_part", slow_first)
    monkeypatch.setattr(split.EarlyParts, "rest", recorded_rest)
    monkeypatch.setattr(split, "MIN_PART_LINES", 100)  # the rest in two parts, whatever the busy thread's share
    # ... and whatever LLVM's rate says is left of its part: from a rate measured on other compiles,
    # an estimate past the rest's size gave the busy thread no part (one in five runs alone)
    monkeypatch.setattr(engine.PartPipeline, "_busy_lines", lambda self: [])
    fast = tc.compile(model, threads=1, input_shape=(None, REFERENCE_MLP_IN))
    assert fast(x).data.tobytes() == want.tobytes()
    assert "print another" in events, events
    assert events.index("compile the entry's part") < events.index("print another"), events
    assert engine._LLVM_RATE[0] > 0  # measured on the parts compiled


# ------------------------------------------------------------ interrupts (found by a review helper)

def _three_part_text() -> str:
    """A module of three 600-line internal functions and an exported caller: three parts on 3 jobs."""
    body = "".join(f"  %v{j} = add i64 %x, {j}\n" for j in range(600))
    kernels = "".join(f'define internal i64 @"f{i}"(i64 %x) {{\nentry:\n{body}  ret i64 %x\n}}\n' for i in range(3))
    calls = "".join(f'  %c{i} = call i64 @"f{i}"(i64 %x)\n' for i in range(3))
    return kernels + f'define i64 @"main"(i64 %x) {{\nentry:\n{calls}  ret i64 %c2\n}}\n'


def test_an_interrupt_while_the_contexts_close_still_lets_go_of_the_lock(monkeypatch):
    """A second Ctrl-C as the parts' contexts are closed: the lock, LLVM's options and the switch
    interval are let go of all the same (before, the lock stayed held and every compile hung)."""
    real_create = engine.llvm.create_context

    class InterruptedOnClose:
        def __init__(self):
            self.real = real_create()

        def close(self):
            self.real.close()
            raise KeyboardInterrupt

    monkeypatch.setattr(engine.llvm, "create_context", InterruptedOnClose)
    switch = sys.getswitchinterval()
    with pytest.raises(KeyboardInterrupt):
        emit_objects(_three_part_text(), jobs=3)
    assert _lock_is_free() and sys.getswitchinterval() == switch


def test_an_interrupt_on_this_thread_stops_it_taking_parts_and_joins_the_rest_first(monkeypatch):
    """Ctrl-C while this thread compiles its part of the rest: it takes none of the parts still
    queued (the busy thread's, unprinted), and every thread is done before the error reaches the
    caller, who then frees the module they print from."""
    monkeypatch.setenv("TINYCOMP_CODEGEN_JOBS", "2")
    monkeypatch.setattr(split, "MIN_PART_LINES", 100)  # the rest in more parts than threads
    real_compile = engine._compile_part
    on_this_thread: list[str] = []

    def interrupted(text, *args):
        if threading.current_thread() is threading.main_thread():
            on_this_thread.append("compile")
            raise KeyboardInterrupt
        threading.Event().wait(0.3)  # the other thread stays busy with the early part
        return real_compile(text, *args)

    monkeypatch.setattr(engine, "_compile_part", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tc.compile(reference_mlp(), threads=1, input_shape=(None, REFERENCE_MLP_IN))
    assert on_this_thread == ["compile"]
    assert not [t for t in threading.enumerate() if t.name.startswith(engine.PART_THREAD)]
