"""The importers' frameworks are optional: imported lazily, and a missing one names its pip extra."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tinycomp.interop import from_onnx, from_sklearn, from_torch


@pytest.mark.parametrize("importer, module, extra", [
    (from_torch, "torch", "torch"), (from_onnx, "onnx", "onnx"), (from_sklearn, "sklearn.neural_network", "sklearn"),
])
def test_a_missing_framework_names_the_pip_extra(monkeypatch, importer, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    with pytest.raises(ImportError,
                       match=rf"{importer.__name__} needs .*pip install -e '\.\[{extra}\]' in the tinycomp checkout"):
        importer(object())


def test_importing_tinycomp_interop_loads_no_framework():
    code = ("import sys, tinycomp, tinycomp.interop\n"
            "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"
