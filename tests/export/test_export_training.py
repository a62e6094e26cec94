"""`tc.export(..., training=True)`: dropout stays active, its masks drawn from the same Philox streams
eager and compiled training use. The C entry takes (seed, offset): the key `manual_seed(s)` sets
(`dropout_key(s)`) and the forward call number. Run on every target, against eager, compiled and a
float64 NumPy forward whose masks come from the documented numbering (tests/test_compile_training.py)."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

import tinycomp as tc
from tests.export.runners import C_FLAGS, TARGETS, build, run_export, skip_unless_runnable
from tests.test_compile_training import forward64, inputs, key_of, odd_mlp
from tinycomp.ir.philox import MASK32, DropoutStream
from tinycomp.nn import Dropout, Linear, Sequential, Tensor, dropout_key, manual_seed
from tinycomp.parity import check_parity

SEED, OTHER_SEED, CALLS = 5, 6, 3


def test_dropout_key_is_the_key_manual_seed_sets():
    k0, k1 = key_of(SEED)
    assert dropout_key(SEED) == k0 | k1 << 32


@pytest.mark.parametrize("target", TARGETS)
def test_training_export_draws_the_masks_of_eager_and_compiled(tmp_path, target):
    skip_unless_runnable(target)
    manual_seed(0)
    model = odd_mlp()
    x = inputs(7)
    manual_seed(SEED)  # no layer built since: the Dropouts are layers -2 and -1 of this seed's streams
    result = tc.export(model, tmp_path, input_shape=(None, 13), target=target, training=True)
    assert result.dropout_layers == 2
    header = (tmp_path / "model.h").read_text()
    assert "int model_forward(const float *x, float *y, int64_t batch, void *scratch, uint64_t seed, " \
           "uint64_t offset);" in header
    fast = tc.compile(model, training=True)
    manual_seed(SEED)
    compiled = [fast(x).data.copy() for _ in range(CALLS)]
    manual_seed(SEED)
    eager = [model(Tensor(x)).data.copy() for _ in range(CALLS)]
    command = build(target, tmp_path)
    key = key_of(SEED)
    for call in range(CALLS):
        got = run_export(target, tmp_path, x, [1, 7], command=command, stream=(dropout_key(SEED), call))
        ref = forward64(model, x, [DropoutStream(*key, layer=-2 & MASK32, call=call),
                                   DropoutStream(*key, layer=-1 & MASK32, call=call)])
        for engine, out in (("eager", eager[call]), ("compiled", compiled[call])):
            report = check_parity(got[7], out, ref)
            assert report.ok, f"call {call} vs {engine}: {report}"
        np.testing.assert_array_equal(got[1], got[7][:1])  # row 0 draws the same mask at any batch
    other = run_export(target, tmp_path, x, [7], command=command, stream=(dropout_key(OTHER_SEED), 0))[7]
    first = run_export(target, tmp_path, x, [7], command=command, stream=(dropout_key(SEED), 0))[7]
    assert not np.allclose(other, first) and not np.allclose(first, eager[1])  # other seeds, other calls


def test_training_header_compiles_pedantically_and_checks_arguments(tmp_path):
    """The seed/offset entry under -std=c99 -pedantic; a NULL input is ERR_ARGS, a good call OK."""
    cc = shutil.which("cc") or pytest.skip("no C compiler (cc)")
    manual_seed(0)
    result = tc.export(odd_mlp(), tmp_path, input_shape=(None, 13), training=True)
    src = tmp_path / "check.c"
    src.write_text('#include "model.h"\nint main(void) {\n  float x[13] = {0}, y[5];\n'
                   '  static char scratch[MODEL_SCRATCH_BYTES(1)];\n  uint64_t seed = UINT64_C(0xFFFFFFFFFFFFFFFF);\n'
                   '  if (model_forward(0, y, 1, scratch, seed, 3) != MODEL_ERR_ARGS) return 1;\n'
                   '  return MODEL_TRAINING == 1 && model_forward(x, y, 1, scratch, seed, 3) == MODEL_OK ? 0 : 2;\n}\n')
    exe = tmp_path / "check"
    subprocess.run([cc, *C_FLAGS, "-pedantic", f"-I{tmp_path}", str(src), str(result.files["object"]), "-o",
                    str(exe)], check=True, capture_output=True, text=True)
    assert subprocess.run([str(exe)], check=False).returncode == 0


def test_training_export_without_drawing_dropout_keeps_the_documented_signature(tmp_path):
    """training=True gives the entry seed and offset even where no Dropout draws a mask (p = 0 here):
    callers write one call for every training export; the output is the eager model's."""
    import ctypes

    shutil.which("cc") or pytest.skip("no C compiler (cc)")
    manual_seed(0)
    model = Sequential(Linear(4, 3), Dropout(0.0))
    model.train()
    result = tc.export(model, tmp_path, input_shape=(None, 4), training=True)
    header = (tmp_path / "model.h").read_text()
    assert "int model_forward(const float *x, float *y, int64_t batch, void *scratch, uint64_t seed, " \
           "uint64_t offset);" in header and "#define MODEL_TRAINING 1" in header
    assert "no Dropout layer draws a mask" in header
    lib = ctypes.CDLL(str(result.files["shared_library"]))
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    y = np.empty((5, 3), np.float32)
    scratch = np.zeros(max(1, result.scratch_bytes_per_row * 5 + result.scratch_bytes_fixed) + 64, np.uint8)
    lib.model_forward.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p,
                                  ctypes.c_uint64, ctypes.c_uint64]
    status = lib.model_forward(x.ctypes.data, y.ctypes.data, 5, (scratch.ctypes.data + 63) // 64 * 64, 7, 2)
    assert status == 0
    linear = model.layers[0]
    reference = x.astype(np.float64) @ linear.weight.data.astype(np.float64) + linear.bias.data
    report = check_parity(y, model(Tensor(x)).data, reference)
    assert report.ok, report
