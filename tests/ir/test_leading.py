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


SHAPE_NUMBERS = {  # numbers the forward takes from the input's shape: constants of the trace
    "x.shape[-2] ** -0.5": lambda m, x: m.fc(x) * float(x.shape[-2]) ** -0.5,
    "x.ndim": lambda m, x: m.fc(x) * float(x.ndim),
}


@pytest.mark.parametrize("lead", [(), (2, 5)], ids=["one sample", "2x5"])
@pytest.mark.parametrize("name", list(SHAPE_NUMBERS))
def test_a_number_taken_from_the_input_shape_is_compared(name, lead):
    """A constant that differs between the batch trace and the (*lead, *features) one is refused by
    name; where it comes out the same (x.shape[-2] is a feature axis), the call runs and matches."""
    model = Forward(SHAPE_NUMBERS[name])
    x = np.random.default_rng(3).standard_normal((*lead, *FEATURES)).astype(np.float32)
    fast = tc.compile(model, input_shape=(None, *FEATURES))
    mismatch = lead_mismatch(trace(model, (None, *FEATURES)), trace(model, x.shape), lead)
    if name == "x.ndim":
        assert mismatch is not None and "const node" in mismatch
        with pytest.raises(ValueError, match=r"const node \S+ is \d\.0 for that input but 3\.0 for a batch"):
            fast(x)
        return
    assert mismatch is None
    eager, out = model(Tensor(x)).data, fast(x).data
    assert check_parity(out.reshape(-1), eager.reshape(-1),
                        float64_reference(fast.graph, x.reshape(-1, *FEATURES)).reshape(-1)).ok


def test_constants_compare_by_value_sign_and_nan():
    """+0 and -0 differ (a divide tells them apart); NaN equals NaN; dtypes must match."""
    from tinycomp.ir.leading import _same_value

    f = np.float32
    assert _same_value(np.array(f("nan")), np.array(f("nan")))
    assert not _same_value(np.array(f(0.0)), np.array(f(-0.0)))
    assert not _same_value(np.array(2.0, f), np.array(2.0, np.float64))
    assert _same_value(np.array([1, 2]), np.array([1, 2])) and not _same_value(np.array([1, 2]), np.array([1, 3]))
