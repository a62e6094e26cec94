"""The fused attention kernel (codegen/attention.py) through `tc.compile`: compiled against the eager
model and a float64 NumPy reference written from the formulas, at odd sizes (seq 1, 7, 65 -- one
vector of keys, a tail, more than a register tile; heads 1 and 3; head dims 1, 5, 32), batch 0, 1
and 7, with per-sample, causal and per-head masks, rows with every key blocked, an additive bias,
and NaN and infinity in the inputs: non-finite values must come out where eager has them."""

from __future__ import annotations

import ctypes
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tinycomp as tc
from tests.codegen.jit_util import UNDERFLOW_OR_DENORMAL, c_function, f32_ptr, jit, mxcsr_functions, new_module
from tests.transformer_ref import attention64, causal_mask
from tinycomp.codegen.attention import AttentionSpec, emit_attention
from tinycomp.codegen.module import lower_graph
from tinycomp.codegen.target import CROSS_TARGETS, host, target_named
from tinycomp.export.toolchain import emit_object
from tinycomp.frontend.tensor import apply_op
from tinycomp.frontend.tracer import trace
from tinycomp.frontend.transformer import scaled_dot_product_attention
from tinycomp.ir.passes import run_pipeline
from tinycomp.nn import Layer, Linear, MultiHeadAttention, Tensor, manual_seed
from tinycomp.parity import check_parity, float64_reference
from tinycomp.runtime.engine import JitEngine
from tinycomp.runtime.kernel import NativeKernel

BATCHES = (7, 1, 0)


def sdpa64(q, k, v, heads, *, scale, divide=False, bias=None):
    """softmax(q_h k_h^T * scale (or / scale) [+ bias]) v_h per head, in float64."""
    def split(t):
        n, s, w = t.shape
        return np.asarray(t, np.float64).reshape(n, s, heads, w // heads).transpose(0, 2, 1, 3)

    q, k, v = split(q), split(k), split(v)
    s = np.einsum("nhqd,nhkd->nhqk", q, k)
    s = s / scale if divide else s * scale
    if bias is not None:
        s = s + bias
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    p = p / p.sum(axis=-1, keepdims=True)
    out = np.einsum("nhqk,nhkd->nqhd", p, v)
    return out.reshape(*out.shape[:2], out.shape[2] * out.shape[3])


def assert_parity(got: Tensor, eager: Tensor, ref: np.ndarray) -> None:
    assert got.shape == eager.shape == ref.shape
    report = check_parity(got.data, eager.data, ref)
    assert report.ok, str(report)


def inputs(batch, seq, width, seed=0):
    return np.random.default_rng(seed).standard_normal((batch, seq, width)).astype(np.float32)


def compiled_mha(heads, head_dim, seq, mask_shape=None):
    manual_seed(heads * 100 + head_dim)
    mha = MultiHeadAttention(heads * head_dim, heads)
    shapes = [(None, seq, heads * head_dim)] + ([mask_shape] if mask_shape else [])
    fast = tc.compile(mha, input_shape=shapes if mask_shape else shapes[0])
    assert fast.graph.op_counts().get("attention") == 1, fast.dump("optimized")
    return mha, fast


SIZES = [(1, 1), (3, 5), (2, 32), (1, 20)]  # (heads, head dim); 20: whole 16 x 16 squares of K and leftovers


# 200 and 256 keys: whole tiles of keys in a loop (3 and a partial one, 4)
@pytest.mark.parametrize("seq", [1, 7, 65, 200, 256])
@pytest.mark.parametrize("heads, head_dim", SIZES)
def test_multi_head_attention_without_a_mask(heads, head_dim, seq):
    mha, fast = compiled_mha(heads, head_dim, seq)
    for batch in BATCHES:
        x = inputs(batch, seq, heads * head_dim, seed=batch)
        assert_parity(fast(x), mha(Tensor(x)), attention64(mha, x.astype(np.float64)))


@pytest.mark.parametrize("seq", [1, 7, 65, 200])
@pytest.mark.parametrize("heads, head_dim", SIZES)
def test_per_sample_masks_with_blocked_rows(heads, head_dim, seq):
    """Also the row blocks: 6 rows each, the last one overlapping the one before (seq 7, 65)."""
    mha, fast = compiled_mha(heads, head_dim, seq, (None, seq, seq))
    for batch in BATCHES:
        x = inputs(batch, seq, heads * head_dim, seed=batch)
        mask = causal_mask(batch, seq)
        if batch > 1:
            mask[1, seq // 2, :] = 0  # every key blocked: eager's float32 gives the mean of the values
            mask[2] = np.random.default_rng(batch).random((seq, seq)) < 0.5
        got, eager = fast(x, mask), mha(Tensor(x), Tensor(mask))
        assert_parity(got, eager, attention64(mha, x.astype(np.float64), mask))
        if batch > 1:  # -1e9 swamps the scores in float32: the blocked row matches eager, not float64
            np.testing.assert_allclose(got.data[1, seq // 2], eager.data[1, seq // 2], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mask_shape", ["causal", "per head"])
def test_shared_and_per_head_masks(mask_shape):
    seq, heads = 7, 3
    shape = (seq, seq) if mask_shape == "causal" else (None, heads, seq, seq)
    mha, fast = compiled_mha(heads, 5, seq, shape)
    for batch in BATCHES:
        x = inputs(batch, seq, 15)
        if mask_shape == "causal":
            mask = causal_mask(1, seq)[0]
        else:
            mask = (np.random.default_rng(1).random((batch, heads, seq, seq)) < 0.6).astype(np.float32)
        assert_parity(fast(x, mask), mha(Tensor(x), Tensor(mask)), attention64(mha, x.astype(np.float64), mask))


class Bare(Layer):
    """Attention straight on the inputs: q from x, keys and values from `memory` (another length),
    `/ scale` or `* scale`, an optional additive bias."""

    def __init__(self, heads, divide, bias_shape=None):
        self.heads, self.divide = heads, divide
        rng = np.random.default_rng(5)
        self.bias = Tensor(rng.standard_normal(bias_shape) * 3) if bias_shape else None

    def split(self, t, seq):
        return t.reshape(-1, seq, self.heads, t.shape[-1] // self.heads).transpose(1, 2)

    def forward(self, x, memory):
        sq, sk = x.shape[1], memory.shape[1]
        q, k, v = self.split(x, sq), self.split(memory, sk), self.split(memory, sk)
        scores = q.matmul(k.transpose(-2, -1))
        scores = scores / 3.0 if self.divide else scores * 0.25
        if self.bias is not None:
            scores = scores + self.bias
        out = apply_op("softmax", scores, dim=-1).matmul(v)
        return out.transpose(1, 2).reshape(-1, sq, x.shape[-1])


@pytest.mark.parametrize("divide", [False, True])
def test_cross_attention_with_a_bias_and_either_scale(divide):
    heads, sq, sk, width = 3, 6, 17, 15
    model = Bare(heads, divide, bias_shape=(heads, sq, sk))
    fast = tc.compile(model, input_shape=[(None, sq, width), (None, sk, width)])
    assert fast.graph.op_counts().get("attention") == 1
    for batch in BATCHES:
        x, mem = inputs(batch, sq, width), inputs(batch, sk, width, seed=9)
        ref = sdpa64(x, mem, mem, heads, scale=3.0 if divide else 0.25, divide=divide,
                     bias=model.bias.data.astype(np.float64))
        assert_parity(fast(x, mem), model(Tensor(x), Tensor(mem)), ref)


class SplitProjection(Layer):
    """nanoGPT's attention: one projection's columns cut into q, k and v (in `order`, at odd offsets
    when `width` is odd), `also` adding q to the output (then q is read by something else too)."""

    def __init__(self, heads, width, order="qkv", also=False):
        manual_seed(width)
        self.heads, self.width, self.order, self.also = heads, width, order, also
        self.proj = Linear(width, 3 * width)

    def forward(self, x):
        seq, w = x.shape[1], self.width
        h = self.proj(x)
        parts = {name: h[:, :, i * w:(i + 1) * w] for i, name in enumerate(self.order)}
        q, k, v = (parts[c].reshape(-1, seq, self.heads, w // self.heads).transpose(1, 2) for c in "qkv")
        scores = q.matmul(k.transpose(-2, -1)) * 0.5
        out = apply_op("softmax", scores, dim=-1).matmul(v).transpose(1, 2).reshape(-1, seq, w)
        return out + parts["q"] if self.also else out


def split_reference(model, x):
    h = np.asarray(x, np.float64) @ model.proj.weight.data.astype(np.float64) + model.proj.bias.data
    w = model.width
    parts = {name: h[..., i * w:(i + 1) * w] for i, name in enumerate(model.order)}
    out = sdpa64(parts["q"], parts["k"], parts["v"], model.heads, scale=0.5)
    return out + parts["q"] if model.also else out


@pytest.mark.parametrize("heads, width, order", [(4, 32, "qkv"), (3, 15, "kvq"), (1, 5, "vqk")])
def test_q_k_and_v_cut_from_one_projection_are_read_where_it_wrote_them(heads, width, order):
    """The three column slices of the projection are never copied: each shares the projection's
    buffer and the attention reads it there, rows 3 x width floats apart, from its first column."""
    from tinycomp.codegen.scratch import columns_read_in_place, plan_buffers

    model = SplitProjection(heads, width, order)
    seq = 7
    fast = tc.compile(model, input_shape=(None, seq, width))
    g = fast.graph
    slices = g.nodes("slice")
    assert g.op_counts().get("attention") == 1 and len(slices) == 3
    assert sorted(columns_read_in_place(g, n) for n in slices) == [0, width, 2 * width]
    plan = plan_buffers(g)
    assert all(plan.alias_root(n) == g.args(n)[0] for n in slices) and not set(slices) & set(plan.offsets)
    for batch in (*BATCHES, 40):  # 40: row blocks and, on two cores, a split batch
        x = inputs(batch, seq, width, seed=batch)
        assert_parity(fast(x), model(Tensor(x)), split_reference(model, x))


def test_a_slice_something_else_reads_too_is_copied():
    model = SplitProjection(2, 8, also=True)
    fast = tc.compile(model, input_shape=(None, 5, 8))
    from tinycomp.codegen.scratch import columns_read_in_place

    q_slice = next(n for n in fast.graph.nodes("slice") if fast.graph.attrs(n)["start"] == 0)
    assert columns_read_in_place(fast.graph, q_slice) is None
    assert [columns_read_in_place(fast.graph, n) for n in fast.graph.nodes("slice") if n != q_slice] == [8, 16]
    for batch in BATCHES:
        x = inputs(batch, 5, 8, seed=batch)
        assert_parity(fast(x), model(Tensor(x)), split_reference(model, x))


def test_nan_and_infinity_come_out_where_eager_has_them():
    heads, seq, width = 3, 7, 15
    model = Bare(heads, divide=False)
    fast = tc.compile(model, input_shape=[(None, seq, width), (None, seq, width)])
    assert fast.graph.op_counts().get("attention") == 1
    x, mem = inputs(5, seq, width), inputs(5, seq, width, seed=2)
    x[0, 2, 0] = np.nan  # one query row of head 0 is NaN
    mem[1, 3, 6] = np.nan  # a key of head 1: all of that head's rows of sample 1
    mem[2, 4, 11] = np.inf  # a key of head 2 in sample 2: +inf scores
    x[3, :, 5:10] = -np.inf  # head 1 of sample 3: scores of both signs of infinity
    mem[3, :, 5:10] = 1
    x[4, 1] = 1e30  # huge but finite: scores overflow to inf
    with np.errstate(all="ignore"):
        eager = model(Tensor(x), Tensor(mem)).data
    got = fast(x, mem).data
    assert np.isnan(eager).any() and np.isfinite(eager).any()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(eager))
    finite = np.isfinite(eager)
    np.testing.assert_array_equal(got[~finite & ~np.isnan(eager)], eager[~finite & ~np.isnan(eager)])
    np.testing.assert_allclose(got[finite], eager[finite], rtol=2e-5, atol=1e-5)


def test_all_minus_infinity_rows_give_zeros_as_eager():
    """A bias of -inf on every key of a row: the softmax of eager gives zeros, so the row is 0."""
    heads, seq, width = 1, 5, 4
    model = Bare(heads, divide=False, bias_shape=(seq, seq))
    model.bias.data[2, :] = -np.inf
    fast = tc.compile(model, input_shape=[(None, seq, width), (None, seq, width)])
    assert fast.graph.op_counts().get("attention") == 1
    x, mem = inputs(3, seq, width), inputs(3, seq, width, seed=4)
    got, eager = fast(x, mem).data, model(Tensor(x), Tensor(mem)).data
    assert (eager[:, 2] == 0).all()
    np.testing.assert_array_equal(got[:, 2], eager[:, 2])
    np.testing.assert_allclose(got, eager, rtol=2e-5, atol=1e-6)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(heads=st.integers(1, 3), head_dim=st.integers(1, 20), seq=st.integers(1, 40), batch=st.integers(0, 5),
       masked=st.booleans(), seed=st.integers(0, 2**16))
def test_random_sizes_match_eager_and_float64(heads, head_dim, seq, batch, masked, seed):
    mha, fast = compiled_mha(heads, head_dim, seq, (None, seq, seq) if masked else None)
    x = inputs(batch, seq, heads * head_dim, seed=seed)
    if masked:
        mask = (np.random.default_rng(seed).random((batch, seq, seq)) < 0.7).astype(np.float32)
        got, eager = fast(x, mask), mha(Tensor(x), Tensor(mask))
    else:
        mask, got, eager = None, fast(x), mha(Tensor(x))
    assert_parity(got, eager, attention64(mha, x.astype(np.float64), mask))


def test_scale_matches_the_formula():
    """The node's scale is the float32 1/sqrt(D) eager multiplies by, not a rounded print of it."""
    _, fast = compiled_mha(2, 32, 3)
    [node] = fast.graph.nodes("attention")
    assert fast.graph.attrs(node)["scale"] == float(np.float32(1 / math.sqrt(32)))


@pytest.mark.parametrize("width", [4, 8])
def test_narrower_vectors_on_the_host(width):
    """Width 8 (16 registers: 6 x 2 tiles, 8 x 8 squares of K) and 4, run on this host."""
    mha, _ = compiled_mha(3, 5, 7)
    g = run_pipeline(trace(mha, (None, 7, 15)))
    plan = lower_graph(g, width)
    engine = JitEngine(plan.llvm_ir)
    params = [np.asarray(g[p]["value"], np.float32) for p in plan.params]
    kernel = NativeKernel(engine, plan, (7, 15), [p.shape for p in params])
    x = inputs(5, 7, 15)
    out = np.empty((5, 7, 15), np.float32)
    kernel.run(x, params, out, np.empty(plan.scratch_floats(5) + 1, np.float32))
    assert_parity(Tensor(out), mha(Tensor(x)), attention64(mha, x.astype(np.float64)))


@pytest.mark.parametrize("name", list(CROSS_TARGETS))
def test_every_cross_target_compiles_the_kernel(name):
    mha, _ = compiled_mha(2, 32, 19)
    g = run_pipeline(trace(mha, [(None, 19, 64), (19, 19)]))
    plan = lower_graph(g, target_named(name))
    assert emit_object(CROSS_TARGETS[name], [plan.llvm_ir], [plan.entry])


def run_kernel(spec: AttentionSpec, q, k, v, mask) -> np.ndarray:
    """The attention kernel of `spec` alone, JIT-compiled and called on (N, S, H*D) q, k, v."""
    return run_kernel_with_flags(spec, q, k, v, mask)[0]


def run_kernel_with_flags(spec: AttentionSpec, q, k, v, mask) -> tuple[np.ndarray, int]:
    """`run_kernel`, and on x86 the MXCSR exception flags the call raised (else 0)."""
    module = new_module()
    emit_attention(module, "attention", spec)
    x86 = spec.width > 1 and host().triple.startswith("x86_64")
    if x86:
        mxcsr_functions(module)
    engine, addresses = jit(module, "attention", *(("clear_fp_flags", "fp_flags") if x86 else ()))
    out = np.zeros((len(q), spec.sq, spec.heads * spec.dv), np.float32)
    work = np.zeros(spec.work_floats, np.float32)
    if x86:
        ctypes.CFUNCTYPE(None)(addresses["clear_fp_flags"])()
    c_function(addresses["attention"], 6)(len(q), *map(f32_ptr, (out, q, k, v, mask, work)))
    flags = ctypes.CFUNCTYPE(ctypes.c_int32)(addresses["fp_flags"])() if x86 else 0
    del engine  # (kept alive until the call returned)
    return out, flags


@pytest.mark.skipif(not host().triple.startswith("x86_64"), reason="reads the x86 MXCSR")
@pytest.mark.parametrize("vectors", [4, 1])
@pytest.mark.parametrize("sk", [40, 64, 100])
def test_probabilities_below_the_normals_are_taken_as_zero(sk, vectors):
    """Scores spread over hundreds: many exp(score - max) would be subnormal, and P @ V reading
    them costs every FMA a microcode assist on Intel cores. Below `AttentionSpec.flush_below` they
    are +0: no operation of the kernel rounds into the subnormals or reads one (MXCSR's flags stay
    clear), in registers (vectors=4, Sk <= 64) and on the scratch block, and the output still
    matches float64 as float32 scores of that size allow (a flushed p is below 2**-100)."""
    heads, d, sq, n = 2, 8, 9, 3
    rng = np.random.default_rng(sk)
    q, k, v = (rng.standard_normal((n, s, heads * d)).astype(np.float32) for s in (sq, sk, sk))
    scale = 12.0  # scores of std ~34: every row has keys in exp's subnormal range and below
    spec = AttentionSpec(heads=heads, sq=sq, sk=sk, d=d, dv=d, q_row=heads * d, k_row=heads * d,
                         v_row=heads * d, q_batch=sq * heads * d, k_batch=sk * heads * d,
                         v_batch=sk * heads * d, mask=None, scale=scale, divide=False, mask_value=None,
                         width=16, vectors=vectors)
    out, flags = run_kernel_with_flags(spec, q, k, v, np.zeros(1, np.float32))
    assert flags & UNDERFLOW_OR_DENORMAL == 0, f"MXCSR flags {flags:#x}"
    ref = sdpa64(q, k, v, heads, scale=scale)
    np.testing.assert_allclose(out, ref, rtol=2e-3, atol=1e-5)  # scores ~100: 2**-24 of them moves exp 1e-5
    # the scores do reach exp's subnormal range: the flush has work to do
    split = lambda t: t.astype(np.float64).reshape(n, -1, heads, d).transpose(0, 2, 1, 3)  # noqa: E731
    s64 = np.einsum("nhqd,nhkd->nhqk", split(q), split(k)) * scale
    shifted = s64 - s64.max(axis=-1, keepdims=True)
    assert ((shifted < -87.3) & (shifted > -103)).sum() > 100


class PlainAttention(Layer):
    def forward(self, q, k, v):
        return scaled_dot_product_attention(q, k, v)[0]


@pytest.mark.parametrize("sk", [5, 40, 100])
def test_an_infinite_value_behind_a_tiny_probability_gives_infinity_as_eager(sk):
    """A key whose probability is below the flush (2**-100 Sk) but not 0 (exp(-80) ~ 1e-35), with an
    infinite value: eager's p * inf is inf; a flushed p gave 0 * inf = NaN. Heads whose V holds an
    infinity keep every exp eager keeps; the others still flush."""
    rng = np.random.default_rng(sk)
    q = np.ones((3, 4, 1), np.float32)
    k = np.float32(rng.uniform(-1, 1, (3, sk, 1)))
    v = np.float32(rng.standard_normal((3, sk, 1)))
    k[0, 1], v[0, 1] = -80.0, -np.inf  # sample 0: a tiny probability times -inf
    k[1, 2], v[1, 2] = -110.0, np.inf  # sample 1: exp underflows to 0 in eager too: 0 * inf = NaN
    k[2, 3] = -80.0  # sample 2: finite values, a flushed key (as before)
    model = PlainAttention()
    fast = tc.compile(model, input_shape=[(None, 4, 1), (None, sk, 1), (None, sk, 1)])
    assert fast.graph.op_counts().get("attention") == 1
    with np.errstate(all="ignore"):
        eager = model(Tensor(q), Tensor(k), Tensor(v)).data
    got = fast(q, k, v).data
    assert np.isneginf(eager[0]).all() and np.isnan(eager[1]).all() and np.isfinite(eager[2]).all()
    np.testing.assert_array_equal(got[:2], eager[:2])  # -inf and NaN where eager has them
    np.testing.assert_allclose(got[2], eager[2], rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("sk, value", [(100, 123.0), (333, 123.0), (1000, 0.7), (1000, -3.0)])
def test_long_key_sequences_sum_their_values_in_runs(sk, value):
    """Uniform weights over V of one value: every term's rounding goes one way, so one FMA chain over
    the keys piled them up (123.000137 against eager's 123 at Sk = 100, past the parity rule; 3-12 x
    eager's error up to 1,000 keys). Runs of TERMS_PER_SUM keys summed from zero stay within it."""
    shapes = [(None, 4, 4), (None, sk, 4), (None, sk, 4)]
    q, k = np.zeros((2, 4, 4), np.float32), np.zeros((2, sk, 4), np.float32)
    v = np.full((2, sk, 4), value, np.float32)
    model = PlainAttention()
    fast = tc.compile(model, input_shape=shapes)
    assert fast.graph.op_counts().get("attention") == 1
    got = fast(q, k, v).data
    report = check_parity(got, model(Tensor(q), Tensor(k), Tensor(v)).data,
                          float64_reference(tc.trace(model, shapes), [q, k, v]))
    assert report.ok, str(report)
    assert np.abs(got - value).max() <= 4 * abs(value) * 2.0 ** -23  # a handful of roundings, not sk of them


@pytest.mark.parametrize("sk", [2, 40, 100])
def test_a_tiny_probability_of_a_huge_finite_value_counts_as_in_eager(sk):
    """exp(-80) is below the flush, but times a v of 3e38 it is 5e3: a head whose |v| reaches
    FLUSH_V_BELOW keeps every exp eager keeps (a fuzzer found compiled 1.0 against eager 5415.55)."""
    q = np.ones((2, 3, 1), np.float32)
    k = np.float32(np.random.default_rng(sk).uniform(-1, 0, (2, sk, 1)))
    v = np.float32(np.random.default_rng(sk + 1).standard_normal((2, sk, 1)))
    k[:, 1], v[0, 1], v[1, 1] = -80.0, 3e38, 2.0**40  # sample 1: just at the bound
    model = PlainAttention()
    fast = tc.compile(model, input_shape=[(None, 3, 1), (None, sk, 1), (None, sk, 1)])
    assert fast.graph.op_counts().get("attention") == 1
    eager = model(Tensor(q), Tensor(k), Tensor(v)).data
    assert eager[0].min() > 50, "the tiny probability's share is what eager computes"
    np.testing.assert_allclose(fast(q, k, v).data, eager, rtol=1e-5)


@pytest.mark.parametrize("sk", [17, 40, 64])
@pytest.mark.parametrize("mask_value", [-1e9, None])
def test_scores_softmaxed_in_registers_match_the_scratch_block_bit_for_bit(sk, mask_value):
    """Keys that fit one register tile (4 vectors of 16) are softmaxed while the scores are still in
    registers, six rows together; with one vector per tile (`vectors=1`) the same scores take the
    scratch block and `softmax_row`. Both must give the same bits: tail lanes past Sk, masked keys,
    rows with every key blocked (-1e9) or -inf (an additive mask), NaN and infinite inputs. And the
    finite results must match float64."""
    heads, d, sq, n = 2, 8, 9, 4
    rng = np.random.default_rng(sk)
    q = rng.standard_normal((n, sq, heads * d)).astype(np.float32)
    k = rng.standard_normal((n, sk, heads * d)).astype(np.float32)
    v = rng.standard_normal((n, sk, heads * d)).astype(np.float32)
    k[1, 3, 2] = np.nan  # head 0 of sample 1: every row NaN
    q[2, 5, d + 1] = np.inf  # one row of head 1 in sample 2: +-inf scores
    blocked = (rng.random((n, sq, sk)) < 0.7).astype(np.float32)
    blocked[3, 4] = 0  # every key of a row blocked
    mask = blocked if mask_value is not None else np.where(blocked > 0, 0, -np.inf).astype(np.float32)
    common = dict(heads=heads, sq=sq, sk=sk, d=d, dv=d, q_row=heads * d, k_row=heads * d, v_row=heads * d,
                  q_batch=sq * heads * d, k_batch=sk * heads * d, v_batch=sk * heads * d,
                  mask=(sq * sk, 0, sk, 1), scale=0.35, divide=False, mask_value=mask_value, width=16)
    in_registers = run_kernel(AttentionSpec(**common, vectors=4), q, k, v, mask)
    scratch = run_kernel(AttentionSpec(**common, vectors=1), q, k, v, mask)
    np.testing.assert_array_equal(in_registers.view(np.uint32), scratch.view(np.uint32))
    bias = (1 - blocked.astype(np.float64)) * mask_value if mask_value is not None else mask
    with np.errstate(all="ignore"):
        ref = sdpa64(q, k, v, heads, scale=0.35, bias=bias[:, None])
    # the blocked row as eager rounds it: -1e9 swamps float32 scores (all equal: the mean of the
    # values); an all -inf row gives zeros
    ref[3, 4] = v[3].astype(np.float64).mean(axis=0) if mask_value is not None else 0.0
    finite = np.isfinite(ref)
    assert np.isnan(in_registers[1, :, :d]).all() and finite.sum() > ref.size // 2
    np.testing.assert_array_equal(np.isnan(in_registers), ~finite)
    np.testing.assert_allclose(in_registers[finite], ref[finite], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("sk", [1, 64, 4096, 1 << 15, 1 << 20, 1 << 25])
def test_flushed_probabilities_move_the_output_within_the_parity_slack(sk):
    """Every flushed probability is below exp(flush_below) and |v| below FLUSH_V_BELOW: P @ V moves by
    less than Sk of those products, which must stay inside the parity rule's absolute 1e-6. The
    threshold grew with Sk without bound: a fuzzer's one query over 1.2 million keys gave 0 against
    1.2e-6."""
    from tinycomp.codegen.attention import FLUSH_V_BELOW

    spec = AttentionSpec(heads=1, sq=1, sk=sk, d=1, dv=1, q_row=1, k_row=1, v_row=1, q_batch=1, k_batch=sk,
                         v_batch=sk, mask=None, scale=1.0, divide=False, mask_value=None, width=16, vectors=1)
    assert sk * math.exp(spec.flush_below) * FLUSH_V_BELOW <= 1e-6
    assert spec.flush_below <= math.log(2.0**-100 * sk)  # never above the old threshold: no new flushing


def test_the_code_of_the_scores_does_not_grow_with_the_keys():
    """Every tile of keys had its own copy of the code: a million keys took a minute to compile."""
    from tinycomp.codegen.attention import emit_attention
    from tinycomp.codegen.ir_text import module_text

    def lines(sk: int) -> int:
        module = new_module()
        spec = AttentionSpec(heads=1, sq=4, sk=sk, d=8, dv=8, q_row=8, k_row=8, v_row=8, q_batch=32,
                             k_batch=8 * sk, v_batch=8 * sk, mask=(0, 0, sk, 1), scale=1.0, divide=False,
                             mask_value=-1e9, width=16, vectors=4)
        emit_attention(module, "attention", spec)
        return module_text(module).count("\n")

    few = lines(64 * 3 + 8)  # other parts differ by the keys' count (its remainders), not grow with it
    assert lines(64 * 100 + 8) < 1.5 * few and lines(64 * 1000 + 8) < 1.5 * few

