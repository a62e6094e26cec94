"""The vector emitter of every elementwise op of the registry (`ir/ops.py`), with its accuracy bound.

`emit(builder, *operands)` computes the op lane-wise on `<W x float>` values, for any width W (the
elementwise loops, the GEMM epilogue's activations, W = 1 for tails). An operand position listed in
`constants` arrives as a Python float instead of a vector: pow's exponent picks its kernel
(`vecpow.py`), so pow is compiled for a constant exponent only.

`max_ulp` is the tested bound (tests/codegen/test_vecmath.py, test_vecpow.py, on dense sweeps)
of |got - ref| / ulp32(ref) against a float64 evaluation of the op's NumPy formula: 0 for exact
ops, 0.5 for correctly rounded ones (IEEE add, sub, mul, div, sqrt). exp, sigmoid, tanh and gelu
are bounded by 2 ulp wherever the result is a normal float32 (issue 16), and checked over every
float32 input by benchmarks/vecmath_ulp.py: worst cases exp 0.91, sigmoid 1.50, tanh 1.51, gelu
1.70 ulp in the polynomial form, sigmoid 1.50, tanh 1.50, gelu 1.49 in the AVX-512 forms (exp's
table; sigmoid's and gelu's quotient from vrcp14ps). gelu was 1.82 / 1.68 before its lifted
branch (`vecmath._unless_tiny`) kept the quotient below x = -24.7 from rounding into the
subnormals. Subnormal results within 1.25 x 2**-149. log: measured 0.81 (3M points: random bits
and [0.5, 2]), bound 1.0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from llvmlite import ir

from . import vecerf, vecmath, vecpow


@dataclass(frozen=True)
class VectorOp:
    emit: Callable[..., ir.Value]  # emit(builder, *operands) -> the result vector
    max_ulp: float
    constants: dict[int, str] | None = None  # operand position -> what it is: must be a constant number


def _unary(fn: Callable[[ir.IRBuilder, ir.Module, ir.Value], ir.Value]) -> Callable[[ir.IRBuilder, ir.Value], ir.Value]:
    return lambda b, x: fn(b, b.module, x)


VECTOR_OPS: dict[str, VectorOp] = {
    "add": VectorOp(lambda b, x, y: b.fadd(x, y), 0.5),
    "sub": VectorOp(lambda b, x, y: b.fsub(x, y), 0.5),
    "mul": VectorOp(lambda b, x, y: b.fmul(x, y), 0.5),
    "div": VectorOp(lambda b, x, y: b.fdiv(x, y), 0.5),
    "pow": VectorOp(lambda b, x, c: vecpow.emit_pow(b, b.module, x, c), vecpow.MAX_ULP, {1: "the exponent"}),
    "maximum": VectorOp(lambda b, x, y: vecmath.emit_extremum(b, x, y, larger=True), 0.0),
    "minimum": VectorOp(lambda b, x, y: vecmath.emit_extremum(b, x, y, larger=False), 0.0),
    "where": VectorOp(vecmath.emit_where, 0.0),
    **{name: VectorOp(lambda b, x, y, name=name: vecmath.emit_comparison(b, name, x, y), 0.0)
       for name in vecmath.PREDICATES},
    "neg": VectorOp(lambda b, x: b.fneg(x), 0.0),
    "exp": VectorOp(_unary(vecmath.emit_exp), 2.0),
    "log": VectorOp(_unary(vecmath.emit_log), 1.0),
    "sqrt": VectorOp(_unary(vecmath.emit_sqrt), 0.5),
    "abs": VectorOp(_unary(vecmath.emit_abs), 0.0),
    "relu": VectorOp(_unary(vecmath.emit_relu), 0.0),
    "sigmoid": VectorOp(_unary(vecmath.emit_sigmoid), 2.0),
    "tanh": VectorOp(_unary(vecmath.emit_tanh), 2.0),
    "gelu": VectorOp(_unary(vecmath.emit_gelu), 2.0),
    "gelu_erf": VectorOp(_unary(vecerf.emit_gelu_erf), vecerf.GELU_ERF_MAX_ULP),
}
MAX_ULP = {name: op.max_ulp for name, op in VECTOR_OPS.items()}


def vector_op(name: str) -> VectorOp:
    try:
        return VECTOR_OPS[name]
    except KeyError:
        raise NotImplementedError(f"elementwise codegen has no rule for op {name!r}; vector ops: "
                                  f"{sorted(VECTOR_OPS)}") from None


def emit_op(builder: ir.IRBuilder, name: str, *operands: ir.Value | float) -> ir.Value:
    """Op `name` on `operands` (vectors, or Python floats at its `constants` positions)."""
    return vector_op(name).emit(builder, *operands)
