"""Compiled output against the eager model (eval mode) and a float64 NumPy reference (issue 4).

Every comparison goes through `tinycomp.parity.check_parity`, the one parity rule: the compiled
error against float64 may be at most twice the eager float32 error plus a tiny atol. The float64
reference is computed independently of the compiler: `sequential_reference` walks a Sequential's
layers with float64 formulas, and the zoo's custom layers have hand-written formulas below.
`assert_parity` is shared with tests/test_compile_hypothesis.py.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

import tinycomp as tc
from tests.models import CASES, CATALOGUE, REFERENCE_MLP_IN, eager_eval, reference_mlp
from tinycomp.binding import eval_mode
from tinycomp.nn import (
    GELU,
    Dropout,
    Layer,
    Linear,
    ReLU,
    Sequential,
    Sigmoid,
    Softmax,
    Tanh,
    Tensor,
    manual_seed,
)
from tinycomp.parity import check_parity, reference_and_overflow

F64 = np.float64
Reference = Callable[[np.ndarray], np.ndarray]



# ------------------------------------------------------------------ float64 references

def sigmoid64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


def softmax64(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


ACT64: dict[type, Callable[[np.ndarray], np.ndarray]] = {
    ReLU: lambda x: np.maximum(x, 0.0),
    Sigmoid: sigmoid64,
    Tanh: np.tanh,
    GELU: lambda x: x * sigmoid64(1.702 * x),
    Softmax: softmax64,
}


def linear64(layer: Linear, x: np.ndarray) -> np.ndarray:
    y = x @ np.asarray(layer.weight.data, F64)
    return y if layer.bias is None else y + np.asarray(layer.bias.data, F64)


def apply64(layer: Layer, x: np.ndarray) -> np.ndarray:
    """One layer in float64; eval-mode dropout is the identity."""
    if isinstance(layer, Linear):
        return linear64(layer, x)
    if isinstance(layer, Dropout):
        return x
    if isinstance(layer, Sequential):
        for sub in layer.layers:
            x = apply64(sub, x)
        return x
    if type(layer) in ACT64:
        return ACT64[type(layer)](x)
    raise TypeError(f"no float64 formula for {type(layer).__name__}")


def sequential_reference(model: Layer) -> Reference:
    return lambda x: apply64(model, x)


def residual_net64(m) -> Reference:
    relu = ACT64[ReLU]
    return lambda x: linear64(m.head, relu(linear64(m.block.fc2, relu(linear64(m.block.fc1, x))) + x))


def shared_linear64(m) -> Reference:
    return lambda x: linear64(m.fc, np.tanh(linear64(m.fc, x)))


def scalar_arith64(m) -> Reference:
    return lambda x: linear64(m.fc, x * 0.5 + 1.0)


def list_dict_layer64(m) -> Reference:
    def ref(x: np.ndarray) -> np.ndarray:
        h = sigmoid64(linear64(m.heads[1], linear64(m.heads[0], x)))
        return linear64(m.branches["left"], h) - linear64(m.branches["right"], h)
    return ref


CUSTOM_REFERENCES: dict[str, Callable[[Layer], Reference]] = {
    "residual_net": residual_net64,
    "shared_linear": shared_linear64,
    "scalar_arith": scalar_arith64,
    "list_dict_layer": list_dict_layer64,
}


def reference_for(name: str, model: Layer) -> Reference:
    make = CUSTOM_REFERENCES.get(name)
    return make(model) if make else sequential_reference(model)


# ------------------------------------------------------------------ the shared check

def assert_parity(model: Layer, x: np.ndarray, reference: Reference | None = None,
                  fast: tc.CompiledModel | None = None) -> np.ndarray:
    """fast(x) vs eager model(x) in eval mode vs float64, by the parity rule with its allowance for
    sums that cancel (as check=True judges: a chain of narrow Linears failed hypothesis on one
    element 44 ulps off float64, 1.32e-6 against 1.31e-6); returns the compiled output."""
    fast = fast if fast is not None else tc.compile(model)
    reference = reference if reference is not None else sequential_reference(model)
    out = fast(x)
    assert isinstance(out, Tensor) and out.data.dtype == np.float32
    eager = eager_eval(model, x)
    ref = np.asarray(reference(np.asarray(x, F64)), F64)
    assert out.shape == eager.shape == ref.shape, (out.shape, eager.shape, ref.shape)
    with eval_mode(model):  # the traced graph: the optimized one's fused linears hide the cancelling sums
        graph = tc.trace(model, (None, *np.shape(x)[1:]))
    rounding = reference_and_overflow(graph, np.asarray(x, F64)).rounding.reshape(ref.shape)
    report = check_parity(out.data, eager, ref, rounding=rounding)
    assert report.ok, str(report)
    # A wrong reference would inflate the tolerance (2x eager error) and let anything pass.
    scale = max(1.0, float(np.abs(ref[np.isfinite(ref)]).max(initial=0.0)))
    assert report.eager_error <= 1e-3 * scale, f"float64 reference disagrees with eager: {report}"
    return out.data


def sample(rows: int, features: int, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((rows, features)) * scale).astype(np.float32)


# ------------------------------------------------------------------ the reference MLP

@pytest.fixture(scope="module")
def mlp():
    manual_seed(0)
    model = reference_mlp()
    return model, tc.compile(model)


@pytest.mark.parametrize("batch", [0, 1, 2, 7, 8, 9, 31, 33, 1000, 4099])
def test_reference_mlp_every_batch_size(mlp, batch):
    model, fast = mlp
    out = assert_parity(model, sample(batch, REFERENCE_MLP_IN, seed=batch), fast=fast)
    assert out.shape == (batch, 10)
    assert fast.stats.compiles == 1


def test_reference_mlp_rows_are_independent_of_batch(mlp):
    """A row's result must not depend on which other rows share its call (tails, threads)."""
    model, fast = mlp
    x = sample(4099, REFERENCE_MLP_IN, seed=3)
    whole = fast(x).data
    for lo, hi in [(0, 1), (5, 38), (4090, 4099)]:
        part = fast(x[lo:hi]).data
        assert check_parity(part, whole[lo:hi], apply64(model, x[lo:hi].astype(F64))).ok


def test_reference_mlp_keeps_training_flags(mlp):
    model, fast = mlp
    model.train()
    assert_parity(model, sample(5, REFERENCE_MLP_IN), fast=fast)  # compiled = eval mode anyway
    assert model.training and all(layer.training for layer in model.layers)
    model.eval()


# ------------------------------------------------------------------ activations

ACTIVATIONS = [ReLU, Sigmoid, Tanh, GELU, Softmax]
SPECIALS = np.array([0.0, -0.0, 1e-40, -1e-40, 1.0, -1.0, 20.0, -20.0, 88.7, -88.7, 1e4, -1e4, 3e38, -3e38],
                    np.float32)


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")  # eager GELU/softmax of +-3e38
@pytest.mark.parametrize("act", ACTIVATIONS, ids=lambda a: a.__name__)
@pytest.mark.parametrize("features", [1, 7, 16, 33])
def test_activation_alone(act, features):
    """The activation layer itself is the model: it runs on the raw input."""
    x = np.concatenate([sample(9, features, seed=features, scale=4.0),
                        np.resize(SPECIALS, (3, features))])
    assert_parity(act(), x, sequential_reference(act()))


@pytest.mark.parametrize("act", ACTIVATIONS, ids=lambda a: a.__name__)
def test_activation_alone_nan_and_inf_match_eager(act):
    x = np.array([[np.nan, np.inf, -np.inf, 1.0, -2.0, 0.0, 5.0, -5.0, 1e4, -1e4, 0.5, 3.0, -3.0, 2.0, 1.0, 7.0,
                   -np.inf]], np.float32)
    x = np.concatenate([x, np.where(np.isnan(x), 0.0, x)])  # one row with NaN, one without
    model = act()
    with np.errstate(all="ignore"):
        out = tc.compile(model)(x).data
        eager = eager_eval(model, x)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(eager))
    np.testing.assert_array_equal(out[np.isinf(eager)], eager[np.isinf(eager)])
    finite = np.isfinite(eager)
    np.testing.assert_allclose(out[finite], eager[finite], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("act", ACTIVATIONS, ids=lambda a: a.__name__)
@pytest.mark.parametrize("bias", [True, False])
def test_activation_fused_after_linear(act, bias):
    manual_seed(1)
    model = Sequential(Linear(37, 45, bias=bias), act())
    if bias:
        model.layers[0].bias.data[:] = np.linspace(-2, 2, 45, dtype=np.float32)
    fast = tc.compile(model)
    assert_parity(model, sample(19, 37, scale=2.0), fast=fast)
    optimized = fast.graph.op_counts()
    if act is Softmax:  # softmax is not a GEMM epilogue: it stays a node of its own
        assert optimized.get("softmax") == 1
    else:
        assert optimized == {"input": 1, "param": 1 + bias, "linear": 1, "output": 1}, optimized


def test_softmax_head():
    model = CASES["softmax_head"].build()
    out = assert_parity(model, sample(50, 20, scale=3.0))
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)


def test_softmax_head_large_logits():
    """Row max subtraction: logits in the hundreds must not overflow to inf/nan."""
    manual_seed(2)
    model = Sequential(Linear(8, 300), Softmax())
    out = assert_parity(model, sample(6, 8, scale=100.0))
    assert np.isfinite(out).all()


@pytest.mark.parametrize("width", [300_000, 1_000_003])
def test_softmax_over_very_wide_rows(width):
    """A vocabulary-sized row: the sum of its exps is blocked (`loops.fold_run`), not one running sum
    per lane, which erred ~170 ulps at 300,000 and failed the rule against NumPy's pairwise sum."""
    def softmax64(x64: np.ndarray) -> np.ndarray:
        e = np.exp(x64 - x64.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    model = Sequential(Softmax())
    fast = tc.compile(model)
    for seed in range(3):
        assert_parity(model, sample(2, width, seed=seed, scale=3.0), softmax64, fast=fast)


# ------------------------------------------------------------------ widths

WIDTHS = [1, 3, 15, 16, 17, 100, 257, 1024]


@pytest.mark.parametrize("out_features", WIDTHS)
def test_linear_out_features(out_features):
    manual_seed(out_features)
    model = Sequential(Linear(29, out_features), ReLU())
    model.layers[0].bias.data[:] = 0.1
    assert_parity(model, sample(13, 29, seed=out_features))


@pytest.mark.parametrize("in_features", WIDTHS)
def test_linear_in_features(in_features):
    manual_seed(in_features)
    model = Sequential(Linear(in_features, 21), Tanh())
    assert_parity(model, sample(11, in_features, seed=in_features))


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("batch", [1, 17, 70])
def test_linear_square(width, batch):
    manual_seed(width)
    model = Linear(width, width)  # a bare Linear is a model too
    assert_parity(model, sample(batch, width, seed=batch), sequential_reference(model))


# Layers whose W is larger than L2 with rows a multiple of 4 KB apart, and (2 KB apart, aliased on a
# core with less L2 than 1 MB, `gemm._aliased`) 512 x 512 and 1024 x 512.
ALIASED_MODELS = {
    "4kb": lambda: Sequential(Linear(1024, 2048), GELU(), Linear(2048, 1024), ReLU(), Linear(1024, 1024)),
    "2kb": lambda: Sequential(Linear(512, 512), GELU(), Linear(512, 1024), ReLU(), Linear(1024, 512)),
}


@pytest.fixture(scope="module", params=sorted(ALIASED_MODELS))
def wide_layers(request):
    manual_seed(5)
    model = ALIASED_MODELS[request.param]()
    return model, tc.compile(model, threads=1)  # one thread: each call is the whole batch


@pytest.mark.parametrize("batch", [1, 6, 11, 16, 17, 39, 40, 41, 64])
def test_layers_with_aliased_rows(wide_layers, batch):
    """Layers whose W is larger than L2 with rows a multiple of 4 KB apart (or 2 KB, on a core with
    less than 1 MB of L2): on an Intel host, or an AMD one with such an L2, they read W in place in
    K-chunks up to `Target.aliased_direct_max_rows` rows and pack it above (elsewhere, in one piece
    up to DIRECT_MAX_ROWS); every path matches eager."""
    model, fast = wide_layers
    assert_parity(model, sample(batch, model.layers[0].weight.shape[0], seed=batch), fast=fast)


def test_layers_with_aliased_rows_give_a_row_the_same_bits_in_any_batch(wide_layers):
    """Alone, in a batch on either side of the in-place limit, and split across threads."""
    model, fast = wide_layers
    x = sample(64, model.layers[0].weight.shape[0], seed=3)
    alone = np.concatenate([fast(x[i:i + 1]).data for i in range(len(x))])
    both_cores = tc.compile(model)
    for rows in (7, 16, 17, 40, 41, 64):
        np.testing.assert_array_equal(fast(x[:rows]).data, alone[:rows], err_msg=f"{rows} rows, one thread")
        np.testing.assert_array_equal(both_cores(x[:rows]).data, alone[:rows], err_msg=f"{rows} rows, all cores")


# ------------------------------------------------------------------ the zoo and custom layers

def test_every_zoo_model_has_a_reference():
    """A model added to tests/models.py must get a float64 formula here (or be a plain Sequential)."""
    for case in CATALOGUE:
        model = case.build()
        if case.name not in CUSTOM_REFERENCES:
            apply64(model, case.sample(1).astype(F64))  # raises if some layer has no formula


@pytest.mark.parametrize("case", CATALOGUE, ids=lambda c: c.name)
@pytest.mark.parametrize("batch", [0, 1, 5, 40])
def test_zoo_model(case, batch):
    model = case.build()
    assert_parity(model, case.sample(batch, seed=batch), reference_for(case.name, model))


class ScaledResidual(Layer):
    """Scalar arithmetic on both sides, a residual add and a division: (relu(fc(x)) + x) / 4 - 2 * x."""

    def __init__(self, width: int):
        self.fc = Linear(width, width)
        self.act = ReLU()

    def forward(self, x):
        h = self.act(self.fc(x * 2.0 - 0.5))
        return (h + x) / 4 - 2 * x + 1


def test_scalar_arithmetic_and_residual():
    manual_seed(4)
    model = ScaledResidual(24)

    def ref(x):
        return (np.maximum(linear64(model.fc, x * 2.0 - 0.5), 0.0) + x) / 4 - 2 * x + 1

    assert_parity(model, sample(30, 24, scale=2.0), ref)


class RowBroadcast(Layer):
    """Arithmetic with a model-owned row vector and a constant array (not parameters of a Linear)."""

    def __init__(self, width: int):
        self.fc = Linear(width, width)
        self.scale = Tensor(np.linspace(0.5, 2.0, width))
        self.shift = np.linspace(-1.0, 1.0, width).astype(np.float32)

    def forward(self, x):
        return self.fc(x) * self.scale + self.shift


def test_row_broadcast_operands():
    manual_seed(5)
    model = RowBroadcast(19)

    def ref(x):
        return linear64(model.fc, x) * np.asarray(model.scale.data, F64) + model.shift.astype(F64)

    assert_parity(model, sample(9, 19), ref)


class GatedLinear(Layer):
    """fc(x) * sigmoid(gate(x)) with a one-feature gate: a per-row (N, 1) factor."""

    def __init__(self, width: int, out: int):
        self.fc, self.gate, self.act = Linear(width, out), Linear(width, 1), Sigmoid()

    def forward(self, x):
        return self.fc(x) * self.act(self.gate(x)) + self.gate(x)


@pytest.mark.parametrize("batch", [1, 7, 40])
def test_per_row_gate(batch):
    """Regression: an (N, 1) operand was lowered as one scalar for the whole batch."""
    manual_seed(8)
    model = GatedLinear(6, 5)

    def ref(x):
        gate = linear64(model.gate, x)
        return linear64(model.fc, x) * sigmoid64(gate) + gate

    assert_parity(model, sample(batch, 6, seed=batch), ref)


@pytest.mark.parametrize("widths", [(9, 11, 3), (64, 1, 5), (5, 300, 17)])
def test_bias_false(widths):
    manual_seed(6)
    a, b, c = widths
    model = Sequential(Linear(a, b, bias=False), GELU(), Linear(b, c, bias=False))
    assert model.layers[0].bias is None
    assert_parity(model, sample(21, a))


def test_dropout_everywhere_is_folded():
    manual_seed(7)
    model = Sequential(Dropout(0.9), Linear(10, 12), Dropout(1.0), Sigmoid(), Dropout(0.0), Linear(12, 4), Dropout())
    fast = tc.compile(model)
    assert_parity(model, sample(8, 10), fast=fast)
    assert "dropout" not in fast.graph.op_counts()
