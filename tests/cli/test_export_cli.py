"""`tinycomp export MODEL --input-shape N,... --target T --out DIR` as a user runs it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.cli.tiny_model import dropout_mlp, tiny
from tests.export.runners import run_export, skip_unless_runnable
from tests.test_compile_training import forward64, key_of
from tinycomp.cli import main
from tinycomp.frontend.streams import layer_id
from tinycomp.ir.philox import DropoutStream
from tinycomp.nn import Tensor, dropout_key
from tinycomp.parity import check_parity

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


def test_export_takes_the_input_shape_from_the_model_as_dump_does(tmp_path, capsys):
    """README: --input-shape may be left out for a Sequential starting with a Linear, or a model an
    importer made (InputShape); export required it."""
    assert main(["export", TINY, "--out", str(tmp_path)]) == 0
    assert "#define MODEL_INPUT_DIM1 12" in (tmp_path / "model.h").read_text()
    assert main(["export", "tinycomp.nn:ReLU", "--out", str(tmp_path / "relu")]) == 2
    assert "cannot infer the input width of this ReLU" in capsys.readouterr().err


def test_export_errors_are_one_line(tmp_path, capsys):
    assert main(["export", TINY, "--input-shape", "N,12", "--out", str(tmp_path), "--name", "9lives"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tinycomp export: error: ValueError: name must be a C identifier") and err.count("\n") == 1
    with pytest.raises(SystemExit) as info:
        main(["export", TINY, "--input-shape", "N,12", "--out", str(tmp_path), "--target", "riscv"])
    assert info.value.code == 2
    assert main(["export", TINY, "--input-shape", "N,12", "--out", str(tmp_path), "--name", "a" * 64]) == 1
    assert "name must be a C identifier of at most 63 characters" in capsys.readouterr().err
    afile = tmp_path / "afile"
    afile.write_text("kept")
    # --out naming a file ended in FileExistsError, after the whole compile; then a ValueError naming
    # export()'s Python parameter, exit code 1: now the usage error dump gives
    assert main(["export", TINY, "--input-shape", "N,12", "--out", str(afile)]) == 2
    assert f"--out must be a folder (export writes its files into it); {afile} is a file" in capsys.readouterr().err
    assert main(["dump", TINY, "--input-shape", "N,12", "--out", str(afile)]) == 2
    assert f"--out must be a folder (dump writes a file per stage into it); {afile} is a file" \
        in capsys.readouterr().err
    assert afile.read_text() == "kept"


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
    assert main(["export", spec, "--input-shape", "N,5", "--out", str(tmp_path / "one")]) == 2  # one shape for two
    err = capsys.readouterr().err
    assert "Gated.forward(x, mask, shift=None) takes 2 inputs (x, mask) and was given 1 --input-shape: a forward() " \
           "of several inputs takes --input-shape once per input, in its order" in err


def test_export_training_draws_the_masks_eager_draws(tmp_path, capsys):
    """--training: the entry takes (seed, offset) and drops what eager training drops on that call
    (the factory seeds with manual_seed(7), so the layer ids are the same in both builds)."""
    skip_unless_runnable("host")
    spec = f"{Path(__file__).parent / 'tiny_model.py'}:dropout_mlp"
    assert main(["export", spec, "--input-shape", "N,12", "--training", "--out", str(tmp_path)]) == 0
    assert "training: 1 Dropout layer draws masks from the entry's (seed, offset)" in capsys.readouterr().out
    assert "uint64_t seed, uint64_t offset);" in (tmp_path / "model.h").read_text()
    model = dropout_mlp()
    x = np.random.default_rng(2).standard_normal((6, 12)).astype(np.float32)
    eager = [model(Tensor(x)).data.copy() for _ in range(2)]  # calls 0 and 1
    for call in range(2):
        got = run_export("host", tmp_path, x, [6], stream=(dropout_key(7), call))[6]
        ref = forward64(model, x, [DropoutStream(*key_of(7), layer=layer_id(list(model)[2]), call=call)])
        report = check_parity(got, eager[call], ref)
        assert report.ok, f"call {call}: {report}"
    assert not np.allclose(eager[0], eager[1])  # the two calls drop different units
    assert main(["export", spec, "--input-shape", "N,12", "--out", str(tmp_path)]) == 0  # inference: no seed
    assert "uint64_t seed" not in (tmp_path / "model.h").read_text()
