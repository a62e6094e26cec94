"""fuse_layer_norm: which graphs become one `layer_norm` node, which stay as they are, and the same
output before and after (tests/ir/passcheck.py)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.ir.passcheck import check_pass
from tinycomp.frontend.tracer import trace
from tinycomp.ir.passes import fuse_layer_norm
from tinycomp.nn import Layer, LayerNorm, Tensor, TransformerBlock, manual_seed

W = 6


def x_of(*shape: int) -> np.ndarray:
    return (np.random.default_rng(0).standard_normal(shape) * 2 + 0.5).astype(np.float32)


def fused(g) -> bool:
    return g.op_counts().get("layer_norm") == 1 and not {"mean", "sqrt", "div"} & set(g.op_counts())


def untouched(g) -> bool:
    return "layer_norm" not in g.op_counts() and "mean" in g.op_counts()


def params(shape=(W,)) -> tuple[Tensor, Tensor]:
    rng = np.random.default_rng(1)
    return Tensor(rng.standard_normal(shape).astype(np.float32)), Tensor(rng.standard_normal(shape).astype(np.float32))


class Norm(Layer):
    """LayerNorm's formula written out, with one variant at a time (`how`)."""

    def __init__(self, how: str = "as LayerNorm", shape=(W,), axis: int = -1):
        self.gamma, self.beta = params(shape)
        self.eps = Tensor(np.full((1,), 1e-5, np.float32))
        self.how, self.axis = how, axis

    def forward(self, x):
        mean = x.mean(axis=self.axis, keepdims=True)
        diff = x - mean
        if self.how == "E[x^2] - E[x]^2":
            variance = (x * x).mean(axis=self.axis, keepdims=True) - mean * mean
        elif self.how in ("d ** 2", "d ** 4"):  # d ** 2 is the square as ONNX exporters write it
            variance = (diff ** float(self.how[-1])).mean(axis=self.axis, keepdims=True)
        else:
            variance = (diff * diff).mean(axis=self.axis, keepdims=True)
        if self.how == "pow":
            root = (variance + 1e-5) ** 0.5
        elif self.how == "eps param":
            root = (variance + self.eps).sqrt()
        elif self.how == "NaN eps":
            root = (variance + float("nan")).sqrt()
        else:
            root = (variance + 1e-5).sqrt()
        y = diff / root
        if self.how == "commuted":
            return self.beta + self.gamma * y
        out = y * self.gamma + self.beta
        return out + diff if self.how == "diff read again" else out


@pytest.mark.parametrize("shape", [(None, W), (None, 4, W)])
def test_layer_norm_becomes_one_node(shape):
    manual_seed(0)
    model = LayerNorm(W, eps=1e-3)
    model.gamma.data[:], model.beta.data[:] = (p.data for p in params())
    g = trace(model, shape)
    h = check_pass(fuse_layer_norm, g, x_of(3, *shape[1:]), pre=untouched, post=fused)
    [node] = h.nodes("layer_norm")
    assert h.attrs(node) == {"eps": float(np.float32(1e-3))}
    assert [h.op(a) for a in h.args(node)] == ["input", "param", "param"]
    assert "fused mean" in h[node]["explain"]


def test_both_norms_of_a_transformer_block_are_fused():
    manual_seed(0)
    g = trace(TransformerBlock(12, 3), (None, 5, 12))
    h = check_pass(fuse_layer_norm, g, x_of(2, 5, 12), pre=untouched, post=lambda h: h.op_counts()["layer_norm"] == 2)
    assert "sqrt" not in h.op_counts()


@pytest.mark.parametrize("how", ["commuted", "d ** 2"])
def test_gamma_and_beta_on_either_side_and_the_square_as_a_power_are_fused(how):
    check_pass(fuse_layer_norm, trace(Norm(how), (None, W)), x_of(3, W), pre=untouched, post=fused)


@pytest.mark.parametrize("how, shape, axis", [
    ("E[x^2] - E[x]^2", (W,), -1),  # another formula: other roundings
    ("pow", (W,), -1),  # ** 0.5 is not the sqrt op
    ("d ** 4", (W,), -1),  # not the square
    ("eps param", (W,), -1),  # eps is not a constant
    ("NaN eps", (W,), -1),  # layer_norm refuses a NaN eps; the unfused ops compute it
    ("diff read again", (W,), -1),  # x - mean is needed outside
    ("as LayerNorm", (4, W), -1),  # gamma, beta vary along another axis
    ("as LayerNorm", (W,), 1),  # normalized over the middle axis
])
def test_other_computations_are_left_alone(how, shape, axis):
    in_shape = (None, 4, W) if len(shape) == 2 or axis == 1 else (None, W)
    if axis == 1:
        shape = (4, W) if len(shape) == 2 else (4, 1)
    g = trace(Norm(how, shape, axis), in_shape)
    check_pass(fuse_layer_norm, g, x_of(3, *in_shape[1:]), pre=untouched, post=untouched, changes=False)


def test_explain_has_a_line_per_norm_naming_its_layer():
    import tinycomp as tc

    manual_seed(0)
    lines = tc.compile(TransformerBlock(12, 3), input_shape=(None, 5, 12)).explain().splitlines()
    norms = [line for line in lines if line.startswith("layer_norm")]
    assert [("'ln1'" in n, "'ln2'" in n) for n in norms] == [(True, False), (False, True)], lines
    assert all("fused mean" in n and "+ sqrt" in n for n in norms), norms
