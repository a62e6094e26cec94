"""How `from_torch` runs a module's forward at import: traced by torch.fx (three ways, the module left
as it was), and run by the traced graph on random inputs at the two batch sizes of `BATCHES`, on
copies, with torch's random stream left where it was."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

from .graph_rules import BATCHES
from .torch_ops import AUGMENTED


def symbolic_trace(torch: Any, m: Any, concrete_args: dict[str, Any] | None) -> Any:
    """`torch.fx.symbolic_trace` of `m`'s forward, tried three ways, the first error raised if none works:
    - on a copy, its buffers read through `self` traced as get_attr nodes: then `self.mask[:T, :T]` with
      T read from x.size() is recorded (a buffer as a plain tensor cannot be sliced by a traced size)
      and is fixed where both example runs agree;
    - on a copy, as fx does by default: a forward that assigns to a buffer (`self.calls += 1`) would
      put a traced value in it the first way;
    - on `m` itself, buffers traced, its state put back afterwards: a helper that closes over `m`'s own
      modules (minGPT's `self.mlpf = lambda x: m.c_proj(...)`) calls modules a copy does not hold."""
    first: Exception | None = None
    for proxy_buffers, on_copy in ((True, True), (False, True), (True, False)):
        try:
            with (runnable(torch, m) if on_copy else state_kept(torch, m)) as root:
                tracer = augmented_tracer(torch)
                tracer.proxy_buffer_attributes = proxy_buffers
                graph = tracer.trace(root, concrete_args)
                if not any(isinstance(b, torch.fx.Proxy) for b in tracer.root.buffers()):
                    return torch.fx.GraphModule(tracer.root, graph, type(m).__name__)
        except Exception as exc:
            first = first or exc
    raise first or TypeError("its forward writes traced values into its buffers")


def augmented_tracer(torch: Any) -> Any:
    """A `torch.fx.Tracer` whose proxies record `h += y` as a call of `operator.iadd` (and -=, *=, /=,
    **=: `torch_ops.AUGMENTED`). fx's own Proxy has no such methods, so Python falls back to `h = h
    + y`, a new value, where on a tensor `h += y` writes h itself and every other name of h (`skip =
    h`) sees the sum. The importer reads the call as the in-place op it is on a tensor
    (`torch_ops.out_of_place`); on a traced size it is the plain sum, as in Python. The graph module
    runs it as written."""
    def method(op: Any) -> Any:
        return lambda self, other: self.tracer.create_proxy("call_function", op, (self, other), {})

    methods = {f"__{op.__name__}__": method(op) for op in AUGMENTED}  # operator.iadd -> __iadd__
    proxy_type = type("AugmentedProxy", (torch.fx.Proxy,), methods)
    tracer_type = type("AugmentedTracer", (torch.fx.Tracer,), {"proxy": lambda self, node: proxy_type(node, self)})
    return tracer_type()


@contextlib.contextmanager
def state_kept(torch: Any, m: Any) -> Iterator[Any]:
    """`m`, and afterwards back as it was whatever running or tracing it changed: each module's
    attributes (its training flag among them) and the contents of the lists, dicts and sets they hold,
    nested too (a forward that appends to `self.seen`), and the values of its parameters, buffers
    (running statistics) and other tensor attributes (`self.n += 1`). Modules held outside `m`'s
    module tree (in a plain list) are not covered."""
    attributes = [(mod, dict(mod.__dict__)) for mod in m.modules()]
    contents: list[tuple[Any, Any]] = []
    for mod, saved in attributes:
        for held in (*saved.values(), mod._parameters, mod._buffers, mod._modules):
            containers_in(held, contents)
    tensors = {id(t): t for t in (*m.parameters(), *m.buffers())}
    tensors |= {id(t): t for _, saved in attributes for t in saved.values() if isinstance(t, torch.Tensor)}
    values = [(t, t.detach().clone()) for t in tensors.values()]
    try:
        yield m
    finally:
        for mod, saved in attributes:
            mod.__dict__.clear()
            mod.__dict__.update(saved)
        for container, saved_contents in contents:
            container.clear()
            container.update(saved_contents) if not isinstance(container, list) else container.extend(saved_contents)
        with torch.no_grad():
            for t, value in values:
                t.copy_(value)


def containers_in(value: Any, out: list[tuple[Any, Any]], depth: int = 0) -> None:
    """(container, a shallow copy) for `value` and the lists, dicts and sets nested in it (`self.log =
    {"calls": []}`), to put their contents back after a run."""
    if type(value) not in (list, dict, set) or depth > 8:
        return
    out.append((value, copy.copy(value)))
    for item in (value.values() if isinstance(value, dict) else value):
        containers_in(item, out, depth + 1)


@contextlib.contextmanager
def runnable(torch: Any, m: Any) -> Iterator[Any]:
    """Module `m` to run at import without changing the user's module: a copy, or where it cannot be
    copied (deepcopy refuses a tensor attribute that is not a leaf) `m` itself, put back afterwards."""
    try:
        m_copy = copy.deepcopy(m)
    except Exception:
        with state_kept(torch, m):
            yield m
        return
    yield m_copy


def float_dtype(torch: Any, m: Any) -> Any:
    """The dtype an input to module `m` takes: its first floating parameter's, else float32."""
    return next((p.dtype for p in m.parameters() if p.is_floating_point()), torch.float32)


def example_runs(torch: Any, gm: Any, sample: tuple[int, ...]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every node's value when the traced forward runs on random inputs of (b, *sample), b each of BATCHES."""
    dtype = float_dtype(torch, gm)

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n: Any) -> Any:
            result = super().run_node(n)
            self.seen[n.name] = result
            return result

    runs = []
    generator = torch.Generator().manual_seed(0)
    # one fork for both runs: torch's random stream is left as it was, and a number drawn in forward
    # differs between the runs, so it is never taken for a constant
    with torch.no_grad(), torch.random.fork_rng(devices=[]), runnable(torch, gm) as gm:
        for batch in BATCHES:
            recorder = Recorder(gm)
            recorder.seen = {}
            recorder.run(torch.randn(batch, *sample, generator=generator, dtype=dtype))
            runs.append(recorder.seen)
    return runs[0], runs[1]
