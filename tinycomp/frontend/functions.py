"""Functions of several tensors, NumPy's names and rules: `where`, `maximum`, `minimum`, `equal`,
`not_equal` (elementwise; `<`, `<=`, `>`, `>=` are Tensor operators), `concat` and `stack`.

Each is one op of the table (`ir/ops.py`) through `apply_op`, so eager runs and traces agree; the
operands are Tensors, NumPy arrays or numbers (broadcast as NumPy does, elementwise), and the result
is a Tensor.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

from ..errors import CompileError
from .tensor import Operand, Tensor, apply_op, as_tensor, check_operands, kind_of


def where(cond: Operand, x: Operand, y: Operand) -> Tensor:
    """x where `cond` is nonzero, else y (`np.where(cond != 0, x, y)`; a NaN in cond picks x).

    Tensors are float32, so a mask is a tensor of 0s and 1s, or a NumPy bool array (a constant).
    `masked_fill(scores, mask, -inf)` is `where(mask, -inf, scores)`.
    """
    check_operands("where", cond=cond, x=x, y=y)
    return apply_op("where", cond, x, y)


def maximum(a: Operand, b: Operand) -> Tensor:
    """The larger of a and b elementwise, as `np.maximum`: NaN where either is NaN."""
    return _of_two("maximum", a, b)


def minimum(a: Operand, b: Operand) -> Tensor:
    """The smaller of a and b elementwise, as `np.minimum`: NaN where either is NaN."""
    return _of_two("minimum", a, b)


def equal(a: Operand, b: Operand) -> Tensor:
    """1.0 where a == b, else 0.0 (`np.equal`; NaN equals nothing). Tensor's == stays Python's."""
    return _of_two("equal", a, b)


def not_equal(a: Operand, b: Operand) -> Tensor:
    """1.0 where a != b (NaN included), else 0.0 (`np.not_equal`)."""
    return _of_two("not_equal", a, b)


def _of_two(op: str, a: Operand, b: Operand) -> Tensor:
    check_operands(op, a=a, b=b)
    return apply_op(op, a, b)


def concat(tensors: Sequence[Operand], axis: int = 0) -> Tensor:
    """The tensors joined along `axis`, as `np.concat` (torch.cat): one rank, equal sizes elsewhere."""
    return apply_op("concat", *_tensor_list("concat", tensors), axis=_int_axis("concat", axis))


def stack(tensors: Sequence[Operand], axis: int = 0) -> Tensor:
    """The tensors, of one shape, joined along a new axis `axis` (np.stack, torch.stack): each given that
    axis (`t[..., None, ...]`), then `concat`."""
    parts = [as_tensor(t) for t in _tensor_list("stack", tensors)]
    if len({tuple(map(str, t.shape)) for t in parts}) > 1:  # str: a traced batch size is N
        raise ValueError(f"stack takes tensors of one shape; got shapes {', '.join(str(t.shape) for t in parts)}")
    axis, ndim = _int_axis("stack", axis), parts[0].ndim + 1
    if not -ndim <= axis < ndim:
        raise ValueError(f"stack axis {axis} is out of range for {ndim - 1}-D tensors")
    tracer = parts[0]._tracer
    if axis % ndim == 0 and tracer is not None and not isinstance(parts[0].shape[0], int):  # `t[None]` would refuse
        raise CompileError(f"{tracer.where()} stacks tensors of shape {parts[0].shape} along axis {axis}, a new axis "
                           "before the batch axis N: compiled code keeps the batch first (stack along a feature "
                           "axis, e.g. axis=1)")
    key = (slice(None),) * (axis % ndim) + (None,)
    return concat([t[key] for t in parts], axis=axis)


def _tensor_list(fn: str, tensors: Any) -> list[Operand]:
    """`tensors` as a list, TypeError unless it is a non-empty list or tuple of operands."""
    if isinstance(tensors, (Tensor, str, bytes)) or not isinstance(tensors, Sequence) or not tensors:
        raise TypeError(f"{fn}() takes a non-empty list or tuple of tensors; got {kind_of(tensors)}")
    check_operands(fn, **{f"tensors[{i}]": t for i, t in enumerate(tensors)})
    return list(tensors)


def _int_axis(fn: str, axis: Any) -> int:
    try:
        return operator.index(axis)
    except TypeError:
        raise TypeError(f"{fn}() takes an int axis; got {axis!r}") from None
