"""`tinycomp export MODEL --input-shape N,... --target T --out DIR` as a user runs it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.tiny_model import tiny
from tests.export.runners import run_export, skip_unless_runnable
from tinycomp.cli import main
from tinycomp.nn import Tensor

TINY = f"{Path(__file__).parent / 'tiny_model.py'}:tiny"


@pytest.mark.parametrize("target", ["host", "aarch64-linux-gnu"])
def test_export_writes_a_library_that_runs(tmp_path, capsys, target):
    skip_unless_runnable(target)
    assert main(["export", TINY, "--input-shape", "N,12", "--target", target, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"{tmp_path / 'model.o'}\n{tmp_path / 'model.h'}\n" in out
    assert f"{target}: object " in out and "weights 1,216 bytes (in the object)" in out
    assert "scratch " in out and "at batch 1" in out
    model = tiny()
    model.eval()
    x = Tensor([[0.5 * i - 3.0 for i in range(12)], [1.0] * 12])
    got = run_export(target, tmp_path, x.data, [2])[2]
    assert abs(got - model(x).data).max() < 1e-5


def test_export_external_weights_and_name(tmp_path, capsys):
    assert main(["export", TINY, "--input-shape", "N,12", "--target", "thumbv7em-none-eabihf", "--out",
                 str(tmp_path), "--name", "tiny", "--weights", "external"]) == 0
    out = capsys.readouterr().out
    assert "weights 1,216 bytes (in tiny.bin)" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.bin", "tiny.h", "tiny.o"]
    assert "int tiny_bind_weights(const void *weights);" in (tmp_path / "tiny.h").read_text()


def test_export_errors_are_one_line(tmp_path, capsys):
    assert main(["export", TINY, "--input-shape", "N,12", "--out", str(tmp_path), "--name", "9lives"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tinycomp export: error: ValueError: name must be a C identifier") and err.count("\n") == 1
    with pytest.raises(SystemExit) as info:
        main(["export", TINY, "--input-shape", "N,12", "--out", str(tmp_path), "--target", "riscv"])
    assert info.value.code == 2


def test_export_of_several_inputs(tmp_path, capsys):
    """--input-shape once per input of forward(): the entry takes one pointer each, in its order."""
    spec = f"{Path(__file__).parents[1] / 'export' / 'test_export_inputs.py'}:Gated"
    assert main(["export", spec, "--input-shape", "N,5", "--input-shape", "N,3", "--input-shape", "7",
                 "--out", str(tmp_path)]) == 0
    header = (tmp_path / "model.h").read_text()
    assert "int model_forward(const float *x, const float *mask, const float *shift, float *y," in header
    assert "#define MODEL_INPUT2_BATCHED 0" in header
    assert main(["export", spec, "--input-shape", "N,5", "--input-shape", "N,x", "--out", str(tmp_path)]) == 2
    assert "--input-shape #2 must be" in capsys.readouterr().err
