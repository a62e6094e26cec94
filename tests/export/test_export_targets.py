"""Exports run on their targets (host, aarch64 under qemu-aarch64, Cortex-M4 under qemu-system-arm,
wasm32 in Node) and compute what the eager model does, judged by the parity rule against float64."""

from __future__ import annotations

import numpy as np
import pytest

import tinycomp as tc
from tests.export.runners import TARGETS, run_export, skip_unless_runnable
from tests.test_compile_parity import sequential_reference
from tinycomp.nn import (
    GELU,
    Dropout,
    Layer,
    LayerNorm,
    Linear,
    ReLU,
    Sequential,
    Sigmoid,
    Softmax,
    Tanh,
    Tensor,
    TransformerBlock,
    concat,
    manual_seed,
    maximum,
    minimum,
    where,
)
from tinycomp.parity import check_parity, float64_reference


def mlp() -> Sequential:
    return Sequential(Linear(20, 32), ReLU(), Dropout(0.5), Linear(32, 16), ReLU(), Linear(16, 10))


def odd_gelu() -> Sequential:  # widths 17 -> 3 -> 1 -> 17, GELU head
    return Sequential(Linear(17, 3), Tanh(), Linear(3, 1), ReLU(), Linear(1, 17), GELU())


def odd_tanh() -> Sequential:  # widths 1 -> 17 -> 3, Tanh head
    return Sequential(Linear(1, 17), Sigmoid(), Linear(17, 3), Tanh())


def odd_softmax() -> Sequential:  # widths 3 -> 33 -> 17, Softmax head
    return Sequential(Linear(3, 33), GELU(), Linear(33, 17), Softmax())


def layer_norm() -> Sequential:  # reductions over the features (mean, variance) on every target
    model = Sequential(Linear(8, 17), LayerNorm(17), GELU(), Linear(17, 5), Softmax())
    model.layers[1].gamma.data[:] = np.linspace(0.5, 1.5, 17)
    model.layers[1].beta.data[:] = np.linspace(-0.2, 0.2, 17)
    return model


def long_sums() -> Sequential:  # K = 3000 > gemm_kernels.LONG_SUM_K: the tiles that sum in chunks
    return Sequential(Linear(3000, 40), ReLU(), Linear(40, 5))


def reference64(model: Sequential, x: np.ndarray) -> np.ndarray:
    """The model in float64: `sequential_reference`, with LayerNorm's formula where it appears."""
    for layer in model.layers:
        if isinstance(layer, LayerNorm):
            diff = x - x.mean(axis=-1, keepdims=True)
            x = diff / np.sqrt((diff * diff).mean(axis=-1, keepdims=True) + layer.eps) * layer.gamma.data \
                + layer.beta.data
        else:
            x = sequential_reference(layer)(x)
    return x


MODELS = {"mlp": mlp, "odd_gelu": odd_gelu, "odd_tanh": odd_tanh, "odd_softmax": odd_softmax,
          "layer_norm": layer_norm, "long_sums": long_sums}
BATCHES = [1, 7]


def check_against_eager(model: Sequential, x: np.ndarray, got: dict) -> None:
    model.eval()
    for batch in BATCHES:
        rows = x[:batch]
        eager = model(Tensor(rows)).data
        report = check_parity(got[batch], eager, reference64(model, rows.astype(np.float64)))
        assert report.ok, f"batch {batch}: {report}"


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", MODELS)
def test_export_matches_eager(tmp_path, target, name):
    skip_unless_runnable(target)
    manual_seed(sum(map(ord, name)))
    model = MODELS[name]()
    width = model.layers[0].weight.shape[0]
    x = (2.0 * np.random.default_rng(7).standard_normal((max(BATCHES), width))).astype(np.float32)
    tc.export(model, tmp_path, input_shape=(None, width), target=target)
    got = run_export(target, tmp_path, x, BATCHES)
    check_against_eager(model, x, got)


@pytest.mark.parametrize("target", TARGETS)
def test_an_empty_batch_runs_on_every_target(tmp_path, target):
    """Batch 0: the entry returns MODEL_OK without touching a buffer; the harness prints `out 0`."""
    skip_unless_runnable(target)
    manual_seed(3)
    model = MODELS["odd_gelu"]()
    width = model.layers[0].weight.shape[0]
    x = np.random.default_rng(8).standard_normal((1, width)).astype(np.float32)
    tc.export(model, tmp_path, input_shape=(None, width), target=target)
    got = run_export(target, tmp_path, x, [0, 1])
    model.eval()
    assert got[0].size == 0 and got[1].shape == model(Tensor(x)).data.shape


class SignedZeros(Layer):
    """maximum/minimum/clip against a constant +-0: NumPy gives the constant where the two compare equal."""

    def forward(self, x):
        return concat([maximum(x, -0.0), maximum(x, 0.0), minimum(x, 0.0), minimum(x, -0.0), x.clip(0.0, 1.0),
                       x.clip(-1.0, -0.0)], axis=-1)


@pytest.mark.parametrize("target", TARGETS)
def test_extrema_against_a_signed_zero_keep_numpys_zero(tmp_path, target):
    """On aarch64 LLVM made the selects against a constant -0 fmaxnm, which orders -0 below +0:
    maximum(+0, -0.0) was +0 where NumPy gives -0 (so 1 / it was +inf, not -inf)."""
    skip_unless_runnable(target)
    x = np.array([[0.0, -0.0, 1.0, -1.0, np.nan]], np.float32)
    tc.export(SignedZeros(), tmp_path, input_shape=(None, 5), target=target)
    got = run_export(target, tmp_path, x, [1])[1]
    want = SignedZeros()(Tensor(x)).data
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(np.signbit(got), np.signbit(want))


class Sums(Layer):
    """sum and mean of a row of 2,100 (split in halves down to blocks of 128), of its first 300
    (straight-line), of its first 5, and down the 21 rows of 100 it reshapes to (in order)."""

    def forward(self, x):
        return concat([x.sum(axis=-1, keepdims=True), x[:, :300].mean(axis=-1, keepdims=True),
                       x[:, :5].sum(axis=-1, keepdims=True), x.reshape(-1, 21, 100).sum(axis=1)], axis=-1)


@pytest.mark.parametrize("target", TARGETS)
def test_sums_give_eagers_bits_on_every_target(tmp_path, target):
    """sum and mean add in np.sum's order: every target's float32 adds give eager's bits."""
    skip_unless_runnable(target)
    rng = np.random.default_rng(6)
    x = (rng.standard_normal((max(BATCHES), 2100)) * 10.0 ** rng.integers(-4, 9, (max(BATCHES), 2100))).astype(
        np.float32)
    tc.export(Sums(), tmp_path, input_shape=(None, 2100), target=target)
    got = run_export(target, tmp_path, x, BATCHES)
    for batch in BATCHES:
        want = Sums()(Tensor(x[:batch])).data
        assert np.array_equal(got[batch].view(np.int32), want.view(np.int32)), f"batch {batch}"


class ElementwiseOps(Layer):
    """exp, abs, sqrt, log (and with `power`, x ** 1.7 and x ** 3) after a Linear."""

    def __init__(self, power: bool):
        self.fc, self.power = Linear(9, 5), power

    def forward(self, x):
        h = self.fc(x)
        y = (0.5 * h).exp() + h.abs().sqrt() - (h.abs() + 1.0).log()
        return y + h.abs() ** 1.7 - h ** 3 if self.power else y

    def reference(self, x: np.ndarray) -> np.ndarray:
        h = x @ self.fc.weight.data.astype(np.float64) + self.fc.bias.data
        y = np.exp(0.5 * h) + np.sqrt(np.abs(h)) - np.log(np.abs(h) + 1.0)
        return y + np.abs(h) ** 1.7 - h ** 3 if self.power else y


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("power", [False, True])
def test_elementwise_ops_match_eager(tmp_path, target, power):
    """Our vector exp/log/sqrt/abs, and pow (in float64; on the Cortex-M4F, which has no float64
    hardware, in float32: codegen/vecpow32.py), on every target's vectors."""
    skip_unless_runnable(target)
    manual_seed(21)
    model = ElementwiseOps(power)
    x = np.random.default_rng(5).standard_normal((max(BATCHES), 9)).astype(np.float32)
    tc.export(model, tmp_path, input_shape=(None, 9), target=target)
    got = run_export(target, tmp_path, x, BATCHES)
    for batch in BATCHES:
        report = check_parity(got[batch], model(Tensor(x[:batch])).data, model.reference(x[:batch].astype(np.float64)))
        assert report.ok, f"batch {batch}: {report}"


class TinyTransformer(Layer):
    """Rows of 4 tokens x 8 features through a TransformerBlock (attention: batched matmuls, softmax,
    LayerNorm, GELU MLP), mean-pooled into a 3-way head."""

    def __init__(self):
        self.block, self.head = TransformerBlock(8, 2), Linear(8, 3)

    def forward(self, x):
        return self.head(self.block(x.reshape(-1, 4, 8)).mean(axis=1))


@pytest.mark.parametrize("target", TARGETS)
def test_transformer_block_matches_eager(tmp_path, target):
    skip_unless_runnable(target)
    manual_seed(2)
    model = TinyTransformer()
    model.eval()
    assert_export_matches_eager(tmp_path, target, model, 32, seed=9)


def assert_export_matches_eager(tmp_path, target: str, model: Layer, width: int, seed: int) -> None:
    """Export `model` for (None, width), run it on `target` at every batch of BATCHES, and judge it
    against eager by the parity rule, the float64 reference being the IR interpreter's run of the
    traced graph."""
    x = np.random.default_rng(seed).standard_normal((max(BATCHES), width)).astype(np.float32)
    tc.export(model, tmp_path, input_shape=(None, width), target=target)
    got = run_export(target, tmp_path, x, BATCHES)
    graph = tc.trace(model, (None, width))
    for batch in BATCHES:
        report = check_parity(got[batch], model(Tensor(x[:batch])).data, float64_reference(graph, x[:batch]))
        assert report.ok, f"batch {batch}: {report}"


class Transposes(Layer):
    """Transposes of two dimensions, next to each other and apart, read in tiles turned in
    registers (`codegen/transpose_tiles.py`; on the Cortex-M4, one element at a time), with
    partial tiles at both ends at every target's vector width."""

    def forward(self, x):
        side = x.reshape(-1, 6, 20).transpose(1, 2) * 2.0  # (N, 20, 6)
        apart = x.reshape(-1, 2, 3, 20).transpose(1, 3)  # (N, 20, 3, 2)
        return side.reshape(-1, 120) - apart.reshape(-1, 120).exp()


@pytest.mark.parametrize("target", TARGETS)
def test_transposes_match_eager(tmp_path, target):
    skip_unless_runnable(target)
    assert_export_matches_eager(tmp_path, target, Transposes(), 120, seed=4)


class SmallProducts(Layer):
    """Batched products of small matrices (`codegen/small_matmul.py`: rows in tiles, a last partial
    vector of columns at every target's width), and a narrow layer whose tiles leave a costly
    activation to the finish kernel (`gemm_driver._Driver._finish_tiles`, on a 16-lane target)."""

    def __init__(self):
        self.head = Linear(12, 3)

    def forward(self, x):
        a = x.reshape(-1, 9, 12)
        gram = a.matmul(a.transpose(-2, -1))  # (N, 9, 9)
        mixed = gram.matmul(a) * 0.1  # (N, 9, 12)
        return Tanh()(self.head(mixed)).reshape(-1, 27)


@pytest.mark.parametrize("target", TARGETS)
def test_small_batched_products_and_narrow_finishes_match_eager(tmp_path, target):
    skip_unless_runnable(target)
    manual_seed(6)
    assert_export_matches_eager(tmp_path, target, SmallProducts(), 108, seed=8)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("outputs", [2, 3, 4])
def test_narrow_layers_read_in_place_match_eager(tmp_path, target, outputs):
    """A small batch of a layer of 2 to 4 outputs reads W's rows of N in place, split into the outputs'
    vectors by shuffles, on every vector width, in whole steps and a masked last one (K = 37 and 100)."""
    skip_unless_runnable(target)
    manual_seed(11)
    model = Sequential(Linear(100, 37), Tanh(), Linear(37, outputs), Sigmoid())
    assert_export_matches_eager(tmp_path, target, model, 100, seed=9)
    manual_seed(12)
    assert_export_matches_eager(tmp_path, target, Sequential(Linear(100, outputs)), 100, seed=10)


class PeriodicTables(Layer):
    """Tables that repeat every 7 and 9 rows of a sample: the kernel reads them at row % 7 and row % 9,
    which on a 32-bit target must be 32-bit remainders (a 64-bit one by 7 was a call to
    __aeabi_uldivmod on the Cortex-M4F, and its export was refused)."""

    def __init__(self):
        self.seven = Tensor(np.arange(14, dtype=np.float32).reshape(7, 2) / 7)
        self.nine = Tensor(np.linspace(-1, 1, 9, dtype=np.float32).reshape(9, 1))

    def forward(self, x):
        return (x.reshape(-1, 9, 7, 2) * self.seven + self.nine.reshape(9, 1, 1)).reshape(-1, 126)


@pytest.mark.parametrize("target", TARGETS)
def test_tables_repeating_every_p_rows_match_eager(tmp_path, target):
    skip_unless_runnable(target)
    assert_export_matches_eager(tmp_path, target, PeriodicTables(), 126, seed=7)


@pytest.mark.parametrize("target", TARGETS)
def test_external_weights_run(tmp_path, target):
    """weights="external": the object holds no weights; the harness binds the .bin it reads."""
    skip_unless_runnable(target)
    manual_seed(11)
    model = odd_softmax()
    x = np.random.default_rng(3).standard_normal((max(BATCHES), 3)).astype(np.float32)
    result = tc.export(model, tmp_path, input_shape=(None, 3), target=target, weights="external")
    assert result.object_bytes < result.weights_bytes + 64 * 1024
    got = run_export(target, tmp_path, x, BATCHES, weights=result.files["weights"])
    check_against_eager(model, x, got)


class CutsAndMasks(Layer):
    """The ops of indexing, concat, selection and comparison on every target's vectors and tails:
    slices with steps, columns joined back, where/maximum/minimum/clip with NaN-exact selects, and a
    causal masked_fill attention fused into the attention kernel (its mask selected, not added)."""

    def __init__(self):
        self.blocked = np.triu(np.ones((5, 5), dtype=bool), 1)

    def forward(self, x):  # x: (N, 5 tokens x 9 features)
        t = x.reshape(-1, 5, 9)
        parts = concat([t[..., 1::2], maximum(t[..., :3], 0.25), t[..., -1:].clip(-0.5, 0.5)], axis=-1)  # (N, 5, 8)
        scores = where(self.blocked, -np.inf, parts @ parts.transpose(-2, -1) * 0.35)
        y = Softmax()(scores) @ parts
        signs = (t[:, 0, :8] >= 0) - (t[:, 0, :8] < -0.5)  # (N, 8) of 1, 0 and -1
        return where(y > 0, y, minimum(y, -0.1) * 0.5).reshape(-1, 40) + concat([signs] * 5, axis=-1)


@pytest.mark.parametrize("target", TARGETS)
def test_cuts_selections_and_masked_attention_match_eager(tmp_path, target):
    skip_unless_runnable(target)
    model = CutsAndMasks()
    assert tc.compile(model, input_shape=(None, 45)).graph.op_counts().get("attention") == 1
    assert_export_matches_eager(tmp_path, target, model, 45, seed=11)


class SplitAttention(Layer):
    """nanoGPT's attention on every target: one projection's columns cut into q, k and v (read in
    place by the kernel, rows 3 x 6 floats apart from columns 0, 6 and 12), a causal masked_fill;
    `prescaled`: q and k^T each scaled by a constant before their product, as torch's ONNX export
    of scaled_dot_product_attention writes it (then only v is read in place)."""

    def __init__(self, prescaled):
        manual_seed(12)
        self.proj, self.prescaled = Linear(6, 18), prescaled
        self.blocked = np.triu(np.ones((5, 5), dtype=bool), 1)

    def forward(self, x):  # x: (N, 5 tokens x 6 features)
        h = self.proj(x.reshape(-1, 5, 6))
        q, k, v = (h[..., i:i + 6].reshape(-1, 5, 2, 3).transpose(1, 2) for i in (0, 6, 12))
        kt = k.transpose(-2, -1)
        scores = (q * 0.75) @ (kt * 0.75) if self.prescaled else q @ kt * 0.5625
        return (Softmax()(where(self.blocked, -np.inf, scores)) @ v).transpose(1, 2).reshape(-1, 30)


@pytest.mark.parametrize("prescaled", [False, True])
@pytest.mark.parametrize("target", TARGETS)
def test_q_k_v_cut_from_one_projection_match_eager(tmp_path, target, prescaled):
    from tinycomp.codegen.scratch import columns_read_in_place

    skip_unless_runnable(target)
    model = SplitAttention(prescaled)
    g = tc.compile(model, input_shape=(None, 30)).graph
    assert g.op_counts().get("attention") == 1
    in_place = sorted(c for n in g.nodes("slice") if (c := columns_read_in_place(g, n)) is not None)
    assert in_place == ([12] if prescaled else [0, 6, 12])
    assert_export_matches_eager(tmp_path, target, model, 30, seed=12)
