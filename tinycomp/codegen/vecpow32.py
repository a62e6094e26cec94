"""`x ** c` (c a compile-time number) in float32 arithmetic only, for targets without float64
hardware (the Cortex-M4F's FPU is single precision: `vecpow`'s float64 lanes would call soft-float
routines there). Needs fused multiply-add (the M4F has it), which makes the error terms exact.

|x| ** c = exp(c log|x|) with log|x| carried as a float32 pair (hi + lo, about 40 bits):
- |x| = 2**e m, m in [sqrt(1/2), sqrt(2)); f = m - 1 exactly; s = f / (m + 1) as s_hi + s_lo
  (m + 1 by Fast2Sum, the division's remainder by fma); log m = 2 s + s**3 (2/3 + 2/5 s**2 + ...),
  the series tail (below 0.0035 of 2 s) in float32;
- e ln2 with ln2 split so that e * LN2_HI is exact, added to 2 s_hi by TwoSum;
- y = c log|x| as y_hi + y_lo (the product's error by fma); exp(y) as vecmath's: n = round(y / ln2),
  r = y - n ln2 + y_lo, its polynomial, then 2**n in two exact steps (subnormal results round once).
Measured against float64 (tests/codegen/test_vecpow32.py): within MAX_ULP. The sign of a negative x
to an odd integer power, and C99 pow's zeros, infinities and NaN are selected explicitly.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir

from .vecmath import EXP_POLY, LOG2E, ROUND_MAGIC, _call, _const, _int_const, _polynomial, _pow2_bits, fma

MAX_ULP = 2.0  # the tested bound: measured 1.85 (at c = 100.5; it grows with |c log x|) over
# test_vecpow.py's exponents and a 400,000-value sweep, 0.95 or less for |c| <= 10.5
# Not a bound everywhere: the log pair carries ~29 bits near m = sqrt(2) (its float32 series tail),
# which c log x magnifies near overflow: 2.3 ulp at x = 1.4116765, c = 100.5; 5.2 at 1.3928748, c = 255.
_LN2_BITS = int(np.float32(math.log(2)).view(np.uint32)) & ~0xFFF
LN2_HI = float(np.uint32(_LN2_BITS).view(np.float32))  # 12 bits: e * LN2_HI exact for |e| < 2**12
LN2_LO = float(np.float32(math.log(2) - LN2_HI))
SQRT2 = float(np.float32(math.sqrt(2)))
MIN_NORMAL = 2.0**-126
# log m = 2s + s^3 (2/3 + 2/5 s^2 + ... + 2/15 s^12), |s| <= 0.1716: the next term is below 2**-35 of 2s
LOG_TAIL = tuple(2.0 / (2 * k + 1) for k in range(7, 0, -1))
EXP_Y_LO, EXP_Y_HI = -104.0, 89.0  # exp below rounds to 0, above to inf in float32


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
    d = b.fadd(one, m)  # Fast2Sum: m's exponent is at most 1's
    d_err = b.fsub(m, b.fsub(d, one))
    s_hi = b.fdiv(f, d)
    rem = fma(b, m_, b.fsub(_const(a, 0.0), s_hi), d, f)  # f - s_hi d, exactly
    s_lo = b.fdiv(b.fsub(rem, b.fmul(s_hi, d_err)), d)  # f / (d + d_err) - s_hi, to first order
    s2 = b.fmul(s_hi, s_hi)
    tail = b.fmul(b.fmul(s_hi, s2), _polynomial(b, m_, s2, LOG_TAIL))
    hi = b.fmul(s_hi, _const(a, 2.0))
    lo = fma(b, m_, s_lo, _const(a, 2.0), tail)
    ef = b.sitofp(e, a.type)
    big = b.fmul(ef, _const(a, LN2_HI))  # exact
    total = b.fadd(big, hi)  # TwoSum(big, hi)
    bv = b.fsub(total, big)
    err = b.fadd(b.fsub(big, b.fsub(total, bv)), b.fsub(hi, bv))
    return total, b.fadd(err, fma(b, m_, ef, _const(a, LN2_LO), lo))


def _exp_pair(b: ir.IRBuilder, y_hi: ir.Value, y_lo: ir.Value) -> ir.Value:
    """exp(y_hi + y_lo), y_hi clamped to [-104, 89] (NaN passes through)."""
    m_ = b.module
    above = b.fcmp_ordered(">", y_hi, _const(y_hi, EXP_Y_HI))
    below = b.fcmp_ordered("<", y_hi, _const(y_hi, EXP_Y_LO))
    y = b.select(above, _const(y_hi, EXP_Y_HI), b.select(below, _const(y_hi, EXP_Y_LO), y_hi))
    y_lo = b.select(b.or_(above, below), _const(y_lo, 0.0), y_lo)  # (a huge y_hi has a huge y_lo)
    magic = _const(y, ROUND_MAGIC)
    t = fma(b, m_, y, _const(y, LOG2E), magic)
    n = b.fsub(t, magic)
    r = fma(b, m_, n, _const(y, -LN2_HI), y)
    r = fma(b, m_, n, _const(y, -LN2_LO), r)
    r = b.fadd(r, y_lo)
    p = _polynomial(b, m_, r, EXP_POLY + (1.0, 1.0))
    ivt = ir.VectorType(ir.IntType(32), y.type.count)
    ni = b.sub(b.bitcast(t, ivt), b.bitcast(magic, ivt))  # n in [-150, 129]
    n1 = b.ashr(ni, _int_const(ni, 1))
    n2 = b.sub(ni, n1)
    p = b.fmul(p, _pow2_bits(b, b.add(n1, _int_const(ni, 127))))  # exact: stays normal
    return b.fmul(p, _pow2_bits(b, b.add(n2, _int_const(ni, 127))))  # one rounding


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
    y = b.fadd(y_hi, y_lo)  # Fast2Sum: lo holds the log series' tail, up to 1% of hi, so renormalize
    result = _exp_pair(b, y, b.fadd(b.fsub(y_hi, y), y_lo))  # to keep the reduced argument in range
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
