"""`tinycomp bench`: every engine in its own process, parity before timing, one table of ratios.

Without --models/--batch it runs the standard suite: the reference MLP at batch 1..8192 and the
wide/odd/deep shapes at batch 256, every engine, plus compile times and the measured FMA peak.
Each round starts a fresh process per engine and asks every engine in turn for the same point
(numpy, eager, compiled, ... at batch 1, then all at batch 8, ...; each round starts with another
engine), so a burst of load on the shared host hits every engine alike and no engine keeps one
process's luck. A row's samples are pooled over the rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

from ..checks import positive_ints, positive_number, seed_number
from . import render, report
from .models import MODELS
from .runner import ENGINES, PARITY_EXIT, unavailable_reason

SUITE = [("mlp", [1, 8, 32, 128, 512, 2048, 8192]), ("wide", [256]), ("odd", [256]), ("deep", [256])]
QUICK_SUITE = [("mlp", [1, 32, 512]), ("wide", [256]), ("odd", [256]), ("deep", [256])]
OTHER_BATCHES = {"block": [1, 8, 32], "block-causal": [1, 8, 32]}  # models outside the suite: their default batches
DEFAULT_ENGINES = ["numpy", "eager", "compiled", "compiled-all", "onnxruntime", "torch", "torch.compile"]
STDOUT = "-"  # --json - / --markdown -: the file goes to stdout


class BenchFailure(Exception):
    """A runner failed (parity mismatch or crash): the message names engine, model and batch."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tinycomp bench",
        description="Benchmark tinycomp against NumPy, its own eager mode, ONNX Runtime and torch (when "
                    "installed). Each engine runs in its own process with BLAS threads pinned; every "
                    "result is parity-checked before it is timed. Without --models/--batch: the standard suite (the "
                    "reference MLP at batch 1 to 8192, the wide, odd and deep models at batch 256).")
    p.add_argument("--models", help="comma list of models: " + "; ".join(f"{name} = {m.description}" for name, m in
                                                                     MODELS.items()) + ". Default: the suite's")
    p.add_argument("--batch", type=positive_ints,
                   help="comma list of batch sizes for every model (default: each model's in the suite)")
    p.add_argument("--engines", help=f"comma list of engines (default: {','.join(DEFAULT_ENGINES)}; also "
                                     f"{','.join(e for e in ENGINES if e not in DEFAULT_ENGINES)})")
    p.add_argument("--repeat", type=positive_number(int), default=500,
                   help="at most this many timed calls per point and round")
    p.add_argument("--budget", type=positive_number(float), default=0.25,
                   help="seconds of timed calls per point and round")
    p.add_argument("--rounds", type=positive_number(int), default=5,
                   help="rounds over the points; each round every engine times each point in turn")
    p.add_argument("--seed", type=seed_number, default=0, help="weights and inputs seed (same in every process)")
    p.add_argument("--json", metavar="FILE", help="write every row, the targets and the environment as JSON "
                                                   "(-: to stdout, the report then to stderr)")
    p.add_argument("--markdown", metavar="FILE", help="write the tables as Markdown (for benchmarks/RESULTS.md; "
                                                       "-: to stdout, the report then to stderr)")
    p.add_argument("--plot", metavar="FILE.png", help="latency and speed-up vs batch size (needs matplotlib)")
    p.add_argument("--quick", action="store_true",
                   help="short run: fewer batch sizes, 1 round, small time budget, short peak and compile runs")
    p.add_argument("--no-compile-times", action="store_true", help="skip the compile-time measurement")
    p.add_argument("--peak", type=positive_number(float), metavar="GFLOPS",
                   help="use this per-core FMA peak instead of measuring")
    return p


def usage_error(message: str) -> NoReturn:
    """A bad argument: one line on stderr, exit code 2 (as argparse's own)."""
    print(f"tinycomp bench: {message}", file=sys.stderr)
    raise SystemExit(2)


def _names(text: str, what: str, known: Any) -> list[str]:
    """A comma list naming at least one of `known`."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        usage_error(f"{what} must name at least one of {', '.join(known)}; got {text!r}")
    for n in names:
        if n not in known:
            usage_error(f"unknown {what.lstrip('-').rstrip('s')} {n!r}; {what.lstrip('-')} are {', '.join(known)}")
    return names


def check_output_paths(args: argparse.Namespace) -> None:
    """Refuse, before minutes of measuring, an output file the run could not write at its end: a
    folder's name, a file in a folder that does not exist, a plot in a format matplotlib cannot save."""
    if args.json == args.markdown == STDOUT:
        usage_error("--json - and --markdown -: only one of them can go to stdout")
    if args.plot == STDOUT:
        usage_error("--plot -: expected a file name (FILE.png), got - (a picture is not written to stdout)")
    for flag in ("json", "markdown", "plot"):
        path = getattr(args, flag)
        if path is None or path == STDOUT:
            continue
        if Path(path).is_dir():
            usage_error(f"--{flag} {path}: expected a file name, got a folder")
        if not Path(path).resolve().parent.is_dir():
            usage_error(f"--{flag} {path}: folder {Path(path).resolve().parent} does not exist")
    why = None if args.plot is None else report.unplottable_format(args.plot)
    if why:
        usage_error(f"--plot {args.plot}: {why}")


def _plan(args: argparse.Namespace) -> list[tuple[str, list[int]]]:
    suite = QUICK_SUITE if args.quick else SUITE
    if args.models is None and args.batch is None:
        return suite
    models = [m for m, _ in suite] if args.models is None else _names(args.models, "--models", MODELS)
    if args.batch is None:
        defaults = dict(suite)
        return [(m, defaults.get(m, OTHER_BATCHES.get(m, [1, 32, 256]))) for m in models]
    return [(m, args.batch) for m in models]


def _engines(args: argparse.Namespace, notes: list[str]) -> list[str]:
    chosen = list(DEFAULT_ENGINES) if args.engines is None else _names(args.engines, "--engines", ENGINES)
    if "numpy" not in chosen:
        chosen.insert(0, "numpy")  # every ratio is against NumPy in the same run
    ready = []
    for e in chosen:
        why = unavailable_reason(e)
        if why:
            notes.append(f"skipped engine {e}: {why}")
        else:
            ready.append(e)
    return ready


# Every engine process gets fixed glibc malloc thresholds (unless GLIBC_TUNABLES is set already). With
# glibc's dynamic ones, an engine's large temporaries are either mmap'ed afresh on every call (page
# faults each time) or reused from the heap, depending on which points ran before in its process:
# NumPy's block at batch 32 measured 14.3 or 22 ms by the order of the models alone. Fixed, it
# measures 14.2-15.0 ms in either order, and no engine's time depends on the points before it.
ALLOCATOR_TUNABLES = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824"


def _child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("GLIBC_TUNABLES", ALLOCATOR_TUNABLES)
    root = str(Path(__file__).resolve().parents[2])  # the folder holding the tinycomp package
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra or {})
    return env


def _runner_cmd(spec: dict) -> list[str]:
    return [sys.executable, "-m", "tinycomp.bench.runner", json.dumps(spec)]


def _parity_failure(msg: dict) -> BenchFailure:
    return BenchFailure(
        f"PARITY FAILURE: engine {msg['engine']!r} on model {msg['model']!r} at batch {msg['batch']} "
        f"differs from the eager model beyond the parity rule: {msg['detail']}", PARITY_EXIT)


def _record(points: dict, extras: dict, msg: dict) -> None:
    """Pool one timed slice of a point into `points`; engine facts (compile time...) into `extras`."""
    key = (msg["engine"], msg["model"], msg["batch"])
    pt = points.setdefault(key, {"samples": [], "threads": msg["threads"]})
    if "chunks" in msg:
        pt["chunks"] = msg["chunks"]
    pt["samples"] += msg["samples"]
    if "bare_samples" in msg:
        pt.setdefault("bare_samples", []).extend(msg["bare_samples"])
    for k in ("compile_ms", "cache_hit", "version"):
        if k in msg:
            extras.setdefault((msg["engine"], msg["model"]), {})[k] = msg[k]


def _run_round(engines: list[str], plan: list[tuple[str, list[int]]], seed: int, repeat: int, budget: float,
               points: dict, extras: dict, blas: dict, progress: _Progress) -> None:
    """One round: a fresh process per engine (set up and parity-checked before any timing), then
    every point timed by every engine in turn. Fresh processes each round: where a process's memory
    lands changes its speed (batch 1 moved between ~19 and ~26 us by process, for every engine);
    point by point: the host's speed also moves within seconds, and so hits every engine alike."""
    procs: list[_EngineProcess] = []
    try:
        for engine in engines:
            procs.append(_EngineProcess({"mode": "serve", "engine": engine, "seed": seed,
                                         "plan": [{"model": m, "batches": b} for m, b in plan]}))
            blas[engine] = {"threads": procs[-1].info.get("threads"), "blas": procs[-1].info.get("blas")}
        for model, batches in plan:
            for batch in batches:
                for proc in procs:
                    _record(points, extras, proc.time(model, batch, repeat, budget))
                    progress.update(f"{proc.engine} {model}@{batch}")
    finally:
        for proc in procs:
            proc.close()


def _run_child(spec: dict, env: dict[str, str] | None = None) -> Iterator[dict]:
    """Start one runner process and yield its JSON lines as they arrive; raise BenchFailure on failure."""
    with tempfile.TemporaryFile("w+") as err, subprocess.Popen(
            _runner_cmd(spec), stdout=subprocess.PIPE, stderr=err, text=True, env=_child_env(env)) as proc:
        assert proc.stdout is not None
        parity: dict | None = None
        for line in proc.stdout:
            msg = json.loads(line)
            if msg.get("type") == "parity_error":
                parity = msg
            else:
                yield msg
        code = proc.wait()
        err.seek(0)
        stderr = err.read().strip()
    if parity is not None:
        raise _parity_failure(parity)
    if code != 0:
        what = spec.get("engine") or spec.get("mode")
        raise BenchFailure(f"benchmark runner for {what!r} failed with exit code {code}:\n{stderr[-3000:]}")


class _EngineProcess:
    """One engine's `serve` runner: set up (and parity-checked) once, then timed point by point."""

    def __init__(self, spec: dict):
        self.engine = spec["engine"]
        self._err = tempfile.TemporaryFile("w+")
        self._proc = subprocess.Popen(_runner_cmd(spec), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=self._err, text=True, env=_child_env())
        self.info: dict = {}
        while (msg := self._read())["type"] != "ready":
            if msg["type"] == "engine":
                self.info = msg

    def _read(self) -> dict:
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            code = self._proc.wait()
            self._err.seek(0)
            raise BenchFailure(f"benchmark runner for {self.engine!r} stopped (exit code {code}):\n"
                               f"{self._err.read().strip()[-3000:]}")
        msg = json.loads(line)
        if msg["type"] == "parity_error":
            self.close()
            raise _parity_failure(msg)
        return msg

    def time(self, model: str, batch: int, repeat: int, budget_s: float) -> dict:
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps({"model": model, "batch": batch, "repeat": repeat,
                                           "budget_s": budget_s}) + "\n")
        self._proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self._proc.stdin is not None and not self._proc.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self._proc.stdin.close()
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._err.close()


class _Progress:
    """A tqdm bar on stderr once the run passes a second; without tqdm, silence (and one hint)."""

    def __init__(self, total: int):
        try:
            from tqdm import tqdm

            self.bar: Any = tqdm(total=total, file=sys.stderr, delay=1.0, unit="pt", desc="tinycomp bench",
                                 leave=False)
        except ImportError:
            self.bar = None

    def update(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def environment(peak: dict | None, blas: Any) -> dict:
    import llvmlite
    import llvmlite.binding as llvm
    import numpy as np

    from ..codegen.target import cpuinfo, host
    from ..runtime.threads import available_cores

    cpu_model = cpuinfo("model name") or platform.processor()
    versions = {"python": platform.python_version(), "numpy": np.__version__, "llvmlite": llvmlite.__version__,
                "llvm": ".".join(map(str, llvm.llvm_version_info))}
    for mod in ("onnxruntime", "onnx", "torch", "threadpoolctl"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            versions[mod] = "not installed"
    return {"loadavg": os.getloadavg(), "cpu": cpu_model, "llvm_cpu": host().cpu, "cores": available_cores(),
            "platform": platform.platform(), "allocator": _child_env()["GLIBC_TUNABLES"],
            "versions": versions, "blas": blas, "peak": peak}


def _compile_times(plan: list[tuple[str, list[int]]], repeat: int) -> dict[str, dict]:
    models = [m for m, _ in plan]
    out: dict[str, dict] = {m: {} for m in models}
    with tempfile.TemporaryDirectory(prefix="tinycomp-bench-cache-") as cache_dir:
        phases = [("cold", {"TINYCOMP_CACHE": "0"}), ("fill", {"TINYCOMP_CACHE": "1", "TINYCOMP_CACHE_DIR": cache_dir}),
                  ("warm", {"TINYCOMP_CACHE": "1", "TINYCOMP_CACHE_DIR": cache_dir})]
        for phase, env in phases:
            spec = {"mode": "compile", "phase": phase, "models": models, "repeat": 0 if phase == "fill" else repeat}
            for msg in _run_child(spec, env):
                if phase == "cold":
                    out[msg["model"]].update(cold_ms=msg["median_ms"], cold_first_ms=msg["first_ms"])
                elif phase == "warm":
                    out[msg["model"]].update(warm_ms=msg["median_ms"], warm_first_ms=msg["first_ms"],
                                             warm_cache_hits=msg["cache_hits"])
    return out


def judges_the_peak_fraction(plan: list[tuple[str, list[int]]], engines: list[str]) -> bool:
    """Does the run judge "93 % of the FMA peak" (the MLP compiled, one thread, from batch 128)? Only
    then does the peak child also measure the clocks that bound it (`runner.measure_mlp_clocks`)."""
    return "compiled" in engines and any(m == "mlp" and max(b) >= 128 for m, b in plan)


def run(args: argparse.Namespace) -> int:
    notes: list[str] = []
    plan = _plan(args)
    engines = _engines(args, notes)
    check_output_paths(args)
    if importlib.util.find_spec("threadpoolctl") is None:  # checked before minutes of measuring
        usage_error("pins NumPy's BLAS threads with threadpoolctl, which is not installed; without it the "
                    "1-thread rows would time NumPy on every core: pip install -e '.[bench]'")
    rounds = 1 if args.quick else args.rounds
    budget = min(args.budget, 0.05) if args.quick else args.budget
    repeat = min(args.repeat, 50) if args.quick else args.repeat
    n_points = sum(len(b) for _, b in plan)
    progress = _Progress(rounds * len(engines) * n_points)
    started = time.perf_counter()
    points: dict[tuple[str, str, int], dict] = {}
    blas: dict[str, Any] = {}
    extras: dict[tuple[str, str], dict] = {}
    try:
        peak = None
        if args.peak is not None:
            peak = {"gflops": args.peak, "method": render.PEAK_GIVEN}
        else:
            clock_rounds = (1 if args.quick else 5) if judges_the_peak_fraction(plan, engines) else 0
            for msg in _run_child({"mode": "peak", "seconds": 0.1 if args.quick else 0.5, "stream": True,
                                   "clocks": clock_rounds}):
                peak = msg
        for r in range(rounds):
            _run_round(engines[r % len(engines):] + engines[:r % len(engines)], plan, args.seed, repeat, budget,
                       points, extras, blas, progress)
        compile_times = {} if args.no_compile_times else _compile_times(plan, 2 if args.quick else 5)
        if peak and args.peak is None:  # was a second core free at the end too?
            for msg in _run_child({"mode": "peak", "seconds": 0.1}):
                peak["parallel_efficiency_end"] = msg["parallel_efficiency"]
    except BenchFailure as exc:
        progress.close()
        print(f"tinycomp bench: {exc}", file=sys.stderr)
        return exc.code
    progress.close()
    elapsed = time.perf_counter() - started
    peak_gflops = peak["gflops"] if peak else None
    rows = report.summarize(points, peak_gflops)
    stream, clocks = (peak or {}).get("mlp_weight_stream"), (peak or {}).get("clocks")
    targets = report.check_targets(rows, compile_times, stream["us"] if stream else None,
                                   clocks["gemm_clock_ratio"] if clocks else None)
    env = environment(peak, blas)
    # a JSON or Markdown file written to stdout keeps it to itself: the report goes to stderr then
    with contextlib.redirect_stdout(sys.stderr) if STDOUT in (args.json, args.markdown) else contextlib.nullcontext():
        render.print_report(rows, targets, compile_times, env, notes, extras, elapsed)
    if args.json:
        _write(args.json, json.dumps({
            "command": "tinycomp bench " + " ".join(args.argv), "environment": env, "notes": notes,
            "rows": report.rows_as_dicts(rows), "targets": [t.__dict__ for t in targets],
            "compile_times": compile_times,
            "engine_info": {f"{e}/{m}": v for (e, m), v in extras.items()}, "seconds": elapsed}, indent=1))
    if args.markdown:
        _write(args.markdown, render.markdown(rows, targets, compile_times, env, notes, args.argv))
    if args.plot:
        why_not = report.plot(rows, args.plot)
        if why_not:
            print(f"plot: {why_not}", file=sys.stderr)
        else:
            print(f"plot written to {args.plot}")
    return 0


def _write(path: str, text: str) -> None:
    """`text` to the file `path`, or to stdout for `-`."""
    if path == STDOUT:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    else:
        Path(path).write_text(text)


def bench_main(argv: list[str]) -> int:
    """Entry point for `tinycomp bench ARGS...`; returns the process exit code."""
    args = make_parser().parse_args(argv)
    args.argv = list(argv)
    return run(args)
