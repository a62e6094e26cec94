"""The `tinycomp` command as a user runs it: exit codes, files written, one-line errors."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from tinycomp.cli import main

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
TINY = f"{HERE / 'tiny_model.py'}:tiny"


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "tinycomp", *args], capture_output=True, text=True,
                          env=full_env, timeout=300)


def test_dump_all_writes_a_file_per_stage_and_pass(tmp_path, capsys):
    out = tmp_path / "dump"
    assert main(["dump", TINY, "--input-shape", "N,12", "--stage", "all", "--out", str(out), "--dot"]) == 0
    names = {p.name for p in out.iterdir()}
    expected = {"01-traced.txt", "02-fold_dropout.txt", "03-fuse_linear.txt", "04-fuse_attention.txt",
                "05-fuse_layer_norm.txt", "06-fuse_elementwise.txt", "07-eliminate_dead_code.txt", "model.ll",
                "model.s", "graph.dot", "traced.dot"}
    assert expected <= names
    assert "dropout" in (out / "01-traced.txt").read_text()
    assert "dropout" not in (out / "02-fold_dropout.txt").read_text()
    assert "linear(" in (out / "03-fuse_linear.txt").read_text()
    assert "define void @\"tinycomp_forward\"" in (out / "model.ll").read_text()
    assert "tinycomp_forward:" in (out / "model.s").read_text()
    printed = capsys.readouterr().out.split()
    assert str(out / "model.ll") in printed


@pytest.mark.skipif(shutil.which("dot") is None, reason="needs Graphviz `dot` (.ci/run installs it)")
def test_dot_output_is_valid_graphviz(tmp_path):
    out = tmp_path / "dump"
    assert main(["dump", TINY, "--input-shape", "N,12", "--out", str(out), "--dot"]) == 0
    for name in ("graph.dot", "traced.dot"):
        check = subprocess.run(["dot", "-Tsvg", str(out / name)], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        assert "<svg" in check.stdout
    assert (out / "graph.svg").read_text().lstrip().startswith(("<?xml", "<svg"))


@pytest.mark.parametrize("stage, has, lacks", [("traced", "dropout", "linear"), ("optimized", "linear", "dropout")])
def test_dot_to_stdout_draws_the_stage_asked_for(capsys, stage, has, lacks):
    """`--stage traced --dot` printed the optimized graph's DOT; and the text IR came first, so
    `| dot -Tsvg` failed on its first line."""
    assert main(["dump", TINY, "--input-shape", "N,12", "--stage", stage, "--dot"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("digraph")
    dot = out.split("digraph", 1)[1]
    assert f'"{stage}"' in dot.splitlines()[0] and has in dot and lacks not in dot
    if shutil.which("dot"):
        check = subprocess.run(["dot", "-Tsvg"], input=out, capture_output=True, text=True)
        assert check.returncode == 0 and "<svg" in check.stdout, check.stderr


def test_dot_of_a_stage_with_no_graph_is_refused(capsys):
    assert main(["dump", TINY, "--input-shape", "N,12", "--stage", "llvm", "--dot"]) == 2
    assert "--dot draws the traced or optimized graph; --stage llvm has none" in capsys.readouterr().err
    # two digraphs back to back made `| dot -Tsvg` write two SVG documents in one file
    assert main(["dump", TINY, "--input-shape", "N,12", "--stage", "all", "--dot"]) == 2
    assert "--dot without --out prints one graph: give --stage traced or --stage optimized" in capsys.readouterr().err


def test_dump_to_stdout_one_stage(capsys):
    assert main(["dump", TINY, "--input-shape", "N,12", "--stage", "traced"]) == 0
    text = capsys.readouterr().out
    assert "==== traced ====" in text and "matmul(%x, %0.weight)" in text


def test_dump_of_several_inputs(capsys):
    """--input-shape once per input of forward(), as export takes it: one input node each."""
    spec = f"{HERE.parent / 'export' / 'test_export_inputs.py'}:Gated"
    assert main(["dump", spec, "--input-shape", "N,5", "--input-shape", "N,3", "--input-shape", "7",
                 "--stage", "traced"]) == 0
    text = capsys.readouterr().out
    for line in ("%x = input : f32[N,5]", "%mask = input : f32[N,3]", "%shift = input : f32[7]",
                 "%6 = add(%5, %shift) : f32[N,7]"):
        assert line in text


@pytest.mark.parametrize("args, message", [
    (["dump", TINY, "--input-shape", "0,12"], "--input-shape must start with the batch as N"),
    # a fixed batch was taken, then ignored: the dump (and an export's header) showed (N, 12)
    (["dump", TINY, "--input-shape", "4,12"], "--input-shape must start with the batch as N, which the compiled code "
                                              "takes at run time (e.g. N,784); got '4,12'"),
    (["dump", "no/such/file.py:tiny", "--input-shape", "N,12"], "model file not found"),
    (["dump", f"{HERE / 'tiny_model.py'}:not_a_layer", "--input-shape", "N,12"], "must return a tinycomp Layer"),
    (["dump", f"{HERE / 'tiny_model.py'}:missing", "--input-shape", "N,12"], "has no attribute 'missing'"),
    (["dump", TINY, "--input-shape", "N,abc"], "--input-shape must be"),
    (["dump", TINY, "--input-shape", "N,13"], "Inner dimensions must match"),
    (["dump", "tinycomp_no_such_module:f", "--input-shape", "N,12"], "cannot import module"),
    # a factory taking an argument was told "a forward() of several inputs takes --input-shape once per input"
    (["dump", f"{HERE / 'tiny_model.py'}:sized", "--input-shape", "N,12"],
     "tiny_model.py:sized must be a Layer, or a function or class called with no arguments that returns one; "
     "it takes (width)"),
    # Sequential's forward(x, training=None) took a second shape as its training flag, traced as a tensor
    (["dump", TINY, "--input-shape", "N,12", "--input-shape", "N,3"],
     "TypeError: Sequential.forward(x) does not take 2 positional inputs"),
])
def test_dump_bad_input_is_one_clear_line(args, message, capsys):
    # In this process (a subprocess each cost 1.5-4 s under load): an exception escaping main() fails
    # the test as a traceback would, and a warning is caught here rather than printed on stderr.
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        try:
            code = main(list(args))
        except SystemExit as stop:  # argparse's refusals
            code = stop.code
    err = capsys.readouterr().err
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert message in lines[0]
    assert [str(w.message) for w in warned] == []


def test_dump_model_file_that_is_not_python_is_one_clear_line(tmp_path):
    model = tmp_path / "model.txt"
    model.write_text((HERE / "tiny_model.py").read_text())
    proc = run_cli("dump", f"{model}:tiny", "--input-shape", "N,12")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"tinycomp dump: error: cannot load {model} as Python source: a model file must end in .py"]


def test_a_folder_named_as_the_model_file_is_called_a_folder(tmp_path, capsys):
    (tmp_path / "models.py").mkdir()
    assert main(["dump", f"{tmp_path / 'models.py'}:tiny", "--input-shape", "N,12"]) == 2
    assert f"model file {tmp_path / 'models.py'} is a folder, not a Python file" in capsys.readouterr().err


def test_the_tinycomp_script_finds_a_module_in_the_working_folder(tmp_path):
    """`python -m tinycomp` looks modules up from the working folder; the `tinycomp` script, whose
    sys.path starts with the venv's bin/, said `No module named 'mymodels'`."""
    (tmp_path / "mymodels.py").write_text((HERE / "tiny_model.py").read_text())
    script = Path(sys.executable).with_name("tinycomp")
    if not script.exists():
        pytest.skip(f"no `tinycomp` script beside {sys.executable} (tinycomp not installed with pip)")
    for command in ([str(script)], [sys.executable, "-m", "tinycomp"]):
        done = subprocess.run([*command, "dump", "mymodels:tiny", "--input-shape", "N,12", "--stage", "traced"],
                              capture_output=True, text=True, cwd=tmp_path, timeout=300)
        assert done.returncode == 0, done.stderr
        assert "matmul(%x, %0.weight)" in done.stdout


def test_dump_model_file_imports_its_sibling_modules(tmp_path, capsys):
    for helper in ("helper_layers", "lazy_helper_layers"):
        (tmp_path / f"{helper}.py").write_text((HERE / "tiny_model.py").read_text())
    (tmp_path / "model.py").write_text("from helper_layers import tiny\n\n"
                                       "def lazy():\n"
                                       "    import lazy_helper_layers\n"
                                       "    return lazy_helper_layers.tiny()\n")
    for factory in ("tiny", "lazy"):  # imported when the file loads, or when its factory runs
        assert main(["dump", f"{tmp_path / 'model.py'}:{factory}", "--input-shape", "N,12", "--stage", "traced"]) == 0
        assert "matmul(%x, %0.weight)" in capsys.readouterr().out
    assert str(tmp_path) not in sys.path  # the model's folder was on the path only while it loaded


@pytest.mark.parametrize("stage, files", [
    ("traced", {"01-traced.txt"}), ("llvm", {"model.ll"}), ("asm", {"model.s"}),
    ("optimized", {"01-traced.txt", "02-fold_dropout.txt", "03-fuse_linear.txt", "04-fuse_attention.txt",
                   "05-fuse_layer_norm.txt", "06-fuse_elementwise.txt", "07-eliminate_dead_code.txt"}),
])
def test_dump_out_writes_just_the_stage_asked_for(tmp_path, stage, files):
    out = tmp_path / "dump"
    assert main(["dump", TINY, "--input-shape", "N,12", "--stage", stage, "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == files


def test_demo_refuses_a_thread_count_below_one():
    proc = run_cli("demo", "--threads", "0")
    assert proc.returncode == 2 and "expected a whole number above 0" in proc.stderr
    assert proc.stdout == ""  # refused before anything ran


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full, where every write fails")
def test_bench_failing_after_its_run_is_one_clear_line(capsys):
    """bench ran outside main()'s error handling: an output file that cannot be written (checked
    before the run, it fails only at the write) ended the command with a traceback."""
    code = main(["bench", "--models", "tiny", "--batch", "1", "--engines", "numpy", "--quick", "--no-compile-times",
                 "--peak", "100", "--json", "/dev/full"])
    assert code == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "tinycomp bench: error: OSError: [Errno 28] No space left on device"]


def test_verbose_shows_the_traceback():
    proc = run_cli("--verbose", "dump", f"{HERE / 'tiny_model.py'}:broken", "--input-shape", "N,12")
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "factory exploded" in proc.stderr


SNIPPET = """
import numpy as np, tinycomp as tc
from tinycomp.nn import Sequential, Linear, ReLU
m = Sequential(Linear(6, 4), ReLU(), Linear(4, 3))
tc.compile(m, input_shape=(None, 6))
tc.compile(Sequential(Linear(6, 2)), input_shape=(None, 6))
"""


def test_logs_passes_print_each_pass_once_per_compile():
    proc = subprocess.run([sys.executable, "-c", SNIPPET], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TINYCOMP_LOGS": "passes,compile"})
    assert proc.returncode == 0, proc.stderr
    for name in ("fold_dropout", "fuse_linear", "fuse_attention", "fuse_layer_norm", "fuse_elementwise",
                 "eliminate_dead_code"):
        assert proc.stderr.count(f"[tinycomp.passes] after {name}") == 2
    assert proc.stderr.count("[tinycomp.compile] compiled Sequential") == 2
    assert "cache key" in proc.stderr


def test_dump_into_a_pipe_closed_early_stops_quietly():
    # `tinycomp dump ... | head` printed "tinycomp dump: error: BrokenPipeError"
    proc = subprocess.run(f"{sys.executable} -m tinycomp dump {TINY} --stage all | head -1", shell=True,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout == "==== traced ====\n" and proc.stderr == "", proc.stderr


def test_an_unknown_log_channel_is_named_once():
    proc = subprocess.run([sys.executable, "-c", SNIPPET], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TINYCOMP_LOGS": "graf,compile"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("TINYCOMP_LOGS: unknown channel(s) graf; channels are graph") == 1
    assert proc.stderr.count("[tinycomp.compile] compiled Sequential") == 2


def test_logs_are_silent_when_unset():
    env = {k: v for k, v in os.environ.items() if k != "TINYCOMP_LOGS"}
    proc = subprocess.run([sys.executable, "-c", SNIPPET], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0
    assert proc.stderr == "" and proc.stdout == ""
