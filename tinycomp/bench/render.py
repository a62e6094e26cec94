"""A finished bench run as text: the console report and the Markdown that `--markdown` writes
(tables from `report`, the environment and notes around them)."""

from __future__ import annotations

from . import report


def print_report(rows, targets, compile_times, env, notes, extras, elapsed) -> None:
    peak = env["peak"]
    print(f"CPU: {env['cpu']} ({env['llvm_cpu']}, {env['cores']} cores); "
          + ", ".join(f"{k} {v}" for k, v in env["versions"].items()))
    if peak:
        print(f"FMA peak: {peak['gflops']:.1f} GFLOP/s per core ({peak.get('method', '')}); "
              "% peak is of (threads x this)")
        if peak.get("mlp_weight_stream"):
            print(_stream_note(peak["mlp_weight_stream"]))
        if peak.get("clocks"):
            print(_clock_note(peak["clocks"]))
        if "parallel_efficiency" in peak:
            print(f"Same loop on all {peak['cores']} cores at once: {peak['all_cores_gflops']:.1f} GFLOP/s, parallel "
                  f"efficiency {peak['parallel_efficiency']:.2f} at the start, "
                  f"{peak.get('parallel_efficiency_end', float('nan')):.2f} at the end (well below 1: another "
                  "process holds a core, so the all-cores rows understate what threads give)")
    print("Threads: 'thr' column; 1-thread rows pin BLAS to 1 thread with threadpoolctl; compiled-all is "
          "threads=None (the default policy). GFLOP/s counts 2 x Linear multiply-adds. x NumPy = time / NumPy time.")
    print(_allocator_note(env))
    print()
    print(report.format_table(report.HEADER, report.table_cells(rows)))
    if compile_times:
        print("\nCompile time (tinycomp.compile with input_shape, wall clock; cold = TINYCOMP_CACHE=0, "
              "warm = loaded from a temporary TINYCOMP_CACHE_DIR):")
        print(report.format_table(report.COMPILE_HEADER, report.compile_cells(compile_times)))
    other = {k: v["compile_ms"] for k, v in extras.items() if "compile_ms" in v and not k[0].startswith("compiled")}
    if other:
        print("Other engines' set-up time: " + ", ".join(f"{e} {m}: {ms:.0f} ms" for (e, m), ms in other.items()))
    if targets:
        print("\nTargets (each ratio with the bound no code can pass):")
        print(report.format_table(report.TARGET_HEADER, report.target_cells(targets)))
    for note in notes:
        print(f"note: {note}")
    print(f"({elapsed:.1f} s)")


def _allocator_note(env: dict) -> str:
    return (f"Every engine process runs with GLIBC_TUNABLES={env.get('allocator', '')} (fixed malloc thresholds: "
            "glibc's dynamic ones made an engine's time depend on the points run before it in its process).")


def _stream_note(stream: dict) -> str:
    return (f"Batch-1 floor: reading the reference MLP's {stream['bytes'] / 1e6:.2f} MB of weights once takes "
            f"{stream['us']:.1f} us on one core ({stream['gbps']:.0f} GB/s; {stream['method']}).")


def _clock_note(clocks: dict) -> str:
    limit, ratio = clocks["flop_per_cycle_limit"], clocks["gemm_clock_ratio"]
    return (f"Clock ({clocks['method']}, medians of {clocks['rounds']} rounds): the FMA loop "
            f"{clocks['fma_gflops']:.1f} GFLOP/s, {clocks['fma_ghz']:.2f} GHz after it "
            f"= {clocks['fma_flop_per_cycle']:.1f} FLOP per cycle of the FMA pipes' {limit}; the compiled "
            f"{clocks['model']} at batch {clocks['batch']} {clocks['gemm_gflops']:.1f} GFLOP/s, "
            f"{clocks['gemm_ghz']:.2f} GHz after it. At that clock a GEMM reaches at most {ratio:.2f} of the "
            f"loop's GFLOP/s, {100 * ratio:.0f} % of the peak.")


PEAK_GIVEN = "given with --peak"  # the peak's `method` when the user gave it, not measured


def markdown(rows, targets, compile_times, env, notes, argv) -> str:
    peak = env["peak"]
    parts = [f"Command: `tinycomp bench {' '.join(argv)}`", "",
             f"CPU: {env['cpu']} (LLVM cpu `{env['llvm_cpu']}`, {env['cores']} cores); "
             + ", ".join(f"{k} {v}" for k, v in env["versions"].items()), "", _allocator_note(env), ""]
    if peak:
        given = peak.get("method") == PEAK_GIVEN
        parts += [f"{'FMA peak' if given else 'Measured FMA peak'}: {peak['gflops']:.1f} GFLOP/s per core "
                  f"({peak.get('method', '')}).", ""]
        if peak.get("mlp_weight_stream"):
            parts += [_stream_note(peak["mlp_weight_stream"]), ""]
        if peak.get("clocks"):
            parts += [_clock_note(peak["clocks"]), ""]
        if "parallel_efficiency" in peak:
            parts += [f"The same loop on all {peak['cores']} cores at once: {peak['all_cores_gflops']:.1f} GFLOP/s "
                      f"(parallel efficiency {peak['parallel_efficiency']:.2f} at the start of the run, "
                      f"{peak.get('parallel_efficiency_end', float('nan')):.2f} at the end).", ""]
    parts += ["### Targets", "", report.markdown_table(report.TARGET_HEADER, report.target_cells(targets)), "",
              "### Run time", "", report.markdown_table(report.HEADER, report.table_cells(rows)), ""]
    if compile_times:
        table = report.markdown_table(report.COMPILE_HEADER, report.compile_cells(compile_times))
        parts += ["### Compile time", "", table, ""]
    parts += [f"- {n}" for n in notes]
    return "\n".join(parts) + "\n"
