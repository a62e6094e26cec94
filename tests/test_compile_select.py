"""where, maximum, minimum and Tensor.clip: eager as NumPy, compiled as eager (special values bit for
bit, signed zeros included), both against float64 formulas written here, at batch 0, 1, 7 and 129."""

from __future__ import annotations

import re

import numpy as np
import pytest

import tinycomp as tc
from tests.test_compile_tensor_ops import Fn, check_every_batch, inputs
from tinycomp.ir import rounding
from tinycomp.nn import Layer, Softmax, Tensor, equal, maximum, minimum, not_equal, where

F64 = np.float64
ROW = np.linspace(-1.5, 1.5, 13)  # a constant operand broadcast along the rows
MASK = np.random.default_rng(5).random((3, 13)) < 0.5  # a NumPy bool mask: a constant


def softmax64(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


CASES = {
    "where-data": (lambda x: where(x.abs() - 1, x * 2, -x), lambda x: np.where(np.abs(x) != 1, x * 2, -x)),
    "where-mask": (lambda x: where(MASK, x, 0.5), lambda x: np.where(MASK, x, 0.5)),
    "masked-softmax": (lambda x: Softmax()(where(MASK, x, -np.inf)),
                       lambda x: softmax64(np.where(MASK, x, -np.inf))),
    "where-row-cond": (lambda x: where(Tensor(ROW) - 0.25, x, x.exp()),
                       lambda x: np.where(ROW != 0.25, x, np.exp(x))),
    "where-transposed": (lambda x: where(x.transpose(1, 2).transpose(1, 2), x.sum(axis=-1, keepdims=True), x),
                         lambda x: np.where(x != 0, x.sum(axis=-1, keepdims=True), x)),
    "maximum": (lambda x: maximum(x, x * x - 1), lambda x: np.maximum(x, x * x - 1)),
    "minimum-row": (lambda x: minimum(Tensor(ROW), x), lambda x: np.minimum(ROW, x)),
    "maximum-number": (lambda x: maximum(x, 0.25) + minimum(-0.5, x),
                       lambda x: np.maximum(x, 0.25) + np.minimum(-0.5, x)),
    "compare-data": (lambda x: where(x > 0, x, x * 0.01) + (x <= 0.5) * 3 - (0.25 < x),
                     lambda x: np.where(x > 0, x, x * 0.01) + (x <= 0.5) * 3 - (0.25 < x)),
    "compare-row": (lambda x: (x >= Tensor(ROW)) + (x < Tensor(ROW)) * 2, lambda x: (x >= ROW) + (x < ROW) * 2.0),
    "equal-masks": (lambda x: equal(x.abs().sum(axis=-1, keepdims=True) > 6, 0) * not_equal(x, 0.5),
                    lambda x: ((np.abs(x).sum(axis=-1, keepdims=True) > 6) == 0) * (x != 0.5)),
    "clip": (lambda x: x.clip(-1, 0.5), lambda x: np.clip(x, -1, 0.5)),
    "clip-max-only": (lambda x: x.clip(max=Tensor(ROW)), lambda x: np.minimum(x, ROW)),
    "clip-crossed": (lambda x: x.clip(1, -1), lambda x: np.full_like(x, -1.0)),  # NumPy's rule: max wins
}


@pytest.mark.parametrize("name", CASES)
def test_selection_parity(name):
    fn, ref = CASES[name]
    fast = check_every_batch(Fn(fn), (3, 13), ref)
    assert re.search(r"\b(where|maximum|minimum|greater|less|equal)", fast.dump("optimized")), "compiled, not folded"


SPECIALS = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 1.0, -1.0, 1e-45, -3e38], np.float32)


def pairs() -> tuple[np.ndarray, np.ndarray]:
    """Every pair of SPECIALS, as (1, 81) rows (and 17 lanes wide in the compiled kernel's tails)."""
    a, b = np.meshgrid(SPECIALS, SPECIALS)
    return a.reshape(1, -1), b.reshape(1, -1)


def bits(a: np.ndarray) -> np.ndarray:
    """The float32 bits, NaN payloads made one (NumPy's and our NaN differ only there)."""
    a = np.where(np.isnan(a), np.float32(np.nan), a).astype(np.float32)
    return a.view(np.uint32)


COMPARED = {"greater": (lambda x, t: x > t, np.greater), "greater_equal": (lambda x, t: x >= t, np.greater_equal),
            "less": (lambda x, t: x < t, np.less), "less_equal": (lambda x, t: x <= t, np.less_equal),
            "equal": (equal, np.equal), "not_equal": (not_equal, np.not_equal)}


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")  # -3e38 * 2
@pytest.mark.parametrize("op", ["maximum", "minimum", "where", "clip", *COMPARED])
def test_special_values_match_numpy_bit_for_bit(op):
    a, b = pairs()
    ops = {"maximum": (maximum, np.maximum), "minimum": (minimum, np.minimum),
           "where": (lambda x, t: where(x, t, x * 2), lambda x, t: np.where(x != 0, t, x * 2)),
           "clip": (lambda x, t: x.clip(-1, t), lambda x, t: np.minimum(np.maximum(x, np.float32(-1)), t)),
           **COMPARED}
    ours, numpy_op = ops[op]

    class Two(Fn):
        def forward(self, x):
            return ours(x, self.table)

    model = Two(None, b[0])
    want = numpy_op(a, b).astype(np.float32)
    eager = model(Tensor(a)).data
    got = tc.compile(model)(a).data
    np.testing.assert_array_equal(bits(eager), bits(want))
    np.testing.assert_array_equal(bits(got), bits(want))  # -0 against +0 included: y where they compare equal


def test_eager_follows_numpy_and_refuses_what_is_not_an_operand():
    x = inputs(4, (5,), 1)
    np.testing.assert_array_equal(where(x > 0, x, 0).data, np.where(x > 0, x, 0))  # a NumPy bool mask
    np.testing.assert_array_equal(Tensor(x).clip(-0.5).data, np.maximum(x, np.float32(-0.5)))
    with pytest.raises(ValueError, match="min or max"):
        Tensor(x).clip()
    with pytest.raises(TypeError, match=r"where\(\) takes Tensors.*got str as y"):
        where(x, x, "0")
    with pytest.raises(TypeError, match="clip.*got list as max"):
        Tensor(x).clip(max=[1, 2])
    with pytest.raises(ValueError, match="shape mismatch"):
        maximum(Tensor(x), np.ones(3, np.float32))


def test_comparisons_are_tensor_operators_and_keep_python_equality():
    x = inputs(3, (4,), 7)
    t = Tensor(x)
    np.testing.assert_array_equal((t > 0).data, (x > 0).astype(np.float32))
    np.testing.assert_array_equal((x[0] < t).data, (x[0] < x).astype(np.float32))  # reflected from NumPy
    np.testing.assert_array_equal((0.5 >= t).data, (0.5 >= x).astype(np.float32))
    assert (t == t) is True and (t != Tensor(x)) is True and t in [t] and {t: 1}[t] == 1  # identity, as before


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_an_added_minus_inf_mask_keeps_the_rows_rounding_slack():
    """A -inf logit's estimate is inf (|v| of an add), and its weight is exactly 0: 0 * inf made the
    softmax rule's row NaN, the parity rule lost its slack on every masked row, and check=True raised
    on ~5 % of calls with head dims over 32 (a hunt's case, also torch's additive causal mask)."""
    d, sq, sk = 65, 4, 33
    rng = np.random.default_rng(0)
    mask = Tensor(np.where(rng.random((sq, sk)) > 0.4, 0, -np.inf).astype(np.float32))

    class Added(Layer):
        def forward(self, x):
            q, k, v = x[:, :sq], x[:, sq:sq + sk], x[:, sq + sk:]
            return Softmax()(q @ k.transpose(-2, -1) * (1 / d ** 0.5) + mask) @ v

    fast = tc.compile(Added(), input_shape=(None, sq + 2 * sk, d), check=True)
    assert fast.graph.op_counts().get("attention") == 1
    for _ in range(60):
        fast((rng.standard_normal((2, sq + 2 * sk, d)) * 10).astype(np.float32))  # no ParityError
    logits = np.array([[0.5, -np.inf, 1.0]])
    weights = np.exp(logits - 1.0) / np.exp(logits - 1.0).sum()
    est = rounding.softmax(weights, [logits], [np.array([[1.0, np.inf, 1.0]])], {"dim": -1})
    assert np.isfinite(est).all() and est[0, 1] == 0


def test_comparison_rounding_counts_a_result_that_may_flip():
    a, b = np.array([1.0, 1.0, 1.0]), np.array([1.0 + 1e-9, 2.0, 1.0])
    est = rounding.comparison(np.array([0.0, 0.0, 0.0]), [a, b], [np.array([4.0, 4.0, 0.0]), np.zeros(3)], {})
    np.testing.assert_array_equal(est, [1 / rounding.EPS32, 0.0, 0.0])


def test_where_rounding_counts_a_condition_that_may_flip():
    """The parity rule's estimate: the picked operand's, plus |x - y| where the condition's own error
    reaches 0 (in units of float32 epsilon)."""
    cond, x, y = np.array([1e-9, 1.0, 0.0]), np.array([3.0, 3.0, 3.0]), np.array([1.0, 1.0, 1.0])
    m = [np.array([10.0, 10.0, 0.0]), np.array([2.0, 2.0, 2.0]), np.array([5.0, 5.0, 5.0])]
    est = rounding.where(np.where(cond != 0, x, y), [cond, x, y], m, {})
    np.testing.assert_allclose(est, [2.0 + 2.0 / rounding.EPS32, 2.0, 5.0])


class MaskedFillAttention(Layer):
    """Attention as a masked_fill writes it: where(mask, scores, fill) (or the mask inverted)."""

    def __init__(self, mask: np.ndarray, fill: float, fill_at: str, heads: int = 2, scale_after: str = "",
                 before: str = ""):
        self.mask, self.blocked, self.fill, self.fill_at, self.heads = mask, ~mask, fill, fill_at, heads
        self.scale_after = scale_after  # "", "mul" or "div": the scale after the fill, not before it
        self.before = before  # with scale_after: "" or "div" / "mul" by 1.0 before the fill (a temperature of 1)

    def forward(self, q, k, v):
        def split(t):
            return t.reshape(-1, t.shape[1], self.heads, t.shape[2] // self.heads).transpose(1, 2)

        scores = split(q) @ split(k).transpose(-2, -1)
        scores = scores if self.scale_after else scores * 0.5
        scores = scores / 1.0 if self.before == "div" else scores * 1.0 if self.before == "mul" else scores
        scores = where(self.mask, scores, self.fill) if self.fill_at == "zero" else \
            where(self.blocked, self.fill, scores)
        if self.scale_after:
            scores = 0.3 * scores if self.scale_after == "mul" else scores / 3.0
        out = Softmax()(scores) @ split(v)
        return out.transpose(1, 2).reshape(-1, out.shape[2], q.shape[2])


@pytest.mark.parametrize("before, after", [("div", "mul"), ("div", "div"), ("mul", "mul"), ("mul", "div")])
def test_a_scale_after_the_fill_is_the_nodes_whatever_the_one_before_it(before, after):
    """`scores / 1.0` (a temperature of 1), masked_fill, then `* 0.3`: the node kept the inner
    division's `divide` with the outer multiply's scale, dividing the scores by 0.3."""
    rng = np.random.default_rng(1)
    mask = np.tril(np.ones((6, 6), bool))
    q, k, v = (rng.standard_normal((3, 6, 8)).astype(np.float32) for _ in range(3))
    model = MaskedFillAttention(mask, -np.inf, "nonzero", scale_after=after, before=before)
    fast = tc.compile(model, input_shape=[(None, 6, 8)] * 3)
    assert fast.graph.op_counts().get("attention") == 1
    s64 = np.einsum("nhqd,nhkd->nhqk", *(t.astype(np.float64).reshape(3, 6, 2, 4).transpose(0, 2, 1, 3)
                                         for t in (q, k)))
    s64 = np.where(mask, s64, -np.inf) * 0.3 if after == "mul" else np.where(mask, s64, -np.inf) / 3.0
    p = np.exp(s64 - s64.max(-1, keepdims=True))
    ref = (p / p.sum(-1, keepdims=True)) @ v.astype(np.float64).reshape(3, 6, 2, 4).transpose(0, 2, 1, 3)
    ref = ref.transpose(0, 2, 1, 3).reshape(3, 6, 8)
    eager = model(Tensor(q), Tensor(k), Tensor(v)).data
    np.testing.assert_allclose(eager, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fast(q, k, v).data, eager, rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning", "ignore:overflow:RuntimeWarning")
@pytest.mark.parametrize("sk", [7, 64, 100])  # scores in registers (<= 64 keys) and on the scratch block
@pytest.mark.parametrize("fill, fill_at, scale_after", [(-np.inf, "zero", ""), (-1e9, "nonzero", ""), (0.0, "zero", ""),
                                                      (-1e9, "zero", "div"), (7.0, "nonzero", "mul")])
def test_masked_fill_attention_is_fused_and_matches_eager_bit_for_bit_on_specials(sk, fill, fill_at, scale_after):
    """The fused kernel selects the fill where eager's where does, so a NaN or infinite score at a
    masked position is replaced there too (an added mask would keep the NaN), rows with every key
    masked included; elsewhere it matches eager as the parity rule asks and float64 closely. A scale
    after the fill is the same node, its fill scaled once as eager scales it."""
    sq, d = 5, 8
    rng = np.random.default_rng(sk)
    mask = rng.random((sq, sk)) < 0.6
    mask[2] = False  # a row with every key masked
    q, k, v = (rng.standard_normal((4, s, 2 * d)).astype(np.float32) for s in (sq, sk, sk))
    blocked = np.argwhere(~mask[0])[0, 0]
    k[1, blocked, :d] = np.nan  # a NaN score only where row 0 is masked: eager fills it
    k[2, blocked, d:] = np.inf
    model = MaskedFillAttention(mask, fill, fill_at, scale_after=scale_after)
    fast = tc.compile(model, input_shape=[(None, sq, 2 * d), (None, sk, 2 * d), (None, sk, 2 * d)], check=True)
    assert fast.graph.op_counts().get("attention") == 1 and "where" not in fast.graph.op_counts()
    eager = model(Tensor(q), Tensor(k), Tensor(v)).data
    got = fast(q, k, v).data
    specials = ~np.isfinite(eager)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(eager))
    np.testing.assert_array_equal(got[specials & ~np.isnan(eager)], eager[specials & ~np.isnan(eager)])
    assert np.isfinite(eager[1, 0]).all(), "the NaN score sits where row 0 is masked: eager's where removes it"
    np.testing.assert_allclose(got[~specials], eager[~specials], rtol=2e-5, atol=2e-6)
