import pytest

from tests.models import reference_mlp
from tinycomp.frontend.tracer import trace
from tinycomp.ir.passes import run_pipeline
from tinycomp.ir.summary import summarize
from tinycomp.nn import manual_seed


@pytest.fixture
def graphs():
    manual_seed(0)
    g = trace(reference_mlp(), (None, 784))
    return g, run_pipeline(g)


def test_reference_mlp_totals(graphs):
    for g in graphs:
        s = summarize(g, 32)
        assert (s.parameters, s.param_bytes, s.macs) == (235_146, 940_584, 7_512_064)
        assert [r.macs for r in s.rows if r.macs] == [6_422_528, 1_048_576, 40_960]


def test_flops_are_two_per_mac_plus_elementwise(graphs):
    traced, optimized = (summarize(g, 32) for g in graphs)
    bias_and_relu = 32 * (256 + 128 + 10) + 32 * (256 + 128)
    assert optimized.flops == 2 * 7_512_064 + bias_and_relu
    # an eval-mode dropout computes nothing (the compiled graph has none): summary(model) counted
    # 12,288 FLOPs for it that summary(compiled graph) did not; a training-mode one draws and scales
    assert traced.flops == optimized.flops
    assert [r.flops for r in traced.rows if r.op == "dropout"] == [0, 0]
    drawn = summarize(trace(reference_mlp(), (None, 784), training=True), 32)
    assert [r.flops for r in drawn.rows if r.op == "dropout"] == [32 * 256, 32 * 128]


def test_rows_and_text(graphs):
    s = summarize(graphs[1], 32)
    assert [r.op for r in s.rows][:1] == ["input"] and s.rows[-1].op == "output"
    first = next(r for r in s.rows if r.op == "linear")
    assert first.shape == (32, 256) and first.activation_bytes == 32 * 256 * 4
    text = str(s)
    assert "235,146" in text and "940,584" in text and "7,512,064" in text and "batch 32" in text
    assert len(text.splitlines()) == len(s.rows) + 5


def test_dynamic_batch_needs_a_batch(graphs):
    with pytest.raises(ValueError, match="batch"):
        summarize(graphs[0])
    assert summarize(trace(reference_mlp(), (8, 784))).macs == 7_512_064 // 4


def test_summary_without_input_shape_takes_the_first_linears_width():
    """`tc.summary(model)`: batch 1 and the first Linear's width (784 was the default for every model,
    so another model's error named a width its user never wrote); no Linear first: ask for the shape."""
    import tinycomp as tc
    from tinycomp.nn import Linear, ReLU, Sequential

    manual_seed(0)
    narrow = Sequential(Sequential(Linear(12, 5)), ReLU(), Linear(5, 2))
    s = tc.summary(narrow)
    assert s.macs == 12 * 5 + 5 * 2 and s.parameters == 12 * 5 + 5 + 5 * 2 + 2 and "batch 1" in str(s)
    assert tc.summary(reference_mlp()).macs == 7_512_064 // 32
    with pytest.raises(ValueError, match=r"summary needs input_shape=\(batch, features\.\.\.\) for this Sequential: "
                                         r"its first layer is ReLU, not a Linear"):
        tc.summary(Sequential(ReLU(), Linear(5, 2)))
    assert tc.summary(tc.compile(narrow, input_shape=(None, 12)).graph).macs == s.macs


@pytest.mark.parametrize("first", [32, None])
def test_summary_takes_an_input_shared_by_every_sample_as_compile_does(first):
    """[(32, 8, 16), (8, 8)]: the (8, 8) mask was traced as (N, 8), which no attention takes."""
    import tinycomp as tc
    from tinycomp.nn import TransformerBlock
    block = TransformerBlock(16, 4)
    s = tc.summary(block, [(first, 8, 16), (8, 8)])
    per_sample = tc.summary(block, [(first, 8, 16), (first, 8, 8)])
    assert s.parameters == per_sample.parameters == sum(p.data.size for p in block.parameters())
    assert s.macs == per_sample.macs > 0
