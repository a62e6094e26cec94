"""A forward() of several inputs exports to an entry of one `const float *` per input (in forward()'s
order), runs on every target and computes what the eager model does, judged against float64."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

import tinycomp as tc
from tests.export.runners import C_FLAGS, TARGETS, run_export, skip_unless_runnable
from tinycomp.nn import Layer, Linear, Tanh, Tensor, manual_seed
from tinycomp.parity import check_parity

BATCHES = [1, 7]


class Gated(Layer):
    """tanh(a(x) * b(mask)), plus `shift` (one (7,) array for every row) when given."""

    def __init__(self):
        self.a, self.b, self.act = Linear(5, 7), Linear(3, 7), Tanh()

    def forward(self, x, mask, shift=None):
        h = self.act(self.a(x) * self.b(mask))
        return h if shift is None else h + shift

    def reference(self, x: np.ndarray, mask: np.ndarray, shift: np.ndarray | None) -> np.ndarray:
        a = x.astype(np.float64) @ self.a.weight.data.astype(np.float64) + self.a.bias.data
        b = mask.astype(np.float64) @ self.b.weight.data.astype(np.float64) + self.b.bias.data
        h = np.tanh(a * b)
        return h if shift is None else h + shift.astype(np.float64)


SHAPES = {"x, mask": [(None, 5), (None, 3)], "x, mask, shared shift": [(None, 5), (None, 3), (7,)]}


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("inputs", SHAPES)
def test_several_inputs_match_eager(tmp_path, target, inputs):
    skip_unless_runnable(target)
    manual_seed(4)
    model = Gated()
    rng = np.random.default_rng(8)
    x = rng.standard_normal((max(BATCHES), 5)).astype(np.float32)
    mask = rng.standard_normal((max(BATCHES), 3)).astype(np.float32)
    shift = rng.standard_normal(7).astype(np.float32) if len(SHAPES[inputs]) == 3 else None
    more = (mask,) if shift is None else (mask, shift)
    tc.export(model, tmp_path, input_shape=SHAPES[inputs], target=target)
    header = (tmp_path / "model.h").read_text()
    params = "const float *x, const float *mask" + (", const float *shift" if shift is not None else "")
    assert f"int model_forward({params}, float *y, int64_t batch, void *scratch);" in header
    got = run_export(target, tmp_path, x, BATCHES, more=more)
    for batch in BATCHES:
        eager = model(*[Tensor(a[:batch]) for a in (x, mask)], *([Tensor(shift)] if shift is not None else [])).data
        report = check_parity(got[batch], eager, model.reference(x[:batch], mask[:batch], shift))
        assert report.ok, f"{target}, batch {batch}: {report}"


def test_several_inputs_header_and_argument_checks(tmp_path):
    """The header compiles pedantically; a NULL second input is refused (ERR_ARGS) before anything runs."""
    manual_seed(4)
    result = tc.export(Gated(), tmp_path, input_shape=SHAPES["x, mask, shared shift"])
    header = (tmp_path / "model.h").read_text()
    assert "#define MODEL_INPUTS 3" in header and "#define MODEL_INPUT2_BATCHED 0" in header
    src = tmp_path / "check.c"
    src.write_text('#include "model.h"\n'
                   'static float s[MODEL_INPUT2_FLOATS(1)];  /* a constant expression: static buffers work */\n'
                   'int main(void) {\n  float x[5] = {0}, m[3] = {0}, y[7];\n'
                   '  char scratch[MODEL_SCRATCH_BYTES(1) + 1];\n'
                   '  if (model_forward(x, 0, s, y, 1, scratch) != MODEL_ERR_ARGS) return 1;\n'
                   '  if (MODEL_INPUT1_FLOATS(4) != 12 || MODEL_INPUT2_FLOATS(4) != 7) return 2;\n'
                   '  return model_forward(x, m, s, y, 1, scratch) == MODEL_OK ? 0 : 3;\n}\n')
    exe = tmp_path / "check"
    subprocess.run(["cc", *C_FLAGS, "-pedantic", f"-I{tmp_path}", str(src), str(result.files["object"]), "-o",
                    str(exe)], check=True, capture_output=True, text=True)
    assert subprocess.run([str(exe)], check=False).returncode == 0


class KeywordNames(Layer):
    """Inputs named as C++ and C23 keywords and as the prototype's own type."""

    def __init__(self):
        self.a = Linear(4, 4)

    def forward(self, x, new, int64_t, bool, this, linux, complex, stdin):
        return self.a(x) * new + int64_t * bool - this + linux * complex * stdin


@pytest.mark.parametrize("compiler", ["c++", "cc"])
def test_input_names_that_are_keywords_elsewhere_are_numbered(tmp_path, compiler):
    """forward()'s names went into the prototype unless C99 keywords: `new` broke the header under
    C++, `bool` under C23, `int64_t` everywhere (it hid the type of `int64_t batch`), `linux` under
    gcc's default GNU dialect, `complex` after <complex.h>, `stdin` after newlib's <stdio.h>."""
    if not shutil.which(compiler):
        pytest.skip(f"no {compiler} to compile the header with")
    manual_seed(4)
    tc.export(KeywordNames(), tmp_path, input_shape=[(None, 4)] * 8)
    header = (tmp_path / "model.h").read_text()
    numbered = ", ".join(f"const float *x{i}" for i in range(1, 8))
    assert f"int model_forward(const float *x, {numbered}, float *y, int64_t batch, void *scratch);" in header
    src = tmp_path / ("use.cpp" if compiler == "c++" else "use.c")
    includes = "#include <stdio.h>\n" + ("#include <complex.h>\n" if compiler == "cc" else "")
    src.write_text(includes + '#include "model.h"\nint rows(void) { return MODEL_INPUTS; }\n')
    flags = ["-std=c++17"] if compiler == "c++" else ["-std=gnu99"]  # gnu: `linux` is a macro there
    subprocess.run([compiler, *flags, "-Wall", "-Wextra", "-Werror", "-pedantic", f"-I{tmp_path}", "-c", str(src),
                    "-o", str(tmp_path / "use.o")], check=True)


@pytest.mark.parametrize("shapes, match", [
    ([(None, 5), (None, 0)], r"input_shape\[1\]"),
    ([(None, 5)], None),  # one shape in a list: forward() takes mask too
])
def test_several_inputs_refusals(tmp_path, shapes, match):
    with pytest.raises((ValueError, TypeError, tc.CompileError), match=match):
        tc.export(Gated(), tmp_path, input_shape=shapes)
