"""cgutils: loops and branches with carried values, define_once, the masked load/store pair -- each
JIT-compiled and run, results compared with plain Python."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
from jit_util import c_function, f32_ptr, jit, new_module
from llvmlite import ir

from tinycomp.codegen.cgutils import (
    F32,
    I64,
    PTR,
    define_once,
    element_ptr,
    for_range,
    i64,
    if_then,
    lanes_below,
    masked_load,
    masked_store,
)

SENTINEL = np.float32(-7.0)


def scalar_function(module, name, args):
    fn = ir.Function(module, ir.FunctionType(I64, args), name)
    return fn, ir.IRBuilder(fn.append_basic_block("entry"))


def test_for_range_carries_values_and_returns_them_after_the_loop():
    """sum and sum of squares of range(start, stop, step) in two carried values; an empty range
    returns the initial values (the guard's path), a nonempty loop without a guard the same sums."""
    module = new_module()
    fn, b = scalar_function(module, "sums", [I64, I64, I64])
    start, stop, seed = fn.args
    with for_range(b, start, stop, step=3, carry=[seed, i64(0)]) as loop:
        total, squares = loop.carried
        loop.carry(b.add(total, loop.index), b.add(squares, b.mul(loop.index, loop.index)))
    total, squares = loop.results
    b.ret(b.add(b.mul(total, i64(1_000_000)), squares))
    fn2, b2 = scalar_function(module, "count", [I64])
    with for_range(b2, 0, fn2.args[0], carry=[i64(0)], nonempty=True) as loop2:
        loop2.carry(b2.add(loop2.carried[0], i64(1)))
    b2.ret(loop2.results[0])
    engine, addr = jit(module, "sums", "count")
    sums = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64)(addr["sums"])
    for start, stop, seed in [(0, 10, 0), (2, 3, 5), (5, 5, 7), (9, 2, 11), (-4, 20, 1)]:
        r = range(start, stop, 3)
        assert sums(start, stop, seed) == (seed + sum(r)) * 1_000_000 + sum(i * i for i in r)
    count = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_int64)(addr["count"])
    assert [count(n) for n in (1, 2, 17)] == [1, 2, 17]


def test_if_then_merges_the_values_of_the_branch_taken():
    module = new_module()
    fn, b = scalar_function(module, "pick", [I64, I64])
    x, y = fn.args
    with if_then(b, b.icmp_signed(">", x, y), carry=[x, y]) as branch:
        branch.carry(y, x)  # swapped when x > y
    low, high = branch.results
    b.ret(b.sub(b.mul(high, i64(1000)), low))
    engine, addr = jit(module, "pick")
    pick = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_int64, ctypes.c_int64)(addr["pick"])
    for x, y in [(3, 9), (9, 3), (4, 4), (-5, 2)]:
        assert pick(x, y) == max(x, y) * 1000 - min(x, y)


def test_a_loop_with_carried_values_must_carry_them():
    module = new_module()
    fn, b = scalar_function(module, "f", [I64])
    with pytest.raises(ValueError, match="carry"):
        with for_range(b, 0, fn.args[0], carry=[i64(0)]):
            pass
    with pytest.raises(ValueError, match="carries 1 values; got 2"):
        with for_range(b, 0, fn.args[0], carry=[i64(0)]) as loop:
            loop.carry(i64(1), i64(2))


def test_define_once_builds_each_global_once():
    module = new_module()
    built = []

    def build(name):
        built.append(name)
        return ir.Function(module, ir.FunctionType(ir.VoidType(), []), name)

    first = define_once(module, "k", build)
    assert define_once(module, "k", build) is first and built == ["k"]
    assert define_once(module, "other", build) is not first and built == ["k", "other"]


@pytest.mark.parametrize("valid", [0, 1, 5, 8])
def test_masked_pair_touches_only_the_masked_lanes(valid):
    """out[0:8] = x[0:8] + 1 on the lanes below `valid`: masked-off lanes neither read (they load
    the fill) nor write; no mask is a plain full-vector load and store."""
    module = new_module()
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [I64, PTR, PTR, PTR]), "k")
    _, out, x, full = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    mask = lanes_below(8, valid)
    v = masked_load(b, x, mask, fill=100.0)
    masked_store(b, b.fadd(v, ir.Constant(ir.VectorType(F32, 8), [1.0] * 8)), out, mask)
    masked_store(b, masked_load(b, x, None, width=8), element_ptr(b, full, 0), None)
    masked_store(b, v, element_ptr(b, full, 8), None)  # what the masked load gave, fill included
    b.ret_void()
    engine, addr = jit(module, "k")
    xs = np.arange(8, dtype=np.float32)
    got = np.full(8, SENTINEL, np.float32)
    seen = np.zeros(16, np.float32)
    c_function(addr["k"], 3)(0, f32_ptr(got), f32_ptr(xs), f32_ptr(seen))
    np.testing.assert_array_equal(got[:valid], xs[:valid] + 1)
    assert (got[valid:] == SENTINEL).all()
    np.testing.assert_array_equal(seen[:8], xs)
    np.testing.assert_array_equal(seen[8:], np.where(np.arange(8) < valid, xs, 100.0))
