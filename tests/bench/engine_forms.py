"""The bench models' forms in the other engines, run in this process for parity tests: which optional
engines are installed, and each one's output for an input."""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np

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
