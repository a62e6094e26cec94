"""tinycomp/parity.py: the one rule compiled results are judged by, including float32 overflow."""

from __future__ import annotations

import numpy as np
import pytest

import tinycomp as tc
from tests.reliability.rel_helpers import assert_matches_eager
from tinycomp.frontend.tracer import trace
from tinycomp.nn import Layer, LayerNorm, Linear, ReLU, Sequential, Sigmoid, Tanh, Tensor, manual_seed
from tinycomp.parity import check_parity, float64_reference, reference_and_overflow

F32_MAX = np.finfo(np.float32).max


def test_compiled_within_twice_the_eager_error_passes_and_beyond_fails():
    reference = np.array([[1.0, 2.0, 3.0]])
    eager = reference + np.array([[1e-6, -2e-6, 0.0]])
    assert check_parity(reference + 3.9e-6, eager, reference).ok
    assert not check_parity(reference + 1e-4, eager, reference).ok


def test_non_finite_values_must_match_exactly():
    reference = np.array([[np.nan, np.inf, 1.0]])
    eager = np.array([[np.nan, np.inf, 1.0]])
    assert check_parity(eager.copy(), eager, reference).ok
    assert not check_parity(np.array([[0.0, np.inf, 1.0]]), eager, reference).ok
    assert not check_parity(np.array([[np.nan, -np.inf, 1.0]]), eager, reference).ok


def overflowing_dot(rows: int = 3):
    """Linear(100, 1) with large weights; row 0 holds two values whose products overflow with
    opposite signs, so its float32 sum ends as +inf, -inf or NaN depending on the summation order."""
    manual_seed(0)
    model = Sequential(Linear(100, 1, bias=False), Sigmoid())
    w = model.layers[0].weight.data
    w[:] = np.random.default_rng(1).standard_normal(w.shape) * 1e9
    w[16, 0], w[72, 0] = -5e8, 1e9
    x = np.random.default_rng(2).standard_normal((rows, 100)).astype(np.float32)
    x[0, 16] = x[0, 72] = F32_MAX
    return model, x


def test_rows_that_leave_float32_range_are_found():
    model, x = overflowing_dot()
    reference, overflow, _ = reference_and_overflow(trace(model, (None, 100)), x)
    assert overflow.tolist() == [True, False, False]
    assert np.isfinite(reference).all()  # float64 does not overflow: sigmoid of a huge finite sum


def test_overflow_rows_are_not_judged_but_the_others_are():
    model, x = overflowing_dot()
    overflow = reference_and_overflow(trace(model, (None, 100)), x).overflow_rows
    eager = np.array([[0.0], [0.25], [0.75]])
    reference = eager.astype(np.float64)
    nan_row0 = np.array([[np.nan], [0.25], [0.75]])
    assert not check_parity(nan_row0, eager, reference).ok
    assert check_parity(nan_row0, eager, reference, overflow_rows=overflow).ok
    wrong_row1 = np.array([[np.nan], [0.5], [0.75]])
    assert not check_parity(wrong_row1, eager, reference, overflow_rows=overflow).ok


def test_compiled_model_on_an_overflowing_row_matches_eager_elsewhere():
    """The slow fuzz found this: eager (OpenBLAS, one FMA chain) ends the overflowing row at one
    infinity, our K-vectorized dot at NaN. Neither is 'right'; the other rows must match exactly."""
    model, x = overflowing_dot(rows=5)
    fast = tc.compile(model, check=True)  # the check applies the same rule: no ParityError
    with np.errstate(all="ignore"):
        out = fast(x).data
        assert_matches_eager(out, model, x)
        assert_matches_eager(fast(x[1:]).data, model, x[1:])


def test_an_overflowing_product_is_found_even_where_an_inf_input_hides_it():
    """x holds +inf and F32_MAX: in float64 the node's value is just inf, but in float32 the finite
    product overflows too, and inf - inf (NaN) or inf (FMA keeps the product exact) depends on the
    kernel. The slow fuzz found this after the first overflow fix."""
    model, x = overflowing_dot()
    x[0, 16], x[1, 5] = np.inf, np.inf  # row 1: an inf and no overflow: propagation, still judged
    overflow = reference_and_overflow(trace(model, (None, 100)), x).overflow_rows
    assert overflow.tolist() == [True, False, False]


class RowSum(tc.nn.Layer):
    def forward(self, x):
        return x.sum(-1, keepdims=True) * 0.5


def test_a_row_sum_whose_partial_sums_overflow_is_not_judged():
    # float64's sum is 0; float32's partial sums reach inf, and end at inf, NaN or 0 by their order
    x = np.zeros((3, 16), np.float32)
    x[0, :4] = [F32_MAX, F32_MAX, -F32_MAX, -F32_MAX]
    x[1, :2] = [1e38, -1e38]  # no order of the sum goes beyond FMAX: judged
    x[2] = 1.0
    assert reference_and_overflow(trace(RowSum(), (None, 16)), x).overflow_rows.tolist() == [True, False, False]
    with np.errstate(all="ignore"):
        out = tc.compile(RowSum(), input_shape=(None, 16), check=True)(x).data  # no ParityError
    np.testing.assert_array_equal(out[1:], [[0.0], [8.0]])


class UnderflowRoot(tc.nn.Layer):
    def forward(self, x):
        return (x * 1e-20).sqrt()


def test_where_float64_leaves_float32s_domain_compiled_is_judged_against_eager():
    # x = -1e-30: float32's x * 1e-20 underflows to -0, whose root is -0; float64's root is NaN
    x = np.array([[-1e-30, 4.0]], np.float32)
    reference = reference_and_overflow(trace(UnderflowRoot(), (None, 2)), x).values
    assert np.isnan(reference[0, 0])
    eager = UnderflowRoot()(tc.nn.Tensor(x)).data
    assert check_parity(eager, eager, reference).ok  # was "error nan; allowed nan"
    assert not check_parity(eager + [[1e-3, 0.0]], eager, reference).ok  # still judged, against eager
    assert tc.compile(UnderflowRoot(), input_shape=(None, 2), check=True)(x).shape == (1, 2)


def test_rounding_slack_is_per_element_and_scaled_by_cancelled_magnitude():
    reference = np.array([[0.5, 0.5]])
    eager = reference + np.array([[1e-8, 1e-8]])  # eager lucky on both
    compiled = reference + np.array([[4e-6, 4e-6]])
    rounding = np.array([[1e2, 0.0]])  # element 0 cancels terms of magnitude ~100, element 1 none
    assert not check_parity(compiled, eager, reference).ok
    report = check_parity(compiled, eager, reference, rounding=rounding)
    assert not report.ok and report.worst_index == (0, 1)  # element 0 is excused, element 1 is not
    assert check_parity(compiled * [[1, 0]] + reference * [[0, 1]], eager, reference, rounding=rounding).ok


def test_rounding_magnitude_of_a_dot_product_is_sqrt_k_times_its_terms():
    manual_seed(3)
    model = Sequential(Linear(64, 2, bias=False))
    x = np.random.default_rng(4).standard_normal((3, 64)).astype(np.float32)
    ref = reference_and_overflow(trace(model, (None, 64)), x)
    terms = np.abs(x.astype(np.float64)) @ np.abs(model.layers[0].weight.data.astype(np.float64))
    np.testing.assert_allclose(ref.rounding, 8.0 * terms)


def test_one_samples_large_values_do_not_excuse_anothers_error():
    """The tolerance was one for the whole output: a value near float32's max in one sample let a
    compiled 1e30 pass where the reference is 1 in another."""
    reference = np.array([[1.0, 2.0], [3.4e38, 0.0]])
    eager = reference.astype(np.float32).astype(np.float64)
    compiled = eager.copy()
    compiled[0, 0] = 1e30
    report = check_parity(compiled, eager, reference)
    assert not report.ok and report.worst_index == (0, 0)
    compiled[0, 0] = 1.0 + 1e-6  # within the sample's own 1e-6 x max(1, |reference|)
    assert check_parity(compiled, eager, reference).ok


def test_a_result_rounded_into_the_subnormals_is_no_divergence_under_check():
    """x * 1e-30 at x = 2.1e-15 is 1.4e-45 in float32, 2.1e-45 in float64: the log after it is off by 0.4
    in eager and compiled alike, and check=True called the graph stale."""
    class LogOfTiny(Layer):
        def forward(self, x):
            return (x * 1e-30).log()
    x = np.array([[2.1e-15, 1e-8]], np.float32)
    y = tc.compile(LogOfTiny(), check=True)(x).data
    np.testing.assert_allclose(y, LogOfTiny()(Tensor(x)).data, rtol=1e-6)
    assert abs(float(y[0, 0]) - np.log(2.1e-45)) > 0.3  # float32 itself is that far off here


def test_layer_norm_at_eps_0_of_a_constant_row_is_nan_and_passes_check():
    """0 / 0 in float64; eager's float32 mean misses the row by an ulp and gives -1 or 1."""
    x = np.full((2, 64), 88.7, np.float32)
    x[1] = np.linspace(-1, 1, 64)
    y = tc.compile(LayerNorm(64, eps=0.0), check=True)(x).data
    assert np.isnan(y[0]).all() and np.isfinite(y[1]).all()
    reference = float64_reference(trace(LayerNorm(64, eps=0.0), (None, 64)), x)
    assert np.isnan(reference[0]).all()


def test_an_inf_through_a_slope_of_zero_keeps_the_rows_rounding_slack():
    """1 / x at x = inf is 0 exactly, but its estimate was inf * 0 = NaN; the product with w spread the
    NaN over the row, whose slack then counted as 0 (a fuzzer's check=True false alarm)."""
    rng = np.random.default_rng(0)

    class InverseSums(Layer):
        def __init__(self):
            self.w = Tensor(rng.standard_normal((65, 1)) / 8)

        def forward(self, x):
            return x.sum(axis=-2) ** -1 @ self.w

    x = rng.standard_normal((4, 5, 65))
    x[:, 4, :] = -x[:, :4, :].sum(axis=1) + 1e-3  # column sums near 0: heavy cancellation
    x[:, 0, 7] = np.inf
    model = InverseSums()
    ref = reference_and_overflow(trace(model, (None, 5, 65)), x.astype(np.float32))
    assert np.isfinite(ref.rounding).all() and (ref.rounding > 0).all()


# forward(fc, x, k) of a model reading k from outside (traced as a constant), with k at the trace and after
STALE_FORWARDS = {
    # an exact 0: log's -inf is exact
    "log of an exact zero": (lambda fc, x, k: (fc(x).abs() * k).log(), 0.0, 1.0),
    # 0 at k = 0.5, though a difference of rounded products: log's infinite slope made its element
    # one float32 'cannot resolve', and the stale -inf passed as its own float64 run's
    "log of a cancelled difference": (lambda fc, x, k: (x * k - x * 0.5).log(), 0.5, 0.6),
}


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # eager's own log(0)
@pytest.mark.parametrize("forward, before, after", STALE_FORWARDS.values(), ids=list(STALE_FORWARDS))
def test_check_still_catches_a_stale_graph_whose_output_is_non_finite(forward, before, after):
    """A graph gone stale (a value read from outside changed after compiling) whose output is -inf
    where eager now gives numbers: the reference comes from that graph, so it is no excuse."""
    value = [before]

    class Stale(Layer):
        def __init__(self):
            self.fc = Linear(3, 3)

        def forward(self, x):
            return forward(self.fc, x, value[0])
    fast = tc.compile(Stale(), check=True)
    x = np.array([[0.3, 1.0, 2.5], [4.0, 0.7, 1.1]], np.float32)
    fast(x)
    value[0] = after
    with pytest.raises(tc.ParityError, match="non-finite values differ"):
        fast(x)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_check_accepts_what_float32_cannot_resolve_either_way():
    """False alarms of a fuzzer: a sum that cancels to exactly 0 (eager 1 / 0 = inf, compiled's order
    leaves an ulp); a layer norm at eps 0 of a constant row (0 / 0 in float64) followed by a Linear,
    whose NaN estimate had become 0; an underflow both runs share (compiled = eager bit for bit), which
    was blamed on a stale graph."""
    class InverseSum(Layer):
        def forward(self, x):
            return 1.0 / x.sum(axis=-1, keepdims=True)
    x = np.random.default_rng(2).standard_normal((200, 9)).astype(np.float32) * 1e4
    x[:, -1] = -x[:, :-1].sum(-1)
    tc.compile(InverseSum(), threads=1, check=True)(x)
    manual_seed(0)
    tc.compile(Sequential(LayerNorm(7, eps=0.0), Linear(7, 2)), check=True)(np.full((1, 7), 0.1, np.float32))
    norm = LayerNorm(2, eps=0.0)
    norm.gamma.data[...], norm.beta.data[...] = 0.5, -1.0
    model = Sequential(norm, ReLU(), Tanh())
    x = np.array([[1e-20, 1.00001e-20]], np.float32)
    y = tc.compile(model, check=True)(x).data
    np.testing.assert_array_equal(y, model(Tensor(x)).data)
