"""The bench's transformer block as ONNX Runtime and torch run it (`tinycomp/bench/block.py`),
brought back with from_onnx and from_torch: each compiles to the same fused kernels as the
tinycomp block it was written from, and computes what it computes."""

from __future__ import annotations

import pytest

onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install -e '.[onnx]')")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e '.[onnx]')")
torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install -e '.[torch]')")
from interop_helpers import assert_close_to_framework  # noqa: E402
from onnx_graphs import runtime  # noqa: E402

import tinycomp as tc  # noqa: E402
from tinycomp.bench.block import onnx_block_bytes, torch_block  # noqa: E402
from tinycomp.bench.models import get_model  # noqa: E402
from tinycomp.interop import from_onnx, from_torch  # noqa: E402
from tinycomp.parity import check_parity, float64_reference  # noqa: E402


@pytest.mark.parametrize("source", ["onnx", "torch"])
@pytest.mark.parametrize("name", ["block-tiny", "block-tiny-causal"])
def test_block_from_onnx_runtime_and_torch(name, source):
    bm = get_model(name)
    own = bm.build()
    weights = bm.weights(own)
    shape = (None, *bm.sample(1).shape[1:])
    if source == "onnx":
        blob = onnx_block_bytes(bm, weights)
        model, framework = from_onnx(blob), runtime(blob)
    else:
        module = torch_block(bm, weights)
        model = from_torch(module, input_shape=shape)

        def framework(x):
            with torch.no_grad():
                return module(torch.from_numpy(x)).numpy()
    fast = tc.compile(model, input_shape=shape)
    ops = {fast.graph.op(n) for n in fast.graph.nodes()}
    assert {"attention", "layer_norm"} <= ops and not {"softmax", "transpose", "mean"} & ops
    for rows in (1, 4):
        x = bm.sample(rows, seed=rows)
        want = framework(x)
        assert_close_to_framework(own(x).data, want, f"the tinycomp block, batch {rows}")
        assert_close_to_framework(model(x).data, want, f"eager, batch {rows}")
        compiled = fast(x).data
        assert_close_to_framework(compiled, want, f"compiled, batch {rows}")
        report = check_parity(compiled, model(x).data, float64_reference(fast.graph, x))
        assert report.ok, f"batch {rows}: {report}"
