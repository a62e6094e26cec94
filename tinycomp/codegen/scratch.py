"""Scratch-buffer planning: where each intermediate value lives, reusing dead buffers, and how many
batch rows a block of the whole graph runs on (`row_block`).

Batched values take `M * size` floats and sit in the first part of scratch at `M * offset`; values
without a batch dimension sit after them at a fixed offset, and the GEMM packing buffer last, so a
call too small to pack needs no room for it (`Extent`). Offsets are rounded to 16 floats so every
buffer starts on a 64-byte line when scratch does.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from llvmlite import ir

from ..ir.graph import Graph
from ..ir.layout import is_batched, row_floats
from ..ir.ops import ALIASING, LEAVES, normalized_axis
from ..ir.passes.fold_dropout import is_identity_dropout
from ..ir.shapes import sliced
from .cgutils import i64, index_min

ALIGN = 16
ROW_BLOCK = 128  # rows per block of the whole graph at most (see row_block); 0 runs each node on all rows
ROW_BLOCK_MAX_WEIGHT = 1 << 20  # bytes: row blocks only when every layer's W fits L2 (1 MiB, or the host's less)
# a block holds at most L2 / ROW_BLOCK_L2_SHARE bytes of the intermediates (`Target.l2_bytes`), fewer
# rows where a row's are large (the transformer block's 256 KB a sample: 1 sample a block with a
# 1 MB L2; see row_block)
ROW_BLOCK_L2_SHARE = 4
NO_CODE = (*sorted(LEAVES), "output")  # values that are arguments, or the result's place
# Values that are their operand's memory as it is (a reshape; an eval-mode dropout that survived the
# passes, e.g. with passes switched off) share its buffer; the output node is handled on its own.
PASS_THROUGH = ALIASING - {"output"}


def is_pass_through(g: Graph, n: str) -> bool:
    """Does n share its operand's buffer? A training-mode dropout computes a value of its own; a
    transpose that only moves axes of size 1 is a reshape (`keeps_order`)."""
    op = g.op(n)
    if op == "transpose":
        return keeps_order(g, n)
    return op in PASS_THROUGH and not (op == "dropout" and not is_identity_dropout(g, n))


def keeps_order(g: Graph, n: str) -> bool:
    """Is transpose n a reshape: do the axes it swaps and those between them hold at most one of a
    size other than 1 (a (64, 1, 1000) array read as (64, 1000, 1) lies the same in memory)?"""
    shape = tuple(g.shape(g.args(n)[0]))
    i, j = sorted(normalized_axis(len(shape), int(g.attrs(n)[k])) for k in ("dim0", "dim1"))
    return sum(d != 1 for d in shape[i:j + 1]) <= 1  # the batch (None) counts as more than 1


def columns_read_in_place(g: Graph, n: str) -> int | None:
    """The first column of slice n if every node reading it is an attention that reads it where it
    lies, inside its operand's rows (a run of whole columns, step 1, of an (N, S, W) or (S, W) value:
    the row stride stays W), else None. nanoGPT's q, k and v are such slices of one projection;
    their attention then takes no copies of them (`attention.attention_spec`), and the slice shares
    its operand's buffer (`plan_buffers`) and runs no code."""
    if g.op(n) != "slice" or g.output == n:
        return None
    attrs, shape = g.attrs(n), tuple(g.shape(g.args(n)[0]))
    last_axis = normalized_axis(len(shape), int(attrs["axis"])) == len(shape) - 1
    if len(shape) not in (2, 3) or int(attrs["step"]) != 1 or not last_axis:
        return None
    users = g.users(n)
    if not users or any(g.op(u) != "attention" or n in g.args(u)[3:] for u in users):
        return None  # a mask is read with its own broadcast strides: only q, k and v
    return sliced(shape[-1], attrs["start"], attrs["stop"], attrs["step"])[0]


def _round_up(n: int) -> int:
    return -(-max(n, 1) // ALIGN) * ALIGN


class _Arena:
    """First-fit allocation with reuse of freed blocks."""

    def __init__(self) -> None:
        self.size = 0
        self.free: list[tuple[int, int]] = []  # (offset, size)

    def take(self, size: int) -> int:
        size = _round_up(size)
        for i, (off, sz) in enumerate(self.free):
            if sz >= size:
                self.free[i : i + 1] = [(off + size, sz - size)] if sz > size else []
                return off
        off, self.size = self.size, self.size + size
        return off

    def give(self, off: int, size: int) -> None:
        self.free.append((off, _round_up(size)))
        self.free.sort()


@dataclass(frozen=True)
class Extent:
    """The floats a buffer of an entry call on `batch` rows spans: `per_row` for each row it holds
    (min(batch, row_block) with row blocks), `fixed`, and from `pack_rows` rows on `pack` more (a
    scratch's GEMM packing buffer, which lies last: smaller calls never write it)."""

    per_row: int
    fixed: int = 0
    row_block: int = 0
    pack: int = 0
    pack_rows: int = 0

    @property
    def empty(self) -> bool:
        return self.per_row == 0 and self.fixed == 0 and self.pack == 0

    @property
    def most_fixed(self) -> int:
        """The floats that do not grow with the batch, the pack buffer's included."""
        return self.fixed + self.pack

    def floats(self, batch: int) -> int:
        held = min(batch, self.row_block) if self.row_block else batch
        return held * self.per_row + self.fixed + (self.pack if batch >= self.pack_rows else 0)

    def emit_bytes(self, b: ir.IRBuilder, batch: ir.Value) -> ir.Value:
        """IR of 4 * floats(batch)."""
        cap = i64(self.row_block) if self.row_block else None
        words = (i64(self.per_row), i64(self.fixed), i64(self.pack), i64(self.pack_rows))
        return b.mul(emit_floats(b, batch, cap, *words), i64(4))


def emit_floats(b: ir.IRBuilder, batch: ir.Value, cap: ir.Value | None, per_row: ir.Value, fixed: ir.Value,
                pack: ir.Value, pack_rows: ir.Value) -> ir.Value:
    """IR of `Extent.floats` from run-time values (the native hot call reads them from its words)
    with `cap` the row block, None for none."""
    held = batch if cap is None else index_min(b, batch, cap)
    extra = b.select(b.icmp_signed(">=", batch, pack_rows), pack, i64(0))
    return b.add(b.add(b.mul(held, per_row), fixed), extra)


@dataclass
class BufferPlan:
    offsets: dict[str, tuple[int, bool]]  # node -> (offset in floats, batched?)
    aliases: dict[str, str]  # view node -> the node whose buffer it shares
    output_root: str  # the node that writes the model's output (straight into `out`)
    per_row: int = 0
    fixed: int = 0  # floats of the values without a batch dimension
    pack: int = 0  # floats of the pack buffer, which lies after them

    @property
    def pack_offset(self) -> int:
        return self.fixed

    def with_pack(self, floats: int) -> BufferPlan:
        """This plan with a pack buffer of `floats` (rounded up to whole lines) after every value:
        where a call that never packs need not have room for it. Every linear may use it, so it is
        live for the whole call; past the values, it shares no block with any."""
        return replace(self, pack=_round_up(floats) if floats else 0)

    def alias_root(self, n: str) -> str:
        while n in self.aliases:
            n = self.aliases[n]
        return n


def plan_buffers(g: Graph, pack_floats: int = 0) -> BufferPlan:
    order = g.nodes()
    aliases = {n: g.args(n)[0] for n in order if is_pass_through(g, n) or columns_read_in_place(g, n) is not None}
    plan = BufferPlan({}, aliases, output_root="")
    plan.output_root = plan.alias_root(g.args(g.output)[0])
    last_use: dict[str, int] = {}
    for i, n in enumerate(order):
        for a in g.args(n):
            last_use[plan.alias_root(a)] = i
    batched, fixed = _Arena(), _Arena()
    for i, n in enumerate(order):
        if g.op(n) in NO_CODE or n in aliases or n == plan.output_root:
            pass
        else:
            shape = g.shape(n)
            arena = batched if is_batched(shape) else fixed
            plan.offsets[n] = (arena.take(row_floats(shape)), is_batched(shape))
        for a in dict.fromkeys(plan.alias_root(a) for a in g.args(n)):
            if last_use.get(a) == i and a in plan.offsets:
                off, b = plan.offsets[a]
                (batched if b else fixed).give(off, row_floats(g.shape(a)))
    plan.per_row, plan.fixed = batched.size, fixed.size
    return plan.with_pack(pack_floats)


def row_block_scratch_bytes(l2_bytes: int) -> int:
    """The most bytes of intermediates one row block holds on a core with `l2_bytes` of L2."""
    return l2_bytes // ROW_BLOCK_L2_SHARE


def row_block(g: Graph, buffers: BufferPlan, l2_bytes: int = 1 << 20) -> int:
    """Rows per block when the entry runs the whole graph block by block, 0 for one pass.

    Every op works row by row, so the entry may run all of them on ROW_BLOCK rows before moving
    on: the intermediates of a block stay in L2 instead of streaming the whole batch through L3
    between layers. Only graphs whose every computed value and output has a batch dimension
    (an unbatched value would be recomputed per block), and only multi-layer graphs: one kernel
    gains nothing.

    Each block reads every weight matrix again, so only models whose every W fits L2
    (ROW_BLOCK_MAX_WEIGHT, or the host's `l2_bytes` if smaller): a block of ROW_BLOCK rows takes
    the GEMM's in-place path, which wants W hot in L2 (measured, 1 thread, rows 128 at a time
    against all rows at once: reference MLP at batch 512 / 2048 2131 / 8950 us against 2254 /
    9570; 16 x 128x128 at 256 / 1024 1246 / 5047 against 1299 / 5251; but 1024x1024 x 3 at 256 /
    1024 22985 / 85623 against 18020 / 65273). On AMD Zen 3 (512 KB L2) the reference MLP's
    784x256 W (784 KB) and lnmlp's 512x512 (1 MB) outgrow it: in one pass, against row blocks,
    the MLP took 0.88-0.93 / 0.85-1.07 / 0.91-0.97 of the time at 256 / 512 / 2048 rows and lnmlp
    0.78-0.84 / 0.73-0.95 at 256 / 1024 (`benchmarks/bare_call.py`, medians of alternating
    processes, two or three rounds, twenty-ninth session). A pass over all rows packs W, which only
    calls of `ModulePlan.pack_rows` rows need room for: batch 1 keeps its small scratch.

    A block holds at most a quarter of the core's L2 (`row_block_scratch_bytes`) of intermediates,
    so they stay in L2 beside the weights. On Zen 4 (1 MB; one thread, in-process medians, one-off
    script): the transformer block, 256 KB of intermediates a sample, at batch 32 8.72 / 8.77 ms
    with 1 / 2 samples a block against 9.24 ms with all 32 at once; lnmlp, 4 KB a row, at batch 256
    5.09-5.11 ms with 64 rows against 5.25-5.28 with 128, and 5.14-5.28 with 48; the reference MLP,
    1.5 KB a row, keeps 128. On the Intel Xeon (2 MB; `benchmarks/gemm_ab.py ROW_BLOCK_L2_SHARE
    8,4 --model lnmlp`, median time against 8): lnmlp with 128 rows a block instead of 64 at
    128 / 256 / 1024 rows 0.95 / 0.93 / 0.93; the block unchanged with 2 samples a block."""
    computed = [n for n in g.nodes() if g.op(n) not in NO_CODE]
    if not ROW_BLOCK or not is_batched(g.shape(g.output)) or not buffers.per_row:
        return 0
    # (a view of a value without the batch is no code: a (1, S, S) mask reshaped for the heads)
    if any(not is_batched(g.shape(n)) and not is_pass_through(g, n) for n in computed):
        return 0
    weights = [g.shape(g.args(n)[1]) for n in computed if g.op(n) in ("linear", "matmul")]
    if len(computed) < 2 or any(4 * row_floats(w) > min(ROW_BLOCK_MAX_WEIGHT, l2_bytes) for w in weights):
        return 0
    return max(1, min(ROW_BLOCK, row_block_scratch_bytes(l2_bytes) // (4 * buffers.per_row)))
