"""Loops over rows of float32 values, a vector of `width` lanes at a time.

A row of R values is R // width full vectors (a loop) and, when R % width > 0, one masked vector for
the tail (`llvm.masked.load/store` with a constant mask), so every R >= 1 runs the same code with no
scalar remainder loop. A run whose length is only known at run time (`for_each_flat_chunk`) ends in
a mask computed from what is left. Also the blocked sums (`blocked_fold`, `fold_run`) of softmax,
layer norm and max.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from llvmlite import ir

from .cgutils import (
    ALIGN,
    F32,
    I64,
    as_i64,
    for_range,
    i64,
    index_min,
    lanes_below,
    masked_load,
    masked_store,
    splat,
    splat_value,
    vector_constant,
)


@dataclass(frozen=True)
class Chunk:
    """`width` consecutive row elements starting at `col`; `mask` is None for a full vector."""

    col: ir.Value
    width: int
    mask: ir.Value | None = None  # constant for row tails, computed for flat (runtime) tails


def load_chunk(builder: ir.IRBuilder, ptr: ir.Value, chunk: Chunk, fill: float = 0.0) -> ir.Value:
    """Load a chunk at `ptr`; masked-off lanes read `fill` and touch no memory."""
    return masked_load(builder, ptr, chunk.mask, width=chunk.width, fill=fill)


def store_chunk(builder: ir.IRBuilder, value: ir.Value, ptr: ir.Value, chunk: Chunk) -> None:
    masked_store(builder, value, ptr, chunk.mask)


def broadcast_load(builder: ir.IRBuilder, ptr: ir.Value, width: int) -> ir.Value:
    return splat(builder.load(ptr, typ=F32, align=ALIGN), width, builder)


def row_chunks(row_size: int, width: int) -> list[Chunk]:
    """The chunks of a row, each at a constant column (for rows short enough to unroll)."""
    full = row_size - row_size % width
    chunks = [Chunk(i64(c), width) for c in range(0, full, width)]
    if row_size % width:
        chunks.append(Chunk(i64(full), width, lanes_below(width, row_size % width)))
    return chunks


def for_each_chunk(builder: ir.IRBuilder, row_size: int, width: int, body: Callable[[Chunk], None]) -> None:
    """Call `body` for the full vectors of a row (a loop) and then the masked tail (once)."""
    for_each_chunk_group(builder, row_size, width, 1, lambda chunks: body(*chunks))


def for_each_chunk_group(builder: ir.IRBuilder, row_size: int, width: int, group: int,
                         body: Callable[[list[Chunk]], None]) -> None:
    """Call `body` with `group` full vectors of a row at a time (a loop), then once with the rest:
    the full vectors left over and the masked tail."""
    full = row_size // width
    looped = full - full % group
    if looped:
        with for_range(builder, 0, looped * width, step=group * width, name="cols", nonempty=True) as loop:
            body([Chunk(builder.add(loop.index, i64(k * width), flags=["nsw"]) if k else loop.index, width)
                  for k in range(group)])
    rest = [Chunk(i64(j * width), width) for j in range(looped, full)]
    if row_size % width:
        rest.append(Chunk(i64(full * width), width, lanes_below(width, row_size % width)))
    if rest:
        body(rest)


def accumulate_row(builder: ir.IRBuilder, row_size: int, width: int, init: list[ir.Value],
                   step: Callable[..., list[ir.Value]],
                   merge: Callable[[list[ir.Value], list[ir.Value]], list[ir.Value]] | None = None) -> list[ir.Value]:
    """Fold `step(chunk, *values) -> new values` over a row's chunks, the values carried through the
    loop over its full vectors (an accumulator stays in registers), then through the tail.

    With `merge(values, values) -> values`, for folds whose order does not change their result (max,
    min, or): UNROLL sets of values, chunk i folded into set i % UNROLL, the sets merged pairwise at
    the end, so that UNROLL dependency chains run at once instead of one."""
    ways = UNROLL if merge is not None else 1
    n = len(init)
    sets = [list(init) for _ in range(ways)]
    full = row_size // width
    looped = full - full % ways
    if looped:
        with for_range(builder, 0, looped * width, step=ways * width, name="col",
                       carry=[v for values in sets for v in values], nonempty=True) as loop:
            new = []
            for k in range(ways):
                col = builder.add(loop.index, i64(k * width), flags=["nsw"]) if k else loop.index
                new += step(Chunk(col, width), *loop.carried[k * n:(k + 1) * n])
            if n:
                loop.carry(*new)
        sets = [list(loop.results[k * n:(k + 1) * n]) for k in range(ways)]
    for j in range(looped, full):  # the full vectors past the last whole round, one into each set
        sets[j - looped] = step(Chunk(i64(j * width), width), *sets[j - looped])
    if row_size % width:
        sets[0] = step(Chunk(i64(full * width), width, lanes_below(width, row_size % width)), *sets[0])
    while len(sets) > 1:
        assert merge is not None
        sets = [merge(sets[k], sets[k + 1]) if k + 1 < len(sets) else sets[k] for k in range(0, len(sets), 2)]
    return sets[0]


# ---------------------------------------------------------------- blocked sums

LEAF = 32  # terms per leaf of a blocked fold, folded into UNROLL accumulators
UNROLL = 4
FAN = 4  # leaves (or subtrees) under one node of the tree above the leaves
Step = Callable[[ir.Value, ir.Value], ir.Value]  # (index, accumulator) -> accumulator
Combine = Callable[[ir.Value, ir.Value], ir.Value]


def fold(b: ir.IRBuilder, count: int | ir.Value, init: ir.Value, step: Step, name: str = "k") -> ir.Value:
    """acc = init; for i in range(count): acc = step(i, acc) -- the accumulator carried. A count known
    only at run time must be at least 1."""
    if isinstance(count, int) and count == 0:
        return init
    with for_range(b, 0, count, name=name, carry=[init], nonempty=True) as loop:
        loop.carry(step(loop.index, loop.carried[0]))
    return loop.results[0]


def blocked_fold(b: ir.IRBuilder, count: int, identity: ir.Value, term: Callable[[ir.Value], ir.Value],
                 combine: Combine, name: str = "k") -> ir.Value:
    """combine(...combine(identity, term(0))..., term(count - 1)) in the shape of NumPy's pairwise sum,
    so that a rounding error grows with log(count), not with count as in one running sum:

    - a leaf folds LEAF consecutive terms into UNROLL accumulators (term i into accumulator
      i % UNROLL), combined pairwise at its end: LEAF / UNROLL + log2(UNROLL) roundings deep;
    - the leaves are combined by a tree of FAN-way nodes, each node folding its children's totals
      from `identity`: FAN roundings per level, log_FAN(count / LEAF) levels;
    - the last count % LEAF terms are one more (short) leaf, combined into the tree's total.

    The accumulators also split the dependency chain of the combines, so a leaf runs UNROLL at once.
    The tree's loops have run-time trip counts (its last subtree at each level may be partial), so
    the code is one loop nest whatever `count` is."""
    if count <= LEAF:
        return _leaf(b, 0, count, identity, term, combine, name)
    leaves, rest = divmod(count, LEAF)
    levels = 0
    while FAN ** levels < leaves:
        levels += 1

    def node(level: int, first: ir.Value | int, n_leaves: ir.Value | int, tag: str) -> ir.Value:
        """The total of `n_leaves` (>= 1) whole leaves from term `first`, under a node `level` above them."""
        if level == 0:
            return _leaf(b, first, LEAF, identity, term, combine, tag)
        span = FAN ** (level - 1)  # leaves under each child
        if isinstance(n_leaves, int):
            trips: ir.Value | int = -(-n_leaves // span)
        else:
            trips = b.udiv(b.add(n_leaves, i64(span - 1), flags=["nuw"]), i64(span))

        def child(j: ir.Value, acc: ir.Value) -> ir.Value:
            done = b.mul(j, i64(span), flags=["nsw"])
            left = b.sub(as_i64(n_leaves), done, flags=["nsw"])
            n = index_min(b, left, i64(span))
            at = b.add(as_i64(first), b.mul(done, i64(LEAF), flags=["nsw"]), flags=["nsw"])
            return combine(acc, node(level - 1, at, n, f"{tag}.in"))

        return fold(b, trips, identity, child, f"{tag}.blk")

    total = node(levels, 0, leaves, name)
    return combine(total, _leaf(b, leaves * LEAF, rest, identity, term, combine, f"{name}.rest")) if rest else total


def _leaf(b: ir.IRBuilder, first: ir.Value | int, count: int, identity: ir.Value,
          term: Callable[[ir.Value], ir.Value], combine: Combine, name: str) -> ir.Value:
    """Terms first .. first + count - 1 (count static, <= LEAF) folded into UNROLL accumulators, term i
    into accumulator i % UNROLL, then the accumulators combined pairwise."""
    if count == 0:
        return identity
    ways = min(UNROLL, count)
    rounds, extra = divmod(count, ways)

    def index(i: ir.Value | int) -> ir.Value:
        return b.add(as_i64(i), as_i64(first), flags=["nsw"])

    with for_range(b, 0, rounds * ways, step=ways, name=name, carry=[identity] * ways, nonempty=True) as loop:
        loop.carry(*(combine(acc, term(b.add(index(loop.index), i64(k), flags=["nsw"])))
                     for k, acc in enumerate(loop.carried)))
    accs = list(loop.results)
    for k in range(extra):
        accs[k] = combine(accs[k], term(index(rounds * ways + k)))
    while len(accs) > 1:
        accs = [combine(accs[k], accs[k + 1]) if k + 1 < len(accs) else accs[k] for k in range(0, len(accs), 2)]
    return accs[0]


def fold_run(b: ir.IRBuilder, run: int, width: int, identity: ir.Value, term: Callable[[Chunk], ir.Value],
             combine: Combine) -> ir.Value:
    """Fold the vectors `term(chunk)` of a contiguous run of `run` floats into one vector: the full
    ones as a tree (`blocked_fold`), then the masked tail, whose masked-off lanes `term` must give as
    the identity."""
    full = run // width
    acc = blocked_fold(b, full, identity, lambda i: term(Chunk(b.mul(i, i64(width), flags=["nsw"]), width)),
                       combine, "run") if full else identity
    if run % width:
        acc = combine(acc, term(Chunk(i64(full * width), width, lanes_below(width, run % width))))
    return acc


def step_offsets(b: ir.IRBuilder, at: Sequence[ir.Value], strides: Sequence[Sequence[int]], level: int,
                 i: ir.Value) -> list[ir.Value]:
    """Each array's offset `at[k]` moved i steps along loop level `level` of its `strides[k]`
    (unchanged where that stride is 0): the offsets of a loop nest over strided arrays."""
    return [x if s[level] == 0 else b.add(x, b.mul(i, i64(s[level]), flags=["nsw"]), flags=["nsw"])
            for x, s in zip(at, strides, strict=True)]


def _lanes_left(builder: ir.IRBuilder, remaining: ir.Value, width: int) -> ir.Value:
    """Lanes i < remaining, for a tail whose length is only known at run time."""
    lanes = vector_constant(ir.VectorType(I64, width), list(range(width)))
    return builder.icmp_unsigned("<", lanes, splat_value(builder, remaining, lanes.type))


def for_each_flat_chunk(builder: ir.IRBuilder, total: ir.Value, width: int, body: Callable[[Chunk], None]) -> None:
    """Like `for_each_chunk` over `total` elements known only at run time (one flat row)."""
    full = builder.and_(total, i64(-width))
    with for_range(builder, 0, full, step=width, name="flat") as loop:
        body(Chunk(loop.index, width))
    remaining = builder.sub(total, full)
    with builder.if_then(builder.icmp_signed(">", remaining, i64(0))):
        body(Chunk(full, width, _lanes_left(builder, remaining, width)))
