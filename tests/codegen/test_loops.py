"""loops.blocked_fold, the sum behind the reductions, layer norm and softmax: every term is taken
exactly once whatever the count (the tree's partial subtrees and the short last leaf), and the
rounding error grows with log(count), as NumPy's pairwise sum's does, not with count. And
loops.accumulate_row with UNROLL sets of accumulators takes every chunk of a row once."""

from __future__ import annotations

import ctypes
import math

import numpy as np
import pytest
from llvmlite import ir

from tests.codegen.jit_util import jit, new_module
from tinycomp.codegen.cgutils import F32, PTR, element_ptr, splat
from tinycomp.codegen.loops import FAN, LEAF, UNROLL, accumulate_row, blocked_fold, load_chunk, store_chunk

# Around every edge of the tree: the leaf's unrolled rounds, one leaf, a leaf and a rest, full and
# partial subtrees at one, two and three levels, and a count with a partial subtree at every level.
COUNTS = [0, 1, 3, 4, 5, 31, 32, 33, 63, 64, 65, 127, 129, 32 * 4, 32 * 4 + 1, 32 * 16 - 1, 32 * 16 + 33,
          32 * 64 * 3 + 32 * 16 * 2 + 32 * 5 + 7, 100_003]


def fold_kernel(count: int):
    """`float sum(ptr x, ptr visits)`: blocked_fold of x[0..count) by fadd; each term also adds 1 to
    visits[i], so a term taken twice or never shows there."""
    module = new_module()
    fn = ir.Function(module, ir.FunctionType(F32, [PTR, PTR]), "fold_sum")
    x, visits = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))

    def term(i: ir.Value) -> ir.Value:
        seen = element_ptr(b, visits, i)
        b.store(b.fadd(b.load(seen, typ=F32), ir.Constant(F32, 1.0)), seen)
        return b.load(element_ptr(b, x, i), typ=F32)

    b.ret(blocked_fold(b, count, ir.Constant(F32, -0.0), term, b.fadd))
    engine, addresses = jit(module, "fold_sum")
    call = ctypes.CFUNCTYPE(ctypes.c_float, ctypes.c_void_p, ctypes.c_void_p)(addresses["fold_sum"])

    def run(values: np.ndarray) -> tuple[float, np.ndarray]:
        assert values.dtype == np.float32 and values.size == count
        seen = np.zeros(max(count, 1), np.float32)
        return call(values.ctypes.data, seen.ctypes.data), seen[:count]

    run.engine = engine  # keep the code alive with the callable
    return run


@pytest.mark.parametrize("count", COUNTS)
def test_every_term_is_taken_once(count):
    values = np.random.default_rng(count).integers(-50, 50, count).astype(np.float32)
    total, seen = fold_kernel(count)(values)
    np.testing.assert_array_equal(seen, np.ones(count, np.float32))
    assert total == float(values.astype(np.int64).sum())  # small integers: every order is exact


@pytest.mark.parametrize("count", [1000, 32 * 4 ** 4 + 3, 1_000_003])
def test_rounding_error_grows_with_log_count(count):
    """count copies of float32(0.1): every addition rounds the same way, the worst case for a running
    sum, whose error would be ~count / 4 ulps here. The tree's is bounded by its depth: a leaf's
    LEAF / UNROLL + log2(UNROLL) additions, FAN per level above it, one for the short last leaf."""
    values = np.full(count, 0.1, np.float32)
    total, _ = fold_kernel(count)(values)
    exact = count * float(np.float32(0.1))
    levels = math.ceil(math.log(max(count / LEAF, 1), FAN))
    depth = LEAF // UNROLL + math.log2(UNROLL) + FAN * levels + 1
    assert abs(total - exact) / exact <= depth * 2.0 ** -24, (total, exact, depth)
    running = np.float32(0)
    if count <= 1000:  # the test can fail: one running sum misses the bound
        for v in values:
            running = np.float32(running + v)
        assert abs(float(running) - exact) / exact > depth * 2.0 ** -24


@pytest.mark.parametrize("width", [16, 4])
@pytest.mark.parametrize("row_size", [1, 15, 16, 17, 48, 64, 65, 100, 257, 16 * 4 * 5 + 16 * 3 + 7])
def test_accumulate_row_in_several_sets_takes_every_chunk_once(row_size, width):
    """`accumulate_row` with a merge (UNROLL sets, leftover full vectors one into each, the tail into
    the first): a kernel summing small integers and counting each element's visits."""
    module = new_module()
    fn = ir.Function(module, ir.FunctionType(F32, [PTR, PTR]), "row_sum")
    x, visits = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))

    def step(c, acc):
        seen = element_ptr(b, visits, c.col)
        store_chunk(b, b.fadd(load_chunk(b, seen, c), splat(1.0, width)), seen, c)
        return [b.fadd(acc, load_chunk(b, element_ptr(b, x, c.col), c))]

    [total] = accumulate_row(b, row_size, width, [splat(0.0, width)], step, lambda u, v: [b.fadd(u[0], v[0])])
    lanes = [b.extract_element(total, ir.Constant(ir.IntType(32), i)) for i in range(width)]
    for lane in lanes[1:]:
        lanes[0] = b.fadd(lanes[0], lane)
    b.ret(lanes[0])
    engine, addresses = jit(module, "row_sum")
    values = np.random.default_rng(row_size).integers(-50, 50, row_size).astype(np.float32)
    seen = np.zeros(row_size, np.float32)
    got = ctypes.CFUNCTYPE(ctypes.c_float, ctypes.c_void_p, ctypes.c_void_p)(addresses["row_sum"])(
        values.ctypes.data, seen.ctypes.data)
    del engine
    np.testing.assert_array_equal(seen, np.ones(row_size, np.float32))
    assert got == float(values.astype(np.int64).sum())
