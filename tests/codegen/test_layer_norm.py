"""The `layer_norm` kernel (codegen/layer_norm.py) through `tc.compile`: compiled against the eager
LayerNorm and a float64 NumPy reference written from the formula, at widths 1, 3, 17 (a masked
tail), 128, 512 and 1000 (blocked sums), batch 0, 1 and 7, with NaN and infinity rows, constant rows
(variance 0, also with eps = 0), vectors of 4 and 8 lanes, and every cross target."""

from __future__ import annotations

import numpy as np
import pytest

import tinycomp as tc
from tinycomp.codegen.module import lower_graph
from tinycomp.codegen.target import CROSS_TARGETS, target_named
from tinycomp.export.toolchain import emit_object
from tinycomp.frontend.tracer import trace
from tinycomp.ir.passes import run_pipeline
from tinycomp.nn import LayerNorm, Tensor
from tinycomp.parity import check_parity
from tinycomp.runtime.engine import JitEngine
from tinycomp.runtime.kernel import NativeKernel


def norm(width: int, eps: float = 1e-5, seed: int = 0) -> LayerNorm:
    rng = np.random.default_rng(seed)
    model = LayerNorm(width, eps=eps)
    model.gamma.data[:] = rng.uniform(0.5, 2.0, width) * rng.choice([-1.0, 1.0], width)
    model.beta.data[:] = rng.standard_normal(width)
    return model


def layer_norm64(model: LayerNorm, x: np.ndarray) -> np.ndarray:
    """The formula in float64: (x - mean) / sqrt(mean((x - mean)^2) + eps) * gamma + beta, last axis."""
    x = np.asarray(x, np.float64)
    centred = x - x.mean(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        scaled = centred / np.sqrt((centred ** 2).mean(axis=-1, keepdims=True) + np.float32(model.eps))
    return scaled * model.gamma.data.astype(np.float64) + model.beta.data.astype(np.float64)


def rows(batch: int, width: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((batch, width)) * 3 + rng.uniform(-2, 2, (batch, 1))).astype(np.float32)


def assert_matches(got: np.ndarray, model: LayerNorm, x: np.ndarray) -> None:
    eager = model(Tensor(x)).data
    assert got.shape == eager.shape and got.dtype == np.float32
    if not got.size:
        return
    want = layer_norm64(model, x)
    report = check_parity(got, eager, want)
    assert report.ok, report
    np.testing.assert_array_equal(np.isnan(got), np.isnan(eager))
    finite = np.isfinite(want)
    scale = np.abs(model.gamma.data).max() + np.abs(model.beta.data).max()
    np.testing.assert_allclose(got[finite], want[finite], rtol=0, atol=4e-6 * scale)


@pytest.mark.parametrize("width", [1, 3, 17, 128, 512, 1000])
def test_compiled_layer_norm_matches_eager_and_float64(width):
    model = norm(width)
    fast = tc.compile(model, input_shape=(None, width))
    assert fast.graph.op_counts().get("layer_norm") == 1
    x = rows(7, width)
    for batch in (7, 1, 0):
        assert_matches(fast(x[:batch]).data, model, x[:batch])


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # eager's own inf - inf and 0 / 0
@pytest.mark.parametrize("width", [3, 17, 512])
def test_nan_inf_and_constant_rows_come_out_as_eager(width):
    model = norm(width)
    fast = tc.compile(model, input_shape=(None, width))
    x = rows(8, width)
    x[0, width // 2] = np.nan
    x[1, -1] = np.inf
    x[2, 0] = -np.inf
    x[3] = 2.5  # variance 0: the output is beta
    x[4] = 0.0
    x[5, :] = np.inf
    got = fast(x).data
    eager = model(Tensor(x)).data
    assert np.isnan(got[[0, 1, 2, 5]]).all() and np.isnan(eager[[0, 1, 2, 5]]).all()
    np.testing.assert_array_equal(got[3:5], np.broadcast_to(model.beta.data, (2, width)))
    assert_matches(got[6:], model, x[6:])


def test_constant_rows_with_eps_zero_are_nan_as_eager():
    model = norm(5, eps=0.0)
    x = np.array([[1.0] * 5, [1, 2, 3, 4, 5]], np.float32)
    got = tc.compile(model, input_shape=(None, 5))(x).data
    with np.errstate(invalid="ignore", divide="ignore"):
        eager = model(Tensor(x)).data
    assert np.isnan(got[0]).all() and np.isnan(eager[0]).all()
    assert_matches(got[1:], model, x[1:])


@pytest.mark.parametrize("width", [5, 7, 17, 128, 768])
def test_every_constant_row_gives_beta_or_nan_with_eps_zero(width):
    """2.5 and 0 above are exact in any summation order; most values are not: the row's sum rounded
    in the tree's order, the mean missed x by an ulp, and 5.402531 * 5 gave -1.5e-4 (eps 1e-5), and
    with eps 0 -1 or nan by the value (22-48 % of rows off eager's nan). The formula gives beta, and
    0 / 0 with eps 0, for every constant row; eager does where NumPy's own sum rounds back to x."""
    values = np.random.default_rng(width).uniform(0.01, 100, 2000).astype(np.float32)
    x = np.repeat(values[:, None], width, axis=1)
    for eps in (1e-5, 0.0):
        model = norm(width, eps=eps)
        got = tc.compile(model, input_shape=(None, width))(x).data
        if eps:
            np.testing.assert_array_equal(got, np.broadcast_to(model.beta.data, x.shape))
        else:
            assert np.isnan(got).all()
        with np.errstate(invalid="ignore", divide="ignore"):
            want = layer_norm64(model, x)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))


@pytest.mark.parametrize("width", [4, 64, 512])
def test_rows_whose_squares_overflow_give_beta_as_eager(width):
    """With the corrected center the variance was mean(d^2) - c^2: where both overflowed (|c| past
    1.8e19, rows ~1e27), inf - inf made whole rows nan where eager gives beta."""
    model = norm(width)
    x = (np.random.default_rng(width).standard_normal((256, width)) * 1e28).astype(np.float32)
    got = tc.compile(model, input_shape=(None, width))(x).data
    with np.errstate(over="ignore", invalid="ignore"):
        eager = model(Tensor(x)).data
    assert not np.isnan(got).any()
    np.testing.assert_array_equal(got, eager)


def test_rows_of_a_3d_input_and_two_threads():
    model = norm(33)
    fast = tc.compile(model, input_shape=(None, 4, 33), threads=2)
    x = rows(300 * 4, 33).reshape(300, 4, 33)
    assert_matches(fast(x).data, model, x)

ROWS_OF_NANS = [[-np.inf, 1.0, np.nan, -2.0, np.inf, 3.0, -np.inf], [-np.nan, 1, 2, 3, 4, 5, 6],
                [np.inf, -np.inf, 0, 0, 0, 0, 0], [-np.nan, np.nan, 0, 0, 0, 0, 1]]


@pytest.mark.parametrize("row", ROWS_OF_NANS, ids=["nan-and-infs", "negative-nan", "opposite-infs", "both-nans"])
def test_a_rows_nan_bits_do_not_depend_on_its_place_or_the_threads(row):
    """Rows go in groups of 4 with a leftover loop: a NaN's sign bit differed between the two (the
    scalar sums' order), so a row's bits depended on its batch, its position and the thread count."""
    model = LayerNorm(7)
    seen = set()
    for threads in (1, 2):
        fast = tc.compile(model, threads=threads)
        for n, pos in [(1, 0), (3, 2), (4, 1), (5, 3), (5, 4), (9, 8), (257, 162)]:
            x = np.zeros((n, 3, 7), np.float32)
            x[pos, 1] = row
            y = fast(x).data[pos, 1]
            assert np.isnan(y).all()
            seen.add(y.tobytes())
    assert len(seen) == 1



@pytest.mark.parametrize("width", [4, 8])
def test_narrower_vectors_on_the_host(width):
    model = norm(21)
    g = run_pipeline(trace(model, (None, 21)))
    plan = lower_graph(g, width)
    params = [np.asarray(g[p]["value"], np.float32) for p in plan.params]
    kernel = NativeKernel(JitEngine(plan.llvm_ir), plan, (21,), [p.shape for p in params])
    x = rows(5, 21)
    out = np.empty((5, 21), np.float32)
    kernel.run(x, params, out, np.empty(plan.scratch_floats(5) + 1, np.float32))
    assert_matches(out, model, x)


@pytest.mark.parametrize("name", list(CROSS_TARGETS))
def test_every_cross_target_compiles_the_kernel(name):
    g = run_pipeline(trace(norm(19), (None, 19)))
    plan = lower_graph(g, target_named(name))
    assert emit_object(CROSS_TARGETS[name], [plan.llvm_ir], [plan.entry])


def test_corrected_quotient_is_the_divide():
    """`corrected_quotient` (a reciprocal and one FMA correction, the kernel's quotient for a finite
    nonzero root) against float32 division, over differences d from 2**-140 to 2**61 and roots from
    2**-40 to 2**41: equal wherever |d| >= 2**-100 (the residual d - q0 root a normal float; no
    near-midpoint miss showed in 4M such quotients), within one unit in the last place below that;
    signed zeros as the divide gives them."""
    from jit_util import c_function, f32_ptr, jit, new_module
    from llvmlite import ir

    from tinycomp.codegen.cgutils import F32, I64, PTR, element_ptr, for_range, splat
    from tinycomp.codegen.layer_norm import corrected_quotient

    width = 16
    module = new_module("quotient")
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [I64, PTR, PTR, PTR]), "quotient")
    n, out, d, roots = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    with for_range(b, 0, n, width) as loop:
        root = b.load(element_ptr(b, roots, loop.index), typ=F32)
        inverse = b.fdiv(ir.Constant(F32, 1.0), root)
        value = b.load(element_ptr(b, d, loop.index), typ=ir.VectorType(F32, width), align=4)
        q = corrected_quotient(b, module, value, splat(root, width, b), splat(inverse, width, b))
        b.store(q, element_ptr(b, out, loop.index), align=4)
    b.ret_void()
    engine, addresses = jit(module, "quotient")

    rng = np.random.default_rng(5)
    count = 1 << 22
    d = rng.uniform(1, 2, count) * 2.0 ** rng.integers(-140, 61, count) * rng.choice([-1, 1], count)
    d = d.astype(np.float32)
    d[:64] = [0.0, -0.0] * 32
    roots = np.repeat((rng.uniform(1, 2, count // width) * 2.0 ** rng.integers(-40, 41, count // width)), width)
    roots = roots.astype(np.float32)
    got = np.empty(count, np.float32)
    c_function(addresses["quotient"], 3)(count, f32_ptr(got), f32_ptr(d), f32_ptr(roots))
    want = d / roots
    units = np.abs(got.view(np.int32).astype(np.int64) - want.view(np.int32))
    regular = np.abs(d) >= 2.0**-100
    assert regular.sum() > count * 0.75 and (~regular).sum() > count * 0.1
    assert (units[regular] == 0).all(), units[regular].max()
    assert units.max() <= 1
    assert (np.signbit(got) == np.signbit(want)).all()


@pytest.fixture(params=["avx512", "portable"])
def form(request, monkeypatch):
    """Both quotients: the corrected one an AVX-512 host takes and the divide (`vecmath.AVX512_FORMS`
    off, as every other target); the object cache's key holds the switch."""
    from tinycomp.codegen import vecmath

    if request.param == "avx512" and "+avx512f" not in target_named("host").features:
        pytest.skip("this host has no AVX-512: no kernel takes the corrected quotient")
    monkeypatch.setattr(vecmath, "AVX512_FORMS", request.param == "avx512")
    return request.param


def test_the_corrected_quotient_is_taken_only_with_the_avx512_forms(form):
    plan = lower_graph(run_pipeline(trace(norm(40), (None, 40))), target_named("host"))
    assert ("llvm.fma" in plan.llvm_ir) == (form == "avx512")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # eager's own 0 / 0 and d / 0
def test_special_rows_in_a_group_and_after_it_come_out_as_eager(form):
    """A row whose root is 0, inf or nan takes d * (1 / root), which there is the divide (the
    correction would make nan). Special rows inside groups of four regular rows and in the rows
    after the last whole group: a variance that overflows with every difference finite (root inf:
    the row is beta), one whose squares underflow with eps 0 (root 0: +-inf); a constant row
    (0 / 0: nan) and an inf, together. Their neighbours and the rows of regular groups still
    match."""
    model = norm(40, eps=0.0)
    x = rows(15, 40)
    overflow = np.zeros(40, np.float32)
    overflow[:2] = 3e19, -3e19
    underflow = np.tile(np.float32([1e-25, -1e-25]), 20)
    x[1], x[6], x[12], x[14] = overflow, underflow, overflow, underflow  # groups 0-3, 4-7; rows 12-14 alone
    x[9] = 3.0
    x[10, 3] = np.inf
    got = tc.compile(model, input_shape=(None, 40))(x).data
    eager = model(Tensor(x)).data
    special = [1, 6, 9, 10, 12, 14]
    np.testing.assert_array_equal(got[special], eager[special])
    np.testing.assert_array_equal(got[[1, 12]], np.broadcast_to(model.beta.data, (2, 40)))
    assert np.isinf(got[[6, 14]]).all() and np.isnan(got[[9, 10]]).all()
    regular = [0, 2, 3, 4, 5, 7, 8, 11, 13]
    assert_matches(got[regular], model, x[regular])
