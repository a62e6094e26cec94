"""The bench models' forms in the other engines, run in this process for parity tests: which optional
engines are installed, and each one's output for an input; and the check that the bench runs a model."""

from __future__ import annotations

import importlib.util
import json
from typing import Any

import numpy as np

from tinycomp.bench import bench_main
from tinycomp.bench.models import onnx_model_bytes, torch_module

OPTIONAL = [e for e, mod in (("onnxruntime", "onnxruntime"), ("torch", "torch"))
            if importlib.util.find_spec(mod) is not None]


def optional_engine_outputs(bm: Any, weights: Any, x: np.ndarray) -> dict[str, np.ndarray]:
    """{engine: output} of the model's ONNX form under ONNX Runtime and its torch module, where installed."""
    outs = {}
    if "onnxruntime" in OPTIONAL:
        import onnxruntime as ort

        sess = ort.InferenceSession(onnx_model_bytes(bm, weights), providers=["CPUExecutionProvider"])
        outs["onnxruntime"] = sess.run(["y"], {"x": x})[0]
    if "torch" in OPTIONAL:
        import torch

        with torch.inference_mode():
            outs["torch"] = torch_module(bm, weights)(torch.from_numpy(x)).numpy()
    return outs


def assert_bench_runs_in_every_installed_engine(model: str, tmp_path: Any, capsys: Any) -> None:
    """`tinycomp bench --models MODEL --batch 1,3 --quick` over numpy, eager, compiled and the installed
    optional engines: a row per engine and batch, each timed, and the model named in the report."""
    out = tmp_path / f"{model}.json"
    engines = ["numpy", "eager", "compiled", *OPTIONAL]
    args = ["--models", model, "--batch", "1,3", "--engines", ",".join(engines), "--quick",
            "--no-compile-times", "--peak", "100", "--json", str(out)]
    assert bench_main(args) == 0
    rows = json.loads(out.read_text())["rows"]
    assert {(r["engine"], r["batch"]) for r in rows} == {(e, b) for e in engines for b in (1, 3)}
    assert all(r["model"] == model and r["median_us"] > 0 for r in rows)
    assert model in capsys.readouterr().out
