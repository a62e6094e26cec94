"""Fuse scaled dot-product attention into one `attention` node.

`MultiHeadAttention` traces to: per projection reshape (N, S, H, D) -> transpose to (N, H, S, D); K
transposed once more; `matmul(q, k^T)`; `mul` by the 1/sqrt(D) constant; with a mask, `add` of
`mul(sub(1, mask), MASK_VALUE)` (or a `where` that fills, as masked_fill); `softmax` over the last
axis; `matmul` with V; transpose and reshape back to (N, S, H*Dv). Run as traced, every transpose
copies and the whole (N, H, S, S) score tensor lives in memory. The `attention` node reads q, k and
v as (N, S, H*D), head h in columns h*D..h*D+D, where the projections wrote them, and writes (N, S,
H*Dv) for the output projection: no transpose is ever copied (codegen/attention.py runs it per row
block).

The rewrite only goes through when the result is the same computation, op for op:
- the score chain is matmul -> [mul or div by a one-element constant] -> [add a term that
  broadcasts to the scores] -> softmax over the last axis -> matmul with v, each value read once;
- each of q, k^T, v is a chain of reshapes and transposes of a value laid out (N, S, H*D), and the
  output's chain of reshapes and transposes lays it out as (N, S, H*Dv): both checked by running
  the chains on index arrays (N = 2), so any spelling of the same rearrangement matches;
- a mask term `(1 - m) * c` (c a one-element constant) is folded in as `mask_value`, so the kernel
  reads m itself and rounds as eager does; any other term is added as it is;
- a masked_fill instead of a term, `where(m, c, scores)` or `where(m, scores, c)`, is folded in as
  `mask_fill` = c and `fill_at` ("nonzero" or "zero"): the kernel selects, reading m itself; the
  fill may also come before the scale (`where(m, c, q @ k^T) / s`): the node's fill is then fl(c / s);
- q, k^T or v multiplied by a one-element constant anywhere among its views (torch's ONNX export
  of scaled_dot_product_attention scales q and k^T by the scale's root; a hand-written
  `(k * c).transpose(-2, -1)` scales k before its transpose) is that product taken of the (N, S,
  H*D) value instead (`view_chain`): each element meets the same constant in the same multiply,
  whatever the views put it, so the numbers are the graph's.
"""

from __future__ import annotations

import numpy as np

from ..graph import Graph
from ..layout import is_scalar_const
from ..ops import op_def
from ..shapes import normalized_axis

VIEWS = ("reshape", "transpose")
SAMPLES = 2  # the batch size the index check runs at: two samples, so a view that mixes them shows


def sole_user(g: Graph, n: str, op: str | tuple[str, ...]) -> str | None:
    """n's only reader if n is read once, by an op of `op`."""
    if g.use_count(n) != 1:
        return None
    (user,) = g.users(n)
    return user if g.op(user) in ((op,) if isinstance(op, str) else op) else None


def number(g: Graph, n: str, like: str) -> float | None:
    """The value of a one-element constant that leaves the shape of `like` as it is."""
    if not is_scalar_const(g, n) or len(g.shape(n)) > len(g.shape(like)):
        return None
    return float(np.asarray(g[n]["value"]).reshape(-1)[0])


def concrete(shape: tuple) -> tuple[int, ...]:
    return tuple(SAMPLES if d is None else d for d in shape)


def run_views(g: Graph, chain: list[str], start: np.ndarray) -> np.ndarray:
    """`start` through the view nodes of `chain` (first to last), by their NumPy references."""
    for n in chain:
        ref = op_def(g.op(n)).ref
        assert ref is not None  # reshape and transpose have one
        start = np.asarray(ref(start, **g.attrs(n)))
    return start


def heads_layout(shape: tuple, heads: int, order: tuple[int, ...]) -> np.ndarray:
    """Element numbers of an (N, S, heads*D) buffer viewed per head: axes (N, S, heads, D) put in `order`."""
    n, s, w = concrete(shape)
    return np.arange(n * s * w).reshape(n, s, heads, w // heads).transpose(order)


Source = tuple[str, tuple | None]  # a node, and the shape to view it as (None: as it is)
Operand = tuple[Source, str | None]  # what the node reads: a source, times a one-element constant or not


def view_chain(g: Graph, n: str) -> tuple[list[str], str | None, int]:
    """n and the values below it through views and at most one multiply by a one-element constant
    of at most three axes (which commutes with any view: every element meets the same constant):
    (the chain from n down, the constant or None, the index in the chain of the multiply's operand;
    0 without one)."""
    chain, const, below = [n], None, 0
    while True:
        x = chain[-1]
        if g.op(x) in VIEWS:
            chain.append(g.args(x)[0])
            continue
        if g.op(x) == "mul" and const is None:
            a, b = g.args(x)
            for y, c in ((a, b), (b, a)):
                if is_scalar_const(g, c) and len(g.shape(c)) <= 3 and g.shape(y) == g.shape(x):
                    const, below = c, len(chain) - 1
                    chain[-1] = y  # the multiply is left out of the views the chain runs
                    break
            if const is not None:
                continue
        return chain, const, below


def source_of(g: Graph, n: str, heads: int, length: int, order: tuple[int, ...]) -> Operand | None:
    """The highest value above n through reshapes and transposes that n reads as the per-head view
    `order` of an (N, length, heads*D) layout, the reshape to that layout it needs, and the
    one-element constant a multiply on the way scales it by (None: none); None if there is none."""
    if g.shape(n)[:1] != (None,):
        return None
    chain, const, below = view_chain(g, n)
    want_shape = concrete(g.shape(n))
    if len(want_shape) == 3:  # one head: (N, S, D) is (N, 1, S, D) without its head axis
        want_shape = (want_shape[0], 1, *want_shape[1:])
    layout = (None, length, heads * want_shape[3 if order[-1] == 3 else 2])
    want = heads_layout(layout, heads, order)
    for i in range(len(chain) - 1, below - 1, -1):  # a source below the multiply, if any
        base = g.shape(chain[i])
        if base[:1] != (None,) or int(np.prod(concrete(base))) != want.size or want.shape != want_shape:
            continue
        got = run_views(g, chain[i - 1::-1] if i else [], np.arange(want.size).reshape(concrete(base)))
        if np.array_equal(got.reshape(want.shape), want):
            return (chain[i], (None if tuple(base) == layout else (-1, *layout[1:]))), const
    return None


def merged_output(g: Graph, m: str) -> str | None:
    """The furthest value below matmul m, through sole-user reshapes and transposes, that holds m's
    (N, H, Sq, Dv) result laid out as (N, Sq, H*Dv); None if there is none."""
    shape = concrete(g.shape(m))
    logical = shape if len(shape) == 4 else (shape[0], 1, *shape[1:])
    start = np.arange(int(np.prod(shape))).reshape(shape)
    merged = start.reshape(logical).transpose(0, 2, 1, 3).reshape(-1)
    found, n = None, m
    chain: list[str] = []
    while True:
        if g.shape(n)[:1] == (None,) and np.array_equal(run_views(g, chain, start).reshape(-1), merged):
            found = n
        user = sole_user(g, n, VIEWS)
        if user is None:
            return found
        chain.append(user)
        n = user


Scores = tuple[str, dict, str | None, list[str]]


def match_scores(g: Graph, soft: str) -> Scores | None:
    """(the q @ k^T matmul, the node's scale and mask attributes, the mask operand, the nodes folded)
    of the chain into softmax `soft`, or None if it is not one the node computes exactly."""
    x = g.args(soft)[0]
    if g.op(x) == "where" and g.use_count(x) == 1:
        return match_fill(g, x)
    filled = match_scaled_fill(g, x)
    if filled is not None:
        return filled
    if g.op(x) != "add" or g.use_count(x) != 1:
        return match_scale(g, x, {}, None, [])
    a, b = g.args(x)
    for scores, term in ((a, b), (b, a)):
        if g.shape(scores) != g.shape(x):
            continue
        mask, mask_value, term_nodes = mask_term(g, term)
        attrs = {} if mask_value is None else {"mask_value": mask_value}
        found = match_scale(g, scores, attrs, mask, [x, *term_nodes])
        if found is not None:
            return found
    return None


def match_fill(g: Graph, x: str) -> Scores | None:
    """`where(m, c, scores)` or `where(m, scores, c)` (masked_fill) with c a one-element constant: the
    node puts c where m is nonzero (resp. zero), reading m itself."""
    mask, a, b = g.args(x)
    for scores, fill, at in ((b, a, "nonzero"), (a, b, "zero")):
        value = number(g, fill, x)
        if value is not None and g.shape(scores) == g.shape(x):
            found = match_scale(g, scores, {"mask_fill": value, "fill_at": at}, mask, [x])
            if found is not None:
                return found
    return None


def scaled(g: Graph, x: str) -> list[tuple[str, float]]:
    """(operand, scale) for each way x is that operand times or divided by a one-element constant
    that keeps its shape (a mul either way round); none where x is read elsewhere too."""
    if g.op(x) not in ("mul", "div") or g.use_count(x) != 1:
        return []
    a, b = g.args(x)
    orders = ((a, b),) if g.op(x) == "div" else ((a, b), (b, a))
    return [(v, c) for v, c in ((v, number(g, c, x)) for v, c in orders) if c is not None and g.shape(v) == g.shape(x)]


def match_scaled_fill(g: Graph, x: str) -> Scores | None:
    """`where(m, c, q @ k^T) * s` (or / s): the fill before the scale, as `(q @ k^T).masked_fill(...) /
    sqrt(d)` writes it. The same as scaling first and filling with fl(c * s) (fl(c / s)): each element
    is either the fill, scaled once, or a score, scaled once."""
    for inner, scale in scaled(g, x):
        if g.op(inner) != "where" or g.use_count(inner) != 1:
            continue
        found = match_fill(g, inner)
        if found is None or found[1]["scale"] != 1.0:  # a scale on both sides of the fill: not one node's
            continue
        matmul, attrs, mask, folded = found
        fill, s = np.float32(attrs["mask_fill"]), np.float32(scale)
        with np.errstate(all="ignore"):  # an infinite fill stays infinite; NaN stays NaN
            scaled_fill = fill / s if g.op(x) == "div" else fill * s
        # the scale is the outer one's: an inner `/ 1.0` (exact, so dropped) must not leave its `divide`
        attrs = {**{k: v for k, v in attrs.items() if k != "divide"}, "scale": scale, "mask_fill": float(scaled_fill),
                 **({"divide": True} if g.op(x) == "div" else {})}
        return matmul, attrs, mask, [x, *folded]
    return None


def match_scale(g: Graph, x: str, attrs: dict, mask: str | None, folded: list[str]) -> Scores | None:
    """The rest of `match_scores` from x: [mul or div by a one-element constant] of the matmul."""
    attrs = {"scale": 1.0, **attrs}
    for scores, value in scaled(g, x):
        if g.op(scores) == "matmul":
            attrs["scale"] = value
            if g.op(x) == "div":
                attrs["divide"] = True
            folded, x = [*folded, x], scores
            break
    if g.op(x) != "matmul" or g.use_count(x) != 1:
        return None
    return x, attrs, mask, [*folded, x]


def mask_term(g: Graph, term: str) -> tuple[str, float | None, list[str]]:
    """(mask operand, mask_value, nodes folded): `(1 - m) * c` folds to m and c; anything else is
    the term itself, added as it is."""
    if g.op(term) != "mul" or g.use_count(term) != 1:
        return term, None, []
    a, b = g.args(term)
    for one_minus, c in ((a, b), (b, a)):
        value = number(g, c, term)
        if value is None or g.op(one_minus) != "sub" or g.use_count(one_minus) != 1:
            continue
        one, m = g.args(one_minus)
        if number(g, one, one_minus) == 1.0 and g.shape(m) == g.shape(one_minus) == g.shape(term):
            return m, value, [term, one_minus]
    return term, None, []


def viewed(g: Graph, source: Source) -> str:
    node, newshape = source
    return node if newshape is None else g.add("reshape", [node], newshape=newshape)


def fuse_one(g: Graph, soft: str) -> bool:
    shape = g.shape(soft)
    if shape[:1] != (None,) or len(shape) not in (3, 4) or \
            normalized_axis(len(shape), g[soft].get("dim", -1)) != len(shape) - 1:
        return False
    out_mm = sole_user(g, soft, "matmul")
    matched = match_scores(g, soft)
    if out_mm is None or g.args(out_mm) != [soft, g.args(out_mm)[1]] or matched is None:
        return False
    scores_mm, attrs, mask, chain = matched
    if any(0 in concrete(g.shape(n)) for n in (soft, out_mm, *g.args(scores_mm), *g.args(out_mm))):
        return False  # an empty sequence or head: nothing to compute, and the view checks number elements
    heads, sq, sk = (shape[1] if len(shape) == 4 else 1), shape[-2], shape[-1]
    end = merged_output(g, out_mm)
    q_in, kt_in = g.args(scores_mm)
    reads = [source_of(g, q_in, heads, sq, (0, 2, 1, 3)), source_of(g, kt_in, heads, sk, (0, 2, 3, 1)),
             source_of(g, g.args(out_mm)[1], heads, sk, (0, 2, 1, 3))]
    if end is None or None in reads or soft == g.args(out_mm)[1]:
        return False
    made: dict[Operand, str] = {}  # q, k and v often read one value: view it once
    for read in reads:
        if read is not None and read not in made:
            source, c = read
            made[read] = viewed(g, source) if c is None else g.add("mul", [viewed(g, source), c])
    operands = [made[read] for read in reads if read is not None]
    if mask is not None:  # one head written without a head axis: the mask gets one
        operands.append(viewed(g, (mask, (-1, 1, *g.shape(mask)[1:]) if len(shape) == 3 and
                                   g.shape(mask)[:1] == (None,) else None)))
    fused = " + ".join(f"{g.op(n)} {n}" for n in [*reversed(chain), soft, out_mm])
    node = g.add("attention", operands, heads=heads, **attrs, layer=g[scores_mm].get("layer"))
    if g.shape(end) != g.shape(node):
        node = g.add("reshape", [node], newshape=(-1, *g.shape(end)[1:]))
    g.replace_uses(end, node)
    removed = remove_unused(g, [end])  # the fusion adds no transpose: those removed are the ones not copied
    g[g.args(node)[0] if g.op(node) == "reshape" else node]["explain"] = \
        f"fused {fused}; {removed.count('transpose')} transposes not copied"
    return True


def remove_unused(g: Graph, todo: list[str]) -> list[str]:
    """Remove the nodes of `todo` nobody reads, then their operands that became unused (inputs stay);
    return the ops of the nodes removed."""
    removed = []
    while todo:
        n = todo.pop()
        if n in g and not g.users(n) and g.op(n) not in ("input", "output"):
            args = g.args(n)
            removed.append(g.op(n))
            g.remove(n)
            todo += args
    return removed


def fuse_attention(g: Graph) -> bool:
    changed = False
    for soft in g.nodes("softmax"):
        if soft in g:
            changed |= fuse_one(g, soft)
    return changed
