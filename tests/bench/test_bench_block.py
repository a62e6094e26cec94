"""`tinycomp bench --models block`: the transformer block in every engine, each in its own process,
parity-checked before timing (tiny sizes here: `block-tiny`, embed 12, 3 heads, seq 5)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.bench.engine_forms import assert_bench_runs_in_every_installed_engine, optional_engine_outputs
from tinycomp.bench.models import MODELS, get_model, numpy_function
from tinycomp.nn import Tensor
from tinycomp.parity import check_parity


def test_bench_runs_the_block_in_every_installed_engine(tmp_path, capsys):
    assert_bench_runs_in_every_installed_engine("block-tiny", tmp_path, capsys)


def test_the_full_size_block_is_the_issues_shape():
    bm = get_model("block")
    assert (bm.embed, bm.heads, bm.seq, bm.hidden) == (128, 4, 64, 512) and bm.in_shape == (64, 128)
    model = bm.build(0)
    assert sum(p.data.nbytes for p in model.parameters()) == bm.weight_bytes
    assert bm.sample(2).shape == (2, 64, 128)


@pytest.mark.parametrize("name", ["block-tiny", "block-tiny-causal"])
@pytest.mark.parametrize("batch", [0, 1, 3])
def test_every_engines_block_matches_eager_and_float64(batch, name):
    """The NumPy, ONNX and torch forms are written apart from the tinycomp layers: all three must
    agree with the eager block within the parity rule, judged by the float64 NumPy form."""
    bm = MODELS[name]
    model = bm.build(3)
    weights = bm.weights(model)
    x = bm.sample(batch, 3)
    eager = model(Tensor(x)).data
    reference = numpy_function(bm, weights, np.float64)(x.astype(np.float64))
    assert check_parity(eager, eager, reference, max_eager_error=1e-5).ok  # the float64 form is the block
    outs = {"numpy": numpy_function(bm, weights)(x)}
    outs.update(optional_engine_outputs(bm, weights, x))
    for name, out in outs.items():
        report = check_parity(out, eager, reference)
        assert report.ok, f"{name}: {report}"
    if batch:  # the reference is a real block: not the input passed through
        assert np.abs(reference - x).max() > 0.1
    if batch and bm.causal:  # and the mask matters: without it the block gives another result
        plain = numpy_function(MODELS["block-tiny"], weights, np.float64)(x.astype(np.float64))
        assert np.abs(reference - plain)[:, :-1].max() > 1e-3 and np.abs(reference - plain)[:, -1].max() < 1e-9


def test_the_causal_block_compiles_its_mask_into_the_attention_node():
    import tinycomp as tc

    bm = MODELS["block-tiny-causal"]
    fast = tc.compile(bm.build(0))
    x = bm.sample(3)
    assert_parity = check_parity(fast(x).data, bm.build(0)(Tensor(x)).data,
                                 numpy_function(bm, bm.weights(bm.build(0)), np.float64)(x.astype(np.float64)))
    assert assert_parity.ok, str(assert_parity)
    [node] = fast.graph.nodes("attention")
    assert fast.graph.args(node)[3] == "mask" and fast.graph.attrs(node)["mask_value"] == float(np.float32(-1e9))
