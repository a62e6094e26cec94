"""The product of two small matrices, for batched matmul: every output in registers, no GEMM driver.

A batched matmul runs one matrix product per sample and leading index (`lower_tensor.lower_matmul`).
Through the layer GEMM (`gemm.emit_linear`: its driver, plan, packing and epilogue decisions) each
product of small matrices cost ~90 ns of calls and branches around ~10 ns of arithmetic: 4,096
products of 4 x 8 by 8 x 4 took 382 us, NumPy's matmul 154, now 66 (`benchmarks/batched_matmul.py`).
Here such a product is one function of its three pointers, sized at compile time: rows of A in
tiles of a few, each row's J outputs in ceil(J / width) vectors, summed over k in order from +0 by
one fused multiply-add per k, the order of the GEMM's tile kernels (`gemm_kernels`), so the bits
are the ones the GEMM gave.
"""

from __future__ import annotations

from llvmlite import ir

from .cgutils import (
    F32,
    PTR,
    declare_vector_intrinsic,
    define_once,
    element_ptr,
    for_range,
    i64,
    lanes_below,
    masked_load,
    masked_store,
    splat_value,
    vector_type,
    zeros,
)
from .gemm import plan_narrow
from .gemm_kernels import LONG_SUM_K

# The largest products taken here: K and J up to this many vectors of the target (64 x 64 on AVX-512).
# Beyond, the GEMM's blocking and packing pay for its calls.
SMALL_MAX_VECTORS = 4


def is_small(K: int, J: int, width: int, registers: int | None = None) -> bool:
    """Whether I x K by K x J products take `small_matmul`: K and J at most SMALL_MAX_VECTORS
    vectors, and not a narrow layer's shape (J < width, a long K), which the GEMM sums as dot
    products in a pairwise tree, more accurately under cancellation than one sum in a lane."""
    return 1 <= K <= min(SMALL_MAX_VECTORS * width, LONG_SUM_K) and 1 <= J <= SMALL_MAX_VECTORS * width and \
        plan_narrow(K, J, width, registers) is None


def small_matmul(module: ir.Module, I: int, K: int, J: int, width: int, registers: int) -> ir.Function:
    """`void mm(ptr a, ptr b, ptr c)`: C = A @ B for row-major I x K, K x J and I x J matrices
    (rows K, J and J floats apart). Nothing is read or written outside them."""
    return define_once(module, f"tinycomp.smallmm.{I}x{K}x{J}.v{width}",
                       lambda name: _emit(module, name, I, K, J, width, registers))


def _emit(module: ir.Module, name: str, I: int, K: int, J: int, width: int, registers: int) -> ir.Function:
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [PTR] * 3), name)
    fn.linkage = "internal"
    fn.attributes.add("nounwind")
    a, b, c = fn.args
    for arg, nm in zip(fn.args, "abc", strict=True):
        arg.name = nm
        arg.add_attribute("noalias")
    builder = ir.IRBuilder(fn.append_basic_block("entry"))
    nv = -(-J // width)
    masks = [None if (v + 1) * width <= J else lanes_below(width, J - v * width) for v in range(nv)]
    # accumulators for `rows` rows, the row's B vectors and a broadcast A value in the registers
    rows = max(1, min(I, (registers - nv - 2) // nv, 8))
    tile = _TileEmitter(builder, (a, b, c), K, J, width, masks)
    if I >= rows:
        with for_range(builder, 0, I // rows, name="t") as tiles:
            tile.emit(builder.mul(tiles.index, i64(rows)), rows)
    if I % rows:
        tile.emit(i64(I - I % rows), I % rows)
    builder.ret_void()
    return fn


class _TileEmitter:
    """Emits the rows r0..r0+rows of C: their sums over k in one loop, then the stores."""

    def __init__(self, builder: ir.IRBuilder, pointers, K: int, J: int, width: int, masks: list):
        self.b, (self.a, self.bmat, self.c) = builder, pointers
        self.K, self.J, self.width, self.masks = K, J, width, masks
        self.fma = declare_vector_intrinsic(builder.module, "fma", width, 3)

    def emit(self, r0: ir.Value, rows: int) -> None:
        b, K, J, nv = self.b, self.K, self.J, len(self.masks)
        vt = vector_type(self.width)
        a_rows = [element_ptr(b, self.a, b.mul(b.add(r0, i64(r)), i64(K))) for r in range(rows)]
        start = [self.bmat, *[zeros(vt)] * (rows * nv)]
        with for_range(b, 0, K, name="k", carry=start, nonempty=True) as loop:
            b_row, *acc = loop.carried
            b_vec = [masked_load(b, element_ptr(b, b_row, v * self.width), m, width=self.width)
                     for v, m in enumerate(self.masks)]
            new = []
            for r in range(rows):
                a_k = splat_value(b, b.load(element_ptr(b, a_rows[r], loop.index), typ=F32), vt)
                new += [b.call(self.fma, [a_k, b_vec[v], acc[r * nv + v]]) for v in range(nv)]
            loop.carry(element_ptr(b, b_row, J), *new)
        acc = loop.results[1:]
        for r in range(rows):
            c_row = element_ptr(b, self.c, b.mul(b.add(r0, i64(r)), i64(J)))
            for v, m in enumerate(self.masks):
                masked_store(b, acc[r * nv + v], element_ptr(b, c_row, v * self.width), m)
