"""Vectorized float32 math on `<W x float>` values: relu, exp, log, sqrt, abs, sigmoid, tanh, gelu.

Everything here is our own straight-line vector code (range reduction + polynomial), so it can run
on GEMM accumulators still in registers, for any width W >= 1 (16, 8, 4, and 1 for tails).
No fast-math flags: NaN/Inf follow the eager NumPy definitions (README, "Numerics and weights").

Special values (all equal to the NumPy float32 formulas):
  relu(x)    = np.maximum(x, 0): relu(nan) = nan, relu(-0) = +0 (NumPy returns the 0 operand).
  log(x)     : log(+-0) = -inf, log(x < 0) = nan (-inf included), log(inf) = inf, nan -> nan.
  sqrt(x)    : IEEE (llvm.sqrt): sqrt(-0) = -0, sqrt(x < 0) = nan.
  exp(x)     : exp(-inf) = 0, exp(+inf) = inf, exp(nan) = nan, x > 88.7228 -> inf, x < -103.98 -> 0
               (results in the subnormal range are produced with a single rounding).
  sigmoid(x) : the overflow-safe 1/(1+e^-x) for x >= 0, e^x/(1+e^x) for x < 0; sigmoid(+-inf) = 1/0,
               sigmoid(+-1e4) = 1/0 exactly, nan -> nan.
  tanh(x)    : +-1 for large |x| and +-inf, nan -> nan, tanh(+-0) = +-0, tanh(x) = x for subnormals.
  gelu(x)    = x * sigmoid(fl32(1.702 * x)), exactly the NumPy float32 formula; so gelu(-inf) =
               -inf * 0 = nan (as NumPy gives), gelu(+inf) = inf, gelu(-1e4) = -0.

Accuracy (`vector_ops.MAX_ULP`): max |got - ref| / ulp32(ref) over a dense sweep of float32 inputs, where ref
is the float64 evaluation of the same formula and ulp32(ref) the float32 spacing at |ref|
(2**-149 in the subnormal range). For gelu the reference keeps the float32 rounding of 1.702*x
(the formula does that in NumPy too). One exception, documented in `GELU_TAIL`: for x < -51 the
factor sigmoid(1.702x) is itself a subnormal float32, so any float32 evaluation of the formula loses
relative precision; there the bound is absolute, |err| <= GELU_TAIL_ABS.
"""

from __future__ import annotations

import math

from llvmlite import ir

from .cgutils import I32, declare_vector_intrinsic, splat, vector_constant

# Accuracy bounds per op: codegen/vector_ops.py (VECTOR_OPS, MAX_ULP).
GELU_TAIL = -51.0  # below this x, sigmoid(1.702x) is subnormal in float32
GELU_TAIL_ABS = 2.0**-142  # absolute error bound of gelu for x < GELU_TAIL (measured 9.2e-44)

# exp: clamping keeps n within [-159, 128] so 2**n splits into two normal powers of two, while the
# clamped results still round to 0 / overflow to inf exactly as exp of the original x does.
EXP_HI = 89.0
EXP_LO = -110.0
LOG2E = 1.4426950408889634
# 1.5 * 2**23: adding it rounds to an integer held in the low mantissa bits (no fptosi, whose
# result would be poison for NaN).
ROUND_MAGIC = 12582912.0
ROUND_MAGIC_BITS = 0x4B400000
# Cody-Waite split of ln 2: LN2_HI has few mantissa bits so n * LN2_HI is exact.
LN2_HI = 0.693359375
LN2_LO = -2.12194440e-4
# Cephes expf: exp(r) = 1 + r + r^2 * P(r) on |r| <= ln2/2, highest degree first.
EXP_POLY = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
            1.6666665459e-1, 5.0000001201e-1)

# Cephes tanhf: tanh(a) = a + a^3 * P(a^2) for a < 0.625, highest degree first.
TANH_SMALL = 0.625
TANH_POLY = (-5.70498872745e-3, 2.06390887954e-2, -5.37397155531e-2, 1.33314422036e-1,
             -3.33332819422e-1)

GELU_ALPHA = 1.702

# Cephes logf: log(1 + f) = f - f^2/2 + f^3 * P(f) on sqrt(1/2) - 1 <= f < sqrt(2) - 1, highest first.
LOG_POLY = (7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1, 1.4249322787e-1,
            -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1)
SQRT_HALF = 0.70710678118654752
MIN_NORMAL = 2.0**-126

assert math.isclose(LN2_HI + LN2_LO, math.log(2), rel_tol=1e-9)


def _width(x: ir.Value) -> int:
    return x.type.count


def _const(x: ir.Value, value: float) -> ir.Constant:
    return splat(value, _width(x))


def _call(builder: ir.IRBuilder, module: ir.Module, name: str, *args: ir.Value) -> ir.Value:
    fn = declare_vector_intrinsic(module, name, _width(args[0]), len(args))
    return builder.call(fn, list(args))


def fma(builder: ir.IRBuilder, module: ir.Module, a, b, c) -> ir.Value:
    """a * b + c with one rounding (`llvm.fma`, a single vfmadd on FMA hardware)."""
    return _call(builder, module, "fma", a, b, c)


def _polynomial(builder, module, x: ir.Value, coeffs: tuple[float, ...]) -> ir.Value:
    """Horner evaluation with FMAs; coefficients highest degree first."""
    acc = _const(x, coeffs[0])
    for c in coeffs[1:]:
        acc = fma(builder, module, acc, x, _const(x, c))
    return acc


def _clamp(builder: ir.IRBuilder, x: ir.Value, lo: float, hi: float) -> ir.Value:
    """min(max(x, lo), hi) that lets NaN through: ordered compares are false for NaN."""
    x = builder.select(builder.fcmp_ordered(">", x, _const(x, hi)), _const(x, hi), x)
    return builder.select(builder.fcmp_ordered("<", x, _const(x, lo)), _const(x, lo), x)


def _pow2(builder: ir.IRBuilder, n: ir.Value) -> ir.Value:
    """2.0**n for integer lanes n in the normal exponent range [-126, 127], built from bits."""
    vt = n.type
    biased = builder.add(n, vector_constant(vt, ir.Constant(I32, 127)))
    bits = builder.shl(biased, vector_constant(vt, ir.Constant(I32, 23)))
    return builder.bitcast(bits, ir.VectorType(ir.FloatType(), vt.count))


def emit_exp(builder: ir.IRBuilder, module: ir.Module, x: ir.Value) -> ir.Value:
    """exp(x) lane-wise: x = n ln2 + r, exp(r) by polynomial, scaled by 2**n in two steps."""
    ivt = ir.VectorType(I32, _width(x))
    xc = _clamp(builder, x, EXP_LO, EXP_HI)
    t = fma(builder, module, xc, _const(x, LOG2E), _const(x, ROUND_MAGIC))
    n = builder.fsub(t, _const(x, ROUND_MAGIC))
    r = fma(builder, module, n, _const(x, -LN2_HI), xc)
    r = fma(builder, module, n, _const(x, -LN2_LO), r)

    p = _polynomial(builder, module, r, EXP_POLY)
    r2 = builder.fmul(r, r)
    y = builder.fadd(fma(builder, module, p, r2, r), _const(x, 1.0))

    # Two half-scalings keep both factors normal, so overflow gives inf and deep underflow rounds
    # once into the subnormals (y * 2**n1 is exact; only the last multiply rounds).
    ni = builder.sub(builder.bitcast(t, ivt), vector_constant(ivt, ir.Constant(I32, ROUND_MAGIC_BITS)))
    n1 = builder.ashr(ni, vector_constant(ivt, ir.Constant(I32, 1)))
    n2 = builder.sub(ni, n1)
    return builder.fmul(builder.fmul(y, _pow2(builder, n1)), _pow2(builder, n2))


def emit_log(builder: ir.IRBuilder, module: ir.Module, x: ir.Value) -> ir.Value:
    """log(x) lane-wise: x = 2**e * m with m in [sqrt(1/2), sqrt(2)), log(m) = log(1 + f) by the
    Cephes polynomial (f = m - 1 is exact), plus e * ln 2 in the Cody-Waite split. Subnormal x are
    scaled by 2**23 first. log(+-0) = -inf, log(x < 0) = nan, log(inf) = inf, nan stays nan."""
    ivt = ir.VectorType(I32, _width(x))
    tiny = builder.fcmp_ordered("<", x, _const(x, MIN_NORMAL))
    xs = builder.select(tiny, builder.fmul(x, _const(x, 2.0**23)), x)
    bits = builder.bitcast(xs, ivt)
    # frexp: xs = m * 2**e with m in [0.5, 1)
    e = builder.sub(builder.lshr(bits, _ivec(ivt, 23)), _ivec(ivt, 126))
    e = builder.sub(e, builder.select(tiny, _ivec(ivt, 23), _ivec(ivt, 0)))
    m = builder.bitcast(builder.or_(builder.and_(bits, _ivec(ivt, 0x007FFFFF)), _ivec(ivt, 0x3F000000)),
                        x.type)
    low = builder.fcmp_ordered("<", m, _const(x, SQRT_HALF))
    e = builder.sub(e, builder.select(low, _ivec(ivt, 1), _ivec(ivt, 0)))
    f = builder.fsub(builder.select(low, builder.fadd(m, m), m), _const(x, 1.0))  # exact
    fe = builder.sitofp(e, x.type)
    z = builder.fmul(f, f)
    y = builder.fmul(builder.fmul(_polynomial(builder, module, f, LOG_POLY), f), z)
    y = fma(builder, module, fe, _const(x, LN2_LO), y)
    y = fma(builder, module, z, _const(x, -0.5), y)
    result = fma(builder, module, fe, _const(x, LN2_HI), builder.fadd(f, y))
    result = builder.select(builder.fcmp_ordered("==", x, _const(x, math.inf)), x, result)
    result = builder.select(builder.fcmp_ordered("<", x, _const(x, 0.0)), _const(x, math.nan), result)
    result = builder.select(builder.fcmp_ordered("==", x, _const(x, 0.0)), _const(x, -math.inf), result)
    return builder.select(builder.fcmp_unordered("uno", x, x), x, result)


def _ivec(vt: ir.VectorType, value: int) -> ir.Constant:
    return vector_constant(vt, ir.Constant(I32, value))


def emit_sqrt(builder: ir.IRBuilder, module: ir.Module, x: ir.Value) -> ir.Value:
    """IEEE square root (one correctly rounded vsqrtps): sqrt(-0) = -0, sqrt(x < 0) = nan."""
    return _call(builder, module, "sqrt", x)


def emit_abs(builder: ir.IRBuilder, module: ir.Module, x: ir.Value) -> ir.Value:
    return _call(builder, module, "fabs", x)


def emit_relu(builder: ir.IRBuilder, module: ir.Module, x: ir.Value) -> ir.Value:
    """np.maximum(x, 0) = x if (x > 0 or x is nan) else +0; one unordered compare and a select."""
    zero = _const(x, 0.0)
    return builder.select(builder.fcmp_unordered(">", x, zero), x, zero)


def emit_sigmoid(builder: ir.IRBuilder, module: ir.Module, x: ir.Value) -> ir.Value:
    """Overflow-safe sigmoid with one division: e = exp(-|x|) <= 1 never overflows."""
    e = emit_exp(builder, module, builder.fneg(_call(builder, module, "fabs", x)))
    denom = builder.fadd(_const(x, 1.0), e)
    numer = builder.select(builder.fcmp_ordered("<", x, _const(x, 0.0)), e, _const(x, 1.0))
    return builder.fdiv(numer, denom)


def emit_tanh(builder: ir.IRBuilder, module: ir.Module, x: ir.Value) -> ir.Value:
    """tanh on a = |x|, sign restored by copysign (which also gives tanh(-0) = -0).

    Small a: odd polynomial (accurate relative to a, down to subnormals). Larger a:
    (1 - e) / (1 + e) with e = exp(-2a) in (0, 0.29], which tends to exactly 1 and never overflows.
    Both branches run on every lane; NaN fails `a < 0.625` and propagates through exp.
    """
    a = _call(builder, module, "fabs", x)
    z = builder.fmul(a, a)
    q = builder.fmul(_polynomial(builder, module, z, TANH_POLY), z)
    small = fma(builder, module, q, a, a)

    e = emit_exp(builder, module, builder.fmul(a, _const(x, -2.0)))
    one = _const(x, 1.0)
    large = builder.fdiv(builder.fsub(one, e), builder.fadd(one, e))

    y = builder.select(builder.fcmp_ordered("<", a, _const(x, TANH_SMALL)), small, large)
    return _call(builder, module, "copysign", y, x)


def emit_gelu(builder: ir.IRBuilder, module: ir.Module, x: ir.Value) -> ir.Value:
    """x * sigmoid(1.702 x), the NumPy float32 formula step for step (so gelu(-inf) is nan)."""
    return builder.fmul(x, emit_sigmoid(builder, module, builder.fmul(x, _const(x, GELU_ALPHA))))
