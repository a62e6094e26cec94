"""`tinycomp bench --models lnmlp`: the LayerNorm MLP in every engine, each in its own process,
parity-checked before timing (tiny sizes here: `lnmlp-tiny`, width 17, depth 2)."""

from __future__ import annotations

import numpy as np
import pytest

import tinycomp as tc
from tests.bench.engine_forms import assert_bench_runs_in_every_installed_engine, optional_engine_outputs
from tinycomp.bench.models import MODELS, numpy_function
from tinycomp.nn import Tensor
from tinycomp.parity import check_parity


def test_bench_runs_the_lnmlp_in_every_installed_engine(tmp_path, capsys):
    assert_bench_runs_in_every_installed_engine("lnmlp-tiny", tmp_path, capsys)


def test_the_full_size_lnmlp_is_the_issues_shape_and_compiles_to_four_norms():
    bm = MODELS["lnmlp"]
    model = bm.build(0)
    assert sum(p.data.nbytes for p in model.parameters()) == bm.weight_bytes
    assert bm.flops_per_sample * 256 == 536_870_912  # the issue's 537 MFLOP at batch 256
    fast = tc.compile(model, input_shape=(None, 512))
    assert fast.graph.op_counts()["layer_norm"] == 4 and fast.graph.op_counts()["linear"] == 4
    x = bm.sample(3)
    report = check_parity(fast(x).data, model(Tensor(x)).data,
                          numpy_function(bm, bm.weights(model), np.float64)(x.astype(np.float64)))
    assert report.ok, report


@pytest.mark.parametrize("batch", [0, 1, 3])
def test_every_engines_lnmlp_matches_eager_and_float64(batch):
    """The NumPy, ONNX and torch forms are written apart from the tinycomp layers: all must agree
    with the eager model within the parity rule, judged by the float64 NumPy form."""
    bm = MODELS["lnmlp-tiny"]
    model = bm.build(3)
    weights = bm.weights(model)
    x = bm.sample(batch, 3)
    eager = model(Tensor(x)).data
    reference = numpy_function(bm, weights, np.float64)(x.astype(np.float64))
    assert check_parity(eager, eager, reference, max_eager_error=1e-5).ok  # the float64 form is the model
    outs = {"numpy": numpy_function(bm, weights)(x), "compiled": tc.compile(model, input_shape=(None, 17))(x).data}
    outs.update(optional_engine_outputs(bm, weights, x))
    for name, out in outs.items():
        report = check_parity(out, eager, reference)
        assert report.ok, f"{name}: {report}"
    if batch:  # the reference normalizes: each stage's input scaled by 10 changes nothing but eps's share
        scaled = numpy_function(bm, weights, np.float64)(10 * x.astype(np.float64))
        assert np.abs(reference).max() > 0.1 and np.abs(scaled - reference).max() < 1e-3
