"""Shape rules of the op table (`ir/ops.py`): shape(*operand_shapes, **attrs) -> the output's shape.

Shapes are tuples that may hold `None` for the dynamic batch dimension. A rule raises ValueError,
with the message eager code shows, when the operands do not fit; the tracer and `Graph.add` call
the same rules, so eager and compiled code refuse the same things with the same words.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Shape = tuple  # tuple[int | None, ...]; None marks the dynamic batch dimension


def dim_text(d: int | None) -> str:
    return "N" if d is None else str(d)


def fmt_shape(shape: Sequence) -> str:
    return "(" + ", ".join(dim_text(d) for d in shape) + (",)" if len(shape) == 1 else ")")


def broadcast_shapes(a: Shape, b: Shape) -> Shape:
    out = []
    for i in range(1, max(len(a), len(b)) + 1):
        x = a[-i] if i <= len(a) else 1
        y = b[-i] if i <= len(b) else 1
        if x == y or y == 1:
            out.append(x)
        elif x == 1:
            out.append(y)
        else:
            raise ValueError(
                f"shape mismatch: cannot broadcast {fmt_shape(a)} with {fmt_shape(b)} "
                f"(dimension {x if x is not None else 'N'} against {y if y is not None else 'N'})"
            )
    return tuple(reversed(out))


def broadcast_all(*shapes: Shape) -> Shape:
    """The broadcast shape of any number of operands (`where`'s three)."""
    out = shapes[0]
    for shape in shapes[1:]:
        out = broadcast_shapes(out, shape)
    return tuple(out)


def matmul_shape(a: Shape, b: Shape) -> Shape:
    """NumPy's matmul shape rule (1-D operands promoted, leading dims broadcast). The messages carry
    TinyTorch's wording (`at least 1D`, `Inner dimensions don't match: 2 vs 3`) and DESIGN §1's."""
    if len(a) == 0 or len(b) == 0:
        raise ValueError(
            f"Matrix multiplication requires at least 1D tensors: got shapes {fmt_shape(a)} @ {fmt_shape(b)}; "
            "matmul needs operands with at least 1 dimension (use * for scalar multiplication)"
        )
    a2 = (1, *a) if len(a) == 1 else tuple(a)
    b2 = (*b, 1) if len(b) == 1 else tuple(b)
    if a2[-1] != b2[-2]:
        k, j = (dim_text(d) for d in (a2[-1], b2[-2]))
        raise ValueError(
            f"Cannot perform matrix multiplication: {fmt_shape(a)} @ {fmt_shape(b)}. "
            f"Inner dimensions must match: {k} ≠ {j} (shape mismatch; Inner dimensions don't match: "
            f"{k} vs {j}: the left operand's last dimension must equal the right operand's "
            f"{'only' if len(b) == 1 else 'second-to-last'} dimension)"
        )
    batch = broadcast_shapes(a2[:-2], b2[:-2])
    out = (*batch, a2[-2], b2[-1])
    if len(a) == 1:
        out = out[:-2] + out[-1:]
    if len(b) == 1:
        out = out[:-1]
    return out


def same_shape(x: Shape, **_: object) -> Shape:
    return tuple(x)


class BatchLayoutError(ValueError):
    """A shape that eager code may run at some batch sizes but a compiled kernel, which serves every
    batch size, cannot: the tracer raises it as a CompileError (its shape rules stay ValueErrors)."""


def reshape_shape(x: Shape, *, newshape: Sequence[int]) -> Shape:
    newshape = tuple(int(d) for d in newshape)
    if sum(d == -1 for d in newshape) > 1 or any(d < -1 for d in newshape):
        raise ValueError(f"reshape takes at most one -1 and no other negative size; got {newshape}")
    if x and x[0] is None:  # dynamic batch: it must stay the leading dimension
        if not newshape or newshape[0] != -1 or -1 in newshape[1:]:
            raise BatchLayoutError(
                f"cannot reshape {fmt_shape(x)} to {newshape}: the batch dimension N must stay "
                f"first, written as -1 (e.g. x.reshape(-1, {math.prod(x[1:])}))"
            )
        rest = reshape_shape(tuple(x[1:]), newshape=(math.prod(x[1:]),))[0]
        if len(newshape) == 1 and rest != 1:  # eager x.reshape(-1) merges the batch's samples into one axis
            raise BatchLayoutError(
                f"cannot reshape {fmt_shape(x)} to {newshape}: the batch dimension N must stay first, written "
                f"as -1, with each sample's {rest} elements after it (e.g. x.reshape(-1, {rest}))"
            )
        if math.prod(newshape[1:]) != rest:
            raise ValueError(
                f"cannot reshape {fmt_shape(x)} to {(-1, *newshape[1:])}: Element count mismatch: {rest} "
                f"elements vs {math.prod(newshape[1:])} elements per sample (each row has {rest} elements)"
            )
        return (None, *newshape[1:])
    size = math.prod(x)
    known = math.prod(d for d in newshape if d != -1)
    if -1 in newshape:
        if known == 0 or size % known:
            raise ValueError(
                f"cannot reshape tensor of shape {fmt_shape(x)} ({size} elements) to {newshape}: "
                f"Cannot infer -1 dimension: {size} elements is not divisible by the known sizes' product {known}"
            )
        newshape = tuple(size // known if d == -1 else d for d in newshape)
    if math.prod(newshape) != size:
        raise ValueError(
            f"cannot reshape tensor of shape {fmt_shape(x)} to {newshape}: Element count mismatch: "
            f"{size} elements vs {math.prod(newshape)} elements (reshape keeps every element; -1 infers one size)"
        )
    return newshape


def normalized_axis(ndim: int, axis: int) -> int:
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of range for a tensor with {ndim} dimensions")
    return axis % ndim


def sliced(size: int, start: int | None, stop: int | None, step: int | None = None) -> range:
    """The positions x[start:stop:step] takes of an axis of `size`, by Python's slice rules."""
    return range(*slice(start, stop, step).indices(size))


def slice_shape(x: Shape, *, axis: int, start: int, stop: int, step: int) -> Shape:
    """x[start:stop:step] along `axis`: Python's slice rules, a positive step (no reversing)."""
    i = normalized_axis(len(x), axis)
    if step < 1:
        raise ValueError(f"slice step must be a positive int; got {step}")
    if x[i] is None:
        raise BatchLayoutError(f"a slice along the batch axis of {fmt_shape(x)} (the batch stays whole)")
    out = list(x)
    out[i] = len(sliced(x[i], start, stop, step))
    return tuple(out)


def concat_shape(*shapes: Shape, axis: int) -> Shape:
    """Operands of one rank, equal but along `axis`, joined along it (np.concat); never the batch axis."""
    if not shapes:
        raise ValueError("concat needs at least one tensor; got none")
    first = tuple(shapes[0])
    i = normalized_axis(len(first), axis)
    for shape in shapes[1:]:
        if len(shape) != len(first) or any(a != b for k, (a, b) in enumerate(zip(shape, first, strict=True)) if k != i):
            raise ValueError(f"concat along axis {axis}: shapes {', '.join(fmt_shape(s) for s in shapes)} differ "
                             "elsewhere than along that axis (or in rank)")
    sizes = [s[i] for s in shapes]
    if None in sizes:
        raise BatchLayoutError(f"a concat along the batch axis of {fmt_shape(first)} (the batch stays one)")
    return (*first[:i], sum(sizes), *first[i + 1:])


def transpose_shape(x: Shape, *, dim0: int, dim1: int) -> Shape:
    out = list(x)
    i, j = normalized_axis(len(x), dim0), normalized_axis(len(x), dim1)
    out[i], out[j] = out[j], out[i]
    return tuple(out)


def reduced_axes(ndim: int, axis: int | Sequence[int] | None) -> tuple[int, ...]:
    """The axes a reduction runs over, non-negative and sorted (`axis=None`: all of them)."""
    if axis is None:
        return tuple(range(ndim))
    given = (axis,) if isinstance(axis, int) else tuple(axis)
    axes = tuple(normalized_axis(ndim, a) for a in given)
    if len(set(axes)) != len(axes):
        raise ValueError(f"duplicate value in axis={given} (axes {axes} of a {ndim}-D tensor)")
    return tuple(sorted(axes))


def reduce_shape(x: Shape, *, axis: int | Sequence[int] | None, keepdims: bool) -> Shape:
    axes = reduced_axes(len(x), axis)
    return tuple(1 if i in axes else d for i, d in enumerate(x) if keepdims or i not in axes)


def softmax_shape(x: Shape, *, dim: int = -1) -> Shape:
    normalized_axis(len(x), dim)
    return tuple(x)


def linear_shape(x: Shape, w: Shape, *rest: Shape, **_: object) -> Shape:
    """x @ w, broadcast with the bias and the residual (`linear`'s optional operands)."""
    out = matmul_shape(x, w)
    for extra in rest:
        out = broadcast_shapes(out, extra)
    return out


def leaf_shape(*, shape: Shape, **_: object) -> Shape:
    return tuple(shape)


def attention_dims(q: Shape, k: Shape, v: Shape, heads: int) -> tuple[Shape, int, int, int, int, int]:
    """(leading batch dims, Sq, Sk, head dim D, value head dim Dv, heads) of an `attention` node's
    operands: each (B, S, width) or (S, width) shared by every sample, widths split into `heads`."""
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1:
        raise ValueError(f"attention heads must be a positive int; got {heads!r}")
    for name, s in (("q", q), ("k", k), ("v", v)):
        if len(s) not in (2, 3) or None in s[-2:]:
            raise ValueError(f"attention {name} must have shape (N, seq, width) or (seq, width); got {fmt_shape(s)}")
        if s[-1] % heads:
            raise ValueError(f"attention {name} width {s[-1]} does not split into {heads} heads")
    leads = {tuple(s[:-2]) for s in (q, k, v) if len(s) == 3}
    if len(leads) > 1:
        raise ValueError(f"attention q, k, v have different batch dimensions: {fmt_shape(q)}, {fmt_shape(k)}, "
                         f"{fmt_shape(v)}")
    if q[-1] != k[-1] or k[-2] != v[-2]:
        raise ValueError(f"attention needs q and k of one width and k and v of one length; got q {fmt_shape(q)}, "
                         f"k {fmt_shape(k)}, v {fmt_shape(v)}")
    lead = leads.pop() if leads else ()
    return lead, q[-2], k[-2], q[-1] // heads, v[-1] // heads, heads


def attention_shape(q: Shape, k: Shape, v: Shape, mask: Shape | None = None, *, heads: int, **_: object) -> Shape:
    """softmax(q k^T scaled [+ mask term]) v per head: (B, Sq, heads * Dv). The mask broadcasts to the
    scores, (B, heads, Sq, Sk), without changing their shape."""
    lead, sq, sk, _d, dv, h = attention_dims(q, k, v, heads)
    if mask is not None:
        scores = (*lead, h, sq, sk)
        if len(mask) > 4 or broadcast_shapes(mask, scores) != scores:
            raise ValueError(f"attention mask {fmt_shape(mask)} does not broadcast to the scores {fmt_shape(scores)}")
    return (*lead, sq, h * dv)


def layer_norm_shape(x: Shape, gamma: Shape, beta: Shape, *, eps: float) -> Shape:
    """Normalized over the last axis of x; gamma and beta hold one value per position of that axis."""
    if not x or x[-1] is None:
        raise ValueError(f"layer_norm needs an input whose last axis has a fixed size; got {fmt_shape(x)}")
    for name, s in (("gamma", gamma), ("beta", beta)):
        if tuple(s) != (x[-1],):
            raise ValueError(f"layer_norm {name} must have shape ({x[-1]},) for input {fmt_shape(x)}; "
                             f"got {fmt_shape(s)}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
        raise ValueError(f"layer_norm eps must be a non-negative number; got {eps!r}")
    return tuple(x)
