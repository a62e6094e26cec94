"""Our vector erf and exact GELU on `<W x float>` values (any width W), built from vecmath's pieces.

  erf(x)     : within ERF_MAX_ULP (2) of float64 erf; erf(+-0) = +-0, erf(+-inf) = +-1, nan -> nan;
               rounds to +-1 from |x| = 3.9192 on (as float64 erf rounded to float32 does).
  gelu_erf(x): exact GELU, x * (1 + erf(x / sqrt 2)) / 2; gelu_erf(+inf) = inf, gelu_erf(-inf) = nan
               (-inf * 0, as the float64 formula of the NumPy reference gives), tiny (not 0) down to
               x = -14.356, where the true value leaves float32's range.

How: |x| < ERF_SMALL: erf(x) = x + x * P(x^2) (no cancellation, exact at +-0). Otherwise erfc(a) =
tau * exp(-a^2 + Q(tau - 0.48)), tau = 1 / (1 + a/2), and erf = 1 - erfc. Q is fitted from
a = ERFC_FROM up to ERFC_MAX, where erfc(a) underflows float32; -a^2 is carried in two floats (a*a
and its fma remainder) so the steep factor exp(-a^2) is not rounded away. The coefficients are
minimax fits against math.erf / math.erfc (`benchmarks/fit_erf.py`). GELU takes 1 + erf(z) as
erfc(-z) on the negative side: gelu_erf(-8) is -5.1e-15, where x/2 * (1 + erf) in float32 gives 0.

Measured against float64 (tests/codegen/test_vecerf.py): erf 1.50 ulp on every positive
float32 below 4 (odd by construction); gelu_erf 1.61 ulp for x >= 0 and 5.54 for x < 0.
"""

from __future__ import annotations

from llvmlite import ir

from .vecmath import _call, _clamp, _const, _polynomial, _unless_tiny, _unlift, exp_parts, fma, two_product

ERF_MAX_ULP = 2.0
GELU_ERF_MAX_ULP = 6.5  # the parity rule's estimate (ir/rounding.gelu_erf) allows 7
SQRT_HALF = 0.7071067811865476
ERF_SMALL = 0.9
ERFC_FROM = 0.5
ERFC_MAX = 10.5
# Beyond this |x| gelu's erfc (and below -it gelu) may lie below the normals: such vectors take the
# lifted branch (`vecmath._unless_tiny`; a subnormal costs a microcode assist on Intel cores).
# At 12.5, exp(-x^2/2) = 2**-112.7 and gelu(-12.5) ~ 2**-114.6: normal, with room.
GELU_ERF_LIFT_ABOVE = 12.5
# erfc's exp factor is kept down to exp(-105) = 2**-151.5, not cut at exp's own -104: gelu_erf(x) =
# x/2 * tau * exp(s) with x/2 * tau up to 1.19, so a factor below 2**-150 can still give a result
# that rounds to the least subnormal (down to x = -14.356; cut at -104, -0 from x = -14.346 on).
ERFC_EXP_ZERO_BELOW = -105.0
ERF_POLY = (8.538961265003309e-05, -0.0008181955199688673, 0.005204438231885433, -0.026860753074288368,
            0.11283719539642334, -0.37612634897232056, 0.12837916612625122)
ERFC_TAU_MID = 0.48  # Q is a polynomial in tau - 0.48 (tau in [0.16, 0.8]): small terms, little rounding
ERFC_POLY = (0.25299713015556335, -0.09732232987880707, -0.2788791358470917, 0.15353067219257355,
             0.26591846346855164, -0.185427725315094, -0.3614089787006378, 0.211481511592865,
             1.3372665643692017, -0.6986210942268372)


def _erf_small(builder: ir.IRBuilder, module: ir.Module, x: ir.Value) -> ir.Value:
    """erf(x) = x + x * P(x^2) for |x| < ERF_SMALL."""
    return fma(builder, module, x, _polynomial(builder, module, builder.fmul(x, x), ERF_POLY), x)


def _erfc_large(builder: ir.IRBuilder, module: ir.Module, a: ir.Value, a2_hi: ir.Value, a2_lo: ir.Value):
    """erfc(a) for a in [ERFC_FROM, ERFC_MAX], with a*a = a2_hi + a2_lo given exactly, as (tiny,
    erfc): `erfc(lifted)` emits it times 2**LIFT_BITS in the `lifted` lanes (None: none), and
    `tiny` marks the lanes whose exp factor may lie below the normals (`vecmath.exp_parts`).

    The exponent Q(tau) - a^2 is summed without rounding error (two-sum, then the fma remainder),
    and exp(s) * (1 + t) taken as one fma: rounding s alone would cost up to 60 ulp near a = 10."""
    tau = builder.fdiv(_const(a, 1.0), fma(builder, module, a, _const(a, 0.5), _const(a, 1.0)))
    q = _polynomial(builder, module, builder.fsub(tau, _const(a, ERFC_TAU_MID)), ERFC_POLY)
    s = builder.fsub(q, a2_hi)
    bb = builder.fsub(s, q)
    err = builder.fadd(builder.fsub(q, builder.fsub(s, bb)), builder.fsub(builder.fneg(a2_hi), bb))
    tiny, exp_scaled = exp_parts(builder, module, s, zero_below=ERFC_EXP_ZERO_BELOW)

    def erfc(lifted: ir.Value | None) -> ir.Value:
        e = exp_scaled(lifted)
        return builder.fmul(tau, fma(builder, module, e, builder.fsub(err, a2_lo), e))

    return tiny, erfc


def _square(builder: ir.IRBuilder, module: ir.Module, a: ir.Value) -> tuple[ir.Value, ir.Value]:
    """a * a as hi + lo exactly (a <= 14.85: no overflow; on WebAssembly too, without an fma)."""
    return two_product(builder, module, a, a)


def emit_erf(builder: ir.IRBuilder, module: ir.Module, x: ir.Value) -> ir.Value:
    """erf(x) lane-wise within ERF_MAX_ULP: the odd polynomial below ERF_SMALL, 1 - erfc above.

    erf(+-0) = +-0, erf(+-inf) = +-1, NaN stays NaN (it fails every ordered compare and propagates).
    A vector where erfc may be subnormal takes the lifted branch (`_erf_lifted`): 1 - erfc is 1
    there, but computing a subnormal erfc costs an assist."""
    a, tiny, erfc = _erf_parts(builder, module, x)
    return _unless_tiny(builder, tiny, lambda: _erf_finish(builder, module, x, a, erfc(None)), "erf", _erf_lifted, x)


def _erf_parts(builder: ir.IRBuilder, module: ir.Module, x: ir.Value):
    a = _clamp(builder, _call(builder, module, "fabs", x), 0.0, ERFC_MAX)
    hi, lo = _square(builder, module, a)
    return (a, *_erfc_large(builder, module, a, hi, lo))


def _erf_finish(builder: ir.IRBuilder, module: ir.Module, x: ir.Value, a: ir.Value, erfc: ir.Value) -> ir.Value:
    large = builder.fsub(_const(x, 1.0), erfc)
    small = _erf_small(builder, module, x)
    return builder.select(builder.fcmp_ordered("<", a, _const(x, ERF_SMALL)), small,
                          _call(builder, module, "copysign", large, x))


def _erf_lifted(builder: ir.IRBuilder, module: ir.Module, x: ir.Value) -> ir.Value:
    """erf with erfc lifted where it may be subnormal, and taken as 0 there."""
    a, tiny, erfc = _erf_parts(builder, module, x)
    lifted = builder.fmul(erfc(tiny), builder.select(tiny, _const(x, 0.0), _const(x, 1.0)))
    return _erf_finish(builder, module, x, a, lifted)


def emit_gelu_erf(builder: ir.IRBuilder, module: ir.Module, x: ir.Value) -> ir.Value:
    """Exact GELU, x * (1 + erf(x / sqrt 2)) / 2, with 1 + erf(z) = erfc(-z) taken from the erfc form
    on the negative side (no cancellation: gelu(-8) is 2e-15, not 0). gelu(+inf) = inf, gelu(-inf) =
    -inf * 0 = nan as in the NumPy reference, NaN stays NaN. A vector with a lane beyond
    GELU_ERF_LIFT_ABOVE takes the lifted branch (`_gelu_erf_lifted`)."""
    parts = _gelu_erf_parts(builder, module, x)
    return _unless_tiny(builder, parts[0], lambda: _gelu_erf_finish(builder, module, x, parts, False),
                        "gelu_erf", _gelu_erf_lifted, x)


def _gelu_erf_parts(builder: ir.IRBuilder, module: ir.Module, x: ir.Value):
    """(tiny, erfc, x < 0, the polynomial's lanes, 1 + erf from it) for `_gelu_erf_finish`."""
    xa = _clamp(builder, _call(builder, module, "fabs", x), 0.0, ERFC_MAX / SQRT_HALF)
    a = builder.fmul(xa, _const(x, SQRT_HALF))  # rounded: only tau reads it, where it barely matters
    hi, lo = _square(builder, module, xa)
    half = _const(x, 0.5)
    _, erfc = _erfc_large(builder, module, a, builder.fmul(hi, half), builder.fmul(lo, half))  # x^2/2, exact
    negative = builder.fcmp_ordered("<", x, _const(x, 0.0))
    small = builder.fadd(_const(x, 1.0), _erf_small(builder, module, builder.fmul(x, _const(x, SQRT_HALF))))
    # the polynomial up to ERF_SMALL where 1 + erf adds, only up to ERFC_FROM where it cancels
    limit = builder.select(negative, _const(x, ERFC_FROM), _const(x, ERF_SMALL))
    tiny = builder.fcmp_ordered(">", xa, _const(x, GELU_ERF_LIFT_ABOVE))
    return tiny, erfc, negative, builder.fcmp_ordered("<", a, limit), small


def _gelu_erf_finish(builder: ir.IRBuilder, module: ir.Module, x: ir.Value, parts, lifted: bool) -> ir.Value:
    """gelu_erf from `_gelu_erf_parts`; `lifted`: erfc times 2**LIFT_BITS in the `tiny` lanes, where
    2 - erfc is taken as 2 for x > 0 (a subnormal erfc cannot change it) and the result unlifted
    for x < 0."""
    tiny, erfc, negative, polynomial, small = parts
    tail = erfc(tiny if lifted else None)
    two_minus = builder.fsub(_const(x, 2.0), tail)
    if lifted:
        two_minus = builder.select(tiny, _const(x, 2.0), two_minus)
    large = builder.select(negative, tail, two_minus)
    value = builder.fmul(builder.fmul(x, _const(x, 0.5)), builder.select(polynomial, small, large))
    return _unlift(builder, module, value, builder.and_(tiny, negative)) if lifted else value


def _gelu_erf_lifted(builder: ir.IRBuilder, module: ir.Module, x: ir.Value) -> ir.Value:
    return _gelu_erf_finish(builder, module, x, _gelu_erf_parts(builder, module, x), True)
