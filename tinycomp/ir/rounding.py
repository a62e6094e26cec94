"""Rounding rules of the op table (`ir/ops.py`), for the parity rule (`tinycomp/parity.py`).

A rule estimates, to first order, a value's float32 rounding error in units of float32 epsilon:
`rule(v, a, m, attrs)` from the op's float64 output v, its operands' values a and their own
estimates m. Leaves are exact (no rule: 0). A dot product of length K adds sqrt(K) * (|a| @ |w|)
-- the magnitude of the terms it cancels, with the usual random-walk growth -- and carries its
inputs' estimates through |w|; elementwise ops carry theirs through |f'(v)| and add a few ulps of
|v| for their own rounding (our vector exp/tanh/sigmoid/gelu are within 4 ulp, gelu_erf within 7). An op without a
rule contributes nothing, so the parity rule stays strict there.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from . import refs
from .philox import dropout_effect
from .refs import attention_scores, layer_norm_steps, merge_heads, split_heads
from .refs import softmax as softmax_ref
from .shapes import reduced_axes

Arrays = Sequence[np.ndarray]
RoundingRule = Callable[[np.ndarray, Arrays, Arrays, dict], np.ndarray]
EPS32 = float(np.finfo(np.float32).eps)  # the unit of every estimate
OWN_ULPS = 4  # what one of our vector functions adds of its own, in ulps of its result
# Half the spacing of float32's subnormals (2^-150), in units of EPS32: a result rounded into them is
# off by up to that however small it is, far more than an epsilon of it (x * 1e-30 at x = 2.1e-15 is
# 1.4e-45 in float32 against 2.1e-45; a log after it is off by 0.4)
SUBNORMAL = 2.0 ** -150 / EPS32


def own(v: np.ndarray) -> np.ndarray:
    """What rounding v to float32 once adds: an epsilon of |v|, or half a subnormal step where that is
    more; nothing for an exact 0 (x * 0: its operands' errors, carried by the rule, are all it has),
    nor for an inf or NaN, which is no rounding of a number."""
    with np.errstate(invalid="ignore"):
        return np.where(np.isfinite(v), np.abs(v) + np.where(v != 0, SUBNORMAL, 0.0), 0.0)


def term(m: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """An operand's error m carried through `factor` (a slope): none from an exact operand or through
    a slope of 0, however large the other (1 / x at x = inf is 0 exactly; log of an exact 0 is -inf
    exactly), where m * factor would be 0 * inf, a NaN spreading over the row."""
    with np.errstate(invalid="ignore"):
        return np.where((m == 0) | (factor == 0), 0.0, m * factor)


def passes_through(v: np.ndarray, a: Arrays, m: Arrays, attrs: dict) -> np.ndarray:
    """An exact op of one operand (neg, abs, eval dropout, output): the operand's error, unchanged."""
    return m[0]


def dropout(v, a, m, attrs):
    """Eval mode (or p = 0) passes through; in training the kept values are scaled, one rounding more."""
    p = attrs.get("p", 0)
    if dropout_effect(bool(attrs.get("training")), p) != "mask":
        return m[0]
    return m[0] / (1 - p) + own(v)


def add_sub(v, a, m, attrs):
    return m[0] + m[1] + own(v)


def mul(v, a, m, attrs):
    return term(m[0], np.abs(a[1])) + term(m[1], np.abs(a[0])) + own(v)


def div(v, a, m, attrs):
    return term(m[0], 1 / np.abs(a[1])) + term(m[1], np.abs(a[0]) / (a[1] * a[1])) + own(v)


def power(v, a, m, attrs):
    """|d(x^c)/dx| = |c v / x|; the kernel rounds once."""
    return term(m[0], np.abs(a[1] * v / a[0])) + own(v)


def extremum(v, a, m, attrs):
    """maximum/minimum pick one operand: its error; where two lie within their errors of each other
    the other may be picked, which is no further off than the larger of the two estimates."""
    return np.maximum(m[0], m[1])


def comparison(v, a, m, attrs):
    """Exact, except where the operands lie within their errors of each other: there the 0 or 1 may
    flip, an error of 1."""
    with np.errstate(invalid="ignore", over="ignore"):
        unsure = np.abs(a[0] - a[1]) <= (m[0] + m[1]) * EPS32
        return np.where(unsure & ((m[0] > 0) | (m[1] > 0)), 1.0 / EPS32, 0.0)


def where(v, a, m, attrs):
    """The picked operand's error; where the condition's own error could carry it to or from 0 the
    other operand may be picked instead, off by |x - y|."""
    cond, x, y = a
    picked = np.where(cond != 0, m[1], m[2])
    with np.errstate(invalid="ignore", over="ignore"):
        unsure = (m[0] > 0) & (np.abs(cond) <= m[0] * EPS32)
        return picked + np.where(unsure, np.abs(x - y) / EPS32, 0.0)


def matmul(v, a, m, attrs):
    k = a[0].shape[-1]
    return (np.sqrt(k) * np.matmul(np.abs(a[0]), np.abs(a[1])) + np.matmul(m[0], np.abs(a[1]))
            + np.matmul(np.abs(a[0]), m[1]))


def derivative(slope: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> RoundingRule:
    """The rule of a unary function whose |f'(x)| is `slope(v, x)` (from its output v and input x)."""
    def rule(v, a, m, attrs):
        return term(m[0], slope(v, a[0])) + OWN_ULPS * own(v)
    return rule


def gelu_slope(v: np.ndarray, x: np.ndarray) -> np.ndarray:
    s = 1 / (1 + np.exp(-1.702 * x))
    return np.abs(s + 1.702 * x * s * (1 - s))


def gelu_erf_slope(v: np.ndarray, x: np.ndarray) -> np.ndarray:
    """d/dx x * Phi(x) = Phi(x) + x * phi(x), Phi(x) read back as gelu(x) / x."""
    with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
        phi = np.where(x != 0, v / np.where(x != 0, x, 1), 0.5)
        return np.abs(phi + x * np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi))


def gelu_erf(v, a, m, attrs):
    """Exact GELU: its vector kernel is within 6.5 ulp (below zero; 2 above), more than OWN_ULPS."""
    return term(m[0], gelu_erf_slope(v, a[0])) + 7 * own(v)


def softmax(v, a, m, attrs):
    """Each weight moves with its logit's error and the row's weighted errors. A weight of exactly 0
    (a -inf logit: a masked key, whose estimate is inf) carries none: 0 * inf would make the whole
    row's estimate NaN, and the parity rule would lose its slack there."""
    dim = attrs.get("dim", -1)
    mx = np.where(v == 0, 0.0, m[0])
    return v * (mx + np.sum(v * mx, axis=dim, keepdims=True)) + OWN_ULPS * own(v)


def reduction(op: str) -> RoundingRule:
    """A sum of K terms in any order: sqrt(K) * sum |x| of its own, plus its terms' estimates;
    max carries the estimate of what it picks; mean is the sum's over K."""
    def rule(v, a, m, attrs):
        x, mx = a[0], m[0]
        axes = reduced_axes(x.ndim, attrs.get("axis"))
        keep = bool(attrs.get("keepdims"))
        if op == "max":
            return np.max(mx, axis=axes, keepdims=keep) if x.size else np.zeros_like(v)  # max of nothing: no value
        count = math.prod(x.shape[i] for i in axes)
        total = np.sum(mx, axis=axes, keepdims=keep) + math.sqrt(count) * np.sum(np.abs(x), axis=axes, keepdims=keep)
        return total / max(count, 1) if op == "mean" else total
    return rule


def reshape(v, a, m, attrs):
    return np.reshape(m[0], v.shape)


def slice_axis(v, a, m, attrs):
    """The picked elements' errors (an estimate that broadcast is made whole first)."""
    return refs.slice_axis(np.broadcast_to(m[0], a[0].shape), **attrs)


def concat(v, a, m, attrs):
    """Each element keeps its operand's error."""
    return np.concatenate([np.broadcast_to(e, x.shape) for e, x in zip(m, a, strict=True)], axis=attrs["axis"])


def transpose(v, a, m, attrs):
    return np.swapaxes(m[0], attrs["dim0"], attrs["dim1"])


def attention(v, a, m, attrs):
    """The rules of the ops the node fuses, step by step on the per-head values: the scores' dot
    products, the scale, the mask term and its sum, the softmax, the product with V."""
    heads, divide, mask_value = attrs["heads"], attrs.get("divide", False), attrs.get("mask_value")
    q, k, vv = (split_heads(x, heads) for x in a[:3])
    mq, mk, mv = (split_heads(x, heads) for x in m[:3])
    kt, mkt = np.swapaxes(k, -1, -2), np.swapaxes(mk, -1, -2)
    fill = {"mask_fill": attrs.get("mask_fill"), "fill_at": attrs.get("fill_at", "nonzero")}
    steps = attention_scores(a[0], a[1], a[3] if len(a) > 3 else None, heads=heads, scale=attrs.get("scale", 1.0),
                             divide=divide, mask_value=mask_value, **fill)
    est = matmul(steps[0], [q, kt], [mq, mkt], {})
    scale = np.asarray(attrs.get("scale", 1.0), steps[0].dtype)
    zero = np.zeros(())
    est = (div if divide else mul)(steps[1], [steps[0], scale], [est, zero], {})
    if len(a) > 3 and fill["mask_fill"] is not None:  # a filled score is exact: where's rule, the mask exact
        est = np.where(refs.filled(a[3], fill["fill_at"]), 0.0, est)
    elif len(a) > 3:
        term_est = m[3]
        if mask_value is not None:
            one_minus, term = steps[2], steps[3]
            term_est = mul(term, [one_minus, np.asarray(mask_value)], [add_sub(one_minus, [], [zero, m[3]], {}), zero],
                           {})
        est = add_sub(steps[-1], [], [est, term_est], {})
    p = softmax_ref(steps[-1], -1)
    est = softmax(p, [steps[-1]], [est], {"dim": -1})
    return merge_heads(matmul(np.matmul(p, vv), [p, vv], [est, mv], {}))


def layer_norm(v, a, m, attrs):
    """The rules of the ops the node fuses, step by step: mean, subtract, square, mean, add eps,
    sqrt, divide, times gamma, plus beta."""
    x, gamma, beta = a
    zero = np.zeros(())
    mean_rule, sqrt_rule = reduction("mean"), derivative(lambda r, s: 0.5 / np.abs(r))
    last = {"axis": -1, "keepdims": True}
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        mean, diff, square, variance, shifted, root, scaled, times, out = \
            layer_norm_steps(x, gamma, beta, eps=attrs["eps"])
        est = mean_rule(mean, [x], [m[0]], last)
        e_diff = add_sub(diff, [], [m[0], est], {})
        est = mean_rule(variance, [square], [mul(square, [diff, diff], [e_diff, e_diff], {})], last)
        est = sqrt_rule(root, [shifted], [add_sub(shifted, [], [est, zero], {})], {})
        est = div(scaled, [diff, root], [e_diff, est], {})
        est = mul(times, [scaled, gamma], [est, m[1]], {})
        return add_sub(out, [], [est, m[2]], {})
