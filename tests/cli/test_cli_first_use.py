"""The command as a new user meets it: the README's two set-up commands, a demo that needs only the
run-time dependencies and compares with NumPy as README's table does, `dump` without --input-shape,
`-v` anywhere."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tinycomp.cli import main

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
MODELS = HERE / "tiny_model.py"

# Run the demo with every package that is not a run-time dependency made unimportable, as after
# `pip install -e .` on a fresh machine (the dev tools, the bench extras, the importers' libraries).
NOT_RUNTIME = ("threadpoolctl", "matplotlib", "tqdm", "pytest", "hypothesis", "torch", "onnx", "onnxruntime",
               "sklearn", "scipy", "dask", "IPython", "nbformat")
DEMO_WITH_RUNTIME_DEPS_ONLY = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {NOT_RUNTIME!r}:
            raise ImportError(f"{{name}} is not a run-time dependency of tinycomp")
sys.meta_path.insert(0, Block())
from tinycomp.cli import main
sys.exit(main(["demo"]))
"""


def test_readme_starts_with_two_complete_set_up_commands():
    text = (ROOT / "README.md").read_text()
    head = text[: text.index("## ")]
    blocks = re.findall(r"```bash\n(.*?)```", head, re.S)
    assert [b.strip() for b in blocks] == [
        "python3 -m venv .venv && . .venv/bin/activate && pip install -e . && tinycomp demo",
        "python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[dev]' && python -m pytest -q",
    ]


def test_demo_needs_only_the_runtime_dependencies_and_compares_with_numpy(tmp_path):
    proc = subprocess.run([sys.executable, "-c", DEMO_WITH_RUNTIME_DEPS_ONLY], capture_output=True, text=True,
                          timeout=300, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT),
                                            "TINYCOMP_CACHE_DIR": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "235,146" in out and "919 KB" in out
    assert "linear(%x, %0.weight, %0.bias) activation=relu" in out
    assert "dropout(" in out  # the traced graph is shown before the passes
    assert "parity vs eager (float64 reference): OK" in out
    assert "threadpoolctl, which pins it, is not installed" in out  # said, not required
    assert "BLAS pinned" not in out  # the timing header says what the run did (it said "pinned" before)
    header = next(line for line in out.splitlines() if "NumPy us" in line)
    assert header.split() == ["batch", "NumPy", "us", "eager", "us", "compiled", "us", "x", "NumPy"]
    rows = [line.split() for line in out.splitlines() if re.fullmatch(r"\s*(1|32|512)(\s+[\d.]+){4}", line)]
    assert [r[0] for r in rows] == ["1", "32", "512"]
    for _, numpy_us, _, compiled_us, ratio in rows:  # the ratio is compiled / NumPy, as in README's table
        assert float(ratio) == pytest.approx(float(compiled_us) / float(numpy_us), abs=0.011)
    assert "speed-up" not in out


def test_dump_infers_the_input_width_of_a_sequential_starting_with_a_linear(capsys):
    assert main(["dump", f"{MODELS}:tiny", "--stage", "traced"]) == 0
    assert "%x = input : f32[N,12]" in capsys.readouterr().out
    assert main(["dump", f"{MODELS}:nested", "--stage", "traced"]) == 0
    assert "%x = input : f32[N,9]" in capsys.readouterr().out


def test_dump_says_when_it_cannot_infer_the_width(capsys):
    assert main(["dump", f"{MODELS}:starts_with_relu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tinycomp dump: error: cannot infer the input width") and "--input-shape" in err
    assert "ReLU" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("where", [0, 1, 3], ids=["before", "after-command", "at-end"])
def test_verbose_works_anywhere_on_the_command_line(where, capsys):
    args = ["dump", f"{MODELS}:broken", "--input-shape", "N,12"]
    args.insert(where, "-v")
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "factory exploded" in err


def test_verbose_after_the_command_on_a_good_run(capsys):
    assert main(["dump", f"{MODELS}:tiny", "--stage", "traced", "--verbose"]) == 0
    assert "matmul(%x, %0.weight)" in capsys.readouterr().out


def test_bench_help_has_no_internal_words():
    proc = subprocess.run([sys.executable, "-m", "tinycomp", "bench", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0
    assert "issue" not in proc.stdout.lower() and "standard suite" in proc.stdout
    # each model says what it is (the descriptions were written and never shown)
    assert "block = TransformerBlock: embed 128, 4 heads" in " ".join(proc.stdout.split())
