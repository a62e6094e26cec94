"""The rules both importers apply before making one of `graph_layers`' layers: which graphs would mix
samples (a constant that varies along the batch, a reduction or a cut over it, a reshape that merges
samples), each raising ValueError with the reason, which the importer puts into its refusal naming
the node."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..frontend.indexing import AdvancedIndex, index_plan, key_text
from .graph_layers import Clip, Concat, ConstantOperand, Index, Permute, Reduce, Where

BATCH = "batch"  # in a reshape's target: the input's own batch size
BATCHES = (97, 101)  # two batch sizes the importers run size arithmetic at: any two distinct ones serve


def check_constant(value: np.ndarray, data_rank: int, op: str = "") -> None:
    """Refuse a constant that would broadcast against data of `data_rank` dims across the batch."""
    if value.ndim > data_rank:
        raise ValueError(f"the constant of shape {value.shape} has more dimensions than the data: it would "
                         "broadcast the batch away from the first axis")
    # a constant of the data's rank meets the batch with its first axis, which must then be 1; in a
    # matmul only the axes before the last two broadcast (x (N, K) @ W (K, M) has none)
    meets_batch = value.ndim == data_rank and (op != "matmul" or data_rank >= 3)
    if meets_batch and value.shape[0] != 1:
        raise ValueError(f"the constant of shape {value.shape} varies along the batch axis (its first of "
                         f"{data_rank}); a constant may hold 1 there")


def with_constant(op: str, value: np.ndarray, constant_first: bool, data_rank: int) -> ConstantOperand:
    """The layer for `data <op> value` (`value <op> data` if constant_first) on data of `data_rank` dims."""
    check_constant(value, data_rank, op)
    first = constant_first and op not in ("add", "mul")  # IEEE add and mul commute: data first, as a bias add reads
    return ConstantOperand(op, value, constant_first=first)


def selection(operands: Sequence[np.ndarray | None], data_ranks: Sequence[int]) -> Where:
    """`Where` for (cond, x, y), each a constant or None for data, the data of `data_ranks` dims."""
    if not data_ranks:
        raise ValueError("all three operands are constants: nothing computed to select from")
    for rank in data_ranks[1:]:
        check_ranks(data_ranks[0], rank)
    check_constants(operands, data_ranks[0])
    return Where(*operands)


def clipping(low: np.ndarray | None, high: np.ndarray | None, data_rank: int) -> Clip:
    """`Clip(low, high)` on data of `data_rank` dims (None: no bound)."""
    check_constants((low, high), data_rank)
    return Clip(low, high)


def check_constants(values: Sequence[np.ndarray | None], data_rank: int) -> None:
    """`check_constant` of each value given (None: a data operand, or no bound)."""
    for value in values:
        if value is not None:
            check_constant(np.asarray(value), data_rank)


def indexing(key: tuple, shape: Sequence[int | None]) -> Index:
    """`Index(key)` on a value of `shape` (None: the batch), refused where compiled code cannot take it
    (the batch cut, a negative step, an index out of range)."""
    try:
        index_plan(tuple(shape), key)
    except (IndexError, AdvancedIndex) as exc:
        raise ValueError(f"[{key_text(key)}] on a value of shape {tuple(shape)}: {exc}") from None
    return Index(key)


def joining(axis: int, ranks: Sequence[int], new_axis: bool = False) -> Concat:
    """`Concat(axis, new_axis)` of data values of `ranks` dims: one rank, joined along an axis after the
    batch (a new one with `new_axis`)."""
    for rank in ranks[1:]:
        check_ranks(ranks[0], rank)
    rank = ranks[0] + new_axis
    if not -rank <= axis < rank or axis % rank == 0:
        joined = f"{ranks[0]}-D values stacked ({rank}-D)" if new_axis else f"{rank}-D values"
        raise ValueError(f"axis {axis} of {joined}: they are joined along an axis after the batch")
    return Concat(axis, new_axis)


def axis_key(rank: int, axis: int, part: slice | int | list[int]) -> tuple:
    """The index that takes `part` (a slice, or one position) of `axis` and all of the other axes."""
    return (slice(None),) * (axis % rank) + (part,)


def check_ranks(left_rank: int, right_rank: int) -> None:
    """Refuse an elementwise op of two data values of different ranks: NumPy aligns axes from the
    last, so the lower-rank value's batch axis would meet another axis of the other (samples mixed)."""
    if left_rank != right_rank:
        raise ValueError(f"two computed values of ranks {left_rank} and {right_rank}: broadcast from the last "
                         "axis, the batch axis of one would meet another axis of the other")


def check_matmul(left_rank: int | None, right_rank: int | None, names: Sequence[str] = ("", "")) -> None:
    """Refuse a product of data (rank given; None for a constant) that would contract over the batch:
    NumPy's matmul contracts the left's last axis with the right's second-to-last. `names` name the
    operands in the message."""
    left, right = (f" {name!r}" if name else "" for name in names)
    if right_rank is not None and right_rank < 3:
        raise ValueError(f"the right operand{right} is {right_rank}-D data: its contracted axis is the batch, a "
                         "matrix product across samples")
    if left_rank is not None and left_rank < 2:
        raise ValueError(f"the left operand{left} is 1-D data: its only axis, the batch, would be contracted")
    if left_rank is not None and right_rank is not None and left_rank != right_rank:
        raise ValueError(f"operands{left} and{right} of ranks {left_rank} and {right_rank}: their batch axes "
                         "would not meet")


def reshape_sample(target: Sequence[int | str], source: Sequence[int] | None) -> list[int]:
    """The per-sample sizes of a reshape to `target` (ONNX's rule: 0 copies the input's size there,
    -1 takes what is left; `BATCH` is the batch) on a value of sample sizes `source` (None if
    unknown). The batch must stay first: `BATCH`, 0, or a -1 that leaves the sample's size whole."""
    shape = list(target)
    if not shape or BATCH in shape[1:] or not (shape[0] in (BATCH, 0) or (shape[0] == -1 and -1 not in shape[1:])):
        raise ValueError(f"shape {shape}: the batch must stay first")
    sample = [int(d) for d in shape[1:]]
    if shape[0] == -1 or 0 in sample or -1 in sample:
        if source is None:
            raise ValueError(f"shape {shape} needs the sizes of its input after the batch, which are not known")
        if 0 in sample[len(source):]:
            raise ValueError(f"shape {shape} copies a size (0) a value of sizes {list(source)} does not have")
        sample = [source[i] if d == 0 else d for i, d in enumerate(sample)]
        if shape[0] == -1 and math.prod(sample) != math.prod(source):
            raise ValueError(f"shape {shape} on a value of sizes {list(source)} after the batch: the -1 would "
                             "merge samples into one another")
        if -1 in sample:
            given, whole = math.prod(d for d in sample if d != -1), math.prod(source)
            if given == 0 or whole % given:
                raise ValueError(f"shape {shape} does not fit a value of sizes {list(source)} after the batch")
            sample[sample.index(-1)] = whole // given
    return sample


def reduction(kind: str, axes: Sequence[int] | None, keepdims: bool, rank: int) -> Reduce:
    """`Reduce` over `axes` (None or empty: all) of a value of `rank` dims, refused over the batch."""
    if not axes or any(int(a) % rank == 0 for a in axes):
        raise ValueError(f"axes {list(axes) if axes else 'all'}: a reduction over the batch (axis 0)")
    return Reduce(kind, axes, keepdims)


def permutation(perm: Sequence[int]) -> Permute:
    """`Permute(perm)`, refused if it moves the batch."""
    if perm and perm[0] != 0:
        raise ValueError(f"perm {list(perm)} moves the batch (axis 0) away from the first axis")
    return Permute(perm)
