"""lead_mismatch: does a forward compute each sample alike for (*lead, *features) as in a batch?
And what a compiled model does with such inputs: eager's result, or a ValueError saying why not."""

from __future__ import annotations

import numpy as np
import pytest

import tinycomp as tc
from tinycomp import trace
from tinycomp.ir.leading import lead_mismatch
from tinycomp.nn import Layer, Linear, Softmax, Tensor, manual_seed
from tinycomp.parity import check_parity, float64_reference

FEATURES = (3, 4)


class Forward(Layer):
    def __init__(self, forward, width: int = 4):
        manual_seed(0)
        self.fc = Linear(width, width)
        self.run = forward

    def forward(self, x):
        return self.run(self, x)


ALIKE = {  # a batch and (*lead, *features) compute the same rows
    "softmax -1": lambda m, x: Softmax(dim=-1)(m.fc(x)),
    "transpose -2 -1": lambda m, x: m.fc(x).transpose(-2, -1) * 2,
    "sum -2": lambda m, x: m.fc(x).sum(axis=-2, keepdims=True) + x,
    "regroup rows": lambda m, x: m.fc(x.reshape(-1, 12).reshape(-1, 3, 4)),
    "merge rows, scale": lambda m, x: m.fc(x).reshape(x.shape[0], -1) * 0.5,
}
DIFFERENT = {  # a positive dim, or rows merged and then normalized: eager computes other values
    "softmax 1": (lambda m, x: Softmax(dim=1)(m.fc(x)), "softmax node .* other axes"),
    "transpose 1 2": (lambda m, x: m.fc(x).transpose(1, 2) * 2, "transpose node .* other axes"),
    "sum 1": (lambda m, x: m.fc(x).sum(axis=1, keepdims=True) + x, "sum node .* other axes"),
    "merge rows, softmax": (lambda m, x: Softmax(dim=-1)(m.fc(x).reshape(x.shape[0], -1)),
                            "softmax node .* mixes values"),
}


@pytest.mark.parametrize("lead", [(), (2, 5), (1,)], ids=["one sample", "2x5", "1"])
@pytest.mark.parametrize("name", list(ALIKE))
def test_forwards_that_treat_leading_dimensions_as_a_batch(name, lead):
    model = Forward(ALIKE[name])
    assert lead_mismatch(trace(model, (None, *FEATURES)), trace(model, (*lead, *FEATURES)), lead) is None
    fast = tc.compile(model, input_shape=(None, *FEATURES))
    x = np.random.default_rng(1).standard_normal((*lead, *FEATURES)).astype(np.float32)
    eager, out = model(Tensor(x)).data, fast(x).data
    assert out.shape == eager.shape
    assert check_parity(out.reshape(-1), eager.reshape(-1),
                        float64_reference(fast.graph, x.reshape(-1, *FEATURES)).reshape(-1)).ok


@pytest.mark.parametrize("lead", [(), (2, 5)], ids=["one sample", "2x5"])
@pytest.mark.parametrize("name", list(DIFFERENT))
def test_forwards_that_reach_into_leading_dimensions_are_refused(name, lead):
    forward, why = DIFFERENT[name]
    model = Forward(forward)
    batch = trace(model, (None, *FEATURES))
    x = np.random.default_rng(2).standard_normal((*lead, *FEATURES)).astype(np.float32)
    fast = tc.compile(model, input_shape=(None, *FEATURES))
    try:
        eager = model(Tensor(x)).data
    except ValueError:  # eager cannot run it either (transpose(1, 2) of one 2-D sample): nor the compiled call
        with pytest.raises(ValueError, match="this model cannot take an input of shape"):
            fast(x)
        return
    assert lead_mismatch(batch, trace(model, x.shape), lead) is not None
    y = fast(x[None] if not lead else x.reshape(-1, *FEATURES)).data  # as a batch it compiles and runs
    assert not np.allclose(y.reshape(eager.shape) if y.size == eager.size else y.reshape(-1)[:1], eager)
    with pytest.raises(ValueError, match=f"does not compute each sample as it does in a batch \\({why}"):
        fast(x)
