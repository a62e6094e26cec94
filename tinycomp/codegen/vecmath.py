"""Vectorized float32 math on `<W x float>` values: relu, exp, log, sqrt, abs, sigmoid, tanh, gelu.

Everything here is our own straight-line vector code (range reduction + polynomial; on AVX-512
also a 16-entry table held in a register, a reciprocal estimate in place of a divide and
vscalefps), so it can run on GEMM accumulators still in registers,
for any width W >= 1 (16, 8, 4, and 1 for tails); a lane's result does not depend on W.
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

Results below the normals: no vector operation rounds a lane into the subnormals or reads one
(each would cost a microcode assist on Intel cores, FTZ and DAZ being off): a vector where that
could happen takes an out-of-line lifted branch (`_unless_tiny`, TINY_BELOW and after).

Accuracy (`vector_ops.MAX_ULP`): max |got - ref| / ulp32(ref), where ref is the float64 evaluation of the same
formula and ulp32(ref) the float32 spacing at |ref| (2**-149 in the subnormal range). For gelu the
reference keeps the float32 rounding of 1.702*x (the formula does that in NumPy too), but not the
float32 rounding of the sigmoid factor: below x = -51 that factor is subnormal and a plain float32
evaluation loses relative precision, while the kernel here carries it scaled and stays within the
bound wherever gelu itself is a normal float32. The bounds hold for every float32 input: measured
over all 2**32 of them by benchmarks/vecmath_ulp.py (see `vector_ops.MAX_ULP`), and sampled in
the tests.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir

from .cgutils import I32, declare_vector_intrinsic, define_once, merge_incoming, vector_constant
from .target import enabled_features, for_triple

# Accuracy bounds per op: codegen/vector_ops.py (VECTOR_OPS, MAX_ULP).

# exp: clamping at EXP_HI keeps n <= 128 (below, the select at EXP_ZERO_BELOW keeps n >= -150), so
# 2**n splits into two normal powers of two, while the clamped results still overflow to inf
# exactly as exp of the original x does.
EXP_HI = 89.0
# Below this exp(x) rounds to +0 (exp(-104) < 2**-150, half the least subnormal). Those lanes take
# +0 by a select and compute from x = 0: left to the scaling, the multiply that underflows to 0
# costs a microcode assist on Intel cores (FTZ is off) on every vector holding such a lane, as
# do the masked scores (-1e9) of a causal attention's softmax. That block ran 1.17 x as long as
# the unmasked one on an Intel Xeon; on Zen 4 the two took the same time.
EXP_ZERO_BELOW = -104.0
assert math.exp(EXP_ZERO_BELOW) < 2.0**-150
# sigmoid and gelu carry e = exp(-|x|) scaled by 2**SIGMOID_SCALE, a normal float in every lane:
# clamping -|x| at EXP_NONPOS_LO keeps n >= -157 in both forms, so e >= 0.7 * 2**-125 (a subnormal
# e would cost an assist: TINY_BELOW). Below the clamp sigmoid(x) < 2**-156 rounds to 0 all the
# same; gelu's lifted branch gives those lanes e = 0 itself (x times the clamp's e would not be 0
# for large |x|), so sigmoid there is 0 and gelu -0 (nan at -inf), as the formulas give.
SIGMOID_SCALE = 32
EXP_NONPOS_LO = -108.7
# tanh's large branch needs exp(-2a) only while it still changes 1 - e: below 2**-25 (a > 8.7)
# tanh is exactly 1. Clamping -2a at -86 keeps n >= -125 (-124 in the polynomial form), so 2**n
# is a normal number built from bits.
TANH_EXP_LO = -86.0
LOG2E = 1.4426950408889634
# 1.5 * 2**23: adding it rounds to an integer held in the low mantissa bits (no fptosi, whose
# result would be poison for NaN). Adding a bias b on top leaves n + b in the low bits.
ROUND_MAGIC = 12582912.0
ROUND_MAGIC_BITS = 0x4B400000
# Cody-Waite split of ln 2: LN2_HI has few mantissa bits so n * LN2_HI is exact.
LN2_HI = 0.693359375
LN2_LO = -2.12194440e-4
# exp(r) = 1 + r + r^2 * P(r) on |r| <= ln2/2, highest degree first: P of degree 4 fitted for the
# least maximum relative error of the whole (Lawson's iteration in float64, coefficients then
# rounded to float32): 3.8e-9 = 0.032 ulp of 1, against Cephes' degree-5 P at 0.009 ulp; an FMA less.
EXP_POLY = (1.3814613e-3, 8.36871e-3, 4.166839e-2, 1.6666521e-1, 4.9999994e-1)

# Where a lane can look its entry up in a register (AVX-512's vpermps: 16 floats), exp(x) is
# 2**m * T[j] * exp(r) with n = 16 m + j = round(16 x / ln2) and |r| <= ln2 / 32 (Tang's method),
# T[j] = 2**(j/16) carried as float32 hi + lo. The short range needs a degree-3 polynomial
# instead of 6: exp(r) - 1 = r + r^2 (c2 + c3 r), 0.027 ulp of 1 (`benchmarks/fit_exp_table.py`).
# sigmoid, tanh and gelu take it: a shorter chain and fewer multiply-adds, 2-10 % faster
# (README, "Numerics and weights"). exp alone does not: there the two lookups cost more than they save.
EXP_TABLE_BITS = 4
EXP_TABLE_POLY = (1.6666721e-1, 5.0001615e-1)
_EXP_TABLE = [2.0 ** (j / 2**EXP_TABLE_BITS) for j in range(2**EXP_TABLE_BITS)]
EXP_TABLE_HI = tuple(float(np.float32(v)) for v in _EXP_TABLE)
EXP_TABLE_LO = tuple(float(np.float32(v - hi)) for v, hi in zip(_EXP_TABLE, EXP_TABLE_HI, strict=True))
ZMM_LANES = 16  # float32 lanes of one AVX-512 register: the width its intrinsics below take

# The AVX-512 forms: exp's table (above) for sigmoid, tanh and gelu; for the quotients of sigmoid
# and gelu the reciprocal estimate with a correction instead of a divide (`_quotient`); for exp's
# scaling by 2**n one vscalefps (`_scale`); layer norm's corrected quotient. False forces the
# portable forms every other target takes (polynomial exp, vdivps, two multiplies): for tests and
# benchmarks/vecmath_ulp.py. It is read when a kernel is emitted, and the object cache's key holds
# it (`fingerprint`), so a compile with it off never loads AVX-512-form code from the cache.
AVX512_FORMS = True

# Cephes tanhf: tanh(a) = a + a^3 * P(a^2) for a < 0.625, highest degree first.
TANH_SMALL = 0.625
TANH_POLY = (-5.70498872745e-3, 2.06390887954e-2, -5.37397155531e-2, 1.33314422036e-1,
             -3.33332819422e-1)

GELU_ALPHA = 1.702
# 1 / d for a positive normal float d as the bits RECIPROCAL_MAGIC - bits(d), within 12 % relative:
# enough for a factor that only scales a correction already 2**-24 smaller than the result.
RECIPROCAL_MAGIC = 0x7EF311C3
# The same with the bits 254 << 23: exact for powers of two, within 12.5 % in between.
RECIPROCAL_EXACT_POW2 = 254 << 23

# Cephes logf: log(1 + f) = f - f^2/2 + f^3 * P(f) on sqrt(1/2) - 1 <= f < sqrt(2) - 1, highest first.
LOG_POLY = (7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1, 1.4249322787e-1,
            -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1)
SQRT_HALF = 0.70710678118654752
MIN_NORMAL = 2.0**-126
FLOAT32_MAX = float.fromhex("0x1.fffffep127")

# Results below the normals cost a microcode assist on Intel cores: every vector operation that
# rounds a lane into the subnormals or reads one (FTZ and DAZ stay off: they would change results)
# takes a microcode assist. exp, sigmoid and gelu on whole vectors of such lanes took 23, 35 and
# 36 x as long as on normal inputs (benchmarks/tiny_results.py, Intel Xeon). So a vector with a lane where
# something could round into the subnormals takes a branch (`_unless_tiny`) that computes the
# same values with the small ones LIFTed by 2**64, all normal, and builds the subnormal results
# from integer bits (`_unlift`). The test costs a compare and a mask test per vector. Where:
# - exp(x) below TINY_BELOW (below EXP_ZERO_BELOW exp is +0 by a select);
# - sigmoid(x) below SIGMOID_LIFT_BELOW: its residual's term q0 e (~ exp(2x) 2**32) underflows
#   below x = -54.7, as does sigmoid itself below -87.3;
# - gelu(x) where |1.702 x| exceeds GELU_LIFT_ABOVE: there the correction x residual / den
#   (~ x exp(-3.4 |x|)) underflows.
# Past those points the term q0 e is below 2**-60 of q0: the lifted branch drops it.
TINY_BELOW = -87.0
SIGMOID_LIFT_BELOW = -50.0
GELU_LIFT_ABOVE = 42.0
LIFT_BITS = 64
assert math.exp(TINY_BELOW) > 1.01 * MIN_NORMAL  # above it every result is normal
assert math.exp(2 * SIGMOID_LIFT_BELOW) * 2.0**SIGMOID_SCALE > 2.0**-120
assert math.exp(-2 * GELU_LIFT_ABOVE) * GELU_LIFT_ABOVE / GELU_ALPHA > 2.0**-120
assert math.exp(-GELU_LIFT_ABOVE) < 2.0**-60  # the dropped term q0 e, relative to q0

assert math.isclose(LN2_HI + LN2_LO, math.log(2), rel_tol=1e-9)
# The clamp must give n = -157 in both forms (see SIGMOID_SCALE), and in the table form an entry
# above 1 (j = 3): y >= 2**(3/16) exp(-ln2/32) > 1.
assert round(EXP_NONPOS_LO / math.log(2)) == -157
assert divmod(round(EXP_NONPOS_LO * 2**EXP_TABLE_BITS / math.log(2)), 2**EXP_TABLE_BITS) == (-157, 3)
assert math.exp(EXP_NONPOS_LO) < 2.0**-156


def _width(x: ir.Value) -> int:
    return x.type.count


def _const(x: ir.Value, value: float) -> ir.Constant:
    """`value` in every lane of a vector of x's type (float32 or float64 lanes)."""
    return vector_constant(x.type, ir.Constant(x.type.element, float(value)))


def _int_vector(x: ir.Value) -> ir.VectorType:
    return ir.VectorType(I32, _width(x))


def _int_const(x: ir.Value, value: int) -> ir.Constant:
    return vector_constant(_int_vector(x), ir.Constant(I32, value))


def _call(builder: ir.IRBuilder, module: ir.Module, name: str, *args: ir.Value) -> ir.Value:
    fn = declare_vector_intrinsic(module, name, _width(args[0]), len(args), args[0].type.element)
    return builder.call(fn, list(args))


def fma(builder: ir.IRBuilder, module: ir.Module, a, b, c) -> ir.Value:
    """a * b + c with one rounding (`llvm.fma`, a single vfmadd on FMA hardware)."""
    return _call(builder, module, "fma", a, b, c)


VELTKAMP_SPLIT = 4097.0  # 2**12 + 1: splits a float32 into two halves of 12 bits, whose products are exact


def two_product(builder: ir.IRBuilder, module: ir.Module, a: ir.Value, b: ir.Value) -> tuple[ir.Value, ir.Value]:
    """a * b as hi + lo, lo the rounding error of hi (exact for products away from overflow and
    underflow): the fma remainder, or Dekker's product of Veltkamp halves where the target has no
    fused multiply-add (WebAssembly, where `fma` rounds twice and the remainder came out 0). There
    lo is 0 where the split overflows (|a| or |b| over FLT_MAX / 4097, about 2**116) or an operand
    is not finite: hi alone."""
    hi = builder.fmul(a, b)
    if for_triple(module.triple).fused_multiply_add:
        return hi, fma(builder, module, a, b, builder.fneg(hi))

    def halves(v: ir.Value) -> tuple[ir.Value, ir.Value]:
        c = builder.fmul(v, _const(v, VELTKAMP_SPLIT))
        high = builder.fsub(c, builder.fsub(c, v))
        return high, builder.fsub(v, high)

    (ah, al), (bh, bl) = halves(a), halves(b)
    lo = builder.fsub(builder.fmul(ah, bh), hi)
    lo = builder.fadd(builder.fadd(builder.fadd(lo, builder.fmul(ah, bl)), builder.fmul(al, bh)),
                      builder.fmul(al, bl))
    return hi, builder.select(builder.fcmp_ordered("==", lo, lo), lo, _const(lo, 0.0))  # not NaN


def _polynomial(builder, module, x: ir.Value, coeffs: tuple[float, ...]) -> ir.Value:
    """Horner evaluation with FMAs; coefficients highest degree first."""
    acc = _const(x, coeffs[0])
    for c in coeffs[1:]:
        acc = fma(builder, module, acc, x, _const(x, c))
    return acc


def _clamp(builder: ir.IRBuilder, x: ir.Value, lo: float | None, hi: float | None) -> ir.Value:
    """min(max(x, lo), hi) that lets NaN through (ordered compares are false for NaN); a bound
    of None is not applied."""
    if hi is not None:
        x = builder.select(builder.fcmp_ordered(">", x, _const(x, hi)), _const(x, hi), x)
    return x if lo is None else builder.select(builder.fcmp_ordered("<", x, _const(x, lo)), _const(x, lo), x)


def _pow2_bits(builder: ir.IRBuilder, biased: ir.Value) -> ir.Value:
    """The float 2**(k - 127) for integer lanes k = biased exponent in [1, 254] (k = 0 gives +0),
    built from bits. The shift drops all but the low 9 bits of `biased`, so a biased exponent read
    straight from a ROUND_MAGIC sum needs no masking."""
    bits = builder.shl(biased, _int_const(biased, 23))
    return builder.bitcast(bits, ir.VectorType(ir.FloatType(), _width(biased)))


def has_avx512_forms(module: ir.Module, x: ir.Value) -> bool:
    """True where float32 lanes may take AVX-512's forms (`AVX512_FORMS`): a 16-entry table looked
    up in a register (vpermps), the 14-bit reciprocal estimate (vrcp14ps), vscalefps; and layer
    norm's corrected quotient (`layer_norm.corrected_quotient`)."""
    return isinstance(x.type.element, ir.FloatType) and avx512_forms_enabled(module)


def avx512_forms_enabled(module: ir.Module) -> bool:
    """`AVX512_FORMS` on a module whose target has AVX-512 (float64 lanes ask this: `vecpow`)."""
    return AVX512_FORMS and "avx512f" in enabled_features(for_triple(module.triple).features)


def _per_zmm(builder: ir.IRBuilder, apply, *xs: ir.Value, lanes: int = ZMM_LANES) -> ir.Value:
    """`apply` (zmm vectors to a zmm vector, lane by lane) over vectors xs of one width: each cut
    into `lanes`-lane pieces (16 floats, or 8 doubles), the last one padded by repeating its last
    lane, the results laid end to end."""
    width = xs[0].type.count

    def pieces(x: ir.Value) -> list[ir.Value]:
        return [x if width == lanes else builder.shuffle_vector(
            x, x, _lane_mask([min(start + i, width - 1) for i in range(lanes)]))
            for start in range(0, width, lanes)]

    return _concatenate(builder, [apply(*parts) for parts in zip(*map(pieces, xs), strict=True)], width)


ZMM = ir.VectorType(ir.FloatType(), ZMM_LANES)
EVERY_LANE = ir.Constant(ir.IntType(16), -1)  # the write mask of the masked AVX-512 intrinsics


def _zmm_intrinsic(module: ir.Module, name: str, *params: ir.Type) -> ir.Function:
    """The AVX-512 intrinsic `llvm.x86.avx512.<name>`, returning a zmm of floats."""
    return define_once(module, f"llvm.x86.avx512.{name}", lambda full: ir.Function(
        module, ir.FunctionType(ZMM, list(params)), full))


def _lookup(builder: ir.IRBuilder, module: ir.Module, tables: tuple[tuple[float, ...], ...],
            index: ir.Value) -> list[ir.Value]:
    """table[index & 15] lane-wise for each table, by vpermps (which reads the low 4 bits of each
    index)."""
    permute = _zmm_intrinsic(module, "permvar.sf.512", ZMM, ir.VectorType(I32, ZMM_LANES))
    return [_per_zmm(builder, lambda piece, table=table: builder.call(permute, [vector_constant(
        ZMM, [ir.Constant(ir.FloatType(), v) for v in table]), piece]), index) for table in tables]


def _scale(builder: ir.IRBuilder, module: ir.Module, y: ir.Value, n: ir.Value) -> ir.Value:
    """y * 2**n for integer-valued float lanes n, rounded once (vscalefps: overflow gives inf, a
    result below the normals rounds once into the subnormals, NaN stays NaN)."""
    scalef = _zmm_intrinsic(module, "mask.scalef.ps.512", ZMM, ZMM, ZMM, ir.IntType(16), I32)
    current_rounding = ir.Constant(I32, 4)
    return _per_zmm(builder, lambda piece, power: builder.call(
        scalef, [piece, power, piece, EVERY_LANE, current_rounding]), y, n)


def any_lane(builder: ir.IRBuilder, mask: ir.Value) -> ir.Value:
    """i1: is any lane of the i1 vector `mask` set (one mask test on AVX-512)."""
    lanes = mask.type.count
    return builder.icmp_unsigned("!=", builder.bitcast(mask, ir.IntType(lanes)), ir.Constant(ir.IntType(lanes), 0))


def _unless_tiny(builder: ir.IRBuilder, tiny: ir.Value, fast, name: str, lifted, *args: ir.Value) -> ir.Value:
    """`fast()` when no lane of the i1 vector `tiny` is set, else the module's function
    `tinycomp.vecmath.<name>.v<W>` called on `args`: the fast code never runs on a vector whose
    results could round into the subnormals. That function's body, `lifted(builder, module,
    *args)`, computes the whole op from its arguments with small values lifted; out of line, it is
    compiled once per module and width, not at every inlined use. It is `cold`, which tells LLVM
    the branch to it is unlikely (no branch weights: their metadata would keep `codegen.split`
    from splitting the module across cores)."""
    return branch_on_tiny(builder, [tiny], lambda: [fast()], lambda: [_call_lifted(builder, name, lifted, args)])[0]


def branch_on_tiny(builder: ir.IRBuilder, tinies: list[ir.Value], fast, careful) -> list[ir.Value]:
    """The values `fast()` (a list) emits when no lane of any i1 vector of `tinies` is set, else
    those of `careful()`: one test and branch for several vectors."""
    any_tiny = any_lane(builder, tinies[0])
    for tiny in tinies[1:]:
        any_tiny = builder.or_(any_tiny, any_lane(builder, tiny))
    ends = []
    with builder.if_else(any_tiny) as (slow, usual):
        with slow:
            ends.append((careful(), builder.block))
        with usual:
            ends.append((fast(), builder.block))
    return merge_incoming(builder, ends)


def _call_lifted(builder: ir.IRBuilder, name: str, lifted, args: tuple[ir.Value, ...]) -> ir.Value:
    """The lifted function `name` on `args`; vectors of whole zmm registers go a zmm at a time, so
    one width-16 function serves the module's 16- and 64-lane uses (a 64-lane copy of gelu's took
    6.2 ms of code generation: benchmarks/codegen_cost.py block)."""
    width = _width(args[0])
    if width > ZMM_LANES and width % ZMM_LANES == 0:
        return _per_zmm(builder, lambda *pieces: _call_lifted(builder, name, lifted, pieces), *args)
    module = builder.module
    fn = define_once(module, f"tinycomp.vecmath.{name}.v{width}",
                     lambda full: _lifted_function(module, full, lifted, args))
    return builder.call(fn, list(args))


def _lifted_function(module: ir.Module, name: str, lifted, args: tuple[ir.Value, ...]) -> ir.Function:
    """`<W x float> name(args...)`, internal, cold and never inlined, returning `lifted`'s value."""
    fn = ir.Function(module, ir.FunctionType(args[0].type, [a.type for a in args]), name)
    fn.linkage = "internal"
    for attribute in ("nounwind", "noinline", "cold"):
        fn.attributes.add(attribute)
    builder = ir.IRBuilder(fn.append_basic_block("entry"))
    builder.ret(lifted(builder, module, *fn.args))
    return fn


def _lift_factor(builder: ir.IRBuilder, lifted: ir.Value, like: ir.Value, zeroed: ir.Value | None = None) -> ir.Value:
    """2**LIFT_BITS in the `lifted` lanes, 1 elsewhere, 0 in the `zeroed` ones (float lanes of
    `like`'s type)."""
    factor = builder.select(lifted, _const(like, 2.0**LIFT_BITS), _const(like, 1.0))
    return factor if zeroed is None else builder.select(zeroed, _const(like, 0.0), factor)


def _unlift(builder: ir.IRBuilder, module: ir.Module, v: ir.Value, lifted: ir.Value) -> ir.Value:
    """v / 2**LIFT_BITS in the `lifted` lanes (v itself elsewhere), rounded to float32 once more,
    without any operation producing a subnormal. v is a normal float, 0, inf or nan. Where the
    quotient is below the normals it is built from bits: |v| 2**(149 - LIFT_BITS) (< 2**23)
    rounded to an integer by adding 2**23 is the subnormal's bit pattern (2**23: the least
    normal's), v's sign bit added. Elsewhere v times 2**-LIFT_BITS, exact."""
    magnitude = _call(builder, module, "fabs", v)
    tiny = builder.and_(lifted, builder.fcmp_ordered("<", magnitude, _const(v, MIN_NORMAL * 2.0**LIFT_BITS)))
    shifted = builder.fadd(builder.select(tiny, builder.fmul(magnitude, _const(v, 2.0**(149 - LIFT_BITS))),
                                          _const(v, 0.0)), _const(v, 2.0**23))
    bits = builder.sub(builder.bitcast(shifted, _int_vector(v)), _int_const(v, 0x4B000000))
    sign = builder.and_(builder.bitcast(v, _int_vector(v)), _int_const(v, -(2**31)))
    subnormal = builder.bitcast(builder.or_(bits, sign), v.type)
    # Only the lifted lanes left normal multiply v; the others multiply `shifted` (in [2**23,
    # 2**24]): a lane not lifted may hold a small normal v (exp(-87) is 2**-125.5), and without
    # AVX-512's masked multiply every lane is multiplied before the select, so v 2**-LIFT_BITS would
    # round into the subnormals there. With a constant in their place LLVM would multiply v in
    # every lane and select after.
    down_lanes = builder.and_(lifted, builder.not_(tiny))
    down = builder.fmul(builder.select(down_lanes, v, shifted), _const(v, 2.0**-LIFT_BITS))
    return builder.select(tiny, subnormal, builder.select(lifted, down, v))


def _reciprocal_estimate(builder: ir.IRBuilder, module: ir.Module, d: ir.Value) -> ir.Value:
    """1 / d within a relative 2**-14 (vrcp14ps; exact for powers of two), for normal d only."""
    estimate = _zmm_intrinsic(module, "rcp14.ps.512", ZMM, ZMM, ir.IntType(16))
    return _per_zmm(builder, lambda piece: builder.call(estimate, [piece, piece, EVERY_LANE]), d)


def _quotient_weight(builder: ir.IRBuilder, module: ir.Module, d: ir.Value) -> ir.Value | None:
    """With the AVX-512 forms r, 1 / d within 2**-14 from the estimate (vrcp14ps), for quotients
    n / d taken as q0 = n r and corrected by the caller, q0 + (n - q0 d) r; elsewhere None: q0 is
    the rounded quotient (`_quotient`). vdivps on a zmm occupies the divider ~9 cycles per vector
    (benchmarks/divide_cost.py, Intel Xeon), half a sigmoid's time; sigmoid and gelu took
    0.89-0.94 x as long (benchmarks/vecmath_ab.py). tanh keeps its divide: there the estimate, the
    product and the correction's two FMAs cost more than they saved at width 16 (1.04 x)."""
    return _reciprocal_estimate(builder, module, d) if has_avx512_forms(module, d) else None


def _quotient(builder: ir.IRBuilder, n: ir.Value, d: ir.Value, r: ir.Value | None) -> ir.Value:
    """q0, n / d: n r from the weight `_quotient_weight` gave, or the rounded quotient."""
    return builder.fdiv(n, d) if r is None else builder.fmul(n, r)


def _concatenate(builder: ir.IRBuilder, pieces: list[ir.Value], width: int) -> ir.Value:
    """The first `width` lanes of the pieces (vectors of one type) laid end to end."""
    while len(pieces) > 1:  # pairwise: shufflevector joins two vectors of one type
        if len(pieces) % 2:
            pieces.append(pieces[-1])
        pieces = [builder.shuffle_vector(a, b, _lane_mask(list(range(2 * a.type.count))))
                  for a, b in zip(pieces[::2], pieces[1::2], strict=True)]
    whole = pieces[0]
    if whole.type.count != width:
        whole = builder.shuffle_vector(whole, whole, _lane_mask(list(range(width))))
    return whole


def _lane_mask(lanes: list[int]) -> ir.Constant:
    return vector_constant(ir.VectorType(I32, len(lanes)), [ir.Constant(I32, j) for j in lanes])


def _exp_reduced(builder: ir.IRBuilder, module: ir.Module, x: ir.Value, lo: float | None, hi: float | None,
                 bias: int, table: bool = False, x_low: ir.Value | None = None) -> tuple[ir.Value, ir.Value]:
    """exp(x) = 2**n * y with integer n and y in [0.7, 2) rounded once; exp(x + x_low) where x
    carries a low part much smaller than ln2 / 2 (added to the reduced argument, polynomial form).

    Returns (k, y): k is an integer vector whose low 9 bits hold n + bias (`_pow2_bits(k)` is
    2**(n + bias - 127)). x is clamped to [lo, hi] first; `hi=None` skips the upper clamp for x
    that is never positive, `lo=None` the lower one for x the caller keeps in range.

    Both forms round x to whole steps of ln2 / steps: N = round(steps x / ln2), r = x - N ln2 / steps
    (Cody-Waite: N * LN2_HI / steps is exact, LN2_HI having 9 bits and N at most 12 bits). Polynomial
    form (steps = 1): n = N, y = exp(r) with r in [-ln2/2, ln2/2], Horner from the top
    (y = 1 + r (1 + r (c2 + ...))), so 1 + s is never rounded twice. Table form (`table`, only where
    `has_avx512_forms`; steps = 16): N = 16 n + j, r in [-ln2/32, ln2/32], y = T[j] exp(r) =
    hi + (hi q + lo) with q = exp(r) - 1, rounded once in the last addition.
    """
    steps = 2**EXP_TABLE_BITS if table else 1
    magic = _const(x, ROUND_MAGIC + bias * steps)
    xc = _clamp(builder, x, lo, hi)
    t = fma(builder, module, xc, _const(x, LOG2E * steps), magic)  # low bits: N + bias * steps
    whole_steps = builder.fsub(t, magic)  # N
    r = fma(builder, module, whole_steps, _const(x, -LN2_HI / steps), xc)
    r = fma(builder, module, whole_steps, _const(x, -LN2_LO / steps), r)
    if x_low is not None:
        assert not table, "the table form takes no low part"
        r = builder.fadd(r, x_low)
    bits = builder.bitcast(t, _int_vector(t))
    if not table:
        return bits, _polynomial(builder, module, r, EXP_POLY + (1.0, 1.0))
    q = fma(builder, module, builder.fmul(r, r), _polynomial(builder, module, r, EXP_TABLE_POLY), r)
    t_hi, t_lo = _lookup(builder, module, (EXP_TABLE_HI, EXP_TABLE_LO), bits)  # j: N's low 4 bits
    y = builder.fadd(t_hi, fma(builder, module, t_hi, q, t_lo))
    return builder.lshr(bits, _int_const(x, EXP_TABLE_BITS)), y


def emit_exp(builder: ir.IRBuilder, module: ir.Module, x: ir.Value) -> ir.Value:
    """exp(x) lane-wise: x = n ln2 + r, exp(r) by polynomial, scaled by 2**n (two multiplies, or
    one vscalefps with the AVX-512 forms)."""
    return emit_exp_of_pair(builder, module, x, None)


def emit_exp_of_pair(builder: ir.IRBuilder, module: ir.Module, x: ir.Value, x_low: ir.Value | None) -> ir.Value:
    """exp(x + x_low) for a float pair (x_low None: exp(x)). x_low is dropped where exp(x) is +0
    or inf (below EXP_ZERO_BELOW, above EXP_HI): a huge x carries a huge low part.

    n spans [-150, 128]: two normal powers of two 2**n1 * 2**n2 = 2**n keep y * 2**n1 exact, so
    overflow gives inf and a result below the normals would round once. (Float multiplies, not
    integer adds into y's exponent: those would turn a NaN into a number.) With the AVX-512 forms
    one vscalefps does the same, rounding once: seven vector operations fewer, exp 0.71-0.73 x as
    long per element (benchmarks/vecmath_ab.py --baseline a4fced3), the same bits (tested).
    Lanes below EXP_ZERO_BELOW are +0 without underflowing; a vector with a lane below
    TINY_BELOW takes the lifted branch (`_unless_tiny`), whose subnormals are the ones the scaling
    would round into: y times a power of two rounded once, to the same bits (tested)."""
    tiny, scaled = exp_parts(builder, module, x, x_low)
    args = (x,) if x_low is None else (x, x_low)
    return _unless_tiny(builder, tiny, lambda: scaled(None), "exp" if x_low is None else "exp_pair", _exp_lifted, *args)


def _exp_lifted(builder: ir.IRBuilder, module: ir.Module, x: ir.Value, x_low: ir.Value | None = None) -> ir.Value:
    """exp(x + x_low), the lanes below TINY_BELOW lifted and their results built by `_unlift`."""
    tiny, value = exp_lifted(builder, module, x, TINY_BELOW, x_low)
    return _unlift(builder, module, value, tiny)


def emit_exp_flushed(builder: ir.IRBuilder, module: ir.Module, x: ir.Value, zero_below: float | ir.Value) -> ir.Value:
    """exp(x) with the lanes below `zero_below` taken as +0: at least TINY_BELOW, so no subnormal
    results and no lifted branch either (a number, or a vector of x's type known at run time that
    the caller keeps there). For values a caller can show to be negligible there (the fused
    attention's probabilities) or computes again (softmax's careful rows: `elementwise._Row`)."""
    assert isinstance(zero_below, ir.Value) or zero_below >= TINY_BELOW, "below TINY_BELOW exp has subnormal results"
    return emit_exp_unlifted(builder, module, x, zero_below)


def emit_exp_unlifted(builder: ir.IRBuilder, module: ir.Module, x: ir.Value,
                      zero_below: float | ir.Value = EXP_ZERO_BELOW) -> ir.Value:
    """exp(x), +0 below `zero_below`, without the lifted branch: a result in the subnormals is
    rounded into them, with the assists that costs (`emit_exp` avoids them)."""
    return exp_parts(builder, module, x, zero_below=zero_below)[1](None)


def exp_parts(builder: ir.IRBuilder, module: ir.Module, x: ir.Value, x_low: ir.Value | None = None,
              zero_below: float | ir.Value = EXP_ZERO_BELOW, tiny_below: float = TINY_BELOW):
    """(tiny, scaled) for exp(x + x_low) (`emit_exp_of_pair`), for callers that branch on small
    results themselves (vecerf's gelu, softmax): `tiny` marks the lanes from `zero_below` up to
    `tiny_below` (at least TINY_BELOW, at most 0: lifted, exp stays below 2**LIFT_BITS), and
    `scaled(lifted)` emits exp times 2**LIFT_BITS in the `lifted` lanes (None: none), +0 below
    `zero_below` (a number, or a vector of x's type)."""
    assert TINY_BELOW <= tiny_below <= 0.0, tiny_below
    zero = builder.fcmp_ordered("<", x, zero_below if isinstance(zero_below, ir.Value) else _const(x, zero_below))
    if x_low is not None:
        beyond = builder.or_(zero, builder.fcmp_ordered(">", x, _const(x, EXP_HI)))
        x_low = builder.select(beyond, _const(x, 0.0), x_low)
    x = builder.select(zero, _const(x, 0.0), x)
    k, y = _exp_reduced(builder, module, x, None, EXP_HI, 0, x_low=x_low)  # x >= zero_below (>= -105) or nan

    def scaled(lifted: ir.Value | None) -> ir.Value:
        if has_avx512_forms(module, x):  # n as a float: the subtraction _exp_reduced made
            n = builder.fsub(builder.bitcast(k, x.type), _const(x, ROUND_MAGIC))
            if lifted is not None:
                n = builder.fadd(n, builder.select(lifted, _const(x, LIFT_BITS), _const(x, 0.0)))
            value = _scale(builder, module, y, n)
        else:
            n = builder.sub(k, _int_const(x, ROUND_MAGIC_BITS))
            if lifted is not None:
                n = builder.add(n, builder.select(lifted, _int_const(x, LIFT_BITS), _int_const(x, 0)))
            n1 = builder.ashr(n, _int_const(x, 1))
            p1 = _pow2_bits(builder, builder.add(n1, _int_const(x, 127)))
            p2 = _pow2_bits(builder, builder.add(builder.sub(n, n1), _int_const(x, 127)))
            value = builder.fmul(builder.fmul(y, p1), p2)
        return builder.select(zero, _const(x, 0.0), value)

    return builder.fcmp_ordered("<", x, _const(x, tiny_below)), scaled


def exp_lifted(builder: ir.IRBuilder, module: ir.Module, x: ir.Value, below: float,
               x_low: ir.Value | None = None) -> tuple[ir.Value, ir.Value]:
    """(tiny, value): `tiny` marks the lanes from EXP_ZERO_BELOW up to `below`, and `value` is
    exp(x + x_low), times 2**LIFT_BITS in those lanes (a normal float there). For exp's lifted
    branch (`_exp_lifted`), and for a caller that multiplies exp(x) by a factor <= 1 it learns later
    (softmax's 1 / sum), where the product could fall below the normals: `scale_lifted` multiplies
    and undoes the lift."""
    tiny, scaled = exp_parts(builder, module, x, x_low, tiny_below=below)
    return tiny, scaled(tiny)


def scale_lifted(builder: ir.IRBuilder, module: ir.Module, value: ir.Value, factor: ir.Value,
                 tiny: ir.Value) -> ir.Value:
    """`value` (`exp_lifted`) times `factor`, the `tiny` lanes divided by 2**LIFT_BITS again and
    rounded once more (`_unlift`: a subnormal result built from bits); the other lanes' product as
    it is. factor must be positive (or NaN) and keep the lifted lanes' product normal (at least
    2**(LIFT_BITS - 150) times factor)."""
    return _unlift(builder, module, builder.fmul(value, factor), tiny)


def emit_log(builder: ir.IRBuilder, module: ir.Module, x: ir.Value) -> ir.Value:
    """log(x) lane-wise: x = 2**e * m with m in [sqrt(1/2), sqrt(2)), log(m) = log(1 + f) by the
    Cephes polynomial (f = m - 1 is exact), plus e * ln 2 in the Cody-Waite split. Subnormal x are
    scaled by 2**23 first. log(+-0) = -inf, log(x < 0) = nan, log(inf) = inf, nan stays nan."""
    ivt = _int_vector(x)
    tiny = builder.fcmp_ordered("<", x, _const(x, MIN_NORMAL))
    xs = builder.select(tiny, builder.fmul(x, _const(x, 2.0**23)), x)
    bits = builder.bitcast(xs, ivt)
    # frexp: xs = m * 2**e with m in [0.5, 1)
    e = builder.sub(builder.lshr(bits, _int_const(x, 23)), _int_const(x, 126))
    e = builder.sub(e, builder.select(tiny, _int_const(x, 23), _int_const(x, 0)))
    m = builder.bitcast(builder.or_(builder.and_(bits, _int_const(x, 0x007FFFFF)), _int_const(x, 0x3F000000)),
                        x.type)
    low = builder.fcmp_ordered("<", m, _const(x, SQRT_HALF))
    e = builder.sub(e, builder.select(low, _int_const(x, 1), _int_const(x, 0)))
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


def emit_sqrt(builder: ir.IRBuilder, module: ir.Module, x: ir.Value) -> ir.Value:
    """IEEE square root (one correctly rounded vsqrtps): sqrt(-0) = -0, sqrt(x < 0) = nan."""
    return _call(builder, module, "sqrt", x)


def emit_abs(builder: ir.IRBuilder, module: ir.Module, x: ir.Value) -> ir.Value:
    return _call(builder, module, "fabs", x)


def emit_relu(builder: ir.IRBuilder, module: ir.Module, x: ir.Value) -> ir.Value:
    """np.maximum(x, 0) = x if (x > 0 or x is nan) else +0; one unordered compare and a select."""
    zero = _const(x, 0.0)
    return builder.select(builder.fcmp_unordered(">", x, zero), x, zero)


def emit_extremum(builder: ir.IRBuilder, x: ir.Value, y: ir.Value, *, larger: bool) -> ir.Value:
    """np.maximum / np.minimum: NaN if either is NaN, else the larger (smaller) one, y where the two
    compare equal (so maximum(-0, +0) is +0 and maximum(+0, -0) is -0, as NumPy gives). The first
    select is vmaxps / vminps itself (y unless x wins: y also where either is NaN); the second puts a
    NaN x back."""
    if _is_constant_without_nan(y) and builder.module.triple.startswith("aarch64"):
        # one select, x where it wins or is NaN: the same values, but there the pair of selects against
        # a constant +-0 became fmaxnm / fminnm, which order -0 below +0 (NumPy's maximum(+0, -0.0) is
        # -0; the aarch64 export gave +0). Not elsewhere: for wasm32 the one select became f32x4.max,
        # with the same fault, and the pair is kept there (the x86 and Cortex-M code is right both ways)
        return builder.select(builder.fcmp_unordered(">" if larger else "<", x, y), x, y)
    wins = builder.fcmp_ordered(">" if larger else "<", x, y)
    picked = builder.select(wins, x, y)
    return builder.select(builder.fcmp_unordered("uno", x, x), x, picked)


def _is_constant_without_nan(y: ir.Value) -> bool:
    """Is y a constant (a number, or a vector of them) none of whose values is NaN?"""
    if not isinstance(y, ir.Constant):
        return False
    value = y.constant
    values = value if isinstance(value, list) else [value]
    numbers = [v.constant if isinstance(v, ir.Constant) else v for v in values]
    return all(isinstance(v, (int, float)) and not math.isnan(v) for v in numbers)


# fcmp predicates of the comparison ops: ordered (false where either is NaN), but not_equal, which
# NumPy makes true there
PREDICATES = {"greater": ">", "greater_equal": ">=", "less": "<", "less_equal": "<=", "equal": "==", "not_equal": "!="}


def emit_comparison(builder: ir.IRBuilder, name: str, x: ir.Value, y: ir.Value) -> ir.Value:
    """1.0 where x <op> y holds, else 0.0 (NumPy's comparison as float)."""
    compare = builder.fcmp_unordered if name == "not_equal" else builder.fcmp_ordered
    return builder.select(compare(PREDICATES[name], x, y), _const(x, 1.0), _const(x, 0.0))


def emit_where(builder: ir.IRBuilder, cond: ir.Value, x: ir.Value, y: ir.Value) -> ir.Value:
    """x where cond != 0 (unordered: a NaN cond picks x, as NumPy's `cond != 0` is True for NaN), else y."""
    return builder.select(builder.fcmp_unordered("!=", cond, _const(cond, 0.0)), x, y)


def _sigmoid_quotient(builder: ir.IRBuilder, module: ir.Module, x: ir.Value, magic: int):
    """sigmoid(x) = q0 + residual / den, all but the last rounding done exactly.

    With e = exp(-|x|) <= 1, sigmoid is 1 / (1 + e) for x >= 0 and e / (1 + e) for x < 0. Rounded
    plainly in float32 (e, 1 + e, the quotient) that is up to 2.5 ulp. Here the quotient q0's
    residual against the exact 1 + e, num - q0 S - q0 e, comes from two FMAs: the first is exact
    (S (1 - q0) for x >= 0, S (e - q0) for x < 0, differences of floats within a factor 2 of each
    other as q0 lies in [1/2, 1] resp. [e/2, e], give or take q0's own error), the second rounds
    once. So q0 + residual / den is off only by e's own error (< 1 ulp of e, damped by 1 / (1 + e))
    and by the error of the weight 1 / den times the residual; the rounding error of den = 1 + e
    never enters (no Fast2Sum: two additions fewer than splitting den exactly). Everything is
    scaled by S = 2**SIGMOID_SCALE (num = e S or S, den = S + e S), so e S is a normal float even
    where sigmoid(x) is subnormal, and 1 / den = 2**-32 / (1 + e).

    q0 is the rounded quotient, or with the AVX-512 forms num r from the estimate r of 1 / den
    (`_quotient_weight`). Returns (-|x|, x < 0, quotient): `quotient(lifted, dropped, zeroed)` emits
    (q0, residual, inverse) with num, and so q0 and the residual, times 2**LIFT_BITS in the `lifted`
    lanes (x < 0 ones: all normal then) and 0 in the `zeroed` ones, the residual's term q0 e left out in
    the `dropped` ones (where it is negligible and may underflow), inverse the weight 1 / den: r
    (within 2**-14: the residual is then up to 2**-14 of q0, so the sum is within 2**-28), else from
    den's bits, `magic - bits(den)` (the residual is then within half an ulp of q0, and a weight
    within 12.5 % is enough). The exp, den and r are emitted once, before the caller's
    `_unless_tiny` branch.
    """
    scale = _const(x, 2.0**SIGMOID_SCALE)
    neg_abs = builder.fneg(_call(builder, module, "fabs", x))
    k, y = _exp_reduced(builder, module, neg_abs, EXP_NONPOS_LO, None, 127 + SIGMOID_SCALE, has_avx512_forms(module, x))
    e = builder.fmul(y, _pow2_bits(builder, k))  # exp(-|x|) * S, exact
    den = builder.fadd(scale, e)
    negative = builder.fcmp_ordered("<", x, _const(x, 0.0))
    num = builder.select(negative, e, scale)
    r = _quotient_weight(builder, module, den)
    inverse = r if r is not None else builder.bitcast(
        builder.sub(_int_const(x, magic), builder.bitcast(den, _int_vector(x))), x.type)

    def quotient(lifted: ir.Value | None, dropped: ir.Value | None,
                 zeroed: ir.Value | None = None) -> tuple[ir.Value, ir.Value, ir.Value]:
        lifted_num = num if lifted is None else builder.fmul(num, _lift_factor(builder, lifted, x, zeroed))
        q0 = _quotient(builder, lifted_num, den, r)
        neg_q0 = builder.fneg(q0)
        residual = fma(builder, module, neg_q0, scale, lifted_num)
        if dropped is None:
            return q0, fma(builder, module, neg_q0, e, residual), inverse
        # a zero factor, not a select after the FMA: that FMA would still round the dropped lanes
        return q0, fma(builder, module, neg_q0, builder.select(dropped, _const(x, 0.0), e), residual), inverse

    return neg_abs, negative, quotient


def emit_sigmoid(builder: ir.IRBuilder, module: ir.Module, x: ir.Value) -> ir.Value:
    """Overflow-safe sigmoid rounded once at the end (see `_sigmoid_quotient`); a vector with a
    lane below SIGMOID_LIFT_BELOW takes the lifted branch (`_unless_tiny`, `_sigmoid_lifted`)."""
    _, _, quotient = _sigmoid_quotient(builder, module, x, RECIPROCAL_MAGIC)
    tiny = builder.fcmp_ordered("<", x, _const(x, SIGMOID_LIFT_BELOW))
    return _unless_tiny(builder, tiny, lambda: _sigmoid_sum(builder, module, *quotient(None, None)),
                        "sigmoid", _sigmoid_lifted, x)


def _sigmoid_sum(builder: ir.IRBuilder, module: ir.Module, q0: ir.Value, residual: ir.Value,
                 inverse: ir.Value) -> ir.Value:
    return fma(builder, module, residual, inverse, q0)


def _sigmoid_lifted(builder: ir.IRBuilder, module: ir.Module, x: ir.Value) -> ir.Value:
    """sigmoid with the lanes below SIGMOID_LIFT_BELOW lifted, their term q0 e dropped."""
    _, _, quotient = _sigmoid_quotient(builder, module, x, RECIPROCAL_MAGIC)
    tiny = builder.fcmp_ordered("<", x, _const(x, SIGMOID_LIFT_BELOW))
    return _unlift(builder, module, _sigmoid_sum(builder, module, *quotient(tiny, tiny)), tiny)


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

    k, y = _exp_reduced(builder, module, builder.fmul(a, _const(x, -2.0)), TANH_EXP_LO, None, 127,
                        has_avx512_forms(module, x))
    e = builder.fmul(y, _pow2_bits(builder, k))
    one = _const(x, 1.0)
    large = builder.fdiv(builder.fsub(one, e), builder.fadd(one, e))

    y = builder.select(builder.fcmp_ordered("<", a, _const(x, TANH_SMALL)), small, large)
    return _call(builder, module, "copysign", y, x)


def emit_gelu(builder: ir.IRBuilder, module: ir.Module, x: ir.Value) -> ir.Value:
    """x * sigmoid(fl32(1.702 x)), the NumPy float32 formula (so gelu(-inf) is nan), with the
    sigmoid's correction folded into one FMA: x * q0 + x * residual / den rounds once.

    A vector with a lane beyond +-GELU_LIFT_ABOVE / 1.702 takes the lifted branch (`_unless_tiny`):
    x < 0 lanes with num, q0 and the residual times 2**LIFT_BITS (the lanes below the clamp with
    num 0), all lanes without the residual's negligible term q0 e. The weight 1 / den is exact where
    den = 2**32 (1 + e) rounds to 2**32: the estimate (vrcp14ps) is exact for powers of two, as are
    den's bits taken from RECIPROCAL_EXACT_POW2 (within 12.5 % in between)."""
    parts = _gelu_parts(builder, module, x)
    return _unless_tiny(builder, parts[0], lambda: _gelu_finish(builder, module, x, parts, False),
                        "gelu", _gelu_lifted, x)


def _gelu_parts(builder: ir.IRBuilder, module: ir.Module, x: ir.Value):
    """(tiny, -|1.702 x|, 1.702 x < 0, quotient, x capped at the largest float) for `_gelu_finish`."""
    neg_abs, negative, quotient = _sigmoid_quotient(builder, module, builder.fmul(x, _const(x, GELU_ALPHA)),
                                                    RECIPROCAL_EXACT_POW2)
    tiny = builder.fcmp_ordered("<", neg_abs, _const(x, -GELU_LIFT_ABOVE))
    # x * residual is 0 * inf = nan at x = +inf, where the residual is 0: use the largest float
    # there, one vminps (at -inf, q0 = 0 makes the result nan anyway, as the formula does; a nan x
    # gives nan through x * q0 whatever the correction is).
    big = _const(x, FLOAT32_MAX)
    return tiny, neg_abs, negative, quotient, builder.select(builder.fcmp_ordered("<", x, big), x, big)


def _gelu_finish(builder: ir.IRBuilder, module: ir.Module, x: ir.Value, parts, lifted: bool) -> ir.Value:
    """gelu from `_gelu_parts`; `lifted`: the x < 0 lanes of `tiny` times 2**LIFT_BITS (num 0
    below the clamp), every lane of `tiny` without the term q0 e, the result unlifted."""
    tiny, neg_abs, negative, quotient, finite_x = parts
    up = builder.and_(tiny, negative) if lifted else None  # gelu(x) for x > 0 is x times at most 1: not lifted
    if up is None:
        q0, residual, inv_den = quotient(None, None)
    else:
        below_clamp = builder.and_(up, builder.fcmp_ordered("<", neg_abs, _const(x, EXP_NONPOS_LO)))
        q0, residual, inv_den = quotient(up, tiny, below_clamp)
    correction = builder.fmul(residual, builder.fmul(finite_x, inv_den))
    if for_triple(module.triple).fused_multiply_add:
        value = fma(builder, module, x, q0, correction)
    else:  # x * q0 + correction rounded once all the same: 2.2 ulp with two roundings
        hi, lo = two_product(builder, module, x, q0)
        value = builder.fadd(hi, builder.fadd(lo, correction))
    return value if up is None else _unlift(builder, module, value, up)


def _gelu_lifted(builder: ir.IRBuilder, module: ir.Module, x: ir.Value) -> ir.Value:
    return _gelu_finish(builder, module, x, _gelu_parts(builder, module, x), True)
