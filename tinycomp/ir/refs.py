"""NumPy references of the op table (`ir/ops.py`): what each op computes, in float32 as eager runs it.

The interpreter runs them in float64 too (the parity rule's yardstick), so each keeps its operands'
dtype rather than NumPy's promotion of a float32 array with a Python float.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from .philox import DropoutStream, dropout_effect, dropout_mask

F32 = np.float32


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Overflow-safe logistic: exp is only ever taken of a non-positive number."""
    with np.errstate(under="ignore"):  # exp(-1000) -> 0 is the right answer, not an error
        e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


def gelu(x: np.ndarray) -> np.ndarray:
    return x * sigmoid(np.asarray(1.702, x.dtype) * x)


_erfc = np.frompyfunc(math.erfc, 1, 1)  # NumPy has no erf; math.erfc is within 1 ulp of float64


def gelu_erf(x: np.ndarray) -> np.ndarray:
    """Exact GELU, x * (1 + erf(x / sqrt 2)) / 2 = x * erfc(-x / sqrt 2) / 2, evaluated in float64 and
    rounded once (the erfc form keeps the tiny negative tail: gelu_erf(-8) is -5e-15, not 0)."""
    x64 = np.asarray(x, np.float64)
    with np.errstate(invalid="ignore"):  # -inf * erfc(inf) = -inf * 0: nan, as the formula gives
        y = 0.5 * x64 * np.asarray(_erfc(x64 * -math.sqrt(0.5)), np.float64)
    return y.astype(np.result_type(x, np.float32), copy=False)


def softmax(x: np.ndarray, dim: int = -1) -> np.ndarray:
    """Row-max-subtracted softmax; a slice that is all -inf gives zeros (not NaN)."""
    m = np.max(x, axis=dim, keepdims=True) if x.size else x
    all_neg_inf = np.isneginf(m)
    with np.errstate(invalid="ignore", under="ignore", over="ignore"):  # 3e38 - -3e38 is inf: its exp is 0
        e = np.exp(x - np.where(all_neg_inf, 0, m))
        s = np.sum(e, axis=dim, keepdims=True)
        out = e / np.where(all_neg_inf, 1, s)
    return out.astype(x.dtype, copy=False)


def dropout(x: np.ndarray, *, p: float, training: bool, stream: DropoutStream | None = None) -> np.ndarray:
    """Inverted dropout with the Philox mask of one call (`stream`: key, layer, call; ir/philox.py)."""
    effect = dropout_effect(training, p)
    if effect == "identity":
        return x
    if effect == "zeros":
        return np.zeros_like(x)
    if stream is None:
        raise ValueError("a training-mode dropout needs the DropoutStream of its call (key, layer, call)")
    return x * dropout_mask(stream, x.shape, p)


_ZERO = F32(0)  # made once: eager relu is hot (a float64 x still gives a float64 result)


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, _ZERO)


def where(cond: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """x where cond is nonzero (NaN included: it is not 0), else y; a float mask of 0s and 1s is the
    usual cond, as every tensor here is float."""
    return np.where(cond != 0, x, y)


def comparison(ufunc: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    """A NumPy comparison giving 1.0 where it holds and 0.0 elsewhere, in the operands' float dtype."""
    def ref(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return ufunc(a, b).astype(np.result_type(a, b, np.float32), copy=False)
    ref.__name__ = ufunc.__name__
    return ref


def reshape(x: np.ndarray, *, newshape: tuple) -> np.ndarray:
    """x.reshape(newshape); a leading -1 (the batch, as the tracer writes it) beside a size-0 dimension,
    where NumPy cannot infer it, is x's own first dimension."""
    if newshape and newshape[0] == -1 and 0 in newshape[1:] and x.ndim:
        newshape = (x.shape[0], *newshape[1:])
    return x.reshape(newshape)


def slice_axis(x: np.ndarray, *, axis: int, start: int, stop: int, step: int) -> np.ndarray:
    """x[start:stop:step] along `axis` (a view; eager copies it)."""
    key = [slice(None)] * x.ndim
    key[axis] = slice(start, stop, step)
    return x[tuple(key)]


def concat(*xs: np.ndarray, axis: int) -> np.ndarray:
    """The operands joined along `axis` (np.concat), in the operands' common dtype."""
    return np.concatenate(xs, axis=axis)


def keep_dtype(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    """Keep float32 in float32 (NumPy would promote a float32 array with a Python float scalar)."""
    def ref(*args: np.ndarray, **attrs: object) -> np.ndarray:
        out = fn(*args, **attrs)
        dtype = out.dtype
        if all(getattr(a, "dtype", None) == dtype for a in args):  # common: skip result_type
            return out
        return np.asarray(out, dtype=np.result_type(*args))
    return ref


def power(x: np.ndarray, exponent: np.ndarray) -> np.ndarray:
    """x ** exponent as NumPy's float32 `power` computes it: C99 `pow`, except that a scalar exponent
    of 0.5 is `sqrt` (so (-0) ** 0.5 = -0 and (-inf) ** 0.5 = nan). Spelled out here so that every
    engine (eager, float64 reference, compiled) follows one rule, whatever NumPy version runs."""
    if np.ndim(exponent) == 0 and float(exponent) == 0.5:
        return np.sqrt(x)
    return np.power(x, exponent)


def split_heads(t: np.ndarray, heads: int) -> np.ndarray:
    """(..., S, heads * D) -> (..., heads, S, D)."""
    return np.swapaxes(t.reshape(*t.shape[:-1], heads, t.shape[-1] // heads), -2, -3)


def merge_heads(t: np.ndarray) -> np.ndarray:
    """(..., heads, S, D) -> (..., S, heads * D)."""
    t = np.swapaxes(t, -2, -3)
    return t.reshape(*t.shape[:-2], t.shape[-2] * t.shape[-1])


def attention_scores(q: np.ndarray, k: np.ndarray, mask: np.ndarray | None, *, heads: int, scale: float,
                     divide: bool, mask_value: float | None, mask_fill: float | None = None,
                     fill_at: str = "nonzero") -> list[np.ndarray]:
    """The steps before the softmax, as eager runs them: [q k^T, scaled, (1 - mask), the mask term, sum]
    (the mask steps only with a mask; (1 - mask) only with a mask_value); with a `mask_fill` the last
    step instead puts that number where the mask is nonzero (`fill_at` "nonzero") or zero ("zero"), as
    `where(mask, fill, scores)` and `where(mask, scores, fill)` do."""
    s = np.matmul(split_heads(q, heads), np.swapaxes(split_heads(k, heads), -1, -2))
    c = np.asarray(scale, s.dtype)
    steps = [s, s / c if divide else s * c]
    if mask is not None and mask_fill is not None:
        fill = np.asarray(mask_fill, s.dtype)
        steps.append(np.where(filled(mask, fill_at), fill, steps[1]).astype(s.dtype, copy=False))
    elif mask is not None:
        if mask_value is not None:
            one_minus = np.asarray(1, mask.dtype) - mask
            steps += [one_minus, one_minus * np.asarray(mask_value, mask.dtype)]
        else:
            steps.append(mask)
        steps.append((steps[1] + steps[-1]).astype(s.dtype, copy=False))
    return steps


def filled(mask: np.ndarray, fill_at: str) -> np.ndarray:
    """Where an attention node's `mask_fill` goes: where the mask is nonzero, or zero."""
    return (mask != 0) if fill_at == "nonzero" else (mask == 0)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None = None, *, heads: int,
              scale: float = 1.0, divide: bool = False, mask_value: float | None = None,
              mask_fill: float | None = None, fill_at: str = "nonzero") -> np.ndarray:
    """softmax(q k^T * scale (or / scale) [+ (1 - mask) * mask_value, + mask, or mask_fill where the
    mask is nonzero / zero]) v per head, q, k, v read as (..., S, heads * D) and the result written the
    same way: what `MultiHeadAttention` (or a masked_fill) computes between the projections, op by op
    as eager runs it."""
    scores = attention_scores(q, k, mask, heads=heads, scale=scale, divide=divide, mask_value=mask_value,
                              mask_fill=mask_fill, fill_at=fill_at)[-1]
    return merge_heads(np.matmul(softmax(scores, -1), split_heads(v, heads)))


def layer_norm_steps(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, *, eps: float) -> list[np.ndarray]:
    """`LayerNorm.forward`'s steps over the last axis, as eager runs them: [mean, x - mean, its square,
    variance, variance + eps, sqrt of that, (x - mean) / sqrt, times gamma, plus beta]."""
    mean = np.mean(x, axis=-1, keepdims=True)
    diff = x - mean
    square = diff * diff
    variance = np.mean(square, axis=-1, keepdims=True)
    shifted = variance + np.asarray(eps, variance.dtype)
    root = np.sqrt(shifted)
    scaled = diff / root
    times = keep_dtype(np.multiply)(scaled, gamma)
    return [mean, diff, square, variance, shifted, root, scaled, times, keep_dtype(np.add)(times, beta)]


def layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, *, eps: float) -> np.ndarray:
    """(x - mean) / sqrt(var + eps) * gamma + beta over the last axis, var the mean of (x - mean)^2:
    what `LayerNorm` computes, op by op as eager runs it (the `layer_norm` node's reference)."""
    with np.errstate(divide="ignore", invalid="ignore"):  # a NaN/inf row or eps = 0 on a constant row
        return layer_norm_steps(x, gamma, beta, eps=eps)[-1]
