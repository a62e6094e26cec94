"""`x ** c` (c a compile-time number) in float32 arithmetic only, for targets without float64
hardware (the Cortex-M4F's FPU is single precision: `vecpow`'s float64 lanes would call soft-float
routines there). Needs fused multiply-add (the M4F has it), which makes the error terms exact.

|x| ** c = exp(c log|x|) with log|x| carried as a float32 pair (hi + lo, about 40 bits):
- |x| = 2**e m, m in [sqrt(1/2), sqrt(2)); f = m - 1 exactly; s = f / (m + 1) as s_hi + s_lo
  (m + 1 by Fast2Sum, the division's remainder by fma); log m = 2 s + (2/3) s**3 + s**5 (2/5 + ...),
  2 s_hi plus the cube term carried as a pair (`_log_series`), the rest in float32;
- e ln2 with ln2 split so that e * LN2_HI is exact, added to the series' hi by TwoSum;
- y = c log|x| as y_hi + y_lo (the product's error by fma); exp(y) by vecmath's exp
  (`emit_exp_of_pair`): n = round(y / ln2), r = y - n ln2 + y_lo, its polynomial, then 2**n in two
  exact steps (subnormal results round once).
Measured against float64 (tests/codegen/test_vecpow32.py): within MAX_ULP. The sign of a negative x
to an odd integer power, and C99 pow's zeros, infinities and NaN are selected explicitly.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir

from .vecmath import _call, _const, _int_const, _polynomial, emit_exp_of_pair, fma

# The tested bound: measured 1.02 over test_vecpow.py's exponents and a 400,000-value sweep, and
# 1.07 (c = 2.2) over every 7th positive float32 for c in 255, -255, 100.5, -100.5, 37.25, 2.2, -1.7,
# 1/3, 1e10, -7.3 (issue 16 asks for 2). It was 2 before the log series' cube term became a pair
# (`_log_series`): 1.85 on the sweeps, 6.7 ulp at c = -255 with a mantissa near sqrt(2).
MAX_ULP = 1.25
_LN2_BITS = int(np.float32(math.log(2)).view(np.uint32)) & ~0xFFF
LN2_HI = float(np.uint32(_LN2_BITS).view(np.float32))  # 12 bits: e * LN2_HI exact for |e| < 2**12
LN2_LO = float(np.float32(math.log(2) - LN2_HI))
SQRT2 = float(np.float32(math.sqrt(2)))
MIN_NORMAL = 2.0**-126
# log m = 2s + (2/3) s^3 + s^5 (2/5 + 2/7 s^2 + ... + 2/15 s^10), |s| <= 0.1716: the next term is
# below 2**-35 of 2s. 2/3 as a float32 pair.
LOG_TAIL = tuple(2.0 / (2 * k + 1) for k in range(7, 1, -1))
TWO_THIRDS_HI = float(np.float32(2 / 3))
TWO_THIRDS_LO = float(np.float32(2 / 3 - TWO_THIRDS_HI))


def _fast_two_sum(b: ir.IRBuilder, big: ir.Value, small: ir.Value) -> tuple[ir.Value, ir.Value]:
    """big + small as s + err exactly (Fast2Sum), for |big| >= |small| (or big's exponent at least small's)."""
    total = b.fadd(big, small)
    return total, b.fsub(small, b.fsub(total, big))


def _two_sum(b: ir.IRBuilder, x: ir.Value, y: ir.Value) -> tuple[ir.Value, ir.Value]:
    """x + y as s + err exactly (TwoSum), whichever is larger."""
    total = b.fadd(x, y)
    y_part = b.fsub(total, x)
    return total, b.fadd(b.fsub(x, b.fsub(total, y_part)), b.fsub(y, y_part))


def _log_series(b: ir.IRBuilder, s_hi: ir.Value, s_lo: ir.Value) -> tuple[ir.Value, ir.Value]:
    """log m = 2s + (2/3) s**3 + s**5 P(s**2) for s = s_hi + s_lo, as hi + lo with lo within about
    2**-24 of hi. The leading cube is ~1 % of 2s near m = sqrt(2): rounded as a float32 it would cost
    the pair ~7 of its bits, which c log x magnifies (6.7 ulp at c = -255 before), so it is carried
    as a pair (products' errors by fma) and added to 2 s_hi by Fast2Sum; s_lo enters through the
    series' derivative 2 + 2 s**2, and the rest (below 1.8 % of the cube) is rounded once."""
    m_ = b.module
    s2 = b.fmul(s_hi, s_hi)
    s2_err = fma(b, m_, s_hi, s_hi, b.fneg(s2))  # s_hi**2 = s2 + s2_err exactly
    s3 = b.fmul(s_hi, s2)
    s3_err = fma(b, m_, s_hi, s2_err, fma(b, m_, s_hi, s2, b.fneg(s3)))
    third = _const(s_hi, TWO_THIRDS_HI)
    cube = b.fmul(third, s3)
    cube_err = fma(b, m_, third, s3, b.fneg(cube))  # exact
    cube_err = fma(b, m_, third, s3_err, fma(b, m_, _const(s_hi, TWO_THIRDS_LO), s3, cube_err))
    rest = b.fmul(b.fmul(s3, s2), _polynomial(b, m_, s2, LOG_TAIL))
    two_s = b.fmul(s_hi, _const(s_hi, 2.0))
    hi, hi_err = _fast_two_sum(b, two_s, cube)  # |2s| > 100 |cube|
    slope = fma(b, m_, s2, _const(s_hi, 2.0), _const(s_hi, 2.0))
    lo = b.fadd(hi_err, fma(b, m_, s_lo, slope, b.fadd(cube_err, rest)))
    return hi, lo


def _log_pair(b: ir.IRBuilder, a: ir.Value) -> tuple[ir.Value, ir.Value]:
    """log(a) as hi + lo for positive, finite, non-zero float32 lanes (subnormals included)."""
    m_ = b.module
    ivt = ir.VectorType(ir.IntType(32), a.type.count)
    sub = b.fcmp_ordered("<", a, _const(a, MIN_NORMAL))
    a = b.select(sub, b.fmul(a, _const(a, 2.0**24)), a)  # exact: normal now
    bits = b.bitcast(a, ivt)
    e = b.sub(b.lshr(bits, _int_const(bits, 23)), b.select(sub, _int_const(bits, 127 + 24), _int_const(bits, 127)))
    m = b.bitcast(b.or_(b.and_(bits, _int_const(bits, 0x7FFFFF)), _int_const(bits, 0x3F800000)), a.type)
    high = b.fcmp_ordered(">", m, _const(a, SQRT2))
    m = b.select(high, b.fmul(m, _const(a, 0.5)), m)
    e = b.add(e, b.select(high, _int_const(bits, 1), _int_const(bits, 0)))
    one = _const(a, 1.0)
    f = b.fsub(m, one)  # exact (Sterbenz)
    d, d_err = _fast_two_sum(b, one, m)  # m's exponent is at most 1's
    s_hi = b.fdiv(f, d)
    rem = fma(b, m_, b.fsub(_const(a, 0.0), s_hi), d, f)  # f - s_hi d, exactly
    s_lo = b.fdiv(b.fsub(rem, b.fmul(s_hi, d_err)), d)  # f / (d + d_err) - s_hi, to first order
    hi, lo = _log_series(b, s_hi, s_lo)
    ef = b.sitofp(e, a.type)
    big = b.fmul(ef, _const(a, LN2_HI))  # exact
    total, err = _two_sum(b, big, hi)
    return total, b.fadd(err, fma(b, m_, ef, _const(a, LN2_LO), lo))


def emit_pow32(b: ir.IRBuilder, x: ir.Value, c: float) -> ir.Value:
    """x ** c lane-wise for finite c other than 0, 0.5 and 1 (`vecpow.emit_pow` handles those), c
    taken as the float32 it rounds to (as NumPy's float32 power takes a Python number)."""
    c = float(np.float32(c))
    a = _call(b, b.module, "fabs", x)
    inf, zero = _const(x, math.inf), _const(x, 0.0)
    safe = b.select(b.fcmp_ordered("<", a, inf), a, _const(x, 1.0))
    safe = b.select(b.fcmp_ordered(">", safe, zero), safe, _const(x, 1.0))  # log of 0, inf selected away
    l_hi, l_lo = _log_pair(b, safe)
    cc = _const(x, c)
    y_hi = b.fmul(cc, l_hi)
    y_lo = fma(b, b.module, cc, l_lo, fma(b, b.module, cc, l_hi, b.fsub(zero, y_hi)))
    # renormalized (lo reaches ~2**-13 of hi through e * LN2_LO) to keep the reduced argument in range
    result = emit_exp_of_pair(b, b.module, *_fast_two_sum(b, y_hi, y_lo))
    at_zero, at_inf = (0.0, math.inf) if c > 0 else (math.inf, 0.0)
    result = b.select(b.fcmp_ordered("==", a, zero), _const(x, at_zero), result)
    result = b.select(b.fcmp_ordered("==", a, inf), _const(x, at_inf), result)
    if c.is_integer() and int(c) % 2:  # odd: the sign of x (also of -0 and -inf)
        ivt = ir.VectorType(ir.IntType(32), x.type.count)
        sign = b.and_(b.bitcast(x, ivt), _int_const(b.bitcast(x, ivt), -0x80000000))
        result = b.bitcast(b.or_(b.bitcast(result, ivt), sign), x.type)
    elif not c.is_integer():  # a negative base: NaN, but (-inf) ** c is inf ** c
        result = b.select(b.fcmp_ordered("<", x, zero), _const(x, math.nan), result)
        result = b.select(b.fcmp_ordered("==", x, _const(x, -math.inf)), _const(x, at_inf), result)
    return b.select(b.fcmp_unordered("uno", x, x), x, result)
