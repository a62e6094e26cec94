"""examples/transformer_import.py as a user runs it: a torch block in through from_torch and through
ONNX, each compiled to the fused kernels and matching torch."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="PyTorch is not installed (pip install -e '.[torch]')")
pytest.importorskip("onnx", reason="onnx is not installed (pip install -e '.[onnx]')")

ROOT = Path(__file__).resolve().parents[2]


# torch exports F.scaled_dot_product_attention with q and k each scaled by the scale's root before
# their product: the fused node then reads q and k so scaled (fuse_attention.prescaled)
@pytest.mark.parametrize("style, kernels", [("student", ["1 attention, 2 layer_norm, 6 linear"] * 2),
                                            ("nanogpt", ["1 attention, 2 layer_norm, 4 linear"] * 2),
                                            ("nanogpt-flash", ["1 attention, 2 layer_norm, 4 linear"] * 2)])
def test_transformer_import_example_matches_torch_and_fuses(capsys, style, kernels):
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "transformer_import.py"), "--style", style],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    with capsys.disabled():  # the figures in the test log
        print("\n" + out)
    for way, fused in zip(("from_torch", "from_onnx"), kernels, strict=True):
        line = re.search(rf"^{way}: imported .*$", out, re.M)
        assert line, out
        assert float(re.search(r"max \|difference from torch\| ([\d.e+-]+)", line.group(0)).group(1)) < 1e-4
        assert f"kernels: {fused}" in line.group(0)
        assert re.search(rf"^{way}: compiled [\d.]+ ms = [\d.]+ x torch eager$", out, re.M)
