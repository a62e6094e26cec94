"""Narrow layers (N < width outputs) as K-vectorized dot products.

A layer with fewer outputs than vector lanes wastes most of a register tile, and summing each output
along K in one lane is also less accurate under cancellation than BLAS's dot kernels. Here each
output is a dot product over K in `<width x float>` partial sums, reduced by a pairwise tree.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from llvmlite import ir

from .cgutils import (
    F32,
    I32,
    I64,
    PTR,
    column_masks,
    declare_vector_intrinsic,
    define_once,
    element_ptr,
    for_range,
    i64,
    if_then,
    index_min,
    internal_kernel,
    masked_load,
    masked_store,
    vector_constant,
    vector_type,
    zeros,
)
from .gemm_epilogue import activation_step, family_suffix, has_bias, kernel_activation, load_bias, plus_residual
from .gemm_kernels import splat_f32


@dataclass(frozen=True)
class NarrowShape:
    """A narrow layer (N < width outputs) computed as K-vectorized dot products.

    Each output C[m, n] is the dot product of row m of A with row n of Wt (W transposed, packed per
    call; with `in_place`, W itself, its rows of N split by shuffles): `unroll` independent
    `<width x float>` accumulators per output over K, then a pairwise tree over their lanes. Rows go
    `rows` at a time (their outputs, contiguous in C, leave the tree as whole vectors: one epilogue
    and one store per `width` outputs); a last, partial block re-reads row M - 1 for the rows past M
    and stores only its own rows' outputs."""

    N: int
    width: int
    rows: int
    unroll: int
    tail: bool = True  # K may leave a partial step of unroll * width columns (else: no code for it)
    # 2 to IN_PLACE_MAX_N outputs: W read in place, its rows of N split into the outputs' vectors
    # by shuffles, instead of transposed into Wt on every call (as W of one column is its own Wt)
    in_place: bool = False

    def suffix(self) -> str:
        return f"{self.N}r{self.rows}u{self.unroll}v{self.width}" + ("t" if self.tail else "") + ("i" * self.in_place)


IN_PLACE_MAX_N = 4  # outputs whose weights the dot kernel reads in place (`_interleaved`)


def hsum_slots(builder: ir.IRBuilder, slots: list[ir.Value], width: int) -> ir.Value:
    """A `<width x float>` whose lane j is the sum of the lanes of `slots[j]` (len(slots) <= width),
    every sum a pairwise tree (lane t + lane t + width/2, ...), the other lanes +0.

    The slots are reduced together, so the shuffles move many partial sums at once: two vectors with
    groups of g lanes per slot become one with groups of g/2 (a two-source shuffle of the low halves
    of every group, one of the high halves, one add; an odd vector out pairs with zeros), down to
    one lane per slot. Every value stays `<width x float>` (no narrower vector types in the IR)."""
    vt = vector_type(width)
    zero = zeros(vt)

    def shuffle(x, y, idx):
        return builder.shuffle_vector(x, y, vector_constant(ir.VectorType(I32, len(idx)), idx))

    items: list[tuple[ir.Value, list[int | None]]] = [(s, [j]) for j, s in enumerate(slots)]
    g = width
    while g > 1:
        h, nxt = g // 2, []
        for i in range(0, len(items), 2):
            x, gx = items[i]
            y, gy = items[i + 1] if i + 1 < len(items) else (zero, [None] * len(gx))
            lo: list[int] = []
            hi: list[int] = []
            groups: list[int | None] = []
            for q in range(len(gx)):
                for half, out in ((0, lo), (h, hi)):
                    out += [q * g + half + t for t in range(h)] + [width + q * g + half + t for t in range(h)]
                groups += [gx[q], gy[q]]
            nxt.append((builder.fadd(shuffle(x, y, lo), shuffle(x, y, hi)), groups))
        items, g = nxt, h
    x, groups = items[0]
    return shuffle(x, zero, [groups.index(j) if j < len(slots) else width for j in range(width)])


def narrow_pack_kernel(module: ir.Module, N: int) -> ir.Function:
    """`void pack(i64 K, ptr W, i64 ldw, ptr Wt)`: Wt[n * ldw + k] = W[k * N + n] (W transposed,
    rows ldw apart). Only the K real columns are written: the dot kernel masks its K tail.
    Scalar copies, N per row of W (measured faster than masked gathers of W's columns on Zen 4)."""
    return define_once(module, f"tinycomp.gemm.narrowpack{N}", lambda name: _emit_narrow_pack(module, name, N))


def _emit_narrow_pack(module: ir.Module, name: str, N: int) -> ir.Function:
    fn = internal_kernel(module, name, (("K", I64), ("W", PTR), ("ldw", I64), ("Wt", PTR)))
    K, W, ldw, Wt = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    dst = [element_ptr(b, Wt, b.mul(ldw, i64(n))) for n in range(N)]
    with for_range(b, 0, K, name="k") as loop:
        k = loop.index
        src = element_ptr(b, W, b.mul(k, i64(N)))
        for n in range(N):
            b.store(b.load(element_ptr(b, src, n), typ=F32), element_ptr(b, dst[n], k))
    b.ret_void()
    return fn


NARROW_ARGS = (("M", I64), ("K", I64), ("A", PTR), ("Wt", PTR), ("ldw", I64), ("bias", PTR), ("C", PTR),
               ("flags", I64), ("R", PTR))


def narrow_kernel(module: ir.Module, shape: NarrowShape, activation: str | None, residual: bool = False) -> ir.Function:
    """`void narrow(i64 M, i64 K, ptr A, ptr Wt, i64 ldw, ptr bias, ptr C, i64 flags, ptr R)`:
    C = act(A @ Wt^T + bias) (+ R, laid out as C, with `residual`; R unread without) for an
    N-column layer, Wt holding W transposed (row n at Wt + n*ldw, K floats; nothing past K is
    read), or with `shape.in_place` W itself (K rows of N floats; ldw unread). `bias` may be null;
    flag bit 0 picks ReLU in the plain epilogue. K and M are run-time values (either may be 0), so
    layers of the same width and activation family share the kernel."""
    kind = kernel_activation(activation)
    return define_once(module, f"tinycomp.gemm.narrow{shape.suffix()}.{family_suffix(kind, residual)}",
                       lambda name: _emit_narrow(module, name, shape, kind, residual))


def _emit_narrow(module: ir.Module, name: str, shape: NarrowShape, kind: str, residual: bool) -> ir.Function:
    fn = internal_kernel(module, name, NARROW_ARGS)
    M, K, A, Wt, ldw, bias, C, flags, res = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    N, w = shape.N, shape.width
    act, bias1 = _narrow_epilogue(b, kind, flags, bias, N, w)
    weights = _interleaved(Wt, N, w) if shape.in_place else \
        _rows_of([element_ptr(b, Wt, b.mul(ldw, i64(n))) if n else Wt for n in range(N)], w)

    # Blocks of R rows, the last one too: its rows past M read row M - 1 again and are not stored (a
    # row's sums do not depend on its block). A second copy of the dot loop and tree for the rows
    # left one at a time was a third of this kernel's code-generation time.
    R = shape.rows
    last = b.sub(M, i64(1))
    with for_range(b, 0, M, R, name="rb") as block:
        r0 = block.index
        a_rows = [element_ptr(b, A, b.mul(index_min(b, b.add(r0, i64(r)), last), K)) for r in range(R)]
        stored = b.mul(index_min(b, b.sub(M, r0), i64(R)), i64(N))
        _store_rows(b, shape, _narrow_dot(b, shape, R, shape.unroll, K, a_rows, weights), (act, bias1),
                    (C, res if residual else None), r0, stored)
    b.ret_void()
    return fn


def _store_rows(b: ir.IRBuilder, shape: NarrowShape, acc, epilogue, out, r0: ir.Value, stored: ir.Value) -> None:
    """The first `stored` outputs of rows r0.. (`acc[r][n]`, `_narrow_dot`'s) through the epilogue
    into C (+ R). They are contiguous in C: they leave the tree `width` at a time as whole vectors,
    each with one bias add, activation and masked store."""
    (act, bias1), (C, res) = epilogue, out
    N, w = shape.N, shape.width
    slots = [acc[r][n] for r in range(len(acc)) for n in range(N)]
    for j0 in range(0, len(slots), w):
        lanes = min(w, len(slots) - j0)
        bias_v = bias1 if j0 == 0 and lanes <= N else b.shuffle_vector(bias1, bias1, vector_constant(
            ir.VectorType(I32, w), [(j0 + j) % N if j < lanes else N for j in range(w)]))
        out_v = act(b.fadd(hsum_slots(b, slots[j0:j0 + lanes], w), bias_v))
        [mask] = column_masks(b, index_min(b, b.sub(stored, i64(j0)), i64(lanes)), 1, w)  # none below 0
        at = b.add(b.mul(r0, i64(N)), i64(j0))
        if res is not None:
            out_v = plus_residual(b, out_v, element_ptr(b, res, at), mask)
        masked_store(b, out_v, element_ptr(b, C, at), mask)


def _narrow_epilogue(b: ir.IRBuilder, kind: str, flags, bias, N: int, w: int):
    """The activation as a function of a `<w x float>` and the bias of one row (-0.0, which changes
    no value, where absent or past N): the shared GEMM epilogue's two parts."""
    [row_mask] = column_masks(b, i64(N), 1, w)
    bias1 = load_bias(b, bias, row_mask, has_bias(b, bias), w)
    return activation_step(b, kind, flags, w), bias1


def narrow_small_kernel(module: ir.Module, shape: NarrowShape, activation: str | None,
                        residual: bool = False) -> ir.Function:
    """`void small(i64 M, i64 K, ptr A, ptr W, ptr bias, ptr C, i64 flags, ptr R)`: the narrow layer
    for small batches (+ R, laid out as C, with `residual`), W read in place (no transpose: for a
    few rows copying W costs more than the product). Row by row, C[m, :] = sum over k of
    A[m, k] * W[k, :] as one masked `<width x float>` (N lanes).

    Every output is summed in the dot kernel's order (`_narrow_dot`, `hsum_slots`), so a row's
    result does not depend on how many rows come with it, nor on how the batch is split between
    threads: the partial sum c (of unroll * width) takes the columns k = c mod unroll * width, k in
    order, the partials of one lane are summed over the unroll pairwise, then the lanes as
    hsum_slots' tree (lane t + lane t + width/2, ...). Only the lanes' roles differ: here one
    register holds a partial sum of all N outputs, there one output's partial sums."""
    kind = kernel_activation(activation)
    tail = "t" if shape.tail else ""  # a layer whose K is whole steps has no code for a last partial one
    return define_once(module, f"tinycomp.gemm.narrowsmall{shape.N}u{shape.unroll}v{shape.width}{tail}."
                       f"{family_suffix(kind, residual)}",
                       lambda name: _emit_narrow_small(module, name, shape, kind, residual))


def _emit_narrow_small(module: ir.Module, name: str, shape: NarrowShape, kind: str, residual: bool) -> ir.Function:
    fn = internal_kernel(module, name, (("M", I64), ("K", I64), ("A", PTR), ("W", PTR), ("bias", PTR), ("C", PTR),
                                        ("flags", I64), ("R", PTR)))
    M, K, A, W, bias, C, flags, R = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    N, w = shape.N, shape.width
    step = w * shape.unroll
    act, bias1 = _narrow_epilogue(b, kind, flags, bias, N, w)
    [mask] = column_masks(b, i64(N), 1, w)
    fma = declare_vector_intrinsic(module, "fma", w, 3)
    steps = b.udiv(K, i64(step))
    k_tail = b.mul(steps, i64(step))
    rem = b.sub(K, k_tail)

    def term(a: ir.Value, w_at: ir.Value, acc: ir.Value, w_mask: ir.Value = mask) -> ir.Value:
        """acc + a * W[k, :], w_at pointing at W[k, :]."""
        return b.call(fma, [splat_f32(b, a, w), masked_load(b, w_at, w_mask), acc])

    # The loops carry their A and W pointers from one step to the next (the code generator runs
    # without loop strength reduction, `target.HOST_LSR`: an index would cost a multiply per load).
    with for_range(b, 0, M, name="r") as rows:
        a_row = element_ptr(b, A, b.mul(rows.index, K))
        acc: list[ir.Value] = []
        for u in range(shape.unroll):  # partial sums u*w .. u*w + w-1, one pass each: w registers
            start = [element_ptr(b, a_row, u * w), element_ptr(b, W, u * w * N), *[zeros(vector_type(w))] * w]
            with for_range(b, 0, steps, name=f"ns{u}", carry=start) as loop:
                a_at, w_at, *accs = loop.carried
                loop.carry(element_ptr(b, a_at, step), element_ptr(b, w_at, step * N),
                           *[term(b.load(element_ptr(b, a_at, j), typ=F32), element_ptr(b, w_at, j * N), accs[j])
                             for j in range(w)])
            acc += loop.results[2:]
        if shape.tail:  # the tail's masked loads were half this kernel's code-generation time
            acc = _narrow_small_tail(b, shape, (a_row, W, k_tail, rem), acc, mask, term)
        lanes = [_pairwise(b, acc[j::w]) for j in range(w)]  # over the unroll, as _narrow_dot
        while len(lanes) > 1:  # hsum_slots' tree
            half = len(lanes) // 2
            lanes = [b.fadd(lanes[t], lanes[t + half]) for t in range(half)]
        out = act(b.fadd(lanes[0], bias1))
        at_row = b.mul(rows.index, i64(N))
        if residual:
            out = plus_residual(b, out, element_ptr(b, R, at_row), mask)
        masked_store(b, out, element_ptr(b, C, at_row), mask)
    b.ret_void()
    return fn


def _narrow_small_tail(b: ir.IRBuilder, shape: NarrowShape, at, acc: list[ir.Value], mask: ir.Value, term):
    """The partial sums after the last K % (unroll * width) columns, column k_tail + c into partial
    sum c, as the dot kernel's masked last step; the partials past K add 0 * 0 there, which changes
    no sum (one that starts at +0 is never -0), so here they are left alone."""
    a_row, W, k_tail, rem = at
    w, N = shape.width, shape.N
    no_lanes = ir.Constant(mask.type, [0] * w)
    with if_then(b, b.icmp_signed(">", rem, i64(0)), carry=acc, name="nt") as tail:
        a_masks = column_masks(b, rem, shape.unroll, w)
        a_tail = [masked_load(b, element_ptr(b, a_row, b.add(k_tail, i64(u * w))), a_masks[u])
                  for u in range(shape.unroll)]
        new = []
        for c in range(len(acc)):
            live = b.icmp_signed("<", i64(c), rem)
            k = b.select(live, b.add(k_tail, i64(c)), i64(0))  # W[0, :], unread, for the others
            a = b.extract_element(a_tail[c // w], ir.Constant(I32, c % w))
            new.append(term(a, element_ptr(b, W, b.mul(k, i64(N))), acc[c], b.select(live, mask, no_lanes)))
        tail.carry(*new)
    return tail.results


def _pairwise(b: ir.IRBuilder, parts: list[ir.Value]) -> ir.Value:
    """parts[0] + parts[1], parts[2] + parts[3], ... then again, until one is left (an odd one out
    moves up unchanged)."""
    while len(parts) > 1:
        parts = [b.fadd(parts[i], parts[i + 1]) if i + 1 < len(parts) else parts[i] for i in range(0, len(parts), 2)]
    return parts[0]


# The weights of one step's columns: `load(builder, k, u, rem, mask)` gives each output's vector of
# the columns k .. k+width-1 (the u-th vector of a step); in a last, partial step `rem` is the real
# columns left from the step's start and `mask` the u-th vector's lanes among them (else both None),
# the lanes past them loaded as 0.
Weights = Callable[[ir.IRBuilder, ir.Value, int, ir.Value | None, ir.Value | None], list[ir.Value]]


def _rows_of(wt_rows: list[ir.Value], w: int) -> Weights:
    """From Wt's rows, one per output."""
    def load(b: ir.IRBuilder, k: ir.Value, u: int, rem: ir.Value | None, mask: ir.Value | None) -> list[ir.Value]:
        return [masked_load(b, element_ptr(b, row, k), mask, width=w) for row in wt_rows]
    return load


def _interleaved(W: ir.Value, N: int, w: int) -> Weights:
    """From W of N (2 to 4) columns in place: the N * width floats of the step's columns (row k of W
    is N floats), each output's lanes gathered by one shuffle: n, n + N, n + 2N, ..."""
    idx = ir.VectorType(I32, w)
    gathers = [vector_constant(idx, list(range(n, N * w, N))) for n in range(N)]
    both = vector_constant(ir.VectorType(I32, 2 * w), list(range(2 * w)))  # two vectors as one of 2w lanes
    zero = zeros(vector_type(w))

    def load(b: ir.IRBuilder, k: ir.Value, u: int, rem: ir.Value | None, mask: ir.Value | None) -> list[ir.Value]:
        masks = [None] * N if rem is None else column_masks(b, b.mul(rem, i64(N)), N * u + N, w)[N * u:]
        at = element_ptr(b, W, b.mul(k, i64(N)))
        parts = [masked_load(b, element_ptr(b, at, h * w), masks[h], width=w) for h in range(N)]
        if N == 2:
            low, high = parts
        else:  # four vectors' lanes (the fourth zeros for N = 3) as two of 2w
            low = b.shuffle_vector(parts[0], parts[1], both)
            high = b.shuffle_vector(parts[2], parts[3] if N == 4 else zero, both)
        return [b.shuffle_vector(low, high, g) for g in gathers]
    return load


def _narrow_dot(b, shape: NarrowShape, rows: int, unroll: int, K, a_rows, weights: Weights):
    """acc[r][n] = A[r, 0:K] . W[0:K, n] for a block of rows, each as `unroll` vector accumulators
    over interleaved K chunks (chunk c into accumulator c % unroll), summed pairwise at the end.
    Full steps of unroll*width columns run in a loop with plain loads; the last partial step once
    with masked loads of A and the weights (masked-off lanes are 0 * 0), so no memory past K is
    touched. Either source of the weights (`_rows_of`, `_interleaved`) gives the same vectors."""
    w, N = shape.width, shape.N
    fma = declare_vector_intrinsic(b.module, "fma", w, 3)
    step = w * unroll
    steps = b.udiv(K, i64(step))
    k_tail = b.mul(steps, i64(step))
    rem = b.sub(K, k_tail)
    # the accumulators, carried as one list: slot[u, r, n] is the position of (u, r, n) in it
    slot = {key: i for i, key in enumerate((u, r, n) for u in range(unroll) for r in range(rows) for n in range(N))}

    def body(k0, accs, rem):
        """The accumulators after one step of unroll*width columns from k0 (`rem`: the columns left
        in a last partial step, else None)."""
        out = list(accs)
        masks = None if rem is None else column_masks(b, rem, unroll, w)
        for u in range(unroll):
            k = b.add(k0, i64(u * w))
            mask = masks[u] if masks else None
            wv = weights(b, k, u, rem, mask)
            av = [masked_load(b, element_ptr(b, a_rows[r], k), mask, width=w) for r in range(rows)]
            for r in range(rows):
                for n in range(N):
                    i = slot[u, r, n]
                    out[i] = b.call(fma, [av[r], wv[n], accs[i]])
        return out

    with for_range(b, 0, steps, name="nd", carry=[zeros(vector_type(w))] * len(slot)) as loop:
        loop.carry(*body(b.mul(loop.index, i64(step)), loop.carried, None))
    acc = loop.results
    if shape.tail:  # else K is a multiple of the step: the loop is all
        with if_then(b, b.icmp_signed(">", rem, i64(0)), carry=acc, name="nd.tail") as tail:
            tail.carry(*body(k_tail, acc, rem))
        acc = tail.results
    result = [[None] * N for _ in range(rows)]
    for r in range(rows):
        for n in range(N):
            result[r][n] = _pairwise(b, [acc[slot[u, r, n]] for u in range(unroll)])
    return result
