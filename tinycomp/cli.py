"""The `tinycomp` command: `demo`, `dump`, `export` and `bench` (also `python -m tinycomp`)."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import inspect
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from . import compile as compile_model
from .checks import positive_number
from .codegen.target import TARGET_NAMES
from .export import WEIGHTS
from .export import export as export_model
from .frontend.inputs import first_layer, inferred_input_shape, input_signature, required_inputs
from .frontend.layers import Layer, Sequential
from .ir.printer import GraphvizNotFound, render_dot, to_dot

STAGE_CHOICES = ("traced", "optimized", "llvm", "asm", "all")


class UsageError(Exception):
    """A problem with what the user asked for: reported as one line, exit code 2."""


# --------------------------------------------------------------------------- demo

def reference_mlp() -> Sequential:
    from .nn import Dropout, Linear, ReLU, Sequential, manual_seed

    manual_seed(0)
    return Sequential(Linear(784, 256), ReLU(), Dropout(0.5), Linear(256, 128), ReLU(), Dropout(0.3),
                      Linear(128, 10))


def _median_us(fn: Any, budget_s: float = 0.3) -> float:
    fn()
    reps: list[float] = []
    deadline = time.perf_counter() + budget_s
    while time.perf_counter() < deadline or len(reps) < 5:
        t = time.perf_counter()
        fn()
        reps.append(time.perf_counter() - t)
    return float(np.median(reps)) * 1e6


def _pin_blas_threads(n: int) -> tuple[Any, str]:
    """(a context pinning NumPy's BLAS to n threads where threadpoolctl is installed, what it does)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext(), ("NumPy's BLAS on its default threads: threadpoolctl, which pins it, is "
                                          "not installed (pip install -e '.[bench]')")
    return threadpool_limits(n), f"BLAS pinned to {n} thread{'s' if n > 1 else ''}"


def run_demo(args: argparse.Namespace) -> int:
    pinned, blas = _pin_blas_threads(1)
    with pinned:
        return _demo(args, blas)


def _demo(args: argparse.Namespace, blas: str) -> int:
    from .bench.models import MODELS, numpy_function
    from .frontend.tensor import Tensor
    from .parity import check_parity, float64_reference

    model = reference_mlp()
    model.eval()  # what the compiled model computes: dropout off (a new model is in training mode)
    params = model.parameters()
    n_params = sum(p.size for p in params)
    print(f"model: {model!r}\n")
    print(f"parameters: {n_params:,} ({n_params * 4:,} bytes = {n_params * 4 / 1024:.0f} KB of float32)")
    fast = compile_model(model, input_shape=(None, 784), threads=args.threads)
    print(f"compiled in {fast.stats.compile_ms:.1f} ms"
          f"{' (object code from the on-disk cache)' if fast.stats.cache_hits else ''}\n")
    print("== traced graph ==\n" + fast.dump("traced") + "\n")
    print("== optimized graph ==\n" + fast.dump("optimized") + "\n")
    print("== fusion report ==\n" + fast.explain() + "\n")

    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 784)).astype(np.float32)
    eager = model(Tensor(x)).data
    compiled = fast(x).data
    reference = float64_reference(fast.graph, x)
    report = check_parity(compiled, eager, reference)
    print(f"output shape: {fast(x).shape}")
    print(f"parity vs eager (float64 reference): {'OK' if report.ok else 'FAILED'} — {report}\n")

    threads = "all cores where it pays" if args.threads is None else args.threads
    numpy_mlp = numpy_function(MODELS["mlp"], MODELS["mlp"].weights(model))  # README's baseline
    print(f"latency, median ({blas}; compiled threads: {threads}); NumPy is the same MLP "
          "written as NumPy expressions, as in README's table; x NumPy = compiled time / NumPy time")
    print(f"{'batch':>6} {'NumPy us':>10} {'eager us':>10} {'compiled us':>12} {'x NumPy':>8}")
    for batch in (1, 32, 512):
        xb = rng.standard_normal((batch, 784)).astype(np.float32)
        tb = Tensor(xb)
        tn = _median_us(lambda xb=xb: numpy_mlp(xb))
        te = _median_us(lambda tb=tb: model(tb))
        tcm = _median_us(lambda xb=xb: fast(xb))
        print(f"{batch:>6} {tn:>10.1f} {te:>10.1f} {tcm:>12.1f} {tcm / tn:>8.2f}")
    print("\n(`tinycomp bench`, after pip install -e '.[bench]', measures properly: each engine in its own "
          "process, medians, p90, ONNX Runtime "
          "and torch baselines)")
    return 0 if report.ok else 1


# --------------------------------------------------------------------------- dump

def _model_file(target: str) -> Path | None:
    """The file a MODEL's `path/to/file.py` part names, or None for a module name."""
    return Path(target) if target.endswith(".py") or "/" in target else None


def load_factory(spec: str) -> Any:
    """`module:factory` or `path/to/file.py:factory` -> the factory callable."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise UsageError(f"MODEL must be 'module:factory' or 'path/to/file.py:factory'; got {spec!r}")
    path = _model_file(target)
    if path is not None:
        if not path.is_file():
            raise UsageError(f"model file {path} is a folder, not a Python file" if path.is_dir()
                             else f"model file not found: {path}")
        loader_spec = importlib.util.spec_from_file_location(path.stem, path)
        if loader_spec is None or loader_spec.loader is None:
            raise UsageError(f"cannot load {path} as Python source: a model file must end in .py")
        module = importlib.util.module_from_spec(loader_spec)
        loader_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise UsageError(f"cannot import module {target!r}: {exc}") from exc
    factory = getattr(module, attr, None)
    if factory is None:
        raise UsageError(f"{target} has no attribute {attr!r}")
    return factory


INPUT_SHAPE_HELP = ("batch,features..., e.g. N,784; repeat it once per input of a forward() of several, in its "
                    "order (--input-shape N,16 --input-shape N,4), an input after the first without N being one "
                    "array shared by every row (e.g. 8,8)")
INFERRED_SHAPE_HELP = (" (default: the in_features of a Sequential's first Linear, or the shape of an imported model's "
                       "InputShape)")


def parse_input_shape(text: str) -> tuple:
    try:
        dims = [None if d.strip().upper() in ("N", "NONE", "?") else int(d) for d in text.split(",")]
    except ValueError:
        raise UsageError(f"--input-shape must be comma-separated sizes like N,784; got {text!r}") from None
    if len(dims) < 2 or any(d is None or d <= 0 for d in dims[1:]):
        raise UsageError(f"--input-shape must be batch,features... with positive features (e.g. N,784); got {text!r}")
    if dims[0] is not None:  # it was taken and then ignored: the dump showed, the header took, (N, ...)
        raise UsageError(f"--input-shape must start with the batch as N, which the compiled code takes at run time "
                         f"(e.g. N,784); got {text!r}")
    return tuple(dims)


def parse_input_shapes(texts: list[str]) -> tuple | list[tuple]:
    """compile()'s input_shape from the repeated --input-shape: (None, features...) for one input;
    for a forward() of several, one shape per input in its order, one without N shared by every row."""
    first, *others = texts
    shape = (None, *parse_input_shape(first)[1:])
    return [shape, *(parse_other_input_shape(text, i) for i, text in enumerate(others, start=1))] if others else shape


def parse_other_input_shape(text: str, index: int) -> tuple:
    """An input after the first: `N,64` with the batch, or `64,64` (no N) for one shared by every row."""
    try:
        dims = [None if d.strip().upper() in ("N", "NONE", "?") else int(d) for d in text.split(",")]
    except ValueError:
        raise UsageError(f"--input-shape #{index + 1} must be comma-separated sizes like N,64 or 64,64; "
                         f"got {text!r}") from None
    body = dims[1:] if dims[:1] == [None] else dims
    if not body or any(d is None or d <= 0 for d in body):
        raise UsageError(f"--input-shape #{index + 1} must be N,features... (batched) or features... (shared by "
                         f"every row) with positive sizes, e.g. N,64 or 64,64; got {text!r}")
    return tuple(dims)


@contextlib.contextmanager
def _model_folder_on_path(spec: str) -> Any:
    """While a model file loads and its factory runs, its folder is first on sys.path: it imports
    its sibling modules as under `python file.py`, also lazily inside the factory. A module name is
    looked up from the working directory first, as `python -m tinycomp` does (the `tinycomp`
    script's own folder is the venv's bin/)."""
    path = _model_file(spec.rpartition(":")[0])
    if path is not None and not path.is_file():
        yield
        return
    folder = str(path.resolve().parent) if path is not None else os.getcwd()
    sys.path.insert(0, folder)
    try:
        yield
    finally:
        sys.path.remove(folder)


def build_model(spec: str) -> Layer:
    with _model_folder_on_path(spec):
        factory = load_factory(spec)
        if callable(factory) and not isinstance(factory, Layer):
            _check_takes_no_arguments(spec, factory)
            model = factory()
        else:
            model = factory
    if not isinstance(model, Layer):
        raise UsageError(f"{spec} must return a tinycomp Layer; it returned {type(model).__name__}")
    return model


def _check_takes_no_arguments(spec: str, factory: Callable) -> None:
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):  # no signature to read (a builtin): calling it will tell
        return
    try:
        sig.bind()
    except TypeError:
        raise UsageError(f"{spec} must be a Layer, or a function or class called with no arguments that returns "
                         f"one; it takes {sig}") from None


def infer_input_shape(model: Layer) -> tuple:
    """(None, width) for a model whose first layer is a Linear (also inside nested Sequentials), the
    shape of an imported model's input check (InputShape)."""
    shape = inferred_input_shape(model)
    if shape is None:
        raise UsageError(f"cannot infer the input width of this {type(model).__name__}: its first layer is "
                         f"{type(first_layer(model)).__name__}, not a Linear or an imported model's InputShape; "
                         "pass --input-shape N,FEATURES (e.g. N,784)")
    return shape


def check_shape_count(model: Layer, texts: list[str] | None) -> None:
    """A forward() of several required inputs given fewer --input-shape: say how to give the others
    (its trace would end in Python's bare TypeError for the missing argument)."""
    sig = input_signature(model)
    if sig is None:
        return
    required = required_inputs(sig)
    given = len(texts or ())
    if len(required) > max(given, 1):  # none given: dump infers one
        shapes = f"was given {given} --input-shape" if given else "was given no --input-shape (one is inferred)"
        raise UsageError(f"{type(model).__name__}.forward{sig} takes {len(required)} inputs ({', '.join(required)}) "
                         f"and {shapes}: a forward() of several inputs takes --input-shape once per input, in its "
                         "order (e.g. --input-shape N,16 --input-shape N,4)")


def run_dump(args: argparse.Namespace) -> int:
    model = build_model(args.model)
    check_shape_count(model, args.input_shape)
    input_shape = parse_input_shapes(args.input_shape) if args.input_shape else infer_input_shape(model)
    model.eval()  # what an inference compile shows; a freshly built model is in training mode
    fast = compile_model(model, input_shape=input_shape)
    stage = args.stage or ("all" if args.out else "optimized")
    stages = ("traced", "optimized", "llvm", "asm") if stage == "all" else (stage,)
    if args.dot and not {"traced", "optimized"} & set(stages):
        raise UsageError(f"--dot draws the traced or optimized graph; --stage {stage} has none to draw")
    if args.dot and args.out is None and len(stages) > 1:  # two digraphs in a row are no one DOT document
        raise UsageError("--dot without --out prints one graph: give --stage traced or --stage optimized, "
                         "or --out DIR for every stage's")
    if args.out is None:
        if args.dot:  # only the DOT of the one graph stage, for `| dot -Tsvg`
            graph = fast._require("dot").traced if stage == "traced" else fast.graph
            print(to_dot(graph, name=stage))
            return 0
        for stage in stages:
            print(f"==== {stage} ====\n{fast.dump(stage)}")
        return 0
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out must be a folder (dump writes a file per stage into it); {args.out} is a file")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i, (name, text) in enumerate(fast.pass_dumps(), start=1):  # optimized: how each pass got there
        if "optimized" in stages or (i == 1 and "traced" in stages):
            written.append(_write(out / f"{i:02d}-{name}.txt", text))
    if "llvm" in stages:
        written.append(_write(out / "model.ll", fast.dump("llvm")))
    if "asm" in stages:
        written.append(_write(out / "model.s", fast.dump("asm")))
    dots = args.dot or stage == "all"
    if dots and "traced" in stages:
        written.append(_write(out / "traced.dot", to_dot(fast._require("dot").traced, name="traced")))
    if dots and "optimized" in stages:
        dot = to_dot(fast.graph, name="optimized")
        written.append(_write(out / "graph.dot", dot))
        try:
            written.append(render_dot(dot, out / "graph.svg"))
        except GraphvizNotFound:
            print("note: Graphviz `dot` not found; wrote graph.dot only (apt-get install graphviz for SVG)",
                  file=sys.stderr)
    for path in written:
        print(path)
    return 0


def _write(path: Path, text: str) -> Path:
    path.write_text(text if text.endswith("\n") else text + "\n")
    return path


# --------------------------------------------------------------------------- export

def run_export(args: argparse.Namespace) -> int:
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise UsageError(f"--out must be a folder (export writes its files into it); {args.out} is a file")
    model = build_model(args.model)
    check_shape_count(model, args.input_shape)
    if not args.training:
        model.eval()  # an inference export, as dump shows it; a freshly built model is in training mode
    input_shape = parse_input_shapes(args.input_shape) if args.input_shape else infer_input_shape(model)
    result = export_model(model, args.out, input_shape=input_shape, target=args.target,
                          name=args.name, weights=args.weights, training=args.training)
    for path in result.files.values():
        print(path)
    where = "in the object" if args.weights == "embedded" else f"in {result.files['weights'].name}"
    print(f"{args.target}: object {result.object_bytes:,} bytes, weights {result.weights_bytes:,} bytes ({where}), "
          f"scratch {result.scratch_bytes(1):,} bytes at batch 1 ({result.scratch_bytes_per_row:,} per row "
          f"+ {result.scratch_bytes_fixed:,})")
    if args.training:
        layers = result.dropout_layers
        print(f"training: {layers} Dropout layer{'s' * (layers != 1)} draw{'s' * (layers == 1)} masks from the "
              f"entry's (seed, offset): seed = tinycomp.nn.dropout_key(s) for manual_seed(s), offset = the call number")
    return 0


# --------------------------------------------------------------------------- main

def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tinycomp", description="Compile TinyTorch-style models to native code.")
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="show tracebacks on errors (before or after the subcommand)")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="compile the reference MLP, show its IR, check parity, time it")
    demo.add_argument("--threads", type=positive_number(int), default=None,
                      help="native threads (default: all cores where it pays)")
    dump = sub.add_parser("dump", help="write the IR of every stage of a model")
    dump.add_argument("model", help="module:factory or path/to/file.py:factory returning a Layer")
    dump.add_argument("--input-shape", action="append", help=INPUT_SHAPE_HELP + INFERRED_SHAPE_HELP)
    dump.add_argument("--stage", choices=STAGE_CHOICES, default=None,
                      help="what to show (default: optimized; with --out: all)")
    dump.add_argument("--out", help="folder for one file per stage and pass (01-traced.txt, model.ll, ...)")
    dump.add_argument("--dot", action="store_true",
                      help="Graphviz DOT (and SVG when `dot` exists) of the traced or optimized stage asked for: "
                           "printed alone (pipe it to `dot -Tsvg`), or written into --out beside the text (--stage "
                           "all, the default there, writes them anyway)")
    export = sub.add_parser("export", help="compile a model ahead of time into a C library (.o, .h) for a target")
    export.add_argument("model", help="module:factory or path/to/file.py:factory returning a Layer")
    export.add_argument("--input-shape", action="append",
                        help=INPUT_SHAPE_HELP + INFERRED_SHAPE_HELP)
    export.add_argument("--target", choices=TARGET_NAMES, default="host", help="what the code runs on (default: host)")
    export.add_argument("--out", required=True, help="folder for <name>.o, <name>.h and the rest")
    export.add_argument("--name", default="model", help="prefix of the C symbols and file names (default: model)")
    export.add_argument("--weights", choices=WEIGHTS, default="embedded",
                        help="embedded in the object (default) or external, in <name>.bin")
    export.add_argument("--training", action="store_true",
                        help="keep dropout active: the entry takes (seed, offset) last and draws the masks eager "
                             "training draws (layers numbered from the last manual_seed, as in this process)")
    sub.add_parser("bench", help="benchmark eager vs compiled (see `tinycomp bench --help`)", add_help=False)
    return parser


VERBOSE_FLAGS = ("-v", "--verbose")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = any(a in VERBOSE_FLAGS for a in argv)
    argv = [a for a in argv if a not in VERBOSE_FLAGS]  # -v means the same before or after the subcommand
    if argv[:1] == ["bench"]:  # bench parses its own arguments (its --help is its own parser's)
        from .bench import bench_main  # type: ignore[attr-defined]

        return run_reported("bench", lambda: bench_main(argv[1:]), verbose)
    args = make_parser().parse_args(argv)
    command = {"demo": run_demo, "dump": run_dump, "export": run_export}[args.command]

    return run_reported(args.command, lambda: command(args), verbose)


def run_reported(name: str, command: Callable[[], int], verbose: bool) -> int:
    """Run a subcommand; an exception is one clear line for users (the whole story with --verbose):
    exit code 2 for a UsageError, 1 for anything else. argparse's own refusals exit 2 by themselves."""
    try:
        return command()
    except BrokenPipeError:  # `tinycomp dump ... | head` closed the pipe: stop quietly, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        return 0
    except Exception as exc:
        if verbose:
            traceback.print_exc()
        else:
            kind = "" if isinstance(exc, UsageError) else f"{type(exc).__name__}: "
            print(f"tinycomp {name}: error: {kind}{exc}", file=sys.stderr)
        return 2 if isinstance(exc, UsageError) else 1
