"""Turning raw timings into the table, the check of the speed targets, Markdown and a plot."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np

from .models import get_model

BASELINE = "numpy"


@dataclass
class Row:
    model: str
    batch: int
    engine: str
    threads: int
    samples: int
    median_us: float
    p90_us: float
    samples_per_s: float
    gflops: float
    pct_peak: float | None
    vs_numpy: float | None  # engine median / NumPy median, same run (< 1 is faster than NumPy)
    chunks: int | None = None  # compiled engines: row chunks the thread policy chose for this batch
    python_us: float | None = None  # compiled at batch 1: median call minus median bare native call


def summarize(points: dict[tuple[str, str, int], dict], peak_gflops: float | None) -> list[Row]:
    """One row per (model, batch, engine) from the pooled per-call samples of every round."""
    rows = []
    for (engine, model, batch), p in points.items():
        t = np.asarray(p["samples"], dtype=np.float64)
        med, p90 = float(np.median(t)), float(np.percentile(t, 90))
        gflops = get_model(model).flops_per_sample * batch / med / 1e9
        peak = peak_gflops * p["threads"] if peak_gflops else None
        bare = p.get("bare_samples")
        python_us = (med - float(np.median(bare))) * 1e6 if bare else None
        rows.append(Row(model, batch, engine, p["threads"], len(t), med * 1e6, p90 * 1e6, batch / med,
                        gflops, 100 * gflops / peak if peak else None, None, p.get("chunks"), python_us))
    base = {(r.model, r.batch): r.median_us for r in rows if r.engine == BASELINE}
    for r in rows:
        if (r.model, r.batch) in base:
            r.vs_numpy = r.median_us / base[(r.model, r.batch)]
    order = {m: i for i, m in enumerate(dict.fromkeys(r.model for r in rows))}
    rows.sort(key=lambda r: (order[r.model], r.batch, r.threads, r.engine != BASELINE, r.engine))
    return rows


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


HEADER = ("model", "batch", "engine", "thr", "median us", "p90 us", "samples/s", "GFLOP/s", "% peak", "x NumPy")


def table_cells(rows: list[Row]) -> list[tuple[str, ...]]:
    return [(r.model, str(r.batch), r.engine, str(r.threads), _fmt(r.median_us, ".1f"), _fmt(r.p90_us, ".1f"),
             _fmt(r.samples_per_s, ",.0f"), _fmt(r.gflops, ".1f"), _fmt(r.pct_peak, ".0f"), _fmt(r.vs_numpy, ".2f"))
            for r in rows]


def format_table(header: tuple[str, ...], cells: list[tuple[str, ...]]) -> str:
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(header)]
    def line(values: tuple[str, ...]) -> str:  # text columns left, numbers right
        cols = zip(values, widths, strict=True)
        return "  ".join(v.rjust(w) if i > 2 else v.ljust(w) for i, (v, w) in enumerate(cols))

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *(line(c) for c in cells)])


def markdown_table(header: tuple[str, ...], cells: list[tuple[str, ...]]) -> str:
    rule = "|".join("---" if i < 3 else "---:" for i in range(len(header)))
    lines = ["| " + " | ".join(header) + " |", "|" + rule + "|"]
    lines += ["| " + " | ".join(c) + " |" for c in cells]
    return "\n".join(lines)


# ---------------------------------------------------------------- speed targets
@dataclass
class Target:
    target: str
    required: str
    measured: str
    met: bool | None  # None: could not be judged in this run (engine or point missing)


def check_targets(rows: list[Row], compile_times: dict[str, dict], floor_us: float | None = None,
                  gemm_max_fraction: float | None = None) -> list[Target]:
    """Every speed target this run can judge, each ratio with the bound no code can pass: at batch
    1 `floor_us`, the measured time to read the MLP's weights once; above it the FMA peak (the ratio
    of a kernel running at the peak is NumPy's fraction of it, `Row.pct_peak`), of which a GEMM at
    the clock it runs the core at reaches at most `gemm_max_fraction` (`peak.measure_clocks`)."""
    by = {(r.model, r.batch, r.engine): r for r in rows}
    out: list[Target] = []

    def ratio_target(model: str, batch: int, limit: float, label: str) -> None:
        r = by.get((model, batch, "compiled"))
        if r is None or r.vs_numpy is None:
            return
        measured = f"{r.vs_numpy:.2f}"
        numpy_row = by.get((model, batch, "numpy"))
        if batch == 1 and model == "mlp" and floor_us and numpy_row:
            measured += f" (reading the weights alone: {floor_us / numpy_row.median_us:.2f})"
        elif batch > 1 and numpy_row and numpy_row.pct_peak:  # batch 1 streams weights: memory-bound
            measured += f" (at the FMA peak: {numpy_row.pct_peak / 100:.2f})"
        out.append(Target(label, f"compiled / NumPy <= {limit:.2f}", measured, r.vs_numpy <= limit))

    def engine_target(model: str, batch: int, engine: str, limit: float, with_bound: bool) -> None:
        """compiled <= limit x another engine's time, one thread (`with_bound`: beside the ratio a
        kernel at the FMA peak would reach against it)."""
        c, o = by.get((model, batch, "compiled")), by.get((model, batch, engine))
        if not (c and o):
            return
        name, short = ENGINE_NAMES[engine]
        if not with_bound:
            tail = f" {short}"
        else:
            tail = f" (at the FMA peak: {o.pct_peak / 100:.2f})" if o.pct_peak else ""
        out.append(Target(f"{model} batch {batch}, 1 thread", f"compiled <= {limit:.2f} x {name} (1 thread)",
                          f"{c.median_us / o.median_us:.2f} x{tail}", c.median_us <= limit * o.median_us))

    def cold_compile_target(model: str, limit_ms: float) -> None:
        ct = compile_times.get(model, {})
        if "cold_ms" in ct:
            out.append(Target(f"{model} compile, cold (cache off)", f"<= {limit_ms:g} ms",
                              f"{ct['cold_ms']:.1f} ms (first in process {ct['cold_first_ms']:.1f} ms)",
                              ct["cold_ms"] <= limit_ms))

    for b in sorted({r.batch for r in rows if r.model == "mlp"}):  # issue 16's targets
        ratio_target("mlp", b, 0.75 if b == 1 else 0.85, f"mlp batch {b}, 1 thread")
        engine_target("mlp", b, "onnxruntime", 0.85 if b == 1 else 1.0, with_bound=False)
        c = by.get(("mlp", b, "compiled"))
        if b == 1 and c and c.python_us is not None:
            out.append(Target("mlp batch 1, 1 thread", "Python per call <= 1.5 us (call minus bare native call)",
                              f"{c.python_us:.2f} us (bare native call {c.median_us - c.python_us:.1f} us)",
                              c.python_us <= 1.5))
        e, n = by.get(("mlp", b, "eager")), by.get(("mlp", b, "numpy"))
        if b == 1 and e and n:
            out.append(Target("mlp batch 1, eager", "eager / NumPy <= 1.50", f"{e.median_us / n.median_us:.2f}",
                              e.median_us <= 1.5 * n.median_us))
        if b >= 128 and c and c.pct_peak is not None:
            bound = (f"; at its clock a GEMM reaches {100 * gemm_max_fraction:.0f} % at most"
                     if gemm_max_fraction else "")
            out.append(Target(f"mlp batch {b}, 1 thread", ">= 93 % of the measured FMA peak",
                              f"{c.pct_peak:.1f} % ({c.gflops:.1f} GFLOP/s{bound})", c.pct_peak >= 93))
    for m in ("wide", "odd", "deep"):
        ratio_target(m, 256, 0.90, f"{m} batch 256, 1 thread")
    ratio_target("lnmlp", 256, 0.72, "lnmlp batch 256, 1 thread")
    for m in ("block", "block-causal"):  # the transformer block at batch 32 against every baseline
        ratio_target(m, 32, 0.35, f"{m} batch 32, 1 thread")
        for engine in ("onnxruntime", "torch"):
            engine_target(m, 32, engine, 0.85, with_bound=True)
    for (model, batch, engine), r in sorted(by.items()):
        if engine != "compiled-all" or (model, batch, "compiled") not in by:
            continue
        one = by[(model, batch, "compiled")]
        speedup = one.median_us / r.median_us
        # the throughput targets: the reference MLP from batch 512, the transformer block from 64
        if (model == "mlp" and batch >= 512) or (model in ("block", "block-causal") and batch >= 64):
            out.append(Target(f"{model} batch {batch}, all cores", ">= 1.6 x one-thread compiled throughput",
                              f"{speedup:.2f} x", speedup >= 1.6))
        elif r.chunks == 1:  # the policy kept the call on one thread: the very same code path
            out.append(Target(f"{model} batch {batch}, all cores", "not slower than one thread",
                              f"1 chunk: same path as threads=1 (measured {speedup:.2f} x, noise)", True))
        else:
            # "never slower": within the run-to-run noise of a shared host (3 %)
            out.append(Target(f"{model} batch {batch}, all cores", "not slower than one thread (>= 0.97 x)",
                              f"{speedup:.2f} x ({r.chunks} chunks)", speedup >= 0.97))
    cold_compile_target("mlp", 60)
    ct = compile_times.get("mlp", {})
    if "warm_ms" in ct:
        out.append(Target("mlp compile from the disk cache, first in a new process", "<= 10 ms",
                          f"{ct['warm_first_ms']:.1f} ms (later in that process {ct['warm_ms']:.1f} ms)",
                          ct["warm_first_ms"] <= 10))
    for m in ("block", "block-causal"):
        cold_compile_target(m, 250)
    return out


ENGINE_NAMES = {"onnxruntime": ("ONNX Runtime", "ORT"), "torch": ("torch eager", "torch")}  # (in targets, short)
TARGET_HEADER = ("target", "required", "measured", "met")


def target_cells(targets: list[Target]) -> list[tuple[str, ...]]:
    return [(t.target, t.required, t.measured, {True: "yes", False: "NO", None: "?"}[t.met]) for t in targets]


COMPILE_HEADER = ("model", "cold ms", "cold, first in process ms", "warm (disk cache) ms",
                  "warm, first in new process ms")


def compile_cells(compile_times: dict[str, dict]) -> list[tuple[str, ...]]:
    return [(m, _fmt(c.get("cold_ms"), ".1f"), _fmt(c.get("cold_first_ms"), ".1f"), _fmt(c.get("warm_ms"), ".1f"),
             _fmt(c.get("warm_first_ms"), ".1f")) for m, c in compile_times.items()]


def rows_as_dicts(rows: list[Row]) -> list[dict]:
    return [asdict(r) for r in rows]


# ---------------------------------------------------------------- plot
PLOT_HINT = "pip install -e '.[bench]' (or: pip install matplotlib)"


def unplottable_format(path: str) -> str | None:
    """Why matplotlib would refuse to save a plot at `path`, judged by its extension as savefig judges
    it (none: PNG), or None. None also when matplotlib is missing: plot() says so, and the run's
    tables are worth having without the picture."""
    try:
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:
        return None
    suffix = os.path.splitext(path)[1][1:].lower()
    formats = FigureCanvasBase.get_supported_filetypes()
    if suffix and suffix not in formats:
        return f"matplotlib cannot write .{suffix} files; give a name ending in one of .{', .'.join(sorted(formats))}"
    return None


def plot(rows: list[Row], path: str) -> str | None:
    """Latency and speed-up vs NumPy against batch size, one line per engine, log axes; one row of panels
    per model. Returns None on success, else why no picture was drawn."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return f"--plot needs matplotlib, which is not installed: {PLOT_HINT}"
    models = list(dict.fromkeys(r.model for r in rows))
    swept = [m for m in models if len({r.batch for r in rows if r.model == m}) > 1]
    models = swept or models  # single-batch models add nothing to a curve against batch size
    if not models:
        return "nothing to plot"
    fig, axes = plt.subplots(len(models), 2, figsize=(11, 3.8 * len(models)), squeeze=False)
    for (ax_t, ax_s), model in zip(axes, models, strict=False):
        mrows = [r for r in rows if r.model == model]
        for engine in dict.fromkeys(r.engine for r in mrows):
            er = sorted((r for r in mrows if r.engine == engine), key=lambda r: r.batch)
            label = f"{engine} ({er[0].threads} thr)"
            ax_t.plot([r.batch for r in er], [r.median_us for r in er], marker="o", label=label)
            sp = [(r.batch, 1 / r.vs_numpy) for r in er if r.vs_numpy]
            if sp:
                ax_s.plot(*zip(*sp, strict=False), marker="o", label=label)
        ax_t.set(xscale="log", yscale="log", xlabel="batch size", ylabel="median latency (us)",
                 title=f"{model}: latency per call")
        ax_s.set(xscale="log", yscale="log", xlabel="batch size", ylabel="speed-up vs NumPy (x)",
                 title=f"{model}: speed-up vs NumPy (same run)")
        ax_s.axhline(1.0, color="grey", lw=0.8, ls="--")
        for ax in (ax_t, ax_s):
            ax.grid(True, which="both", alpha=0.3)
        ax_s.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
