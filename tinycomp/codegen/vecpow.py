"""`x ** c` for a float32 vector x and a compile-time number c, as NumPy's float32 `power` computes it
(`ir/ops.power`: C99 `pow`, except that c = 0.5 is `sqrt`).

The work is done in float64 lanes and rounded to float32 once at the end, so the result is the
correctly rounded float32 of the float64 value in all but double-rounding ties (`MAX_ULP`):
- an integer c by repeated squaring (at most 2 log2 |c| products, each off by at most 2**-53
  relative), then one reciprocal for c < 0; zeros, infinities and NaN come out of the float64
  arithmetic exactly as C99 `pow` has them;
- c = k + 1/2 with |c| < HALF_INTEGER_MAX (x ** 1.5, x ** -0.5, ...) as |x| ** k * sqrt|x| (its
  reciprocal for c < 0), the same few roundings, at about a third of the cost of exp and log;
  C99's special cases for x < 0 and x = -inf selected explicitly;
- any other finite c as exp(c * log|x|) with our own float64 log and exp (series accurate to about
  1e-16 relative, on AVX-512 shorter ones from tables: `log_f64_table`; the float64 argument of exp
  keeps the relative error of the result near |c * log x| * 1e-16, far below a float32 ulp), with
  C99's special cases selected explicitly;
- c = +-inf or nan: C99's table, by compares.
No libm calls: the object code stays self-contained (cached objects, cross targets).
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir

from . import vecpow32
from .cgutils import I64, define_once, if_then, vector_constant
from .target import for_triple
from .vecmath import _call, _clamp, _const, _per_zmm, _polynomial, any_lane, avx512_forms_enabled, fma

F64 = ir.DoubleType()
MAX_ULP = 0.5 + 2.0**-20  # measured 0.5000 over the sweeps of tests/codegen/test_vecmath.py
LN2 = math.log(2)
LN2_HI = 0.6931471803691238  # 32 bits of mantissa: n * LN2_HI is exact for |n| < 2**21
LN2_LO = LN2 - LN2_HI
SQRT2 = math.sqrt(2)
ROUND_MAGIC = 6755399441055744.0  # 1.5 * 2**52: adding it rounds a double to an integer in its low bits
# log(m) = 2 atanh(s), s = (m - 1)/(m + 1), |s| <= 0.1716: 2 s (1 + s^2/3 + s^4/5 + ...), highest first
ATANH_SERIES = tuple(1.0 / (2 * k + 1) for k in range(11, -1, -1))
EXP_SERIES = tuple(1.0 / math.factorial(k) for k in range(14, -1, -1))  # exp(r), |r| <= ln2/2
HALF_INTEGER_MAX = 64  # beyond it the general path: x ** k by squaring takes up to 2 log2 k products
EXP_ARG_LO, EXP_ARG_HI = -200.0, 200.0  # beyond float32's range either way; keeps 2**n a normal double


def _ivec(like: ir.Value, value: int) -> ir.Constant:
    return vector_constant(ir.VectorType(I64, like.type.count), ir.Constant(I64, value))


def log_f64(builder: ir.IRBuilder, a: ir.Value) -> ir.Value:
    """log(a) for positive, finite, normal float64 lanes (the caller selects 0, inf and nan away)."""
    ivt = ir.VectorType(I64, a.type.count)
    bits = builder.bitcast(a, ivt)
    e = builder.sub(builder.lshr(bits, _ivec(a, 52)), _ivec(a, 1023))
    mant = builder.or_(builder.and_(bits, _ivec(a, (1 << 52) - 1)), _ivec(a, 1023 << 52))
    m = builder.bitcast(mant, a.type)  # in [1, 2)
    high = builder.fcmp_ordered(">", m, _const(a, SQRT2))
    m = builder.select(high, builder.fmul(m, _const(a, 0.5)), m)
    e = builder.add(e, builder.select(high, _ivec(a, 1), _ivec(a, 0)))
    s = builder.fdiv(builder.fsub(m, _const(a, 1.0)), builder.fadd(m, _const(a, 1.0)))
    series = _polynomial(builder, builder.module, builder.fmul(s, s), ATANH_SERIES)
    log_m = builder.fmul(builder.fmul(s, _const(a, 2.0)), series)
    fe = builder.sitofp(e, a.type)
    return builder.fadd(fma(builder, builder.module, fe, _const(a, LN2_HI), log_m), builder.fmul(fe, _const(a, LN2_LO)))


def exp_f64(builder: ir.IRBuilder, y: ir.Value) -> ir.Value:
    """exp(y) for float64 lanes, y clamped to [-200, 200] (NaN passes through the clamp)."""
    y = _clamp(builder, y, EXP_ARG_LO, EXP_ARG_HI)
    t = fma(builder, builder.module, y, _const(y, 1 / LN2), _const(y, ROUND_MAGIC))
    n = builder.fsub(t, _const(y, ROUND_MAGIC))
    r = fma(builder, builder.module, n, _const(y, -LN2_HI), y)
    r = fma(builder, builder.module, n, _const(y, -LN2_LO), r)
    p = _polynomial(builder, builder.module, r, EXP_SERIES)
    ivt = ir.VectorType(I64, y.type.count)
    ni = builder.sub(builder.bitcast(t, ivt), builder.bitcast(_const(y, ROUND_MAGIC), ivt))
    scale = builder.bitcast(builder.shl(builder.add(ni, _ivec(y, 1023)), _ivec(y, 52)), y.type)
    return builder.fmul(p, scale)


# With AVX-512 (`vecmath.AVX512_FORMS`), log and exp in float64 lanes take 16-entry tables held in
# two registers (vpermi2pd), which shorten their series and drop log's divide: x ** 3.7 took 0.55 x
# the time (benchmarks/tensor_ops.py "pow 3.7"), its float64 value as accurate (benchmarks/pow_accuracy.py).
# log: |x| = 2**e m1, m1 in [1, 2) (vgetmantpd, vgetexppd); m = m1, or m1 / 2 (k = e + 1) from
# m1 >= FOLD_FROM on; j = round(16 m1) mod 16 picks a centre c_j of m (1 for j = 0, which serves m
# just below and above 1, so log(1) = 0 exactly and x near 1 loses nothing to cancellation), and
# LOG_TABLE_INV[j], 1 / c_j rounded to 12 bits, makes r = m LOG_TABLE_INV[j] - 1 exact (m has
# float32's 24 bits): log|x| = k ln2 + LOG_TABLE_CENTRE[j] + log1p(r), |r| <= 2**-5, the centre's
# log -log(LOG_TABLE_INV[j]) in float64. log1p(r) = r + r^2 P(r), P the Taylor series to r^10:
# its truncation is below 2**-53 of r.
FOLD_FROM = 1.46875  # 23.5 / 16: where round(16 m1) reaches 24, the first folded centre


def _to_bits(value: float, bits: int) -> float:
    """`value` rounded to `bits` significant bits."""
    mantissa, exponent = math.frexp(value)
    return math.ldexp(round(mantissa * 2**bits), exponent - bits)


LOG_TABLE_INV = tuple(_to_bits(1 / (1 + j / 16 if j < 8 else 0.5 + j / 32), 12) for j in range(16))
LOG_TABLE_CENTRE = tuple(0.0 - math.log(inv) for inv in LOG_TABLE_INV)  # +0 at j = 0
LOG1P_SERIES = tuple((-1.0) ** (k + 1) / k for k in range(10, 1, -1))  # P(r), highest first
# exp(y) = 2**(n / 16) exp(r), n = round(16 y / ln2), |r| <= ln2 / 32: 2**floor(n / 16) (vscalefpd)
# times EXP_TABLE_POW2[n mod 16] times the Taylor series of exp(r) to r^6 (truncation below 2**-50).
EXP_TABLE_POW2 = tuple(2.0 ** (j / 16) for j in range(16))
EXP_TABLE_SERIES = tuple(1.0 / math.factorial(k) for k in range(6, -1, -1))
D8 = 8  # float64 lanes of a zmm register


def _zmm_f64(module: ir.Module, name: str, *params: ir.Type) -> ir.Function:
    """The AVX-512 intrinsic `llvm.x86.avx512.<name>` returning a zmm of doubles."""
    zmm = ir.VectorType(F64, D8)
    return define_once(module, f"llvm.x86.avx512.{name}", lambda full: ir.Function(
        module, ir.FunctionType(zmm, list(params)), full))


def _table_f64(builder: ir.IRBuilder, table: tuple[float, ...], index: ir.Value) -> ir.Value:
    """table[index & 15] lane-wise (vpermi2pd reads the low 4 bits of each i64 index)."""
    zmm = ir.VectorType(F64, D8)
    permute = _zmm_f64(builder.module, "vpermi2var.pd.512", zmm, ir.VectorType(I64, D8), zmm)
    low, high = (vector_constant(zmm, [ir.Constant(F64, v) for v in table[h:h + D8]]) for h in (0, D8))
    return _per_zmm(builder, lambda piece: builder.call(permute, [low, piece, high]), index, lanes=D8)


def _mant_exp(builder: ir.IRBuilder, a: ir.Value) -> tuple[ir.Value, ir.Value]:
    """(m1, e) with a = 2**e m1, m1 in [1, 2), e a float64 integer, for positive normal lanes."""
    zmm = ir.VectorType(F64, D8)
    i8, i32 = ir.IntType(8), ir.IntType(32)
    getmant = _zmm_f64(builder.module, "mask.getmant.pd.512", zmm, i32, zmm, i8, i32)
    getexp = _zmm_f64(builder.module, "mask.getexp.pd.512", zmm, zmm, i8, i32)
    every, current = ir.Constant(i8, -1), ir.Constant(i32, 4)
    m1 = _per_zmm(builder, lambda p: builder.call(getmant, [p, ir.Constant(i32, 0), p, every, current]), a, lanes=D8)
    e = _per_zmm(builder, lambda p: builder.call(getexp, [p, p, every, current]), a, lanes=D8)
    return m1, e


def log_f64_table(builder: ir.IRBuilder, a: ir.Value) -> ir.Value:
    """`log_f64` with the AVX-512 tables (above): no divide, a series of 9 terms instead of 12."""
    module = builder.module
    m1, e = _mant_exp(builder, a)
    fold = builder.fcmp_ordered(">=", m1, _const(a, FOLD_FROM))
    m = builder.select(fold, builder.fmul(m1, _const(a, 0.5)), m1)
    k = builder.fadd(e, builder.select(fold, _const(a, 1.0), _const(a, 0.0)))
    index = builder.bitcast(fma(builder, module, m1, _const(a, 16.0), _const(a, ROUND_MAGIC)),
                            ir.VectorType(I64, a.type.count))  # round(16 m1) in the low bits
    r = fma(builder, module, m, _table_f64(builder, LOG_TABLE_INV, index), _const(a, -1.0))  # exact
    log1p = fma(builder, module, builder.fmul(r, r), _polynomial(builder, module, r, LOG1P_SERIES), r)
    base = fma(builder, module, k, _const(a, LN2_HI), _table_f64(builder, LOG_TABLE_CENTRE, index))
    return builder.fadd(base, fma(builder, module, k, _const(a, LN2_LO), log1p))


def exp_f64_table(builder: ir.IRBuilder, y: ir.Value) -> ir.Value:
    """`exp_f64` with the AVX-512 table (above): a series of 7 terms instead of 15, one vscalefpd."""
    module = builder.module
    y = _clamp(builder, y, EXP_ARG_LO, EXP_ARG_HI)
    t = fma(builder, module, y, _const(y, 16 / LN2), _const(y, ROUND_MAGIC))
    n = builder.fsub(t, _const(y, ROUND_MAGIC))
    r = fma(builder, module, n, _const(y, -LN2_HI / 16), y)
    r = fma(builder, module, n, _const(y, -LN2_LO / 16), r)
    index = builder.bitcast(t, ir.VectorType(I64, y.type.count))  # n's low bits
    value = builder.fmul(_polynomial(builder, module, r, EXP_TABLE_SERIES), _table_f64(builder, EXP_TABLE_POW2, index))
    zmm = ir.VectorType(F64, D8)
    scalef = _zmm_f64(module, "mask.scalef.pd.512", zmm, zmm, zmm, ir.IntType(8), ir.IntType(32))
    every, current = ir.Constant(ir.IntType(8), -1), ir.Constant(ir.IntType(32), 4)
    return _per_zmm(builder, lambda v, s: builder.call(scalef, [v, s, v, every, current]), value,
                    builder.fmul(n, _const(y, 1 / 16)), lanes=D8)  # times 2**floor(n / 16)


def _integer_power(builder: ir.IRBuilder, d: ir.Value, exponent: int) -> ir.Value:
    """d ** exponent in float64 by repeated squaring; 1 / d**|exponent| for a negative one."""
    result, base, k = None, d, abs(exponent)
    while k:
        if k & 1:
            result = base if result is None else builder.fmul(result, base)
        k >>= 1
        if k:
            base = builder.fmul(base, base)
    if result is None:
        return _const(d, 1.0)
    return builder.fdiv(_const(d, 1.0), result) if exponent < 0 else result


def _general_power(builder: ir.IRBuilder, d: ir.Value, c: float) -> ir.Value:
    """x ** c for finite non-integer c: exp(c log x) for positive finite x; C99 pow's special cases
    (zeros, infinities, x < 0, NaN) by selects behind one test, for the vectors that hold one."""
    log, exp = (log_f64_table, exp_f64_table) if avx512_forms_enabled(builder.module) else (log_f64, exp_f64)
    ordinary = builder.and_(builder.fcmp_ordered(">", d, _const(d, 0.0)),
                            builder.fcmp_ordered("<", d, _const(d, math.inf)))  # NaN neither
    result = exp(builder, builder.fmul(_const(d, c), log(builder, builder.select(ordinary, d, _const(d, 1.0)))))
    with if_then(builder, any_lane(builder, builder.not_(ordinary)), carry=[result]) as special:
        special.carry(_special_power(builder, d, c, result))
    return special.results[0]


def _special_power(builder: ir.IRBuilder, d: ir.Value, c: float, result: ir.Value) -> ir.Value:
    """`result` with C99 pow's values for a non-integer c where x is +-0, +-inf, negative or NaN."""
    a = _call(builder, builder.module, "fabs", d)
    at_zero, at_inf = (0.0, math.inf) if c > 0 else (math.inf, 0.0)
    result = builder.select(builder.fcmp_ordered("==", a, _const(d, 0.0)), _const(d, at_zero), result)
    result = builder.select(builder.fcmp_ordered("==", a, _const(d, math.inf)), _const(d, at_inf), result)
    negative = builder.and_(builder.fcmp_ordered("<", d, _const(d, 0.0)),
                            builder.fcmp_ordered(">", d, _const(d, -math.inf)))
    result = builder.select(negative, _const(d, math.nan), result)
    return builder.select(builder.fcmp_unordered("uno", d, d), d, result)


def _half_integer_power(builder: ir.IRBuilder, d: ir.Value, c: float) -> ir.Value:
    """x ** c for c = k + 1/2 (k an integer, |c| < HALF_INTEGER_MAX): |x| ** |k| * sqrt|x|, or its
    reciprocal for c < 0, each step rounded in float64 (so the float32 result is as accurate as the
    integer powers'). On |x| it gives C99 pow's values at +-0 (0, or +inf for c < 0) and +-inf
    (inf, or 0); x < 0 finite is nan, as C99 has it for a non-integer exponent; nan stays nan."""
    a = _call(builder, builder.module, "fabs", d)
    magnitude = builder.fmul(_integer_power(builder, a, int(abs(c) - 0.5)), _call(builder, builder.module, "sqrt", a))
    result = builder.fdiv(_const(d, 1.0), magnitude) if c < 0 else magnitude
    negative = builder.and_(builder.fcmp_ordered("<", d, _const(d, 0.0)),
                            builder.fcmp_ordered(">", d, _const(d, -math.inf)))
    return builder.select(negative, _const(d, math.nan), result)


def _infinite_power(builder: ir.IRBuilder, x: ir.Value, c: float) -> ir.Value:
    """x ** c for c = +-inf or nan (C99: 1 ** anything = 1, (-1) ** +-inf = 1)."""
    one = _const(x, 1.0)
    if math.isnan(c):
        return builder.select(builder.fcmp_ordered("==", x, one), one, _const(x, math.nan))
    a = _call(builder, builder.module, "fabs", x)
    small, big = (0.0, math.inf) if c > 0 else (math.inf, 0.0)
    result = builder.select(builder.fcmp_ordered("<", a, one), _const(x, small), _const(x, big))
    result = builder.select(builder.fcmp_ordered("==", a, one), one, result)
    return builder.select(builder.fcmp_unordered("uno", x, x), x, result)


def emit_pow(builder: ir.IRBuilder, module: ir.Module, x: ir.Value, exponent: float,
             float64: bool | None = None) -> ir.Value:
    """x ** exponent lane-wise for a float32 vector x and a number known at compile time; in float64
    lanes where the module's target has float64 hardware (or `float64` says so), else in float32.
    The float32 path computes with the exponent as the float32 it rounds to (as NumPy's float32 power
    takes a Python number), so its special cases (0, 0.5, 1, odd integers, infinities) are chosen on
    that value; compile() hands either path an exponent that is a float32 already."""
    use_float64 = for_triple(module.triple).float64_hardware if float64 is None else float64
    with np.errstate(over="ignore"):  # beyond float32's range the exponent is +-inf, as NumPy takes it
        c = float(exponent) if use_float64 else float(np.float32(exponent))
    if not math.isfinite(c):
        return _infinite_power(builder, x, c)
    if c == 0.5:
        return _call(builder, builder.module, "sqrt", x)
    if c == 1.0:
        return x
    if not use_float64:  # e.g. Cortex-M4F
        return _const(x, 1.0) if c == 0 else vecpow32.emit_pow32(builder, x, c)
    d = builder.fpext(x, ir.VectorType(F64, x.type.count))
    if c.is_integer():  # every float beyond 2**64 is an even integer, and |x| ** 2**64 is 0, 1 or inf already
        result = _integer_power(builder, d, int(math.copysign(min(abs(c), 2.0**64), c)))
    elif (c - 0.5).is_integer() and abs(c) < HALF_INTEGER_MAX:
        result = _half_integer_power(builder, d, c)
    else:
        result = _general_power(builder, d, c)
    return builder.fptrunc(result, x.type)
