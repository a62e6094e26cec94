"""examples/tour.ipynb executed in a real Jupyter kernel (`jupyter nbconvert --execute`)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed (pip install -e '.[notebook]')")
pytest.importorskip("nbconvert", reason="nbconvert is not installed (pip install -e '.[notebook]')")
pytest.importorskip("ipykernel", reason="ipykernel is not installed (pip install -e '.[notebook]')")

ROOT = Path(__file__).resolve().parents[2]


def test_tour_notebook_runs_and_shows_pictures_and_tables(tmp_path):
    out = tmp_path / "tour.ipynb"
    proc = subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
                           "--ExecutePreprocessor.timeout=300", str(ROOT / "examples" / "tour.ipynb"),
                           "--output", str(out)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    nb = nbformat.read(out, as_version=4)
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    html = [o.data["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert any("CompiledModel" in h and "What fused" in h and "linear" in h for h in html)  # the compiled model
    assert any("<table>" in h and "summary (batch 32)" in h and "total" in h for h in html)  # tc.summary
    svg = [o for o in outputs if "image/svg+xml" in o.get("data", {})]
    if shutil.which("dot"):
        assert len(svg) == 2 and all("<svg" in o.data["image/svg+xml"] for o in svg)  # traced and optimized
    text = "".join(o.get("text", "") for o in outputs)
    assert "max |compiled - eager| =" in text and "activation=relu" in text and "fused matmul" in text
    assert "x NumPy" in text and "tiny" in text  # the timings and the bench table
