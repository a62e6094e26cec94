"""Strided kernels whose operands cross the output's rows run in square tiles turned in registers
(`codegen/transpose_tiles.py`): the register transpose itself, then whole kernels at every vector
width against NumPy, bit for bit (the ops used round the same in both), with both ends of both
tiled dimensions partial, operands read along the rows or broadcast beside the transposed one,
and a layout the tiles do not take."""

from __future__ import annotations

import math

import numpy as np
import pytest
from llvmlite import ir

from tests.codegen.jit_util import c_function, f32_ptr, jit, new_module
from tinycomp.codegen.cgutils import PTR, vector_type
from tinycomp.codegen.strided import Strides, contiguous_strides, emit_strided
from tinycomp.codegen.transpose_tiles import tile_dim, tile_side, transpose_square

WIDTHS = [4, 8, 16]


@pytest.mark.parametrize("n", [2, 4, 8, 16])
def test_transpose_square_turns_the_matrix(n):
    module = new_module()
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [ir.IntType(64), PTR, PTR]), "turn")
    _, out, x = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    vt = vector_type(n)
    rows = [b.load(b.gep(x, [ir.Constant(ir.IntType(64), i * n)], source_etype=ir.FloatType()), typ=vt, align=4)
            for i in range(n)]
    for i, row in enumerate(transpose_square(b, rows)):
        b.store(row, b.gep(out, [ir.Constant(ir.IntType(64), i * n)], source_etype=ir.FloatType()), align=4)
    b.ret_void()
    engine, addresses = jit(module, "turn")
    a = np.arange(n * n, dtype=np.float32).reshape(n, n)
    got = np.empty_like(a)
    c_function(addresses["turn"], 2)(0, f32_ptr(got), f32_ptr(a))
    np.testing.assert_array_equal(got, a.T)


def run_kernel(expr: tuple, dims: tuple[int, ...], operands: list[tuple[np.ndarray, Strides]], samples: int,
               width: int) -> tuple[np.ndarray, str]:
    module = new_module()
    emit_strided(module, "k", expr, dims, [s for _, s in operands], width)
    engine, addresses = jit(module, "k")
    out = np.full((samples, *dims), np.nan, np.float32)
    c_function(addresses["k"], 1 + len(operands))(samples, f32_ptr(out), *(f32_ptr(a) for a, _ in operands))
    return out, str(module)


def transposed(shape: tuple[int, ...], axes: tuple[int, int], samples: int, seed: int) -> tuple[np.ndarray, Strides]:
    """A batch of arrays of sample `shape` and the strides that read each sample with `axes` swapped."""
    a = np.random.default_rng(seed).standard_normal((samples, *shape)).astype(np.float32)
    own = list(contiguous_strides(shape))
    own[axes[0]], own[axes[1]] = own[axes[1]], own[axes[0]]
    return a, Strides(math.prod(shape), tuple(own))


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("rows,cols", [(16, 16), (17, 33), (5, 3), (40, 64), (3, 50), (64, 2)])
def test_a_transposed_operand_with_row_and_broadcast_operands(width, rows, cols):
    """out = x^T + y * t: x read across the rows (tiles), y along them, t one value per row."""
    samples = 3
    x, xs = transposed((cols, rows), (0, 1), samples, seed=rows)
    y = np.random.default_rng(cols).standard_normal((samples, rows, cols)).astype(np.float32)
    t = np.random.default_rng(7).standard_normal((rows, 1)).astype(np.float32)  # shared by every sample
    operands = [(x, xs), (y, Strides(rows * cols, (cols, 1))), (t, Strides(0, (1, 0)))]
    expr = ("add", ("in", 0), ("mul", ("in", 1), ("in", 2)))
    got, llvm_ir = run_kernel(expr, (rows, cols), operands, samples, width)
    assert tile_dim((rows, cols), [s for _, s in operands], width) == 0 and "shufflevector" in llvm_ir
    np.testing.assert_array_equal(got, np.swapaxes(x, 1, 2) + y * t)


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("shape", [(18, 3, 5), (4, 7, 33), (16, 2, 16)])
def test_a_transpose_of_dimensions_apart(width, shape):
    """The first and last sample dimensions swapped: the tiles span dimension 0 and the last, with
    the middle one looped between them."""
    x, xs = transposed(shape, (0, 2), 2, seed=len(shape))
    out_dims = (shape[2], shape[1], shape[0])
    got, _ = run_kernel(("neg", ("in", 0)), out_dims, [(x, xs)], 2, width)
    assert tile_dim(out_dims, [xs], width) == 0
    np.testing.assert_array_equal(got, -np.swapaxes(x, 1, 3))


@pytest.mark.parametrize("dims,width,side", [((64, 8), 16, 8), ((64, 3), 16, 4), ((5, 64), 16, 8), ((64, 64), 16, 16),
                                             ((64, 8), 4, 4), ((2, 9, 40), 8, 2), ((40, 9, 17), 16, 16)])
def test_tiles_shrink_to_a_short_tiled_dimension(dims, width, side):
    """A tiled dimension shorter than a vector takes the least power-of-two side that holds it, so
    (64, 8) runs 8 x 8 tiles instead of 16 x 16 ones half empty (the kernels above run them)."""
    assert tile_side(dims, 0, width) == side


def test_operands_crossing_along_different_dimensions_take_the_element_loop():
    """x^T(0, 2) + z^T(1, 2) on (A, B, C): no dimension is contiguous for both, so no tiles."""
    A, B, C = 5, 6, 7
    x, xs = transposed((C, B, A), (0, 2), 2, seed=1)
    z, zs = transposed((A, C, B), (1, 2), 2, seed=2)
    assert tile_dim((A, B, C), [xs, zs], 16) is None
    got, llvm_ir = run_kernel(("add", ("in", 0), ("in", 1)), (A, B, C), [(x, xs), (z, zs)], 2, 16)
    assert "shufflevector" not in llvm_ir
    np.testing.assert_array_equal(got, np.swapaxes(x, 1, 3) + np.swapaxes(z, 2, 3))
