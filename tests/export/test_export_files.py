"""What an export writes: a header that compiles strictly, objects that need nothing but the allowed
symbols, a shared library whose entry checks its arguments, weights files that bind only to their
model, and clear errors for what cannot be exported."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

import tinycomp as tc
from tests.export.runners import M4_FLAGS, TARGETS, WASM_LD, build, skip_unless_runnable
from tinycomp.export import entry, files
from tinycomp.export.toolchain import ToolMissing
from tinycomp.nn import GELU, Dropout, Layer, Linear, ReLU, Sequential, Softmax, Tensor, manual_seed

# The file-placement tests export to wasm32 (its three files: object, module, header); without
# wasm-ld that export is refused before any file moves, so there is nothing to test.
NO_WASM_LD = "wasm-ld is not installed (apt-get install lld-19)"
HAS_WASM_LD = any(shutil.which(n) for n in WASM_LD)
needs_wasm_ld = pytest.mark.skipif(not HAS_WASM_LD, reason=NO_WASM_LD)


def skip_unless_exportable(target: str) -> None:
    """The host's export links a shared library with cc; wasm32's links its module with wasm-ld."""
    if target == "host" and not shutil.which("cc"):
        pytest.skip("no C compiler (cc) for the host's shared library")
    if target == "wasm32" and not HAS_WASM_LD:
        pytest.skip(NO_WASM_LD)


def small_model() -> Sequential:
    manual_seed(5)
    return Sequential(Linear(6, 9), GELU(), Linear(9, 3), Softmax())


# Undefined symbols an object may have: nothing from libc but memcpy/memset; a wasm object also
# names the linker-provided stack pointer and function table (the GEMM calls its kernels through it).
ALLOWED_UNDEFINED = {"memcpy", "memset"}
ALLOWED_UNDEFINED_WASM = ALLOWED_UNDEFINED | {"__stack_pointer", "__indirect_function_table"}


NM = {"host": ("nm",), "aarch64-linux-gnu": ("aarch64-linux-gnu-nm",), "thumbv7em-none-eabihf": ("arm-none-eabi-nm",),
      "wasm32": ()}  # GNU nm reads the ELF of its toolchain; the LLVM nm reads every format, wasm too
LLVM_NM = ("llvm-nm", *(f"llvm-nm-{v}" for v in range(22, 13, -1)))


def _nm(path, target: str) -> list[tuple[str, str]]:
    """(type letter, name) of every symbol in the object."""
    nm = next((shutil.which(n) for n in (*NM[target], *LLVM_NM) if shutil.which(n)), None)
    if nm is None:
        pytest.skip(f"no nm for {target} objects ({', '.join(NM[target] or LLVM_NM[:1])}; apt-get install llvm-19)")
    out = subprocess.run([nm, str(path)], capture_output=True, text=True, check=True).stdout
    return [(parts[-2], parts[-1]) for parts in (line.split() for line in out.splitlines()) if len(parts) >= 2]


class MaskedDropout(Layer):
    """Two inputs and a Dropout: the entry's input table and, with training=True, its draws table."""

    def __init__(self):
        self.fc, self.drop = Linear(6, 4), Dropout(0.5)

    def forward(self, x, mask):
        return self.drop(self.fc(x)) * mask


class Powers(Layer):
    """x ** c: on the Cortex-M4F in float32 (codegen/vecpow32.py), else in float64 lanes."""

    def __init__(self):
        self.fc = Linear(6, 4)

    def forward(self, x):
        h = self.fc(x)
        return h.abs() ** 1.7 - h ** 3 + h ** -2.0


VARIANTS = {"one input": lambda: (small_model(), (None, 6), False),
            "pow": lambda: (Powers(), (None, 6), False),
            "two inputs, training": lambda: (MaskedDropout(), [(None, 6), (None, 4)], True)}


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("weights", ["embedded", "external"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_object_symbols(tmp_path, target, weights, variant):
    """Undefined: only the allowed ones. Global definitions: exactly the exported entry points."""
    skip_unless_exportable(target)
    model, shape, training = VARIANTS[variant]()
    result = tc.export(model, tmp_path, input_shape=shape, target=target, name="net", weights=weights,
                       training=training)
    symbols = _nm(result.files["object"], target)
    undefined = {name for kind, name in symbols if kind == "U"}
    allowed = ALLOWED_UNDEFINED_WASM if target == "wasm32" else ALLOWED_UNDEFINED
    assert undefined <= allowed, f"unexpected undefined symbols {sorted(undefined - allowed)}"
    exported = {name for kind, name in symbols if kind in "TDRB"}  # upper case: global
    expected = {"net_forward"} | ({"net_bind_weights"} if weights == "external" else set())
    assert exported == expected
    assert result.files["object"].stat().st_size == result.object_bytes
    if weights == "embedded":
        assert result.object_bytes > result.weights_bytes  # the weights are inside
    else:
        assert result.files["weights"].stat().st_size == entry.HEADER_BYTES + result.weights_bytes


@pytest.mark.parametrize("weights", ["embedded", "external"])
def test_header_compiles_strictly(tmp_path, weights):
    """The header alone, and a translation unit using every macro, under -std=c99 -Wall -Werror."""
    cc = shutil.which("cc") or pytest.skip("no C compiler (cc)")
    tc.export(small_model(), tmp_path, input_shape=(None, 6), target="thumbv7em-none-eabihf", weights=weights)
    use = tmp_path / "use.c"
    use.write_text(textwrap.dedent("""\
        #include "model.h"
        #include "model.h" /* the include guard holds */
        int use(const float *x, float *y, void *scratch);
        int use(const float *x, float *y, void *scratch) {
            int64_t need = MODEL_SCRATCH_BYTES(7) + MODEL_INPUT_DIM1 + MODEL_OUTPUT_DIM1 + MODEL_PARAMETERS;
            if (need > MODEL_MAX_BATCH || MODEL_INPUT_RANK != 2 || MODEL_WEIGHTS_BYTES <= 0) return MODEL_ERR_ARGS;
        #ifdef MODEL_WEIGHTS_EXTERNAL
            if (model_bind_weights(x) != MODEL_OK) return MODEL_ERR_WEIGHTS;
        #endif
            return model_forward(x, y, MODEL_INPUT_ROW_FLOATS / MODEL_OUTPUT_ROW_FLOATS, scratch);
        }
        """))
    for flags in (["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"], ["-std=c11", "-Wall", "-Werror"]):
        subprocess.run([cc, *flags, "-c", str(use), "-o", str(tmp_path / "use.o")], check=True)
    header = (tmp_path / "model.h").read_text()
    assert f"tinycomp {tc.__version__}" in header and "thumbv7em-none-eabihf" in header
    assert "Linear(in_features=6, out_features=9, bias=True)" in header and "Parameters: 93 float32" in header


class Named(Layer):
    """A model whose repr is copied into the header's comment: C comment markers, as an imported
    model's value names can hold (a torch ModuleDict key "*proj" exports as "/*proj/Gemm"), or a
    `??/` trigraph, which -std=c99 reads as a backslash (-Wtrigraphs)."""

    def __init__(self, shown: str):
        manual_seed(3)
        self.fc, self.shown = Linear(6, 3), shown

    def forward(self, x):
        return self.fc(x)

    def __repr__(self) -> str:
        return self.shown


@pytest.mark.parametrize("shown, written", [
    ("Named(/*proj/Gemm_output_0 = fc(x) */)", "proj/Gemm_output_0"),
    ("Trigraph(what??/", "Trigraph(what? ?/"),
], ids=["comment-markers", "trigraph"])
def test_header_comment_of_any_repr_compiles_strictly(tmp_path, shown, written):
    cc = shutil.which("cc") or pytest.skip("no C compiler (cc)")
    tc.export(Named(shown), tmp_path, input_shape=(None, 6), target="thumbv7em-none-eabihf")
    use = tmp_path / "use.c"
    use.write_text('#include "model.h"\nint use(void);\nint use(void) { return MODEL_INPUT_DIM1; }\n')
    subprocess.run([cc, "-std=c99", "-Wall", "-Wextra", "-Werror", "-c", str(use), "-o", str(tmp_path / "use.o")],
                   check=True)
    assert written in (tmp_path / "model.h").read_text()


def test_header_compiles_for_cortex_m(tmp_path):
    gcc = shutil.which("arm-none-eabi-gcc") or pytest.skip("arm-none-eabi-gcc is not installed")
    tc.export(small_model(), tmp_path, input_shape=(None, 6), target="thumbv7em-none-eabihf")
    (tmp_path / "use.c").write_text('#include "model.h"\nint model_rows(void) { return MODEL_OUTPUT_ROW_FLOATS; }\n')
    subprocess.run([gcc, *M4_FLAGS, "-std=c99", "-Wall", "-Werror", "-c", str(tmp_path / "use.c"),
                    "-o", str(tmp_path / "use.o")], check=True)


def _load(result, name: str = "model") -> ctypes.CDLL:
    lib = ctypes.CDLL(str(result.files["shared_library"]))
    fn = getattr(lib, f"{name}_forward")
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p]
    fn.restype = ctypes.c_int
    return lib


def _ptr(a: np.ndarray, byte_offset: int = 0) -> int:
    return a.ctypes.data + byte_offset


def test_shared_library_checks_arguments(tmp_path):
    """lib<name>.so through ctypes: results equal the object's, and bad arguments are refused
    (ERR_ARGS) without writing the output."""
    if not shutil.which("cc"):
        pytest.skip("no C compiler (cc) for the host's shared library")
    model = small_model()
    result = tc.export(model, tmp_path, input_shape=(None, 6))
    forward = _load(result).model_forward
    x = np.random.default_rng(0).standard_normal((5, 6)).astype(np.float32)
    y = np.full((5, 3), 7.0, np.float32)
    scratch = np.zeros(result.scratch_bytes(5) // 4 + 1, np.float32)
    assert forward(_ptr(x), _ptr(y), 5, _ptr(scratch)) == entry.OK
    model.eval()
    np.testing.assert_allclose(y, model(Tensor(x)).data, rtol=1e-5, atol=1e-6)
    y[:] = 7.0
    raw = np.zeros(64, np.uint8)
    for args in [(_ptr(x), _ptr(y), -1, _ptr(scratch)), (None, _ptr(y), 5, _ptr(scratch)),
                 (_ptr(x), None, 5, _ptr(scratch)), (_ptr(x), _ptr(y), 5, None),
                 (_ptr(raw, 2), _ptr(y), 1, _ptr(scratch)), (_ptr(x), _ptr(y), result.max_batch + 1, _ptr(scratch))]:
        assert forward(*args) == entry.ERR_ARGS
    assert (y == 7.0).all()
    assert forward(None, None, 0, None) == entry.OK  # an empty batch needs no buffers


def test_no_call_runs_in_place(tmp_path):
    """y over x (a 256 -> 256 layer in place erred by 3.3: its GEMM read rows it had written), y or
    scratch over any part of an input or of each other: ERR_ARGS, y untouched. Buffers that only
    touch end to end are fine. (At the first batch whose GEMM packs W: below it, scratch has no bytes.)"""
    if not shutil.which("cc"):
        pytest.skip("no C compiler (cc) for the host's shared library")
    model = Sequential(Linear(256, 256))
    model.eval()
    result = tc.export(model, tmp_path, input_shape=(None, 256))
    forward = _load(result).model_forward
    rows = result.pack_rows
    block = rows * 256
    scratch_floats = result.scratch_bytes(rows) // 4
    buf = np.random.default_rng(1).standard_normal(3 * block + scratch_floats).astype(np.float32)
    want = model(Tensor(buf[:block].reshape(rows, 256))).data
    x, y, s = 0, block, 2 * block  # float offsets into buf: x | y | scratch, end to end
    overlapping = [(x, x, s), (x, 1, s), (block - 1, 0, s)]
    assert scratch_floats  # W is packed: scratch is checked too
    overlapping += [(x, y, y + block - 1), (x, y, x + 255), (x, s - 1, s), (s - 1, y, s)]
    before = buf.copy()
    for xo, yo, so in overlapping:
        assert forward(_ptr(buf, 4 * xo), _ptr(buf, 4 * yo), rows, _ptr(buf, 4 * so)) == entry.ERR_ARGS, (xo, yo, so)
    np.testing.assert_array_equal(buf, before)
    assert forward(_ptr(buf, 4 * x), _ptr(buf, 4 * y), rows, _ptr(buf, 4 * s)) == entry.OK
    np.testing.assert_allclose(buf[y:y + block].reshape(rows, 256), want, rtol=1e-5, atol=1e-5)


def test_scratch_grows_by_the_pack_buffer_where_the_gemm_packs(tmp_path):
    """The packed W lies last in scratch and only batches of `pack_rows` rows or more need it: the
    header's SCRATCH_BYTES(batch) says so (compiled and evaluated by C), a smaller batch runs with
    exactly its bytes (a NaN guard after them stays), a NULL scratch where that is 0, and the entry
    refuses a NULL one from `pack_rows` on. Results match eager and float64."""
    cc = shutil.which("cc") or pytest.skip("no C compiler (cc) for the host's shared library")
    model = Sequential(Linear(640, 512), ReLU(), Linear(512, 200))  # W past 1 MB: no row blocks
    model.eval()
    result = tc.export(model, tmp_path, input_shape=(None, 640))
    least = result.pack_rows
    assert not result.row_block and least > 1 and result.scratch_bytes_pack >= 4 * 640 * 16
    probe = tmp_path / "probe.c"
    probe.write_text('#include <stdio.h>\n#include "model.h"\nint main(void) { printf("%lld %lld %lld\\n", '
                     f'(long long)MODEL_SCRATCH_BYTES(1), (long long)MODEL_SCRATCH_BYTES({least - 1}), '
                     f'(long long)MODEL_SCRATCH_BYTES({least})); return 0; }}\n')
    subprocess.run([cc, "-std=c99", "-Wall", "-Werror", str(probe), "-o", str(tmp_path / "probe")], check=True)
    said = subprocess.run([str(tmp_path / "probe")], check=True, capture_output=True, text=True).stdout.split()
    assert [int(v) for v in said] == [result.scratch_bytes(r) for r in (1, least - 1, least)]
    assert result.scratch_bytes(least) - result.scratch_bytes(least - 1) >= result.scratch_bytes_pack
    forward = _load(result).model_forward
    x = np.random.default_rng(2).standard_normal((least + 7, 640)).astype(np.float32)
    want64 = np.maximum(x.astype(np.float64) @ model[0].weight.data + model[0].bias.data, 0) @ model[2].weight.data \
        + model[2].bias.data
    for rows in (1, least - 1, least, least + 7):
        need = result.scratch_bytes(rows) // 4
        scratch = np.full(need + 64, np.nan, np.float32)
        y = np.full((rows, 200), 7.0, np.float32)
        if need == 0:
            assert forward(_ptr(x), _ptr(y), rows, None) == entry.OK
        else:
            assert forward(_ptr(x), _ptr(y), rows, None) == entry.ERR_ARGS and (y == 7.0).all()
            assert forward(_ptr(x), _ptr(y), rows, _ptr(scratch)) == entry.OK
        assert np.isnan(scratch[need:]).all()  # nothing written past SCRATCH_BYTES(rows)
        np.testing.assert_allclose(y, model(Tensor(x[:rows])).data, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(y, want64[:rows], rtol=1e-4, atol=1e-4)


def test_external_weights_bind_only_their_layout(tmp_path):
    if not shutil.which("cc"):
        pytest.skip("no C compiler (cc) for the host's shared library")
    model = small_model()
    result = tc.export(model, tmp_path, input_shape=(None, 6), weights="external")
    lib = _load(result)
    lib.model_bind_weights.argtypes = [ctypes.c_void_p]
    x = np.ones((2, 6), np.float32)
    y = np.zeros((2, 3), np.float32)
    scratch = np.zeros(result.scratch_bytes(2) // 4 + 1, np.float32)
    assert lib.model_forward(_ptr(x), _ptr(y), 2, _ptr(scratch)) == entry.ERR_WEIGHTS  # nothing bound yet
    assert lib.model_forward(None, None, 0, None) == entry.ERR_WEIGHTS  # an empty call says so too
    blob = np.frombuffer(result.files["weights"].read_bytes(), np.uint8).copy()
    other = tc.export(Sequential(Linear(6, 4), ReLU(), Linear(4, 3)), tmp_path / "other", input_shape=(None, 6),
                      weights="external")
    wrong = np.frombuffer(other.files["weights"].read_bytes(), np.uint8).copy()
    assert lib.model_bind_weights(_ptr(wrong)) == entry.ERR_WEIGHTS
    assert lib.model_bind_weights(None) == entry.ERR_WEIGHTS
    assert lib.model_bind_weights(_ptr(blob[1:].copy()) + 1) == entry.ERR_WEIGHTS  # misaligned
    assert lib.model_forward(_ptr(x), _ptr(y), 2, _ptr(scratch)) == entry.ERR_WEIGHTS
    assert lib.model_bind_weights(_ptr(blob)) == entry.OK
    assert lib.model_forward(_ptr(x), _ptr(y), 2, _ptr(scratch)) == entry.OK
    model.eval()
    np.testing.assert_allclose(y, model(Tensor(x)).data, rtol=1e-5, atol=1e-6)


def test_no_call_writes_into_the_bound_weights(tmp_path):
    """y or scratch inside the bound weights returned OK and changed every later call's answer."""
    if not shutil.which("cc"):
        pytest.skip("no C compiler (cc) for the host's shared library")
    model = Sequential(Linear(256, 256))
    model.eval()
    result = tc.export(model, tmp_path, input_shape=(None, 256), weights="external")
    lib = _load(result)
    lib.model_bind_weights.argtypes = [ctypes.c_void_p]
    blob = np.frombuffer(result.files["weights"].read_bytes(), np.uint8).copy()
    assert lib.model_bind_weights(_ptr(blob)) == entry.OK
    bound, end = entry.HEADER_BYTES, blob.size  # where the floats sit in the blob
    rows = result.pack_rows  # (fewer rows need no scratch: the layer then reads W in place)
    x = np.ones((rows, 256), np.float32)
    y = np.zeros((rows, 256), np.float32)
    scratch = np.zeros(result.scratch_bytes(rows) // 4 + 1, np.float32)
    before = blob.copy()
    for y_at, s_at in [(_ptr(blob, bound), _ptr(scratch)), (_ptr(blob, end - 4), _ptr(scratch)),
                       (_ptr(y), _ptr(blob, bound + 1024))]:
        assert lib.model_forward(_ptr(x), y_at, rows, s_at) == entry.ERR_ARGS
    np.testing.assert_array_equal(blob, before)
    assert lib.model_forward(_ptr(x), _ptr(y), rows, _ptr(scratch)) == entry.OK
    np.testing.assert_allclose(y, model(Tensor(x)).data, rtol=1e-5, atol=1e-5)


def test_the_harness_refuses_a_weights_file_of_another_size(tmp_path):
    """model_bind_weights reads MODEL_WEIGHTS_BYTES from its pointer (it takes no length): the
    harness checks the file's size first, so a truncated file is an error, not a read past its end."""
    skip_unless_runnable("host")
    result = tc.export(small_model(), tmp_path, input_shape=(None, 6), weights="external")
    command = build("host", tmp_path)
    np.ones((2, 6), np.float32).tofile(tmp_path / "input.f32")
    blob = result.files["weights"].read_bytes()
    (tmp_path / "cut.bin").write_bytes(blob[:100])
    done = subprocess.run([*command, "input.f32", "-w", "cut.bin", "2"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=60, check=False)
    assert done.returncode == 3, (done.returncode, done.stderr)
    assert f"cut.bin has 100 bytes; this model's weights file has {len(blob)}" in done.stderr
    ok = subprocess.run([*command, "input.f32", "-w", result.files["weights"].name, "2"], capture_output=True,
                        text=True, cwd=tmp_path, timeout=60, check=False)
    assert ok.returncode == 0 and ok.stdout.rstrip().endswith("done"), ok.stderr


def test_two_exports_link_into_one_program(tmp_path):
    """Everything but the entry points is internal: two models share a program without clashes."""
    cc = shutil.which("cc") or pytest.skip("no C compiler (cc)")
    tc.export(small_model(), tmp_path, input_shape=(None, 6), name="first")
    tc.export(Sequential(Linear(4, 2)), tmp_path, input_shape=(None, 4), name="second")
    (tmp_path / "main.c").write_text(textwrap.dedent("""\
        #include <stdio.h>
        #include "first.h"
        #include "second.h"
        int main(void) {
            float x[6] = {1, 2, 3, 4, 5, 6}, y[3], z[2];
            static float s1[1 << 12], s2[1 << 12];
            if (FIRST_SCRATCH_BYTES(1) > (int64_t)sizeof s1 || SECOND_SCRATCH_BYTES(1) > (int64_t)sizeof s2) return 9;
            int rc = first_forward(x, y, 1, s1) | second_forward(x, z, 1, s2);
            printf("%d %.6f\\n", rc, y[0] + y[1] + y[2]);
            return 0;
        }
        """))
    exe = tmp_path / "main"
    subprocess.run([cc, "-std=c99", "-Wall", "-Werror", f"-I{tmp_path}", str(tmp_path / "main.c"),
                    str(tmp_path / "first.o"), str(tmp_path / "second.o"), "-o", str(exe)], check=True)
    rc, total = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split()
    assert rc == "0" and abs(float(total) - 1.0) < 1e-5  # a softmax row sums to one


class BatchSum(Layer):
    def forward(self, x):
        return x.sum(axis=0)


@pytest.mark.parametrize("kwargs, error, words", [
    ({"target": "riscv"}, ValueError, "unknown target 'riscv'"),
    ({"name": "3model"}, ValueError, "C identifier"),
    ({"name": "int"}, ValueError, "C identifier"),
    ({"weights": "sideways"}, ValueError, "weights must be one of embedded, external"),
    ({"training": "yes"}, TypeError, "training must be True or False"),
    ({"input_shape": (None,)}, ValueError, "input_shape must be (batch, features...)"),
])
def test_bad_arguments_are_refused_before_writing(tmp_path, kwargs, error, words):
    args = {"input_shape": (None, 6), **kwargs}
    with pytest.raises(error) as info:
        tc.export(small_model(), tmp_path / "out", **args)
    assert words in str(info.value)
    assert not (tmp_path / "out").exists()


def test_what_cannot_be_compiled_is_refused_before_writing(tmp_path):
    with pytest.raises(tc.CompileError, match=r"runs over the batch dimension N"):
        tc.export(BatchSum(), tmp_path / "out", input_shape=(None, 3))
    assert not (tmp_path / "out").exists()


def test_missing_linker_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no tools at all
    with pytest.raises(ToolMissing, match="wasm-ld.*lld-19"):
        tc.export(small_model(), tmp_path / "out", input_shape=(None, 6), target="wasm32")
    assert not (tmp_path / "out").exists()


def test_a_failed_link_leaves_the_folder_as_it_was(tmp_path, monkeypatch):
    """The header and object were written before the link ran: a failed link left a new folder
    half made, or an old library beside a new header that named other sizes."""
    if not shutil.which("cc"):
        pytest.skip("no C compiler (cc) for the host's shared library")
    first = tc.export(small_model(), tmp_path / "out", input_shape=(None, 6))
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    assert set(before) == {"model.o", "model.h", "libmodel.so"} and first.files["header"].parent == tmp_path / "out"
    bad_cc = tmp_path / "bin" / "cc"
    bad_cc.parent.mkdir()
    bad_cc.write_text("#!/bin/sh\necho 'ld: cannot link' >&2\nexit 1\n")
    bad_cc.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bad_cc.parent}:{os.environ['PATH']}")
    wider = Sequential(Linear(6, 5))
    for folder in (tmp_path / "out", tmp_path / "new" / "deeper"):  # the folders it made go too
        with pytest.raises(RuntimeError, match="linking the shared library failed"):
            tc.export(wider, folder, input_shape=(None, 6))
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before
    assert not (tmp_path / "new").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", "out"]  # no staging folder left


def test_the_files_are_staged_inside_the_folder(tmp_path, monkeypatch):
    """Staged beside the folder, an export into a mount point (a container's volume) failed: the
    move crossed file systems (EXDEV). Every move now stays inside the folder."""
    moves = []
    real = os.replace

    def watched(src, dst):
        moves.append((Path(src), Path(dst)))
        return real(src, dst)
    monkeypatch.setattr(files.os, "replace", watched)
    tc.export(small_model(), tmp_path / "vol", input_shape=(None, 6), target="thumbv7em-none-eabihf")
    assert moves and all(tmp_path / "vol" in src.parents and tmp_path / "vol" in dst.parents for src, dst in moves)
    assert not [p for p in (tmp_path / "vol").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("after", [1, 3, 4, 5], ids=["an old file moved out", "every old file moved out",
                                                     "a new file moved in", "two moved in"])
@needs_wasm_ld
def test_an_interrupt_while_the_files_move_in_leaves_the_old_export(tmp_path, monkeypatch, after):
    """The files moved in one replace after another: a Ctrl-C between two left a new model.o beside
    the old model.h and libmodel.so, which a C program built against that header would misuse."""
    out = tmp_path / "out"
    tc.export(small_model(), out, input_shape=(None, 6), target="wasm32")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real, moves = os.replace, []

    def interrupted(src, dst):
        real(src, dst)
        moves.append(dst)
        if len(moves) == after:
            raise KeyboardInterrupt
    monkeypatch.setattr(files.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tc.export(Sequential(Linear(6, 5)), out, input_shape=(None, 6), target="thumbv7em-none-eabihf",
                  weights="external")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # and no staging folder left


def test_a_folder_where_an_export_file_goes_is_refused_and_kept(tmp_path):
    """Moved aside with the files an export replaces, a user's folder named libmodel.so went when the
    staging folder was removed; before the all-or-nothing move, os.replace refused it."""
    if not shutil.which("cc"):
        pytest.skip("no C compiler (cc) for the host's shared library")
    out = tmp_path / "out"
    (out / "libmodel.so").mkdir(parents=True)
    (out / "libmodel.so" / "precious.txt").write_text("the user's own")
    with pytest.raises(IsADirectoryError, match=r"the export would replace .*libmodel.so, which is not a file"):
        tc.export(small_model(), out, input_shape=(None, 6))
    assert (out / "libmodel.so" / "precious.txt").read_text() == "the user's own"
    assert sorted(p.name for p in out.iterdir()) == ["libmodel.so"]


@needs_wasm_ld
def test_a_second_interrupt_while_moving_back_still_leaves_the_old_export(tmp_path, monkeypatch):
    """The moving back ran once: a second Ctrl-C there left the old files in the staging folder, which
    went with it (a helper's folder ended with only the user's notes.txt)."""
    out = tmp_path / "out"
    tc.export(small_model(), out, input_shape=(None, 6), target="wasm32", weights="external")
    (out / "notes.txt").write_text("the user's own")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real, calls = os.replace, []

    def interrupted_twice(src, dst):
        calls.append(dst)
        if len(calls) in (4, 5):  # the fourth file moved aside, then the first moved back
            raise KeyboardInterrupt
        real(src, dst)
    monkeypatch.setattr(files.os, "replace", interrupted_twice)
    with pytest.raises(KeyboardInterrupt):
        tc.export(Sequential(Linear(6, 5)), out, input_shape=(None, 6), target="thumbv7em-none-eabihf")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@needs_wasm_ld
def test_two_exports_into_one_folder_take_turns(tmp_path):
    """Two exports moving their files into one folder at once mixed them (one's header beside the
    other's object), both reporting success: the folder is locked while one puts its files there."""
    out = tmp_path / "out"
    tc.export(small_model(), out, input_shape=(None, 6), target="wasm32")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    done = threading.Event()
    with files._locked(out):
        worker = threading.Thread(target=lambda: (tc.export(Sequential(Linear(6, 5)), out, input_shape=(None, 6),
                                                            target="thumbv7em-none-eabihf"), done.set()))
        worker.start()
        worker.join(timeout=3.0)
        assert not done.is_set() and {p.name: p.read_bytes() for p in out.iterdir()} == before
    worker.join(timeout=60)
    assert done.is_set() and sorted(p.name for p in out.iterdir()) == ["model.h", "model.o"]
    assert b"#define MODEL_OUTPUT_DIM1 5\n" in (out / "model.h").read_bytes()


@needs_wasm_ld
def test_a_staging_folder_left_by_an_interrupted_export_is_removed_by_the_next(tmp_path):
    out = tmp_path / "out"
    (out / ".model-export-left" / "old").mkdir(parents=True)
    (out / ".model-export-left" / "old" / "model.o").write_bytes(b"an old object")
    tc.export(small_model(), out, input_shape=(None, 6), target="wasm32")
    assert sorted(p.name for p in out.iterdir()) == ["model.h", "model.o", "model.wasm"]


@needs_wasm_ld
def test_a_dangling_link_as_the_folder_or_a_fifo_where_a_file_goes_is_named(tmp_path):
    """A dangling symbolic link as the folder failed after the whole compile with mkdir's bare "File
    exists"; a FIFO where the header goes was refused as a directory."""
    link = tmp_path / "build"
    link.symlink_to(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match=r"the export folder .*build is a symbolic link to .*missing, which "
                                                r"does not exist"):
        tc.export(small_model(), link, input_shape=(None, 6), target="wasm32")
    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / "model.h")
    with pytest.raises(FileExistsError, match=r"the export would replace .*model.h, which is not a file"):
        tc.export(small_model(), out, input_shape=(None, 6), target="wasm32")
    assert sorted(p.name for p in out.iterdir()) == ["model.h"]


@needs_wasm_ld
def test_a_full_disk_is_named_with_the_folder_and_leaves_it_as_it_was(tmp_path, monkeypatch):
    """On a full disk the export raised a bare '[Errno 28] No space left on device', naming no folder."""
    import errno
    out = tmp_path / "out"
    tc.export(small_model(), out, input_shape=(None, 6), target="wasm32")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def full(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(OSError, match=f"could not write the export into {out}: No space left on device") as caught:
        tc.export(Sequential(Linear(6, 5)), out, input_shape=(None, 6), target="wasm32")
    assert caught.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


class RowMean(Layer):
    def forward(self, x):
        return x.mean(axis=-1, keepdims=True)


@pytest.mark.parametrize("target", TARGETS)
def test_a_mean_over_a_count_float32_cannot_hold_exports_to_every_target(tmp_path, target):
    """mean divides by such a count in float64, as np.mean does; the Cortex-M4F has no float64
    hardware and an export links no soft-float library: 'would call __aeabi_ddiv' refused the export
    there. It divides by the count's nearest float32 (a sample of 2**24 floats fits no such board)."""
    skip_unless_exportable(target)
    result = tc.export(RowMean(), tmp_path, input_shape=(None, 2**24 + 1), target=target)
    assert result.files["object"].exists()


def test_an_export_for_another_target_removes_the_files_it_does_not_write(tmp_path):
    """A wasm32 export, then a host one into the same folder, left model.wasm beside the new header:
    run_wasm.mjs ran the old model with the new header's sizes, without an error."""
    skip_unless_runnable("wasm32")
    if not shutil.which("cc"):
        pytest.skip("no C compiler (cc) for the host's shared library")
    out = tmp_path / "out"
    tc.export(small_model(), out, input_shape=(None, 6), target="wasm32", weights="external")
    assert {"model.wasm", "model.bin"} <= {p.name for p in out.iterdir()}
    tc.export(Sequential(Linear(6, 5)), out, input_shape=(None, 6), target="host")
    assert sorted(p.name for p in out.iterdir()) == ["libmodel.so", "model.h", "model.o"]
    (out / "keep.txt").write_text("the user's own")
    result = tc.export(small_model(), out, input_shape=(None, 6), target="wasm32", name="model")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt", "model.h", "model.o", "model.wasm"]
    assert set(result.files) == {"object", "header", "wasm"}


def test_the_cortex_m_heap_ends_with_the_boards_ram(tmp_path):
    """newlib's _sbrk took QEMU's reported 32 MB heap for the 4 MB board, whose RAM QEMU mirrors:
    a 2.3 MB input file (its read buffer doubles to 4 MB) overwrote the model's scratch and every
    128th output row came out wrong, without an error. Now the harness runs out of memory, loudly."""
    skip_unless_runnable("thumbv7em-none-eabihf")
    from tests.export.runners import run_export

    manual_seed(6)
    model = Sequential(Linear(64, 256), ReLU(), Linear(256, 64))
    x = np.random.default_rng(0).standard_normal((9000, 64)).astype(np.float32)
    tc.export(model, tmp_path, input_shape=(None, 64), target="thumbv7em-none-eabihf")
    small = run_export("thumbv7em-none-eabihf", tmp_path, x[:1000], [1000])[1000]
    np.testing.assert_allclose(small, model(Tensor(x[:1000])).data, rtol=1e-4, atol=1e-5)
    with pytest.raises(AssertionError, match="out of memory reading input.f32"):
        run_export("thumbv7em-none-eabihf", tmp_path, x, [1000])
