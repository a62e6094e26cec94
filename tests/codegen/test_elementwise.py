"""Elementwise and softmax kernels against float64 NumPy references."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jit_util import UNDERFLOW_OR_DENORMAL, c_function, f32_ptr, jit, mxcsr_functions, new_module

from tinycomp.codegen import vecmath
from tinycomp.codegen.elementwise import KINDS, emit_elementwise, emit_softmax, lift_below
from tinycomp.codegen.reduce import emit_softmax_axis
from tinycomp.codegen.target import host
from tinycomp.codegen.vector_ops import VECTOR_OPS
from tinycomp.ir.ops import ELEMENTWISE, OPS

ROW_SIZES = (1, 3, 15, 16, 17, 100, 257, 1024)
BATCHES = (0, 1, 7)
GUARD = 5  # extra elements after `out` that a kernel must never write
SENTINEL = np.float32(-12345.0)


# ---- float64 references: the registry's NumPy formulas, run in float64 -----------------------

def reference(expr, operands):
    op, args = expr[0], expr[1:]
    if op == "in":
        return operands[args[0]]
    if op == "const":
        return np.float64(np.float32(args[0]))
    return OPS[op].ref(*[reference(a, operands) for a in args])


def every_op_alone() -> dict[str, tuple]:
    """{name: (expr, kinds)}: each elementwise op of the registry on full operands; an operand its
    emitter needs as a number (pow's exponent) is a constant, several of them for pow."""
    exprs = {}
    for op in sorted(ELEMENTWISE):
        constants = VECTOR_OPS[op].constants or {}
        for c in (2.0, -1.5, 0.5, 3.0) if constants else (None,):
            args = [("const", c) if i in constants else ("in", i) for i in range(OPS[op].arity)]
            kinds = tuple("full" for a in args if a[0] == "in")
            exprs[f"{op}_{c}"] = ((op, *args), kinds)
    return exprs


def broadcast(kind: str, a: np.ndarray, m: int, r: int) -> np.ndarray:
    """The M x R float64 view of an operand of `kind`."""
    shape = {"full": (m, r), "row": (1, r), "col": (m, 1), "scalar": (1, 1)}[kind]
    return np.broadcast_to(a.reshape(shape).astype(np.float64), (m, r))


def operand(kind: str, m: int, r: int, rng, positive: bool = False) -> np.ndarray:
    size = {"full": m * r, "row": r, "col": m, "scalar": 1}[kind]
    a = rng.uniform(0.5, 2.0, size) * (1 if positive else rng.choice([-1.0, 1.0], size))
    return a.astype(np.float32)


# ---- running kernels ------------------------------------------------------------------------

def run(address: int, m: int, r: int, inputs: list[np.ndarray]) -> np.ndarray:
    """Call a kernel on M x R output with guard elements; check the guard is untouched."""
    out = np.full(m * r + GUARD, SENTINEL, np.float32)
    args = [np.ascontiguousarray(a) if a.size else np.zeros(1, np.float32) for a in inputs]
    c_function(address, 1 + len(args))(m, f32_ptr(out), *(f32_ptr(a) for a in args))
    assert (out[m * r:] == SENTINEL).all(), "kernel wrote past the end of its output"
    return out[: m * r].reshape(m, r)


def build(kernels: dict[str, tuple]):
    """JIT {name: (expr, kinds, R, width)} in one module; returns (engine, {name: address})."""
    module = new_module()
    for name, (expr, kinds, r, width) in kernels.items():
        emit_elementwise(module, name, expr, kinds, r, width)
    return jit(module, *kernels)


def check(address, expr, kinds, m, r, rng, rtol=2e-6, atol=1e-30):
    positive = expr[0] == "div"
    inputs = [operand(k, m, r, rng, positive=positive and i == 1) for i, k in enumerate(kinds)]
    got = run(address, m, r, inputs)
    want = reference(expr, [broadcast(k, a, m, r) for k, a in zip(kinds, inputs, strict=True)])
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


# ---- elementwise tests ----------------------------------------------------------------------

X, Y = ("in", 0), ("in", 1)
CHAIN = ("gelu", ("sub", ("div", ("mul", X, Y), ("add", ("in", 2), ("const", 3.0))),
                  ("tanh", ("neg", X))))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the float64 reference of log/sqrt of negatives
@pytest.mark.parametrize("width", (16, 4, 1))
def test_every_op_alone(width):
    exprs = every_op_alone()
    engine, addr = build({n: (e, k, 37, width) for n, (e, k) in exprs.items()})
    rng = np.random.default_rng(0)
    for name, (expr, kinds) in exprs.items():
        check(addr[name], expr, kinds, 7, 37, rng)


@pytest.mark.parametrize("kind", KINDS)
def test_operand_kinds_broadcast(kind):
    exprs = {"left": ("sub", X, Y), "right": ("sub", Y, X), "both": ("mul", X, X)}
    kinds = {"left": (kind, "full"), "right": ("full", kind), "both": (kind, kind)}
    engine, addr = build({n: (exprs[n], kinds[n], 19, 16) for n in exprs})
    rng = np.random.default_rng(1)
    for name in exprs:
        for m in BATCHES:
            check(addr[name], exprs[name], kinds[name], m, 19, rng)


@pytest.mark.parametrize("kinds", [("full", "row", "col"), ("full", "scalar", "full")],
                         ids=["per-row", "flat"])
def test_fused_chain_every_row_size_and_batch(kinds):
    engine, addr = build({f"chain_{r}_{w}": (CHAIN, kinds, r, w) for r in ROW_SIZES for w in (16, 8)})
    rng = np.random.default_rng(2)
    for r in ROW_SIZES:
        for w in (16, 8):
            for m in BATCHES:
                # atol: the sub before gelu can cancel to near 0, where float32 rounding is absolute
                check(addr[f"chain_{r}_{w}"], CHAIN, kinds, m, r, rng, rtol=1e-5, atol=1e-6)


def test_nan_and_inf_follow_numpy():
    exprs = {op: ((op, X), ("full",)) for op in ("relu", "sigmoid", "tanh", "exp", "neg")}
    exprs["div"] = (("div", X, Y), ("full", "full"))
    engine, addr = build({n: (e, k, 6, 16) for n, (e, k) in exprs.items()})
    x = np.array([np.nan, np.inf, -np.inf, 1e4, -1e4, 0.0], np.float32)
    y = np.array([1.0, 2.0, 3.0, 0.0, 0.0, 0.0], np.float32)
    with np.errstate(all="ignore"):
        for name, (expr, kinds) in exprs.items():
            got = run(addr[name], 1, 6, [x, y][: len(kinds)])
            want = reference(expr, [x.astype(np.float64), y.astype(np.float64)]).astype(np.float32)
            np.testing.assert_array_equal(got[0], want)


def test_unknown_op_or_kind_fails_loudly():
    module = new_module()
    with pytest.raises(NotImplementedError, match="softplus"):
        emit_elementwise(module, "k1", ("softplus", X), ("full",), 4, 16)
    with pytest.raises(NotImplementedError, match="constant number as the exponent"):
        emit_elementwise(module, "k4", ("pow", X, ("in", 1)), ("full", "full"), 4, 16)
    with pytest.raises(NotImplementedError, match="diag"):
        emit_elementwise(module, "k2", ("neg", X), ("diag",), 4, 16)
    with pytest.raises(ValueError):
        emit_elementwise(module, "k3", ("add", X), ("full",), 4, 16)
    assert "k1" not in module.globals and "k2" not in module.globals


# ---- softmax --------------------------------------------------------------------------------

def softmax_reference(x: np.ndarray) -> np.ndarray:
    """ir/ops.py softmax in float64: shift by the row max, all -inf rows give zeros."""
    x = x.astype(np.float64)
    m = np.max(x, axis=-1, keepdims=True)
    all_neg_inf = np.isneginf(m)
    with np.errstate(invalid="ignore"):
        e = np.exp(x - np.where(all_neg_inf, 0, m))
        return e / np.where(all_neg_inf, 1, e.sum(axis=-1, keepdims=True))


@pytest.fixture(scope="module")
def softmax_kernels():
    module = new_module()
    for r in ROW_SIZES:
        for w in (16, 1):
            emit_softmax(module, f"softmax_{r}_{w}", r, w)
    engine, addr = jit(module, *(f"softmax_{r}_{w}" for r in ROW_SIZES for w in (16, 1)))
    yield engine, addr


@pytest.mark.parametrize("width", (16, 1))
@pytest.mark.parametrize("r", ROW_SIZES)
def test_softmax_random_rows(softmax_kernels, r, width):
    rng = np.random.default_rng(r)
    for m in BATCHES:
        x = (rng.standard_normal((m, r)) * 5).astype(np.float32)
        got = run(softmax_kernels[1][f"softmax_{r}_{width}"], m, r, [x.ravel()])
        np.testing.assert_allclose(got, softmax_reference(x), rtol=1e-5, atol=1e-30)
        if m:
            np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("r", (3, 17, 100))
def test_softmax_edge_rows(softmax_kernels, r):
    rows = np.zeros((7, r), np.float32)
    rows[0, 1] = np.nan                     # nan anywhere -> all nan
    rows[1, 2] = np.inf                     # +inf -> inf - inf -> all nan
    rows[2, :] = -np.inf                    # all -inf -> zeros
    rows[3, :] = -np.inf
    rows[3, -1] = 0.5                       # one finite value among -inf -> one-hot
    rows[4, :] = np.linspace(-1e4, 1e4, r)  # huge logits stay finite
    rows[5, :] = -np.inf
    rows[5, 0] = np.nan                     # nan beats an otherwise all -inf row
    rows[6, :] = 1e4                        # equal huge logits -> uniform
    got = run(softmax_kernels[1][f"softmax_{r}_16"], 7, r, [rows.ravel()])
    want = softmax_reference(rows)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-30)  # nan positions must match
    assert np.isnan(got[[0, 1, 5]]).all()
    assert (got[2] == 0).all() and got[3, -1] == 1.0


def wide_logit_rows(r: int, rng) -> np.ndarray:
    """Rows whose softmax has results below the normals, next to the special rows that must come
    out as before: logits of std 30; one logit at -95; -1e9 masks and -inf masks beside logits
    at -95; NaN, +inf or all -inf among them."""
    rows = (rng.standard_normal((9, r)) * 30).astype(np.float32)
    rows[1] = 0.0
    rows[1, r // 2] = -95.0
    rows[2, ::2] = -1e9
    rows[2, 1::4] = -95.0
    rows[3, ::3] = -np.inf
    rows[4, 0] = np.nan
    rows[5, -1] = np.inf
    rows[6] = -np.inf
    rows[7] = np.float32(vecmath.EXP_ZERO_BELOW - 0.5)  # every exp exactly 0 after the shift, but the max's
    rows[7, 0] = 0.0
    rows[8] = np.linspace(0.0, -110.0, r, dtype=np.float32)  # through the whole lifted range
    return rows


def run_with_flags(module, m: int, r: int, inputs: list[np.ndarray]) -> tuple[np.ndarray, int]:
    """`run` the module's kernel `softmax`, and the MXCSR exception flags the call raised."""
    mxcsr_functions(module)
    engine, addr = jit(module, "softmax", "clear_fp_flags", "fp_flags")
    ctypes.CFUNCTYPE(None)(addr["clear_fp_flags"])()
    got = run(addr["softmax"], m, r, inputs)
    flags = ctypes.CFUNCTYPE(ctypes.c_int32)(addr["fp_flags"])()
    del engine
    return got, flags


def assert_softmax_close(got: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """`got` against the float64 softmax of the float32 shift x - max (which the kernel also rounds):
    normal results within 1e-5 (NaN where float64 has it), subnormal ones within 3 * 2**-149.
    Returns where the reference is below the normals (rows all -inf count as 0 there)."""
    with np.errstate(invalid="ignore"):
        shifted = (rows - np.max(np.where(np.isnan(rows), -np.inf, rows), axis=1, keepdims=True)).astype(np.float64)
    want = softmax_reference(shifted)  # its own shift is 0, or -inf for a row all -inf
    want[np.isneginf(rows).all(axis=1)] = 0.0
    tiny = np.abs(want) < 2.0**-126
    np.testing.assert_allclose(got[~tiny], want[~tiny], rtol=1e-5)
    np.testing.assert_allclose(got[tiny], want[tiny], rtol=0, atol=3 * 2.0**-149)
    return tiny


def check_wide_softmax(got: np.ndarray, rows: np.ndarray) -> None:
    """`got`, the softmax of `wide_logit_rows` (`test_softmax_results_below_...`)."""
    tiny = assert_softmax_close(got, rows)
    assert tiny[[0, 1, 2, 3, 8]].any(axis=1).all() and (got[tiny] > 0).sum() >= 3  # the care has work to do
    assert np.isnan(got[[4, 5]]).all() and (got[6] == 0).all() and got[7, 0] == 1 and (got[7, 1:] == 0).all()


X86 = host().triple.startswith("x86_64")


@pytest.mark.skipif(not X86, reason="reads the x86 MXCSR")
@pytest.mark.parametrize("portable", (False, True))
@pytest.mark.parametrize("width", (16, 1))
@pytest.mark.parametrize("r", (17, 64, 100, 1024))
def test_softmax_results_below_the_normals_without_assists(r, width, portable, monkeypatch):
    """Where e / sum falls below the normals (`elementwise._Row`), no operation of the kernel rounds
    into the subnormals or reads one (on Intel cores each would cost a microcode assist; MXCSR's
    flags stay clear), in registers (r <= 64) and in three passes; the subnormal results are within
    3 * 2**-149 of the float64 softmax of the float32 shift x - max (which the kernel also rounds),
    the normal ones as close as the other softmax tests ask; NaN and -inf rows as before. In both
    forms of the vector math (`vecmath.AVX512_FORMS`)."""
    monkeypatch.setattr(vecmath, "AVX512_FORMS", not portable)
    module = new_module("softmax_mxcsr")
    emit_softmax(module, "softmax", r, width)
    rows = wide_logit_rows(r, np.random.default_rng(r))
    got, flags = run_with_flags(module, len(rows), r, [rows.ravel()])
    assert flags & UNDERFLOW_OR_DENORMAL == 0, f"MXCSR flags {flags:#x}"
    check_wide_softmax(got, rows)


@pytest.mark.skipif(not X86, reason="reads the x86 MXCSR")
@pytest.mark.parametrize("width", (16, 4))
@pytest.mark.parametrize("axis", (17, 300))
def test_softmax_along_an_axis_below_the_normals_without_assists(axis, width):
    """The same for softmax along the middle axis of (outer, axis, inner) samples
    (`reduce.emit_softmax_axis`), each `wide_logit_rows` row down one lane of `inner`."""
    rows = wide_logit_rows(axis, np.random.default_rng(axis))
    inner, outer = len(rows), 2
    x = np.stack([rows.T, rows.T[::-1] * np.float32(0.5)])  # (outer, axis, inner); the second half as wide
    module = new_module("softmax_axis_mxcsr")
    emit_softmax_axis(module, "softmax", outer, axis, inner, width)
    got, flags = run_with_flags(module, 1, x.size, [x.ravel()])
    assert flags & UNDERFLOW_OR_DENORMAL == 0, f"MXCSR flags {flags:#x}"
    check_wide_softmax(got.reshape(x.shape)[0].T, rows)


def test_lift_below_keeps_every_quotient_normal():
    """Above `lift_below(n)`, exp(x - max) divided by a sum of n such exps is a normal float32."""
    for n in (1, 17, 1024, 2**20):
        e = np.exp(np.float64(np.float32(lift_below(n))))
        assert np.float32(e) / np.float32(n * (1 + 2.0**-20)) >= 2.0**-126


_FLAGGED_SOFTMAX: dict[tuple[int, int], tuple] = {}


def flagged_softmax(r: int, width: int):
    """(engine, address of `softmax`, clear, read): emit_softmax with MXCSR helpers, one per (r, width)."""
    if (r, width) not in _FLAGGED_SOFTMAX:
        module = new_module(f"softmax_{r}_{width}")
        emit_softmax(module, "softmax", r, width)
        mxcsr_functions(module)
        engine, addr = jit(module, "softmax", "clear_fp_flags", "fp_flags")
        _FLAGGED_SOFTMAX[(r, width)] = (engine, addr["softmax"], ctypes.CFUNCTYPE(None)(addr["clear_fp_flags"]),
                                        ctypes.CFUNCTYPE(ctypes.c_int32)(addr["fp_flags"]))
    return _FLAGGED_SOFTMAX[(r, width)]


@pytest.mark.skipif(not X86, reason="reads the x86 MXCSR")
@settings(max_examples=60, deadline=None)
@given(st.one_of(st.integers(1, 300), st.sampled_from([1024, 1500])), st.sampled_from([16, 4]),
       st.sampled_from([1.0, 10.0, 30.0, 100.0]), st.sampled_from([None, -1e9, -np.inf]),
       st.floats(0.0, 0.9), st.integers(0, 2**16))
def test_random_softmax_rows_match_float64_without_assists(r, width, scale, mask, masked, seed):
    """Random rows (sizes in registers and in three passes, logits of std 1-100, some masked with
    -1e9 or -inf): results as `test_softmax_results_below_the_normals_without_assists` asks, and
    no operation rounds into the subnormals or reads one, whether a row takes the careful steps or not."""
    rng = np.random.default_rng(seed)
    rows = (rng.standard_normal((5, r)) * scale).astype(np.float32)
    if mask is not None:
        rows[rng.random(rows.shape) < masked] = np.float32(mask)
    rows[:, rng.integers(0, r)] = np.float32(scale)  # one unmasked logit per row: no all -inf row
    _, address, clear, read = flagged_softmax(r, width)
    clear()
    got = run(address, len(rows), r, [rows.ravel()])
    assert read() & UNDERFLOW_OR_DENORMAL == 0
    assert_softmax_close(got, rows)
