"""Issue 7: concurrency. One compiled model called from 8 threads gives exactly the serial results;
threads compiling different models at once are safe."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import tinycomp as tc
from tests.models import CASES, CATALOGUE
from tests.reliability.rel_helpers import assert_matches_eager

BATCHES = [0, 1, 2, 3, 7, 8, 17, 33, 64, 100, 257]



def run_threads(fn, n: int) -> list:
    barrier = threading.Barrier(n)
    results: list = [None] * n
    errors: list = []

    def body(i: int) -> None:
        barrier.wait()
        try:
            results[i] = fn(i)
        except BaseException as exc:  # reported below, never lost in a thread
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


@pytest.mark.parametrize("threads", [None, 1, 2])
def test_one_model_eight_threads_bitwise_equal_to_serial(threads, calls=500):
    c = CASES["reference_mlp"]
    model = c.build()
    fast = tc.compile(model, threads=threads)
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((b, c.in_features)).astype(np.float32) for b in BATCHES]
    serial = [fast(x).data.copy() for x in inputs]  # same batches, so the same row split

    def worker(i: int) -> int:
        order = np.random.default_rng(i).integers(0, len(inputs), calls)
        for k in order:
            y = fast(inputs[k]).data
            if not np.array_equal(y, serial[k]):
                raise AssertionError(f"thread {i}: batch {len(inputs[k])} differs from the serial result")
        return len(order)

    assert sum(run_threads(worker, 8)) == 8 * calls
    assert fast.stats.compiles == 1


def test_thread_count_never_changes_a_bit():
    """A row's result is the same bits on one thread or split across two, and in any batch: a layer
    narrower than a vector (64 -> 5) once summed the few rows a thread's share left over in another
    order than many (batch 7185 differed in 5 outputs)."""
    from tinycomp.nn import Linear, ReLU, Sequential

    model = Sequential(Linear(512, 64), ReLU(), Linear(64, 5))
    model.eval()
    one, two = tc.compile(model, threads=1), tc.compile(model, threads=2)
    x = np.random.default_rng(3).standard_normal((7185, 512)).astype(np.float32)
    whole = one(x).data
    for rows in (7185, 7169, 4099, 2051, 1003):
        np.testing.assert_array_equal(two(x[:rows]).data, whole[:rows], err_msg=f"batch {rows}")
    np.testing.assert_array_equal(one(x[5:6]).data, whole[5:6])


def test_first_call_from_many_threads_compiles_once():
    c = CASES["softmax_head"]
    model = c.build()
    fast = tc.compile(model)  # compiles on the first call
    x = c.sample(5)
    outs = run_threads(lambda i: fast(x).data.copy(), 8)
    assert fast.stats.compiles == 1
    for y in outs:
        np.testing.assert_array_equal(y, outs[0])


def test_first_calls_of_two_input_widths_at_once_each_get_their_width(monkeypatch):
    """A first call that waited while another thread's first call compiled for another width used to
    take that artifact and fail: 'compiled model expects input of shape (batch, 3, 16) ...; got shape
    (4, 5, 16)'. Without input_shape, a call of another width compiles for it."""
    from tinycomp import driver
    from tinycomp.nn import Layer, Linear

    class SumOverSeq(Layer):
        def __init__(self):
            self.fc = Linear(16, 4)

        def forward(self, x):
            return self.fc(x).sum(axis=1)

    model = SumOverSeq()
    fast = tc.compile(model)
    build, building = driver.build, threading.Event()

    def slow_first_build(*args, **kwargs):
        if not building.is_set():
            building.set()
            threading.Event().wait(0.5)  # the other thread's first call now waits for this compile
        return build(*args, **kwargs)

    monkeypatch.setattr(driver, "build", slow_first_build)
    xs = {3: np.ones((4, 3, 16), np.float32), 5: np.ones((4, 5, 16), np.float32)}
    results: dict = {}

    def call(width: int) -> None:
        try:
            results[width] = fast(xs[width]).data
        except Exception as exc:  # reported below
            results[width] = exc

    first = threading.Thread(target=call, args=(3,))
    first.start()
    assert building.wait(30)
    second = threading.Thread(target=call, args=(5,))
    second.start()
    first.join()
    second.join()
    for width, x in xs.items():
        assert isinstance(results[width], np.ndarray), results[width]
        np.testing.assert_allclose(results[width], model(x).data, rtol=1e-5, atol=1e-5)


def test_threads_compiling_different_models_at_once(tmp_cache):
    def worker(i: int) -> None:
        c = CATALOGUE[i % len(CATALOGUE)]
        model = c.build(seed=i)
        fast = tc.compile(model)
        for b in (1, 5, 40):
            x = c.sample(b, seed=i)
            assert_matches_eager(fast(x).data, model, x)

    run_threads(worker, 8)
    run_threads(worker, 8)  # again, now with every entry in the cache


def test_calls_race_with_a_structural_change():
    """While threads call, the model grows a layer: every result is the old or the new model's."""
    from tinycomp.nn import Linear, ReLU, Sequential

    model = Sequential(Linear(8, 8), ReLU())
    fast = tc.compile(model)
    x = np.random.default_rng(1).standard_normal((20, 8)).astype(np.float32)
    old = fast(x).data.copy()
    grown = Linear(8, 3)
    start = threading.Event()

    def worker(i: int) -> set:
        shapes = set()
        for n in range(200):
            if i == 0 and n == 50:
                model.layers.append(grown)
                start.set()
            y = fast(x).data
            if y.shape == old.shape:
                assert np.array_equal(y, old) or start.is_set()
            shapes.add(y.shape)
        return shapes

    seen = set().union(*run_threads(worker, 4))
    assert (20, 3) in seen
    assert fast(x).shape == (20, 3)
    with ThreadPoolExecutor(2) as pool:
        assert all(r.shape == (20, 3) for r in pool.map(fast, [x] * 10))


class _Interfering:
    """Stands in for a compiled model's native kernel: runs `meanwhile` once, just before the
    native call, as another thread could while this call is in flight."""

    def __init__(self, kernel, meanwhile):
        self.kernel, self.meanwhile = kernel, meanwhile

    def __getattr__(self, name):
        return getattr(self.kernel, name)

    def call(self, *args) -> None:
        self.around(self.kernel.call)(*args)

    def around(self, fn):
        """fn, running `meanwhile` once just before it."""
        def call(*args):
            meanwhile, self.meanwhile = self.meanwhile, None
            if meanwhile is not None:
                meanwhile()
            return fn(*args)
        return call


@pytest.mark.parametrize("path", ["full", "hot", "native"])
@pytest.mark.parametrize("test_keeps_old", [False, True])
def test_weights_rebound_during_a_call_stay_alive_and_never_leave_a_stale_table(path, test_keeps_old, monkeypatch):
    """A call is in native code when another thread rebinds a weight and calls. The call in flight
    must keep the old array alive (native code is reading it: checked before it does, so a
    regression fails here instead of crashing), and must not hand its table, which points into the
    old array, to the hot path: every later call uses the new weight (checked with the old array
    kept alive by the test, so that a stale table reads valid memory)."""
    import gc
    import weakref

    from tests.models import eager_eval, reference_mlp
    from tinycomp.nn import manual_seed
    from tinycomp.runtime import native_guard

    if path == "hot":  # the Python hot path: keep the native one (runtime/native_guard.py) out of it
        monkeypatch.setattr(native_guard, "AVAILABLE", False)
    elif path == "native" and not native_guard.AVAILABLE:
        pytest.skip("no native hot call on this interpreter or NumPy")
    manual_seed(0)
    model = reference_mlp()
    fast = tc.compile(model, input_shape=(None, 784), threads=1)
    x = np.random.default_rng(0).standard_normal((4, 784)).astype(np.float32)
    fast(x), fast(x)  # the second call leaves its table to the hot path
    weight = model.layers[0].weight
    kept = [weight.data] if test_keeps_old else []
    old = weakref.ref(weight.data)
    new = (weight.data * -0.5).astype(np.float32)

    def meanwhile() -> None:
        weight.data = new  # unless the test keeps it, the call in flight holds the old array's last reference
        np.testing.assert_allclose(fast(x).data, eager_eval(model, x), rtol=2e-4, atol=2e-5)
        gc.collect()
        assert old() is not None, "the call in flight let go of the array its native code reads"

    if path == "native":  # `meanwhile` runs inside the native call's ctypes step, before the helper reads
        native = fast._native
        helper = native._fn
        native._fn = _Interfering(None, meanwhile).around(helper)
        fast(x)
        del native, helper
    else:
        call = fast._artifact.call
        call.kernel = _Interfering(call.kernel, meanwhile)
        try:
            fast._call(x) if path == "full" else fast(x)
        finally:
            call.kernel = call.kernel.kernel
    for _ in range(3):  # the hot path, with the new weight
        np.testing.assert_allclose(fast(x).data, eager_eval(model, x), rtol=2e-4, atol=2e-5)
    kept.clear()
    gc.collect()
    assert old() is None  # nothing holds the old array once the call returned


def test_check_mode_from_threads_keeps_the_models_training_flags():
    """check=True runs the eager model in eval mode on every call; from several threads at once
    each check must still see eval mode, and the user's own flags (training, as built) survive."""
    import sys

    from tinycomp.nn import Dropout, Linear, ReLU, Sequential

    model = Sequential(Linear(32, 64), ReLU(), Dropout(0.5), Linear(64, 8))  # training=True, as built
    fast = tc.compile(model, check=True, input_shape=(None, 32))
    x = np.random.default_rng(0).standard_normal((16, 32)).astype(np.float32)
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # interleave the threads finely: the race needs a switch mid-check
    try:
        outs = run_threads(lambda i: [fast(x).data.copy() for _ in range(20)][-1], 4)
    finally:
        sys.setswitchinterval(old_interval)
    for y in outs:
        np.testing.assert_array_equal(y, outs[0])
    assert model.training and all(layer.training for layer in model.layers)


def test_tracing_from_threads_leaves_the_model_as_it_was():
    """Inputs with new leading shapes are traced on the calling thread; tracing patches the layers
    for the duration. Threads doing it at once must neither fail, nor recompile, nor leave a patch."""
    import sys

    from tinycomp.nn import Dropout, Linear, ReLU, Sequential

    model = Sequential(Linear(16, 8), ReLU(), Dropout(0.5), Linear(8, 4))
    fast = tc.compile(model, input_shape=(None, 16))
    def state() -> list[dict]:
        return [{k: id(v) for k, v in vars(layer).items()} for layer in model.layers]

    before = state()
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        run_threads(lambda k: [fast(np.ones((k + 1, i, 16), np.float32)) for i in range(1, 40)], 4)
    finally:
        sys.setswitchinterval(old_interval)
    assert fast.stats.compiles == 1
    assert state() == before
    assert model.training


def test_a_forward_that_waits_on_a_thread_calling_another_compiled_model_does_not_deadlock():
    """Tracing holds the traced model's lock while forward() runs. A forward() that hands work to a
    thread which calls another compiled model (its first call traces that model) must not wait on
    a lock of the first: the locks are per model."""
    from tinycomp.nn import Layer, Linear

    inner = tc.compile(Linear(4, 4))  # compiles (and traces) on its first call
    x = np.ones((2, 4), np.float32)
    finished = []

    class HandsOff(Layer):
        def __init__(self):
            self.fc = Linear(4, 4)

        def forward(self, h):
            worker = threading.Thread(target=lambda: finished.append(inner(x).data.shape))
            worker.start()
            worker.join(timeout=30)
            return self.fc(h)

    tc.compile(HandsOff(), input_shape=(None, 4))
    assert finished == [(2, 4)]


SMALL_STACK_CALL = """
import sys, threading
import numpy as np
import tinycomp as tc
from tinycomp.nn import Linear, ReLU, Sequential
model = Sequential(Linear(784, 256), ReLU(), Linear(256, 10)).eval()
fast = tc.compile(model, input_shape=(None, 784))
x = np.random.default_rng(0).random((1, 784), dtype=np.float32)
fast(x), fast(x)  # compiled, and the native hot call armed
threading.stack_size(32 << 10)  # the smallest stack Python gives a thread
out = []
worker = threading.Thread(target=lambda: out.append(fast(x).data))
worker.start(), worker.join()
sys.exit(0 if np.allclose(out[0], model(x).data, rtol=1e-5, atol=1e-6) else 2)
"""


def test_a_thread_with_the_smallest_stack_python_allows_can_call():
    """The native hot call kept 32 KB of its own stack for batch-1 scratch: a thread given Python's
    smallest stack (32 KiB) crashed in it (SIGSEGV, about 9 runs in 10)."""
    for _ in range(3):
        done = subprocess.run([sys.executable, "-c", SMALL_STACK_CALL], timeout=120)
        assert done.returncode == 0


def _exit_code_of_a_child_forked_while_held(lock, child) -> int:
    """Fork while another thread holds `lock`; the child runs `child()` (its exit code; any error 1,
    60 s at most), the thread releases the lock once the child exists. The child's exit code."""
    import os
    import signal

    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(10)
    pid = os.fork()
    if pid == 0:  # the child: the holder thread is gone, its lock must not be
        signal.alarm(60)
        try:
            os._exit(child())
        except BaseException:
            os._exit(1)
    release.set()
    holder.join()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_a_child_forked_while_a_thread_holds_a_model_lock_can_compile():
    from tinycomp.frontend.layers import model_lock
    from tinycomp.nn import Linear

    model = Linear(4, 4)

    def compiles() -> int:
        tc.compile(model, input_shape=(None, 4))
        return 0
    assert _exit_code_of_a_child_forked_while_held(model_lock(model), compiles) == 0


def test_a_child_forked_while_a_thread_builds_a_graph_collects_cycles():
    """A compile pauses the cycle collector, which is one switch for the whole process: a child
    forked during another thread's pause kept it off for ever (25 of 30 children, a helper's server
    that compiles in a thread and forks workers). The child has it back; the parent, after the pause."""
    import gc

    from tinycomp.ir.graph import paused_gc

    assert gc.isenabled()

    def collects() -> int:
        return 0 if gc.isenabled() else 3
    assert _exit_code_of_a_child_forked_while_held(paused_gc(), collects) == 0
    assert gc.isenabled()
    with paused_gc():  # and pauses nest: on again only after the outer one
        with paused_gc():
            pass
        assert not gc.isenabled()
    assert gc.isenabled()


def test_a_child_forked_while_a_thread_draws_initial_weights_builds_layers_with_the_same_stream():
    """The weight generator's own lock, held at the fork by a thread building a Linear, blocked the
    child's first Linear() for ever; the child continues the parent's stream where it stood."""
    from tinycomp.frontend import layers
    from tinycomp.nn import Linear, manual_seed

    manual_seed(21)
    bits = layers.rng().bit_generator
    expected = np.random.Generator(type(bits)(21)).standard_normal((3, 2)) / np.sqrt(3)

    def builds() -> int:
        return 0 if np.allclose(Linear(3, 2).weight.data, expected.astype(np.float32)) else 2
    assert _exit_code_of_a_child_forked_while_held(bits.lock, builds) == 0


def test_a_fork_while_a_part_thread_is_starting_holds_both_llvm_locks(monkeypatch):
    """A SIGALRM handler forked while the compiling thread was inside Thread.start() of a part: the
    part was listed but not running, join() raised "cannot join thread before it is started", the
    fork went on holding our lock without llvmlite's, and a child hung for good in its compile (one
    CI run in three). The fork now waits for such a part until it runs, and holds both locks."""
    from tinycomp.runtime import engine

    starting = threading.Thread(target=lambda: None, name=engine.PART_THREAD + "9")  # listed, never started
    monkeypatch.setattr(engine.threading, "enumerate", lambda: [threading.current_thread(), starting])
    monkeypatch.setattr(engine, "PARTS_WAIT_SECONDS", 0.05)
    engine.hold_llvm_for_fork()
    try:
        held = []
        other = threading.Thread(target=lambda: held.append((engine._FFI_LOCK.acquire(blocking=False),
                                                             engine._LLVM_LOCK.acquire(blocking=False))))
        other.start()
        other.join()
        assert held == [(False, False)]  # both held by this thread
    finally:
        engine.release_llvm_after_fork()
    assert engine._FFI_LOCK.acquire(blocking=False)  # and both released
    engine._FFI_LOCK.release()


def test_children_forked_while_a_thread_compiles_can_compile(monkeypatch):
    """A fork while another thread held the LLVM lock (a compile) or llvmlite's own (an engine
    disposed of) left it held in the child for good: 8 of 10 children hung in their first compile.
    The fork now waits for both (engine._hold_llvm_for_fork)."""
    import os
    import signal

    from tinycomp.nn import Linear, ReLU, Sequential

    monkeypatch.setenv("TINYCOMP_CACHE", "0")  # every compile does LLVM work, and drops engines
    stop = threading.Event()

    def compile_forever() -> None:
        width = 8
        while not stop.is_set():
            width = 8 + (width + 1) % 40
            tc.compile(Sequential(Linear(width, 16), ReLU()))(np.ones((1, width), np.float32))

    worker = threading.Thread(target=compile_forever)
    worker.start()
    try:
        codes = []
        for _ in range(6):
            time.sleep(0.05)
            pid = os.fork()
            if pid == 0:  # the child: compile one model, or be killed by the alarm
                signal.alarm(30)
                try:
                    tc.compile(Linear(3, 2))(np.ones((2, 3), np.float32))
                    os._exit(0)
                except BaseException:
                    os._exit(1)
            codes.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    finally:
        stop.set()
        worker.join()
    assert codes == [0] * 6, f"children's exit codes {codes} (-14: hung until the alarm)"


@pytest.mark.parametrize("delay", [0.002, 0.02, 0.06])
def test_a_child_forked_while_a_thread_compiles_the_same_model_can_call_it(monkeypatch, delay):
    """The compiling thread held the model's and the compiled model's locks (and the model patched
    for its trace) at the fork: the child's first call waited for ever. A fork now waits for traces
    in progress and for LLVM, and the child starts with fresh locks."""
    import os
    import signal

    from tinycomp.nn import Linear, Sequential, Tensor

    monkeypatch.setenv("TINYCOMP_CACHE", "0")  # a cold compile, ~0.1 s: the fork lands inside it
    model = Sequential(*[Linear(64, 64) for _ in range(30)])
    model.eval()
    fast = tc.compile(model)
    x = np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32)
    want = model(Tensor(x)).data
    worker = threading.Thread(target=fast, args=(x,))
    worker.start()
    time.sleep(delay)
    pid = os.fork()
    if pid == 0:  # the child: call the model, compare, or be killed by the alarm
        signal.alarm(30)
        try:
            os._exit(0 if np.allclose(fast(x).data, want, rtol=1e-5, atol=1e-5) else 2)
        except BaseException:
            os._exit(1)
    worker.join()
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


def test_a_fork_never_waits_for_ever_on_a_trace_that_waits_for_the_forker():
    """A fork waits for other threads' traces to end (a child must not keep a model patched); a
    trace whose forward() waited for the forking thread, which waited for the trace, hung both."""
    import os

    from tinycomp.nn import Layer

    forked = threading.Event()

    class WaitsForTheForker(Layer):
        def forward(self, x):
            forked.wait(120)
            return x * 2.0

    fast = tc.compile(WaitsForTheForker())
    tracer = threading.Thread(target=fast, args=(np.ones((2, 3), np.float32),), daemon=True)
    tracer.start()
    time.sleep(0.2)  # the trace is inside forward()

    def fork_then_set() -> None:
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        forked.set()

    forker = threading.Thread(target=fork_then_set, daemon=True)
    forker.start()
    forker.join(15)
    tracer.join(15)
    assert not forker.is_alive() and not tracer.is_alive() and forked.is_set()


SIGNAL_REENTRY = """
import signal, time, numpy as np, tinycomp as tc
from tinycomp.nn import Sequential, Linear, ReLU, Tanh
m = Sequential(Linear(16, 8), ReLU(), Linear(8, 4)); m.eval()
f = tc.compile(m)
x1, x3 = np.ones((1, 16), np.float32), np.ones((3, 16), np.float32)
busy = []
def handler(sig, frame):
    if busy: return
    busy.append(1)
    try: f(x1)
    except RuntimeError: pass  # landed inside the compile: refused, never waited for
    finally: busy.clear()
signal.signal(signal.SIGALRM, handler)
signal.setitimer(signal.ITIMER_REAL, 0.0001, 0.0001)
t0, n = time.time(), 0
while time.time() - t0 < 3:
    m.layers[1] = ReLU() if n % 2 else Tanh()  # each call re-checks the model under its locks
    f(x3); n += 1
signal.setitimer(signal.ITIMER_REAL, 0)
print("calls", n)
"""

SIGNAL_FORK = """
import os, signal, numpy as np, tinycomp as tc
from tinycomp.nn import Sequential, Linear, ReLU
child, kids = [], []
def handler(sig, frame):
    if child: return
    pid = os.fork()
    if pid == 0:
        child.append(1); signal.setitimer(signal.ITIMER_REAL, 0)
    else:
        kids.append(pid)
signal.signal(signal.SIGALRM, handler)
for i in range(8):
    m = Sequential(Linear(300 + i, 256), ReLU(), Linear(256, 128), ReLU(), Linear(128, 10)); m.eval()
    x = np.random.default_rng(i).random((3, 300 + i), dtype=np.float32)
    signal.setitimer(signal.ITIMER_REAL, 0.005 + 0.007 * (i % 5), 0)
    ok = np.allclose(tc.compile(m)(x).data, m(x).data, rtol=1e-4, atol=1e-5)
    signal.setitimer(signal.ITIMER_REAL, 0)
    if child: os._exit(0 if ok else 7)
    assert ok
codes = [os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in kids]
print("children", codes)
"""


@pytest.mark.parametrize("script", [SIGNAL_REENTRY, SIGNAL_FORK], ids=["reentry", "fork"])
def test_signal_handlers_that_call_or_fork_during_calls_and_compiles(script, tmp_path):
    """A handler calling the model on the slow path waited for itself (the model-lock table's guard,
    then the window just after a compile took its lock); a handler forking during code generation
    left the child without a part still compiling on another thread: a segfault in 3-4 of 12
    children. Each script runs in its own process: a hang there is a timeout here."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "TINYCOMP_CACHE": "0"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240, env=env,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    if script is SIGNAL_FORK:
        assert done.stdout.strip().startswith("children [") and "-" not in done.stdout and " 7" not in done.stdout, \
            done.stdout


def _edit_once_during(monkeypatch, owner, name: str, edit) -> list:
    """Patch owner.name so that its next call first runs `edit`, as another thread could at that
    moment; returns a list that records each edit made."""
    original, done = getattr(owner, name), []

    def patched(*args, **kwargs):
        if not done:
            done.append(edit())
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, patched)
    return done


def test_a_model_edited_while_its_code_is_generated_is_compiled_again(monkeypatch):
    """Another thread appends a layer while the first call generates the traced model's code: the
    next call runs the edited model (the guard is taken before the code generation; taken after, it
    held the edited model as what was compiled and never recompiled)."""
    from tinycomp import driver
    from tinycomp.nn import Linear, ReLU, Sequential, Tanh, manual_seed

    manual_seed(0)
    model = Sequential(Linear(8, 8), ReLU(), Linear(8, 4))
    fast = tc.compile(model)
    x = np.random.default_rng(2).standard_normal((5, 8)).astype(np.float32)
    done = _edit_once_during(monkeypatch, driver, "codegen", lambda: model.layers.append(Tanh()))
    fast(x)
    assert done and model.layers[-1].__class__ is Tanh
    assert_matches_eager(fast(x).data, model, x)
    assert fast.stats.compiles == 2


def test_a_forward_that_writes_to_its_model_compiles_once():
    """A call counter and a list a forward appends to change while it is traced: the guard holds the
    model as traced, so later calls do not recompile (compiled calls do not run forward())."""
    from tinycomp.nn import Layer, Linear, manual_seed

    class Counting(Layer):
        def __init__(self):
            manual_seed(1)
            self.fc, self.calls, self.seen = Linear(4, 4), 0, []

        def forward(self, x):
            self.calls += 1
            self.seen.append(self.calls)
            return self.fc(x)

    model = Counting()
    fast = tc.compile(model)
    x = np.ones((2, 4), np.float32)
    for _ in range(4):
        np.testing.assert_allclose(fast(x).data, model.fc(x).data, rtol=1e-6)
    assert fast.stats.compiles == 1


def test_a_weight_rebound_while_the_native_call_is_armed_is_used_next(monkeypatch):
    """Another thread rebinds a weight between the arming call's checks and the native step's
    record of the words it watches: the step must not run the old table against the new words."""
    from tests.models import eager_eval
    from tinycomp import compiler
    from tinycomp.nn import Linear, ReLU, Sequential, Tensor, manual_seed
    from tinycomp.runtime import native_guard

    if not native_guard.AVAILABLE:
        pytest.skip("no native hot call on this interpreter or NumPy")
    manual_seed(1)
    model = Sequential(Linear(8, 8), ReLU(), Linear(8, 4))
    fast = tc.compile(model, threads=1)
    x = np.random.default_rng(3).standard_normal((1, 8)).astype(np.float32)
    fast(x)
    fast._native = None  # the next call arms it again
    new = Tensor((model.layers[0].weight.data * -2).astype(np.float32))
    done = _edit_once_during(monkeypatch, compiler, "native_watch",
                             lambda: setattr(model.layers[0], "weight", new))
    fast(x)
    assert done
    for _ in range(3):  # the native step (if armed at all) or the Python path: the new weight either way
        np.testing.assert_allclose(fast(x).data, eager_eval(model, x), rtol=1e-5, atol=1e-6)


class _SwappedDuringEveryCompile:
    """A model whose last layer another thread swaps (for one of another width) during each compile
    a call starts, after the trace and the guard, before the parameters are bound; compiled and
    called once before, then given the other layer."""

    def __init__(self, monkeypatch):
        from tinycomp import driver
        from tinycomp.nn import Linear, ReLU, Sequential, manual_seed

        manual_seed(2)
        self.a, self.b = Linear(8, 4), Linear(8, 6)
        self.model = Sequential(Linear(8, 8), ReLU(), self.a)
        self.fast = tc.compile(self.model, threads=1)
        self.x = np.random.default_rng(4).standard_normal((5, 8)).astype(np.float32)
        self.fast(self.x)
        self.model.layers[2] = self.b  # the next call compiles for b, and the edits swap during each compile
        self.traced: list = []
        original = self.codegen = driver.codegen

        def swapping(*args, **kwargs):
            layers = self.model.layers
            self.traced.append(layers[2])
            layers[2] = self.a if layers[2] is self.b else self.b
            return original(*args, **kwargs)
        monkeypatch.setattr(driver, "codegen", swapping)


def test_a_model_edited_during_every_compile_of_a_call_says_so(monkeypatch):
    """A RuntimeError says so (not the error for a model resized by its user); the next call after the
    edits stop runs the model as it stands."""
    from tinycomp import driver

    edited = _SwappedDuringEveryCompile(monkeypatch)
    with pytest.raises(RuntimeError, match=r"^Sequential changed again while each of 3 compiles for this call ran: "
                                           r"another thread is editing its layers"):
        edited.fast(edited.x)
    monkeypatch.setattr(driver, "codegen", edited.codegen)
    assert_matches_eager(edited.fast(edited.x).data, edited.model, edited.x)


def test_layers_swapped_back_and_forth_during_every_compile_say_so_too(monkeypatch):
    """Swapped back before the guard looked and forth again before the parameters were read (the
    guard saw the objects it was compiled with): the call named the parameter and told the user to
    compile again, which the call does itself; it now says the model kept changing, and why."""
    from tinycomp import binding

    edited = _SwappedDuringEveryCompile(monkeypatch)
    unchanged = binding.StructureGuard.unchanged

    def swapped_back(self):  # the layer the trace saw, by the time the guard looks
        if edited.traced:
            edited.model.layers[2] = edited.traced[-1]
        return unchanged(self)

    monkeypatch.setattr(binding.StructureGuard, "unchanged", swapped_back)
    with pytest.raises(RuntimeError, match=r"^Sequential changed again while each of 3 compiles for this call ran: "
                                           r".* \(the last: parameter '2.weight' now has shape \(8, \d\), but the "
                                           r"model was compiled with \(8, \d\)\)$"):
        edited.fast(edited.x)


class _Probe(tc.nn.Layer):
    """Dropout after a Linear; while `during` is set, its forward first runs `during()` (once)."""

    def __init__(self):
        self.fc, self.drop, self.during = tc.nn.Linear(4, 4), tc.nn.Dropout(0.5), None

    def forward(self, x):
        during, self.during = self.during, None
        if during is not None:
            during()
        return self.drop(self.fc(x))


def _from_another_thread(model) -> list:
    """What another thread sees of the model's flags, and its model.eval(), mid-run."""
    seen = []

    def other() -> None:
        seen.append((model.training, model.drop.training))
        model.eval()

    def during() -> None:
        worker = threading.Thread(target=other)
        worker.start()
        worker.join(30)
    model.during = during
    return seen


def test_compiling_changes_no_flag_another_thread_sees():
    """The trace ran the layers in eval mode by setting their flags: another thread's eager
    training-mode calls ran without dropout meanwhile, and its model.eval() was undone by the restore."""
    model = _Probe().train()
    seen = _from_another_thread(model)
    with pytest.warns(UserWarning, match="dropout"):
        tc.compile(model, input_shape=(None, 4))
    assert seen == [(True, True)]
    assert not model.training and not model.drop.training


def test_a_checked_call_changes_no_flag_another_thread_sees():
    from tinycomp.nn import Tensor

    model = _Probe().train()
    with pytest.warns(UserWarning, match="dropout"):
        fast = tc.compile(model, input_shape=(None, 4), check=True)
    x = np.ones((3, 4), np.float32)
    seen = _from_another_thread(model)
    fast(x)  # its eager run, in eval mode like the compiled code, sees `during`
    assert seen == [(True, True)]
    assert not model.drop.training
    np.testing.assert_allclose(fast(x).data, model(Tensor(x)).data, rtol=1e-6, atol=1e-6)
