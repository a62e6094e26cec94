"""What a new user meets first: the quick start, the dropout warning, docstrings, `tinycomp.Tensor`,
input-width changes, and eager and compiled taking the same inputs and weights."""

from __future__ import annotations

import ast
import contextlib
import doctest
import inspect
import io
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

import tinycomp as tc
import tinycomp.interop as interop
import tinycomp.nn as nn
from tinycomp.nn import Dropout, Linear, ReLU, Sequential, Sigmoid, Tensor, manual_seed

ROOT = Path(__file__).resolve().parents[1]
F64 = np.float64


def readme_block(heading: str, lang: str = "python") -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index(heading):]
    return re.search(rf"```{lang}\n(.*?)```", section, re.S).group(1)


def mlp64(model: Sequential, x: np.ndarray) -> np.ndarray:
    """A Sequential of Linear/ReLU/Sigmoid/Dropout(eval) in float64, written out here."""
    h = np.asarray(x, F64)
    for layer in model.layers:
        if isinstance(layer, Linear):
            h = h @ np.asarray(layer.weight.data if isinstance(layer.weight, Tensor) else layer.weight, F64)
            h = h + (layer.bias.data.astype(F64) if layer.bias is not None else 0)
        elif isinstance(layer, ReLU):
            h = np.maximum(h, 0)
        elif isinstance(layer, Sigmoid):
            h = 1 / (1 + np.exp(-h))
    return h


# ------------------------------------------------------------------ quick start and the dropout warning

def test_readme_quick_start_calls_eval_and_matches_eager():
    code = readme_block("## Quick start")
    assert "model.eval()" in code.split("tc.compile")[0], "the quick start must call model.eval() before compiling"
    out = io.StringIO()
    with contextlib.redirect_stdout(out), warnings.catch_warnings():
        warnings.simplefilter("error")  # the quick start as written raises no warning
        exec(compile(code, "README quick start", "exec"), {})
    first_line = out.getvalue().splitlines()[0]
    assert float(first_line) < 1e-5, f"quick start's eager vs compiled difference: {first_line}"


def test_export_of_a_model_in_training_mode_warns_as_compile_does(tmp_path):
    """tc.export folded a training-mode model's dropout away without a word (compile warns)."""
    manual_seed(0)
    model = Sequential(Linear(6, 5), Dropout(0.5))
    with pytest.warns(UserWarning) as record:
        tc.export(model, tmp_path, input_shape=(None, 6), target="thumbv7em-none-eabihf")
    [warned] = record
    message = str(warned.message)
    assert message.startswith("exporting Sequential for inference while 1 of its Dropout layers ('1' Dropout(p=0.5)) "
                              "are in training mode: the exported code leaves their dropout out")
    assert "export(model, ..., training=True)" in message and warned.filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tc.export(model, tmp_path / "kept", input_shape=(None, 6), target="thumbv7em-none-eabihf", training=True)
        model.eval()
        tc.export(model, tmp_path / "eval", input_shape=(None, 6), target="thumbv7em-none-eabihf")


def test_readme_says_why_eval():
    text = (ROOT / "README.md").read_text()
    assert "Why `model.eval()`" in text and "training mode" in text


def test_active_dropout_gives_one_warning_saying_what_and_how():
    manual_seed(0)
    model = Sequential(Linear(6, 5), ReLU(), Dropout(0.5), Linear(5, 3), Dropout(0.1))
    with pytest.warns(UserWarning) as record:
        fast = tc.compile(model)
        x = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
        fast(x)
        fast(x)
    assert len(record) == 1
    message = str(record[0].message)
    assert "2 of its Dropout layers" in message and "'2' Dropout(p=0.5)" in message
    assert "model.eval()" in message and "inference" in message and "compile(model, training=True)" in message
    assert record[0].filename == __file__  # points at the user's compile() call
    model.eval()
    np.testing.assert_allclose(fast(x).data, model(x).data, rtol=1e-5, atol=1e-6)


def test_a_plain_class_model_is_told_how_to_leave_training_mode():
    """TinyTorch writes its blocks as plain classes, without eval(): the advice named a method the
    model lacks."""
    class Plain:
        def __init__(self):
            self.fc, self.drop = Linear(6, 3), Dropout(0.5)

        def forward(self, x):
            return self.drop(self.fc(x))

        def __call__(self, x):
            return self.forward(x)
    model = Plain()
    with pytest.warns(UserWarning, match=r"call tinycomp.nn.set_training_mode\(model, False\) first") as record:
        tc.compile(model, input_shape=(None, 6))
    assert "model.eval()" not in str(record[0].message)
    nn.set_training_mode(model, False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tc.compile(model, input_shape=(None, 6))


@pytest.mark.parametrize("make", [
    lambda: Sequential(Linear(6, 3), ReLU(), Dropout(0.5)).eval(),
    lambda: Sequential(Linear(6, 3), Dropout(0.0)),
    lambda: Sequential(Linear(6, 3), ReLU()),
], ids=["eval", "p=0", "no-dropout"])
def test_no_warning_when_dropout_is_inactive(make):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tc.compile(make(), input_shape=(None, 6))


# ------------------------------------------------------------------ public names and their docstrings

def _public_members(cls: type) -> list[tuple[str, object]]:
    return [(name, value) for name, value in vars(cls).items()
            if not name.startswith("_") and (callable(value) or isinstance(value, property))]


@pytest.mark.parametrize("module", [tc, nn, interop], ids=lambda m: m.__name__)
def test_every_public_name_has_a_docstring(module):
    missing = []
    for name in module.__all__:
        obj = getattr(module, name)
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        if len(inspect.getdoc(obj) or "") < 40:
            missing.append(name)
        if inspect.isclass(obj):
            missing += [f"{name}.{m}" for m, v in _public_members(obj) if not (inspect.getdoc(v) or "").strip()]
    assert not missing, f"public names without a (full) docstring: {missing}"


def test_compile_documents_every_option_with_an_example():
    doc = inspect.getdoc(tc.compile)
    for param in inspect.signature(tc.compile).parameters:
        assert re.search(rf"^\s+{param}:", doc, re.M), f"compile's docstring does not document {param!r}"
    assert "ms" in doc.split("check:")[1].split("passes:")[0], "check=True's cost is not in the docstring"
    assert ">>>" in doc


def test_compile_docstring_example_runs():
    import tinycomp.compiler

    finder = doctest.DocTestFinder()
    [test] = [t for t in finder.find(tinycomp.compiler.compile, "compile") if t.examples]
    result = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS).run(test, out=lambda s: None)
    assert result.failed == 0 and result.attempted >= 6


def test_tensor_is_importable_from_the_top_package():
    from tinycomp import Tensor as TopTensor

    assert TopTensor is nn.Tensor and "Tensor" in tc.__all__


INTERNAL = re.compile(r"\bissue|\bDESIGN\b|\bsession\b", re.I)


def _docstring_nodes(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def test_no_internal_words_in_any_message():
    """No 'issue 5', 'issue-5 suite' or design-document names in what tinycomp prints or raises (every
    string but the docstrings of internal code, which the next test covers for the public names)."""
    found = []
    for path in sorted((ROOT / "tinycomp").rglob("*.py")):
        tree = ast.parse(path.read_text())
        docs = _docstring_nodes(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs \
                    and INTERNAL.search(node.value):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value[:60]!r}")
    assert not found, "\n".join(found)


@pytest.mark.parametrize("module", [tc, nn, interop], ids=lambda m: m.__name__)
def test_no_internal_words_in_public_docstrings(module):
    found = []
    for name in module.__all__:
        obj = getattr(module, name)
        docs = [(name, inspect.getdoc(obj))]
        if inspect.isclass(obj):
            docs += [(f"{name}.{m}", inspect.getdoc(v)) for m, v in _public_members(obj)]
        found += [where for where, doc in docs if doc and INTERNAL.search(doc)]
    assert not found, found


# ------------------------------------------------------------------ input width changes

def test_a_new_input_width_recompiles_when_input_shape_was_not_given():
    manual_seed(1)
    model = Sequential(Linear(784, 256), ReLU(), Linear(256, 10)).eval()
    fast = tc.compile(model)
    fast(np.zeros((2, 784), np.float32))
    model.layers[0] = Linear(100, 256)
    x = np.random.default_rng(2).standard_normal((3, 100)).astype(np.float32)
    got = fast(x).data
    np.testing.assert_allclose(got, model(x).data, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got, mlp64(model, x), rtol=1e-4, atol=1e-5)
    assert fast.stats.compiles == 2
    # a width-agnostic model follows its input
    act = tc.compile(Sequential(ReLU()))
    for width in (5, 9, 5):
        assert act(np.ones((2, width), np.float32)).shape == (2, width)


def test_a_pinned_input_shape_names_both_widths():
    manual_seed(1)
    model = Sequential(Linear(784, 256), ReLU(), Linear(256, 10)).eval()
    fast = tc.compile(model, input_shape=(None, 784))
    with pytest.raises(ValueError, match=r"\(batch, 784\).*\(2, 100\).*input_shape=\(None, 784\)"):
        fast(np.zeros((2, 100), np.float32))
    model.layers[0] = Linear(100, 256)
    with pytest.raises(ValueError, match=r"input_shape=\(None, 784\).*\(2, 100\)") as info:
        fast(np.zeros((2, 100), np.float32))
    assert "Cannot perform matrix multiplication" in str(info.value)


def test_a_width_the_model_cannot_take_names_both_widths():
    manual_seed(1)
    fast = tc.compile(Sequential(Linear(8, 4)).eval())
    fast(np.zeros((1, 8), np.float32))
    with pytest.raises(ValueError, match=r"\(batch, 8\).*\(2, 5\).*8"):
        fast(np.zeros((2, 5), np.float32))
    assert fast(np.zeros((3, 8), np.float32)).shape == (3, 4)  # still the width-8 code
    assert fast.stats.compiles == 1


# ------------------------------------------------------------------ same inputs and weights, eager and compiled

@pytest.mark.parametrize("as_weight", [lambda w: w, lambda w: w.astype(F64), np.asfortranarray],
                         ids=["float32", "float64", "fortran"])
def test_a_weight_rebound_to_an_array_runs_eagerly_and_compiled(as_weight):
    manual_seed(3)
    model = Sequential(Linear(6, 5), ReLU(), Linear(5, 3)).eval()
    fast = tc.compile(model)
    x = np.random.default_rng(4).standard_normal((7, 6)).astype(np.float32)
    fast(x)
    model.layers[0].weight = as_weight(model.layers[0].weight.data * 2)
    eager = model(x).data
    np.testing.assert_allclose(fast(x).data, eager, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(eager, mlp64(model, x), rtol=1e-5, atol=1e-6)
    model.layers.append(Sigmoid())  # a recompile traces the array weight: read live, not a snapshot
    fast(x)
    model.layers[0].weight[...] *= -1
    np.testing.assert_allclose(fast(x).data, model(x).data, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fast(x).data, mlp64(model, x), rtol=1e-5, atol=1e-6)
    assert fast.stats.compiles == 2


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.bool_])
def test_eager_and_compiled_take_the_same_arrays(dtype):
    manual_seed(5)
    model = Sequential(Linear(4, 3), ReLU()).eval()
    fast = tc.compile(model)
    x = (np.arange(8).reshape(2, 4) % 3).astype(dtype)
    np.testing.assert_allclose(model(x).data, fast(x).data, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(model(x).data, mlp64(model, x), rtol=1e-6, atol=1e-6)


def test_eager_linear_takes_a_list_as_the_compiled_model_does():
    manual_seed(6)
    model = Sequential(Linear(3, 2)).eval()
    x = [[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]]
    np.testing.assert_allclose(model(x).data, tc.compile(model)(x).data, rtol=1e-6, atol=1e-6)
    with pytest.raises(TypeError, match="numeric"):
        model("not numbers")


def test_tensor_matmul_takes_arrays_but_not_lists():
    """Tensor.matmul takes Tensors and arrays (a rebound weight); a list stays a TypeError, as in TinyTorch."""
    w = Tensor(np.ones((3, 2)))
    np.testing.assert_array_equal((np.ones((4, 3)) @ w).data, np.full((4, 2), 3.0))
    with pytest.raises(TypeError):
        _ = [[1.0, 2.0, 3.0]] @ w


def test_the_warnings_second_way_to_compare_works():
    """compile(model, training=True), as the warning says: no warning, and the same dropout as eager."""
    manual_seed(8)
    model = Sequential(Linear(6, 16), ReLU(), Dropout(0.5), Linear(16, 3))
    x = np.random.default_rng(9).standard_normal((7, 6)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fast = tc.compile(model, training=True)
    manual_seed(10)
    eager = model(x).data
    manual_seed(10)
    np.testing.assert_allclose(fast(x).data, eager, rtol=1e-5, atol=1e-6)
